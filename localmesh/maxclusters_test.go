package localmesh

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/socklb"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The 511 mode's mesh: one cluster id of the 8-bit range and two above it,
// the largest one included.
var ids511 = map[string]uint32{"east": 7, "west": 300, "north": 511}

// highIDIngress lets east's checkout pods accept TCP 8080 only from west's
// frontends (cluster 300) and UDP 5353 only from north's (cluster 511).
const highIDIngress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-from-high-ids, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: west}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [north]}
    toPorts:
    - ports: [{port: "5353", protocol: UDP}]
`

// env511 is a policy environment (startPodEnv), with the cgroup of
// east-node-1's socket load balancer when it has one.
type env511 struct {
	*policyEnv
	cgroup string
}

// start511Env has cluster ids 7, 300 and 511, every apiserver and agent
// in the 511 mode: east-node-1 enforces highIDIngress on its pods, its
// socket load balancer on a cgroup. East's checkout service has affinity
// remote: its backends are the checkout pods of west and north, all six
// in east-node-1's namespace.
func start511Env(t *testing.T) *env511 {
	max := func(c *uint32) { *c = wire.ExtendedMaxConnectedClusters }
	return startPodEnv(t, podEnvOptions{ids: ids511, policy: highIDIngress, socketLB: true,
		state: func(name string, st *statesource.State) {
			if name == "east" {
				st.Services[0].Annotations[wire.AnnotationAffinity] = wire.AffinityRemote
			}
		},
		apiserver: func(c *meshapiserver.Config) { max(&c.MaxConnectedClusters) },
		agent:     func(c *agentsync.Config) { max(&c.MaxConnectedClusters) }})
}

// podEnvOptions shape a startPodEnv environment.
type podEnvOptions struct {
	ids       map[string]uint32                        // cluster ids by name
	policy    string                                   // east-node-1's policy
	socketLB  bool                                     // east-node-1's socket load balancer on a cgroup of the test
	state     func(name string, st *statesource.State) // adjusts each cluster's SampleState
	apiserver func(*meshapiserver.Config)
	agent     func(*agentsync.Config)
}

// startPodEnv starts east-node-1 (state node node-1, a whole node agent on
// real eBPF maps enforcing o.policy) with pods of every cluster in its
// namespace: east's checkout-2 (TCP 8080, UDP 5353), every frontend-1,
// and the three checkouts of west and north (TCP 8080).
func startPodEnv(t *testing.T, o podEnvOptions) *env511 {
	testenv.RequireRoot(t)
	e := &env511{policyEnv: &policyEnv{pods: map[string]*podnet.Pod{}}}
	if o.socketLB {
		e.cgroup = newCgroup511(t)
	}
	var err error
	if e.node, err = podnet.NewNode(netip.MustParseAddr("192.168.1.1")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.node.Close() })
	for _, p := range []struct{ key, ip, veth string }{
		{"east/checkout-2", "10.1.1.12", "e5-ck2"},
		{"east/frontend-1", "10.1.1.100", "e5-fe1"},
		{"west/frontend-1", "10.2.1.100", "w5-fe1"},
		{"north/frontend-1", "10.3.1.100", "n5-fe1"},
		{"west/checkout-1", "10.2.2.11", "w5-ck1"},
		{"west/checkout-2", "10.2.1.12", "w5-ck2"},
		{"west/checkout-3", "10.2.2.13", "w5-ck3"},
		{"north/checkout-1", "10.3.2.11", "n5-ck1"},
		{"north/checkout-2", "10.3.1.12", "n5-ck2"},
		{"north/checkout-3", "10.3.2.13", "n5-ck3"},
	} {
		if e.pods[p.key], err = e.node.AddPod(p.key, netip.MustParseAddr(p.ip), p.veth); err != nil {
			t.Fatal(err)
		}
	}
	for key, p := range e.pods {
		if strings.Contains(key, "/checkout-") {
			serveTCP(t, p, 8080)
		}
	}
	serveUDP(t, e.pods["east/checkout-2"], 5353)
	testenv.WaitFor(t, 10*time.Second, "pod veths up", func() bool { return e.node.Up() == "" })

	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "checkout.yaml"), []byte(o.policy), 0o644); err != nil {
		t.Fatal(err)
	}
	var specs []ClusterSpec
	for i, n := range names { // pod addresses 10.<i+1>.x.x whatever the id
		st := SampleState(i + 1)
		if o.state != nil {
			o.state(n, st)
		}
		specs = append(specs, ClusterSpec{Name: n, ID: o.ids[n], State: st})
	}
	nodeAgent := func(name string, cfg *node.Config) bool {
		if name != "east-node-1" {
			return false
		}
		cfg.NodeName = "node-1"
		cfg.Policy.InNetns = func(fn func() error) error { return podnet.InNetns(e.node.NS, fn) }
		cfg.Policy.Dir, cfg.Policy.ReloadInterval = policyDir, 50*time.Millisecond
		cfg.SocketLB, cfg.Cgroup = o.socketLB, e.cgroup
		return true
	}
	e.mesh = startMeshWith(t, Options{Clusters: specs, EBPF: true, ReadOwnCluster: true, Node: nodeAgent,
		APIServer: o.apiserver, Agent: o.agent})
	east := e.mesh.Cluster("east").Agents[0]
	e.maps, e.enf = east.Datapath.(*datapath.Maps), east.Node.Enforcer()
	e.progs, _ = east.Node.Policy().(*tcpolicy.Programs)
	if east.Node.Flows() == nil || e.progs == nil {
		t.Fatal("east-node-1 has no flows on eBPF maps")
	}
	testenv.WaitFor(t, wait, "checkout-2 enforcing on e5-ck2", func() bool {
		s := e.enf.Status()
		for _, ep := range s.Endpoints {
			if ep.Pod == "checkout-2" && ep.Interface == "e5-ck2" && ep.State == enforcer.StateEnforcing && ep.EnforceIngress {
				return s.Enforcing
			}
		}
		return false
	})
	isDrop := func(f *flowpb.Flow) bool { return f.GetEventType().GetType() == 1 }
	e.drops = east.Node.Flows().Subscribe(observe.Query{Follow: true, Match: isDrop})
	t.Cleanup(e.drops.Close)
	return e
}

// TestMaxClusters511EndToEnd runs a mesh of clusters 7, 300 and 511 in the
// 511 mode: every agent syncs every remote, each
// cluster's identities are in its 32,768-wide range, the eBPF ipcache and
// backends carry the 9-bit cluster ids, and a policy selecting the two
// high-id clusters by io.cilium.k8s.policy.cluster holds on real packets.
func TestMaxClusters511EndToEnd(t *testing.T) {
	e := start511Env(t)
	testenv.WaitFor(t, wait, "every agent sees every remote ready with 2 nodes, 4 endpoints, 2 identities, 1 service", func() bool {
		for _, c := range e.mesh.Clusters {
			for _, peer := range e.mesh.Clusters {
				r := remoteStatus(c.Agents[0], peer.Name)
				if peer == c {
					continue // its own cluster: its ipcache is checked below
				}
				if !r.Ready || r.Nodes != 2 || r.Endpoints != 4 || r.Identities != 2 || r.Services != 1 {
					return false
				}
			}
		}
		return true
	})
	for _, c := range e.mesh.Clusters {
		checkRanges511(t, c)
	}
	checkServices511(t, e.maps)

	checkout := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), 8080)
	dns := netip.AddrPortFrom(checkout.Addr(), 5353)
	if err := connect(e.pods["west/frontend-1"], checkout, 3*time.Second); err != nil {
		t.Errorf("west (300) frontend → east checkout TCP 8080: %v, want allowed", err)
	}
	if err := echoUDP(e.pods["north/frontend-1"], dns, 3*time.Second); err != nil {
		t.Errorf("north (511) frontend → east checkout UDP 5353: %v, want allowed", err)
	}
	if err := connect(e.pods["north/frontend-1"], checkout, 300*time.Millisecond); err == nil {
		t.Fatal("north (511) frontend → east checkout TCP 8080 connected, want dropped")
	}
	d := e.readDrops(t, 1)[0]
	if d.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED || d.Source.ClusterName != "north" ||
		d.IP.Source != "10.3.1.100" || d.Destination.ClusterName != "east" || d.Destination.PodName != "checkout-2" {
		t.Errorf("drop event %+v: want policy-denied from north/frontend-1 to east/checkout-2", d)
	}
	for _, from := range []string{"west/frontend-1", "east/frontend-1"} { // UDP is north's alone
		if err := echoUDP(e.pods[from], dns, 200*time.Millisecond); err == nil {
			t.Errorf("%s → east checkout UDP 5353 answered, want dropped", from)
		}
	}
	if err := connect(e.pods["east/frontend-1"], checkout, 300*time.Millisecond); err == nil {
		t.Error("east (7) frontend → east checkout TCP 8080 connected, want dropped")
	}
	e.checkSocketLB(t)
}

// checkSocketLB connects east/frontend-1 to the checkout service from the
// socket load balancer's cgroup until both high-id clusters served it: each
// connection must reach a real backend pod, and each translation the agent
// reports (through its Observer hub) must name the backend's cluster.
func (e *env511) checkSocketLB(t *testing.T) {
	isSock := func(f *flowpb.Flow) bool { return f.GetEventType().GetType() == 7 }
	sub := e.mesh.Cluster("east").Agents[0].Node.Flows().Subscribe(observe.Query{Follow: true, Match: isSock})
	defer sub.Close()
	orig := ownCgroup511(t)
	moveSelf511(t, e.cgroup)
	defer moveSelf511(t, orig)

	want := map[string]string{"10.2.": "west", "10.3.": "north"}
	served := map[string]int{}
	deadline := time.Now().Add(wait)
	for (served["west"] == 0 || served["north"] == 0) && time.Now().Before(deadline) {
		if err := connect(e.pods["east/frontend-1"], netip.AddrPortFrom(CheckoutIP, 80), 3*time.Second); err != nil {
			t.Fatalf("east/frontend-1 → checkout service %s:80 through the socket load balancer: %v", CheckoutIP, err)
		}
		f := readFlow511(t, sub)
		dst := f.GetIP().GetDestination()
		if c := want[dst[:min(len(dst), 5)]]; c == "" || f.GetDestination().GetClusterName() != c || f.GetL4().GetTCP().GetDestinationPort() != 8080 {
			t.Fatalf("socket translation %+v: want a west or north backend on 8080, its cluster named", f)
		}
		served[f.GetDestination().GetClusterName()]++
	}
	t.Logf("socket load balancer: connections served by %v", served)
	if served["west"] == 0 || served["north"] == 0 {
		t.Errorf("the socket load balancer chose backends of %v, want west (300) and north (511)", served)
	}
}

// readFlow511 reads the next flow of sub, or fails after 5 s.
func readFlow511(t *testing.T, sub *observe.Subscription) *flowpb.Flow {
	t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok || ev.GetLostEvents() != nil {
				t.Fatalf("the socket translations ended or lost events (%v)", ev)
			}
			if f := ev.GetFlow(); f != nil {
				return f
			}
		case <-deadline.C:
			t.Fatal("no socket translation reported within 5s")
		}
	}
}

// newCgroup511 creates a cgroup for the socket load balancer, removed at
// the end of the test (once the agent detached and the process left it).
func newCgroup511(t *testing.T) string {
	t.Helper()
	root, err := socklb.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, fmt.Sprintf("clustermesh-localmesh-%d-511", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		testenv.WaitFor(t, 10*time.Second, "cgroup "+dir+" removed", func() bool {
			err := os.Remove(dir)
			return err == nil || errors.Is(err, os.ErrNotExist)
		})
	})
	return dir
}

// ownCgroup511 is the cgroup v2 directory of this process.
func ownCgroup511(t *testing.T) string {
	t.Helper()
	root, err := socklb.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, rest)
		}
	}
	t.Fatalf("no cgroup v2 line in /proc/self/cgroup:\n%s", b)
	return ""
}

// moveSelf511 moves this process (all its threads) into cgroup dir.
func moveSelf511(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		t.Fatalf("moving into cgroup %s: %v", dir, err)
	}
}

// checkRanges511 checks c's agent's eBPF ipcache: every pod of every
// cluster with its cluster's id and an identity of that cluster's 511-mode
// range [id<<15, (id+1)<<15-1].
func checkRanges511(t *testing.T, c *Cluster) {
	t.Helper()
	ipc, err := c.Agents[0].Datapath.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		id := ids511[n]
		first, last := wire.IdentityRange(id, wire.ExtendedMaxConnectedClusters)
		if first != id<<15 || last != (id+1)<<15-1 {
			t.Fatalf("IdentityRange(%d, 511) = [%d, %d], want [%d, %d]", id, first, last, id<<15, (id+1)<<15-1)
		}
		for _, ep := range SampleState(i + 1).Endpoints {
			e, ok := ipc[netip.PrefixFrom(ep.IP, 32)]
			switch {
			case !ok:
				t.Errorf("%s's ipcache has no entry for %s/%s (%s)", c.Name, n, ep.Pod, ep.IP)
			case uint32(e.ClusterID) != id || e.Identity < first || e.Identity > last:
				t.Errorf("%s's ipcache: %s/%s is %+v, want cluster %d and an identity in [%d, %d]",
					c.Name, n, ep.Pod, e, id, first, last)
			}
		}
	}
}

// checkServices511 checks that east's checkout service (affinity remote)
// has west's and north's three backends each in the eBPF maps, under their
// 9-bit cluster ids.
func checkServices511(t *testing.T, maps *datapath.Maps) {
	t.Helper()
	got := map[uint16]int{}
	testenv.WaitFor(t, wait, "east's checkout backends: 3 of west (300), 3 of north (511)", func() bool {
		svcs, err := maps.Services()
		if err != nil {
			return false
		}
		clear(got)
		for _, b := range svcs[checkoutFrontend] {
			got[b.ClusterID]++
		}
		return len(got) == 2 && got[300] == 3 && got[511] == 3
	})
}
