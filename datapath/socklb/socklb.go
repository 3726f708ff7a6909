// Package socklb is the socket load balancer: cgroup sock_addr programs
// (bpf/socklb.c) that send a socket connecting or sending to a service
// frontend of the mesh's service map to one of its backends, at connect
// time, without any per-packet translation (docs/datapath-socklb.md).
//
// It reads the mesh maps of package datapath (cm_services, cm_backends:
// Maps.Handles) and owns four maps of its own, pinned beside them: the
// reverse translation of datagrams (RevNATMapName, sized by
// Config.MaxSockRevNAT) and of connected sockets (PeerMapName), and the
// translation events' ring buffer (EventsMapName, Config.EventRingBytes)
// with its counters (MetricsMapName). Attach loads and attaches the
// programs to a cgroup v2; LB.OpenEvents reads the events as flows
// (package datapath/flows, KindSockTranslate); RemovePins removes its
// pins.
package socklb

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Errors of Attach besides datapath's ErrIncompatiblePin and ErrClosed.
var (
	// ErrNotCgroup2: Attach got a directory outside a cgroup v2 hierarchy,
	// or found no cgroup v2 mounted. The socket load balancer attaches
	// only to cgroup v2 (mount -t cgroup2 none DIR).
	ErrNotCgroup2 = errors.New("not a cgroup v2 directory")

	// ErrUnsupported: the kernel lacks a hook or helper the socket load
	// balancer needs (cgroup sock_addr hooks for connect, sendmsg, recvmsg
	// and getpeername, bpf_set_retval: Linux 5.18 or later). The error
	// also wraps ebpf.ErrNotSupported. Nothing stays attached.
	ErrUnsupported = errors.New("socket load balancer not supported by this kernel")
)

// cgroup2Magic is CGROUP2_SUPER_MAGIC from linux/magic.h.
const cgroup2Magic = 0x63677270

// LB is the socket load balancer: the programs of bpf/socklb.c attached
// to one cgroup v2, so that every socket of a process in that cgroup (or
// below it) that connects or sends to a service frontend of cm_services
// reaches one of the frontend's backends instead:
//
//   - connect4/connect6 (TCP, connected UDP) and sendmsg4/sendmsg6 (UDP
//     datagrams with an address) pick a slot at random among the master's
//     count and rewrite the destination to that slot's backend; a backend
//     listed n times is n times as likely. A frontend with zero slots (or
//     whose backends are all gone) refuses: connect and sendto fail with
//     ECONNREFUSED.
//   - recvmsg4/recvmsg6 (UDP) make a reply from the backend appear to come
//     from the frontend, and getpeername4/getpeername6 return the frontend
//     for a translated connected socket. A connect records its translation
//     in the socket's own storage (PeerMapName: freed with the socket,
//     never evicted; a socket re-connected elsewhere forgets it), a datagram
//     sent with sendto in an LRU hash keyed by socket cookie and backend
//     (RevNATMapName, Config.MaxSockRevNAT entries).
//
// The programs read the mesh maps live, so every UpsertService and
// DeleteService takes effect on the next connect; sockets already
// connected keep their backend. An LB is independent of the Maps once
// attached: closing the Maps does not detach it. Attach one LB per cgroup
// (the agent: the cgroup v2 root, so that every pod and host process is
// covered); Close detaches it.
//
// Requirements: cgroup v2 and Linux ≥ 5.18 (sock_addr hooks for recvmsg
// and getpeername, bpf_set_retval).
type LB struct {
	cgroup string

	mu     sync.Mutex
	closed bool          // guarded by mu
	links  []link.Link   // guarded by mu
	objs   socklbObjects // closed under mu by Close
}

// sockHook is one program and the hook it is attached to.
type sockHook struct {
	name   string
	attach ebpf.AttachType
	prog   *ebpf.Program
}

// hooks lists every program with its hook, in attach order: the reverse
// translations first, so that no socket is translated before its replies
// can be translated back.
func (o *socklbObjects) hooks() []sockHook {
	return []sockHook{
		{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, o.CmSock4Recvmsg},
		{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, o.CmSock6Recvmsg},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, o.CmSock4Getpeername},
		{"getpeername6", ebpf.AttachCgroupInet6GetPeername, o.CmSock6Getpeername},
		{"connect4", ebpf.AttachCGroupInet4Connect, o.CmSock4Connect},
		{"connect6", ebpf.AttachCGroupInet6Connect, o.CmSock6Connect},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, o.CmSock4Sendmsg},
		{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, o.CmSock6Sendmsg},
	}
}

// Attach loads the socket load balancer against mesh's service and
// backend maps, creates or opens its two reverse-translation maps (pinned
// as RevNATMapName and PeerMapName in the Maps' PinDir, the first sized by
// cfg) and attaches all eight programs to the cgroup v2 directory
// cgroupPath (empty: the cgroup v2 mount point, found in
// /proc/self/mountinfo, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified). It
// attaches with bpf_link where the kernel has it (several LBs and other
// programs can share a cgroup). On error nothing stays attached.
//
// Errors: ErrNotCgroup2 when cgroupPath is not a cgroup v2 directory (or no
// cgroup v2 is mounted), ErrUnsupported when the kernel lacks a hook or
// helper, datapath.ErrIncompatiblePin when a pinned reverse-translation map
// has another definition, datapath.ErrInvalidConfig for a cfg Validate
// refuses, datapath.ErrClosed when mesh is closed; a verifier rejection is
// returned with the verifier's log.
func Attach(mesh *datapath.Maps, cgroupPath string, cfg Config) (*LB, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cgroupPath == "" {
		var err error
		if cgroupPath, err = Cgroup2Mount(); err != nil {
			return nil, err
		}
	}
	if err := checkCgroup2(cgroupPath); err != nil {
		return nil, err
	}
	spec, err := loadSocklb()
	if err != nil {
		return nil, fmt.Errorf("datapath: socket load balancer: %w", err)
	}

	l := &LB{cgroup: cgroupPath}
	if err := load(mesh, cfg, spec, &l.objs); err != nil {
		return nil, err
	}
	for _, h := range l.objs.hooks() {
		ln, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: h.attach, Program: h.prog})
		if err != nil {
			l.Close()
			if errors.Is(err, ebpf.ErrNotSupported) {
				return nil, fmt.Errorf("datapath: socket load balancer: attach %s to %s: %w: %w", h.name, cgroupPath, ErrUnsupported, err)
			}
			return nil, fmt.Errorf("datapath: socket load balancer: attach %s to %s: %w", h.name, cgroupPath, err)
		}
		l.links = append(l.links, ln)
	}
	return l, nil
}

