package wire

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// AnnotationHubbleAddress is the node annotation that publishes where the
// node's agent serves Hubble's Observer API over TCP with mutual TLS, as
// host:port. A node without it serves on its first InternalIP at
// DefaultHubblePort (HubbleAddress).
const AnnotationHubbleAddress = "clustermesh.io/hubble-address"

// DefaultHubblePort is Hubble's port: where an agent serves the Observer API
// when its node does not say otherwise.
const DefaultHubblePort = 4244

// CheckHubbleAddress checks a value of AnnotationHubbleAddress: host:port
// with a non-empty host (an IP address without zone, or a DNS name) and a
// port in 1..65535.
func CheckHubbleAddress(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("hubble address %q: %w (want host:port)", s, ErrInvalidAddress)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("hubble address %q: %w (port %q is not in 1..65535)", s, ErrInvalidAddress, port)
	}
	if host == "" {
		return fmt.Errorf("hubble address %q: %w (empty host)", s, ErrInvalidAddress)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Zone() != "" {
		return fmt.Errorf("hubble address %q: %w (zoned address)", s, ErrInvalidAddress)
	}
	return nil
}

// HubbleAddress is where n's agent serves the Observer API: the value of
// AnnotationHubbleAddress when n has it, else its PrimaryIP at
// DefaultHubblePort. The error says why there is none (an invalid
// annotation, or a node without addresses).
func HubbleAddress(n *Node) (string, error) {
	if s, ok := n.Annotations[AnnotationHubbleAddress]; ok {
		if err := CheckHubbleAddress(s); err != nil {
			return "", fmt.Errorf("node %s/%s: annotation %s: %w", n.Cluster, n.Name, AnnotationHubbleAddress, err)
		}
		return s, nil
	}
	ip := n.PrimaryIP()
	if !ip.IsValid() {
		return "", fmt.Errorf("node %s/%s: %w (no address to reach its Hubble server at)", n.Cluster, n.Name, ErrInvalidAddress)
	}
	return netip.AddrPortFrom(ip, DefaultHubblePort).String(), nil
}
