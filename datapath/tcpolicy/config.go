package tcpolicy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Names of the policy maps, and of the directory of pinned tc links,
// inside the mesh maps' pin directory (datapath.Config.PinDir).
const (
	PolicyMapName    = "cm_policy"
	EndpointsMapName = "cm_policy_endpoints"
	ConfigMapName    = "cm_policy_config"
	CTMapName        = "cm_policy_ct"
	MetricsMapName   = "cm_policy_metrics"
	FlowsMapName     = "cm_policy_flows"
	LinksDir         = "cm_policy_links"
)

// mapNames lists the pinned policy maps (RemovePins).
var mapNames = []string{PolicyMapName, EndpointsMapName, ConfigMapName, CTMapName, MetricsMapName, FlowsMapName}

// Defaults applied by Config to its zero fields.
const (
	DefaultMaxPolicy          = 256 * 1024
	DefaultMaxPolicyCT        = 128 * 1024
	DefaultMaxPolicyEndpoints = 16 * 1024
	DefaultFlowRingBytes      = 4 << 20
)

// Config sizes the policy programs' maps. Zero fields take the defaults
// above. The sizes are part of each map's definition: changing one makes
// the existing pins incompatible (remove the pin directory). Each size is
// an option of the agent (SizeOptions), and every error about a size names
// that option.
type Config struct {
	// MaxPolicy is the policy trie's max_entries (PolicyMapName): a key
	// with one port or none takes one entry per protocol, a port range up
	// to 30 per protocol.
	MaxPolicy uint32
	// MaxPolicyCT is the max_entries of the programs' conntrack LRU
	// (CTMapName): one entry per flow and endpoint interface.
	MaxPolicyCT uint32
	// MaxPolicyEndpoints is the max_entries of EndpointsMapName: how many
	// interfaces can carry the programs at once.
	MaxPolicyEndpoints uint32
	// FlowRingBytes is the size of the flow events' ring buffer
	// (FlowsMapName): a power of two, at least one page; an event takes 88
	// bytes.
	FlowRingBytes uint32
}

var sizeOptions = []datapath.SizeOption[Config]{
	{Flag: "max-policy-entries", Field: "MaxPolicy", Map: PolicyMapName, Unit: "entries",
		Default: DefaultMaxPolicy, Min: 1, Max: datapath.MaxMapEntries,
		Usage: "max_entries of the policy map (" + PolicyMapName + "): one per endpoint, peer, direction and protocol, more for port ranges",
		Of:    func(c *Config) *uint32 { return &c.MaxPolicy }},
	{Flag: "max-policy-ct-entries", Field: "MaxPolicyCT", Map: CTMapName, Unit: "entries",
		Default: DefaultMaxPolicyCT, Min: 1, Max: datapath.MaxMapEntries,
		Usage: "max_entries of the policy conntrack LRU (" + CTMapName + "): one per flow and endpoint interface",
		Of:    func(c *Config) *uint32 { return &c.MaxPolicyCT }},
	{Flag: "max-policy-endpoint-entries", Field: "MaxPolicyEndpoints", Map: EndpointsMapName, Unit: "entries",
		Default: DefaultMaxPolicyEndpoints, Min: 1, Max: 1 << 20,
		Usage: "max_entries of the policy endpoint map (" + EndpointsMapName + "): interfaces carrying the policy programs",
		Of:    func(c *Config) *uint32 { return &c.MaxPolicyEndpoints }},
	{Flag: "flow-ring-bytes", Field: "FlowRingBytes", Map: FlowsMapName, Unit: "bytes",
		Default: DefaultFlowRingBytes, Min: 4096, Max: 1 << 30,
		Usage: "size of the flow events' ring buffer (" + FlowsMapName + "): a power of two of at least a page; an event takes 88 bytes",
		Of:    func(c *Config) *uint32 { return &c.FlowRingBytes }},
}

