package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"

	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/l7dns/dnsserver"
	"github.com/clustermesh/clustermesh/observe"
)

// The L7 part of the demo (eBPF and real traffic): east's checkout policy
// is replaced by checkoutL7Policy, whose HTTP rule sends port 8080 of
// east's checkout pods through east-node-1's L7 proxy (GET /v1/cart from
// the frontends of west and north, anything else 403), and whose DNS rule
// sends east's frontend's queries to the DNS server in east's checkout-2
// through it too; a toFQDNs rule then lets the frontend reach the address
// the DNS server answered for api.shop.example, a pod outside every
// cluster (apiAddr).

// apiName is the name the DNS server answers with apiAddr.
const apiName = "api.shop.example"

// refusedName is a name outside the DNS rule's pattern: the proxy
// answers REFUSED.
const refusedName = "evil.example.org"

// apiAddr is the external API's pod: outside every cluster's state, it
// is reachable from east's frontend only by toFQDNs.
var apiAddr = netip.MustParseAddrPort("10.2.1.101:8080")

// dnsZone is the DNS server's zone, shop.example.
const dnsZone = "api 30 IN A 10.2.1.101\ncart 30 IN A 10.1.1.12\n"

// dnsServer is where the DNS server answers: east's checkout-2's
// namespace, port 53.
var dnsServer = netip.MustParseAddrPort("10.1.1.12:53")

// cartPath is the path the HTTP rule allows GET on.
const cartPath = "/v1/cart"

// checkoutL7Policy replaces checkoutPolicy in the L7 step.
const checkoutL7Policy = `apiVersion: cilium.io/v2
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
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [west, north]}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/v1/cart"}
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: east}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: frontend-dns
  namespace: shop
spec:
  endpointSelector:
    matchLabels: {app: frontend}
  egress:
  - toEndpoints:
    - matchLabels: {app: checkout}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns:
        - matchPattern: "*.shop.example"
  - toFQDNs:
    - matchName: api.shop.example
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
`

// serveDNS starts the DNS server of dnsZone in east's checkout-2, UDP
// and TCP.
func (n *network) serveDNS() error {
	z, err := dnsserver.ParseZone("shop.example.", strings.NewReader(dnsZone))
	if err != nil {
		return fmt.Errorf("demo: the DNS zone: %w", err)
	}
	var p *pod
	for _, q := range n.pods {
		if q.IP == dnsServer.Addr() {
			p = q
		}
	}
	if p == nil {
		return fmt.Errorf("demo: no pod %s for the DNS server", dnsServer.Addr())
	}
	var pc net.PacketConn
	var ln net.Listener
	if err := podnet.InNetns(p.NS, func() (err error) {
		if pc, err = net.ListenPacket("udp", dnsServer.String()); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp", dnsServer.String()); err != nil {
			pc.Close()
		}
		return err
	}); err != nil {
		return fmt.Errorf("demo: the DNS server on %s: %w", dnsServer, err)
	}
	n.dns = dnsserver.Start(z, pc, ln)
	return nil
}

