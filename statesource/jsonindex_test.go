package statesource

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// indexedState is a valid state of n endpoints (two namespaces, one with
// labels) as JSON, compact or indented.
func indexedState(n int, indent bool) []byte {
	st := State{
		Nodes: []Node{{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("192.168.1.1")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}},
		Namespaces: []Namespace{{Name: "shop", Labels: map[string]string{"team": "cart"}}},
		Services: []Service{{Namespace: "shop", Name: "checkout", ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports: []ServicePort{{Name: "http", Port: 80}}, Selector: map[string]string{"app": "checkout"}}},
	}
	for i := range n {
		ns := "shop"
		if i%3 == 0 {
			ns = "bulk"
		}
		st.Endpoints = append(st.Endpoints, &Endpoint{Namespace: ns, Pod: fmt.Sprintf("pod-%d", i), Node: "node-1",
			IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%4)}})
	}
	if indent {
		b, _ := json.MarshalIndent(st, "", "  ")
		return b
	}
	b, _ := json.Marshal(st)
	return b
}

// checkIncremental parses before, then after, with one parser (so after is
// parsed around its difference when it can be) and checks the result is
// Parse's, and its Changes exactly what differs. It reports whether after
// was parsed incrementally.
func checkIncremental(t *testing.T, before, after []byte) bool {
	t.Helper()
	checkRebase(t, before, after)
	p := &parser{name: "state.json"}
	prev, err := p.parse(before)
	if err != nil {
		t.Fatalf("before: %v", err)
	}
	got, gotErr := p.parse(after)
	if got == nil && gotErr == nil {
		if !bytes.Equal(before, after) {
			t.Fatal("a changed content parsed as unchanged")
		}
		return false
	}
	want, wantErr := Parse("state.json", after)
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("parsed around the difference: err %v; parsed whole: err %v", gotErr, wantErr)
	}
	if wantErr != nil {
		return false
	}
	changes := got.Changes
	cp := *got
	cp.Changes = nil
	if !reflect.DeepEqual(&cp, want) {
		t.Fatalf("parsed around the difference:\n%+v\nparsed whole:\n%+v", cp.Endpoints, want.Endpoints)
	}
	if changes == nil {
		return false
	}
	wantChanged, wantRemoved := diffEndpoints(prev.Endpoints, want.Endpoints)
	for _, e := range changes.Endpoints {
		if !slices.Contains(got.Endpoints, e) {
			t.Fatalf("changed endpoint %s is not the state's own", e.Key())
		}
	}
	if !slices.Equal(sorted(endpointKeys(changes.Endpoints)), wantChanged) || !slices.Equal(changes.RemovedEndpoints, wantRemoved) {
		t.Fatalf("changes: %v removed %v; want %v removed %v", changes.Endpoints, changes.RemovedEndpoints, wantChanged, wantRemoved)
	}
	if changes.Nodes || changes.Services || changes.Namespaces {
		t.Fatalf("an endpoints-only edit says %+v", changes)
	}
	return true
}

func diffEndpoints(before, after []*Endpoint) (changed, removed []string) {
	was := map[string]*Endpoint{}
	for _, e := range before {
		was[e.Key()] = e
	}
	for _, e := range after {
		if b, ok := was[e.Key()]; !ok || !reflect.DeepEqual(b, e) {
			changed = append(changed, e.Key())
		}
		delete(was, e.Key())
	}
	for k := range was {
		removed = append(removed, k)
	}
	return sorted(changed), sorted(removed)
}

// checkRebase checks that an index of before that takes after around its
// difference rebuilds after, in before's array, from what it parsed (the
// mapped path's settle).
func checkRebase(t *testing.T, before, after []byte) {
	t.Helper()
	x, _, err := indexJSON("state.json", slices.Clone(before))
	if err != nil || x == nil {
		return
	}
	mapped := slices.Clone(after) // stands for the mapping: not kept
	_, rb, err := x.apply(mapped)
	if err != nil {
		return
	}
	clear(mapped)
	if got := rb.inPlace(); !bytes.Equal(got, after) {
		t.Fatalf("rebuilt content differs from the new one:\n%s\nwant\n%s", got, after)
	}
}

