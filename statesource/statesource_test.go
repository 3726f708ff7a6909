package statesource

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const good = `
nodes:
- {name: n1, ips: [192.168.1.1], podCIDRs: [10.1.1.0/24]}
endpoints:
- {namespace: shop, pod: a, ip: 10.1.1.10, node: n1, labels: {app: web}}
- {namespace: shop, pod: b, ip: 10.1.1.11, node: n1, labels: {app: web}, ready: false, serving: true}
- {namespace: other, pod: c, ip: 10.1.1.12, node: n1, labels: {app: web}}
services:
- namespace: shop
  name: web
  clusterIP: 10.96.0.1
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: web}
  annotations: {service.cilium.io/global: "true", service.cilium.io/shared: "false", service.cilium.io/affinity: Remote}
`

func TestParseAndSemantics(t *testing.T) {
	st, err := Parse("good", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	s := &st.Services[0]
	if !s.Global() || s.Shared() || s.Affinity() != "remote" {
		t.Errorf("annotations: global=%v shared=%v affinity=%q", s.Global(), s.Shared(), s.Affinity())
	}
	bs := st.Backends(s)
	if len(bs) != 2 {
		t.Fatalf("backends of shop/web: %d, want 2 (same namespace only)", len(bs))
	}
	if !bs[0].IsReady() || bs[1].IsReady() || !bs[1].IsServing() {
		t.Errorf("readiness: a ready=%v, b ready=%v serving=%v", bs[0].IsReady(), bs[1].IsReady(), bs[1].IsServing())
	}
	if s.Ports[0].Target() != 8080 || s.Ports[0].Proto() != "TCP" {
		t.Errorf("port: %+v", s.Ports[0])
	}
}

func TestParseJSON(t *testing.T) {
	st, err := Parse("j", []byte(`{"nodes":[{"name":"n1","ips":["192.168.1.1"]}],"endpoints":[{"namespace":"a","pod":"b","ip":"10.0.0.1","node":"n1"}]}`))
	if err != nil || len(st.Endpoints) != 1 || !st.Endpoints[0].IsReady() {
		t.Fatalf("JSON state: %+v %v", st, err)
	}
	if _, err := Parse("j", []byte(`{"nodes":[{"name":"n1","ips":["1.1.1.1"],"colour":"red"}]}`)); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown JSON field: %v", err)
	}
}

