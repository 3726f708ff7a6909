package k8smcs

import "slices"

// Status is a controller's state, as 'clustermesh slices status' shows it.
type Status struct {
	Identity          string `json:"identity"`
	Leader            bool   `json:"leader"`
	Holder            string `json:"holder,omitempty"`
	ClusterSetIPRange string `json:"clusterSetIPRange,omitempty"`
	// Imports are the ServiceImports the last pass kept.
	Imports []ImportStatus `json:"imports"`
	// Remotes are the remotes whose export specs are read.
	Remotes     []RemoteStatus `json:"remotes"`
	Writes      uint64         `json:"writes"`
	WriteErrors uint64         `json:"writeErrors"`
	LastError   string         `json:"lastError,omitempty"`
}

// ImportStatus is one ServiceImport.
type ImportStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Type      string `json:"type"`
	// IPs are the ClusterSetIPs (none for Headless).
	IPs []string `json:"ips,omitempty"`
	// Derived is the derived Service's name.
	Derived  string   `json:"derived"`
	Ports    string   `json:"ports"`
	Winner   string   `json:"winner"`
	Clusters []string `json:"clusters"`
	// Conflicts are the exports left out, by cluster.
	Conflicts map[string]Conflict `json:"conflicts,omitempty"`
}

// Status returns a snapshot of the controller's state.
func (c *Controller) Status() Status {
	c.mu.Lock()
	st := c.status
	st.Imports = slices.Clone(st.Imports)
	c.mu.Unlock()
	st.Remotes = c.specs.statuses()
	return st
}
