package flowfilter

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// hubbleCase is what `hubble observe FLAGS` sends (its allowlist and
// denylist, copied from `hubble observe --print-raw-filters FLAGS` of hubble
// v1.20.2) and which sample flows that must select.
type hubbleCase struct {
	flags       []string
	allow, deny []string
	want        []string
}

var hubbleCases = []hubbleCase{
	{[]string{`--verdict`, `DROPPED`}, []string{`{"verdict":["DROPPED"]}`}, nil, []string{`world-drop`}},
	{[]string{`--verdict`, `DROPPED`, `--verdict`, `FORWARDED`}, []string{`{"verdict":["DROPPED","FORWARDED"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `http-503`, `v6-reply`, `policy-verdict`}},
	{[]string{`--pod`, `shop/frontend`}, []string{`{"source_pod":["shop/frontend"]}`, `{"destination_pod":["shop/frontend"]}`}, nil, []string{`fe-to-checkout`, `http-503`, `policy-verdict`}},
	{[]string{`--from-pod`, `shop/frontend`}, []string{`{"source_pod":["shop/frontend"]}`}, nil, []string{`fe-to-checkout`, `http-503`, `policy-verdict`}},
	{[]string{`--to-pod`, `checkout`}, []string{`{"destination_pod":["checkout"]}`}, nil, nil},
	{[]string{`--namespace`, `shop`}, []string{`{"source_pod":["shop/"]}`, `{"destination_pod":["shop/"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `http-503`, `policy-verdict`}},
	{[]string{`--from-namespace`, `shop`, `--to-namespace`, `db`}, []string{`{"source_pod":["shop/"],"destination_pod":["db/"]}`}, nil, []string{`policy-verdict`}},
	{[]string{`--namespace`, `shop`, `--pod`, `frontend`}, []string{`{"source_pod":["shop/frontend"]}`, `{"destination_pod":["shop/frontend"]}`}, nil, []string{`fe-to-checkout`, `http-503`, `policy-verdict`}},
	{[]string{`--to-namespace`, `shop`, `--to-pod`, `checkout`}, []string{`{"destination_pod":["shop/checkout"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `http-503`}},
	{[]string{`--label`, `app=frontend`}, []string{`{"source_label":["app=frontend"]}`, `{"destination_label":["app=frontend"]}`}, nil, []string{`fe-to-checkout`, `http-503`, `policy-verdict`}},
	{[]string{`--from-label`, `k8s:app=frontend`}, []string{`{"source_label":["k8s:app=frontend"]}`}, nil, []string{`fe-to-checkout`, `http-503`, `policy-verdict`}},
	{[]string{`--from-label`, `reserved:world`}, []string{`{"source_label":["reserved:world"]}`}, nil, []string{`world-drop`}},
	{[]string{`--to-label`, `k8s:app in (checkout, coredns)`}, []string{`{"destination_label":["k8s:app in (checkout, coredns)"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `http-503`}},
	{[]string{`--label`, `!k8s:app`}, []string{`{"source_label":["!k8s:app"]}`, `{"destination_label":["!k8s:app"]}`}, nil, []string{`world-drop`, `v6-reply`}},
	{[]string{`--type`, `drop`}, []string{`{"event_type":[{"type":1}]}`}, nil, []string{`world-drop`}},
	{[]string{`--type`, `policy-verdict`}, []string{`{"event_type":[{"type":5}]}`}, nil, []string{`policy-verdict`}},
	{[]string{`--type`, `trace:to-endpoint`}, []string{`{"event_type":[{"type":4,"match_sub_type":true}]}`}, nil, []string{`fe-to-checkout`, `v6-reply`}},
	{[]string{`--type`, `trace`, `--type`, `drop`}, []string{`{"event_type":[{"type":4},{"type":1}]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `v6-reply`}},
	{[]string{`--type`, `l7`, `--http-status`, `5+`}, []string{`{"event_type":[{"type":129}],"http_status_code":["5+"]}`}, nil, []string{`http-503`}},
	{[]string{`--drop-reason-desc`, `POLICY_DENIED`}, []string{`{"drop_reason_desc":["POLICY_DENIED"]}`}, nil, []string{`world-drop`}},
	{[]string{`--from-cluster`, `west`}, []string{`{"source_cluster_name":["west"]}`}, nil, []string{`fe-to-checkout`, `http-503`, `policy-verdict`}},
	{[]string{`--cluster`, `east`}, []string{`{"source_cluster_name":["east"]}`, `{"destination_cluster_name":["east"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `http-503`, `policy-verdict`}},
	{[]string{`--to-port`, `8080`}, []string{`{"destination_port":["8080"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `http-503`}},
	{[]string{`--port`, `53`}, []string{`{"source_port":["53"]}`, `{"destination_port":["53"]}`}, nil, []string{`dns`}},
	{[]string{`--protocol`, `tcp`, `--protocol`, `udp`}, []string{`{"protocol":["tcp","udp"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `http-503`, `v6-reply`, `policy-verdict`}},
	{[]string{`--protocol`, `udp`}, []string{`{"protocol":["udp"]}`}, nil, []string{`dns`}},
	{[]string{`--not`, `--verdict`, `FORWARDED`}, nil, []string{`{"verdict":["FORWARDED"]}`}, []string{`world-drop`}},
	{[]string{`--from-pod`, `shop/frontend`, `--not`, `--to-port`, `8080`}, []string{`{"source_pod":["shop/frontend"]}`}, []string{`{"destination_port":["8080"]}`}, []string{`policy-verdict`}},
	{[]string{`--ip`, `10.0.0.0/8`}, []string{`{"source_ip":["10.0.0.0/8"]}`, `{"destination_ip":["10.0.0.0/8"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `http-503`, `policy-verdict`}},
	{[]string{`--from-ip`, `10.1.2.3`, `--to-ip`, `10.2.0.0/24`}, []string{`{"source_ip":["10.1.2.3"],"destination_ip":["10.2.0.0/24"]}`}, nil, []string{`fe-to-checkout`, `http-503`}},
	{[]string{`--identity`, `2`}, []string{`{"source_identity":[2]}`, `{"destination_identity":[2]}`}, nil, []string{`world-drop`}},
	{[]string{`--from-identity`, `world`}, []string{`{"source_identity":[2]}`}, nil, []string{`world-drop`}},
	{[]string{`--tcp-flags`, `SYN`}, []string{`{"tcp_flags":[{"SYN":true}]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `policy-verdict`}},
	{[]string{`--tcp-flags`, `SYN,ACK`}, []string{`{"tcp_flags":[{"SYN":true,"ACK":true}]}`}, nil, []string{`policy-verdict`}},
	{[]string{`--traffic-direction`, `ingress`}, []string{`{"traffic_direction":["INGRESS"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `http-503`}},
	{[]string{`--node-name`, `east/*`}, []string{`{"node_name":["east/*"]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`}},
	{[]string{`--node-name`, `node-4`}, []string{`{"node_name":["node-4"]}`}, nil, []string{`v6-reply`}},
	{[]string{`--reply`}, []string{`{"reply":[true]}`}, nil, []string{`http-503`, `v6-reply`}},
	{[]string{`--not-reply`}, []string{`{"reply":[false]}`}, nil, []string{`fe-to-checkout`, `world-drop`, `dns`, `policy-verdict`}},
	{[]string{`--ipv6`}, []string{`{"ip_version":["IPv6"]}`}, nil, []string{`v6-reply`}},
	{[]string{`--to-fqdn`, `*.example.com`}, []string{`{"destination_fqdn":["*.example.com"]}`}, nil, []string{`dns`}},
	{[]string{`--from-workload`, `Deployment/frontend`}, []string{`{"source_workload":[{"name":"frontend","kind":"Deployment"}]}`}, nil, []string{`fe-to-checkout`, `policy-verdict`}},
	{[]string{`--to-service`, `shop/checkout`}, []string{`{"destination_service":["shop/checkout"]}`}, nil, []string{`fe-to-checkout`}},
	{[]string{`--snat-ip`, `10.0.0.1`}, []string{`{"source_ip_xlated":["10.0.0.1"]}`}, nil, []string{`v6-reply`}},
	{[]string{`--uuid`, `abc`}, []string{`{"uuid":["abc"]}`}, nil, []string{`v6-reply`}},
	{[]string{`--interface`, `eth0`}, []string{`{"interface":[{"name":"eth0"}]}`}, nil, []string{`v6-reply`}},
	{[]string{`--http-method`, `GET`, `--http-path`, `/api/.*`}, []string{`{"http_method":["GET"],"http_path":["/api/.*"]}`}, nil, []string{`http-503`}},
}

// TestHubbleFlags checks that the filters the real hubble CLI sends for the
// flags operators use select what the flags promise.
func TestHubbleFlags(t *testing.T) {
	for _, c := range hubbleCases {
		checkMatches(t, "hubble observe "+strings.Join(c.flags, " "), c.allow, c.deny, c.want)
	}
}

// TestHubbleFlagsTableIsWhatHubbleSends runs the real hubble CLI, when
// CLUSTERMESH_HUBBLE names it (tools/hubble/build.sh builds it), and checks
// that the table above is still what it sends.
func TestHubbleFlagsTableIsWhatHubbleSends(t *testing.T) {
	bin := os.Getenv("CLUSTERMESH_HUBBLE")
	if bin == "" {
		t.Skip("CLUSTERMESH_HUBBLE is not set: the table is checked against the filters it holds only")
	}
	for _, c := range hubbleCases {
		out, err := exec.Command(bin, append([]string{"observe", "--print-raw-filters"}, c.flags...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("hubble observe %q: %v\n%s", c.flags, err, out)
		}
		allow, deny := parseRawFilters(string(out))
		if !slices.Equal(allow, c.allow) || !slices.Equal(deny, c.deny) {
			t.Errorf("hubble observe %q sends allow %q deny %q; the table says allow %q deny %q", c.flags, allow, deny, c.allow, c.deny)
		}
	}
}

// parseRawFilters reads --print-raw-filters' YAML: lists of quoted JSON.
func parseRawFilters(out string) (allow, deny []string) {
	var cur *[]string
	for _, line := range strings.Split(out, "\n") {
		s := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(s, "allowlist:"):
			cur = &allow
		case strings.HasPrefix(s, "denylist:"):
			cur = &deny
		case strings.HasPrefix(s, "- '") && cur != nil:
			*cur = append(*cur, strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(s, "- '"), "'"), "''", "'"))
		}
	}
	return allow, deny
}