func endpointKeys(eps []*Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.Key())
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestIncrementalEdits(t *testing.T) {
	for _, indent := range []bool{false, true} {
		base := indexedState(50, indent)
		var st State
		if err := json.Unmarshal(base, &st); err != nil {
			t.Fatal(err)
		}
		edit := func(f func(st *State)) []byte {
			var cp State
			json.Unmarshal(base, &cp)
			f(&cp)
			if indent {
				b, _ := json.MarshalIndent(cp, "", "  ")
				return b
			}
			b, _ := json.Marshal(cp)
			return b
		}
		ready := false
		for _, tc := range []struct {
			name        string
			after       []byte
			incremental bool
		}{
			{"one label", edit(func(s *State) { s.Endpoints[20].Labels["app"] = "other" }), true},
			{"readiness", edit(func(s *State) { s.Endpoints[7].Ready = &ready }), true},
			{"first removed", edit(func(s *State) { s.Endpoints = s.Endpoints[1:] }), true},
			{"last removed", edit(func(s *State) { s.Endpoints = s.Endpoints[:49] }), true},
			{"middle removed", edit(func(s *State) { s.Endpoints = slices.Delete(s.Endpoints, 25, 26) }), true},
			{"added at the end", edit(func(s *State) {
				s.Endpoints = append(s.Endpoints, &Endpoint{Namespace: "shop", Pod: "new", IP: netip.MustParseAddr("10.1.9.9")})
			}), true},
			{"added first", edit(func(s *State) {
				s.Endpoints = slices.Insert(s.Endpoints, 0, &Endpoint{Namespace: "shop", Pod: "new", IP: netip.MustParseAddr("10.1.9.9")})
			}), true},
			{"all removed", edit(func(s *State) { s.Endpoints = []*Endpoint{} }), true},
			{"two far apart", edit(func(s *State) { s.Endpoints[2].Pod = "renamed"; s.Endpoints[47].Node = "" }), true},
			{"a node changed", edit(func(s *State) { s.Nodes[0].IPs[0] = netip.MustParseAddr("192.168.1.2") }), false},
			{"a service changed", edit(func(s *State) { s.Services[0].Ports[0].Port = 81 }), false},
			{"duplicate address", edit(func(s *State) { s.Endpoints[3].IP = s.Endpoints[40].IP }), false},
			{"duplicate pod", edit(func(s *State) {
				s.Endpoints[3].Pod, s.Endpoints[3].Namespace = s.Endpoints[41].Pod, s.Endpoints[41].Namespace
			}), false},
			{"unknown node", edit(func(s *State) { s.Endpoints[3].Node = "node-9" }), false},
			{"unknown field", []byte(strings.Replace(string(base), `"pod":"pod-5"`, `"pod":"pod-5","podd":"x"`, 1)), false},
			{"broken JSON", []byte(strings.Replace(string(base), `"pod-5"`, `"pod-5`, 1)), false},
			{"null endpoint", edit(func(s *State) { s.Endpoints = slices.Insert(s.Endpoints, 5, nil) }), false},
		} {
			t.Run(fmt.Sprintf("%s/indent=%v", tc.name, indent), func(t *testing.T) {
				if got := checkIncremental(t, base, tc.after); got != tc.incremental {
					t.Errorf("parsed around the difference: %v, want %v", got, tc.incremental)
				}
			})
		}
	}
}

// FuzzIncremental: any edit of a state file gives what parsing it whole
// gives (the same state, or an error when that errs), and Changes name
// exactly the endpoints that differ.
func FuzzIncremental(f *testing.F) {
	for _, indent := range []bool{false, true} {
		b := indexedState(8, indent)
		f.Add(indent, uint16(len(b)/2), uint8(0), []byte(`{"namespace":"shop","pod":"x","ip":"10.1.7.7","labels":null},`))
		f.Add(indent, uint16(len(b)/3), uint8(5), []byte(`1`))
		f.Add(indent, uint16(len(b)-3), uint8(2), []byte(``))
	}
	f.Fuzz(func(t *testing.T, indent bool, at uint16, del uint8, insert []byte) {
		before := indexedState(8, indent)
		pos := min(int(at), len(before))
		end := min(pos+int(del), len(before))
		after := append(append(append([]byte{}, before[:pos]...), insert...), before[end:]...)
		checkIncremental(t, before, after)
	})
}

// TestIncrementalBigFile: one endpoint changed in a file of 100,000 is
// parsed in a small share of the time the whole file takes.
func TestIncrementalBigFile(t *testing.T) {
	base := indexedStateN(100000)
	after := []byte(strings.Replace(string(base), `"pod":"pod-54321"`, `"pod":"pod-54321-b"`, 1))
	p := &parser{name: "state.json"}
	start := time.Now()
	if _, err := p.parse(base); err != nil {
		t.Fatal(err)
	}
	whole := time.Since(start)
	start = time.Now()
	st, err := p.parse(after)
	if err != nil {
		t.Fatal(err)
	}
	part := time.Since(start)
	if st.Changes == nil || !slices.Equal(endpointKeys(st.Changes.Endpoints), []string{"shop/pod-54321-b"}) {
		t.Fatalf("changes: %+v", st.Changes)
	}
	t.Logf("100,000 endpoints (%d bytes): parsed whole in %s, the one-endpoint edit in %s", len(base), whole, part)
	if part*10 > whole {
		t.Errorf("the edit took %s, more than a tenth of the whole parse (%s)", part, whole)
	}
}

func indexedStateN(n int) []byte {
	st := State{Nodes: []Node{{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("192.168.1.1")}}}}
	for i := range n {
		st.Endpoints = append(st.Endpoints, &Endpoint{Namespace: "shop", Pod: fmt.Sprintf("pod-%d", i), Node: "node-1",
			IP: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%100)}})
	}
	b, _ := json.Marshal(st)
	return b
}

