package hubbleflags

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/pflag"
)

// Time layouts --since and --until take, besides a duration ago (Hubble's).
var timeLayouts = []string{
	"2006-01-02",
	"2006-01-02T15Z07:00",
	"2006-01-02T15:04Z07:00",
	time.RFC3339,
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999Z07:00",
	"2006-01-02T15:04:05.999999Z07:00",
	time.RFC1123Z,
}

// ParseTime parses --since or --until as Hubble does: a Go duration is
// that long before now ("5m", "1h30m"), else a time in one of Hubble's
// layouts (2006-01-02, 2006-01-02T15Z07:00, 2006-01-02T15:04Z07:00,
// RFC3339 with or without fractions, RFC1123Z); a date without a zone is
// UTC.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration ago (30s, 5m, 1h30m) nor a time "+
		"(2026-11-21, 2026-11-21T03Z, 2026-11-21T03:04Z, 2026-11-21T03:04:05Z, 2026-11-21T03:04:05.123+01:00, "+
		"\"Sat, 21 Nov 2026 03:04:05 +0000\")", s)
}

// parseRawFilters decodes --allowlist or --denylist values: each holds one
// or more JSON-encoded FlowFilters, one after the other.
func parseRawFilters(values []string) ([]*flowpb.FlowFilter, error) {
	var out []*flowpb.FlowFilter
	for _, v := range values {
		dec := json.NewDecoder(strings.NewReader(v))
		for {
			var ff flowpb.FlowFilter
			if err := dec.Decode(&ff); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, fmt.Errorf("failed to decode '%v': %w", v, err)
			}
			out = append(out, &ff)
		}
	}
	return out, nil
}

// WriteRawFilters writes the request's whitelist and blacklist the way
// `hubble observe --print-raw-filters` does: YAML lists "allowlist" and
// "denylist" of JSON-encoded FlowFilters, "{}" when both are empty. What
// it writes can be passed back with --allowlist and --denylist.
func WriteRawFilters(w io.Writer, req *observerpb.GetFlowsRequest) error {
	var b strings.Builder
	for _, l := range []struct {
		name    string
		filters []*flowpb.FlowFilter
	}{{"allowlist", req.GetWhitelist()}, {"denylist", req.GetBlacklist()}} {
		if len(l.filters) == 0 {
			continue
		}
		b.WriteString(l.name + ":\n")
		for _, ff := range l.filters {
			j, err := json.Marshal(ff)
			if err != nil {
				return fmt.Errorf("encoding a filter of the %s: %w", l.name, err)
			}
			b.WriteString("    - " + yamlQuote(string(j)) + "\n")
		}
	}
	if b.Len() == 0 {
		b.WriteString("{}\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// yamlQuote quotes s as a YAML scalar: single-quoted, as Hubble's YAML
// library writes a printable string, else double-quoted with escapes.
func yamlQuote(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// SingleUse makes the named flags of fs refuse a second occurrence on the
// command line, rather than silently keep the last (--server a --server
// b). Flags fs does not have are skipped.
func SingleUse(fs *pflag.FlagSet, names ...string) {
	for _, name := range names {
		if fl := fs.Lookup(name); fl != nil {
			fl.Value = &onceValue{Value: fl.Value, name: name}
		}
	}
}

// onceValue is a flag value that may be set once.
type onceValue struct {
	pflag.Value
	name string
	set  bool
}

func (o *onceValue) Set(s string) error {
	if o.set {
		return fmt.Errorf("--%s was given twice: give it once", o.name)
	}
	o.set = true
	return o.Value.Set(s)
}
