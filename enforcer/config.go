// Package enforcer runs cross-cluster policy on one node. It keeps the
// identities of every cluster (agentsync tells it, the local cluster's from
// its own apiserver), the node's endpoints (from the local state) and the
// policies (files in a directory, the last valid set kept when an edit is
// invalid); it computes what each endpoint may do with package policy and
// reconciles the result into the datapath: the policy map, and the policy
// programs attached to each endpoint's host-side interface.
//
// Desired state (identities, endpoints, policies) is kept apart from the
// act of writing it: a write that fails is retried as a full resync of the
// policy map, and nothing is written before the agent's first full sync, so
// that a restarted agent keeps enforcing the pinned policy of its previous
// run until it knows every identity again; a cluster still down then
// (retained by the agent) keeps its identities' entries until it syncs.
package enforcer

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/wire"
)

// DefaultReloadInterval is how often the policy directory is read again
// and interfaces that did not exist yet are looked for.
const DefaultReloadInterval = time.Second

// ErrInvalidConfig is wrapped by every Config.Validate error.
var ErrInvalidConfig = errors.New("invalid enforcer config")

// Config of an Enforcer.
type Config struct {
	ClusterName string
	ClusterID   uint16
	// NodeName: the endpoints whose Node it is are enforced here.
	NodeName string
	// PolicyDir holds the policies: every *.yaml, *.yml and *.json file,
	// CiliumNetworkPolicy or NetworkPolicy documents. Empty: no policy.
	PolicyDir string
	// AllClustersByDefault: a peer selector without the cluster label
	// selects matching peers of every cluster. The default (false) selects
	// only the local cluster's, as Cilium does since 1.19.
	AllClustersByDefault bool
	// Policy is where the computed policy is written.
	Policy tcpolicy.Writer
	// Attacher attaches the policy programs to interfaces. Nil (the
	// in-memory datapath): the policy is computed and written, not enforced.
	Attacher Attacher
	// ClusterNames names a cluster id (for flows): the agent's reservations.
	ClusterNames func(id uint16) string
	// RetainedClusters lists the clusters whose entries of the agent's
	// previous run are still kept because they have not synced since it
	// started (agentsync.Agent.RetainedClusters); it only shrinks. Their
	// identities may be unknown here: a write of the whole policy map keeps
	// what the map holds for their peer identities the enforcer does not
	// know (reserved identities excepted), and the map is written whole
	// again without them once a cluster leaves the list. Nil: nothing is
	// retained.
	RetainedClusters func() []uint16
	// AuditNamespaces puts the endpoints of these namespaces in audit
	// mode (AuditAll: every namespace): what their policy denies passes,
	// and is reported with verdict AUDIT in its flows (policy verdicts and
	// traces) and counted. Nil: none. ParseAuditNamespaces reads the
	// agent's flag.
	AuditNamespaces map[string]bool
	// MaxConnectedClusters is the mesh size, 255 (the default) or 511: it
	// says which bits of an identity are its cluster's id.
	MaxConnectedClusters uint32
	// ProxyPorts gives the L7 proxy's listener ports: the entries of a
	// port with L7 rules are written with the port of their parser's
	// listener (redirected to the proxy). Nil: such entries are not written
	// (fail closed: that traffic is dropped unless an L3/L4 rule allows it
	// all), and status says why.
	ProxyPorts ProxyPorts
	// FQDN tells the addresses of the names toFQDNs select; IPCache is
	// where their node-local identities go. Either nil: toFQDNs allow
	// nothing.
	FQDN    FQDNSource
	IPCache IPCache
	// MaxFQDNAddresses bounds the addresses given node-local identities
	// (DefaultMaxFQDNAddresses); further ones are refused and counted.
	MaxFQDNAddresses int
	ReloadInterval   time.Duration
	Logger           *slog.Logger
}

