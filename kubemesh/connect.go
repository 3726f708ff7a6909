package kubemesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Connection modes of Connect.
const (
	ModeBidirectional = "bidirectional" // the source and each destination read each other
	ModeUnicast       = "unicast"       // the source reads each destination
	ModeMesh          = "mesh"          // every cluster given reads every other
)

// ConnectOptions say which enabled clusters Connect connects, and how.
type ConnectOptions struct {
	Kubeconfig   string
	Context      string   // the source cluster's kubeconfig context ("": the current one)
	Destinations []string // the other clusters' contexts
	Namespace    string   // of the mesh apiservers, the same in every cluster (default DefaultNamespace)
	Mode         string   // ModeBidirectional (the default), ModeUnicast or ModeMesh
	// DestinationEndpoints, when given, are the destinations' apiserver
	// endpoints (https://HOST:PORT), one per destination in order, instead
	// of their Services'; SourceEndpoint is the source's.
	DestinationEndpoints []string
	SourceEndpoint       string
	// AllowMismatchingCA connects clusters of different CAs: each reader
	// gets a client certificate of the CA of the cluster it reads, and
	// verifies that cluster with its CA (no apiserver trusts another CA).
	AllowMismatchingCA bool
}

func (o ConnectOptions) withDefaults() ConnectOptions {
	o.Namespace = orDefault(o.Namespace, DefaultNamespace)
	o.Mode = orDefault(o.Mode, ModeBidirectional)
	return o
}

// Validate checks the options without a request to any cluster.
func (o ConnectOptions) Validate() error {
	o = o.withDefaults()
	if len(o.Destinations) == 0 {
		return errors.New("no destination: give the context of a cluster to connect to (--destination-context)")
	}
	if len(o.DestinationEndpoints) > 0 && len(o.DestinationEndpoints) != len(o.Destinations) {
		return fmt.Errorf("%d --destination-endpoint for %d --destination-context: give one per destination, in the same order", len(o.DestinationEndpoints), len(o.Destinations))
	}
	switch o.Mode {
	case ModeBidirectional, ModeUnicast, ModeMesh:
		return nil
	}
	return fmt.Errorf("--connection-mode %q: want %s, %s or %s", o.Mode, ModeBidirectional, ModeUnicast, ModeMesh)
}

// ConnectResult is what Connect did.
type ConnectResult struct {
	// Steps are the changes made, in order: nothing changes when the
	// clusters were connected already.
	Steps []Step
	// Links are the directions connected: the reader's agents read the
	// target's apiserver at its endpoint.
	Links []Link
}

// Link is one direction of a connection.
type Link struct {
	Reader, Target string // the clusters' mesh names
	Endpoint       string // the target's apiserver, as the reader's agents dial it
}

// Step is one change Connect or Disconnect made to a cluster: an
// ObjectChange, a RemoteChange, a TrustRevoked, a CertReissued or an
// APIServerRestart.
type Step interface{ isStep() }

func (ObjectChange) isStep()     {}
func (RemoteChange) isStep()     {}
func (TrustRevoked) isStep()     {}
func (CertReissued) isStep()     {}
func (APIServerRestart) isStep() {}

// RemoteChange: Cluster's agents read Remote now (Reads), or no longer do
// (its config left the secret RemotesSecretName in Namespace).
type RemoteChange struct {
	Cluster, Namespace, Remote string
	Reads                      bool
	// WithRemoteCA: Cluster's agents read Remote with a client certificate
	// of Remote's CA, another CA than Cluster's.
	WithRemoteCA bool
}

// TrustRevoked: Cluster's apiserver no longer accepts client certificates
// of Peer's CA (configmap TrustedCAsName in Namespace), as an earlier
// version of connect --allow-mismatching-ca had it do.
type TrustRevoked struct {
	Cluster, Namespace, Peer string
}

// CertReissued: Cluster's server certificate (secret ServerSecretName in
// Namespace) was issued again to name Host, the address its peers dial.
type CertReissued struct {
	Cluster, Namespace, Host string
}

// APIServerRestart: Cluster's apiserver Deployment changed, so its pod
// restarts to load what did (Reasons, in words); Peers are the clusters it
// lets read it now.
type APIServerRestart struct {
	Cluster string
	Reasons []string
	Peers   []string
}

