package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/hubbletest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/observe"
)

// obsStart is the time of the first test flow; flow i is i seconds later.
var obsStart = time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)

// obsPods are the test flows' ends: cluster, namespace, pod, identity,
// address, app label.
var obsPods = []struct {
	cluster, ns, pod string
	id               uint32
	ip, app          string
}{
	{"west", "shop", "frontend-1", 132000, "10.2.1.5", "frontend"},
	{"east", "shop", "checkout-0", 70001, "10.1.1.11", "checkout"},
	{"east", "shop", "cart-0", 70002, "10.1.1.12", "cart"},
	{"east", "bank", "vault-0", 70003, "10.1.2.20", "vault"},
}

// obsFlow is test flow i: from pod i%2 ... a cycle over the pods' pairs,
// verdicts and ports that every filter test below counts on.
//
//	i%4 == 0: west frontend -> east checkout:8080, DROPPED (POLICY_DENIED), a drop event
//	i%4 == 1: west frontend -> east cart:8080, FORWARDED, trace to-endpoint
//	i%4 == 2: east cart -> east checkout:9090, FORWARDED, trace to-endpoint
//	i%4 == 3: east checkout -> bank vault:443, AUDIT, policy verdict
func obsFlow(i int) *flowpb.Flow {
	pairs := [4][2]int{{0, 1}, {0, 2}, {2, 1}, {1, 3}}[i%4]
	src, dst := obsPods[pairs[0]], obsPods[pairs[1]]
	port := [4]uint32{8080, 8080, 9090, 443}[i%4]
	ep := func(p struct {
		cluster, ns, pod string
		id               uint32
		ip, app          string
	}) *flowpb.Endpoint {
		return &flowpb.Endpoint{ClusterName: p.cluster, Namespace: p.ns, PodName: p.pod, Identity: p.id,
			Labels: []string{"k8s:app=" + p.app, "k8s:io.kubernetes.pod.namespace=" + p.ns, "k8s:io.cilium.k8s.policy.cluster=" + p.cluster}}
	}
	f := &flowpb.Flow{
		Time: timestamppb.New(obsStart.Add(time.Duration(i) * time.Second)), NodeName: "east/node-1",
		IP:     &flowpb.IP{Source: src.ip, Destination: dst.ip, IpVersion: flowpb.IPVersion_IPv4},
		L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: uint32(41000 + i), DestinationPort: port, Flags: &flowpb.TCPFlags{SYN: true}}}},
		Source: ep(src), Destination: ep(dst), Type: flowpb.FlowType_L3_L4, TrafficDirection: flowpb.TrafficDirection_INGRESS,
		IsReply: wrapperspb.Bool(false), Verdict: flowpb.Verdict_FORWARDED,
		EventType: &flowpb.CiliumEventType{Type: 4}, TraceObservationPoint: flowpb.TraceObservationPoint_TO_ENDPOINT,
	}
	//lint:ignore SA1019 Hubble's agents still fill Summary, and its JSON and compact output print it
	f.Summary = "TCP Flags: SYN"
	switch i % 4 {
	case 0:
		f.Verdict, f.DropReasonDesc, f.EventType, f.TraceObservationPoint = flowpb.Verdict_DROPPED, flowpb.DropReason_POLICY_DENIED,
			&flowpb.CiliumEventType{Type: 1, SubType: 133}, flowpb.TraceObservationPoint_UNKNOWN_POINT
	case 3:
		f.Verdict, f.EventType, f.PolicyMatchType, f.TraceObservationPoint = flowpb.Verdict_AUDIT, &flowpb.CiliumEventType{Type: 5}, 1,
			flowpb.TraceObservationPoint_UNKNOWN_POINT
	}
	return f
}

// obsServer is a hub holding flows 0..n-1, served with the Observer API.
type obsServer struct {
	hub  *observe.Hub
	addr string // --server
}

// serveHub serves a new hub on l (with TLS when tc is set) until the test
// ends; the hub holds flows 0..n-1.
func serveHub(t *testing.T, l net.Listener, tc *tls.Config, n int) *observe.Hub {
	t.Helper()
	hub := observe.NewHub(observe.Config{NodeName: "east/node-1"})
	for i := range n {
		hub.Publish(obsFlow(i))
	}
	var opts []grpc.ServerOption
	if tc != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	g := grpc.NewServer(opts...)
	observe.NewServer(hub, "").Register(g)
	var wg sync.WaitGroup
	wg.Go(func() { g.Serve(l) })
	t.Cleanup(func() { g.Stop(); wg.Wait() })
	return hub
}

