// Package flowmetrics owns Hubble's flow metrics: which ones an operator
// enables and with which labels (Hubble's option syntax, parsed by Parse), and
// the Prometheus counters they feed from every *flowpb.Flow the agent reads
// (Metrics.Observe). The metric names, label names and label values are
// Hubble's (cilium v1.20.2, pkg/hubble/metrics), so Hubble's dashboards and
// alert rules work unchanged; the context "cluster" and the labels
// source_cluster and destination_cluster are ours, for the mesh.
//
// A spec enables one metric: its name, then optionally ':' and options
// separated by ';', each option name=value:
//
//	drop:sourceContext=namespace|pod;destinationContext=identity;labelsContext=source_namespace,destination_namespace
//
// Contexts (sourceContext, destinationContext, and their Egress and Ingress
// variants, which win for flows of that direction) take identifiers
// separated by '|': the first that gives a non-empty value for a flow is the
// label's value. labelsContext takes label names separated by ','.
package flowmetrics

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The errors Parse wraps; errors.Is tells them apart.
var (
	// ErrUnknownMetric: the spec names a metric this package does not offer.
	ErrUnknownMetric = errors.New("unknown metric")
	// ErrDuplicateMetric: a metric is enabled twice.
	ErrDuplicateMetric = errors.New("metric enabled twice")
	// ErrUnknownOption: an option other than the contexts and labelsContext.
	ErrUnknownOption = errors.New("unknown option")
	// ErrDuplicateOption: an option given twice in one spec.
	ErrDuplicateOption = errors.New("option given twice")
	// ErrUnknownContext: a context identifier Hubble (or the mesh) does not define.
	ErrUnknownContext = errors.New("unknown context")
	// ErrUnknownLabel: a labelsContext label Hubble (or the mesh) does not define.
	ErrUnknownLabel = errors.New("unknown labelsContext label")
	// ErrEmptyValue: an option without a value (sourceContext=).
	ErrEmptyValue = errors.New("option without a value")
	// ErrInvalidValue: an option's value is not one it takes.
	ErrInvalidValue = errors.New("invalid option value")
)

// Metric names, as Hubble's --hubble-metrics takes them.
const (
	MetricFlow             = "flow"              // hubble_flows_processed_total
	MetricDrop             = "drop"              // hubble_drop_total
	MetricTCP              = "tcp"               // hubble_tcp_flags_total
	MetricPortDistribution = "port-distribution" // hubble_port_distribution_total
	MetricICMP             = "icmp"              // hubble_icmp_total
	// MetricHTTP: hubble_http_requests_total, hubble_http_responses_total
	// and hubble_http_request_duration_seconds, from L7 HTTP flows.
	MetricHTTP = "http"
	// MetricHTTPV2: Hubble's httpV2: hubble_http_requests_total (counted
	// on responses, with their status) and the duration histogram, the
	// source being the client.
	MetricHTTPV2 = "httpV2"
	// MetricDNS: hubble_dns_queries_total, hubble_dns_responses_total and
	// hubble_dns_response_types_total, from L7 DNS flows.
	MetricDNS = "dns"
)

var metricNames = []string{MetricFlow, MetricDrop, MetricTCP, MetricPortDistribution, MetricICMP, MetricHTTP, MetricHTTPV2, MetricDNS}

// Context is how a flow's source or destination is named in a label.
type Context uint8

// The context identifiers of Hubble's pkg/hubble/metrics/api/context.go, and
// ContextCluster of ours.
const (
	ContextIdentity         Context = iota + 1 // the identity's labels, joined by ','
	ContextNamespace                           // the namespace
	ContextPod                                 // namespace/pod-name (pod-name without a namespace)
	ContextPodName                             // the pod's name
	ContextDNS                                 // the flow's source or destination names, joined by ','
	ContextIP                                  // the IP address
	ContextReservedIdentity                    // reserved:kube-apiserver if present, else the first reserved: label
	ContextWorkload                            // namespace/workload-name
	ContextWorkloadName                        // the first workload's name
	ContextApp                                 // the app.kubernetes.io/name, k8s-app or app label's value
	ContextCluster                             // the cluster's name (ours)
)

var contextNames = [...]string{
	ContextIdentity: "identity", ContextNamespace: "namespace", ContextPod: "pod", ContextPodName: "pod-name",
	ContextDNS: "dns", ContextIP: "ip", ContextReservedIdentity: "reserved-identity", ContextWorkload: "workload",
	ContextWorkloadName: "workload-name", ContextApp: "app", ContextCluster: "cluster",
}

