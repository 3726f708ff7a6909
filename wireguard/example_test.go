package wireguard_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
	"github.com/clustermesh/clustermesh/wireguard"
)

// An agent wires WireGuard between its local state source and sync: the
// Agent wraps the source (the device opens at the first local state with
// this node's IP and pod CIDRs, and is removed when Run returns), and sync
// hands it the remote clusters' nodes, which become the device's peers.
// With agentsync that is
//
//	cfg.LocalSource, cfg.OnRemoteNodes = wg, wg.SetRemoteNodes
//
// Here the two sides are called by hand. It needs root, so it only compiles.
func ExampleAgent() {
	wg, err := wireguard.NewAgent(wireguard.AgentConfig{
		// DeviceName and ListenPort default to cilium_wg0 and 51871, the same
		// on every node.
		Device:   wireguard.Config{PrivateKeyFile: "/var/lib/clustermesh/wireguard.key"},
		NodeName: "node-1", // this node in the local state
		Source:   &statesource.File{Path: "/etc/clustermesh/state.yaml"},
		// The cluster's apiserver reads the public key from here and
		// publishes it in the node's entry.
		NodeKeysDir: "/var/lib/clustermesh/node-keys",
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- wg.Run(ctx, func(*statesource.State) { /* the agent's own use of the state */ })
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-wg.Ready():
	case err := <-done: // the node is not in the state, the port is taken, ...
		log.Fatal(err)
	}

	// Every change of the remote nodes: all of them, every remote cluster.
	wg.SetRemoteNodes([]*wire.Node{{
		Cluster: "west", Name: "w1", WireguardPubKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
		IPAddresses:   []wire.NodeAddress{{Type: wire.InternalIP, IP: netip.MustParseAddr("192.168.77.2")}},
		IPv4AllocCIDR: &wire.CIDR{Prefix: netip.MustParsePrefix("10.202.1.0/24")},
	}})
	st := wg.Status()
	fmt.Println(st.Device, st.PublicKey, st.Peers, st.Rejected)
}
