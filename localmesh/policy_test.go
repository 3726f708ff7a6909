package localmesh

import (
	"context"
	"errors"
	"fmt"
	flowpb "github.com/cilium/cilium/api/v1/flow"
	"io"
	"net"
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
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/statesource"
)

// checkoutIngress lets east's checkout pods accept TCP 8080 only from
// frontends of east and west.
const checkoutIngress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-from-frontends, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [east, west]}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: west}
    toPorts:
    - ports: [{port: "5353", protocol: UDP}]
`

// policyEnv is east-node-1 (state node node-1) as a network namespace with
// pods of every cluster hanging off it, its agent (a whole node agent)
// enforcing checkoutIngress.
type policyEnv struct {
	mesh  *Mesh
	node  *podnet.Node
	pods  map[string]*podnet.Pod // by "cluster/pod"
	maps  *datapath.Maps
	progs *tcpolicy.Programs // east-node-1's policy programs
	enf   *enforcer.Enforcer
	drops *observe.Subscription // the dropped flows of east-node-1's hub, from the end of startPolicyEnv
}

func serveTCP(t *testing.T, p *podnet.Pod, port uint16) {
	t.Helper()
	var ln net.Listener
	err := podnet.InNetns(p.NS, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(p.IP, port).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Each connection gets "ok", then an echo of what it sends until it
	// closes (or the test ends).
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.Write([]byte("ok"))
				copyNoSplice(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// serveUDP echoes every datagram p gets on port.
func serveUDP(t *testing.T, p *podnet.Pod, port uint16) {
	t.Helper()
	var pc net.PacketConn
	err := podnet.InNetns(p.NS, func() (err error) {
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(p.IP, port).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); wg.Wait() })
}

// echoUDP sends one datagram from pod from to to and waits for its echo.
func echoUDP(from *podnet.Pod, to netip.AddrPort, timeout time.Duration) error {
	return podnet.InNetns(from.NS, func() error {
		c, err := net.Dial("udp", to.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 16)
		n, err := c.Read(b)
		if err == nil && string(b[:n]) != "ping" {
			err = errors.New("unexpected echo " + string(b[:n]))
		}
		return err
	})
}

// connect dials to from pod from and reads the server's "ok".
func connect(from *podnet.Pod, to netip.AddrPort, timeout time.Duration) error {
	c, err := dial(from, to, timeout)
	if err == nil {
		c.Close()
	}
	return err
}

// dial opens a connection from pod from to to and reads the server's "ok";
// the connection stays open (its socket lives in the pod's namespace).
func dial(from *podnet.Pod, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := podnet.InNetns(from.NS, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", to.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
		c.Close()
		return nil, fmt.Errorf("reply %q: %v", b, err)
	}
	return c, nil
}

// echo sends a message on c and waits for it to come back.
func echo(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != "ping" {
		return errors.New("unexpected echo " + string(b))
	}
	return nil
}

func startPolicyEnv(t *testing.T) *policyEnv { return startPolicyEnvWith(t, false, nil) }

// startPolicyEnvWith starts the policy environment; with hubble, the
// node-1 agent of every cluster is a whole node agent observing its pods
// in the shared namespace (only east's enforces a policy), each serving
// Hubble's Observer API (Options.Hubble). tweak, when set, adjusts each
// node agent's config last.
func startPolicyEnvWith(t *testing.T, hubble bool, tweak func(name string, cfg *node.Config)) *policyEnv {
	testenv.RequireRoot(t)
	e := &policyEnv{pods: map[string]*podnet.Pod{}}
	var err error
	if e.node, err = podnet.NewNode(netip.MustParseAddr("192.168.1.1")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.node.Close() })
	for _, p := range []struct{ key, ip, veth string }{
		{"east/checkout-2", "10.1.1.12", "e-ck2"},
		{"east/frontend-1", "10.1.1.100", "e-fe1"},
		{"west/frontend-1", "10.2.1.100", "w-fe1"},
		{"west/frontend-2", "10.2.1.101", "w-fe2"}, // not in west's state yet
		{"north/frontend-1", "10.3.1.100", "n-fe1"},
	} {
		if e.pods[p.key], err = e.node.AddPod(p.key, netip.MustParseAddr(p.ip), p.veth); err != nil {
			t.Fatal(err)
		}
	}
	serveTCP(t, e.pods["east/checkout-2"], 8080)
	serveUDP(t, e.pods["east/checkout-2"], 5353)
	testenv.WaitFor(t, 10*time.Second, "pod veths up", func() bool { return e.node.Up() == "" })

	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "checkout.yaml"), []byte(checkoutIngress), 0o644); err != nil {
		t.Fatal(err)
	}
	var specs []ClusterSpec
	for i, n := range names {
		// The state names no interface (as the Kubernetes source): the
		// agent finds each pod's veth by the host route to its address.
		st := SampleState(i + 1)
		if hubble { // their owners, named in flows
			for j := range st.Endpoints {
				st.Endpoints[j].Workload = map[string]string{"frontend": "Deployment/frontend", "checkout": "StatefulSet/checkout"}[st.Endpoints[j].Labels["app"]]
			}
		}
		specs = append(specs, ClusterSpec{Name: n, ID: uint32(i + 1), State: st})
	}
	nodeAgent := func(name string, cfg *node.Config) bool {
		if name != "east-node-1" && !(hubble && strings.HasSuffix(name, "-node-1")) {
			return false
		}
		cfg.NodeName = "node-1" // 192.168.1.1 is the host identity
		cfg.Policy.InNetns = func(fn func() error) error { return podnet.InNetns(e.node.NS, fn) }
		if name == "east-node-1" {
			cfg.Policy.Dir, cfg.Policy.ReloadInterval = policyDir, 50*time.Millisecond
		}
		if tweak != nil {
			tweak(name, cfg)
		}
		return true
	}
	e.mesh = startMeshWith(t, Options{Clusters: specs, EBPF: true, ReadOwnCluster: true, Node: nodeAgent, Hubble: hubble})
	east := e.mesh.Cluster("east").Agents[0]
	e.maps, e.enf = east.Datapath.(*datapath.Maps), east.Node.Enforcer()
	e.progs, _ = east.Node.Policy().(*tcpolicy.Programs)
	if east.Node.Flows() == nil || e.progs == nil {
		t.Fatal("east-node-1 has no flows on eBPF maps")
	}
	testenv.WaitFor(t, wait, "checkout-2 enforcing on e-ck2, frontend-1 attached on e-fe1", func() bool {
		s := e.enf.Status()
		ok := 0
		for _, ep := range s.Endpoints {
			switch {
			case ep.Pod == "checkout-2" && ep.Interface == "e-ck2" && ep.State == enforcer.StateEnforcing && ep.EnforceIngress:
				ok++
			case ep.Pod == "frontend-1" && ep.Interface == "e-fe1" && ep.State == enforcer.StateEnforcing && !ep.EnforceIngress:
				ok++
			}
		}
		return s.Enforcing && ok == 2
	})
	// The drop events (a denied packet is also a policy-verdict event).
	isDrop := func(f *flowpb.Flow) bool { return f.GetEventType().GetType() == 1 }
	e.drops = east.Node.Flows().Subscribe(observe.Query{Follow: true, Match: isDrop})
	t.Cleanup(e.drops.Close)
	return e
}

// readDrops reads the dropped flows east-node-1 reports until it has want
// of them.
func (e *policyEnv) readDrops(t *testing.T, want int) []*flowpb.Flow {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	var drops []*flowpb.Flow
	for len(drops) < want {
		select {
		case ev, ok := <-e.drops.Events():
			switch {
			case !ok:
				t.Fatalf("the flows ended (have %d drops, want %d)", len(drops), want)
			case ev.GetLostEvents() != nil:
				t.Fatalf("%d flow events lost (%s)", ev.GetLostEvents().GetNumEventsLost(), ev.GetLostEvents().GetSource())
			default:
				drops = append(drops, ev.GetFlow())
			}
		case <-deadline.C:
			t.Fatalf("reading flows: have %d drops, want %d", len(drops), want)
		}
	}
	return drops
}

func TestPolicyAcrossClustersOnRealPackets(t *testing.T) {
	e := startPolicyEnv(t)
	checkout := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), 8080)
	for _, from := range []string{"east/frontend-1", "west/frontend-1"} {
		if err := connect(e.pods[from], checkout, 3*time.Second); err != nil {
			t.Errorf("%s → east checkout: %v, want allowed", from, err)
		}
	}
	before, err := e.progs.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if err := connect(e.pods["north/frontend-1"], checkout, 300*time.Millisecond); err == nil {
		t.Fatal("north/frontend-1 → east checkout connected, want dropped")
	}
	drops := e.readDrops(t, 1)
	after, _ := e.progs.Counters()
	if n := after.Dropped() - before.Dropped(); n != uint64(len(drops)) {
		// A retransmitted SYN is a second drop and must be a second event.
		drops = append(drops, e.readDrops(t, int(n)-len(drops))...)
	}
	// The flow as Hubble shows it: the clusters named by the agent's
	// reservations, the remote pod by its cluster's ipcache entry.
	d := drops[0]
	ids := e.identities(t)
	if d.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED || d.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS ||
		d.Source.Identity != ids["north/frontend"] || d.Source.ClusterName != "north" || d.IP.Source != "10.3.1.100" ||
		d.Source.PodName != "frontend-1" || d.Source.Namespace != "shop" ||
		d.Destination.Identity != ids["east/checkout"] || d.Destination.ClusterName != "east" || d.Destination.PodName != "checkout-2" ||
		d.IP.Destination != checkout.Addr().String() || d.L4.GetTCP().GetDestinationPort() != uint32(checkout.Port()) ||
		!d.L4.GetTCP().GetFlags().GetSYN() || d.NodeName != "east/node-1" {
		t.Errorf("drop event %+v: want policy-denied ingress from north/frontend (%d, north) to east/checkout-2 (%d, east)",
			d, ids["north/frontend"], ids["east/checkout"])
	}
	dns := netip.AddrPortFrom(checkout.Addr(), 5353)
	if err := echoUDP(e.pods["west/frontend-1"], dns, 3*time.Second); err != nil {
		t.Errorf("west/frontend-1 → east checkout UDP 5353: %v, want allowed", err)
	}
	for _, from := range []string{"east/frontend-1", "north/frontend-1"} { // UDP is west's alone
		if err := echoUDP(e.pods[from], dns, 200*time.Millisecond); err == nil {
			t.Errorf("%s → east checkout UDP 5353 answered, want dropped", from)
		}
	}
}

// identities maps "cluster/app" to the identity the clusters allocated.
func (e *policyEnv) identities(t *testing.T) map[string]uint32 {
	t.Helper()
	out := map[string]uint32{}
	for _, c := range e.mesh.Clusters {
		st := SampleState(int(c.ID))
		for _, ep := range st.Endpoints {
			ls := ep.IdentityLabels(c.Name)
			for id := uint32(c.ID) << 16; id < uint32(c.ID)<<16+100; id++ {
				if got, ok := e.enf.Identity(id); ok && got.String() == ls.String() {
					out[c.Name+"/"+ep.Labels["app"]] = id
				}
			}
		}
	}
	return out
}

func TestPolicyFollowsANewRemotePod(t *testing.T) {
	e := startPolicyEnv(t)
	checkout := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), 8080)
	fe2 := e.pods["west/frontend-2"]
	if err := connect(fe2, checkout, 200*time.Millisecond); err == nil {
		t.Fatal("west/frontend-2, unknown to the mesh, connected")
	}
	allowedAfter, deniedAfter := e.remotePodRound(t, "2", func() {
		if err := connect(fe2, checkout, 3*time.Second); err != nil {
			t.Fatalf("west/frontend-2 allowed in the maps but cannot connect: %v", err)
		}
	})
	if err := connect(fe2, checkout, 200*time.Millisecond); err == nil {
		t.Fatal("the removed west frontend still connects")
	}
	// How fast is a figure of make bench (TestFiguresPolicyPropagation).
	t.Logf("new remote pod allowed %s after its cluster's state file changed (apiserver, sync, identity, policy, maps); removed %s after",
		allowedAfter.Round(100*time.Microsecond), deniedAfter.Round(100*time.Microsecond))
	if err := connect(e.pods["west/frontend-1"], checkout, 3*time.Second); err != nil {
		t.Errorf("west/frontend-1 lost access: %v", err)
	}
}

// TestFiguresPolicyPropagation prints how long a new remote pod (a new
// identity) takes from its cluster's state file to being allowed in this
// node's maps, and its removal to leaving the ipcache: median of 5 rounds,
// each with another identity (make bench; policy.remote_pod.*_ms).
func TestFiguresPolicyPropagation(t *testing.T) {
	figure.Require(t)
	e := startPolicyEnv(t)
	var allowed, removed []time.Duration
	for i := range 5 {
		a, r := e.remotePodRound(t, fmt.Sprint(10+i), nil)
		allowed, removed = append(allowed, a), append(removed, r)
	}
	slices.Sort(allowed)
	slices.Sort(removed)
	t.Logf("allowed after %v; removed after %v", allowed, removed)
	figure.Print("policy.remote_pod.allowed_ms", ms(allowed[len(allowed)/2]), "ms")
	figure.Print("policy.remote_pod.removed_ms", ms(removed[len(removed)/2]), "ms")
}

// remotePodRound adds west/frontend-2 (labels app=frontend, version) to
// west's state, waits until its address is in this node's ipcache with its
// new identity and that identity is allowed to east's checkout in the
// policy map, calls whileAllowed (if set), then removes the pod again and
// waits until its address left the ipcache. It returns how long after the
// state file changed each happened. The datapath is watched directly
// (every 2 ms); the deadlines are for a loaded machine.
func (e *policyEnv) remotePodRound(t *testing.T, version string, whileAllowed func()) (allowedAfter, removedAfter time.Duration) {
	t.Helper()
	west := e.mesh.Cluster("west")
	fe2 := e.pods["west/frontend-2"]
	st := SampleState(2)
	st.Endpoints = append(st.Endpoints, &statesource.Endpoint{Namespace: "shop", Pod: "frontend-2", Node: "node-1",
		IP: fe2.IP, Labels: map[string]string{"app": "frontend", "version": version}})
	checkoutID := e.identities(t)["east/checkout"]
	fe2Prefix := netip.PrefixFrom(fe2.IP, 32)
	allowed := func() bool {
		ipc, err := e.maps.IPCache()
		ent, ok := ipc[fe2Prefix]
		if err != nil || !ok {
			return false
		}
		keys, err := e.progs.Policies()
		for _, k := range keys {
			if err == nil && k.Endpoint == checkoutID && k.Peer == ent.Identity && k.Port == 8080 {
				return true
			}
		}
		return false
	}
	start := time.Now()
	if err := west.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the new west frontend (a new identity) in the ipcache and allowed in the policy map", allowed)
	allowedAfter = time.Since(start)
	if whileAllowed != nil {
		whileAllowed()
	}

	st.Endpoints = st.Endpoints[:len(st.Endpoints)-1]
	start = time.Now()
	if err := west.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the removed west frontend out of the ipcache", func() bool {
		ipc, err := e.maps.IPCache()
		_, ok := ipc[fe2Prefix]
		return err == nil && !ok
	})
	return allowedAfter, time.Since(start)
}

// An established connection is cut when its peer's address gets another
// identity that the policy does not allow, though no policy entry changes
// (another west pod keeps the allowed identity): the agent has the
// programs check their cached verdicts again.
func TestPolicyRelabelCutsEstablishedConnection(t *testing.T) {
	e := startPolicyEnv(t)
	checkout := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), 8080)
	west := e.mesh.Cluster("west")
	st := SampleState(2)
	st.Endpoints = append(st.Endpoints, &statesource.Endpoint{Namespace: "shop", Pod: "frontend-2", Node: "node-1",
		IP: e.pods["west/frontend-2"].IP, Labels: map[string]string{"app": "frontend"}})
	if err := west.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "west/frontend-2 allowed", func() bool {
		return connect(e.pods["west/frontend-2"], checkout, 100*time.Millisecond) == nil
	})
	c, err := dial(e.pods["west/frontend-1"], checkout, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echo(c, 3*time.Second); err != nil {
		t.Fatalf("established connection: %v", err)
	}
	for i := range st.Endpoints {
		if st.Endpoints[i].Pod == "frontend-1" {
			st.Endpoints[i].Labels = map[string]string{"app": "frontend-old"}
		}
	}
	if err := west.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the relabelled pod denied new connections", func() bool {
		return connect(e.pods["west/frontend-1"], checkout, 100*time.Millisecond) != nil
	})
	if err := echo(c, 500*time.Millisecond); err == nil {
		t.Error("the established connection of the relabelled pod still flows")
	}
	if err := connect(e.pods["west/frontend-2"], checkout, 3*time.Second); err != nil {
		t.Errorf("west/frontend-2 (still app=frontend) lost access: %v", err)
	}
}
