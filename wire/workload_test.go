package wire

import (
	"errors"
	"strings"
	"testing"
)

// A workload field is ours, checked, and optional; Cilium's decoders never
// see it (encoding/json ignores fields a struct lacks).
func TestIPCacheWorkload(t *testing.T) {
	c := Cluster{Name: "west", ID: 2, MaxConnectedClusters: DefaultMaxConnectedClusters}
	key := IPCacheKey("10.2.1.5")
	ok := `{"IP":"10.2.1.5","ID":131100,"K8sNamespace":"shop","K8sPodName":"frontend-7d9f8-x2k4p","clustermesh.io/workload":"Deployment/frontend"}`
	p, err := DecodeIPIdentityPair(c, key, []byte(ok))
	if err != nil || p.Workload != "Deployment/frontend" {
		t.Fatalf("decode: %+v, %v", p, err)
	}
	for _, bad := range []string{"Deployment", "Widget/frontend", "Deployment/Frontend", "Deployment/-x", "StatefulSet/"} {
		v := `{"IP":"10.2.1.5","ID":131100,"clustermesh.io/workload":"` + bad + `"}`
		if _, err := DecodeIPIdentityPair(c, key, []byte(v)); !errors.Is(err, ErrMalformedValue) {
			t.Errorf("workload %q: %v, want ErrMalformedValue", bad, err)
		}
	}
	b, err := EncodeIPIdentityPair(&IPIdentityPair{IP: p.IP, ID: p.ID, Workload: "StatefulSet/db"})
	if err != nil || !strings.Contains(string(b), `"clustermesh.io/workload":"StatefulSet/db"`) {
		t.Errorf("encode: %s, %v", b, err)
	}
	if w, err := ParseWorkload("DaemonSet/node-exporter"); err != nil || w.String() != "DaemonSet/node-exporter" {
		t.Errorf("ParseWorkload = %+v, %v", w, err)
	}
}
