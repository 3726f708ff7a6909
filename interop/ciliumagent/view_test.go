package ciliumagent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/ipcache"
	"github.com/cilium/cilium/pkg/labels"
	nodeTypes "github.com/cilium/cilium/pkg/node/types"
	"github.com/cilium/cilium/pkg/source"
)

// view is what Cilium's ClusterMesh handed to the agent's parts: the node
// manager (nodes), the service merger (global services), the ipcache
// (ipcache entries) and the identity allocator's owner (identities), plus
// what it logged. Each of these is a method of view, recorded under mu.
type view struct {
	mu       sync.Mutex
	changed  chan struct{}
	nodes    map[string]nodeTypes.Node              // by name
	services map[string]serviceStore.ClusterService // by namespace/name
	ips      map[string]ipEntry                     // by prefix
	ids      map[identity.NumericIdentity]labels.LabelArray
	logs     []logRecord
}

type ipEntry struct {
	hostIP        net.IP
	id            identity.NumericIdentity
	source        source.Source
	namespace     string
	pod           string
	withK8sMeta   bool
	encryptionKey uint8
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs string
}

func (r logRecord) String() string { return fmt.Sprintf("%s %s %s", r.level, r.msg, r.attrs) }

func newView() *view {
	return &view{
		changed:  make(chan struct{}, 1),
		nodes:    map[string]nodeTypes.Node{},
		services: map[string]serviceStore.ClusterService{},
		ips:      map[string]ipEntry{},
		ids:      map[identity.NumericIdentity]labels.LabelArray{},
	}
}

func (v *view) update(f func()) {
	v.mu.Lock()
	f()
	v.mu.Unlock()
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds, checked after every change the view
// records and at least every 50ms (Cilium's status has no change
// notification), or fails t after the deadline with cond's last complaint.
// cond runs without v.mu: Cilium calls the view while it holds locks of its
// own that its Status takes too, so v.mu is never held across a call into
// Cilium (the view's methods take it themselves).
func (v *view) waitFor(t *testing.T, what string, cond func(*view) error) {
	t.Helper()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond(v)
		if err == nil {
			return
		}
		select {
		case <-v.changed:
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("waiting for %s: after 60s: %v\nCilium's warnings:\n%s", what, err, v.warnings())
		}
	}
}

// warnings is what was logged at warning level or above, one per line.
func (v *view) warnings() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	for _, r := range v.logs {
		if r.level >= slog.LevelWarn {
			b.WriteString(r.String() + "\n")
		}
	}
	return b.String()
}

// expectedWarnings are what Cilium logs when a remote's etcd restarts
// (a new etcd cluster id) or is down: anything else it warns about (a value
// it cannot unmarshal, an entry a validator refuses, a configuration it
// rejects) fails the test.
var expectedWarnings = map[string]bool{
	"Error observed on etcd connection, reconnecting etcd":  true,
	"Unable to establish etcd connection to remote cluster": true,
}

// unexpectedWarnings is what was logged at warning level or above that
// expectedWarnings does not name, one per line.
func (v *view) unexpectedWarnings() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var b strings.Builder
	for _, r := range v.logs {
		if r.level >= slog.LevelWarn && !expectedWarnings[r.msg] {
			b.WriteString(r.String() + "\n")
		}
	}
	return b.String()
}

// count is how many records with this message were logged.
func (v *view) count(msg string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, r := range v.logs {
		if r.msg == msg {
			n++
		}
	}
	return n
}

// NodeUpdated and NodeDeleted: nodeStore.NodeManager (the agent's node
// manager).
func (v *view) NodeUpdated(n nodeTypes.Node) { v.update(func() { v.nodes[n.Name] = n }) }
func (v *view) NodeDeleted(n nodeTypes.Node) { v.update(func() { delete(v.nodes, n.Name) }) }

// MergeExternalServiceUpdate and MergeExternalServiceDelete:
// clustermesh.ServiceMerger (the agent's load balancer).
func (v *view) MergeExternalServiceUpdate(s *serviceStore.ClusterService) {
	v.update(func() { v.services[s.NamespaceServiceName().String()] = *s })
}

func (v *view) MergeExternalServiceDelete(s *serviceStore.ClusterService) {
	v.update(func() { delete(v.services, s.NamespaceServiceName().String()) })
}

// Upsert and Delete: ipcache.IPCacher (the agent's ipcache).
func (v *view) Upsert(ip string, hostIP net.IP, hostKey uint8, meta *ipcache.K8sMetadata, id ipcache.Identity) (bool, error) {
	e := ipEntry{hostIP: hostIP, id: id.ID, source: id.Source, encryptionKey: hostKey}
	if meta != nil {
		e.withK8sMeta, e.namespace, e.pod = true, meta.Namespace, meta.PodName
	}
	v.update(func() { v.ips[ip] = e })
	return false, nil
}

func (v *view) Delete(ip string, _ source.Source) bool {
	v.update(func() { delete(v.ips, ip) })
	return false
}

// UpdateIdentities and GetNodeSuffix: cache.IdentityAllocatorOwner (the
// agent's policy engine, told of every identity of every cluster).
func (v *view) UpdateIdentities(added, deleted identity.IdentityMap) <-chan struct{} {
	v.update(func() {
		for id := range deleted {
			delete(v.ids, id)
		}
		for id, ls := range added {
			v.ids[id] = slices.Clone(ls)
		}
	})
	done := make(chan struct{})
	close(done)
	return done
}

func (v *view) GetNodeSuffix() string { return "west-1" }

// AddClusterMeshConfig and DelClusterMeshConfig:
// clustermesh.ClusterMeshMetrics (feature metrics, not looked at).
func (v *view) AddClusterMeshConfig(string, string) {}
func (v *view) DelClusterMeshConfig(string, string) {}

// logHandler records Cilium's log records (info and above) in the view.
type logHandler struct {
	v     *view
	attrs []slog.Attr
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	parts := make([]string, 0, len(h.attrs)+r.NumAttrs())
	for _, a := range h.attrs {
		parts = append(parts, a.String())
	}
	r.Attrs(func(a slog.Attr) bool { parts = append(parts, a.String()); return true })
	rec := logRecord{level: r.Level, msg: r.Message, attrs: strings.Join(parts, " ")}
	h.v.update(func() { h.v.logs = append(h.v.logs, rec) })
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{v: h.v, attrs: append(slices.Clone(h.attrs), as...)}
}

func (h *logHandler) WithGroup(string) slog.Handler { return h }
