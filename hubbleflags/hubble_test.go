package hubbleflags

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/hubbletest"
)

// hubbleTokens are single filter flags with a value, for command lines
// compared with the real hubble CLI: every filter flag, values Hubble
// takes and values it refuses.
var hubbleTokens = [][]string{
	{"--pod", "frontend"}, {"--pod", "shop/checkout"}, {"--from-pod", "shop/frontend"}, {"--to-pod", "checkout"}, {"--to-pod", "bank/x"},
	{"-n", "shop"}, {"--namespace", "bank"}, {"--from-namespace", "shop"}, {"--to-namespace", "shop"}, {"-A"},
	{"--from-all-namespaces"}, {"--to-all-namespaces"},
	{"--label", "app=frontend"}, {"-l", "k8s:app in (a,b)"}, {"--from-label", "reserved:world"}, {"--to-label", "app=checkout"},
	{"--ip", "10.1.1.11"}, {"--from-ip", "10.2.0.0/16"}, {"--to-ip", "fd00::1"}, {"--snat-ip", "1.2.3.4"},
	{"--port", "8080"}, {"--from-port", "41000"}, {"--to-port", "53"},
	{"--identity", "world"}, {"--identity", "132000"}, {"--from-identity", "remote-node"}, {"--to-identity", "0x10"},
	{"--to-identity", "unknown"}, {"--from-identity", "-1"},
	{"--service", "shop/cart"}, {"--from-service", "cart"}, {"--to-service", "bank/vault"},
	{"--workload", "Deployment/frontend"}, {"--from-workload", "checkout"}, {"--to-workload", "StatefulSet/"},
	{"--cluster", "west"}, {"--from-cluster", "east"}, {"--to-cluster", "prod-*"},
	{"--verdict", "DROPPED"}, {"--verdict", "FORWARDED"}, {"--verdict", "AUDIT"}, {"--verdict", "dropped"},
	{"--type", "drop"}, {"--type", "trace:to-endpoint"}, {"-t", "policy-verdict"}, {"--type", "trace-sock"}, {"--type", "trace:from-network"},
	{"--type", "l7"}, {"--type", "capture"}, {"--type", "agent:policy-updated"}, {"--type", "5"}, {"--type", "4:11"}, {"--type", "trace:x"},
	{"--drop-reason-desc", "POLICY_DENIED"}, {"--drop-reason-desc", "STALE_OR_UNROUTABLE_IP"}, {"--drop-reason-desc", "denied"},
	{"--tcp-flags", "syn"}, {"--tcp-flags", "SYN,ack"}, {"--tcp-flags", "bogus"},
	{"--protocol", "tcp"}, {"--protocol", "UDP"}, {"--traffic-direction", "ingress"}, {"--traffic-direction", "EGRESS"},
	{"--node-name", "east/node-1"}, {"--node-label", "zone=a"}, {"-4"}, {"-6"}, {"--ip-version", "v4"}, {"--ip-version", "none"},
	{"--reply"}, {"--not-reply"}, {"--encrypted"}, {"--unencrypted"}, {"--uuid", "f00"}, {"--interface", "eth0"},
	{"--http-status", "404"}, {"--http-method", "get"}, {"--http-path", "/orders/\\d+"}, {"--http-url", "http://x/"},
	{"--http-header", "x-tenant:blue"}, {"--fqdn", "*.example.com"}, {"--from-fqdn", "a.example.com"}, {"--to-fqdn", "b.example.com"},
	{"--trace-id", "abc"}, {"--ip-trace-id", "42"}, {"--cel-expression", "true"},
}

// hubbleCommandLines are the command lines compared: each token alone,
// each negated, and random combinations (a fixed seed) with --not here and
// there.
func hubbleCommandLines() [][]string {
	var lines [][]string
	for _, tok := range hubbleTokens {
		lines = append(lines, tok, append([]string{"--not"}, tok...))
	}
	r := rand.New(rand.NewPCG(14, 5))
	for range 120 {
		var line []string
		for range 2 + r.IntN(4) {
			if r.IntN(4) == 0 {
				line = append(line, "--not")
			}
			line = append(line, hubbleTokens[r.IntN(len(hubbleTokens))]...)
		}
		lines = append(lines, line)
	}
	return append(lines,
		[]string{"--allowlist", `{"source_pod":["a"]}`, "--denylist", `{"verdict":["DROPPED"]}{"reply":[true]}`, "--pod", "b"},
		[]string{"--not"}, []string{"--not", "--not", "--pod", "a"}, []string{"--pod", "a", "--not"},
		[]string{"--first", "3", "--last", "2"}, []string{"--first", "3", "-f"}, []string{"--all", "--last", "2"},
		[]string{"--since", "5m", "--until", "2026-11-21T03:00:00Z"}, []string{"--since", "bogus"})
}

// TestSameAsHubble runs `hubble observe --print-raw-filters` (the real
// v1.20.2 CLI) and this package on the same command lines: the filters
// must be printed byte for byte alike, and a command line one refuses the
// other must refuse too.
func TestSameAsHubble(t *testing.T) {
	hubble := hubbletest.Require(t)
	lines := hubbleCommandLines()
	outs := make([]hubbletest.Output, len(lines))
	errs := make([]error, len(lines))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 2 {
		wg.Go(func() {
			for i := range work {
				outs[i], errs[i] = hubble.Run(ctx, append([]string{"observe", "--print-raw-filters"}, lines[i]...)...)
			}
		})
	}
	for i := range lines {
		work <- i
	}
	close(work)
	wg.Wait()
	refused := 0
	for i, line := range lines {
		got, err := rawFilters(line...)
		switch {
		case errs[i] != nil && err == nil:
			t.Errorf("%q: hubble refuses it (%s), this takes it:\n%s", line, strings.TrimSpace(outs[i].Stderr), got)
		case errs[i] == nil && err != nil:
			t.Errorf("%q: hubble takes it, this refuses it: %v\nhubble:\n%s", line, err, outs[i].Stdout)
		case errs[i] != nil:
			refused++
			checkSameFlag(t, line, outs[i].Stderr, err)
		case got != outs[i].Stdout:
			t.Errorf("%q:\n got %s\nhubble %s", line, got, outs[i].Stdout)
		}
	}
	t.Logf("%d command lines compared with hubble %s, %d refused by both", len(lines), hubbletest.Version, refused)
}

// checkSameFlag checks that both refusals blame the same flag and value
// (pflag's `invalid argument "V" for "--F" flag` prefix), when Hubble's does.
func checkSameFlag(t *testing.T, line []string, hubbleStderr string, err error) {
	t.Helper()
	prefix, _, ok := strings.Cut(strings.TrimSpace(hubbleStderr), " flag: ")
	if !ok || !strings.HasPrefix(prefix, "invalid argument") {
		return
	}
	if !strings.HasPrefix(err.Error(), prefix+" flag: ") {
		t.Errorf("%q: hubble: %s\nthis: %v", line, strings.TrimSpace(hubbleStderr), fmt.Sprint(err))
	}
}
