//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/internal/capture"
	"github.com/vmcp-dev/vmcp/internal/tarfs"
	"golang.org/x/sys/unix"
)

// Workspace machines exchange files with the host directly in their
// workspace directory, through an os.Root so that no path (with "..",
// absolute or through a symbolic link) can leave it. VM machines have their
// files inside an overlay that exists only in the sandbox, so their file
// operations run tar, cat and stat inside the machine.

// FileInfo describes a file in a machine.
type FileInfo struct {
	Path    string      `json:"path"` // as the machine sees it
	Size    int64       `json:"size"`
	Mode    fs.FileMode `json:"mode"`
	ModTime time.Time   `json:"mod_time"`
	IsDir   bool        `json:"is_dir"`
	// Target is where a symbolic link points.
	Target string `json:"target,omitempty"`
}

// WriteResult is what WriteFile wrote.
type WriteResult struct {
	Path   string // as the machine sees it
	Bytes  int64
	SHA256 string // hex
}

// workspacePath turns a machine path into one relative to the workspace.
func workspacePath(p string) (string, error) {
	if p == "" {
		return "", &PathError{Path: p, Reason: "empty path: give a file path inside " + WorkspaceDir}
	}
	if strings.ContainsRune(p, 0) {
		return "", &PathError{Path: p, Reason: "contains a NUL byte"}
	}
	if err := checkPathSize(p); err != nil {
		return "", err
	}
	rel := p
	if path.IsAbs(p) {
		clean := path.Clean(p)
		switch {
		case clean == WorkspaceDir:
			return ".", nil
		case strings.HasPrefix(clean, WorkspaceDir+"/"):
			rel = strings.TrimPrefix(clean, WorkspaceDir+"/")
		default:
			return "", &PathError{Path: p, Reason: "outside the machine's workspace: files move in and out under " + WorkspaceDir + " only (relative paths are relative to it)"}
		}
	}
	rel = path.Clean(rel)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", &PathError{Path: p, Reason: "leaves the machine's workspace (" + WorkspaceDir + "); use a path inside it"}
	}
	return rel, nil
}

// vmPath makes a VM machine path absolute (relative paths start at /root).
func vmPath(p string) (string, error) {
	if p == "" {
		return "", &PathError{Path: p, Reason: "empty path"}
	}
	if strings.ContainsRune(p, 0) {
		return "", &PathError{Path: p, Reason: "contains a NUL byte"}
	}
	if err := checkPathSize(p); err != nil {
		return "", err
	}
	if !path.IsAbs(p) {
		p = "/root/" + p
	}
	return path.Clean(p), nil
}

// root opens the workspace of a workspace machine. The machine runs for
// it, and it is opened through the machine's own mount: the workspace is
// an overlay there, whose cache would not see changes made under it.
func (m *Machine) root() (*os.Root, error) {
	if m.e.opts.DangerouslyDisableSandbox {
		return os.OpenRoot(filepath.Join(m.dir, "workspace"))
	}
	sb, err := m.sandbox()
	if err != nil {
		return nil, err
	}
	return sb.openRoot(WorkspaceDir)
}

