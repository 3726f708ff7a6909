// Package wireguard encrypts the traffic between nodes of the mesh with
// WireGuard: one device per node, one peer per remote node learned through
// sync (its public key, its endpoint, its pod CIDRs as allowed IPs), and a
// route per remote pod CIDR through the device.
//
// The kernel implementation is used when the kernel has it; otherwise
// wireguard-go runs in this process on a TUN device, and both are configured
// through the same wgctrl calls. See docs/wireguard.md.
package wireguard

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Starting handshakes. Turning a peer's persistent keepalive on makes both
// implementations send a keepalive at once, which starts a handshake; turned
// off again right after, it is a one-shot "nudge". Without it, a node whose
// first handshake attempt reached a peer that did not know it yet (a new
// node, or a key just rotated) waits for WireGuard's retry, 5 s later.
//
// But two nodes that start a handshake with each other at the same moment
// collide, and that costs the same 5 s (more, with TCP's backoff on top). So
// only one side nudges at once: for a new pair, the node with the smaller
// public key. The other side, and a node that sees a peer's key change (the
// peer rotated it and may be starting a handshake right now), nudge after
// nudgeDelay, and only if no handshake happened by then. Nudges run on a
// timer after SetPeers returns: a handshake costs three X25519 operations,
// which would otherwise double the time to configure a thousand peers.
const (
	nudgeKeepalive = 25 * time.Second
	nudgeDelay     = 250 * time.Millisecond
)

// Device is a WireGuard device, its peers and its routes. Its methods are
// safe for concurrent use; the nil *Device reports encryption off.
type Device struct {
	cfg         Config
	log         *slog.Logger
	ns          nsRunner
	nl          *netlink.Handle
	wg          *wgctrl.Client
	wgMu        sync.Mutex       // serializes wgctrl calls (runNudges works outside mu)
	user        *userspaceDevice // nil with the kernel implementation
	impl        string
	linkIndex   int
	mtu         int
	underlayMTU int
	underlayDev string
	// rp_filter of the underlay to put back on Close ("" if untouched).
	rpRestore      string
	rpRestoreValue int

	mu         sync.Mutex
	priv       wgtypes.Key
	pub        wgtypes.Key
	desired    []Peer
	local      []netip.Prefix
	accepted   map[wgtypes.Key]*acceptedPeer
	incumbents map[string]bool
	rejected   []Rejection
	logged     map[string]string // rejections already logged: id → reason
	lastErr    error
	rotatedAt  time.Time
	closed     bool
	nudgeTimer *time.Timer
	nudgeDue   time.Time // when nudgeTimer fires
	nudgeWG    sync.WaitGroup
	pending    map[wgtypes.Key]time.Time // peers to nudge, and when
	nudging    int                       // runNudges calls at work
}

// Open creates the device (named cfg.DeviceName; a stale device of that name
// left by a previous run is replaced), loads or creates the private key,
// sets the MTU and brings the device up. Close removes everything it made.
func Open(cfg Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("device", cfg.DeviceName)
	priv, _, err := LoadOrCreateKey(cfg.PrivateKeyFile, log)
	if err != nil {
		return nil, err
	}
	ns, err := openNS(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	d := &Device{
		cfg: cfg, log: log, ns: ns, priv: priv, pub: priv.PublicKey(),
		local: slices.Clone(cfg.LocalPodCIDRs), accepted: map[wgtypes.Key]*acceptedPeer{},
		incumbents: map[string]bool{}, logged: map[string]string{},
	}
	ok := false
	defer func() {
		if !ok {
			d.teardown()
		}
	}()
	if d.nl, err = ns.netlinkHandle(); err != nil {
		return nil, err
	}
	mtu, v6, dev, err := d.underlay()
	if err != nil {
		return nil, err
	}
	d.underlayMTU, d.underlayDev, d.mtu = mtu, dev, DeviceMTU(mtu, v6)
	if err := d.removeStale(); err != nil {
		return nil, err
	}
	if err := d.create(); err != nil {
		return nil, err
	}
	if err := ns.do(func() error {
		var err error
		d.wg, err = wgctrl.New()
		return err
	}); err != nil {
		return nil, fmt.Errorf("wireguard: wgctrl: %w", err)
	}
	port, mark := cfg.ListenPort, 0
	if cfg.NodeEncryption {
		mark = cfg.FirewallMark
	}
	if err := d.wgConfigure(wgtypes.Config{
		PrivateKey: &priv, ListenPort: &port, FirewallMark: &mark, ReplacePeers: true,
	}); err != nil {
		return nil, fmt.Errorf("wireguard: configuring %s: %w", cfg.DeviceName, err)
	}
	link, err := d.nl.LinkByName(cfg.DeviceName)
	if err != nil {
		return nil, fmt.Errorf("wireguard: %s: %w", cfg.DeviceName, err)
	}
	d.linkIndex = link.Attrs().Index
	if err := d.nl.LinkSetMTU(link, d.mtu); err != nil {
		return nil, fmt.Errorf("wireguard: setting the MTU of %s to %d: %w", cfg.DeviceName, d.mtu, err)
	}
	if err := d.nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("wireguard: bringing %s up: %w", cfg.DeviceName, err)
	}
	if err := d.waitBound(); err != nil {
		return nil, err
	}
	if cfg.NodeEncryption {
		if err := d.addRules(); err != nil {
			return nil, err
		}
		if err := d.loosenRPFilter(); err != nil {
			return nil, err
		}
	}
	ok = true
	log.Info("WireGuard device ready", "implementation", d.impl, "publicKey", d.pub.String(), "listenPort", port,
		"mtu", d.mtu, "underlayMTU", mtu, "underlayDevice", dev, "nodeEncryption", cfg.NodeEncryption)
	return d, nil
}

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

