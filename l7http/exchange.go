package l7http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// bodyGrace is how long a request body still being sent may go on once its
// response was relayed (the server answered before reading it all); then
// the connection is closed.
const bodyGrace = time.Second

// exchange handles one request: read, policy, then forward or answer. keep
// reports whether the connection goes on to the next request.
func (c *conn) exchange(ctx context.Context) (keep bool, err error) {
	cfg := &c.p.cfg
	c.cin.timeout, c.cin.reason = 0, "header_timeout"
	c.client.SetReadDeadline(c.start.Add(cfg.HeaderTimeout))
	req, err := parseRequestHead(c.br, cfg.MaxHeaderBytes, &c.scratch)
	if err != nil {
		return false, c.refuseRequest(req, err, true)
	}
	c.cin.timeout, c.cin.reason = cfg.ReadTimeout, "body_timeout"
	if !c.meta.Policy.allows(req) {
		return c.deny(req)
	}
	c.p.m.requests.WithLabelValues("forwarded").Inc()
	c.emit(c.requestFlow(req, flowpb.Verdict_FORWARDED))
	return c.forward(ctx, req)
}

// refuseRequest counts, logs and reports (an ERROR flow) a request refused
// as malformed, answers it with 400 (408 for a timeout) when respond and
// nothing of a response was written, and returns the error that ends the
// connection. A client that went away is not a refusal.
func (c *conn) refuseRequest(req *requestHead, err error, respond bool) error {
	var r *refusal
	if !errors.As(err, &r) {
		if isGone(err) {
			return nil
		}
		return fmt.Errorf("reading a request: %w", err)
	}
	c.p.m.refused.WithLabelValues(r.reason).Inc()
	c.p.m.requests.WithLabelValues("error").Inc()
	c.logLimited("refused an HTTP request", r.reason, err)
	if req != nil {
		c.emit(c.requestFlow(req, flowpb.Verdict_ERROR))
	}
	if respond {
		code, text := 400, "Bad Request"
		if errors.Is(err, ErrTimeout) {
			code, text = 408, "Request Timeout"
		}
		c.writeLocal(code, text, err.Error()+"\r\n", true, false)
	}
	return fmt.Errorf("refused a request from %s: %w", c.meta.Source, err)
}

