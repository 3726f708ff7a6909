package hubbleflags

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// FuzzCommandLine parses arbitrary command lines (words split on spaces):
// never a panic, and the filters of one that parses, printed as
// --print-raw-filters prints them and passed back as --allowlist and
// --denylist, are the same filters.
func FuzzCommandLine(f *testing.F) {
	for _, s := range []string{
		"--pod shop/a --not --verdict DROPPED", "-n shop --pod x --to-namespace bank", "--type trace:to-endpoint -t 5:1",
		"--identity world --not --to-identity 0x10", "--since 5m --until 1m", "--allowlist {} --denylist {\"reply\":[true]}",
		"--http-path it's --label a<b", "-A --tcp-flags syn,ack --not -4", "--workload Deployment/ --not --from-all-namespaces",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		req, err := parse(strings.Fields(line)...)
		if err != nil {
			return
		}
		var b strings.Builder
		if err := WriteRawFilters(&b, req); err != nil {
			t.Fatal(err)
		}
		var raw struct{ Allowlist, Denylist []string }
		if err := yaml.Unmarshal([]byte(b.String()), &raw); err != nil {
			t.Fatalf("%q prints YAML that does not parse: %v\n%s", line, err, b.String())
		}
		var args []string
		for _, a := range raw.Allowlist {
			args = append(args, "--allowlist", a)
		}
		for _, d := range raw.Denylist {
			args = append(args, "--denylist", d)
		}
		back, err := parse(args...)
		if err != nil {
			t.Fatalf("%q: its raw filters do not parse back: %v\n%s", line, err, b.String())
		}
		if !sameFilters(req.GetWhitelist(), back.GetWhitelist()) || !sameFilters(req.GetBlacklist(), back.GetBlacklist()) {
			t.Fatalf("%q: the raw filters read back differ:\n%s\n%v", line, b.String(), back)
		}
	})
}

func sameFilters[T proto.Message](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// FuzzParseEventType: never a panic; a parsed sub-type is always matched.
func FuzzParseEventType(f *testing.F) {
	for _, s := range []string{"drop", "trace:to-endpoint", "4:3", "agent:ipcache-deleted", "trace:", ":", "4294967295:1", "l7:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tf, err := ParseEventType(s)
		if err != nil {
			return
		}
		if strings.Contains(s, ":") != tf.GetMatchSubType() {
			t.Fatalf("%q: match_sub_type %v", s, tf.GetMatchSubType())
		}
	})
}

// FuzzParseTime: never a panic; a duration is that long before now.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"5m", "1h30m", "-1s", "2026-11-21", "2026-11-21T03Z", "2026-11-21T03:04Z", "2026-11-21T03:04:05.123+01:00",
		"Sat, 21 Nov 2026 03:04:05 +0000", "", "yesterday"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTime(s, testNow)
		if err != nil {
			return
		}
		if d, derr := time.ParseDuration(s); derr == nil && !got.Equal(testNow.Add(-d)) {
			t.Fatalf("%q: %v, want %v", s, got, testNow.Add(-d))
		}
	})
}
