package observe

// The client side of the Observer API: dialing an agent's unix socket, or
// an agent or a relay over TCP with (mutual) TLS, the way the hubble CLI
// names its targets.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clustermesh/clustermesh/ca"
)

// The errors Dial returns wrap one of these, then the cause.
var (
	// ErrUnreachable: nothing answers at the address (no socket, refused,
	// no route, timed out).
	ErrUnreachable = errors.New("observer unreachable")
	// ErrHandshake: the TLS handshake failed (an unknown CA, a name the
	// certificate does not cover, a plaintext server).
	ErrHandshake = errors.New("TLS handshake with the observer failed")
	// ErrNotGRPC: the server accepted the connection and closed it without
	// speaking gRPC (often a TLS server dialed in plaintext).
	ErrNotGRPC = errors.New("the server closed the connection without speaking gRPC")
)

// TLSPrefix marks a server address that is dialed with TLS, as the hubble
// CLI has it: tls://host:port.
const TLSPrefix = "tls://"

// Target is where an Observer is dialed.
type Target struct {
	// Network is "unix" or "tcp"; Address the socket's path or host:port.
	Network, Address string
	// TLS is set by the tls:// prefix.
	TLS bool
}

// ParseTarget parses a server address as the hubble CLI takes it:
// unix:///PATH or unix:PATH (an agent's socket), host:port, or
// tls://host:port; an absolute path is taken for a unix socket.
func ParseTarget(server string) (Target, error) {
	t := Target{Network: "tcp"}
	if rest, ok := strings.CutPrefix(server, TLSPrefix); ok {
		t.TLS, server = true, rest
	}
	switch {
	case strings.HasPrefix(server, "unix://"):
		t.Network, t.Address = "unix", strings.TrimPrefix(server, "unix://")
	case strings.HasPrefix(server, "unix:"):
		t.Network, t.Address = "unix", strings.TrimPrefix(server, "unix:")
	case strings.HasPrefix(server, "/"):
		t.Network, t.Address = "unix", server
	default:
		if _, _, err := net.SplitHostPort(server); err != nil {
			return Target{}, fmt.Errorf("server address %q: want unix:///PATH, host:port or tls://host:port", server)
		}
		t.Address = server
	}
	if t.Address == "" {
		return Target{}, fmt.Errorf("server address %q: the unix socket's path is missing (unix:///var/run/clustermesh/hubble.sock)", server)
	}
	return t, nil
}

// Dial connects to the Observer API at server (ParseTarget's forms) and
// returns the connection once it is ready, or an error wrapping
// ErrUnreachable, ErrHandshake or ErrNotGRPC with the cause, or ctx's
// error. tc nil dials in plaintext, unless server has the tls:// prefix
// (then the system's CAs are trusted). The caller closes the connection.
func Dial(ctx context.Context, server string, tc *tls.Config) (*grpc.ClientConn, error) {
	t, err := ParseTarget(server)
	if err != nil {
		return nil, err
	}
	if t.TLS && tc == nil {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	rec := &dialRecorder{}
	creds := insecure.NewCredentials()
	if tc != nil && len(tc.Certificates) == 0 && tc.GetClientCertificate == nil {
		tc = tc.Clone()
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			rec.record(errors.New("the server requires a client certificate (tls: certificate required), and none was given"), ErrHandshake)
			return &tls.Certificate{}, nil // none: the server decides
		}
	}
	if tc != nil {
		creds = recordingCreds{TransportCredentials: credentials.NewTLS(tc), rec: rec}
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, t.Network, t.Address)
			if err != nil {
				rec.record(err, ErrUnreachable)
				return nil, err
			}
			if tc != nil {
				return c, nil // the TLS connection records its reads
			}
			return &firstReadConn{Conn: c, rec: rec, kind: ErrNotGRPC}, nil
		}),
	}
	if t.Network == "unix" {
		opts = append(opts, grpc.WithAuthority("localhost"))
	}
	conn, err := grpc.NewClient("passthrough:///"+t.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", server, err)
	}
	if err := waitReady(ctx, conn); err != nil {
		conn.Close()
		if cause := rec.first(); cause != nil {
			return nil, fmt.Errorf("connecting to %s: %w", server, cause)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to %s: %w", server, ctx.Err())
		}
		return nil, fmt.Errorf("connecting to %s: %w", server, ErrNotGRPC)
	}
	return conn, nil
}

