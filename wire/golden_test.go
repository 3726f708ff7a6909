package wire

import (
	"net/netip"
	"testing"
)

// TestGoldenJSON pins the exact JSON of each value type: a change here breaks
// interoperability with Cilium and with older versions of ourselves.
func TestGoldenJSON(t *testing.T) {
	cfg, _ := EncodeClusterConfig(ClusterConfig{ID: 3, Capabilities: Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})
	node, _ := EncodeNode(&Node{Name: "n1", Cluster: "east", ClusterID: 1, Source: "custom-resource",
		IPAddresses:   []NodeAddress{{Type: InternalIP, IP: netip.MustParseAddr("192.168.1.1")}},
		IPv4AllocCIDR: &CIDR{netip.MustParsePrefix("10.1.0.0/24")}})
	ip, _ := EncodeIPIdentityPair(&IPIdentityPair{IP: netip.MustParseAddr("10.1.0.5"), HostIP: netip.MustParseAddr("192.168.1.1"),
		ID: 65600, K8sNamespace: "shop", K8sPodName: "checkout-0"})
	svc, _ := EncodeService(&ClusterService{Cluster: "east", Namespace: "shop", Name: "checkout", ClusterID: 1, Shared: true,
		Frontends: map[string]PortConfiguration{"10.96.0.10": {"http": {Protocol: "TCP", Port: 80}}},
		Backends:  map[string]PortConfiguration{"10.1.0.5": {"http": {Protocol: "TCP", Port: 8080}}},
		Labels:    map[string]string{}, Selector: map[string]string{"app": "checkout"}})
	for _, tc := range []struct{ name, got, want string }{
		{"cluster config", string(cfg), `{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}`},
		{"node", string(node), `{"Name":"n1","Cluster":"east","IPAddresses":[{"Type":"InternalIP","IP":"192.168.1.1"}],` +
			`"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"////AA=="},"IPv6AllocCIDR":null,"IPv4HealthIP":"","IPv6HealthIP":"",` +
			`"ClusterID":1,"Source":"custom-resource","EncryptionKey":0,"Labels":null,"Annotations":null,"WireguardPubKey":"","BootID":""}`},
		{"ipcache", string(ip), `{"IP":"10.1.0.5","Mask":null,"HostIP":"192.168.1.1","ID":65600,"Key":0,"Metadata":"",` +
			`"K8sNamespace":"shop","K8sPodName":"checkout-0"}`},
		{"service", string(svc), `{"cluster":"east","namespace":"shop","name":"checkout",` +
			`"frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.1.0.5":{"http":{"Protocol":"TCP","Port":8080}}},` +
			`"labels":{},"selector":{"app":"checkout"},"includeExternal":false,"shared":true,"clusterID":1}`},
	} {
		if tc.got != tc.want {
			t.Errorf("%s JSON changed:\n got %s\nwant %s", tc.name, tc.got, tc.want)
		}
	}
}
