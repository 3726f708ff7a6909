package demo

import (
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
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath/socklb"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/l7dns/dnsserver"
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

// pod is one checkout pod: its namespace and veth, and its HTTP server.
type pod struct {
	*podnet.Pod
	cluster, name string
	srv           *http.Server
	served        chan struct{} // closed when srv.Serve has returned
}

// network is the environment of the demo's real traffic.
type network struct {
	node *podnet.Node // east-node-1; its Pods are every pod below
	port uint16       // the pods' HTTP port (the service's targetPort)
	pods []*pod       // the checkout pods
	// frontends are the policy and L7 steps' clients, by cluster.
	frontends map[string]*podnet.Pod
	// api is the L7 step's external server (apiAddr, outside every
	// cluster's state) and dns the DNS server in east's checkout-2.
	api     *pod
	dns     *dnsserver.Server
	cgroup  string // the client's cgroup, where east-node-1's socket load balancer is attached
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

// setupNetwork creates east-node-1's namespace (node address nodeIP), a
// namespace, veth, route and HTTP server per checkout pod and a namespace
// per frontend, and waits until every veth is up. On error everything made
// so far is removed.
func setupNetwork(ctx context.Context, nodeIP netip.Addr, specs []podSpec, fronts []podSpec, logger *slog.Logger) (_ *network, err error) {
	n := &network{frontends: map[string]*podnet.Pod{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
		}
	}()
	if n.node, err = podnet.NewNode(nodeIP); err != nil {
		return n, fmt.Errorf("demo: east-node-1: %w", err)
	}
	perCluster := map[string]int{}
	for _, s := range specs {
		perCluster[s.cluster]++
		n.port = s.port
		p, err := n.addPod(s, podVethName(s.cluster, "ck", perCluster[s.cluster]), logger)
		if err != nil {
			return n, fmt.Errorf("demo: pod %s/%s (%s): %w", s.cluster, s.name, s.ip, err)
		}
		n.pods = append(n.pods, p)
	}
	api := podSpec{cluster: "ext", name: apiName, ip: apiAddr.Addr(), port: apiAddr.Port()}
	if n.api, err = n.addPod(api, podVethName("ext", "api", 1), logger); err != nil {
		return n, fmt.Errorf("demo: %s (%s): %w", apiName, api.ip, err)
	}
	if err := n.serveDNS(); err != nil {
		return n, err
	}
	for _, s := range fronts {
		if n.frontends[s.cluster], err = n.node.AddPod(s.cluster+"/"+s.name, s.ip, podVethName(s.cluster, "fe", 1)); err != nil {
			return n, fmt.Errorf("demo: %w", err)
		}
	}
	err = waitUntil(ctx, func() (bool, string) {
		msg := n.node.Up()
		return msg == "", msg
	})
	if err != nil {
		return n, fmt.Errorf("demo: pod veths: %w", err)
	}
	return n, nil
}

// podVethName names the node's end of a pod's veth: <cluster>-<kind><i>.
func podVethName(cluster, kind string, i int) string { return fmt.Sprintf("%s-%s%d", cluster, kind, i) }

// addPod creates the pod of s (namespace, veth, routes) and starts its
// HTTP server on s.port.
func (n *network) addPod(s podSpec, veth string, logger *slog.Logger) (*pod, error) {
	pp, err := n.node.AddPod(s.cluster+"/"+s.name, s.ip, veth)
	if err != nil {
		return nil, err
	}
	p := &pod{Pod: pp, cluster: s.cluster, name: s.name}
	var ln net.Listener
	addr := netip.AddrPortFrom(p.IP, s.port).String()
	if err := podnet.InNetns(p.NS, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
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
	return p, nil
}

// newCgroup creates the demo's client cgroup under the cgroup v2 mount:
// east-node-1's agent attaches its socket load balancer to it.
func newCgroup() (string, error) {
	root, err := socklb.Cgroup2Mount()
	if err != nil {
		return "", err
	}
	var b [4]byte
	rand.Read(b[:])
	dir := filepath.Join(root, fmt.Sprintf("clustermesh-demo-%d-%s", os.Getpid(), hex.EncodeToString(b[:])))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("demo: create the client's cgroup: %w", err)
	}
	return dir, nil
}

// Close stops the servers, removes the veths and the namespaces. It is
// idempotent.
func (n *network) Close() error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	for _, p := range append(slices.Clip(n.pods), n.api) {
		if p != nil {
			p.srv.Close()
			<-p.served
		}
	}
	if n.dns != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, n.dns.Close(ctx))
		cancel()
	}
	if n.node != nil {
		// Deleting one end of a veth deletes both, and the pod's route.
		errs = append(errs, n.node.Close())
	}
	return errors.Join(errs...)
}

// namespaces returns the inode numbers of every namespace of n.
func (n *network) namespaces() []uint64 {
	var out []uint64
	for _, h := range n.handles() {
		var st unix.Stat_t
		if h.IsOpen() && unix.Fstat(int(h), &st) == nil {
			out = append(out, st.Ino)
		}
	}
	return out
}

// handles are the node's namespace, then every pod's.
func (n *network) handles() []netns.NsHandle {
	out := []netns.NsHandle{n.node.NS}
	for _, p := range n.node.Pods {
		out = append(out, p.NS)
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
