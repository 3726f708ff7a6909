package kubetest

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What no kubelet or controller does here, tests do with these helpers: a
// node with its addresses (status), a pod with its IP and readiness (status).

// Node describes a node to create.
type Node struct {
	Name        string
	InternalIP  string
	ExternalIP  string // optional
	PodCIDRs    []string
	Annotations map[string]string
}

// CreateNode creates a node and sets its addresses in its status.
func (c *Cluster) CreateNode(ctx context.Context, n Node) (*corev1.Node, error) {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Annotations: n.Annotations},
		Spec:       corev1.NodeSpec{PodCIDRs: n.PodCIDRs},
	}
	if len(n.PodCIDRs) > 0 {
		obj.Spec.PodCIDR = n.PodCIDRs[0]
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", n.Name, err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.InternalIP}}
	if n.ExternalIP != "" {
		created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: n.ExternalIP})
	}
	created, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("node %s status: %w", n.Name, err)
	}
	return created, nil
}

// Pod describes a running pod to create.
type Pod struct {
	Namespace, Name string
	Node            string
	IP              string
	Labels          map[string]string
	NotReady        bool
}

// CreatePod creates a pod bound to its node and sets it running with its IP.
func (c *Cluster) CreatePod(ctx context.Context, p Pod) (*corev1.Pod, error) {
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
		Spec: corev1.PodSpec{
			NodeName:   p.Node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
		},
	}
	created, err := c.Client.CoreV1().Pods(p.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	ready := corev1.ConditionTrue
	if p.NotReady {
		ready = corev1.ConditionFalse
	}
	created.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      p.IP,
		PodIPs:     []corev1.PodIP{{IP: p.IP}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}},
	}
	created, err = c.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return created, nil
}
