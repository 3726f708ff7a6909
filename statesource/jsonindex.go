package statesource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"slices"
)

// A state file of hundreds of thousands of endpoints takes seconds to parse
// whole, yet an edit usually changes one endpoint. A jsonIndex keeps the
// file's last content and where each element of its "endpoints" array lies
// in it: a new content that differs from the last only inside that array
// (the common prefix and suffix of the two cover the rest) is parsed only
// around the difference, validated only there, and delivered with the
// Changes it makes. Anything else is parsed whole. A YAML file is always
// parsed whole.

// span is one JSON value's bytes, [start, end).
type span struct{ start, end int }

// jsonIndex is a parsed JSON state file and the spans of its endpoints.
type jsonIndex struct {
	data  []byte
	state *State
	// open and close are the offsets of the endpoints array's '[' and ']'.
	open, close int
	spans       []span // spans[i] is state.Endpoints[i]'s element
	nodes       map[string]bool
	nsLabels    map[string]map[string]string
	pods        map[string]int     // endpoints per key
	ips         map[netip.Addr]int // endpoints per address
}

// errUnchanged: the new content is the last one.
var errUnchanged = errors.New("unchanged")

// errNotIncremental: the new content cannot be parsed around its difference
// (it differs outside the endpoints array, or the fragment does not parse
// on its own); it is parsed whole instead.
var errNotIncremental = errors.New("not an endpoints-only edit")

// indexJSON parses and validates a JSON state file, recording where its
// endpoints are: the index is nil when the file is valid but has no
// endpoints array to edit in place (its next content is parsed whole).
// Errors are Parse's.
func indexJSON(name string, b []byte) (*jsonIndex, *State, error) {
	st, err := Parse(name, b)
	if err != nil {
		return nil, nil, err
	}
	x := &jsonIndex{data: b, state: st, open: -1}
	if err := x.locate(); err != nil {
		return nil, st, nil
	}
	x.count()
	return x, st, nil
}

// locate finds the endpoints array and its elements' spans.
func (x *jsonIndex) locate() error {
	dec := json.NewDecoder(bytes.NewReader(x.data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errNotIncremental
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return err
		}
		if key != "endpoints" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return err
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return errNotIncremental // null: no array to edit in place
		}
		x.open = int(dec.InputOffset()) - 1
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return err
			}
			end := int(dec.InputOffset())
			x.spans = append(x.spans, span{end - len(raw), end})
		}
		if _, err := dec.Token(); err != nil {
			return err
		}
		x.close = int(dec.InputOffset()) - 1
	}
	if x.open < 0 || len(x.spans) != len(x.state.Endpoints) {
		return errNotIncremental
	}
	return nil
}

// count fills the validation indexes from the state.
func (x *jsonIndex) count() {
	x.nodes = make(map[string]bool, len(x.state.Nodes))
	for _, n := range x.state.Nodes {
		x.nodes[n.Name] = true
	}
	x.nsLabels = make(map[string]map[string]string, len(x.state.Namespaces))
	for _, ns := range x.state.Namespaces {
		x.nsLabels[ns.Name] = ns.Labels
	}
	x.pods = make(map[string]int, len(x.state.Endpoints))
	x.ips = make(map[netip.Addr]int, len(x.state.Endpoints))
	for _, e := range x.state.Endpoints {
		x.add(e, 1)
	}
}

func (x *jsonIndex) add(e *Endpoint, n int) {
	x.pods[e.Key()] += n
	if e.IP.IsValid() {
		x.ips[e.IP] += n
	}
}

// update returns the index of the new content b, parsed only around its
// difference with the last content; errNotIncremental when it cannot be,
// or when the new endpoints do not validate (the caller parses the file
// whole, for the full list of what is wrong). After a successful update
// the receiver must no longer be used (the new index took over its counts
// and spans); after a failed one it is as it was.
func (x *jsonIndex) update(b []byte) (*jsonIndex, error) {
	nx, _, err := x.apply(b)
	if err != nil {
		return nil, err
	}
	nx.data = b
	return nx, nil
}

