package tcpolicy

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// AnyProtocol in a Key matches every protocol (ICMP included).
const AnyProtocol datapath.Protocol = 0

// AnyPeer in Key.Peer matches every peer identity, known or not.
const AnyPeer uint32 = 0

// Key is one allowed flow of a local endpoint: traffic in Direction
// between the endpoint's identity and Peer, of Protocol, to a destination
// port in [Port, EndPort]. It mirrors policy.Key: Port 0 is every port;
// EndPort 0 (or equal to Port) is the single port Port. AnyProtocol with a
// port stands for TCP, UDP and SCTP on that port. The destination port is
// the endpoint's own port for Ingress and the peer's for Egress.
//
// ProxyPort, when not 0, sends the flows the key allows to the agent's
// transparent L7 proxy listening on that port in the node's network
// namespace (package l7proxy, docs/l7-redirect.md) instead of their
// destination; with no listener there they are dropped (never let past the
// proxy). It needs a port and TCP, UDP or AnyProtocol (which then stands
// for TCP and UDP only: SCTP cannot be proxied, so it is not allowed). Two
// keys that differ only in ProxyPort are two keys; where keys share a
// kernel entry, the lowest non-zero proxy port is the entry's.
type Key struct {
	Endpoint  uint32 // local identity
	Peer      uint32 // peer identity; AnyPeer: every peer
	Direction datapath.Direction
	Protocol  datapath.Protocol // AnyProtocol: every protocol
	Port      uint16            // first port; 0: every port
	EndPort   uint16            // last port, inclusive; 0: Port alone
	ProxyPort uint16            // the L7 proxy's port; 0: none
}

func (k Key) String() string {
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
	s := fmt.Sprintf("%d %s %d %s/%s", k.Endpoint, k.Direction, k.Peer, ports, proto)
	if k.ProxyPort != 0 {
		s += fmt.Sprintf(" proxy %d", k.ProxyPort)
	}
	return s
}

// Change adds (Add) or removes one Key; policy.Change maps to it one to
// one.
type Change struct {
	Key Key
	Add bool
}

// Writer writes the policy: Programs writes the kernel's policy map, Memory
// keeps the keys. Every method is idempotent.
type Writer interface {
	// UpsertPolicy allows k.
	UpsertPolicy(k Key) error
	// DeletePolicy removes k (absent: no-op).
	DeletePolicy(k Key) error
	// ApplyPolicy applies changes in order; the batch is validated first
	// (nothing is written if any key is invalid).
	ApplyPolicy(changes []Change) error
	// SyncPolicy makes keys the whole policy: everything else goes,
	// including entries a previous agent left in the pinned map.
	SyncPolicy(keys []Key) error
	// SyncPolicyKeeping is SyncPolicy, except that what the map holds for
	// a peer identity keepPeer accepts stays (nil: nothing stays): the
	// allow entries of peers not known yet (a remote cluster down while
	// the agent restarted). A later SyncPolicy removes them.
	SyncPolicyKeeping(keys []Key, keepPeer func(peer uint32) bool) error
	// Policies lists the keys written (through this value), sorted.
	Policies() ([]Key, error)
}

