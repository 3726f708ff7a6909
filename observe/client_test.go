package observe

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Target
		err  string
	}{
		{in: "unix:///var/run/clustermesh/hubble.sock", want: Target{Network: "unix", Address: "/var/run/clustermesh/hubble.sock"}},
		{in: "unix:hubble.sock", want: Target{Network: "unix", Address: "hubble.sock"}},
		{in: "/tmp/h.sock", want: Target{Network: "unix", Address: "/tmp/h.sock"}},
		{in: "127.0.0.1:4244", want: Target{Network: "tcp", Address: "127.0.0.1:4244"}},
		{in: "[fd00::1]:4244", want: Target{Network: "tcp", Address: "[fd00::1]:4244"}},
		{in: "tls://relay.example:4245", want: Target{Network: "tcp", Address: "relay.example:4245", TLS: true}},
		{in: "localhost", err: "want unix:///PATH, host:port or tls://host:port"},
		{in: "unix://", err: "the unix socket's path is missing"},
		{in: "", err: "want unix:///PATH"},
	} {
		got, err := ParseTarget(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %+v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// FuzzParseTarget: never a panic; a parsed target has a network and an
// address, and a TCP one has a port.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"unix:///x", "unix:x", "/x", "a:1", "tls://a:1", "tls://unix:///x", "[::1]:1", "", "tls://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseTarget(s)
		if err != nil {
			return
		}
		if tg.Address == "" || tg.Network != "unix" && tg.Network != "tcp" {
			t.Fatalf("%q: %+v", s, tg)
		}
		if tg.Network == "tcp" {
			if _, _, err := net.SplitHostPort(tg.Address); err != nil {
				t.Fatalf("%q: %+v: %v", s, tg, err)
			}
		}
	})
}

// TestDialErrors checks the sentinel each failure to connect wraps.
func TestDialErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, "unix://"+filepath.Join(t.TempDir(), "none.sock"), nil)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("no socket: %v, want ErrUnreachable with the cause", err)
	}
	// A server that closes every connection at once: not gRPC.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, err = Dial(ctx, l.Addr().String(), nil)
	if !errors.Is(err, ErrNotGRPC) {
		t.Errorf("a server that hangs up: %v, want ErrNotGRPC", err)
	}
	_, err = Dial(ctx, "tls://"+l.Addr().String(), nil)
	if !errors.Is(err, ErrHandshake) {
		t.Errorf("TLS to a server that hangs up: %v, want ErrHandshake", err)
	}
	l.Close()
	<-done
	_, err = Dial(ctx, l.Addr().String(), nil)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("nothing listening: %v, want ErrUnreachable (refused)", err)
	}
}
