package flowfilter

import (
	"errors"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protowire"
)

// TestFields covers every field Compile accepts, each with values that
// select some sample flows and not others.
func TestFields(t *testing.T) {
	cases := []struct {
		filter string
		want   []string
	}{
		{`{"uuid":["f1","abc"]}`, []string{"fe-to-checkout", "v6-reply"}},
		{`{"source_ip":["192.0.2.7","fd00::/64"]}`, []string{"world-drop", "v6-reply"}},
		{`{"destination_ip":["10.2.0.10"]}`, []string{"dns"}},
		{`{"source_ip_xlated":["10.0.0.0/8"]}`, []string{"v6-reply"}},
		{`{"source_pod":["kube-system/"]}`, nil},
		{`{"destination_pod":["kube-system/"]}`, []string{"dns"}},
		{`{"destination_pod":["shop/checkout-1","db/"]}`, []string{"world-drop", "policy-verdict"}},
		{`{"source_service":["shop/checkout"]}`, nil},
		{`{"destination_service":["shop/"]}`, []string{"fe-to-checkout"}},
		{`{"destination_service":["checkout"]}`, nil}, // the default namespace
		{`{"source_label":["k8s:io.kubernetes.pod.namespace=shop"]}`, []string{"fe-to-checkout", "dns", "policy-verdict"}},
		{`{"source_label":["app notin (frontend), k8s:app"]}`, []string{"dns"}},
		{`{"source_label":["reserved:app=frontend"]}`, nil}, // another source
		{`{"source_label":["cidr:192.0.0.0/16"]}`, []string{"world-drop"}},
		{`{"source_label":["cidr:fd00-0-0-0-0-0-0-0/8"]}`, []string{"world-drop"}},
		{`{"source_label":["cidr:192.0.2.0/25"]}`, nil}, // narrower than the flow's
		{`{"source_label":["192.0.0.0/16"]}`, nil},      // of any source: keys compared
		{`{"destination_label":["app=checkout,k8s:io.kubernetes.pod.namespace"]}`, []string{"fe-to-checkout", "world-drop", "http-503"}},
		{`{"node_labels":["topology.kubernetes.io/zone=a"]}`, []string{"fe-to-checkout"}},
		{`{"source_workload":[{"kind":"Deployment"}]}`, []string{"fe-to-checkout", "policy-verdict"}},
		{`{"destination_workload":[{"name":"frontend"}]}`, nil},
		{`{"source_cluster_name":["east"]}`, []string{"dns"}},
		{`{"destination_cluster_name":["west"]}`, nil},
		{`{"source_identity":[132000]}`, []string{"fe-to-checkout", "http-503", "policy-verdict"}},
		{`{"destination_identity":[70100,70200]}`, []string{"dns", "policy-verdict"}},
		{`{"source_fqdn":["*"]}`, nil},
		{`{"destination_fqdn":["API.example.com."]}`, []string{"dns"}},
		{`{"traffic_direction":["EGRESS"]}`, []string{"dns", "policy-verdict"}},
		{`{"traffic_direction":["TRAFFIC_DIRECTION_UNKNOWN"]}`, []string{"v6-reply"}},
		{`{"verdict":["FORWARDED"]}`, []string{"fe-to-checkout", "dns", "http-503", "v6-reply", "policy-verdict"}},
		{`{"drop_reason_desc":["POLICY_DENIED","CT_NO_MAP_FOUND"]}`, []string{"world-drop"}},
		{`{"drop_reason_desc":["DROP_REASON_UNKNOWN"]}`, nil}, // only dropped flows
		{`{"event_type":[{"type":1,"match_sub_type":true,"sub_type":133}]}`, []string{"world-drop"}},
		{`{"event_type":[{"type":1,"match_sub_type":true,"sub_type":130}]}`, nil},
		{`{"event_type":[{"type":4,"match_sub_type":true,"sub_type":3}]}`, []string{"dns"}},
		{`{"tcp_flags":[{"PSH":true},{"FIN":true}]}`, []string{"http-503"}},
		{`{"node_name":["east/"]}`, []string{"fe-to-checkout", "world-drop", "dns"}},
		{`{"node_name":["*/node-3","default/node-4"]}`, []string{"http-503", "policy-verdict", "v6-reply"}},
		{`{"node_name":["node-*"]}`, []string{"fe-to-checkout", "world-drop", "dns", "http-503", "v6-reply", "policy-verdict"}},
		{`{"ip_version":["IPv4"]}`, []string{"fe-to-checkout", "world-drop", "dns", "http-503", "policy-verdict"}},
		{`{"protocol":["ICMP","sctp"]}`, nil},
		{`{"protocol":["dns"]}`, []string{"dns"}},
		{`{"protocol":["HTTP"]}`, []string{"http-503"}},
		{`{"source_port":["41234","443"]}`, []string{"fe-to-checkout", "v6-reply"}},
		{`{"destination_port":["5432"]}`, []string{"policy-verdict"}},
		{`{"reply":[true,false]}`, []string{"fe-to-checkout", "world-drop", "dns", "http-503", "v6-reply", "policy-verdict"}},
		{`{"encrypted":[true]}`, []string{"v6-reply"}},
		{`{"interface":[{"index":7}]}`, []string{"v6-reply"}},
		{`{"interface":[{"index":8,"name":"eth0"}]}`, nil},
		{`{"trace_id":["t1"]}`, []string{"http-503"}},
		{`{"ip_trace_id":["42"]}`, []string{"policy-verdict"}},
		{`{"http_status_code":["503"]}`, []string{"http-503"}},
		{`{"http_status_code":["50+"]}`, []string{"http-503"}},
		{`{"http_status_code":["4+","200"]}`, nil},
		{`{"http_method":["get"]}`, []string{"http-503"}},
		{`{"http_path":["^/api/pay$"]}`, []string{"http-503"}},
		{`{"http_url":["x=1$"]}`, []string{"http-503"}},
		{`{"http_header":[{"key":"x-req","value":"1"}]}`, []string{"http-503"}},
		{`{"http_header":[{"key":"x-req","value":"2"}]}`, nil},
		{`{"dns_query":["^api\\.example"]}`, []string{"dns"}},
		{`{"experimental":{}}`, []string{"fe-to-checkout", "world-drop", "dns", "http-503", "v6-reply", "policy-verdict"}},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		checkMatches(t, c.filter, []string{c.filter}, nil, c.want)
		for _, ff := range parseFilters(t, []string{c.filter}) {
			for name := range setFields(ff) {
				seen[name] = true
			}
		}
	}
	for name := range builders {
		if !seen[name] {
			t.Errorf("field %q has no case in TestFields", name)
		}
	}
}

