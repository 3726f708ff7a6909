package tcpolicy

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

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// progs are the two programs attached to interfaces.
type progs struct {
	FromEp *ebpf.Program `ebpf:"cm_policy_from_ep"`
	ToEp   *ebpf.Program `ebpf:"cm_policy_to_ep"`
}

func (pr *progs) Close() error {
	return errors.Join(pr.FromEp.Close(), pr.ToEp.Close())
}

// spec returns the programs' collection spec with every map's definition
// taken from the live ones (MapReplacements insists on equal definitions).
func (p *Programs) spec() (*ebpf.CollectionSpec, map[string]*ebpf.Map, error) {
	spec, err := loadPolicy()
	if err != nil {
		return nil, nil, fmt.Errorf("datapath: policy programs: %w", err)
	}
	repl := map[string]*ebpf.Map{
		datapath.IPCacheMapName: p.ipcache,
		PolicyMapName:           p.policy,
		EndpointsMapName:        p.endpoints,
		ConfigMapName:           p.config,
		CTMapName:               p.ct,
		MetricsMapName:          p.metrics,
		FlowsMapName:            p.flows,
	}
	for name, em := range repl {
		spec.Maps[name].MaxEntries = em.MaxEntries()
	}
	return spec, repl, nil
}

// loadInto loads the programs named by objs's tags against the live maps.
// p.mu must be held.
func (p *Programs) loadInto(objs any) error {
	spec, repl, err := p.spec()
	if err != nil {
		return err
	}
	err = spec.LoadAndAssign(objs, &ebpf.CollectionOptions{MapReplacements: repl})
	if err == nil {
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("datapath: policy programs: load: %w: %w", ErrUnsupported, err)
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("datapath: policy programs: the kernel's verifier rejected a program: %+v", verr)
	}
	return fmt.Errorf("datapath: policy programs: load: %w", err)
}

// loadProgs loads the programs on first use. p.mu must be held.
func (p *Programs) loadProgs() (*progs, error) {
	if p.progs != nil {
		return p.progs, nil
	}
	var pr progs
	if err := p.loadInto(&pr); err != nil {
		return nil, err
	}
	p.progs = &pr
	return p.progs, nil
}

// Endpoint is what Attach recorded for an interface.
type Endpoint struct {
	Identity       uint32
	EnforceIngress bool
	EnforceEgress  bool
	// Audit lets the packets the policy denies in an enforced direction
	// pass, reported with verdict AUDIT (flows.VerdictAudit) in their
	// policy-verdict and trace events, and counted (flows.Counters.Audited).
	Audit bool
}

func (ep Endpoint) value() policyEndpoint {
	v := policyEndpoint{Identity: ep.Identity}
	if ep.EnforceIngress {
		v.Flags |= epEnforceIngress
	}
	if ep.EnforceEgress {
		v.Flags |= epEnforceEgress
	}
	if ep.Audit {
		v.Flags |= epAudit
	}
	return v
}

func (v policyEndpoint) endpoint() Endpoint {
	return Endpoint{Identity: v.Identity, EnforceIngress: v.Flags&epEnforceIngress != 0,
		EnforceEgress: v.Flags&epEnforceEgress != 0, Audit: v.Flags&epAudit != 0}
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

func (pr *progs) forHook(i int) *ebpf.Program {
	if i == 0 {
		return pr.FromEp
	}
	return pr.ToEp
}

// AttachByName is Attach for the interface named ifname in the calling
// thread's network namespace.
func (p *Programs) AttachByName(ifname string, identity uint32, enforceIngress, enforceEgress bool) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("datapath: attach policy to %s: %w: %w", ifname, ErrNoInterface, err)
	}
	return p.Attach(ifi.Index, identity, enforceIngress, enforceEgress)
}

// Attach is AttachEndpoint of an endpoint not in audit mode.
func (p *Programs) Attach(ifindex int, identity uint32, enforceIngress, enforceEgress bool) error {
	return p.AttachEndpoint(ifindex, Endpoint{Identity: identity, EnforceIngress: enforceIngress, EnforceEgress: enforceEgress})
}

