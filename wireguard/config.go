package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Defaults of Config.
const (
	DefaultDeviceName = "cilium_wg0"
	// DefaultListenPort is Cilium's WireGuard port; every node of the mesh
	// listens on it, so a remote node's endpoint is its node IP and this port.
	DefaultListenPort = 51871
	// DefaultFirewallMark marks the device's own UDP packets so that the
	// node-encryption rule lets them through to the main table (Cilium's
	// WireGuard mark).
	DefaultFirewallMark = 0x1e00
	// DefaultNodeRouteTable holds the routes of remote node IPs through the
	// device when node encryption is on.
	DefaultNodeRouteTable = 0x1e00
	// DefaultRulePriority is the priority of node encryption's two rules
	// (this one and the next; see Device.rules): after the local table (0),
	// before main (32766).
	DefaultRulePriority = 1000
	// RouteProtocol marks every route this package installs, so that it
	// finds (and removes) exactly its own routes and never anybody else's.
	RouteProtocol = 0xc7

	mainTable = 254
)

// Overheads of a WireGuard data packet on the underlay, in bytes:
//
//	outer IP header           20 (IPv4) or 40 (IPv6)
//	UDP header                 8
//	WireGuard data header     16 (type 4, receiver index 4, counter 8)
//	Poly1305 tag              16
//
// so the device MTU is the underlay MTU minus 60 on an IPv4 underlay and minus
// 80 on an IPv6 one. (WireGuard pads the inner packet to a multiple of 16 but
// never beyond the MTU, so the padding needs no room of its own.)
const (
	OverheadIPv4 = 20 + 8 + 16 + 16
	OverheadIPv6 = 40 + 8 + 16 + 16
)

// Implementation values.
const (
	ImplAuto      = "auto"
	ImplKernel    = "kernel"
	ImplUserspace = "userspace"
)

// Config configures a Device. Zero values take the defaults above.
type Config struct {
	// DeviceName is the interface name (at most 15 bytes). The userspace
	// implementation's control socket lives in /var/run/wireguard, which is
	// shared by every network namespace: names must be unique on the machine.
	DeviceName string
	// ListenPort is the UDP port of the device (default 51871).
	ListenPort int
	// PrivateKeyFile holds the private key (base64, mode 0600); created with
	// a fresh key when missing. Required.
	PrivateKeyFile string
	// NodeEncryption also encrypts traffic between node IPs: each peer's
	// node IP is an allowed IP, routed through the device by a rule that
	// skips the device's own (marked) UDP packets.
	NodeEncryption bool
	// NodeIP is this node's IP, the endpoint the other nodes use (optional).
	// It picks the underlay device whose MTU is used and its family, and no
	// remote may claim it.
	NodeIP netip.Addr
	// UnderlayMTU is the MTU of the underlay; 0 detects it (the device that
	// holds NodeIP, else the default route's device).
	UnderlayMTU int
	// UnderlayIPv6 says the underlay is IPv6 when UnderlayMTU is given and
	// NodeIP is not (the overhead is then 80 instead of 60 bytes).
	UnderlayIPv6 bool
	// LocalPodCIDRs are this node's pod CIDRs; a remote claiming an
	// overlapping prefix is rejected. SetLocalPodCIDRs changes them.
	LocalPodCIDRs []netip.Prefix
	// Implementation is "auto" (default: the kernel module when the kernel
	// has it, else userspace), "kernel" or "userspace".
	Implementation string
	// NetNS is the path of the network namespace to create the device in
	// (e.g. /var/run/netns/x); empty means the caller's namespace.
	NetNS string
	// RouteTable holds the routes of remote pod CIDRs (default main).
	RouteTable int
	// NodeRouteTable, FirewallMark and RulePriority serve node encryption
	// (defaults above).
	NodeRouteTable int
	FirewallMark   int
	RulePriority   int
	// PersistentKeepalive, when non-zero, makes every peer send a keepalive
	// at that interval (useful behind NAT). Zero: off.
	PersistentKeepalive time.Duration
	// Logger receives the package's logs (never the private key).
	Logger *slog.Logger
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.DeviceName == "" {
		c.DeviceName = DefaultDeviceName
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	if c.Implementation == "" {
		c.Implementation = ImplAuto
	}
	if c.RouteTable == 0 {
		c.RouteTable = mainTable
	}
	if c.NodeRouteTable == 0 {
		c.NodeRouteTable = DefaultNodeRouteTable
	}
	if c.FirewallMark == 0 {
		c.FirewallMark = DefaultFirewallMark
	}
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.NodeIP = c.NodeIP.Unmap()
	return c
}

// Validate reports the first problem of c (after defaults), as a message that
// names the setting.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if len(c.DeviceName) > 15 {
		errs = append(errs, fmt.Errorf("device name %q is longer than 15 bytes", c.DeviceName))
	}
	for _, r := range c.DeviceName {
		if r == '/' || r == ' ' || r < 0x21 || r > 0x7e {
			errs = append(errs, fmt.Errorf("device name %q: only printable ASCII without '/' or spaces", c.DeviceName))
			break
		}
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("listen port %d is not in 1..65535", c.ListenPort))
	}
	if c.PrivateKeyFile == "" {
		errs = append(errs, errors.New("a private key file is required"))
	}
	if c.UnderlayMTU != 0 && (c.UnderlayMTU < 1280 || c.UnderlayMTU > 65535) {
		errs = append(errs, fmt.Errorf("underlay MTU %d is not in 1280..65535", c.UnderlayMTU))
	}
	switch c.Implementation {
	case ImplAuto, ImplKernel, ImplUserspace:
	default:
		errs = append(errs, fmt.Errorf("implementation %q is not one of auto, kernel, userspace", c.Implementation))
	}
	for _, p := range c.LocalPodCIDRs {
		if !p.IsValid() {
			errs = append(errs, errors.New("a local pod CIDR is invalid"))
		}
	}
	if c.NodeIP.IsValid() && (c.NodeIP.IsUnspecified() || c.NodeIP.Zone() != "") {
		errs = append(errs, fmt.Errorf("node IP %s is not a unicast address without zone", c.NodeIP))
	}
	for name, v := range map[string]int{"route table": c.RouteTable, "node route table": c.NodeRouteTable} {
		if v < 1 || v == 255 || v > 0xfffffff0 {
			errs = append(errs, fmt.Errorf("%s %d is not usable (1..2^32-16, not 255)", name, v))
		}
	}
	if c.RulePriority < 1 || c.RulePriority >= 32765 {
		errs = append(errs, fmt.Errorf("rule priority %d is not in 1..32764 (it and the next must come before the main table)", c.RulePriority))
	}
	if c.PersistentKeepalive < 0 || c.PersistentKeepalive > 65535*time.Second {
		errs = append(errs, fmt.Errorf("persistent keepalive %s is not in 0..65535s", c.PersistentKeepalive))
	}
	if len(errs) > 0 {
		return fmt.Errorf("checking the WireGuard config: %w", errors.Join(errs...))
	}
	return nil
}

// DeviceMTU is the MTU of a WireGuard device over an underlay of the given
// MTU and family (see OverheadIPv4 and OverheadIPv6).
func DeviceMTU(underlayMTU int, ipv6Underlay bool) int {
	if ipv6Underlay {
		return underlayMTU - OverheadIPv6
	}
	return underlayMTU - OverheadIPv4
}
