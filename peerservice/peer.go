// Package peerservice owns the mesh's list of Observer peers as Hubble's Peer
// service serves it: the Server an agent feeds with every node of the mesh
// (its own cluster's and every remote's) and that streams the changes to
// relays (PEER_ADDED, PEER_DELETED, PEER_UPDATED, a new stream first getting
// every current peer as added); the Watcher a relay follows one such service
// with; and how a node entry becomes a Peer (its cluster-qualified name,
// the address of its Observer server, the TLS name its certificate has).
package peerservice

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	peerpb "github.com/cilium/cilium/api/v1/peer"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Sentinel errors.
var (
	// ErrInvalidPeer: a peer without a cluster-qualified name or without a
	// host:port address (from a node entry or a notification).
	ErrInvalidPeer = errors.New("invalid peer")
	// ErrFellBehind: a Notify stream whose client read too slowly for its
	// buffer; it ends, and the client's next stream starts from the whole set.
	ErrFellBehind = errors.New("peer notifications fell behind")
)

// Peer is a node's Observer server as the mesh knows it.
type Peer struct {
	// Name is cluster/node.
	Name string
	// Address is the host:port of its Observer server (TCP, mutual TLS).
	Address string
	// TLSServerName is the name its certificate is checked against
	// (ca.ObserverServerName); empty for a server without TLS.
	TLSServerName string
}

// Cluster and Node split the peer's name.
func (p Peer) Cluster() string { c, _, _ := strings.Cut(p.Name, "/"); return c }
func (p Peer) Node() string    { _, n, _ := strings.Cut(p.Name, "/"); return n }

// Check reports what makes p unusable: a name that is not cluster/node, an
// address that is not host:port.
func (p Peer) Check() error {
	c, n, ok := strings.Cut(p.Name, "/")
	if !ok || c == "" || n == "" || strings.Contains(n, "/") {
		return fmt.Errorf("peer %q: %w (the name must be cluster/node)", p.Name, ErrInvalidPeer)
	}
	host, port, err := net.SplitHostPort(p.Address)
	if err != nil || host == "" {
		return fmt.Errorf("peer %q: %w (address %q is not host:port)", p.Name, ErrInvalidPeer, p.Address)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("peer %q: %w (address %q has no port in 1..65535)", p.Name, ErrInvalidPeer, p.Address)
	}
	return nil
}

// FromNode is the peer of a node entry (a remote's, as agentsync accepted
// it, or the local cluster's as it is published): named cluster/node, at
// wire.HubbleAddress, with the server name of its cluster's Observer
// certificate.
func FromNode(n *wire.Node) (Peer, error) {
	addr, err := wire.HubbleAddress(n)
	if err != nil {
		return Peer{}, fmt.Errorf("peer of node %s/%s: %w", n.Cluster, n.Name, err)
	}
	p := Peer{Name: n.Cluster + "/" + n.Name, Address: addr, TLSServerName: ca.ObserverServerName(n.Cluster, n.Name)}
	if err := p.Check(); err != nil {
		return Peer{}, err
	}
	return p, nil
}

// FromLocalNode is the peer of a node of the local cluster's state, as
// FromNode sees it once published.
func FromLocalNode(cluster string, n *statesource.Node) (Peer, error) {
	w := wire.Node{Name: n.Name, Cluster: cluster, Annotations: n.Annotations}
	for _, ip := range n.IPs {
		w.IPAddresses = append(w.IPAddresses, wire.NodeAddress{Type: wire.InternalIP, IP: ip})
	}
	return FromNode(&w)
}

// notification is the change message of p.
func notification(p Peer, t peerpb.ChangeNotificationType) *peerpb.ChangeNotification {
	cn := &peerpb.ChangeNotification{Name: p.Name, Address: p.Address, Type: t}
	if p.TLSServerName != "" {
		cn.Tls = &peerpb.TLS{ServerName: p.TLSServerName}
	}
	return cn
}

// fromNotification is the peer a notification names. An address without a
// port gets wire.DefaultHubblePort, as Hubble's relay adds its port.
func fromNotification(cn *peerpb.ChangeNotification) (Peer, error) {
	p := Peer{Name: cn.GetName(), Address: cn.GetAddress(), TLSServerName: cn.GetTls().GetServerName()}
	if _, _, err := net.SplitHostPort(p.Address); err != nil && p.Address != "" {
		p.Address = net.JoinHostPort(strings.Trim(p.Address, "[]"), strconv.Itoa(wire.DefaultHubblePort))
	}
	return p, p.Check()
}

// Collect is the peer set of the mesh as an agent knows it: the nodes of
// its own cluster (from its state) and every remote's nodes it synced,
// sorted by name. A node without a usable address is left out, and said in
// the error (errors.Join of one per node).
func Collect(cluster string, local []statesource.Node, remote []*wire.Node) ([]Peer, error) {
	out := make([]Peer, 0, len(local)+len(remote))
	var errs []error
	add := func(p Peer, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		out = append(out, p)
	}
	for i := range local {
		add(FromLocalNode(cluster, &local[i]))
	}
	for _, n := range remote {
		add(FromNode(n))
	}
	slices.SortFunc(out, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	return out, errors.Join(errs...)
}
