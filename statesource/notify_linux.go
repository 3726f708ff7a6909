package statesource

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// notifyFile signals on the returned channel (coalesced, never blocking)
// when the file at path is completely written, moved into place, created or
// removed — and on any change of a ".."-prefixed entry beside it, which is
// how Kubernetes swaps a mounted ConfigMap — until ctx is done; wait returns
// once its goroutines have ended (after ctx is done). Writes to other files
// of the directory (the temporary file of an atomic replace) do not wake it.
func notifyFile(ctx context.Context, path string) (changed <-chan struct{}, wait func(), err error) {
	name := filepath.Base(path)
	return notifyDir(ctx, filepath.Dir(path), unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_CREATE|unix.IN_DELETE,
		func(got string) bool { return got == name || strings.HasPrefix(got, "..") })
}

// notifyKeysDir signals when a node key file (<node>.pub, see NodeKeyFile)
// of dir is written, moved in or out, created or removed, or a
// ".."-prefixed entry changes (a mounted ConfigMap or Secret swapped).
// Hidden files (the temporary files of atomic writes) do not wake it.
func notifyKeysDir(ctx context.Context, dir string) (changed <-chan struct{}, wait func(), err error) {
	return notifyDir(ctx, dir, unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_MOVED_FROM|unix.IN_CREATE|unix.IN_DELETE,
		func(got string) bool { return strings.HasPrefix(got, "..") || isNodeKeyFile(got) })
}

// notifyDir watches dir for the events of mask and signals on the returned
// channel (coalesced, never blocking) when one of them names an entry that
// match accepts, or when the event queue overflowed; until ctx is done.
func notifyDir(ctx context.Context, dir string, mask uint32, match func(name string) bool) (changed <-chan struct{}, wait func(), err error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("starting inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("watching %s with inotify: %w", dir, err)
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
			n, err := f.Read(buf)
			if err != nil {
				return // closed
			}
			if concerns(buf[:n], match) {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}()
	return ch, wg.Wait, nil
}

// concerns reports whether a buffer of inotify events names an entry match
// accepts (or overflowed, or is torn).
func concerns(buf []byte, match func(string) bool) bool {
	for len(buf) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(buf) {
			return true // torn: be safe
		}
		got := strings.TrimRight(string(buf[unix.SizeofInotifyEvent:end]), "\x00")
		if ev.Mask&unix.IN_Q_OVERFLOW != 0 || match(got) {
			return true
		}
		buf = buf[end:]
	}
	return false
}
