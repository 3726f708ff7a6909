package k8ssource

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/wire"
)

// Keys of the identities ConfigMap: the JSON document in data, or gzipped
// in binaryData once it grows past plainLimit (a ConfigMap holds at most
// 1 MiB).
const (
	identitiesKey   = "identities.json"
	identitiesGzKey = "identities.json.gz"
	plainLimit      = 512 << 10
)

// ErrIdentitiesChanged is returned by IdentityStore.Save when another writer
// allocated identities since this store read them.
var ErrIdentitiesChanged = errors.New("identities changed by another writer")

// IdentityStore keeps a mesh apiserver's identity numbers in one ConfigMap
// (a meshapiserver.IdentityStore), so that they survive the apiserver's pod
// being rescheduled. Writes are optimistic: each carries the resourceVersion
// last read or written. A conflict is retried when what is stored is still a
// part of what is being written (someone touched only the object's metadata);
// when another writer allocated identities, Save fails with
// ErrIdentitiesChanged and the apiserver restarts, reloading them.
//
// The apiserver's service account needs get, create and update on the
// ConfigMap ('clustermesh enable' grants them). Not safe for concurrent use.
type IdentityStore struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string

	resourceVersion string // "" until the ConfigMap exists
}

func (s *IdentityStore) where() string { return "configmap " + s.Namespace + "/" + s.Name }

// wrap adds what the store was doing ("reading", "writing") and, for an
// authorization failure, what to do about it.
func (s *IdentityStore) wrap(verb string, err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%s %s: %w: the apiserver's service account needs get, create and update on it: run clustermesh enable again, which grants them", verb, s.where(), err)
	}
	return fmt.Errorf("%s %s: %w", verb, s.where(), err)
}

// Load reads the ConfigMap; a missing one holds no identities.
func (s *IdentityStore) Load(ctx context.Context, c wire.Cluster) (map[string]uint32, error) {
	cm, err := s.Client.CoreV1().ConfigMaps(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s.resourceVersion = ""
		return map[string]uint32{}, nil
	}
	if err != nil {
		return nil, s.wrap("reading", err)
	}
	d, err := s.decode(cm)
	if err != nil {
		return nil, err
	}
	ids, err := d.Check(c, s.where(), fmt.Sprintf("delete it (kubectl -n %s delete configmap %s; identities will be renumbered) or run the apiserver as that cluster", s.Namespace, s.Name))
	if err != nil {
		return nil, err // names the configmap
	}
	s.resourceVersion = cm.ResourceVersion
	return ids, nil
}

func (s *IdentityStore) decode(cm *corev1.ConfigMap) (wire.IdentityDocument, error) {
	var d wire.IdentityDocument
	raw := []byte(cm.Data[identitiesKey])
	if gz, ok := cm.BinaryData[identitiesGzKey]; ok {
		r, err := gzip.NewReader(bytes.NewReader(gz))
		if err == nil {
			raw, err = io.ReadAll(r)
		}
		if err != nil {
			return d, fmt.Errorf("decompressing %s of %s: %w (delete the configmap; identities will be renumbered)", identitiesGzKey, s.where(), err)
		}
	}
	if len(raw) == 0 {
		return d, fmt.Errorf("reading %s: it holds neither %s nor %s: delete it (identities will be renumbered)", s.where(), identitiesKey, identitiesGzKey)
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, fmt.Errorf("parsing %s: %w (fix or delete the configmap; identities will be renumbered)", s.where(), err)
	}
	return d, nil
}

// Save writes ids: creates the ConfigMap, or updates it at the version last
// seen.
func (s *IdentityStore) Save(ctx context.Context, c wire.Cluster, ids map[string]uint32) error {
	cm, err := s.object(c, ids)
	if err != nil {
		return err
	}
	cms := s.Client.CoreV1().ConfigMaps(s.Namespace)
	for attempt := 0; ; attempt++ {
		var got *corev1.ConfigMap
		if s.resourceVersion == "" {
			got, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: "clustermesh-apiserver"})
		} else {
			cm.ResourceVersion = s.resourceVersion
			got, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: "clustermesh-apiserver"})
		}
		if err == nil {
			s.resourceVersion = got.ResourceVersion
			return nil
		}
		if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) && !apierrors.IsNotFound(err) {
			return s.wrap("writing", err)
		}
		if attempt == 3 {
			return s.wrap("writing", err)
		}
		// Someone else wrote (or deleted) it: go on only if what is stored
		// now is part of what we write.
		cur, gerr := cms.Get(ctx, s.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(gerr) {
			s.resourceVersion = ""
			continue
		}
		if gerr != nil {
			return s.wrap("reading", gerr)
		}
		d, derr := s.decode(cur)
		if derr != nil {
			return derr
		}
		if d.Cluster != c.Name || d.ClusterID != c.ID || !subset(d.Identities, ids) {
			return fmt.Errorf("writing %s: %w since this apiserver read it (is a second apiserver of cluster %s running?): restart the apiserver to reload them", s.where(), ErrIdentitiesChanged, c.Name)
		}
		s.resourceVersion = cur.ResourceVersion
	}
}

// subset reports whether every entry of a is in b with the same number.
func subset(a, b map[string]uint32) bool {
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func (s *IdentityStore) object(c wire.Cluster, ids map[string]uint32) (*corev1.ConfigMap, error) {
	raw, err := json.Marshal(wire.IdentityDocument{Cluster: c.Name, ClusterID: c.ID, Identities: maps.Clone(ids)})
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: s.Name, Namespace: s.Namespace,
		Labels: map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/managed-by": "clustermesh"},
	}}
	if len(raw) <= plainLimit {
		cm.Data = map[string]string{identitiesKey: string(raw)}
		return cm, nil
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		return nil, err
	}
	cm.BinaryData = map[string][]byte{identitiesGzKey: buf.Bytes()}
	return cm, nil
}
