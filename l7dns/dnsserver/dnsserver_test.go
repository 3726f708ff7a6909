package dnsserver

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

const zoneText = `
$TTL 30
checkout  IN A    10.1.0.5
checkout  IN AAAA fd00::5
alias     IN CNAME checkout
`

func TestServeZone(t *testing.T) {
	z, err := ParseZone("east.example", strings.NewReader(zoneText))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 60; i++ { // more than 512 bytes of answers
		rr, _ := dns.NewRR("big.east.example. 5 IN A 10.2.0." + string(rune('0'+i%10)))
		rr.(*dns.A).A[3] = byte(i)
		z.Add(rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Start(z, pc, l)
	defer func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	ask := func(network, addr, name string, qt uint16) *dns.Msg {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion(name, qt)
		a, _, err := (&dns.Client{Net: network}).Exchange(q, addr)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	udp, tcp := pc.LocalAddr().String(), l.Addr().String()
	if a := ask("udp", udp, "ALIAS.east.example.", dns.TypeA); len(a.Answer) != 2 || a.Answer[1].(*dns.A).A.String() != "10.1.0.5" || !a.Authoritative {
		t.Fatalf("alias: %v", a)
	}
	if a := ask("tcp", tcp, "checkout.east.example.", dns.TypeAAAA); len(a.Answer) != 1 {
		t.Fatalf("AAAA over TCP: %v", a)
	}
	if a := ask("udp", udp, "nothing.east.example.", dns.TypeA); a.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown name: %v", a)
	}
	if a := ask("udp", udp, "big.east.example.", dns.TypeA); !a.Truncated || len(a.Answer) >= 60 {
		t.Fatalf("a 60-record answer over UDP is not truncated: %d records, tc %v", len(a.Answer), a.Truncated)
	}
	if a := ask("tcp", tcp, "big.east.example.", dns.TypeA); a.Truncated || len(a.Answer) != 60 {
		t.Fatalf("over TCP: %d records, tc %v", len(a.Answer), a.Truncated)
	}
}

func TestParseZoneError(t *testing.T) {
	if _, err := ParseZone("x", strings.NewReader("a IN A not-an-address\n")); err == nil {
		t.Fatal("a bad record parsed")
	}
	if _, err := ReadZoneFile("x", filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a missing file: %v", err)
	}
}

func TestReadZoneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "east.zone")
	if err := os.WriteFile(path, []byte(zoneText), 0o600); err != nil {
		t.Fatal(err)
	}
	z, err := ReadZoneFile("east.example.", path)
	if err != nil {
		t.Fatal(err)
	}
	q := new(dns.Msg)
	q.SetQuestion("checkout.east.example.", dns.TypeA)
	if a := z.Answer(q); len(a.Answer) != 1 || a.Answer[0].Header().Ttl != 30 {
		t.Fatalf("answer %v", a)
	}
}