// WriteFile creates or replaces a file with what r yields, creating its
// parent directories. The file appears whole or not at all.
func (m *Machine) WriteFile(ctx context.Context, p string, r io.Reader, mode fs.FileMode) (*WriteResult, error) {
	if mode == 0 {
		mode = 0o644
	}
	h := sha256.New()
	counter := &countingReader{r: io.TeeReader(r, h), ctx: ctx}
	if m.Info().Flavour == VM {
		abs, err := vmPath(p)
		if err != nil {
			return nil, err
		}
		script := `set -e; d=$(dirname -- "$1"); mkdir -p -- "$d"; t=$(mktemp -p "$d" .vmcp-upload.XXXXXX); trap 'rm -f -- "$t"' EXIT; cat > "$t"; chmod ` + strconv.FormatUint(uint64(mode.Perm()), 8) + ` "$t"; mv -f -- "$t" "$1"; trap - EXIT`
		if err := m.runChecked(ctx, Command{Argv: []string{"/bin/sh", "-c", script, "sh", abs}, Stdin: counter}); err != nil {
			return nil, fmt.Errorf("write %s: %w", abs, err)
		}
		// h is written by counter's reads: read it under counter's lock.
		counter.mu.Lock()
		defer counter.mu.Unlock()
		return &WriteResult{Path: abs, Bytes: counter.n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
	}
	rel, err := workspacePath(p)
	if err != nil {
		return nil, err
	}
	if rel == "." {
		return nil, &PathError{Path: p, Reason: "is the workspace directory itself; give a file path"}
	}
	root, err := m.root()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	used, err := m.diskUsage()
	if err != nil {
		return nil, err
	}
	quota := m.Info().Limits.DiskBytes
	if used >= quota {
		return nil, m.quotaError(used)
	}
	if err := m.e.checkReserve(); err != nil {
		return nil, err
	}
	counter.limit = quota - used
	err = m.asUser(func() error {
		dir, err := openDirs(ctx, root, path.Dir(rel))
		if err != nil {
			return err
		}
		defer dir.Close()
		base := path.Base(rel)
		isDir := &PathError{Path: p, Reason: "is a directory; give a file path (a directory is uploaded from the host with local_path)"}
		if fi, err := dir.Lstat(base); err == nil && fi.IsDir() {
			return isDir
		}
		tmp := ".vmcp-upload-" + newID("t")
		f, err := dir.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode.Perm())
		if err != nil {
			return err
		}
		_, err = io.Copy(f, counter)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = dir.Rename(tmp, base)
			if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ENOTEMPTY) {
				err = isDir // a directory made there meanwhile
			}
		}
		if err != nil {
			dir.Remove(tmp)
		}
		return err
	})
	if err != nil {
		if errors.Is(err, errQuota) {
			return nil, m.quotaError(used + counter.n)
		}
		return nil, rootError(p, err)
	}
	return &WriteResult{Path: path.Join(WorkspaceDir, rel), Bytes: counter.n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

var errQuota = errors.New("disk quota exceeded")

func (m *Machine) quotaError(used int64) error {
	return fmt.Errorf("the machine's disk quota is full (%d MiB used of %d MiB): delete files in the machine to make room",
		used>>20, m.Info().Limits.DiskBytes>>20)
}

// countingReader counts what passes, stops at limit and honours ctx. Reads
// hold mu: as a command's stdin it is read by a goroutine of Run's that may
// outlive Run, so whoever reads n (or a hash fed by r) afterwards takes mu.
type countingReader struct {
	r     io.Reader
	ctx   context.Context
	limit int64 // 0: none

	mu sync.Mutex
	n  int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.limit > 0 && c.n > c.limit {
		return n, errQuota
	}
	return n, err
}

// openDirs opens the directory dir of root, making the missing ones on the
// way: one level at a time, each relative to the one before, so that the
// work is linear in the depth (and a cancel stops it).
func openDirs(ctx context.Context, root *os.Root, dir string) (*os.Root, error) {
	cur, err := root.OpenRoot(".")
	if err != nil {
		return nil, err
	}
	if dir == "." {
		return cur, nil
	}
	for _, name := range strings.Split(dir, "/") {
		if err := ctx.Err(); err != nil {
			cur.Close()
			return nil, err
		}
		err := cur.Mkdir(name, 0o755)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			cur.Close()
			return nil, err
		}
		next, err := cur.OpenRoot(name)
		cur.Close()
		if err != nil {
			if errors.Is(err, syscall.ENOTDIR) {
				return nil, fmt.Errorf("%s is a file, not a directory", name)
			}
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// asUser runs f, which creates entries in the machine's files through its
// own mount, as the machine's host user: they are the user's own, and the
// overlay there refuses owners its user namespace cannot map. A root
// engine runs f on a thread of its own whose filesystem ids are switched.
// The monitor is told (see writingFromHost).
func (m *Machine) asUser(f func() error) error {
	defer m.writingFromHost()()
	if !m.e.asRoot || m.e.opts.DangerouslyDisableSandbox {
		return f()
	}
	uid, gid := m.e.sandboxHostIDs()
	runtime.LockOSThread()
	unix.Setfsgid(gid)
	unix.Setfsuid(uid)
	err := f()
	unix.Setfsuid(0)
	unix.Setfsgid(0)
	if fsid(unix.SYS_SETFSUID) == 0 && fsid(unix.SYS_SETFSGID) == 0 {
		runtime.UnlockOSThread()
	} // else the thread ends with this goroutine, never to be reused
	return err
}

// writingFromHost marks a write into the machine's files from the host's
// side, which the machine's CPU time does not show; the returned function
// ends it.
func (m *Machine) writingFromHost() func() {
	m.hostWriting.Add(1)
	return func() {
		m.hostWrites.Add(1) // before the end: a monitor that sees none in progress sees this one's count
		m.hostWriting.Add(-1)
	}
}

// fsid is the thread's filesystem uid or gid (setfs*id(-1) changes nothing
// and returns it).
func fsid(call uintptr) int {
	id, _, _ := unix.RawSyscall(call, ^uintptr(0), 0, 0)
	return int(id)
}

// ReadFile streams a file of the machine to w and returns its size.
func (m *Machine) ReadFile(ctx context.Context, p string, w io.Writer) (int64, error) {
	if m.Info().Flavour == VM {
		abs, err := vmPath(p)
		if err != nil {
			return 0, err
		}
		cw := &capture.CountingWriter{W: w}
		err = m.runChecked(ctx, Command{Argv: []string{"/bin/sh", "-c", `test -f "$1" || { echo "not a regular file" >&2; exit 1; }; exec cat -- "$1"`, "sh", abs}, Stdout: cw})
		if err != nil {
			return cw.N, fmt.Errorf("read %s: %w", abs, err)
		}
		return cw.N, nil
	}
	rel, err := workspacePath(p)
	if err != nil {
		return 0, err
	}
	root, err := m.root()
	if err != nil {
		return 0, err
	}
	defer root.Close()
	// Without blocking: a FIFO or device is refused on the descriptor's
	// stat, never waited on (which would hold a thread however the call
	// ends).
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, rootError(p, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, &PathError{Path: p, Reason: "is not a regular file (use CopyOut for directories)"}
	}
	return io.Copy(w, &countingReader{r: f, ctx: ctx})
}

// Stat describes one path of the machine.
func (m *Machine) Stat(ctx context.Context, p string) (*FileInfo, error) {
	if m.Info().Flavour == VM {
		list, err := m.vmList(ctx, p, false)
		if err != nil {
			return nil, err
		}
		return &list[0], nil
	}
	rel, err := workspacePath(p)
	if err != nil {
		return nil, err
	}
	root, err := m.root()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, rootError(p, err)
	}
	info := fileInfo(path.Join(WorkspaceDir, rel), fi)
	if fi.Mode()&fs.ModeSymlink != 0 {
		info.Target, _ = root.Readlink(rel)
	}
	return &info, nil
}

// List describes the entries of a directory of the machine, sorted by name.
func (m *Machine) List(ctx context.Context, p string) ([]FileInfo, error) {
	if m.Info().Flavour == VM {
		return m.vmList(ctx, p, true)
	}
	rel, err := workspacePath(p)
	if err != nil {
		return nil, err
	}
	root, err := m.root()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, rootError(p, err)
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	if err != nil {
		return nil, rootError(p, err)
	}
	out := make([]FileInfo, 0, len(entries))
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		info := fileInfo(path.Join(WorkspaceDir, rel, e.Name()), fi)
		if fi.Mode()&fs.ModeSymlink != 0 {
			info.Target, _ = root.Readlink(path.Join(rel, e.Name()))
		}
		out = append(out, info)
	}
	return out, nil
}

func fileInfo(p string, fi fs.FileInfo) FileInfo {
	return FileInfo{Path: p, Size: fi.Size(), Mode: fi.Mode(), ModTime: fi.ModTime().UTC(), IsDir: fi.IsDir()}
}

// vmList stats a path in a VM machine, or the entries of a directory.
func (m *Machine) vmList(ctx context.Context, p string, entries bool) ([]FileInfo, error) {
	abs, err := vmPath(p)
	if err != nil {
		return nil, err
	}
	script := `test -e "$1" || test -L "$1" || { echo "no such file or directory" >&2; exit 1; }; stat -c '%f|%s|%Y|%n|%N' -- "$1"`
	if entries {
		script = `test -d "$1" || { echo "not a directory" >&2; exit 1; }; find "$1" -mindepth 1 -maxdepth 1 -exec stat -c '%f|%s|%Y|%n|%N' -- {} +`
	}
	var out bytes.Buffer
	if err := m.runChecked(ctx, Command{Argv: []string{"/bin/sh", "-c", script, "sh", abs}, Stdout: &out}); err != nil {
		return nil, &PathError{Path: abs, Reason: err.Error()}
	}
	var list []FileInfo
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.SplitN(line, "|", 5)
		if len(f) < 5 {
			continue
		}
		raw, _ := strconv.ParseUint(f[0], 16, 32)
		size, _ := strconv.ParseInt(f[1], 10, 64)
		mtime, _ := strconv.ParseInt(f[2], 10, 64)
		mode := backend.UnixMode(uint32(raw))
		info := FileInfo{Path: f[3], Size: size, Mode: mode, ModTime: time.Unix(mtime, 0).UTC(), IsDir: mode.IsDir()}
		if mode&fs.ModeSymlink != 0 {
			if i := strings.Index(f[4], " -> "); i >= 0 {
				info.Target = strings.Trim(f[4][i+4:], "'")
			}
		}
		list = append(list, info)
	}
	if len(list) == 0 && !entries {
		return nil, &PathError{Path: abs, Reason: "no such file or directory"}
	}
	sortFiles(list)
	return list, nil
}

