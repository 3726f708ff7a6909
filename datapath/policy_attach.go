package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// policyState is the Maps' policy datapath, opened on first use: the
// pinned policy maps, the mirror of cm_policy, and the programs (loaded on
// the first AttachPolicy).
type policyState struct {
	policy    *ebpf.Map
	endpoints *ebpf.Map
	config    *ebpf.Map
	ct        *ebpf.Map
	metrics   *ebpf.Map
	flows     *ebpf.Map

	mirror  *policyMirror
	noBatch bool // cm_policy refused BatchUpdate

	cfg      policyConfig // what cm_policy_config holds
	anyPeers int          // entries of cm_policy for peer 0 (CFG_HAS_ANY_PEER)

	progs *policyProgs // nil until loaded
}

// policyProgs are the two programs attached to interfaces.
type policyProgs struct {
	FromEp *ebpf.Program `ebpf:"cm_policy_from_ep"`
	ToEp   *ebpf.Program `ebpf:"cm_policy_to_ep"`
}

func (p *policyProgs) Close() error {
	return errors.Join(p.FromEp.Close(), p.ToEp.Close())
}

// policyMapSpecs are the pinned policy maps' definitions.
func pinnedPolicyMapSpecs(cfg Config) []*ebpf.MapSpec {
	return []*ebpf.MapSpec{
		{
			Name: PolicyMapName, Type: ebpf.LPMTrie, Flags: bpfmap.FNoPrealloc,
			KeySize: policyKeySize, ValueSize: policyValueSize, MaxEntries: cfg.MaxPolicy,
			Pinning: ebpf.PinByName,
		},
		{
			Name: PolicyEndpointsMapName, Type: ebpf.Hash,
			KeySize: 4, ValueSize: policyEndpointSize, MaxEntries: cfg.MaxPolicyEndpoints,
			Pinning: ebpf.PinByName,
		},
		{
			Name: PolicyConfigMapName, Type: ebpf.Array,
			KeySize: 4, ValueSize: policyConfigSize, MaxEntries: 1,
			Pinning: ebpf.PinByName,
		},
		{
			Name: PolicyCTMapName, Type: ebpf.LRUHash,
			KeySize: ctKeySize, ValueSize: ctValueSize, MaxEntries: cfg.MaxPolicyCT,
			Pinning: ebpf.PinByName,
		},
		{
			Name: PolicyMetricsMapName, Type: ebpf.PerCPUArray,
			KeySize: 4, ValueSize: 8, MaxEntries: policyCounters,
			Pinning: ebpf.PinByName,
		},
		{
			Name: FlowsMapName, Type: ebpf.RingBuf,
			MaxEntries: cfg.FlowRingBytes,
			Pinning:    ebpf.PinByName,
		},
	}
}

// policyLocked returns the policy state, opening (or creating) the pinned
// policy maps on first use. m.mu must be held.
func (m *Maps) policyLocked(op string) (*policyState, error) {
	if m.closed {
		return nil, bpfmap.Closed(op)
	}
	if m.pol != nil {
		return m.pol, nil
	}
	opened, err := bpfmap.OpenPinned(pinnedPolicyMapSpecs(m.cfg), m.cfg.PinDir, op, sizes)
	if err != nil {
		return nil, err
	}
	ps := &policyState{
		policy: opened[0], endpoints: opened[1], config: opened[2],
		ct: opened[3], metrics: opened[4], flows: opened[5],
		mirror: newPolicyMirror(),
	}
	// Entries a previous run left: enforced until SyncPolicy replaces them.
	err = bpfmap.Dump(ps.policy, func(k *policyKey, _ *policyValue) {
		ps.mirror.orphans[*k] = struct{}{}
		if k.Peer == AnyPeer {
			ps.anyPeers++
		}
	})
	if err == nil {
		var zero uint32
		err = ps.config.Lookup(&zero, &ps.cfg)
	}
	if err != nil {
		ps.close()
		return nil, fmt.Errorf("datapath: %s: read %s: %w", op, PolicyMapName, err)
	}
	m.pol = ps
	return ps, nil
}

func (ps *policyState) close() error {
	var errs []error
	if ps.progs != nil {
		errs = append(errs, ps.progs.Close())
	}
	for _, em := range []*ebpf.Map{ps.policy, ps.endpoints, ps.config, ps.ct, ps.metrics, ps.flows} {
		errs = append(errs, em.Close())
	}
	return errors.Join(errs...)
}

// writeConfig writes ps.cfg into cm_policy_config.
func (ps *policyState) writeConfig() error {
	var zero uint32
	if err := ps.config.Update(&zero, &ps.cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write %s: %w", PolicyConfigMapName, err)
	}
	return nil
}

