package k8spolicy

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/clustermesh/clustermesh/policy"
)

var testOpts = policy.Options{LocalCluster: "east", DefaultLocalCluster: true}

// apiServerNP is a NetworkPolicy as an informer hands it over: no
// TypeMeta, and everything the API server adds.
func apiServerNP() *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(8080)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Name: "checkout", Namespace: "shop", UID: "1b2c", ResourceVersion: "4711", Generation: 3,
			CreationTimestamp: metav1.Now(),
			Labels:            map[string]string{"team": "shop"},
			Annotations:       map[string]string{lastApplied: `{"big":"json"}`},
			ManagedFields:     []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
		},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "checkout"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}, // defaulted
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{
					MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"frontend"}}},
				}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
}

func TestNetworkPolicyDocument(t *testing.T) {
	doc, err := NetworkPolicyDocument(apiServerNP())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(doc, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": map[string]any{"name": "checkout", "namespace": "shop"},
		"spec": map[string]any{
			"podSelector": map[string]any{"matchLabels": map[string]any{"app": "checkout"}},
			"policyTypes": []any{"Ingress"},
			"ingress": []any{map[string]any{
				"from": []any{map[string]any{"podSelector": map[string]any{
					"matchExpressions": []any{map[string]any{"key": "app", "operator": "In", "values": []any{"frontend"}}},
				}}},
				"ports": []any{map[string]any{"protocol": "TCP", "port": float64(8080)}},
			}},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("document:\n got %s\nwant %v", doc, want)
	}
	c, err := policy.Parse(testOpts, "kubernetes NetworkPolicy shop/checkout", doc)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.Rules() != 1 {
		t.Fatalf("rules = %d, want 1", c.Rules())
	}
}

func TestNetworkPolicyUnsupported(t *testing.T) {
	ipBlock := apiServerNP()
	ipBlock.Spec.Ingress[0].From = append(ipBlock.Spec.Ingress[0].From, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}})
	named := apiServerNP()
	http := intstr.FromString("http")
	named.Spec.Ingress[0].Ports[0].Port = &http
	egress := apiServerNP()
	egress.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}}}}}
	for _, tc := range []struct {
		name string
		np   *networkingv1.NetworkPolicy
		want string
	}{
		{"ipBlock", ipBlock, "spec.ingress[0].from[1].ipBlock: not supported"},
		{"named port", named, `spec.ingress[0].ports[0].port: not supported: named port "http"`},
		{"egress ipBlock", egress, "spec.egress[0].to[0].ipBlock"},
	} {
		_, err := NetworkPolicyDocument(tc.np)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrUnsupported with %q", tc.name, err, tc.want)
		}
	}
}

func TestCiliumNetworkPolicyDocument(t *testing.T) {
	cnp := func(spec string) map[string]any {
		var m map[string]any
		obj := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
			"metadata":{"name":"from-west","namespace":"shop","uid":"9","resourceVersion":"12","generation":1,
				"annotations":{"a":"b"},"managedFields":[{"manager":"kubectl"}]},
			"status":{"conditions":[{"type":"Valid","status":"True"}]},` + spec + `}`
		if err := json.Unmarshal([]byte(obj), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	good := cnp(`"spec":{"description":"west's frontends","labels":[{"key":"k"}],
		"endpointSelector":{"matchLabels":{"app":"checkout"}},
		"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"frontend","io.cilium.k8s.policy.cluster":"west"}}],
			"toPorts":[{"ports":[{"port":8080,"protocol":"TCP"}]}]}]},
		"specs":[{"endpointSelector":{},"egress":[{"toEndpoints":[{}]}]}]`)
	before, _ := json.Marshal(good)
	doc, err := Document(KindCiliumNetworkPolicy, good)
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(good); string(after) != string(before) {
		t.Fatalf("Document changed its input:\n%s\n%s", before, after)
	}
	for _, gone := range []string{"uid", "resourceVersion", "managedFields", "annotations", "status", "description", "labels", "generation"} {
		if strings.Contains(string(doc), `"`+gone+`"`) {
			t.Errorf("document keeps %s: %s", gone, doc)
		}
	}
	if !strings.Contains(string(doc), `"port":"8080"`) {
		t.Errorf("numeric port not written as a string: %s", doc)
	}
	c, err := policy.Parse(testOpts, "kubernetes CiliumNetworkPolicy shop/from-west", doc)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.Rules() != 2 {
		t.Errorf("rules = %d, want 2", c.Rules())
	}

	// What the compiler does not support stays for its strict decoding.
	bad := cnp(`"spec":{"endpointSelector":{},"egress":[{"toCIDR":["10.0.0.0/8"]}]}`)
	doc, err = Document(KindCiliumNetworkPolicy, bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Parse(testOpts, "kubernetes CiliumNetworkPolicy shop/from-west", doc); !errors.Is(err, policy.ErrInvalidPolicy) || !strings.Contains(err.Error(), "toCIDR") {
		t.Errorf("toCIDR: err = %v, want an invalid policy naming toCIDR", err)
	}
	if _, err := Document("Pod", good); err == nil {
		t.Error("Document of a Pod: no error")
	}
}

// FuzzDocument: any object gives a document or an error, never a panic;
// never changes its input; a document keeps only apiVersion, kind,
// metadata.name and .namespace, spec and specs; and normalising a document
// again gives the same document.
func FuzzDocument(f *testing.F) {
	np, _ := NetworkPolicyDocument(apiServerNP())
	f.Add(false, np)
	f.Add(true, []byte(`{"metadata":{"name":"a","namespace":"b","uid":"x"},"spec":{"ingress":[{"toPorts":[{"ports":[{"port":80}]}]}]},"specs":[null,{"description":1}]}`))
	f.Add(false, []byte(`{"spec":{"ingress":[{"from":[{"ipBlock":{}}],"ports":[{"port":"x"},{"port":"80"}]}],"egress":[null,{}]}}`))
	f.Add(true, []byte(`{"metadata":null,"spec":[],"specs":{}}`))
	f.Fuzz(func(t *testing.T, cilium bool, in []byte) {
		var obj map[string]any
		if json.Unmarshal(in, &obj) != nil {
			return
		}
		kind := KindNetworkPolicy
		if cilium {
			kind = KindCiliumNetworkPolicy
		}
		before, _ := json.Marshal(obj)
		doc, err := Document(kind, obj)
		if after, _ := json.Marshal(obj); string(after) != string(before) {
			t.Fatalf("input changed:\n%s\n%s", before, after)
		}
		if err != nil {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		var out map[string]any
		if err := json.Unmarshal(doc, &out); err != nil {
			t.Fatalf("document is not JSON: %v: %s", err, doc)
		}
		for k := range out {
			switch k {
			case "apiVersion", "kind", "metadata", "spec":
			case "specs":
				if !cilium {
					t.Fatalf("a NetworkPolicy document with specs: %s", doc)
				}
			default:
				t.Fatalf("document keeps %q: %s", k, doc)
			}
		}
		for k := range out["metadata"].(map[string]any) {
			if k != "name" && k != "namespace" {
				t.Fatalf("document keeps metadata.%s: %s", k, doc)
			}
		}
		again, err := Document(kind, out)
		if err != nil || string(again) != string(doc) {
			t.Fatalf("not idempotent: %v\n%s\n%s", err, doc, again)
		}
		_, _ = policy.Parse(testOpts, "fuzz", doc) // must not panic
	})
}