// Connect connects enabled clusters: for each direction "X reads Y", X's
// secret RemotesSecretName gets the etcd client config for Y, and Y's
// apiserver lets remote-X read it. Every check is made before anything is
// written, and the error reports every problem found, each with its fix. A
// server certificate that does not name the address its peers dial is
// issued again with it; an apiserver whose peers or certificates changed
// restarts. Connecting again changes nothing.
func Connect(ctx context.Context, o ConnectOptions) (ConnectResult, error) {
	o = o.withDefaults()
	var res ConnectResult
	if err := o.Validate(); err != nil {
		return res, err
	}
	src, dests, err := loadMembers(ctx, o)
	if err != nil {
		return res, err
	}
	ls := links(o.Mode, src, dests)
	members := append([]*meshMember{src}, dests...)
	if err := preflight(members, ls, o.AllowMismatchingCA); err != nil {
		return res, fmt.Errorf("not connecting, nothing was written:\n%w", err)
	}
	for _, m := range members {
		if m.reissueHost != "" {
			if err := reissueServer(ctx, m, m.reissueHost, &res.Steps); err != nil {
				return res, err
			}
		}
	}
	for _, l := range ls {
		if err := connectLink(ctx, l, &res.Steps); err != nil {
			return res, err
		}
	}
	for _, m := range members {
		if err := applyAPIServer(ctx, m, &res.Steps); err != nil {
			return res, err
		}
	}
	for _, l := range ls {
		res.Links = append(res.Links, Link{Reader: l.reader.name, Target: l.target.name, Endpoint: l.target.endpoint})
	}
	return res, nil
}

// connectLink lets l's reader read its target.
func connectLink(ctx context.Context, l link, steps *[]Step) error {
	if err := setPeer(ctx, l.target, l.reader.name, true, steps); err != nil {
		return err
	}
	var peer *peerCreds
	if !sameMeshCA(l.reader, l.target) {
		var err error
		if peer, err = peerCredentials(ctx, l.reader, l.target, time.Now()); err != nil {
			return err
		}
	}
	// Trust in a peer's CA is never granted (a version before this one
	// granted it for mismatching CAs: taken back here).
	if err := removeTrustedCA(ctx, l.target, l.reader.name, steps); err != nil {
		return err
	}
	return setRemote(ctx, l.reader, l.target.name, remoteConfig(l.reader, l.target), peer, steps)
}

// loadMembers reads the source and the destinations.
func loadMembers(ctx context.Context, o ConnectOptions) (*meshMember, []*meshMember, error) {
	t, err := Open(o.Kubeconfig, o.Context)
	if err != nil {
		return nil, nil, err
	}
	src, err := loadMember(ctx, t, o.Namespace, o.SourceEndpoint)
	if err != nil {
		return nil, nil, err
	}
	var dests []*meshMember
	for i, d := range o.Destinations {
		dt, err := Open(o.Kubeconfig, d)
		if err != nil {
			return nil, nil, fmt.Errorf("--destination-context: %w", err)
		}
		ep := ""
		if len(o.DestinationEndpoints) > 0 {
			ep = o.DestinationEndpoints[i]
		}
		m, err := loadMember(ctx, dt, o.Namespace, ep)
		if err != nil {
			return nil, nil, err
		}
		dests = append(dests, m)
	}
	return src, dests, nil
}

// link is one direction of a connection: reader's agents read target.
type link struct{ reader, target *meshMember }

// links returns the directions a connection mode (valid) asks for.
func links(mode string, src *meshMember, dests []*meshMember) []link {
	var out []link
	switch mode {
	case ModeBidirectional:
		for _, d := range dests {
			out = append(out, link{src, d}, link{d, src})
		}
	case ModeUnicast:
		for _, d := range dests {
			out = append(out, link{src, d})
		}
	case ModeMesh:
		all := append([]*meshMember{src}, dests...)
		for _, a := range all {
			for _, b := range all {
				if a != b {
					out = append(out, link{a, b})
				}
			}
		}
	}
	return out
}

// sameMeshCA reports whether two members have one CA.
func sameMeshCA(a, b *meshMember) bool {
	return bytes.Equal(a.ca.SubjectKeyId, b.ca.SubjectKeyId) && sameCA(a.ca, b.ca)
}

