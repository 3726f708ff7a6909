// Package bpfmap is what the datapath packages share about pinned eBPF
// maps: their sentinel errors (package datapath re-exports them), opening a
// set of maps pinned by name with errors that say what to do, dumping a
// map, "map full" errors naming the option to raise, the bpffs pin
// directory, removing pins, and the encoding of ports and addresses common
// to every map layout.
package bpfmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Sentinel errors shared by every datapath package (documented where
// package datapath re-exports them).
var (
	ErrFull            = errors.New("map full")
	ErrInvalidConfig   = errors.New("invalid datapath config")
	ErrNotBPFFS        = errors.New("pin directory is not on a bpf filesystem")
	ErrIncompatiblePin = errors.New("incompatible pinned map")
	ErrClosed          = errors.New("datapath closed")
)

// Closed is the error of op on something closed.
func Closed(op string) error { return fmt.Errorf("datapath: %s: %w", op, ErrClosed) }

// FNoPrealloc is BPF_F_NO_PREALLOC, mandatory for LPM tries.
const FNoPrealloc = 1

// Address families as stored in the maps.
const (
	Family4 uint8 = 4
	Family6 uint8 = 6
)

// Htons converts a host-order port to the network-order representation held
// in a native uint16 field; Ntohs is its inverse (the same byte swap).
func Htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// Ntohs is the inverse of Htons.
func Ntohs(p uint16) uint16 { return Htons(p) }

// EncodeAddr returns the 16-byte map form and family of a normalised
// address (IPv4 unmapped, no zone): IPv4 in the first 4 bytes.
func EncodeAddr(a netip.Addr) (out [16]byte, family uint8) {
	if a.Is4() {
		v4 := a.As4()
		copy(out[:], v4[:])
		return out, Family4
	}
	return a.As16(), Family6
}

// DecodeAddr is the inverse of EncodeAddr; an unknown family gives the
// zero Addr.
func DecodeAddr(b [16]byte, family uint8) netip.Addr {
	switch family {
	case Family4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case Family6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// IsFull reports whether err is the kernel's "map full" (E2BIG from a hash,
// ENOSPC from an LPM trie), and returns the bare errno: the library words
// E2BIG as "key too big".
func IsFull(err error) (syscall.Errno, bool) {
	var errno syscall.Errno
	if !errors.Is(err, syscall.E2BIG) && !errors.Is(err, syscall.ENOSPC) {
		return 0, false
	}
	errors.As(err, &errno)
	return errno, true
}

// FullErr is the error of a write that found map mapName full: the
// kernel's E2BIG or ENOSPC as errno (also wrapped), or 0 when the datapath
// itself counted. It wraps ErrFull and names option, the option that sizes
// the map ("--flag (Config.Field)").
func FullErr(op, mapName string, maxEntries uint32, errno syscall.Errno, option string) error {
	if errno != 0 {
		return fmt.Errorf("datapath: %s: %w: all %d entries of %s are in use (%s: %w): raise %s and remove the pin directory (agent --cleanup) so that the map is recreated",
			op, ErrFull, maxEntries, mapName, unix.ErrnoName(errno), errno, option)
	}
	return fmt.Errorf("datapath: %s: %w: all %d entries of %s are in use: raise %s and remove the pin directory (agent --cleanup) so that the map is recreated",
		op, ErrFull, maxEntries, mapName, option)
}

// Sizes tells which option sizes a map: its name as an operator writes it
// ("--flag (Config.Field)") and its unit; ok is false for a map of fixed
// size.
type Sizes func(mapName string) (option, unit string, ok bool)

// OpenPinned opens (or creates and pins) every map of specs in pinDir, all
// or none: on error the ones opened are closed. A pinned map of another
// definition is ErrIncompatiblePin, with what to do; when only its size
// differs, the error names the option (sizes) that sets it.
func OpenPinned(specs []*ebpf.MapSpec, pinDir, op string, sizes Sizes) ([]*ebpf.Map, error) {
	opened := make([]*ebpf.Map, 0, len(specs))
	for _, spec := range specs {
		em, err := ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: pinDir})
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			if errors.Is(err, ebpf.ErrMapIncompatible) {
				if option, unit, pinned, ok := Resized(spec, pinDir, sizes); ok {
					return nil, fmt.Errorf("datapath: %s: the map pinned at %s/%s has %d %s, %s asks for %d; "+
						"remove the pin directory (agent --cleanup, or rm -r %s) and restart, or keep the size: %w: %w",
						op, pinDir, spec.Name, pinned, unit, option, spec.MaxEntries, pinDir, ErrIncompatiblePin, err)
				}
				return nil, fmt.Errorf("datapath: %s: the map pinned at %s/%s does not match this version's definition; "+
					"remove the pin directory (agent --cleanup, or rm -r %s) and restart: %w: %w",
					op, pinDir, spec.Name, pinDir, ErrIncompatiblePin, err)
			}
			return nil, fmt.Errorf("datapath: %s: open map %s in %s: %w", op, spec.Name, pinDir, err)
		}
		opened = append(opened, em)
	}
	return opened, nil
}

