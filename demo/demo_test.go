package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestMain runs the demo's client when the demo re-executes this binary as
// `demo.test demo client URL N` (as it re-executes clustermesh).
func TestMain(m *testing.M) {
	if os.Getenv(ClientEnv) != "" {
		os.Exit(clientMain(os.Args[1:]))
	}
	testenv.Main(m)
}

func clientMain(args []string) int {
	if len(args) != 4 || args[0] != "demo" || args[1] != "client" {
		fmt.Fprintf(os.Stderr, "demo client: unexpected arguments %q\n", args)
		return 2
	}
	n, err := strconv.Atoi(args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := RunClient(context.Background(), os.Stdout, args[2], n); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func runOnce(t *testing.T, ebpf bool) string {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := Run(ctx, Options{Out: &out, Once: true, EBPF: ebpf, Traffic: ebpf, Dir: t.TempDir(), Logger: discardLogger()})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatalf("demo --once: %v", err)
	}
	steps := []string{"ok   (a)", "ok   (b)", "ok   (c)", "ok   (c2)", "ok   (c3)", "ok   (d)", "ok   (e)", "ok   (f)", "all steps held"}
	if !ebpf {
		steps[1], steps[3], steps[4] = "skip (b)", "skip (c2)", "skip (c3)"
		steps = append(steps, "[in-memory datapath: no L7 proxy]")
	}
	for _, step := range steps {
		if !strings.Contains(out.String(), step) {
			t.Errorf("output lacks %q", step)
		}
	}
	return out.String()
}

func TestDemoOnceInMemory(t *testing.T) { runOnce(t, false) }

func TestDemoOnceEBPF(t *testing.T) {
	testenv.RequireRoot(t)
	out := runOnce(t, true)
	for _, phase := range []string{"east ready:", "east unready:", "east ready again:",
		"west/frontend-1 → 10.1.1.12:8080: answered", "(dropped)", "Policy denied DROPPED (TCP Flags: SYN)",
		"policy-verdict:L3-L4 INGRESS ALLOWED FORWARDED", "west/node-1 ", "north/node-1 ", "from-endpoint FORWARDED",
		// (c3): the HTTP rule on east's checkout, the DNS rule and toFQDNs
		// on east's frontend, and their L7 flows through the relay.
		`west/frontend-1 → http://10.1.1.12:8080/v1/cart: GET 200 "east checkout-2", POST 403 "Access denied", GET 200 "east checkout-2" (one connection)`,
		`north/frontend-1 → http://10.1.1.12:8080/v1/cart: GET 200 "east checkout-2", POST 403 "Access denied", GET 200`,
		`evil.example.org refused; api.shop.example → 10.2.1.101; then 10.2.1.101:8080 answered "ext api.shop.example" (toFQDNs)`,
		"west/shop/frontend-1:", "north/shop/frontend-1:",
		"http-request FORWARDED (HTTP/1.1 GET http://10.1.1.12:8080/v1/cart)",
		"http-response FORWARDED (HTTP/1.1 200 took ",
		"http-request DROPPED (HTTP/1.1 POST http://10.1.1.12:8080/v1/cart)",
		"dns-request proxy FORWARDED (DNS Query api.shop.example. A)",
		`dns-response proxy FORWARDED (DNS Answer "10.2.1.101" TTL: 30 (Proxy api.shop.example. A))`,
		"dns-request proxy DROPPED (DNS Query evil.example.org. A)"} {
		if !strings.Contains(out, phase) {
			t.Errorf("output lacks the traffic phase %q", phase)
		}
	}
	checkNoPins(t)
	checkNoDemoCgroup(t)
}
