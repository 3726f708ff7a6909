package relay

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/relay/relaytest"
)

// BenchmarkRelayThroughput: flows per second a following client receives
// from one Observer server directly (mutual TLS) and through the relay, in
// the same run, and their ratio (the flow.relay.throughput_ratio figure with
// the test's own server instead of an agent).
func BenchmarkRelayThroughput(b *testing.B) {
	const n = 50_000
	m := newTestMesh(b)
	node := m.addNode("east", "n1", "east")
	m.announce()
	m.startRelay(func(c *Config) { c.Log = slog.New(slog.DiscardHandler) })
	m.waitConnected(1)
	direct := m.directConn(node)
	// Each iteration measures both, back to back; the medians are
	// reported, as the machine's other load comes and goes.
	var directs, relays, ratios []float64
	for b.Loop() {
		d := measure(b, direct, node.obs, n).PerSecond()
		r := measure(b, m.conn, node.obs, n).PerSecond()
		directs, relays, ratios = append(directs, d), append(relays, r), append(ratios, r/d)
	}
	b.ReportMetric(median(directs), "direct-flows/s")
	b.ReportMetric(median(relays), "relay-flows/s")
	b.ReportMetric(median(ratios), "ratio")
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}

// measure follows conn while o produces n flows.
func measure(b *testing.B, conn grpc.ClientConnInterface, o *relaytest.Observer, n int) relaytest.Rate {
	ctx, cancel := context.WithTimeout(b.Context(), time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := o.WaitFollowers(ctx, 1); err != nil {
			return
		}
		o.Produce(n, time.Now())
	}()
	rate, err := relaytest.Receive(ctx, conn, n, nil)
	cancel()
	<-done
	if err != nil {
		b.Fatal(err)
	}
	if err := o.WaitFollowers(b.Context(), 0); err != nil {
		b.Fatal(err)
	}
	return rate
}

// directConn is a client of node's Observer server with east's client
// certificate.
func (m *testMesh) directConn(node *testNode) *grpc.ClientConn {
	b := m.bundle("east")
	cfg, err := ca.ClientTLSConfig(b.ObserverClientCert(), b.ObserverClientKey(), b.CAFile())
	if err != nil {
		m.t.Fatal(err)
	}
	cfg.ServerName = node.peer.TLSServerName
	conn, err := grpc.NewClient(node.peer.Address, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { conn.Close() })
	return conn
}
