package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/merge"
	"github.com/clustermesh/clustermesh/wireguard"
)

// The status view: WireGuard off, and on with peers, handshakes, bytes and
// a rejection; the JSON without WireGuard is exactly agentsync's.
func TestStatusViewWireGuard(t *testing.T) {
	base := agentsync.Status{Cluster: "east", ClusterID: 1, Datapath: "memory"}
	var out bytes.Buffer
	if err := PrintStatus(&out, Status{Status: base}, false); err != nil || !strings.Contains(out.String(), "Encryption: off") {
		t.Errorf("off: %v\n%s", err, out.String())
	}
	now := time.Now()
	wg := &wireguard.Status{Enabled: true, Implementation: "userspace", Device: "cilium_wg0", PublicKey: "PUB=", ListenPort: 51871,
		MTU: 1440, UnderlayMTU: 1500, Peers: 3, BytesSent: 17 << 20, BytesReceived: 1536,
		Clusters: []wireguard.ClusterStatus{{Cluster: "west", Peers: 3, OldestHandshake: now.Add(-2 * time.Minute), LatestHandshake: now.Add(-3 * time.Second),
			PeersWithoutHandshake: 1, BytesSent: 17 << 20, BytesReceived: 1536}},
		Rejected:     []wireguard.Rejection{{Cluster: "west", Node: "n9", Reason: "no WireGuard public key published"}},
		KeyRotatedAt: now.Add(-time.Hour), LastError: "boom"}
	out.Reset()
	if err := PrintStatus(&out, Status{Status: base, WireGuard: wg}, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Encryption: WireGuard on (userspace), device cilium_wg0, port 51871, MTU 1440 (underlay 1500), node encryption off",
		"Public key: PUB=, rotated 1h0m0", "Peers: 3, sent 17.0 MiB, received 1.5 KiB", "west             3      2m0",
		"warning: WireGuard peer west/n9 rejected: no WireGuard public key published", "warning: WireGuard: boom"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	PrintStatus(&out, Status{Status: base, WireGuard: &wireguard.Status{Device: "cilium_wg0", LastError: "not open yet"}}, false)
	if !strings.Contains(out.String(), "device cilium_wg0 not running: not open yet") {
		t.Errorf("not running:\n%s", out.String())
	}

	var a, b bytes.Buffer
	PrintStatus(&a, Status{Status: base}, true)
	json.NewEncoder(&b).Encode(base)
	var ma, mb map[string]any
	json.Unmarshal(a.Bytes(), &ma)
	json.Unmarshal(b.Bytes(), &mb)
	if fmt.Sprint(ma) != fmt.Sprint(mb) {
		t.Errorf("JSON without WireGuard differs from agentsync's:\n%s\n%s", a.String(), b.String())
	}
	a.Reset()
	PrintStatus(&a, Status{Status: base, WireGuard: wg}, true)
	var back Status
	if err := json.Unmarshal(a.Bytes(), &back); err != nil || back.Cluster != "east" || back.WireGuard == nil || back.WireGuard.Peers != 3 {
		t.Errorf("JSON round trip: %v %+v", err, back)
	}
	if !strings.Contains(a.String(), `"wireguard": {`) {
		t.Errorf("JSON lacks the wireguard object:\n%s", a.String())
	}
}

// What a remote publishes out of force, over its limits or unsupported, and
// what a previous run keeps, each get a line that says what to do.
func TestStatusViewRemoteWarnings(t *testing.T) {
	st := agentsync.Status{Cluster: "east", ClusterID: 1, Datapath: "ebpf",
		Remotes: []agentsync.RemoteStatus{{Name: "west", ClusterID: 2,
			NotInForce:  merge.NotInForce{IPCacheOutside: 1, IPCacheClaimed: 2, BackendsOutside: 3},
			OverLimit:   []agentsync.OverLimit{{Kind: "ipcache", Limit: "8 entries", Flag: "--max-remote-ipcache-entries", Refused: 36}},
			Withdrawn:   []agentsync.WithdrawnService{{Service: "shop/checkout", Reason: "value_too_large"}},
			StaleKeys:   map[string]int{"identities": 4},
			Unsupported: []agentsync.UnsupportedKind{{Kind: "endpoint slices", Reason: "services are read instead"}},
		}},
		Retained: &agentsync.Retained{IPCache: 4, Backends: 3, Clusters: []uint16{3}, WaitingFor: []string{"north"}},
	}
	var out bytes.Buffer
	if err := PrintStatus(&out, Status{Status: st}, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"warning: west publishes entries it does not own, not in force: 1 ipcache entries outside its nodes' ranges, 2 inside a range another cluster claimed first, 3 service backends",
		"warning: west is over its ipcache limit (8 entries): 36 new entries refused; raise --max-remote-ipcache-entries",
		"warning: west: the last update of service shop/checkout was refused (value_too_large): its backends from west are withdrawn",
		"warning: west: 4 identities entries keep their previous value",
		"warning: west publishes endpoint slices, which this agent does not read: services are read instead",
		"kept from the previous run until their clusters sync: 4 ipcache entries, 3 service backends (cluster ids [3]; waiting for north)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}

// The flow server's line: off, and serving with its counts.
func TestStatusViewHubble(t *testing.T) {
	base := agentsync.Status{Cluster: "east", ClusterID: 1, Datapath: "ebpf"}
	var out bytes.Buffer
	if err := PrintStatus(&out, Status{Status: base}, false); err != nil || !strings.Contains(out.String(), "Flows: off") {
		t.Errorf("off: %v\n%s", err, out.String())
	}
	out.Reset()
	h := &HubbleStatus{Socket: "/run/h.sock", Address: ":4244"}
	h.Flows, h.Kept, h.Capacity, h.Subscribers, h.LostDatapath, h.LostSubscriber = 1200, 1000, 4095, 2, 3, 4
	if err := PrintStatus(&out, Status{Status: base, Hubble: h}, false); err != nil {
		t.Fatal(err)
	}
	want := "Flows: served on /run/h.sock and :4244; 1200 seen, ring 1000/4095, 2 observers following, lost 3 (datapath) 4 (slow observers)"
	if !strings.Contains(out.String(), want) {
		t.Errorf("lacks %q:\n%s", want, out.String())
	}
	out.Reset()
	if err := PrintStatus(&out, Status{Status: base, Hubble: h}, true); err != nil || !strings.Contains(out.String(), `"hubble": {`) ||
		!strings.Contains(out.String(), `"flows": 1200`) {
		t.Errorf("JSON: %v\n%s", err, out.String())
	}
}

// A remote read through the cache is marked, and a cache that stopped
// writing says so; the own cluster read from its local view is marked; the L7 redirects and FQDN addresses are listed, a
// redirect without a listener as dropped.
func TestStatusViewCacheAndL7(t *testing.T) {
	st := agentsync.Status{Cluster: "east", ClusterID: 1, Datapath: "ebpf", Remotes: []agentsync.RemoteStatus{
		{Name: "west", ClusterID: 2, Connected: true, Ready: true,
			ViaCache: &agentsync.ViaCache{CacheStatus: agentsync.CacheStatus{Connected: true, Ready: true, Updated: time.Now().Add(-time.Minute)}, CacheDown: true}},
		{Name: "north", ClusterID: 3, Connected: true, Ready: true},
		{Name: "east", ClusterID: 1, Connected: true, Ready: true, LocalView: true},
	}}
	pol := &enforcer.Status{Enforcing: true, RedirectedEntries: 3, RedirectsWaiting: 1, LastProxyError: "no free port",
		FQDNPatterns: 1, FQDNAddresses: 2, Endpoints: []enforcer.EndpointStatus{{Namespace: "shop", Pod: "checkout-2", State: enforcer.StateEnforcing,
			Redirects: []enforcer.RedirectStatus{{Direction: "ingress", Protocol: "TCP", Ports: "80", Parser: "http", ProxyPort: 10001, Peers: 2},
				{Direction: "egress", Protocol: "UDP", Ports: "53", Parser: "dns", Peers: 1}}}}}
	var out bytes.Buffer
	if err := PrintStatus(&out, Status{Status: st, Policy: pol}, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"west (via cache)", "the cache is down: its last word on this remote was 1m", "east (local view)",
		"L7: 3 entries redirected to the proxy; toFQDNs: 1 patterns holding 2 addresses",
		"shop/checkout-2 ingress TCP 80 (http): proxy port 10001, 2 peer(s)",
		"shop/checkout-2 egress UDP 53 (dns): no proxy listening: dropped (fail closed), 1 peer(s)",
		"warning: 1 redirected entries wait for a proxy listener, their traffic is dropped; last error: no free port",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "north (via cache)") {
		t.Error("a remote read directly is marked as read through the cache")
	}
}
