package localmesh

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/hubbletest"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/l7dns/dnsserver"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/observe"
)

// checkoutL7 lets west's and north's frontends reach east's checkout on
// port 80 with GET /v1/cart only: every request is parsed by the agent's
// proxy, a POST gets 403. East's own frontend is not selected at all.
const checkoutL7 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-l7, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [west, north]}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/v1/cart"}
`

// startL7Env is the policy environment with policy (a file of east's
// policy directory) instead of checkoutIngress, Hubble on every node-1.
func startL7Env(t *testing.T, policy string) *policyEnv {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "l7.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	return startPolicyEnvWith(t, true, func(name string, cfg *node.Config) {
		if name == "east-node-1" {
			cfg.Policy.Dir = dir
		}
	})
}

// serveHTTP runs an HTTP server on p's port: "cart" for every request,
// with the method echoed in a header.
func serveHTTP(t *testing.T, p *podnet.Pod, port uint16) {
	t.Helper()
	var ln net.Listener
	if err := podnet.InNetns(p.NS, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(p.IP, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Method", r.Method)
		io.WriteString(w, "cart")
	})}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

// waitRedirected waits until east's checkout-2 has its port 80 redirected
// to a listening proxy port.
func waitRedirected(t *testing.T, enf *enforcer.Enforcer, pod string, port string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, pod+" redirected to the L7 proxy", func() bool {
		for _, ep := range enf.Status().Endpoints {
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
	})
}

func TestL7HTTPAcrossClusters(t *testing.T) {
	e := startL7Env(t, checkoutL7)
	east := e.mesh.Cluster("east").Agents[0].Node
	l7 := east.Flows().Subscribe(observe.Query{Follow: true, Match: func(f *flowpb.Flow) bool { return f.GetL7() != nil }})
	defer l7.Close()
	serveHTTP(t, e.pods["east/checkout-2"], 80)
	waitRedirected(t, e.enf, "checkout-2", "80")
	url := "http://10.1.1.12/v1/cart"

	for _, from := range []string{"west/frontend-1", "north/frontend-1"} {
		c := e.pods[from].HTTPClient()
		checkHTTP(t, c, http.MethodGet, url, http.StatusOK, "cart")
		// A denied request gets Cilium's 403 and leaves the connection
		// usable for the next allowed one.
		checkHTTP(t, c, http.MethodPost, url, http.StatusForbidden, "Access denied\r\n")
		checkHTTP(t, c, http.MethodGet, url, http.StatusOK, "cart")
		checkHTTP(t, c, http.MethodGet, "http://10.1.1.12/admin", http.StatusForbidden, "Access denied\r\n")
		c.CloseIdleConnections()
	}
	// East's frontend is not selected: its packets never reach the proxy.
	if _, err := e.pods["east/frontend-1"].HTTPClient().Get(url); err == nil {
		t.Error("east/frontend-1 got an answer from checkout, want its connection dropped")
	}

	// The L7 flows, as Hubble's: a request and its response for each
	// allowed one, the request alone, DROPPED, for a denied one (as Cilium
	// logs it); the remote clients named by their clusters' ipcache
	// entries.
	got := readL7(t, l7, 12)
	for _, from := range []string{"west", "north"} {
		want := []string{"GET /v1/cart FORWARDED", "GET /v1/cart 200", "POST /v1/cart DROPPED", "GET /admin DROPPED"}
		for _, w := range want {
			if !slicesContainsFunc(got, func(f *flowpb.Flow) bool { return l7Line(f) == from+" "+w }) {
				t.Errorf("no L7 flow %q from %s/frontend-1; got:\n%s", w, from, l7Lines(got))
			}
		}
	}
	for _, f := range got {
		client, server := f.GetSource(), f.GetDestination()
		if f.GetIsReply().GetValue() {
			client, server = server, client
		}
		if client.GetPodName() != "frontend-1" || client.GetNamespace() != "shop" || server.GetPodName() != "checkout-2" ||
			server.GetClusterName() != "east" || f.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS ||
			f.GetNodeName() != "east/node-1" || f.GetType() != flowpb.FlowType_L7 {
			t.Errorf("L7 flow ends: %s", observe.Compact(f))
		}
		if f.GetL7().GetType() == flowpb.L7FlowType_RESPONSE && f.GetL7().GetLatencyNs() == 0 {
			t.Errorf("response without latency: %s", observe.Compact(f))
		}
	}
	line := observe.Compact(got[0])
	if !strings.Contains(line, "http-request FORWARDED (HTTP/1.1 GET http://10.1.1.12/v1/cart)") {
		t.Errorf("compact: %q", line)
	}
	// Hubble's HTTP metrics, counted from the same flows.
	metrics := scrapeUntil(t, e.mesh.Cluster("east").Agents[0].MetricsAddress,
		`hubble_http_requests_total{destination="shop/checkout-2",method="GET",protocol="HTTP/1.1",reporter="server",source="west"} 3`) // two allowed, one denied
	for _, want := range []string{
		`hubble_http_requests_total{destination="shop/checkout-2",method="POST",protocol="HTTP/1.1",reporter="server",source="north"} 1`,
		`hubble_http_responses_total{destination="shop/frontend-1",method="GET",protocol="HTTP/1.1",reporter="server",source="east",status="200"} 4`,
		`hubble_http_request_duration_seconds_count{destination="shop/frontend-1",method="GET",reporter="server",source="east"} 4`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("east-node-1's metrics lack %s", want)
		}
	}
}

// scrapeUntil reads addr's /metrics until it holds want, and returns it.
func scrapeUntil(t *testing.T, addr, want string) string {
	t.Helper()
	var body string
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "hubble_http") || strings.HasPrefix(l, "hubble_dns") {
					t.Log(l)
				}
			}
		}
	})
	testenv.WaitFor(t, 10*time.Second, "metrics with "+want, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.Contains(body, want)
	})
	return body
}

func checkHTTP(t *testing.T, c *http.Client, method, url string, code int, body string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader("{}"))
	resp, err := c.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != code || string(b) != body {
		t.Errorf("%s %s: %d %q, want %d %q", method, url, resp.StatusCode, b, code, body)
	}
}

// readL7 reads n L7 flows of a following subscription.
func readL7(t *testing.T, s *observe.Subscription, n int) []*flowpb.Flow {
	t.Helper()
	var out []*flowpb.Flow
	deadline := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case ev := <-s.Events():
			if f := ev.GetFlow(); f != nil {
				out = append(out, f)
			}
		case <-deadline:
			t.Fatalf("%d L7 flows, want %d:\n%s", len(out), n, l7Lines(out))
		}
	}
	return out
}

// l7Line is "cluster METHOD path VERDICT|code" of an HTTP flow, the
// client's cluster first.
func l7Line(f *flowpb.Flow) string {
	h := f.GetL7().GetHttp()
	client := f.GetSource()
	if f.GetIsReply().GetValue() {
		client = f.GetDestination()
	}
	path := strings.TrimPrefix(h.GetUrl(), "http://10.1.1.12")
	if f.GetL7().GetType() == flowpb.L7FlowType_RESPONSE {
		return fmt.Sprintf("%s %s %s %d", client.GetClusterName(), h.GetMethod(), path, h.GetCode())
	}
	return fmt.Sprintf("%s %s %s %s", client.GetClusterName(), h.GetMethod(), path, f.GetVerdict())
}

func l7Lines(fs []*flowpb.Flow) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(observe.Compact(f) + "\n")
	}
	return b.String()
}

func slicesContainsFunc(fs []*flowpb.Flow, match func(*flowpb.Flow) bool) bool {
	for _, f := range fs {
		if match(f) {
			return true
		}
	}
	return false
}

// frontendDNS lets east's frontend ask east's checkout (a DNS server on
// port 53) for names under shop.example only, every query parsed by the
// proxy, and reach api.shop.example's addresses on 8080 once an allowed
// answer gave them; checkout accepts the queries.
const frontendDNS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-dns, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
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
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-dns, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
`

