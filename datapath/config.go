package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Defaults applied by Config to its zero fields.
const (
	DefaultPinDir             = "/sys/fs/bpf/clustermesh"
	DefaultMaxIPCache         = 512 * 1024
	DefaultMaxServiceSlots    = 256 * 1024
	DefaultMaxBackends        = 128 * 1024
	DefaultMaxSockRevNAT      = 128 * 1024
	DefaultMaxPolicy          = 256 * 1024
	DefaultMaxPolicyCT        = 128 * 1024
	DefaultMaxPolicyEndpoints = 16 * 1024
	DefaultFlowRingBytes      = 4 << 20
)

// Config says where the maps are pinned and how large they are. Zero fields
// take the defaults above. The sizes are part of each map's definition:
// changing one makes the existing pins incompatible (remove the pin directory).
// Each size is an option of the agent (SizeOptions: its flag, default and
// bounds), and every error about a size names that option.
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
	// MaxPolicyEndpoints is the max_entries of PolicyEndpointsMapName: how
	// many interfaces can carry the policy programs at once.
	MaxPolicyEndpoints uint32
	// FlowRingBytes is the size of the flow events' ring buffer
	// (FlowsMapName): a power of two, at least one page; an event takes 88
	// bytes.
	FlowRingBytes uint32
}

// SizeOption is one size of Config as an operator sets it: the agent's
// flag, the Config field it sets, the map it sizes, its default and bounds.
// The "map full" errors (ErrFull), a pinned map of another size
// (ErrIncompatiblePin) and Validate name the flag.
type SizeOption struct {
	Flag    string // the agent's flag, without the dashes: "max-ipcache-entries"
	Field   string // the Config field: "MaxIPCache"
	Map     string // the pinned map it sizes: IPCacheMapName
	Unit    string // what it counts: "entries", "bytes"
	Default uint32
	Min     uint32
	Max     uint32
	Usage   string // the flag's help text
	ptr     func(*Config) *uint32
}

// Of returns the Config field the option sets, for binding a flag to it.
func (o SizeOption) Of(c *Config) *uint32 { return o.ptr(c) }

// String is the option as an operator writes it, with the field:
// "--max-ipcache-entries (Config.MaxIPCache)".
func (o SizeOption) String() string { return "--" + o.Flag + " (Config." + o.Field + ")" }

// maxMapEntries bounds every map size: far above any realistic node, low
// enough that a mistyped value is refused rather than attempted.
const maxMapEntries = 1 << 24

var sizeOptions = []SizeOption{
	{Flag: "max-ipcache-entries", Field: "MaxIPCache", Map: IPCacheMapName, Unit: "entries",
		Default: DefaultMaxIPCache, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the ipcache map (" + IPCacheMapName + "): prefixes of every cluster",
		ptr:   func(c *Config) *uint32 { return &c.MaxIPCache }},
	{Flag: "max-service-entries", Field: "MaxServiceSlots", Map: ServicesMapName, Unit: "entries",
		Default: DefaultMaxServiceSlots, Min: 2, Max: maxMapEntries,
		Usage: "max_entries of the service map (" + ServicesMapName + "): one per frontend plus one per backend of each frontend",
		ptr:   func(c *Config) *uint32 { return &c.MaxServiceSlots }},
	{Flag: "max-backend-entries", Field: "MaxBackends", Map: BackendsMapName, Unit: "entries",
		Default: DefaultMaxBackends, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the backend map (" + BackendsMapName + "): distinct backends of all services",
		ptr:   func(c *Config) *uint32 { return &c.MaxBackends }},
	{Flag: "max-sock-revnat-entries", Field: "MaxSockRevNAT", Map: SockRevNATMapName, Unit: "entries",
		Default: DefaultMaxSockRevNAT, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the socket load balancer's UDP reverse-translation LRU (" + SockRevNATMapName + ")",
		ptr:   func(c *Config) *uint32 { return &c.MaxSockRevNAT }},
	{Flag: "max-policy-entries", Field: "MaxPolicy", Map: PolicyMapName, Unit: "entries",
		Default: DefaultMaxPolicy, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the policy map (" + PolicyMapName + "): one per endpoint, peer, direction and protocol, more for port ranges",
		ptr:   func(c *Config) *uint32 { return &c.MaxPolicy }},
	{Flag: "max-policy-ct-entries", Field: "MaxPolicyCT", Map: PolicyCTMapName, Unit: "entries",
		Default: DefaultMaxPolicyCT, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the policy conntrack LRU (" + PolicyCTMapName + "): one per flow and endpoint interface",
		ptr:   func(c *Config) *uint32 { return &c.MaxPolicyCT }},
	{Flag: "max-policy-endpoint-entries", Field: "MaxPolicyEndpoints", Map: PolicyEndpointsMapName, Unit: "entries",
		Default: DefaultMaxPolicyEndpoints, Min: 1, Max: 1 << 20,
		Usage: "max_entries of the policy endpoint map (" + PolicyEndpointsMapName + "): interfaces carrying the policy programs",
		ptr:   func(c *Config) *uint32 { return &c.MaxPolicyEndpoints }},
	{Flag: "flow-ring-bytes", Field: "FlowRingBytes", Map: FlowsMapName, Unit: "bytes",
		Default: DefaultFlowRingBytes, Min: 4096, Max: 1 << 30,
		Usage: "size of the flow events' ring buffer (" + FlowsMapName + "): a power of two of at least a page; an event takes 88 bytes",
		ptr:   func(c *Config) *uint32 { return &c.FlowRingBytes }},
}