func (c *Config) withDefaults() {
	if c.MaxConnectedClusters == 0 {
		c.MaxConnectedClusters = wire.DefaultMaxConnectedClusters
	}
	if c.ReloadInterval == 0 {
		c.ReloadInterval = DefaultReloadInterval
	}
	if c.MaxFQDNAddresses == 0 {
		c.MaxFQDNAddresses = DefaultMaxFQDNAddresses
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ClusterNames == nil {
		c.ClusterNames = func(id uint16) string {
			if id == c.ClusterID {
				return c.ClusterName
			}
			return ""
		}
	}
}

// AuditAll in Config.AuditNamespaces audits every namespace.
const AuditAll = "*"

// audited reports whether the endpoints of namespace ns are in audit mode.
func (c *Config) audited(ns string) bool {
	return c.AuditNamespaces[AuditAll] || c.AuditNamespaces[ns]
}

// namespaceName is a Kubernetes namespace name (an RFC 1123 label).
var namespaceName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ParseAuditNamespaces reads Config.AuditNamespaces from a comma-separated
// list of namespaces (the agent's --policy-audit-namespaces), where "*"
// stands for every namespace; "" is none. Errors wrap ErrInvalidConfig.
func ParseAuditNamespaces(list string) (map[string]bool, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	out := map[string]bool{}
	for _, ns := range strings.Split(list, ",") {
		ns = strings.TrimSpace(ns)
		if ns != AuditAll && !namespaceName.MatchString(ns) {
			return nil, fmt.Errorf("audit namespaces %q: %w: %q is not a namespace name nor %q", list, ErrInvalidConfig, ns, AuditAll)
		}
		out[ns] = true
	}
	return out, nil
}

// Validate checks the config after defaults.
func (c *Config) Validate() error {
	if err := wire.ValidateClusterName(c.ClusterName); err != nil {
		return fmt.Errorf("enforcer: %w: %w", ErrInvalidConfig, err)
	}
	if err := wire.ValidateMaxConnectedClusters(c.MaxConnectedClusters); err != nil {
		return fmt.Errorf("enforcer: %w: %w", ErrInvalidConfig, err)
	}
	if c.MaxFQDNAddresses < 0 || c.MaxFQDNAddresses > maxLocalIdentities {
		return fmt.Errorf("enforcer: %w: MaxFQDNAddresses %d (want 1 to %d: the node-local identity range)", ErrInvalidConfig, c.MaxFQDNAddresses, maxLocalIdentities)
	}
	for ns := range c.AuditNamespaces {
		if ns != AuditAll && !namespaceName.MatchString(ns) {
			return fmt.Errorf("enforcer: %w: audit namespace %q is not a namespace name nor %q", ErrInvalidConfig, ns, AuditAll)
		}
	}
	switch {
	case c.NodeName == "":
		return fmt.Errorf("enforcer: %w: no node name (--node-name: this node's name in the local state)", ErrInvalidConfig)
	case c.Policy == nil:
		return fmt.Errorf("enforcer: %w: no policy datapath", ErrInvalidConfig)
	}
	return nil
}

// Attacher attaches the policy programs to the host-side interfaces of
// endpoints, in the network namespace the endpoints' veths are in (the
// agent's own, for ProgramsAttacher).
type Attacher interface {
	// Interfaces lists the interfaces (one netlink dump of links and one
	// of routes per reconciliation, whatever the number of pods).
	Interfaces() (Interfaces, error)
	// Attach records ep for the interface and attaches the programs.
	Attach(ifindex int, ep tcpolicy.Endpoint) error
	Detach(ifindex int) error
	// Attachments lists what is attached, including by a previous run.
	Attachments() (map[int]tcpolicy.Endpoint, error)
}

// ProgramsAttacher attaches the policy programs of real eBPF maps.
type ProgramsAttacher struct {
	Programs *tcpolicy.Programs
	// InNetns, when set, runs fn in the network namespace of the
	// endpoints' interfaces (the demo's node namespace); nil: the calling
	// thread's.
	InNetns func(fn func() error) error
}

func (a ProgramsAttacher) in(fn func() error) error {
	if a.InNetns == nil {
		return fn()
	}
	return a.InNetns(fn)
}

// Interfaces implements Attacher.
func (a ProgramsAttacher) Interfaces() (Interfaces, error) {
	var out Interfaces
	err := a.in(func() (err error) {
		out, err = listInterfaces()
		return err
	})
	return out, err
}

// Attach implements Attacher.
func (a ProgramsAttacher) Attach(ifindex int, ep tcpolicy.Endpoint) error {
	return a.in(func() error { return a.Programs.AttachEndpoint(ifindex, ep) })
}

// Detach implements Attacher.
func (a ProgramsAttacher) Detach(ifindex int) error {
	return a.in(func() error { return a.Programs.Detach(ifindex) })
}

// Attachments implements Attacher.
func (a ProgramsAttacher) Attachments() (map[int]tcpolicy.Endpoint, error) {
	return a.Programs.Attachments()
}
