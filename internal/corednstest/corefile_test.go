package corednstest

import "testing"

func TestCorefile(t *testing.T) {
	got := corefile([]string{"cluster.local", "clusterset.local"}, "5353", "kubernetes clusterset.local {\n    multicluster clusterset.local\n}\n")
	want := "cluster.local:5353 clusterset.local:5353 {\n  bind 127.0.0.1\n  errors\n  kubernetes clusterset.local {\n      multicluster clusterset.local\n  }\n}\n"
	if got != want {
		t.Errorf("corefile:\n%s\nwant:\n%s", got, want)
	}
}
