package ca

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const (
	dirMode  fs.FileMode = 0o700
	certMode fs.FileMode = 0o644
	keyMode  fs.FileMode = 0o600
)

// writeExclusive creates path with exactly mode and fails with ErrExists if
// it already exists.
func writeExclusive(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("writing %s: %w: %s", path, ErrExists, hintSaveElsewhere)
	}
	if err != nil {
		return err // names the file
	}
	return finish(f, data, mode)
}

// writeAtomic replaces path with data and exactly mode; readers see either
// the old file or the complete new one.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := finish(f, data, mode); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// finish sets mode (independent of the umask), writes data, syncs and closes f.
func finish(f *os.File, data []byte, mode fs.FileMode) error {
	err := f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	return nil
}

func mkdir(dir string) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return err // names the directory
	}
	return nil
}

func readFile(path, what string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the %s: %w", what, err)
	}
	return data, nil
}
