package node

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/statesource"
)

// chanSource delivers the states sent on it, and fails with the error sent
// on fail.
type chanSource struct {
	states chan *statesource.State
	fail   chan error
}

func (c chanSource) Run(ctx context.Context, onChange func(*statesource.State)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-c.fail:
			return err
		case st := <-c.states:
			onChange(st)
		}
	}
}

func nodesState(names ...string) *statesource.State {
	st := &statesource.State{}
	for _, n := range names {
		st.Nodes = append(st.Nodes, statesource.Node{Name: n})
	}
	return st
}

// receive waits for the next state on ch.
func receive(t *testing.T, ch <-chan *statesource.State, what string) *statesource.State {
	t.Helper()
	select {
	case st := <-ch:
		return st
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no state", what)
		return nil
	}
}

// The source runs once and every view gets each state; a consumer that is
// busy gets the newest state when it comes back, not the ones it missed,
// and does not hold the others up; the source's error ends the fan-out.
func TestFanout(t *testing.T) {
	src := chanSource{states: make(chan *statesource.State), fail: make(chan error, 1)}
	f := newFanout(src)
	fast, slow := f.view(), f.view()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fastGot, slowGot := make(chan *statesource.State, 10), make(chan *statesource.State, 10)
	release := make(chan struct{})
	done := make(chan error, 3)
	go func() { done <- f.Run(ctx) }()
	go func() { done <- fast.Run(ctx, func(st *statesource.State) { fastGot <- st }) }()
	go func() {
		done <- slow.Run(ctx, func(st *statesource.State) {
			slowGot <- st
			if len(st.Nodes) == 1 {
				<-release // busy with the first state
			}
		})
	}()

	src.states <- nodesState("a")
	if st := receive(t, slowGot, "slow view"); len(st.Nodes) != 1 {
		t.Fatalf("slow view's first state has %d nodes", len(st.Nodes))
	}
	receive(t, fastGot, "fast view")
	src.states <- nodesState("a", "b")
	src.states <- nodesState("a", "b", "c")
	for st := receive(t, fastGot, "fast view, while the slow one is busy"); len(st.Nodes) != 3; {
		if len(st.Nodes) != 2 {
			t.Fatalf("fast view got %d nodes, want the second state (2), then the third (3)", len(st.Nodes))
		}
		st = receive(t, fastGot, "fast view's third state")
	}
	close(release)
	if st := receive(t, slowGot, "slow view, once free"); len(st.Nodes) != 3 {
		t.Fatalf("slow view got %d nodes, want the newest state (3)", len(st.Nodes))
	}
	select {
	case st := <-slowGot:
		t.Fatalf("slow view got another state: %d nodes", len(st.Nodes))
	default:
	}

	if err := fast.Run(ctx, nil); err == nil {
		t.Error("a view ran twice")
	}
	boom := errors.New("boom")
	src.fail <- boom
	if err := <-done; !errors.Is(err, boom) {
		t.Fatalf("fan-out ended with %v, want the source's error", err)
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("view: %v", err)
		}
	}
}
