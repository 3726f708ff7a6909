package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

type dashboard struct {
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func (p panel) all() []panel {
	out := []panel{p}
	for _, c := range p.Panels {
		out = append(out, c.all()...)
	}
	return out
}

// grafanaVars are the variables Grafana replaces in an expression, and a
// value PromQL accepts in their place.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// promtool returns promtool's path, or skips t when it is missing — fails
// it under CI=true (`make promtool` installs Debian's prometheus package).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if testenv.InCI() {
		t.Fatalf("promtool is missing (CI=true forbids skipping): run `make promtool`")
	}
	t.Skip("promtool is missing: `make promtool` installs it (Debian's prometheus package)")
	return ""
}

// TestDashboard: every panel of dashboard.json has a query on the
// dashboard's data source, every query parses as PromQL (promtool reads them
// as recording rules), and names only metrics the agent exports.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("reading dashboard.json: %v", err)
	}
	known := exported(t)
	ids := map[int]bool{}
	var rules []map[string]string
	for _, top := range d.Panels {
		for _, p := range top.all() {
			if ids[p.ID] {
				t.Errorf("panel id %d twice", p.ID)
			}
			ids[p.ID] = true
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: %d queries on data source %q, want some on ${datasource}", p.Title, len(p.Targets), p.Datasource.UID)
			}
			for _, q := range p.Targets {
				expr := grafanaVars.Replace(q.Expr)
				if strings.Contains(expr, "$") {
					t.Errorf("panel %q query %s: a variable the dashboard does not define: %s", p.Title, q.RefID, q.Expr)
				}
				checkNames(t, fmt.Sprintf("panel %q query %s", p.Title, q.RefID), expr, known)
				rules = append(rules, map[string]string{"record": fmt.Sprintf("dashboard:panel_%d_%s", p.ID, q.RefID), "expr": expr})
			}
		}
	}
	if d.UID == "" || len(rules) < 5 {
		t.Fatalf("dashboard.json: uid %q, %d queries: want a uid and the panels of flows, drops, remotes, entries, backends", d.UID, len(rules))
	}
	checkParses(t, rules)
}

// checkParses has promtool parse exprs, as the recording rules of a file.
func checkParses(t *testing.T, rules []map[string]string) {
	t.Helper()
	tool := promtool(t)
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := exec.CommandContext(t.Context(), tool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s\n%s", err, res, out)
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(rules)); !strings.Contains(string(res), want) {
		t.Fatalf("promtool says %q, want %q", res, want)
	}
}
