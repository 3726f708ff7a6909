package statesource

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/clustermesh/clustermesh/internal/atomicfile"
)

// A node keys directory carries the WireGuard public keys of a cluster's
// nodes beside its state file, so that each node's agent publishes its own
// key without rewriting the shared state: one file per node, named
// <node>.pub (NodeKeyFile), holding the key in base64 as `wg pubkey` prints
// it. A File with NodeKeysDir gives every node of the state that has no
// wireguardPubKey of its own the key of its file. Only public keys belong
// there: the directory's content is published to every peer cluster.

// nodeKeySuffix ends the name of every node key file.
const nodeKeySuffix = ".pub"

// maxNodeKeyFile bounds what is read of a key file (a key is 44 bytes).
const maxNodeKeyFile = 1024

// NodeKeyFile is the name of node's key file in a node keys directory.
func NodeKeyFile(node string) string { return node + nodeKeySuffix }

// isNodeKeyFile reports whether a directory entry is a node key file:
// <node>.pub, not hidden (temporary files of atomic writes are).
func isNodeKeyFile(name string) bool {
	return len(name) > len(nodeKeySuffix) && strings.HasSuffix(name, nodeKeySuffix) && !strings.HasPrefix(name, ".")
}

// CheckPublicKey reports whether s is a WireGuard public key as published:
// the standard base64 encoding of 32 bytes, not all zero.
func CheckPublicKey(s string) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		return errors.New("not the base64 encoding of a 32-byte WireGuard public key")
	}
	for _, c := range b {
		if c != 0 {
			return nil
		}
	}
	return errors.New("an all-zero WireGuard public key")
}

// checkNodeName refuses node names that cannot name a key file.
func checkNodeName(node string) error {
	switch {
	case node == "":
		return errors.New("empty node name")
	case strings.HasPrefix(node, "."), strings.ContainsAny(node, "/\x00"):
		return fmt.Errorf("node name %q cannot name a key file (no '/', no leading '.')", node)
	case len(NodeKeyFile(node)) > 255:
		return fmt.Errorf("node name %q is too long for a file name", node)
	}
	return nil
}