// apply is update but for the new index's data, which it leaves nil: b
// need not outlive the call (it may be a mapping of the file), the new
// content can be rebuilt from the old and the bytes parsed (rebase).
func (x *jsonIndex) apply(b []byte) (*jsonIndex, *rebase, error) {
	old := x.data
	p := commonPrefix(old, b)
	if p == len(old) && p == len(b) {
		return nil, nil, errUnchanged
	}
	s := commonSuffix(old[p:], b[p:])
	oldEnd, delta := len(old)-s, len(b)-len(old)
	if p <= x.open || oldEnd > x.close {
		return nil, nil, errNotIncremental
	}
	i0, i1, ws, weOld := x.window(p, oldEnd)
	parsed, spans, frag, err := parseElements(b[ws : weOld+delta])
	if err != nil {
		return nil, nil, errNotIncremental
	}
	if err := x.check(parsed, i0, i1, x.state.Endpoints); err != nil {
		// Parsed whole, the file gets the full list of what is wrong.
		return nil, nil, fmt.Errorf("%w: %w", errNotIncremental, err)
	}
	for i := range spans {
		spans[i].start += ws
		spans[i].end += ws
	}
	nx := x.splice(i0, i1, parsed, spans, delta)
	nx.state.Changes = changes(x.state.Endpoints[i0:i1], parsed)
	return nx, &rebase{old: old, frag: frag, ws: ws, weOld: weOld}, nil
}

// rebase is how a new content is rebuilt from the old one and the bytes
// parsed between them: old[:ws], frag, old[weOld:] (the prefix and suffix
// were found equal to the new content's when they were compared, so the
// result is exactly what the index was parsed from).
type rebase struct {
	old, frag []byte
	ws, weOld int
}

// inPlace rebuilds the new content in the old content's array, which the
// new index takes over (the old index is no longer used): it moves what
// follows the difference and copies the parsed bytes in, so that an edit
// near the end costs little. A new array, with room to grow a little, when
// the old one is too small.
func (r *rebase) inPlace() []byte {
	old := r.old
	n := r.ws + len(r.frag) + len(old) - r.weOld
	if cap(old) < n {
		buf := make([]byte, 0, n+n/8+512)
		return append(append(append(buf, old[:r.ws]...), r.frag...), old[r.weOld:]...)
	}
	buf := old[:n]
	copy(buf[r.ws+len(r.frag):], old[r.weOld:]) // copy moves overlapping bytes right
	copy(buf[r.ws:], r.frag)
	return buf
}

// window returns the old elements [i0, i1) to parse again, one more on
// each side of those the difference [p, oldEnd) touches, and the bytes
// they span, [ws, weOld): ws is in the common prefix, weOld in the
// common suffix, so that both stand at the same place in the new content
// (weOld shifted by the length difference).
func (x *jsonIndex) window(p, oldEnd int) (i0, i1, ws, weOld int) {
	n := len(x.spans)
	first, _ := slices.BinarySearchFunc(x.spans, p, func(s span, p int) int { return cmpInt(s.end, p) })
	i0 = max(first-1, 0)
	last, _ := slices.BinarySearchFunc(x.spans, oldEnd+1, func(s span, e int) int { return cmpInt(s.start, e) })
	i1 = min(last+1, n)
	ws, weOld = x.open+1, x.close
	if i0 < n && x.spans[i0].start < p {
		ws = x.spans[i0].start
	} else {
		i0 = 0
	}
	if i1 > 0 && x.spans[i1-1].end > oldEnd {
		weOld = x.spans[i1-1].end
	} else {
		i1 = n
	}
	return i0, i1, ws, weOld
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// parseElements parses frag, a comma-separated list of JSON endpoints (as
// between an array's brackets), with their spans in frag; copy is frag's
// bytes as parsed (frag is read once).
func parseElements(frag []byte) (eps []*Endpoint, spans []span, copied []byte, err error) {
	buf := make([]byte, 0, len(frag)+2)
	buf = append(append(append(buf, '['), frag...), ']')
	copied = buf[1 : len(buf)-1]
	dec := json.NewDecoder(bytes.NewReader(buf))
	dec.DisallowUnknownFields()
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return nil, nil, nil, errNotIncremental
	}
	for dec.More() {
		start := int(dec.InputOffset())
		var e *Endpoint // null stays nil: check refuses it
		if err := dec.Decode(&e); err != nil {
			return nil, nil, nil, err
		}
		end := int(dec.InputOffset())
		// The element starts after the separator and spaces before it.
		start += len(buf[start:end]) - len(bytes.TrimLeft(buf[start:end], " \t\r\n,"))
		eps = append(eps, e)
		spans = append(spans, span{start - 1, end - 1})
	}
	if t, err := dec.Token(); err != nil || t != json.Delim(']') {
		return nil, nil, nil, errNotIncremental
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, nil, errNotIncremental
	}
	return eps, spans, copied, nil
}

