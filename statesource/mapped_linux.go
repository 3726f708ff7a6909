package statesource

import (
	"errors"
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// A new content of a large JSON state file is compared with the last one
// through a read-only mapping of the file, not read into memory: reading
// 10 MB and comparing it costs three times what comparing the mapped pages
// does, on the path from the file's rename to etcd. Only the bytes around
// the difference are copied (to be parsed); the parser rebuilds its copy of
// the content from the last one and those bytes after the new State is
// delivered (settle).

// DefaultMapMin is the size from which a state file's new content is
// compared through a mapping.
const DefaultMapMin = 1 << 20

// parseMapped parses the new content of the file at path around its
// difference with the last, through a mapping; handled is false when it
// cannot (the file is small or not indexed, the edit is not of endpoints
// only, or the file changed while it was compared): the caller then reads
// and parses it.
func (p *parser) parseMapped(path string) (st *State, handled bool) {
	if p.idx == nil {
		return nil, false
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() < int64(p.mapMin()) || fi.Size() != int64(int(fi.Size())) {
		return nil, false
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, false
	}
	defer unix.Munmap(m)
	var nx *jsonIndex
	var rb *rebase
	if faulted := survivingFaults(func() { nx, rb, err = p.idx.apply(m) }); faulted {
		return nil, false // truncated while compared: read it as it is now
	}
	switch {
	case err == nil:
		p.idx, p.pending, p.last = nx, rb, nil
		return nx.state, true
	case errors.Is(err, errUnchanged):
		p.last = p.idx.data
		return nil, true
	}
	return nil, false
}

// survivingFaults runs f, which reads a mapping of a file: if the file
// shrank under it, the read faults, and f's panic is recovered and
// reported instead of ending the process.
func survivingFaults(f func()) (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); !ok {
				panic(r)
			}
			faulted = true
		}
	}()
	f()
	return false
}