// serveDNS runs a DNS server of zone on p's port 53, UDP and TCP.
func serveDNS(t *testing.T, p *podnet.Pod, zone string) {
	t.Helper()
	z, err := dnsserver.ParseZone("shop.example.", strings.NewReader(zone))
	if err != nil {
		t.Fatal(err)
	}
	var pc net.PacketConn
	var ln net.Listener
	addr := netip.AddrPortFrom(p.IP, 53).String()
	if err := podnet.InNetns(p.NS, func() (err error) {
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := dnsserver.Start(z, pc, ln)
	t.Cleanup(func() { srv.Close(context.Background()) })
}

func TestL7DNSAndFQDNPolicy(t *testing.T) {
	e := startL7Env(t, frontendDNS)
	east := e.mesh.Cluster("east").Agents[0].Node
	l7 := east.Flows().Subscribe(observe.Query{Follow: true, Match: func(f *flowpb.Flow) bool { return f.GetL7().GetDns() != nil }})
	defer l7.Close()
	serveDNS(t, e.pods["east/checkout-2"], "api 30 IN A 10.2.1.101\ncart 30 IN A 10.1.1.12\n")
	serveTCP(t, e.pods["west/frontend-2"], 8080)
	waitRedirected(t, e.enf, "frontend-1", "53")
	fe, api := e.pods["east/frontend-1"], netip.MustParseAddrPort("10.2.1.101:8080")
	if err := connect(fe, api, 300*time.Millisecond); err == nil {
		t.Fatal("frontend-1 reached api.shop.example's address before any DNS answer gave it")
	}
	dnsServer := netip.MustParseAddrPort("10.1.1.12:53")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, network := range []string{"udp", "tcp"} {
		r := fe.Resolver(network, dnsServer)
		if _, err := r.LookupHost(ctx, "evil.example.org."); err == nil || !strings.Contains(err.Error(), "refused") && !strings.Contains(err.Error(), "server misbehaving") {
			t.Errorf("%s: evil.example.org: %v, want the query refused", network, err)
		}
		addrs, err := r.LookupHost(ctx, "api.shop.example.")
		if err != nil || len(addrs) != 1 || addrs[0] != "10.2.1.101" {
			t.Fatalf("%s: api.shop.example: %v %v", network, addrs, err)
		}
	}
	// The answer's address is allowed before the client has the answer:
	// the connection right after it goes through, its flows naming the
	// destination by the name (Hubble's destination_names, --to-fqdn).
	named := east.Flows().Subscribe(observe.Query{Follow: true, Match: func(f *flowpb.Flow) bool {
		return f.GetL7() == nil && f.GetIP().GetDestination() == "10.2.1.101"
	}})
	defer named.Close()
	if err := connect(fe, api, 3*time.Second); err != nil {
		t.Errorf("frontend-1 → api.shop.example (%s) after the answer: %v, want allowed by toFQDNs", api, err)
	}
	if err := connect(fe, netip.MustParseAddrPort("10.2.1.101:9090"), 300*time.Millisecond); err == nil {
		t.Error("frontend-1 reached api.shop.example on a port toFQDNs does not allow")
	}
	select {
	case ev := <-named.Events():
		if got := ev.GetFlow().GetDestinationNames(); len(got) != 1 || got[0] != "api.shop.example" {
			t.Errorf("flow to api.shop.example's address names it %v: %s", got, observe.Compact(ev.GetFlow()))
		}
	case <-time.After(5 * time.Second):
		t.Error("no flow of the connection to api.shop.example's address")
	}

	got := readDNSFlows(t, l7, func(fs []*flowpb.Flow) bool {
		return slicesContainsFunc(fs, dnsFlow("api.shop.example.", flowpb.Verdict_FORWARDED, true, "10.2.1.101")) &&
			slicesContainsFunc(fs, dnsFlow("evil.example.org.", flowpb.Verdict_DROPPED, false, ""))
	})
	for _, f := range got {
		client := f.GetSource()
		if f.GetIsReply().GetValue() {
			client = f.GetDestination()
		}
		if client.GetPodName() != "frontend-1" || client.GetClusterName() != "east" || f.GetTrafficDirection() != flowpb.TrafficDirection_EGRESS {
			t.Errorf("DNS flow: %s", observe.Compact(f))
		}
	}
	metrics := scrapeUntil(t, e.mesh.Cluster("east").Agents[0].MetricsAddress,
		`hubble_dns_queries_total{ips_returned="0",qtypes="A",query="evil.example.org.",rcode="Policy denied",source="shop/frontend-1"}`)
	for _, want := range []string{
		`hubble_dns_responses_total{ips_returned="1",qtypes="A",query="api.shop.example.",rcode="No Error",source="shop/checkout-2"}`,
		`hubble_dns_response_types_total{qtypes="A",query="api.shop.example.",source="shop/checkout-2",type="A"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("east-node-1's metrics lack %s", want)
		}
	}
}

// dnsFlow matches a DNS flow of query with verdict, a response with ip
// among its answers, or a request.
func dnsFlow(query string, v flowpb.Verdict, response bool, ip string) func(*flowpb.Flow) bool {
	return func(f *flowpb.Flow) bool {
		d := f.GetL7().GetDns()
		if d.GetQuery() != query || f.GetVerdict() != v || (f.GetL7().GetType() == flowpb.L7FlowType_RESPONSE) != response {
			return false
		}
		return ip == "" || slicesContainsString(d.GetIps(), ip)
	}
}

func slicesContainsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// readDNSFlows reads flows of s until done says they are enough.
func readDNSFlows(t *testing.T, s *observe.Subscription, done func([]*flowpb.Flow) bool) []*flowpb.Flow {
	t.Helper()
	var out []*flowpb.Flow
	deadline := time.After(10 * time.Second)
	for !done(out) {
		select {
		case ev := <-s.Events():
			if f := ev.GetFlow(); f != nil {
				out = append(out, f)
			}
		case <-deadline:
			t.Fatalf("DNS flows:\n%s", l7Lines(out))
		}
	}
	return out
}

// The real hubble CLI against the relay sees the L7 flows of the mesh and
// selects them with Hubble's own L7 flags.
func TestHubbleCLIL7(t *testing.T) {
	cli := hubbletest.Require(t)
	e := &hubbleEnv{cli: cli, policyEnv: startL7Env(t, checkoutL7+"---\n"+frontendDNS)}
	waitObserving(t, e.policyEnv)
	e.relaySock = filepath.Join(t.TempDir(), "relay.sock")
	stop, err := e.mesh.StartRelay(context.Background(), "east", e.relaySock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	serveHTTP(t, e.pods["east/checkout-2"], 80)
	serveDNS(t, e.pods["east/checkout-2"], "api 30 IN A 10.2.1.101\n")
	serveTCP(t, e.pods["west/frontend-2"], 8080)
	waitRedirected(t, e.enf, "checkout-2", "80")
	waitRedirected(t, e.enf, "frontend-1", "53")
	url := "http://10.1.1.12/v1/cart"
	for _, from := range []string{"west/frontend-1", "north/frontend-1"} {
		c := e.pods[from].HTTPClient()
		checkHTTP(t, c, http.MethodGet, url, http.StatusOK, "cart")
		checkHTTP(t, c, http.MethodPost, url, http.StatusForbidden, "Access denied\r\n")
		c.CloseIdleConnections()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := e.pods["east/frontend-1"].Resolver("udp", netip.MustParseAddrPort("10.1.1.12:53"))
	if _, err := r.LookupHost(ctx, "api.shop.example."); err != nil {
		t.Fatal(err)
	}
	r.LookupHost(ctx, "evil.example.org.") // refused
	if err := connect(e.pods["east/frontend-1"], netip.MustParseAddrPort("10.2.1.101:8080"), 3*time.Second); err != nil {
		t.Fatal(err)
	}

	// Every L7 flow through the relay, as operators read them.
	var compact string
	testenv.WaitFor(t, 20*time.Second, "the L7 flows at the relay", func() bool {
		compact = e.hubble(t, "observe", "--last", "1000", "--type", "l7", "-o", "compact")
		return strings.Count(compact, "http-request") >= 4 && strings.Count(compact, "dns-request proxy") >= 2
	})
	for _, want := range []string{
		"shop/frontend-1:", "(ID:131073) -> shop/checkout-2:80", // west's frontend (hubble prints no cluster)
		"http-request FORWARDED (HTTP/1.1 GET http://10.1.1.12/v1/cart)",
		"http-response FORWARDED (HTTP/1.1 200 ",
		"http-request DROPPED (HTTP/1.1 POST http://10.1.1.12/v1/cart)",
		"dns-request proxy FORWARDED (DNS Query api.shop.example. A)",
		`dns-response proxy FORWARDED (DNS Answer "10.2.1.101" TTL: 30 (Proxy api.shop.example. A))`,
		"dns-request proxy DROPPED (DNS Query evil.example.org. A)",
	} {
		if !strings.Contains(compact, want) {
			t.Errorf("hubble observe --type l7 lacks %q:\n%s", want, compact)
		}
	}
	for _, tc := range []struct {
		args  []string
		min   int
		match func(*flowpb.Flow) bool
	}{
		{[]string{"--protocol", "http"}, 6, func(f *flowpb.Flow) bool { return f.GetL7().GetHttp() != nil }},
		{[]string{"--protocol", "dns"}, 3, func(f *flowpb.Flow) bool { return f.GetL7().GetDns() != nil }},
		{[]string{"--http-method", "POST"}, 2, func(f *flowpb.Flow) bool {
			return f.GetL7().GetHttp().GetMethod() == "POST" && f.GetVerdict() == flowpb.Verdict_DROPPED
		}},
		{[]string{"--http-status", "2+"}, 2, func(f *flowpb.Flow) bool { return f.GetL7().GetHttp().GetCode() == 200 }},
		{[]string{"--http-path", "/v1/.*", "--from-cluster", "north"}, 2, func(f *flowpb.Flow) bool {
			return f.GetSource().GetClusterName() == "north" && strings.HasSuffix(f.GetL7().GetHttp().GetUrl(), "/v1/cart")
		}},
		{[]string{"--http-url", "http://10.1.1.12/v1/cart", "--verdict", "FORWARDED"}, 4, func(f *flowpb.Flow) bool {
			return f.GetVerdict() == flowpb.Verdict_FORWARDED && f.GetL7().GetHttp() != nil
		}},
		{[]string{"--to-fqdn", "api.shop.example"}, 1, func(f *flowpb.Flow) bool {
			return slicesContainsString(f.GetDestinationNames(), "api.shop.example")
		}},
	} {
		fs := e.observe(t, tc.args...)
		n := 0
		for _, f := range fs {
			if !tc.match(f) {
				t.Errorf("hubble observe %s: %s", strings.Join(tc.args, " "), observe.Compact(f))
				continue
			}
			n++
		}
		if n < tc.min {
			t.Errorf("hubble observe %s: %d flows, want at least %d", strings.Join(tc.args, " "), n, tc.min)
		}
	}
}

// While east's agent is down its pinned programs keep enforcing: the
// L7-policed port drops (no proxy listens), it never lets a request past
// the rules; the agent back, its proxy takes the port again.
func TestL7FailsClosedAcrossAgentRestart(t *testing.T) {
	e := startL7Env(t, checkoutL7)
	serveHTTP(t, e.pods["east/checkout-2"], 80)
	waitRedirected(t, e.enf, "checkout-2", "80")
	url := "http://10.1.1.12/v1/cart"
	checkHTTP(t, e.pods["west/frontend-1"].HTTPClient(), http.MethodGet, url, http.StatusOK, "cart")

	east := e.mesh.Cluster("east")
	if err := east.StopAgent(0); err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		c := e.pods["west/frontend-1"].HTTPClient()
		c.Timeout = 500 * time.Millisecond
		req, _ := http.NewRequest(method, url, nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("%s with east's agent down: %s, want no answer (the port drops without its proxy)", method, resp.Status)
		}
	}
	if err := east.StartAgent(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	enf := east.Agents[0].Node.Enforcer()
	waitRedirected(t, enf, "checkout-2", "80")
	testenv.WaitFor(t, 20*time.Second, "west's GET answered again", func() bool {
		resp, err := e.pods["west/frontend-1"].HTTPClient().Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	checkHTTP(t, e.pods["west/frontend-1"].HTTPClient(), http.MethodPost, url, http.StatusForbidden, "Access denied\r\n")
}