// removeStale clears what a previous run that died may have left: a device
// of our name and our node-encryption rules.
func (d *Device) removeStale() error {
	name := d.cfg.DeviceName
	if socketInUse(name) {
		return fmt.Errorf("wireguard: %s is served by another process (%s; the socket directory is shared by all network namespaces, so device names must be unique on the machine)", name, uapiSocket(name))
	}
	if link, err := d.nl.LinkByName(name); err == nil {
		d.log.Warn("removing a stale WireGuard device left by a previous run", "type", link.Type())
		if err := d.nl.LinkDel(link); err != nil {
			return fmt.Errorf("wireguard: removing the stale device %s: %w", name, err)
		}
	}
	d.deleteRules()
	return nil
}

// create makes the device: the kernel's if it can (and may), else
// wireguard-go on a TUN.
func (d *Device) create() error {
	name := d.cfg.DeviceName
	if d.cfg.Implementation != ImplUserspace {
		err := d.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: d.mtu}})
		if err == nil {
			d.impl = ImplKernel
			return nil
		}
		if d.cfg.Implementation == ImplKernel {
			return fmt.Errorf("wireguard: creating kernel device %s: %w", name, err)
		}
		if errors.Is(err, unix.EOPNOTSUPP) {
			d.log.Info("the kernel has no WireGuard module; using the userspace implementation")
		} else {
			d.log.Warn("cannot create a kernel WireGuard device; using the userspace implementation", "err", err)
		}
	}
	u, err := openUserspace(name, d.mtu, d.ns, d.log)
	if err != nil {
		return err
	}
	d.user, d.impl = u, ImplUserspace
	return nil
}

// waitBound waits until the device listens on its port and turns a failure
// (the port in use) into an error: wireguard-go binds when the interface
// comes up, asynchronously, and only logs a failure.
func (d *Device) waitBound() error {
	name, port := d.cfg.DeviceName, d.cfg.ListenPort
	deadline := time.Now().Add(3 * time.Second)
	for {
		dev, err := d.wgDevice()
		if err == nil && dev.ListenPort == port {
			return nil
		}
		if time.Now().After(deadline) {
			// Setting the port again binds synchronously and reports why.
			if err := d.wgConfigure(wgtypes.Config{ListenPort: &port}); err != nil {
				return fmt.Errorf("wireguard: %s cannot listen on UDP port %d: %w", name, port, err)
			}
			if dev, err := d.wgDevice(); err == nil && dev.ListenPort == port {
				return nil
			}
			return fmt.Errorf("wireguard: %s did not bind UDP port %d", name, port)
		}
		time.Sleep(5 * time.Millisecond)
	}
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

// Close removes the device's routes and rules and the device itself (with a
// userspace device: stops wireguard-go, which removes the TUN, and its UAPI
// socket). The key file stays.
func (d *Device) Close() error {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	if d.nudgeTimer != nil && d.nudgeTimer.Stop() {
		d.nudgeWG.Done()
	}
	d.nudgeTimer = nil
	d.mu.Unlock()
	d.nudgeWG.Wait()
	err := d.teardown()
	d.log.Info("WireGuard device removed")
	return err
}

func (d *Device) teardown() error {
	var errs []error
	if d.nl != nil {
		if d.linkIndex != 0 {
			routes, err := d.listRoutes()
			if err != nil {
				errs = append(errs, err)
			}
			for _, r := range routes {
				if err := d.nl.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("wireguard: removing route %s: %w", r.Dst, err))
				}
			}
		}
		d.deleteRules()
	}
	if d.rpRestore != "" {
		if err := d.writeRPFilter(d.rpRestore, d.rpRestoreValue); err != nil {
			errs = append(errs, err)
		}
	}
	if d.user != nil {
		d.user.close()
	}
	if d.nl != nil && d.impl != "" {
		if link, err := d.nl.LinkByName(d.cfg.DeviceName); err == nil && (d.linkIndex == 0 || link.Attrs().Index == d.linkIndex) {
			if err := d.nl.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("wireguard: removing %s: %w", d.cfg.DeviceName, err))
			}
		}
	}
	if d.wg != nil {
		d.wg.Close()
	}
	if d.nl != nil {
		d.nl.Close()
	}
	d.ns.close()
	return errors.Join(errs...)
}

