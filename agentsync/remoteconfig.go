package agentsync

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/wire"
)

// ErrInvalidRemoteConfig is wrapped by every error about a remote's config file.
var ErrInvalidRemoteConfig = errors.New("invalid remote cluster config")

// RemoteConfig is one remote cluster's etcd client config: a YAML file named
// after the cluster in the agent's config directory (the format of etcd's
// client YAML, as Cilium uses it).
type RemoteConfig struct {
	Endpoints     []string `json:"endpoints"`
	TrustedCAFile string   `json:"trusted-ca-file"`
	CertFile      string   `json:"cert-file"`
	KeyFile       string   `json:"key-file"`
}

// LoadRemoteConfig reads and checks the config of cluster name from path.
func LoadRemoteConfig(name, path string) (RemoteConfig, []byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return RemoteConfig{}, nil, fmt.Errorf("reading remote config %s: %w", path, err)
	}
	rc, err := ParseRemoteConfig(name, path, raw)
	return rc, raw, err
}

// ParseRemoteConfig checks raw, the content of the config file path of
// cluster name; relative files are relative to the file's directory.
func ParseRemoteConfig(name, path string, raw []byte) (RemoteConfig, error) {
	var rc RemoteConfig
	if err := wire.ValidateClusterName(name); err != nil {
		return rc, fmt.Errorf("remote config %s: %w: the file name must be the remote cluster's name: %w", path, ErrInvalidRemoteConfig, err)
	}
	if err := yaml.Unmarshal(raw, &rc); err != nil {
		return rc, fmt.Errorf("remote config %s: %w: %w", path, ErrInvalidRemoteConfig, err)
	}
	if len(rc.Endpoints) == 0 {
		return rc, fmt.Errorf("remote config %s: %w: no endpoints", path, ErrInvalidRemoteConfig)
	}
	for _, e := range rc.Endpoints {
		if !strings.HasPrefix(e, "https://") && !strings.HasPrefix(e, "unixs://") {
			return rc, fmt.Errorf("remote config %s: %w: endpoint %q must be https:// (mutual TLS is required)", path, ErrInvalidRemoteConfig, e)
		}
	}
	if rc.TrustedCAFile == "" || rc.CertFile == "" || rc.KeyFile == "" {
		return rc, fmt.Errorf("remote config %s: %w: trusted-ca-file, cert-file and key-file are all required", path, ErrInvalidRemoteConfig)
	}
	dir := filepath.Dir(path)
	for _, f := range []*string{&rc.TrustedCAFile, &rc.CertFile, &rc.KeyFile} {
		if !filepath.IsAbs(*f) {
			*f = filepath.Join(dir, *f)
		}
	}
	return rc, nil
}

// TLS builds the client TLS config; certificate problems (expired, wrong CA,
// wrong usage) come back as ca's errors that say what to do.
func (rc RemoteConfig) TLS() (*tls.Config, error) {
	cfg, err := ca.ClientTLSConfig(rc.CertFile, rc.KeyFile, rc.TrustedCAFile)
	if err != nil {
		return nil, fmt.Errorf("loading the remote's client certificate: %w", err)
	}
	return cfg, nil
}
