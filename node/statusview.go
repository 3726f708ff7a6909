package node

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/wireguard"
)

// PrintStatus renders a node agent's status as tables — remotes, global
// services, encryption, policy — or as JSON with asJSON (the JSON of
// Status, as the agent serves it).
func PrintStatus(w io.Writer, full Status, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(full)
	}
	st := full.Status
	fmt.Fprintf(w, "Cluster %s (id %d), datapath %s\n\n", st.Cluster, st.ClusterID, st.Datapath)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REMOTE\tID\tCONNECTED\tREADY\tNODES\tENDPOINTS\tIDENTITIES\tSERVICES\tLAST EVENT\tFAILURES\tREJECTED\tLAST ERROR")
	for _, r := range st.Remotes {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%s\n", remoteName(r), r.ClusterID, yesNo(r.Connected), readiness(r),
			r.Nodes, r.Endpoints, r.Identities, r.Services, age(r.LastEvent), r.Failures, r.RejectedTotal(), lastError(r))
	}
	if len(st.Remotes) == 0 {
		fmt.Fprintln(tw, "(no remote cluster configured)")
	}
	if l := st.Local; l != nil {
		fmt.Fprintf(tw, "%s (local)\t%d\t%s\t%s\t-\t%d\t%d\t-\t%s\t%d\t%d\t%s\n", l.Name, l.ClusterID, yesNo(l.Connected), readiness(*l),
			l.Endpoints, l.Identities, age(l.LastEvent), l.Failures, l.RejectedTotal(), lastError(*l))
	}
	tw.Flush()
	printRemoteWarnings(w, st)
	fmt.Fprintln(w)
	PrintServices(w, st)
	if st.DatapathErrors > 0 {
		fmt.Fprintf(w, "warning: %d datapath writes failed; last: %s\n", st.DatapathErrors, st.LastDatapathError)
	}
	fmt.Fprintln(w)
	printWireGuard(w, full.WireGuard)
	printPolicy(w, full.Policy)
	printKubernetesPolicy(w, full.KubernetesPolicy)
	printHubble(w, full.Hubble)
	return nil
}

// printKubernetesPolicy renders the cluster's policy objects, and the
// invalid ones.
func printKubernetesPolicy(w io.Writer, k *k8spolicy.Status) {
	if k == nil {
		return
	}
	cnp := "CiliumNetworkPolicies not served by the cluster"
	if k.CiliumNetworkPolicies {
		cnp = "NetworkPolicies and CiliumNetworkPolicies"
	}
	synced := "synced"
	if !k.Synced {
		synced = "not synced yet (the policy map waits for it)"
	}
	fmt.Fprintf(w, "  from Kubernetes (%s): %s, %d objects, %d enforced, %d rules\n", cnp, synced, k.Objects, k.Enforced, k.Rules)
	for _, o := range k.Invalid {
		kept := "contributes nothing"
		if o.PreviousEnforced {
			kept = "its last valid version is enforced"
		}
		fmt.Fprintf(w, "  invalid %s %s/%s (%s): %s\n", o.Kind, o.Namespace, o.Name, kept, o.Error)
	}
}

// printHubble renders the flow server's line.
func printHubble(w io.Writer, h *HubbleStatus) {
	if h == nil {
		fmt.Fprintln(w, "Flows: off (needs the eBPF datapath, --enable-hubble and --node-name)")
		return
	}
	where := h.Socket
	if h.Address != "" {
		where = strings.TrimPrefix(where+" and "+h.Address, " and ")
	}
	fmt.Fprintf(w, "Flows: served on %s; %d seen, ring %d/%d, %d observers following, lost %d (datapath) %d (slow observers)\n",
		orDash(where), h.Flows, h.Kept, h.Capacity, h.Subscribers, h.LostDatapath, h.LostSubscriber)
	if h.Export == nil {
		return
	}
	if h.Export.ConfigError != "" {
		fmt.Fprintf(w, "warning: flow export: %s (the last valid exporters keep running)\n", h.Export.ConfigError)
	}
	for _, e := range h.Export.Exporters {
		fmt.Fprintf(w, "Flow export %s: %s, %d flows written, %d lost, %d write errors %s\n",
			e.Name, e.FilePath, e.FlowsWritten, e.LostEvents, e.WriteErrors, e.LastError)
	}
}

