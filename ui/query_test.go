package ui

import (
	"net/url"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

func TestQueryOf(t *testing.T) {
	q, err := queryOf(url.Values{"cluster": {"east"}, "namespace": {"shop"}, "verdict": {"dropped"}, "window": {"30s"}})
	if err != nil || q.Cluster != "east" || q.Namespace != "shop" || q.Verdict != flowpb.Verdict_DROPPED || q.Window != 30*time.Second {
		t.Errorf("query %+v, %v", q, err)
	}
	for _, bad := range []url.Values{{"verdict": {"MAYBE"}}, {"window": {"-1s"}}, {"window": {"soon"}}} {
		if _, err := queryOf(bad); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}

// FuzzQueryOf parses arbitrary page selections: an error or a query, never
// a panic nor a negative window.
func FuzzQueryOf(f *testing.F) {
	f.Add("cluster=east&namespace=shop&verdict=DROPPED&window=5m")
	f.Add("window=1h30m&verdict=forwarded")
	f.Add("%zz&window=")
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := queryOf(v)
		if err == nil && q.Window < 0 {
			t.Fatalf("%q: negative window %v", raw, q.Window)
		}
	})
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost:12000": true, "127.0.0.1:12000": true, "[::1]:12000": true, "127.0.0.2": true, "localhost": true,
		"evil.example:12000": false, "10.0.0.1:12000": false, "localhost.evil.example": false, "": false,
	} {
		if got := loopbackHost(host); got != want {
			t.Errorf("loopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}