func BenchmarkIncrementalParse(b *testing.B) {
	base := indexedStateN(100000)
	edits := [2][]byte{[]byte(strings.Replace(string(base), `"pod":"pod-54321"`, `"pod":"pod-54321-b"`, 1)), base}
	p := &parser{name: "state.json"}
	if _, err := p.parse(base); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := p.parse(edits[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// One parser reading successive contents of a file (edits, an invalid
// content, a return to the last valid one, a YAML content, JSON again),
// through a mapping or read, delivers after
// each what parsing it whole gives, nothing when it equals the last valid
// content, and keeps the last valid state through an invalid one.
func TestParserSequence(t *testing.T) {
	for _, mapMin := range []int{1 << 30, 1} {
		t.Run(fmt.Sprint("mapMin=", mapMin), func(t *testing.T) { parserSequence(t, mapMin) })
	}
}

func parserSequence(t *testing.T, mapMin int) {
	base := indexedState(50, false)
	edit := func(f func(st *State)) []byte {
		var cp State
		json.Unmarshal(base, &cp)
		f(&cp)
		b, _ := json.Marshal(cp)
		return b
	}
	one := edit(func(s *State) { s.Endpoints[3].Labels = map[string]string{"app": "x"} })
	two := edit(func(s *State) { s.Endpoints = s.Endpoints[1:] })
	three := edit(func(s *State) { s.Endpoints = append(s.Endpoints[:40], s.Endpoints[41:]...) })
	broken := []byte(strings.Replace(string(one), `"pod-5"`, `"pod-5`, 1))
	asYAML := []byte("nodes:\n- {name: node-1, ips: [192.168.1.1]}\n")
	path := filepath.Join(t.TempDir(), "state.json")
	p := &parser{name: path, MapMin: mapMin}
	lastValid := []byte(nil)
	buffers := map[*byte]bool{}
	seq := [][]byte{base, one, broken, one, two, two, broken, base, asYAML, base, one}
	steady := len(seq) // from here, valid edits only: rebuilt in place when mapped
	seq = append(seq, two, one, three, one, two, three)
	for i, content := range seq {
		// A new file each time, renamed into place, as an atomic writer does.
		if err := os.WriteFile(path+".new", content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
		var got *State
		var err error
		if i == 0 {
			b, rerr := os.ReadFile(path)
			if rerr != nil {
				t.Fatal(rerr)
			}
			got, err = p.parse(b)
		} else {
			got, err = p.next(path)
		}
		p.settle() // as File.Run does once the State is delivered
		if p.idx != nil && !bytes.Equal(p.idx.data, lastValidAfter(content, lastValid, err)) {
			t.Fatalf("step %d: the index's content is not the last valid content", i)
		}
		if i >= steady && p.idx != nil {
			buffers[unsafe.SliceData(p.idx.data)] = true
		}
		want, wantErr := Parse(path, content)
		switch {
		case wantErr != nil:
			if err == nil {
				t.Fatalf("step %d: invalid content accepted", i)
			}
			continue
		case err != nil:
			t.Fatalf("step %d: %v", i, err)
		case bytes.Equal(content, lastValid):
			if got != nil {
				t.Fatalf("step %d: the last valid content delivered again", i)
			}
			continue
		case got == nil:
			t.Fatalf("step %d: a change not delivered", i)
		}
		cp := *got
		cp.Changes = nil
		if !reflect.DeepEqual(&cp, want) {
			t.Fatalf("step %d: parsed\n%+v\nwhole:\n%+v", i, cp.Endpoints, want.Endpoints)
		}
		lastValid = content
	}
	if mapMin == 1 && len(buffers) > 2 {
		t.Errorf("%d buffers for %d valid edits compared through a mapping: the content is not rebuilt in place", len(buffers), len(seq)-steady)
	}
}

// lastValidAfter is the last valid content after content was parsed with
// err (content when it is valid).
func lastValidAfter(content, before []byte, err error) []byte {
	if err != nil {
		return before
	}
	return content
}

// A mapping of a file that shrinks under it faults when read past the new
// end: survivingFaults reports it instead of the process dying, and the
// parser reads the file instead.
func TestMappedFileTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	content := bytes.Repeat([]byte("x"), 3*os.Getpagesize())
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, len(content), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	var sum int
	if !survivingFaults(func() {
		for _, c := range m[2*os.Getpagesize():] {
			sum += int(c)
		}
	}) {
		t.Fatalf("reading past the new end did not fault (sum %d)", sum)
	}
	if survivingFaults(func() { sum += int(m[0]) }) {
		t.Fatal("reading within the file faulted")
	}
	// Not a fault: the panic goes on.
	defer func() {
		if r := recover(); r != "boom" {
			t.Errorf("recovered %v, want the panic itself", r)
		}
	}()
	survivingFaults(func() { panic("boom") })
}
