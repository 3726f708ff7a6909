package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Direction is the direction of traffic relative to a local endpoint, with
// the values of package policy: Ingress is traffic to the endpoint, Egress
// traffic from it.
type Direction uint8

// The two directions.
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// AnyProtocol in a PolicyKey matches every protocol (ICMP included).
const AnyProtocol Protocol = 0

// AnyPeer in PolicyKey.Peer matches every peer identity, known or not.
const AnyPeer uint32 = 0

// IdentityWorld is the identity the policy programs give a peer address
// the ipcache does not know (Cilium's reserved "world").
const IdentityWorld uint32 = 2

// PolicyKey is one allowed flow of a local endpoint: traffic in Direction
// between the endpoint's identity and Peer, of Protocol, to a destination
// port in [Port, EndPort]. It mirrors policy.Key: Port 0 is every port;
// EndPort 0 (or equal to Port) is the single port Port. AnyProtocol with a
// port stands for TCP, UDP and SCTP on that port. The destination port is
// the endpoint's own port for Ingress and the peer's for Egress.
type PolicyKey struct {
	Endpoint  uint32 // local identity
	Peer      uint32 // peer identity; AnyPeer: every peer
	Direction Direction
	Protocol  Protocol // AnyProtocol: every protocol
	Port      uint16   // first port; 0: every port
	EndPort   uint16   // last port, inclusive; 0: Port alone
}

func (k PolicyKey) String() string {
	ports := "any"
	switch {
	case k.Port == 0:
	case k.EndPort == 0 || k.EndPort == k.Port:
		ports = fmt.Sprint(k.Port)
	default:
		ports = fmt.Sprintf("%d-%d", k.Port, k.EndPort)
	}
	proto := "any"
	if k.Protocol != AnyProtocol {
		proto = k.Protocol.String()
	}
	return fmt.Sprintf("%d %s %d %s/%s", k.Endpoint, k.Direction, k.Peer, ports, proto)
}

// PolicyChange adds (Add) or removes one PolicyKey; policy.Change maps to
// it one to one.
type PolicyChange struct {
	Key PolicyKey
	Add bool
}

// PolicyWriter is implemented by both datapaths (Maps writes the kernel's
// policy map, Memory keeps the keys). Every method is idempotent.
type PolicyWriter interface {
	// UpsertPolicy allows k.
	UpsertPolicy(k PolicyKey) error
	// DeletePolicy removes k (absent: no-op).
	DeletePolicy(k PolicyKey) error
	// ApplyPolicy applies changes in order; the batch is validated first
	// (nothing is written if any key is invalid).
	ApplyPolicy(changes []PolicyChange) error
	// SyncPolicy makes keys the whole policy: everything else goes,
	// including entries a previous agent left in the pinned map.
	SyncPolicy(keys []PolicyKey) error
	// SyncPolicyKeeping is SyncPolicy, except that what the map holds for
	// a peer identity keepPeer accepts stays (nil: nothing stays): the
	// allow entries of peers not known yet (a remote cluster down while
	// the agent restarted). A later SyncPolicy removes them.
	SyncPolicyKeeping(keys []PolicyKey, keepPeer func(peer uint32) bool) error
	// Policies lists the keys written (through this value), sorted.
	Policies() ([]PolicyKey, error)
}

var (
	_ PolicyWriter = (*Maps)(nil)
	_ PolicyWriter = (*Memory)(nil)
)

// normPolicyKey validates k and returns its canonical form (a single port
// has EndPort == Port).
func normPolicyKey(k PolicyKey) (PolicyKey, error) {
	bad := func(why string) (PolicyKey, error) {
		return PolicyKey{}, fmt.Errorf("datapath: policy key %s: %s: %w", k, why, ErrInvalidPolicy)
	}
	if k.Endpoint == 0 {
		return bad("endpoint identity 0")
	}
	if k.Direction != Ingress && k.Direction != Egress {
		return bad("direction must be ingress (0) or egress (1)")
	}
	if k.Port == 0 {
		if k.EndPort != 0 {
			return bad("an end port without a first port")
		}
		return k, nil
	}
	switch k.Protocol {
	case AnyProtocol, TCP, UDP, SCTP:
	default:
		return bad("ports need TCP, UDP, SCTP or any protocol")
	}
	if k.EndPort == 0 {
		k.EndPort = k.Port
	}
	if k.EndPort < k.Port {
		return bad("end port before the first port")
	}
	return k, nil
}

// portedProtocols are what AnyProtocol with a port stands for.
var portedProtocols = [...]Protocol{TCP, UDP, SCTP}

