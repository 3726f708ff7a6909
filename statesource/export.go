package statesource

import (
	"maps"
	"time"

	"github.com/clustermesh/clustermesh/wire"
)

// Export is a Service's MCS API ServiceExport (KEP-1645): an exported
// service is global as if annotated service.cilium.io/global: "true" (the
// annotation and the export coexist: either makes it global; its other
// annotations, such as affinity, still apply), and its export spec is
// published for every cluster to build its ServiceImport from.
type Export struct {
	// Created is the ServiceExport's creation time: the oldest export of a
	// service wins its conflicts.
	Created time.Time `json:"created"`
	// Labels and Annotations are the ServiceExport's exported ones
	// (spec.exportedLabels, spec.exportedAnnotations).
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// SessionAffinity is the Service's (None or ClientIP; empty: None),
	// AffinityTimeout its ClientIP timeout in seconds (0: unset).
	SessionAffinity string `json:"sessionAffinity,omitempty"`
	AffinityTimeout int32  `json:"affinityTimeout,omitempty"`
}

// ExportSpec returns the export spec cluster publishes for s, nil when s
// is not exported: type Headless for a service without a cluster IP,
// ClusterSetIP otherwise; its ports in the MCS API's format.
func (s *Service) ExportSpec(cluster string) *wire.ServiceExportSpec {
	if s.Export == nil {
		return nil
	}
	spec := &wire.ServiceExportSpec{
		Cluster: cluster, Namespace: s.Namespace, Name: s.Name,
		Labels: maps.Clone(s.Export.Labels), Annotations: maps.Clone(s.Export.Annotations),
		ExportCreationTimestamp: s.Export.Created.UTC().Truncate(time.Second),
		Type:                    wire.ImportClusterSetIP, SessionAffinity: wire.SessionAffinityNone,
		Ports: make([]wire.ServiceExportPort, 0, len(s.Ports)),
	}
	if !s.ClusterIP.IsValid() {
		spec.Type = wire.ImportHeadless
	} else if s.ClusterIP.Is4() {
		spec.IPFamilies = []string{"IPv4"}
	} else {
		spec.IPFamilies = []string{"IPv6"}
	}
	if s.Export.SessionAffinity == wire.SessionAffinityClientIP {
		spec.SessionAffinity = wire.SessionAffinityClientIP
		if t := s.Export.AffinityTimeout; t > 0 {
			spec.SessionAffinityConfig = &wire.SessionAffinityConf{ClientIP: &wire.ClientIPConf{TimeoutSeconds: &t}}
		}
	}
	for _, p := range s.Ports {
		spec.Ports = append(spec.Ports, wire.ServiceExportPort{Name: p.Name, Protocol: p.Proto(), Port: int32(p.Port)})
	}
	return spec
}
