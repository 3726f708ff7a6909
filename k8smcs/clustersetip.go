package k8smcs

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterSetIPs from a range: the derived Service of an import asks for an
// address of Config.ClusterSetIPRange explicitly — the first free one from
// a position given by the service's name (so that a service tends to keep
// its address across clusters and restarts), skipping the range's first
// address (and, for IPv4, its last), which Kubernetes never allocates. The
// range becomes a ServiceCIDR (networking.k8s.io/v1, Kubernetes ≥ 1.33) so
// that the API server accepts those addresses; a range inside the
// cluster's --service-cluster-ip-range needs none, and Kubernetes
// allocates from it too (a collision is retried with the next address).
// Without a range, Kubernetes allocates the derived Service's cluster IP.

// maxAllocTries bounds the addresses tried for one Service in one pass.
const maxAllocTries = 32

// ensureServiceCIDR creates the ServiceCIDR of the ClusterSetIP range when
// there is one and it is not there yet.
func (c *Controller) ensureServiceCIDR(ctx context.Context) error {
	r := c.cfg.ClusterSetIPRange
	if !r.IsValid() {
		return nil
	}
	sc := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: ServiceCIDRName, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{r.String()}}}
	_, err := c.cfg.Client.NetworkingV1().ServiceCIDRs().Create(ctx, sc, metav1.CreateOptions{})
	switch {
	case err == nil:
		c.wrote("servicecidr", "create")
		c.log.Info("created the ServiceCIDR of the ClusterSetIP range", "name", ServiceCIDRName, "range", r)
		return nil
	case apierrors.IsAlreadyExists(err):
		return nil
	case apierrors.IsNotFound(err):
		return fmt.Errorf("creating the ServiceCIDR %s for %s: this Kubernetes has no networking.k8s.io/v1 ServiceCIDRs (≥ 1.33): choose a --clusterset-ip-range inside its --service-cluster-ip-range: %w", ServiceCIDRName, r, err)
	}
	c.writeFailed("servicecidr", "create")
	return fmt.Errorf("creating the ServiceCIDR %s for %s: %w", ServiceCIDRName, r, err)
}

// candidates returns up to n addresses of r to try for key, the first
// from key's hash, skipping used ones.
func candidates(r netip.Prefix, key string, used map[netip.Addr]bool, n int) []netip.Addr {
	hostBits := r.Addr().BitLen() - r.Bits()
	size := uint64(1) << hostBits
	h := fnv.New64a()
	h.Write([]byte(key))
	start := h.Sum64() % size
	base := new(big.Int).SetBytes(r.Addr().AsSlice())
	var out []netip.Addr
	for i := uint64(0); i < size && len(out) < n; i++ {
		off := (start + i) % size
		if off == 0 || (r.Addr().Is4() && off == size-1) {
			continue
		}
		a := addrAt(base, off, r.Addr().Is4())
		if !used[a] {
			out = append(out, a)
		}
	}
	return out
}

func addrAt(base *big.Int, off uint64, v4 bool) netip.Addr {
	var o [8]byte
	binary.BigEndian.PutUint64(o[:], off)
	sum := new(big.Int).Add(base, new(big.Int).SetBytes(o[:]))
	if v4 {
		var b [4]byte
		sum.FillBytes(b[:])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	sum.FillBytes(b[:])
	return netip.AddrFrom16(b)
}

// createDerived creates svc, with an address of the range when there is
// one and svc is not headless.
func (c *Controller) createDerived(ctx context.Context, svc *corev1.Service, used map[netip.Addr]bool) (*corev1.Service, error) {
	r := c.cfg.ClusterSetIPRange
	if !r.IsValid() || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return c.create(ctx, svc)
	}
	for _, a := range candidates(r, svc.Namespace+"/"+svc.Name, used, maxAllocTries) {
		svc.Spec.ClusterIP = a.String()
		created, err := c.create(ctx, svc)
		if err == nil {
			used[a] = true
			return created, nil
		}
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "already allocated") {
			return nil, err
		}
		used[a] = true // taken by a Service we do not know of
	}
	return nil, fmt.Errorf("allocating a ClusterSetIP for %s/%s in %s: %w: widen --clusterset-ip-range", svc.Namespace, svc.Name, r, ErrRangeExhausted)
}

func (c *Controller) create(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	created, err := c.cfg.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		c.writeFailed("service", "create")
		return nil, fmt.Errorf("creating the derived service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	c.wrote("service", "create")
	return created, nil
}