// bumpRev makes every cached verdict stale.
func (ps *policyState) bumpRev() error {
	ps.cfg.PolicyRev++
	return ps.writeConfig()
}

// syncAnyPeerFlag sets CFG_HAS_ANY_PEER as ps.anyPeers says.
func (ps *policyState) syncAnyPeerFlag() error {
	has := ps.anyPeers > 0
	if has == (ps.cfg.Flags&cfgHasAnyPeer != 0) {
		return nil
	}
	ps.cfg.Flags ^= cfgHasAnyPeer
	return ps.writeConfig()
}

// closePolicy releases the policy state (Close). Attached programs stay.
func (m *Maps) closePolicy() error {
	if m.pol == nil {
		return nil
	}
	err := m.pol.close()
	m.pol = nil
	return err
}

// policySpec returns the programs' collection spec with every map's
// definition taken from the live ones (MapReplacements insists on equal
// definitions).
func (m *Maps) policySpec(ps *policyState) (*ebpf.CollectionSpec, map[string]*ebpf.Map, error) {
	spec, err := loadPolicy()
	if err != nil {
		return nil, nil, fmt.Errorf("datapath: policy programs: %w", err)
	}
	repl := map[string]*ebpf.Map{
		IPCacheMapName:         m.ipcache,
		PolicyMapName:          ps.policy,
		PolicyEndpointsMapName: ps.endpoints,
		PolicyConfigMapName:    ps.config,
		PolicyCTMapName:        ps.ct,
		PolicyMetricsMapName:   ps.metrics,
		FlowsMapName:           ps.flows,
	}
	for name, em := range repl {
		spec.Maps[name].MaxEntries = em.MaxEntries()
	}
	return spec, repl, nil
}

// loadPolicyInto loads the programs of spec named by objs's tags against
// the live maps.
func (m *Maps) loadPolicyInto(ps *policyState, objs any) error {
	spec, repl, err := m.policySpec(ps)
	if err != nil {
		return err
	}
	err = spec.LoadAndAssign(objs, &ebpf.CollectionOptions{MapReplacements: repl})
	if err == nil {
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("datapath: policy programs: load: %w: %w", ErrPolicyUnsupported, err)
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("datapath: policy programs: the kernel's verifier rejected a program: %+v", verr)
	}
	return fmt.Errorf("datapath: policy programs: load: %w", err)
}

// progsLocked loads the programs on first use. m.mu must be held.
func (m *Maps) progsLocked(ps *policyState) (*policyProgs, error) {
	if ps.progs != nil {
		return ps.progs, nil
	}
	var p policyProgs
	if err := m.loadPolicyInto(ps, &p); err != nil {
		return nil, err
	}
	ps.progs = &p
	return ps.progs, nil
}

// forceClsact makes AttachPolicy use clsact filters even where TCX works
// (tests of the fallback).
var forceClsact bool

// PolicyEndpoint is what AttachPolicy recorded for an interface.
type PolicyEndpoint struct {
	Identity       uint32
	EnforceIngress bool
	EnforceEgress  bool
}

// policyHook is one of the two attachments of an interface.
type policyHook struct {
	name   string // pin and filter name suffix
	tcx    ebpf.AttachType
	parent uint32 // clsact parent
}

var policyHooks = [2]policyHook{
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS}, // from the pod: its egress
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS},    // to the pod: its ingress
}

func (p *policyProgs) forHook(i int) *ebpf.Program {
	if i == 0 {
		return p.FromEp
	}
	return p.ToEp
}

// AttachPolicyByName is AttachPolicy for the interface named ifname in the
// calling thread's network namespace.
func AttachPolicyByName(m *Maps, ifname string, identity uint32, enforceIngress, enforceEgress bool) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("datapath: attach policy to %s: %w: %w", ifname, ErrNoInterface, err)
	}
	return AttachPolicy(m, ifi.Index, identity, enforceIngress, enforceEgress)
}

