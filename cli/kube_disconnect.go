package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/wire"
)

func newDisconnectCmd() *cobra.Command {
	var kf kubeFlags
	var o connectOptions
	var force bool
	cmd := &cobra.Command{
		Use:   "disconnect --context A --destination-context B [--destination-context C ...]",
		Short: "Disconnect Kubernetes clusters: remove each one's config for the other and its read access",
		Long: `Undo 'clustermesh connect' between the source and each destination, in both
directions: the agents drop the remote's config (and drain what they learned
from it) and the apiserver stops letting it read (and, after connect
--allow-mismatching-ca, the reader's certificate of the other CA goes); the
apiserver pod restarts.

Before anything is written, each global service that would be left without
backends is listed — one with no ready local backend that is served by the
cluster being disconnected, which is its only remote — and the disconnect is
refused unless --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			o.Mode = modeBidirectional
			src, dests, err := loadMembers(ctx, &kf, o)
			if err != nil {
				return err
			}
			ls, _ := links(o.Mode, src, dests)
			var risks []string
			for _, l := range ls {
				r, err := strandedServices(ctx, l.reader, l.target)
				if err != nil {
					return err
				}
				risks = append(risks, r...)
			}
			if len(risks) > 0 {
				msg := "global services would be left without backends:\n  " + strings.Join(risks, "\n  ")
				if !force {
					return fmt.Errorf("not disconnecting, nothing was written: %s\nscale up their local backends first, or pass --force", msg)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", msg)
			}
			for _, l := range ls {
				if err := setRemote(ctx, l.reader, l.target.name, nil, nil, out); err != nil {
					return err
				}
				if err := setPeer(ctx, l.target, l.reader.name, false, out); err != nil {
					return err
				}
				if err := removeTrustedCA(ctx, l.target, l.reader.name, out); err != nil {
					return err
				}
			}
			for _, m := range append([]*meshMember{src}, dests...) {
				if err := applyAPIServer(ctx, m, out); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the source cluster (default: the current context)")
	f.StringArrayVar(&o.Destinations, "destination-context", nil, "kubeconfig context of a cluster to disconnect from (repeatable)")
	f.StringVar(&o.Namespace, "namespace", defaultKubeNamespace, "namespace of the mesh apiservers (the same in every cluster)")
	f.BoolVar(&force, "force", false, "disconnect even when global services would be left without backends")
	cmd.MarkFlagRequired("destination-context")
	return cmd
}

// strandedServices lists reader's global services that only target serves:
// no ready local backend, target is reader's only remote, and target has
// ready backends for the same service.
func strandedServices(ctx context.Context, reader, target *meshMember) ([]string, error) {
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
		return nil, fmt.Errorf("context %s: list services: %w", reader.t.Context, err)
	}
	var out []string
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
			out = append(out, fmt.Sprintf("%s/%s in cluster %s: 0 ready local backends, %d in %s", s.Namespace, s.Name, reader.name, remote, target.name))
		}
	}
	return out, nil
}

// readyBackends counts the ready endpoints of a service's EndpointSlices.
func readyBackends(ctx context.Context, t *kubeTarget, ns, svc string) (int, error) {
	l, err := t.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return 0, fmt.Errorf("context %s: endpointslices of %s/%s: %w", t.Context, ns, svc, err)
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
