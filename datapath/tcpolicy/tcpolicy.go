// Package tcpolicy is network policy in the kernel: tc programs
// (bpf/policy.c) on the host side of each local endpoint's veth that allow
// or drop every packet by the endpoint's and the peer's security identity,
// direction, protocol and port (docs/datapath-policy.md).
//
// Programs owns the programs' maps, pinned beside the mesh maps of package
// datapath (whose ipcache the programs read, through Maps.Handles): the
// policy trie and its writer (Writer: UpsertPolicy, ApplyPolicy,
// SyncPolicy, ...), the endpoints, conntrack, the configuration, and the
// flow events' ring buffer and counters, which package datapath/flows
// decodes. It attaches the programs to interfaces (Attach: TCX links
// pinned under LinksDir, or clsact filters before Linux 6.6) and removes
// its pins (RemovePins). Memory is the Writer that keeps the keys and
// enforces nothing, for the in-memory datapath. Programs has its own lock;
// a Programs value is independent of the Maps once open.
//
// A key with a proxy port (Key.ProxyPort) sends the flows it allows to the
// agent's transparent L7 proxy (package l7proxy) instead of their
// destination, and drops them when nothing listens there; the packet marks
// the programs and the proxy share are Mark* (docs/l7-redirect.md).
//
// Its surface (31 names, 68 with their methods) counts Writer's methods
// three times: the interface, Programs and Memory.
package tcpolicy

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Errors of this package besides datapath's ErrFull, ErrIncompatiblePin,
// ErrInvalidConfig and ErrClosed.
var (
	// ErrInvalidPolicy: a policy key has endpoint identity 0, an unknown
	// direction, an end port without or before its first port, or ports
	// with a protocol other than TCP, UDP, SCTP or any; or Attach got
	// identity 0. Nothing is written.
	ErrInvalidPolicy = errors.New("invalid policy")

	// ErrNoInterface: Attach got an interface that does not exist in the
	// calling thread's network namespace.
	ErrNoInterface = errors.New("no such interface")

	// ErrUnsupported: the kernel lacks what the policy programs need (tc
	// BPF with direct action, LPM tries, ring buffers: Linux 5.8 or
	// later). The error also wraps ebpf.ErrNotSupported when the library
	// detected it.
	ErrUnsupported = errors.New("policy datapath not supported by this kernel")
)

// Programs is the policy datapath in the kernel: the pinned policy maps,
// what it wrote into the policy trie, and the programs (loaded on the
// first Attach). It is a Writer. All methods are safe for concurrent use.
type Programs struct {
	pinDir string
	cfg    Config

	mu     sync.Mutex
	closed bool // guarded by mu

	// The maps, used under mu and closed by Close. ipcache is a handle of
	// the mesh maps' ipcache (datapath.Maps.Handles), which the programs
	// read.
	ipcache   *ebpf.Map
	policy    *ebpf.Map
	endpoints *ebpf.Map
	config    *ebpf.Map
	ct        *ebpf.Map
	metrics   *ebpf.Map
	flows     *ebpf.Map

	mirror   *mirror      // guarded by mu: what this value wrote into cm_policy
	noBatch  bool         // guarded by mu: cm_policy refused BatchUpdate
	conf     policyConfig // guarded by mu: what cm_policy_config holds
	anyPeers int          // guarded by mu: entries of cm_policy for peer 0 (CFG_HAS_ANY_PEER)
	progs    *progs       // guarded by mu: nil until loaded

	// clsactOnly makes Attach use clsact filters even where TCX works: a
	// test seam for the fallback (setClsactOnly). Guarded by mu.
	clsactOnly bool
}

var _ Writer = (*Programs)(nil)