// SizeOptions lists every size of Config, in a stable order, for the agent
// to register its flags from (see datapath.SizeOptions).
func SizeOptions() []datapath.SizeOption[Config] { return slices.Clone(sizeOptions) }

// sizes tells bpfmap's errors which option sizes a map.
func sizes(name string) (option, unit string, ok bool) {
	o, ok := datapath.SizeOptionOf(sizeOptions, name)
	return o.String(), o.Unit, ok
}

// fullErr is the error of a write to em, map name, that found it full
// (ErrFull naming the option to raise); nil when err is another error.
func fullErr(op, name string, em *ebpf.Map, err error) error {
	errno, full := bpfmap.IsFull(err)
	if !full {
		return nil
	}
	o, _ := datapath.SizeOptionOf(sizeOptions, name)
	return bpfmap.FullErr(op, name, em.MaxEntries(), errno, o.String())
}

func (c Config) withDefaults() Config {
	datapath.DefaultSizes(sizeOptions, &c)
	return c
}

// Validate reports whether c, with its defaults applied, is usable. Its
// errors wrap datapath.ErrInvalidConfig and name the option to change.
func (c Config) Validate() error {
	c = c.withDefaults()
	errs := []error{datapath.CheckSizes(sizeOptions, &c)}
	if page := uint32(os.Getpagesize()); c.FlowRingBytes < page || c.FlowRingBytes&(c.FlowRingBytes-1) != 0 {
		o, _ := datapath.SizeOptionOf(sizeOptions, FlowsMapName)
		errs = append(errs, fmt.Errorf("map size %s is %d: %w: want a power of two of at least a page (%d bytes)",
			o, c.FlowRingBytes, datapath.ErrInvalidConfig, page))
	}
	return errors.Join(errs...)
}

// mapSpecs are the pinned policy maps' definitions, in the order of
// Programs' fields (Open).
func mapSpecs(cfg Config) []*ebpf.MapSpec {
	return []*ebpf.MapSpec{
		{
			Name: PolicyMapName, Type: ebpf.LPMTrie, Flags: bpfmap.FNoPrealloc,
			KeySize: policyKeySize, ValueSize: policyValueSize, MaxEntries: cfg.MaxPolicy,
			Pinning: ebpf.PinByName,
		},
		{
			Name: EndpointsMapName, Type: ebpf.Hash,
			KeySize: 4, ValueSize: policyEndpointSize, MaxEntries: cfg.MaxPolicyEndpoints,
			Pinning: ebpf.PinByName,
		},
		{
			Name: ConfigMapName, Type: ebpf.Array,
			KeySize: 4, ValueSize: policyConfigSize, MaxEntries: 1,
			Pinning: ebpf.PinByName,
		},
		{
			Name: CTMapName, Type: ebpf.LRUHash,
			KeySize: ctKeySize, ValueSize: ctValueSize, MaxEntries: cfg.MaxPolicyCT,
			Pinning: ebpf.PinByName,
		},
		{
			Name: MetricsMapName, Type: ebpf.PerCPUArray,
			KeySize: 4, ValueSize: 8, MaxEntries: metricsSlots,
			Pinning: ebpf.PinByName,
		},
		{
			Name: FlowsMapName, Type: ebpf.RingBuf,
			MaxEntries: cfg.FlowRingBytes,
			Pinning:    ebpf.PinByName,
		},
	}
}

// RemovePins removes the policy maps pinned in pinDir (empty:
// datapath.DefaultPinDir) and the pinned tc links of the programs (which
// detaches them from their interfaces), then pinDir itself if that left it
// empty. It does not need to open the maps, so it also clears incompatible
// pins (agent --cleanup). Programs still holding the maps keep them until
// they close them; programs attached as clsact filters stay until Detach
// (or until their interface goes). Absent pins are fine.
func RemovePins(pinDir string) error {
	if pinDir == "" {
		pinDir = datapath.DefaultPinDir
	}
	return bpfmap.RemovePins(pinDir, mapNames, removeLinkPins(filepath.Join(pinDir, LinksDir)))
}