// splice is the new index but its data: the old one's endpoints and spans
// with [i0, i1) replaced by parsed (at spans), those after shifted by
// delta. The new
// State gets its own slice of endpoint pointers (the old State was
// delivered and stays as it was); the spans and counts move over.
func (x *jsonIndex) splice(i0, i1 int, parsed []*Endpoint, spans []span, delta int) *jsonIndex {
	st := *x.state
	st.Endpoints = make([]*Endpoint, 0, len(x.state.Endpoints)-(i1-i0)+len(parsed))
	st.Endpoints = append(append(append(st.Endpoints, x.state.Endpoints[:i0]...), parsed...), x.state.Endpoints[i1:]...)
	for _, e := range parsed {
		e.NamespaceLabels = x.nsLabels[e.Namespace]
	}
	nx := &jsonIndex{state: &st, open: x.open, close: x.close + delta,
		nodes: x.nodes, nsLabels: x.nsLabels, pods: x.pods, ips: x.ips}
	nx.spans = slices.Replace(x.spans, i0, i1, spans...)
	x.spans = nil // moved
	if delta != 0 {
		for i := i0 + len(spans); i < len(nx.spans); i++ {
			nx.spans[i].start += delta
			nx.spans[i].end += delta
		}
	}
	return nx
}

// check validates the parsed endpoints that replace old[i0:i1]: each on its
// own, and no key or address twice in the whole state. On success the
// counts are updated (they are shared with the old index, which is then
// no longer used); on failure they are left as they were.
func (x *jsonIndex) check(parsed []*Endpoint, i0, i1 int, old []*Endpoint) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidState}, args...)...))
	}
	for i := i0; i < i1; i++ {
		x.add(old[i], -1)
	}
	for i, e := range parsed {
		if e == nil {
			bad("endpoints[%d]: null", i0+i)
			continue
		}
		e.check(i0+i, x.nodes, bad)
		x.add(e, 1)
	}
	for _, e := range parsed {
		if e == nil {
			continue
		}
		if x.pods[e.Key()] > 1 && e.Namespace != "" && e.Pod != "" {
			bad("endpoint %s: duplicate", e.Key())
		}
		if e.IP.IsValid() && x.ips[e.IP] > 1 {
			bad("endpoint %s: ip %s already used by another endpoint", e.Key(), e.IP)
		}
	}
	if len(errs) > 0 {
		for _, e := range parsed {
			if e != nil {
				x.add(e, -1)
			}
		}
		for i := i0; i < i1; i++ {
			x.add(old[i], 1)
		}
		return errors.Join(errs...)
	}
	return nil
}

// changes says which endpoints of after are new or changed against before,
// and which of before are gone.
func changes(before, after []*Endpoint) *Changes {
	was := make(map[string]*Endpoint, len(before))
	for _, e := range before {
		was[e.Key()] = e
	}
	c := &Changes{}
	for _, e := range after {
		k := e.Key()
		if b, ok := was[k]; !ok || !reflect.DeepEqual(*b, *e) {
			c.Endpoints = append(c.Endpoints, e)
		}
		delete(was, k)
	}
	for k := range was {
		c.RemovedEndpoints = append(c.RemovedEndpoints, k)
	}
	slices.Sort(c.RemovedEndpoints)
	return c
}

// commonPrefix is the length of the longest common prefix of a and b:
// compared a block at a time (bytes.Equal is vectorised), then byte by
// byte within the first block that differs.
func commonPrefix(a, b []byte) int {
	const block = 4096
	n := min(len(a), len(b))
	i := 0
	for i+block <= n && bytes.Equal(a[i:i+block], b[i:i+block]) {
		i += block
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// commonSuffix is the length of the longest common suffix of a and b.
func commonSuffix(a, b []byte) int {
	const block = 4096
	n := min(len(a), len(b))
	i := 0
	for i+block <= n && bytes.Equal(a[len(a)-i-block:len(a)-i], b[len(b)-i-block:len(b)-i]) {
		i += block
	}
	for i < n && a[len(a)-1-i] == b[len(b)-1-i] {
		i++
	}
	return i
}