// isGone reports errors of a peer that closed or reset the connection.
func isGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// writeLocal writes a response the proxy makes itself.
func (c *conn) writeLocal(code int, text, body string, closing, head bool) error {
	w := c.writer()
	var b [20]byte
	w.WriteString("HTTP/1.1 ")
	w.Write(strconv.AppendInt(b[:0], int64(code), 10))
	w.WriteString(" " + text + "\r\nContent-Type: text/plain\r\nContent-Length: ")
	w.Write(strconv.AppendInt(b[:0], int64(len(body)), 10))
	w.WriteString("\r\n")
	if closing {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if !head {
		w.WriteString(body)
	}
	return w.Flush()
}

// deny answers a request no rule allows with Cilium's 403, after reading
// its body (up to MaxDrainBytes) so that the connection stays usable.
func (c *conn) deny(req *requestHead) (bool, error) {
	c.p.m.requests.WithLabelValues("dropped").Inc()
	c.emit(c.requestFlow(req, flowpb.Verdict_DROPPED))
	keep := !req.close
	if req.hasBody() {
		if req.expectContinue || req.contentLength > c.p.cfg.MaxDrainBytes || c.drain(req) != nil {
			keep = false
		}
	}
	if err := c.writeLocal(403, "Forbidden", "Access denied\r\n", !keep, req.method == "HEAD"); err != nil {
		return false, nil
	}
	return keep, nil
}

// drain reads and discards req's body, at most MaxDrainBytes.
func (c *conn) drain(req *requestHead) error {
	w := getWriter(&limitedWriter{n: c.p.cfg.MaxDrainBytes})
	defer putWriter(w)
	var err error
	if req.chunked {
		err = copyChunked(w, c.br, c.p.cfg.MaxHeaderBytes, &c.scratch)
	} else {
		err = copyN(w, c.br, req.contentLength)
	}
	if err == nil {
		err = w.Flush()
	}
	return err
}

// forward sends an allowed request to the original destination and relays
// its response. A request without a body is sent again, once, on a new
// connection when a kept-alive one turns out closed by the server.
func (c *conn) forward(ctx context.Context, req *requestHead) (bool, error) {
	reused := c.up != nil
	resp, bc, err := c.send(ctx, req)
	if err != nil && reused && bc == nil && isStale(err) {
		c.dropUpstream()
		resp, bc, err = c.send(ctx, req)
	}
	if err != nil {
		return false, c.failUpstream(req, bc, err)
	}
	return c.relay(req, resp, bc)
}

// isStale: the server closed a kept-alive connection before reading the
// request (nothing of a response came).
func isStale(err error) bool {
	var f *upstreamFailure
	if errors.As(err, &f) {
		err = f.err
	}
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// upstreamFailure is a failure of the original destination, answered with
// status and counted under reason.
type upstreamFailure struct {
	status int
	reason string
	err    error
}

func (f *upstreamFailure) Error() string { return f.reason + ": " + f.err.Error() }
func (f *upstreamFailure) Unwrap() error { return f.err }

func upFail(status int, reason string, err error) *upstreamFailure {
	return &upstreamFailure{status: status, reason: reason, err: err}
}

// send writes req to the upstream connection (its body copied by a
// goroutine of its own, so that a server answering while it reads is never
// blocked by the proxy), relays 1xx responses, and returns the final
// response's head.
func (c *conn) send(ctx context.Context, req *requestHead) (*responseHead, *bodyCopy, error) {
	cfg := &c.p.cfg
	if err := c.upstream(ctx); err != nil {
		return nil, nil, upFail(503, "upstream_connect", err)
	}
	writeRequestHead(c.ubw, req)
	c.uin.timeout, c.uin.reason = 0, "upstream_timeout"
	var bc *bodyCopy
	if req.hasBody() {
		if req.expectContinue { // the server sees the head, and may ask for the body
			if err := c.ubw.Flush(); err != nil {
				return nil, nil, upFail(502, "upstream_write", err)
			}
		}
		c.up.SetReadDeadline(time.Time{}) // until the body is sent (its copy has its own timeouts)
		bc = c.startBody(req)
	} else {
		c.up.SetReadDeadline(time.Now().Add(cfg.ResponseTimeout))
		if err := c.ubw.Flush(); err != nil {
			return nil, nil, upFail(502, "upstream_write", err)
		}
	}
	for {
		resp, err := parseResponseHead(c.ubr, cfg.MaxHeaderBytes, &c.scratch, req.method)
		if err != nil {
			return nil, bc, classifyUpstream(err)
		}
		if resp.code >= 200 {
			return resp, bc, nil
		}
		if req.proto != "HTTP/1.0" { // RFC 9110 15.2: no 1xx to an HTTP/1.0 client
			w := c.writer()
			writeResponseHead(w, resp)
			if err := w.Flush(); err != nil {
				return nil, bc, fmt.Errorf("writing a 1xx response: %w", err)
			}
		}
		if resp.code == 100 && bc != nil {
			bc.decide(true)
		}
	}
}

func classifyUpstream(err error) error {
	var r *refusal
	switch {
	case errors.Is(err, ErrTimeout):
		return upFail(504, "upstream_timeout", err)
	case errors.As(err, &r):
		return upFail(502, "upstream_malformed", err)
	default:
		return upFail(502, "upstream_reset", err)
	}
}

// failUpstream answers a request whose response could not be had: 400 if
// the client's body was refused, else 502, 503 or 504; the connection ends.
func (c *conn) failUpstream(req *requestHead, bc *bodyCopy, err error) error {
	if bc != nil {
		if berr := bc.failure(); berr != nil {
			c.finishBody(bc)
			return c.refuseRequest(req, berr, true)
		}
	}
	var f *upstreamFailure
	if !errors.As(err, &f) { // the client went away while a 1xx was relayed
		c.finishBody(bc)
		return nil
	}
	c.p.m.upstream.WithLabelValues(f.reason).Inc()
	c.logLimited("the original destination failed an HTTP request", f.reason, err)
	c.emit(c.responseFlow(req, f.status, nil, flowpb.Verdict_ERROR, time.Since(c.start)))
	c.writeLocal(f.status, statusText(f.status), "upstream failed: "+f.reason+"\r\n", true, req.method == "HEAD")
	c.finishBody(bc)
	return fmt.Errorf("forwarding a request to %s: %w", c.meta.Destination, errors.Join(ErrUpstream, err))
}

func statusText(code int) string {
	switch code {
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	}
	return "Bad Gateway"
}

// relay reports the response, writes it to the client with its body, and
// waits for the request's body.
func (c *conn) relay(req *requestHead, resp *responseHead, bc *bodyCopy) (bool, error) {
	cfg := &c.p.cfg
	c.emit(c.responseFlow(req, resp.code, resp, flowpb.Verdict_FORWARDED, time.Since(c.start)))
	w := c.writer()
	writeResponseHead(w, resp)
	c.uin.timeout = cfg.ReadTimeout
	var err error
	switch resp.body {
	case bodyLength:
		err = copyN(w, c.ubr, resp.length)
	case bodyChunked:
		err = copyChunked(w, c.ubr, cfg.MaxHeaderBytes, &c.scratch)
	case bodyUntilClose:
		err = copyUntilEOF(w, c.ubr)
	}
	if err == nil {
		err = w.Flush()
	}
	berr := c.finishBody(bc)
	if berr != nil {
		var r *refusal
		if errors.As(berr, &r) { // the client's body: an invalid chunk, a stall
			return false, c.refuseRequest(req, berr, false)
		}
		return false, nil
	}
	if err != nil {
		if c.cout.failed { // the client went away or stopped reading
			return false, nil
		}
		f := classifyUpstream(err).(*upstreamFailure)
		c.p.m.upstream.WithLabelValues(f.reason).Inc()
		c.logLimited("the original destination failed a response midway", f.reason, err)
		return false, fmt.Errorf("relaying a response from %s: %w", c.meta.Destination, errors.Join(ErrUpstream, err))
	}
	if resp.close {
		c.dropUpstream()
	}
	return !req.close && !resp.close, nil
}

// bodyCopy is the goroutine copying a request's body to the server.
type bodyCopy struct {
	done    chan error
	proceed chan bool // with Expect: 100-continue: whether to send the body
	decided bool      // proceed was sent (main goroutine only)

	mu  sync.Mutex
	err error
}

// startBody starts copying req's body (after the server's 100 Continue if
// the client expects one).
func (c *conn) startBody(req *requestHead) *bodyCopy {
	b := &bodyCopy{done: make(chan error, 1)}
	if req.expectContinue {
		b.proceed = make(chan bool, 1)
	}
	up, w, br, maxHeader, respTimeout := c.up, c.ubw, c.br, c.p.cfg.MaxHeaderBytes, c.p.cfg.ResponseTimeout
	go func() {
		var err error
		if b.proceed != nil && !<-b.proceed {
			err = errBodyNotSent
		} else {
			var scratch []byte
			if req.chunked {
				err = copyChunked(w, br, maxHeader, &scratch)
			} else {
				err = copyN(w, br, req.contentLength)
			}
			if err == nil {
				err = w.Flush()
			}
		}
		switch {
		case err == nil:
			up.SetReadDeadline(time.Now().Add(respTimeout))
		case err != errBodyNotSent:
			b.mu.Lock()
			b.err = err
			b.mu.Unlock()
			up.Close() // the server never gets the rest; the wait for its response ends
		}
		b.done <- err
	}()
	return b
}

func (b *bodyCopy) decide(send bool) {
	if b.proceed != nil && !b.decided {
		b.decided = true
		b.proceed <- send
	}
}

// failure is the copy's error if it failed.
func (b *bodyCopy) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// finishBody waits for the body's copy: bodyGrace at most once the response
// is relayed, after which the connection is closed (and the copy ends).
func (c *conn) finishBody(b *bodyCopy) error {
	if b == nil {
		return nil
	}
	b.decide(false)
	t := time.NewTimer(bodyGrace)
	defer t.Stop()
	select {
	case err := <-b.done:
		return err
	case <-t.C:
	}
	c.client.Close()
	c.dropUpstreamConnOnly()
	<-b.done
	return errors.New("request body still being sent after the response")
}

// dropUpstreamConnOnly closes the upstream connection without touching its
// buffers (the body's copy may still hold the writer).
func (c *conn) dropUpstreamConnOnly() {
	c.mu.Lock()
	up := c.up
	c.mu.Unlock()
	if up != nil {
		up.Close()
	}
}
