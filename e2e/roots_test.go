//go:build linux

package e2e

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestClientRoots: when the client declares roots, local_path must lie under
// them as well as under the server's allowed roots — over the current
// protocol (roots asked for with a multi round-trip input request) and over
// an older one (a roots/list request from the server).
func TestClientRoots(t *testing.T) {
	t.Parallel()
	for _, version := range []string{"", "2025-11-25"} {
		name := version
		if name == "" {
			name = "latest"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			root, mine, other := rootDirs(t)
			h := startWith(t, t.TempDir(), root, clientOptions{roots: []string{mine}, protocolVersion: version})

			var up struct {
				Bytes int64 `json:"bytes"`
			}
			h.ok(t, "upload_file", map[string]any{"path": "a.txt", "local_path": filepath.Join(mine, "f.txt")}, &up)
			if up.Bytes != int64(len("from "+mine)) {
				t.Errorf("uploaded %d bytes", up.Bytes)
			}
			// Relative paths start at the client's first root.
			h.ok(t, "upload_file", map[string]any{"path": "b.txt", "local_path": "f.txt"}, &up)
			h.fails(t, "upload_file", map[string]any{"path": "c.txt", "local_path": filepath.Join(other, "f.txt")}, "roots your MCP client allows ("+mine+")")
			h.fails(t, "download_file", map[string]any{"path": "a.txt", "local_path": filepath.Join(other, "copy.txt")}, "roots your MCP client allows")
			h.ok(t, "download_file", map[string]any{"path": "a.txt", "local_path": filepath.Join(mine, "copy.txt")}, nil)
			got, err := os.ReadFile(filepath.Join(mine, "copy.txt"))
			if err != nil || string(got) != "from "+mine {
				t.Errorf("downloaded %q, %v", got, err)
			}
			if _, err := os.Stat(filepath.Join(other, "copy.txt")); err == nil {
				t.Error("a refused download wrote its file")
			}
			// Content uploads do not involve the host and need no roots.
			h.ok(t, "upload_file", map[string]any{"path": "d.txt", "content": strings.Repeat("x", 10)}, nil)
		})
	}
}

// rootDirs makes a directory root holding two others, mine and other, each
// with a file f.txt that says "from <its directory>".
func rootDirs(t *testing.T) (root, mine, other string) {
	t.Helper()
	root = t.TempDir()
	mine, other = filepath.Join(root, "mine"), filepath.Join(root, "other")
	for _, d := range []string{mine, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f.txt"), []byte("from "+d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, mine, other
}

// TestLocalPathSwapAttack: a directory under the allowed root is exchanged,
// again and again, with a link to a directory outside it while upload_file
// reads from it and download_file writes into it. No byte from outside may
// reach the machine, and nothing may be written outside.
func TestLocalPathSwapAttack(t *testing.T) {
	t.Parallel()
	root, outside := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(outside, "f.txt"), []byte("outside-secret"), 0o600)
	os.MkdirAll(filepath.Join(root, "d"), 0o755)
	os.WriteFile(filepath.Join(root, "d", "f.txt"), []byte("inside"), 0o644)
	if err := os.Symlink(outside, filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	h := startIn(t, t.TempDir(), root)
	h.ok(t, "upload_file", map[string]any{"path": "probe.txt", "content": "probe"}, nil)
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			unix.Renameat2(unix.AT_FDCWD, filepath.Join(root, "d"), unix.AT_FDCWD, filepath.Join(root, "l"), unix.RENAME_EXCHANGE)
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	uploaded := 0
	for i := 0; i < 300; i++ {
		res := h.call(t, "upload_file", map[string]any{"path": "got.txt", "local_path": filepath.Join(root, "d", "f.txt")})
		if !res.IsError {
			uploaded++
			var got struct {
				SHA256 string `json:"sha256"`
			}
			decode(t, res, &got)
			if got.SHA256 == fmt.Sprintf("%x", sha256.Sum256([]byte("outside-secret"))) {
				t.Fatalf("try %d: the machine received the file outside the root", i)
			}
		}
		h.call(t, "download_file", map[string]any{"path": "probe.txt", "local_path": filepath.Join(root, "d", "n"+strconv.Itoa(i))})
	}
	stop.Store(true)
	wg.Wait()
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Fatalf("download_file wrote %d files outside the root", len(entries)-1)
	}
	if uploaded == 0 {
		t.Fatal("no upload succeeded: the attack tested nothing")
	}
}

// TestDirectoryDownloadPlantsNoLinkOutside: a machine's directory holding
// links to host paths is saved without them.
func TestDirectoryDownloadPlantsNoLinkOutside(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.ok(t, "exec_command", map[string]any{"command": "mkdir -p out/sub && echo hi > out/sub/f && ln -s /etc out/etc && ln -s ../../../.. out/sub/up && ln -s f out/sub/ok && mkfifo out/pipe"}, nil)
	res := h.ok(t, "download_file", map[string]any{"path": "out", "local_path": filepath.Join(h.root, "saved")}, nil)
	if !strings.Contains(text(res), "Left out 2 symbolic links") {
		t.Errorf("result: %s", text(res))
	}
	for _, p := range []string{"etc", "sub/up", "pipe"} {
		if _, err := os.Lstat(filepath.Join(h.root, "saved", p)); err == nil {
			t.Errorf("%s was planted on the host", p)
		}
	}
	if b, err := os.ReadFile(filepath.Join(h.root, "saved", "sub", "ok")); err != nil || string(b) != "hi\n" {
		t.Errorf("the inner link: %q %v", b, err)
	}
	// And a FIFO is refused at once.
	h.fails(t, "download_file", map[string]any{"path": "out/pipe"}, "not a regular file (a FIFO)")
}

// TestDeepPathIsRefusedAtOnce: upload_file to a path 2000 directories deep
// costs nothing: a clear refusal, at once.
func TestDeepPathIsRefusedAtOnce(t *testing.T) {
	t.Parallel()
	h := start(t)
	start := time.Now()
	h.fails(t, "upload_file", map[string]any{"path": strings.Repeat("d/", 2000) + "f", "content": "x"}, "directories deep")
	h.fails(t, "download_file", map[string]any{"path": strings.Repeat("d/", 2000) + "f"}, "directories deep")
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the refusals took %v", d)
	}
}