// PublicKey returns the device's public key in base64, the value to publish
// as the node's WireguardPubKey.
func (d *Device) PublicKey() string {
	if d == nil {
		return ""
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pub.String()
}

// MTU is the device's MTU (the underlay's minus the WireGuard overhead).
func (d *Device) MTU() int { return d.mtu }

// Implementation is "kernel" or "userspace".
func (d *Device) Implementation() string { return d.impl }

// Name is the device's interface name.
func (d *Device) Name() string { return d.cfg.DeviceName }

// RotateKey replaces the private key: the new key is written to the key file
// first (atomically, so the old key never comes back after a restart), then
// given to the device. It returns the new public key, which the caller
// publishes in the node entry; peers pick it up through sync. Sessions with
// peers end at once and resume when each peer has the new key (the peer's
// reconciliation starts the handshake).
func (d *Device) RotateKey() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return "", errors.New("wireguard: device closed")
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return "", fmt.Errorf("wireguard: generating a private key: %w", err)
	}
	if err := writeKeyFile(d.cfg.PrivateKeyFile, key); err != nil {
		return "", err
	}
	if err := d.wgConfigure(wgtypes.Config{PrivateKey: &key}); err != nil {
		if werr := writeKeyFile(d.cfg.PrivateKeyFile, d.priv); werr != nil {
			err = errors.Join(err, fmt.Errorf("restoring the previous key file: %w", werr))
		}
		return "", fmt.Errorf("wireguard: setting the new key on %s: %w", d.cfg.DeviceName, err)
	}
	old := d.pub
	d.priv, d.pub, d.rotatedAt = key, key.PublicKey(), time.Now()
	d.log.Info("rotated the WireGuard key", "publicKey", d.pub.String(), "previousPublicKey", old.String())
	return d.pub.String(), nil
}

// SetPeers makes the device's peers and routes exactly the given remote
// nodes (a full desired set: a node or cluster absent from it is removed).
// Invalid or conflicting peers are rejected (returned, logged once and shown
// in Status) and configure nothing; the others are applied with the fewest
// changes. The error reports a failure to configure the device or a route;
// calling SetPeers again retries.
func (d *Device) SetPeers(peers []Peer) ([]Rejection, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("wireguard: device closed")
	}
	d.desired = slices.Clone(peers)
	return d.reconcileLocked()
}

// SetLocalPodCIDRs changes the local pod CIDRs (no remote may overlap them)
// and reconciles the last desired peers against them.
func (d *Device) SetLocalPodCIDRs(cidrs []netip.Prefix) ([]Rejection, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("wireguard: device closed")
	}
	d.local = slices.Clone(cidrs)
	return d.reconcileLocked()
}

