package wire

import (
	"encoding/base64"
	"net/netip"
	"strconv"
)

// decodeIPIdentityPairFast decodes the common shape of an ipcache value —
// a flat object of the known keys, strings without escapes, plain integers —
// without reflection: the bulk of a remote's entries, decoded at list speed.
// It reports false for anything else (other keys, escapes, duplicates, null
// where a value is expected, numbers out of range...), and the caller then
// decodes with encoding/json, which decides and words the error. Whatever it
// accepts, encoding/json decodes to the same value (FuzzIPIdentityPairFast).
func decodeIPIdentityPairFast(b []byte, p *IPIdentityPair) bool {
	d := fastDec{b: b}
	if !d.byte('{') {
		return false
	}
	var seen uint16
	if d.peek() == '}' {
		d.i++
		return d.end()
	}
	for {
		key, ok := d.str()
		if !ok || !d.byte(':') {
			return false
		}
		bit, ok := ipFields[key]
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		if !d.field(key, p) {
			return false
		}
		switch d.next() {
		case ',':
			continue
		case '}':
			return d.end()
		default:
			return false
		}
	}
}

var ipFields = map[string]uint16{"IP": 1, "Mask": 2, "HostIP": 4, "ID": 8, "Key": 16, "Metadata": 32, "K8sNamespace": 64, "K8sPodName": 128,
	WorkloadField: 256}

// fastDec is a cursor over a JSON text.
type fastDec struct {
	b []byte
	i int
}

func (d *fastDec) skip() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *fastDec) peek() byte {
	d.skip()
	if d.i < len(d.b) {
		return d.b[d.i]
	}
	return 0
}

func (d *fastDec) next() byte {
	c := d.peek()
	if d.i < len(d.b) {
		d.i++
	}
	return c
}

func (d *fastDec) byte(c byte) bool { return d.next() == c }

// end reports whether only white space is left.
func (d *fastDec) end() bool {
	d.skip()
	return d.i == len(d.b)
}

// str reads a string without escapes or control characters.
func (d *fastDec) str() (string, bool) {
	if !d.byte('"') {
		return "", false
	}
	start := d.i
	for d.i < len(d.b) {
		switch c := d.b[d.i]; {
		case c == '"':
			s := string(d.b[start:d.i])
			d.i++
			return s, true
		case c == '\\' || c < 0x20:
			return "", false
		}
		d.i++
	}
	return "", false
}

// uint reads a plain non-negative integer of at most bits bits.
func (d *fastDec) uint(bits int) (uint64, bool) {
	d.skip()
	start := d.i
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		d.i++
	}
	digits := d.b[start:d.i]
	if len(digits) == 0 || (len(digits) > 1 && digits[0] == '0') || d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		return 0, false
	}
	n, err := strconv.ParseUint(string(digits), 10, bits)
	return n, err == nil
}

func (d *fastDec) null() bool {
	d.skip()
	if len(d.b)-d.i >= 4 && string(d.b[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

func (d *fastDec) field(key string, p *IPIdentityPair) bool {
	switch key {
	case "IP", "HostIP":
		s, ok := d.str()
		if !ok {
			return false
		}
		var a netip.Addr
		if s != "" {
			var err error
			if a, err = netip.ParseAddr(s); err != nil {
				return false
			}
		}
		if key == "IP" {
			p.IP = a
		} else {
			p.HostIP = a
		}
	case "Mask":
		if d.null() {
			p.Mask = nil
			return true
		}
		s, ok := d.str()
		if !ok {
			return false
		}
		m, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return false
		}
		p.Mask = m
	case "ID":
		n, ok := d.uint(32)
		if !ok {
			return false
		}
		p.ID = uint32(n)
	case "Key":
		n, ok := d.uint(8)
		if !ok {
			return false
		}
		p.Key = uint8(n)
	default: // Metadata, K8sNamespace, K8sPodName, WorkloadField
		s, ok := d.str()
		if !ok {
			return false
		}
		switch key {
		case "Metadata":
			p.Metadata = s
		case "K8sNamespace":
			p.K8sNamespace = s
		case WorkloadField:
			p.Workload = s
		default:
			p.K8sPodName = s
		}
	}
	return true
}
