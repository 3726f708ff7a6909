package ca

import (
	"net"
	"os"
	"path/filepath"
)

// Bundle names the certificate files of one cluster, all in one directory:
// the mesh CA's certificate (ca.crt), the apiserver's server certificate
// (server.crt/key), the admin-<cluster> client certificate the apiserver
// writes with, and the remote-<cluster> client certificate the cluster's
// agents read their peers with.
type Bundle struct {
	Dir     string
	Cluster string
}

// CAFile is the mesh CA certificate.
func (b Bundle) CAFile() string { return filepath.Join(b.Dir, CertFile) }

// ServerCert and ServerKey are the apiserver's server certificate files.
func (b Bundle) ServerCert() string { return filepath.Join(b.Dir, "server.crt") }
func (b Bundle) ServerKey() string  { return filepath.Join(b.Dir, "server.key") }

// AdminCert and AdminKey are the admin-<cluster> client certificate files.
func (b Bundle) AdminCert() string { return filepath.Join(b.Dir, "admin-"+b.Cluster+".crt") }
func (b Bundle) AdminKey() string  { return filepath.Join(b.Dir, "admin-"+b.Cluster+".key") }

// RemoteCert and RemoteKey are the remote-<cluster> client certificate files.
func (b Bundle) RemoteCert() string { return filepath.Join(b.Dir, "remote-"+b.Cluster+".crt") }
func (b Bundle) RemoteKey() string  { return filepath.Join(b.Dir, "remote-"+b.Cluster+".key") }

// IssueBundle issues every certificate of cluster's bundle into dir, the
// server certificate for the given DNS names and IPs.
func (c *CA) IssueBundle(dir, cluster string, dnsNames []string, ips []net.IP) (Bundle, error) {
	b := Bundle{Dir: dir, Cluster: cluster}
	server, err := c.IssueServer("clustermesh-apiserver."+cluster, dnsNames, ips)
	if err != nil {
		return b, err
	}
	if err := server.Save(dir, "server"); err != nil {
		return b, err
	}
	for _, user := range []string{"admin-" + cluster, "remote-" + cluster} {
		cert, err := c.IssueClient(user)
		if err != nil {
			return b, err
		}
		if err := cert.Save(dir, user); err != nil {
			return b, err
		}
	}
	if err := os.WriteFile(b.CAFile(), c.CertPEM(), certMode); err != nil {
		return b, err
	}
	return b, nil
}
