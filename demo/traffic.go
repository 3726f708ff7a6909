package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/localmesh"
)

// requestsPerPhase is how many requests the client sends in each phase of
// the traffic step: with 60, a cluster of two serving nothing by chance
// has a probability of 2⁻⁵⁹.
const requestsPerPhase = 60

// ClientEnv is set in the environment of the demo's client process (the
// binary re-executed as `<binary> demo client URL N`), so that a binary
// other than clustermesh (a test) can recognise it.
const ClientEnv = "CLUSTERMESH_DEMO_CLIENT"

// clientResult is what the client saw: replies by "cluster/pod", failures
// by error.
type clientResult struct {
	Served map[string]int `json:"served"`
	Errors map[string]int `json:"errors,omitempty"`
}

// RunClient is the demo's client (`clustermesh demo client URL N`): n GET
// requests to url, each on a new connection (so each connect is load
// balanced anew), then one line of JSON on w: the replies counted by the
// "cluster/pod" they name, and the failures by error.
func RunClient(ctx context.Context, w io.Writer, url string, n int) error {
	c := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true}, // and no proxy from the environment
		Timeout:   2 * time.Second,
	}
	res := clientResult{Served: map[string]int{}, Errors: map[string]int{}}
	for range n {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			res.Errors[errName(err)]++
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		f := strings.Fields(string(body))
		switch {
		case err != nil:
			res.Errors["read: "+errName(err)]++
		case resp.StatusCode != http.StatusOK || len(f) != 2:
			res.Errors[fmt.Sprintf("HTTP %d %q", resp.StatusCode, body)]++
		default:
			res.Served[f[0]+"/"+f[1]]++
		}
	}
	return json.NewEncoder(w).Encode(res)
}

// errName names an error by its errno when it has one.
func errName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}

