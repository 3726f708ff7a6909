package hubbleflags

import (
	"io"
	"strings"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// testNow is the clock of the tests' relative --since and --until.
var testNow = time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)

// parse parses args as a command with the flags registered would, and
// builds the request.
func parse(args ...string) (*observerpb.GetFlowsRequest, error) {
	f := New()
	f.now = func() time.Time { return testNow }
	fs := pflag.NewFlagSet("observe", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return f.Request()
}

// rawFilters is what --print-raw-filters prints for args.
func rawFilters(args ...string) (string, error) {
	req, err := parse(args...)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := WriteRawFilters(&b, req); err != nil {
		return "", err
	}
	return b.String(), nil
}

// TestFilters checks the filters of command lines against what
// `hubble observe --print-raw-filters` v1.20.2 printed for them.
func TestFilters(t *testing.T) {
	for _, tc := range []struct {
		args string
		want []string // allowlist lines, then "denylist:" and its lines
	}{
		{"", nil},
		{"--from-pod shop/frontend", []string{`{"source_pod":["shop/frontend"]}`}},
		{"--pod shop/frontend --pod shop/checkout", []string{
			`{"source_pod":["shop/frontend","shop/checkout"]}`, `{"destination_pod":["shop/frontend","shop/checkout"]}`}},
		{"-n shop", []string{`{"source_pod":["shop/"]}`, `{"destination_pod":["shop/"]}`}},
		{"--namespace shop --namespace bank", []string{`{"source_pod":["shop/","bank/"]}`, `{"destination_pod":["shop/","bank/"]}`}},
		{"--from-namespace shop --to-namespace bank", []string{`{"source_pod":["shop/"],"destination_pod":["bank/"]}`}},
		{"-n shop --pod checkout", []string{`{"source_pod":["shop/checkout"]}`, `{"destination_pod":["shop/checkout"]}`}},
		{"--verdict DROPPED --verdict AUDIT", []string{`{"verdict":["DROPPED","AUDIT"]}`}},
		{"--not --verdict FORWARDED", []string{"denylist:", `{"verdict":["FORWARDED"]}`}},
		{"--not --verdict FORWARDED --not --verdict AUDIT", []string{"denylist:", `{"verdict":["FORWARDED","AUDIT"]}`}},
		{"--not --from-pod a --not --to-pod b", []string{"denylist:", `{"source_pod":["a"],"destination_pod":["b"]}`}},
		{"--label app=frontend", []string{`{"source_label":["app=frontend"]}`, `{"destination_label":["app=frontend"]}`}},
		{"--ip 10.1.1.11 --to-port 8080", []string{
			`{"source_ip":["10.1.1.11"],"destination_port":["8080"]}`, `{"destination_ip":["10.1.1.11"],"destination_port":["8080"]}`}},
		{"--port 53 --protocol udp", []string{`{"protocol":["udp"],"source_port":["53"]}`, `{"protocol":["udp"],"destination_port":["53"]}`}},
		{"--from-cluster west --to-cluster east", []string{`{"source_cluster_name":["west"],"destination_cluster_name":["east"]}`}},
		{"--cluster west", []string{`{"source_cluster_name":["west"]}`, `{"destination_cluster_name":["west"]}`}},
		{"--type drop --type policy-verdict --type trace:to-endpoint --type trace-sock --type l7 --type 4:3", []string{
			`{"event_type":[{"type":1},{"type":5},{"type":4,"match_sub_type":true},{"type":7},{"type":129},{"type":4,"match_sub_type":true,"sub_type":3}]}`}},
		{"--type agent:ipcache-deleted", []string{`{"event_type":[{"type":130,"match_sub_type":true,"sub_type":10}]}`}},
		{"--type drop:5", []string{`{"event_type":[{"type":1,"match_sub_type":true,"sub_type":5}]}`}},
		{"--drop-reason-desc POLICY_DENIED --tcp-flags syn,ACK --tcp-flags fin", []string{
			`{"drop_reason_desc":["POLICY_DENIED"],"tcp_flags":[{"SYN":true,"ACK":true},{"FIN":true}]}`}},
		{"--traffic-direction Ingress --node-name east/node-1 -4 -6 --ip-version v6", []string{
			`{"traffic_direction":["INGRESS"],"node_name":["east/node-1"],"ip_version":["IPv4","IPv6","IPv6"]}`}},
		{"--reply --not --not-reply", []string{`{"reply":[true]}`, "denylist:", `{"reply":[false]}`}},
		{"--http-status 5+ --http-method GET --http-path /a --http-url x --http-header a:b --fqdn *.example.com", []string{
			`{"source_fqdn":["*.example.com"],"http_status_code":["5+"],"http_method":["GET"],"http_path":["/a"],"http_url":["x"],"http_header":[{"key":"a","value":"b"}]}`,
			`{"destination_fqdn":["*.example.com"],"http_status_code":["5+"],"http_method":["GET"],"http_path":["/a"],"http_url":["x"],"http_header":[{"key":"a","value":"b"}]}`}},
		{"--uuid u1 --trace-id t --ip-trace-id 7 --snat-ip 1.2.3.4 --interface eth0 --encrypted --cel-expression a", []string{
			`{"uuid":["u1"],"source_ip_xlated":["1.2.3.4"],"interface":[{"name":"eth0"}],"trace_id":["t"],"ip_trace_id":["7"],"encrypted":[true],"experimental":{"cel_expression":["a"]}}`}},
		{"--to-all-namespaces --from-namespace a", []string{`{"source_pod":["a/"],"destination_pod":["/"]}`}},
		{"-A", []string{`{"source_pod":["/"]}`, `{"destination_pod":["/"]}`}},
		{"--from-identity host --to-identity 132000", []string{`{"source_identity":[1],"destination_identity":[132000]}`}},
		{"--workload Deployment/frontend", []string{
			`{"source_workload":[{"name":"frontend","kind":"Deployment"}]}`, `{"destination_workload":[{"name":"frontend","kind":"Deployment"}]}`}},
		{`--allowlist {"source_pod":["a"]}{"verdict":["DROPPED"]} --denylist {"reply":[true]} --pod z`, []string{
			`{"source_pod":["z"]}`, `{"destination_pod":["z"]}`, `{"source_pod":["a"]}`, `{"verdict":["DROPPED"]}`, "denylist:", `{"reply":[true]}`}},
		{`--http-path it's --label a<b`, []string{
			`{"source_label":["a\u003cb"],"http_path":["it''s"]}`, `{"destination_label":["a\u003cb"],"http_path":["it''s"]}`}},
	} {
		got, err := rawFilters(strings.Fields(tc.args)...)
		if err != nil {
			t.Errorf("%s: %v", tc.args, err)
			continue
		}
		if want := rawYAML(tc.want); got != want {
			t.Errorf("%s:\n got %s\nwant %s", tc.args, got, want)
		}
	}
}

// rawYAML is --print-raw-filters' output of allowlist lines, then
// "denylist:" and its lines.
func rawYAML(lines []string) string {
	if len(lines) == 0 {
		return "{}\n"
	}
	var b strings.Builder
	if lines[0] != "denylist:" {
		b.WriteString("allowlist:\n")
	}
	for _, l := range lines {
		if l == "denylist:" {
			b.WriteString(l + "\n")
			continue
		}
		b.WriteString("    - '" + l + "'\n")
	}
	return b.String()
}

// TestFilterErrors checks that what Hubble refuses is refused, with
// Hubble's message (and sometimes more).
func TestFilterErrors(t *testing.T) {
	for _, tc := range []struct{ args, want string }{
		{"--from-namespace shop --from-pod frontend --from-pod other/x", `namespace conflict: "shop" does not contain "other/x"`},
		{"-l app=a --to-label app=b", "filters --label and --to-label cannot be combined"},
		{"--to-label app=b -l app=a", "filters --label and --to-label cannot be combined"},
		{"--identity world --from-identity 132000", "filters --identity and --from-identity cannot be combined"},
		{"--to-pod x -n shop", "filters --to-pod and --namespace cannot be combined"},
		{"-A -n x", "filters --namespace and --all-namespaces cannot be combined"},
		{"--from-pod shop/a --from-service bank/s", `namespace of service "bank/s" conflict with pod "shop"`},
		{"--verdict dropped", "invalid --verdict value: dropped"},
		{"--drop-reason-desc policy_denied", "invalid --drop-reason-desc value: policy_denied"},
		{"--ip-trace-id 0", "invalid --ip-trace-id value; must be greater than 0"},
		{"--http-header nocolon", `invalid http-header value "nocolon", expected name:value`},
		{"--not", "trailing --not found in the arguments"},
		{"--not --not --pod a", "consecutive --not statements"},
		{"--first 3 --last 2", "cannot set both --first and --last"},
		{"--first 3 -f", "cannot set both --first and --follow"},
		{"--last 3 --all", "cannot set both --last and --all"},
		{"--first 3 --all", "cannot set both --first and --all"},
		{"--type trace:bogus", `unknown sub-type "bogus" of event type trace`},
		{"--type bogus", `unknown event type "bogus"`},
		{"--type 4:to-endpoint", `unknown sub-type "to-endpoint" of event type 4`},
		{"--tcp-flags syn,bogus", "unknown tcp flag: bogus"},
		{"--traffic-direction sideways", "sideways: invalid traffic direction, expected ingress or egress"},
		{"--identity unknown", "invalid security identity, expected one of [host world"},
		{"--identity 4294967296", "invalid security identity"},
		{"--ip-version bogus", `invalid IP version "bogus": want v4, v6 or none`},
		{"--since yesterday", `--since: "yesterday" is neither a duration ago`},
		{"--until 2026-13-01", `--until: "2026-13-01" is neither`},
		{"--last 3 --last 4", "--last was given twice: give it once"},
		{"--since 1m --since 2m", "--since was given twice"},
		{`--allowlist {"bogus":1}`, "invalid --allowlist flag"},
	} {
		_, err := parse(strings.Fields(tc.args)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one with %q", tc.args, err, tc.want)
		}
	}
}

// TestRequest checks how many flows from where a command line asks for.
func TestRequest(t *testing.T) {
	for _, tc := range []struct {
		args          string
		number        uint64
		first, follow bool
		since, until  string // RFC3339, "" for none
	}{
		{args: "", number: DefaultLast},
		{args: "--last 0", number: DefaultLast},
		{args: "--last 5", number: 5},
		{args: "--first 7", number: 7, first: true},
		{args: "--all", number: ^uint64(0)},
		{args: "-f", number: 0, follow: true},
		{args: "-f --last 3", number: 3, follow: true},
		{args: "--all -f", number: ^uint64(0), follow: true},
		{args: "--since 5m", since: "2026-11-21T02:55:00Z"},
		{args: "--since 1h30m --until 30m", since: "2026-11-21T01:30:00Z", until: "2026-11-21T02:30:00Z"},
		{args: "--since 2026-11-20 --until 2026-11-21T02Z", since: "2026-11-20T00:00:00Z", until: "2026-11-21T02:00:00Z"},
		{args: "--since 2026-11-21T02:59+01:00", since: "2026-11-21T01:59:00Z"},
		{args: "--since 2026-11-21T02:59:58.5Z --last 4", number: 4, since: "2026-11-21T02:59:58.5Z"},
		{args: "--since 5m --all", since: "2026-11-21T02:55:00Z"},
		{args: "--since 5m -f --until 1m", follow: true, since: "2026-11-21T02:55:00Z"}, // --until ignored with --follow, as Hubble
		{args: "--first 2 --since 10m", number: 2, first: true, since: "2026-11-21T02:50:00Z"},
	} {
		req, err := parse(strings.Fields(tc.args)...)
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if req.GetNumber() != tc.number || req.GetFirst() != tc.first || req.GetFollow() != tc.follow {
			t.Errorf("%q: number %d first %v follow %v, want %d %v %v", tc.args, req.GetNumber(), req.GetFirst(), req.GetFollow(),
				tc.number, tc.first, tc.follow)
		}
		if got := tsString(req.GetSince()); got != tc.since {
			t.Errorf("%q: since %s, want %s", tc.args, got, tc.since)
		}
		if got := tsString(req.GetUntil()); got != tc.until {
			t.Errorf("%q: until %s, want %s", tc.args, got, tc.until)
		}
	}
}

func tsString(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339Nano)
}
