package relay

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/hubbletest"
)

// The real hubble CLI against the relay: status with the connected and
// unavailable nodes, list nodes, observe --last over the whole mesh in
// time order, and all of it over mutual TLS.
func TestHubbleCLI(t *testing.T) {
	hubble := hubbletest.Require(t)
	m, nodes := threeNodes(t, nil)
	srv, err := m.ca.IssueServer("hubble-relay", []string{"hubble-relay.clustermesh.io"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Save(m.dir, "relay"); err != nil {
		t.Fatal(err)
	}
	plain := m.relay.Addr().String()
	// A second relay on the same peers, with mutual TLS.
	tlsRelay, _ := m.runRelay(func(c *Config) { c.ServerCertFile, c.ServerKeyFile = m.dir+"/relay.crt", m.dir+"/relay.key" })
	m.waitConnectedOn(tlsRelay, 3)
	b := m.bundle("east")
	tlsFlags := []string{"--server", tlsRelay.Addr().String(), "--tls", "--tls-ca-cert-files", b.CAFile(),
		"--tls-client-cert-file", b.ObserverClientCert(), "--tls-client-key-file", b.ObserverClientKey(),
		"--tls-server-name", "hubble-relay.clustermesh.io"}
	ctx := t.Context()

	for _, server := range [][]string{{"--server", plain}, tlsFlags} {
		out, err := hubble.Run(ctx, append([]string{"status"}, server...)...)
		if err != nil || !strings.Contains(out.Stdout, "Healthcheck (via") || !strings.Contains(out.Stdout, "Connected Nodes: 3/3") || !strings.Contains(out.Stdout, "Current/Max Flows: 30/12,288") {
			t.Errorf("hubble status %v: %v\n%s", server, err, out.Stdout)
		}
		t.Logf("hubble status:\n%s", out.Stdout)
		out, err = hubble.Run(ctx, append([]string{"observe", "-o", "json", "--last", "5"}, server...)...)
		if err != nil {
			t.Fatal(err)
		}
		var times []string
		for _, line := range strings.Split(strings.TrimSpace(out.Stdout), "\n") {
			var r struct {
				Flow struct {
					Time     time.Time `json:"time"`
					NodeName string    `json:"node_name"`
				} `json:"flow"`
			}
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			times = append(times, r.Flow.NodeName+"@"+r.Flow.Time.Format("05.000"))
		}
		if len(times) != 5 || times[0] != "east/n2@05.025" || times[4] != "west/n1@05.029" {
			t.Errorf("hubble observe --last 5 %v: %v", server, times)
		}
	}

	out, err := hubble.Run(ctx, "list", "nodes", "--server", plain)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hubble list nodes:\n%s", out.Stdout)
	for _, n := range []string{"east/n1", "east/n2", "west/n1"} {
		if !strings.Contains(out.Stdout, n) || !strings.Contains(out.Stdout, "Connected") {
			t.Errorf("hubble list nodes does not show %s connected:\n%s", n, out.Stdout)
		}
	}
	nodes[1].stop()
	m.waitConnected(2)
	out, err = hubble.Run(ctx, "status", "--server", plain)
	t.Logf("hubble status with east/n2 down:\n%s", out.Stdout)
	if err != nil || !strings.Contains(out.Stdout, "Connected Nodes: 2/3") || !strings.Contains(out.Stdout, "east/n2") {
		t.Errorf("hubble status with east/n2 down: %v\n%s", err, out.Stdout)
	}
}
