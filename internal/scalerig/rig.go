// Package scalerig is the scale rig of `make bench-scale`: many clusters
// on one machine, each a real apiserver process (bin/clustermesh
// apiserver) with a generated state of a realistic shape, and what an
// agent of another cluster needs to read them all (certificates, remote
// configs). It measures what a process costs (/proc) so that the rig can
// say how many clusters the machine holds.
package scalerig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/statesource"
)

// ReaderName and ReaderID are the cluster whose agents read every
// cluster of the rig; the rig's clusters are 1..254.
const (
	ReaderName = "reader"
	ReaderID   = 255
)

// ErrTooManyClusters: the rig's clusters are 1..254 (the reader is 255).
var ErrTooManyClusters = errors.New("scalerig: cluster ids are 1..254")

// Rig is a CA, the reader's certificates and the clusters started so far.
type Rig struct {
	Dir    string
	Bin    string // the clustermesh binary
	CA     *ca.CA
	Reader ca.Bundle
	// ExportMode is the apiservers' --export-mode ("" for the default).
	ExportMode string

	Clusters []*Cluster

	mu    sync.Mutex
	ports []*portlock.Lease // guarded by mu; the apiservers' ports, released by Close
}

// New makes a rig in dir running bin.
func New(dir, bin string) (*Rig, error) {
	c, err := ca.New("clustermesh scale rig CA", 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("creating the rig's CA: %w", err)
	}
	r := &Rig{Dir: dir, Bin: bin, CA: c}
	if r.Reader, err = r.bundle(ReaderName); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Rig) bundle(name string) (ca.Bundle, error) {
	b, err := r.CA.IssueBundle(filepath.Join(r.Dir, name, "certs"), name, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return ca.Bundle{}, fmt.Errorf("issuing the certificates of %s: %w", name, err)
	}
	return b, nil
}

// Cluster is one cluster of the rig: its apiserver process.
type Cluster struct {
	Name      string
	ID        uint32
	Bundle    ca.Bundle
	StateFile string
	Addr      string
	Proc      *Process
}

// ClusterName is the name of cluster id.
func ClusterName(id uint32) string { return "c" + strconv.Itoa(int(id)) }

// Start starts cluster id's apiserver with state st, waits until it has
// published it (its ipcache synced canary is in), and adds it to the rig.
func (r *Rig) Start(ctx context.Context, id uint32, st *statesource.State) (*Cluster, error) {
	c, err := r.prepare(ctx, id, st)
	if err != nil {
		return nil, err
	}
	r.Clusters = append(r.Clusters, c)
	return c, nil
}

// prepare is Start without adding the cluster to the rig (several may be
// prepared at once).
func (r *Rig) prepare(ctx context.Context, id uint32, st *statesource.State) (*Cluster, error) {
	if id < 1 || id >= ReaderID {
		return nil, fmt.Errorf("starting cluster %d: %w", id, ErrTooManyClusters)
	}
	name := ClusterName(id)
	b, err := r.bundle(name)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Name: name, ID: id, Bundle: b, StateFile: filepath.Join(r.Dir, name, "state.json")}
	if err := WriteState(c.StateFile, st); err != nil {
		return nil, err
	}
	if c.Addr, err = r.leaseAddr(); err != nil {
		return nil, err
	}
	args := []string{"apiserver", "--cluster-name", name, "--cluster-id", strconv.Itoa(int(id)),
		"--cert-dir", b.Dir, "--state-file", c.StateFile, "--listen", c.Addr, "--peer", ReaderName,
		"--metrics-addr", "", "--state-dir", filepath.Join(r.Dir, name)}
	if r.ExportMode != "" {
		args = append(args, "--export-mode", r.ExportMode)
	}
	if c.Proc, err = StartProcess(r.Bin, args, filepath.Join(r.Dir, name, "apiserver.log")); err != nil {
		return nil, fmt.Errorf("starting the apiserver of %s: %w", name, err)
	}
	if err := c.WaitPublished(ctx); err != nil {
		c.Proc.Kill()
		return nil, err
	}
	return c, nil
}