// Resized reports whether the map pinned for spec in pinDir differs from it
// in its size alone, with the option that sets that size (sizes) and the
// pinned size.
func Resized(spec *ebpf.MapSpec, pinDir string, sizes Sizes) (option, unit string, pinnedSize uint32, ok bool) {
	option, unit, ok = sizes(spec.Name)
	if !ok {
		return "", "", 0, false
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, spec.Name), nil)
	if err != nil {
		return "", "", 0, false
	}
	defer pinned.Close()
	same := *spec
	same.MaxEntries = pinned.MaxEntries()
	if pinned.MaxEntries() == spec.MaxEntries || same.Compatible(pinned) != nil {
		return "", "", 0, false
	}
	return option, unit, pinned.MaxEntries(), true
}

// dumpChunk is how many entries one BPF_MAP_LOOKUP_BATCH returns at most.
const dumpChunk = 4096

// Dump calls fn for every entry of em, by batch lookups, or by iteration
// where the map type lacks them. fn must copy what it keeps.
func Dump[K, V any](em *ebpf.Map, fn func(*K, *V)) error {
	keys := make([]K, dumpChunk)
	vals := make([]V, dumpChunk)
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := em.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(&keys[i], &vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case first && errors.Is(err, ebpf.ErrNotSupported):
			var k K
			var v V
			it := em.Iterate()
			for it.Next(&k, &v) {
				fn(&k, &v)
			}
			return it.Err()
		case err != nil:
			return err
		}
	}
}

// bpffsMagic is BPF_FS_MAGIC from linux/magic.h.
const bpffsMagic = 0xcafe4a11

// BPFFSRoot is where the bpf filesystem is conventionally mounted.
const BPFFSRoot = "/sys/fs/bpf"

func isBPFFS(path string) (bool, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return false, err
	}
	return uint32(st.Type) == bpffsMagic, nil
}

// PreparePinDir mounts the bpffs at /sys/fs/bpf when dir lies under it and
// it is not mounted yet, checks that dir is on a bpffs, and creates it.
func PreparePinDir(dir string) error {
	dir = filepath.Clean(dir)
	if dir == BPFFSRoot || strings.HasPrefix(dir, BPFFSRoot+"/") {
		ok, err := isBPFFS(BPFFSRoot)
		if err != nil {
			return fmt.Errorf("datapath: statfs %s: %w", BPFFSRoot, err)
		}
		if !ok {
			if err := syscall.Mount("bpf", BPFFSRoot, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("datapath: mount bpffs at %s (mount -t bpf bpf %s): %w", BPFFSRoot, BPFFSRoot, err)
			}
		}
	}
	// Check the nearest existing ancestor before creating anything, so that
	// a wrong dir leaves no directory behind.
	existing := dir
	for {
		_, err := os.Stat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || existing == "/" {
			return fmt.Errorf("datapath: pin directory %s: %w", dir, err)
		}
		existing = filepath.Dir(existing)
	}
	ok, err := isBPFFS(existing)
	if err != nil {
		return fmt.Errorf("datapath: statfs %s: %w", existing, err)
	}
	if !ok {
		return fmt.Errorf("datapath: pin directory %s: %s is not on a bpf filesystem; choose a directory under %s or mount one (mount -t bpf bpf DIR): %w",
			dir, existing, BPFFSRoot, ErrNotBPFFS)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("datapath: create pin directory: %w", err)
	}
	return nil
}

// RemovePins removes the pins of names in pinDir (absent ones are fine),
// then pinDir itself if that left it empty. extra errors (those of the
// caller's own removals) are reported with these, as one error naming
// pinDir.
func RemovePins(pinDir string, names []string, extra ...error) error {
	errs := extra
	for _, name := range names {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: remove pins in %s: %w", pinDir, err)
	}
	return nil
}
