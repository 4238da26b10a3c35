package tools

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func TestAllowedRoots(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(root, "in.txt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(outside, "out.txt"), []byte("x"), 0o644)
	if err := os.Symlink(filepath.Join(outside, "out.txt"), filepath.Join(root, "link.txt")); err != nil {
		t.Fatal(err)
	}
	roots, err := resolveRoots([]string{root})
	if err != nil {
		t.Fatal(err)
	}
	a := hostAccess{allowed: roots}
	if _, err := a.hostSource(filepath.Join(root, "in.txt")); err != nil {
		t.Errorf("inside: %v", err)
	}
	if _, err := a.hostSource("in.txt"); err != nil {
		t.Errorf("relative: %v", err)
	}
	for _, p := range []string{filepath.Join(outside, "out.txt"), filepath.Join(root, "link.txt"), filepath.Join(root, "..", filepath.Base(outside), "out.txt"), "/etc/passwd"} {
		_, err := a.hostSource(p)
		if err == nil || !strings.Contains(err.Error(), "outside the allowed roots") || !strings.Contains(err.Error(), root) {
			t.Errorf("%s: got %v, want a refusal naming the root", p, err)
		}
	}
	// Whether a path outside the roots exists is nobody's business.
	if _, err := a.hostSource(filepath.Join(outside, "no-such-file")); err == nil || !strings.Contains(err.Error(), "outside the allowed roots") {
		t.Errorf("missing file outside the roots: %v", err)
	}
	if _, err := a.hostTarget(filepath.Join(outside, "no-such-dir", "f")); err == nil || !strings.Contains(err.Error(), "outside the allowed roots") {
		t.Errorf("target in a missing directory outside the roots: %v", err)
	}
	if _, err := a.hostTarget(filepath.Join(root, "new.txt")); err != nil {
		t.Errorf("new target: %v", err)
	}
	if _, err := a.hostTarget(filepath.Join(root, "in.txt")); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("existing target: %v", err)
	}
	if _, err := a.hostTarget(filepath.Join(outside, "new.txt")); err == nil {
		t.Error("target outside the roots accepted")
	}
	if _, err := a.hostTarget(root); err == nil {
		t.Error("the root itself accepted as a new target")
	}
	none := hostAccess{}
	if _, err := none.hostSource(filepath.Join(root, "in.txt")); err == nil || !strings.Contains(err.Error(), "--allowed-roots") {
		t.Errorf("no roots: %v", err)
	}

	// Client roots narrow the server's: a path must be under both.
	sub := filepath.Join(root, "sub")
	os.Mkdir(sub, 0o755)
	os.WriteFile(filepath.Join(sub, "s.txt"), []byte("x"), 0o644)
	narrowed := hostAccess{allowed: roots, client: []string{sub, outside}}
	if _, err := narrowed.hostSource(filepath.Join(sub, "s.txt")); err != nil {
		t.Errorf("under both roots: %v", err)
	}
	if p, err := narrowed.hostSource("s.txt"); err != nil || p != filepath.Join(sub, "s.txt") {
		t.Errorf("relative to the client's first root: %q, %v", p, err)
	}
	if _, err := narrowed.hostSource(filepath.Join(root, "in.txt")); err == nil || !strings.Contains(err.Error(), "roots your MCP client allows") {
		t.Errorf("outside the client's roots: %v", err)
	}
	if _, err := narrowed.hostSource(filepath.Join(outside, "out.txt")); err == nil || !strings.Contains(err.Error(), "outside the allowed roots") {
		t.Errorf("a client root outside the server's: %v", err)
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
	n, size, da, err := dirDigest(a)
	if err != nil || n != 2 || size != 4 {
		t.Fatalf("dirDigest: %d files %d bytes %v", n, size, err)
	}
	_, _, db, _ := dirDigest(b)
	if da != db {
		t.Error("equal trees digest differently")
	}
	os.WriteFile(filepath.Join(b, "sub", "y.bin"), []byte{0, 1, 3}, 0o644)
	if _, _, db, _ = dirDigest(b); da == db {
		t.Error("different trees digest the same")
	}
}