// entries appends the trie entries of a canonical key.
func (k PolicyKey) entries(out []policyKey) []policyKey {
	base := policyKey{Endpoint: k.Endpoint, Peer: k.Peer, Direction: uint8(k.Direction)}
	if k.Protocol == AnyProtocol && k.Port == 0 {
		base.PrefixLen = policyPrefixFixed
		return append(out, base)
	}
	protos := []Protocol{k.Protocol}
	if k.Protocol == AnyProtocol {
		protos = portedProtocols[:]
	}
	for _, p := range protos {
		e := base
		e.Proto = uint8(p)
		if k.Port == 0 {
			e.PrefixLen = policyPrefixProto
			out = append(out, e)
			continue
		}
		// Split [Port, EndPort] into aligned power-of-two blocks.
		lo, hi := uint32(k.Port), uint32(k.EndPort)
		for lo <= hi {
			size := uint32(1) << bits.TrailingZeros32(lo|1<<16)
			for lo+size-1 > hi {
				size >>= 1
			}
			e.Port = bpfmap.Htons(uint16(lo))
			e.PrefixLen = policyPrefixFull - uint32(bits.TrailingZeros32(size))
			out = append(out, e)
			lo += size
		}
	}
	return out
}

// policyMirror is what the Maps wrote into cm_policy: the keys, the trie
// entries they need (with how many keys need each), and entries found in
// the kernel that no key claims yet (left by a previous run, or written
// by a batch that failed half-way); SyncPolicy removes those.
type policyMirror struct {
	keys    map[PolicyKey]struct{}
	refs    map[policyKey]int32
	orphans map[policyKey]struct{}
}

func newPolicyMirror() *policyMirror {
	return &policyMirror{keys: map[PolicyKey]struct{}{}, refs: map[policyKey]int32{}, orphans: map[policyKey]struct{}{}}
}

func (pm *policyMirror) inKernel(e policyKey) bool {
	if pm.refs[e] > 0 {
		return true
	}
	_, ok := pm.orphans[e]
	return ok
}

// UpsertPolicy allows k in the kernel's policy map (see PolicyKey).
func (m *Maps) UpsertPolicy(k PolicyKey) error {
	return m.ApplyPolicy([]PolicyChange{{Key: k, Add: true}})
}

// DeletePolicy removes k; trie entries another key still needs stay.
func (m *Maps) DeletePolicy(k PolicyKey) error {
	return m.ApplyPolicy([]PolicyChange{{Key: k}})
}

