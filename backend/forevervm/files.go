package forevervm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// Files move through the REPL in chunks: an upload is written under a
// temporary name next to its target, checked (size and sha256, computed at
// both ends) and renamed over the target, so that it appears whole or not at
// all; a download is read a budget of bytes per instruction. Only one chunk
// is held here at a time, whatever the size of the file. Relative paths
// start in the machine's home (its HOME; /workspace on the emulator), and no
// path may leave it.

// checkPath refuses paths that no machine could take, before any round trip.
func checkPath(p string) error {
	if p == "" {
		return errors.New("empty path: give a path in the machine (relative paths start in its home)")
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("path %q contains a NUL byte", p)
	}
	return backend.CheckPath(p)
}

// sizeOf is what is left to read of r, when r knows it; -1 otherwise. It
// lets the machine refuse a file that cannot fit before anything is sent.
func sizeOf(r io.Reader) int64 {
	switch v := r.(type) {
	case interface{ Len() int }:
		return int64(v.Len())
	case *os.File:
		fi, err := v.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			return -1
		}
		at, err := v.Seek(0, io.SeekCurrent)
		if err != nil {
			return -1
		}
		return max(fi.Size()-at, 0)
	}
	return -1
}

type putResult struct {
	Path   string `json:"path"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// WriteFile creates or replaces a file under the machine's home with what r
// yields, creating its parent directories. The file appears whole or not at
// all: a failed or cancelled upload leaves the old file as it was.
//
// While the machine writes one chunk, the next one travels: up to
// uploadDepth chunks are in flight (the helper puts each at its offset and
// hashes them in order), which keeps both ends busy.
func (m *Machine) WriteFile(ctx context.Context, p string, r io.Reader, mode fs.FileMode) (*backend.WriteResult, error) {
	if err := checkPath(p); err != nil {
		return nil, err
	}
	if mode == 0 {
		mode = 0o644
	}
	u := &upload{m: m, op: newOpID(), path: p, h: sha256.New()}
	res, err := u.run(ctx, r, mode)
	if err != nil {
		var he *HelperError
		isHelperErr := errors.As(err, &he)
		if u.begun && (!isHelperErr || he.Kind == "lost") {
			// A step may have run or not: undo the upload (the helper did
			// itself when it reported a failure, unless it lost the upload
			// in a restart: then its temporary file is removed by name).
			m.undo(false, u.op, p)
		}
		if isHelperErr && he.Kind == "lost" {
			// The interpreter was stopped under the upload: what stops it
			// mid-write is mostly a full disk or the memory limit.
			return nil, fmt.Errorf("upload %s to ForeverVM machine %s stopped: the machine's Python restarted during it, as when a write fills its disk or its memory: the old file is unchanged; free some space (df -h) and try again (%w)", p, m.name, err)
		}
		return nil, fmt.Errorf("upload %s to ForeverVM machine %s: %w", p, m.name, err)
	}
	return res, nil
}

// uploadDepth is how many chunks of an upload may be in flight at once.
const uploadDepth = 2

type upload struct {
	m     *Machine
	op    string
	path  string
	h     hash.Hash // of what was read, in order
	n     int64     // bytes read
	begun bool      // the first step was sent

	mu  sync.Mutex
	err error // of a chunk in flight
}

func (u *upload) fail(err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var he *HelperError
	// The first error tells why; a later "operation not known" only
	// follows from it.
	if u.err == nil || errors.As(u.err, &he) && he.Kind == "lost" {
		u.err = err
	}
}

func (u *upload) failed() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

// read fills buf from r; final says r ended.
func (u *upload) read(r io.Reader, buf []byte) (int, bool, error) {
	k, err := io.ReadFull(r, buf)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
		u.h.Write(buf[:k])
		u.n += int64(k)
		return k, true, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading what to write: %w (nothing was written; the old file is unchanged)", err)
	}
	u.h.Write(buf[:k])
	u.n += int64(k)
	return k, false, nil
}

func (u *upload) run(ctx context.Context, r io.Reader, mode fs.FileMode) (*backend.WriteResult, error) {
	size := sizeOf(r)
	slots := make(chan []byte, uploadDepth)
	for range uploadDepth {
		slots <- nil // a buffer is made on first use
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	var offset int64
	for first := true; ; first = false {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var buf []byte
		select {
		case buf = <-slots:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if err := u.failed(); err != nil {
			return nil, err
		}
		if buf == nil {
			buf = make([]byte, uploadChunk)
		}
		k, final, err := u.read(r, buf)
		if err != nil {
			return nil, err
		}
		args := map[string]any{"op": u.op, "offset": offset}
		name := "put"
		if first {
			name = "put_begin"
			args["path"], args["mode"], args["size"] = u.path, int(mode.Perm()), size
			u.begun = true
		}
		if !first && !final {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := u.m.call(ctx, step{op: name, args: args, data: buf[:k]}, nil); err != nil {
					u.fail(err)
				}
				slots <- buf
			}()
			offset += int64(k)
			continue
		}
		if final {
			// The last chunk commits: everything before it must be in.
			wg.Wait()
			if err := u.failed(); err != nil {
				return nil, err
			}
			args["final"], args["sha256"], args["bytes"] = true, hex.EncodeToString(u.h.Sum(nil)), u.n
		}
		var res putResult
		if err := u.m.call(ctx, step{op: name, args: args, data: buf[:k]}, &res); err != nil {
			return nil, err
		}
		if final {
			if res.Bytes != u.n || res.SHA256 != hex.EncodeToString(u.h.Sum(nil)) {
				return nil, fmt.Errorf("the machine wrote %d bytes with sha256 %s, but %d bytes with sha256 %x were sent", res.Bytes, res.SHA256, u.n, u.h.Sum(nil))
			}
			return &backend.WriteResult{Path: res.Path, Bytes: u.n, SHA256: res.SHA256}, nil
		}
		offset += int64(k)
		slots <- buf
	}
}

type readResult struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Bytes  int64  `json:"bytes"`
	EOF    bool   `json:"eof"`
	SHA256 string `json:"sha256"`
}

// stream receives a byte stream the helper sends a budget at a time (a file
// or a tar), writing it to w and checking its length and sha256 against the
// helper's at the end.
type stream struct {
	w    io.Writer
	h    hash.Hash
	n    int64
	werr error
}

func (s *stream) onData(stream int, off int64, p []byte) error {
	if stream != 0 || off != s.n {
		return fmt.Errorf("bytes %d… of the stream were lost on the way (got bytes from %d)", s.n, off)
	}
	s.h.Write(p)
	s.n += int64(len(p))
	if s.werr == nil {
		if _, err := s.w.Write(p); err != nil {
			s.werr = err
			return err
		}
	}
	return nil
}

// pull runs the first step of a stream, then "get" steps until its end.
func (m *Machine) pull(ctx context.Context, first step, what string, w io.Writer) (*readResult, int64, error) {
	op := first.args.(map[string]any)["op"].(string)
	s := &stream{w: w, h: sha256.New()}
	first.onData = s.onData
	var res readResult
	err := m.call(ctx, first, &res)
	path := res.Path
	for err == nil && !res.EOF {
		if err = ctx.Err(); err != nil {
			break
		}
		err = m.call(ctx, step{op: "get", args: map[string]any{"op": op, "budget": outputBudget}, onData: s.onData}, &res)
	}
	if err != nil {
		var he *HelperError
		if !errors.As(err, &he) {
			m.undo(false, op, "")
		}
		if s.werr != nil {
			err = s.werr
		}
		return nil, s.n, fmt.Errorf("%s: %w", what, err)
	}
	if res.Bytes != s.n || res.SHA256 != hex.EncodeToString(s.h.Sum(nil)) {
		return nil, s.n, fmt.Errorf("%s: the machine sent %d bytes with sha256 %s, but %d bytes with sha256 %x arrived", what, res.Bytes, res.SHA256, s.n, s.h.Sum(nil))
	}
	res.Path = path
	return &res, s.n, nil
}

// ReadFile streams a regular file of the machine to w and returns its size.
func (m *Machine) ReadFile(ctx context.Context, p string, w io.Writer) (int64, error) {
	if err := checkPath(p); err != nil {
		return 0, err
	}
	first := step{op: "get_begin", args: map[string]any{"op": newOpID(), "path": p, "budget": outputBudget}}
	_, n, err := m.pull(ctx, first, "download "+p, w)
	return n, err
}

// Stat describes a path of the machine (a symbolic link itself, not what it
// points to).
func (m *Machine) Stat(ctx context.Context, p string) (*backend.FileInfo, error) {
	if err := checkPath(p); err != nil {
		return nil, err
	}
	var st struct {
		Path    string `json:"path"`
		Size    int64  `json:"size"`
		Mode    uint32 `json:"mode"`
		MTimeNS int64  `json:"mtime_ns"`
	}
	if err := m.call(ctx, step{op: "stat", args: map[string]any{"path": p}}, &st); err != nil {
		return nil, err
	}
	mode := backend.UnixMode(st.Mode)
	return &backend.FileInfo{Path: st.Path, Size: st.Size, Mode: mode, ModTime: time.Unix(0, st.MTimeNS).UTC(), IsDir: mode.IsDir()}, nil
}

// CopyIn extracts a tar stream into a directory under the machine's home
// (created if missing). The machine extracts it with tarfile's "data"
// filter: entries with ".." or links that would lead out of the directory
// are refused (absolute names are made relative), as are devices and other
// special files; owners are not kept.
func (m *Machine) CopyIn(ctx context.Context, dir string, r io.Reader) error {
	if err := checkPath(dir); err != nil {
		return err
	}
	op := newOpID()
	buf := make([]byte, uploadChunk)
	abort := func() { m.undo(false, op, "") }
	for first := true; ; first = false {
		if err := ctx.Err(); err != nil {
			if !first {
				abort()
			}
			return fmt.Errorf("copy into %s on ForeverVM machine %s: %w", dir, m.name, err)
		}
		k, rerr := io.ReadFull(r, buf)
		final := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
		if rerr != nil && !final {
			if !first {
				abort()
			}
			return fmt.Errorf("copy into %s: reading the tar stream: %w", dir, rerr)
		}
		args := map[string]any{"op": op, "final": final}
		name := "tar_in"
		if first {
			name = "tar_in_begin"
			args["dir"] = dir
		}
		var res struct {
			Done bool `json:"done"`
		}
		if err := m.call(ctx, step{op: name, args: args, data: buf[:k]}, &res); err != nil {
			var he *HelperError
			if !errors.As(err, &he) {
				abort()
			}
			return fmt.Errorf("copy into %s: %w", dir, err)
		}
		if res.Done {
			// The archive ended (what may follow it is not wanted).
			return nil
		}
		if final {
			return fmt.Errorf("copy into %s: the machine did not finish extracting the tar stream", dir)
		}
	}
}

// CopyOut writes a file or directory tree of the machine as a tar stream,
// with names relative to the path's parent (a directory "data" gives
// "data/..."). Symbolic links are stored as links; FIFOs, sockets and
// devices are left out.
func (m *Machine) CopyOut(ctx context.Context, p string, w io.Writer) error {
	if err := checkPath(p); err != nil {
		return err
	}
	first := step{op: "tar_begin", args: map[string]any{"op": newOpID(), "path": p, "budget": outputBudget}}
	_, _, err := m.pull(ctx, first, "copy out "+p, w)
	return err
}
