package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// event is what a peer's stream tells the request: it opened, a response,
// or it ended (err nil when the peer finished the request).
type event struct {
	name   string
	opened bool
	frame  frame
	flow   bool // frame is set
	ended  bool
	err    error
}

// flowRequest is one GetFlows call: a stream per peer, the merge, the
// node status events.
type flowRequest struct {
	s      *Server
	req    *observerpb.GetFlowsRequest
	stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]
	ctx    context.Context

	events  chan event
	wg      sync.WaitGroup
	peers   map[string]*peerStream
	running int
	opening int       // streams started and not yet open
	hold    time.Time // until then (or all are open) nothing is sent

	merge   *merge
	bounded *bounded // a non-follow request with a number: the mesh's n
	refused error    // a peer found the request invalid: so is it for the relay

	connected, unavailable, gone []string
	messages                     map[string]string
}

// peerStream is a peer within a request.
type peerStream struct {
	src     source
	cancel  context.CancelFunc
	running bool              // its goroutine runs
	opening bool              // its stream is not open yet
	told    relaypb.NodeState // the state the client was last told
	gone    bool              // no longer a peer
	last    time.Time         // of its newest response: a new stream resumes after it
	seen    bool
	retryAt time.Time
}

// GetFlows streams the flows of every peer, merged in time order, with
// node status events when a peer connects, becomes unavailable or goes. A
// peer that is down is reported, never waited for.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	if req.GetFirst() && req.GetFollow() {
		return status.Error(codes.InvalidArgument, "first cannot be specified with follow")
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	fr := &flowRequest{
		s: s, req: req, stream: stream, ctx: ctx,
		events: make(chan event, 1024), peers: map[string]*peerStream{},
		merge: newMerge(s.cfg.SortBufferMax, s.cfg.SortWindow), messages: map[string]string{},
	}
	if !req.GetFollow() && req.GetNumber() > 0 {
		fr.bounded = &bounded{n: int(min(req.GetNumber(), uint64(maxNumber))), first: req.GetFirst()}
	}
	s.metrics.requests.Add(1)
	defer func() { cancel(); fr.wg.Wait() }()
	return fr.run()
}

// maxNumber bounds the flows a request with a number keeps in memory.
const maxNumber = 1 << 20

func (fr *flowRequest) run() error {
	fr.hold = time.Now().Add(openingHold)
	fr.reconcile(time.Now())
	retry := time.NewTicker(fr.s.cfg.RetryInterval)
	defer retry.Stop()
	if !fr.req.GetFollow() {
		retry.Stop() // a request that does not follow asks each peer once
	}
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	for {
		if !fr.req.GetFollow() && fr.running == 0 {
			return fr.finish()
		}
		var changes <-chan struct{}
		if fr.req.GetFollow() {
			changes = fr.s.pool.changes()
		}
		if w := fr.wake(); !w.IsZero() {
			wake.Reset(time.Until(w))
		}
		select {
		case <-fr.ctx.Done():
			return nil
		case ev := <-fr.events:
			fr.handle(ev)
			fr.drainEvents()
		case <-changes:
			fr.reconcile(time.Now())
		case <-retry.C:
			fr.reconcile(time.Now())
		case <-wake.C:
		}
		if fr.refused != nil {
			return fr.refused
		}
		if err := fr.flush(); err != nil {
			return err
		}
	}
}

// openingHold is how long a request waits for its first streams to open
// before it sends anything, so that the client first learns every peer
// connected in one node status event.
const openingHold = 250 * time.Millisecond

// holding: the first streams are still opening.
func (fr *flowRequest) holding(now time.Time) bool {
	if fr.hold.IsZero() {
		return false
	}
	if fr.opening > 0 && now.Before(fr.hold) {
		return true
	}
	fr.hold = time.Time{}
	return false
}

// wake is when the loop must look again without an event: the end of the
// opening hold, or when the merge lets its oldest response go.
func (fr *flowRequest) wake() time.Time {
	if !fr.hold.IsZero() {
		return fr.hold
	}
	return fr.merge.wake()
}

// drainEvents handles the events already waiting (a batch: node status
// events of several peers become one).
func (fr *flowRequest) drainEvents() {
	for range cap(fr.events) {
		select {
		case ev := <-fr.events:
			fr.handle(ev)
		default:
			return
		}
	}
}

