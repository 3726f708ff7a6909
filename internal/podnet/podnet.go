// Package podnet wires pods the way a CNI plugin would, for the demo and the
// tests that send real packets: a node is a network namespace, and every pod
// a network namespace of its own joined to its node by a veth, with a /32
// route each way. Every namespace is unnamed, so it lives exactly as long as
// its handle: a process killed with SIGKILL leaves no namespace, veth or
// route behind.
package podnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// PodVeth is the name, inside every pod, of the pod's end of its veth.
const PodVeth = "eth0"

// Node is a node's network namespace, with its pods.
type Node struct {
	IP   netip.Addr // the node's address on every pod veth
	NS   netns.NsHandle
	NL   *netlink.Handle // netlink in NS
	Pods []*Pod
}

// Pod is one pod: its namespace and the node's end of its veth.
type Pod struct {
	Name     string
	IP       netip.Addr
	HostVeth string // the node's end of the veth
	Ifindex  int    // of HostVeth, in the node's namespace
	NS       netns.NsHandle
}

// NewNode creates a node namespace with lo up. Close it when done.
func NewNode(ip netip.Addr) (_ *Node, err error) {
	n := &Node{IP: ip, NS: netns.None()}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
		}
	}()
	if n.NS, err = NewNetns(); err != nil {
		return n, fmt.Errorf("podnet: create the node's network namespace: %w", err)
	}
	if n.NL, err = netlink.NewHandleAt(n.NS); err != nil {
		return n, fmt.Errorf("podnet: netlink in the node's namespace: %w", err)
	}
	if err := linkUp(n.NL, "lo"); err != nil {
		return n, err
	}
	// The node routes between its pods.
	err = InNetns(n.NS, func() error {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("podnet: enable forwarding in the node's namespace: %w", err)
			}
		}
		return nil
	})
	return n, err
}

// AddPod creates a pod namespace with address ip, joined to the node by a
// veth whose node end is hostVeth, and routes between them.
func (n *Node) AddPod(name string, ip netip.Addr, hostVeth string) (*Pod, error) {
	ns, err := NewNetns()
	if err != nil {
		return nil, fmt.Errorf("podnet: pod %s: create the network namespace: %w", name, err)
	}
	p := &Pod{Name: name, IP: ip, HostVeth: hostVeth, NS: ns}
	n.Pods = append(n.Pods, p) // from here on Close cleans it up
	if err := n.wire(p); err != nil {
		return nil, fmt.Errorf("podnet: pod %s (%s): %w", name, ip, err)
	}
	return p, nil
}

func (n *Node) wire(p *Pod) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.HostVeth}, PeerName: PodVeth, PeerNamespace: netlink.NsFd(p.NS)}
	if err := n.NL.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", p.HostVeth, err)
	}
	nodeEnd, err := n.NL.LinkByName(p.HostVeth)
	if err != nil {
		return err
	}
	p.Ifindex = nodeEnd.Attrs().Index
	// A point-to-point address on the node's end: the kernel adds the /32
	// route to the pod with the node's address as its source.
	if err := n.NL.AddrAdd(nodeEnd, &netlink.Addr{IPNet: Host(n.IP), Peer: Host(p.IP), Flags: noDAD(n.IP)}); err != nil {
		return fmt.Errorf("address on %s: %w", p.HostVeth, err)
	}
	if err := n.NL.LinkSetUp(nodeEnd); err != nil {
		return fmt.Errorf("set %s up: %w", p.HostVeth, err)
	}
	nl, err := netlink.NewHandleAt(p.NS)
	if err != nil {
		return err
	}
	defer nl.Close()
	if err := linkUp(nl, "lo"); err != nil {
		return err
	}
	podEnd, err := nl.LinkByName(PodVeth)
	if err != nil {
		return err
	}
	if err := nl.AddrAdd(podEnd, &netlink.Addr{IPNet: Host(p.IP), Peer: Host(n.IP), Flags: noDAD(p.IP)}); err != nil {
		return fmt.Errorf("address on the pod's %s: %w", PodVeth, err)
	}
	if err := nl.LinkSetUp(podEnd); err != nil {
		return err
	}
	def := &netlink.Route{LinkIndex: podEnd.Attrs().Index, Gw: n.IP.AsSlice()}
	if n.IP.Is6() {
		def.Flags = int(netlink.FLAG_ONLINK) // the peer's route may not be there yet
	}
	if err := nl.RouteAdd(def); err != nil {
		return fmt.Errorf("default route of the pod: %w", err)
	}
	return nil
}

// Up reports whether every pod's veth is up on the node's side ("" when
// so, else what is not).
func (n *Node) Up() string {
	for _, p := range n.Pods {
		l, err := n.NL.LinkByName(p.HostVeth)
		if err != nil {
			return err.Error()
		}
		if a := l.Attrs(); a.OperState != netlink.OperUp || a.RawFlags&unix.IFF_LOWER_UP == 0 {
			return fmt.Sprintf("veth %s is %s", p.HostVeth, a.OperState)
		}
	}
	return ""
}

// RemovePod deletes p's veth and closes its namespace.
func (n *Node) RemovePod(p *Pod) error {
	var errs []error
	if l, err := n.NL.LinkByName(p.HostVeth); err == nil {
		errs = append(errs, n.NL.LinkDel(l))
	}
	errs = append(errs, p.NS.Close())
	for i, q := range n.Pods {
		if q == p {
			n.Pods = append(n.Pods[:i], n.Pods[i+1:]...)
			break
		}
	}
	return errors.Join(errs...)
}

// Close removes every pod and the node's namespace; it is idempotent.
func (n *Node) Close() error {
	var errs []error
	for len(n.Pods) > 0 {
		errs = append(errs, n.RemovePod(n.Pods[0]))
	}
	if n.NL != nil {
		n.NL.Close()
		n.NL = nil
	}
	if n.NS.IsOpen() {
		errs = append(errs, n.NS.Close())
		n.NS = netns.None()
	}
	return errors.Join(errs...)
}

// noDAD is the flag that makes an IPv6 address usable at once (no duplicate
// address detection: the veth's other end is the only neighbour).
func noDAD(a netip.Addr) int {
	if a.Is6() {
		return unix.IFA_F_NODAD
	}
	return 0
}

// Host is a as a host prefix.
func Host(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func linkUp(nl *netlink.Handle, name string) error {
	l, err := nl.LinkByName(name)
	if err != nil {
		return err
	}
	return nl.LinkSetUp(l)
}

// NewNetns creates an unnamed network namespace and returns a handle to it
// (the calling goroutine's thread is not moved).
func NewNetns() (netns.NsHandle, error) {
	h := netns.None()
	err := OnLockedThread(func() error {
		var err error
		h, err = netns.New()
		return err
	})
	return h, err
}

// InNetns runs fn on a thread in the network namespace h: the sockets fn
// creates (and the processes it starts) live there.
func InNetns(h netns.NsHandle, fn func() error) error {
	return OnLockedThread(func() error {
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("setns: %w", err)
		}
		return fn()
	})
}

// OnLockedThread runs fn on a locked OS thread whose network namespace is
// switched back afterwards; the thread is discarded if that fails.
func OnLockedThread(fn func() error) error {
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
