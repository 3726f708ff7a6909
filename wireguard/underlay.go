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
		return 0, false, "", findErr
	}
	mtu = link.Attrs().MTU
	if routeMTU > 0 && routeMTU < mtu {
		mtu = routeMTU
	}
	return mtu, v6, dev, nil
}

func (d *Device) findUnderlay() (link netlink.Link, v6 bool, routeMTU int, err error) {
	c := d.cfg
	if c.NodeIP.IsValid() {
		addrs, err := d.nl.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return nil, false, 0, fmt.Errorf("wireguard: listing addresses: %w", err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == c.NodeIP {
				link, err := d.nl.LinkByIndex(a.LinkIndex)
				if err != nil {
					return nil, false, 0, fmt.Errorf("wireguard: the interface of %s: %w", c.NodeIP, err)
				}
				return link, c.NodeIP.Is6(), 0, nil
			}
		}
		return nil, false, 0, fmt.Errorf("wireguard: node IP %s is on no interface; set the underlay MTU", c.NodeIP)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := d.nl.RouteListFiltered(fam, &netlink.Route{Table: mainTable}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, false, 0, fmt.Errorf("wireguard: listing routes: %w", err)
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
	return nil, false, 0, errors.New("wireguard: cannot detect the underlay MTU (no default route and no node IP); set the underlay MTU")
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
	read := func(conf string) (int, error) {
		var v int
		err := d.ns.do(func() error {
			b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + conf + "/rp_filter")
			if err != nil {
				return err
			}
			v, err = strconv.Atoi(strings.TrimSpace(string(b)))
			return err
		})
		return v, err
	}
	all, err := read("all")
	if err != nil {
		return fmt.Errorf("wireguard: reading rp_filter: %w", err)
	}
	dev, err := read(d.underlayDev)
	if err != nil {
		return fmt.Errorf("wireguard: reading rp_filter of %s: %w", d.underlayDev, err)
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

func (d *Device) writeRPFilter(dev string, v int) error {
	return d.ns.do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/rp_filter", []byte(strconv.Itoa(v)), 0o644); err != nil {
			return fmt.Errorf("wireguard: setting net.ipv4.conf.%s.rp_filter: %w", dev, err)
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
			return fmt.Errorf("wireguard: adding rule %s: %w", r, err)
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
