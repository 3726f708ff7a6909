package k8ssource_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/wire"
)

var east = wire.Cluster{Name: "east", ID: 1, MaxConnectedClusters: 255}

// On a real API server: nothing stored at first, a save and a load by a new
// store (a restarted apiserver) give the same numbers, a change of metadata
// alone does not stop the writer, another writer's allocations do, and a
// store of another cluster is refused.
func TestK8sIdentityStore(t *testing.T) {
	env := kubetest.Start(t, "east")
	c := env.Cluster("east").Client
	ctx := context.Background()
	if err := env.Cluster("east").CreateNamespace(ctx, "mesh", nil); err != nil {
		t.Fatal(err)
	}
	s := &k8ssource.IdentityStore{Client: c, Namespace: "mesh", Name: "ids"}
	got, err := s.Load(ctx, east)
	if err != nil || len(got) != 0 {
		t.Fatalf("first load: %v %v", got, err)
	}
	ids := map[string]uint32{"k8s:app=a": 65536, "k8s:app=b": 65537}
	if err := s.Save(ctx, east, ids); err != nil {
		t.Fatal(err)
	}
	restarted := &k8ssource.IdentityStore{Client: c, Namespace: "mesh", Name: "ids"}
	if got, err := restarted.Load(ctx, east); err != nil || !maps.Equal(got, ids) {
		t.Fatalf("load after save: %v %v, want %v", got, err, ids)
	}

	// Someone labels the configmap: the next save still goes through.
	cm, err := c.CoreV1().ConfigMaps("mesh").Get(ctx, "ids", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Labels["touched"] = "yes"
	if _, err := c.CoreV1().ConfigMaps("mesh").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ids["k8s:app=c"] = 65538
	if err := s.Save(ctx, east, ids); err != nil {
		t.Fatalf("save after a metadata change: %v", err)
	}
	// A second writer (restarted earlier) allocated another identity: the
	// first one must not overwrite it.
	other := maps.Clone(ids)
	other["k8s:app=d"] = 65539
	if err := restarted.Save(ctx, east, other); err != nil {
		t.Fatalf("second writer, a superset: %v", err)
	}
	ids["k8s:app=e"] = 65539
	if err := s.Save(ctx, east, ids); !errors.Is(err, k8ssource.ErrIdentitiesChanged) || !strings.Contains(err.Error(), "restart the apiserver") {
		t.Fatalf("save over another writer's identities: %v", err)
	}
	west := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	if _, err := (&k8ssource.IdentityStore{Client: c, Namespace: "mesh", Name: "ids"}).Load(ctx, west); err == nil || !strings.Contains(err.Error(), `belong to cluster "east" id 1`) {
		t.Fatalf("load as another cluster: %v", err)
	}
}

// A forbidden request says which permission is missing and how to get it;
// a large set of identities is stored compressed and read back.
func TestIdentityStoreForbiddenAndLarge(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	c.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, "ids", errors.New("no role"))
	})
	_, err := (&k8ssource.IdentityStore{Client: c, Namespace: "mesh", Name: "ids"}).Load(ctx, east)
	if err == nil || !strings.Contains(err.Error(), "get, create and update") || !strings.Contains(err.Error(), "clustermesh enable again") {
		t.Errorf("forbidden: %v", err)
	}

	c = fake.NewClientset()
	ids := map[string]uint32{}
	for i := range 20000 {
		ids[fmt.Sprintf("k8s:app=service-number-%d;k8s:io.kubernetes.pod.namespace=namespace-%d", i, i%50)] = 65536 + uint32(i)
	}
	s := &k8ssource.IdentityStore{Client: c, Namespace: "mesh", Name: "ids"}
	if err := s.Save(ctx, east, ids); err != nil {
		t.Fatal(err)
	}
	cm, err := c.CoreV1().ConfigMaps("mesh").Get(ctx, "ids", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if size := len(cm.BinaryData["identities.json.gz"]); size == 0 || size > 1<<20 || len(cm.Data) != 0 {
		t.Errorf("20000 identities: %d compressed bytes, data %d keys", size, len(cm.Data))
	}
	got, err := (&k8ssource.IdentityStore{Client: c, Namespace: "mesh", Name: "ids"}).Load(ctx, east)
	if err != nil || !maps.Equal(got, ids) {
		t.Errorf("load of the compressed identities: %d %v", len(got), err)
	}
}