// load loads spec's programs into objs with mesh's live service and
// backend maps in place of the placeholders of the C source.
func load(mesh *datapath.Maps, cfg Config, spec *ebpf.CollectionSpec, objs *socklbObjects) error {
	h, err := mesh.Handles()
	if errors.Is(err, datapath.ErrClosed) {
		return bpfmap.Closed("attach the socket load balancer")
	}
	if err != nil {
		return fmt.Errorf("datapath: socket load balancer: %w", err)
	}
	defer h.Close() // the programs hold the maps
	pinDir := mesh.Config().PinDir
	// MapReplacements insists on identical definitions, max_entries
	// included: take them from the live maps.
	spec.Maps[datapath.ServicesMapName].MaxEntries = h.Services.MaxEntries()
	spec.Maps[datapath.BackendsMapName].MaxEntries = h.Backends.MaxEntries()
	spec.Maps[RevNATMapName].MaxEntries = cfg.MaxSockRevNAT
	spec.Maps[EventsMapName].MaxEntries = cfg.EventRingBytes
	for _, name := range mapNames {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	err = spec.LoadAndAssign(objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: pinDir},
		MapReplacements: map[string]*ebpf.Map{
			datapath.ServicesMapName: h.Services,
			datapath.BackendsMapName: h.Backends,
		},
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ebpf.ErrMapIncompatible):
		for _, ms := range []*ebpf.MapSpec{spec.Maps[RevNATMapName], spec.Maps[EventsMapName]} {
			if o, unit, pinned, ok := bpfmap.Resized(ms, pinDir, sizes); ok {
				return fmt.Errorf("datapath: socket load balancer: the map pinned at %s/%s has %d %s, %s asks for %d; "+
					"remove it (or the pin directory) and retry, or keep the size: %w: %w",
					pinDir, ms.Name, pinned, unit, o, ms.MaxEntries, datapath.ErrIncompatiblePin, err)
			}
		}
		return fmt.Errorf("datapath: socket load balancer: a map pinned in %s (%s) does not match this version's definition; "+
			"remove it (or the pin directory) and retry: %w: %w", pinDir, strings.Join(mapNames, ", "), datapath.ErrIncompatiblePin, err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("datapath: socket load balancer: load: %w: %w", ErrUnsupported, err)
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("datapath: socket load balancer: the kernel's verifier rejected a program: %+v", verr)
	}
	return fmt.Errorf("datapath: socket load balancer: load: %w", err)
}

// Cgroup returns the cgroup directory the programs are attached to.
func (l *LB) Cgroup() string { return l.cgroup }

// Close detaches every program and releases the file descriptors. Sockets
// translated before keep their backend; the reverse-translation maps stay
// pinned (RemovePins removes them). Close is idempotent.
func (l *LB) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, ln := range l.links {
		if err := ln.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	l.links = nil
	if err := l.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: detach the socket load balancer from %s: %w", l.cgroup, err)
	}
	return nil
}

// RemovePins removes the socket load balancer's maps pinned in pinDir
// (empty: datapath.DefaultPinDir), then pinDir itself if that left it
// empty. Sockets keep their translations until they close. Absent pins are
// fine.
func RemovePins(pinDir string) error {
	if pinDir == "" {
		pinDir = datapath.DefaultPinDir
	}
	return bpfmap.RemovePins(pinDir, mapNames)
}

// checkCgroup2 fails with ErrNotCgroup2 unless dir is a cgroup v2 directory.
func checkCgroup2(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("datapath: socket load balancer: cgroup %s: %w", dir, err)
	}
	if uint32(st.Type) != cgroup2Magic {
		return fmt.Errorf("datapath: socket load balancer: %s is not in a cgroup v2 hierarchy (mount -t cgroup2 none DIR): %w", dir, ErrNotCgroup2)
	}
	return nil
}

// Cgroup2Mount returns the first cgroup v2 mount point of
// /proc/self/mountinfo (/sys/fs/cgroup on a unified host,
// /sys/fs/cgroup/unified on a hybrid one); ErrNotCgroup2 when none.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("datapath: socket load balancer: find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && i >= 4 {
				if fields[i+1] == "cgroup2" {
					return filepath.Clean(unescapeMountinfo(fields[4])), nil
				}
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("datapath: socket load balancer: read /proc/self/mountinfo: %w", err)
	}
	return "", fmt.Errorf("datapath: socket load balancer: no cgroup v2 is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified): %w", ErrNotCgroup2)
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, ok := octal3(s[i+1 : i+4]); ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal3(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	var v int
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	return byte(v), v < 256
}
