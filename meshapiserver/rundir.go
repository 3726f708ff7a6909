package meshapiserver

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// runDir is the private directory of one running apiserver: etcd's data
// (unless Config.DataDir is set) and the unix sockets of etcd's peer and
// HTTP listeners, mode 0700, in a parent of the user's own (mode 0700 too).
//
// The store is ephemeral and a process killed with SIGKILL cannot remove
// its directory (120–140 MB of etcd data), so each directory holds a lock
// file, locked (flock) for as long as its process lives: the kernel
// releases the lock when the process dies, however it dies. Every start
// removes the directories whose lock it can take.
type runDir struct {
	path string
	lock *os.File // held until close
}

const (
	runLockFile = "lock"
	// unixPathMax is the longest path a unix socket can have (sun_path,
	// with its terminating NUL).
	unixPathMax = 107
	// orphanAge is how old a directory without a lock file must be before
	// it is removed (younger, its process may be creating the lock).
	orphanAge = time.Minute
)

// defaultRuntimeDir is $TMPDIR/clustermesh-<uid>.
func defaultRuntimeDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("clustermesh-%d", os.Getuid()))
}

// openRunDir sweeps parent of dead apiservers' directories and creates a
// new locked one for cluster.
func openRunDir(parent, cluster string, log *slog.Logger) (*runDir, error) {
	if parent == "" {
		parent = defaultRuntimeDir()
	}
	if err := privateParent(parent); err != nil {
		return nil, err
	}
	sweepRunDirs(parent, log)
	// The directory is made under a hidden name, locked, and only then
	// given its name: a visible directory's lock is always held by its
	// apiserver, so that another one starting at the same moment never
	// takes it for a dead one's (and removes it) in its sweep.
	tmp, err := os.MkdirTemp(parent, "."+cluster+"-")
	if err != nil {
		return nil, fmt.Errorf("creating the runtime directory: %w", err)
	}
	path := filepath.Join(parent, strings.TrimPrefix(filepath.Base(tmp), "."))
	if n := len(filepath.Join(path, "http.sock")); n > unixPathMax {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("runtime directory %s: its socket paths would be %d bytes, unix sockets allow %d: choose a shorter runtime directory (TMPDIR)", path, n, unixPathMax)
	}
	lock, err := lockFile(filepath.Join(tmp, runLockFile), false)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("locking the runtime directory %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		lock.Close()
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("naming the runtime directory %s: %w", path, err)
	}
	return &runDir{path: path, lock: lock}, nil
}

// privateParent creates dir with mode 0700 if needed and checks that it is
// a directory (not a symbolic link) of this user that nobody else can
// enter: it is in a shared temporary directory, where anyone could have
// created it first.
func privateParent(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the runtime directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("checking the runtime directory %s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("runtime directory %s is not a directory (a symbolic link?): remove it", dir)
	case !ok || int(st.Uid) != os.Getuid():
		return fmt.Errorf("runtime directory %s belongs to another user: remove it or choose another (TMPDIR)", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("runtime directory %s has mode %o, others can enter it: chmod 700 it", dir, fi.Mode().Perm())
	}
	return nil
}

// sweepRunDirs removes the directories in parent whose process is dead: their
// lock can be taken. A directory without a lock file, and a hidden one (an
// apiserver's directory not named yet), is removed once older than
// orphanAge.
func sweepRunDirs(parent string, log *slog.Logger) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		log.Warn("runtime directory: cannot list it to remove what dead apiservers left", "dir", parent, "err", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < orphanAge {
				continue // being made now
			}
		}
		lock, err := lockFile(filepath.Join(dir, runLockFile), true)
		switch {
		case errors.Is(err, syscall.EWOULDBLOCK):
			continue // alive
		case errors.Is(err, fs.ErrNotExist):
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < orphanAge {
				continue
			}
		case err != nil:
			log.Warn("runtime directory: cannot tell whether its apiserver is alive", "dir", dir, "err", err)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("runtime directory: cannot remove what a dead apiserver left", "dir", dir, "err", err)
		} else {
			log.Info("removed the runtime directory of an apiserver that is gone", "dir", dir)
		}
		if lock != nil {
			lock.Close()
		}
	}
}

// lockFile opens (creating it unless existing is set) and exclusively
// locks path without waiting: syscall.EWOULDBLOCK when another process
// holds the lock.
func lockFile(path string, existing bool) (*os.File, error) {
	flags := os.O_RDWR | os.O_CREATE
	if existing {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(path, flags|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	if !existing {
		fmt.Fprintf(f, "%d\n", os.Getpid()) // for whoever looks; the lock is what counts
	}
	return f, nil
}

// socket is the path of the unix socket name in the directory.
func (d *runDir) socket(name string) string { return filepath.Join(d.path, name+".sock") }

// close removes the directory, then releases the lock.
func (d *runDir) close() error {
	err := os.RemoveAll(d.path)
	d.lock.Close()
	if err != nil {
		return fmt.Errorf("removing the runtime directory %s: %w", d.path, err)
	}
	return nil
}
