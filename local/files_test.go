//go:build linux && !vmcp_nolocal

package local

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/internal/tarfs"
)

// randomReader yields n reproducible pseudo-random bytes.
func randomReader(seed uint64, n int64) io.Reader {
	var s [32]byte
	s[0] = byte(seed)
	return io.LimitReader(rand.NewChaCha8(s), n)
}

func TestFileLargeRoundTripWithBoundedMemory(t *testing.T) {
	const size = 200 << 20
	e := newTestEngine(t, Options{Limits: Limits{DiskBytes: 1 << 30}})
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	debug.FreeOSMemory()
	before := rss()
	sampler := startRSSSampler()
	w, err := m.WriteFile(ctx, "/workspace/data/big.bin", randomReader(1, size), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := m.ReadFile(ctx, "data/big.bin", h)
	peak := sampler.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if w.Bytes != size || n != size || w.Path != "/workspace/data/big.bin" {
		t.Fatalf("wrote %d as %s, read %d", w.Bytes, w.Path, n)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != w.SHA256 {
		t.Fatalf("sha256 differs: wrote %s read %s", w.SHA256, got)
	}
	src := sha256.New()
	io.Copy(src, randomReader(1, size))
	if hex.EncodeToString(src.Sum(nil)) != w.SHA256 {
		t.Fatal("WriteFile reported a sha256 that is not the source's")
	}
	t.Logf("RSS grew by %.1f MiB moving 2×200 MiB", float64(peak-before)/(1<<20))
	if peak-before > 32<<20 {
		t.Fatalf("RSS grew by %d MiB: file transfer is not streamed", (peak-before)>>20)
	}
	// The machine sees the file, owned by its user.
	res := mustRun(t, m, Command{Shell: "sha256sum data/big.bin; stat -c %U data/big.bin"})
	if !strings.HasPrefix(res.Stdout, w.SHA256) || !strings.HasSuffix(res.Stdout, "sandbox\n") {
		t.Fatalf("inside the machine: %q", res.Stdout)
	}
	mustRun(t, m, Command{Shell: "echo changed >> data/big.bin"}) // and may change it
}

func TestFileDirectoryRoundTrip(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	ctx := context.Background()
	host := t.TempDir()
	files := map[string]string{"proj/a.txt": "alpha\n", "proj/sub/b.py": "print('b')\n", "proj/sub/deeper/c.bin": "\x00\x01\x02"}
	for name, content := range files {
		p := filepath.Join(host, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(content), 0o644)
	}
	os.Symlink("a.txt", filepath.Join(host, "proj/link"))
	var tarball bytes.Buffer
	if err := writeHostTar(&tarball, filepath.Join(host, "proj")); err != nil {
		t.Fatal(err)
	}
	if err := m.CopyIn(ctx, "incoming", &tarball); err != nil {
		t.Fatal(err)
	}
	res := mustRun(t, m, Command{Shell: "cd incoming/proj && cat a.txt sub/b.py && readlink link && python3 sub/b.py"})
	if res.Stdout != "alpha\nprint('b')\na.txt\nb\n" {
		t.Fatalf("inside the machine: %q %q", res.Stdout, res.Stderr)
	}
	var out bytes.Buffer
	if err := m.CopyOut(ctx, "/workspace/incoming/proj", &out); err != nil {
		t.Fatal(err)
	}
	back := t.TempDir()
	if err := extractHostTar(&out, back); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		got, err := os.ReadFile(filepath.Join(back, name))
		if err != nil || string(got) != content {
			t.Fatalf("%s came back as %q (%v)", name, got, err)
		}
	}
	if l, _ := os.Readlink(filepath.Join(back, "proj/link")); l != "a.txt" {
		t.Fatalf("symlink came back as %q", l)
	}
	list, err := m.List(ctx, "incoming/proj")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range list {
		names = append(names, filepath.Base(f.Path))
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "a.txt,link,sub" {
		t.Fatalf("list: %v", names)
	}
}

func TestFilePathsThatLeaveTheWorkspaceAreRefused(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	ctx := context.Background()
	mustRun(t, m, Command{Shell: "ln -s /etc etc-link && ln -s ../.. up && mkdir d && ln -s /etc/passwd d/pw"})
	passwd, _ := os.ReadFile("/etc/passwd")
	for _, p := range []string{"../../etc/passwd", "/etc/passwd", "/workspace/../etc/passwd", "etc-link/passwd", "up/etc/passwd", "d/pw"} {
		_, err := m.ReadFile(ctx, p, io.Discard)
		var pe *PathError
		if !errors.As(err, &pe) {
			t.Errorf("read %q: %v, want a refusal", p, err)
			continue
		}
		if !strings.Contains(pe.Reason, "workspace") && !strings.Contains(pe.Reason, "outside") {
			t.Errorf("read %q: unclear reason %q", p, pe.Reason)
		}
		// Writing to a symlink replaces the link itself, inside the workspace;
		// every other path is refused.
		if _, err := m.WriteFile(ctx, p, strings.NewReader("x"), 0); err == nil && p != "d/pw" {
			t.Errorf("write %q was accepted", p)
		}
	}
	if now, _ := os.ReadFile("/etc/passwd"); !bytes.Equal(now, passwd) {
		t.Fatal("the host's /etc/passwd changed")
	}
	if res := mustRun(t, m, Command{Shell: "test -L d/pw || cat d/pw"}); res.Stdout != "x" {
		t.Fatalf("d/pw should now be the uploaded file: %q", res.Stdout)
	}
	if _, err := m.WriteFile(ctx, "etc-link/evil", strings.NewReader("x"), 0); err == nil {
		t.Fatal("write through a symlink to /etc was accepted")
	}
	if _, err := os.Stat("/etc/evil"); err == nil {
		t.Fatal("/etc/evil exists on the host")
	}
	// A tar stream cannot escape either.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "../escape.txt", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	tw.Write([]byte("x"))
	tw.Close()
	if err := m.CopyIn(ctx, "in", &tb); err == nil {
		t.Fatal("tar entry ../escape.txt was accepted")
	}
}

func TestFileWriteIsAtomicAndChecked(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	ctx := context.Background()
	if _, err := m.WriteFile(ctx, "keep.txt", strings.NewReader("original"), 0); err != nil {
		t.Fatal(err)
	}
	failing := io.MultiReader(strings.NewReader("partial"), errReader{})
	if _, err := m.WriteFile(ctx, "keep.txt", failing, 0); err == nil {
		t.Fatal("a failed upload reported success")
	}
	var got bytes.Buffer
	m.ReadFile(ctx, "keep.txt", &got)
	if got.String() != "original" {
		t.Fatalf("a failed upload changed the file to %q", got.String())
	}
	res := mustRun(t, m, Command{Shell: "ls -A"})
	if res.Stdout != "keep.txt\n" {
		t.Fatalf("a failed upload left %q", res.Stdout)
	}
	if _, err := m.ReadFile(ctx, "missing.txt", io.Discard); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := m.ReadFile(ctx, ".", io.Discard); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory read as a file: %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection lost") }

// writeHostTar writes the host file or directory at hostPath as a tar
// stream named from its last element, as the tools send one.
func writeHostTar(w io.Writer, hostPath string) error {
	root, err := os.OpenRoot(filepath.Dir(hostPath))
	if err != nil {
		return err
	}
	defer root.Close()
	return tarfs.Write(context.Background(), w, root, filepath.Base(hostPath), tarfs.WriteOptions{})
}

// extractHostTar unpacks a tar stream into the host directory dir, as the
// tools save one.
func extractHostTar(r io.Reader, dir string) error {
	return tarfs.ExtractDir(r, dir, tarfs.ExtractOptions{ConfineLinks: true})
}
