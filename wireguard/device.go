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
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// errClosed is returned by the methods that change a closed device.
var errClosed = errors.New("the WireGuard device is closed")

// Device is a WireGuard device, its peers and its routes. Its methods are
// safe for concurrent use; the nil *Device reports encryption off.
//
// Locks: mu guards the peer, key and nudge state (the second group of
// fields); wgMu serializes the calls on the wgctrl client, which runNudges
// makes without mu. The order is mu, then wgMu: nothing takes mu while
// holding wgMu. The first group is set by Open and only read afterwards;
// teardown, which undoes it, runs once Close has marked the device closed
// and waited for the nudges, when nothing else uses it.
type Device struct {
	// Set by Open, read-only afterwards (no lock).
	cfg         Config
	log         *slog.Logger
	ns          nsRunner
	user        *userspaceDevice // nil with the kernel implementation
	impl        string
	linkIndex   int
	mtu         int
	underlayMTU int
	underlayDev string
	// rp_filter of the underlay to put back on Close ("" if untouched).
	rpRestore      string
	rpRestoreValue int
	// nl is set by Open; after it, it is used only with mu held (routes, in
	// reconciliation) or by teardown.
	nl *netlink.Handle

	// wgMu guards the use of wg (wgDevice, wgConfigure); the pointer itself
	// is set by Open.
	wgMu sync.Mutex
	wg   *wgctrl.Client

	// mu guards every field below it, except nudgeWG.
	mu         sync.Mutex
	priv       wgtypes.Key
	pub        wgtypes.Key
	rotatedAt  time.Time
	desired    []Peer         // the last SetPeers
	local      []netip.Prefix // local pod CIDRs
	accepted   map[wgtypes.Key]*acceptedPeer
	incumbents map[string]bool // ids of the peers accepted last time
	rejected   []Rejection
	logged     map[string]string // rejections already logged: id → reason
	lastErr    error             // of the last reconciliation
	closed     bool
	pending    map[wgtypes.Key]time.Time // peers to nudge, and when
	nudgeTimer *time.Timer
	nudgeDue   time.Time // when nudgeTimer fires
	nudging    int       // runNudges calls at work
	// nudgeWG counts the armed timers and running runNudges calls (Close
	// waits for them); it is its own synchronization.
	nudgeWG sync.WaitGroup
}

// Open creates the device (named cfg.DeviceName; a stale device of that name
// left by a previous run is replaced), loads or creates the private key,
// sets the MTU and brings the device up. Close removes everything it made.
func Open(cfg Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	d, err := open(cfg)
	if err != nil {
		return nil, fmt.Errorf("opening WireGuard device %s: %w", cfg.DeviceName, err)
	}
	return d, nil
}

// open is Open after the config is checked.
func open(cfg Config) (*Device, error) {
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
	if err := d.setUp(); err != nil {
		d.teardown()
		return nil, err
	}
	log.Info("WireGuard device ready", "implementation", d.impl, "publicKey", d.pub.String(), "listenPort", cfg.ListenPort,
		"mtu", d.mtu, "underlayMTU", d.underlayMTU, "underlayDevice", d.underlayDev, "nodeEncryption", cfg.NodeEncryption)
	return d, nil
}

// setUp makes what Open promises, in order; teardown undoes whatever part
// of it was done.
func (d *Device) setUp() error {
	var err error
	if d.nl, err = d.ns.netlinkHandle(); err != nil {
		return err
	}
	mtu, v6, dev, err := d.underlay()
	if err != nil {
		return err
	}
	d.underlayMTU, d.underlayDev, d.mtu = mtu, dev, DeviceMTU(mtu, v6)
	if err := d.removeStale(); err != nil {
		return err
	}
	if err := d.create(); err != nil {
		return err
	}
	if err := d.configure(); err != nil {
		return err
	}
	if err := d.bringUp(); err != nil {
		return err
	}
	if !d.cfg.NodeEncryption {
		return nil
	}
	if err := d.addRules(); err != nil {
		return err
	}
	return d.loosenRPFilter()
}

// configure opens the wgctrl client and gives the device its key, port and
// (with node encryption) firewall mark, with no peers.
func (d *Device) configure() error {
	if err := d.ns.do(func() error {
		var err error
		d.wg, err = wgctrl.New()
		return err
	}); err != nil {
		return fmt.Errorf("opening a wgctrl client: %w", err)
	}
	port, mark := d.cfg.ListenPort, 0
	if d.cfg.NodeEncryption {
		mark = d.cfg.FirewallMark
	}
	if err := d.wgConfigure(wgtypes.Config{
		PrivateKey: &d.priv, ListenPort: &port, FirewallMark: &mark, ReplacePeers: true,
	}); err != nil {
		return fmt.Errorf("setting its key, port and firewall mark: %w", err)
	}
	return nil
}

// bringUp sets the interface's MTU, brings it up and waits until the device
// listens on its port.
func (d *Device) bringUp() error {
	link, err := d.nl.LinkByName(d.cfg.DeviceName)
	if err != nil {
		return fmt.Errorf("looking up its interface: %w", err)
	}
	d.linkIndex = link.Attrs().Index
	if err := d.nl.LinkSetMTU(link, d.mtu); err != nil {
		return fmt.Errorf("setting its MTU to %d: %w", d.mtu, err)
	}
	if err := d.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing its interface up: %w", err)
	}
	return d.waitBound()
}

// removeStale clears what a previous run that died may have left: a device
// of our name and our node-encryption rules.
func (d *Device) removeStale() error {
	name := d.cfg.DeviceName
	if err := checkSocketFree(name); err != nil {
		return err
	}
	if link, err := d.nl.LinkByName(name); err == nil {
		d.log.Warn("removing a stale WireGuard device left by a previous run", "type", link.Type())
		if err := d.nl.LinkDel(link); err != nil {
			return fmt.Errorf("removing the stale device of that name: %w", err)
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
			return fmt.Errorf("creating kernel device: %w", err)
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
	port := d.cfg.ListenPort
	deadline := time.Now().Add(3 * time.Second)
	for {
		dev, err := d.wgDevice()
		if err == nil && dev.ListenPort == port {
			return nil
		}
		if time.Now().After(deadline) {
			// Setting the port again binds synchronously and reports why.
			if err := d.wgConfigure(wgtypes.Config{ListenPort: &port}); err != nil {
				return fmt.Errorf("listening on UDP port %d: %w", port, err)
			}
			if dev, err := d.wgDevice(); err == nil && dev.ListenPort == port {
				return nil
			}
			return fmt.Errorf("listening on UDP port %d: the device did not bind it", port)
		}
		time.Sleep(5 * time.Millisecond)
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
	if err != nil {
		return fmt.Errorf("closing WireGuard device %s: %w", d.cfg.DeviceName, err)
	}
	return nil
}

// teardown removes what Open made, as far as it got: the routes and rules,
// the rp_filter change, the device, and the handles.
func (d *Device) teardown() error {
	var errs []error
	if d.nl != nil {
		if d.linkIndex != 0 {
			routes, err := d.listRoutes()
			_, rerr := d.removeRoutes(routes, nil)
			errs = append(errs, err, rerr)
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
				errs = append(errs, fmt.Errorf("removing the interface: %w", err))
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

// MTU is the device's MTU (the underlay's minus the WireGuard overhead).
func (d *Device) MTU() int { return d.mtu }

// Implementation is "kernel" or "userspace".
func (d *Device) Implementation() string { return d.impl }

// Name is the device's interface name.
func (d *Device) Name() string { return d.cfg.DeviceName }

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
