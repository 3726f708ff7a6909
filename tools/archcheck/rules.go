package main

// The import rules of docs/architecture.md, checked by `make lint`. This table
// is their one home: the document states them in prose and refers here.
//
// Names of our packages are relative to the module ("wire",
// "internal/testenv") and stand for the package and every package under it
// (a package split into subpackages keeps its rules: "datapath" covers
// datapath/socklb). A name whose first element has a dot is another module's
// package, or its tree with "/..." ("go.etcd.io/etcd/..."). "*test" is
// every package of ours whose name ends in "test". A rule about a
// package that does not exist (yet) holds trivially. Only the packages' own
// files count: tests, and test support, may import what they need.
var rules = []Rule{
	{
		Pkg: "wire", StdlibOnly: true,
		Why: "wire is the format every other package shares: it imports nothing of ours and only the standard library",
	},
	{
		Pkg: "ca", StdlibOnly: true,
		Why: "the mesh CA is standard library only",
	},
	{
		Pkg: "internal/atomicfile", StdlibOnly: true,
		Why: "atomicfile is standard library only",
	},
	{
		Pkg: "internal/traceparent", OursOnly: nothing,
		Why: "the W3C traceparent reader, a leaf shared by the HTTP engine and the flows' enrichment",
	},
	{
		Pkg: "internal/portlock", OursOnly: nothing,
		Why: "ports leased across processes are a leaf: the loopback mesh and the test harnesses use it",
	},
	{
		Pkg: "internal/unixsock", OursOnly: nothing,
		Why: "owning a unix socket's path is a leaf: the agent's, WireGuard's, the relay's and the slices writer's servers use it",
	},
	{
		Pkg: "internal/loglimit", OursOnly: nothing,
		Why: "loglimit is a leaf: every package may use it",
	},
	{
		Pkg: "statesource", OursOnly: []string{"wire", "internal/atomicfile", "internal/loglimit"},
		Why: "a cluster's local state is read by the apiserver and the agent alike, and knows neither",
	},
	{
		Pkg: "policy", OursOnly: []string{"wire"},
		Why: "policy is pure computation over wire's identities",
	},
	{
		Pkg:   "datapath",
		Never: []string{"agentsync", "merge", "node", "meshapiserver", etcd},
		Why:   "the datapath is written by the agent and never reaches back into it or into etcd",
	},
	{
		Pkg:   "merge",
		Never: []string{"agentsync", "node", "meshapiserver", etcd},
		Why:   "merge decides what the datapath holds from state it is handed; it never reads etcd nor drives the sync",
	},
	{
		Pkg:   "meshapiserver",
		Never: []string{"agentsync", "merge", "node", "datapath"},
		Why:   "the apiserver and the agent meet only in wire (and in the packages that wire both: localmesh, cli)",
	},
	{
		Pkg:   "agentsync",
		Never: []string{"meshapiserver", "node", "kubemesh", "cli"},
		Why:   "agentsync is a piece the node and the commands assemble, and meets the apiserver only in wire",
	},
	{
		Pkg: "kvstoremesh", OursOnly: []string{"agentsync", "wire", "ca", "internal/loglimit"},
		Why: "the cache is the agent's receiving side (agentsync) writing into etcd: it never merges, touches a datapath or reaches into the apiserver",
	},
	{
		Pkg:   "node",
		Never: []string{"meshapiserver"},
		Why:   "the agent meets the apiserver only in wire",
	},
	{
		Pkg:   "kubemesh",
		Never: []string{"cli", "node", "localmesh", "demo"},
		Why:   "Kubernetes orchestration drives clusters through their API servers; it reads the agent's config and status types, never assembles an agent",
	},
	{
		Pkg: "k8sslices", OursOnly: []string{"merge", "datapath", "internal/coalesce", "internal/loglimit"},
		Why: "the EndpointSlice writer reads remote backends through an interface the agent satisfies (merge's types), and writes only Kubernetes",
	},
	{
		Pkg: "k8smcs", OursOnly: []string{"agentsync", "statesource", "wire", "internal/coalesce", "internal/loglimit"},
		Why: "the MCS controller reads the export specs of every cluster (the local state, the remotes' stores through the agent's remote configs) and writes only Kubernetes",
	},
	{
		Pkg: "peerservice", OursOnly: []string{"wire", "ca", "statesource"},
		Why: "the peer service turns node entries into Observer peers; the agent feeds it and the relay follows it, it knows neither",
	},
	{
		Pkg: "relay", OursOnly: []string{"peerservice", "ca", "wire", "internal/loglimit", "internal/unixsock"},
		Why: "the relay speaks only gRPC to the peer services and the agents' Observer servers: it never assembles or reads an agent",
	},
	{
		Pkg: "fqdn", OursOnly: nothing,
		Why: "DNS names and their cache are a leaf: the DNS proxy fills it and the enforcer subscribes to it, it knows neither",
	},
	{
		Pkg: "l7proxy", OursOnly: []string{"datapath", "internal/loglimit"},
		Why: "the transparent proxy front end reads the policy programs' marks (datapath/tcpolicy) and hands flows to engines through its Handler interface: it never imports an engine, the policy or the enforcer",
	},
	{
		Pkg: "l7dns", OursOnly: []string{"fqdn", "internal/loglimit"},
		Never: []string{"github.com/cilium/cilium/pkg/..."},
		Why:   "the DNS proxy engine is handed queries and their metadata by the transparent proxy and fills the fqdn cache: it never reaches into policy, the enforcer or the datapath",
	},
	{
		Pkg: "internal/coalesce", OursOnly: nothing,
		Why: "coalesce is a leaf: every package may use it",
	},
	{
		Pkg: "internal/metricsserver", OursOnly: nothing,
		Why: "metricsserver is a leaf: the agent and the apiserver serve their metrics with it",
	},
	{
		Pkg: "flowl4", OursOnly: nothing, Never: []string{"github.com/cilium/cilium/pkg/..."},
		Why: "a flow's layer 4 as Hubble's consumers read it: a leaf over Hubble's generated flow type",
	},
	{
		Pkg: "flowfilter", OursOnly: []string{"flowl4"},
		Never: []string{"github.com/cilium/cilium/pkg/...", "k8s.io/client-go/..."},
		Why:   "Hubble's flow filters are written here over Cilium's generated api/ types only: never Cilium's own packages, which drag Kubernetes in",
	},
	{
		Pkg: "flowmask", OursOnly: nothing, Never: []string{"github.com/cilium/cilium/pkg/..."},
		Why: "Hubble's field masks are a leaf over Hubble's generated flow type",
	},
	{
		Pkg: "flowexport", OursOnly: []string{"flowfilter", "flowmask"},
		Never: []string{"github.com/cilium/cilium/pkg/...", "k8s.io/client-go/..."},
		Why:   "flow export writes what a Source hands it, filtered by flowfilter; the hub satisfies Source, so flowexport knows neither observe nor node",
	},
	{
		Pkg: "flowmetrics", OursOnly: []string{"flowl4"}, Never: []string{"github.com/cilium/cilium/pkg/..."},
		Why: "Hubble's flow metrics are a leaf over Hubble's generated flow type (Cilium's api/ only: its pkg/ drags Kubernetes in)",
	},
	{
		Pkg: "flowmap", OursOnly: []string{"flowl4"}, Never: []string{"github.com/cilium/cilium/pkg/..."},
		Why: "the service map is an aggregate over Hubble's generated flow type: it reads no agent and serves nothing",
	},
	{
		Pkg: "ui", OursOnly: []string{"flowmap", "observe", "ca"},
		Never: []string{"github.com/cilium/cilium/pkg/...", "k8s.io/client-go/..."},
		Why:   "the map's web page reads flows as any Observer client does: it never assembles an agent or a relay",
	},
	{
		Pkg: "l7http", OursOnly: []string{"internal/loglimit", "internal/traceparent"}, Never: []string{"github.com/cilium/cilium/pkg/...", "k8s.io/client-go/..."},
		Why: "the HTTP engine of the L7 proxy is handed connections, metadata and rules: it knows neither the listener (l7proxy) nor the policy that made the rules",
	},
	{
		Pkg: "deploy", ImportedOnlyBy: nothing,
		Why: "deploy/ is files for operators (alert rules, dashboards) and the tests that check them: nothing imports it",
	},
	{
		Pkg: "hubbleflags", OursOnly: nothing, Never: []string{"github.com/cilium/cilium/pkg/...", "github.com/cilium/cilium/hubble/..."},
		Why: "hubble observe's flags are written here over Cilium's generated api/ types only: Hubble's own packages drag Kubernetes in",
	},
	{
		Pkg: "cli", ImportedOnlyBy: []string{"cmd"},
		Why: "cli is the commands: only a main imports it",
	},
	{
		Pkg: "demo", ImportedOnlyBy: []string{"cli"},
		Why: "the demo is run by `clustermesh demo` only",
	},
	{
		Pkg: "localmesh", ImportedOnlyBy: []string{"demo", "cli"},
		Why: "the loopback mesh is for the demo and the tests, never a dependency of the product's pieces",
	},
	{
		Pkg: testSupport, ImportedOnlyBy: nothing,
		Why: "test support: imported by tests (and other test support) only",
	},
	{
		Pkg: "internal/testenv", ImportedOnlyBy: nothing,
		Why: "test support: imported by tests (and other test support) only",
	},
	{
		Pkg: "internal/figure", ImportedOnlyBy: nothing,
		Why: "benchmark figures: printed by tests only",
	},
	{
		Pkg: "internal/scalerig", ImportedOnlyBy: nothing,
		Why: "the scale rig of `make bench-scale`: used by its own tests only",
	},
}

// testSupport is every package of ours whose name ends in "test" (Go's
// convention: httptest, iotest): internal/kubetest, datapath/internal/dptest.
// Test code: no rule applies to what they import.
const testSupport = "*test"

// etcd is every package of etcd's modules (server, client, api).
const etcd = "go.etcd.io/etcd/..."

// nothing is an empty list: OursOnly: nothing means no package of ours,
// ImportedOnlyBy: nothing means by no package's own files.
var nothing = []string{}
