package localmesh

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/hubbletest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/node"
)

// hubbleEnv is the policy environment with every cluster's node-1 agent
// observing, and a relay of the whole mesh that found them through east's
// peer service.
type hubbleEnv struct {
	*policyEnv
	relaySock  string
	cli        *hubbletest.CLI
	exportFile string // east-node-1's export of denied flows
}

// exportConfig exports east-node-1's drops and policy verdicts, with a
// field mask.
const exportConfig = `flowLogs:
- name: denied
  filePath: %s
  includeFilters:
  - verdict: [DROPPED]
  fieldMask: [time, verdict, drop_reason_desc, source.cluster_name, source.pod_name, destination.pod_name, event_type]
`

func startHubbleEnv(t *testing.T) *hubbleEnv {
	cli := hubbletest.Require(t)
	dir := t.TempDir()
	e := &hubbleEnv{cli: cli, exportFile: filepath.Join(dir, "denied.log")}
	if err := os.WriteFile(filepath.Join(dir, "export.yaml"), fmt.Appendf(nil, exportConfig, e.exportFile), 0o644); err != nil {
		t.Fatal(err)
	}
	e.policyEnv = startPolicyEnvWith(t, true, func(name string, cfg *node.Config) {
		if name == "east-node-1" {
			cfg.Hubble.FlowLogsConfig = filepath.Join(dir, "export.yaml")
		}
	})
	waitObserving(t, e.policyEnv)
	e.relaySock = filepath.Join(t.TempDir(), "relay.sock")
	stop, err := e.mesh.StartRelay(context.Background(), "east", e.relaySock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	return e
}

// waitObserving waits until the node-1 agents of west and north observe
// their frontend-1, before the traffic.
func waitObserving(t *testing.T, e *policyEnv) {
	t.Helper()
	for _, c := range []string{"west", "north"} {
		enf := e.mesh.Cluster(c).Agents[0].Node.Enforcer()
		testenv.WaitFor(t, 10*time.Second, c+"-node-1 observing its frontend-1", func() bool {
			for _, ep := range enf.Status().Endpoints {
				if ep.Pod == "frontend-1" && ep.State == enforcer.StateEnforcing {
					return true
				}
			}
			return false
		})
	}
}

// hubble runs the real hubble CLI against the relay and returns its
// standard output.
func (e *hubbleEnv) hubble(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := e.cli.Run(ctx, append(args, "--server", "unix://"+e.relaySock)...)
	if err != nil {
		t.Fatalf("hubble %s: %v\n%s", strings.Join(args, " "), err, out.Stderr)
	}
	return out.Stdout
}

// observe runs hubble observe -o json with args and decodes its flows.
func (e *hubbleEnv) observe(t *testing.T, args ...string) []*flowpb.Flow {
	t.Helper()
	out := e.hubble(t, append([]string{"observe", "-o", "json", "--last", "1000"}, args...)...)
	var fs []*flowpb.Flow
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r observerpb.GetFlowsResponse
		if err := protojson.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("hubble observe printed %q: %v", sc.Text(), err)
		}
		if f := r.GetFlow(); f != nil {
			fs = append(fs, f)
		}
	}
	return fs
}

