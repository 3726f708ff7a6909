package l7dns

import (
	"fmt"
	"log/slog"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/fqdn"
)

// Defaults of Config.
const (
	DefaultMaxConcurrent   = 256
	DefaultQueryTimeout    = 5 * time.Second
	DefaultTCPIdleTimeout  = 10 * time.Second
	DefaultMaxQuerySize    = 4096
	DefaultMaxResponseSize = 65535
	DefaultLogEvery        = 10 * time.Second
)

// Config configures a Proxy. The zero value takes every default and
// neither reports flows nor fills a cache.
type Config struct {
	// Flows receives every query's and answer's L7 flow; it must not
	// block (nil: none).
	Flows func(*flowpb.Flow)
	// Cache receives the addresses of allowed answers before they are
	// released to the client (nil: none).
	Cache *fqdn.Cache
	// MaxConcurrent bounds the queries in flight (beyond it a query gets
	// SERVFAIL at once); DefaultMaxConcurrent when 0. With
	// MaxResponseSize it bounds the proxy's buffers.
	MaxConcurrent int
	// QueryTimeout bounds waiting for the server's answer
	// (DefaultQueryTimeout when 0); the client then gets SERVFAIL.
	QueryTimeout time.Duration
	// TCPIdleTimeout closes a client's TCP connection without a query for
	// that long (DefaultTCPIdleTimeout when 0).
	TCPIdleTimeout time.Duration
	// MaxQuerySize is the largest query accepted, in bytes
	// (DefaultMaxQuerySize when 0).
	MaxQuerySize int
	// MaxResponseSize is the largest answer relayed (DefaultMaxResponseSize
	// when 0, the most TCP framing allows).
	MaxResponseSize int
	// ClientQPS limits the queries of one client address per second, with
	// ClientBurst; 0 means no limit.
	ClientQPS   float64
	ClientBurst int
	// LogEvery is how often one reason of a refused message is logged
	// (DefaultLogEvery when 0; the others are counted).
	LogEvery time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.MaxConcurrent == 0 {
		c.MaxConcurrent = DefaultMaxConcurrent
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = DefaultQueryTimeout
	}
	if c.TCPIdleTimeout == 0 {
		c.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if c.MaxQuerySize == 0 {
		c.MaxQuerySize = DefaultMaxQuerySize
	}
	if c.MaxResponseSize == 0 {
		c.MaxResponseSize = DefaultMaxResponseSize
	}
	if c.ClientQPS > 0 && c.ClientBurst == 0 {
		c.ClientBurst = max(1, int(c.ClientQPS))
	}
	if c.LogEvery == 0 {
		c.LogEvery = DefaultLogEvery
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks c with its defaults applied.
func (c Config) Validate() error {
	c.setDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	switch {
	case c.MaxConcurrent < 0:
		return bad("MaxConcurrent %d is negative", c.MaxConcurrent)
	case c.QueryTimeout < 0:
		return bad("QueryTimeout %v is negative", c.QueryTimeout)
	case c.TCPIdleTimeout < 0:
		return bad("TCPIdleTimeout %v is negative", c.TCPIdleTimeout)
	case c.MaxQuerySize < 17 || c.MaxQuerySize > 65535:
		return bad("MaxQuerySize %d is outside [17, 65535] (a header and the shortest question)", c.MaxQuerySize)
	case c.MaxResponseSize < 512 || c.MaxResponseSize > 65535:
		return bad("MaxResponseSize %d is outside [512, 65535]", c.MaxResponseSize)
	case c.ClientQPS < 0 || c.ClientBurst < 0:
		return bad("ClientQPS %v and ClientBurst %d must not be negative", c.ClientQPS, c.ClientBurst)
	case c.LogEvery < 0:
		return bad("LogEvery %v is negative", c.LogEvery)
	}
	return nil
}