// AttachPolicy enforces the policy of the endpoint whose host-side
// interface (the host end of the pod's veth, in the calling thread's network
// namespace) has index ifindex: it records the endpoint's identity and which
// directions are enforced (a direction not enforced allows everything, and
// still tracks flows so that their replies pass the other direction), then
// attaches the policy programs to the interface's tc ingress (the pod's
// egress) and tc egress (the pod's ingress), first in line: with TCX links
// where the kernel has them (Linux 6.6), pinned under
// Config.PinDir/cm_policy_links so that they outlive the agent; otherwise
// as clsact direct-action filters (which outlive it by themselves).
//
// Calling it again for an attached interface only updates the identity and
// the enforced directions (atomically for the programs), and replaces
// programs a previous agent attached by this version's. Interfaces of one
// pin directory must all live in one network namespace (ifindex is the
// key). On error the interface may be left half attached: call DetachPolicy.
//
// Errors: ErrNoInterface (no such interface), ErrInvalidPolicy (identity
// 0), ErrPolicyUnsupported (the kernel lacks tc BPF or a helper), ErrFull
// (Config.MaxPolicyEndpoints interfaces attached), ErrIncompatiblePin,
// ErrClosed.
func AttachPolicy(m *Maps, ifindex int, identity uint32, enforceIngress, enforceEgress bool) error {
	if identity == 0 {
		return fmt.Errorf("datapath: attach policy to interface %d: endpoint identity 0: %w", ifindex, ErrInvalidPolicy)
	}
	if ifindex <= 0 {
		return fmt.Errorf("datapath: attach policy to interface %d: %w", ifindex, ErrNoInterface)
	}
	if _, err := netlink.LinkByIndex(ifindex); err != nil {
		return fmt.Errorf("datapath: attach policy to interface %d: %w: %w", ifindex, ErrNoInterface, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("attach policy")
	if err != nil {
		return err
	}
	progs, err := m.progsLocked(ps)
	if err != nil {
		return err
	}
	ep := policyEndpoint{Identity: identity}
	if enforceIngress {
		ep.Flags |= epEnforceIngress
	}
	if enforceEgress {
		ep.Flags |= epEnforceEgress
	}
	key := uint32(ifindex)
	var old policyEndpoint
	changed := ps.endpoints.Lookup(&key, &old) == nil && old != ep
	if err := ps.endpoints.Update(&key, &ep, ebpf.UpdateAny); err != nil {
		if errno, full := bpfmap.IsFull(err); full {
			return fullErr(fmt.Sprintf("attach policy to interface %d", ifindex), PolicyEndpointsMapName, ps.endpoints.MaxEntries(), errno)
		}
		return fmt.Errorf("datapath: attach policy to interface %d: record the endpoint: %w", ifindex, err)
	}
	if changed {
		// Verdicts cached for the old identity or enforcement.
		if err := ps.bumpRev(); err != nil {
			return fmt.Errorf("datapath: attach policy to interface %d: %w", ifindex, err)
		}
	}
	for i, h := range policyHooks {
		if err := m.attachHook(ifindex, h, progs.forHook(i)); err != nil {
			return err
		}
	}
	return nil
}

func (m *Maps) linkPin(ifindex int, h policyHook) string {
	return filepath.Join(m.cfg.PinDir, PolicyLinksDir, strconv.Itoa(ifindex)+"-"+h.name)
}

// attachHook attaches prog to one hook of ifindex, or updates the program
// of the pinned link already there.
func (m *Maps) attachHook(ifindex int, h policyHook, prog *ebpf.Program) error {
	pin := m.linkPin(ifindex, h)
	if !forceClsact {
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex && l.Update(prog) == nil {
				l.Close()
				return nil
			}
			// Defunct (the interface went away) or foreign: replace it.
			l.Unpin()
			l.Close()
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: h.tcx, Anchor: link.Head()})
		if err == nil {
			defer l.Close()
			if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
				return fmt.Errorf("datapath: attach policy to interface %d: %w", ifindex, err)
			}
			if err := l.Pin(pin); err != nil {
				return fmt.Errorf("datapath: attach policy to interface %d: pin the %s link: %w", ifindex, h.name, err)
			}
			// A clsact filter of an older attachment would run the
			// programs twice.
			return delClsactFilter(ifindex, h)
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("datapath: attach policy to interface %d (tc %s): %w", ifindex, h.name, err)
		}
	}
	return attachClsact(ifindex, h, prog)
}

const clsactFilterPrefix = "cm_policy_"

func clsactFilter(ifindex int, h policyHook, fd int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    h.parent,
			Handle:    netlink.MakeHandle(0, 1),
			Protocol:  unix.ETH_P_ALL,
			Priority:  1,
		},
		Fd:           fd,
		Name:         clsactFilterPrefix + h.name,
		DirectAction: true,
	}
}

// attachClsact adds the clsact qdisc if missing and replaces the filter.
func attachClsact(ifindex int, h policyHook, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("datapath: attach policy to interface %d: add the clsact qdisc: %w: %w", ifindex, ErrPolicyUnsupported, err)
		}
		return fmt.Errorf("datapath: attach policy to interface %d: add the clsact qdisc: %w", ifindex, err)
	}
	if err := netlink.FilterReplace(clsactFilter(ifindex, h, prog.FD())); err != nil {
		return fmt.Errorf("datapath: attach policy to interface %d: tc %s filter: %w", ifindex, h.name, err)
	}
	return nil
}