// serveUnix serves n flows on a unix socket, as an agent does.
func serveUnix(t *testing.T, n int) obsServer {
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return obsServer{hub: serveHub(t, l, nil, n), addr: "unix://" + sock}
}

// compactLines are flows' compact lines, as the command prints them.
func compactLines(idx ...int) string {
	var b strings.Builder
	for _, i := range idx {
		b.WriteString(observe.Compact(obsFlow(i)) + "\n")
	}
	return b.String()
}

func seq(from, to int, keep func(int) bool) []int {
	var out []int
	for i := from; i < to; i++ {
		if keep == nil || keep(i) {
			out = append(out, i)
		}
	}
	return out
}

// TestObserveFilters runs `clustermesh observe` against a hub served on a
// unix socket, with Hubble's filter flags and selectors.
func TestObserveFilters(t *testing.T) {
	srv := serveUnix(t, 40)
	ctx := context.Background()
	since := obsStart.Add(35 * time.Second).Format(time.RFC3339)
	for _, tc := range []struct {
		args string
		want []int
	}{
		{"", seq(20, 40, nil)}, // the last 20, as hubble
		{"--last 3", seq(37, 40, nil)},
		{"--first 2", seq(0, 2, nil)},
		{"--all --from-pod shop/frontend", seq(0, 40, func(i int) bool { return i%4 < 2 })},
		{"--all --from-pod frontend --from-namespace shop", seq(0, 40, func(i int) bool { return i%4 < 2 })},
		{"--all --to-pod shop/checkout --to-pod shop/cart", seq(0, 40, func(i int) bool { return i%4 < 3 })}, // repeated: OR
		{"--all --pod bank/vault", seq(0, 40, func(i int) bool { return i%4 == 3 })},
		{"--all --pod shop/cart", seq(0, 40, func(i int) bool { return i%4 == 1 || i%4 == 2 })}, // either end
		{"--all --verdict DROPPED --verdict AUDIT", seq(0, 40, func(i int) bool { return i%4 == 0 || i%4 == 3 })},
		{"--all --not --verdict FORWARDED", seq(0, 40, func(i int) bool { return i%4 == 0 || i%4 == 3 })},
		{"--all --not --verdict FORWARDED --not --verdict DROPPED", seq(0, 40, func(i int) bool { return i%4 == 3 })},
		{"--all --from-cluster west --not --to-pod shop/cart", seq(0, 40, func(i int) bool { return i%4 == 0 })},
		{"--all --namespace bank", seq(0, 40, func(i int) bool { return i%4 == 3 })},
		{"--all --to-namespace shop --from-namespace shop", seq(0, 40, func(i int) bool { return i%4 < 3 })},
		{"--all --to-namespace bank --from-namespace shop", seq(0, 40, func(i int) bool { return i%4 == 3 })},
		{"--all -l app=cart", seq(0, 40, func(i int) bool { return i%4 == 1 || i%4 == 2 })},
		{"--all --from-label app=checkout", seq(0, 40, func(i int) bool { return i%4 == 3 })},
		{"--all --to-port 8080", seq(0, 40, func(i int) bool { return i%4 < 2 })},
		{"--all --port 9090 --port 443", seq(0, 40, func(i int) bool { return i%4 >= 2 })},
		{"--all --ip 10.1.2.20", seq(0, 40, func(i int) bool { return i%4 == 3 })},
		{"--all --from-identity 132000 --to-identity 70002", seq(0, 40, func(i int) bool { return i%4 == 1 })},
		{"--all --type drop", seq(0, 40, func(i int) bool { return i%4 == 0 })},
		{"--all --type policy-verdict --type trace:to-endpoint", seq(0, 40, func(i int) bool { return i%4 != 0 })},
		{"--all --drop-reason-desc POLICY_DENIED", seq(0, 40, func(i int) bool { return i%4 == 0 })},
		{"--all --cluster west", seq(0, 40, func(i int) bool { return i%4 < 2 })},
		{"--all --tcp-flags syn --protocol tcp --traffic-direction ingress --node-name east/*", seq(0, 40, nil)},
		{"--since " + since, seq(35, 40, nil)},
		{"--since " + since + " --until " + obsStart.Add(37*time.Second).Format(time.RFC3339), seq(35, 38, nil)},
		{"--since " + since + " --verdict AUDIT", []int{35, 39}},
	} {
		out, err := run(ctx, append([]string{"observe", "--server", srv.addr}, strings.Fields(tc.args)...)...)
		if err != nil {
			t.Errorf("observe %s: %v\n%s", tc.args, err, out)
			continue
		}
		if want := compactLines(tc.want...); out != want {
			t.Errorf("observe %s:\n got %s\nwant %s", tc.args, out, want)
		}
	}
}

