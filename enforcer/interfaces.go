package enforcer

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Interfaces are a node's interfaces as the enforcer needs them to find an
// endpoint's host-side veth.
type Interfaces struct {
	// ByName: every interface's index.
	ByName map[string]int
	// ByPodIP: the veth that a host route (/32, /128) of the main table
	// sends an address to. This is how most CNI plugins (and a pod of
	// internal/podnet) wire a pod, so an endpoint whose state names no
	// interface (the Kubernetes source) is found by its IP. Routes through
	// anything but a veth (a bridge, a tunnel) are not taken: attaching
	// there would judge every pod behind it as one.
	ByPodIP map[netip.Addr]string
}

// lookup returns the index and name of an endpoint's interface: the one
// named, else the veth its address is routed to.
func (ifs Interfaces) lookup(name string, ip netip.Addr) (int, string, bool) {
	if name == "" {
		name = ifs.ByPodIP[ip.Unmap()]
	}
	i, ok := ifs.ByName[name]
	return i, name, ok && name != ""
}

// listInterfaces reads the calling thread's network namespace.
func listInterfaces() (Interfaces, error) {
	out := Interfaces{ByName: map[string]int{}, ByPodIP: map[netip.Addr]string{}}
	links, err := netlink.LinkList()
	if err != nil {
		return out, fmt.Errorf("enforcer: list links: %w", err)
	}
	veths := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		out.ByName[a.Name] = a.Index
		if l.Type() == "veth" {
			veths[a.Index] = a.Name
		}
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, family)
		if err != nil {
			return out, fmt.Errorf("enforcer: list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if ones, bits := r.Dst.Mask.Size(); ones != bits {
				continue
			}
			name, ok := veths[r.LinkIndex]
			ip, okIP := netip.AddrFromSlice(r.Dst.IP)
			if ok && okIP {
				out.ByPodIP[ip.Unmap()] = name
			}
		}
	}
	return out, nil
}
