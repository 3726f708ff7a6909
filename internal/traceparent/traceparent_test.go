package traceparent

import "testing"

func TestTraceID(t *testing.T) {
	for v, want := range map[string]string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":   "4bf92f3577b34da6a3ce929d0e0e4736",
		" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ": "4bf92f3577b34da6a3ce929d0e0e4736",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01":   "", // all zero: invalid
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":   "", // version ff: invalid
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01":   "", // upper case: invalid
		"00-4bf92f35-00f067aa0ba902b7-01":                           "",
		"HUBBLE_REDACTED":                                           "",
		"":                                                          "",
	} {
		if got := TraceID(v); got != want {
			t.Errorf("TraceID(%q) = %q, want %q", v, got, want)
		}
	}
}

func FuzzTraceID(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("--")
	f.Fuzz(func(t *testing.T, v string) {
		if id := TraceID(v); id != "" && (len(id) != 32 || !lowerHex(id)) {
			t.Fatalf("TraceID(%q) = %q: not 32 lower-case hex digits", v, id)
		}
	})
}
