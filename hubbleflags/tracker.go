package hubbleflags

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/proto"
)

// tracker builds one list (the whitelist, or the blacklist of --not) the
// way Hubble's filter tracker does: every filter flag adds to a left and a
// right FlowFilter, the list being "left OR right". A --from-X or --to-X
// flag adds the same value to both; an either-direction --X adds the source
// field to the left and the destination field to the right. Namespaces are
// kept aside and applied to the pod and service fields when the list is
// built (list).
type tracker struct {
	left, right *flowpb.FlowFilter
	// ns, srcNs and dstNs are --namespace, --from-namespace and
	// --to-namespace ("" for the --all-namespaces variants).
	ns, srcNs, dstNs []string
	// changed are the flags set in this list, in order of first use, for
	// the conflict checks.
	changed []string
}

// both adds to the left and the right filter.
func (t *tracker) both(add func(*flowpb.FlowFilter)) {
	t.onLeft(add)
	t.onRight(add)
}

func (t *tracker) onLeft(add func(*flowpb.FlowFilter)) {
	if t.left == nil {
		t.left = &flowpb.FlowFilter{}
	}
	add(t.left)
}

func (t *tracker) onRight(add func(*flowpb.FlowFilter)) {
	if t.right == nil {
		t.right = &flowpb.FlowFilter{}
	}
	add(t.right)
}

// use records that flag name was set, and refuses a combination Hubble
// refuses, naming the pair as Hubble does (in the order of its table).
func (t *tracker) use(name string) error {
	if !slices.Contains(t.changed, name) {
		t.changed = append(t.changed, name)
	}
	for _, group := range conflicts {
		for _, a := range group {
			if !slices.Contains(t.changed, a) {
				continue
			}
			for _, b := range group {
				if a != b && slices.Contains(t.changed, b) {
					return fmt.Errorf("filters --%s and --%s cannot be combined", a, b)
				}
			}
		}
	}
	return nil
}

// conflicts are the groups of filter flags Hubble refuses to combine within
// one list (two different flags of a group).
var conflicts = [][]string{
	{"from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace", "from-all-namespaces", "all-namespaces"},
	{"from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"},
	{"to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace", "to-all-namespaces", "all-namespaces"},
	{"to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"},
	{"to-pod", "namespace", "all-namespaces"},
	{"from-pod", "namespace", "all-namespaces"},
	{"to-service", "namespace", "all-namespaces"},
	{"from-service", "namespace", "all-namespaces"},
	{"label", "from-label"},
	{"label", "to-label"},
	{"service", "from-service"},
	{"service", "to-service"},
	{"port", "to-port"},
	{"port", "from-port"},
	{"identity", "to-identity"},
	{"identity", "from-identity"},
	{"workload", "to-workload"},
	{"workload", "from-workload"},
	{"encrypted", "unencrypted"},
	{"reply", "not-reply"},
}

// checkNamespaces refuses a pod or service whose namespace contradicts a
// namespace flag, or pods and services of different namespaces, as Hubble
// does after every filter flag.
func (t *tracker) checkNamespaces() error {
	var errs []error
	for _, ff := range []*flowpb.FlowFilter{t.left, t.right} {
		if ff == nil {
			continue
		}
		errs = append(errs,
			contradicts(t.ns, ff.GetSourcePod()), contradicts(t.ns, ff.GetSourceService()),
			contradicts(t.ns, ff.GetDestinationPod()), contradicts(t.ns, ff.GetDestinationService()),
			contradicts(t.srcNs, ff.GetSourcePod()), contradicts(t.srcNs, ff.GetSourceService()),
			contradicts(t.dstNs, ff.GetDestinationPod()), contradicts(t.dstNs, ff.GetDestinationService()),
			mixedNamespaces(ff.GetSourcePod(), ff.GetSourceService()),
			mixedNamespaces(ff.GetDestinationPod(), ff.GetDestinationService()))
	}
	return errors.Join(errs...)
}

// contradicts refuses a NAMESPACE/NAME outside one of the namespaces.
func contradicts(namespaces, names []string) error {
	for _, ns := range namespaces {
		for _, name := range names {
			if n := namespaceOf(name); n != "" && n != ns {
				return fmt.Errorf("namespace conflict: %q does not contain %q", ns, name)
			}
		}
	}
	return nil
}

// mixedNamespaces refuses services outside the namespace of a pod.
func mixedNamespaces(pods, services []string) error {
	for _, pod := range pods {
		podNs := namespaceOf(pod)
		if podNs == "" {
			continue
		}
		for _, svc := range services {
			if namespaceOf(svc) != podNs {
				return fmt.Errorf("namespace of service %q conflict with pod %q", svc, podNs)
			}
		}
	}
	return nil
}

// namespaceOf is the NAMESPACE of NAMESPACE/NAME, "" without a slash.
func namespaceOf(name string) string {
	ns, _, ok := strings.Cut(name, "/")
	if !ok {
		return ""
	}
	return ns
}

// list returns the FlowFilters of the tracker: none when no flag was set,
// one when left and right are equal, else both. The tracker is unchanged.
func (t *tracker) list() []*flowpb.FlowFilter {
	if t == nil || t.left == nil && t.right == nil && len(t.ns) == 0 && len(t.srcNs) == 0 && len(t.dstNs) == 0 {
		return nil
	}
	left, right := cloneOrNew(t.left), cloneOrNew(t.right)
	if len(t.dstNs) > 0 {
		inDestination(left, t.dstNs)
		inDestination(right, t.dstNs)
	}
	if len(t.srcNs) > 0 {
		inSource(left, t.srcNs)
		inSource(right, t.srcNs)
	}
	if len(t.ns) > 0 {
		inSource(left, t.ns)
		inDestination(right, t.ns)
	}
	if proto.Equal(left, right) {
		return []*flowpb.FlowFilter{left}
	}
	return []*flowpb.FlowFilter{left, right}
}

func cloneOrNew(ff *flowpb.FlowFilter) *flowpb.FlowFilter {
	if ff == nil {
		return &flowpb.FlowFilter{}
	}
	return proto.Clone(ff).(*flowpb.FlowFilter)
}

// inSource puts the source pods and services in the namespaces: a name
// without a namespace becomes one per namespace, and no name at all
// becomes "every pod of the namespaces" ("NAMESPACE/", a prefix).
func inSource(ff *flowpb.FlowFilter, namespaces []string) {
	if len(ff.SourcePod) == 0 && len(ff.SourceService) == 0 {
		ff.SourcePod = []string{""}
	}
	ff.SourcePod = inNamespaces(ff.SourcePod, namespaces)
	ff.SourceService = inNamespaces(ff.SourceService, namespaces)
}

// inDestination is inSource for the destination.
func inDestination(ff *flowpb.FlowFilter, namespaces []string) {
	if len(ff.DestinationPod) == 0 && len(ff.DestinationService) == 0 {
		ff.DestinationPod = []string{""}
	}
	ff.DestinationPod = inNamespaces(ff.DestinationPod, namespaces)
	ff.DestinationService = inNamespaces(ff.DestinationService, namespaces)
}

func inNamespaces(names, namespaces []string) []string {
	if len(names) == 0 || len(namespaces) == 0 {
		return names
	}
	out := []string{}
	for _, name := range names {
		if strings.Contains(name, "/") {
			out = append(out, name)
			continue
		}
		for _, ns := range namespaces {
			out = append(out, ns+"/"+name)
		}
	}
	return out
}
