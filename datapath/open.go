package datapath

import (
	"errors"
	"log/slog"
	"os"
)

// Open returns the eBPF maps (OpenMaps). When the process lacks the
// privileges for eBPF (the error wraps os.ErrPermission, e.g. EPERM when not
// root), it logs a loud warning and returns NewMemory() instead: the agent
// keeps running but nothing reaches the kernel. Other errors are returned.
// A nil log means slog.Default().
func Open(cfg Config, log *slog.Logger) (Datapath, error) {
	m, err := OpenMaps(cfg)
	if err == nil {
		return m, nil
	}
	if !errors.Is(err, os.ErrPermission) {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log.Warn("eBPF unavailable (not root?): using the in-memory datapath; nothing reaches the kernel",
		"pinDir", cfg.withDefaults().PinDir, "error", err)
	return NewMemory(), nil
}