func (d *Device) reconcileLocked() ([]Rejection, error) {
	accepted, rejected := plan(planInput{
		peers: d.desired, local: d.local, localNodeIP: d.cfg.NodeIP, ownKey: d.pub,
		incumbents: d.incumbents, nodeEncryption: d.cfg.NodeEncryption, port: d.cfg.ListenPort,
	})
	logged := map[string]string{}
	for _, r := range rejected {
		id := r.Cluster + "/" + r.Node
		if d.logged[id] != r.Reason {
			d.log.Warn("WireGuard peer rejected", "cluster", r.Cluster, "node", r.Node, "reason", r.Reason)
		}
		logged[id] = r.Reason
	}
	d.logged, d.rejected = logged, rejected
	err := d.apply(accepted)
	d.accepted = make(map[wgtypes.Key]*acceptedPeer, len(accepted))
	d.incumbents = make(map[string]bool, len(accepted))
	for _, a := range accepted {
		d.accepted[a.key] = a
		d.incumbents[a.id()] = true
	}
	d.lastErr = err
	return slices.Clone(rejected), err
}

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

// apply diffs the accepted peers against the device and the routes against
// the kernel, and changes only what differs: stale routes go first, then one
// wgctrl call adds, updates and removes peers (never replacing the whole
// set, so established sessions are kept), then the missing routes are added.
func (d *Device) apply(accepted []*acceptedPeer) error {
	name := d.cfg.DeviceName
	dev, err := d.wgDevice()
	if err != nil {
		return fmt.Errorf("wireguard: reading %s: %w", name, err)
	}
	current := make(map[wgtypes.Key]*wgtypes.Peer, len(dev.Peers))
	for i := range dev.Peers {
		current[dev.Peers[i].PublicKey] = &dev.Peers[i]
	}
	wantRoutes := map[routeKey]bool{}
	want := make(map[wgtypes.Key]bool, len(accepted))
	for _, a := range accepted {
		want[a.key] = true
		for _, p := range a.podCIDRs {
			wantRoutes[routeKey{d.cfg.RouteTable, p}] = true
		}
		if d.cfg.NodeEncryption {
			wantRoutes[routeKey{d.cfg.NodeRouteTable, netip.PrefixFrom(a.nodeIP, a.nodeIP.BitLen())}] = true
		}
	}
	var errs []error
	have, err := d.listRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	var routesDel, routesAdd int
	for k, r := range have {
		if !wantRoutes[k] {
			if err := d.nl.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("wireguard: removing route %s: %w", k.dst, err))
			}
			routesDel++
		}
	}

	keepalive := d.cfg.PersistentKeepalive
	previous := make(map[string]wgtypes.Key, len(d.accepted))
	for k, a := range d.accepted {
		previous[a.id()] = k
	}
	var pcs []wgtypes.PeerConfig
	var now, later []wgtypes.Key
	var added, updated, removed int
	for key := range current {
		if !want[key] {
			pcs = append(pcs, wgtypes.PeerConfig{PublicKey: key, Remove: true})
			removed++
		}
	}
	for _, a := range accepted {
		cur := current[a.key]
		if cur == nil {
			pc := wgtypes.PeerConfig{
				PublicKey: a.key, Endpoint: net.UDPAddrFromAddrPort(a.endpoint),
				ReplaceAllowedIPs: true, AllowedIPs: ipNets(a.allowed),
			}
			ka := keepalive
			if ka == 0 {
				if _, known := previous[a.id()]; !known && bytes.Compare(d.pub[:], a.key[:]) < 0 {
					now = append(now, a.key)
				} else {
					later = append(later, a.key)
				}
			}
			pc.PersistentKeepaliveInterval = &ka
			pcs = append(pcs, pc)
			added++
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: a.key, UpdateOnly: true}
		changed := false
		if cur.Endpoint == nil || addrPortOf(cur.Endpoint) != a.endpoint {
			pc.Endpoint, changed = net.UDPAddrFromAddrPort(a.endpoint), true
		}
		if !samePrefixes(cur.AllowedIPs, a.allowed) {
			pc.ReplaceAllowedIPs, pc.AllowedIPs, changed = true, ipNets(a.allowed), true
		}
		if cur.PersistentKeepaliveInterval != keepalive {
			ka := keepalive
			pc.PersistentKeepaliveInterval, changed = &ka, true
		}
		if changed {
			pcs = append(pcs, pc)
			updated++
		}
	}
	if len(pcs) > 0 {
		if err := d.wgConfigure(wgtypes.Config{Peers: pcs}); err != nil {
			errs = append(errs, fmt.Errorf("wireguard: configuring peers of %s: %w", name, err))
		} else {
			d.scheduleNudges(now, 0)
			d.scheduleNudges(later, nudgeDelay)
		}
	}

	for k := range wantRoutes {
		if have[k] == nil {
			if err := d.nl.RouteReplace(d.route(k)); err != nil {
				errs = append(errs, fmt.Errorf("wireguard: adding route %s via %s: %w", k.dst, name, err))
			}
			routesAdd++
		}
	}
	if len(pcs) > 0 || routesAdd > 0 || routesDel > 0 {
		d.log.Info("WireGuard peers reconciled", "peers", len(accepted), "added", added, "updated", updated,
			"removed", removed, "routesAdded", routesAdd, "routesRemoved", routesDel)
	}
	return errors.Join(errs...)
}

