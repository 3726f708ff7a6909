package cli

import (
	"context"
	"log/slog"
	"os"

	"github.com/clustermesh/clustermesh/wireguard"
)

// rotateOnSignal rotates the key each time sig fires (SIGUSR1).
func rotateOnSignal(sig <-chan os.Signal, a *wireguard.Agent) func(context.Context) error {
	return func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-sig:
			}
			pub, err := a.RotateKey()
			if err != nil {
				slog.Error("rotating the WireGuard key on SIGUSR1", "err", err)
				continue
			}
			slog.Info("rotated the WireGuard key on SIGUSR1", "publicKey", pub)
		}
	}
}