// WaitPublished waits until the cluster's apiserver has written its
// ipcache synced canary (its first full snapshot is in).
func (c *Cluster) WaitPublished(ctx context.Context) error {
	cli, err := c.Admin()
	if err != nil {
		return err
	}
	defer cli.Close()
	key := "cilium/synced/" + c.Name + "/cilium/state/ip/v1"
	for {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cli.Get(gctx, key)
		cancel()
		if err == nil && len(resp.Kvs) == 1 {
			return nil
		}
		if c.Proc.Exited() {
			return fmt.Errorf("the apiserver of %s exited: %s", c.Name, c.Proc.Tail(5))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to publish: %w", c.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Admin is a client of the cluster's etcd as its admin (the caller closes
// it).
func (c *Cluster) Admin() (*clientv3.Client, error) {
	tlsCfg, err := ca.ClientTLSConfig(c.Bundle.AdminCert(), c.Bundle.AdminKey(), c.Bundle.CAFile())
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{Endpoints: []string{"https://" + c.Addr}, TLS: tlsCfg,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop(), MaxCallSendMsgSize: 32 << 20})
}

// WriteRemoteConfigs writes, into dir, one etcd client config per cluster
// of the rig as the reader's agents (and its cache) read them directly.
func (r *Rig) WriteRemoteConfigs(dir string) error {
	return r.writeConfigs(dir, func(c *Cluster) string { return c.Addr })
}

// WriteCachedConfigs writes, into dir, one config per cluster of the rig
// pointing at the reader's own apiserver, where its cache holds them.
func (r *Rig) WriteCachedConfigs(dir string, reader *Cluster) error {
	return r.writeConfigs(dir, func(*Cluster) string { return reader.Addr })
}

func (r *Rig) writeConfigs(dir string, addr func(*Cluster) string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, c := range r.Clusters {
		cfg := fmt.Sprintf("endpoints:\n- https://%s\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
			addr(c), r.Reader.CAFile(), r.Reader.RemoteCert(), r.Reader.RemoteKey())
		if err := os.WriteFile(filepath.Join(dir, c.Name), []byte(cfg), 0o600); err != nil {
			return fmt.Errorf("writing the remote config of %s: %w", c.Name, err)
		}
	}
	return nil
}

// StartReader starts the reader cluster's own apiserver with state st
// (not added to Clusters): its cache writes there, its agents read there.
func (r *Rig) StartReader(ctx context.Context, st *statesource.State) (*Cluster, error) {
	c := &Cluster{Name: ReaderName, ID: ReaderID, Bundle: r.Reader, StateFile: filepath.Join(r.Dir, ReaderName, "state.json")}
	if err := WriteState(c.StateFile, st); err != nil {
		return nil, err
	}
	var err error
	if c.Addr, err = r.leaseAddr(); err != nil {
		return nil, err
	}
	args := []string{"apiserver", "--cluster-name", ReaderName, "--cluster-id", strconv.Itoa(ReaderID),
		"--cert-dir", r.Reader.Dir, "--state-file", c.StateFile, "--listen", c.Addr,
		"--metrics-addr", "", "--state-dir", filepath.Join(r.Dir, ReaderName)}
	if c.Proc, err = StartProcess(r.Bin, args, filepath.Join(r.Dir, ReaderName, "apiserver.log")); err != nil {
		return nil, fmt.Errorf("starting the reader's apiserver: %w", err)
	}
	if err := c.WaitPublished(ctx); err != nil {
		c.Proc.Kill()
		return nil, err
	}
	return c, nil
}

// StartCache runs the reader's kvstoremesh cache (bin/clustermesh
// kvstoremesh) reading every cluster of the rig into reader's etcd.
func (r *Rig) StartCache(reader *Cluster, log string) (*Process, error) {
	dir := filepath.Join(r.Dir, ReaderName, "cache-remotes")
	if err := r.WriteRemoteConfigs(dir); err != nil {
		return nil, err
	}
	args := []string{"kvstoremesh", "--cluster-name", ReaderName, "--cluster-id", strconv.Itoa(ReaderID),
		"--config-dir", dir, "--cert-dir", r.Reader.Dir, "--etcd-endpoints", "https://" + reader.Addr,
		"--metrics-addr", ""}
	p, err := StartProcess(r.Bin, args, log)
	if err != nil {
		return nil, fmt.Errorf("starting the cache: %w", err)
	}
	return p, nil
}

// Close kills every apiserver of the rig and releases the ports leased
// for them (the reader's too).
func (r *Rig) Close() {
	for _, c := range r.Clusters {
		c.Proc.Kill()
	}
	r.Clusters = nil
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.ports {
		l.Release()
	}
	r.ports = nil
}

// WriteState replaces path with st, as an operator's tool would (write,
// then rename).
func WriteState(path string, st *statesource.State) error {
	marshal := yaml.Marshal
	if strings.HasSuffix(path, ".json") {
		marshal = func(v any) ([]byte, error) { return json.Marshal(v) }
	}
	b, err := marshal(st)
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("writing state file %q: %w", path, err)
	}
	return os.Rename(path+".tmp", path)
}

// leaseAddr leases a loopback address for an apiserver until Close.
func (r *Rig) leaseAddr() (string, error) {
	l, err := portlock.Reserve()
	if err != nil {
		return "", fmt.Errorf("a port for an apiserver: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ports = append(r.ports, l)
	return l.Addr(), nil
}
