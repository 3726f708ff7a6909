package flowexport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/clustermesh/clustermesh/flowmask"
	"path/filepath"
	"slices"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/flowfilter"
)

// Defaults of a flow log, Hubble's.
const (
	DefaultFileMaxSizeMB  = 10
	DefaultFileMaxBackups = 5
)

// fileConfig is the configuration file: Cilium's dynamic exporter shape
// (pkg/hubble/exporter/config.go).
type fileConfig struct {
	FlowLogs []*flowLogConfig `json:"flowLogs"`
}

// flowLogConfig is one `flowLogs:` entry as written. Cilium's fieldAggregate
// and aggregationInterval are not implemented and refused as unknown keys.
type flowLogConfig struct {
	Name           string            `json:"name"`
	FilePath       string            `json:"filePath"`
	FieldMask      []string          `json:"fieldMask"`
	IncludeFilters []json.RawMessage `json:"includeFilters"`
	ExcludeFilters []json.RawMessage `json:"excludeFilters"`
	FileMaxSizeMB  int               `json:"fileMaxSizeMb"`
	FileMaxBackups int               `json:"fileMaxBackups"`
	FileCompress   bool              `json:"fileCompress"`
	End            *time.Time        `json:"end"`
}

// spec is one exporter, parsed and checked.
type spec struct {
	name       string
	path       string
	mask       flowmask.Mask
	maskPaths  []string
	include    []*flowpb.FlowFilter
	exclude    []*flowpb.FlowFilter
	filter     *flowfilter.Filter
	maxSizeMB  int
	maxBackups int
	compress   bool
	end        time.Time // zero: no end
}

// equal reports whether reopening is unnecessary.
func (s *spec) equal(o *spec) bool {
	return s.name == o.name && s.path == o.path && slices.Equal(s.maskPaths, o.maskPaths) &&
		filtersEqual(s.include, o.include) && filtersEqual(s.exclude, o.exclude) &&
		s.maxSizeMB == o.maxSizeMB && s.maxBackups == o.maxBackups && s.compress == o.compress &&
		s.end.Equal(o.end)
}

func filtersEqual(a, b []*flowpb.FlowFilter) bool {
	return slices.EqualFunc(a, b, func(x, y *flowpb.FlowFilter) bool { return proto.Equal(x, y) })
}

// parseConfig parses and checks a configuration file (YAML or JSON).
func parseConfig(data []byte) ([]*spec, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	var fc fileConfig
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	names, paths := map[string]bool{}, map[string]bool{}
	specs := make([]*spec, 0, len(fc.FlowLogs))
	for i, fl := range fc.FlowLogs {
		s, err := fl.spec()
		if err != nil {
			return nil, fmt.Errorf("%w: flowLogs[%d]: %w", ErrInvalidConfig, i, err)
		}
		if names[s.name] {
			return nil, fmt.Errorf("%w: flowLogs[%d]: name %q used twice", ErrInvalidConfig, i, s.name)
		}
		if paths[s.path] {
			return nil, fmt.Errorf("%w: flowLogs[%d] %q: filePath %q used twice", ErrInvalidConfig, i, s.name, s.path)
		}
		names[s.name], paths[s.path] = true, true
		specs = append(specs, s)
	}
	return specs, nil
}

func (fl *flowLogConfig) spec() (*spec, error) {
	if fl == nil {
		return nil, fmt.Errorf("empty entry")
	}
	if fl.Name == "" {
		return nil, fmt.Errorf("name is required")
	}
	if fl.FilePath == "" || !filepath.IsAbs(fl.FilePath) {
		return nil, fmt.Errorf("%q: filePath must be an absolute path, not %q", fl.Name, fl.FilePath)
	}
	if fl.FileMaxSizeMB < 0 || fl.FileMaxBackups < 0 {
		return nil, fmt.Errorf("%q: fileMaxSizeMb and fileMaxBackups must not be negative", fl.Name)
	}
	s := &spec{name: fl.Name, path: filepath.Clean(fl.FilePath), maxSizeMB: fl.FileMaxSizeMB,
		maxBackups: fl.FileMaxBackups, compress: fl.FileCompress}
	if s.maxSizeMB == 0 {
		s.maxSizeMB = DefaultFileMaxSizeMB
	}
	if s.maxBackups == 0 {
		s.maxBackups = DefaultFileMaxBackups
	}
	if fl.End != nil {
		s.end = *fl.End
	}
	var err error
	if s.mask, s.maskPaths, err = flowmask.Compile(fl.FieldMask); err != nil {
		return nil, fmt.Errorf("%q: fieldMask: %w", fl.Name, err)
	}
	if err := s.compileFilters(fl); err != nil {
		return nil, fmt.Errorf("%q: %w", fl.Name, err)
	}
	return s, nil
}

func (s *spec) compileFilters(fl *flowLogConfig) error {
	var err error
	if s.include, err = parseFilters("includeFilters", fl.IncludeFilters); err != nil {
		return err
	}
	if s.exclude, err = parseFilters("excludeFilters", fl.ExcludeFilters); err != nil {
		return err
	}
	if s.filter, err = flowfilter.Compile(s.include, s.exclude); err != nil {
		return fmt.Errorf("filters: %w", err)
	}
	return nil
}

// parseFilters reads FlowFilters as protojson: field names as in the proto
// (source_pod) or in JSON (sourcePod), enums by name or number.
func parseFilters(key string, raws []json.RawMessage) ([]*flowpb.FlowFilter, error) {
	out := make([]*flowpb.FlowFilter, 0, len(raws))
	for i, raw := range raws {
		ff := &flowpb.FlowFilter{}
		if err := protojson.Unmarshal(raw, ff); err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", key, i, err)
		}
		out = append(out, ff)
	}
	return out, nil
}
