package meshapiserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/clustermesh/clustermesh/wire"
)

// publisher keeps the state prefixes of one cluster's etcd equal to the
// desired entries. It writes in batched transactions, every entry on its
// lease, puts before deletes (so a still-valid entry is never missing), and
// the synced canaries only once the first full snapshot is in.
//
// An entry every agent would reject (a value over wire.MaxValueBytes, a key
// over wire.MaxKeyBytes, anything the agents' decoders refuse) is refused
// here instead: not written, counted by reason and reported, while the rest
// is published. A key whose new value is refused keeps the value it was
// published with, as an agent keeps the last valid value of a key.
//
// Not safe for concurrent use: the server's run loop owns it.
type publisher struct {
	cli     *clientv3.Client
	cluster wire.Cluster
	// localView: the local view's canaries are written with the others
	// (else they are deleted: a view a previous run published goes).
	localView bool
	lease     clientv3.LeaseID
	log       *slog.Logger
	// fence conditions every write (on an external etcd: this replica's
	// election key, see election.go); a write it refuses is ErrNotLeader.
	fence []clientv3.Cmp
	// afterTxn, when set, is called after each committed publishing
	// transaction, possibly concurrently (tests: a leader killed
	// mid-publish).
	afterTxn func()

	txnLatency prometheus.Histogram

	published   desiredKV // what etcd holds under the state prefixes (nil: on another lease)
	rewrite     bool      // every entry is to be written again (on a new lease)
	endpoints   *endpointCache
	canariesSet bool
	refused     map[string]refusal // by key: entries refused and not published
	refusals    map[string]uint64  // refused values since start, by reason
	stats       PublishStats

	// What loadExisting found: the identity entries (key → value, on any
	// lease) and how many entries were on a lease not ours.
	existingIdentities map[string][]byte
	adoptable          int
}

// refusal is an entry the publisher refused, with its value (a new value
// for the key is checked again) and why.
type refusal struct {
	val []byte
	err error
}

// PublishStats counts the publisher's work (for status and metrics).
type PublishStats struct {
	Entries       int           // entries currently published
	Puts, Deletes uint64        // writes since start
	Txns          uint64        // transactions since start
	LastTxn       time.Duration // latency of the last transaction
	LastPublish   time.Time
	// LastWrites entries were written by the last publish that changed
	// anything, in LastWritesTook (computing the difference included).
	LastWrites     int
	LastWritesTook time.Duration
	// Changes counts the publishes of a change of some endpoints that
	// compared only the keys it touched (publishChanges).
	Changes uint64
	// CanariesSet is true while the synced canaries are written (they are
	// written again after a lease was lost).
	CanariesSet bool
	// LocalViewEntries are the entries of those published that are in
	// the local view (wire.LocalViewPrefix).
	LocalViewEntries int
	// Refused entries are not published because every agent would reject
	// them; RefusedSamples says which (at most maxRefusedSamples, by key).
	// RefusedTotal counts refused values since start by reason (wire.Reason).
	Refused        int
	RefusedSamples []RefusedEntry
	RefusedTotal   map[string]uint64
}

