// Package unixsock owns a unix socket's path for the life of a server: a
// server that listens through it holds an exclusive lock beside the socket
// (PATH.lock), so a second server given the same path fails with ErrInUse
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
// listener removes the socket and releases the lock; the lock file stays
// (removing it would let two servers lock different files).
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
func acquire(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening its lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err == nil {
		return f, nil
	}
	f.Close()
	if errors.Is(err, unix.EWOULDBLOCK) {
		return nil, fmt.Errorf("%w (it holds %s): stop it, or give this one another path", ErrInUse, path)
	}
	return nil, fmt.Errorf("locking %s: %w", path, err)
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
	lock *os.File
}

func (l *listener) Close() error {
	err := l.Listener.Close() // removes the socket file
	l.lock.Close()
	return err
}
