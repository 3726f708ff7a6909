package enforcer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/l7proxy"
	"github.com/clustermesh/clustermesh/policy"
	"github.com/clustermesh/clustermesh/statesource"
)

// lineHandler is a tiny L7 engine for the test: a request is one line
// "METHOD PATH"; it is judged by the redirect's PortRules (the peer's HTTP
// rules, method and path anchored) and forwarded, or answered "403".
type lineHandler struct {
	mu  sync.Mutex
	mds []l7proxy.Metadata
}

func (h *lineHandler) ServeConn(ctx context.Context, conn net.Conn, md l7proxy.Metadata) {
	h.mu.Lock()
	h.mds = append(h.mds, md)
	h.mu.Unlock()
	rd := bufio.NewReader(conn)
	line, err := rd.ReadString('\n')
	if err != nil {
		return
	}
	rules, _ := md.Rules.(*PortRules)
	peer := md.SrcIdentity
	if md.Direction == datapath.Egress {
		peer = md.DstIdentity
	}
	if !allowsLine(rules, peer, md.OrigDst.Port(), strings.TrimSpace(line)) {
		io.WriteString(conn, "403\n")
		return
	}
	up, err := md.DialUpstream(ctx)
	if err != nil {
		io.WriteString(conn, "502\n")
		return
	}
	defer up.Close()
	io.WriteString(up, line)
	io.Copy(struct{ io.Writer }{conn}, struct{ io.Reader }{up})
}

func allowsLine(rules *PortRules, peer uint32, port uint16, line string) bool {
	if rules == nil {
		return false
	}
	p, ok := rules.For(peer, policy.TCP, port)
	if !ok {
		return false
	}
	method, path, _ := strings.Cut(line, " ")
	for _, r := range p.HTTP {
		if (r.Method == "" || regexp.MustCompile("^(?:"+r.Method+")$").MatchString(method)) &&
			(r.Path == "" || regexp.MustCompile("^(?:"+r.Path+")$").MatchString(path)) {
			return true
		}
	}
	return false
}

type ipcacheIDs struct{ m *datapath.Maps }

func (c ipcacheIDs) IdentityOf(a netip.Addr) uint32 {
	ents, _ := c.m.IPCache()
	if e, ok := ents[netip.PrefixFrom(a, a.BitLen())]; ok {
		return e.Identity
	}
	return datapath.IdentityWorld
}

// TestL7ThroughTheRealProxy (root): the enforcer on real maps with
// l7proxy's real proxy in a node namespace: a west frontend's requests to
// east's checkout go through the redirect the enforcer opened, judged by
// the PortRules it gave (GET /v1/... passes, POST is refused); the
// redirect goes when the L7 rules do, and the port is plain again.
func TestL7ThroughTheRealProxy(t *testing.T) {
	maps, progs := openRealMaps(t)
	node, err := podnet.NewNode(netip.MustParseAddr("10.214.0.254"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	client, err := node.AddPod("client", netip.MustParseAddr("10.214.0.1"), "l7pc")
	if err != nil {
		t.Fatal(err)
	}
	server, err := node.AddPod("server", netip.MustParseAddr("10.214.0.2"), "l7ps")
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "pod veths up", func() bool { return node.Up() == "" })
	inNode := func(fn func() error) error { return podnet.InNetns(node.NS, fn) }
	if err := maps.UpsertIPCache(netip.MustParsePrefix("10.214.0.1/32"), datapath.IPCacheEntry{Identity: westFrontend, ClusterID: 2}); err != nil {
		t.Fatal(err)
	}
	serveLines(t, server, 8080)

	h := &lineHandler{}
	px, err := l7proxy.New(l7proxy.Config{Handlers: map[string]l7proxy.Handler{"http": h}, Identities: ipcacheIDs{maps},
		InNetns: inNode, StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	f := startCfg(t, func(_ *fixture, cfg *Config) {
		cfg.Policy, cfg.Attacher, cfg.ProxyPorts = progs, ProgramsAttacher{Programs: progs, InNetns: inNode}, L7Proxy(px)
	}, nil)
	f.writePolicy(t, "checkout.yaml", l7CheckoutPolicy)
	f.e.SetLocalState(&statesource.State{Endpoints: []*statesource.Endpoint{
		{Namespace: "shop", Pod: "checkout-1", Node: "node-1", IP: server.IP, Labels: map[string]string{"app": "checkout"}, Interface: server.HostVeth},
	}})
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	f.e.UpsertIdentity("west", westFrontend, podLabels("west", "frontend"))
	close(f.ready)
	testenv.WaitFor(t, 10*time.Second, "checkout enforcing with a redirect", func() bool {
		for _, ep := range f.e.Status().Endpoints {
			if ep.State == StateEnforcing && len(ep.Redirects) == 1 && ep.Redirects[0].ProxyPort != 0 {
				return true
			}
		}
		return false
	})
	if got := request(t, client, server.IP, "GET /v1/cart"); got != "ok GET /v1/cart" {
		t.Errorf("GET /v1/cart: %q, want it forwarded", got)
	}
	if got := request(t, client, server.IP, "POST /v1/cart"); got != "403" {
		t.Errorf("POST /v1/cart: %q, want 403 from the proxy", got)
	}
	h.mu.Lock()
	if len(h.mds) != 2 || h.mds[0].SrcIdentity != westFrontend || h.mds[0].EndpointID != eastCheckout || h.mds[0].Direction != datapath.Ingress {
		t.Errorf("proxy metadata %+v", h.mds)
	}
	h.mu.Unlock()
	// The L7 rules go: the redirect is removed, the port plain again.
	f.writePolicy(t, "checkout.yaml", strings.Replace(l7CheckoutPolicy, "      rules:\n        http: [{method: GET, path: \"/v1/.*\"}]\n", "", 1))
	testenv.WaitFor(t, 10*time.Second, "redirect removed", func() bool { return len(px.Redirects()) == 0 })
	if got := request(t, client, server.IP, "POST /v1/cart"); got != "ok POST /v1/cart" {
		t.Errorf("POST /v1/cart without L7 rules: %q, want it straight to the server", got)
	}
	if h.mu.Lock(); len(h.mds) != 2 {
		t.Errorf("the proxy saw %d connections, want the 2 of the L7 port", len(h.mds))
	}
	h.mu.Unlock()
}

// serveLines answers each connection's first line with "ok <line>".
func serveLines(t *testing.T, pod *podnet.Pod, port uint16) {
	var ln net.Listener
	if err := podnet.InNetns(pod.NS, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(pod.IP, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "ok %s\n", strings.TrimSpace(line))
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// request sends one line from the client pod to the server's 8080 and
// returns the answer line.
func request(t *testing.T, client *podnet.Pod, server netip.Addr, line string) string {
	t.Helper()
	var c net.Conn
	if err := podnet.InNetns(client.NS, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(server, 8080).String(), 5*time.Second)
		return err
	}); err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "%s\n", line)
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read: " + err.Error()
	}
	return strings.TrimSpace(answer)
}