// printPolicy renders the policy line, and the node's endpoints that are
// not enforced as they should be.
func printPolicy(w io.Writer, p *enforcer.Status) {
	if p == nil {
		fmt.Fprintln(w, "Policy: off (no --policy-dir)")
		return
	}
	states := map[string]int{}
	for _, ep := range p.Endpoints {
		states[ep.State]++
	}
	enforcing := "not yet written (waiting for the first full sync)"
	if p.Enforcing {
		enforcing = "enforcing"
	}
	fmt.Fprintf(w, "Policy: %s, %d rules, %d entries, %d identities; endpoints of this node: %d enforcing of %d\n",
		enforcing, p.Rules, p.PolicyEntries, p.Identities, states[enforcer.StateEnforcing], len(p.Endpoints))
	if p.LastPolicyError != "" {
		fmt.Fprintf(w, "  invalid policy (the last valid set is enforced): %s\n", p.LastPolicyError)
	}
	if n := len(p.RetainedClusters); n > 0 {
		ids := make([]string, n)
		for i, id := range p.RetainedClusters {
			ids[i] = fmt.Sprint(id)
		}
		fmt.Fprintf(w, "  previous run's entries kept for %d cluster(s) not synced since the restart (ids %s)\n", n, strings.Join(ids, ", "))
	}
	for _, ep := range p.Endpoints {
		if ep.State != enforcer.StateEnforcing {
			fmt.Fprintf(w, "  %s/%s (%s): %s %s\n", ep.Namespace, ep.Pod, orDash(ep.Interface), ep.State, ep.Error)
		}
	}
	printL7(w, p)
}

// printL7 renders the L7 side of the policy: the redirected entries and
// each endpoint's redirects, what waits for a proxy (dropped: fail closed),
// the FQDN-selected addresses.
func printL7(w io.Writer, p *enforcer.Status) {
	if p.RedirectedEntries == 0 && p.FQDNPatterns == 0 && p.RedirectsWaiting == 0 {
		return
	}
	fmt.Fprintf(w, "L7: %d entries redirected to the proxy; toFQDNs: %d patterns holding %d addresses\n",
		p.RedirectedEntries, p.FQDNPatterns, p.FQDNAddresses)
	for _, ep := range p.Endpoints {
		for _, r := range ep.Redirects {
			port := fmt.Sprintf("proxy port %d", r.ProxyPort)
			if r.ProxyPort == 0 {
				port = "no proxy listening: dropped (fail closed)"
			}
			fmt.Fprintf(w, "  %s/%s %s %s %s (%s): %s, %d peer(s)\n", ep.Namespace, ep.Pod, r.Direction, r.Protocol, r.Ports, r.Parser, port, r.Peers)
		}
	}
	if p.RedirectsWaiting > 0 {
		fmt.Fprintf(w, "  warning: %d redirected entries wait for a proxy listener, their traffic is dropped; last error: %s\n",
			p.RedirectsWaiting, orDash(p.LastProxyError))
	}
	if p.FQDNRefused > 0 {
		fmt.Fprintf(w, "  warning: %d FQDN addresses refused (over the node's limit)\n", p.FQDNRefused)
	}
	if p.LastFQDNError != "" {
		fmt.Fprintf(w, "  last FQDN error: %s\n", p.LastFQDNError)
	}
}

// printWireGuard renders the WireGuard section: the device, its key, its
// peers' handshakes and bytes per remote cluster, rejected peers.
func printWireGuard(w io.Writer, wg *wireguard.Status) {
	if wg == nil {
		fmt.Fprintln(w, "Encryption: off (WireGuard not enabled)")
		return
	}
	if !wg.Enabled {
		fmt.Fprintf(w, "Encryption: WireGuard, device %s not running: %s\n", orDash(wg.Device), orDash(wg.LastError))
		return
	}
	fmt.Fprintf(w, "Encryption: WireGuard on (%s), device %s, port %d, MTU %d (underlay %d), node encryption %s\n",
		wg.Implementation, wg.Device, wg.ListenPort, wg.MTU, wg.UnderlayMTU, onOff(wg.NodeEncryption))
	rotated := ""
	if !wg.KeyRotatedAt.IsZero() {
		rotated = ", rotated " + age(wg.KeyRotatedAt)
	}
	fmt.Fprintf(w, "Public key: %s%s\n", wg.PublicKey, rotated)
	fmt.Fprintf(w, "Peers: %d, sent %s, received %s\n\n", wg.Peers, bytesIEC(wg.BytesSent), bytesIEC(wg.BytesReceived))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WIREGUARD PEERS\tPEERS\tOLDEST HANDSHAKE\tLATEST HANDSHAKE\tNO HANDSHAKE YET\tSENT\tRECEIVED")
	for _, c := range wg.Clusters {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%s\n", c.Cluster, c.Peers, age(c.OldestHandshake), age(c.LatestHandshake),
			c.PeersWithoutHandshake, bytesIEC(c.BytesSent), bytesIEC(c.BytesReceived))
	}
	if len(wg.Clusters) == 0 {
		fmt.Fprintln(tw, "(no peer)")
	}
	tw.Flush()
	for _, r := range wg.Rejected {
		fmt.Fprintf(w, "warning: WireGuard peer %s/%s rejected: %s\n", r.Cluster, r.Node, r.Reason)
	}
	if wg.LastError != "" {
		fmt.Fprintf(w, "warning: WireGuard: %s\n", wg.LastError)
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// bytesIEC renders a byte count: 512 B, 1.5 KiB, 17.0 MiB.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// PrintServices renders the global services: per frontend the affinity,
// local and remote backends (healthy/total, per cluster), what the
// selection took, and every warning and ignored annotation.
func PrintServices(w io.Writer, st agentsync.Status) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GLOBAL SERVICE\tFRONTEND\tAFFINITY\tLOCAL (healthy/total)\tREMOTE BACKENDS (healthy/total)\tSELECTED")
	for _, s := range st.Services {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%d/%d\t%s\t%d from %s\n", s.Namespace, s.Name, orDash(s.Frontend), orDash(s.Affinity),
			s.LocalHealthy, s.LocalTotal, remoteCounts(s), s.Selected, s.SelectedFrom)
	}
	if len(st.Services) == 0 {
		fmt.Fprintln(tw, "(no global service)")
	}
	tw.Flush()
	for _, s := range st.Services {
		if s.Warning != "" {
			fmt.Fprintf(w, "warning: %s/%s %s: %s\n", s.Namespace, s.Name, orDash(s.Frontend), s.Warning)
		}
		for _, a := range s.Annotations {
			fmt.Fprintf(w, "annotation ignored: %s/%s: %s\n", s.Namespace, s.Name, a)
		}
	}
}

