package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestFixture runs the rules on testdata/fixture, a module whose files break
// them in each way: each violation is reported at the importing file and
// line; a test file's import, test support's imports (wire/wiretest), a rule
// about a package the module does not have (node, meshapiserver) and the
// allowed imports are not.
func TestFixture(t *testing.T) {
	g, err := load("testdata/fixture")
	if err != nil {
		t.Fatal(err)
	}
	violations, err := check(g, rules)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range violations {
		got = append(got, fmt.Sprintf("%s:%d: %s %s", v.Pos.Filename, v.Pos.Line, v.Pkg, v.Msg))
		if !strings.HasSuffix(v.String(), ": "+v.Rule.Why) {
			t.Errorf("%q does not say why the rule holds", v)
		}
	}
	want := []string{
		"agentsync/agentsync.go:5: agentsync imports wire/wiretest",
		"datapath/datapath.go:6: datapath imports helper, which leads to agentsync (helper → agentsync)",
		"merge/merge.go:3: merge imports cli",
		"wire/wire.go:3: wire imports ca, outside the standard library",
	}
	if !slices.Equal(got, want) {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestMatch checks the rules' names: relative to the module, trees, and
// other modules.
func TestMatch(t *testing.T) {
	g := &graph{module: "example.com/m"}
	for _, c := range []struct {
		pattern, path string
		want          bool
	}{
		{"wire", "example.com/m/wire", true},
		{"wire", "example.com/m/wireguard", false},
		{"wire", "example.com/m/x/wire", false},
		{"datapath", "example.com/m/datapath/socklb", true}, // a package of ours covers its subpackages
		{"cmd", "example.com/m/cmd/clustermesh", true},
		{"cmd/...", "example.com/m/cmd", true},
		{"cmd/...", "example.com/m/cmd/clustermesh", true},
		{"cmd/...", "example.com/m/cmdx", false},
		{"go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3/embed", false}, // another module's: exact without /...
		{"*test", "example.com/m/internal/kubetest", true},
		{"*test", "example.com/m/datapath/internal/dptest", true},
		{"*test", "example.com/m/internal/testenv", false},
		{"*test", "net/http/httptest", false}, // ours only
		{"wire", "wire", false},               // a standard library package of that name is not ours
		{etcd, "go.etcd.io/etcd/server/v3/embed", true},
		{etcd, "go.etcd.io/etcdx", false},
		{etcd, "go.etcd.io/bbolt", false},
	} {
		if got := g.match(c.pattern, c.path); got != c.want {
			t.Errorf("match(%q, %q) = %v, want %v", c.pattern, c.path, got, c.want)
		}
	}
}

// TestRulesWellFormed checks that every rule names a package and says why,
// so that a typo does not silently check nothing.
func TestRulesWellFormed(t *testing.T) {
	for _, r := range rules {
		if r.Pkg == "" || r.Why == "" || strings.HasPrefix(r.Pkg, "/") || strings.HasSuffix(r.Pkg, "/") {
			t.Errorf("rule %+v: a package relative to the module and a reason are needed", r)
		}
		if !r.StdlibOnly && r.OursOnly == nil && r.Never == nil && r.ImportedOnlyBy == nil {
			t.Errorf("rule for %s checks nothing", r.Pkg)
		}
	}
}
