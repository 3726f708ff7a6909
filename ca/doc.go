// Package ca owns the clustermesh mesh certificate authority: creating,
// saving and loading the CA, issuing the server and client certificates that
// protect each cluster's etcd with mutual TLS, building the tls.Config values
// that use them, and checking certificates so that a problem (expired, not yet
// valid, signed by another CA, wrong usage) becomes a clear error that says
// what to do.
//
// The common name of a client certificate is the etcd user it authenticates
// as: admin-<cluster> for the local agent, remote-<cluster> for a peer.
// All keys are ECDSA P-256.
package ca
