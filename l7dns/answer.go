package l7dns

import (
	"net/netip"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"

	"github.com/clustermesh/clustermesh/fqdn"
)

// maxChain bounds the CNAME chain followed from the query's name.
const maxChain = 16

// answerInfo is what an answer tells the flows and the FQDN cache.
type answerInfo struct {
	ips     []netip.Addr // every A/AAAA address of the answer section
	ttl     uint32       // the least TTL of those records
	cnames  []string
	rrtypes []string
	names   map[string]*nameIPs // the cache's view: the chain's names and their addresses
}

type nameIPs struct {
	ips []netip.Addr
	ttl uint32
}

// readAnswer reads a's answer section. For the cache, the addresses of
// the names on the CNAME chain from the query's name (at most maxChain
// long) belong to every name of the chain, for the least TTL on the way;
// records of other names are not cached (a server cannot vouch for names
// the query did not lead to).
func readAnswer(q, a *dns.Msg) answerInfo {
	var info answerInfo
	target := map[string]string{}
	ttlOf := map[string]uint32{}
	seen := map[uint16]bool{}
	for _, rr := range a.Answer {
		h := rr.Header()
		if !seen[h.Rrtype] {
			seen[h.Rrtype] = true
			info.rrtypes = append(info.rrtypes, dns.Type(h.Rrtype).String())
		}
		switch r := rr.(type) {
		case *dns.A, *dns.AAAA:
			ip := addrOf(r)
			if !ip.IsValid() {
				continue
			}
			if len(info.ips) == 0 || h.Ttl < info.ttl {
				info.ttl = h.Ttl
			}
			info.ips = append(info.ips, ip)
		case *dns.CNAME:
			info.cnames = append(info.cnames, r.Target)
			target[fqdn.Normalize(h.Name)] = fqdn.Normalize(r.Target)
			ttlOf[fqdn.Normalize(h.Name)] = h.Ttl
		}
	}
	// The chain from the query's name, with the least CNAME TTL up to each.
	chain := map[string]uint32{}
	name, ttl := fqdn.Normalize(q.Question[0].Name), uint32(1<<32-1)
	for i := 0; i <= maxChain; i++ {
		if _, loop := chain[name]; loop {
			break
		}
		chain[name] = ttl
		next, ok := target[name]
		if !ok {
			break
		}
		ttl = min(ttl, ttlOf[name])
		name = next
	}
	info.names = map[string]*nameIPs{}
	for _, rr := range a.Answer {
		ip := addrOf(rr)
		if !ip.IsValid() {
			continue
		}
		owner := fqdn.Normalize(rr.Header().Name)
		if _, ok := chain[owner]; !ok {
			continue
		}
		ttl := min(rr.Header().Ttl, chain[owner])
		for n := range chain {
			ni := info.names[n]
			if ni == nil {
				ni = &nameIPs{ttl: ttl}
				info.names[n] = ni
			}
			ni.ips = append(ni.ips, ip)
			ni.ttl = min(ni.ttl, ttl)
		}
	}
	return info
}

func addrOf(rr dns.RR) netip.Addr {
	var ip netip.Addr
	switch r := rr.(type) {
	case *dns.A:
		ip, _ = netip.AddrFromSlice(r.A.To4())
	case *dns.AAAA:
		ip, _ = netip.AddrFromSlice(r.AAAA.To16())
	}
	return ip.Unmap()
}

// updateCache puts the chain's addresses into c (each subscriber told
// before it returns).
func (info answerInfo) updateCache(c *fqdn.Cache) {
	for name, ni := range info.names {
		c.Update(name, ni.ips, time.Duration(ni.ttl)*time.Second)
	}
}

// record is the answer's l7.dns.
func (info answerInfo) record(q, a *dns.Msg) *flowpb.DNS {
	rec := queryRecord(q)
	rec.Rcode = uint32(a.Rcode)
	rec.Ttl = info.ttl
	rec.Cnames = info.cnames
	rec.Rrtypes = info.rrtypes
	for _, ip := range info.ips {
		rec.Ips = append(rec.Ips, ip.String())
	}
	return rec
}
