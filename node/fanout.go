package node

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/clustermesh/clustermesh/statesource"
)

// fanout runs the local state source once and hands each state to every
// consumer — agentsync, the enforcer, WireGuard — through a view of its
// own, a statesource.Source that the consumer runs as it would run the
// source. A view holds the latest state its consumer has not taken yet: a
// state is the whole local state, so a consumer that falls behind skips to
// the newest, and a slow one (WireGuard opening its device) delays no
// other. Views are made before Run.
type fanout struct {
	src   statesource.Source
	views []*view
}

func newFanout(src statesource.Source) *fanout { return &fanout{src: src} }

// view returns a new consumer's view; call it before Run.
func (f *fanout) view() *view {
	v := &view{kick: make(chan struct{}, 1)}
	f.views = append(f.views, v)
	return v
}

// Run runs the source until ctx is done or the source fails, handing every
// state to every view.
func (f *fanout) Run(ctx context.Context) error {
	return f.src.Run(ctx, func(st *statesource.State) {
		for _, v := range f.views {
			v.offer(st)
		}
	})
}

// view is one consumer's statesource.Source.
type view struct {
	kick    chan struct{} // capacity 1: a state is waiting
	running atomic.Bool

	mu     sync.Mutex
	latest *statesource.State // guarded by mu; nil once taken
}

func (v *view) offer(st *statesource.State) {
	v.mu.Lock()
	v.latest = st
	v.mu.Unlock()
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

func (v *view) take() *statesource.State {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.latest
	v.latest = nil
	return st
}

// Run calls onChange (which may be nil) with every state the fan-out
// hands this view, from the caller's goroutine, until ctx is done.
func (v *view) Run(ctx context.Context, onChange func(*statesource.State)) error {
	if !v.running.CompareAndSwap(false, true) {
		return errors.New("a view of the local state runs once")
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-v.kick:
			if st := v.take(); st != nil && onChange != nil {
				onChange(st)
			}
		}
	}
}
