package datapath

import (
	"errors"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Sentinel errors. Every error returned by this package reads
// "datapath: ...", and wraps one of these when it falls into their class
// (test with errors.Is).
var (
	// ErrInvalidPrefix: an ipcache prefix is the zero netip.Prefix or has an
	// out-of-range length. Nothing is written.
	ErrInvalidPrefix = errors.New("invalid prefix")

	// ErrInvalidAddr: an address (frontend, backend, tunnel endpoint) is
	// invalid or carries an IPv6 zone, which the maps cannot represent.
	// Nothing is written.
	ErrInvalidAddr = errors.New("invalid address")

	// ErrInvalidService: a frontend or backend has port 0 or a protocol other
	// than TCP, UDP or SCTP, or a service lists more backends than a master
	// entry can count (65535). Nothing is written.
	ErrInvalidService = errors.New("invalid service")

	// ErrInvalidBatch: a batch call got slices of different lengths.
	// Nothing is written.
	ErrInvalidBatch = errors.New("invalid batch")

	// ErrFull: a map reached its max_entries (the kernel's E2BIG or ENOSPC,
	// or all backend ids or endpoint slots in use). Nothing of the failed
	// entry is written; a caller counts these (one error per call, whatever
	// the size of a batch) rather than logging each. The message names the
	// agent option to raise (SizeOptions) and its Config field. Changing a
	// limit changes the map's definition, so the pin directory must be
	// removed first.
	ErrFull = bpfmap.ErrFull

	// ErrInvalidConfig: Config.Validate refused the configuration (a
	// relative pin directory, a size out of its bounds); the message names
	// the option.
	ErrInvalidConfig = bpfmap.ErrInvalidConfig

	// ErrNotBPFFS: Config.PinDir is not inside a bpf filesystem, so the maps
	// could not outlive the agent.
	ErrNotBPFFS = bpfmap.ErrNotBPFFS

	// ErrIncompatiblePin: a map pinned under Config.PinDir has another type,
	// key or value size, max_entries or flags than this version expects. The
	// error also wraps ebpf.ErrMapIncompatible. Remove the pin directory
	// (agent --cleanup, or RemovePins) and restart.
	ErrIncompatiblePin = bpfmap.ErrIncompatiblePin

	// ErrClosed: the Maps were closed.
	ErrClosed = bpfmap.ErrClosed
)
