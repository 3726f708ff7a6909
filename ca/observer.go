package ca

import (
	"os"
	"path/filepath"
	"strings"
)

// ObserverDomain is the DNS domain of the agents' Observer (Hubble) servers:
// the agent of node n in cluster c presents a certificate for
// *.c.hubble-grpc.clustermesh.io, and a client (the relay, the CLI) checks
// the name n.c.hubble-grpc.clustermesh.io, as Hubble does under
// hubble-grpc.cilium.io.
const ObserverDomain = "hubble-grpc.clustermesh.io"

// ObserverServerName is the TLS server name a client checks when it dials
// the Observer server of node in cluster. Dots in either name become dashes,
// so every server name has the same number of labels and one wildcard per
// cluster covers all its nodes (Hubble's TLSServerName).
func ObserverServerName(cluster, node string) string {
	return dashes(node) + "." + dashes(cluster) + "." + ObserverDomain
}

// ObserverDNSName is the DNS name in the certificate of every Observer
// server of cluster: *.<cluster>.hubble-grpc.clustermesh.io.
func ObserverDNSName(cluster string) string {
	return "*." + dashes(cluster) + "." + ObserverDomain
}

func dashes(s string) string { return strings.ReplaceAll(s, ".", "-") }

// IssueObserverServer issues the server certificate the agents of cluster
// serve the Observer API with: common name observer.<cluster>, DNS name
// ObserverDNSName(cluster).
func (c *CA) IssueObserverServer(cluster string) (*Issued, error) {
	return c.Issue(Request{CommonName: "observer." + cluster, DNSNames: []string{ObserverDNSName(cluster)}, Usage: ServerAuth})
}

// ObserverCert and ObserverKey are the agents' Observer server certificate
// files of the bundle (observer.crt, observer.key).
func (b Bundle) ObserverCert() string { return filepath.Join(b.Dir, "observer.crt") }
func (b Bundle) ObserverKey() string  { return filepath.Join(b.Dir, "observer.key") }

// ObserverClientCert and ObserverClientKey are the client certificate the
// relay and the CLI present to the agents' Observer servers
// (observer-client.crt, observer-client.key; common name
// observer-client-<cluster>).
func (b Bundle) ObserverClientCert() string { return filepath.Join(b.Dir, "observer-client.crt") }
func (b Bundle) ObserverClientKey() string  { return filepath.Join(b.Dir, "observer-client.key") }

// IssueObserverBundle issues the Observer server certificate of b's cluster
// and an Observer client certificate into b.Dir, with a copy of ca.crt.
func (c *CA) IssueObserverBundle(b Bundle) error {
	server, err := c.IssueObserverServer(b.Cluster)
	if err != nil {
		return err
	}
	if err := server.Save(b.Dir, "observer"); err != nil {
		return err
	}
	client, err := c.IssueClient("observer-client-" + b.Cluster)
	if err != nil {
		return err
	}
	if err := client.Save(b.Dir, "observer-client"); err != nil {
		return err
	}
	return os.WriteFile(b.CAFile(), c.CertPEM(), certMode)
}
