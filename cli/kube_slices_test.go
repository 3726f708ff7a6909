package cli

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// slicesBound is how long a remote change may take to reach the local
// EndpointSlices in these tests (remote apiserver, agent sync, coalescing,
// the write); measured under a second (docs/endpointslices.md).
const slicesBound = 10 * time.Second

// The mesh of two clusters as the pods run it, with 'clustermesh slices' in
// east: west's backend of the annotated global service appears as a slice in
// east within a bounded time, follows its readiness, goes with the
// annotation, and goes on disconnect (which says so).
func TestK8sSlicesEndToEnd(t *testing.T) {
	m := startSlicesMesh(t)
	env, east, west, sock := m.env, m.east, m.west, m.sock
	eastSlice, westSlice := m.eastSlice, m.westSlice
	ctx := context.Background()
	// The status follows the write it reports (the slice may be seen first).
	var st SlicesStatus
	testenv.WaitFor(t, slicesBound, "the writer's status with west's slice", func() bool {
		st = slicesStatus(t, sock)
		return st.Writer.Leader && len(st.Writer.Services) == 1 && len(st.Writer.Services[0].Slices) == 1 &&
			st.Writer.Services[0].Slices[0].Endpoints == 1
	})
	out, err := run(ctx, "slices", "status", "--status-addr", sock)
	if err != nil || !strings.Contains(out, "leader (lease held by ") || !strings.Contains(out, "remote west: connected, synced, 1 services") ||
		!strings.Contains(out, "service shop/checkout: west 1 endpoints in 1 slices") {
		t.Errorf("slices status: %v\n%s", err, out)
	}

	// A second replica stands by: one writer, every slice once.
	standby := startSlices(t, env, east, m.remotes, "slices-2")
	testenv.WaitFor(t, slicesBound, "the second replica standing by", func() bool {
		w := slicesStatus(t, standby).Writer
		return w.Holder == "slices-1" && !w.Leader && len(slicesStatus(t, standby).Remotes) == 1
	})

	// west's backend turns not ready (west stops offering it), then ready.
	setReady(t, west, westSlice, false)
	testenv.WaitFor(t, slicesBound, "west's slice gone with its only backend", func() bool { return len(remoteAddrs(t, east, "west")) == 0 })
	setReady(t, west, westSlice, true)
	testenv.WaitFor(t, slicesBound, "west's backend back", func() bool { return len(remoteAddrs(t, east, "west")) == 1 })

	if w := slicesStatus(t, standby).Writer; w.Writes != 0 || w.Leader {
		t.Errorf("the standby replica wrote: %+v", w)
	}
	if ss, err := east.Client.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelManagedBy + "=" + k8sslices.ManagedBy}); err != nil || len(ss.Items) != 1 {
		t.Errorf("east's slices of remote backends: %v %v", ss, err)
	}

	// The annotation goes, then comes back.
	annotate(t, east, "")
	testenv.WaitFor(t, slicesBound, "the slices gone with the annotation", func() bool { return len(remoteAddrs(t, east, "west")) == 0 })
	annotate(t, east, "true")
	testenv.WaitFor(t, slicesBound, "the slices back with the annotation", func() bool { return len(remoteAddrs(t, east, "west")) == 1 })

	// east's own backend is not ready: the slice of west's backend is not a
	// local backend, so disconnect still sees checkout stranded.
	setReady(t, east, eastSlice, false)
	if err := kubeRunErr(t, env, "disconnect", "--context", "east", "--destination-context", "west"); err == nil || !strings.Contains(err.Error(), "shop/checkout in cluster east") {
		t.Errorf("disconnect counted west's slice as a local backend: %v", err)
	}
	out = kubeRun(t, env, "disconnect", "--context", "east", "--destination-context", "west", "--force")
	if !strings.Contains(out, "cluster east: deleted 1 EndpointSlices of west's backends") {
		t.Errorf("disconnect output:\n%s", out)
	}
	testenv.WaitFor(t, slicesBound, "the slices writer drops west", func() bool {
		return len(slicesStatus(t, sock).Remotes) == 0 && len(remoteAddrs(t, east, "west")) == 0
	})
}

