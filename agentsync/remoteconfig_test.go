package agentsync

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
)

// rcWrite writes content to dir/name and returns the path.
func rcWrite(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadRemoteConfigValid(t *testing.T) {
	dir := t.TempDir()
	absKey := filepath.Join(t.TempDir(), "elsewhere", "tls.key")
	content := `endpoints:
- https://cluster-a.mesh.example:2379
- unixs://run/etcd.sock
trusted-ca-file: ca.crt
cert-file: certs/tls.crt
key-file: ` + absKey + `
`
	path := rcWrite(t, dir, "cluster-a", content)

	rc, raw, err := LoadRemoteConfig("cluster-a", path)
	if err != nil {
		t.Fatalf("LoadRemoteConfig: %v", err)
	}
	if string(raw) != content {
		t.Errorf("raw bytes %q, want the file's content %q", raw, content)
	}
	if want := []string{"https://cluster-a.mesh.example:2379", "unixs://run/etcd.sock"}; strings.Join(rc.Endpoints, ",") != strings.Join(want, ",") {
		t.Errorf("endpoints %q, want %q", rc.Endpoints, want)
	}
	if want := filepath.Join(dir, "ca.crt"); rc.TrustedCAFile != want {
		t.Errorf("trusted-ca-file %q, want %q (relative to the config file's directory)", rc.TrustedCAFile, want)
	}
	if want := filepath.Join(dir, "certs", "tls.crt"); rc.CertFile != want {
		t.Errorf("cert-file %q, want %q (relative to the config file's directory)", rc.CertFile, want)
	}
	if rc.KeyFile != absKey {
		t.Errorf("key-file %q, want the absolute path %q unchanged", rc.KeyFile, absKey)
	}
}

func TestLoadRemoteConfigRelativeToFileNotWorkingDirectory(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(t.TempDir()) // a working directory other than the file's
	path := rcWrite(t, dir, "cluster-b", "endpoints: [https://b:2379]\ntrusted-ca-file: ca.crt\ncert-file: tls.crt\nkey-file: tls.key\n")
	rc, _, err := LoadRemoteConfig("cluster-b", path)
	if err != nil {
		t.Fatalf("LoadRemoteConfig: %v", err)
	}
	for what, got := range map[string]string{"trusted-ca-file": rc.TrustedCAFile, "cert-file": rc.CertFile, "key-file": rc.KeyFile} {
		if filepath.Dir(got) != dir {
			t.Errorf("%s %q is not in the config file's directory %q", what, got, dir)
		}
	}
}

func TestLoadRemoteConfigInvalid(t *testing.T) {
	const certs = "trusted-ca-file: ca.crt\ncert-file: tls.crt\nkey-file: tls.key\n"
	tests := []struct {
		name     string
		cluster  string // file name and cluster name
		content  string
		wantIn   []string // substrings of the error message
		wantWrap error    // also wrapped, beside ErrInvalidRemoteConfig
	}{
		{
			name: "missing endpoints", cluster: "cluster-a", content: certs,
			wantIn: []string{"no endpoints"},
		},
		{
			name: "empty endpoint list", cluster: "cluster-a", content: "endpoints: []\n" + certs,
			wantIn: []string{"no endpoints"},
		},
		{
			name: "plain http endpoint", cluster: "cluster-a",
			content: "endpoints:\n- https://a:2379\n- http://a:2379\n" + certs,
			wantIn:  []string{`"http://a:2379"`, "https://", "mutual TLS"},
		},
		{
			name: "endpoint without scheme", cluster: "cluster-a",
			content: "endpoints: [a:2379]\n" + certs,
			wantIn:  []string{`"a:2379"`, "https://"},
		},
		{
			name: "missing cert-file", cluster: "cluster-a",
			content: "endpoints: [https://a:2379]\ntrusted-ca-file: ca.crt\nkey-file: tls.key\n",
			wantIn:  []string{"cert-file"},
		},
		{
			name: "missing trusted-ca-file", cluster: "cluster-a",
			content: "endpoints: [https://a:2379]\ncert-file: tls.crt\nkey-file: tls.key\n",
			wantIn:  []string{"trusted-ca-file"},
		},
		{
			name: "missing key-file", cluster: "cluster-a",
			content: "endpoints: [https://a:2379]\ntrusted-ca-file: ca.crt\ncert-file: tls.crt\n",
			wantIn:  []string{"key-file"},
		},
		{
			name: "invalid cluster name as file name", cluster: "Cluster_A",
			content: "endpoints: [https://a:2379]\n" + certs,
			wantIn:  []string{"Cluster_A", "file name"}, wantWrap: wire.ErrInvalidClusterName,
		},
		{
			name: "cluster name too long", cluster: strings.Repeat("a", wire.MaxClusterNameLen+1),
			content: "endpoints: [https://a:2379]\n" + certs,
			wantIn:  []string{"file name"}, wantWrap: wire.ErrInvalidClusterName,
		},
		{
			name: "invalid YAML", cluster: "cluster-a",
			content: "endpoints: [https://a:2379\n" + certs,
			wantIn:  []string{"cluster-a"},
		},
		{
			name: "endpoints of the wrong type", cluster: "cluster-a",
			content: "endpoints: 42\n" + certs,
			wantIn:  []string{"cluster-a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := rcWrite(t, t.TempDir(), tt.cluster, tt.content)
			_, _, err := LoadRemoteConfig(tt.cluster, path)
			if err == nil {
				t.Fatalf("LoadRemoteConfig accepted %q", tt.content)
			}
			if !errors.Is(err, ErrInvalidRemoteConfig) {
				t.Errorf("error %q does not wrap ErrInvalidRemoteConfig", err)
			}
			if tt.wantWrap != nil && !errors.Is(err, tt.wantWrap) {
				t.Errorf("error %q does not wrap %v", err, tt.wantWrap)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file %s", err, path)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

func TestLoadRemoteConfigUnreadableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster-a") // never written
	_, _, err := LoadRemoteConfig("cluster-a", path)
	if err == nil {
		t.Fatal("LoadRemoteConfig of a missing file succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %q does not wrap fs.ErrNotExist", err)
	}
	if errors.Is(err, ErrInvalidRemoteConfig) {
		t.Errorf("error %q wraps ErrInvalidRemoteConfig; an unreadable file is not an invalid config", err)
	}
}
