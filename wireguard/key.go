package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustermesh/clustermesh/internal/atomicfile"
)

// keyFileMode is the only mode a private key file may have.
const keyFileMode = 0o600

// LoadOrCreateKey reads the private key kept in path (base64, as `wg genkey`
// writes it), or creates path with a fresh key when it does not exist. A key
// file readable by others is narrowed to 0600 with a warning (the key may
// have leaked: rotate it). The key itself is never logged nor put in an
// error.
func LoadOrCreateKey(path string, log *slog.Logger) (key wgtypes.Key, created bool, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = wgtypes.GeneratePrivateKey()
		if err != nil {
			return wgtypes.Key{}, false, fmt.Errorf("generating a private key: %w", err)
		}
		if err := writeKeyFile(path, key); err != nil {
			return wgtypes.Key{}, false, err
		}
		log.Info("created a WireGuard private key", "file", path, "publicKey", key.PublicKey().String())
		return key, true, nil
	}
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("reading private key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return wgtypes.Key{}, false, fmt.Errorf("reading private key file %s: not a regular file", path)
	}
	if fi.Mode().Perm() != keyFileMode {
		if err := os.Chmod(path, keyFileMode); err != nil {
			return wgtypes.Key{}, false, fmt.Errorf("narrowing the mode of private key file %s from %04o to 0600: %w", path, fi.Mode().Perm(), err)
		}
		log.Warn("WireGuard private key file was readable by others; narrowed to 0600 (rotate the key if it may have leaked)",
			"file", path, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("reading private key file: %w", err)
	}
	key, err = wgtypes.ParseKey(strings.TrimSpace(string(raw)))
	if err != nil || key == (wgtypes.Key{}) {
		// Never echo the content: it is (meant to be) a secret.
		return wgtypes.Key{}, false, fmt.Errorf("reading private key file %s: it does not hold a base64 32-byte WireGuard key (%d bytes read): restore the key or remove the file to create a new one", path, len(raw))
	}
	return key, false, nil
}

// writeKeyFile replaces path with key atomically: a 0600 temporary file in
// the same directory, synced, renamed over path, and the directory synced.
// A crash leaves either the old key or the new one, never a torn file.
func writeKeyFile(path string, key wgtypes.Key) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the key directory: %w", err)
	}
	if err := atomicfile.Write(path, []byte(key.String()+"\n"), keyFileMode); err != nil {
		return fmt.Errorf("writing private key file: %w", err)
	}
	return nil
}

// PublicKey returns the device's public key in base64, the value to publish
// as the node's WireguardPubKey.
func (d *Device) PublicKey() string {
	if d == nil {
		return ""
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pub.String()
}

// RotateKey replaces the private key: the new key is written to the key file
// first (atomically, so the old key never comes back after a restart), then
// given to the device. It returns the new public key, which the caller
// publishes in the node entry; peers pick it up through sync. Sessions with
// peers end at once and resume when each peer has the new key (the peer's
// reconciliation starts the handshake).
func (d *Device) RotateKey() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return "", errClosed
	}
	if err := d.rotateLocked(); err != nil {
		return "", fmt.Errorf("rotating the key of WireGuard device %s: %w", d.cfg.DeviceName, err)
	}
	return d.pub.String(), nil
}

// rotateLocked is RotateKey with d.mu held.
func (d *Device) rotateLocked() error {
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return fmt.Errorf("generating a private key: %w", err)
	}
	if err := writeKeyFile(d.cfg.PrivateKeyFile, key); err != nil {
		return err
	}
	if err := d.wgConfigure(wgtypes.Config{PrivateKey: &key}); err != nil {
		err = fmt.Errorf("setting the new key on the device: %w", err)
		if werr := writeKeyFile(d.cfg.PrivateKeyFile, d.priv); werr != nil {
			err = errors.Join(err, fmt.Errorf("restoring the previous key file: %w", werr))
		}
		return err
	}
	old := d.pub
	d.priv, d.pub, d.rotatedAt = key, key.PublicKey(), time.Now()
	d.log.Info("rotated the WireGuard key", "publicKey", d.pub.String(), "previousPublicKey", old.String())
	return nil
}
