package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// A Rule constrains the imports of one package (or tree) of the module. Each
// non-empty field is checked; Why is printed with every violation.
type Rule struct {
	Pkg string
	Why string
	// StdlibOnly: Pkg imports nothing outside the standard library.
	StdlibOnly bool
	// OursOnly, when not nil: the only packages of this module Pkg imports.
	OursOnly []string
	// Never: packages Pkg imports neither directly nor through another
	// package (of ours or not).
	Never []string
	// ImportedOnlyBy, when not nil: the only packages of this module whose
	// own (non-test) files import Pkg.
	ImportedOnlyBy []string
}

// Violation is one import that breaks a rule, at the file that has it.
type Violation struct {
	Pos  token.Position // the import's position, relative to the module's directory
	Pkg  string         // the importing package, relative to the module
	Msg  string         // what it imports (and through what)
	Rule Rule
}

func (v Violation) String() string {
	return fmt.Sprintf("%s:%d: %s %s: %s", v.Pos.Filename, v.Pos.Line, v.Pkg, v.Msg, v.Rule.Why)
}

// pkg is what `go list -json` says of a package.
type pkg struct {
	ImportPath string
	Dir        string
	Standard   bool
	Module     *struct {
		Path string
		Main bool
		Dir  string
	}
	GoFiles  []string
	CgoFiles []string
	Imports  []string
}

// graph is the module's packages and everything they depend on.
type graph struct {
	module string          // the main module's path
	dir    string          // its directory
	pkgs   map[string]*pkg // by import path
	ours   []*pkg          // the main module's packages, in go list's order
}

// load lists the packages of the module in dir and their dependencies.
func load(dir string) (*graph, error) {
	cmd := exec.Command("go", "list", "-e", "-deps", "-json=ImportPath,Dir,Standard,Module,GoFiles,CgoFiles,Imports", "./...")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list in %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	g := &graph{pkgs: map[string]*pkg{}}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(pkg)
		if err := dec.Decode(p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("reading go list's output: %w", err)
		}
		g.pkgs[p.ImportPath] = p
		if p.Module != nil && p.Module.Main {
			g.module, g.dir = p.Module.Path, p.Module.Dir
			g.ours = append(g.ours, p)
		}
	}
	if g.module == "" {
		return nil, fmt.Errorf("go list in %s: no package of the main module", dir)
	}
	return g, nil
}

// rel is path relative to the module ("wire"), or path itself if it is not
// the module's.
func (g *graph) rel(path string) string {
	if path == g.module {
		return "."
	}
	if r, ok := strings.CutPrefix(path, g.module+"/"); ok {
		return r
	}
	return path
}

func (g *graph) isOurs(path string) bool {
	return path == g.module || strings.HasPrefix(path, g.module+"/")
}

// match reports whether the import path matches a rule's name (see rules.go).
func (g *graph) match(pattern, path string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		// Ours whose last element ends in suffix.
		return g.isOurs(path) && strings.HasSuffix(path[strings.LastIndex(path, "/")+1:], suffix)
	}
	tree, isTree := strings.CutSuffix(pattern, "/...")
	if first, _, _ := strings.Cut(pattern, "/"); !strings.Contains(first, ".") {
		// Ours: the package and every package under it.
		if !g.isOurs(path) {
			return false
		}
		path, isTree = g.rel(path), true
	}
	if isTree {
		return path == tree || strings.HasPrefix(path, tree+"/")
	}
	return path == pattern
}

func (g *graph) matchAny(patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return g.match(p, path) })
}

// check returns every violation of rules in g, sorted by file and line.
func check(g *graph, rules []Rule) ([]Violation, error) {
	var out []Violation
	for _, p := range g.ours {
		if g.match(testSupport, p.ImportPath) {
			continue // test code: it imports what the tests need
		}
		imports, err := g.importsByFile(p)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			for _, imp := range imports {
				if msg := g.violates(r, p, imp.path); msg != "" {
					out = append(out, Violation{Pos: imp.pos, Pkg: g.rel(p.ImportPath), Msg: msg, Rule: r})
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b Violation) int {
		if c := strings.Compare(a.Pos.Filename, b.Pos.Filename); c != 0 {
			return c
		}
		return a.Pos.Line - b.Pos.Line
	})
	return out, nil
}

// violates says how p importing path breaks r, or "" if it does not.
func (g *graph) violates(r Rule, p *pkg, path string) string {
	if g.match(r.Pkg, p.ImportPath) {
		dep := g.pkgs[path]
		switch {
		case r.StdlibOnly && (dep == nil || !dep.Standard):
			return "imports " + g.rel(path) + ", outside the standard library"
		case r.OursOnly != nil && g.isOurs(path) && !g.matchAny(r.OursOnly, path):
			return "imports " + g.rel(path)
		}
		for _, never := range r.Never {
			if chain := g.chain(path, never); chain != nil {
				if len(chain) == 1 {
					return "imports " + g.rel(path)
				}
				return fmt.Sprintf("imports %s, which leads to %s (%s)", g.rel(path), g.rel(chain[len(chain)-1]), g.relChain(chain))
			}
		}
	}
	if r.ImportedOnlyBy != nil && g.match(r.Pkg, path) && !g.match(r.Pkg, p.ImportPath) && !g.matchAny(r.ImportedOnlyBy, p.ImportPath) {
		return "imports " + g.rel(path)
	}
	return ""
}

// chain returns the shortest import chain from path to a package matching
// pattern, path first, or nil if there is none.
func (g *graph) chain(path, pattern string) []string {
	prev := map[string]string{path: ""}
	queue := []string{path}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if g.match(pattern, cur) {
			var chain []string
			for at := cur; at != ""; at = prev[at] {
				chain = append(chain, at)
			}
			slices.Reverse(chain)
			return chain
		}
		if p := g.pkgs[cur]; p != nil {
			for _, next := range p.Imports {
				if _, seen := prev[next]; !seen {
					prev[next] = cur
					queue = append(queue, next)
				}
			}
		}
	}
	return nil
}

func (g *graph) relChain(chain []string) string {
	rel := make([]string, len(chain))
	for i, c := range chain {
		rel[i] = g.rel(c)
	}
	return strings.Join(rel, " → ")
}

// fileImport is one import of one file.
type fileImport struct {
	path string
	pos  token.Position
}

// importsByFile reads the imports of p's own (non-test) files, with their
// positions.
func (g *graph) importsByFile(p *pkg) ([]fileImport, error) {
	fset := token.NewFileSet()
	var out []fileImport
	for _, name := range append(slices.Clone(p.GoFiles), p.CgoFiles...) {
		file := filepath.Join(p.Dir, name)
		f, err := parser.ParseFile(fset, file, nil, parser.ImportsOnly)
		if err != nil {
			return nil, err
		}
		for _, spec := range f.Imports {
			path, err := strconv.Unquote(spec.Path.Value)
			if err != nil || path == "C" {
				continue
			}
			pos := fset.Position(spec.Pos())
			if rel, err := filepath.Rel(g.dir, pos.Filename); err == nil {
				pos.Filename = rel
			}
			out = append(out, fileImport{path: path, pos: pos})
		}
	}
	return out, nil
}
