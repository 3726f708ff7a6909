package enforcer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/fqdn"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// openRealMaps opens the mesh maps and the policy programs' maps pinned in
// a directory of the test's own, closed and unpinned when t ends.
func openRealMaps(t *testing.T) (*datapath.Maps, *tcpolicy.Programs) {
	t.Helper()
	testenv.RequireRoot(t)
	var b [6]byte
	rand.Read(b[:])
	dir := filepath.Join("/sys/fs/bpf", "cm-enforcer-test-"+hex.EncodeToString(b[:]))
	maps, err := datapath.OpenMaps(datapath.Config{PinDir: dir, MaxIPCache: 1 << 12, MaxServiceSlots: 1 << 10, MaxBackends: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	progs, err := tcpolicy.Open(maps, tcpolicy.Config{})
	if err != nil {
		maps.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		progs.Close()
		maps.Close()
		if err := errors.Join(tcpolicy.RemovePins(dir), datapath.RemovePins(dir)); err != nil {
			t.Errorf("RemovePins: %v", err)
		}
	})
	return maps, progs
}

// timedWriter records when the entries of each node-local peer identity
// were written (ApplyPolicy returned).
type timedWriter struct {
	tcpolicy.Writer
	mu      sync.Mutex
	written map[uint32]time.Time
}

func (w *timedWriter) ApplyPolicy(changes []tcpolicy.Change) error {
	err := w.Writer.ApplyPolicy(changes)
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range changes {
		if c.Add && c.Key.Peer&localIdentityFlag != 0 {
			w.written[c.Key.Peer] = now
		}
	}
	return err
}

func (w *timedWriter) at(id uint32) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.written[id]
	return t, ok
}

// fqdnOnRealMaps runs an enforcer on real maps with the real FQDN cache
// and the FQDN policy, and measures n answers: from the cache's Update
// (which the DNS proxy calls before it releases an answer) to the
// address's entry written in the policy map. It returns the sorted
// latencies.
func fqdnOnRealMaps(t *testing.T, n int) []time.Duration {
	maps, progs := openRealMaps(t)
	cache, err := fqdn.New(fqdn.Config{})
	if err != nil {
		t.Fatal(err)
	}
	w := &timedWriter{Writer: progs, written: map[uint32]time.Time{}}
	f := startCfg(t, func(_ *fixture, cfg *Config) {
		cfg.Policy, cfg.Attacher, cfg.FQDN, cfg.IPCache, cfg.ProxyPorts = w, nil, FQDNCache(cache), maps, &fakeProxy{}
	}, nil)
	f.writePolicy(t, "frontend.yaml", fqdnPolicy)
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	const dnsID = 1<<16 + 50
	f.e.UpsertIdentity("east", dnsID, (&wireEndpoint{ns: "kube-system", labels: map[string]string{"k8s-app": "kube-dns"}}).identity())
	close(f.ready)
	dnsKey := tcpolicy.Key{Endpoint: eastFrontend, Peer: dnsID, Direction: datapath.Egress, Protocol: datapath.UDP, Port: 53, EndPort: 53, ProxyPort: dnsEgressPort}
	testenv.WaitFor(t, 5*time.Second, "the DNS entry redirected in the real map", func() bool {
		ks, _ := progs.Policies()
		return slices.Contains(ks, dnsKey)
	})
	var lat []time.Duration
	for i := range n {
		addr := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		id := uint32(localIdentityFlag + 1 + i)
		start := time.Now()
		cache.Update(fmt.Sprintf("host%d.example.com.", i), []netip.Addr{addr}, time.Minute)
		testenv.WaitFor(t, 5*time.Second, "address entry written", func() bool { _, ok := w.at(id); return ok })
		at, _ := w.at(id)
		lat = append(lat, at.Sub(start))
	}
	ks, err := progs.Policies()
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if k := https(uint32(localIdentityFlag + 1 + i)); !slices.Contains(ks, k) {
			t.Fatalf("real policy map lacks %v", k)
		}
	}
	ipc, err := maps.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if e := ipc[netip.MustParsePrefix("198.51.0.0/32")]; e.Identity != localIdentityFlag+1 {
		t.Errorf("real ipcache: 198.51.0.0/32 has %+v", e)
	}
	slices.Sort(lat)
	return lat
}

// TestL7AndFQDNOnRealMaps: the redirected DNS entries and FQDN-selected
// addresses in the kernel's policy map and ipcache (root).
func TestL7AndFQDNOnRealMaps(t *testing.T) {
	lat := fqdnOnRealMaps(t, 50)
	t.Logf("answer → policy map: p50 %v, p99 %v, max %v", lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
}

// TestFiguresFQDN: l7.fqdn.policy_p99_ms, the p99 of the time from the FQDN
// cache's update (the DNS proxy's allowed answer) to the address's entry in
// the real policy map, over 500 answers.
func TestFiguresFQDN(t *testing.T) {
	figure.Require(t)
	lat := fqdnOnRealMaps(t, 500)
	t.Logf("answer → policy map: p50 %v, max %v", lat[len(lat)/2], lat[len(lat)-1])
	figure.Print("l7.fqdn.policy_p99_ms", float64(lat[len(lat)*99/100].Microseconds())/1000, "ms")
}
