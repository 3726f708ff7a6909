// Package interop holds the tests that check our mesh against Cilium's
// own code, both ways: our apiserver read with Cilium's etcd client, watch
// stores, validators and types (cilium_reads_test.go); and an etcd
// populated the way Cilium's clustermesh-apiserver populates it — its
// etcdinit users and roles, clustercfg, its SyncStores and synced
// canaries, the heartbeat — read by our agent (cilium_writes_test.go).
// It is its own module so that the Cilium dependency stays out of the
// product's go.mod. Cilium's whole remote-cluster client (pkg/clustermesh)
// cannot build here, beside our client-go: it is in ciliumagent/, a module
// that does not require ours.
package interop
