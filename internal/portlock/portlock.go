// Package portlock hands out loopback ports for listeners that start
// later (an agent's Observer and metrics addresses written into a state
// file before it runs, an apiserver's address in a test), and keeps each
// one out of every other Reserve on this machine until it is released.
//
// A port found free and closed again can be handed out twice: by the
// kernel to the next bind to port 0, or by a second search in another test
// process. Reserve takes ports below the kernel's ephemeral range (so no
// outgoing connection takes one meanwhile) and holds a lock file per port
// (PORTDIR/PORT, flock): two Reserves, in one process or two, never hold
// the same port at once. Only code that reserves through this package is
// kept out; a process binding the port directly is not.
package portlock

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrNoPort: every port tried was held or in use.
var ErrNoPort = errors.New("no free loopback port")

// The range ports are taken from: below Linux's default ephemeral range
// (32768–60999), above the well-known and most registered services'.
const (
	firstPort = 20000
	lastPort  = 32767
	tries     = 200
)

// Lease is a reserved port. It is free for TCP and UDP on every address
// when reserved; Release lets another Reserve have it.
type Lease struct {
	Port int
	lock *os.File
}

// Addr is the lease's host:port on 127.0.0.1.
func (l *Lease) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Port)) }

// Release gives the port back (idempotent). The listener on it, if any, is
// the caller's to close first.
func (l *Lease) Release() {
	if l.lock == nil {
		return
	}
	os.Remove(l.lock.Name()) // while still locked: see held
	l.lock.Close()
	l.lock = nil
}

// Dir is where the lock files are kept: one directory per user, so that
// a user's processes share it.
func Dir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("clustermesh-ports-%d", os.Getuid()))
}

// Reserve returns a lease on a loopback port that is free for TCP and UDP
// and that no other lease on this machine holds.
func Reserve() (*Lease, error) {
	dir := Dir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the port lock directory: %w", err)
	}
	for range tries {
		port := firstPort + rand.IntN(lastPort-firstPort+1)
		f, err := held(filepath.Join(dir, strconv.Itoa(port)))
		if err != nil {
			return nil, err
		}
		if f == nil {
			continue
		}
		if free(port) {
			return &Lease{Port: port, lock: f}, nil
		}
		f.Close() // bound by someone outside: leave its lock file
	}
	return nil, fmt.Errorf("%w in %d-%d after %d tries", ErrNoPort, firstPort, lastPort, tries)
}

// held locks path without waiting; nil when another lease holds it. A
// lock file is removed by Release while locked, so a lock won on a file
// that is no longer at path (removed and made anew since it was opened)
// is given up: it holds nothing.
func held(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the port lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
			return nil, nil
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	fi, err1 := f.Stat()
	at, err2 := os.Stat(path)
	if err1 != nil || err2 != nil || !os.SameFile(fi, at) {
		f.Close()
		return nil, nil
	}
	return f, nil
}

// free: nothing listens on port over TCP or UDP, on any address (binding
// the wildcard fails when any address holds it), so a lease's port serves
// a loopback listener and a wildcard one (a WireGuard device's) alike.
func free(port int) bool {
	addr := ":" + strconv.Itoa(port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}
