package flowexport

import "time"

// Status is the export's state, for the agent's status.
type Status struct {
	// ConfigPath is the configuration file.
	ConfigPath string `json:"configPath"`
	// ConfigError is why the file's last content was not applied (the
	// exporters below are then the last valid ones); empty when they are
	// the file's.
	ConfigError string `json:"configError,omitempty"`
	// AppliedAt is when the running exporters' configuration was applied.
	AppliedAt time.Time `json:"appliedAt,omitzero"`
	// Exporters are the running exporters, in the file's order.
	Exporters []ExporterStatus `json:"exporters"`
}

// ExporterStatus is one exporter's state; its counts are kept when the
// exporter is reopened after a change.
type ExporterStatus struct {
	Name     string `json:"name"`
	FilePath string `json:"filePath"`
	// Active is false once the exporter's end has passed.
	Active bool `json:"active"`
	// FlowsWritten is the flows written to the file.
	FlowsWritten uint64 `json:"flowsWritten"`
	// LostEvents is the events the source dropped while the export fell
	// behind (each report is a lost_events line in the file).
	LostEvents uint64 `json:"lostEvents"`
	// WriteErrors is the lines that could not be written.
	WriteErrors uint64 `json:"writeErrors"`
	// LastError is the last failure to create or write the file.
	LastError string `json:"lastError,omitempty"`
}

// Status returns the export's state.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{ConfigPath: m.cfg.Path, ConfigError: m.configErr, AppliedAt: m.appliedAt,
		Exporters: make([]ExporterStatus, 0, len(m.exporters))}
	now := time.Now()
	for _, e := range m.exporters {
		st.Exporters = append(st.Exporters, ExporterStatus{
			Name: e.spec.name, FilePath: e.spec.path, Active: e.active(now),
			FlowsWritten: e.counts.flows, LostEvents: e.counts.lost, WriteErrors: e.counts.writeErrors,
			LastError: e.lastErr,
		})
	}
	return st
}
