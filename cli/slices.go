package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/metricsserver"
	"github.com/clustermesh/clustermesh/k8sslices"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/merge"
)

const slicesLong = `Write the remote clusters' backends of global services into this cluster as
EndpointSlices, so that whatever reads EndpointSlices (CoreDNS for headless
services, ingress controllers, kubectl) sees them: for each global service
annotated service.cilium.io/global-sync-endpoint-slices: "true" (or every
global service with --all-global-services, but those annotated "false"),
one EndpointSlice per remote cluster, labelled
endpointslice.kubernetes.io/managed-by=slices.clustermesh.io and
clustermesh.io/source-cluster=<cluster>. Slices without that managed-by
label are never touched.

It reads the remote clusters as the agents do (--config-dir: one etcd client
config per remote; removing a file disconnects that cluster and deletes its
slices), with the same validation, ownership checks and limits, on an
in-memory datapath. Several replicas may run: one writes, elected through
the Lease --lease-name in --namespace. Its status (JSON) is served on
--status-addr, its metrics on --metrics-addr. See docs/endpointslices.md.`

// slicesFlags are the flags of 'clustermesh slices'.
type slicesFlags struct {
	clusterName, configDir, kubeconfig, kubeContext string
	clusterID                                       uint32
	namespace, leaseName, identity                  string
	allGlobal                                       bool
	statusAddr, metricsAddr                         string
	coalesce                                        time.Duration
}

func newSlicesCmd() *cobra.Command {
	var f slicesFlags
	cmd := &cobra.Command{
		Use:   "slices --cluster-name NAME --cluster-id ID --config-dir DIR",
		Short: "Write remote backends of global services as EndpointSlices (one writer per cluster)",
		Long:  slicesLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return f.run(ctx, slog.Default())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.clusterName, "cluster-name", "", "the local cluster's name")
	fl.Uint32Var(&f.clusterID, "cluster-id", 0, "the local cluster's id")
	fl.StringVar(&f.configDir, "config-dir", "", "directory of the remote clusters' etcd client configs (the agents')")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&f.kubeContext, "context", "", "kubeconfig context")
	fl.StringVar(&f.namespace, "namespace", "", "namespace of the writers' Lease (default: the pod's, else "+defaultKubeNamespace+")")
	fl.StringVar(&f.leaseName, "lease-name", k8sslices.DefaultLeaseName, "the Lease the writers of the cluster share")
	fl.StringVar(&f.identity, "identity", "", "this writer's identity in the Lease (default: host name and pid)")
	fl.BoolVar(&f.allGlobal, "all-global-services", false, "write slices for every global service, not only those annotated "+k8sslices.AnnotationSyncEndpointSlices+": \"true\"")
	fl.StringVar(&f.statusAddr, "status-addr", "", "unix socket serving the status as JSON (GET /status); empty: none")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "address of the Prometheus metrics (/metrics); empty: none")
	fl.DurationVar(&f.coalesce, "coalesce", k8sslices.DefaultCoalesce, "how long a change waits for more before the slices are written")
	for _, r := range []string{"cluster-name", "cluster-id", "config-dir"} {
		cmd.MarkFlagRequired(r)
	}
	cmd.AddCommand(newSlicesStatusCmd())
	return cmd
}

func newSlicesStatusCmd() *cobra.Command {
	var addr string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status --status-addr SOCKET",
		Short: "Print the status of 'clustermesh slices': the writer, the remotes, each service's slices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := fetchSlicesStatus(cmd.Context(), addr)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printSlicesStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "status-addr", "", "the --status-addr of 'clustermesh slices'")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	cmd.MarkFlagRequired("status-addr")
	return cmd
}

// fetchSlicesStatus reads the status served on the unix socket addr.
func fetchSlicesStatus(ctx context.Context, addr string) (SlicesStatus, error) {
	var st SlicesStatus
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://slices/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return st, fmt.Errorf("reading the slices writer's status at %s (is 'clustermesh slices --status-addr' running?): %w", addr, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decoding the slices writer's status from %s: %w", addr, err)
	}
	return st, nil
}

