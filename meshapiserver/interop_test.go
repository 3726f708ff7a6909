package meshapiserver

import (
	"encoding/base64"
	"encoding/json"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestInteropWithReferenceDecoder reads everything our apiserver writes and
// decodes it with a decoder written from the reference alone (key layout,
// JSON key names and types, label encoding), not with package wire: what a
// Cilium agent would read must be there, spelled the way Cilium spells it.
func TestInteropWithReferenceDecoder(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	resp, err := get(t, admin, "cilium/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, kv := range resp.Kvs {
		key, val := string(kv.Key), kv.Value
		switch {
		case key == "cilium/.heartbeat":
			refTimestamp(t, key, string(val))
			seen["heartbeat"]++
		case key == "cilium/cluster-config/east":
			refClusterConfig(t, val)
			seen["config"]++
		case strings.HasPrefix(key, "cilium/synced/east/cilium/state/"):
			refTimestamp(t, key, string(val))
			seen["canary"]++
		case strings.HasPrefix(key, "cilium/state/nodes/v1/east/"):
			refNode(t, strings.TrimPrefix(key, "cilium/state/nodes/v1/east/"), val)
			seen["node"]++
		case strings.HasPrefix(key, "cilium/state/services/v1/east/"):
			refService(t, strings.TrimPrefix(key, "cilium/state/services/v1/east/"), val)
			seen["service"]++
		case strings.HasPrefix(key, "cilium/state/ip/v1/default/"):
			refIPCache(t, strings.TrimPrefix(key, "cilium/state/ip/v1/default/"), val)
			seen["ip"]++
		case strings.HasPrefix(key, "cilium/state/identities/v1/id/"):
			refIdentity(t, strings.TrimPrefix(key, "cilium/state/identities/v1/id/"), string(val))
			seen["identity"]++
		default:
			t.Errorf("key outside the reference layout: %s", key)
		}
	}
	// Five canaries: the four kinds and the MCS API's export specs
	// (cilium/synced/<cluster>/cilium/state/serviceexports/v1).
	want := map[string]int{"heartbeat": 1, "config": 1, "canary": 5, "node": 1, "service": 1, "ip": 3, "identity": 2}
	for k, n := range want {
		if seen[k] != n {
			t.Errorf("%s: %d entries, want %d (all: %v)", k, seen[k], n, seen)
		}
	}
}

func object(t *testing.T, what string, v []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(v, &m); err != nil {
		t.Fatalf("%s: not a JSON object: %v", what, err)
	}
	return m
}

// has checks that m has each key with the JSON type given by its example.
func has(t *testing.T, what string, m map[string]any, fields map[string]string) {
	t.Helper()
	for k, typ := range fields {
		v, ok := m[k]
		if !ok {
			t.Errorf("%s: no key %q", what, k)
			continue
		}
		got := "null"
		switch v.(type) {
		case string:
			got = "string"
		case float64:
			got = "number"
		case bool:
			got = "bool"
		case map[string]any:
			got = "object"
		case []any:
			got = "array"
		}
		if got != typ && !(typ == "object|null" && (got == "object" || got == "null")) && !(typ == "string|null" && (got == "string" || got == "null")) {
			t.Errorf("%s: %q is %s, want %s", what, k, got, typ)
		}
	}
}

func refTimestamp(t *testing.T, key, v string) {
	t.Helper()
	if _, err := time.Parse(time.RFC3339, v); err != nil {
		t.Errorf("%s: %q is not an RFC 3339 timestamp", key, v)
	}
}

func refClusterConfig(t *testing.T, v []byte) {
	m := object(t, "cluster config", v)
	has(t, "cluster config", m, map[string]string{"id": "number", "capabilities": "object"})
	caps := m["capabilities"].(map[string]any)
	has(t, "capabilities", caps, map[string]string{"syncedCanaries": "bool", "maxConnectedClusters": "number"})
	if _, ok := caps["cached"]; ok {
		t.Errorf("capabilities carry cached: false, which Cilium omits (omitempty)")
	}
	if m["id"].(float64) != 1 {
		t.Errorf("cluster id %v", m["id"])
	}
}

func refNode(t *testing.T, name string, v []byte) {
	m := object(t, "node", v)
	has(t, "node", m, map[string]string{"Name": "string", "Cluster": "string", "IPAddresses": "array", "IPv4AllocCIDR": "object|null",
		"IPv6AllocCIDR": "object|null", "ClusterID": "number", "Source": "string", "EncryptionKey": "number", "WireguardPubKey": "string",
		"IPv4HealthIP": "string|null", "IPv6HealthIP": "string|null", "BootID": "string"})
	if m["Name"] != name || m["Cluster"] != "east" || m["ClusterID"].(float64) != 1 {
		t.Errorf("node %s: %v", name, m)
	}
	for _, a := range m["IPAddresses"].([]any) {
		addr := a.(map[string]any)
		has(t, "node address", addr, map[string]string{"Type": "string", "IP": "string"})
		if _, err := netip.ParseAddr(addr["IP"].(string)); err != nil {
			t.Errorf("node address %v", addr)
		}
	}
	cidr := m["IPv4AllocCIDR"].(map[string]any)
	mask, err := base64.StdEncoding.DecodeString(cidr["Mask"].(string))
	if err != nil || len(mask) != 4 || cidr["IP"] != "10.1.1.0" {
		t.Errorf("IPv4AllocCIDR %v: want {IP 10.1.1.0, Mask base64 of 4 bytes}", cidr)
	}
}

func refService(t *testing.T, rest string, v []byte) {
	m := object(t, "service", v)
	has(t, "service", m, map[string]string{"cluster": "string", "namespace": "string", "name": "string", "frontends": "object",
		"backends": "object", "labels": "object", "selector": "object", "includeExternal": "bool", "shared": "bool", "clusterID": "number"})
	if rest != m["namespace"].(string)+"/"+m["name"].(string) || m["cluster"] != "east" || m["shared"] != true {
		t.Errorf("service %s: %v", rest, m)
	}
	for _, side := range []string{"frontends", "backends"} {
		for ip, ports := range m[side].(map[string]any) {
			if _, err := netip.ParseAddr(ip); err != nil {
				t.Errorf("%s address %q", side, ip)
			}
			for name, l4 := range ports.(map[string]any) {
				has(t, side+" port "+name, l4.(map[string]any), map[string]string{"Protocol": "string", "Port": "number"})
			}
		}
	}
}

func refIPCache(t *testing.T, suffix string, v []byte) {
	m := object(t, "ipcache", v)
	has(t, "ipcache", m, map[string]string{"IP": "string", "Mask": "string|null", "HostIP": "string", "ID": "number", "Key": "number", "Metadata": "string"})
	if m["IP"] != suffix || m["Mask"] != nil {
		t.Errorf("ipcache %s: IP %v Mask %v (a single address: its own key, null mask)", suffix, m["IP"], m["Mask"])
	}
	id := uint32(m["ID"].(float64))
	if id < 1<<16 || id > 2<<16-1 {
		t.Errorf("ipcache %s: identity %d outside cluster 1's range", suffix, id)
	}
	if m["K8sNamespace"] != "shop" || m["K8sPodName"] == nil {
		t.Errorf("ipcache %s: K8sNamespace/K8sPodName %v/%v", suffix, m["K8sNamespace"], m["K8sPodName"])
	}
}

var labelRE = regexp.MustCompile(`^([a-z0-9]+):([^=;]+)=([^;]*);$`)

func refIdentity(t *testing.T, idStr, v string) {
	id, err := strconv.ParseUint(idStr, 10, 32)
	if err != nil || id < 1<<16 || id > 2<<16-1 {
		t.Errorf("identity key %q: not a number in cluster 1's range", idStr)
	}
	var keys []string
	cluster := ""
	for _, item := range strings.SplitAfter(v, ";") {
		if item == "" {
			continue
		}
		g := labelRE.FindStringSubmatch(item)
		if g == nil {
			t.Errorf("identity %s: label %q is not source:key=value;", idStr, item)
			continue
		}
		keys = append(keys, g[2])
		if g[1] == "k8s" && g[2] == "io.cilium.k8s.policy.cluster" {
			cluster = g[3]
		}
	}
	if !sort.StringsAreSorted(keys) {
		t.Errorf("identity %s: labels not sorted: %q", idStr, v)
	}
	if cluster != "east" {
		t.Errorf("identity %s: cluster label %q, want east (%q)", idStr, cluster, v)
	}
}
