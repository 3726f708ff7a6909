// Package dnsserver is a small authoritative DNS server of ours, on
// miekg/dns: it answers a zone (RFC 1035 text, from a file or a string)
// over UDP and TCP, following CNAMEs within the zone, truncating UDP
// answers to the client's size as real servers do. The demo runs it in a
// pod's network namespace; tests run it on loopback.
package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Zone is records by owner name (lower case, with its trailing dot).
type Zone map[string][]dns.RR

// ParseZone reads RFC 1035 zone text ("www 30 IN A 10.0.0.1" lines, names
// relative to origin).
func ParseZone(origin string, r io.Reader) (Zone, error) {
	z := Zone{}
	zp := dns.NewZoneParser(r, dns.Fqdn(origin), "")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		z.Add(rr)
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("parsing zone %s: %w", origin, err)
	}
	return z, nil
}

// ReadZoneFile reads a zone file (RFC 1035 text, names relative to origin).
func ReadZoneFile(origin, path string) (Zone, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading zone %s: %w", origin, err)
	}
	defer f.Close()
	return ParseZone(origin, f)
}

// Add adds rr to z.
func (z Zone) Add(rr dns.RR) {
	name := strings.ToLower(dns.Fqdn(rr.Header().Name))
	z[name] = append(z[name], rr)
}

// Answer is z's answer to q: the records of the question's type, through
// CNAMEs in the zone; NXDOMAIN for a name the zone does not have.
func (z Zone) Answer(q *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	qt := q.Question[0].Qtype
	name := strings.ToLower(q.Question[0].Name)
	if _, ok := z[name]; !ok {
		m.Rcode = dns.RcodeNameError
		return m
	}
	for range 8 {
		var next string
		for _, rr := range z[name] {
			h := rr.Header()
			switch {
			case h.Rrtype == qt || qt == dns.TypeANY:
				m.Answer = append(m.Answer, rr)
			case h.Rrtype == dns.TypeCNAME:
				m.Answer = append(m.Answer, rr)
				next = strings.ToLower(rr.(*dns.CNAME).Target)
			}
		}
		if next == "" {
			break
		}
		name = next
	}
	return m
}

// Server serves a Zone on a UDP socket and a TCP listener.
type Server struct {
	servers []*dns.Server
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
}

// Start serves z on pc and l (either may be nil) until Close; it returns
// once both serve.
func Start(z Zone, pc net.PacketConn, l net.Listener) *Server {
	s := &Server{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := z.Answer(q)
		if w.LocalAddr().Network() == "udp" {
			size := dns.MinMsgSize
			if opt := q.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			m.Truncate(size)
		}
		_ = w.WriteMsg(m)
	})
	var started sync.WaitGroup
	// Any number of queries on a TCP connection (miekg/dns closes it after
	// 128 by default); idle connections still close after 2 s.
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h, MaxTCPQueries: -1}} {
		if srv.PacketConn == nil && srv.Listener == nil {
			continue
		}
		started.Add(1)
		up := sync.OnceFunc(started.Done)
		srv.NotifyStartedFunc = up
		s.servers = append(s.servers, srv)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer up() // it failed before it served
			if err := srv.ActivateAndServe(); err != nil {
				s.mu.Lock()
				s.errs = append(s.errs, fmt.Errorf("serving DNS: %w", err))
				s.mu.Unlock()
			}
		}()
	}
	started.Wait()
	return s
}

// Close stops serving (closing the socket and the listener) and waits for
// the server's goroutines.
func (s *Server) Close(ctx context.Context) error {
	var errs []error
	for _, srv := range s.servers {
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping DNS server: %w", err))
		}
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(append(errs, s.errs...)...)
}
