package backendfake

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// file is a file or directory of a machine. Its data is never changed in
// place (a write makes a new slice), so that snapshots can share it.
type file struct {
	data []byte
	mode fs.FileMode // permissions
	dir  bool
	mod  time.Time
}

func cloneFiles(files map[string]*file) map[string]*file {
	out := make(map[string]*file, len(files))
	for p, f := range files {
		c := *f
		out[p] = &c
	}
	return out
}

// rel turns a machine path into a key of the files map: relative to Home,
// cleaned; "." is Home itself. Paths outside Home are refused.
func rel(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty path: give a path in the machine (relative paths start in its home)")
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("path %q contains a NUL byte", p)
	}
	if err := backend.CheckPath(p); err != nil {
		return "", err
	}
	if path.IsAbs(p) {
		r, ok := strings.CutPrefix(path.Clean(p), Home)
		if !ok || r != "" && r[0] != '/' {
			return "", fmt.Errorf("path %s is outside the fake machine's home %s", p, Home)
		}
		p = "." + r
	}
	return path.Clean(p), nil
}

// abs is the absolute form of a key of the files map.
func abs(r string) string { return path.Join(Home, r) }

func notExist(p string) error { return &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist} }

// mkdirAllLocked makes directory r and its parents.
func (m *Machine) mkdirAllLocked(r string) error {
	if r == "." {
		return nil
	}
	if err := m.mkdirAllLocked(path.Dir(r)); err != nil {
		return err
	}
	switch f := m.files[r]; {
	case f == nil:
		m.files[r] = &file{dir: true, mode: 0o755, mod: m.b.now()}
	case !f.dir:
		return fmt.Errorf("%s: not a directory", abs(r))
	}
	return nil
}

// putLocked stores a regular file, making its parents.
func (m *Machine) putLocked(r string, data []byte, mode fs.FileMode) error {
	if r == "." {
		return errors.New("the home is a directory; give a file path")
	}
	if err := m.mkdirAllLocked(path.Dir(r)); err != nil {
		return err
	}
	if f := m.files[r]; f != nil && f.dir {
		return fmt.Errorf("%s is a directory; give a file path", abs(r))
	}
	if mode.Perm() == 0 {
		mode = 0o644
	}
	m.files[r] = &file{data: data, mode: mode.Perm(), mod: m.b.now()}
	return nil
}

// readAll reads r whole, giving up when ctx ends.
func readAll(ctx context.Context, r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := r.Read(buf)
		b.Write(buf[:n])
		if err == io.EOF {
			return b.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// WriteFile creates or replaces a file, making its parents. It is read
// whole before it is stored, so that it appears whole or not at all.
func (m *Machine) WriteFile(ctx context.Context, p string, r io.Reader, mode fs.FileMode) (*backend.WriteResult, error) {
	k, err := rel(p)
	if err != nil {
		return nil, err
	}
	if err := m.use(); err != nil {
		return nil, err
	}
	data, err := readAll(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w (the old file is unchanged)", p, err)
	}
	m.b.mu.Lock()
	err = m.putLocked(k, data, mode)
	m.b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	return &backend.WriteResult{Path: abs(k), Bytes: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}, nil
}

// lookup finds a file or directory.
func (m *Machine) lookup(p string) (string, file, error) {
	k, err := rel(p)
	if err != nil {
		return "", file{}, err
	}
	if err := m.use(); err != nil {
		return "", file{}, err
	}
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	f := m.files[k]
	if f == nil {
		return "", file{}, notExist(abs(k))
	}
	return k, *f, nil
}

// ReadFile streams a regular file to w.
func (m *Machine) ReadFile(_ context.Context, p string, w io.Writer) (int64, error) {
	k, f, err := m.lookup(p)
	if err != nil {
		return 0, err
	}
	if f.dir {
		return 0, fmt.Errorf("%s is a directory; give a file path", abs(k))
	}
	n, err := w.Write(f.data)
	return int64(n), err
}

// Stat describes a path.
func (m *Machine) Stat(_ context.Context, p string) (*backend.FileInfo, error) {
	k, f, err := m.lookup(p)
	if err != nil {
		return nil, err
	}
	mode := f.mode
	if f.dir {
		mode |= fs.ModeDir
	}
	return &backend.FileInfo{Path: abs(k), Size: int64(len(f.data)), Mode: mode, ModTime: f.mod, IsDir: f.dir}, nil
}

// CopyIn extracts a tar stream of files and directories into dir (made if
// missing). Names that climb out of dir, links and special files are
// refused. It is read whole first, so that a broken stream changes nothing.
func (m *Machine) CopyIn(ctx context.Context, dir string, r io.Reader) error {
	base, err := rel(dir)
	if err != nil {
		return err
	}
	if err := m.use(); err != nil {
		return err
	}
	type entry struct {
		key  string
		data []byte
		mode fs.FileMode
		dir  bool
	}
	var entries []entry
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("copy into %s: the tar stream: %w", dir, err)
		}
		name := path.Clean(strings.TrimLeft(h.Name, "/"))
		if name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("copy into %s: %s leads out of the directory", dir, h.Name)
		}
		e := entry{key: path.Join(base, name), mode: fs.FileMode(h.Mode).Perm()}
		switch h.Typeflag {
		case tar.TypeDir:
			e.dir = true
		case tar.TypeReg:
			if e.data, err = io.ReadAll(tr); err != nil {
				return fmt.Errorf("copy into %s: the tar stream: %w", dir, err)
			}
		default:
			return fmt.Errorf("copy into %s: %s is neither a file nor a directory, which is all the fake backend keeps", dir, h.Name)
		}
		entries = append(entries, e)
	}
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	if err := m.mkdirAllLocked(base); err != nil {
		return err
	}
	for _, e := range entries {
		if e.dir {
			err = m.mkdirAllLocked(e.key)
		} else {
			err = m.putLocked(e.key, e.data, e.mode)
		}
		if err != nil {
			return fmt.Errorf("copy into %s: %w", dir, err)
		}
	}
	return nil
}

// CopyOut writes a file or directory tree as a tar stream, with names
// relative to the path's parent.
func (m *Machine) CopyOut(_ context.Context, p string, w io.Writer) error {
	k, f, err := m.lookup(p)
	if err != nil {
		return err
	}
	top := path.Base(abs(k))
	prefix := k + "/" // of what is inside it
	if k == "." {
		prefix = ""
	}
	entries := map[string]file{k: f}
	if f.dir {
		m.b.mu.Lock()
		for key, f := range m.files {
			if key != "." && strings.HasPrefix(key, prefix) {
				entries[key] = *f
			}
		}
		m.b.mu.Unlock()
	}
	tw := tar.NewWriter(w)
	for _, key := range slices.Sorted(maps.Keys(entries)) {
		f := entries[key]
		name := top
		if key != k {
			name = path.Join(top, strings.TrimPrefix(key, prefix))
		}
		h := &tar.Header{Name: name, Mode: int64(f.mode), ModTime: f.mod, Typeflag: tar.TypeReg, Size: int64(len(f.data))}
		if f.dir {
			h.Name, h.Typeflag, h.Size = name+"/", tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}
