package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeKey identifies a route of the device: its table and destination.
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
			return out, fmt.Errorf("listing routes: %w", err)
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

// wantedRoutes are the routes through the device for the accepted peers:
// their pod CIDRs, and with node encryption their node IPs.
func (d *Device) wantedRoutes(accepted []*acceptedPeer) map[routeKey]bool {
	want := map[routeKey]bool{}
	for _, a := range accepted {
		for _, p := range a.podCIDRs {
			want[routeKey{d.cfg.RouteTable, p}] = true
		}
		if d.cfg.NodeEncryption {
			want[routeKey{d.cfg.NodeRouteTable, netip.PrefixFrom(a.nodeIP, a.nodeIP.BitLen())}] = true
		}
	}
	return want
}

// removeRoutes removes the routes of have that are not wanted, and returns
// how many it removed.
func (d *Device) removeRoutes(have map[routeKey]*netlink.Route, want map[routeKey]bool) (int, error) {
	var errs []error
	n := 0
	for k, r := range have {
		if want[k] {
			continue
		}
		if err := d.nl.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", k.dst, err))
		}
		n++
	}
	return n, errors.Join(errs...)
}

// addRoutes adds the wanted routes that have lacks, and returns how many it
// added.
func (d *Device) addRoutes(have map[routeKey]*netlink.Route, want map[routeKey]bool) (int, error) {
	var errs []error
	n := 0
	for k := range want {
		if have[k] != nil {
			continue
		}
		if err := d.nl.RouteReplace(d.route(k)); err != nil {
			errs = append(errs, fmt.Errorf("adding route %s: %w", k.dst, err))
		}
		n++
	}
	return n, errors.Join(errs...)
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