// TestObserveJSON checks -o json: one GetFlowsResponse per line, protojson
// with the proto field names, holding the flow the hub was given.
func TestObserveJSON(t *testing.T) {
	srv := serveUnix(t, 8)
	out, err := run(context.Background(), "observe", "--server", srv.addr, "--last", "4", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), out)
	}
	for k, line := range lines {
		var r observerpb.GetFlowsResponse
		if err := protojson.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %d does not parse as a GetFlowsResponse: %v\n%s", k, err, line)
		}
		if want := obsFlow(4 + k); !proto.Equal(r.GetFlow(), want) || r.GetNodeName() != "east/node-1" || !r.GetTime().AsTime().Equal(want.GetTime().AsTime()) {
			t.Errorf("line %d: %v\nwant the flow %v", k, &r, want)
		}
		for _, key := range []string{`{"flow":{"time":"2026-11-21T03:00:0`, `"source":{"identity":132000,"cluster_name":"west","namespace":"shop"`,
			`"pod_name":"`, `"node_name":"east/node-1"`, `"l4":{"TCP":{"source_port":`, `"is_reply":false`, `"Summary":"TCP Flags: SYN"`} {
			if k != 2 && k != 3 && !strings.Contains(line, key) {
				t.Errorf("line %d lacks %s: %s", k, key, line)
			}
		}
	}
	if !strings.Contains(lines[0], `"drop_reason_desc":"POLICY_DENIED"`) || !strings.Contains(lines[0], `"verdict":"DROPPED"`) {
		t.Errorf("the drop's line: %s", lines[0])
	}
}

// syncBuffer is an output the command writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestObserveFollow follows a hub: the last flows, then new ones that match
// as they are published, until the command's context ends (Ctrl-C).
func TestObserveFollow(t *testing.T) {
	srv := serveUnix(t, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		root := NewRoot()
		root.SetArgs([]string{"--log-level", "error", "observe", "--server", srv.addr, "-f", "--last", "1", "--not", "--verdict", "FORWARDED"})
		root.SetOut(&out)
		root.SetErr(&out)
		done <- root.ExecuteContext(ctx)
	}()
	testenv.WaitFor(t, 10*time.Second, "the command follows the hub", func() bool { return srv.hub.Stats().Subscribers == 1 })
	for i := 4; i < 9; i++ {
		srv.hub.Publish(obsFlow(i))
	}
	want := compactLines(3, 4, 7, 8)
	testenv.WaitFor(t, 10*time.Second, "the new drops and audits are printed", func() bool { return out.String() == want })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Ctrl-C while following: %v", err)
	}
	if got := out.String(); got != want {
		t.Errorf("printed:\n%s\nwant:\n%s", got, want)
	}
}