// String returns the identifier as a spec writes it.
func (c Context) String() string {
	if int(c) < len(contextNames) && contextNames[c] != "" {
		return contextNames[c]
	}
	return fmt.Sprintf("Context(%d)", uint8(c))
}

// labelNames are the labelsContext labels, in the order their labels appear
// (Hubble's order, with our cluster labels after each side's app label).
var labelNames = []string{
	"source_ip", "source_pod", "source_namespace", "source_workload", "source_workload_kind", "source_app",
	"source_cluster",
	"destination_ip", "destination_pod", "destination_namespace", "destination_workload",
	"destination_workload_kind", "destination_app", "destination_cluster",
	"traffic_direction",
}

// Config is the set of enabled metrics, in the order the specs gave them.
type Config struct {
	Metrics []MetricConfig
}

// MetricConfig is one enabled metric and its labels.
type MetricConfig struct {
	Name    string // MetricFlow, MetricDrop, ...
	Context ContextOptions
	// Exemplars (http, httpV2: exemplars=true) attaches the flow's trace
	// id to its observations, shown when /metrics is read as OpenMetrics.
	Exemplars bool
	// Query (dns: query) adds the query name as a label.
	Query bool
	// IgnoreAAAA (dns: ignoreAAAA) skips flows whose only query type is
	// AAAA.
	IgnoreAAAA bool
}

// ContextOptions are a metric's context labels. An Egress or Ingress list,
// when set, replaces Source or Destination for flows of that direction.
type ContextOptions struct {
	Source, SourceEgress, SourceIngress                []Context
	Destination, DestinationEgress, DestinationIngress []Context
	// Labels are labelsContext's labels, in labelNames order.
	Labels []string
}

// Parse reads one spec per enabled metric (Hubble's --hubble-metrics, split
// on white space).
func Parse(specs []string) (Config, error) {
	var cfg Config
	for _, spec := range specs {
		m, err := parseSpec(spec)
		if err != nil {
			return Config{}, fmt.Errorf("parsing metric spec %q: %w", spec, err)
		}
		if slices.ContainsFunc(cfg.Metrics, func(o MetricConfig) bool { return o.Name == m.Name }) {
			return Config{}, fmt.Errorf("parsing metric spec %q: %w: %s", spec, ErrDuplicateMetric, m.Name)
		}
		if slices.ContainsFunc(cfg.Metrics, func(o MetricConfig) bool { return httpVersions(o.Name, m.Name) }) {
			return Config{}, fmt.Errorf("parsing metric spec %q: %w: http and httpV2 are two versions of the same metrics: enable one of http and httpV2", spec, ErrDuplicateMetric)
		}
		cfg.Metrics = append(cfg.Metrics, m)
	}
	return cfg, nil
}

// httpVersions reports whether a and b are http and httpV2.
func httpVersions(a, b string) bool {
	return (a == MetricHTTP && b == MetricHTTPV2) || (a == MetricHTTPV2 && b == MetricHTTP)
}

func parseSpec(spec string) (MetricConfig, error) {
	name, opts, _ := strings.Cut(spec, ":")
	if !slices.Contains(metricNames, name) {
		return MetricConfig{}, fmt.Errorf("%w %q (one of %s)", ErrUnknownMetric, name, strings.Join(metricNames, ", "))
	}
	m := MetricConfig{Name: name}
	seen := map[string]bool{}
	for opt := range strings.SplitSeq(opts, ";") {
		if opt == "" {
			continue
		}
		key, value, _ := strings.Cut(opt, "=")
		lkey := strings.ToLower(key)
		if seen[lkey] {
			return MetricConfig{}, fmt.Errorf("%w: %s", ErrDuplicateOption, key)
		}
		seen[lkey] = true
		if ok, err := m.setL7Option(lkey, value); ok || err != nil {
			if err != nil {
				return MetricConfig{}, fmt.Errorf("option %s: %w", key, err)
			}
			continue
		}
		if err := m.Context.set(lkey, value); err != nil {
			return MetricConfig{}, fmt.Errorf("option %s: %w", key, err)
		}
	}
	return m, nil
}

