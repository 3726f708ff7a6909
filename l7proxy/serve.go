package l7proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
)

// serveTCP accepts r's connections on ln until ln closes, each served by
// r's handler on a goroutine of r.wg.
func (p *Proxy) serveTCP(r *redirect, ln *net.TCPListener) {
	failures := 0
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.ctx.Err() != nil {
				return
			}
			failures++
			p.m.acceptErrs.Inc()
			p.logf("accept", "l7 proxy: accept failed, backing off", "port", r.port, "error", err)
			if !sleep(r.ctx, p.backoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		if !p.acquire() {
			c.SetLinger(0) // a reset: the client learns at once
			c.Close()
			continue
		}
		if !r.track(c) {
			p.release()
			c.Close()
			return
		}
		md := p.metadata(r, addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr()), datapath.TCP)
		p.m.accepted.WithLabelValues("TCP", r.key.Direction.String(), r.key.Parser).Inc()
		r.wg.Go(func() {
			defer p.release()
			defer r.untrack(c)
			defer c.Close()
			r.handler.ServeConn(r.ctx, c, md)
		})
	}
}

// serveUDP reads r's datagrams on pc until pc closes, each served by r's
// handler on a goroutine of r.wg.
func (p *Proxy) serveUDP(r *redirect, pc *net.UDPConn) {
	dh := r.handler.(DatagramHandler)
	buf := make([]byte, MaxDatagram)
	oob := make([]byte, 256)
	failures := 0
	for {
		n, oobn, _, from, err := pc.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.ctx.Err() != nil {
				return
			}
			failures++
			p.m.rejected.WithLabelValues(rejectReadError).Inc()
			p.logf("read", "l7 proxy: datagram read failed, backing off", "port", r.port, "error", err)
			if !sleep(r.ctx, p.backoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		dst, err := parseOrigDst(oob[:oobn])
		if err != nil {
			p.m.rejected.WithLabelValues(rejectOrigDst).Inc()
			p.logf("origdst", "l7 proxy: datagram dropped", "port", r.port, "from", from, "error", err)
			continue
		}
		if !p.acquire() {
			continue
		}
		md := p.metadata(r, unmap(from), dst, datapath.UDP)
		payload := bytes.Clone(buf[:n])
		p.m.accepted.WithLabelValues("UDP", r.key.Direction.String(), r.key.Parser).Inc()
		r.wg.Go(func() {
			defer p.release()
			rp := &replier{p: p, r: r, md: md}
			defer rp.close()
			dh.ServeDatagram(r.ctx, Datagram{Payload: payload, Meta: md, Reply: rp.reply})
		})
	}
}

// replier sends a datagram's replies from its original destination, over
// a socket bound to it (IP_TRANSPARENT) and connected to the client, made
// on the first reply.
type replier struct {
	p  *Proxy
	r  *redirect
	md Metadata

	mu   sync.Mutex
	conn *net.UDPConn // guarded by mu
	done bool         // guarded by mu
}

func (rp *replier) reply(b []byte) error {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.done {
		return fmt.Errorf("l7 proxy: reply after the handler returned: %w", net.ErrClosed)
	}
	if rp.conn == nil {
		d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(rp.md.OrigDst), Control: sockopts(tcpolicy.MarkProxyReply, false)}
		var c net.Conn
		err := rp.p.cfg.InNetns(func() (err error) {
			c, err = d.DialContext(rp.r.ctx, udpNet(rp.md.OrigSrc.Addr()), rp.md.OrigSrc.String())
			return err
		})
		if err != nil {
			return fmt.Errorf("l7 proxy: reply to %s from %s: %w", rp.md.OrigSrc, rp.md.OrigDst, err)
		}
		rp.conn = c.(*net.UDPConn)
	}
	if _, err := rp.conn.Write(b); err != nil {
		return fmt.Errorf("l7 proxy: reply to %s: %w", rp.md.OrigSrc, err)
	}
	return nil
}

func (rp *replier) close() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.done = true
	if rp.conn != nil {
		rp.conn.Close()
	}
}

// dialUpstream is Metadata.DialUpstream of the proxy's flows.
func (p *Proxy) dialUpstream(ctx context.Context, md Metadata) (net.Conn, error) {
	mark := tcpolicy.MarkFromEgressProxy
	if md.Direction == datapath.Ingress {
		mark = tcpolicy.MarkFromIngressProxy
	}
	src := md.OrigSrc.Addr()
	d := net.Dialer{Control: sockopts(mark, false)}
	network := udpNet(src)
	if md.Protocol == datapath.TCP {
		network = "tcp4"
		if src.Is6() {
			network = "tcp6"
		}
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	} else {
		d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
	}
	var c net.Conn
	err := p.cfg.InNetns(func() (err error) {
		c, err = d.DialContext(ctx, network, md.OrigDst.String())
		return err
	})
	if err != nil {
		p.m.dialErrs.WithLabelValues(md.Protocol.String(), md.Direction.String()).Inc()
		return nil, fmt.Errorf("l7 proxy: dial upstream %s from %s: %w", md.OrigDst, src, err)
	}
	return c, nil
}

func udpNet(a netip.Addr) string {
	if a.Is6() {
		return "udp6"
	}
	return "udp4"
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// addrPortOf is a TCP address as a netip.AddrPort, IPv4 unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return unmap(t.AddrPort())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
