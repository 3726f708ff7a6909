package demo

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/localmesh"
)

// The demo's real traffic (as root): every checkout pod of every cluster is
// a network namespace of its own with an HTTP server on the service's
// targetPort that answers with its cluster and pod name, and east-node-1 is
// a network namespace too, the "host" of the pods:
//
//	east-node-1 (client, socket LB)            pod namespace, one per checkout pod
//	  <cluster>-ck<i>  192.168.1.1 peer 10.C.N.X ── eth0  10.C.N.X peer 192.168.1.1
//	  (route 10.C.N.X/32 dev <cluster>-ck<i>)             default via 192.168.1.1
//
// The node's namespace holds one veth per pod and a /32 route to each pod
// address through it; the pods of west and north hang off east-node-1
// directly (the demo does not model tunnels between nodes). The client runs
// in the node's namespace and in a cgroup of the demo's own, to which the
// socket load balancer of east-node-1's maps is attached.
//
// The node is a namespace and not the machine's own: the sample addresses
// (10.1-3.x.x, 10.96.0.10) are fixed, so routes to them in the machine's
// namespace would shadow real 10.x networks and collide with a second demo
// (or `go test ./demo`) running at the same time. Every namespace is
// unnamed: it lives as long as the demo holds it, so even a demo killed with
// SIGKILL leaves no namespace, veth or route behind. Only the cgroup (a
// directory) survives a SIGKILL; it is named clustermesh-demo-<pid>-<random>.

// podVeth is the name, inside every pod, of the pod's end of its veth.
const podVeth = "eth0"

// pod is one checkout pod: its namespace, its veth and its HTTP server.
type pod struct {
	cluster, name string
	ip            netip.Addr
	veth          string // the node's end of the veth
	ns            netns.NsHandle
	srv           *http.Server
	served        chan struct{} // closed when srv.Serve has returned
}

// network is the environment of the demo's real traffic.
type network struct {
	nodeIP  netip.Addr
	port    uint16 // the pods' HTTP port (the service's targetPort)
	node    netns.NsHandle
	nodeNL  *netlink.Handle
	pods    []*pod
	cgroup  string // the socket load balancer's cgroup, once attached
	lb      *datapath.SockLB
	closeMu sync.Mutex
	closed  bool
}

// podSpec is a checkout pod of the sample state.
type podSpec struct {
	cluster, name string
	ip            netip.Addr
	port          uint16
}

// checkoutPods lists the checkout pods of every demo cluster, with the
// service's targetPort, from localmesh.SampleState.
func checkoutPods() ([]podSpec, error) {
	var out []podSpec
	for i, c := range Clusters {
		st := localmesh.SampleState(i + 1)
		var port uint16
		for _, s := range st.Services {
			if s.Namespace == "shop" && s.Name == "checkout" && len(s.Ports) > 0 {
				port = s.Ports[0].Target()
			}
		}
		if port == 0 {
			return nil, fmt.Errorf("demo: the sample state of %s has no shop/checkout service", c)
		}
		for _, e := range st.Endpoints {
			if e.Labels["app"] == "checkout" {
				out = append(out, podSpec{cluster: c, name: e.Pod, ip: e.IP, port: port})
			}
		}
	}
	return out, nil
}

// setupNetwork creates east-node-1's namespace (node address nodeIP) and a
// namespace, veth, route and HTTP server per pod, and waits until every
// veth is up. On error everything made so far is removed.
func setupNetwork(ctx context.Context, nodeIP netip.Addr, specs []podSpec, logger *slog.Logger) (_ *network, err error) {
	n := &network{nodeIP: nodeIP, node: netns.None()}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
		}
	}()
	if n.node, err = newNetns(); err != nil {
		return n, fmt.Errorf("demo: create east-node-1's network namespace: %w", err)
	}
	if n.nodeNL, err = netlink.NewHandleAt(n.node); err != nil {
		return n, fmt.Errorf("demo: netlink in east-node-1's namespace: %w", err)
	}
	if err := linkUp(n.nodeNL, "lo"); err != nil {
		return n, err
	}
	perCluster := map[string]int{}
	for _, s := range specs {
		perCluster[s.cluster]++
		p := &pod{cluster: s.cluster, name: s.name, ip: s.ip, veth: fmt.Sprintf("%s-ck%d", s.cluster, perCluster[s.cluster])}
		n.port = s.port
		if err := n.addPod(p, logger); err != nil {
			return n, fmt.Errorf("demo: pod %s/%s (%s): %w", s.cluster, s.name, s.ip, err)
		}
	}
	err = waitUntil(ctx, func() (bool, string) {
		for _, p := range n.pods {
			l, err := n.nodeNL.LinkByName(p.veth)
			if err != nil {
				return false, err.Error()
			}
			if a := l.Attrs(); a.OperState != netlink.OperUp || a.RawFlags&unix.IFF_LOWER_UP == 0 {
				return false, fmt.Sprintf("veth %s is %s", p.veth, a.OperState)
			}
		}
		return true, ""
	})
	if err != nil {
		return n, fmt.Errorf("demo: pod veths: %w", err)
	}
	return n, nil
}