// setL7Option parses an option of the L7 metrics (key in lower case): true
// when key is one, with the error of its value.
func (m *MetricConfig) setL7Option(key, value string) (bool, error) {
	switch {
	case key == "exemplars" && (m.Name == MetricHTTP || m.Name == MetricHTTPV2):
		switch value {
		case "true":
			m.Exemplars = true
		case "false":
		default:
			return true, fmt.Errorf("%w %q: exemplars takes true or false", ErrInvalidValue, value)
		}
		return true, nil
	case key == "query" && m.Name == MetricDNS:
		m.Query = true
		return true, nil
	case key == "ignoreaaaa" && m.Name == MetricDNS:
		m.IgnoreAAAA = true
		return true, nil
	}
	return false, nil
}

// set parses one option; key is lower case.
func (o *ContextOptions) set(key, value string) error {
	if key == "labelscontext" {
		ls, err := parseLabels(value)
		o.Labels = ls
		return err
	}
	dst := map[string]*[]Context{
		"sourcecontext": &o.Source, "sourceegresscontext": &o.SourceEgress, "sourceingresscontext": &o.SourceIngress,
		"destinationcontext": &o.Destination, "destinationegresscontext": &o.DestinationEgress,
		"destinationingresscontext": &o.DestinationIngress,
	}[key]
	if dst == nil {
		return fmt.Errorf("%w (sourceContext, destinationContext, their Egress and Ingress variants, labelsContext)", ErrUnknownOption)
	}
	cs, err := parseContexts(value)
	*dst = cs
	return err
}

func parseContexts(value string) ([]Context, error) {
	var cs []Context
	for v := range strings.SplitSeq(value, "|") {
		if v == "" {
			continue
		}
		i := slices.Index(contextNames[:], strings.ToLower(v))
		if i <= 0 {
			return nil, fmt.Errorf("%w %q (one of %s)", ErrUnknownContext, v, strings.Join(contextNames[1:], ", "))
		}
		cs = append(cs, Context(i))
	}
	if len(cs) == 0 {
		return nil, ErrEmptyValue
	}
	return cs, nil
}

func parseLabels(value string) ([]string, error) {
	want := map[string]bool{}
	for v := range strings.SplitSeq(value, ",") {
		if v == "" {
			continue
		}
		if !slices.Contains(labelNames, v) {
			return nil, fmt.Errorf("%w %q (one of %s)", ErrUnknownLabel, v, strings.Join(labelNames, ", "))
		}
		want[v] = true
	}
	if len(want) == 0 {
		return nil, ErrEmptyValue
	}
	var ls []string
	for _, l := range labelNames {
		if want[l] {
			ls = append(ls, l)
		}
	}
	return ls, nil
}

// String returns the config as specs separated by spaces, options in a
// fixed order: Parse(strings.Fields(c.String())) gives c back.
func (c Config) String() string {
	specs := make([]string, 0, len(c.Metrics))
	for _, m := range c.Metrics {
		specs = append(specs, m.String())
	}
	return strings.Join(specs, " ")
}

// String returns the metric's spec.
func (m MetricConfig) String() string {
	var opts []string
	add := func(name string, cs []Context) {
		if len(cs) == 0 {
			return
		}
		s := make([]string, len(cs))
		for i, c := range cs {
			s[i] = c.String()
		}
		opts = append(opts, name+"="+strings.Join(s, "|"))
	}
	o := m.Context
	add("sourceContext", o.Source)
	add("sourceEgressContext", o.SourceEgress)
	add("sourceIngressContext", o.SourceIngress)
	add("destinationContext", o.Destination)
	add("destinationEgressContext", o.DestinationEgress)
	add("destinationIngressContext", o.DestinationIngress)
	if len(o.Labels) > 0 {
		opts = append(opts, "labelsContext="+strings.Join(o.Labels, ","))
	}
	if m.Exemplars {
		opts = append(opts, "exemplars=true")
	}
	if m.Query {
		opts = append(opts, "query")
	}
	if m.IgnoreAAAA {
		opts = append(opts, "ignoreAAAA")
	}
	if len(opts) == 0 {
		return m.Name
	}
	return m.Name + ":" + strings.Join(opts, ";")
}

// labelNames returns the context labels' names, in the order of their values.
func (o ContextOptions) labelNames() []string {
	names := slices.Clone(o.Labels)
	if o.hasSource() {
		names = append(names, "source")
	}
	if o.hasDestination() {
		names = append(names, "destination")
	}
	return names
}

func (o ContextOptions) hasSource() bool {
	return len(o.Source)+len(o.SourceEgress)+len(o.SourceIngress) > 0
}

func (o ContextOptions) hasDestination() bool {
	return len(o.Destination)+len(o.DestinationEgress)+len(o.DestinationIngress) > 0
}
