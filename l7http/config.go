package l7http

import (
	"fmt"
	"log/slog"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is the engine's configuration: limits and timeouts that bound what
// one connection may cost, flow options and where flows and metrics go. The
// zero value of a field means its default (see Default); the agent exposes
// them as flags.
type Config struct {
	// MaxHeaderBytes bounds a request line and its header fields, a status
	// line and its header fields, and a body's trailer fields. A request
	// over it is refused with 400 (reason header_too_large).
	MaxHeaderBytes int
	// MaxDrainBytes is how much of a denied request's body is read and
	// discarded to keep the connection usable; a larger body closes the
	// connection after the 403.
	MaxDrainBytes int64
	// IdleTimeout: a kept-alive client connection with no request for this
	// long is closed.
	IdleTimeout time.Duration
	// HeaderTimeout: the time from a request's first byte to the end of its
	// header section (slow clients, slowloris).
	HeaderTimeout time.Duration
	// ReadTimeout: the longest a body may stall on either side (no byte
	// for this long ends the exchange).
	ReadTimeout time.Duration
	// WriteTimeout: the longest one write to either side may block.
	WriteTimeout time.Duration
	// ResponseTimeout: the time from a request's end to its response's
	// header section from the server.
	ResponseTimeout time.Duration
	// DialTimeout bounds the connection to the original destination.
	DialTimeout time.Duration
	// KeepHeaderValues puts header values in flows as they are; by default
	// every value is Hubble's "HUBBLE_REDACTED" (names are kept).
	KeepHeaderValues bool
	// OnFlow receives every L7 flow (requests and responses). It is called
	// on the connection's goroutine and must not block. Nil: flows are not
	// built.
	OnFlow func(*flowpb.Flow)
	// Logger receives refusals and upstream errors, at most one line per
	// reason per second. Nil: slog.Default().
	Logger *slog.Logger
	// Registerer, when not nil, registers the engine's metrics.
	Registerer prometheus.Registerer
}

// The defaults of Config.
const (
	DefaultMaxHeaderBytes  = 64 << 10
	DefaultMaxDrainBytes   = 64 << 10
	DefaultIdleTimeout     = 60 * time.Second
	DefaultHeaderTimeout   = 10 * time.Second
	DefaultReadTimeout     = 30 * time.Second
	DefaultWriteTimeout    = 30 * time.Second
	DefaultResponseTimeout = 60 * time.Second
	DefaultDialTimeout     = 5 * time.Second
)

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.MaxDrainBytes == 0 {
		c.MaxDrainBytes = DefaultMaxDrainBytes
	}
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.HeaderTimeout, DefaultHeaderTimeout)
	def(&c.ReadTimeout, DefaultReadTimeout)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	def(&c.ResponseTimeout, DefaultResponseTimeout)
	def(&c.DialTimeout, DefaultDialTimeout)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports the first field out of range (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 16<<20 {
		return fmt.Errorf("%w: MaxHeaderBytes %d: use 1 KiB to 16 MiB", ErrInvalidConfig, c.MaxHeaderBytes)
	}
	if c.MaxDrainBytes < 0 {
		return fmt.Errorf("%w: MaxDrainBytes %d is negative", ErrInvalidConfig, c.MaxDrainBytes)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"IdleTimeout", c.IdleTimeout}, {"HeaderTimeout", c.HeaderTimeout}, {"ReadTimeout", c.ReadTimeout},
		{"WriteTimeout", c.WriteTimeout}, {"ResponseTimeout", c.ResponseTimeout}, {"DialTimeout", c.DialTimeout},
	} {
		if d.v < time.Millisecond {
			return fmt.Errorf("%w: %s %v: use at least 1ms", ErrInvalidConfig, d.name, d.v)
		}
	}
	return nil
}
