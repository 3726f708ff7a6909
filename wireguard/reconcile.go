package wireguard

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

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
		return nil, errClosed
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
		return nil, errClosed
	}
	d.local = slices.Clone(cidrs)
	return d.reconcileLocked()
}

// reconcileLocked plans the desired peers against the local pod CIDRs and
// applies the plan. Called with d.mu held.
func (d *Device) reconcileLocked() ([]Rejection, error) {
	accepted, rejected := plan(planInput{
		peers: d.desired, local: d.local, localNodeIP: d.cfg.NodeIP, ownKey: d.pub,
		incumbents: d.incumbents, nodeEncryption: d.cfg.NodeEncryption, port: d.cfg.ListenPort,
	})
	d.noteRejections(rejected)
	err := d.apply(accepted)
	if err != nil {
		err = fmt.Errorf("configuring the peers and routes of WireGuard device %s: %w", d.cfg.DeviceName, err)
	}
	d.accepted = make(map[wgtypes.Key]*acceptedPeer, len(accepted))
	d.incumbents = make(map[string]bool, len(accepted))
	for _, a := range accepted {
		d.accepted[a.key] = a
		d.incumbents[a.id()] = true
	}
	d.lastErr = err
	return slices.Clone(rejected), err
}

// noteRejections keeps the rejections for Status and logs each one once per
// reason.
func (d *Device) noteRejections(rejected []Rejection) {
	logged := map[string]string{}
	for _, r := range rejected {
		id := r.Cluster + "/" + r.Node
		if d.logged[id] != r.Reason {
			d.log.Warn("WireGuard peer rejected", "cluster", r.Cluster, "node", r.Node, "reason", r.Reason)
		}
		logged[id] = r.Reason
	}
	d.logged, d.rejected = logged, rejected
}

// apply diffs the accepted peers against the device and the routes against
// the kernel, and changes only what differs: stale routes go first, then one
// wgctrl call adds, updates and removes peers (never replacing the whole
// set, so established sessions are kept), then the missing routes are added.
func (d *Device) apply(accepted []*acceptedPeer) error {
	dev, err := d.wgDevice()
	if err != nil {
		return fmt.Errorf("reading the device: %w", err)
	}
	want := d.wantedRoutes(accepted)
	have, err := d.listRoutes()
	errs := []error{err}
	removed, err := d.removeRoutes(have, want)
	errs = append(errs, err)
	peers := d.diffPeers(dev.Peers, accepted)
	errs = append(errs, d.changePeers(peers))
	added, err := d.addRoutes(have, want)
	errs = append(errs, err)
	if len(peers.configs) > 0 || added > 0 || removed > 0 {
		d.log.Info("WireGuard peers reconciled", "peers", len(accepted), "added", peers.added, "updated", peers.updated,
			"removed", peers.removed, "routesAdded", added, "routesRemoved", removed)
	}
	return errors.Join(errs...)
}

// peerChanges is what apply asks of the device: one wgctrl call, and the
// handshakes to start once it is made (see nudge.go).
type peerChanges struct {
	configs                 []wgtypes.PeerConfig
	nudgeNow, nudgeLater    []wgtypes.Key
	added, updated, removed int
}

// diffPeers compares the device's peers with the accepted ones: a peer the
// device has and should not is removed, one it lacks is added, and one that
// differs in endpoint, allowed IPs or keepalive is updated.
func (d *Device) diffPeers(current []wgtypes.Peer, accepted []*acceptedPeer) peerChanges {
	var c peerChanges
	have := make(map[wgtypes.Key]*wgtypes.Peer, len(current))
	for i := range current {
		have[current[i].PublicKey] = &current[i]
	}
	want := make(map[wgtypes.Key]bool, len(accepted))
	for _, a := range accepted {
		want[a.key] = true
	}
	for key := range have {
		if !want[key] {
			c.configs = append(c.configs, wgtypes.PeerConfig{PublicKey: key, Remove: true})
			c.removed++
		}
	}
	for _, a := range accepted {
		cur := have[a.key]
		if cur == nil {
			c.configs = append(c.configs, d.newPeer(a))
			c.added++
			d.planNudge(&c, a)
			continue
		}
		if pc, changed := d.updatePeer(cur, a); changed {
			c.configs = append(c.configs, pc)
			c.updated++
		}
	}
	return c
}

// newPeer is the configuration of a peer the device does not have.
func (d *Device) newPeer(a *acceptedPeer) wgtypes.PeerConfig {
	ka := d.cfg.PersistentKeepalive
	return wgtypes.PeerConfig{
		PublicKey: a.key, Endpoint: net.UDPAddrFromAddrPort(a.endpoint),
		ReplaceAllowedIPs: true, AllowedIPs: ipNets(a.allowed), PersistentKeepaliveInterval: &ka,
	}
}

// updatePeer is the change that makes the device's peer cur what a says,
// and whether there is any.
func (d *Device) updatePeer(cur *wgtypes.Peer, a *acceptedPeer) (pc wgtypes.PeerConfig, changed bool) {
	pc = wgtypes.PeerConfig{PublicKey: a.key, UpdateOnly: true}
	if cur.Endpoint == nil || addrPortOf(cur.Endpoint) != a.endpoint {
		pc.Endpoint, changed = net.UDPAddrFromAddrPort(a.endpoint), true
	}
	if !samePrefixes(cur.AllowedIPs, a.allowed) {
		pc.ReplaceAllowedIPs, pc.AllowedIPs, changed = true, ipNets(a.allowed), true
	}
	if ka := d.cfg.PersistentKeepalive; cur.PersistentKeepaliveInterval != ka {
		pc.PersistentKeepaliveInterval, changed = &ka, true
	}
	return pc, changed
}

// planNudge decides when a peer new to the device gets its handshake
// started: at once for a new pair where this node has the smaller public
// key, after nudgeDelay otherwise (the other side of a new pair, or a known
// node whose key changed). A persistent keepalive starts handshakes by
// itself.
func (d *Device) planNudge(c *peerChanges, a *acceptedPeer) {
	switch {
	case d.cfg.PersistentKeepalive != 0:
	case !d.incumbents[a.id()] && bytes.Compare(d.pub[:], a.key[:]) < 0:
		c.nudgeNow = append(c.nudgeNow, a.key)
	default:
		c.nudgeLater = append(c.nudgeLater, a.key)
	}
}

// changePeers makes the changes in one wgctrl call and schedules the
// nudges.
func (d *Device) changePeers(c peerChanges) error {
	if len(c.configs) == 0 {
		return nil
	}
	if err := d.wgConfigure(wgtypes.Config{Peers: c.configs}); err != nil {
		return fmt.Errorf("changing %d peers: %w", len(c.configs), err)
	}
	d.scheduleNudges(c.nudgeNow, 0)
	d.scheduleNudges(c.nudgeLater, nudgeDelay)
	return nil
}
