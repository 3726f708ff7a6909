package metricsserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestServesTheCollectorsUntilCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "clustermesh_test_gauge", Help: "a test gauge"})
	g.Set(42)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "clustermesh_test_total", Help: "a test counter"})
	c.(prometheus.ExemplarAdder).AddWithExemplar(1, prometheus.Labels{"traceID": "4bf92f35"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, slog.New(slog.DiscardHandler), addr, g, c) }()
	var body string
	testenv.WaitFor(t, 10*time.Second, "the metrics served", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK
	})
	for _, want := range []string{"clustermesh_test_gauge 42", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Read as OpenMetrics, the exemplars (the L7 flow metrics' trace ids)
	// are shown.
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `clustermesh_test_total 1.0 # {traceID="4bf92f35"} 1.0`; !strings.Contains(string(b), want) {
		t.Errorf("OpenMetrics /metrics lacks the exemplar %q:\n%s", want, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Error("still serving after cancel")
	}
}

func TestEmptyAddressServesNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Serve(ctx, slog.Default(), ""); err != nil {
		t.Fatal(err)
	}
}