// waitReady connects conn and waits until it is ready (nil), fails or ctx
// is done (an error).
func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return errors.New(s.String())
		}
		if !conn.WaitForStateChange(ctx, s) {
			return ctx.Err()
		}
	}
}

// dialRecorder keeps the first dial, handshake or read error of a
// connection.
type dialRecorder struct {
	mu  sync.Mutex
	err error
}

func (r *dialRecorder) record(err, kind error) {
	if err == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil { // the first says why; what follows is its consequence
		r.err = fmt.Errorf("%w: %w", kind, err)
	}
}

func (r *dialRecorder) first() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// recordingCreds are TLS credentials that record a failed handshake.
type recordingCreds struct {
	credentials.TransportCredentials
	rec *dialRecorder
}

func (c recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.rec.record(err, ErrHandshake)
		return nil, nil, err
	}
	// TLS 1.3 servers refuse a client certificate after the handshake: the
	// first read says so.
	return &firstReadConn{Conn: conn, rec: c.rec, kind: ErrHandshake}, info, nil
}

func (c recordingCreds) Clone() credentials.TransportCredentials {
	return recordingCreds{TransportCredentials: c.TransportCredentials.Clone(), rec: c.rec}
}

// firstReadConn records the error of its first read when it returned no
// data: the server closed or refused the connection before speaking gRPC.
// Closing it ourselves (net.ErrClosed) is not recorded.
type firstReadConn struct {
	net.Conn
	rec  *dialRecorder
	kind error
	read atomic.Bool
}

func (c *firstReadConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 || err != nil && !errors.Is(err, net.ErrClosed) {
		if c.read.CompareAndSwap(false, true) && n == 0 {
			c.rec.record(err, c.kind)
		}
	}
	return n, err
}

// ClientTLS is an Observer client's TLS, as the hubble CLI's flags have it.
type ClientTLS struct {
	// CAFiles are PEM CA certificates to trust instead of the system's
	// (--tls-ca-cert-files): the mesh CA's ca.crt.
	CAFiles []string
	// CertFile and KeyFile are the client certificate and its key, for
	// servers that require one (--tls-client-cert-file,
	// --tls-client-key-file): an agent's TCP listener and the relay do.
	CertFile, KeyFile string
	// ServerName is the name the server's certificate must have
	// (--tls-server-name), when it is not the dialed host: an agent of
	// node n in cluster c presents *.c.hubble-grpc.clustermesh.io
	// (ca.ObserverServerName).
	ServerName string
	// Insecure skips checking the server's certificate
	// (--tls-allow-insecure).
	Insecure bool
}

// Config builds the tls.Config of c.
func (c ClientTLS) Config() (*tls.Config, error) {
	tc := &tls.Config{ServerName: c.ServerName, InsecureSkipVerify: c.Insecure, MinVersion: tls.VersionTLS12} // #nosec G402 -- --tls-allow-insecure asks for it
	if len(c.CAFiles) > 0 {
		tc.RootCAs = x509.NewCertPool()
		for _, f := range c.CAFiles {
			pem, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("reading CA certificate %s: %w", f, err)
			}
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("reading CA certificate %s: no PEM certificate in it", f)
			}
		}
	}
	switch {
	case c.CertFile != "" && c.KeyFile != "":
		pair, _, err := ca.LoadKeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading the client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	case c.CertFile != "" || c.KeyFile != "":
		return nil, errors.New("a client certificate needs both --tls-client-cert-file and --tls-client-key-file")
	}
	return tc, nil
}

// Enabled reports whether any TLS setting is given (they imply TLS).
func (c ClientTLS) Enabled() bool {
	return len(c.CAFiles) > 0 || c.CertFile != "" || c.KeyFile != "" || c.ServerName != "" || c.Insecure
}
