package wireguard

import (
	"fmt"
	"time"

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
		return fmt.Errorf("turning the keepalive off: %w", err)
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
	due, ok := d.takeDueNudges()
	if !ok {
		return
	}
	defer func() {
		d.mu.Lock()
		d.nudging--
		d.mu.Unlock()
	}()
	if len(due) == 0 {
		return
	}
	n, err := d.nudge(due)
	if err != nil {
		d.log.Warn("starting WireGuard handshakes", "err", err)
	}
	if n > 0 {
		d.log.Debug("started WireGuard handshakes", "peers", n)
	}
}

// takeDueNudges takes the nudges that are due from the pending set, re-arms
// the timer for the others and counts the caller in nudging. It returns
// false, and takes nothing, once the device is closed.
func (d *Device) takeDueNudges() (map[wgtypes.Key]bool, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nudgeTimer = nil
	if d.closed {
		return nil, false
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
	return due, true
}

// nudge starts a handshake with each due peer that has had none and keeps
// no keepalive of its own, and returns how many it nudged. A device that
// cannot be read is not nudged: WireGuard's own retry starts the handshakes.
func (d *Device) nudge(due map[wgtypes.Key]bool) (int, error) {
	dev, err := d.wgDevice()
	if err != nil {
		return 0, nil
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
		return 0, nil
	}
	// UpdateOnly: a peer removed meanwhile is not re-created.
	if err := d.wgConfigure(wgtypes.Config{Peers: nudge}); err != nil {
		return 0, fmt.Errorf("turning the keepalive on: %w", err)
	}
	return len(keys), d.keepaliveOff(keys)
}
