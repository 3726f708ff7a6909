package flowexport

import (
	"errors"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"
)

// ciliumSample is Cilium's own example (pkg/hubble/exporter/testdata/
// valid-flowlogs-config.yaml) without its aggregation keys, which we do not
// implement.
const ciliumSample = `flowLogs:
- name: "test001"
  filePath: "/var/log/network/flow-log/pa/test001.log"
  fieldMask: []
  includeFilters: []
  excludeFilters: []
  fileMaxSizeMb: 0
  fileMaxBackups: 0
  fileCompress: false
  end: "2023-10-09T23:59:59-07:00"
- name: "test002"
  filePath: "/var/log/network/flow-log/pa/test002.log"
  fieldMask: ["source.namespace", "source.pod_name", "destination.namespace", "destination.pod_name", "verdict"]
  includeFilters:
  - source_pod: ["default/"]
    source_label: ["networking.example.com/flow-logs=enabled"]
    event_type:
    - type: 1
  - destination_pod: ["frontend/nginx-975996d4c-7hhgt"]
  excludeFilters: []
  fileMaxSizeMb: 10
  fileMaxBackups: 3
  fileCompress: true
  end: "2023-10-09T23:59:59-07:00"
`

func TestParseCiliumSample(t *testing.T) {
	specs, err := parseConfig([]byte(ciliumSample))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 {
		t.Fatalf("%d exporters, want 2", len(specs))
	}
	a, b := specs[0], specs[1]
	if a.maxSizeMB != DefaultFileMaxSizeMB || a.maxBackups != DefaultFileMaxBackups || len(a.mask) != 0 {
		t.Errorf("test001 defaults: %+v", a)
	}
	if want := time.Date(2023, 10, 10, 6, 59, 59, 0, time.UTC); !a.end.Equal(want) {
		t.Errorf("end = %v, want %v", a.end, want)
	}
	if b.maxSizeMB != 10 || b.maxBackups != 3 || !b.compress || len(b.include) != 2 || len(b.mask) != 3 {
		t.Errorf("test002: %+v", b)
	}
	if got := protojson.Format(b.include[0]); !strings.Contains(got, `"eventType"`) || !strings.Contains(got, `"default/"`) {
		t.Errorf("test002's first filter = %s", got)
	}
}

// TestParseForms: filters take proto or JSON field names and enum names or
// numbers; JSON configuration files are YAML too; an empty file has no
// exporters.
func TestParseForms(t *testing.T) {
	specs, err := parseConfig([]byte(`{"flowLogs":[{"name":"a","filePath":"/x/a.log",
		"includeFilters":[{"sourcePod":["shop/"],"verdict":[2]}],"excludeFilters":[{"verdict":["FORWARDED"]}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := specs[0].include[0].GetVerdict(); len(got) != 1 || got[0] != flowpb.Verdict_DROPPED {
		t.Errorf("verdict 2 = %v", got)
	}
	if !specs[0].filter.Match(&flowpb.Flow{Verdict: flowpb.Verdict_DROPPED, Source: &flowpb.Endpoint{Namespace: "shop", PodName: "p"}}) {
		t.Error("the compiled filter does not match a drop in shop")
	}
	for _, empty := range []string{"", "flowLogs: []", "# nothing\n"} {
		if specs, err := parseConfig([]byte(empty)); err != nil || len(specs) != 0 {
			t.Errorf("parseConfig(%q) = %d exporters, %v", empty, len(specs), err)
		}
	}
}

func TestParseRefused(t *testing.T) {
	entry := func(extra string) string {
		return "flowLogs:\n- name: a\n  filePath: /x/a.log\n" + extra
	}
	cases := []struct{ config, says string }{
		{"flowLogs: [", "yaml"},
		{"flowLog: []", `unknown field "flowLog"`},
		{entry("  fieldAggregate: [source]\n"), `unknown field "fieldAggregate"`},
		{entry("  aggregationInterval: 30s\n"), `unknown field "aggregationInterval"`},
		{"flowLogs:\n- filePath: /x/a.log\n", "name is required"},
		{"flowLogs:\n- name: a\n", "filePath must be an absolute path"},
		{"flowLogs:\n- name: a\n  filePath: a.log\n", `filePath must be an absolute path, not "a.log"`},
		{entry("- name: a\n  filePath: /x/b.log\n"), `name "a" used twice`},
		{entry("- name: b\n  filePath: /x/../x/a.log\n"), `filePath "/x/a.log" used twice`},
		{entry("  fileMaxSizeMb: -1\n"), "must not be negative"},
		{entry("  fieldMask: [source.nope]\n"), "fieldMask"},
		{entry("  includeFilters: [{sourcePods: [x]}]\n"), "includeFilters[0]"},
		{entry("  excludeFilters: [{source_ip: [10.0.0.0/33]}]\n"), `"source_ip": "10.0.0.0/33"`},
		{entry("  includeFilters: [{experimental: {cel_expression: [\"true\"]}}]\n"), `unsupported filter field "experimental.cel_expression"`},
		{entry("  includeFilters: [{verdict: [DROPED]}]\n"), "includeFilters[0]"},
		{entry("  end: tomorrow\n"), "tomorrow"},
		{"flowLogs:\n- null\n", "empty entry"},
	}
	for _, c := range cases {
		_, err := parseConfig([]byte(c.config))
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("parseConfig(%q) = %v; want ErrInvalidConfig saying %s", c.config, err, c.says)
		}
	}
}

func TestSpecEqual(t *testing.T) {
	parse := func(s string) *spec {
		specs, err := parseConfig([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return specs[0]
	}
	base := "flowLogs:\n- name: a\n  filePath: /x/a.log\n  includeFilters: [{verdict: [DROPPED]}]\n"
	if !parse(base).equal(parse(base + "  fileMaxSizeMb: 10\n")) {
		t.Error("the default size written out makes a different exporter")
	}
	for _, changed := range []string{
		"flowLogs:\n- name: a\n  filePath: /x/b.log\n",
		base + "  fileMaxBackups: 1\n",
		base + "  fieldMask: [verdict]\n",
		base + "  excludeFilters: [{verdict: [FORWARDED]}]\n",
		"flowLogs:\n- name: a\n  filePath: /x/a.log\n  includeFilters: [{verdict: [FORWARDED]}]\n",
		base + "  end: \"2030-01-01T00:00:00Z\"\n",
	} {
		if parse(base).equal(parse(changed)) {
			t.Errorf("%q is equal to the base", changed)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(ciliumSample)
	f.Add(twoExporters)
	f.Add(`{"flowLogs":[{"name":"a","filePath":"/a","includeFilters":[{"verdict":[2]}]}]}`)
	f.Add("flowLogs:\n- name: a\n  filePath: /x/a.log\n  fieldMask: [l4.TCP.flags]\n  end: \"2030-01-01T00:00:00Z\"\n")
	f.Fuzz(func(t *testing.T, config string) {
		specs, err := parseConfig([]byte(config))
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("parseConfig: error without ErrInvalidConfig: %v", err)
			}
			return
		}
		names, paths := map[string]bool{}, map[string]bool{}
		for _, s := range specs {
			if s.name == "" || names[s.name] || paths[s.path] || s.filter == nil || s.maxSizeMB <= 0 {
				t.Fatalf("parseConfig accepted %+v", s)
			}
			names[s.name], paths[s.path] = true, true
			s.mask.Apply(testFlow(flowpb.Verdict_DROPPED, 1))
		}
	})
}
