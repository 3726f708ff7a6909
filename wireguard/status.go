package wireguard

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Status is what `clustermesh status` shows about encryption.
type Status struct {
	Enabled        bool   `json:"enabled"`
	Implementation string `json:"implementation,omitempty"` // "kernel" or "userspace"
	Device         string `json:"device,omitempty"`
	PublicKey      string `json:"publicKey,omitempty"`
	ListenPort     int    `json:"listenPort,omitempty"`
	// MTU is the device's: UnderlayMTU minus 60 (IPv4 underlay) or 80 (IPv6).
	MTU            int             `json:"mtu,omitempty"`
	UnderlayMTU    int             `json:"underlayMTU,omitempty"`
	NodeEncryption bool            `json:"nodeEncryption"`
	Peers          int             `json:"peers"`
	BytesSent      int64           `json:"bytesSent"`
	BytesReceived  int64           `json:"bytesReceived"`
	Clusters       []ClusterStatus `json:"clusters,omitempty"`
	Rejected       []Rejection     `json:"rejected,omitempty"`
	KeyRotatedAt   time.Time       `json:"keyRotatedAt,omitzero"`
	LastError      string          `json:"lastError,omitempty"`
}

// ClusterStatus aggregates the peers of one remote cluster.
type ClusterStatus struct {
	Cluster string `json:"cluster"`
	Peers   int    `json:"peers"`
	// OldestHandshake and LatestHandshake are the minimum and maximum of
	// the last handshake times of the cluster's peers that have had one.
	OldestHandshake       time.Time `json:"oldestHandshake,omitzero"`
	LatestHandshake       time.Time `json:"latestHandshake,omitzero"`
	PeersWithoutHandshake int       `json:"peersWithoutHandshake"`
	BytesSent             int64     `json:"bytesSent"`
	BytesReceived         int64     `json:"bytesReceived"`
}

// Status reads the device's peers and counters. Bytes are those on the wire
// (encrypted), summed over the current peers.
func (d *Device) Status() Status {
	if d == nil {
		return Status{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Status{
		Enabled: !d.closed, Implementation: d.impl, Device: d.cfg.DeviceName, PublicKey: d.pub.String(),
		ListenPort: d.cfg.ListenPort, MTU: d.mtu, UnderlayMTU: d.underlayMTU, NodeEncryption: d.cfg.NodeEncryption,
		Rejected: slices.Clone(d.rejected), KeyRotatedAt: d.rotatedAt,
	}
	if d.lastErr != nil {
		s.LastError = d.lastErr.Error()
	}
	if d.closed {
		return s
	}
	dev, err := d.wgDevice()
	if err != nil {
		s.LastError = fmt.Sprintf("reading WireGuard device %s: %v", d.cfg.DeviceName, err)
		return s
	}
	s.Peers = len(dev.Peers)
	for _, p := range dev.Peers {
		s.BytesSent += p.TransmitBytes
		s.BytesReceived += p.ReceiveBytes
	}
	s.Clusters = d.clusterStatus(dev.Peers)
	return s
}

// clusterStatus aggregates the device's peers by cluster (a peer the device
// has but this package did not accept counts under "(unknown)"), sorted by
// cluster name. Called with d.mu held.
func (d *Device) clusterStatus(peers []wgtypes.Peer) []ClusterStatus {
	byCluster := map[string]*ClusterStatus{}
	for _, p := range peers {
		cluster := "(unknown)"
		if a := d.accepted[p.PublicKey]; a != nil {
			cluster = a.cluster
		}
		c := byCluster[cluster]
		if c == nil {
			c = &ClusterStatus{Cluster: cluster}
			byCluster[cluster] = c
		}
		c.add(p)
	}
	var out []ClusterStatus
	for _, c := range byCluster {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b ClusterStatus) int { return cmp.Compare(a.Cluster, b.Cluster) })
	return out
}

// add counts peer p in c.
func (c *ClusterStatus) add(p wgtypes.Peer) {
	c.Peers++
	c.BytesSent += p.TransmitBytes
	c.BytesReceived += p.ReceiveBytes
	if p.LastHandshakeTime.IsZero() {
		c.PeersWithoutHandshake++
		return
	}
	if c.OldestHandshake.IsZero() || p.LastHandshakeTime.Before(c.OldestHandshake) {
		c.OldestHandshake = p.LastHandshakeTime
	}
	if p.LastHandshakeTime.After(c.LatestHandshake) {
		c.LatestHandshake = p.LastHandshakeTime
	}
}