func sortFiles(list []FileInfo) {
	for i := 1; i < len(list); i++ {
		for j := i; j > 0 && list[j].Path < list[j-1].Path; j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
}

// runChecked runs a helper command and turns a failure into an error that
// carries the command's stderr.
func (m *Machine) runChecked(ctx context.Context, cmd Command) error {
	res, err := m.Run(ctx, cmd)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		msg := strings.TrimSpace(res.Stderr)
		if msg == "" {
			msg = fmt.Sprintf("exit status %d", res.ExitCode)
		}
		return errors.New(msg)
	}
	return nil
}

// CopyIn extracts a tar stream into a directory of the machine (created if
// missing). Entries that would land outside it are refused.
func (m *Machine) CopyIn(ctx context.Context, dir string, r io.Reader) error {
	if m.Info().Flavour == VM {
		abs, err := vmPath(dir)
		if err != nil {
			return err
		}
		return m.runChecked(ctx, Command{Argv: []string{"/bin/sh", "-c", `mkdir -p -- "$1" && exec tar -x --no-same-owner -C "$1"`, "sh", abs}, Stdin: &countingReader{r: r, ctx: ctx}})
	}
	rel, err := workspacePath(dir)
	if err != nil {
		return err
	}
	root, err := m.root()
	if err != nil {
		return err
	}
	defer root.Close()
	used, err := m.diskUsage()
	if err != nil {
		return err
	}
	if err := m.e.checkReserve(); err != nil {
		return err
	}
	quota := m.Info().Limits.DiskBytes
	return m.asUser(func() error {
		sub, err := openDirs(ctx, root, rel)
		if err != nil {
			return rootError(dir, err)
		}
		defer sub.Close()
		return tarfs.Extract(&countingReader{r: r, ctx: ctx}, sub, tarfs.ExtractOptions{
			RootError: rootError,
			Admit: func(name string, size int64) error {
				if used += size; used > quota {
					return m.quotaError(used)
				}
				return nil
			},
		})
	})
}