// normPolicyKey validates k and returns its canonical form (a single port
// has EndPort == Port).
func normKey(k Key) (Key, error) {
	bad := func(why string) (Key, error) {
		return Key{}, fmt.Errorf("datapath: policy key %s: %s: %w", k, why, ErrInvalidPolicy)
	}
	if k.Endpoint == 0 {
		return bad("endpoint identity 0")
	}
	if k.Direction != datapath.Ingress && k.Direction != datapath.Egress {
		return bad("direction must be ingress (0) or egress (1)")
	}
	if k.Port == 0 {
		if k.EndPort != 0 {
			return bad("an end port without a first port")
		}
		if k.ProxyPort != 0 {
			return bad("a proxy port needs a port")
		}
		return k, nil
	}
	if k.ProxyPort != 0 && k.Protocol != AnyProtocol && k.Protocol != datapath.TCP && k.Protocol != datapath.UDP {
		return bad("a proxy port needs TCP, UDP or any protocol")
	}
	switch k.Protocol {
	case AnyProtocol, datapath.TCP, datapath.UDP, datapath.SCTP:
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
var portedProtocols = [...]datapath.Protocol{datapath.TCP, datapath.UDP, datapath.SCTP}

// proxiedProtocols are what AnyProtocol with a port and a proxy port
// stands for.
var proxiedProtocols = [...]datapath.Protocol{datapath.TCP, datapath.UDP}

// entries appends the trie entries of a canonical key.
func (k Key) entries(out []policyKey) []policyKey {
	base := policyKey{Endpoint: k.Endpoint, Peer: k.Peer, Direction: uint8(k.Direction)}
	if k.Protocol == AnyProtocol && k.Port == 0 {
		base.PrefixLen = policyPrefixFixed
		return append(out, base)
	}
	protos := []datapath.Protocol{k.Protocol}
	switch {
	case k.Protocol == AnyProtocol && k.ProxyPort != 0:
		protos = proxiedProtocols[:]
	case k.Protocol == AnyProtocol:
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

// mirror is what a Programs wrote into cm_policy: the keys, the trie
// entries they need (with how many keys need each), and entries found in
// the kernel that no key claims yet (left by a previous run, or written
// by a batch that failed half-way); SyncPolicy removes those.
type mirror struct {
	keys    map[Key]struct{}
	refs    map[policyKey]int32
	orphans map[policyKey]struct{}
	// proxies counts, per entry, the keys with each proxy port that need
	// it (keys without one are not counted).
	proxies map[policyKey]map[uint16]int32
}

func newMirror() *mirror {
	return &mirror{keys: map[Key]struct{}{}, refs: map[policyKey]int32{}, orphans: map[policyKey]struct{}{},
		proxies: map[policyKey]map[uint16]int32{}}
}

// addProxy counts d more keys with proxy port port for entry e.
func addProxy(m map[policyKey]map[uint16]int32, e policyKey, port uint16, d int32) {
	if port == 0 {
		return
	}
	ports := m[e]
	if ports == nil {
		ports = map[uint16]int32{}
		m[e] = ports
	}
	if ports[port] += d; ports[port] <= 0 {
		delete(ports, port)
	}
	if len(ports) == 0 {
		delete(m, e)
	}
}

// valueWith is entry e's value with the lowest proxy port of ports that
// has keys (after adding delta, which may be nil).
func valueWith(e policyKey, ports, delta map[uint16]int32) policyValue {
	v := e.value()
	consider := func(port uint16) {
		if ports[port]+delta[port] > 0 && (v.ProxyPort == 0 || port < v.ProxyPort) {
			v.ProxyPort = port
		}
	}
	for port := range ports {
		consider(port)
	}
	for port := range delta {
		consider(port)
	}
	return v
}

// valueOf is what entry e holds, as far as the keys say.
func (pm *mirror) valueOf(e policyKey) policyValue { return valueWith(e, pm.proxies[e], nil) }

func (pm *mirror) inKernel(e policyKey) bool {
	if pm.refs[e] > 0 {
		return true
	}
	_, ok := pm.orphans[e]
	return ok
}

// UpsertPolicy allows k in the kernel's policy map (see Key).
func (p *Programs) UpsertPolicy(k Key) error {
	return p.ApplyPolicy([]Change{{Key: k, Add: true}})
}

// DeletePolicy removes k; trie entries another key still needs stay.
func (p *Programs) DeletePolicy(k Key) error {
	return p.ApplyPolicy([]Change{{Key: k}})
}

// ApplyPolicy applies changes in order, as one batch: every key is
// validated first (ErrInvalidPolicy: nothing written), then the trie
// entries that appear are written (one BPF_MAP_UPDATE_BATCH) before those
// that disappear are deleted, so an entry that a removed key shares with
// an added one is never missing. A change that changes nothing writes
// nothing. On error the Programs remember nothing of the batch; entries it
// wrote are removed by the next SyncPolicy (or claimed by a retry).
func (p *Programs) ApplyPolicy(changes []Change) error {
	norm := make([]Change, len(changes))
	for i, c := range changes {
		k, err := normKey(c.Key)
		if err != nil {
			return err
		}
		norm[i] = Change{Key: k, Add: c.Add}
	}
	if err := p.lock("apply policy"); err != nil {
		return err
	}
	defer p.mu.Unlock()
	pm := p.mirror

	// The batch's net effect, without touching the mirror yet.
	keyNow := map[Key]bool{}
	refDelta := map[policyKey]int32{}
	proxyDelta := map[policyKey]map[uint16]int32{}
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
			if c.Key.ProxyPort != 0 {
				if proxyDelta[e] == nil {
					proxyDelta[e] = map[uint16]int32{}
				}
				proxyDelta[e][c.Key.ProxyPort] += d
			}
		}
	}
	var writes, deletes []policyKey
	var vals []policyValue
	var rewrite []bool
	changed := false // an entry kept in the kernel changes its proxy port
	for e, d := range refDelta {
		had, want := pm.inKernel(e), pm.refs[e]+d > 0
		newVal := valueWith(e, pm.proxies[e], proxyDelta[e])
		switch {
		case want && pm.refs[e] == 0:
			// New, or an orphan claimed: its value (a previous run's
			// proxy port) is not known, so it is written.
			writes, vals, rewrite = append(writes, e), append(vals, newVal), append(rewrite, had)
		case want && pm.refs[e] > 0 && newVal != pm.valueOf(e):
			writes, vals, rewrite = append(writes, e), append(vals, newVal), append(rewrite, true)
			changed = true
		case !want && had:
			deletes = append(deletes, e)
		}
	}

	if n, err := p.writeEntries(writes, vals, rewrite); err != nil {
		for _, e := range writes[:n] {
			pm.orphans[e] = struct{}{}
		}
		return err
	}
	if err := p.syncAnyPeerFlag(); err != nil {
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
		for port, pd := range proxyDelta[e] {
			addProxy(pm.proxies, e, port, pd)
		}
	}
	return p.finishDeletes(deletes, changed)
}

// finishDeletes deletes entries, then makes the verdicts cached in
// conntrack stale (a removed entry may have allowed them, a changed one
// may have sent them to another proxy or none) and clears
// CFG_HAS_ANY_PEER when the last entry for peer 0 went.
func (p *Programs) finishDeletes(deletes []policyKey, changed bool) error {
	if len(deletes) == 0 && !changed {
		return nil
	}
	err := p.deleteEntries(deletes)
	if ferr := p.syncAnyPeerFlag(); ferr != nil {
		err = errors.Join(err, fmt.Errorf("datapath: delete policy: %w", ferr))
	}
	if rerr := p.bumpRev(); rerr != nil {
		err = errors.Join(err, fmt.Errorf("datapath: delete policy: %w", rerr))
	}
	return err
}

// SyncPolicy makes keys the whole content of the policy map: it writes what
// is missing, then deletes every other entry, including those a previous
// agent left pinned that no key of this run claimed. The agent calls it
// once its policy is first computed (entries of the previous run keep
// enforcing until then), and may call it again to repair drift.
func (p *Programs) SyncPolicy(keys []Key) error {
	return p.SyncPolicyKeeping(keys, nil)
}

// SyncPolicyKeeping is SyncPolicy, except that the kernel entries whose
// peer identity keepPeer accepts are not deleted: the keys written through
// these Programs for such a peer stay keys (Policies lists them), and
// entries no key claims (a previous run's) stay as orphans, enforced until
// a later sync drops them or a key claims them. keepPeer is called with the
// Programs locked: it must not call into them. Nil keeps nothing.
func (p *Programs) SyncPolicyKeeping(keys []Key, keepPeer func(peer uint32) bool) error {
	want := newMirror()
	var buf []policyKey
	add := func(k Key) {
		want.keys[k] = struct{}{}
		buf = k.entries(buf[:0])
		for _, e := range buf {
			want.refs[e]++
			addProxy(want.proxies, e, k.ProxyPort, 1)
		}
	}
	for _, k := range keys {
		k, err := normKey(k)
		if err != nil {
			return err
		}
		if _, dup := want.keys[k]; !dup {
			add(k)
		}
	}
	if err := p.lock("sync policy"); err != nil {
		return err
	}
	defer p.mu.Unlock()
	if keepPeer != nil {
		for k := range p.mirror.keys {
			if _, ok := want.keys[k]; !ok && keepPeer(k.Peer) {
				add(k)
			}
		}
	}
	kernel := map[policyKey]policyValue{}
	if err := bpfmap.Dump(p.policy, func(k *policyKey, v *policyValue) { kernel[*k] = *v }); err != nil {
		return fmt.Errorf("datapath: sync policy: dump %s: %w", PolicyMapName, err)
	}
	var writes, deletes []policyKey
	var vals []policyValue
	var rewrite []bool
	changed := false
	for e := range want.refs {
		wv := want.valueOf(e)
		if v, ok := kernel[e]; !ok || v != wv {
			writes, vals, rewrite = append(writes, e), append(vals, wv), append(rewrite, ok)
			changed = changed || (ok && v.ProxyPort != wv.ProxyPort)
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
	if n, err := p.writeEntries(writes, vals, rewrite); err != nil {
		for _, e := range writes[:n] {
			if p.mirror.refs[e] == 0 {
				p.mirror.orphans[e] = struct{}{}
			}
		}
		return err
	}
	if err := p.syncAnyPeerFlag(); err != nil {
		return fmt.Errorf("datapath: sync policy: %w", err)
	}
	p.mirror = want
	return p.finishDeletes(deletes, changed)
}

// Policies lists the keys written through these Programs (since Open),
// sorted by endpoint, direction, peer, protocol and port.
func (p *Programs) Policies() ([]Key, error) {
	if err := p.lock("list policy"); err != nil {
		return nil, err
	}
	defer p.mu.Unlock()
	out := make([]Key, 0, len(p.mirror.keys))
	for k := range p.mirror.keys {
		out = append(out, k)
	}
	sortKeys(out)
	return out, nil
}

func sortKeys(ks []Key) {
	slices.SortFunc(ks, func(a, b Key) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Direction, b.Direction),
			cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
	})
}

// writeEntries writes es with their values vals into cm_policy in one
// batch (single updates on a kernel without batches) and returns how many
// were written. rewrite[i] says es[i] is in the kernel already (a new
// value).
func (p *Programs) writeEntries(es []policyKey, vals []policyValue, rewrite []bool) (int, error) {
	if len(es) == 0 {
		return 0, nil
	}
	n := 0
	defer func() {
		for i, e := range es[:n] {
			if e.Peer == AnyPeer && !rewrite[i] {
				p.anyPeers++
			}
		}
	}()
	if !p.noBatch {
		var err error
		n, err = p.policy.BatchUpdate(es, vals, nil)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return n, p.writeErr(len(es), n, err)
		}
		p.noBatch = true
	}
	for ; n < len(es); n++ {
		if err := p.policy.Update(&es[n], &vals[n], ebpf.UpdateAny); err != nil {
			return n, p.writeErr(len(es), n, err)
		}
	}
	return n, nil
}

func (p *Programs) writeErr(total, written int, err error) error {
	if ferr := fullErr(fmt.Sprintf("write %d policy entries (%d written)", total, written), PolicyMapName, p.policy, err); ferr != nil {
		return ferr
	}
	return fmt.Errorf("datapath: write %d policy entries (%d written): %w", total, written, err)
}

// deleteEntries deletes es from cm_policy (absent is fine); entries it could
// not delete become orphans.
func (p *Programs) deleteEntries(es []policyKey) error {
	var errs []error
	for i := range es {
		if err := p.policy.Delete(&es[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			p.mirror.orphans[es[i]] = struct{}{}
			errs = append(errs, err)
			continue
		}
		if es[i].Peer == AnyPeer {
			p.anyPeers--
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("datapath: delete %d of %d policy entries: %w", len(errs), len(es), errs[0])
	}
	return nil
}