// SizeOptions lists every size of Config, in a stable order, for the agent
// to register its flags from: flags.Uint32Var(o.Of(&cfg), o.Flag, o.Default,
// o.Usage) for each o.
func SizeOptions() []SizeOption { return slices.Clone(sizeOptions) }

// sizeOptionOf returns the option that sizes map name.
func sizeOptionOf(name string) (SizeOption, bool) {
	for _, o := range sizeOptions {
		if o.Map == name {
			return o, true
		}
	}
	return SizeOption{}, false
}

func (c Config) withDefaults() Config {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	for _, o := range sizeOptions {
		if p := o.ptr(&c); *p == 0 {
			*p = o.Default
		}
	}
	return c
}

// Validate reports whether c, with its defaults applied, is usable. Its
// errors wrap ErrInvalidConfig and name the option to change.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if !filepath.IsAbs(c.PinDir) {
		errs = append(errs, fmt.Errorf("datapath: config: pin directory %q must be an absolute path: %w", c.PinDir, ErrInvalidConfig))
	}
	for _, o := range sizeOptions {
		if v := *o.ptr(&c); v < o.Min || v > o.Max {
			errs = append(errs, fmt.Errorf("datapath: config: %s is %d: %w: want %d to %d %s (0: the default, %d)",
				o, v, ErrInvalidConfig, o.Min, o.Max, o.Unit, o.Default))
		}
	}
	if page := uint32(os.Getpagesize()); c.FlowRingBytes < page || c.FlowRingBytes&(c.FlowRingBytes-1) != 0 {
		o, _ := sizeOptionOf(FlowsMapName)
		errs = append(errs, fmt.Errorf("datapath: config: %s is %d: %w: want a power of two of at least a page (%d bytes)",
			o, c.FlowRingBytes, ErrInvalidConfig, page))
	}
	return errors.Join(errs...)
}

// fullErr is the error of a write that found map mapName full: the
// kernel's E2BIG or ENOSPC as errno (also wrapped), or 0 when the datapath
// itself counted. It wraps ErrFull and names the option that sizes the map.
func fullErr(op, mapName string, maxEntries uint32, errno syscall.Errno) error {
	o, _ := sizeOptionOf(mapName)
	if errno != 0 {
		return fmt.Errorf("datapath: %s: %w: all %d entries of %s are in use (%s: %w): raise %s and remove the pin directory (agent --cleanup) so that the map is recreated",
			op, ErrFull, maxEntries, mapName, unix.ErrnoName(errno), errno, o)
	}
	return fmt.Errorf("datapath: %s: %w: all %d entries of %s are in use: raise %s and remove the pin directory (agent --cleanup) so that the map is recreated",
		op, ErrFull, maxEntries, mapName, o)
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
