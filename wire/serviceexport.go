package wire

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The MCS API's export specs (KEP-1645 ServiceExport): a cluster publishes,
// under cilium/state/serviceexports/v1/<cluster>/<namespace>/<name>, one
// ServiceExportSpec per Service that has a ServiceExport of the same name,
// in the JSON of Cilium v1.20's MCSAPIServiceSpec
// (pkg/clustermesh/mcsapi/types/mcsapiservicespec.go). Every cluster builds
// its ServiceImports from the specs of all clusters; conflicts are decided
// there (oldest export wins).

// The two service types of a ServiceImport.
const (
	ImportClusterSetIP = "ClusterSetIP"
	ImportHeadless     = "Headless"
)

// The session affinities of a spec.
const (
	SessionAffinityNone     = "None"
	SessionAffinityClientIP = "ClientIP"
)

// ServiceExportSpec is one exported service of one cluster.
type ServiceExportSpec struct {
	Cluster   string `json:"cluster"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Annotations and Labels are the ServiceExport's exported ones.
	Annotations map[string]string `json:"annotations,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// LegacyLabels and LegacyAnnotations are the same, under the names
	// older Cilium versions read: written by EncodeServiceExport, read when
	// the new ones are absent.
	LegacyLabels      map[string]string `json:"Labels,omitempty"`
	LegacyAnnotations map[string]string `json:"Annotations,omitempty"`
	// ExportCreationTimestamp is when the ServiceExport was created: the
	// oldest export of a service wins its conflicts.
	ExportCreationTimestamp time.Time            `json:"exportCreationTimestamp"`
	Ports                   []ServiceExportPort  `json:"ports"`
	Type                    string               `json:"type"`
	SessionAffinity         string               `json:"sessionAffinity"`
	SessionAffinityConfig   *SessionAffinityConf `json:"sessionAffinityConfig,omitempty"`
	IPFamilies              []string             `json:"ipFamilies,omitempty"`
	InternalTrafficPolicy   *string              `json:"internalTrafficPolicy,omitempty"`
	TrafficDistribution     *string              `json:"trafficDistribution,omitempty"`
}

// ServiceExportPort is a port in the MCS API's format.
type ServiceExportPort struct {
	Name        string  `json:"name,omitempty"`
	Protocol    string  `json:"protocol,omitempty"`
	AppProtocol *string `json:"appProtocol,omitempty"`
	Port        int32   `json:"port"`
}

// SessionAffinityConf is Kubernetes' SessionAffinityConfig.
type SessionAffinityConf struct {
	ClientIP *ClientIPConf `json:"clientIP,omitempty"`
}

// ClientIPConf is Kubernetes' ClientIPConfig.
type ClientIPConf struct {
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`
}

// ServiceExportKey is the key of the export spec of namespace/name in cluster.
func ServiceExportKey(cluster, namespace, name string) string {
	return ServiceExports.ListPrefix(cluster) + namespace + "/" + name
}

// Key returns the spec's key.
func (s *ServiceExportSpec) Key() string { return ServiceExportKey(s.Cluster, s.Namespace, s.Name) }

// EncodeServiceExport returns the JSON of s, the legacy fields filled as
// Cilium fills them, the timestamp at second precision (as metav1.Time).
func EncodeServiceExport(s *ServiceExportSpec) ([]byte, error) {
	c := *s
	c.LegacyAnnotations, c.LegacyLabels = c.Annotations, c.Labels
	c.ExportCreationTimestamp = c.ExportCreationTimestamp.UTC().Truncate(time.Second)
	return json.Marshal(&c)
}

// DecodeServiceExport decodes and validates the export spec at key read from
// cluster c: the key must be c's and agree with the value, the type one of
// ClusterSetIP and Headless, the affinity None or ClientIP, the timestamp
// set, the ports valid and unique.
func DecodeServiceExport(c Cluster, key string, value []byte) (*ServiceExportSpec, error) {
	pk, err := ParseKey(ServiceExports, c.Name, key)
	if err != nil {
		return nil, err
	}
	var s ServiceExportSpec
	if err := decodeJSON(value, &s); err != nil {
		return nil, fmt.Errorf("decoding service export %q: %w", key, err)
	}
	if len(s.Annotations) == 0 {
		s.Annotations = s.LegacyAnnotations
	}
	if len(s.Labels) == 0 {
		s.Labels = s.LegacyLabels
	}
	s.LegacyAnnotations, s.LegacyLabels = nil, nil
	switch {
	case s.Cluster != c.Name:
		return nil, fmt.Errorf("decoding service export %q: it claims cluster %q, read from %q: %w", key, s.Cluster, c.Name, ErrClusterMismatch)
	case s.Namespace != pk.Namespace || s.Name != pk.Name:
		return nil, fmt.Errorf("decoding service export %q: it is %s/%s: %w (key and value disagree)", key, s.Namespace, s.Name, ErrClusterMismatch)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("decoding service export %q: %w", key, err)
	}
	return &s, nil
}

func (s *ServiceExportSpec) validate() error {
	switch {
	case s.ExportCreationTimestamp.IsZero():
		return fmt.Errorf("%w: exportCreationTimestamp is unset", ErrMalformedValue)
	case s.Type != ImportClusterSetIP && s.Type != ImportHeadless:
		return fmt.Errorf("%w: type %q is neither %s nor %s", ErrMalformedValue, s.Type, ImportClusterSetIP, ImportHeadless)
	case s.SessionAffinity != SessionAffinityNone && s.SessionAffinity != SessionAffinityClientIP:
		return fmt.Errorf("%w: sessionAffinity %q is neither %s nor %s", ErrMalformedValue, s.SessionAffinity, SessionAffinityNone, SessionAffinityClientIP)
	}
	seen := map[string]bool{}
	for _, p := range s.Ports {
		switch p.Protocol {
		case "TCP", "UDP", "SCTP":
		default:
			return fmt.Errorf("%w: port %d: protocol %q is not TCP, UDP or SCTP", ErrMalformedValue, p.Port, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("%w: port %d out of range", ErrMalformedValue, p.Port)
		}
		id := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if seen[id] || (p.Name != "" && seen["name "+p.Name]) {
			return fmt.Errorf("%w: port %q %s listed twice", ErrMalformedValue, p.Name, id)
		}
		seen[id], seen["name "+p.Name] = true, p.Name != ""
	}
	return nil
}

// PortsKey is the spec's ports in one comparable string (sorted by
// protocol, port and name): two specs with different keys conflict.
func (s *ServiceExportSpec) PortsKey() string {
	ps := make([]string, 0, len(s.Ports))
	for _, p := range s.Ports {
		ap := ""
		if p.AppProtocol != nil {
			ap = *p.AppProtocol
		}
		ps = append(ps, fmt.Sprintf("%s/%d/%s/%s", p.Protocol, p.Port, p.Name, ap))
	}
	slices.Sort(ps)
	return strings.Join(ps, ",")
}