// slicesMesh is two connected clusters, east and west, each with the
// global service shop/checkout (one pod, its slice) and its pods running
// (apiserver, agent), east's checkout annotated for slices and
// 'clustermesh slices' running in east, west's backend in its slices.
type slicesMesh struct {
	env                  *kubetest.Env
	east, west           *kubetest.Cluster
	eastSlice, westSlice *discoveryv1.EndpointSlice
	sock                 string // the slices writer's status
	remotes              string // east's remotes dir, as the kubelet mounts it
}

func startSlicesMesh(t *testing.T) *slicesMesh {
	t.Helper()
	env, east, west := twoEnabledClusters(t, false)
	ctx := context.Background()
	eastIP, westIP := loopbackIP(), loopbackIP()
	for _, x := range []struct {
		c  *kubetest.Cluster
		ip string
	}{{east, eastIP}, {west, westIP}} {
		if err := x.c.SetLoadBalancerIngress(ctx, defaultKubeNamespace, apiserverName, x.ip); err != nil {
			t.Fatal(err)
		}
	}
	kubeRun(t, env, "connect", "--context", "east", "--destination-context", "west")
	m := &slicesMesh{env: env, east: east, west: west}
	m.eastSlice = shop(t, east, "e1", "10.1.1.10")
	m.westSlice = shop(t, west, "w1", "10.2.1.10")
	annotate(t, east, "true")
	ep, _ := startPods(t, env, east, eastIP), startPods(t, env, west, westIP)
	start := time.Now()
	m.remotes = ep.remote
	m.sock = startSlices(t, env, east, ep.remote, "slices-1")
	testenv.WaitFor(t, 30*time.Second, "west's backend in an EndpointSlice of east", func() bool {
		return slices.Equal(remoteAddrs(t, east, "west"), []string{"10.2.1.10"})
	})
	t.Logf("west's backend in east's slices %s after the slices writer started", time.Since(start).Round(time.Millisecond))
	return m
}

// startSlices runs 'clustermesh slices' for c until t ends; it returns its
// status socket.
func startSlices(t *testing.T, env *kubetest.Env, c *kubetest.Cluster, configDir, identity string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), identity+".sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := run(ctx, "slices", "--cluster-name", c.Name, "--cluster-id", "1", "--config-dir", configDir,
			"--kubeconfig", env.Kubeconfig, "--context", c.Name, "--namespace", defaultKubeNamespace,
			"--status-addr", sock, "--coalesce", "20ms", "--identity", identity)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("slices: %v", err)
		}
	})
	return sock
}

// slicesStatus reads the status of 'clustermesh slices' (zero until it
// serves).
func slicesStatus(t *testing.T, sock string) SlicesStatus {
	t.Helper()
	cl := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	var st SlicesStatus
	resp, err := cl.Get("http://slices/status")
	if err != nil {
		return st
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(&st)
	return st
}

// annotate sets (or with "" removes) the sync annotation of shop/checkout.
func annotate(t *testing.T, c *kubetest.Cluster, v string) {
	t.Helper()
	ctx := context.Background()
	svc, err := c.Client.CoreV1().Services("shop").Get(ctx, "checkout", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v == "" {
		delete(svc.Annotations, k8sslices.AnnotationSyncEndpointSlices)
	} else {
		svc.Annotations[k8sslices.AnnotationSyncEndpointSlices] = v
	}
	if _, err := c.Client.CoreV1().Services("shop").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// setReady sets the readiness of the one endpoint of s (the slice of a
// shop pod, as the endpoint slice controller would).
func setReady(t *testing.T, c *kubetest.Cluster, s *discoveryv1.EndpointSlice, ready bool) {
	t.Helper()
	ctx := context.Background()
	cur, err := c.Client.DiscoveryV1().EndpointSlices(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints[0].Conditions.Ready = &ready
	if _, err := c.Client.DiscoveryV1().EndpointSlices(s.Namespace).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// remoteAddrs lists the addresses of c's slices of shop/checkout from
// cluster.
func remoteAddrs(t *testing.T, c *kubetest.Cluster, cluster string) []string {
	t.Helper()
	l, err := c.Client.DiscoveryV1().EndpointSlices("shop").List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelManagedBy + "=" + k8sslices.ManagedBy +
		"," + discoveryv1.LabelServiceName + "=checkout," + k8sslices.LabelSourceCluster + "=" + cluster})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range l.Items {
		for _, e := range s.Endpoints {
			out = append(out, e.Addresses...)
		}
	}
	slices.Sort(out)
	return out
}
