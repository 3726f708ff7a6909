package wireguard

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestDeviceMTU(t *testing.T) {
	for _, c := range []struct {
		underlay int
		v6       bool
		want     int
	}{
		{1500, false, 1440}, // 1500 - 20 IPv4 - 8 UDP - 16 header - 16 tag
		{1500, true, 1420},  // 1500 - 40 IPv6 - 8 - 16 - 16
		{9001, false, 8941},
		{1280, true, 1200},
	} {
		if got := DeviceMTU(c.underlay, c.v6); got != c.want {
			t.Errorf("DeviceMTU(%d, v6=%v) = %d, want %d", c.underlay, c.v6, got, c.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{PrivateKeyFile: "/x"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, c := range map[string]Config{
		"long name":     {PrivateKeyFile: "/x", DeviceName: "a-name-of-16-byt"},
		"slash in name": {PrivateKeyFile: "/x", DeviceName: "wg/0"},
		"no key file":   {},
		"port":          {PrivateKeyFile: "/x", ListenPort: 70000},
		"mtu":           {PrivateKeyFile: "/x", UnderlayMTU: 1000},
		"impl":          {PrivateKeyFile: "/x", Implementation: "boringtun"},
		"priority":      {PrivateKeyFile: "/x", RulePriority: 32765},
		"table":         {PrivateKeyFile: "/x", RouteTable: 255},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestKeyFile(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	path := filepath.Join(t.TempDir(), "sub", "wg.key")
	k1, created, err := LoadOrCreateKey(path, log)
	if err != nil || !created {
		t.Fatalf("create: %v (created=%v)", err, created)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	k2, created, err := LoadOrCreateKey(path, log)
	if err != nil || created || k1 != k2 {
		t.Fatalf("reload: created=%v err=%v same=%v", created, err, k1 == k2)
	}
	// Too open: narrowed, with a warning.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(path, log); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode not narrowed: %v", fi.Mode())
	}
	if !strings.Contains(logs.String(), "narrowed to 0600") {
		t.Fatalf("no warning: %s", logs.String())
	}
	// Garbage: an error that names the operation and the file, says what
	// to do, and does not echo the content.
	secret := "c2VjcmV0LWJ1dC1ub3QtYS1rZXk="
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = LoadOrCreateKey(path, log)
	if err == nil || strings.Contains(err.Error(), secret) || !strings.HasPrefix(err.Error(), "reading private key file "+path+": ") ||
		!strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("garbage key: %v", err)
	}
	if strings.Contains(logs.String(), k1.String()) {
		t.Fatalf("the private key was logged")
	}
	// Rewrite is atomic and keeps the mode.
	k3, _ := wgtypes.GeneratePrivateKey()
	if err := writeKeyFile(path, k3); err != nil {
		t.Fatal(err)
	}
	got, _, err := LoadOrCreateKey(path, log)
	if err != nil || got != k3 {
		t.Fatalf("rewrite: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func newKey(t testing.TB) string {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}

func TestPlan(t *testing.T) {
	own, _ := wgtypes.GeneratePrivateKey()
	good := Peer{Cluster: "west", Node: "w1", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.1:0"),
		PodCIDRs: []netip.Prefix{pfx("10.2.1.0/24"), pfx("fd00:2:1::/64")}}
	dupKey := good.PublicKey
	peers := []Peer{
		good,
		{Cluster: "west", Node: "badkey", PublicKey: "not-a-key", Endpoint: netip.MustParseAddrPort("192.0.2.2:51871")},
		{Cluster: "west", Node: "shortkey", PublicKey: "bm90LWEta2V5", Endpoint: netip.MustParseAddrPort("192.0.2.2:51871")},
		{Cluster: "west", Node: "nokey", Endpoint: netip.MustParseAddrPort("192.0.2.3:51871")},
		{Cluster: "west", Node: "ownkey", PublicKey: own.PublicKey().String(), Endpoint: netip.MustParseAddrPort("192.0.2.4:51871")},
		{Cluster: "west", Node: "zdupkey", PublicKey: dupKey, Endpoint: netip.MustParseAddrPort("192.0.2.5:51871")},
		{Cluster: "west", Node: "local", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.6:51871"), PodCIDRs: []netip.Prefix{pfx("10.1.0.128/25")}},
		{Cluster: "west", Node: "wide", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.7:51871"), PodCIDRs: []netip.Prefix{pfx("10.0.0.0/7")}},
		{Cluster: "north", Node: "n1", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.8:51871"), PodCIDRs: []netip.Prefix{pfx("10.2.0.0/16")}},
		{Cluster: "west", Node: "loop", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("10.9.0.1:51871"), PodCIDRs: []netip.Prefix{pfx("10.9.0.0/24")}},
		{Cluster: "west", Node: "noep", PublicKey: newKey(t)},
		{Cluster: "west", Node: "me", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.100:51871")},
		{Cluster: "", Node: "anon", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.9:51871")},
		{Cluster: "east", Node: "e1", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.10:51871"), PodCIDRs: []netip.Prefix{pfx("10.3.0.0/24")}},
		{Cluster: "east", Node: "e1", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.11:51871"), PodCIDRs: []netip.Prefix{pfx("10.4.0.0/24")}},
	}
	accepted, rejected := plan(planInput{peers: peers, local: []netip.Prefix{pfx("10.1.0.0/24")}, localNodeIP: netip.MustParseAddr("192.0.2.100"),
		ownKey: own.PublicKey(), incumbents: map[string]bool{"west/w1": true}, port: 51871})
	var ids []string
	for _, a := range accepted {
		ids = append(ids, a.id())
	}
	if strings.Join(ids, ",") != "west/w1,east/e1" {
		t.Fatalf("accepted %v", ids)
	}
	if accepted[0].endpoint.Port() != 51871 {
		t.Fatalf("default port not applied: %v", accepted[0].endpoint)
	}
	want := map[string]string{
		"west/badkey":   "invalid public key",
		"west/shortkey": "invalid public key",
		"west/nokey":    "no WireGuard public key published",
		"west/ownkey":   "this node's own",
		"west/zdupkey":  "already used by west/w1",
		"west/local":    "overlaps local pod CIDR 10.1.0.0/24",
		"west/wide":     "wider than",
		"north/n1":      "overlaps pod CIDR 10.2.1.0/24 of west/w1", // the incumbent keeps its CIDR
		"west/loop":     "contains the node's own endpoint",
		"west/noep":     "no endpoint",
		"west/me":       "this node's own IP",
		"/anon":         "required",
		"east/e1":       "listed twice",
	}
	got := map[string]string{}
	for _, r := range rejected {
		got[r.Cluster+"/"+r.Node] = r.Reason
		t.Log(r)
	}
	for id, sub := range want {
		if !strings.Contains(got[id], sub) {
			t.Errorf("%s: reason %q, want it to mention %q", id, got[id], sub)
		}
	}
	if len(got) != len(want) {
		t.Errorf("rejected %d peers, want %d", len(got), len(want))
	}

	// Without the incumbent, the sort order decides: north/n1 comes first.
	accepted, _ = plan(planInput{peers: []Peer{good, peers[8]}, port: 51871})
	if len(accepted) != 1 || accepted[0].id() != "north/n1" {
		t.Fatalf("order: %v", accepted)
	}

	// Node encryption: node IPs are claimed too.
	a := Peer{Cluster: "c", Node: "a", PublicKey: newKey(t), NodeIP: netip.MustParseAddr("192.0.2.1"), PodCIDRs: []netip.Prefix{pfx("10.5.0.0/24")}}
	b := Peer{Cluster: "c", Node: "b", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.2:1"), NodeIP: netip.MustParseAddr("192.0.2.1")}
	accepted, rejected = plan(planInput{peers: []Peer{a, b}, nodeEncryption: true, port: 51871})
	if len(accepted) != 1 || len(rejected) != 1 || !strings.Contains(rejected[0].Reason, "node IP 192.0.2.1 overlaps node IP 192.0.2.1 of c/a") {
		t.Fatalf("node encryption: %v %v", accepted, rejected)
	}
	if got := accepted[0].allowed; len(got) != 2 || got[1] != pfx("192.0.2.1/32") {
		t.Fatalf("allowed IPs with node encryption: %v", got)
	}

	// An endpoint inside another peer's pod CIDR would loop.
	c := Peer{Cluster: "c", Node: "c", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("10.6.0.9:1")}
	e := Peer{Cluster: "c", Node: "e", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.3:1"), PodCIDRs: []netip.Prefix{pfx("10.6.0.0/24")}}
	accepted, rejected = plan(planInput{peers: []Peer{c, e}, port: 51871})
	if len(accepted) != 1 || accepted[0].id() != "c/e" || !strings.Contains(rejected[0].Reason, "inside pod CIDR 10.6.0.0/24 of c/e") {
		t.Fatalf("endpoint loop: %v %v", accepted, rejected)
	}
}

func TestPrefixTrie(t *testing.T) {
	var tr prefixTrie
	tr.insert(pfx("10.1.0.0/16"), &claim{label: "a"})
	tr.insert(pfx("10.3.4.0/24"), &claim{label: "b"})
	tr.insert(pfx("fd00::/64"), &claim{label: "c"})
	for q, want := range map[string]string{
		"10.1.2.0/24": "a", "10.0.0.0/8": "a", "10.1.0.0/16": "a", "10.2.0.0/16": "", "10.3.0.0/16": "b",
		"10.3.4.5/32": "b", "0.0.0.0/0": "a", "11.0.0.0/8": "", "fd00::1/128": "c", "fd00::/16": "c", "fd01::/64": "",
	} {
		got := ""
		if c := tr.find(pfx(q)); c != nil {
			got = c.label
		}
		if q == "0.0.0.0/0" && got != "" {
			continue // either a or b
		}
		if got != want {
			t.Errorf("find(%s) = %q, want %q", q, got, want)
		}
	}
}

func TestPeerFromNode(t *testing.T) {
	n := &wire.Node{Name: "n1", Cluster: "west", WireguardPubKey: "k",
		IPAddresses:   []wire.NodeAddress{{Type: wire.InternalIP, IP: netip.MustParseAddr("192.0.2.7")}},
		IPv4AllocCIDR: &wire.CIDR{Prefix: pfx("10.2.0.0/24")}, IPv6AllocCIDR: &wire.CIDR{Prefix: pfx("fd00:2::/96")}}
	p := PeerFromNode(n, 51871)
	if p.Cluster != "west" || p.Node != "n1" || p.PublicKey != "k" || p.Endpoint.String() != "192.0.2.7:51871" ||
		p.NodeIP.String() != "192.0.2.7" || len(p.PodCIDRs) != 2 {
		t.Fatalf("%+v", p)
	}
}
