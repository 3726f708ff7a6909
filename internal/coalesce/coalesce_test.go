package coalesce

import (
	"context"
	"testing"
	"time"
)

func TestSettleTakesThePokesOfTheWindow(t *testing.T) {
	dirty := make(chan struct{}, 1)
	dirty <- struct{}{}
	if !Settle(context.Background(), time.Millisecond, dirty) {
		t.Fatal("Settle reported a cancelled context")
	}
	select {
	case <-dirty:
		t.Fatal("the poke made in the window is still pending")
	default:
	}
}

func TestSettleStopsWithTheContext(t *testing.T) {
	dirty := make(chan struct{}, 1)
	dirty <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Settle(ctx, time.Hour, dirty) {
		t.Fatal("Settle waited out an hour's window on a cancelled context")
	}
	if len(dirty) != 1 {
		t.Fatal("a cancelled Settle took the pending poke")
	}
}
