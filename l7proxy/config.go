package l7proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

// Defaults applied by Config to its zero fields.
const (
	DefaultPortMin          = 10000
	DefaultPortMax          = 20000
	DefaultMaxConnections   = 10000
	DefaultAcceptBackoffMin = 5 * time.Millisecond
	DefaultAcceptBackoffMax = time.Second
	DefaultStopGrace        = 5 * time.Second
	DefaultRoutingTable     = 2004
	DefaultRulePriority     = 9
	// MaxDatagram is the largest UDP payload read.
	MaxDatagram = 65535
)

// Config is the proxy's configuration. Zero fields take the defaults
// above; Handlers and Identities are required.
type Config struct {
	// PortMin and PortMax bound the proxy ports (inclusive): keep them out
	// of the node's ephemeral range (net.ipv4.ip_local_port_range) and
	// clear of its services.
	PortMin, PortMax uint16
	// MaxConnections bounds the connections and datagrams being served at
	// once, over every redirect; beyond it a new connection is closed at
	// once and a datagram dropped (counted, reason "limit").
	MaxConnections int
	// AcceptBackoffMin and AcceptBackoffMax bound the wait after a failed
	// accept (out of file descriptors...), doubled on each failure in a row.
	AcceptBackoffMin, AcceptBackoffMax time.Duration
	// StopGrace is how long Close and Remove wait for handlers to return
	// after cancelling them before closing their connections.
	StopGrace time.Duration
	// RoutingTable and RulePriority are the policy routing New installs:
	// rule "fwmark 0x200/0xf00 lookup RoutingTable" at RulePriority, and
	// in RoutingTable one local route for every address, IPv4 and IPv6.
	RoutingTable int
	RulePriority int
	// NoIPv6 listens on IPv4 only.
	NoIPv6 bool

	// Handlers are the engines by parser name ("http", "dns").
	Handlers map[string]Handler
	// Identities resolves peer identities (the mesh's ipcache).
	Identities Identities
	// InNetns runs fn in the node's network namespace, where the policy
	// programs look the proxy's sockets up (the agent's own; nil: the
	// calling thread's). Sockets and routes are made through it.
	InNetns func(fn func() error) error
	// Log is the logger (nil: slog.Default()).
	Log *slog.Logger
	// Registerer registers the proxy's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.PortMin == 0 {
		c.PortMin = DefaultPortMin
	}
	if c.PortMax == 0 {
		c.PortMax = DefaultPortMax
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.AcceptBackoffMin == 0 {
		c.AcceptBackoffMin = DefaultAcceptBackoffMin
	}
	if c.AcceptBackoffMax == 0 {
		c.AcceptBackoffMax = DefaultAcceptBackoffMax
	}
	if c.StopGrace == 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.RoutingTable == 0 {
		c.RoutingTable = DefaultRoutingTable
	}
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.InNetns == nil {
		c.InNetns = func(fn func() error) error { return fn() }
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// Validate reports whether c, defaults applied, is usable; its errors wrap
// ErrInvalidConfig and name the field (and flag) to change.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, a ...any) error {
		return fmt.Errorf("l7 proxy: %s: %w", fmt.Sprintf(format, a...), ErrInvalidConfig)
	}
	var errs []error
	if c.PortMin > c.PortMax {
		errs = append(errs, bad("port range %d-%d is empty: set --l7-proxy-port-min at most --l7-proxy-port-max", c.PortMin, c.PortMax))
	}
	if c.MaxConnections < 0 {
		errs = append(errs, bad("--l7-proxy-max-connections %d is negative", c.MaxConnections))
	}
	if c.AcceptBackoffMin < 0 || c.AcceptBackoffMax < c.AcceptBackoffMin {
		errs = append(errs, bad("accept backoff %v-%v: want 0 <= min <= max", c.AcceptBackoffMin, c.AcceptBackoffMax))
	}
	if c.StopGrace < 0 {
		errs = append(errs, bad("stop grace %v is negative", c.StopGrace))
	}
	if c.RoutingTable <= 0 || c.RoutingTable >= 253 && c.RoutingTable <= 255 {
		errs = append(errs, bad("routing table %d: want a table of its own (not 253-255: default, main, local)", c.RoutingTable))
	}
	if c.RulePriority <= 0 {
		errs = append(errs, bad("rule priority %d: want a positive priority before the main table's (32766)", c.RulePriority))
	}
	if len(c.Handlers) == 0 {
		errs = append(errs, bad("no Handlers: give the engine of each parser"))
	}
	for name, h := range c.Handlers {
		if name == "" || h == nil {
			errs = append(errs, bad("handler %q: want a named, non-nil handler", name))
		}
	}
	if c.Identities == nil {
		errs = append(errs, bad("no Identities: give the mesh's ipcache"))
	}
	return errors.Join(errs...)
}

// RegisterFlags registers the proxy's options on fs (the agent's flags),
// with the defaults as their defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.Uint16Var(&c.PortMin, "l7-proxy-port-min", DefaultPortMin, "first port of the L7 proxy's listeners")
	fs.Uint16Var(&c.PortMax, "l7-proxy-port-max", DefaultPortMax, "last port of the L7 proxy's listeners")
	fs.IntVar(&c.MaxConnections, "l7-proxy-max-connections", DefaultMaxConnections,
		"connections and datagrams the L7 proxy serves at once; more are refused")
	fs.DurationVar(&c.StopGrace, "l7-proxy-stop-grace", DefaultStopGrace,
		"how long the L7 proxy waits for its engines to finish on stop before closing their connections")
}
