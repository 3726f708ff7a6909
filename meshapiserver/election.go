package meshapiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/clustermesh/clustermesh/statesource"
)

// ErrNotLeader is returned by a publishing write of a replica that no
// longer leads: every write is conditioned on its election key (fencing),
// so a deposed leader's write is refused by etcd, never applied.
var ErrNotLeader = errors.New("not the leader apiserver: another replica publishes")

// Roles of a replica on an external etcd cluster (Status.Role).
const (
	RoleLeader  = "leader"
	RoleStandby = "standby"
)

// ElectionPrefix is the prefix of cluster's election keys: one key per
// campaigning replica, on its session's lease, valued with its name; the
// oldest is the leader. Only the root role can read or write it.
func ElectionPrefix(cluster string) string { return "clustermesh/apiserver/" + cluster + "/leader" }

// elector campaigns for this replica with etcd's election
// (go.etcd.io/etcd/client/v3/concurrency) and reports who leads. Owned by
// runExternal.
type elector struct {
	cli      *clientv3.Client
	prefix   string
	name     string
	ttl      int
	log      *slog.Logger
	onLeader func(name string)

	session  *concurrency.Session
	election *concurrency.Election

	stopObserve context.CancelFunc
	observing   sync.WaitGroup
}

// term is one leadership of this replica: its election key and the
// revision that created it (the fence), and the session it lives on.
type term struct {
	key  string
	rev  int64
	lost <-chan struct{} // closed when the session's lease is gone
}

// fence is the condition of every write of the term: the election key is
// still the one this replica created.
func (t *term) fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(t.key), "=", t.rev)
}

func newElector(ctx context.Context, cli *clientv3.Client, cfg *Config, log *slog.Logger, onLeader func(string)) *elector {
	e := &elector{
		cli: cli, prefix: ElectionPrefix(cfg.ClusterName), name: cfg.ReplicaName,
		ttl: int(cfg.ElectionTTL / time.Second), log: log, onLeader: onLeader,
	}
	octx, cancel := context.WithCancel(ctx)
	e.stopObserve = cancel
	e.observing.Add(1)
	go func() {
		defer e.observing.Done()
		e.observe(octx)
	}()
	return e
}

// campaign blocks until this replica leads (or ctx ends).
func (e *elector) campaign(ctx context.Context) (*term, error) {
	if e.session != nil {
		select {
		case <-e.session.Done(): // expired: a new one
			e.session.Orphan()
			e.session = nil
		default:
		}
	}
	if e.session == nil {
		// Granted with ctx (an unreachable cluster must not hold up a
		// shutdown); kept alive beyond it: stop revokes it on a clean
		// shutdown.
		lease, err := e.cli.Grant(ctx, int64(e.ttl))
		if err != nil {
			return nil, fmt.Errorf("granting the election session's lease of %ds: %w", e.ttl, err)
		}
		s, err := concurrency.NewSession(e.cli, concurrency.WithTTL(e.ttl), concurrency.WithLease(lease.ID),
			concurrency.WithContext(context.WithoutCancel(ctx)))
		if err != nil {
			return nil, fmt.Errorf("opening an election session of %ds: %w", e.ttl, err)
		}
		e.session = s
	}
	e.election = concurrency.NewElection(e.session, e.prefix)
	if err := e.election.Campaign(ctx, e.name); err != nil {
		return nil, fmt.Errorf("campaigning on %s: %w", e.prefix, err)
	}
	return &term{key: e.election.Key(), rev: e.election.Rev(), lost: e.session.Done()}, nil
}

