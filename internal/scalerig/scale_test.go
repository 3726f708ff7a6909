package scalerig

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
)

// TestScale is `make bench-scale`: clusters of Realistic state, each its
// own apiserver process, read by one agent directly; the figures of the
// scale issue. It runs only with CLUSTERMESH_SCALE=1 (it takes minutes and
// gigabytes). CLUSTERMESH_SCALE_N lists the cluster counts to bootstrap at
// (default "10 50 100"); CLUSTERMESH_BIN is the clustermesh binary;
// CLUSTERMESH_SCALE_PHASES chooses the phases after the bootstrap.
func TestScale(t *testing.T) {
	if os.Getenv("CLUSTERMESH_SCALE") != "1" {
		t.Skip("the scale rig runs with `make bench-scale` (CLUSTERMESH_SCALE=1)")
	}
	rig := newRig(t)
	steps := scaleSteps(t)
	var last *bootstrap
	for _, n := range steps {
		if !startUpTo(t, rig, n) {
			break
		}
		last = bootstrapDirect(t, rig)
		t.Logf("N=%d: direct bootstrap %.2f s for %d remote entries (%.0f entries/s), agent CPU %.2f s, %.0f B per remote entry (%s datapath)",
			n, last.seconds, last.entries, float64(last.entries)/last.seconds, last.cpu, last.bytesPerEntry, last.datapath)
	}
	if last == nil {
		t.Fatal("no cluster count of CLUSTERMESH_SCALE_N could run")
	}
	figure.Print("scale.clusters", float64(len(rig.Clusters)), "clusters")
	figure.Print("scale.bootstrap.direct_s", round(last.seconds, 2), "s")
	figure.Print("scale.memory.bytes_per_entry", round(last.bytesPerEntry, 0), "B")
	figure.Print("scale.bootstrap.direct_cpu_s", round(last.cpu, 2), "s")
	if phase("propagation") {
		propagationDirect(t, rig)
	}
	if phase("cache") {
		cacheFigures(t, rig, last)
	}
	if phase("scoped") {
		scopedImport(t)
	}
	// The big cluster's phase starts clusters of its own: the hundred stop
	// first, so that their timers do not run while its changes are timed.
	rig.Close()
	if phase("big") {
		bigClusterChange(t)
	}
}

// phase reports whether a phase after the bootstrap runs: all of them
// unless CLUSTERMESH_SCALE_PHASES lists some (propagation, cache, scoped, big;
// "none" for the bootstrap alone).
func phase(name string) bool {
	list := os.Getenv("CLUSTERMESH_SCALE_PHASES")
	return list == "" || slices.Contains(strings.Fields(list), name)
}

func newRig(t *testing.T) *Rig {
	t.Helper()
	bin := os.Getenv("CLUSTERMESH_BIN")
	if bin == "" {
		bin = "../../bin/clustermesh"
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no clustermesh binary at %q: run `make build` or set CLUSTERMESH_BIN", bin)
	}
	abs, _ := filepath.Abs(bin)
	rig, err := New(t.TempDir(), abs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rig.Close)
	return rig
}

func scaleSteps(t *testing.T) []int {
	spec := os.Getenv("CLUSTERMESH_SCALE_N")
	if spec == "" {
		spec = "10 50 100"
	}
	var steps []int
	for _, f := range strings.Fields(spec) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n >= ReaderID {
			t.Fatalf("CLUSTERMESH_SCALE_N: %q is not a cluster count 1..254", f)
		}
		steps = append(steps, n)
	}
	sort.Ints(steps)
	return steps
}

