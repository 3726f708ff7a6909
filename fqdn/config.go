package fqdn

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Config.
const (
	// DefaultMinTTL keeps an address at least a minute: long enough for a
	// client to connect after its answer, as nothing here follows the
	// connections an expired address still carries (Cilium's floor is 0
	// with its connection tracking, and was an hour before it).
	DefaultMinTTL = time.Minute
	// DefaultMaxTTL bounds what an answer may claim (a day).
	DefaultMaxTTL = 24 * time.Hour
	// DefaultMaxIPsPerName is Cilium's --tofqdns-max-ip-per-hostname.
	DefaultMaxIPsPerName = 1000
	// DefaultMaxNames bounds the names held.
	DefaultMaxNames = 50_000
)

// Config configures a Cache. The zero value takes every default.
type Config struct {
	// MinTTL is the shortest time an answer's address is held (an answer
	// with a shorter TTL is held this long). DefaultMinTTL when 0.
	MinTTL time.Duration
	// MaxTTL is the longest (DefaultMaxTTL when 0).
	MaxTTL time.Duration
	// MaxIPsPerName bounds the addresses of one name; beyond it the ones
	// expiring first are evicted (DefaultMaxIPsPerName when 0).
	MaxIPsPerName int
	// MaxNames bounds the names; beyond it the least recently answered
	// name is evicted with its addresses (DefaultMaxNames when 0).
	MaxNames int
	// Now is the clock (time.Now when nil): tests drive expiry with their
	// own and Cache.Expire.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.MinTTL == 0 {
		c.MinTTL = DefaultMinTTL
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = DefaultMaxTTL
	}
	if c.MaxIPsPerName == 0 {
		c.MaxIPsPerName = DefaultMaxIPsPerName
	}
	if c.MaxNames == 0 {
		c.MaxNames = DefaultMaxNames
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks c with its defaults applied.
func (c Config) Validate() error {
	c.setDefaults()
	switch {
	case c.MinTTL < 0:
		return fmt.Errorf("%w: MinTTL %v is negative", ErrConfig, c.MinTTL)
	case c.MaxTTL < c.MinTTL:
		return fmt.Errorf("%w: MaxTTL %v is below MinTTL %v", ErrConfig, c.MaxTTL, c.MinTTL)
	case c.MaxIPsPerName < 0:
		return fmt.Errorf("%w: MaxIPsPerName %d is negative", ErrConfig, c.MaxIPsPerName)
	case c.MaxNames < 0:
		return fmt.Errorf("%w: MaxNames %d is negative", ErrConfig, c.MaxNames)
	}
	return nil
}

// metrics are the cache's Prometheus metrics.
type metrics struct {
	names       prometheus.Gauge
	ips         prometheus.Gauge
	evictions   *prometheus.CounterVec
	expirations prometheus.Counter
	updates     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		names: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_fqdn_cache_names",
			Help: "DNS names the FQDN cache holds addresses of.",
		}),
		ips: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_fqdn_cache_ips",
			Help: "(name, address) pairs the FQDN cache holds.",
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_fqdn_cache_evictions_total",
			Help: "Addresses evicted before their TTL, by reason (ips_per_name: over MaxIPsPerName, names: over MaxNames).",
		}, []string{"reason"}),
		expirations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_fqdn_cache_expirations_total",
			Help: "(name, address) pairs removed at the end of their TTL.",
		}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_fqdn_cache_updates_total",
			Help: "Names updated from allowed DNS answers.",
		}),
	}
	for _, r := range []string{reasonIPsPerName, reasonNames} {
		m.evictions.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.names, m.ips, m.evictions, m.expirations, m.updates} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering fqdn cache metrics: %w", err)
		}
	}
	return m, nil
}

const (
	reasonIPsPerName = "ips_per_name"
	reasonNames      = "names"
)
