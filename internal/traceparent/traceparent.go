// Package traceparent reads the trace id of a W3C Trace Context
// `traceparent` header ("00-<32 hex trace id>-<16 hex parent id>-<2 hex
// flags>"), which Hubble puts in an L7 flow's trace_context and its HTTP
// metrics' exemplars.
package traceparent

import "strings"

// Header is the header's name (lower case; HTTP header names are case
// insensitive).
const Header = "traceparent"

// TraceID is the trace id of a traceparent header's value, "" when the
// value is malformed: a version other than two hex digits or the
// forbidden ff, ids of the wrong length or not lower-case hex, an all-zero
// trace id.
func TraceID(value string) string {
	parts := strings.Split(strings.TrimSpace(value), "-")
	if len(parts) < 4 || len(parts[0]) != 2 || parts[0] == "ff" || len(parts[1]) != 32 || len(parts[2]) != 16 {
		return ""
	}
	if !lowerHex(parts[0]) || !lowerHex(parts[1]) || !lowerHex(parts[2]) || strings.Trim(parts[1], "0") == "" {
		return ""
	}
	return parts[1]
}

func lowerHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
