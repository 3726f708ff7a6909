package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Defaults applied by Config to its zero fields.
const (
	DefaultPinDir             = "/sys/fs/bpf/clustermesh"
	DefaultMaxIPCache         = 512 * 1024
	DefaultMaxServiceSlots    = 256 * 1024
	DefaultMaxBackends        = 128 * 1024
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

// SizeOption is one size of a datapath package's configuration C (this
// package's Config, or the Config of one of its sub-packages) as an
// operator sets it: the agent's flag, the Config field it sets, the map it
// sizes, its default and bounds. The "map full" errors (ErrFull), a pinned
// map of another size (ErrIncompatiblePin) and Validate name the flag.
type SizeOption[C any] struct {
	Flag    string // the agent's flag, without the dashes: "max-ipcache-entries"
	Field   string // the Config field: "MaxIPCache"
	Map     string // the pinned map it sizes: IPCacheMapName
	Unit    string // what it counts: "entries", "bytes"
	Default uint32
	Min     uint32
	Max     uint32
	Usage   string // the flag's help text
	// Of returns the Config field the option sets, for binding a flag to it.
	Of func(c *C) *uint32
}

// String is the option as an operator writes it, with the field:
// "--max-ipcache-entries (Config.MaxIPCache)".
func (o SizeOption[C]) String() string { return "--" + o.Flag + " (Config." + o.Field + ")" }

// Check returns nil when v is 0 (the default) or within the option's
// bounds; otherwise an error wrapping ErrInvalidConfig that names the
// option.
func (o SizeOption[C]) Check(v uint32) error {
	if v == 0 || v >= o.Min && v <= o.Max {
		return nil
	}
	return fmt.Errorf("datapath: config: %s is %d: %w: want %d to %d %s (0: the default, %d)",
		o, v, ErrInvalidConfig, o.Min, o.Max, o.Unit, o.Default)
}

// maxMapEntries bounds every map size: far above any realistic node, low
// enough that a mistyped value is refused rather than attempted.
const maxMapEntries = 1 << 24

var sizeOptions = []SizeOption[Config]{
	{Flag: "max-ipcache-entries", Field: "MaxIPCache", Map: IPCacheMapName, Unit: "entries",
		Default: DefaultMaxIPCache, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the ipcache map (" + IPCacheMapName + "): prefixes of every cluster",
		Of:    func(c *Config) *uint32 { return &c.MaxIPCache }},
	{Flag: "max-service-entries", Field: "MaxServiceSlots", Map: ServicesMapName, Unit: "entries",
		Default: DefaultMaxServiceSlots, Min: 2, Max: maxMapEntries,
		Usage: "max_entries of the service map (" + ServicesMapName + "): one per frontend plus one per backend of each frontend",
		Of:    func(c *Config) *uint32 { return &c.MaxServiceSlots }},
	{Flag: "max-backend-entries", Field: "MaxBackends", Map: BackendsMapName, Unit: "entries",
		Default: DefaultMaxBackends, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the backend map (" + BackendsMapName + "): distinct backends of all services",
		Of:    func(c *Config) *uint32 { return &c.MaxBackends }},
	{Flag: "max-policy-entries", Field: "MaxPolicy", Map: PolicyMapName, Unit: "entries",
		Default: DefaultMaxPolicy, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the policy map (" + PolicyMapName + "): one per endpoint, peer, direction and protocol, more for port ranges",
		Of:    func(c *Config) *uint32 { return &c.MaxPolicy }},
	{Flag: "max-policy-ct-entries", Field: "MaxPolicyCT", Map: PolicyCTMapName, Unit: "entries",
		Default: DefaultMaxPolicyCT, Min: 1, Max: maxMapEntries,
		Usage: "max_entries of the policy conntrack LRU (" + PolicyCTMapName + "): one per flow and endpoint interface",
		Of:    func(c *Config) *uint32 { return &c.MaxPolicyCT }},
	{Flag: "max-policy-endpoint-entries", Field: "MaxPolicyEndpoints", Map: PolicyEndpointsMapName, Unit: "entries",
		Default: DefaultMaxPolicyEndpoints, Min: 1, Max: 1 << 20,
		Usage: "max_entries of the policy endpoint map (" + PolicyEndpointsMapName + "): interfaces carrying the policy programs",
		Of:    func(c *Config) *uint32 { return &c.MaxPolicyEndpoints }},
	{Flag: "flow-ring-bytes", Field: "FlowRingBytes", Map: FlowsMapName, Unit: "bytes",
		Default: DefaultFlowRingBytes, Min: 4096, Max: 1 << 30,
		Usage: "size of the flow events' ring buffer (" + FlowsMapName + "): a power of two of at least a page; an event takes 88 bytes",
		Of:    func(c *Config) *uint32 { return &c.FlowRingBytes }},
}

// SizeOptions lists every size of Config, in a stable order, for the agent
// to register its flags from: flags.Uint32Var(o.Of(&cfg), o.Flag, o.Default,
// o.Usage) for each o.
func SizeOptions() []SizeOption[Config] { return slices.Clone(sizeOptions) }

// sizeOptionOf returns the option that sizes map name.
func sizeOptionOf(name string) (SizeOption[Config], bool) {
	for _, o := range sizeOptions {
		if o.Map == name {
			return o, true
		}
	}
	return SizeOption[Config]{}, false
}

// sizes tells the errors of bpfmap which option sizes a map.
func sizes(name string) (option, unit string, ok bool) {
	o, ok := sizeOptionOf(name)
	return o.String(), o.Unit, ok
}

func (c Config) withDefaults() Config {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	for _, o := range sizeOptions {
		if p := o.Of(&c); *p == 0 {
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
		if err := o.Check(*o.Of(&c)); err != nil {
			errs = append(errs, err)
		}
	}
	if page := uint32(os.Getpagesize()); c.FlowRingBytes < page || c.FlowRingBytes&(c.FlowRingBytes-1) != 0 {
		o, _ := sizeOptionOf(FlowsMapName)
		errs = append(errs, fmt.Errorf("datapath: config: %s is %d: %w: want a power of two of at least a page (%d bytes)",
			o, c.FlowRingBytes, ErrInvalidConfig, page))
	}
	return errors.Join(errs...)
}

// fullErr is the error of a write that found map mapName full (see
// bpfmap.FullErr), naming the option that sizes the map.
func fullErr(op, mapName string, maxEntries uint32, errno syscall.Errno) error {
	o, _ := sizeOptionOf(mapName)
	return bpfmap.FullErr(op, mapName, maxEntries, errno, o.String())
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
	names := []string{IPCacheMapName, ServicesMapName, BackendsMapName}
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