// CopyOut writes a file or a directory tree of the machine as a tar stream,
// with names relative to the path's parent (a directory "data" gives
// "data/...").
func (m *Machine) CopyOut(ctx context.Context, p string, w io.Writer) error {
	if m.Info().Flavour == VM {
		abs, err := vmPath(p)
		if err != nil {
			return err
		}
		return m.runChecked(ctx, Command{Argv: []string{"/bin/sh", "-c", `cd -- "$(dirname -- "$1")" && exec tar -c -- "$(basename -- "$1")"`, "sh", abs}, Stdout: w})
	}
	rel, err := workspacePath(p)
	if err != nil {
		return err
	}
	root, err := m.root()
	if err != nil {
		return err
	}
	defer root.Close()
	if _, err := root.Lstat(rel); err != nil {
		return rootError(p, err)
	}
	return writeTar(ctx, root, rel, w, false)
}

// diskUsage is the space the machine's files take on disk: its data and
// its scratch space.
func (m *Machine) diskUsage() (int64, error) {
	u, err := m.measure()
	return u.Bytes, err
}

// DiskUsage is the space the machine's files take on disk, in bytes.
func (m *Machine) DiskUsage() (int64, error) { return m.diskUsage() }

// writeTar writes rel (a file or a directory) of root as a tar stream, named
// from rel's parent down. With contents, rel "." gives root's contents under
// their own names; without, root itself is named "workspace".
func writeTar(ctx context.Context, root *os.Root, rel string, w io.Writer, contents bool) error {
	return tarfs.Write(ctx, w, root, rel, tarfs.WriteOptions{Contents: contents, RootName: path.Base(WorkspaceDir), RootError: rootError})
}