// writeL7Policy replaces east's checkout policy with checkoutL7Policy
// (renamed into place: the agent never reads half a file).
func (d *run) writeL7Policy() error {
	pdir := filepath.Join(d.o.Dir, "policies", "east")
	tmp := filepath.Join(pdir, ".checkout.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(checkoutL7Policy), 0o644); err != nil {
		return fmt.Errorf("demo: writing the L7 policy: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(pdir, "checkout.yaml")); err != nil {
		return fmt.Errorf("demo: writing the L7 policy: %w", err)
	}
	return nil
}

// l7Step applies checkoutL7Policy, sends HTTP requests from west's and
// north's frontends and DNS queries from east's, and prints the L7 flows
// the relay serves.
func (d *run) l7Step(ctx context.Context) (string, error) {
	if err := d.writeL7Policy(); err != nil {
		return "", err
	}
	if err := d.waitRedirected(ctx, map[string]string{"checkout-2": "8080", "frontend-1": "53"}); err != nil {
		return "", err
	}
	var lines []string
	url := "http://" + netip.AddrPortFrom(dnsServer.Addr(), d.net.port).String() + cartPath
	for _, c := range []string{"west", "north"} {
		line, err := httpSequence(ctx, d.net.frontends[c], url)
		if err != nil {
			return "", fmt.Errorf("%s/frontend-1: %w", c, err)
		}
		lines = append(lines, c+"/frontend-1 → "+url+": "+line)
	}
	line, err := d.dnsLookups(ctx)
	if err != nil {
		return "", err
	}
	lines = append(lines, "east/frontend-1 asks "+dnsServer.String()+": "+line)
	flows, err := d.l7Flows(ctx)
	if err != nil {
		return "", err
	}
	lines = append(lines, "hubble observe --type l7 (through the relay):")
	for _, f := range flows {
		lines = append(lines, "  "+f)
	}
	return strings.Join(lines, "\n      "), nil
}

// waitRedirected waits until east-node-1 redirects each pod's port to a
// listening proxy port.
func (d *run) waitRedirected(ctx context.Context, ports map[string]string) error {
	return d.waitUntil(ctx, func() (bool, string) {
		for pod, port := range ports {
			if !d.redirected(pod, port) {
				return false, fmt.Sprintf("east's %s: port %s not redirected to the L7 proxy yet", pod, port)
			}
		}
		return true, ""
	})
}

func (d *run) redirected(pod, port string) bool {
	for _, ep := range d.policyNode().Enforcer().Status().Endpoints {
		if ep.Pod != pod {
			continue
		}
		for _, r := range ep.Redirects {
			if r.Ports == port && r.ProxyPort != 0 {
				return true
			}
		}
	}
	return false
}

// httpSequence sends GET, POST, GET to url from p on one kept-alive
// connection and checks the answers: 200, 403 Access denied, 200 on the
// same connection.
func httpSequence(ctx context.Context, p *podnet.Pod, url string) (string, error) {
	c := p.HTTPClient()
	defer c.CloseIdleConnections()
	var got []string
	for i, want := range []struct {
		method string
		code   int
	}{{http.MethodGet, http.StatusOK}, {http.MethodPost, http.StatusForbidden}, {http.MethodGet, http.StatusOK}} {
		reused := false
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), want.method, url, strings.NewReader("{}"))
		if err != nil {
			return "", err
		}
		resp, err := c.Do(req)
		if err != nil {
			return "", fmt.Errorf("%s: %w", want.method, err)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if err != nil {
			return "", fmt.Errorf("%s: reading the answer: %w", want.method, err)
		}
		if resp.StatusCode != want.code {
			return "", fmt.Errorf("%s: %d %q, want %d", want.method, resp.StatusCode, b, want.code)
		}
		if i > 0 && !reused {
			return "", fmt.Errorf("%s: on a new connection, want the first one kept", want.method)
		}
		got = append(got, fmt.Sprintf("%s %d %q", want.method, resp.StatusCode, strings.TrimSpace(string(b))))
	}
	return strings.Join(got, ", ") + " (one connection)", nil
}

// dnsLookups has east's frontend reach apiAddr (dropped: no answer gave
// it yet), look up a refused name and apiName, then reach apiAddr again
// (allowed by toFQDNs).
func (d *run) dnsLookups(ctx context.Context) (string, error) {
	fe := d.net.frontends["east"]
	if _, err := httpGet(fe, apiAddr, 300*time.Millisecond); err == nil {
		return "", fmt.Errorf("east/frontend-1 reached %s before any DNS answer gave it", apiAddr)
	}
	r := fe.Resolver("udp", dnsServer)
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := r.LookupHost(lctx, refusedName+".")
	var dnsErr *net.DNSError
	if err == nil || !errors.As(err, &dnsErr) || dnsErr.IsNotFound || dnsErr.IsTimeout {
		return "", fmt.Errorf("%s: %v, want the query refused", refusedName, err)
	}
	addrs, err := r.LookupHost(lctx, apiName+".")
	if err != nil || len(addrs) != 1 || addrs[0] != apiAddr.Addr().String() {
		return "", fmt.Errorf("%s: %v %v, want %s", apiName, addrs, err, apiAddr.Addr())
	}
	reply, err := httpGet(fe, apiAddr, 3*time.Second)
	if err != nil {
		return "", fmt.Errorf("east/frontend-1 → %s (%s) after the answer: %w, want allowed by toFQDNs", apiName, apiAddr, err)
	}
	return fmt.Sprintf("%s refused; %s → %s; then %s answered %q (toFQDNs)", refusedName, apiName, addrs[0], apiAddr, reply), nil
}

