package enforcer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/policy"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

const checkoutPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [east, west]}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
`

// Identities as the clusters' apiservers publish them (east is local, id 1;
// west 2; north 3: each cluster's range starts at id<<16).
const (
	eastCheckout = 1<<16 + 1
	eastFrontend = 1<<16 + 2
	westFrontend = 2<<16 + 1
	northFront   = 3<<16 + 1
)

func podLabels(cluster, app string) wire.Labels {
	ep := statesource.Endpoint{Namespace: "shop", Labels: map[string]string{"app": app}}
	return ep.IdentityLabels(cluster)
}

// fakeAttacher records attachments; the real one is exercised with real
// interfaces in localmesh and demo.
type fakeAttacher struct {
	mu       sync.Mutex
	ifaces   map[string]int
	attached map[int]tcpolicy.Endpoint
	lists    int // Interfaces calls: one per reconciliation
}

func (f *fakeAttacher) Interfaces() (Interfaces, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	out := Interfaces{ByName: map[string]int{}, ByPodIP: map[netip.Addr]string{}}
	for k, v := range f.ifaces {
		out.ByName[k] = v
	}
	return out, nil
}

func (f *fakeAttacher) Attach(ifindex int, ep tcpolicy.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached[ifindex] = ep
	return nil
}

func (f *fakeAttacher) Detach(ifindex int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, ifindex)
	return nil
}

func (f *fakeAttacher) Attachments() (map[int]tcpolicy.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int]tcpolicy.Endpoint{}
	for k, v := range f.attached {
		out[k] = v
	}
	return out, nil
}

func (f *fakeAttacher) get(ifindex int) (tcpolicy.Endpoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.attached[ifindex]
	return p, ok
}

type fixture struct {
	e      *Enforcer
	dp     *tcpolicy.Memory
	att    *fakeAttacher
	dir    string
	ready  chan struct{}
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T) *fixture { return startWith(t, nil) }

func startWith(t *testing.T, tweak func(*Enforcer)) *fixture { return startCfg(t, nil, tweak) }

// startCfg starts an enforcer whose config tweakCfg may change (f.dp is
// its datapath already).
func startCfg(t *testing.T, tweakCfg func(*fixture, *Config), tweak func(*Enforcer)) *fixture {
	t.Helper()
	f := &fixture{dp: tcpolicy.NewMemory(), dir: t.TempDir(), ready: make(chan struct{}),
		att: &fakeAttacher{ifaces: map[string]int{"lxc-ck2": 7}, attached: map[int]tcpolicy.Endpoint{
			99: {Identity: 5}, // left by a previous run for a pod that is gone
		}}}
	cfg := Config{ClusterName: "east", ClusterID: 1, NodeName: "node-1", PolicyDir: f.dir,
		Policy: f.dp, Attacher: f.att, ReloadInterval: 10 * time.Millisecond}
	if tweakCfg != nil {
		tweakCfg(f, &cfg)
	}
	var err error
	f.e, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(f.e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan error, 1)
	go func() { f.done <- f.e.Run(ctx, f.ready) }()
	t.Cleanup(func() {
		f.cancel()
		if err := <-f.done; err != nil {
			t.Error(err)
		}
	})
	return f
}

func (f *fixture) writePolicy(t *testing.T, name, body string) {
	t.Helper()
	tmp := filepath.Join(f.dir, "."+name)
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.dir, name)); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) hasKey(k tcpolicy.Key) bool {
	ks, _ := f.dp.Policies()
	return slices.Contains(ks, k)
}

func allow(ep, peer uint32) tcpolicy.Key {
	return tcpolicy.Key{Endpoint: ep, Peer: peer, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080}
}

func localState() *statesource.State {
	return &statesource.State{
		Nodes: []statesource.Node{{Name: "node-1"}},
		Endpoints: []*statesource.Endpoint{
			{Namespace: "shop", Pod: "checkout-2", Node: "node-1", IP: netip.MustParseAddr("10.1.1.12"), Labels: map[string]string{"app": "checkout"}, Interface: "lxc-ck2"},
			{Namespace: "shop", Pod: "checkout-1", Node: "node-2", IP: netip.MustParseAddr("10.1.2.11"), Labels: map[string]string{"app": "checkout"}, Interface: "lxc-ck1"},
			{Namespace: "shop", Pod: "frontend-1", Node: "node-1", IP: netip.MustParseAddr("10.1.1.100"), Labels: map[string]string{"app": "frontend"}, Interface: "lxc-fe1"},
		},
	}
}

func TestEnforcerComputesWritesAndAttaches(t *testing.T) {
	f := start(t)
	f.writePolicy(t, "checkout.yaml", checkoutPolicy)
	f.e.SetLocalState(localState())
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	f.e.UpsertIdentity("west", westFrontend, podLabels("west", "frontend"))
	f.e.UpsertIdentity("north", northFront, podLabels("north", "frontend"))

	// Nothing is written or attached before the agent's first sync.
	testenv.WaitFor(t, 5*time.Second, "policies loaded and identities known", func() bool {
		s := f.e.Status()
		return s.Rules == 1 && s.Identities == 5 // and the host
	})
	if ks, _ := f.dp.Policies(); len(ks) != 0 || f.e.Status().Enforcing {
		t.Fatalf("written before ready: %v", ks)
	}
	if _, ok := f.att.get(99); !ok {
		t.Fatal("the previous run's attachment was removed before ready")
	}

	close(f.ready)
	testenv.WaitFor(t, 5*time.Second, "policy enforced", func() bool {
		p, ok := f.att.get(7)
		return f.e.Status().Enforcing && ok && p == tcpolicy.Endpoint{Identity: eastCheckout, EnforceIngress: true}
	})
	ks, _ := f.dp.Policies()
	fromHost := tcpolicy.Key{Endpoint: eastCheckout, Peer: wire.IdentityHost, Direction: datapath.Ingress}
	want := []tcpolicy.Key{fromHost, allow(eastCheckout, eastFrontend), allow(eastCheckout, westFrontend)}
	if !slices.Equal(ks, want) {
		t.Fatalf("policy map %v, want %v (north is not allowed)", ks, want)
	}
	if _, ok := f.att.get(99); ok {
		t.Error("the gone pod's attachment (ifindex 99) stayed")
	}
	st := f.e.Status()
	byPod := map[string]EndpointStatus{}
	for _, ep := range st.Endpoints {
		byPod[ep.Pod] = ep
	}
	if len(st.Endpoints) != 2 || byPod["checkout-2"].State != StateEnforcing || byPod["frontend-1"].State != StateNoInterface {
		t.Errorf("endpoints %+v: want checkout-2 enforcing, frontend-1 no-interface, checkout-1 (node-2) absent", st.Endpoints)
	}

	// A new west frontend identity is allowed incrementally; its removal
	// revokes it.
	const westFrontend2 = 2<<16 + 9
	f.e.UpsertIdentity("west", westFrontend2, podLabels("west", "frontend").With(wire.Label{Source: "k8s", Key: "version", Value: "2"}))
	testenv.WaitFor(t, 5*time.Second, "new remote identity allowed", func() bool { return f.hasKey(allow(eastCheckout, westFrontend2)) })
	f.e.DeleteIdentity("west", westFrontend2)
	testenv.WaitFor(t, 5*time.Second, "removed remote identity revoked", func() bool { return !f.hasKey(allow(eastCheckout, westFrontend2)) })

	// The interface appears later: attached then.
	f.att.mu.Lock()
	f.att.ifaces["lxc-fe1"] = 8
	f.att.mu.Unlock()
	testenv.WaitFor(t, 5*time.Second, "frontend attached, not enforcing", func() bool {
		p, ok := f.att.get(8)
		return ok && p == tcpolicy.Endpoint{Identity: eastFrontend}
	})
}

func TestEnforcerKeepsLastValidPolicies(t *testing.T) {
	f := start(t)
	close(f.ready)
	f.writePolicy(t, "checkout.yaml", checkoutPolicy)
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	f.e.UpsertIdentity("west", westFrontend, podLabels("west", "frontend"))
	testenv.WaitFor(t, 5*time.Second, "policy written", func() bool { return f.hasKey(allow(eastCheckout, westFrontend)) })

	for _, bad := range []struct{ name, body, want string }{
		{"typo.yaml", strings.Replace(checkoutPolicy, "fromEndpoints", "fromEndpoint", 1), "fromEndpoint"},
		{"op.yaml", strings.Replace(checkoutPolicy, "operator: In", "operator: Within", 1), "Within"},
		{"port.yaml", strings.Replace(checkoutPolicy, `"8080"`, `"80800"`, 1), "80800"},
	} {
		f.writePolicy(t, bad.name, bad.body)
		testenv.WaitFor(t, 5*time.Second, "reload error for "+bad.name, func() bool {
			s := f.e.Status()
			return strings.Contains(s.LastPolicyError, bad.name) && strings.Contains(s.LastPolicyError, bad.want)
		})
		if !f.hasKey(allow(eastCheckout, westFrontend)) || f.e.Status().Rules != 1 {
			t.Fatalf("%s: the last valid policy is no longer enforced", bad.name)
		}
		os.Remove(filepath.Join(f.dir, bad.name))
		testenv.WaitFor(t, 5*time.Second, "error cleared after removing "+bad.name, func() bool { return f.e.Status().LastPolicyError == "" })
	}
	if n := f.e.Status().PolicyReloadErrors; n != 3 {
		t.Errorf("reload errors %d, want 3", n)
	}

	// Removing the policy file removes the policy: nothing enforced.
	os.Remove(filepath.Join(f.dir, "checkout.yaml"))
	testenv.WaitFor(t, 5*time.Second, "policy removed", func() bool {
		ks, _ := f.dp.Policies()
		return len(ks) == 0 && f.e.Status().Rules == 0 && f.e.Status().PolicyEntries == 0
	})
}

func TestEnforcerMissingPolicyDirSaysWhatToDo(t *testing.T) {
	dp := tcpolicy.NewMemory()
	e, err := New(Config{ClusterName: "east", ClusterID: 1, NodeName: "n", PolicyDir: filepath.Join(t.TempDir(), "nope"), Policy: dp})
	if err != nil {
		t.Fatal(err)
	}
	e.reload()
	if s := e.Status(); !strings.Contains(s.LastPolicyError, "create it") {
		t.Errorf("error %q does not say what to do", s.LastPolicyError)
	}
	if _, err := New(Config{ClusterName: "east", Policy: dp}); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "--node-name") {
		t.Errorf("no node name: %v", err)
	}
}

func TestEnforcerMergesOtherSources(t *testing.T) {
	f := start(t)
	close(f.ready)
	f.writePolicy(t, "checkout.yaml", checkoutPolicy)
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	f.e.UpsertIdentity("north", northFront, podLabels("north", "frontend"))
	testenv.WaitFor(t, 5*time.Second, "directory policy", func() bool { return f.hasKey(allow(eastCheckout, eastFrontend)) })

	// A Kubernetes NetworkPolicy lets north's frontends in on 9090 too.
	np := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-north, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: north}}}]
    ports: [{port: 9090, protocol: TCP}]
`
	c, err := policy.Parse(f.e.PolicyOptions(), "kubernetes networkpolicy shop/from-north", []byte(np))
	if err != nil {
		t.Fatal(err)
	}
	fromNorth := tcpolicy.Key{Endpoint: eastCheckout, Peer: northFront, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 9090, EndPort: 9090}
	f.e.SetPolicies("kubernetes", c)
	testenv.WaitFor(t, 5*time.Second, "both sources enforced", func() bool {
		return f.hasKey(fromNorth) && f.hasKey(allow(eastCheckout, eastFrontend)) && f.e.Status().Rules == 2
	})
	f.e.SetPolicies("kubernetes", nil)
	testenv.WaitFor(t, 5*time.Second, "source removed, directory kept", func() bool {
		return !f.hasKey(fromNorth) && f.hasKey(allow(eastCheckout, eastFrontend)) && f.e.Status().Rules == 1
	})
}