// printSlicesStatus prints st, a line for the writer, one per remote and
// one per service.
func printSlicesStatus(out io.Writer, st SlicesStatus) {
	w := st.Writer
	role := "standby"
	if w.Leader {
		role = "leader"
	}
	fmt.Fprintf(out, "writer %s: %s (lease held by %s): %d slices wanted, %d writes, %d conflicts, %d write errors\n",
		w.Identity, role, cmp.Or(w.Holder, "nobody"), w.Slices, w.Writes, w.Conflicts, w.WriteErrors)
	if w.LastError != "" {
		fmt.Fprintf(out, "  last error: %s\n", w.LastError)
	}
	for _, r := range st.Remotes {
		state := "disconnected"
		switch {
		case r.Ready:
			state = "connected, synced"
		case r.Connected:
			state = "connected, syncing"
		}
		fmt.Fprintf(out, "remote %s: %s, %d services\n", r.Name, state, r.Services)
	}
	for _, s := range w.Services {
		if len(s.Slices) == 0 {
			fmt.Fprintf(out, "service %s/%s: no remote backends\n", s.Namespace, s.Name)
			continue
		}
		byCluster := map[string][2]int{} // slices, endpoints
		var clusters []string
		for _, sl := range s.Slices {
			c, seen := byCluster[sl.Cluster]
			if !seen {
				clusters = append(clusters, sl.Cluster)
			}
			byCluster[sl.Cluster] = [2]int{c[0] + 1, c[1] + sl.Endpoints}
		}
		var parts []string
		for _, c := range clusters {
			parts = append(parts, fmt.Sprintf("%s %d endpoints in %d slices", c, byCluster[c][1], byCluster[c][0]))
		}
		fmt.Fprintf(out, "service %s/%s: %s\n", s.Namespace, s.Name, strings.Join(parts, ", "))
	}
}

// SlicesStatus is what 'clustermesh slices' serves on --status-addr.
type SlicesStatus struct {
	Writer  k8sslices.Status         `json:"writer"`
	Remotes []agentsync.RemoteStatus `json:"remotes"`
}

func (f *slicesFlags) run(ctx context.Context, log *slog.Logger) error {
	client, err := newKubeClient(f.kubeconfig, f.kubeContext)
	if err != nil {
		return err
	}
	var w *k8sslices.Writer
	agent, err := agentsync.New(agentsync.Config{
		ClusterName: f.clusterName, ClusterID: f.clusterID, ConfigDir: f.configDir,
		LocalSource: &k8ssource.Source{Client: client, Logger: log}, Datapath: datapath.NewMemory(),
		OnServiceChange: func(n merge.ServiceName) { w.Notify(n) }, Logger: log,
	})
	if err != nil {
		return err
	}
	w, err = k8sslices.New(k8sslices.Config{Client: client, Source: agent, AllGlobal: f.allGlobal,
		LeaseNamespace: kubeNamespace(f.namespace), LeaseName: f.leaseName, Identity: f.identity,
		Coalesce: f.coalesce, Logger: log})
	if err != nil {
		return err
	}
	status := func() SlicesStatus { return SlicesStatus{Writer: w.Status(), Remotes: agent.Status().Remotes} }
	parts := []func(context.Context) error{
		agent.Run, w.Run,
		func(ctx context.Context) error {
			return metricsserver.Serve(ctx, log, f.metricsAddr, append(w.Collectors(), agentsync.NewCollector(agent))...)
		},
		func(ctx context.Context) error { return serveSlicesStatus(ctx, f.statusAddr, status) },
	}
	return runParts(ctx, parts)
}

// runParts runs every part until ctx ends or one fails, then stops and
// waits for all; it returns the first error.
func runParts(ctx context.Context, parts []func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(parts))
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p(ctx)
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	var first error
	for err := range errs {
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}

// serveSlicesStatus serves status() as JSON on the unix socket addr until
// ctx ends; an empty addr serves nothing.
func serveSlicesStatus(ctx context.Context, addr string, status func() SlicesStatus) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	os.Remove(addr) // a socket left by a previous run
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return fmt.Errorf("listening for the status on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		json.NewEncoder(rw).Encode(status())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
		return nil
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serving the status on %s: %w", addr, err)
	}
}