func setFields(ff *flowpb.FlowFilter) map[string]bool {
	out := map[string]bool{}
	m := ff.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		if m.Has(fields.Get(i)) {
			out[string(fields.Get(i).Name())] = true
		}
	}
	return out
}

// TestSemantics: values of one field OR, fields of one filter AND, filters
// of the whitelist OR, any blacklist filter excludes.
func TestSemantics(t *testing.T) {
	all := []string{"fe-to-checkout", "world-drop", "dns", "http-503", "v6-reply", "policy-verdict"}
	checkMatches(t, "no filters", nil, nil, all)
	checkMatches(t, "an empty FlowFilter matches every flow", []string{`{}`}, nil, all)
	checkMatches(t, "an empty blacklist FlowFilter excludes every flow", nil, []string{`{}`}, nil)
	checkMatches(t, "values OR", []string{`{"destination_port":["53","5432"]}`}, nil, []string{"dns", "policy-verdict"})
	checkMatches(t, "fields AND", []string{`{"destination_port":["8080"],"verdict":["DROPPED"]}`}, nil, []string{"world-drop"})
	checkMatches(t, "filters OR", []string{`{"destination_port":["53"]}`, `{"verdict":["DROPPED"]}`}, nil, []string{"dns", "world-drop"})
	checkMatches(t, "blacklist excludes", []string{`{"destination_port":["8080"]}`},
		[]string{`{"verdict":["DROPPED"]}`, `{"source_cluster_name":["west"]}`}, nil)
	checkMatches(t, "blacklist alone", nil, []string{`{"ip_version":["IPv4"]}`}, []string{"v6-reply"})
	checkMatches(t, "blacklist fields AND", nil, []string{`{"verdict":["FORWARDED"],"destination_port":["8080","53"]}`},
		[]string{"world-drop", "v6-reply", "policy-verdict"})

	var nilFilter *Filter
	if !nilFilter.Match(&flowpb.Flow{}) {
		t.Error("a nil Filter must match every flow")
	}
	f, err := Compile(nil, nil)
	if err != nil || f.Match(nil) {
		t.Errorf("a nil flow must match nothing (err %v)", err)
	}
}