// Open opens the policy maps pinned beside mesh's maps (in its
// Config().PinDir), creating (and pinning) those that do not exist yet,
// sized by cfg (zero fields: the defaults). The entries a previous run left
// in the policy trie keep enforcing until SyncPolicy replaces them; the
// flow configuration and the policy revision are kept. Programs holds its
// own handle of mesh's ipcache: closing the Maps does not affect it.
//
// Errors: datapath.ErrInvalidConfig (cfg), datapath.ErrIncompatiblePin (a
// pinned policy map of another definition; also ebpf.ErrMapIncompatible),
// datapath.ErrClosed (mesh is closed).
func Open(mesh *datapath.Maps, cfg Config) (*Programs, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	const op = "open the policy maps"
	h, err := mesh.Handles()
	if errors.Is(err, datapath.ErrClosed) {
		return nil, bpfmap.Closed(op)
	}
	if err != nil {
		return nil, fmt.Errorf("datapath: %s: %w", op, err)
	}
	h.Services.Close()
	h.Backends.Close()
	p := &Programs{pinDir: mesh.Config().PinDir, cfg: cfg, ipcache: h.IPCache, mirror: newMirror()}
	opened, err := bpfmap.OpenPinned(mapSpecs(cfg), p.pinDir, op, sizes)
	if err != nil {
		p.ipcache.Close()
		return nil, err
	}
	p.policy, p.endpoints, p.config, p.ct, p.metrics, p.flows = opened[0], opened[1], opened[2], opened[3], opened[4], opened[5]
	// Entries a previous run left: enforced until SyncPolicy replaces them.
	stale := map[policyKey]uint16{}
	err = bpfmap.Dump(p.policy, func(k *policyKey, v *policyValue) {
		p.mirror.orphans[*k] = struct{}{}
		if k.Peer == AnyPeer {
			p.anyPeers++
		}
		if want := k.value(); v.MatchType != want.MatchType || v.Pad != want.Pad {
			stale[*k] = v.ProxyPort
		}
	})
	if err == nil {
		err = p.rewriteValues(stale)
	}
	if err == nil {
		var zero uint32
		err = p.config.Lookup(&zero, &p.conf)
	}
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("datapath: %s: read %s: %w", op, PolicyMapName, err)
	}
	return p, nil
}

// rewriteValues writes the value of entries an older version wrote
// without their match type, keeping their proxy port (each update replaces
// a value in place).
func (p *Programs) rewriteValues(stale map[policyKey]uint16) error {
	for k, proxy := range stale {
		v := k.value()
		v.ProxyPort = proxy
		if err := p.policy.Update(&k, &v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// Config returns the sizes in use, defaults applied.
func (p *Programs) Config() Config { return p.cfg }

// Close releases the maps' and programs' file descriptors; the pins, and
// so the maps, their contents and the attached programs, stay. Further
// calls return datapath.ErrClosed. Idempotent.
func (p *Programs) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	if p.progs != nil {
		errs = append(errs, p.progs.Close())
	}
	for _, em := range []*ebpf.Map{p.ipcache, p.policy, p.endpoints, p.config, p.ct, p.metrics, p.flows} {
		errs = append(errs, em.Close())
	}
	return errors.Join(errs...)
}

// lock locks p for op; it fails (unlocked) once p is closed.
func (p *Programs) lock(op string) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return bpfmap.Closed(op)
	}
	return nil
}

// writeConfig writes p.conf into cm_policy_config. p.mu must be held.
func (p *Programs) writeConfig() error {
	var zero uint32
	if err := p.config.Update(&zero, &p.conf, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write %s: %w", ConfigMapName, err)
	}
	return nil
}

// bumpRev makes every cached verdict stale. p.mu must be held.
func (p *Programs) bumpRev() error {
	p.conf.PolicyRev++
	return p.writeConfig()
}

// syncAnyPeerFlag sets CFG_HAS_ANY_PEER as p.anyPeers says. p.mu must be
// held.
func (p *Programs) syncAnyPeerFlag() error {
	has := p.anyPeers > 0
	if has == (p.conf.Flags&cfgHasAnyPeer != 0) {
		return nil
	}
	p.conf.Flags ^= cfgHasAnyPeer
	return p.writeConfig()
}

// RecheckFlows makes the next packet of every established flow go through
// the ipcache and policy lookups again, instead of the verdict cached in its
// conntrack entry. Removing policy entries and changing an endpoint's
// identity or enforcement do it by themselves; the agent calls it when the
// identity of an ipcache entry changes (flows keep the peer identity they
// were checked with until then).
func (p *Programs) RecheckFlows() error {
	if err := p.lock("recheck flows"); err != nil {
		return err
	}
	defer p.mu.Unlock()
	if err := p.bumpRev(); err != nil {
		return fmt.Errorf("datapath: recheck flows: %w", err)
	}
	return nil
}

// SetStrict turns the cached verdicts off (on: every packet is looked up
// in the ipcache and the policy map, so an identity change applies at
// once, at about twice the cost per packet) or back on.
func (p *Programs) SetStrict(on bool) error {
	if err := p.lock("set strict policy"); err != nil {
		return err
	}
	defer p.mu.Unlock()
	p.conf.Flags &^= cfgStrict
	if on {
		p.conf.Flags |= cfgStrict
	}
	if err := p.writeConfig(); err != nil {
		return fmt.Errorf("datapath: set strict policy: %w", err)
	}
	return nil
}
