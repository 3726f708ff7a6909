package monitoring

import (
	"os"
	"regexp"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/flowmetrics"
)

// exported is every metric name the agent's collectors describe: the
// remote sync's and every Hubble flow metric.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	cfg, err := flowmetrics.Parse([]string{flowmetrics.MetricFlow, flowmetrics.MetricDrop, flowmetrics.MetricTCP,
		flowmetrics.MetricPortDistribution, flowmetrics.MetricICMP})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{names: map[string]bool{"up": true}}
	if _, err := flowmetrics.New(cfg, rec); err != nil {
		t.Fatal(err)
	}
	if err := rec.Register(agentsync.NewCollector(nil)); err != nil { // Describe reads no agent
		t.Fatal(err)
	}
	return rec.names
}

// recorder is a prometheus.Registerer that keeps the names its collectors
// describe.
type recorder struct {
	names map[string]bool
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	var wg sync.WaitGroup
	wg.Go(func() {
		c.Describe(ch)
		close(ch)
	})
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	wg.Wait()
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *recorder) Unregister(prometheus.Collector) bool { return false }

// ours matches the names of our metrics in an expression.
var ours = regexp.MustCompile(`\b(?:hubble|clustermesh)_[a-zA-Z0-9_:]*`)

// checkNames fails t for every metric of ours expr names that the agent
// does not export.
func checkNames(t *testing.T, where, expr string, known map[string]bool) {
	t.Helper()
	for _, name := range ours.FindAllString(expr, -1) {
		if !known[name] {
			t.Errorf("%s: %s is not a metric the agent exports", where, name)
		}
	}
}

type rulesFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert  string `json:"alert"`
			Record string `json:"record"`
			Expr   string `json:"expr"`
		} `json:"rules"`
	} `json:"groups"`
}

func TestAlertRulesNameExportedMetrics(t *testing.T) {
	known := exported(t)
	b, err := os.ReadFile("alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rf rulesFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("reading alerts.yaml: %v", err)
	}
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			checkNames(t, "alert "+r.Alert, r.Expr, known)
			n++
		}
	}
	if n < 5 {
		t.Errorf("alerts.yaml has %d rules, want at least the 5 documented", n)
	}
}