// The real hubble CLI against the relay of a three-cluster mesh with real
// traffic: every cluster's agent reports what its pods did, each end named
// by cluster, namespace and pod, and operators' filters select as Hubble's.
func TestHubbleCLIAcrossTheMesh(t *testing.T) {
	e := startHubbleEnv(t)
	checkout := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), 8080)
	since := time.Now().Add(-time.Second).UTC().Format(time.RFC3339)
	for _, from := range []string{"east/frontend-1", "west/frontend-1"} {
		if err := connect(e.pods[from], checkout, 3*time.Second); err != nil {
			t.Fatalf("%s → east checkout: %v, want allowed", from, err)
		}
	}
	if err := connect(e.pods["north/frontend-1"], checkout, 300*time.Millisecond); err == nil {
		t.Fatal("north/frontend-1 → east checkout connected, want dropped")
	}

	// Through the relay: a flow reported by every cluster's agent.
	var all []*flowpb.Flow
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("hubble list nodes:\n%s\nhubble observe:\n%s", e.hubble(t, "list", "nodes"), e.hubble(t, "observe", "--last", "40"))
		}
	})
	testenv.WaitFor(t, 30*time.Second, "flows of each cluster's agent through the relay", func() bool {
		all = e.observe(t)
		nodes := map[string]bool{}
		for _, f := range all {
			nodes[f.GetNodeName()] = true
		}
		return nodes["east/node-1"] && nodes["west/node-1"] && nodes["north/node-1"]
	})
	if !sortedByTime(all) {
		t.Error("the relay's flows are not in time order")
	}

	for _, tc := range []struct {
		args []string
		want func(*flowpb.Flow) bool
		what string
	}{
		{[]string{"--verdict", "DROPPED"}, isDropOf("north", 1, 5), "drops and denied verdicts: north's SYNs"},
		{[]string{"--type", "drop"}, isDropOf("north", 1), "drop events"},
		{[]string{"--drop-reason-desc", "POLICY_DENIED"}, isDropOf("north", 1, 5), "policy denials: drops and denied verdicts"},
		{[]string{"--type", "trace:from-endpoint", "--from-cluster", "west"}, func(f *flowpb.Flow) bool {
			return f.GetNodeName() == "west/node-1" && f.GetTraceObservationPoint() == flowpb.TraceObservationPoint_FROM_ENDPOINT
		}, "west's agent saw its frontend send"},
		{[]string{"--type", "policy-verdict", "--verdict", "DROPPED"}, func(f *flowpb.Flow) bool {
			return f.GetEventType().GetType() == 5 && f.GetSource().GetClusterName() == "north"
		}, "north's denied policy verdicts"},
		{[]string{"--from-pod", "shop/frontend-1", "--from-cluster", "west"}, fromPod("west", "frontend-1"), "west's frontend"},
		{[]string{"--from-cluster", "west", "--from-cluster", "north"}, func(f *flowpb.Flow) bool {
			c := f.GetSource().GetClusterName()
			return c == "west" || c == "north"
		}, "a flag given twice ORs"},
		{[]string{"--to-port", "8080", "--not", "--from-cluster", "east"}, func(f *flowpb.Flow) bool {
			return f.GetL4().GetTCP().GetDestinationPort() == 8080 && f.GetSource().GetClusterName() != "east"
		}, "to 8080, not from east"},
		{[]string{"--pod", "shop/checkout-2", "--since", since}, func(f *flowpb.Flow) bool {
			return f.GetSource().GetPodName() == "checkout-2" || f.GetDestination().GetPodName() == "checkout-2"
		}, "checkout-2 either way, since the traffic"},
		{[]string{"--label", "app=frontend", "--namespace", "shop"}, func(f *flowpb.Flow) bool {
			return slices.Contains(f.GetSource().GetLabels(), "k8s:app=frontend") || slices.Contains(f.GetDestination().GetLabels(), "k8s:app=frontend")
		}, "frontends"},
	} {
		got := e.observe(t, tc.args...)
		if len(got) == 0 {
			t.Errorf("%s (hubble observe %s): no flows", tc.what, strings.Join(tc.args, " "))
		}
		for _, f := range got {
			if !tc.want(f) {
				t.Errorf("%s (hubble observe %s): unexpected flow %v", tc.what, strings.Join(tc.args, " "), f)
			}
		}
	}

	// The remote pod is named, on the node that saw the packet.
	// The remote pod and its workload are named, on the node that saw the
	// packet, and select with Hubble's workload filter.
	var westAtEast bool
	for _, f := range e.observe(t, "--from-workload", "Deployment/frontend", "--to-pod", "shop/checkout-2", "--node-name", "east/node-1") {
		src, dst := f.GetSource(), f.GetDestination()
		if src.GetClusterName() == "west" && src.GetPodName() == "frontend-1" && len(src.GetWorkloads()) == 1 &&
			src.GetWorkloads()[0].GetName() == "frontend" && dst.GetClusterName() == "east" &&
			len(dst.GetWorkloads()) == 1 && dst.GetWorkloads()[0].GetKind() == "StatefulSet" {
			westAtEast = true
		}
	}
	if !westAtEast {
		t.Error("east's agent did not name west's frontend-1 and its workload in its flows")
	}

	e.checkStatusAndNodes(t)
	e.checkMetricsAndExport(t)
}