// wgDevice reads the device through wgctrl.
func (d *Device) wgDevice() (*wgtypes.Device, error) {
	d.wgMu.Lock()
	defer d.wgMu.Unlock()
	return d.wg.Device(d.cfg.DeviceName)
}

// wgConfigure configures the device through wgctrl.
func (d *Device) wgConfigure(cfg wgtypes.Config) error {
	d.wgMu.Lock()
	defer d.wgMu.Unlock()
	return d.wg.ConfigureDevice(d.cfg.DeviceName, cfg)
}

// keepaliveOff ends a nudge: the keepalive is set back to 0 (the handshake
// it started goes on).
func (d *Device) keepaliveOff(keys []wgtypes.Key) error {
	if len(keys) == 0 {
		return nil
	}
	off := time.Duration(0)
	pcs := make([]wgtypes.PeerConfig, len(keys))
	for i, k := range keys {
		pcs[i] = wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &off}
	}
	if err := d.wgConfigure(wgtypes.Config{Peers: pcs}); err != nil {
		return fmt.Errorf("wireguard: configuring peers of %s: %w", d.cfg.DeviceName, err)
	}
	return nil
}

// scheduleNudges nudges keys after delay, unless they have had a handshake
// by then. Called with d.mu held.
func (d *Device) scheduleNudges(keys []wgtypes.Key, delay time.Duration) {
	if len(keys) == 0 {
		return
	}
	if d.pending == nil {
		d.pending = map[wgtypes.Key]time.Time{}
	}
	due := time.Now().Add(delay)
	for _, k := range keys {
		if t, ok := d.pending[k]; !ok || due.Before(t) {
			d.pending[k] = due
		}
	}
	d.armNudgeTimer()
}

// armNudgeTimer makes the timer fire at the earliest pending nudge. Called
// with d.mu held. A timer that cannot be stopped is already running: it
// re-arms itself when done.
func (d *Device) armNudgeTimer() {
	var first time.Time
	for _, t := range d.pending {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	if first.IsZero() {
		return
	}
	if d.nudgeTimer != nil {
		if !first.Before(d.nudgeDue) || !d.nudgeTimer.Stop() {
			return
		}
		d.nudgeWG.Done()
	}
	d.nudgeWG.Add(1)
	d.nudgeDue = first
	d.nudgeTimer = time.AfterFunc(time.Until(first), d.runNudges)
}

// runNudges nudges the peers that are due. It holds d.mu only to take them
// from the pending set: the nudge itself (three X25519 operations per peer)
// must not hold up SetPeers or Status. Close waits for it before removing
// the device.
func (d *Device) runNudges() {
	defer d.nudgeWG.Done()
	d.mu.Lock()
	d.nudgeTimer = nil
	if d.closed {
		d.mu.Unlock()
		return
	}
	now := time.Now()
	due := map[wgtypes.Key]bool{}
	for k, t := range d.pending {
		if !t.After(now) {
			due[k] = true
			delete(d.pending, k)
		}
	}
	d.armNudgeTimer()
	d.nudging++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.nudging--
		d.mu.Unlock()
	}()
	if len(due) == 0 {
		return
	}
	dev, err := d.wgDevice()
	if err != nil {
		return
	}
	var nudge []wgtypes.PeerConfig
	var keys []wgtypes.Key
	ka := nudgeKeepalive
	for _, p := range dev.Peers {
		if due[p.PublicKey] && p.LastHandshakeTime.IsZero() && p.PersistentKeepaliveInterval == 0 {
			nudge = append(nudge, wgtypes.PeerConfig{PublicKey: p.PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: &ka})
			keys = append(keys, p.PublicKey)
		}
	}
	if len(nudge) == 0 {
		return
	}
	// UpdateOnly: a peer removed meanwhile is not re-created.
	if err := d.wgConfigure(wgtypes.Config{Peers: nudge}); err != nil {
		d.log.Warn("starting WireGuard handshakes", "err", err)
		return
	}
	if err := d.keepaliveOff(keys); err != nil {
		d.log.Warn("starting WireGuard handshakes", "err", err)
	}
	d.log.Debug("started WireGuard handshakes", "peers", len(keys))
}

