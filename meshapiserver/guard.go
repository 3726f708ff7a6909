package meshapiserver

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// requestGuard lets a caller that is not an admin of this cluster make only
// the read requests readers need, and refuses every other one with
// PermissionDenied before etcd handles it.
//
// etcd's own authorization checks keys, not everything else: a read-only
// user could grant leases without limit (200,000 in 50 s took an apiserver
// from 67 to 290 MB), keep alive or revoke leases (the publisher's
// included: every published entry would go), compact, defragment, take
// snapshots, hash the store, or try passwords. An admin is a caller whose
// client certificate is named admin-<cluster> or root and chains to the
// mesh CA (Config.CAFile): a further trusted CA can mint a certificate with
// any name, so its certificates never write.
//
// Readers get: KV Range, KV Txn without writes (the agents' probe reads
// two keys at one revision), Watch, Maintenance Status, Cluster MemberList
// and the gRPC health check. etcd's authorization still decides which keys
// they may read.
type requestGuard struct {
	admins     map[string]bool
	adminRoots [][]byte // DER of the CA certificates an admin's chain must end at
	log        *slog.Logger

	mu       sync.Mutex
	denied   map[string]uint64    // by method; guarded by mu
	lastLogs map[string]time.Time // by user and method; guarded by mu
}

// readerMethods are the gRPC methods any authenticated caller may call
// (KV Txn is decided by its content).
var readerMethods = map[string]bool{
	"/etcdserverpb.KV/Range":           true,
	"/etcdserverpb.Watch/Watch":        true,
	"/etcdserverpb.Maintenance/Status": true,
	"/etcdserverpb.Cluster/MemberList": true,
	"/grpc.health.v1.Health/Check":     true,
}

const txnMethod = "/etcdserverpb.KV/Txn"

// deniedLogInterval is how often one user's refusals of one method are
// logged (every one is counted).
const deniedLogInterval = time.Minute

func newRequestGuard(cluster, caFile string, log *slog.Logger) (*requestGuard, error) {
	roots, err := certificatesDER(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the mesh CA for admin checks: %w", err)
	}
	return &requestGuard{
		admins:     map[string]bool{AdminUser(cluster): true, rootUser: true},
		adminRoots: roots,
		log:        log,
		denied:     map[string]uint64{},
		lastLogs:   map[string]time.Time{},
	}, nil
}

// certificatesDER returns the DER of every certificate in a PEM file.
func certificatesDER(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return nil, fmt.Errorf("parsing a certificate of %s: %w", path, err)
		}
		out = append(out, block.Bytes)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no certificate", path)
	}
	return out, nil
}

// serverOptions are the gRPC server options that install the guard.
func (g *requestGuard) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream)}
}

func (g *requestGuard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (g *requestGuard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := g.check(ss.Context(), info.FullMethod, nil); err != nil {
		return err
	}
	return handler(srv, ss)
}

// check returns nil when the caller may call method with req.
func (g *requestGuard) check(ctx context.Context, method string, req any) error {
	user, admin := g.caller(ctx)
	if admin || readerMethods[method] {
		return nil
	}
	if method == txnMethod {
		if t, ok := req.(*pb.TxnRequest); ok && readOnlyTxn(t) {
			return nil
		}
	}
	g.mu.Lock()
	g.denied[method]++
	key := user + " " + method
	now := time.Now()
	logIt := now.Sub(g.lastLogs[key]) >= deniedLogInterval
	if logIt {
		if len(g.lastLogs) >= 1024 { // bounded: forget who was logged when
			clear(g.lastLogs)
		}
		g.lastLogs[key] = now
	}
	n := g.denied[method]
	g.mu.Unlock()
	if logIt {
		g.log.Warn("refused a request only an admin may make", "user", user, "method", method, "refused", n)
	}
	return rpctypes.ErrGRPCPermissionDenied
}

// caller returns the common name of the caller's verified client
// certificate and whether it is an admin.
func (g *requestGuard) caller(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return "", false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return "", false
	}
	user := ""
	for _, chain := range ti.State.VerifiedChains {
		if len(chain) == 0 {
			continue
		}
		user = chain[0].Subject.CommonName
		if !g.admins[user] {
			return user, false
		}
		for _, root := range g.adminRoots {
			if bytes.Equal(chain[len(chain)-1].Raw, root) {
				return user, true
			}
		}
	}
	return user, false
}

// readOnlyTxn reports whether a transaction, nested ones included, only
// reads.
func readOnlyTxn(t *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			switch r := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
			case *pb.RequestOp_RequestTxn:
				if !readOnlyTxn(r.RequestTxn) {
					return false
				}
			default:
				return false
			}
		}
	}
	return true
}

// deniedByMethod returns a copy of the refusal counts.
func (g *requestGuard) deniedByMethod() map[string]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.denied)
}