// reconcile starts a stream for every peer that has none: at the start,
// and when following, for a peer that joined or came back. A following
// request stops the streams of peers that went.
func (fr *flowRequest) reconcile(now time.Time) {
	listed := map[string]bool{}
	for _, p := range fr.s.pool.list(false) {
		listed[p.peer.Name] = true
		ps := fr.peers[p.peer.Name]
		if ps == nil {
			ps = &peerStream{}
			fr.peers[p.peer.Name] = ps
		}
		ps.gone = false
		if ps.running || now.Before(ps.retryAt) {
			continue
		}
		if p.unavailable() {
			fr.markDown(p.peer.Name, ps, "connection to the peer failed")
			continue
		}
		fr.start(p, ps)
	}
	if !fr.req.GetFollow() {
		return
	}
	for name, ps := range fr.peers {
		if !listed[name] && !ps.gone {
			ps.gone, ps.told = true, relaypb.NodeState_NODE_GONE
			if ps.cancel != nil {
				ps.cancel()
			}
			fr.merge.close(&ps.src)
			fr.gone = append(fr.gone, name)
		}
	}
}

// markDown reports the peer unavailable once, until it connects again.
func (fr *flowRequest) markDown(name string, ps *peerStream, msg string) {
	if ps.told == relaypb.NodeState_NODE_UNAVAILABLE {
		return
	}
	ps.told = relaypb.NodeState_NODE_UNAVAILABLE
	fr.unavailable = append(fr.unavailable, name)
	fr.messages[name] = msg
}

// start opens the peer's stream in a goroutine of the request. A peer that
// comes back resumes after its newest flow.
func (fr *flowRequest) start(p peerState, ps *peerStream) {
	req := fr.req
	if ps.seen {
		req = proto.Clone(fr.req).(*observerpb.GetFlowsRequest)
		req.Since, req.Number, req.First = timestamppb.New(ps.last.Add(time.Nanosecond)), 0, false
	}
	ctx, cancel := context.WithCancel(fr.ctx)
	ps.cancel, ps.running, ps.opening = cancel, true, true
	fr.running++
	fr.opening++
	fr.wg.Add(1)
	go func() {
		defer fr.wg.Done()
		err := fr.pull(ctx, p.conn, p.peer.Name, req)
		select {
		case fr.events <- event{name: p.peer.Name, ended: true, err: err}:
		case <-fr.ctx.Done():
		}
	}()
}

// errOpenTimeout: a peer's stream did not open within DialTimeout.
var errOpenTimeout = errors.New("the peer did not answer within the dial timeout")

// getFlowsDesc is the GetFlows stream, called with the relay's codec.
var getFlowsDesc = &grpc.StreamDesc{StreamName: "GetFlows", ServerStreams: true}