// startUpTo starts clusters until the rig has n, two at a time. It stops
// early, saying so, when the machine would run short of memory: each
// apiserver's resident size is measured, and the next is started only if
// twice the mean would still fit in MemAvailable.
func startUpTo(t *testing.T, rig *Rig, n int) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	for len(rig.Clusters) < n {
		if mean := meanRSS(rig); mean > 0 && memAvailable(t) < 2*mean*int64(n-len(rig.Clusters)) {
			t.Logf("stopping at %d clusters: %d more apiservers of %d MiB each would not fit in the %d MiB available",
				len(rig.Clusters), n-len(rig.Clusters), mean>>20, memAvailable(t)>>20)
			return false
		}
		next := uint32(len(rig.Clusters) + 1)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		started := make([]*Cluster, 2)
		for i := range 2 {
			id := next + uint32(i)
			if int(id) > n {
				break
			}
			wg.Go(func() { started[i], errs[i] = rig.prepare(ctx, id, State(id, Realistic)) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
			if started[i] != nil {
				rig.Clusters = append(rig.Clusters, started[i])
			}
		}
	}
	rss := meanRSS(rig)
	t.Logf("%d apiservers running (started in %s); one costs %d MiB resident, after publishing %d endpoints",
		len(rig.Clusters), time.Since(start).Round(time.Second), rss>>20, Realistic.Endpoints)
	figure.Print("scale.apiserver.rss_mb", float64(rss>>20), "MiB")
	return true
}

func meanRSS(rig *Rig) int64 {
	var sum, n int64
	for _, c := range rig.Clusters {
		if rss, err := c.Proc.RSS(); err == nil {
			sum, n = sum+rss, n+1
		}
	}
	if n == 0 {
		return 0
	}
	return sum / n
}

func memAvailable(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no MemAvailable in /proc/meminfo")
	return 0
}

// bootstrap is one agent's start → every remote entry in its maps.
type bootstrap struct {
	seconds, cpu  float64
	entries       int
	bytesPerEntry float64
	datapath      string // "ebpf" (as root) or "memory", which the agent's heap then includes
}

// readerAgent is an agent of the reader cluster on a watched in-memory
// datapath, reading every cluster of the rig directly.
type readerAgent struct {
	agent *agentsync.Agent
	dp    *watchedDP
	stop  func()
}

func startReader(t *testing.T, rig *Rig, dir string) *readerAgent {
	t.Helper()
	return startReaderWith(t, dir, rig.WriteRemoteConfigs)
}

// readerState is the reader cluster's state: the same global services as
// every cluster, without endpoints (the remote backends are merged into
// its service maps).
func readerState() *statesource.State {
	st := State(ReaderID-1, Realistic)
	st.Endpoints, st.Nodes = nil, nil
	return st
}

// startReaderWith starts a reader agent whose remote configs writeConfigs
// writes (directly to each cluster, or through the reader's cache).
func startReaderWith(t *testing.T, dir string, writeConfigs func(dir string) error) *readerAgent {
	t.Helper()
	configs := filepath.Join(dir, "remotes")
	if err := writeConfigs(configs); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(dir, "state.yaml")
	if err := WriteState(local, readerState()); err != nil {
		t.Fatal(err)
	}
	dp, err := newWatchedDP()
	if err != nil {
		t.Fatal(err)
	}
	a, err := agentsync.New(agentsync.Config{ClusterName: ReaderName, ClusterID: ReaderID, ConfigDir: configs,
		LocalSource: &statesource.File{Path: local}, Datapath: dp, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	r := &readerAgent{agent: a, dp: dp}
	r.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("reader agent: %v", err)
		}
		if err := dp.Close(); err != nil {
			t.Errorf("closing the reader's datapath: %v", err)
		}
	}
	return r
}

// synced reports whether every cluster of the rig is ready at the agent
// with want ipcache entries each, and the remote entries it holds.
func (r *readerAgent) synced(clusters, want int) (bool, int) {
	st := r.agent.Status()
	if len(st.Remotes) != clusters {
		return false, 0
	}
	entries := 0
	for _, rs := range st.Remotes {
		if !rs.Ready || rs.Endpoints != want {
			return false, 0
		}
		entries += rs.Nodes + rs.Endpoints + rs.Identities + rs.Services
	}
	return true, entries
}

func bootstrapDirect(t *testing.T, rig *Rig) *bootstrap {
	t.Helper()
	heapBefore := heapAlloc()
	cpuBefore := selfCPU()
	start := time.Now()
	r := startReader(t, rig, t.TempDir())
	defer r.stop()
	var entries int
	testenv.WaitFor(t, 10*time.Minute, "every cluster synced at the agent", func() bool {
		ok, n := r.synced(len(rig.Clusters), Realistic.Endpoints)
		entries = n
		return ok
	})
	b := &bootstrap{seconds: time.Since(start).Seconds(), cpu: selfCPU() - cpuBefore, entries: entries, datapath: r.dp.kind()}
	after := heapAlloc()
	for range 2 {
		after = min(after, heapAlloc())
	}
	b.bytesPerEntry = float64(int64(after)-int64(heapBefore)) / float64(entries)
	return b
}

func heapAlloc() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func round(v float64, digits int) float64 {
	p, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', digits, 64), 64)
	return p
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

// propagationDirect: an ipcache entry put into the first cluster's etcd →
// in the reader's datapath, with every cluster of the rig connected.
func propagationDirect(t *testing.T, rig *Rig) {
	t.Helper()
	r := startReader(t, rig, t.TempDir())
	defer r.stop()
	testenv.WaitFor(t, 10*time.Minute, "every cluster synced at the agent", func() bool {
		ok, _ := r.synced(len(rig.Clusters), Realistic.Endpoints)
		return ok
	})
	p99, raw99 := propagation(t, r, rig.Clusters[0], "direct")
	figure.Print("scale.propagation.direct_p99_ms", round(float64(p99.Microseconds())/1000, 3), "ms")
	figure.Print("scale.propagation.direct_p99_ratio", round(float64(p99)/float64(raw99), 2), "ratio")
}

// propagation puts and deletes an ipcache entry in c's etcd, 100 times
// each, and times each change until it is in r's datapath, alternating with
// raw put→watch on the same etcd; it returns both p99s.
func propagation(t *testing.T, r *readerAgent, c *Cluster, how string) (p99, raw99 time.Duration) {
	t.Helper()
	admin, err := c.Admin()
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	template := ipcacheTemplate(t, ctx, admin)
	probe := netip.PrefixFrom(PodAddr(c.ID, Realistic, Realistic.Endpoints+100), 32)
	r.dp.setWatch(probe)
	defer r.dp.setWatch(netip.Prefix{})
	key := "cilium/state/ip/v1/default/" + probe.Addr().String()
	template["IP"] = probe.Addr().String()
	value, _ := json.Marshal(template)
	rawWatch := admin.Watch(ctx, "cilium/raw-probe")
	const n = 1000 // a p99 of a thousand is not one sample's whim
	var lat, raw []time.Duration
	for i := range n {
		start := time.Now()
		if _, err := admin.Put(ctx, "cilium/raw-probe", strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		<-rawWatch
		raw = append(raw, time.Since(start))
		start = time.Now()
		if i%2 == 0 {
			_, err = admin.Put(ctx, key, string(value))
		} else {
			_, err = admin.Delete(ctx, key)
		}
		if err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-r.dp.hits:
			lat = append(lat, at.Sub(start))
		case <-time.After(30 * time.Second):
			t.Fatalf("change %d never reached the agent's datapath (%s)", i, how)
		}
	}
	p99, raw99 = percentile(lat, 0.99), percentile(raw, 0.99)
	t.Logf("propagation %s with %d clusters: p50 %s p99 %s; raw put→watch p50 %s p99 %s", how, r.clusters(),
		percentile(lat, 0.5), p99, percentile(raw, 0.5), raw99)
	return p99, raw99
}

func (r *readerAgent) clusters() int { return len(r.agent.Status().Remotes) }

// ipcacheTemplate is one of the cluster's published ipcache values, as a
// map (to publish another address like it).
func ipcacheTemplate(t *testing.T, ctx context.Context, cli *clientv3.Client) map[string]any {
	t.Helper()
	resp, err := cli.Get(ctx, "cilium/state/ip/v1/default/", clientv3.WithPrefix(), clientv3.WithLimit(1))
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("reading an ipcache entry: %v (%d)", err, len(resp.Kvs))
	}
	var m map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// scopedImport: what a reader imports from 5 clusters with each export
// mode: entries (the agent's count) and bytes (keys and values the
// clusters publish).
func scopedImport(t *testing.T) {
	t.Helper()
	const k = 5
	got := map[string][2]int{}
	for _, mode := range []string{"all", "global-services", "opt-in"} {
		rig := newRig(t)
		rig.ExportMode = mode
		startUpTo(t, rig, k)
		r := startReader(t, rig, t.TempDir())
		var entries int
		testenv.WaitFor(t, 5*time.Minute, "every cluster synced at the agent ("+mode+")", func() bool {
			st := r.agent.Status()
			if len(st.Remotes) != k {
				return false
			}
			entries = 0
			for _, rs := range st.Remotes {
				if !rs.Ready {
					return false
				}
				entries += rs.Nodes + rs.Endpoints + rs.Identities + rs.Services
			}
			return true
		})
		r.stop()
		got[mode] = [2]int{entries, publishedBytes(t, rig)}
		t.Logf("export mode %s: %d clusters give the agent %d entries, %d bytes", mode, k, entries, got[mode][1])
		rig.Close()
	}
	all := got["all"]
	figure.Print("scale.scoped.import_ratio", round(float64(got["global-services"][0])/float64(all[0]), 3), "ratio")
	figure.Print("scale.scoped.bytes_ratio", round(float64(got["global-services"][1])/float64(all[1]), 3), "ratio")
	figure.Print("scale.scoped.opt_in_import_ratio", round(float64(got["opt-in"][0])/float64(all[0]), 3), "ratio")
}

// publishedBytes sums the keys and values under cilium/state/ of every
// cluster of the rig.
func publishedBytes(t *testing.T, rig *Rig) int {
	t.Helper()
	total := 0
	for _, c := range rig.Clusters {
		cli, err := c.Admin()
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cli.Get(context.Background(), "cilium/state/", clientv3.WithPrefix())
		cli.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			total += len(kv.Key) + len(kv.Value)
		}
	}
	return total
}

// bigClusterChange: one endpoint added or removed in the state file of a
// cluster of 100,000 endpoints (500 nodes, 10,000 identities, 1,000
// services) → its ipcache key changed in etcd, against the same in a
// cluster of 200 endpoints, measured in the same run: changes 50 ms apart,
// each from an idle machine as an edit arrives (the figure), and back to
// back (each while the last one's aftermath still runs).
func bigClusterChange(t *testing.T) {
	t.Helper()
	small := Profile{Nodes: 2, Endpoints: 200, Identities: 20, Services: 10, BackendsPer: 10}
	big := Profile{Nodes: 500, Endpoints: 100000, Identities: 10000, Services: 1000, BackendsPer: 10}
	s := changeLatency(t, 1, small, 40)
	b := changeLatency(t, 2, big, 40)
	t.Logf("one-endpoint change → etcd, 50 ms apart: 200 endpoints p50 %s p99 %s; 100,000 endpoints p50 %s p99 %s",
		s.paced[0], s.paced[1], b.paced[0], b.paced[1])
	t.Logf("one-endpoint change → etcd, back to back: 200 endpoints p50 %s p99 %s; 100,000 endpoints p50 %s p99 %s",
		s.backToBack[0], s.backToBack[1], b.backToBack[0], b.backToBack[1])
	figure.Print("scale.big_cluster.change_p50_ms", round(float64(b.paced[0].Microseconds())/1000, 1), "ms")
	figure.Print("scale.big_cluster.change_ratio", round(float64(b.paced[0])/float64(s.paced[0]), 2), "ratio")
	figure.Print("scale.big_cluster.back_to_back_ratio", round(float64(b.backToBack[0])/float64(s.backToBack[0]), 2), "ratio")
}

// changeFigures are the p50 and p99 of a cluster's changes, paced and back
// to back.
type changeFigures struct{ paced, backToBack [2]time.Duration }

// changeLatency runs one cluster of profile p and measures n one-endpoint
// changes from the state file's rename to etcd, 50 ms apart, then n back
// to back, each after two not measured (the first changes after a start
// also pay for what the start left to collect).
func changeLatency(t *testing.T, id uint32, p Profile, n int) changeFigures {
	t.Helper()
	rig := newRig(t)
	defer rig.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	probe := newChangeProbe(ctx, t, rig, id, p)
	defer probe.stop()
	runtime.GC() // what the earlier phases left in this process is not collected while changes are timed
	paced := probe.run(t, n, 50*time.Millisecond)
	backToBack := probe.run(t, n, 0)
	return changeFigures{
		paced:      [2]time.Duration{percentile(paced, 0.5), percentile(paced, 0.99)},
		backToBack: [2]time.Duration{percentile(backToBack, 0.5), percentile(backToBack, 0.99)},
	}
}

// changeProbe changes one cluster's state file by one endpoint and times
// the change's arrival in its etcd.
type changeProbe struct {
	c       *Cluster
	admin   *clientv3.Client
	files   map[bool]string // the state with the probe endpoint, and without
	added   bool            // the state in place has the probe endpoint
	arrived chan time.Time
	cancel  context.CancelFunc
}

// newChangeProbe starts cluster id of profile p in rig and watches the key
// of its probe endpoint.
func newChangeProbe(ctx context.Context, t *testing.T, rig *Rig, id uint32, p Profile) *changeProbe {
	t.Helper()
	base := State(id, p)
	c, err := rig.prepare(ctx, id, base)
	if err != nil {
		t.Fatal(err)
	}
	rig.Clusters = append(rig.Clusters, c)
	admin, err := c.Admin()
	if err != nil {
		t.Fatal(err)
	}
	probe := PodAddr(id, p, p.Endpoints+1)
	with := State(id, p)
	with.Endpoints = append(with.Endpoints, &statesource.Endpoint{Namespace: "bulk", Pod: "probe", Node: "node-0",
		IP: probe, Labels: map[string]string{"app": "app-0"}})
	// A change is the rename of a file written beforehand.
	cp := &changeProbe{c: c, admin: admin, files: map[bool]string{true: c.StateFile + ".with", false: c.StateFile + ".base"},
		arrived: make(chan time.Time, 1)}
	if err := writeFile(cp.files[true], with); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(cp.files[false], base); err != nil {
		t.Fatal(err)
	}
	// The event's arrival is timed by its own goroutine: the rename of a
	// file of megabytes that nobody holds open also frees its pages, in
	// the writer's rename call, while the apiserver works.
	wctx, cancel := context.WithCancel(ctx)
	cp.cancel = cancel
	watch := admin.Watch(wctx, "cilium/state/ip/v1/default/"+probe.String())
	go func() {
		defer close(cp.arrived)
		for range watch {
			cp.arrived <- time.Now()
		}
	}()
	return cp
}

// run makes n changes (adding and removing the probe endpoint in turn),
// pace apart (0: each once the last arrived), after two not measured, and
// returns their times.
func (cp *changeProbe) run(t *testing.T, n int, pace time.Duration) []time.Duration {
	t.Helper()
	const warmup = 2
	var tick <-chan time.Time
	if pace > 0 {
		ticker := time.NewTicker(pace)
		defer ticker.Stop()
		tick = ticker.C
	}
	var lat []time.Duration
	for i := range n + warmup {
		if tick != nil {
			<-tick
		}
		if d := cp.change(t); i >= warmup {
			lat = append(lat, d)
		}
	}
	return lat
}

// change renames the state with the probe endpoint, or without it, into
// place and returns the time until its key changed in etcd.
func (cp *changeProbe) change(t *testing.T) time.Duration {
	t.Helper()
	cp.added = !cp.added
	tmp := cp.c.StateFile + ".next"
	if err := copyFile(cp.files[cp.added], tmp); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := os.Rename(tmp, cp.c.StateFile); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-cp.arrived:
		return at.Sub(start)
	case <-time.After(2 * time.Minute):
		t.Fatalf("a change of %s never reached its etcd", cp.c.Name)
		return 0
	}
}

// stop ends the watch and waits for its goroutine.
func (cp *changeProbe) stop() {
	cp.cancel()
	for range cp.arrived { // until the watch ends
	}
	cp.admin.Close()
}

func writeFile(path string, st *statesource.State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// copyFile copies from into a new file to, streaming (the test process
// allocates nothing per change: its own collector is not timed).
func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(out, in, copyBuf[:]); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyBuf is copyFile's buffer (the rig's phases run one at a time).
var copyBuf [1 << 20]byte

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