// TestRefused: a field we do not implement and a value we cannot parse are
// errors that name them, never silently ignored.
func TestRefused(t *testing.T) {
	cases := []struct {
		filter string
		is     error
		says   string
	}{
		{`{"experimental":{"cel_expression":["true"]}}`, ErrUnsupportedField, `unsupported filter field "experimental.cel_expression"`},
		{`{"source_ip":["10.0.0.0/33"]}`, ErrInvalidValue, `"source_ip": "10.0.0.0/33"`},
		{`{"destination_ip":["10.0.0.300"]}`, ErrInvalidValue, `"destination_ip": "10.0.0.300"`},
		{`{"source_ip_xlated":["x"]}`, ErrInvalidValue, `"source_ip_xlated": "x"`},
		{`{"source_label":["k8s:app in (a"]}`, ErrInvalidValue, `"source_label": "k8s:app in (a"`},
		{`{"destination_label":["=x"]}`, ErrInvalidValue, `"destination_label": "=x"`},
		{`{"node_labels":["a b c"]}`, ErrInvalidValue, `"node_labels": "a b c"`},
		{`{"source_pod":[""]}`, ErrInvalidValue, `"source_pod": ""`},
		{`{"destination_service":[""]}`, ErrInvalidValue, `"destination_service": ""`},
		{`{"source_cluster_name":[""]}`, ErrInvalidValue, `"source_cluster_name": ""`},
		{`{"source_fqdn":["a/b"]}`, ErrInvalidValue, `field "source_fqdn"`},
		{`{"destination_fqdn":["a.."]}`, ErrInvalidValue, `"a.."`},
		{`{"node_name":["a/b/c"]}`, ErrInvalidValue, `"a/b/c"`},
		{`{"node_name":[""]}`, ErrInvalidValue, `field "node_name"`},
		{`{"protocol":["tcpp"]}`, ErrInvalidValue, `"protocol": "tcpp"`},
		{`{"source_port":["65536"]}`, ErrInvalidValue, `"source_port": "65536"`},
		{`{"destination_port":["http"]}`, ErrInvalidValue, `"destination_port": "http"`},
		{`{"http_status_code":["600"]}`, ErrInvalidValue, `"http_status_code": "600"`},
		{`{"http_path":["("]}`, ErrInvalidValue, `"http_path": "("`},
		{`{"http_url":["["]}`, ErrInvalidValue, `"http_url": "["`},
		{`{"dns_query":["*"]}`, ErrInvalidValue, `"dns_query": "*"`},
		{`{"http_method":["GET"],"event_type":[{"type":1}]}`, ErrInvalidValue, `"http_method": it needs the event_type filter to match l7 events`},
	}
	for _, c := range cases {
		_, err := Compile(parseFilters(t, []string{c.filter}), nil)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("Compile(%s) = %v; want %v saying %s", c.filter, err, c.is, c.says)
		}
	}
	if _, err := Compile(nil, []*flowpb.FlowFilter{nil}); !errors.Is(err, ErrInvalidValue) || !strings.Contains(err.Error(), "blacklist") {
		t.Errorf("a nil blacklist filter: %v", err)
	}
}

// TestRefusedUnknownField: a field of a newer Hubble, which the generated
// type keeps as unknown bytes, is refused with its number.
func TestRefusedUnknownField(t *testing.T) {
	ff := &flowpb.FlowFilter{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}
	raw := protowire.AppendTag(nil, 41, protowire.BytesType)
	raw = protowire.AppendString(raw, "sock_xlate_point")
	ff.ProtoReflect().SetUnknown(raw)
	_, err := Compile([]*flowpb.FlowFilter{ff}, nil)
	if !errors.Is(err, ErrUnsupportedField) || !strings.Contains(err.Error(), "number 41") {
		t.Fatalf("Compile with unknown field 41 = %v; want ErrUnsupportedField naming 41", err)
	}
}

// TestTranslateSelector pins Hubble's rewriting of source prefixes.
func TestTranslateSelector(t *testing.T) {
	for in, want := range map[string]string{
		"k8s:app=frontend":               "k8s.app=frontend",
		"app":                            "any.app",
		"!k8s:app, env in (a, b)":        "!k8s.app, any.env in (a, b)",
		"reserved:world":                 "reserved.world",
		"app.kubernetes.io/name=x,k8s:a": "any.app.kubernetes.io/name=x,k8s.a",
		"k8s:a!=b":                       "k8s.a!=b",
	} {
		if got := translateSelector(in); got != want {
			t.Errorf("translateSelector(%q) = %q, want %q", in, got, want)
		}
	}
}
