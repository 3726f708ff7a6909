package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/metricsserver"
	"github.com/clustermesh/clustermesh/internal/unixsock"
	"github.com/clustermesh/clustermesh/k8smcs"
	"github.com/clustermesh/clustermesh/k8sslices"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/merge"
	"github.com/clustermesh/clustermesh/statesource"
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
	mcs                                             bool
	clusterSetIPRange, mcsLeaseName                 string
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
	fl.BoolVar(&f.mcs, "mcs", true, "also run the MCS API controller (ServiceImports, derived Services, ServiceExport conditions) where the cluster serves the MCS CRDs")
	fl.StringVar(&f.clusterSetIPRange, "clusterset-ip-range", "", "CIDR the ClusterSetIPs of ServiceImports are allocated from (a ServiceCIDR of it is created); empty: Kubernetes allocates them from its service range")
	fl.StringVar(&f.mcsLeaseName, "mcs-lease-name", k8smcs.DefaultLeaseName, "the Lease the MCS controllers of the cluster share")
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
	if st.MCS != nil {
		printMCSStatus(out, st.MCS, st.Writer)
	}
}

// printMCSStatus prints the MCS controller's lines: itself, each remote's
// exports, each import (with its derived Service's slices) and conflict.
func printMCSStatus(out io.Writer, m *k8smcs.Status, w k8sslices.Status) {
	role := "standby"
	if m.Leader {
		role = "leader"
	}
	fmt.Fprintf(out, "mcs %s: %s (lease held by %s), ClusterSetIP range %s: %d imports, %d writes, %d write errors\n",
		m.Identity, role, cmp.Or(m.Holder, "nobody"), cmp.Or(m.ClusterSetIPRange, "Kubernetes'"), len(m.Imports), m.Writes, m.WriteErrors)
	if m.LastError != "" {
		fmt.Fprintf(out, "  last error: %s\n", m.LastError)
	}
	for _, r := range m.Remotes {
		state := "disconnected"
		switch {
		case r.Connected && !r.Enabled:
			state = "connected, exports nothing (no serviceExportsEnabled)"
		case r.Synced:
			state = "connected, synced"
		case r.Connected:
			state = "connected, syncing"
		}
		fmt.Fprintf(out, "mcs remote %s: %s, %d exports\n", r.Name, state, r.Exports)
		if r.LastError != "" && !r.Synced {
			fmt.Fprintf(out, "  last error: %s\n", r.LastError)
		}
	}
	for _, im := range m.Imports {
		ips := "headless"
		if len(im.IPs) > 0 {
			ips = strings.Join(im.IPs, ", ")
		}
		endpoints, nslices := 0, 0
		for _, s := range w.Services {
			if s.Namespace == im.Namespace && s.Name == im.Derived {
				for _, sl := range s.Slices {
					endpoints, nslices = endpoints+sl.Endpoints, nslices+1
				}
			}
		}
		fmt.Fprintf(out, "import %s/%s: %s %s, ports %s, clusters %s (oldest export: %s); service %s: %d remote endpoints in %d slices\n",
			im.Namespace, im.Name, im.Type, ips, im.Ports, strings.Join(im.Clusters, ", "), im.Winner, im.Derived, endpoints, nslices)
		for _, c := range slices.Sorted(maps.Keys(im.Conflicts)) {
			fmt.Fprintf(out, "  conflict %s: %s: %s\n", c, im.Conflicts[c].Reason, im.Conflicts[c].Message)
		}
	}
}

// The request rate limit of 'clustermesh slices' (client-go's default, 5
// per second, made each MCS import wait about 200 ms per write).
const (
	slicesQPS   = 50
	slicesBurst = 100
)

// SlicesStatus is what 'clustermesh slices' serves on --status-addr.
type SlicesStatus struct {
	Writer  k8sslices.Status         `json:"writer"`
	Remotes []agentsync.RemoteStatus `json:"remotes"`
	// MCS is the MCS API controller's, when it runs.
	MCS *k8smcs.Status `json:"mcs,omitempty"`
}

func (f *slicesFlags) run(ctx context.Context, log *slog.Logger) error {
	client, err := newKubeClientRate(f.kubeconfig, f.kubeContext, slicesQPS, slicesBurst)
	if err != nil {
		return err
	}
	mcs, err := f.newMCS(client, log)
	if err != nil {
		return err
	}
	var local statesource.Source = &k8ssource.Source{Client: client, Logger: log}
	if mcs != nil {
		local = mcs.Tee(local)
	}
	var w *k8sslices.Writer
	agent, err := agentsync.New(agentsync.Config{
		ClusterName: f.clusterName, ClusterID: f.clusterID, ConfigDir: f.configDir,
		LocalSource: local, Datapath: datapath.NewMemory(),
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
	status := func() SlicesStatus {
		st := SlicesStatus{Writer: w.Status(), Remotes: agent.Status().Remotes}
		if mcs != nil {
			m := mcs.Status()
			st.MCS = &m
		}
		return st
	}
	collectors := append(w.Collectors(), agentsync.NewCollector(agent))
	parts := []func(context.Context) error{agent.Run, w.Run,
		func(ctx context.Context) error { return serveSlicesStatus(ctx, f.statusAddr, status) }}
	if mcs != nil {
		collectors = append(collectors, mcs.Collectors()...)
		parts = append(parts, mcs.Run)
	}
	parts = append(parts, func(ctx context.Context) error { return metricsserver.Serve(ctx, log, f.metricsAddr, collectors...) })
	return runParts(ctx, parts)
}

// newMCS returns the MCS API controller, or nil when --mcs=false or the
// cluster does not serve the MCS CRDs (logged).
func (f *slicesFlags) newMCS(client kubernetes.Interface, log *slog.Logger) (*k8smcs.Controller, error) {
	if !f.mcs {
		return nil, nil
	}
	var r netip.Prefix
	if f.clusterSetIPRange != "" {
		var err error
		if r, err = netip.ParsePrefix(f.clusterSetIPRange); err != nil {
			return nil, fmt.Errorf("--clusterset-ip-range %q: want a CIDR such as 10.96.128.0/20: %w", f.clusterSetIPRange, err)
		}
	}
	p, ok := client.(k8ssource.MCSClientProvider)
	if !ok {
		return nil, errors.New("the MCS controller: the Kubernetes client does not reach the MCS API")
	}
	if _, err := client.Discovery().ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String()); err != nil {
		log.Warn("the cluster does not serve the MCS API's CRDs (clustermesh enable installs them): the MCS controller does not run", "error", err)
		return nil, nil
	}
	return k8smcs.New(k8smcs.Config{ClusterName: f.clusterName, Client: client, MCS: p.MCS(), ConfigDir: f.configDir,
		ClusterSetIPRange: r, LeaseNamespace: kubeNamespace(f.namespace), LeaseName: f.mcsLeaseName, Identity: f.identity,
		Coalesce: f.coalesce, Logger: log})
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
	ln, err := unixsock.Listen(addr, 0o660)
	if err != nil {
		return fmt.Errorf("serving the status: %w", err)
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
