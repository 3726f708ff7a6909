package demo

import (
	"context"
	"errors"
	"fmt"
	flowpb "github.com/cilium/cilium/api/v1/flow"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/localmesh"
	"github.com/clustermesh/clustermesh/node"
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
	for i := range st.Endpoints { // their owners, named in flows and on the map
		st.Endpoints[i].Workload = map[string]string{"checkout": "StatefulSet/checkout", "frontend": "Deployment/frontend"}[st.Endpoints[i].Labels["app"]]
	}
	if id != 1 {
		return st
	}
	perCluster := 0
	for i := range st.Endpoints {
		if ep := st.Endpoints[i]; ep.Labels["app"] == "checkout" {
			perCluster++ // the network names veths in state order
			if ep.Node == policyNode {
				ep.Interface = podVethName("east", "ck", perCluster)
			}
		}
	}
	return st
}

// frontendPods are the policy and L7 steps' clients: every cluster's
// frontend-1 (east's asks the DNS server).
func frontendPods() []podSpec {
	var out []podSpec
	for i, c := range Clusters {
		for _, e := range localmesh.SampleState(i + 1).Endpoints {
			if e.Pod == "frontend-1" {
				out = append(out, podSpec{cluster: c, name: e.Pod, ip: e.IP})
			}
		}
	}
	return out
}

// policyRun is what the demo adds to east-node-1's policy: the namespace
// its endpoints' veths are in, once the traffic's network is up.
type policyRun struct {
	mu   sync.RWMutex
	node *podnet.Node // guarded by mu
}

// setNode sets east-node-1's namespace.
func (p *policyRun) setNode(n *podnet.Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.node = n
}

// nodeAgent returns a localmesh hook that makes east's first agent
// (east-node-1) a whole node agent enforcing the policies in dir, and, with
// real traffic (a client cgroup), every agent a node agent observing its
// node's pods in east-node-1's namespace, east-node-1 with its socket load
// balancer on the cgroup; each serves its status on the demo's status
// socket when serve is set.
func (p *policyRun) nodeAgent(dir, cgroup string, serve bool, statusSocket func(string) string) func(string, *node.Config) bool {
	return func(name string, cfg *node.Config) bool {
		if name != policyAgent && cgroup == "" {
			return false
		}
		// Agent <cluster>-node-<i> runs on the state's node-<i>; east-node-1's
		// address is the host identity.
		cfg.NodeName = "node-" + name[strings.LastIndex(name, "-")+1:]
		cfg.Policy.InNetns, cfg.Policy.ReloadInterval = p.inNode, 100*time.Millisecond
		// The L7 proxy listens in east-node-1's namespace: without real
		// traffic there is none (and no L7 step).
		cfg.L7.Enable = cgroup != ""
		if name == policyAgent {
			cfg.Policy.Dir = dir
			cfg.SocketLB, cfg.Cgroup = cgroup != "", cgroup
		}
		if serve {
			cfg.StatusAddr = statusSocket(name)
		}
		return true
	}
}

// inNode runs fn in east-node-1's namespace, once there is one.
func (p *policyRun) inNode(fn func() error) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.node == nil {
		return errors.New("east-node-1's namespace is not set up (real traffic off)")
	}
	return podnet.InNetns(p.node.NS, fn)
}

// policyAgent is the agent that enforces the policy.
const policyAgent = "east-node-1"

// policyNode is east-node-1's node agent.
func (d *run) policyNode() *node.Node { return d.m.Cluster("east").Agents[0].Node }

// writePolicy writes checkoutPolicy into a new policy directory under dir.
func writePolicy(dir string) (string, error) {
	pdir := filepath.Join(dir, "policies", "east")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		return "", err
	}
	return pdir, os.WriteFile(filepath.Join(pdir, "checkout.yaml"), []byte(checkoutPolicy), 0o644)
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
	var got []tcpolicy.Key
	err := d.waitUntil(ctx, func() (bool, string) {
		ids = d.identities()
		var err error
		if got, err = d.policyNode().Policy().Policies(); err != nil {
			return false, err.Error()
		}
		want := []tcpolicy.Key{
			{Endpoint: ids["east/checkout"], Peer: wire.IdentityHost, Direction: datapath.Ingress},
			{Endpoint: ids["east/checkout"], Peer: ids["east/frontend"], Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080},
			{Endpoint: ids["east/checkout"], Peer: ids["west/frontend"], Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080},
		}
		slices.SortFunc(want, func(a, b tcpolicy.Key) int { return int(a.Peer) - int(b.Peer) })
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
func (d *run) identities() map[string]uint32 {
	enf := d.policyNode().Enforcer()
	out := map[string]uint32{}
	for i, c := range Clusters {
		for _, ep := range localmesh.SampleState(i + 1).Endpoints {
			want := ep.IdentityLabels(c).String()
			for id := uint32(i+1) << 16; id < uint32(i+1)<<16+64; id++ {
				if ls, ok := enf.Identity(id); ok && ls.String() == want {
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
	err := d.waitUntil(ctx, func() (bool, string) {
		for _, ep := range d.policyNode().Enforcer().Status().Endpoints {
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
	flows, err := d.flowsTo(ctx, "shop/"+target.name)
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
// flows to it in east-node-1's hub, formatted as `clustermesh observe`
// prints them.
func (d *run) flowsTo(ctx context.Context, pod string) ([]string, error) {
	ns, name, _ := strings.Cut(pod, "/")
	toPod := func(f *flowpb.Flow) bool {
		dst := f.GetDestination()
		return dst.GetNamespace() == ns && strings.HasPrefix(dst.GetPodName(), name) &&
			f.GetSource().GetIdentity() != wire.IdentityHost && f.GetType() != flowpb.FlowType_SOCK // the traffic step's
	}
	var out []string
	err := d.waitUntil(ctx, func() (bool, string) {
		out = out[:0]
		verdicts := map[flowpb.Verdict]bool{}
		sub := d.policyNode().Flows().Subscribe(observe.Query{Number: 20, Match: toPod})
		defer sub.Close()
		for ev := range sub.Events() {
			if f := ev.GetFlow(); f != nil {
				verdicts[f.GetVerdict()] = true
				out = append(out, observe.Compact(f))
			}
		}
		return verdicts[flowpb.Verdict_FORWARDED] && verdicts[flowpb.Verdict_DROPPED], fmt.Sprintf("flows to %s: %v", pod, out)
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
