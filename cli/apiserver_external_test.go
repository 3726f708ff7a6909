package cli

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestAPIServerExternalEtcdFlags: the flags of an external etcd cluster
// and those of the embedded one are not mixed, each refusal saying which
// flag goes with which; an endpoint that is not https is refused before
// anything connects.
func TestAPIServerExternalEtcdFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := []string{"apiserver", "--cluster-name", "east", "--cluster-id", "1", "--cert-dir", t.TempDir(), "--state-file", "/nonexistent.yaml"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--etcd-cert", "x.crt"}, "--etcd-cert is for an external etcd cluster: give --etcd-endpoints too"},
		{[]string{"--election-ttl", "3s"}, "--election-ttl is for an external etcd cluster"},
		{[]string{"--etcd-endpoints", "https://10.0.0.1:2379", "--listen", "127.0.0.1:2379"}, "--listen configures the embedded etcd"},
		{[]string{"--etcd-endpoints", "https://10.0.0.1:2379", "--data-dir", "/tmp/x"}, "--data-dir configures the embedded etcd"},
		{[]string{"--etcd-endpoints", "http://10.0.0.1:2379"}, `etcd endpoint "http://10.0.0.1:2379": want https://host:port`},
		{[]string{"--etcd-endpoints", "https://10.0.0.1:2379", "--election-ttl", "1500ms"}, "want whole seconds"},
	} {
		_, err := run(ctx, append(base, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}
