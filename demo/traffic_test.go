package demo

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath/socklb"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
)

// TestDemoTraffic runs the real traffic step on a mesh of its own, checks
// who served each phase, and that closing the demo leaves no namespace,
// veth, route, socket, cgroup or pinned map behind.
func TestDemoTraffic(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := start(ctx, Options{Out: testWriter{t}, EBPF: true, Traffic: true, Dir: t.TempDir(), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			d.close()
		}
	}()
	if _, err := d.allReady(ctx); err != nil {
		t.Fatal(err)
	}
	phases, err := d.trafficPhases(ctx)
	for _, p := range phases {
		t.Log(p.line())
	}
	if err != nil {
		t.Fatal(err)
	}

	checkDistribution(t, phases)

	n := d.net
	held := holdNamespaces(t, n)
	cgroup := n.cgroup
	closed = true
	if err := d.close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	for i, h := range held.handles {
		what := "east-node-1's namespace"
		if i > 0 {
			what = "pod namespace " + held.podIPs[i-1]
		}
		checkNamespaceEmptied(t, what, h)
		h.Close()
	}
	checkNoNamespaceHeld(t, held.inodes)
	if _, err := os.Stat(cgroup); !os.IsNotExist(err) {
		t.Errorf("the client's cgroup %s is still there (%v)", cgroup, err)
	}
	checkNoDemoCgroup(t)
	checkNoPins(t)
	checkOwnNamespaceUntouched(t, held.podIPs)
}

// checkDistribution: east's three pods serve while they are ready (each at
// least once: a pod missing by chance has a probability of 3·(2/3)⁶⁰ ≈
// 1e-10), west and north together while they are not.
func checkDistribution(t *testing.T, phases []phase) {
	t.Helper()
	if len(phases) != 3 {
		t.Fatalf("%d phases, want 3", len(phases))
	}
	for i, want := range [][]string{{"east"}, {"west", "north"}, {"east"}} {
		r := phases[i].res
		if len(r.Errors) != 0 {
			t.Errorf("%s: errors %v", phases[i].name, r.Errors)
		}
		total := 0
		for c, n := range r.served() {
			total += n
			if !slices.Contains(want, c) {
				t.Errorf("%s: %s served %d, want only %v", phases[i].name, c, n, want)
			}
		}
		for _, c := range want {
			if r.served()[c] == 0 {
				t.Errorf("%s: %s served nothing", phases[i].name, c)
			}
		}
		if total != requestsPerPhase {
			t.Errorf("%s: %d replies, want %d", phases[i].name, total, requestsPerPhase)
		}
	}
	for _, i := range []int{0, 2} {
		for _, p := range []string{"checkout-1", "checkout-2", "checkout-3"} {
			if phases[i].res.Served["east/"+p] == 0 {
				t.Errorf("%s: east's %s served nothing: %v", phases[i].name, p, phases[i].res.Served)
			}
		}
	}
}

// heldNamespaces are the traffic network's namespaces, held by the test
// to look inside once the demo is closed: east-node-1's, then one per pod
// of podIPs.
type heldNamespaces struct {
	inodes  []uint64
	handles []netns.NsHandle
	podIPs  []string
}

// holdNamespaces duplicates a handle on every namespace of n (the demo's
// own handles must all be gone once it is closed).
func holdNamespaces(t *testing.T, n *network) heldNamespaces {
	t.Helper()
	held := heldNamespaces{inodes: n.namespaces()}
	if len(held.inodes) != 1+len(n.node.Pods) || len(n.pods) != 9 || len(n.node.Pods) != 13 {
		t.Fatalf("%d namespaces for %d pods (%d checkout), want 1 + 13 (9)", len(held.inodes), len(n.node.Pods), len(n.pods))
	}
	for _, h := range n.handles() {
		fd, err := unix.FcntlInt(uintptr(h), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		held.handles = append(held.handles, netns.NsHandle(fd))
	}
	for _, p := range n.node.Pods {
		held.podIPs = append(held.podIPs, p.IP.String())
	}
	return held
}

// checkNamespaceEmptied fails if the namespace h has a link other than lo,
// or a socket other than TIME_WAIT ones (which hold no reference on the
// namespace and go with it).
func checkNamespaceEmptied(t *testing.T, what string, h netns.NsHandle) {
	t.Helper()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	links, err := nl.LinkList()
	nl.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			t.Errorf("%s still has link %s", what, l.Attrs().Name)
		}
	}
	var tcp []byte
	if err := podnet.InNetns(h, func() (err error) {
		tcp, err = os.ReadFile("/proc/thread-self/net/tcp")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(tcp)), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 3 && f[3] != "06" {
			t.Errorf("%s still has a socket: %s", what, line)
		}
	}
}

// checkOwnNamespaceUntouched: nothing ever went into the test's own
// namespace: no link named like a pod's veth, no route to a pod.
func checkOwnNamespaceUntouched(t *testing.T, podIPs []string) {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.Contains(l.Attrs().Name, "-ck") || strings.Contains(l.Attrs().Name, "-fe") {
			t.Errorf("link %s in the test's own namespace", l.Attrs().Name)
		}
	}
	for _, ip := range podIPs {
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: podnet.Host(mustAddr(t, ip))}, netlink.RT_FILTER_DST)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) > 0 {
			t.Errorf("a route to %s in the test's own namespace: %v", ip, routes)
		}
	}
}

