package wire

import (
	"fmt"
	"strings"
)

// WorkloadField is the ipcache entry's field that names the pod's owning
// workload, "Kind/name" (Deployment/frontend). It is ours, not Cilium's
// (its name says so): Cilium's decoders ignore it, ours accept entries
// without it. Flows name a remote pod's workload from it.
const WorkloadField = "clustermesh.io/workload"

// WorkloadKinds are the kinds of workload an entry may name.
var WorkloadKinds = []string{"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}

// Workload is a pod's owning workload.
type Workload struct{ Kind, Name string }

// String is the workload as the ipcache entry spells it.
func (w Workload) String() string {
	if w.Name == "" {
		return ""
	}
	return w.Kind + "/" + w.Name
}

// ParseWorkload parses and checks "Kind/name": a kind of WorkloadKinds and
// a DNS subdomain name (at most 253 lower-case characters).
func ParseWorkload(s string) (Workload, error) {
	kind, name, ok := strings.Cut(s, "/")
	if !ok || !validWorkloadKind(kind) {
		return Workload{}, fmt.Errorf("%w: workload %q: want Kind/name, Kind one of %s", ErrMalformedValue, s, strings.Join(WorkloadKinds, ", "))
	}
	if !validDNSSubdomain(name) {
		return Workload{}, fmt.Errorf("%w: workload %q: the name is not a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253)", ErrMalformedValue, s)
	}
	return Workload{Kind: kind, Name: name}, nil
}

func validWorkloadKind(k string) bool {
	for _, w := range WorkloadKinds {
		if k == w {
			return true
		}
	}
	return false
}

func validDNSSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