// delClsactFilter removes this package's filter from one hook, if any.
func delClsactFilter(ifindex int, h policyHook) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil // gone with its filters
	}
	filters, err := netlink.FilterList(l, h.parent)
	if err != nil {
		return nil // no clsact qdisc
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, clsactFilterPrefix) {
			if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("datapath: detach policy from interface %d: tc %s filter: %w", ifindex, h.name, err)
			}
		}
	}
	return nil
}

// DetachPolicy removes the policy programs from interface ifindex (TCX
// links and clsact filters), forgets the endpoint, and deletes its
// conntrack entries. A missing interface (the pod is gone) or one never
// attached is fine.
func DetachPolicy(m *Maps, ifindex int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("detach policy")
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range policyHooks {
		if err := detachPinnedLink(m.linkPin(ifindex, h)); err != nil {
			errs = append(errs, err)
		}
		if err := delClsactFilter(ifindex, h); err != nil {
			errs = append(errs, err)
		}
	}
	key := uint32(ifindex)
	if err := ps.endpoints.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	if err := ps.flushCT(key); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: detach policy from interface %d: %w", ifindex, err)
	}
	return nil
}

// flushCT deletes the conntrack entries of one interface.
func (ps *policyState) flushCT(ifindex uint32) error {
	var doomed []ctKey
	err := bpfmap.Dump(ps.ct, func(k *ctKey, _ *ctValue) {
		if k.Ifindex == ifindex {
			doomed = append(doomed, *k)
		}
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", PolicyCTMapName, err)
	}
	for i := range doomed {
		if err := ps.ct.Delete(&doomed[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", PolicyCTMapName, err)
		}
	}
	return nil
}

// PolicyAttachments lists the interfaces with a recorded endpoint (by
// ifindex), including those attached by a previous run: after a restart the
// agent detaches those whose pod is gone.
func PolicyAttachments(m *Maps) (map[int]PolicyEndpoint, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("list policy attachments")
	if err != nil {
		return nil, err
	}
	out := map[int]PolicyEndpoint{}
	err = bpfmap.Dump(ps.endpoints, func(k *uint32, v *policyEndpoint) {
		out[int(*k)] = PolicyEndpoint{Identity: v.Identity, EnforceIngress: v.Flags&epEnforceIngress != 0, EnforceEgress: v.Flags&epEnforceEgress != 0}
	})
	if err != nil {
		return nil, fmt.Errorf("datapath: list policy attachments: %w", err)
	}
	return out, nil
}

// removeLinkPins removes every pinned link in dir (detaching it unless
// something else holds it), then dir.
func removeLinkPins(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if err := detachPinnedLink(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RecheckFlows makes the next packet of every established flow go through
// the ipcache and policy lookups again, instead of the verdict cached in its
// conntrack entry. Removing policy entries and changing an endpoint's
// identity or enforcement do it by themselves; the agent calls it when the
// identity of an ipcache entry changes (flows keep the peer identity they
// were checked with until then).
func (m *Maps) RecheckFlows() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("recheck flows")
	if err != nil {
		return err
	}
	if err := ps.bumpRev(); err != nil {
		return fmt.Errorf("datapath: recheck flows: %w", err)
	}
	return nil
}

// SetPolicyStrict turns the cached verdicts off (on: every packet is looked
// up in the ipcache and the policy map, so an identity change applies at
// once, at about twice the cost per packet) or back on.
func (m *Maps) SetPolicyStrict(on bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("set strict policy")
	if err != nil {
		return err
	}
	ps.cfg.Flags &^= cfgStrict
	if on {
		ps.cfg.Flags |= cfgStrict
	}
	if err := ps.writeConfig(); err != nil {
		return fmt.Errorf("datapath: set strict policy: %w", err)
	}
	return nil
}

// detachPinnedLink detaches the link pinned at pin, at once (dropping the
// last reference would detach it too, but from a kernel work queue, a
// moment later), and removes the pin. An absent pin is fine.
func detachPinnedLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err == nil {
		// A link whose interface is gone is detached already.
		if derr := l.Detach(); derr != nil && !errors.Is(derr, unix.ENOLINK) && !errors.Is(derr, unix.ENOENT) {
			err = fmt.Errorf("detach the link pinned at %s: %w", pin, derr)
		}
		l.Close()
	} else if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else {
		err = nil // not a link we can load: remove the pin all the same
	}
	if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}