// addPod creates p's namespace, its veth to the node, the addresses and
// routes on both ends, and starts its HTTP server.
func (n *network) addPod(p *pod, logger *slog.Logger) error {
	var err error
	if p.ns, err = newNetns(); err != nil {
		return fmt.Errorf("create the network namespace: %w", err)
	}
	n.pods = append(n.pods, p) // from here on Close cleans it up
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.veth}, PeerName: podVeth, PeerNamespace: netlink.NsFd(p.ns)}
	if err := n.nodeNL.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", p.veth, err)
	}
	nodeEnd, err := n.nodeNL.LinkByName(p.veth)
	if err != nil {
		return err
	}
	// A point-to-point address on the node's end: the kernel adds the /32
	// route to the pod with the node's address as its source.
	if err := n.nodeNL.AddrAdd(nodeEnd, &netlink.Addr{IPNet: host(n.nodeIP), Peer: host(p.ip)}); err != nil {
		return fmt.Errorf("address on %s: %w", p.veth, err)
	}
	if err := n.nodeNL.LinkSetUp(nodeEnd); err != nil {
		return fmt.Errorf("set %s up: %w", p.veth, err)
	}
	nl, err := netlink.NewHandleAt(p.ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	if err := linkUp(nl, "lo"); err != nil {
		return err
	}
	podEnd, err := nl.LinkByName(podVeth)
	if err != nil {
		return err
	}
	if err := nl.AddrAdd(podEnd, &netlink.Addr{IPNet: host(p.ip), Peer: host(n.nodeIP)}); err != nil {
		return fmt.Errorf("address on the pod's %s: %w", podVeth, err)
	}
	if err := nl.LinkSetUp(podEnd); err != nil {
		return err
	}
	if err := nl.RouteAdd(&netlink.Route{LinkIndex: podEnd.Attrs().Index, Gw: n.nodeIP.AsSlice()}); err != nil {
		return fmt.Errorf("default route of the pod: %w", err)
	}

	var ln net.Listener
	addr := netip.AddrPortFrom(p.ip, n.port).String()
	if err := inNetns(p.ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	reply := []byte(p.cluster + " " + p.name + "\n")
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(reply)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	p.served = make(chan struct{})
	go func() {
		defer close(p.served)
		p.srv.Serve(ln)
	}()
	return nil
}

// attach creates the demo's cgroup under the cgroup v2 mount and attaches
// the socket load balancer of maps to it.
func (n *network) attach(maps *datapath.Maps) error {
	root, err := cgroup2Mount()
	if err != nil {
		return err
	}
	var b [4]byte
	rand.Read(b[:])
	dir := filepath.Join(root, fmt.Sprintf("clustermesh-demo-%d-%s", os.Getpid(), hex.EncodeToString(b[:])))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("demo: create the client's cgroup: %w", err)
	}
	n.cgroup = dir
	if n.lb, err = datapath.AttachSockLB(maps, dir); err != nil {
		return err
	}
	return nil
}

// Close stops the servers, removes the veths, the namespaces and the cgroup
// (waiting a few seconds for exiting processes to leave it) and detaches the
// socket load balancer. It is idempotent.
func (n *network) Close() error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	if n.lb != nil {
		errs = append(errs, n.lb.Close())
	}
	if n.cgroup != "" {
		errs = append(errs, removeCgroup(n.cgroup, 5*time.Second))
	}
	for _, p := range n.pods {
		if p.srv != nil {
			p.srv.Close()
			<-p.served
		}
		if n.nodeNL != nil {
			// Deleting one end of a veth deletes both, and the pod's route.
			if l, err := n.nodeNL.LinkByName(p.veth); err == nil {
				if err := n.nodeNL.LinkDel(l); err != nil {
					errs = append(errs, fmt.Errorf("demo: delete veth %s: %w", p.veth, err))
				}
			}
		}
		if p.ns.IsOpen() {
			errs = append(errs, p.ns.Close())
		}
	}
	if n.nodeNL != nil {
		n.nodeNL.Close()
	}
	if n.node.IsOpen() {
		errs = append(errs, n.node.Close())
	}
	return errors.Join(errs...)
}

// namespaces returns the inode numbers of every namespace of n.
func (n *network) namespaces() []uint64 {
	var out []uint64
	for _, h := range append([]netns.NsHandle{n.node}, podHandles(n.pods)...) {
		var st unix.Stat_t
		if h.IsOpen() && unix.Fstat(int(h), &st) == nil {
			out = append(out, st.Ino)
		}
	}
	return out
}

func podHandles(pods []*pod) []netns.NsHandle {
	var out []netns.NsHandle
	for _, p := range pods {
		out = append(out, p.ns)
	}
	return out
}

// removeCgroup removes the cgroup directory dir, retrying while it is busy
// (a process that has just exited may still count as a member) for up to
// wait.
func removeCgroup(dir string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("demo: remove the cgroup %s: %w", dir, err)
		}
		time.Sleep(5 * time.Millisecond) // retrying a removal, not waiting for an event
	}
}

func host(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func linkUp(nl *netlink.Handle, name string) error {
	l, err := nl.LinkByName(name)
	if err != nil {
		return err
	}
	return nl.LinkSetUp(l)
}

// newNetns creates an unnamed network namespace and returns a handle to it
// (the calling goroutine's thread is not moved).
func newNetns() (netns.NsHandle, error) {
	h := netns.None()
	err := onLockedThread(func() error {
		var err error
		h, err = netns.New()
		return err
	})
	return h, err
}

// inNetns runs fn on a thread in the network namespace h: the sockets fn
// creates (and the processes it starts) live there.
func inNetns(h netns.NsHandle, fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("setns: %w", err)
		}
		return fn()
	})
}

// onLockedThread runs fn on a locked OS thread whose network namespace is
// switched back afterwards; the thread is discarded if that fails.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return // the thread stays locked and exits with the goroutine
		}
		defer orig.Close()
		ferr := fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// cgroup2Mount returns the first cgroup v2 mount point of
// /proc/self/mountinfo (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("demo: find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i >= 5 && i+1 < len(fields) {
				if fields[i+1] == "cgroup2" {
					return strings.ReplaceAll(fields[4], `\040`, " "), nil
				}
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("demo: read /proc/self/mountinfo: %w", err)
	}
	return "", errors.New("demo: no cgroup v2 is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified): the socket load balancer needs one")
}
