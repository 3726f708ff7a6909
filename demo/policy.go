package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/localmesh"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The policy part of the demo: east-node-1 (state node node-1) enforces
// checkoutPolicy on east's checkout pod of that node, checkout-2, whose
// host-side veth is east-ck2 in east-node-1's namespace. The frontends of
// west and north are pods of that namespace too; west's may connect,
// north's is dropped, and the flows say so.

// policyNode is the state node east-node-1 stands for.
const policyNode = "node-1"

// checkoutPolicy lets east's checkout pods accept HTTP (8080) only from
// frontends of east and west.
const checkoutPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: checkout-from-frontends
  namespace: shop
spec:
  endpointSelector:
    matchLabels: {app: checkout}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [east, west]}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
`

// demoState is the state of demo cluster id: the sample state, with the
// host-side interface of east's checkout pod on east-node-1.
func demoState(id int) *statesource.State {
	st := localmesh.SampleState(id)
	if id != 1 {
		return st
	}
	perCluster := 0
	for i := range st.Endpoints {
		if ep := &st.Endpoints[i]; ep.Labels["app"] == "checkout" {
			perCluster++ // the network names veths in state order
			if ep.Node == policyNode {
				ep.Interface = podVethName("east", "ck", perCluster)
			}
		}
	}
	return st
}

// frontendPods are the policy step's clients: west's and north's
// frontend-1.
func frontendPods() []podSpec {
	var out []podSpec
	for i, c := range Clusters {
		if c == "east" {
			continue
		}
		for _, e := range localmesh.SampleState(i + 1).Endpoints {
			if e.Pod == "frontend-1" {
				out = append(out, podSpec{cluster: c, name: e.Pod, ip: e.IP})
			}
		}
	}
	return out
}

// policyRun is east-node-1's enforcer and flows.
type policyRun struct {
	enf  *enforcer.Enforcer
	dp   datapath.PolicyWriter
	hub  *observe.Hub
	node atomic.Pointer[podnet.Node] // east-node-1's namespace, once the traffic's network is up

	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   []error // of the goroutines, once wg is done
	mu     sync.Mutex
	// setupErr is why agentHook could not give east-node-1 an enforcer.
	setupErr error
	agent    *agentsync.Agent // east-node-1's, set by start before the enforcer runs
}

// agentHook returns a localmesh agent hook that gives east's first agent
// (east-node-1) an enforcer of the policies in dir, then calls next.
func (p *policyRun) agentHook(dir string, next func(*agentsync.Config)) func(*agentsync.Config) {
	return func(cfg *agentsync.Config) {
		if next != nil {
			next(cfg)
		}
		if cfg.ClusterName != "east" || p.enf != nil {
			return
		}
		pw, ok := cfg.Datapath.(datapath.PolicyWriter)
		if !ok {
			return
		}
		ecfg := enforcer.Config{ClusterName: cfg.ClusterName, ClusterID: uint16(cfg.ClusterID), NodeName: policyNode,
			PolicyDir: dir, Policy: pw, ReloadInterval: 100 * time.Millisecond, Logger: cfg.Logger,
			RetainedClusters: func() []uint16 { return p.agent.RetainedClusters() }, MaxConnectedClusters: cfg.MaxConnectedClusters}
		if maps, ok := cfg.Datapath.(*datapath.Maps); ok {
			ecfg.Attacher = enforcer.MapsAttacher{Maps: maps, InNetns: p.inNode}
			cfg.RecheckFlows = maps.RecheckFlows
		}
		enf, err := enforcer.New(ecfg)
		if err != nil {
			p.setupErr = err // start reports it
			return
		}
		p.enf, p.dp = enf, pw
		cfg.LocalSource, cfg.Identities = enf.WrapSource(cfg.LocalSource), enf
		cfg.NodeName = policyNode // the node's address is the host identity
	}
}

// inNode runs fn in east-node-1's namespace, once there is one.
func (p *policyRun) inNode(fn func() error) error {
	n := p.node.Load()
	if n == nil {
		return errors.New("demo: east-node-1's namespace is not set up (real traffic off)")
	}
	return podnet.InNetns(n.NS, fn)
}

// writePolicy writes checkoutPolicy into a new policy directory under dir.
func writePolicy(dir string) (string, error) {
	pdir := filepath.Join(dir, "policies", "east")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return "", err
	}
	return pdir, os.WriteFile(filepath.Join(pdir, "checkout.yaml"), []byte(checkoutPolicy), 0o644)
}

// start runs the enforcer (writing once agent a synced) and, on eBPF
// maps, the flow hub.
func (p *policyRun) start(ctx context.Context, a *localmesh.Agent, clusterName func(uint16) string) error {
	if p.enf == nil {
		return fmt.Errorf("demo: east-node-1's policy enforcer: %w", errors.Join(p.setupErr, errors.New("not set up")))
	}
	p.agent = a.Sync
	ctx, p.cancel = context.WithCancel(ctx)
	run := func(fn func(context.Context) error) {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				p.mu.Lock()
				p.errs = append(p.errs, err)
				p.mu.Unlock()
			}
		}()
	}
	run(func(ctx context.Context) error { return p.enf.Run(ctx, a.Sync.Pruned()) })
	maps, ok := a.Datapath.(*datapath.Maps)
	if !ok {
		return nil
	}
	if err := maps.SetFlowConfig(datapath.FlowConfig{TraceNew: true, ClusterID: 1}); err != nil {
		return err
	}
	flows, err := datapath.OpenFlows(maps)
	if err != nil {
		return err
	}
	p.hub = observe.NewHub(observe.Config{Enricher: enricher{p.enf, clusterName}})
	run(func(ctx context.Context) error {
		defer flows.Close()
		return p.hub.Run(ctx, flows)
	})
	return nil
}

// enricher names clusters by the agent's reservations.
type enricher struct {
	*enforcer.Enforcer
	clusterName func(uint16) string
}

func (e enricher) ClusterName(id uint16) string { return e.clusterName(id) }

// close stops the enforcer and the hub; the attachments are detached with
// the network (its veths go).
func (p *policyRun) close() error {
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	p.wg.Wait()
	return errors.Join(p.errs...)
}

// policyStep checks the policy: computed in every mode, and on real
// packets when there is traffic.
func (d *run) policyStep(ctx context.Context) (string, error) {
	entries, err := d.policyComputed(ctx)
	if err != nil || d.net == nil {
		return entries, err
	}
	return d.policyTraffic(ctx, entries)
}

// policyComputed waits until east-node-1's policy map holds exactly the
// allow entries of checkoutPolicy.
func (d *run) policyComputed(ctx context.Context) (string, error) {
	var ids map[string]uint32
	var got []datapath.PolicyKey
	err := waitUntil(ctx, func() (bool, string) {
		ids = d.pol.identities()
		var err error
		if got, err = d.pol.dp.Policies(); err != nil {
			return false, err.Error()
		}
		want := []datapath.PolicyKey{
			{Endpoint: ids["east/checkout"], Peer: wire.IdentityHost, Direction: datapath.Ingress},
			{Endpoint: ids["east/checkout"], Peer: ids["east/frontend"], Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080},
			{Endpoint: ids["east/checkout"], Peer: ids["west/frontend"], Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080},
		}
		slices.SortFunc(want, func(a, b datapath.PolicyKey) int { return int(a.Peer) - int(b.Peer) })
		if len(ids) < 6 || !slices.Equal(got, want) {
			return false, fmt.Sprintf("east-node-1's policy map %v, want %v", got, want)
		}
		return true, ""
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("east checkout (identity %d) accepts TCP 8080 from east frontend (%d) and west frontend (%d), not north frontend (%d), and its node (host): %d policy entries",
		ids["east/checkout"], ids["east/frontend"], ids["west/frontend"], ids["north/frontend"], len(got)), nil
}

// identities maps "cluster/app" to the identity east-node-1 knows.
func (p *policyRun) identities() map[string]uint32 {
	out := map[string]uint32{}
	for i, c := range Clusters {
		for _, ep := range localmesh.SampleState(i + 1).Endpoints {
			want := ep.IdentityLabels(c).String()
			for id := uint32(i+1) << 16; id < uint32(i+1)<<16+64; id++ {
				if ls, ok := p.enf.Identity(id); ok && ls.String() == want {
					out[c+"/"+ep.Labels["app"]] = id
				}
			}
		}
	}
	return out
}

// policyTraffic connects west's and north's frontends to east's checkout
// pod, and prints the flows the policy programs reported.
func (d *run) policyTraffic(ctx context.Context, computed string) (string, error) {
	var target *pod
	for _, p := range d.net.pods {
		if p.cluster == "east" && p.HostVeth == podVethName("east", "ck", 2) {
			target = p
		}
	}
	err := waitUntil(ctx, func() (bool, string) {
		for _, ep := range d.pol.enf.Status().Endpoints {
			if ep.Pod == target.name && ep.State == enforcer.StateEnforcing && ep.EnforceIngress {
				return true, ""
			}
		}
		return false, "east checkout-2 not enforcing yet"
	})
	if err != nil {
		return "", err
	}
	to := netip.AddrPortFrom(target.IP, d.net.port)
	lines := []string{computed}
	for _, c := range []struct {
		cluster string
		allowed bool
	}{{"west", true}, {"north", false}} {
		from := d.net.frontends[c.cluster]
		timeout := 300 * time.Millisecond // a dropped SYN: no answer to wait for
		if c.allowed {
			timeout = 3 * time.Second // a loaded machine may be slow to answer
		}
		reply, err := httpGet(from, to, timeout)
		switch {
		case c.allowed && err != nil:
			return "", fmt.Errorf("%s frontend → %s: %w, want allowed", c.cluster, to, err)
		case !c.allowed && err == nil:
			return "", fmt.Errorf("%s frontend → %s: answered %q, want dropped", c.cluster, to, reply)
		case c.allowed:
			lines = append(lines, fmt.Sprintf("%s/frontend-1 → %s: answered %q", c.cluster, to, reply))
		default:
			lines = append(lines, fmt.Sprintf("%s/frontend-1 → %s: %v (dropped)", c.cluster, to, err))
		}
	}
	flows, err := d.pol.flowsTo(ctx, "shop/"+target.name)
	if err != nil {
		return "", err
	}
	lines = append(lines, "clustermesh observe --to-pod shop/"+target.name+" (the frontends' flows):")
	for _, f := range flows {
		lines = append(lines, "  "+f)
	}
	return strings.Join(lines, "\n      "), nil
}

// flowsTo waits for a forwarded and a dropped flow to pod and returns the
// flows to it in the hub, formatted as `clustermesh observe` prints them.
func (p *policyRun) flowsTo(ctx context.Context, pod string) ([]string, error) {
	var f observe.Filter
	if err := f.Set("to-pod", pod); err != nil {
		return nil, err
	}
	var out []string
	err := waitUntil(ctx, func() (bool, string) {
		out = out[:0]
		verdicts := map[string]bool{}
		sub := p.hub.Subscribe(f, 20, false)
		defer sub.Close()
		for ev := range sub.Events() {
			if ev.Flow != nil && ev.Flow.Source.Identity != wire.IdentityHost { // the traffic step's
				verdicts[ev.Flow.Verdict] = true
				var b strings.Builder
				observe.WriteCompact(&b, ev)
				out = append(out, strings.TrimSpace(b.String()))
			}
		}
		return verdicts[observe.VerdictForwarded] && verdicts[observe.VerdictDropped], fmt.Sprintf("flows to %s: %v", pod, out)
	})
	return out, err
}

// httpGet sends one HTTP/1.0 GET from pod from to to, on a thread in the
// pod's namespace, and returns the reply's body.
func httpGet(from *podnet.Pod, to netip.AddrPort, timeout time.Duration) (string, error) {
	var body string
	err := podnet.InNetns(from.NS, func() error {
		c, err := net.DialTimeout("tcp", to.String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		_, after, _ := strings.Cut(string(b), "\r\n\r\n")
		body = strings.TrimSpace(after)
		return nil
	})
	return body, err
}

// agentStatus is an agent's status as `clustermesh agent` serves it (the
// same JSON), with the policy enforcer's for east-node-1.
type agentStatus struct {
	agentsync.Status
	Policy *enforcer.Status `json:"policy,omitempty"`
}

// statusOf is what the demo serves for agent a: its status, and for
// east-node-1 its policy and its flows (for `clustermesh observe`).
func (d *run) statusOf(a *localmesh.Agent) (func() any, map[string]http.Handler) {
	if a != d.m.Cluster("east").Agents[0] {
		return func() any { return a.Sync.Status() }, nil
	}
	status := func() any {
		ps := d.pol.enf.Status()
		return agentStatus{Status: a.Sync.Status(), Policy: &ps}
	}
	if d.pol.hub == nil {
		return status, nil
	}
	return status, map[string]http.Handler{"GET " + observe.Path: d.pol.hub.Handler()}
}
