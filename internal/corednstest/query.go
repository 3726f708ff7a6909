package corednstest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// Resolver is a pure-Go resolver asking s over UDP (a pod-less client of
// the cluster DNS). Its lookups still walk the search list of the
// machine's resolv.conf for names without a trailing dot.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", s.Addr)
	}}
}

// Answer is the reply to one question, as dig shows it.
type Answer struct {
	Name    string // the question, fully qualified
	Type    dnsmessage.Type
	RCode   dnsmessage.RCode
	Records []string // answer section, "name TTL IN TYPE data", sorted
	Values  []string // the answers' data only (addresses, "prio weight port target"), sorted
}

// NXDomain reports the name does not exist.
func (a Answer) NXDomain() bool { return a.RCode == dnsmessage.RCodeNameError }

// NoData reports the name exists without records of the type.
func (a Answer) NoData() bool { return a.RCode == dnsmessage.RCodeSuccess && len(a.Records) == 0 }

// String is the answer as dig prints it, briefly.
func (a Answer) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, ";; %s %s: status %s, %d answers\n", a.Name, typeName(a.Type), rcodeName(a.RCode), len(a.Records))
	for _, r := range a.Records {
		b.WriteString(r + "\n")
	}
	return b.String()
}

// Query asks s one question (name is made fully qualified) over UDP.
func (s *Server) Query(ctx context.Context, name string, qtype dnsmessage.Type) (Answer, error) {
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	a := Answer{Name: name, Type: qtype}
	q, err := dnsmessage.NewName(name)
	if err != nil {
		return a, fmt.Errorf("query %s: %w", name, err)
	}
	id := uint16(rand.Uint32())
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: qtype, Class: dnsmessage.ClassINET}},
	}
	packed, err := msg.Pack()
	if err != nil {
		return a, fmt.Errorf("query %s: packing: %w", name, err)
	}
	reply, err := s.exchange(ctx, packed)
	if err != nil {
		return a, fmt.Errorf("query %s %s: %w", name, typeName(qtype), err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(reply); err != nil {
		return a, fmt.Errorf("query %s: unpacking the reply: %w", name, err)
	}
	if m.ID != id {
		return a, fmt.Errorf("query %s: reply id %d, asked %d", name, m.ID, id)
	}
	a.RCode = m.RCode
	for _, r := range m.Answers {
		v := value(r.Body)
		a.Values = append(a.Values, v)
		a.Records = append(a.Records, fmt.Sprintf("%s\t%d\tIN\t%s\t%s", r.Header.Name, r.Header.TTL, typeName(r.Header.Type), v))
	}
	slices.Sort(a.Values)
	slices.Sort(a.Records)
	return a, nil
}

// exchange sends one UDP message and returns the reply.
func (s *Server) exchange(ctx context.Context, packed []byte) ([]byte, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, "udp", s.Addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(d); err != nil {
			return nil, err
		}
	}
	if _, err := conn.Write(packed); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// value is a record's data as dig prints it.
func value(body dnsmessage.ResourceBody) string {
	switch b := body.(type) {
	case *dnsmessage.AResource:
		return netip.AddrFrom4(b.A).String()
	case *dnsmessage.AAAAResource:
		return netip.AddrFrom16(b.AAAA).String()
	case *dnsmessage.SRVResource:
		return fmt.Sprintf("%d %d %d %s", b.Priority, b.Weight, b.Port, b.Target)
	case *dnsmessage.CNAMEResource:
		return b.CNAME.String()
	case *dnsmessage.PTRResource:
		return b.PTR.String()
	default:
		return fmt.Sprintf("%v", body)
	}
}

// typeName is "A", "AAAA", "SRV" for dnsmessage.TypeA and so on.
func typeName(t dnsmessage.Type) string { return strings.TrimPrefix(t.String(), "Type") }

// rcodeName is dig's name of a response code (NOERROR, NXDOMAIN, SERVFAIL).
func rcodeName(r dnsmessage.RCode) string {
	switch r {
	case dnsmessage.RCodeSuccess:
		return "NOERROR"
	case dnsmessage.RCodeNameError:
		return "NXDOMAIN"
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	default:
		return strings.TrimPrefix(r.String(), "RCode")
	}
}
