package k8smcs

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
)

// Defaults of Config.
const (
	DefaultCoalesce      = 50 * time.Millisecond
	DefaultResync        = 30 * time.Second
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
	// retryAfterError is how soon a pass that failed is tried again.
	retryAfterError = time.Second
)

// Config is a controller's configuration.
type Config struct {
	// ClusterName is the local cluster's mesh name.
	ClusterName string
	Client      kubernetes.Interface
	MCS         mcsclient.Interface
	// ConfigDir holds the remotes' etcd client configs (the agents'): their
	// export specs are read from there.
	ConfigDir string
	// ClusterSetIPRange, when valid, is where ClusterSetIPs are allocated
	// from (a ServiceCIDR of it is created); else Kubernetes allocates them
	// from its service ranges.
	ClusterSetIPRange netip.Prefix
	// LeaseNamespace and LeaseName: the Lease of the cluster's controllers;
	// Identity this one's name in it (default: host name and pid).
	LeaseNamespace, LeaseName, Identity       string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Coalesce gathers a burst of changes into one pass; Resync is the
	// period of passes without changes (someone edited an import).
	Coalesce, Resync time.Duration
	Logger           *slog.Logger
}

func (c *Config) withDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.LeaseDuration, DefaultLeaseDuration)
	def(&c.RenewDeadline, DefaultRenewDeadline)
	def(&c.RetryPeriod, DefaultRetryPeriod)
	def(&c.Coalesce, DefaultCoalesce)
	def(&c.Resync, DefaultResync)
	if c.LeaseName == "" {
		c.LeaseName = DefaultLeaseName
	}
	if c.LeaseNamespace == "" {
		c.LeaseNamespace = "kube-system"
	}
	if c.Identity == "" {
		host, _ := os.Hostname()
		c.Identity = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports what makes c unusable.
func (c *Config) Validate() error {
	switch {
	case c.ClusterName == "":
		return fmt.Errorf("%w: no cluster name", ErrInvalidConfig)
	case c.Client == nil || c.MCS == nil:
		return fmt.Errorf("%w: no Kubernetes or MCS API client", ErrInvalidConfig)
	case c.ConfigDir == "":
		return fmt.Errorf("%w: no config directory of the remotes", ErrInvalidConfig)
	case c.ClusterSetIPRange.IsValid() && c.ClusterSetIPRange != c.ClusterSetIPRange.Masked():
		return fmt.Errorf("%w: --clusterset-ip-range %s has host bits set: use %s", ErrInvalidConfig, c.ClusterSetIPRange, c.ClusterSetIPRange.Masked())
	case c.ClusterSetIPRange.IsValid() && c.ClusterSetIPRange.Addr().BitLen()-c.ClusterSetIPRange.Bits() < 2:
		return fmt.Errorf("%w: --clusterset-ip-range %s is too small (4 addresses at least)", ErrInvalidConfig, c.ClusterSetIPRange)
	case c.ClusterSetIPRange.IsValid() && c.ClusterSetIPRange.Addr().BitLen()-c.ClusterSetIPRange.Bits() > 20:
		return fmt.Errorf("%w: --clusterset-ip-range %s is too large (Kubernetes takes ServiceCIDRs of at most 2^20 addresses)", ErrInvalidConfig, c.ClusterSetIPRange)
	}
	return nil
}
