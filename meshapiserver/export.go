package meshapiserver

import (
	"fmt"
	"strings"

	"github.com/clustermesh/clustermesh/statesource"
)

// ExportMode is what a cluster exports to its peers (--export-mode): its
// nodes and global services always, and of its endpoints (ipcache entries)
// and identities all or a scope. An endpoint that is not exported is
// unknown to every peer: its address has no identity there (a peer's policy
// sees it as world), and its identity is published only if an exported
// endpoint uses it too.
type ExportMode string

const (
	// ExportAll exports every endpoint and its identity (the default).
	ExportAll ExportMode = "all"
	// ExportGlobalServices exports the endpoints a shared global service
	// selects (ready or not), and the identities they use.
	ExportGlobalServices ExportMode = "global-services"
	// ExportOptIn exports the endpoints whose pod is labelled SyncLabel
	// "true", or whose namespace is when the pod has no such label (a pod
	// labelled "false" stays out of an exported namespace), and the
	// identities they use. Global services publish only those backends.
	ExportOptIn ExportMode = "opt-in"
)

// SyncLabel is the pod or namespace label that opts endpoints in with
// ExportOptIn.
const SyncLabel = "clustermesh.io/sync"

// ExportModes are the valid modes, the default first.
var ExportModes = []ExportMode{ExportAll, ExportGlobalServices, ExportOptIn}

// ParseExportMode returns the mode named s ("" is ExportAll).
func ParseExportMode(s string) (ExportMode, error) {
	if s == "" {
		return ExportAll, nil
	}
	for _, m := range ExportModes {
		if strings.EqualFold(s, string(m)) {
			return m, nil
		}
	}
	return "", fmt.Errorf("%w: export mode %q: want all, global-services or opt-in", ErrInvalidConfig, s)
}

// Set and String make an ExportMode a command-line flag value.
func (m *ExportMode) Set(s string) error {
	v, err := ParseExportMode(s)
	if err == nil {
		*m = v
	}
	return err
}

func (m *ExportMode) String() string { return string(*m) }

// Type names the flag's value in usage.
func (m *ExportMode) Type() string { return "all|global-services|opt-in" }

// localView reports whether m holds endpoints back from peers, so that the
// apiserver publishes the complete local view for its own agents
// (wire.LocalViewPrefix).
func (m ExportMode) localView() bool { return m != ExportAll && m != "" }

// exportScope decides which endpoints of one state are exported.
type exportScope struct {
	mode     ExportMode
	backends map[*statesource.Endpoint]bool // ExportGlobalServices: every endpoint a shared service selects
}

// newExportScope computes mode's scope over st; ix gives st's selector
// index, built at most once.
func newExportScope(mode ExportMode, st *statesource.State, ix func() *statesource.SelectorIndex) *exportScope {
	s := &exportScope{mode: mode}
	if mode != ExportGlobalServices {
		return s
	}
	s.backends = map[*statesource.Endpoint]bool{}
	for i := range st.Services {
		if svc := &st.Services[i]; svc.Shared() {
			for _, e := range ix().Backends(svc) {
				s.backends[e] = true
			}
		}
	}
	return s
}

// exported reports whether e (an element of the scope's state) is exported.
func (s *exportScope) exported(e *statesource.Endpoint) bool {
	switch s.mode {
	case ExportGlobalServices:
		return s.backends[e]
	case ExportOptIn:
		if v, ok := e.Labels[SyncLabel]; ok {
			return strings.EqualFold(v, "true")
		}
		return strings.EqualFold(e.NamespaceLabels[SyncLabel], "true")
	}
	return true
}