// checkMetricsAndExport checks east-node-1's Hubble metrics and its export
// of denied flows: north's drop in both.
func (e *hubbleEnv) checkMetricsAndExport(t *testing.T) {
	t.Helper()
	east := e.mesh.Cluster("east").Agents[0]
	var body string
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "hubble_") {
					t.Log(l)
				}
			}
		}
	})
	testenv.WaitFor(t, 10*time.Second, "north's drop in east-node-1's metrics", func() bool {
		resp, err := http.Get("http://" + east.MetricsAddress + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.Contains(body, `hubble_drop_total{destination="shop/checkout-2",protocol="TCP",reason="POLICY_DENIED",source="north"} 2`) // its drop and policy-verdict events
	})
	for _, want := range []string{`hubble_flows_processed_total{destination="east",protocol="TCP",source="west",subtype="to-endpoint",type="Trace",verdict="FORWARDED"} 1`,
		`hubble_flows_processed_total{destination="east",protocol="TCP",source="north",subtype="",type="PolicyVerdict",verdict="DROPPED"} 1`,
		`hubble_tcp_flags_total{family="IPv4",flag="SYN"}`,
		`hubble_port_distribution_total{port="8080",protocol="TCP"}`, `hubble_lost_events_total{source="perf_event_ring_buffer"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("east-node-1's metrics lack %s", want)
		}
	}
	var lines []string
	testenv.WaitFor(t, 10*time.Second, "north's drop in east-node-1's export", func() bool {
		b, err := os.ReadFile(e.exportFile)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		return err == nil && strings.Contains(string(b), `"drop_reason_desc":"POLICY_DENIED"`)
	})
	for _, l := range lines {
		var r observerpb.GetFlowsResponse
		if err := protojson.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("export line %q: %v", l, err)
		}
		f := r.GetFlow()
		if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetSource().GetClusterName() != "north" || f.GetSource().GetPodName() != "frontend-1" ||
			f.GetIP() != nil || r.GetNodeName() != "east/node-1" {
			t.Errorf("export line %s: want north's drop, masked, from east/node-1", l)
		}
	}
}

// checkStatusAndNodes checks hubble status and hubble list nodes on the
// relay: every agent connected, node-2 of each cluster (no agent)
// unavailable.
func (e *hubbleEnv) checkStatusAndNodes(t *testing.T) {
	t.Helper()
	status := e.hubble(t, "status")
	if !strings.Contains(status, "Connected Nodes: 3/6") || !strings.Contains(status, "Unavailable Nodes: 3") {
		t.Errorf("hubble status:\n%s", status)
	}
	out := e.hubble(t, "list", "nodes", "-o", "json")
	var nodes []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("hubble list nodes -o json: %v\n%s", err, out)
	}
	states := map[string]string{}
	for _, n := range nodes {
		states[n.Name] = n.State
	}
	for _, c := range []string{"east", "west", "north"} {
		if states[c+"/node-1"] != "NODE_CONNECTED" || states[c+"/node-2"] != "NODE_UNAVAILABLE" {
			t.Errorf("hubble list nodes: %v", states)
			break
		}
	}
}

// isDropOf matches flows of the denied connection from cluster to
// checkout-2 whose event type is one of types (1 drop, 5 policy verdict).
func isDropOf(cluster string, types ...int32) func(*flowpb.Flow) bool {
	return func(f *flowpb.Flow) bool {
		t := f.GetEventType().GetType()
		return f.GetVerdict() == flowpb.Verdict_DROPPED && slices.Contains(types, t) &&
			(t != 1 || f.GetDropReasonDesc() == flowpb.DropReason_POLICY_DENIED) &&
			f.GetSource().GetClusterName() == cluster && f.GetDestination().GetPodName() == "checkout-2"
	}
}

func fromPod(cluster, pod string) func(*flowpb.Flow) bool {
	return func(f *flowpb.Flow) bool {
		return f.GetSource().GetClusterName() == cluster && f.GetSource().GetPodName() == pod
	}
}

func sortedByTime(fs []*flowpb.Flow) bool {
	return slices.IsSortedFunc(fs, func(a, b *flowpb.Flow) int { return a.GetTime().AsTime().Compare(b.GetTime().AsTime()) })
}