func TestEnforcerDenyAllEnforcesAtOnce(t *testing.T) {
	f := startWith(t, func(e *Enforcer) { e.retryTicks = 1 << 30 }) // no periodic look to hide behind
	close(f.ready)
	f.e.SetLocalState(localState())
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	testenv.WaitFor(t, 5*time.Second, "attached, not enforcing", func() bool {
		p, ok := f.att.get(7)
		return ok && p == tcpolicy.Endpoint{Identity: eastCheckout}
	})
	// A policy that selects checkout for egress and allows nothing: no
	// policy entry changes, but egress must be enforced (default deny)
	// without waiting for a periodic look.
	f.writePolicy(t, "deny.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  policyTypes: [Egress]
`)
	testenv.WaitFor(t, 20*time.Second, "deny-all egress enforced (no periodic look: only the policy change can do it)", func() bool {
		p, ok := f.att.get(7)
		return ok && p.EnforceEgress
	})
}

// Remote identities change peers' entries only: they never make the
// enforcer list the node's interfaces again (a local identity does).
func TestEnforcerRemoteIdentitiesDoNotReconcileEndpoints(t *testing.T) {
	f := startWith(t, func(e *Enforcer) { e.retryTicks = 1 << 30 })
	f.att.mu.Lock()
	f.att.ifaces["lxc-fe1"] = 8 // every endpoint of the node has its veth: nothing to retry
	f.att.mu.Unlock()
	close(f.ready)
	f.writePolicy(t, "checkout.yaml", checkoutPolicy)
	f.e.SetLocalState(localState())
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	testenv.WaitFor(t, 5*time.Second, "checkout attached, enforcing", func() bool { p, ok := f.att.get(7); return ok && p.EnforceIngress })
	lists := func() int { f.att.mu.Lock(); defer f.att.mu.Unlock(); return f.att.lists }
	before := lists()
	for i := range uint32(50) {
		f.e.UpsertIdentity("west", 2<<16+100+i, podLabels("west", "frontend").With(wire.Label{Source: "k8s", Key: "n", Value: fmt.Sprint(i)}))
	}
	last := tcpolicy.Key{Endpoint: eastCheckout, Peer: 2<<16 + 149, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080}
	testenv.WaitFor(t, 5*time.Second, "the 50 remote frontends allowed", func() bool { return f.hasKey(last) })
	if n := lists() - before; n != 0 {
		t.Errorf("%d interface listings for 50 remote identities, want 0", n)
	}
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	testenv.WaitFor(t, 5*time.Second, "a local identity reconciles the endpoints", func() bool { return lists() > before })
}
