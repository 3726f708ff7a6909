package l7proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
)

// The policy routing of the redirect: the programs mark the packets they
// assigned to a proxy socket (tcpolicy.MarkToProxy), and this rule sends
// them to a table whose only route is local, so that the stack delivers
// them to the socket instead of forwarding them (a forwarded packet that
// carries a socket is dropped).

func (p *Proxy) rules() []*netlink.Rule {
	mask := tcpolicy.MarkMagicMask
	var out []*netlink.Rule
	for _, family := range p.families() {
		r := netlink.NewRule()
		r.Family = family
		r.Mark = tcpolicy.MarkToProxy
		r.Mask = &mask
		r.Table = p.cfg.RoutingTable
		r.Priority = p.cfg.RulePriority
		out = append(out, r)
	}
	return out
}

func (p *Proxy) routes(lo int) []*netlink.Route {
	var out []*netlink.Route
	for _, family := range p.families() {
		dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if family == unix.AF_INET6 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		out = append(out, &netlink.Route{LinkIndex: lo, Dst: dst, Type: unix.RTN_LOCAL,
			Scope: netlink.SCOPE_HOST, Table: p.cfg.RoutingTable, Family: family})
	}
	return out
}

func (p *Proxy) families() []int {
	if p.cfg.NoIPv6 {
		return []int{unix.AF_INET}
	}
	return []int{unix.AF_INET, unix.AF_INET6}
}

// installRouting adds the rule and the local routes (idempotent).
func (p *Proxy) installRouting() error {
	return p.cfg.InNetns(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("l7 proxy: policy routing: find lo: %w", err)
		}
		for _, r := range p.routes(lo.Attrs().Index) {
			if err := netlink.RouteReplace(r); err != nil {
				return fmt.Errorf("l7 proxy: policy routing: local route %s in table %d: %w", r.Dst, r.Table, err)
			}
		}
		for _, r := range p.rules() {
			if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("l7 proxy: policy routing: rule fwmark %#x/%#x lookup %d: %w", r.Mark, *r.Mask, r.Table, err)
			}
		}
		return nil
	})
}

// removeRouting removes what installRouting added (absent is fine).
func (p *Proxy) removeRouting() error {
	return p.cfg.InNetns(func() error {
		var errs []error
		for _, r := range p.rules() {
			if err := netlink.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("l7 proxy: remove rule lookup %d: %w", r.Table, err))
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		for _, r := range p.routes(lo.Attrs().Index) {
			if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("l7 proxy: remove local route of table %d: %w", r.Table, err))
			}
		}
		return errors.Join(errs...)
	})
}

// earlyDemuxSysctl is the stack's early demultiplexing (IPv4 and IPv6):
// on, a packet for a transparent socket's address that is to be forwarded
// (a client's packet to a pod whose ingress proxy owns the connection, an
// upstream's reply from another node) gets the socket attached before
// routing, and the forward drops it. The proxy turns it off in the node's
// namespace (New) and restores it (Close).
const earlyDemuxSysctl = "/proc/sys/net/ipv4/ip_early_demux"

// setEarlyDemux writes v and returns the previous value.
func (p *Proxy) setEarlyDemux(v string) (prev string, err error) {
	err = p.cfg.InNetns(func() error {
		b, err := os.ReadFile(earlyDemuxSysctl)
		if err != nil {
			return err
		}
		prev = strings.TrimSpace(string(b))
		return os.WriteFile(earlyDemuxSysctl, []byte(v), 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("l7 proxy: set %s to %s: %w", earlyDemuxSysctl, v, err)
	}
	return prev, nil
}