// stop ends the observer and leaves the election: a clean shutdown resigns
// and revokes the session (a standby takes over at once); an abandoned one
// (a test's stand-in for a killed process) only stops keeping the session
// alive, which then expires after its TTL.
func (e *elector) stop(abandon bool) {
	e.stopObserve()
	e.observing.Wait()
	if e.session == nil {
		return
	}
	e.session.Orphan()
	if abandon {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if e.election != nil {
		if err := e.election.Resign(ctx); err != nil {
			e.log.Warn("resigning the lead failed: a standby takes over when the session expires", "err", err)
		}
	}
	if _, err := e.cli.Revoke(ctx, e.session.Lease()); err != nil {
		e.log.Warn("revoking the election session failed: it expires", "err", err)
	}
}

// resign gives up the lead (or the place in the queue) of the current
// campaign; the session stays for the next one.
func (e *elector) resign(ctx context.Context) {
	if e.election == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.election.Resign(rctx); err != nil {
		e.log.Warn("resigning failed: a standby takes over when the session expires", "err", err)
	}
}

// observe reports the leader's name (empty when none) each time the
// election keys change, until ctx ends.
func (e *elector) observe(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 5*time.Second, 0
	for ctx.Err() == nil {
		resp, err := e.cli.Get(ctx, e.prefix+"/", clientv3.WithFirstCreate()...)
		if err != nil {
			if !sleepCtx(ctx, bo.NextBackOff()) {
				return
			}
			continue
		}
		bo.Reset()
		name := ""
		if len(resp.Kvs) > 0 {
			name = string(resp.Kvs[0].Value)
		}
		e.onLeader(name)
		wctx, cancel := context.WithCancel(ctx)
		for wr := range e.cli.Watch(wctx, e.prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil || len(wr.Events) > 0 {
				break
			}
		}
		cancel()
	}
}

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// campaignLoop campaigns, leads while elected and campaigns again when
// deposed, until ctx ends or the source fails. The newest state from the
// source carries over from one term to the next.
func (s *Server) campaignLoop(ctx context.Context, cli *clientv3.Client, el *elector, src *sourceRun, first *statesource.State, log *slog.Logger) error {
	state := first
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = retryInitial, 5*time.Second, 0
	for {
		s.setRole(RoleStandby)
		log.Info("standby: campaigning for the lead", "election", el.prefix)
		t, err := s.campaign(ctx, el, src, &state)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errSourceEnded):
			return errors.Unwrap(err)
		case err != nil:
			d := bo.NextBackOff()
			log.Warn("campaign failed, retrying", "err", err, "retryIn", d)
			if !sleepCtx(ctx, d) {
				return nil
			}
			continue
		}
		bo.Reset()
		log.Info("leading: publishing", "electionKey", t.key)
		err = s.lead(ctx, cli, t, src, &state, log)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrNotLeader):
			log.Warn("deposed: no longer publishing", "err", err)
			continue
		case errors.Is(err, errLeadFailed):
			// Give the lead to another replica, try again later.
			el.resign(ctx)
			d := bo.NextBackOff()
			s.publishFailed(err, d) // reported as a failing publish (status, metrics)
			if !sleepCtx(ctx, d) {
				return nil
			}
			continue
		}
		return err // the source's
	}
}

// errLeadFailed wraps what keeps an elected replica from publishing (its
// identity store could not be read): it resigns and campaigns again.
var errLeadFailed = errors.New("cannot lead")

// errSourceEnded wraps the source's result when it ended during a campaign.
var errSourceEnded = errors.New("the state source ended")

// campaign runs el.campaign until it returns, the source ends or ctx ends,
// keeping *state the newest the source delivered meanwhile.
func (s *Server) campaign(ctx context.Context, el *elector, src *sourceRun, state **statesource.State) (*term, error) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		t   *term
		err error
	}
	res := make(chan result, 1)
	go func() {
		t, err := el.campaign(cctx)
		res <- result{t, err}
	}()
	for {
		select {
		case st := <-src.latest:
			*state = st
			continue
		case r := <-res:
			return r.t, r.err
		case err := <-src.done:
			cancel()
			<-res
			if err == nil {
				err = errors.New("reading the cluster's state: the source ended")
			}
			return nil, fmt.Errorf("%w: %w", errSourceEnded, err)
		}
	}
}

// lead publishes during term t: a publisher and an identity allocator of
// its own, every write fenced on the election key. It starts by adopting
// what the store holds (entries and identity numbers), writes the whole
// desired set on its own lease and only then deletes what is not desired.
// It returns ErrNotLeader when the term ends.
func (s *Server) lead(ctx context.Context, cli *clientv3.Client, t *term, src *sourceRun, state **statesource.State, log *slog.Logger) error {
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ids, err := newIdentityAllocator(tctx, s.cfg.identityStore(), s.cfg.cluster())
	if err != nil {
		return fmt.Errorf("%w: %w", errLeadFailed, err)
	}
	pub := newPublisher(cli, s.cfg.cluster(), s.cfg.ExportMode.localView(), log, s.txnLatency)
	pub.fence = []clientv3.Cmp{t.fence()}
	pub.afterTxn = s.afterTxn
	s.setRole(RoleLeader)
	// The newest state, never an older one: a first attempt of an older
	// state would delete what the newer one has and the older has not.
	select {
	case st := <-src.latest:
		*state = st
	default:
	}
	rs := &runState{state: *state, due: true}
	err = s.loop(tctx, cli, pub, ids, src, rs, t.lost)
	*state = rs.state
	return err
}

// setRole reports this replica's role, which begins or ends a term.
func (s *Server) setRole(role string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Role = role
	s.status.LeaderSince = time.Time{}
	// Canaries are a term's: a standby's are its last term's (they go with
	// its lease), and a new term has written none yet.
	s.status.Publish.CanariesSet = false
	if role == RoleLeader {
		s.status.Leader = s.cfg.ReplicaName
		s.status.Terms++
		s.status.LeaderSince = time.Now()
	}
}

// setLeaderName reports the leader's name as the election keys say.
func (s *Server) setLeaderName(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Leader = name
}
