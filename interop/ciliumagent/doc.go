// Package ciliumagent holds the tests in which Cilium's own remote-cluster
// client — pkg/clustermesh's ClusterMesh with the observers a Cilium agent
// registers (nodes, services, the ipcache's IPIdentityWatcher, the identity
// allocator's remote caches) — reads our mesh apiserver, run as a process
// built from cmd/clustermesh.
//
// It is a module of its own that does not require ours: Cilium's
// Kubernetes client needs the client-go Cilium is built with, and ours
// needs a newer one, so the two cannot share a build. The tests talk to our
// apiserver only as a Cilium agent would: over etcd's gRPC with mTLS, with
// certificates issued by our CLI.
package ciliumagent
