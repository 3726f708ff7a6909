package k8smcs

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The derived Service selects the local pods only where the local export
// agrees, keeps the local target port and affinity annotation, and is
// headless for a Headless import.
func TestDerivedService(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC)
	local := &statesource.Service{Namespace: "shop", Name: "checkout", ClusterIP: netip.MustParseAddr("10.0.0.7"),
		Selector: map[string]string{"app": "checkout"}, Annotations: map[string]string{AnnotationAffinity: "local"},
		Ports: []statesource.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}
	im := resolve([]*wire.ServiceExportSpec{spec("west", wire.ImportClusterSetIP, t0, 80), spec("east", wire.ImportClusterSetIP, t0.Add(time.Second), 80)})["shop/checkout"]
	svc := derivedService("east", im, local, nil, "10.0.1.7")
	if svc.Name != DerivedName("shop", "checkout") || svc.Spec.ClusterIP != "10.0.1.7" || svc.Spec.Selector["app"] != "checkout" ||
		svc.Spec.Ports[0].TargetPort.IntVal != 8080 || svc.Annotations[AnnotationAffinity] != "local" || svc.Annotations[AnnotationGlobal] != "true" ||
		svc.Labels[LabelServiceName] != "checkout" || svc.Labels[LabelSourceCluster] != "east" {
		t.Fatalf("east's derived service %+v", svc)
	}
	if other := derivedService("north", im, local, nil, ""); other.Spec.Selector != nil || other.Spec.Ports[0].TargetPort.IntVal != 80 {
		t.Fatalf("a cluster that does not export selects: %+v", other.Spec)
	}
	headless := resolve([]*wire.ServiceExportSpec{spec("west", wire.ImportHeadless, t0, 80)})["shop/checkout"]
	if svc := derivedService("west", headless, local, nil, ""); svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("headless import's derived service: %q", svc.Spec.ClusterIP)
	}
	if DerivedName("shop", "checkout") == DerivedName("shop", "cart") || len(DerivedName("a", "b")) != len(DerivedPrefix)+10 {
		t.Fatal("derived names")
	}
}

// Conditions: Valid without a Service is False; Conflict follows the
// import; an unchanged condition keeps its transition time.
func TestExportConditions(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC)
	im := resolve([]*wire.ServiceExportSpec{spec("west", wire.ImportClusterSetIP, t0, 80), spec("north", wire.ImportClusterSetIP, t0.Add(time.Second), 90)})["shop/checkout"]
	svc := &statesource.Service{Namespace: "shop", Name: "checkout"}
	var have []metav1.Condition
	if !setConditions(&have, exportConditions("north", svc, im), 1) || len(have) != 2 ||
		have[0].Status != metav1.ConditionTrue || have[1].Status != metav1.ConditionTrue || have[1].Reason != "PortConflict" {
		t.Fatalf("north's conditions %+v", have)
	}
	since := have[1].LastTransitionTime
	if setConditions(&have, exportConditions("north", svc, im), 1) {
		t.Fatal("the same conditions changed something")
	}
	if have[1].LastTransitionTime != since {
		t.Fatal("transition time moved without a transition")
	}
	if !setConditions(&have, exportConditions("west", nil, im), 1) || have[0].Reason != "NoService" || have[1].Reason != "NoConflicts" {
		t.Fatalf("west without its service: %+v", have)
	}
}