// runClient runs the client in east-node-1's namespace (the binary
// re-executed from a thread switched into it) and, with inCgroup, straight
// into the socket load balancer's cgroup (clone3 CLONE_INTO_CGROUP).
func (n *network) runClient(ctx context.Context, url string, count int, inCgroup bool) (clientResult, error) {
	cmd := exec.CommandContext(ctx, "/proc/self/exe", "demo", "client", url, strconv.Itoa(count))
	// A -race binary (a test) sleeps 1 s at exit unless told otherwise.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), ClientEnv+"=1", "GORACE="+gorace)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The client dies with the demo, even one killed with SIGKILL.
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if inCgroup {
		cg, err := os.Open(n.cgroup)
		if err != nil {
			return clientResult{}, fmt.Errorf("demo: the client's cgroup: %w", err)
		}
		defer cg.Close()
		attr.UseCgroupFD, attr.CgroupFD = true, int(cg.Fd())
	}
	cmd.SysProcAttr = attr
	if err := podnet.InNetns(n.node.NS, cmd.Start); err != nil {
		return clientResult{}, fmt.Errorf("demo: start the client: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return clientResult{}, fmt.Errorf("demo: client: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var res clientResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return clientResult{}, fmt.Errorf("demo: client answered %q: %w", stdout.Bytes(), err)
	}
	return res, nil
}

// phase is one phase of the traffic step.
type phase struct {
	name  string
	ready bool     // east's checkout pods are ready
	want  []string // the clusters that must serve, every one of them something
	res   clientResult
}

// served counts the requests served per cluster.
func (r clientResult) served() map[string]int {
	out := map[string]int{}
	for k, v := range r.Served {
		c, _, _ := strings.Cut(k, "/")
		out[c] += v
	}
	return out
}

// check fails unless every one of n requests was served by a cluster of
// want, and each cluster of want served at least one.
func (p phase) check(n int) error {
	if len(p.res.Errors) > 0 {
		return fmt.Errorf("%s: failed requests: %v", p.name, p.res.Errors)
	}
	total := 0
	for c, v := range p.res.served() {
		total += v
		if !slices.Contains(p.want, c) {
			return fmt.Errorf("%s: %s served %d of %d requests, want only %s", p.name, c, v, n, strings.Join(p.want, " and "))
		}
	}
	for _, c := range p.want {
		if p.res.served()[c] == 0 {
			return fmt.Errorf("%s: %s served none of %d requests", p.name, c, n)
		}
	}
	if total != n {
		return fmt.Errorf("%s: %d replies to %d requests", p.name, total, n)
	}
	return nil
}

// summary reads "east 60 (checkout-1 21, checkout-2 19, checkout-3 20)",
// clusters in the demo's order, then the failures.
func (r clientResult) summary() string {
	byCluster := r.served()
	var parts []string
	for _, c := range Clusters {
		if byCluster[c] == 0 {
			continue
		}
		var pods []string
		for k, v := range r.Served {
			if cl, p, _ := strings.Cut(k, "/"); cl == c {
				pods = append(pods, fmt.Sprintf("%s %d", p, v))
			}
		}
		sort.Strings(pods)
		parts = append(parts, fmt.Sprintf("%s %d (%s)", c, byCluster[c], strings.Join(pods, ", ")))
	}
	for c, v := range byCluster {
		if !slices.Contains(Clusters, c) {
			parts = append(parts, fmt.Sprintf("%s %d", c, v))
		}
	}
	if len(r.Errors) > 0 {
		failed := 0
		var errs []string
		for e, v := range r.Errors {
			failed += v
			errs = append(errs, fmt.Sprintf("%s %d", e, v))
		}
		sort.Strings(errs)
		parts = append(parts, fmt.Sprintf("failed %d (%s)", failed, strings.Join(errs, ", ")))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

func (p phase) line() string {
	return fmt.Sprintf("%-18s %d requests → %s", p.name+":", requestsPerPhase, p.res.summary())
}

// serviceURL is the service's ClusterIP and port.
func serviceURL() string {
	return "http://" + netip.AddrPortFrom(checkout.Addr, checkout.Port).String() + "/"
}

// traffic is the real traffic step.
func (d *run) traffic(ctx context.Context) (string, error) {
	east := d.m.Cluster("east")
	if _, ok := east.Agents[0].Datapath.(*datapath.Maps); !ok || d.net == nil {
		return "", fmt.Errorf("demo: %s has no eBPF maps and socket load balancer", east.Agents[0].Name)
	}
	lines := []string{fmt.Sprintf("%d pods in network namespaces, east-node-1's socket load balancer on %s: set up in %s (before the mesh)",
		len(d.net.pods), d.net.cgroup, ms(d.netSetup))}
	phases, err := d.trafficPhases(ctx)
	for _, p := range phases {
		lines = append(lines, p.line())
	}
	detail := strings.Join(lines, "\n      ")
	if err != nil {
		return "", fmt.Errorf("%w\n      %s", err, detail)
	}
	return detail, nil
}

// setupNetwork builds the pods' network (east-node-1's namespace, the
// pods', their servers) for the client's cgroup, where east-node-1's
// agent attaches its socket load balancer.
func (d *run) setupNetwork(ctx context.Context) error {
	start := time.Now()
	specs, err := checkoutPods()
	if err != nil {
		return err
	}
	nodeIP := demoState(1).Nodes[0].IPs[0]
	n, err := setupNetwork(ctx, nodeIP, specs, frontendPods(), d.o.Logger)
	if err != nil {
		return err
	}
	d.pol.setNode(n.node)
	n.cgroup = d.cgroup
	d.net, d.netSetup = n, time.Since(start)
	return nil
}

// trafficPhases runs the client with east's checkout pods ready, unready,
// then ready again, each time once every east agent's service map selects
// what the affinity asks for, and checks who served. It returns the phases
// run so far.
func (d *run) trafficPhases(ctx context.Context) (_ []phase, err error) {
	east := d.m.Cluster("east")
	phases := []phase{
		{name: "east ready", ready: true, want: []string{"east"}},
		{name: "east unready", ready: false, want: []string{"west", "north"}},
		{name: "east ready again", ready: true, want: []string{"east"}},
	}
	defer func() {
		if err != nil { // leave east as it was for the next steps
			east.WriteState(demoState(int(east.ID)))
		}
	}()
	for i := range phases {
		p := &phases[i]
		st := demoState(int(east.ID))
		want := map[uint16]int{1: backendsPerCluster}
		if !p.ready {
			want = map[uint16]int{2: backendsPerCluster, 3: backendsPerCluster}
		}
		if i > 0 {
			localmesh.SetReady(st, "checkout", p.ready)
			if err := east.WriteState(st); err != nil {
				return phases[:i], err
			}
		}
		if err := d.eastSelects(ctx, want); err != nil {
			return phases[:i], fmt.Errorf("%s: %w", p.name, err)
		}
		if p.res, err = d.net.runClient(ctx, serviceURL(), requestsPerPhase, true); err != nil {
			return phases[:i], fmt.Errorf("%s: %w", p.name, err)
		}
		if err := p.check(requestsPerPhase); err != nil {
			return phases[:i+1], err
		}
	}
	return phases, nil
}