// WriteNodeKey publishes node's WireGuard public key in dir (created if
// missing) as dir/<node>.pub, mode 0644, atomically: a temporary file in
// dir, synced, renamed over the key file, and dir synced. Readers never see
// a torn key. publicKey must be a public key (CheckPublicKey): never pass a
// private key, dir is published to every peer cluster.
func WriteNodeKey(dir, node, publicKey string) error {
	if err := checkNodeName(node); err != nil {
		return fmt.Errorf("publishing the WireGuard key of node %q: %w", node, err)
	}
	if err := CheckPublicKey(publicKey); err != nil {
		return fmt.Errorf("publishing the WireGuard key of node %q: %w", node, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the node keys directory: %w", err)
	}
	path := filepath.Join(dir, NodeKeyFile(node))
	if err := atomicfile.Write(path, []byte(publicKey+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing the node key file %s: %w", path, err)
	}
	return nil
}

// ReadNodeKey returns the key published for node in dir, validated.
func ReadNodeKey(dir, node string) (string, error) {
	if err := checkNodeName(node); err != nil {
		return "", fmt.Errorf("reading the WireGuard key of node %q: %w", node, err)
	}
	key, _, err := readKeyFile(filepath.Join(dir, NodeKeyFile(node)))
	if err != nil {
		return "", fmt.Errorf("reading the WireGuard key of node %q: %w", node, err) // an os error names the file
	}
	return key, nil
}

// readKeyFile reads and validates one key file (following a symlink, as in a
// mounted ConfigMap). The error never quotes the content.
func readKeyFile(path string) (string, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", nil, err
	}
	if !fi.Mode().IsRegular() {
		return "", fi, errors.New("not a regular file")
	}
	if fi.Size() > maxNodeKeyFile {
		return "", fi, fmt.Errorf("%d bytes, larger than a key file can be", fi.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fi, err
	}
	key := strings.TrimSpace(string(b))
	if err := CheckPublicKey(key); err != nil {
		return "", fi, fmt.Errorf("%w (%d bytes)", err, len(b))
	}
	return key, fi, nil
}

// nodeKeys is the File's view of a node keys directory. A nil *nodeKeys
// has no keys.
type nodeKeys struct {
	dir string
	log *slog.Logger
	// keys are the keys in force: node → key. An invalid file keeps its
	// node's last valid key; a removed file drops it.
	keys map[string]string
	// invalid: node → the problem of its file, logged once.
	invalid map[string]string
	// conflicts: node → the directory's key, logged once, for nodes whose
	// state file entry has a different key.
	conflicts map[string]string
	sig       string // the stats the keys were read at (see signature)
	dirErr    string // the last directory error logged
}

func newNodeKeys(dir string, log *slog.Logger) (*nodeKeys, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the node keys directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("opening the node keys directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("opening the node keys directory %s: not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		log.Warn("the node keys directory is writable by others: anyone who can write there can publish a key for a node and read what peers send it",
			"dir", dir, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	return &nodeKeys{dir: dir, log: log, keys: map[string]string{}, invalid: map[string]string{}, conflicts: map[string]string{}}, nil
}

// signature describes the key files' names, sizes, modification times and
// inodes: a poll reads the files only when it changed.
func (k *nodeKeys) signature() string {
	entries, err := os.ReadDir(k.dir)
	if err != nil {
		return "error: " + err.Error()
	}
	var b strings.Builder
	for _, e := range entries {
		if !isNodeKeyFile(e.Name()) {
			continue
		}
		fi, err := os.Stat(filepath.Join(k.dir, e.Name()))
		writeSig(&b, e.Name(), fi, err)
	}
	return b.String()
}

func writeSig(b *strings.Builder, name string, fi os.FileInfo, err error) {
	if err != nil {
		fmt.Fprintf(b, "%s error;", name)
		return
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	fmt.Fprintf(b, "%s %d %d %d;", name, fi.Size(), fi.ModTime().UnixNano(), ino)
}

// load reads every key file and reports whether the keys in force changed.
// A file that cannot be read or holds no valid key is logged (once) and
// ignored: its node keeps its last valid key. An unreadable directory
// keeps every key.
func (k *nodeKeys) load() bool {
	if k == nil {
		return false
	}
	entries, err := os.ReadDir(k.dir)
	if err != nil {
		if err.Error() != k.dirErr {
			k.log.Error("node keys directory unreadable, keeping the last keys", "dir", k.dir, "err", err)
		}
		k.dirErr, k.sig = err.Error(), "error: "+err.Error()
		return false
	}
	k.dirErr = ""
	next := make(map[string]string, len(entries))
	invalid := map[string]string{}
	var sig strings.Builder
	for _, e := range entries {
		name := e.Name()
		if !isNodeKeyFile(name) {
			continue
		}
		node := strings.TrimSuffix(name, nodeKeySuffix)
		path := filepath.Join(k.dir, name)
		key, fi, err := readKeyFile(path)
		writeSig(&sig, name, fi, err)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing
		}
		if err != nil {
			invalid[node] = err.Error()
			old, had := k.keys[node]
			if k.invalid[node] != err.Error() {
				k.log.Error("invalid node key file ignored", "file", path, "node", node, "err", err, "keptLastValidKey", had)
			}
			if had {
				next[node] = old
			}
			continue
		}
		next[node] = key
	}
	changed := !maps.Equal(next, k.keys)
	k.keys, k.invalid, k.sig = next, invalid, sig.String()
	return changed
}

// apply returns st with the keys in force given to the nodes that have no
// key in st (a new State: st is never modified), and the keys it gave.
func (k *nodeKeys) apply(st *State) (*State, map[string]string) {
	if k == nil || len(k.keys) == 0 {
		return st, nil
	}
	applied := map[string]string{}
	conflicts := map[string]string{}
	var out *State
	for i := range st.Nodes {
		n := &st.Nodes[i]
		key, ok := k.keys[n.Name]
		if !ok {
			continue
		}
		if n.WireguardPubKey != "" {
			if n.WireguardPubKey != key {
				conflicts[n.Name] = key
				if k.conflicts[n.Name] != key {
					k.log.Warn("node has a WireGuard key in the state file and another in the node keys directory: the state file's is published",
						"node", n.Name, "dir", k.dir)
				}
			}
			continue
		}
		if out == nil {
			c := *st
			c.Nodes = slices.Clone(st.Nodes)
			out = &c
		}
		out.Nodes[i].WireguardPubKey = key
		applied[n.Name] = key
	}
	k.conflicts = conflicts
	if out == nil {
		return st, applied
	}
	return out, applied
}
