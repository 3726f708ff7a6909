package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wireguard"
)

// DefaultWireGuardKeyFile is where the agent keeps its WireGuard private key.
const DefaultWireGuardKeyFile = "/var/lib/clustermesh/wireguard.key"

// wireguardFlags are the agent's encryption flags.
type wireguardFlags struct {
	enable         bool
	device         string
	port           int
	keyFile        string
	nodeEncryption bool
	nodeName       string
	rotate         bool
	keysDir        string
	underlayMTU    int
	implementation string
}

// wireguardOnly are the flags that mean nothing without --enable-wireguard.
var wireguardOnly = []string{"wireguard-device", "wireguard-port", "wireguard-key-file", "node-encryption",
	"rotate-wireguard-key", "node-keys-dir", "wireguard-underlay-mtu", "wireguard-implementation"}

func (w *wireguardFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&w.enable, "enable-wireguard", false, "encrypt pod traffic to the other clusters' nodes with WireGuard (needs --node-name; see docs/wireguard.md)")
	f.StringVar(&w.nodeName, "node-name", "", "this node's name in the local state: WireGuard takes its IP and pod CIDRs from there, policy the endpoints to enforce")
	f.StringVar(&w.device, "wireguard-device", wireguard.DefaultDeviceName, "name of the WireGuard interface (unique on the machine)")
	f.IntVar(&w.port, "wireguard-port", wireguard.DefaultListenPort, "UDP port of the WireGuard device; the same on every node of the mesh (a remote node's endpoint is its IP and this port)")
	f.StringVar(&w.keyFile, "wireguard-key-file", DefaultWireGuardKeyFile, "the WireGuard private key (mode 0600, created on first start)")
	f.BoolVar(&w.nodeEncryption, "node-encryption", false, "also encrypt traffic between node IPs (not only pod CIDRs)")
	f.BoolVar(&w.rotate, "rotate-wireguard-key", false, "rotate the WireGuard key at start (SIGUSR1 rotates it while running)")
	f.StringVar(&w.keysDir, "node-keys-dir", "", "directory to publish this node's WireGuard public key in, as <node-name>.pub, for the cluster's apiserver (its --node-keys-dir); empty: only log the key, to be put in the state file")
	f.IntVar(&w.underlayMTU, "wireguard-underlay-mtu", 0, "MTU of the underlay (0: that of the interface holding the node's IP); the device's is 60 (IPv6: 80) less")
	f.StringVar(&w.implementation, "wireguard-implementation", wireguard.ImplAuto, "auto (the kernel module if present, else userspace), kernel or userspace")
}

// check refuses encryption flags without --enable-wireguard, and
// --enable-wireguard without --node-name.
func (w *wireguardFlags) check(cmd *cobra.Command) error {
	f := cmd.Flags()
	if !w.enable {
		for _, name := range wireguardOnly {
			if f.Changed(name) {
				return fmt.Errorf("--%s needs --enable-wireguard", name)
			}
		}
		return nil
	}
	if w.nodeName == "" {
		return errors.New("--enable-wireguard needs --node-name: this node's name in the state file (its IP and pod CIDRs come from there)")
	}
	return nil
}

// newAgent wraps the local state source with the WireGuard agent: it opens
// the device at the first state and closes it when the agent stops.
func (w *wireguardFlags) newAgent(src statesource.Source) (*wireguard.Agent, error) {
	a, err := wireguard.NewAgent(wireguard.AgentConfig{
		Device: wireguard.Config{
			DeviceName: w.device, ListenPort: w.port, PrivateKeyFile: w.keyFile, NodeEncryption: w.nodeEncryption,
			UnderlayMTU: w.underlayMTU, Implementation: w.implementation, Logger: slog.Default(),
		},
		NodeName: w.nodeName, Source: src, NodeKeysDir: w.keysDir, RotateAtStart: w.rotate, Logger: slog.Default(),
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return a, nil
}

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