// pull passes the peer's responses to the request until its stream ends:
// as frames, read for their time only.
func (fr *flowRequest) pull(ctx context.Context, conn grpc.ClientConnInterface, name string, req *observerpb.GetFlowsRequest) error {
	// A peer whose connection is still being made (an address that does
	// not answer) is given DialTimeout to open the stream, never more: it
	// is reported unavailable, not waited for.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	opening := time.AfterFunc(fr.s.cfg.DialTimeout, func() { cancel(errOpenTimeout) })
	st, err := conn.NewStream(ctx, getFlowsDesc, observerpb.Observer_GetFlows_FullMethodName, grpc.ForceCodecV2(codec{}))
	if !opening.Stop() {
		return fmt.Errorf("%w (%v)", errOpenTimeout, fr.s.cfg.DialTimeout)
	}
	if err != nil {
		return err
	}
	if err := st.SendMsg(req); err != nil {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	send := func(ev event) bool {
		select {
		case fr.events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !send(event{name: name, opened: true}) {
		return ctx.Err()
	}
	f := &frame{} // reused: each RecvMsg gives it a new buffer
	for {
		err := st.RecvMsg(f)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		fi, err := readFrame(f.b)
		if err != nil {
			return fmt.Errorf("reading a response of %s: %w", name, err)
		}
		f.at = fi.at
		if !fi.hasNodeName {
			f.b = withNodeName(f.b, name)
		}
		if !send(event{name: name, frame: *f, flow: true}) {
			return ctx.Err()
		}
	}
}

func (fr *flowRequest) handle(ev event) {
	ps := fr.peers[ev.name]
	switch {
	case ev.opened:
		fr.opened(ps)
		fr.merge.open(&ps.src)
		if ps.told != relaypb.NodeState_NODE_CONNECTED {
			ps.told = relaypb.NodeState_NODE_CONNECTED
			fr.connected = append(fr.connected, ev.name)
		}
	case ev.flow:
		fr.accept(ps, ev.frame)
	case ev.ended:
		fr.opened(ps)
		ps.running, ps.cancel = false, nil
		fr.running--
		fr.merge.close(&ps.src)
		if ps.gone || fr.ctx.Err() != nil || (ev.err == nil && !fr.req.GetFollow()) {
			return
		}
		err := ev.err
		if status.Code(err) == codes.InvalidArgument {
			fr.refused = err // the request, not the peer, is at fault
			return
		}
		if err == nil {
			err = errors.New("the peer ended the stream")
		}
		fr.s.log.Info("peer stream ended", "peer", ev.name, "error", err)
		fr.markDown(ev.name, ps, statusMessage(err))
		ps.retryAt = time.Now().Add(fr.s.cfg.RetryInterval)
	}
}

func (fr *flowRequest) opened(ps *peerStream) {
	if ps.opening {
		ps.opening = false
		fr.opening--
	}
}

// accept takes a peer's response into the merge (or the bounded set).
func (fr *flowRequest) accept(ps *peerStream, f frame) {
	if f.at > ps.last.UnixNano() || !ps.seen {
		ps.last, ps.seen = time.Unix(0, f.at), true
	}
	if fr.bounded != nil {
		fr.bounded.add(f)
		return
	}
	fr.merge.push(&ps.src, f, time.Now())
}

// flush sends the node status events, then every response the merge lets go.
func (fr *flowRequest) flush() error {
	if fr.holding(time.Now()) {
		return nil
	}
	if err := fr.sendStatus(); err != nil {
		return err
	}
	now := time.Now()
	for f, ok := fr.merge.next(now); ok; f, ok = fr.merge.next(now) {
		if err := fr.send(f); err != nil {
			return err
		}
	}
	return nil
}

// finish sends what a request that does not follow has left, in order.
func (fr *flowRequest) finish() error {
	if err := fr.sendStatus(); err != nil {
		return err
	}
	for f, ok := fr.merge.pop(); ok; f, ok = fr.merge.pop() {
		if err := fr.send(f); err != nil {
			return err
		}
	}
	if fr.bounded != nil {
		for _, f := range fr.bounded.sorted() {
			if err := fr.send(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// send passes a peer's response on as it came (the server's codec is the
// relay's: see codec).
func (fr *flowRequest) send(f frame) error {
	if err := fr.stream.SendMsg(&f); err != nil {
		return fmt.Errorf("sending to the client: %w", err)
	}
	fr.s.metrics.flows.Add(1)
	return nil
}

// sendStatus sends one node status event per state with the peers that
// reached it since the last.
func (fr *flowRequest) sendStatus() error {
	for _, st := range []struct {
		state relaypb.NodeState
		names *[]string
	}{
		{relaypb.NodeState_NODE_CONNECTED, &fr.connected},
		{relaypb.NodeState_NODE_UNAVAILABLE, &fr.unavailable},
		{relaypb.NodeState_NODE_GONE, &fr.gone},
	} {
		if len(*st.names) == 0 {
			continue
		}
		names := *st.names
		*st.names = nil
		sort.Strings(names)
		ev := &relaypb.NodeStatusEvent{StateChange: st.state, NodeNames: names}
		if st.state == relaypb.NodeState_NODE_UNAVAILABLE {
			ev.Message = fr.unavailableMessage(names)
		}
		resp := &observerpb.GetFlowsResponse{
			NodeName: fr.s.cfg.Name, Time: timestamppb.Now(),
			ResponseTypes: &observerpb.GetFlowsResponse_NodeStatus{NodeStatus: ev},
		}
		if err := fr.stream.Send(resp); err != nil {
			return fmt.Errorf("sending node status to the client: %w", err)
		}
	}
	return nil
}

// unavailableMessage says why each of names is unavailable.
func (fr *flowRequest) unavailableMessage(names []string) string {
	var msg string
	for i, n := range names {
		if i > 0 {
			msg += "; "
		}
		msg += n + ": " + fr.messages[n]
		delete(fr.messages, n)
	}
	return msg
}

// statusMessage is an error's message without gRPC's decoration.
func statusMessage(err error) string {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code().String() + ": " + s.Message()
	}
	return err.Error()
}
