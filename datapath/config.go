package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Defaults applied by Config to its zero fields.
const (
	DefaultPinDir          = "/sys/fs/bpf/clustermesh"
	DefaultMaxIPCache      = 512 * 1024
	DefaultMaxServiceSlots = 256 * 1024
	DefaultMaxBackends     = 128 * 1024
	DefaultMaxSockRevNAT   = 128 * 1024
	DefaultMaxPolicy       = 256 * 1024
	DefaultMaxPolicyCT     = 128 * 1024
	DefaultFlowRingBytes   = 4 << 20
)

// Config says where the maps are pinned and how large they are. Zero fields
// take the defaults above. The sizes are part of each map's definition:
// changing one makes the existing pins incompatible (remove the pin directory).
type Config struct {
	// PinDir is the directory inside a bpffs where the maps are pinned by
	// name (IPCacheMapName, ServicesMapName, BackendsMapName).
	PinDir string
	// MaxIPCache is the ipcache's max_entries (prefixes).
	MaxIPCache uint32
	// MaxServiceSlots is the service map's max_entries: one master entry per
	// frontend plus one entry per backend slot.
	MaxServiceSlots uint32
	// MaxBackends is the backend map's max_entries (distinct backends).
	MaxBackends uint32
	// NoIPCacheMirror drops the in-memory copy of the ipcache that lets
	// identical writes skip the syscall: for a caller that never repeats a
	// write (the agent's merger remembers what it wrote), it saves about 90
	// bytes per entry. Identical writes then reach the kernel (harmlessly).
	NoIPCacheMirror bool
	// MaxSockRevNAT is the max_entries of the socket load balancer's
	// reverse-translation LRU for datagrams (SockRevNATMapName): one entry
	// per unconnected UDP socket and backend its sendto reached (connected
	// sockets keep theirs in socket storage). Only AttachSockLB creates
	// that map.
	MaxSockRevNAT uint32
	// MaxPolicy is the policy trie's max_entries (PolicyMapName): a key
	// with one port or none takes one entry per protocol, a port range up
	// to 30 per protocol. Only the policy API creates the policy maps.
	MaxPolicy uint32
	// MaxPolicyCT is the max_entries of the policy programs' conntrack LRU
	// (PolicyCTMapName): one entry per flow and endpoint interface.
	MaxPolicyCT uint32
	// FlowRingBytes is the size of the flow events' ring buffer
	// (FlowsMapName): a power of two, at least one page; an event takes 88
	// bytes.
	FlowRingBytes uint32
}

func (c Config) withDefaults() Config {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	if c.MaxIPCache == 0 {
		c.MaxIPCache = DefaultMaxIPCache
	}
	if c.MaxServiceSlots == 0 {
		c.MaxServiceSlots = DefaultMaxServiceSlots
	}
	if c.MaxBackends == 0 {
		c.MaxBackends = DefaultMaxBackends
	}
	if c.MaxSockRevNAT == 0 {
		c.MaxSockRevNAT = DefaultMaxSockRevNAT
	}
	if c.MaxPolicy == 0 {
		c.MaxPolicy = DefaultMaxPolicy
	}
	if c.MaxPolicyCT == 0 {
		c.MaxPolicyCT = DefaultMaxPolicyCT
	}
	if c.FlowRingBytes == 0 {
		c.FlowRingBytes = DefaultFlowRingBytes
	}
	return c
}

// Validate reports whether c, with its defaults applied, is usable.
func (c Config) Validate() error {
	c = c.withDefaults()
	if !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("datapath: config: pin directory %q must be an absolute path", c.PinDir)
	}
	if c.MaxServiceSlots < 2 {
		return fmt.Errorf("datapath: config: MaxServiceSlots %d leaves no room for a master and a slot", c.MaxServiceSlots)
	}
	if c.FlowRingBytes < uint32(os.Getpagesize()) || c.FlowRingBytes&(c.FlowRingBytes-1) != 0 {
		return fmt.Errorf("datapath: config: FlowRingBytes %d must be a power of two of at least a page (%d)", c.FlowRingBytes, os.Getpagesize())
	}
	return nil
}

// bpffsMagic is BPF_FS_MAGIC from linux/magic.h.
const bpffsMagic = 0xcafe4a11

// bpffsRoot is where the bpf filesystem is conventionally mounted.
const bpffsRoot = "/sys/fs/bpf"

func isBPFFS(path string) (bool, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return false, err
	}
	return uint32(st.Type) == bpffsMagic, nil
}

// preparePinDir mounts the bpffs at /sys/fs/bpf when PinDir lies under it and
// it is not mounted yet, checks that PinDir is on a bpffs, and creates it.
func preparePinDir(dir string) error {
	dir = filepath.Clean(dir)
	if dir == bpffsRoot || strings.HasPrefix(dir, bpffsRoot+"/") {
		ok, err := isBPFFS(bpffsRoot)
		if err != nil {
			return fmt.Errorf("datapath: statfs %s: %w", bpffsRoot, err)
		}
		if !ok {
			if err := syscall.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("datapath: mount bpffs at %s (mount -t bpf bpf %s): %w", bpffsRoot, bpffsRoot, err)
			}
		}
	}
	// Check the nearest existing ancestor before creating anything, so that
	// a wrong PinDir leaves no directory behind.
	existing := dir
	for {
		_, err := os.Stat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || existing == "/" {
			return fmt.Errorf("datapath: pin directory %s: %w", dir, err)
		}
		existing = filepath.Dir(existing)
	}
	ok, err := isBPFFS(existing)
	if err != nil {
		return fmt.Errorf("datapath: statfs %s: %w", existing, err)
	}
	if !ok {
		return fmt.Errorf("datapath: pin directory %s: %s is not on a bpf filesystem; choose a directory under %s or mount one (mount -t bpf bpf DIR): %w",
			dir, existing, bpffsRoot, ErrNotBPFFS)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("datapath: create pin directory: %w", err)
	}
	return nil
}

// RemovePins removes the maps pinned in pinDir (empty: DefaultPinDir), the
// pinned tc links of the policy programs (which detaches them from their
// interfaces), and then pinDir itself if it is left empty. It does not need
// to open the maps, so it also clears incompatible pins (agent --cleanup).
// Programs still holding the maps keep them until they close them; policy
// programs attached as clsact filters stay until DetachPolicy. Absent pins
// are fine.
func RemovePins(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	var errs []error
	names := []string{IPCacheMapName, ServicesMapName, BackendsMapName, SockRevNATMapName, SockPeerMapName}
	for _, name := range append(names, policyMapNames...) {
		err := os.Remove(filepath.Join(pinDir, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := removeLinkPins(filepath.Join(pinDir, PolicyLinksDir)); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: remove pins in %s: %w", pinDir, err)
	}
	return nil
}
