// Package unixsock owns a unix socket's path for the life of a server: a
// server that listens through it holds an exclusive lock beside the socket
// (PATH.lock, removed when it closes), so a second server given the same path fails with ErrInUse
// instead of removing the first one's socket and taking its clients, and a
// socket left by a server that died (its lock released with its process) is
// replaced.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrInUse: another live server (this process or another) listens on the
// path.
var ErrInUse = errors.New("another running process serves this socket")

// lockSuffix names the lock file beside a socket.
const lockSuffix = ".lock"

// Listen listens on the unix socket at path with the given permission
// bits, creating its directory (0755). It takes the path's lock first:
// while it is held by anyone else, Listen returns ErrInUse and touches
// nothing. Holding it, a file left at path is removed. Closing the
// listener removes the socket, then the lock file (still locked: see
// acquire) and releases the lock.
func Listen(path string, perm os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the directory of %s: %w", path, err)
	}
	lock, err := acquire(path + lockSuffix)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	ln, err := listen(path, perm)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &listener{Listener: ln, lock: lock}, nil
}

// acquire opens (or creates) the lock file and locks it without waiting.
// A lock file is removed by its holder while locked, so a lock won on a
// file no longer at path (removed, and made anew by another server, since
// this one opened it) holds nothing: acquire tries again.
func acquire(path string) (*os.File, error) {
	for range 10 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening its lock %s: %w", path, err)
		}
		if err := flock(f); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w (it holds %s): stop it, or give this one another path", ErrInUse, path)
			}
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		fi, err1 := f.Stat()
		at, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(fi, at) {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("locking %s: it was replaced under each of 10 attempts", path)
}

// flock locks f exclusively without waiting.
func flock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// listen replaces whatever is at path (the lock is held) with a socket
// restricted to perm.
func listen(path string, perm os.FileMode) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, perm); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting %s to %v: %w", path, perm, err)
	}
	return ln, nil
}

// listener releases the path's lock once the socket is closed and gone.
type listener struct {
	net.Listener
	lock   *os.File
	unlock sync.Once
}

func (l *listener) Close() error {
	err := l.Listener.Close() // removes the socket file
	l.unlock.Do(func() {
		os.Remove(l.lock.Name()) // while locked: see acquire
		l.lock.Close()
	})
	return err
}