// AttachEndpoint enforces the policy of the endpoint whose host-side
// interface (the host end of the pod's veth, in the calling thread's network
// namespace) has index ifindex: it records the endpoint's identity, which
// directions are enforced (a direction not enforced allows everything, and
// still tracks flows so that their replies pass the other direction) and
// whether it is in audit mode (Endpoint.Audit), then
// attaches the policy programs to the interface's tc ingress (the pod's
// egress) and tc egress (the pod's ingress), first in line: with TCX links
// where the kernel has them (Linux 6.6), pinned under
// the pin directory under LinksDir so that they outlive the agent; otherwise
// as clsact direct-action filters (which outlive it by themselves).
//
// Calling it again for an attached interface only updates the identity,
// the enforced directions and audit mode (atomically for the programs), and replaces
// programs a previous agent attached by this version's. Interfaces of one
// pin directory must all live in one network namespace (ifindex is the
// key). On error the interface may be left half attached: call Detach.
//
// Errors: ErrNoInterface (no such interface), ErrInvalidPolicy (identity
// 0), ErrUnsupported (the kernel lacks tc BPF or a helper),
// datapath.ErrFull (Config.MaxPolicyEndpoints interfaces attached),
// datapath.ErrClosed.
func (p *Programs) AttachEndpoint(ifindex int, want Endpoint) error {
	if want.Identity == 0 {
		return fmt.Errorf("datapath: attach policy to interface %d: endpoint identity 0: %w", ifindex, ErrInvalidPolicy)
	}
	if ifindex <= 0 {
		return fmt.Errorf("datapath: attach policy to interface %d: %w", ifindex, ErrNoInterface)
	}
	if _, err := netlink.LinkByIndex(ifindex); err != nil {
		return fmt.Errorf("datapath: attach policy to interface %d: %w: %w", ifindex, ErrNoInterface, err)
	}
	if err := p.lock("attach policy"); err != nil {
		return err
	}
	defer p.mu.Unlock()
	progs, err := p.loadProgs()
	if err != nil {
		return err
	}
	ep := want.value()
	key := uint32(ifindex)
	var old policyEndpoint
	changed := p.endpoints.Lookup(&key, &old) == nil && old != ep
	if err := p.endpoints.Update(&key, &ep, ebpf.UpdateAny); err != nil {
		if ferr := fullErr(fmt.Sprintf("attach policy to interface %d", ifindex), EndpointsMapName, p.endpoints, err); ferr != nil {
			return ferr
		}
		return fmt.Errorf("datapath: attach policy to interface %d: record the endpoint: %w", ifindex, err)
	}
	if changed {
		// Verdicts cached for the old identity or enforcement.
		if err := p.bumpRev(); err != nil {
			return fmt.Errorf("datapath: attach policy to interface %d: %w", ifindex, err)
		}
	}
	for i, h := range policyHooks {
		if err := p.attachHook(ifindex, h, progs.forHook(i)); err != nil {
			return err
		}
	}
	return nil
}

func (p *Programs) linkPin(ifindex int, h policyHook) string {
	return filepath.Join(p.pinDir, LinksDir, strconv.Itoa(ifindex)+"-"+h.name)
}

// attachHook attaches prog to one hook of ifindex, or updates the program
// of the pinned link already there. p.mu must be held.
func (p *Programs) attachHook(ifindex int, h policyHook, prog *ebpf.Program) error {
	pin := p.linkPin(ifindex, h)
	if !p.clsactOnly {
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
			return fmt.Errorf("datapath: attach policy to interface %d: add the clsact qdisc: %w: %w", ifindex, ErrUnsupported, err)
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

// Detach removes the policy programs from interface ifindex (TCX links and
// clsact filters), forgets the endpoint, and deletes its conntrack entries.
// A missing interface (the pod is gone) or one never attached is fine.
func (p *Programs) Detach(ifindex int) error {
	if err := p.lock("detach policy"); err != nil {
		return err
	}
	defer p.mu.Unlock()
	var errs []error
	for _, h := range policyHooks {
		if err := detachPinnedLink(p.linkPin(ifindex, h)); err != nil {
			errs = append(errs, err)
		}
		if err := delClsactFilter(ifindex, h); err != nil {
			errs = append(errs, err)
		}
	}
	key := uint32(ifindex)
	if err := p.endpoints.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	if err := p.flushCT(key); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: detach policy from interface %d: %w", ifindex, err)
	}
	return nil
}

// flushCT deletes the conntrack entries of one interface. p.mu must be
// held.
func (p *Programs) flushCT(ifindex uint32) error {
	var doomed []ctKey
	err := bpfmap.Dump(p.ct, func(k *ctKey, _ *ctValue) {
		if k.Ifindex == ifindex {
			doomed = append(doomed, *k)
		}
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", CTMapName, err)
	}
	for i := range doomed {
		if err := p.ct.Delete(&doomed[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", CTMapName, err)
		}
	}
	return nil
}

// Attachments lists the interfaces with a recorded endpoint (by ifindex),
// including those attached by a previous run: after a restart the agent
// detaches those whose pod is gone.
func (p *Programs) Attachments() (map[int]Endpoint, error) {
	if err := p.lock("list policy attachments"); err != nil {
		return nil, err
	}
	defer p.mu.Unlock()
	out := map[int]Endpoint{}
	err := bpfmap.Dump(p.endpoints, func(k *uint32, v *policyEndpoint) {
		out[int(*k)] = v.endpoint()
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

// setClsactOnly makes Attach use clsact filters even where TCX works (on),
// or TCX again where it works, and returns the previous setting: the
// tests' seam for the fallback.
func (p *Programs) setClsactOnly(on bool) (was bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	was, p.clsactOnly = p.clsactOnly, on
	return was
}
