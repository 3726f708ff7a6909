package k8smcs

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/clustermesh/clustermesh/wire"
)

// Import is what every cluster builds for one exported service from the
// export specs of all clusters (KEP-1645's constraints and conflict
// resolution): the oldest export wins (ties: the cluster name first in
// order); an export whose type, ports or session affinity differ from the
// winner's is in conflict and left out — its cluster is not among the
// import's clusters and its backends are not part of the service.
type Import struct {
	Namespace, Name string
	// The winner's properties.
	Type            string
	Ports           []wire.ServiceExportPort
	SessionAffinity string
	AffinityTimeout *int32
	// Labels and Annotations are the winner's exported ones (its
	// ServiceExport's spec.exportedLabels and exportedAnnotations), set on
	// the ServiceImport; other exports' are not compared.
	Labels, Annotations map[string]string
	// Winner is the cluster of the oldest export.
	Winner string
	// Clusters are the exporting clusters that agree with the winner
	// (the winner among them), sorted.
	Clusters []string
	// Conflicts are the exports in conflict, by cluster.
	Conflicts map[string]Conflict
}

// Conflict is why an export is left out of its import.
type Conflict struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// key is namespace/name.
func (im *Import) key() string { return im.Namespace + "/" + im.Name }

// resolve builds the import of every service some spec exports, by
// namespace/name.
func resolve(specs []*wire.ServiceExportSpec) map[string]*Import {
	byName := map[string][]*wire.ServiceExportSpec{}
	for _, s := range specs {
		k := s.Namespace + "/" + s.Name
		byName[k] = append(byName[k], s)
	}
	out := make(map[string]*Import, len(byName))
	for k, ss := range byName {
		slices.SortFunc(ss, func(a, b *wire.ServiceExportSpec) int {
			return cmp.Or(a.ExportCreationTimestamp.Compare(b.ExportCreationTimestamp), strings.Compare(a.Cluster, b.Cluster))
		})
		w := ss[0]
		im := &Import{Namespace: w.Namespace, Name: w.Name, Type: w.Type, Ports: w.Ports, SessionAffinity: w.SessionAffinity,
			AffinityTimeout: affinityTimeout(w), Labels: w.Labels, Annotations: w.Annotations, Winner: w.Cluster, Conflicts: map[string]Conflict{}}
		wports := w.PortsKey()
		for _, s := range ss {
			if c, ok := conflict(w, wports, s); ok {
				im.Conflicts[s.Cluster] = c
				continue
			}
			im.Clusters = append(im.Clusters, s.Cluster)
		}
		slices.Sort(im.Clusters)
		im.Clusters = slices.Compact(im.Clusters)
		out[k] = im
	}
	return out
}

// conflict reports how s disagrees with the winner w (whose PortsKey is
// wports), if it does.
func conflict(w *wire.ServiceExportSpec, wports string, s *wire.ServiceExportSpec) (Conflict, bool) {
	since := func() string {
		return fmt.Sprintf("the oldest export, cluster %s's of %s, wins", w.Cluster, w.ExportCreationTimestamp.UTC().Format("2006-01-02T15:04:05Z"))
	}
	switch {
	case s == w:
		return Conflict{}, false
	case s.Type != w.Type:
		return Conflict{string(mcsv1beta1.ServiceExportReasonTypeConflict),
			fmt.Sprintf("type %s conflicts with %s: %s", s.Type, w.Type, since())}, true
	case s.PortsKey() != wports:
		return Conflict{string(mcsv1beta1.ServiceExportReasonPortConflict),
			fmt.Sprintf("ports %s conflict with %s: %s", portsString(s.Ports), portsString(w.Ports), since())}, true
	case s.SessionAffinity != w.SessionAffinity:
		return Conflict{string(mcsv1beta1.ServiceExportReasonSessionAffinityConflict),
			fmt.Sprintf("session affinity %s conflicts with %s: %s", s.SessionAffinity, w.SessionAffinity, since())}, true
	case !equalTimeout(affinityTimeout(s), affinityTimeout(w)):
		return Conflict{string(mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict),
			fmt.Sprintf("session affinity timeout conflicts: %s", since())}, true
	}
	return Conflict{}, false
}

func affinityTimeout(s *wire.ServiceExportSpec) *int32 {
	if s.SessionAffinityConfig == nil || s.SessionAffinityConfig.ClientIP == nil {
		return nil
	}
	return s.SessionAffinityConfig.ClientIP.TimeoutSeconds
}

func equalTimeout(a, b *int32) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

// portsString is ports as a person reads them: "http 8080/TCP, 53/UDP".
func portsString(ps []wire.ServiceExportPort) string {
	if len(ps) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		s := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if p.Name != "" {
			s = p.Name + " " + s
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