// Status is what `clustermesh status` shows about encryption.
type Status struct {
	Enabled        bool   `json:"enabled"`
	Implementation string `json:"implementation,omitempty"` // "kernel" or "userspace"
	Device         string `json:"device,omitempty"`
	PublicKey      string `json:"publicKey,omitempty"`
	ListenPort     int    `json:"listenPort,omitempty"`
	// MTU is the device's: UnderlayMTU minus 60 (IPv4 underlay) or 80 (IPv6).
	MTU            int             `json:"mtu,omitempty"`
	UnderlayMTU    int             `json:"underlayMTU,omitempty"`
	NodeEncryption bool            `json:"nodeEncryption"`
	Peers          int             `json:"peers"`
	BytesSent      int64           `json:"bytesSent"`
	BytesReceived  int64           `json:"bytesReceived"`
	Clusters       []ClusterStatus `json:"clusters,omitempty"`
	Rejected       []Rejection     `json:"rejected,omitempty"`
	KeyRotatedAt   time.Time       `json:"keyRotatedAt,omitzero"`
	LastError      string          `json:"lastError,omitempty"`
}

// ClusterStatus aggregates the peers of one remote cluster.
type ClusterStatus struct {
	Cluster string `json:"cluster"`
	Peers   int    `json:"peers"`
	// OldestHandshake and LatestHandshake are the minimum and maximum of
	// the last handshake times of the cluster's peers that have had one.
	OldestHandshake       time.Time `json:"oldestHandshake,omitzero"`
	LatestHandshake       time.Time `json:"latestHandshake,omitzero"`
	PeersWithoutHandshake int       `json:"peersWithoutHandshake"`
	BytesSent             int64     `json:"bytesSent"`
	BytesReceived         int64     `json:"bytesReceived"`
}

// Status reads the device's peers and counters. Bytes are those on the wire
// (encrypted), summed over the current peers.
func (d *Device) Status() Status {
	if d == nil {
		return Status{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Status{
		Enabled: !d.closed, Implementation: d.impl, Device: d.cfg.DeviceName, PublicKey: d.pub.String(),
		ListenPort: d.cfg.ListenPort, MTU: d.mtu, UnderlayMTU: d.underlayMTU, NodeEncryption: d.cfg.NodeEncryption,
		Rejected: slices.Clone(d.rejected), KeyRotatedAt: d.rotatedAt,
	}
	if d.lastErr != nil {
		s.LastError = d.lastErr.Error()
	}
	if d.closed {
		return s
	}
	dev, err := d.wgDevice()
	if err != nil {
		s.LastError = fmt.Sprintf("reading %s: %v", d.cfg.DeviceName, err)
		return s
	}
	s.Peers = len(dev.Peers)
	byCluster := map[string]*ClusterStatus{}
	for _, p := range dev.Peers {
		s.BytesSent += p.TransmitBytes
		s.BytesReceived += p.ReceiveBytes
		cluster := "(unknown)"
		if a := d.accepted[p.PublicKey]; a != nil {
			cluster = a.cluster
		}
		c := byCluster[cluster]
		if c == nil {
			c = &ClusterStatus{Cluster: cluster}
			byCluster[cluster] = c
		}
		c.Peers++
		c.BytesSent += p.TransmitBytes
		c.BytesReceived += p.ReceiveBytes
		if p.LastHandshakeTime.IsZero() {
			c.PeersWithoutHandshake++
			continue
		}
		if c.OldestHandshake.IsZero() || p.LastHandshakeTime.Before(c.OldestHandshake) {
			c.OldestHandshake = p.LastHandshakeTime
		}
		if p.LastHandshakeTime.After(c.LatestHandshake) {
			c.LatestHandshake = p.LastHandshakeTime
		}
	}
	for _, c := range byCluster {
		s.Clusters = append(s.Clusters, *c)
	}
	slices.SortFunc(s.Clusters, func(a, b ClusterStatus) int { return cmp.Compare(a.Cluster, b.Cluster) })
	return s
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
