package wire

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// ClusterService is the value of cilium/state/services/v1/<cluster>/<ns>/<name>:
// a global service as one cluster sees it, with that cluster's backends.
type ClusterService struct {
	Cluster   string                       `json:"cluster"`
	Namespace string                       `json:"namespace"`
	Name      string                       `json:"name"`
	Frontends map[string]PortConfiguration `json:"frontends"`
	Backends  map[string]PortConfiguration `json:"backends"`
	Hostnames map[string]string            `json:"hostnames,omitempty"`
	Zones     map[string]BackendZone       `json:"zones,omitempty"`
	// Terminating is ours, not Cilium's (TerminatingField): the backends
	// that still serve but are no longer ready, each one of Backends' keys.
	// Absent (an older apiserver) means none terminating.
	Terminating     []string          `json:"clustermesh.io/terminating,omitempty"`
	Labels          map[string]string `json:"labels"`
	Selector        map[string]string `json:"selector"`
	IncludeExternal bool              `json:"includeExternal"`
	Shared          bool              `json:"shared"`
	ClusterID       uint32            `json:"clusterID"`
}

// TerminatingField is the ClusterService value's field that lists the
// backends that are terminating but still serving (a Kubernetes endpoint
// ready=false, serving=true, terminating=true). It is ours, not Cilium's (its
// name says so), as WorkloadField is: Cilium's decoder ignores it and, as
// Cilium's ClusterService has no per-backend state, keeps such a backend
// active, as we do; our EndpointSlice writer marks it terminating.
const TerminatingField = "clustermesh.io/terminating"

// AddTerminating records backend ip (spelled as its Backends key) as
// terminating, keeping Terminating sorted with each address once, so that
// the encoded value does not change with the order backends are added in.
func (s *ClusterService) AddTerminating(ip string) {
	if i, found := slices.BinarySearch(s.Terminating, ip); !found {
		s.Terminating = slices.Insert(s.Terminating, i, ip)
	}
}

// PortConfiguration maps a port name to its protocol and number.
type PortConfiguration map[string]*L4Addr

// L4Addr is a protocol and port.
type L4Addr struct {
	Protocol string
	Port     uint16
}

// BackendZone is a backend's topology zone and the zones it serves.
type BackendZone struct {
	Zone     string    `json:"zone"`
	ForZones []ForZone `json:"forZones,omitempty"`
}

// ForZone names a zone a backend is a hint for.
type ForZone struct {
	Name string `json:"name"`
}

// Service annotations on a Kubernetes-style service.
const (
	AnnotationGlobal   = "service.cilium.io/global"
	AnnotationShared   = "service.cilium.io/shared"
	AnnotationAffinity = "service.cilium.io/affinity"
)

// Affinity values of AnnotationAffinity.
const (
	AffinityNone   = "none"
	AffinityLocal  = "local"
	AffinityRemote = "remote"
)

// EncodeService returns the JSON of s.
func EncodeService(s *ClusterService) ([]byte, error) { return json.Marshal(s) }

// DecodeService decodes and validates a global service read from cluster c:
// cluster name and id must be c's, namespace/name must match the key, and
// every frontend and backend address must parse without zone, with protocol
// and a non-zero port; every terminating address must be one of the
// backends, each once.
func DecodeService(c Cluster, key string, value []byte) (*ClusterService, error) {
	pk, err := ParseKey(Services, c.Name, key)
	if err != nil {
		return nil, err
	}
	var s ClusterService
	if err := decodeJSON(value, &s); err != nil {
		return nil, fmt.Errorf("decoding service %q: %w", key, err)
	}
	switch {
	case s.Cluster != c.Name:
		return nil, fmt.Errorf("decoding service %q: it claims cluster %q, read from %q: %w", key, s.Cluster, c.Name, ErrClusterMismatch)
	case s.ClusterID != c.ID:
		return nil, fmt.Errorf("decoding service %q: it claims cluster id %d, %q has %d: %w", key, s.ClusterID, c.Name, c.ID, ErrClusterMismatch)
	case s.Namespace != pk.Namespace || s.Name != pk.Name:
		return nil, fmt.Errorf("decoding service %q: it is %s/%s: %w (key and value disagree)", key, s.Namespace, s.Name, ErrClusterMismatch)
	}
	for what, m := range map[string]map[string]PortConfiguration{"frontend": s.Frontends, "backend": s.Backends} {
		if err := checkPortMap(what, m); err != nil {
			return nil, fmt.Errorf("decoding service %q: %w", key, err)
		}
	}
	if err := checkTerminating(s.Terminating, s.Backends); err != nil {
		return nil, fmt.Errorf("decoding service %q: %w", key, err)
	}
	return &s, nil
}

// checkTerminating checks that each terminating address is one of the
// backends (spelled as its key) and is listed once: the list is then no
// longer than the backends.
func checkTerminating(terminating []string, backends map[string]PortConfiguration) error {
	if len(terminating) > len(backends) {
		return fmt.Errorf("%s: %w (%d addresses, more than the %d backends)", TerminatingField, ErrMalformedValue, len(terminating), len(backends))
	}
	seen := make(map[string]struct{}, len(terminating))
	for _, ip := range terminating {
		if _, ok := backends[ip]; !ok {
			return fmt.Errorf("%s %q: %w (not one of the service's backends)", TerminatingField, ip, ErrInvalidAddress)
		}
		if _, dup := seen[ip]; dup {
			return fmt.Errorf("%s %q: %w (listed twice)", TerminatingField, ip, ErrMalformedValue)
		}
		seen[ip] = struct{}{}
	}
	return nil
}

func checkPortMap(what string, m map[string]PortConfiguration) error {
	for ip, ports := range m {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return fmt.Errorf("%s %q: %w", what, ip, ErrInvalidAddress)
		}
		if err := checkAddr(what, a, false); err != nil {
			return err
		}
		if a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsInterfaceLocalMulticast() {
			return fmt.Errorf("%s %s: %w (loopback, unspecified, multicast and link-local addresses are never service addresses)", what, ip, ErrInvalidAddress)
		}
		for name, l4 := range ports {
			if l4 == nil || l4.Port == 0 {
				return fmt.Errorf("%s %s port %q: %w (missing or zero port)", what, ip, name, ErrMalformedValue)
			}
			switch l4.Protocol {
			case "TCP", "UDP", "SCTP":
			default:
				return fmt.Errorf("%s %s port %q: %w (protocol %q, want TCP, UDP or SCTP)", what, ip, name, ErrMalformedValue, l4.Protocol)
			}
		}
	}
	return nil
}
