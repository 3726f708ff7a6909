package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Config is the relay's configuration.
type Config struct {
	// PeerServices are the peer services the peers are learned from:
	// unix:///path (an agent's local socket) or host:port (TCP, mutual
	// TLS). The relay follows the union of their sets.
	PeerServices []string
	// PeerServiceServerName is the TLS name checked on TCP peer services
	// (default: the host of the address).
	PeerServiceServerName string
	// ListenAddress is the TCP host:port of the relay's Observer API ("":
	// none). Without ServerCertFile it must be a loopback address.
	ListenAddress string
	// UnixSocket is a path the relay also serves on, without TLS (0600).
	UnixSocket string

	// CAFile is the mesh CA: peers and peer services must present a
	// certificate of it, and so must the relay's TCP clients.
	CAFile string
	// ClientCertFile and ClientKeyFile are the client certificate the relay
	// presents to peers and peer services.
	ClientCertFile, ClientKeyFile string
	// ServerCertFile and ServerKeyFile are the certificate the relay serves
	// ListenAddress with ("": plaintext, loopback only).
	ServerCertFile, ServerKeyFile string
	// InsecurePeers dials peers without TLS (tests, and agents serving on
	// loopback only); never with ClientCertFile.
	InsecurePeers bool

	// Name is the relay's node name in its node status events.
	Name string
	// SortWindow is the longest a flow waits for older ones from quiet
	// peers; SortBufferMax the most flows waiting.
	SortWindow    time.Duration
	SortBufferMax int
	// DialTimeout bounds one connection attempt to a peer; MaxBackoff the
	// wait between attempts.
	DialTimeout, MaxBackoff time.Duration
	// RetryInterval is how often a following request asks a peer that
	// failed again.
	RetryInterval time.Duration
	// RequestTimeout bounds one peer's answer to ServerStatus, GetNodes
	// and GetNamespaces.
	RequestTimeout time.Duration
	// GoneRetention is how long GetNodes lists a peer that went.
	GoneRetention time.Duration
	// ResyncGrace is how long peers of a peer service's previous stream
	// stay when its new stream does not announce them.
	ResyncGrace time.Duration

	Log *slog.Logger
}

// DefaultConfig returns the defaults: every duration and bound set, no
// peer service and no address.
func DefaultConfig() Config {
	return Config{
		Name:           "clustermesh-relay",
		SortWindow:     500 * time.Millisecond,
		SortBufferMax:  4096,
		DialTimeout:    5 * time.Second,
		MaxBackoff:     10 * time.Second,
		RetryInterval:  time.Second,
		RequestTimeout: 5 * time.Second,
		GoneRetention:  10 * time.Minute,
		ResyncGrace:    5 * time.Second,
	}
}

// defaults fills what is zero from DefaultConfig.
func (c *Config) defaults() {
	d := DefaultConfig()
	if c.Name == "" {
		c.Name = d.Name
	}
	for _, f := range []struct{ v, def *time.Duration }{
		{&c.SortWindow, &d.SortWindow}, {&c.DialTimeout, &d.DialTimeout}, {&c.MaxBackoff, &d.MaxBackoff},
		{&c.RetryInterval, &d.RetryInterval}, {&c.RequestTimeout, &d.RequestTimeout},
		{&c.GoneRetention, &d.GoneRetention}, {&c.ResyncGrace, &d.ResyncGrace},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	if c.SortBufferMax == 0 {
		c.SortBufferMax = d.SortBufferMax
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// Validate says what makes c unusable.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if len(c.PeerServices) == 0 {
		bad("no peer service: give --peer-service (unix:///path or host:port) to learn the peers from")
	}
	for _, p := range c.PeerServices {
		if strings.HasPrefix(p, "unix:") {
			continue
		}
		if _, _, err := net.SplitHostPort(p); err != nil {
			bad("peer service %q: want unix:///path or host:port", p)
		}
	}
	if c.ListenAddress == "" && c.UnixSocket == "" {
		bad("nothing to serve on: give --listen-address or --unix-socket")
	}
	if (c.ClientCertFile == "") != (c.ClientKeyFile == "") || (c.ServerCertFile == "") != (c.ServerKeyFile == "") {
		bad("a certificate needs its key and the reverse")
	}
	if (c.ClientCertFile != "" || c.ServerCertFile != "") && c.CAFile == "" {
		bad("certificates need the mesh CA (--tls-ca-file)")
	}
	if c.ClientCertFile == "" && !c.InsecurePeers {
		bad("peers are dialed with mutual TLS: give --tls-client-cert-file and --tls-client-key-file")
	}
	if c.ClientCertFile != "" && c.InsecurePeers {
		bad("InsecurePeers and a client certificate exclude each other")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"sort window", c.SortWindow}, {"dial timeout", c.DialTimeout}, {"max backoff", c.MaxBackoff},
		{"retry interval", c.RetryInterval}, {"request timeout", c.RequestTimeout}} {
		if d.v < 0 {
			bad("%s %s is negative", d.name, d.v)
		}
	}
	if c.SortBufferMax < 0 {
		bad("sort buffer %d is negative", c.SortBufferMax)
	}
	return errors.Join(errs...)
}

// RegisterFlags adds the relay's flags to fs, with c's values as defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&c.PeerServices, "peer-service", c.PeerServices, "a peer service to learn the mesh's agents from: unix:///path (an agent's local socket) or host:port (mutual TLS); repeat for several, the relay follows the union")
	fs.StringVar(&c.PeerServiceServerName, "peer-service-tls-server-name", c.PeerServiceServerName, "TLS name checked on a TCP peer service (default: its host); for an agent's Observer port, NODE.CLUSTER.hubble-grpc.clustermesh.io")
	fs.StringVar(&c.ListenAddress, "listen-address", c.ListenAddress, "host:port of the relay's Observer API; plaintext only on loopback, otherwise with --tls-server-cert-file")
	fs.StringVar(&c.UnixSocket, "unix-socket", c.UnixSocket, "also serve on this unix socket (0600, no TLS)")
	fs.StringVar(&c.CAFile, "tls-ca-file", c.CAFile, "the mesh CA (ca.crt): peers, peer services and TCP clients must present a certificate it signed")
	fs.StringVar(&c.ClientCertFile, "tls-client-cert-file", c.ClientCertFile, "client certificate presented to the agents (clustermesh ca issue --observer-client)")
	fs.StringVar(&c.ClientKeyFile, "tls-client-key-file", c.ClientKeyFile, "key of --tls-client-cert-file")
	fs.StringVar(&c.ServerCertFile, "tls-server-cert-file", c.ServerCertFile, "server certificate of --listen-address (clustermesh ca issue --server)")
	fs.StringVar(&c.ServerKeyFile, "tls-server-key-file", c.ServerKeyFile, "key of --tls-server-cert-file")
	fs.DurationVar(&c.SortWindow, "sort-window", c.SortWindow, "longest a flow waits for older flows from quiet peers")
	fs.IntVar(&c.SortBufferMax, "sort-buffer", c.SortBufferMax, "most flows waiting to be sorted per request")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "bound of one connection attempt to a peer")
	fs.DurationVar(&c.RetryInterval, "retry-interval", c.RetryInterval, "how often a following request asks a failed peer again")
	fs.DurationVar(&c.GoneRetention, "gone-retention", c.GoneRetention, "how long a peer that left the mesh is listed as gone")
}