// ApplyPolicy applies changes in order, as one batch: every key is
// validated first (ErrInvalidPolicy: nothing written), then the trie
// entries that appear are written (one BPF_MAP_UPDATE_BATCH) before those
// that disappear are deleted, so an entry that a removed key shares with
// an added one is never missing. A change that changes nothing writes
// nothing. On error the Maps remember nothing of the batch; entries it
// wrote are removed by the next SyncPolicy (or claimed by a retry).
func (m *Maps) ApplyPolicy(changes []PolicyChange) error {
	norm := make([]PolicyChange, len(changes))
	for i, c := range changes {
		k, err := normPolicyKey(c.Key)
		if err != nil {
			return err
		}
		norm[i] = PolicyChange{Key: k, Add: c.Add}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("apply policy")
	if err != nil {
		return err
	}
	pm := ps.mirror

	// The batch's net effect, without touching the mirror yet.
	keyNow := map[PolicyKey]bool{}
	refDelta := map[policyKey]int32{}
	var buf []policyKey
	for _, c := range norm {
		present, seen := keyNow[c.Key]
		if !seen {
			_, present = pm.keys[c.Key]
		}
		if present == c.Add {
			continue
		}
		keyNow[c.Key] = c.Add
		d := int32(1)
		if !c.Add {
			d = -1
		}
		buf = c.Key.entries(buf[:0])
		for _, e := range buf {
			refDelta[e] += d
		}
	}
	var writes, deletes []policyKey
	for e, d := range refDelta {
		if d == 0 {
			continue
		}
		had, want := pm.inKernel(e), pm.refs[e]+d > 0
		switch {
		case want && !had:
			writes = append(writes, e)
		case !want && had:
			deletes = append(deletes, e)
		}
	}

	if n, err := ps.writeEntries(writes); err != nil {
		for _, e := range writes[:n] {
			pm.orphans[e] = struct{}{}
		}
		return err
	}
	if err := ps.syncAnyPeerFlag(); err != nil {
		return fmt.Errorf("datapath: apply policy: %w", err)
	}
	for k, add := range keyNow {
		if add {
			pm.keys[k] = struct{}{}
		} else {
			delete(pm.keys, k)
		}
	}
	for e, d := range refDelta {
		if r := pm.refs[e] + d; r > 0 {
			pm.refs[e] = r
			delete(pm.orphans, e)
		} else {
			delete(pm.refs, e)
		}
	}
	return ps.finishDeletes(deletes)
}

// finishDeletes deletes entries, then makes the verdicts cached in
// conntrack stale (a removed entry may have allowed them) and clears
// CFG_HAS_ANY_PEER when the last entry for peer 0 went.
func (ps *policyState) finishDeletes(deletes []policyKey) error {
	if len(deletes) == 0 {
		return nil
	}
	err := ps.deleteEntries(deletes)
	if ferr := ps.syncAnyPeerFlag(); ferr != nil {
		err = errors.Join(err, fmt.Errorf("datapath: delete policy: %w", ferr))
	}
	if rerr := ps.bumpRev(); rerr != nil {
		err = errors.Join(err, fmt.Errorf("datapath: delete policy: %w", rerr))
	}
	return err
}

// SyncPolicy makes keys the whole content of the policy map: it writes what
// is missing, then deletes every other entry, including those a previous
// agent left pinned that no key of this run claimed. The agent calls it
// once its policy is first computed (entries of the previous run keep
// enforcing until then), and may call it again to repair drift.
func (m *Maps) SyncPolicy(keys []PolicyKey) error {
	return m.SyncPolicyKeeping(keys, nil)
}

// SyncPolicyKeeping is SyncPolicy, except that the kernel entries whose
// peer identity keepPeer accepts are not deleted: the keys written through
// these Maps for such a peer stay keys (Policies lists them), and entries
// no key claims (a previous run's) stay as orphans, enforced until a later
// sync drops them or a key claims them. keepPeer is called with the Maps
// locked: it must not call into them. Nil keeps nothing.
func (m *Maps) SyncPolicyKeeping(keys []PolicyKey, keepPeer func(peer uint32) bool) error {
	want := newPolicyMirror()
	var buf []policyKey
	add := func(k PolicyKey) {
		want.keys[k] = struct{}{}
		buf = k.entries(buf[:0])
		for _, e := range buf {
			want.refs[e]++
		}
	}
	for _, k := range keys {
		k, err := normPolicyKey(k)
		if err != nil {
			return err
		}
		if _, dup := want.keys[k]; !dup {
			add(k)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("sync policy")
	if err != nil {
		return err
	}
	if keepPeer != nil {
		for k := range ps.mirror.keys {
			if _, ok := want.keys[k]; !ok && keepPeer(k.Peer) {
				add(k)
			}
		}
	}
	kernel := map[policyKey]struct{}{}
	err = bpfmap.Dump(ps.policy, func(k *policyKey, _ *policyValue) { kernel[*k] = struct{}{} })
	if err != nil {
		return fmt.Errorf("datapath: sync policy: dump %s: %w", PolicyMapName, err)
	}
	var writes, deletes []policyKey
	for e := range want.refs {
		if _, ok := kernel[e]; !ok {
			writes = append(writes, e)
		}
	}
	for e := range kernel {
		switch {
		case want.refs[e] > 0:
		case keepPeer != nil && keepPeer(e.Peer):
			want.orphans[e] = struct{}{}
		default:
			deletes = append(deletes, e)
		}
	}
	if n, err := ps.writeEntries(writes); err != nil {
		for _, e := range writes[:n] {
			if ps.mirror.refs[e] == 0 {
				ps.mirror.orphans[e] = struct{}{}
			}
		}
		return err
	}
	if err := ps.syncAnyPeerFlag(); err != nil {
		return fmt.Errorf("datapath: sync policy: %w", err)
	}
	ps.mirror = want
	return ps.finishDeletes(deletes)
}

// Policies lists the keys written through these Maps (since OpenMaps),
// sorted by endpoint, direction, peer, protocol and port.
func (m *Maps) Policies() ([]PolicyKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("list policy")
	if err != nil {
		return nil, err
	}
	out := make([]PolicyKey, 0, len(ps.mirror.keys))
	for k := range ps.mirror.keys {
		out = append(out, k)
	}
	sortPolicyKeys(out)
	return out, nil
}

func sortPolicyKeys(ks []PolicyKey) {
	slices.SortFunc(ks, func(a, b PolicyKey) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Direction, b.Direction),
			cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
	})
}

// writeEntries writes es into cm_policy in one batch (single updates on a
// kernel without batches) and returns how many were written.
func (ps *policyState) writeEntries(es []policyKey) (int, error) {
	if len(es) == 0 {
		return 0, nil
	}
	vals := make([]policyValue, len(es))
	n := 0
	defer func() {
		for _, e := range es[:n] {
			if e.Peer == AnyPeer {
				ps.anyPeers++
			}
		}
	}()
	if !ps.noBatch {
		var err error
		n, err = ps.policy.BatchUpdate(es, vals, nil)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return n, ps.writeErr(len(es), n, err)
		}
		ps.noBatch = true
	}
	for ; n < len(es); n++ {
		if err := ps.policy.Update(&es[n], &vals[n], ebpf.UpdateAny); err != nil {
			return n, ps.writeErr(len(es), n, err)
		}
	}
	return n, nil
}

func (ps *policyState) writeErr(total, written int, err error) error {
	if errno, full := bpfmap.IsFull(err); full {
		return fullErr(fmt.Sprintf("write %d policy entries (%d written)", total, written), PolicyMapName, ps.policy.MaxEntries(), errno)
	}
	return fmt.Errorf("datapath: write %d policy entries (%d written): %w", total, written, err)
}

// deleteEntries deletes es from cm_policy (absent is fine); entries it could
// not delete become orphans.
func (ps *policyState) deleteEntries(es []policyKey) error {
	var errs []error
	for i := range es {
		if err := ps.policy.Delete(&es[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			ps.mirror.orphans[es[i]] = struct{}{}
			errs = append(errs, err)
			continue
		}
		if es[i].Peer == AnyPeer {
			ps.anyPeers--
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("datapath: delete %d of %d policy entries: %w", len(errs), len(es), errs[0])
	}
	return nil
}