// remoteCounts is "6 (north=3/3 west=2/3)": healthy of total per cluster.
func remoteCounts(s agentsync.ServiceStatus) string {
	if len(s.Remote) == 0 {
		return "0"
	}
	names := make([]string, 0, len(s.Remote))
	for c := range s.Remote {
		names = append(names, c)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, c := range names {
		healthy, ok := s.RemoteHealthy[c]
		if !ok {
			healthy = s.Remote[c]
		}
		parts[i] = fmt.Sprintf("%s=%d/%d", c, healthy, s.Remote[c])
	}
	return fmt.Sprintf("%d (%s)", s.RemoteTotal, strings.Join(parts, " "))
}

// remoteName is the remote's name, marked "(via cache)" when the agent
// reads it through its cluster's kvstoremesh cache, "(local view)" when it
// is its own cluster read from its apiserver's local view.
func remoteName(r agentsync.RemoteStatus) string {
	switch {
	case r.ViaCache != nil:
		return r.Name + " (via cache)"
	case r.LocalView:
		return r.Name + " (local view)"
	}
	return r.Name
}

func readiness(r agentsync.RemoteStatus) string {
	if r.Ready {
		return "yes"
	}
	var synced []string
	for k, ok := range r.Synced {
		if ok {
			synced = append(synced, k)
		}
	}
	sort.Strings(synced)
	if len(synced) == 0 {
		return "no"
	}
	return "no (synced: " + strings.Join(synced, ",") + ")"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Millisecond).String() + " ago"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// lastError is a remote's last error with its age, so that an error a
// ready remote recovered from reads as past ("12m ago: ...").
func lastError(r agentsync.RemoteStatus) string {
	if vc := r.ViaCache; vc != nil && vc.CacheDown {
		return "the cache is down: its last word on this remote was " + age(vc.Updated)
	}
	if r.LastError == "" {
		return ""
	}
	if r.LastErrorTime.IsZero() {
		return truncate(r.LastError, 70)
	}
	return age(r.LastErrorTime) + ": " + truncate(r.LastError, 60)
}

// printRemoteWarnings says what a remote published that is not in force,
// what it is over its limits, and what a previous run left in place.
func printRemoteWarnings(w io.Writer, st agentsync.Status) {
	for _, r := range st.Remotes {
		if nf := r.NotInForce; nf.Total() > 0 {
			fmt.Fprintf(w, "warning: %s publishes entries it does not own, not in force: %d ipcache entries outside its nodes' ranges, %d inside a range another cluster claimed first, %d service backends outside its nodes' ranges\n",
				r.Name, nf.IPCacheOutside, nf.IPCacheClaimed, nf.BackendsOutside)
		}
		for _, u := range r.Unsupported {
			fmt.Fprintf(w, "warning: %s publishes %s, which this agent does not read: %s\n", r.Name, u.Kind, u.Reason)
		}
		for _, l := range r.OverLimit {
			fmt.Fprintf(w, "warning: %s is over its %s limit (%s): %d new entries refused; raise %s if the remote is right\n",
				r.Name, l.Kind, l.Limit, l.Refused, l.Flag)
		}
		for _, s := range r.Withdrawn {
			fmt.Fprintf(w, "warning: %s: the last update of service %s was refused (%s): its backends from %s are withdrawn until a valid one comes\n",
				r.Name, s.Service, s.Reason, r.Name)
		}
		for kind, n := range r.StaleKeys {
			fmt.Fprintf(w, "warning: %s: %d %s entries keep their previous value: their last update was refused\n", r.Name, n, kind)
		}
	}
	if rt := st.Retained; rt != nil {
		fmt.Fprintf(w, "kept from the previous run until their clusters sync: %d ipcache entries, %d service backends (cluster ids %v; waiting for %s)\n",
			rt.IPCache, rt.Backends, rt.Clusters, strings.Join(rt.WaitingFor, ", "))
	}
}