// checkNoNamespaceHeld fails if this process still has a file descriptor
// or a mount on one of the namespaces inodes.
func checkNoNamespaceHeld(t *testing.T, inodes []uint64) {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue // the directory's own descriptor, gone
		}
		for _, ino := range inodes {
			if target == fmt.Sprintf("net:[%d]", ino) {
				t.Errorf("descriptor %s still refers to the demo's namespace %s", fd.Name(), target)
			}
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range inodes {
		if strings.Contains(string(mounts), fmt.Sprintf("net:[%d]", ino)) {
			t.Errorf("the demo's namespace net:[%d] is mounted", ino)
		}
	}
}

// checkNoDemoCgroup fails if a cgroup of this process's demos is left.
func checkNoDemoCgroup(t *testing.T) {
	t.Helper()
	root, err := socklb.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(root, fmt.Sprintf("clustermesh-demo-%d-*", os.Getpid())))
	if len(left) > 0 {
		t.Errorf("the demo left cgroups behind: %v", left)
	}
}

// checkNoPins fails if the agents of this process left pinned maps.
func checkNoPins(t *testing.T) {
	t.Helper()
	left, _ := filepath.Glob(fmt.Sprintf("/sys/fs/bpf/clustermesh-localmesh/%d-*", os.Getpid()))
	if len(left) > 0 {
		t.Errorf("the demo left pinned maps behind: %v", left)
	}
}

// testWriter logs every write to t.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestSpilloverTraffic: with clustermesh.io/min-local-backends: "4" and only
// one of east's checkout pods ready, real connections through the socket
// load balancer go a quarter to east and three quarters to west and north.
func TestSpilloverTraffic(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := start(ctx, Options{Out: testWriter{t}, EBPF: true, Traffic: true, Dir: t.TempDir(), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	if _, err := d.allReady(ctx); err != nil {
		t.Fatal(err)
	}
	east := d.m.Cluster("east")
	st := demoState(1)
	st.Services[0].Annotations["clustermesh.io/min-local-backends"] = "4"
	for i := 1; i < 3; i++ { // checkout-2 and checkout-3 unready
		ready := false
		st.Endpoints[i].Ready = &ready
	}
	if err := east.WriteState(st); err != nil {
		t.Fatal(err)
	}
	// 1 local of 4 wanted: local weight R=6 : remote weight N−L=3 → 2 slots
	// for east's pod, 1 for each of the 6 remote ones.
	if err := d.eastSelects(ctx, map[uint16]int{1: 2, 2: 3, 3: 3}); err != nil {
		t.Fatal(err)
	}
	const n = 400
	res, err := d.net.runClient(ctx, serviceURL(), n, true)
	if err != nil {
		t.Fatal(err)
	}
	served := res.served()
	t.Logf("served: %v (errors %v)", served, res.Errors)
	// Binomial(400, 1/4): mean 100, sd 8.7; allow 5 sd.
	if e := served["east"]; e < 57 || e > 143 || served["west"]+served["north"]+e != n {
		t.Errorf("east served %d of %d, want about a quarter; all: %v", e, n, served)
	}
}

// TestStaleClusterTraffic: with clustermesh.io/failover-on-stale-cluster,
// real connections stop going to a remote whose heartbeat is stale (north:
// one heartbeat a minute, against a 500 ms timeout) and keep going to a
// fresh one (west: a heartbeat every 50 ms); without the annotation both
// are used.
func TestStaleClusterTraffic(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := Options{Out: testWriter{t}, EBPF: true, Traffic: true, Dir: t.TempDir(), Logger: discardLogger()}
	o.tweak.APIServer = func(c *meshapiserver.Config) {
		if c.ClusterName == "west" {
			c.HeartbeatInterval = 50 * time.Millisecond
		}
	}
	o.tweak.Agent = func(c *agentsync.Config) { c.HeartbeatTimeout = 500 * time.Millisecond }
	d, err := start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	if _, err := d.allReady(ctx); err != nil {
		t.Fatal(err)
	}
	east := d.m.Cluster("east")
	for _, failover := range []bool{true, false} {
		st := demoState(1)
		st.Services[0].Annotations["service.cilium.io/affinity"] = "remote"
		if failover {
			st.Services[0].Annotations["clustermesh.io/failover-on-stale-cluster"] = "true"
		}
		if err := east.WriteState(st); err != nil {
			t.Fatal(err)
		}
		want := map[uint16]int{2: backendsPerCluster, 3: backendsPerCluster}
		if failover {
			want = map[uint16]int{2: backendsPerCluster}
		}
		if err := d.eastSelects(ctx, want); err != nil {
			t.Fatalf("failover=%v: %v", failover, err)
		}
		res, err := d.net.runClient(ctx, serviceURL(), 60, true)
		if err != nil {
			t.Fatal(err)
		}
		served := res.served()
		t.Logf("failover=%v: served %v", failover, served)
		if failover && (served["north"] != 0 || served["west"] != 60) {
			t.Errorf("stale north still served: %v", served)
		}
		if !failover && (served["north"] == 0 || served["west"] == 0 || served["east"] != 0) {
			t.Errorf("without the annotation west and north serve: %v", served)
		}
	}
}
