package statesource

import (
	"context"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// notifyDir signals on the returned channel (coalesced, never blocking) when
// an entry of dir is written, created, moved in or removed, until ctx is
// done; wait returns once its goroutines have ended (after ctx is done).
// It is what makes a state change reach the publisher in a millisecond
// rather than a poll interval; File still polls as a safety net.
func notifyDir(ctx context.Context, dir string) (changed <-chan struct{}, wait func(), err error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("statesource: inotify: %w", err)
	}
	mask := uint32(unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY)
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("statesource: inotify watch %s: %w", dir, err)
	}
	// A non-blocking fd goes through the runtime poller, so Close unblocks Read.
	f := os.NewFile(uintptr(fd), "inotify:"+dir)
	ch := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		f.Close()
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			if _, err := f.Read(buf); err != nil {
				return // closed
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, wg.Wait, nil
}
