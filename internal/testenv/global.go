package testenv

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// What the tests may leave outside the process: bpf pins, named network
// namespaces and cgroups are the machine's, and `go test ./...` runs several
// packages' test binaries at once, so one binary's before/after comparison
// would count another's work in progress. The test binaries of a machine
// (one user) therefore share a ledger: the first to start while none runs
// records the machine's state; each registers while it runs; the last to
// finish compares the state with the record, and reports what is new as
// left behind by the binaries that ran since (exactly one when a package's
// tests run alone).

// globalState is the machine's state the tests may leave something in.
type globalState struct {
	BPF     []string // every path under /sys/fs/bpf
	Netns   []string // /run/netns
	Cgroups []string // cgroup v2 directories, systemd's units aside
}

// bpffsRoot is where the tests' bpf pins live.
const bpffsRoot = "/sys/fs/bpf"

// kernelBPFFSEntry reports whether name is one the kernel itself creates at
// a bpffs's root when it is mounted (bpf_preload's iterators): the first
// test to mount /sys/fs/bpf on a fresh machine makes them appear, and they
// are nobody's leak.
func kernelBPFFSEntry(name string) bool {
	return name == "maps.debug" || name == "progs.debug"
}

// bpfPins returns every path under the bpffs at root but the kernel's own.
func bpfPins(root string) []string {
	return walk(root, func(d fs.DirEntry) bool { return !kernelBPFFSEntry(d.Name()) })
}

func snapshotGlobal() globalState {
	var s globalState
	s.BPF = bpfPins(bpffsRoot)
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			s.Netns = append(s.Netns, filepath.Join("/run/netns", e.Name()))
		}
	}
	if root := cgroup2Mount(); root != "" {
		// systemd creates and removes its units' cgroups (sessions, services)
		// at any time; the tests make theirs elsewhere.
		s.Cgroups = walk(root, func(d fs.DirEntry) bool {
			if !d.IsDir() {
				return false
			}
			for _, unit := range []string{".slice", ".scope", ".service", ".mount", ".socket", ".swap"} {
				if strings.HasSuffix(d.Name(), unit) {
					return false
				}
			}
			return true
		})
	}
	return s
}

// walk returns every path under root (root aside) that keep accepts (all if
// nil), descending only into accepted directories. An unreadable root (no
// privileges, not mounted) gives nothing.
func walk(root string, keep func(fs.DirEntry) bool) []string {
	var out []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == root {
			return nil
		}
		if keep != nil && !keep(d) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		out = append(out, path)
		return nil
	})
	return out
}

// cgroup2Mount returns where cgroup v2 is mounted, or "".
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype ...
		fields := strings.Fields(sc.Text())
		if i := slices.Index(fields, "-"); i >= 5 && i+1 < len(fields) && fields[i+1] == "cgroup2" {
			return fields[4]
		}
	}
	return ""
}

// added returns what after has that before has not, by kind.
func (before globalState) added(after globalState) []string {
	var out []string
	for _, k := range []struct {
		kind          string
		before, after []string
	}{
		{"bpf pins", before.BPF, after.BPF},
		{"network namespaces", before.Netns, after.Netns},
		{"cgroups", before.Cgroups, after.Cgroups},
	} {
		var paths []string
		for _, p := range k.after {
			if !slices.Contains(k.before, p) {
				paths = append(paths, "  "+p)
			}
		}
		if len(paths) > 0 {
			out = append(out, k.kind+":\n"+strings.Join(paths, "\n"))
		}
	}
	return out
}

// global is this binary's place in the ledger.
type global struct {
	dir  string
	live *os.File // locked while this binary runs
}

// ledgerDir is shared by the user's test binaries.
func ledgerDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("clustermesh-testenv-%d", os.Getuid()))
}

// joinGlobal registers this binary, recording the machine's state first if
// no other test binary runs. Without a ledger (an unwritable temporary
// directory) nothing outside the process is checked.
func joinGlobal() *global {
	g := &global{dir: ledgerDir()}
	if err := os.MkdirAll(g.dir, 0o700); err != nil {
		return nil
	}
	unlock, err := g.lock()
	if err != nil {
		return nil
	}
	defer unlock()
	if len(g.others()) == 0 {
		if g.writeJSON("baseline", snapshotGlobal()) != nil || g.writeJSON("ran", []string{}) != nil {
			return nil
		}
	}
	live, err := os.OpenFile(g.livePath(os.Getpid()), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil
	}
	if err := unix.Flock(int(live.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		live.Close()
		return nil
	}
	g.live = live
	var ran []string
	g.readJSON("ran", &ran)
	wd, _ := os.Getwd()
	g.writeJSON("ran", append(ran, fmt.Sprintf("%s (%s, pid %d)", wd, filepath.Base(os.Args[0]), os.Getpid())))
	return g
}

// leave unregisters this binary. If it is the last one running, and check,
// it returns what the binaries that ran since the record left behind.
func (g *global) leave(check bool) []string {
	if g == nil {
		return nil
	}
	unlock, err := g.lock()
	if err != nil {
		return nil
	}
	defer unlock()
	os.Remove(g.live.Name())
	g.live.Close()
	if len(g.others()) > 0 {
		return nil // the last one checks
	}
	var baseline globalState
	var ran []string
	errB, errR := g.readJSON("baseline", &baseline), g.readJSON("ran", &ran)
	os.Remove(filepath.Join(g.dir, "baseline"))
	if !check || errB != nil || errR != nil {
		return nil
	}
	added := baseline.added(snapshotGlobal())
	if len(added) == 0 {
		return nil
	}
	who := "these tests"
	if len(ran) > 1 {
		who = "these tests or one of the test binaries that ran beside them: " + strings.Join(ran, ", ")
	}
	return []string{fmt.Sprintf("outside the process, left by %s:\n%s", who, strings.Join(added, "\n"))}
}

// lock takes the ledger's lock, released by the returned function (or by the
// process's end).
func (g *global) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(g.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func (g *global) livePath(pid int) string {
	return filepath.Join(g.dir, "live-"+strconv.Itoa(pid))
}

// others returns the pids of the other test binaries running, and removes
// the entries of the ones that died without leaving (their lock is gone).
func (g *global) others() []int {
	entries, _ := os.ReadDir(g.dir)
	var pids []int
	for _, e := range entries {
		s, ok := strings.CutPrefix(e.Name(), "live-")
		pid, err := strconv.Atoi(s)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		f, err := os.Open(g.livePath(pid))
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			os.Remove(f.Name()) // its process is gone
		} else {
			pids = append(pids, pid)
		}
		f.Close()
	}
	return pids
}

func (g *global) writeJSON(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := filepath.Join(g.dir, name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(g.dir, name))
}

func (g *global) readJSON(name string, v any) error {
	data, err := os.ReadFile(filepath.Join(g.dir, name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return errors.Join(fmt.Errorf("testenv: the ledger's %s", name), err)
	}
	return nil
}
