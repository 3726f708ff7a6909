package wireguard

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

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
