//go:build linux

package tools

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/vmcp-dev/vmcp/internal/bigargs"
)

// source and target open host paths for a test, closing what they opened.
func source(a hostAccess, p string) (string, error) {
	s, err := a.openSource(p)
	if err != nil {
		return "", err
	}
	s.Close()
	return s.path, nil
}

func target(a hostAccess, p string) (string, error) {
	t, err := a.openTarget(p)
	if err != nil {
		return "", err
	}
	t.Close()
	return t.path, nil
}

func TestAllowedRoots(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(root, "in.txt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(outside, "out.txt"), []byte("x"), 0o644)
	if err := os.Symlink(filepath.Join(outside, "out.txt"), filepath.Join(root, "link.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "linkdir")); err != nil {
		t.Fatal(err)
	}
	roots, err := resolveRoots([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	a := hostAccess{allowed: roots}
	if _, err := source(a, filepath.Join(root, "in.txt")); err != nil {
		t.Errorf("inside: %v", err)
	}
	if _, err := source(a, "in.txt"); err != nil {
		t.Errorf("relative: %v", err)
	}
	for _, p := range []string{filepath.Join(outside, "out.txt"), filepath.Join(root, "link.txt"), filepath.Join(root, "linkdir", "out.txt"), filepath.Join(root, "..", filepath.Base(outside), "out.txt"), "/etc/passwd"} {
		_, err := source(a, p)
		if err == nil || !strings.Contains(err.Error(), "outside the allowed roots") || !strings.Contains(err.Error(), root) {
			t.Errorf("%s: got %v, want a refusal naming the root", p, err)
		}
	}
	// Whether a path outside the roots exists is nobody's business.
	if _, err := source(a, filepath.Join(outside, "no-such-file")); err == nil || !strings.Contains(err.Error(), "outside the allowed roots") {
		t.Errorf("missing file outside the roots: %v", err)
	}
	if _, err := target(a, filepath.Join(outside, "no-such-dir", "f")); err == nil || !strings.Contains(err.Error(), "outside the allowed roots") {
		t.Errorf("target in a missing directory outside the roots: %v", err)
	}
	if _, err := target(a, filepath.Join(root, "new.txt")); err != nil {
		t.Errorf("new target: %v", err)
	}
	if _, err := target(a, filepath.Join(root, "in.txt")); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("existing target: %v", err)
	}
	for _, p := range []string{filepath.Join(outside, "new.txt"), filepath.Join(root, "linkdir", "new.txt")} {
		if _, err := target(a, p); err == nil || !strings.Contains(err.Error(), "outside the allowed roots") {
			t.Errorf("target %s: %v", p, err)
		}
	}
	if _, err := target(a, root); err == nil {
		t.Error("the root itself accepted as a new target")
	}
	none := hostAccess{}
	if _, err := source(none, filepath.Join(root, "in.txt")); err == nil || !strings.Contains(err.Error(), "--allowed-roots") {
		t.Errorf("no roots: %v", err)
	}
	// Special files are refused at once, never waited on.
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := source(a, filepath.Join(root, "fifo")); err == nil || !strings.Contains(err.Error(), "not a regular file or a directory") {
		t.Errorf("FIFO: %v", err)
	}

	// Client roots narrow the server's: a path must be under both.
	sub := filepath.Join(root, "sub")
	os.Mkdir(sub, 0o755)
	os.WriteFile(filepath.Join(sub, "s.txt"), []byte("x"), 0o644)
	os.Symlink(filepath.Join(root, "in.txt"), filepath.Join(sub, "up.txt"))
	narrowed := hostAccess{allowed: roots, client: []string{sub, outside}}
	if _, err := source(narrowed, filepath.Join(sub, "s.txt")); err != nil {
		t.Errorf("under both roots: %v", err)
	}
	if p, err := source(narrowed, "s.txt"); err != nil || p != filepath.Join(sub, "s.txt") {
		t.Errorf("relative to the client's first root: %q, %v", p, err)
	}
	if _, err := source(narrowed, filepath.Join(root, "in.txt")); err == nil || !strings.Contains(err.Error(), "roots your MCP client allows") {
		t.Errorf("outside the client's roots: %v", err)
	}
	if _, err := source(narrowed, filepath.Join(sub, "up.txt")); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("a link from the client's root to elsewhere in the server's: %v", err)
	}
	if _, err := source(narrowed, filepath.Join(outside, "out.txt")); err == nil || !strings.Contains(err.Error(), "outside the allowed roots") {
		t.Errorf("a client root outside the server's: %v", err)
	}
}

// TestLocalPathSwapRace is the attack on local_path: a parent directory
// inside the allowed root is exchanged, again and again, with a link to a
// directory outside it, while files are read from and created under it.
// Nothing outside may ever be read or written.
func TestLocalPathSwapRace(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(outside, "f.txt"), []byte("outside-secret"), 0o600)
	os.MkdirAll(filepath.Join(root, "d"), 0o755)
	os.WriteFile(filepath.Join(root, "d", "f.txt"), []byte("inside"), 0o644)
	if err := os.Symlink(outside, filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	roots, _ := resolveRoots([]string{root})
	a := hostAccess{allowed: roots}
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
	reads := 0
	for i := 0; i < 3000; i++ {
		if s, err := a.openSource(filepath.Join(root, "d", "f.txt")); err == nil {
			b, _ := io.ReadAll(s.file)
			s.Close()
			if string(b) == "outside-secret" {
				t.Fatalf("read the file outside the root on try %d", i)
			}
			reads++
		}
		name := "new" + strconv.Itoa(i)
		if tg, err := a.openTarget(filepath.Join(root, "d", name)); err == nil {
			if f, err := tg.parent.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
			tg.Close()
		}
	}
	stop.Store(true)
	wg.Wait()
	entries, _ := os.ReadDir(outside)
	if len(entries) != 1 {
		t.Fatalf("files were created outside the root: %d entries", len(entries))
	}
	if reads == 0 {
		t.Fatal("no read succeeded: the race test tested nothing")
	}
}

func TestProgressRateLimit(t *testing.T) {
	var mu sync.Mutex
	var sent []string
	p := newProgress(func(n float64, msg string) {
		mu.Lock()
		sent = append(sent, msg)
		mu.Unlock()
	})
	for i := 0; i < 1000; i++ {
		p.line("stdout", "line")
	}
	time.Sleep(250 * time.Millisecond)
	p.line("stderr", "last")
	p.stop()
	mu.Lock()
	defer mu.Unlock()
	if len(sent) < 2 || len(sent) > 5 {
		t.Errorf("%d notifications for 1001 lines over ~250ms: %q", len(sent), sent)
	}
	if sent[len(sent)-1] != "stderr: last" {
		t.Errorf("last notification %q, want the last line", sent[len(sent)-1])
	}
	var nilP *progress
	nilP.line("stdout", "x") // no reporter: no-op
	nilP.stop()
	if nilP.onOutput() != nil {
		t.Error("nil reporter has a callback")
	}
}

func TestTrimPartialRune(t *testing.T) {
	s := []byte("héllo €")
	for i := 0; i <= len(s); i++ {
		if got := trimPartialRune(s[:i]); !utf8.Valid(got) {
			t.Errorf("cut at %d: %q not valid", i, got)
		}
	}
}

func TestDirDigest(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		os.MkdirAll(filepath.Join(d, "sub"), 0o755)
		os.WriteFile(filepath.Join(d, "x.txt"), []byte("x"), 0o644)
		os.WriteFile(filepath.Join(d, "sub", "y.bin"), []byte{0, 1, 2}, 0o644)
	}
	n, size, da, err := dirDigest(rootOf(t, a))
	if err != nil || n != 2 || size != 4 {
		t.Fatalf("dirDigest: %d files %d bytes %v", n, size, err)
	}
	_, _, db, _ := dirDigest(rootOf(t, b))
	if da != db {
		t.Error("equal trees digest differently")
	}
	os.WriteFile(filepath.Join(b, "sub", "y.bin"), []byte{0, 1, 3}, 0o644)
	if _, _, db, _ = dirDigest(rootOf(t, b)); da == db {
		t.Error("different trees digest the same")
	}
}

func rootOf(t *testing.T, dir string) *os.Root {
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestShortStringsKeepsTheShape(t *testing.T) {
	long := strings.Repeat("a\\\"b", 5000)
	raw := []byte(`{"path":"x.txt","content":"` + long + `","n":3,"list":["short","` + long + `"],"o":{"k":"v\"q"}}`)
	got := string(shortStrings(raw))
	want := `{"path":"x.txt","content":"(long)","n":3,"list":["short","(long)"],"o":{"k":"v\"q"}}`
	if got != want {
		t.Fatalf("got %.200s", got)
	}
	if s := string(shortStrings([]byte(`{"a":"` + strings.Repeat("z", 5000)))); !strings.HasPrefix(s, `{"a":"zzz`) {
		t.Fatalf("an unterminated string changed: %.20s", s)
	}
}

// TestTextTakesItsValueBack: a Text argument set aside by the transport
// reads the request's bytes; a placeholder nobody holds (forged, or of a
// request that ended) is an error, never the placeholder's own text.
func TestTextTakesItsValueBack(t *testing.T) {
	content := strings.Repeat(`a"b\n`, bigargs.MinSize)
	msg, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
		"params": map[string]any{"name": "upload_file", "arguments": map[string]any{"path": "x", "content": content}}})
	noteTextArguments[UploadFileInput]("upload_file")
	small, drop, ok := bigargs.SetAside(msg, IsTextArgument)
	if !ok {
		t.Fatal("upload_file content was not set aside")
	}
	var req struct {
		Params struct {
			Arguments json.RawMessage `json:"arguments"`
		} `json:"params"`
	}
	if err := json.Unmarshal(small, &req); err != nil {
		t.Fatal(err)
	}
	var in UploadFileInput
	if err := json.Unmarshal(req.Params.Arguments, &in); err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(in.Content.Reader()); string(got) != content {
		t.Fatalf("content read back: %.40q", got)
	}
	drop()
	if err := json.Unmarshal(req.Params.Arguments, &in); err == nil || !strings.Contains(err.Error(), "send the call again") {
		t.Fatalf("a dropped placeholder: %v", err)
	}
}
