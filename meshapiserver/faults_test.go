package meshapiserver

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wire"
)

// TestCompactsHistory: etcd keeps every superseded revision unless told to
// compact; a long-running apiserver with churn would fill its 2 GiB quota,
// after which etcd refuses every write. Old revisions are compacted after
// the retention.
func TestCompactsHistory(t *testing.T) {
	f := newFixture(t)
	f.historyRetention = time.Second
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	resp, err := get(t, admin, wire.HeartbeatKey)
	if err != nil {
		t.Fatal(err)
	}
	old := resp.Header.Revision
	writeFile(t, f.state, strings.Replace(eastState, "- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}\n", "", 1))
	testenv.WaitFor(t, 20*time.Second, fmt.Sprintf("revision %d compacted", old), func() bool {
		f.running(t)
		_, err := get(t, admin, wire.HeartbeatKey, clientv3.WithRev(old))
		return errors.Is(err, rpctypes.ErrCompacted)
	})
}
