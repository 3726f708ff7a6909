package tcpolicy

import (
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
)

// Tests of the policy writers' proxy ports (Key.ProxyPort); the redirect
// itself, on real veths with a real proxy, is tested in package l7proxy.

// rawProxyPorts dumps cm_policy's proxy ports by entry.
func rawProxyPorts(t testing.TB, p *Programs) map[policyKey]uint16 {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[policyKey]uint16{}
	dptest.NoErr(t, bpfmap.Dump(p.policy, func(k *policyKey, v *policyValue) { out[*k] = v.ProxyPort }))
	return out
}

func policyRev(p *Programs) uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conf.PolicyRev
}

func TestPolicyProxyPortValidation(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, w Writer) {
		for _, bad := range []Key{
			{Endpoint: 1, Peer: 2, ProxyPort: 10000},                                      // no port
			{Endpoint: 1, Peer: 2, Protocol: datapath.SCTP, Port: 80, ProxyPort: 10000},   // SCTP cannot be proxied
			{Endpoint: 1, Peer: 2, Protocol: datapath.Protocol(1), Port: 0, ProxyPort: 1}, // ICMP, no port
		} {
			dptest.ErrIs(t, w.UpsertPolicy(bad), ErrInvalidPolicy)
		}
		k := Key{Endpoint: 1, Peer: 2, Protocol: datapath.TCP, Port: 80, ProxyPort: 10000}
		dptest.NoErr(t, w.UpsertPolicy(k))
		k.EndPort = 80
		wantPolicies(t, w, k)
	})
}

func TestPolicyProxyPortEntries(t *testing.T) {
	mesh, p := openTest(t, Config{})
	tcp80 := policyKey{PrefixLen: policyPrefixFull, Endpoint: 1, Peer: 2, Direction: uint8(datapath.Egress),
		Proto: uint8(datapath.TCP), Port: bpfmap.Htons(80)}
	udp80, sctp80 := tcp80, tcp80
	udp80.Proto, sctp80.Proto = uint8(datapath.UDP), uint8(datapath.SCTP)
	plain := Key{Endpoint: 1, Peer: 2, Direction: datapath.Egress, Protocol: datapath.TCP, Port: 80}
	proxied := plain
	proxied.ProxyPort = 12000
	other := plain
	other.ProxyPort = 11000
	anyProto := Key{Endpoint: 1, Peer: 2, Direction: datapath.Egress, Port: 80, ProxyPort: 13000}

	// A plain key: no proxy.
	dptest.NoErr(t, p.UpsertPolicy(plain))
	if got := rawProxyPorts(t, p); got[tcp80] != 0 || len(got) != 1 {
		t.Fatalf("plain: %v", got)
	}
	// The same entry through a proxy: the proxy wins, cached verdicts are
	// checked again.
	rev := policyRev(p)
	dptest.NoErr(t, p.UpsertPolicy(proxied))
	if got := rawProxyPorts(t, p); got[tcp80] != 12000 {
		t.Fatalf("proxied: %v", got)
	}
	if policyRev(p) == rev {
		t.Fatal("a proxy port added to an entry left the cached verdicts")
	}
	// Two proxies: the lowest port.
	dptest.NoErr(t, p.UpsertPolicy(other))
	if got := rawProxyPorts(t, p); got[tcp80] != 11000 {
		t.Fatalf("two proxies: %v", got)
	}
	dptest.NoErr(t, p.ApplyPolicy([]Change{{Key: other}, {Key: proxied}}))
	if got := rawProxyPorts(t, p); got[tcp80] != 0 || len(got) != 1 {
		t.Fatalf("back to plain: %v", got)
	}
	// Any protocol with a proxy port: TCP and UDP, never SCTP.
	dptest.NoErr(t, p.SyncPolicy([]Key{anyProto}))
	got := rawProxyPorts(t, p)
	if _, ok := got[sctp80]; ok || got[tcp80] != 13000 || got[udp80] != 13000 || len(got) != 2 {
		t.Fatalf("any protocol: %v", got)
	}
	// A sync that changes only the proxy port rewrites it in place.
	anyProto.ProxyPort = 14000
	dptest.NoErr(t, p.SyncPolicy([]Key{anyProto}))
	if got := rawProxyPorts(t, p); got[tcp80] != 14000 || got[udp80] != 14000 {
		t.Fatalf("resynced: %v", got)
	}
	// A restart keeps what the kernel holds, proxy ports included.
	p2 := openPrograms(t, mesh, p.Config())
	if got := rawProxyPorts(t, p2); got[tcp80] != 14000 {
		t.Fatalf("after reopening: %v", got)
	}
	// The new run claims the entry without a proxy: its value is written,
	// not assumed.
	dptest.NoErr(t, p2.UpsertPolicy(plain))
	if got := rawProxyPorts(t, p2); got[tcp80] != 0 {
		t.Fatalf("claimed without a proxy: %v", got)
	}
}
