package k8spolicy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The kinds of policy objects, as the policy package names them.
const (
	KindNetworkPolicy       = "NetworkPolicy"
	KindCiliumNetworkPolicy = "CiliumNetworkPolicy"
)

// apiVersions of the kinds.
var apiVersions = map[string]string{
	KindNetworkPolicy:       "networking.k8s.io/v1",
	KindCiliumNetworkPolicy: "cilium.io/v2",
}

// ErrUnsupported is wrapped by the errors of objects that use a feature the
// mesh does not enforce (ipBlock, named ports): they are refused rather
// than enforced in part.
var ErrUnsupported = errors.New("not supported")

// NetworkPolicyDocument is the policy document of a NetworkPolicy object
// as the API server returns it (see Document).
func NetworkPolicyDocument(np *networkingv1.NetworkPolicy) ([]byte, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(np)
	if err != nil {
		return nil, fmt.Errorf("converting NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	return Document(KindNetworkPolicy, m)
}

// Document is the policy document (JSON, which policy.Parse reads as YAML)
// of an object of kind, given as its unstructured content. It keeps only
// what a policy file holds: apiVersion and kind (set from kind: typed
// objects from an informer have none), metadata.name, metadata.namespace,
// and spec (with specs, for a CiliumNetworkPolicy). Everything the API
// server adds (uid, resourceVersion, managedFields, annotations, status) is
// dropped, and what Kubernetes defaults is left in the form the policy
// package reads (a NetworkPolicy's policyTypes and TCP protocol are its own
// fields). It also:
//
//   - refuses a NetworkPolicy peer with ipBlock, and a named port (a string
//     port) in a NetworkPolicy, with ErrUnsupported and the field's path;
//   - writes a CiliumNetworkPolicy's numeric toPorts port as the string
//     Cilium's schema wants (a CRD that preserves unknown fields lets a
//     number through);
//   - drops the informational description and labels of a
//     CiliumNetworkPolicy's rules, which change nothing that is allowed.
//
// Anything else it leaves for policy.Parse's strict decoding to refuse.
func Document(kind string, obj map[string]any) ([]byte, error) {
	apiVersion, ok := apiVersions[kind]
	if !ok {
		return nil, fmt.Errorf("building a policy document: kind %q: want %s or %s", kind, KindNetworkPolicy, KindCiliumNetworkPolicy)
	}
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	md := map[string]any{"name": name}
	if ns != "" {
		md["namespace"] = ns
	}
	doc := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": md}
	switch kind {
	case KindNetworkPolicy:
		spec := deepCopy(obj["spec"])
		if err := checkNetworkPolicy(spec); err != nil {
			return nil, err
		}
		if spec != nil {
			doc["spec"] = spec
		}
	case KindCiliumNetworkPolicy:
		if spec, ok := obj["spec"]; ok && spec != nil {
			spec = deepCopy(spec)
			normaliseRule(spec)
			doc["spec"] = spec
		}
		if specs, ok := obj["specs"]; ok && specs != nil {
			specs = deepCopy(specs)
			if l, ok := specs.([]any); ok {
				for _, r := range l {
					normaliseRule(r)
				}
			}
			doc["specs"] = specs
		}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encoding the policy document of %s %s/%s: %w", kind, ns, name, err)
	}
	return b, nil
}

// checkNetworkPolicy refuses what the policy package does not enforce, with
// a message that names the field.
func checkNetworkPolicy(spec any) error {
	m, _ := spec.(map[string]any)
	for _, dir := range []struct{ rules, peers string }{{"ingress", "from"}, {"egress", "to"}} {
		rules, _ := m[dir.rules].([]any)
		for i, r := range rules {
			rm, _ := r.(map[string]any)
			peers, _ := rm[dir.peers].([]any)
			for j, p := range peers {
				if pm, _ := p.(map[string]any); pm["ipBlock"] != nil {
					return fmt.Errorf("spec.%s[%d].%s[%d].ipBlock: %w: select peers with podSelector or namespaceSelector (CIDR peers are not enforced by the mesh)",
						dir.rules, i, dir.peers, j, ErrUnsupported)
				}
			}
			ports, _ := rm["ports"].([]any)
			for j, p := range ports {
				pm, _ := p.(map[string]any)
				if s, ok := pm["port"].(string); ok {
					if n, err := strconv.Atoi(s); err == nil {
						pm["port"] = n // an int-or-string holding digits
						continue
					}
					return fmt.Errorf("spec.%s[%d].ports[%d].port: %w: named port %q: use the port number", dir.rules, i, j, ErrUnsupported, s)
				}
			}
		}
	}
	return nil
}

// normaliseRule adjusts one CiliumNetworkPolicy rule in place.
func normaliseRule(r any) {
	m, ok := r.(map[string]any)
	if !ok {
		return
	}
	delete(m, "description")
	delete(m, "labels")
	for _, dir := range []string{"ingress", "egress"} {
		rules, _ := m[dir].([]any)
		for _, dr := range rules {
			drm, _ := dr.(map[string]any)
			toPorts, _ := drm["toPorts"].([]any)
			for _, tp := range toPorts {
				tpm, _ := tp.(map[string]any)
				ports, _ := tpm["ports"].([]any)
				for _, p := range ports {
					pm, _ := p.(map[string]any)
					switch v := pm["port"].(type) {
					case int64:
						pm["port"] = strconv.FormatInt(v, 10)
					case int:
						pm["port"] = strconv.Itoa(v)
					case float64:
						if v == float64(int64(v)) {
							pm["port"] = strconv.FormatInt(int64(v), 10)
						}
					}
				}
			}
		}
	}
}

// deepCopy copies JSON-like values (maps, slices, scalars), so that
// normalising never writes into an informer's cache.
func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[k] = deepCopy(e)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = deepCopy(e)
		}
		return out
	default:
		return v
	}
}