// TestObserveErrors checks refusals: each says what is wrong, most what to
// do.
func TestObserveErrors(t *testing.T) {
	srv := serveUnix(t, 1)
	for _, tc := range []struct{ args, want string }{
		{"--server unix:///nonexistent/hubble.sock", "is `clustermesh agent` running on this node"},
		{"--server 127.0.0.1", "want unix:///PATH, host:port or tls://host:port"},
		{"--server " + srv.addr + " --server unix:///x", "--server was given twice: give it once"},
		{"--last 1 --last 2", "--last was given twice"},
		{"-o yaml", `-o "yaml": want compact, json or jsonpb`},
		{"--verdict dropped", "invalid --verdict value: dropped"},
		{"--pod a --not", "trailing --not"},
		{"--to-label a --label b", "filters --label and --to-label cannot be combined"},
		{"--first 1 -f", "cannot set both --first and --follow"},
		{"--since tomorrow", `--since: "tomorrow" is neither a duration ago`},
		{"--server " + srv.addr + " --to-port http", srv.addr + " refused the request: "},
		{"--server " + srv.addr + " --cel-expression true", srv.addr + " refused the request: "},
		{"--tls-client-cert-file x.crt", "needs both --tls-client-cert-file and --tls-client-key-file"},
		{"--server " + srv.addr + " --tls", "the server speaks plaintext: drop --tls"},
	} {
		out, err := run(context.Background(), append([]string{"observe"}, strings.Fields(tc.args)...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("observe %s: %v (want an error with %q)\n%s", tc.args, err, tc.want, out)
		}
	}
}

// meshCerts are a mesh CA's files: the Observer server certificate of
// cluster east, and a client certificate, in dir.
type meshCerts struct{ dir string }

func (m meshCerts) file(name string) string { return filepath.Join(m.dir, name) }

func newMeshCerts(t *testing.T) meshCerts {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.New("clustermesh test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	for name, issue := range map[string]func() (*ca.Issued, error){
		"observer":        func() (*ca.Issued, error) { return c.IssueObserverServer("east") },
		"observer-client": func() (*ca.Issued, error) { return c.IssueClient("observer-client-east") },
	} {
		i, err := issue()
		if err != nil {
			t.Fatal(err)
		}
		if err := i.Save(dir, name); err != nil {
			t.Fatal(err)
		}
	}
	return meshCerts{dir: dir}
}

// TestObserveMutualTLS runs observe against a hub served on TCP with
// mutual TLS from the mesh CA, as an agent's --hubble-listen-address: with
// the right flags it reads the flows; each missing piece is named.
func TestObserveMutualTLS(t *testing.T) {
	certs := newMeshCerts(t)
	tc, err := ca.ServerTLSConfig(certs.file("observer.crt"), certs.file("observer.key"), certs.file("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveHub(t, l, tc, 12)
	addr := l.Addr().String()
	caf, cert, key := "--tls-ca-cert-files "+certs.file("ca.crt"), "--tls-client-cert-file "+certs.file("observer-client.crt"),
		"--tls-client-key-file "+certs.file("observer-client.key")
	name := "--tls-server-name node-1.east.hubble-grpc.clustermesh.io"
	ctx := context.Background()
	for _, server := range []string{"tls://" + addr, addr} { // tls:// or implied by the --tls-* flags
		args := fmt.Sprintf("observe --server %s %s %s %s %s --all --to-port 443", server, caf, cert, key, name)
		out, err := run(ctx, strings.Fields(args)...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", args, err, out)
		}
		if want := compactLines(3, 7, 11); out != want {
			t.Errorf("%s:\n got %s\nwant %s", args, out, want)
		}
	}
	for _, tc := range []struct{ args, want string }{
		{fmt.Sprintf("--server tls://%s %s %s", addr, caf, name), "the server wants a client certificate"},
		{fmt.Sprintf("--server tls://%s %s %s %s", addr, caf, cert, key), "pass --tls-server-name"},
		{fmt.Sprintf("--server tls://%s %s %s %s", addr, cert, key, name), "pass the mesh CA's ca.crt with --tls-ca-cert-files"},
		{"--server " + addr, "dial it with TLS"},
		{fmt.Sprintf("--server tls://%s %s --tls-client-cert-file %s %s %s", addr, caf, certs.file("observer.crt"), key, name), "pass the key file saved with that certificate"},
	} {
		out, err := run(ctx, append([]string{"observe"}, strings.Fields(tc.args)...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("observe %s: %v (want an error with %q)\n%s", tc.args, err, tc.want, out)
		}
	}
}

// TestObserveSameAsHubble runs the real hubble CLI and `clustermesh
// observe` with the same arguments against the same agent socket: -o json
// must print the same bytes, so jq recipes written for Hubble work as they
// are.
func TestObserveSameAsHubble(t *testing.T) {
	hubble := hubbletest.Require(t)
	srv := serveUnix(t, 40)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range []string{
		"--last 7",
		"--first 3",
		"--all --pod shop/checkout --not --verdict FORWARDED",
		"--all --to-pod shop/checkout --to-pod shop/cart --from-cluster west",
		"--all --verdict DROPPED --verdict AUDIT --to-port 443",
		"--all -n bank",
		"--all --type drop --drop-reason-desc POLICY_DENIED",
		"--since " + obsStart.Add(30*time.Second).Format(time.RFC3339) + " --until " + obsStart.Add(33*time.Second).Format(time.RFC3339),
		"--all --from-identity 132000 --not --to-label app=cart",
	} {
		line := append([]string{"observe", "--server", srv.addr, "-o", "json"}, strings.Fields(args)...)
		want, err := hubble.Run(ctx, line...)
		if err != nil {
			t.Fatal(err)
		}
		got, err := run(ctx, line...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", args, err, got)
		}
		if got != want.Stdout || got == "" {
			t.Errorf("%s:\nclustermesh %s\nhubble %s", args, got, want.Stdout)
		}
	}
}
