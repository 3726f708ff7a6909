package datapath

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Defaults applied by Config to its zero fields.
const (
	DefaultPinDir          = "/sys/fs/bpf/clustermesh"
	DefaultMaxIPCache      = 512 * 1024
	DefaultMaxServiceSlots = 256 * 1024
	DefaultMaxBackends     = 128 * 1024
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
	return fmt.Errorf("map size %s is %d: %w: want %d to %d %s (0: the default, %d)",
		o, v, ErrInvalidConfig, o.Min, o.Max, o.Unit, o.Default)
}

// MaxMapEntries bounds the map sizes of every datapath package: far above
// any realistic node, low enough that a mistyped value is refused rather
// than attempted.
const MaxMapEntries = 1 << 24

// SizeOptionOf returns the option of opts that sizes map name.
func SizeOptionOf[C any](opts []SizeOption[C], name string) (SizeOption[C], bool) {
	for _, o := range opts {
		if o.Map == name {
			return o, true
		}
	}
	return SizeOption[C]{}, false
}

// DefaultSizes sets every size of c that is zero to its option's default.
func DefaultSizes[C any](opts []SizeOption[C], c *C) {
	for _, o := range opts {
		if p := o.Of(c); *p == 0 {
			*p = o.Default
		}
	}
}

// CheckSizes checks every size of c against its option (SizeOption.Check).
func CheckSizes[C any](opts []SizeOption[C], c *C) error {
	var errs []error
	for _, o := range opts {
		errs = append(errs, o.Check(*o.Of(c)))
	}
	return errors.Join(errs...)
}

var sizeOptions = []SizeOption[Config]{
	{Flag: "max-ipcache-entries", Field: "MaxIPCache", Map: IPCacheMapName, Unit: "entries",
		Default: DefaultMaxIPCache, Min: 1, Max: MaxMapEntries,
		Usage: "max_entries of the ipcache map (" + IPCacheMapName + "): prefixes of every cluster",
		Of:    func(c *Config) *uint32 { return &c.MaxIPCache }},
	{Flag: "max-service-entries", Field: "MaxServiceSlots", Map: ServicesMapName, Unit: "entries",
		Default: DefaultMaxServiceSlots, Min: 2, Max: MaxMapEntries,
		Usage: "max_entries of the service map (" + ServicesMapName + "): one per frontend plus one per backend of each frontend",
		Of:    func(c *Config) *uint32 { return &c.MaxServiceSlots }},
	{Flag: "max-backend-entries", Field: "MaxBackends", Map: BackendsMapName, Unit: "entries",
		Default: DefaultMaxBackends, Min: 1, Max: MaxMapEntries,
		Usage: "max_entries of the backend map (" + BackendsMapName + "): distinct backends of all services",
		Of:    func(c *Config) *uint32 { return &c.MaxBackends }},
}

// SizeOptions lists every size of Config, in a stable order, for the agent
// to register its flags from: flags.Uint32Var(o.Of(&cfg), o.Flag, o.Default,
// o.Usage) for each o.
func SizeOptions() []SizeOption[Config] { return slices.Clone(sizeOptions) }

// sizes tells the errors of bpfmap which option sizes a map.
func sizes(name string) (option, unit string, ok bool) {
	o, ok := SizeOptionOf(sizeOptions, name)
	return o.String(), o.Unit, ok
}

func (c Config) withDefaults() Config {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	DefaultSizes(sizeOptions, &c)
	return c
}

// Validate reports whether c, with its defaults applied, is usable. Its
// errors wrap ErrInvalidConfig and name the option to change.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if !filepath.IsAbs(c.PinDir) {
		errs = append(errs, fmt.Errorf("pin directory %q must be an absolute path: %w", c.PinDir, ErrInvalidConfig))
	}
	errs = append(errs, CheckSizes(sizeOptions, &c))
	return errors.Join(errs...)
}

// fullErr is the error of a write that found map mapName full (see
// bpfmap.FullErr), naming the option that sizes the map.
func fullErr(op, mapName string, maxEntries uint32, errno syscall.Errno) error {
	o, _ := SizeOptionOf(sizeOptions, mapName)
	return bpfmap.FullErr(op, mapName, maxEntries, errno, o.String())
}

// RemovePins removes the mesh maps pinned in pinDir (empty:
// DefaultPinDir), then pinDir itself if that left it empty. It does not
// need to open the maps, so it also clears incompatible pins (agent
// --cleanup). Programs still holding the maps keep them until they close
// them. Absent pins are fine. The maps of the programs pinned beside them
// are their packages' to remove (socklb.RemovePins, tcpolicy.RemovePins):
// call those first, so that the directory goes with the last.
func RemovePins(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	return bpfmap.RemovePins(pinDir, []string{IPCacheMapName, ServicesMapName, BackendsMapName})
}
