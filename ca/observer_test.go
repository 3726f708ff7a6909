package ca

import (
	"strings"
	"testing"
)

func TestObserverServerName(t *testing.T) {
	for _, tt := range []struct{ cluster, node, want string }{
		{"east", "node-1", "node-1.east.hubble-grpc.clustermesh.io"},
		{"east.prod", "ip-10-0-0-1.ec2.internal", "ip-10-0-0-1-ec2-internal.east-prod.hubble-grpc.clustermesh.io"},
	} {
		if got := ObserverServerName(tt.cluster, tt.node); got != tt.want {
			t.Errorf("ObserverServerName(%q, %q) = %q, want %q", tt.cluster, tt.node, got, tt.want)
		}
	}
	if got := ObserverDNSName("east.prod"); got != "*.east-prod.hubble-grpc.clustermesh.io" {
		t.Errorf("ObserverDNSName = %q", got)
	}
}

// TestObserverBundleHandshake: the agents' Observer certificate of cluster
// east is accepted for every node name of east and refused for a node of
// west; the server requires the client certificate.
func TestObserverBundleHandshake(t *testing.T) {
	c := newTestCA(t, "mesh")
	east := Bundle{Dir: t.TempDir(), Cluster: "east"}
	if err := c.IssueObserverBundle(east); err != nil {
		t.Fatalf("IssueObserverBundle: %v", err)
	}
	server, err := ServerTLSConfig(east.ObserverCert(), east.ObserverKey(), east.CAFile())
	if err != nil {
		t.Fatalf("ServerTLSConfig: %v", err)
	}
	client, err := ClientTLSConfig(east.ObserverClientCert(), east.ObserverClientKey(), east.CAFile())
	if err != nil {
		t.Fatalf("ClientTLSConfig: %v", err)
	}
	for _, tt := range []struct {
		serverName string
		ok         bool
	}{
		{ObserverServerName("east", "node-1"), true},
		{ObserverServerName("east", "k8s.node.2"), true},
		{ObserverServerName("west", "node-1"), false},
		{"east." + ObserverDomain, false},
	} {
		cfg := client.Clone()
		cfg.ServerName = tt.serverName
		user, serverErr, clientErr := handshake(t, server, cfg)
		if tt.ok && (serverErr != nil || clientErr != nil || user != "observer-client-east") {
			t.Errorf("%s: user %q, server %v, client %v; want a handshake as observer-client-east", tt.serverName, user, serverErr, clientErr)
		}
		if !tt.ok && (clientErr == nil || !strings.Contains(clientErr.Error(), "certificate is valid for")) {
			t.Errorf("%s: client error %v, want a name mismatch", tt.serverName, clientErr)
		}
	}
	noCert := client.Clone()
	noCert.Certificates = nil
	noCert.ServerName = ObserverServerName("east", "node-1")
	if _, serverErr, _ := handshake(t, server, noCert); serverErr == nil {
		t.Errorf("a client without certificate was accepted")
	}
}