// preflight checks every pair of members and every link, and returns every
// problem at once, each with what to do about it. Different CAs are a
// problem unless allowMismatchingCA. A server certificate that does not name
// the address its peers dial is not: preflight loads the CA to re-issue it
// (reissueHost), and reports a CA it cannot load.
func preflight(members []*meshMember, ls []link, allowMismatchingCA bool) error {
	var errs []error
	for i, a := range members {
		for _, b := range members[i+1:] {
			errs = append(errs, checkPair(a, b, allowMismatchingCA)...)
		}
	}
	for _, l := range ls {
		if err := checkEndpoint(l.target); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkPair reports what keeps a and b from one mesh.
func checkPair(a, b *meshMember, allowMismatchingCA bool) []error {
	if a.t.Context == b.t.Context {
		return []error{fmt.Errorf("context %s is given twice", a.t.Context)}
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if a.name == b.name {
		bad("contexts %s and %s are both cluster %q: every cluster of a mesh needs its own name (clustermesh enable --cluster-name)", a.t.Context, b.t.Context, a.name)
	}
	if a.id == b.id {
		bad("clusters %s and %s both have cluster id %d: every cluster of a mesh needs its own id (clustermesh enable --cluster-id)", a.name, b.name, a.id)
	}
	if a.max != b.max {
		bad("cluster %s has max-connected-clusters %d and %s %d: every cluster of a mesh needs the same (clustermesh enable --max-connected-clusters)", a.name, a.max, b.name, b.max)
	}
	if !sameMeshCA(a, b) && !allowMismatchingCA {
		bad("clusters %s and %s have different mesh CAs (subject key ids %x and %x): every cluster of a mesh needs the same CA: run clustermesh disable --delete-ca --context %s, then clustermesh enable --context %s --ca-from-context %s; or, to keep both CAs, pass --allow-mismatching-ca (each cluster's agents then get a client certificate from the other's CA: see SECURITY.md)",
			a.name, b.name, a.ca.SubjectKeyId, b.ca.SubjectKeyId, b.t.Context, b.t.Context, a.t.Context)
	}
	return append(errs, overlaps(a, b)...)
}

// checkEndpoint checks that t's endpoint is known and that its server
// certificate names it, or can be re-issued to (reissueHost).
func checkEndpoint(t *meshMember) error {
	if t.endpoint == "" {
		return fmt.Errorf("cluster %s (context %s): no endpoint for its apiserver: %s", t.name, t.t.Context, t.whyNoEP)
	}
	u, err := url.Parse(t.endpoint)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("cluster %s: endpoint %q: want https://HOST:PORT", t.name, t.endpoint)
	}
	if t.server.VerifyHostname(u.Hostname()) == nil || t.reissueHost == u.Hostname() {
		return nil
	}
	if t.reissueHost != "" {
		return fmt.Errorf("cluster %s: endpoints %s and %s: give it one endpoint", t.name, t.reissueHost, u.Hostname())
	}
	mesh, err := caFromSecret(t.caSecret, "context "+t.t.Context)
	if err != nil {
		return fmt.Errorf("cluster %s: its apiserver's server certificate does not name %s, the address its peers dial, and it cannot be re-issued: %v: run clustermesh enable --context %s --server-ip/--server-dns %s",
			t.name, u.Hostname(), err, t.t.Context, u.Hostname())
	}
	t.reissueHost, t.mesh = u.Hostname(), mesh
	return nil
}

// overlaps reports pod CIDRs and node IPs that two clusters share: pods or
// nodes of one would be routed to the other.
func overlaps(a, b *meshMember) []error {
	var errs []error
	for _, pa := range a.podCIDRs {
		for _, pb := range b.podCIDRs {
			if pa.v.Overlaps(pb.v) {
				errs = append(errs, fmt.Errorf("pod CIDR %s of node %s in cluster %s overlaps pod CIDR %s of node %s in cluster %s: pods of both would get the same addresses; give every cluster its own pod CIDR range (its IPAM cluster pool) before connecting them",
					pa.v, pa.node, a.name, pb.v, pb.node, b.name))
			}
		}
	}
	for _, ia := range a.nodeIPs {
		for _, ib := range b.nodeIPs {
			if ia.v == ib.v {
				errs = append(errs, fmt.Errorf("node %s of cluster %s and node %s of cluster %s both have the address %s: every node of the mesh needs its own address",
					ia.node, a.name, ib.node, b.name, ia.v))
			}
		}
	}
	for _, x := range []struct{ m, o *meshMember }{{a, b}, {b, a}} {
		for _, ip := range x.m.nodeIPs {
			for _, p := range x.o.podCIDRs {
				if p.v.Contains(ip.v) {
					errs = append(errs, fmt.Errorf("node %s of cluster %s has the address %s, inside pod CIDR %s of node %s in cluster %s: node and pod addresses must not overlap across the mesh",
						ip.node, x.m.name, ip.v, p.v, p.node, x.o.name))
				}
			}
		}
	}
	return errs
}
