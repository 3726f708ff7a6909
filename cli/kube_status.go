package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/kubemesh"
)

// runKubeStatus prints the status of context's cluster; with wait, it waits
// until the cluster is ready or timeout passes, saying on progress what it
// still waits for.
func runKubeStatus(ctx context.Context, kf *kubeFlags, kubeContext, ns string, wait bool, timeout time.Duration, asJSON bool, out, progress io.Writer) error {
	st, err := kubemesh.ReadStatus(ctx, kubemesh.StatusOptions{
		Kubeconfig: kf.kubeconfig, Context: kubeContext, Namespace: ns, Wait: wait, Timeout: timeout,
		OnWaiting: func(why string) { fmt.Fprintf(progress, "waiting: %s\n", why) },
	})
	if err != nil && !errors.Is(err, kubemesh.ErrNotReady) {
		return err
	}
	if perr := printKubeStatus(out, st, asJSON); err == nil {
		err = perr
	}
	return err
}

// printKubeStatus writes st as a table or as JSON.
func printKubeStatus(w io.Writer, st kubemesh.Status, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(w, "Cluster %s (id %d), context %s, namespace %s\n", st.Cluster, st.ClusterID, st.Context, st.Namespace)
	fmt.Fprintf(w, "apiserver:  %d/%d ready, service %s, endpoint %s\n", st.ReadyReplicas, st.DesiredReplicas, orDashS(st.ServiceType), orDashS(st.Endpoint))
	fmt.Fprintf(w, "peers:      %s (may read this cluster)\n", orNone(st.Peers))
	names := slices.Sorted(maps.Keys(st.Remotes))
	if len(names) == 0 {
		fmt.Fprintln(w, "remotes:    none")
	}
	for i, n := range names {
		label := "remotes:   "
		if i > 0 {
			label = "           "
		}
		fmt.Fprintf(w, "%s %s at %s\n", label, n, st.Remotes[n])
	}
	if len(st.TrustedCAs) > 0 {
		fmt.Fprintf(w, "trusts:     the CAs of %s (left by an earlier connect --allow-mismatching-ca: run connect again to take it back)\n", strings.Join(st.TrustedCAs, ", "))
	}
	printAgents(w, st.Agents)
	printSlicesAndImports(w, st)
	if st.Ready {
		fmt.Fprintln(w, "ready")
	} else {
		fmt.Fprintf(w, "not ready: %s\n", strings.Join(st.Waiting, "; "))
	}
	return nil
}

func orDashS(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printAgents writes what the agents report.
func printAgents(w io.Writer, a kubemesh.AgentsSummary) {
	if a.Error != "" {
		fmt.Fprintf(w, "agents:     unknown: %s\n", a.Error)
		return
	}
	stale := ""
	if len(a.Stale) > 0 {
		stale = fmt.Sprintf(", %d stale (not renewed: %s)", len(a.Stale), strings.Join(a.Stale, ", "))
	}
	if a.Reporting == 0 {
		fmt.Fprintf(w, "agents:     none reporting%s (agents run with --state-source kubernetes report here)\n", stale)
		return
	}
	f := func(s kubemesh.Spread) string { return fmt.Sprintf("%d/%.1f/%d", s.Min, s.Avg, s.Max) }
	fmt.Fprintf(w, "agents:     %d reporting%s\n", a.Reporting, stale)
	fmt.Fprintf(w, "            remotes per agent (min/avg/max): configured %s, connected %s, synced %s\n",
		f(a.Configured), f(a.Connected), f(a.Synced))
	for _, r := range a.PerRemote {
		fmt.Fprintf(w, "            %s: connected on %d/%d agents, synced on %d", r.Name, r.Connected, a.Reporting, r.Synced)
		if r.LastError != "" {
			fmt.Fprintf(w, "; last error on %s: %s", r.ErrorNode, r.LastError)
		}
		fmt.Fprintln(w)
	}
	for i, s := range a.Services {
		label := "services:  "
		if i > 0 {
			label = "           "
		}
		fmt.Fprintf(w, "%s %s/%s: remote backends min %d, max %d across %d agents\n", label, s.Namespace, s.Name, s.Min, s.Max, s.Agents)
	}
}

// printSlicesAndImports writes the slices of remote backends per service,
// the ServiceImports and the exports in conflict.
func printSlicesAndImports(w io.Writer, st kubemesh.Status) {
	if st.SlicesError != "" {
		fmt.Fprintf(w, "slices:     unknown: %s\n", st.SlicesError)
		return
	}
	for i, s := range st.Slices {
		fmt.Fprintf(w, "%s %s/%s: %d endpoints in %d slices (%s)\n", label(i, "slices:    "), s.Namespace, s.Name, s.Endpoints, s.Slices, strings.Join(s.Clusters, ", "))
	}
	for i, im := range st.Imports {
		ips := "headless"
		if len(im.IPs) > 0 {
			ips = strings.Join(im.IPs, ", ")
		}
		fmt.Fprintf(w, "%s %s/%s: %s %s, clusters %s; %d remote endpoints in %d slices\n", label(i, "imports:   "),
			im.Namespace, im.Name, im.Type, ips, orNone(im.Clusters), im.Endpoints, im.Slices)
	}
	for i, c := range st.ExportConflicts {
		fmt.Fprintf(w, "%s export %s/%s: %s: %s\n", label(i, "conflicts: "), c.Namespace, c.Name, c.Reason, c.Message)
	}
}

// label is l on a list's first line, blanks after.
func label(i int, l string) string {
	if i == 0 {
		return l
	}
	return strings.Repeat(" ", len(l))
}