// l7Flows waits until the relay serves the L7 flows of the step (west's
// and north's requests and responses, east's frontend's queries) and
// returns a selection in the compact format.
func (d *run) l7Flows(ctx context.Context) ([]string, error) {
	conn, err := observe.Dial(ctx, "unix://"+d.relaySocket(), nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	c := observerpb.NewObserverClient(conn)
	var wanted []func(*flowpb.Flow) bool
	for _, cl := range []string{"west", "north"} {
		wanted = append(wanted,
			httpFlow(cl, flowpb.L7FlowType_REQUEST, "GET", flowpb.Verdict_FORWARDED),
			httpFlow(cl, flowpb.L7FlowType_RESPONSE, "GET", flowpb.Verdict_FORWARDED),
			httpFlow(cl, flowpb.L7FlowType_REQUEST, "POST", flowpb.Verdict_DROPPED))
	}
	wanted = append(wanted,
		dnsFlow(apiName+".", flowpb.L7FlowType_REQUEST, flowpb.Verdict_FORWARDED, ""),
		dnsFlow(apiName+".", flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, apiAddr.Addr().String()),
		dnsFlow(refusedName+".", flowpb.L7FlowType_REQUEST, flowpb.Verdict_DROPPED, ""))
	var out []string
	err = d.waitUntil(ctx, func() (bool, string) {
		fs, err := lastL7Flows(ctx, c)
		if err != nil {
			return false, err.Error()
		}
		out = out[:0]
		for _, match := range wanted {
			found := false
			for i := len(fs) - 1; i >= 0 && !found; i-- {
				if match(fs[i]) {
					out, found = append(out, observe.Compact(fs[i])), true
				}
			}
			if !found {
				return false, fmt.Sprintf("%d L7 flows through the relay, %d of the %d wanted: %s", len(fs), len(out), len(wanted), strings.Join(out, "; "))
			}
		}
		return true, ""
	})
	return out, err
}

// httpFlow matches an HTTP flow of a client of cluster.
func httpFlow(cluster string, t flowpb.L7FlowType, method string, v flowpb.Verdict) func(*flowpb.Flow) bool {
	return func(f *flowpb.Flow) bool {
		client := f.GetSource()
		if f.GetIsReply().GetValue() {
			client = f.GetDestination()
		}
		h := f.GetL7().GetHttp()
		return h != nil && client.GetClusterName() == cluster && f.GetL7().GetType() == t && h.GetMethod() == method &&
			f.GetVerdict() == v && strings.HasSuffix(h.GetUrl(), cartPath)
	}
}

// dnsFlow matches a DNS flow of query for an A record, a response with
// ip among its answers.
func dnsFlow(query string, t flowpb.L7FlowType, v flowpb.Verdict, ip string) func(*flowpb.Flow) bool {
	return func(f *flowpb.Flow) bool {
		q := f.GetL7().GetDns()
		return q != nil && q.GetQuery() == query && f.GetL7().GetType() == t && f.GetVerdict() == v &&
			slices.Contains(q.GetQtypes(), "A") && (ip == "" || slices.Contains(q.GetIps(), ip))
	}
}

// lastL7Flows asks the relay for the last 1,000 L7 flows (Hubble's
// --type l7).
func lastL7Flows(ctx context.Context, c observerpb.ObserverClient) ([]*flowpb.Flow, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1000,
		Whitelist: []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: 129}}}}})
	if err != nil {
		return nil, fmt.Errorf("asking the relay for L7 flows: %w", err)
	}
	var out []*flowpb.Flow
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading L7 flows from the relay: %w", err)
		}
		if f := r.GetFlow(); f.GetL7() != nil {
			out = append(out, f)
		}
	}
}