func TestNodeAnnotations(t *testing.T) {
	st, err := Parse("a", []byte("nodes:\n- {name: n1, ips: [1.1.1.1], annotations: {clustermesh.io/hubble-address: 'hubble.n1:4245', example.com/x-y_z.1: ''}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"clustermesh.io/hubble-address": "hubble.n1:4245", "example.com/x-y_z.1": ""}
	if got := st.Nodes[0].Annotations; !maps.Equal(got, want) {
		t.Errorf("annotations %v, want %v", got, want)
	}
	for _, k := range []string{"/x", "a/", "-a", "a-", "a/b/c", "ex ample.com/a", strings.Repeat("a", 64)} {
		if validAnnotationKey(k) {
			t.Errorf("annotation key %q accepted", k)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown field":      {"nodes:\n- {name: n1, ips: [1.1.1.1], color: red}\n", "color"},
		"bad ip":             {"nodes:\n- {name: n1, ips: [1.1.1]}\n", "1.1.1"},
		"duplicate node":     {"nodes:\n- {name: n1, ips: [1.1.1.1]}\n- {name: n1, ips: [1.1.1.2]}\n", "duplicate node"},
		"unknown node":       {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1, node: nope}\n", "unknown node"},
		"duplicate ip":       {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1}\n- {namespace: a, pod: c, ip: 10.0.0.1}\n", "already used"},
		"port zero":          {"services:\n- {namespace: a, name: b, ports: [{port: 0}]}\n", "port is 0"},
		"bad protocol":       {"services:\n- {namespace: a, name: b, ports: [{port: 1, protocol: ICMP}]}\n", "ICMP"},
		"unnamed ports":      {"services:\n- {namespace: a, name: b, ports: [{port: 1}, {port: 2}]}\n", "used twice"},
		"host bits in cidr":  {"nodes:\n- {name: n1, ips: [1.1.1.1], podCIDRs: [10.1.1.5/24]}\n", "host bits"},
		"duplicate ns":       {"namespaces:\n- {name: a}\n- {name: a, labels: {x: y}}\n", "duplicate namespace"},
		"unnamed ns":         {"namespaces:\n- {labels: {x: y}}\n", "name is empty"},
		"bad annotation key": {"nodes:\n- {name: n1, ips: [1.1.1.1], annotations: {'a b': x}}\n", "not a qualified name"},
		"bad hubble address": {"nodes:\n- {name: n1, ips: [1.1.1.1], annotations: {clustermesh.io/hubble-address: '1.1.1.1'}}\n", "clustermesh.io/hubble-address"},
		"bad workload kind":  {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1, workload: Widget/b}\n", `workload "Widget/b"`},
		"bad workload name":  {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1, workload: Deployment/B}\n", "not a DNS subdomain"},
		"bad zone":           {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1, zone: 'eu west'}\n", `invalid zone "eu west"`},
		"empty hint zone":    {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1, zone: a, forZones: ['']}\n", `invalid zone ""`},
		"bad hostname":       {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1, hostname: Web_1}\n", `invalid hostname "Web_1"`},
		"null endpoint":      {"endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1}\n- ~\n", "endpoints[1]: null"},
	} {
		_, err := Parse("f.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "f.yaml") {
			t.Errorf("%s: %v (want an error naming f.yaml and %q)", name, err, tc.want)
		}
		if name != "unknown field" && name != "bad ip" && !errors.Is(err, ErrInvalidState) {
			t.Errorf("%s: %v does not wrap ErrInvalidState", name, err)
		}
	}
}

// A File delivers a change within milliseconds (inotify, not its poll
// interval), and an invalid change leaves the last good state in force.
func TestFileDeliversChangesAndKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write(good)
	states := make(chan *State, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	f := &File{Path: path, PollInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	go func() { done <- f.Run(ctx, func(s *State) { states <- s }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	recv := func() *State {
		t.Helper()
		select {
		case s := <-states:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no state delivered within 5s (the poll interval is an hour: inotify must deliver)")
			return nil
		}
	}
	if len(recv().Endpoints) != 3 {
		t.Fatal("first state")
	}
	write(strings.Replace(good, "- {namespace: other, pod: c, ip: 10.1.1.12, node: n1, labels: {app: web}}\n", "", 1))
	if got := len(recv().Endpoints); got != 2 {
		t.Fatalf("after the change: %d endpoints, want 2", got)
	}
	write("nodes: [") // invalid: ignored
	write(good)       // valid again
	if got := len(recv().Endpoints); got != 3 {
		t.Fatalf("after the invalid and valid changes: %d endpoints, want 3", got)
	}
	select {
	case s := <-states:
		t.Fatalf("an extra state was delivered: %+v", s)
	default:
	}
}

func TestFileFailsOnInvalidStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.yaml")
	os.WriteFile(path, []byte("nodes: [{name: ''}]"), 0o600)
	err := (&File{Path: path}).Run(context.Background(), func(*State) { t.Error("delivered an invalid state") })
	if err == nil {
		t.Fatal("want an error at start")
	}
}

func TestSelectorIndexMatchesScan(t *testing.T) {
	st, err := Parse("good", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	st.Services = append(st.Services, Service{Namespace: "shop", Name: "none", Selector: map[string]string{"app": "nope"}},
		Service{Namespace: "shop", Name: "empty"}, Service{Namespace: "other", Name: "web", Selector: map[string]string{"app": "web"}})
	ix := NewSelectorIndex(st)
	for i := range st.Services {
		s := &st.Services[i]
		a, b := st.Backends(s), ix.Backends(s)
		if len(a) != len(b) {
			t.Fatalf("%s: scan %d, index %d", s.Name, len(a), len(b))
		}
		for j := range a {
			if a[j] != b[j] {
				t.Errorf("%s: backend %d differs", s.Name, j)
			}
		}
	}
}

// Identities carry the labels Cilium adds to every pod's: the service
// account (when the pod has one) and one io.cilium.k8s.namespace.labels.<key>
// per label of its namespace, all of source k8s; a pod cannot set them with
// its own labels. A file without them keeps the label sets it had.
func TestIdentityLabelsAsCilium(t *testing.T) {
	st, err := Parse("ns", []byte(`
namespaces:
- {name: shop, labels: {team: payments, kubernetes.io/metadata.name: shop}}
endpoints:
- {namespace: shop, pod: a, ip: 10.1.1.10, labels: {app: web}, serviceAccount: web}
- {namespace: shop, pod: b, ip: 10.1.1.11, labels: {app: web, io.cilium.k8s.policy.serviceaccount: admin}}
- {namespace: other, pod: c, ip: 10.1.1.12, labels: {app: web}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{
		"k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop;k8s:io.cilium.k8s.namespace.labels.team=payments;" +
			"k8s:io.cilium.k8s.policy.cluster=east;k8s:io.cilium.k8s.policy.serviceaccount=web;k8s:io.kubernetes.pod.namespace=shop;",
		"k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop;k8s:io.cilium.k8s.namespace.labels.team=payments;" +
			"k8s:io.cilium.k8s.policy.cluster=east;k8s:io.kubernetes.pod.namespace=shop;",
		"k8s:app=web;k8s:io.cilium.k8s.policy.cluster=east;k8s:io.kubernetes.pod.namespace=other;",
	} {
		if got := st.Endpoints[i].IdentityLabels("east").String(); got != want {
			t.Errorf("%s:\n got %s\nwant %s", st.Endpoints[i].Pod, got, want)
		}
	}
	// Namespace labels come from the namespaces list only.
	if _, err := Parse("f", []byte("endpoints:\n- {namespace: a, pod: b, ip: 10.0.0.1, namespaceLabels: {x: y}}\n")); err == nil {
		t.Error("namespaceLabels on an endpoint accepted")
	}
}

// Changes.Then: of an endpoint both changes name, the later one's word is
// the last; a change that may have touched anything makes the whole so.
func TestChangesThen(t *testing.T) {
	ep := func(pod string) *Endpoint { return &Endpoint{Namespace: "shop", Pod: pod} }
	a1, b1, c1, b2, d2 := ep("a"), ep("b"), ep("c"), ep("b"), ep("d")
	first := &Changes{Endpoints: []*Endpoint{a1, b1, c1}, RemovedEndpoints: []string{"shop/d", "shop/e"}}
	second := &Changes{Endpoints: []*Endpoint{b2, d2}, RemovedEndpoints: []string{"shop/c"}}
	got := first.Then(second)
	if want := []*Endpoint{a1, b2, d2}; !slices.Equal(got.Endpoints, want) {
		t.Errorf("changed %v, want %v", endpointKeys(got.Endpoints), endpointKeys(want))
	}
	if want := []string{"shop/e", "shop/c"}; !slices.Equal(got.RemovedEndpoints, want) {
		t.Errorf("removed %v, want %v", got.RemovedEndpoints, want)
	}
	if got.Nodes || got.Services || got.Namespaces {
		t.Errorf("endpoint changes merged into %+v", got)
	}
	if got := first.Then(&Changes{Services: true}); got == nil || !got.Services || len(got.Endpoints) != 3 {
		t.Errorf("with a services change: %+v", got)
	}
	if first.Then(nil) != nil || (*Changes)(nil).Then(second) != nil {
		t.Error("a change of anything merged into a change of some endpoints")
	}
}
