package kubemesh

import (
	"context"
	"fmt"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/wire"
)

// DisconnectOptions say which clusters Disconnect disconnects.
type DisconnectOptions struct {
	Kubeconfig   string
	Context      string   // the source cluster's kubeconfig context ("": the current one)
	Destinations []string // the contexts of the clusters to disconnect it from
	Namespace    string   // of the mesh apiservers (default DefaultNamespace)
	// Force disconnects even when global services would be left without
	// backends (the result's Stranded lists them).
	Force bool
}

// DisconnectResult is what Disconnect did.
type DisconnectResult struct {
	// Stranded are the global services left without backends (with Force).
	Stranded []StrandedService
	Steps    []Step // the changes made, in order
}

// StrandedService is a global service of Cluster that only Remote serves:
// no ready local backend, and Remote is the only cluster it reads.
type StrandedService struct {
	Namespace, Name string
	Cluster         string
	Remote          string
	RemoteBackends  int // ready in Remote
}

func (s StrandedService) String() string {
	return fmt.Sprintf("%s/%s in cluster %s: 0 ready local backends, %d in %s", s.Namespace, s.Name, s.Cluster, s.RemoteBackends, s.Remote)
}

// Disconnect undoes Connect between the source and each destination, in
// both directions: the agents drop the other's config (and drain what they
// learned from it), the apiserver stops letting it read and the apiserver
// pods restart. Before anything is written, a global service that would be
// left without backends refuses the disconnect, unless Force.
func Disconnect(ctx context.Context, o DisconnectOptions) (DisconnectResult, error) {
	var res DisconnectResult
	co := ConnectOptions{Kubeconfig: o.Kubeconfig, Context: o.Context, Destinations: o.Destinations, Namespace: o.Namespace}.withDefaults()
	if err := co.Validate(); err != nil {
		return res, err
	}
	src, dests, err := loadMembers(ctx, co)
	if err != nil {
		return res, err
	}
	ls := links(co.Mode, src, dests)
	for _, l := range ls {
		s, err := strandedServices(ctx, l.reader, l.target)
		if err != nil {
			return res, err
		}
		res.Stranded = append(res.Stranded, s...)
	}
	if len(res.Stranded) > 0 && !o.Force {
		var lines []string
		for _, s := range res.Stranded {
			lines = append(lines, s.String())
		}
		return res, fmt.Errorf("not disconnecting, nothing was written: global services would be left without backends:\n  %s\nscale up their local backends first, or pass --force",
			strings.Join(lines, "\n  "))
	}
	for _, l := range ls {
		if err := disconnectLink(ctx, l, &res.Steps); err != nil {
			return res, err
		}
	}
	for _, m := range append([]*meshMember{src}, dests...) {
		if err := applyAPIServer(ctx, m, &res.Steps); err != nil {
			return res, err
		}
	}
	return res, nil
}

// disconnectLink stops l's reader from reading its target.
func disconnectLink(ctx context.Context, l link, steps *[]Step) error {
	if err := setRemote(ctx, l.reader, l.target.name, nil, nil, steps); err != nil {
		return err
	}
	if err := deleteRemoteSlices(ctx, l.reader, l.target.name, steps); err != nil {
		return err
	}
	if err := setPeer(ctx, l.target, l.reader.name, false, steps); err != nil {
		return err
	}
	return removeTrustedCA(ctx, l.target, l.reader.name, steps)
}

// strandedServices lists reader's global services that only target serves:
// no ready local backend, target is reader's only remote, and target has
// ready backends for the same service.
func strandedServices(ctx context.Context, reader, target *meshMember) ([]StrandedService, error) {
	if _, reads := reader.remotes[target.name]; !reads {
		return nil, nil
	}
	for r := range reader.remotes {
		if r != target.name && !strings.HasPrefix(r, ".") {
			return nil, nil // another remote may serve them
		}
	}
	svcs, err := reader.t.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: listing services: %w", reader.t.Context, err)
	}
	var out []StrandedService
	for _, s := range svcs.Items {
		if !strings.EqualFold(s.Annotations[wire.AnnotationGlobal], "true") {
			continue
		}
		local, err := readyBackends(ctx, reader.t, s.Namespace, s.Name)
		if err != nil {
			return nil, err
		}
		if local > 0 {
			continue
		}
		remote, err := readyBackends(ctx, target.t, s.Namespace, s.Name)
		if err != nil {
			return nil, err
		}
		if remote > 0 {
			out = append(out, StrandedService{Namespace: s.Namespace, Name: s.Name, Cluster: reader.name, Remote: target.name, RemoteBackends: remote})
		}
	}
	return out, nil
}

// readyBackends counts the ready endpoints of a service's EndpointSlices.
func readyBackends(ctx context.Context, t *Target, ns, svc string) (int, error) {
	l, err := t.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc + "," + notOwnSlices})
	if err != nil {
		return 0, fmt.Errorf("context %s: listing the endpointslices of %s/%s: %w", t.Context, ns, svc, err)
	}
	n := 0
	for _, s := range l.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				n++
			}
		}
	}
	return n, nil
}
