package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

type routeKey struct {
	table int
	dst   netip.Prefix
}

// listRoutes returns the routes this package installed through the device.
func (d *Device) listRoutes() (map[routeKey]*netlink.Route, error) {
	tables := []int{d.cfg.RouteTable}
	if d.cfg.NodeEncryption {
		tables = append(tables, d.cfg.NodeRouteTable)
	}
	out := map[routeKey]*netlink.Route{}
	for _, t := range tables {
		var routes []netlink.Route
		var err error
		for try := 0; try < 5; try++ {
			routes, err = d.nl.RouteListFiltered(netlink.FAMILY_ALL,
				&netlink.Route{LinkIndex: d.linkIndex, Table: t, Protocol: RouteProtocol},
				netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
			if !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil {
			return out, fmt.Errorf("wireguard: listing routes: %w", err)
		}
		for i := range routes {
			r := &routes[i]
			if p, ok := prefixOf(r.Dst); ok {
				out[routeKey{t, p}] = r
			}
		}
	}
	return out, nil
}

func (d *Device) route(k routeKey) *netlink.Route {
	r := &netlink.Route{LinkIndex: d.linkIndex, Dst: ipNet(k.dst), Table: k.table, Protocol: RouteProtocol}
	if k.dst.Addr().Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = *ipNet(p)
	}
	return out
}

func addrPortOf(a *net.UDPAddr) netip.AddrPort {
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func samePrefixes(have []net.IPNet, want []netip.Prefix) bool {
	if len(have) != len(want) {
		return false
	}
	set := make(map[netip.Prefix]bool, len(want))
	for _, p := range want {
		set[p] = true
	}
	for i := range have {
		p, ok := prefixOf(&have[i])
		if !ok || !set[p] {
			return false
		}
	}
	return true
}
