// Package kubemesh runs a mesh on Kubernetes clusters, reached through
// their kubeconfig contexts, as cilium-cli's clustermesh package does. It
// owns what the commands enable, disable, connect, disconnect, status
// --context and manifests do, as library calls:
//
//   - Enable deploys a cluster's mesh apiserver: the mesh CA and the
//     certificate secrets, its config, its RBAC, Deployment and Service;
//     Disable removes them.
//   - Connect checks enabled clusters (names, ids, CAs, overlapping
//     addresses, endpoints) before it writes anything, then gives each
//     reader the config of the clusters it reads and lets each target's
//     apiserver serve its readers; Disconnect undoes it, refusing to leave
//     a global service without backends.
//   - ReadStatus reads a cluster's mesh as its objects show it, with what
//     its agents report; an AgentReporter writes one agent's report (a
//     Lease per node).
//   - AgentManifests are the agent's DaemonSet and RBAC.
//
// Each operation takes an options struct whose zero fields are the
// defaults, and returns a typed result saying what it changed, which the
// caller prints; with an error, the result holds what was done before it.
// Open resolves a kubeconfig context into a client, for every operation;
// RESTConfig does the same for a component that runs in a pod.
//
// It exports about sixty names, more than a package of ours should without
// a reason: one options and one result type per operation, the typed steps
// a connect or disconnect reports, and the names of the objects it manages
// in a cluster, which its callers read to find them.
//
// The errors say how to fix what they report in terms of the clustermesh
// commands and their flags ("run clustermesh enable --context east
// first"): those commands are the callers this package serves.
package kubemesh
