package k8sslices

// Status is what the writer did and holds: whether it writes (holds the
// Lease), who does, the slices of every wanted service, and its counters.
type Status struct {
	Identity string `json:"identity"`
	Leader   bool   `json:"leader"`
	// Holder is the identity of the writer holding the Lease, as last seen.
	Holder   string          `json:"holder,omitempty"`
	Services []ServiceStatus `json:"services,omitempty"`
	// Slices is how many slices the last pass wanted.
	Slices      int    `json:"slices"`
	Writes      uint64 `json:"writes"`
	Conflicts   uint64 `json:"conflicts"`
	WriteErrors uint64 `json:"writeErrors"`
	LastError   string `json:"lastError,omitempty"`
}

// ServiceStatus is one wanted service and its slices.
type ServiceStatus struct {
	Namespace string        `json:"namespace"`
	Name      string        `json:"name"`
	Slices    []SliceStatus `json:"slices,omitempty"`
}

// SliceStatus is one slice: its name, the cluster its endpoints run in and
// how many it lists.
type SliceStatus struct {
	Name      string `json:"name"`
	Cluster   string `json:"cluster"`
	Endpoints int    `json:"endpoints"`
}

// Status returns a copy of the writer's status. Services are those of the
// last pass of this writer's last term.
func (w *Writer) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	if le := w.elector.Load(); le != nil {
		s.Holder = le.GetLeader()
	}
	s.Services = append([]ServiceStatus(nil), s.Services...)
	return s
}

func (w *Writer) count(f func(*Status)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.status)
}

func (w *Writer) setServices(svcs []ServiceStatus, n int) {
	w.metrics.slices.Set(float64(n))
	w.count(func(s *Status) { s.Services, s.Slices = svcs, n })
}

func (w *Writer) setLeader(leader bool) {
	v := 0.0
	if leader {
		v = 1
	}
	w.metrics.leader.Set(v)
	w.count(func(s *Status) { s.Leader = leader })
}