// RefusedEntry is one entry the publisher refused.
type RefusedEntry struct {
	Key    string `json:"key"`
	Bytes  int    `json:"bytes"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

const maxRefusedSamples = 10

func newPublisher(cli *clientv3.Client, c wire.Cluster, localView bool, log *slog.Logger, txnLatency prometheus.Histogram) *publisher {
	return &publisher{
		cli: cli, cluster: c, localView: localView, log: log, txnLatency: txnLatency, endpoints: newEndpointCache(),
		published: desiredKV{}, refused: map[string]refusal{}, refusals: map[string]uint64{},
	}
}

// loadExisting reads what the store already holds under the state prefixes
// and the local view's (a persistent data dir, or a store shared with a
// previous run), so that the first publish removes only what is no longer
// desired.
func (p *publisher) loadExisting(ctx context.Context) error {
	p.published = desiredKV{}
	p.existingIdentities, p.adoptable = map[string][]byte{}, 0
	type source struct {
		kind   wire.Kind
		prefix string
		view   bool
	}
	var sources []source
	for _, k := range wire.PublishedKinds {
		sources = append(sources, source{k, k.ListPrefix(p.cluster.Name), false})
	}
	for _, k := range wire.LocalViewKinds {
		sources = append(sources, source{k, wire.LocalViewListPrefix(k), true})
	}
	for _, src := range sources {
		k := src.kind
		resp, err := p.cli.Get(ctx, src.prefix, clientv3.WithPrefix())
		if err != nil {
			return fmt.Errorf("reading existing %s: %w", src.prefix, err)
		}
		for _, kv := range resp.Kvs {
			if k == wire.Identities { // the view's too: they are the held-back endpoints'
				p.existingIdentities[wire.LocalViewStateKey(k, string(kv.Key))] = kv.Value
			}
			if kv.Lease != int64(p.lease) {
				p.adoptable++
				// On a lease nobody keeps alive any more (a previous run):
				// rewrite it on ours, or it would expire.
				p.published[string(kv.Key)] = nil
				continue
			}
			p.published[string(kv.Key)] = kv.Value
		}
	}
	return nil
}

// useLease makes lease the publisher's: every published entry is written
// again on it by the next publish, and the canaries after it. Called after
// the previous lease was lost (expired, revoked): what was on it is gone,
// or goes when it expires.
func (p *publisher) useLease(lease clientv3.LeaseID) {
	p.lease = lease
	p.rewrite = true
	p.canariesSet = false
	p.stats.CanariesSet = false
}

// publish makes the store hold exactly want, but for refused entries. After
// the first successful publish it writes the canaries. It takes want over.
func (p *publisher) publish(ctx context.Context, want desiredKV) error {
	began := time.Now()
	var puts, refusedNow []string
	for k, v := range want {
		if old := p.published[k]; old != nil && bytes.Equal(old, v) {
			if p.rewrite {
				puts = append(puts, k) // checked when it was published
			}
			continue
		}
		if r, ok := p.refused[k]; ok && bytes.Equal(r.val, v) {
			refusedNow = append(refusedNow, k) // still refused, already counted
			continue
		}
		if err := checkEntry(p.cluster, k, v); err != nil {
			p.refuse(k, v, err)
			refusedNow = append(refusedNow, k)
			continue
		}
		delete(p.refused, k)
		puts = append(puts, k)
	}
	for k := range p.refused {
		if _, ok := want[k]; !ok {
			delete(p.refused, k) // no longer desired
		}
	}
	for _, k := range refusedNow {
		if old := p.published[k]; old != nil {
			want[k] = old // keeps its last published value
			if p.rewrite {
				puts = append(puts, k)
			}
		} else {
			delete(want, k)
		}
	}
	var dels []string
	for k := range p.published {
		if _, ok := want[k]; !ok {
			dels = append(dels, k)
		}
	}
	if err := p.write(ctx, puts, dels, want); err != nil {
		return err
	}
	p.published, p.rewrite = want, false
	p.stats.Entries = len(want)
	p.stats.LocalViewEntries = 0
	for k := range want {
		if strings.HasPrefix(k, wire.LocalViewPrefix) {
			p.stats.LocalViewEntries++
		}
	}
	p.recordWrites(began, len(puts), len(dels), "published")
	if !p.canariesSet {
		if err := p.writeCanaries(ctx); err != nil {
			return err
		}
		p.canariesSet = true
		p.stats.CanariesSet = true
	}
	return nil
}

// publishChanges is publish for a change known to touch only the keys of
// puts (entries desired now) and dels (entries no longer desired): the same
// checks and refusals, puts before deletes, in the same transactions, but
// only those keys are compared, and what is published is updated in place.
// The caller makes sure the full publish ran before on this lease (the
// canaries are written, nothing is to be rewritten).
func (p *publisher) publishChanges(ctx context.Context, puts map[string][]byte, dels map[string]struct{}) error {
	if p.rewrite || !p.canariesSet {
		return fmt.Errorf("publishing a change: %w", errFullPublishDue)
	}
	began := time.Now()
	var putKeys, delKeys []string
	for k, v := range puts {
		if old := p.published[k]; old != nil && bytes.Equal(old, v) {
			continue
		}
		if r, ok := p.refused[k]; ok && bytes.Equal(r.val, v) {
			continue // still refused, already counted; keeps its last published value
		}
		if err := checkEntry(p.cluster, k, v); err != nil {
			p.refuse(k, v, err) // keeps its last published value, if any
			continue
		}
		delete(p.refused, k)
		putKeys = append(putKeys, k)
	}
	for k := range dels {
		delete(p.refused, k) // no longer desired
		if _, ok := p.published[k]; ok {
			delKeys = append(delKeys, k)
		}
	}
	if err := p.write(ctx, putKeys, delKeys, puts); err != nil {
		return err
	}
	for _, k := range putKeys {
		if _, ok := p.published[k]; !ok && strings.HasPrefix(k, wire.LocalViewPrefix) {
			p.stats.LocalViewEntries++
		}
		p.published[k] = puts[k]
	}
	for _, k := range delKeys {
		if strings.HasPrefix(k, wire.LocalViewPrefix) {
			p.stats.LocalViewEntries--
		}
		delete(p.published, k)
	}
	p.stats.Entries = len(p.published)
	p.stats.Changes++
	p.recordWrites(began, len(putKeys), len(delKeys), "published a change")
	return nil
}

// recordWrites counts a publish's writes, begun at began, in the stats,
// and reports the refused entries.
func (p *publisher) recordWrites(began time.Time, puts, dels int, what string) {
	p.stats.Puts += uint64(puts)
	p.stats.Deletes += uint64(dels)
	p.stats.LastPublish = time.Now()
	p.reportRefused()
	if puts+dels > 0 {
		p.stats.LastWrites = puts + dels
		p.stats.LastWritesTook = time.Since(began)
		p.log.Debug(what, "puts", puts, "deletes", dels, "entries", len(p.published), "refused", len(p.refused))
	}
}

// errFullPublishDue: a change cannot be published on its own (a new
// lease, or nothing published yet).
var errFullPublishDue = errors.New("a full publish is due")

// write commits the puts (values from vals) and the deletes, every put in
// before the first delete: a still-valid entry is never missing, even for
// a moment. One transaction when both fit (applied atomically, and one
// round trip for a change that replaces one entry by another), else the
// puts' transactions before the deletes'.
func (p *publisher) write(ctx context.Context, puts, dels []string, vals map[string][]byte) error {
	sort.Strings(puts) // deterministic batches
	sort.Strings(dels)
	putOps := make([]txnOp, 0, len(puts))
	for _, k := range puts {
		putOps = append(putOps, putOp(k, vals[k], p.lease))
	}
	delOps := make([]txnOp, 0, len(dels))
	for _, k := range dels {
		delOps = append(delOps, deleteOp(k))
	}
	if fitsOneTxn(putOps, delOps) {
		return p.commit(ctx, append(putOps, delOps...))
	}
	if err := p.commit(ctx, putOps); err != nil {
		return err
	}
	return p.commit(ctx, delOps)
}

// checkEntry returns why an agent would reject the entry, with the agents'
// own decoders, or nil. An entry of the local view is checked as the state
// entry it stands for, as the agents read it.
func checkEntry(c wire.Cluster, key string, val []byte) error {
	var err error
	for _, k := range wire.LocalViewKinds {
		if strings.HasPrefix(key, wire.LocalViewListPrefix(k)) {
			key = wire.LocalViewStateKey(k, key)
			break
		}
	}
	switch {
	case strings.HasPrefix(key, wire.IPCachePrefix+"/"):
		_, err = wire.DecodeIPIdentityPair(c, key, val)
	case strings.HasPrefix(key, wire.IdentitiesPrefix+"/"):
		_, err = wire.DecodeIdentity(c, key, val)
	case strings.HasPrefix(key, wire.NodesPrefix+"/"):
		_, err = wire.DecodeNode(c, key, val)
	case strings.HasPrefix(key, wire.ServicesPrefix+"/"):
		_, err = wire.DecodeService(c, key, val)
	case strings.HasPrefix(key, wire.ServiceExportsPrefix+"/"):
		_, err = wire.DecodeServiceExport(c, key, val)
	default:
		err = fmt.Errorf("key %q is outside the state prefixes: %w", key, wire.ErrMalformedKey)
	}
	return err
}

// refuse records that the entry is not published, counts and logs it.
func (p *publisher) refuse(key string, val []byte, err error) {
	reason := wire.Reason(err)
	p.refused[key] = refusal{val: val, err: err}
	p.refusals[reason]++
	p.log.Warn("entry not published: every agent would reject it", "key", key, "bytes", len(val), "reason", reason, "err", err)
}

// reportRefused updates the refusal part of stats.
func (p *publisher) reportRefused() {
	p.stats.Refused = len(p.refused)
	keys := make([]string, 0, len(p.refused))
	for k := range p.refused {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	p.stats.RefusedSamples = nil
	for _, k := range keys[:min(len(keys), maxRefusedSamples)] {
		r := p.refused[k]
		p.stats.RefusedSamples = append(p.stats.RefusedSamples, RefusedEntry{
			Key: k, Bytes: len(r.val), Reason: wire.Reason(r.err), Error: r.err.Error(),
		})
	}
	p.stats.RefusedTotal = maps.Clone(p.refusals) // a copy: Status hands it out
}

// txnOp is one operation of a publishing transaction and what it adds to
// the transaction's message.
type txnOp struct {
	op    clientv3.Op
	bytes int
}

func putOp(key string, val []byte, lease clientv3.LeaseID) txnOp {
	return txnOp{
		op: clientv3.OpPut(key, string(val), clientv3.WithLease(lease)),
		bytes: txnOpBytes(&pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
			Key: []byte(key), Value: val, Lease: int64(lease),
		}}}),
	}
}

func deleteOp(key string) txnOp {
	return txnOp{
		op: clientv3.OpDelete(key),
		bytes: txnOpBytes(&pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{
			Key: []byte(key),
		}}}),
	}
}

// txnSuccessField is the field number of TxnRequest.success.
const txnSuccessField = 2

// txnOpBytes is what op adds to a TxnRequest's encoding, the size gRPC
// checks against MaxCallSendMsgSize: the field's tag, its length, the op.
func txnOpBytes(op *pb.RequestOp) int {
	return protowire.SizeTag(txnSuccessField) + protowire.SizeBytes(proto.Size(op))
}

// batches splits ops into transactions of at most txnBudgetOps operations
// and txnBudgetBytes bytes. An op is never larger than a transaction: the
// publisher refuses entries over what agents accept, which TestLimitsChain
// shows fits in one.
func batches(ops []txnOp) [][]txnOp {
	var out [][]txnOp
	for len(ops) > 0 {
		n, size := 0, 0
		for n < len(ops) && n < txnBudgetOps && (n == 0 || size+ops[n].bytes <= txnBudgetBytes) {
			size += ops[n].bytes
			n++
		}
		out, ops = append(out, ops[:n]), ops[n:]
	}
	return out
}

// commit writes ops in transactions (see batches), up to txnParallel of
// them in flight (etcd batches concurrent proposals into one raft round).
// Order among them is not guaranteed: callers commit what must come first
// in an earlier call.
func (p *publisher) commit(ctx context.Context, ops []txnOp) error {
	bs := batches(ops)
	if len(bs) == 1 { // the common case (one change): no goroutine
		start := time.Now()
		if err := p.txn(ctx, bs[0]); err != nil {
			return err
		}
		p.observeTxn(time.Since(start))
		return nil
	}
	took := make([]time.Duration, len(bs))
	errs := make([]error, len(bs))
	sem := make(chan struct{}, txnParallel)
	var wg sync.WaitGroup
	for i, b := range bs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			errs[i] = p.txn(ctx, b)
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for i, d := range took {
		if errs[i] == nil {
			p.observeTxn(d)
		}
	}
	return errors.Join(errs...)
}

func (p *publisher) txn(ctx context.Context, b []txnOp) error {
	ops := make([]clientv3.Op, len(b))
	size := 0
	for i, o := range b {
		ops[i] = o.op
		size += o.bytes
	}
	if err := p.fencedTxn(ctx, ops); err != nil {
		if errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) {
			err = fmt.Errorf("%w (an external etcd cluster must run with --max-txn-ops of at least %d and --max-request-bytes of at least %d: docs/external-etcd.md)", err, ExternalEtcdMinTxnOps, ExternalEtcdMinRequestBytes)
		}
		return fmt.Errorf("publishing transaction of %d ops (%d bytes): %w", len(b), size, err)
	}
	if p.afterTxn != nil {
		p.afterTxn() // from commit's goroutines: must be safe for concurrent use
	}
	return nil
}

// fencedTxn commits ops if the fence holds; ErrNotLeader if it does not.
func (p *publisher) fencedTxn(ctx context.Context, ops []clientv3.Op) error {
	resp, err := p.cli.Txn(ctx).If(p.fence...).Then(ops...).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: the election key changed at revision %d", ErrNotLeader, resp.Header.Revision)
	}
	return nil
}

// put writes one key on lease, fenced.
func (p *publisher) put(ctx context.Context, key, val string, lease clientv3.LeaseID) error {
	return p.fencedTxn(ctx, []clientv3.Op{clientv3.OpPut(key, val, clientv3.WithLease(lease))})
}

func (p *publisher) observeTxn(d time.Duration) {
	p.txnLatency.Observe(d.Seconds())
	p.stats.LastTxn = d
	p.stats.Txns++
}

// writeCanaries marks every prefix as fully written: the state's, and
// the local view's when there is one (else it deletes the view's, which a
// run in a scoped mode left).
func (p *publisher) writeCanaries(ctx context.Context) error {
	now := time.Now().UTC().Format(time.RFC3339)
	ops := make([]clientv3.Op, 0, len(wire.PublishedKinds)+len(wire.LocalViewKinds))
	for _, k := range wire.PublishedKinds {
		ops = append(ops, clientv3.OpPut(wire.SyncedKey(p.cluster.Name, k), now, clientv3.WithLease(p.lease)))
	}
	for _, key := range wire.LocalViewSyncedKeys() {
		if p.localView {
			ops = append(ops, clientv3.OpPut(key, now, clientv3.WithLease(p.lease)))
		} else {
			ops = append(ops, clientv3.OpDelete(key))
		}
	}
	if err := p.fencedTxn(ctx, ops); err != nil {
		return fmt.Errorf("writing synced canaries: %w", err)
	}
	p.log.Info("state published, synced canaries written", "entries", len(p.published), "refused", len(p.refused))
	return nil
}

// heartbeat writes cilium/.heartbeat with the current time.
func (p *publisher) heartbeat(ctx context.Context) error {
	if err := p.put(ctx, wire.HeartbeatKey, time.Now().UTC().Format(time.RFC3339Nano), p.lease); err != nil {
		return fmt.Errorf("writing heartbeat: %w", err)
	}
	return nil
}

// fitsOneTxn reports whether puts and deletes fit in one transaction:
// applied atomically, a delete then never shows before the puts.
func fitsOneTxn(puts, dels []txnOp) bool {
	if len(puts)+len(dels) > txnBudgetOps {
		return false
	}
	size := 0
	for _, ops := range [][]txnOp{puts, dels} {
		for _, op := range ops {
			size += op.bytes
		}
	}
	return size <= txnBudgetBytes
}
