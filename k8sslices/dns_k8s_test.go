package k8sslices_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// corednsVersion is the CoreDNS tools/coredns/build.sh builds.
const corednsVersion = "v1.15.0"

// requireCoreDNS returns the CoreDNS binary ($COREDNS, else the build
// script's cache), or skips t (fails it under CI=true) when there is none.
func requireCoreDNS(t *testing.T) string {
	t.Helper()
	p := os.Getenv("COREDNS")
	if p == "" {
		dir, _ := os.UserCacheDir()
		p = filepath.Join(dir, "clustermesh", "coredns-"+corednsVersion)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
		msg := fmt.Sprintf("no CoreDNS at %q: run tools/coredns/build.sh (about a minute) or set COREDNS", p)
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// startCoreDNS runs CoreDNS serving cluster.local from cluster's API
// server on a loopback UDP port until t ends; it returns a resolver asking
// it.
func startCoreDNS(t *testing.T, env *kubetest.Env, cluster string) *net.Resolver {
	t.Helper()
	bin := requireCoreDNS(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	corefile := fmt.Sprintf("cluster.local:%s {\n  bind 127.0.0.1\n  errors\n  kubernetes cluster.local {\n    kubeconfig %s %s\n  }\n}\n", port, env.Kubeconfig, cluster)
	if err := os.WriteFile(filepath.Join(dir, "Corefile"), []byte(corefile), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "coredns.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-conf", filepath.Join(dir, "Corefile"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("CoreDNS log:\n%s", out)
		}
	})
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", addr)
	}}
}

// lookup is the sorted addresses name resolves to (none on any error).
func lookup(r *net.Resolver, name string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		return nil
	}
	slices.Sort(addrs)
	return addrs
}

// A headless global service resolves, through the cluster DNS (real
// CoreDNS and its kubernetes plugin), to the remote backends the writer put
// in its EndpointSlices; it follows them, and resolves to nothing once the
// annotation goes.
func TestK8sSlicesHeadlessDNS(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	dns := startCoreDNS(t, env, "east")
	createService(t, client, "web", globalSync()) // headless
	src := newSource()
	src.set("default", "web", "west", 8080, "10.2.0.1", "10.2.0.2")
	src.set("default", "web", "north", 8080, "10.3.0.1")
	run(t, client, src, "a", nil)
	const name = "web.default.svc.cluster.local"
	testenv.WaitFor(t, 30*time.Second, name+" resolving to west's and north's backends", func() bool {
		return slices.Equal(lookup(dns, name), []string{"10.2.0.1", "10.2.0.2", "10.3.0.1"})
	})
	src.set("default", "web", "west", 8080, "10.2.0.3")
	testenv.WaitFor(t, wait, name+" following west", func() bool {
		return slices.Equal(lookup(dns, name), []string{"10.2.0.3", "10.3.0.1"})
	})
	svc, err := client.CoreV1().Services("default").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(svc.Annotations, k8sslices.AnnotationSyncEndpointSlices)
	if _, err := client.CoreV1().Services("default").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, name+" resolving to nothing without the annotation", func() bool { return len(lookup(dns, name)) == 0 })
}
