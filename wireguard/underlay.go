package wireguard

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// underlay returns the underlay's MTU, family and device: the device that
// holds NodeIP, or else the default route's; the MTU is the configured one,
// or else that device's (or the default route's, if lower).
func (d *Device) underlay() (mtu int, v6 bool, dev string, err error) {
	c := d.cfg
	link, v6, routeMTU, findErr := d.findUnderlay()
	if link != nil {
		dev = link.Attrs().Name
	}
	if c.UnderlayMTU != 0 {
		v6 = c.UnderlayIPv6
		if c.NodeIP.IsValid() {
			v6 = c.NodeIP.Is6()
		}
		return c.UnderlayMTU, v6, dev, nil
	}
	if findErr != nil {
		return 0, false, "", fmt.Errorf("finding the underlay's MTU: %w", findErr)
	}
	mtu = link.Attrs().MTU
	if routeMTU > 0 && routeMTU < mtu {
		mtu = routeMTU
	}
	return mtu, v6, dev, nil
}

// findUnderlay returns the underlay device, its family and the default
// route's MTU (0 when unset or not the default route's).
func (d *Device) findUnderlay() (link netlink.Link, v6 bool, routeMTU int, err error) {
	if ip := d.cfg.NodeIP; ip.IsValid() {
		link, err := d.linkHolding(ip)
		return link, ip.Is6(), 0, err
	}
	return d.defaultRouteLink()
}

// linkHolding returns the interface that holds ip.
func (d *Device) linkHolding(ip netip.Addr) (netlink.Link, error) {
	addrs, err := d.nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			link, err := d.nl.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("looking up the interface of node IP %s: %w", ip, err)
			}
			return link, nil
		}
	}
	return nil, fmt.Errorf("node IP %s is on no interface: set the underlay MTU", ip)
}

// defaultRouteLink returns the device of the main table's default route
// (IPv4 first), its family and its MTU.
func (d *Device) defaultRouteLink() (link netlink.Link, v6 bool, routeMTU int, err error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := d.nl.RouteListFiltered(fam, &netlink.Route{Table: mainTable}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, false, 0, fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			if link, err := d.nl.LinkByIndex(idx); err == nil {
				return link, fam == netlink.FAMILY_V6, r.MTU, nil
			}
		}
	}
	return nil, false, 0, errors.New("no default route and no node IP to find the underlay by: set the underlay MTU")
}

// loosenRPFilter makes the underlay's IPv4 reverse-path filter loose (2)
// when it is strict (1). With node encryption the remote node IPs are
// routed through the device, so a strict filter drops what still arrives
// from them on the underlay: their ARP (the kernel validates an ARP
// request's sender like a packet's source, with no port to tell it apart)
// and so, in the end, the tunnel itself. Loose mode only asks for a route to
// exist. The previous value is put back by Close.
func (d *Device) loosenRPFilter() error {
	if d.underlayDev == "" {
		d.log.Warn("node encryption: underlay device unknown (set NodeIP); a strict rp_filter on it would drop the peers' ARP")
		return nil
	}
	all, err := d.readRPFilter("all")
	if err != nil {
		return err
	}
	dev, err := d.readRPFilter(d.underlayDev)
	if err != nil {
		return err
	}
	if max(all, dev) != 1 { // the kernel uses the larger of the two
		return nil
	}
	if err := d.writeRPFilter(d.underlayDev, 2); err != nil {
		return err
	}
	d.rpRestore, d.rpRestoreValue = d.underlayDev, dev
	d.log.Info("node encryption: set the underlay's reverse-path filter to loose (strict drops the ARP of nodes routed through the device)",
		"sysctl", "net.ipv4.conf."+d.underlayDev+".rp_filter", "was", dev, "now", 2)
	return nil
}

// readRPFilter reads net.ipv4.conf.<conf>.rp_filter in the device's
// namespace.
func (d *Device) readRPFilter(conf string) (int, error) {
	var v int
	err := d.ns.do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + conf + "/rp_filter")
		if err != nil {
			return err
		}
		v, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("reading net.ipv4.conf.%s.rp_filter: %w", conf, err)
	}
	return v, nil
}

// writeRPFilter sets net.ipv4.conf.<dev>.rp_filter in the device's
// namespace.
func (d *Device) writeRPFilter(dev string, v int) error {
	return d.ns.do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/rp_filter", []byte(strconv.Itoa(v)), 0o644); err != nil {
			return fmt.Errorf("setting net.ipv4.conf.%s.rp_filter to %d: %w", dev, v, err)
		}
		return nil
	})
}

// rules are node encryption's policy routing, per family:
//
//	RulePriority:    ipproto udp sport ListenPort lookup main
//	RulePriority+1:  not fwmark FirewallMark lookup NodeRouteTable
//
// The second sends everything through the node route table, which holds
// only the remote node IPs (through the device), except the device's own
// packets, which carry the mark. The first keeps the device's own UDP out of
// it by port too, and matters for the reverse-path filter: checking an
// incoming WireGuard packet, the kernel looks up its source (a remote node
// IP) unmarked, and the second rule alone would say "through the device"
// and drop it under strict rp_filter. With a port selector in the rule set
// the kernel dissects ports for that lookup (swapped: sport is our port).
func (d *Device) rules() []*netlink.Rule {
	var rules []*netlink.Rule
	port := uint16(d.cfg.ListenPort)
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		r := netlink.NewRule()
		r.Family = fam
		r.Priority = d.cfg.RulePriority
		r.Table = mainTable
		r.IPProto = unix.IPPROTO_UDP
		r.Sport = netlink.NewRulePortRange(port, port)
		rules = append(rules, r)

		r = netlink.NewRule()
		r.Family = fam
		r.Priority = d.cfg.RulePriority + 1
		r.Table = d.cfg.NodeRouteTable
		r.Mark = uint32(d.cfg.FirewallMark)
		mask := uint32(d.cfg.FirewallMark)
		r.Mask = &mask
		r.Invert = true
		rules = append(rules, r)
	}
	return rules
}

func (d *Device) addRules() error {
	for _, r := range d.rules() {
		if err := d.nl.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding rule %s: %w", r, err)
		}
	}
	return nil
}

// deleteRules removes our rules: at our two priorities, looking up our
// tables, the first one for UDP only.
func (d *Device) deleteRules() {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		for _, want := range []netlink.Rule{
			{Priority: d.cfg.RulePriority, Table: mainTable, IPProto: unix.IPPROTO_UDP},
			{Priority: d.cfg.RulePriority + 1, Table: d.cfg.NodeRouteTable},
		} {
			rules, err := d.nl.RuleListFiltered(fam, &want, netlink.RT_FILTER_PRIORITY|netlink.RT_FILTER_TABLE)
			if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
				continue
			}
			for i := range rules {
				if want.IPProto != 0 && rules[i].IPProto != want.IPProto {
					continue
				}
				if err := d.nl.RuleDel(&rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
					d.log.Warn("removing a WireGuard rule", "err", err)
				}
			}
		}
	}
}
