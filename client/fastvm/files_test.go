//go:build linux

package fastvm_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fastvm "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

// writeRandomFile writes size pseudo-random (incompressible) bytes to p and
// returns their sha256.
func writeRandomFile(t testing.TB, p string, size int64, seed uint64) string {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	if _, err := io.CopyN(io.MultiWriter(f, h), r, size); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// treeDigest describes a directory tree: every entry's relative path, type,
// permissions and sha256 (files) or target (links).
func treeDigest(t testing.TB, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case rel == ".":
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			fmt.Fprintf(&b, "%s link %s\n", rel, target)
		case d.IsDir():
			fmt.Fprintf(&b, "%s dir\n", rel)
		default:
			fmt.Fprintf(&b, "%s %v %s\n", rel, info.Mode().Perm(), fileSHA(t, p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// sampleTree makes a directory with nested, empty, executable, binary and
// oddly named files, an empty directory and a relative symlink.
func sampleTree(t testing.TB, root string, bigSize int64) {
	t.Helper()
	for _, d := range []string{"sub/deeper", "empty dir", "with space"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"a.txt":                 "alpha\n",
		"sub/run.sh":            "#!/bin/sh\necho ran\n",
		"sub/deeper/empty":      "",
		"with space/it's \"q\"": "quotes",
		"sub/deeper/" + strings.Repeat("long", 40): "long name",
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	writeRandomFile(t, filepath.Join(root, "sub", "big.bin"), bigSize, 7)
	if err := os.Symlink("../a.txt", filepath.Join(root, "sub", "link")); err != nil {
		t.Fatal(err)
	}
}

func TestEmuUploadDownloadFile(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	dir := t.TempDir()
	src := filepath.Join(dir, "src.bin")
	sum := writeRandomFile(t, src, 3<<20+17, 1)

	if err := env.c.Upload(ctx, vm.ID, src, "/root/new/dir/f.bin"); err != nil {
		t.Fatal(err)
	}
	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"sha256sum", "/root/new/dir/f.bin"}})
	if err != nil || !strings.HasPrefix(res.Stdout, sum) {
		t.Fatalf("in the VM: %+v, %v; want sha256 %s", res, err, sum)
	}
	// The signed-URL PUT: no API key, octet-stream, Content-Length.
	puts := env.wire.find("PUT", "/_emulator/objects/")
	if len(puts) != 1 || puts[0].Header.Get("X-API-Key") != "" || puts[0].Header.Get("Content-Type") != "application/octet-stream" || puts[0].Length != 3<<20+17 {
		t.Fatalf("storage PUT %+v", puts)
	}
	for _, call := range []string{"/files/presign", "/files/fetch"} {
		if n := len(env.wire.find("POST", "/v1/vms/"+vm.ID+call)); n != 1 {
			t.Errorf("%d %s calls, want 1", n, call)
		}
	}

	dst := filepath.Join(dir, "out", "copy.bin")
	if err := env.c.Download(ctx, vm.ID, "/root/new/dir/f.bin", dst); err != nil {
		t.Fatal(err)
	}
	if got := fileSHA(t, dst); got != sum {
		t.Fatalf("downloaded sha256 %s, want %s", got, sum)
	}
	gets := env.wire.find("GET", "/_emulator/objects/")
	if len(gets) != 1 || gets[0].Header.Get("X-API-Key") != "" {
		t.Fatalf("storage GET %+v", gets)
	}
	// Downloading again replaces the file; an empty file works too.
	if _, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell(": > /root/empty")}); err != nil {
		t.Fatal(err)
	}
	if err := env.c.Download(ctx, vm.ID, "/root/empty", dst); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Size() != 0 {
		t.Fatalf("empty download: %v %v", fi, err)
	}
	if err := env.c.Upload(ctx, vm.ID, dst, "/root/empty-again"); err != nil {
		t.Fatal(err)
	}
	if res, _ := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("test -f /root/empty-again && wc -c < /root/empty-again")}); strings.TrimSpace(res.Stdout) != "0" {
		t.Fatalf("empty upload: %+v", res)
	}
}

func TestEmuUploadDownloadDirectory(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	src := filepath.Join(t.TempDir(), "tree")
	sampleTree(t, src, 2<<20)
	want := treeDigest(t, src)

	if err := env.c.Upload(ctx, vm.ID, src, "/srv/tree"); err != nil {
		t.Fatal(err)
	}
	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("/srv/tree/sub/run.sh && cat /srv/tree/sub/link && ls /var/tmp | grep -c fastvm-upload")})
	if err != nil || res.Stdout != "ran\nalpha\n0\n" {
		t.Fatalf("in the VM: %+v, %v (want the script to run, the link to resolve and no staging file left)", res, err)
	}
	// The directory goes up chunked, with no Content-Length.
	puts := env.wire.find("PUT", "/_emulator/objects/")
	if len(puts) != 1 || puts[0].Length != -1 || len(puts[0].Encoding) == 0 || puts[0].Encoding[0] != "chunked" || puts[0].Header.Get("X-API-Key") != "" {
		t.Fatalf("storage PUT %+v", puts)
	}

	dst := filepath.Join(t.TempDir(), "back")
	if err := env.c.Download(ctx, vm.ID, "/srv/tree", dst); err != nil {
		t.Fatal(err)
	}
	if got := treeDigest(t, dst); got != want {
		t.Fatalf("downloaded tree\n%s\nwant\n%s", got, want)
	}
	// Downloading into an existing directory merges.
	os.WriteFile(filepath.Join(dst, "mine"), []byte("kept"), 0o644)
	if err := env.c.Download(ctx, vm.ID, "/srv/tree", dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "mine")); string(b) != "kept" {
		t.Error("a local file was lost in the merge")
	}
}

func TestEmuTransferErrors(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	dir := t.TempDir()
	var fte *fastvm.FileTransferError

	err := env.c.Download(ctx, vm.ID, "/no/such/path", filepath.Join(dir, "x"))
	if !errors.As(err, &fte) || !errors.Is(err, fs.ErrNotExist) || fte.Op != "download" {
		t.Fatalf("missing remote path: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Error("a failed download left a file")
	}
	err = env.c.Upload(ctx, vm.ID, filepath.Join(dir, "missing"), "/root/x")
	if !errors.As(err, &fte) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing local path: %v", err)
	}
	// A VM-side failure carries the command's result: unpacking a
	// directory under a regular file cannot work.
	src := filepath.Join(dir, "tree")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	err = env.c.Upload(ctx, vm.ID, src, "/etc/hostname/sub")
	if !errors.As(err, &fte) || fte.ExecResult == nil || fte.ExecResult.ExitCode == 0 || fte.ExecResult.Stderr == "" {
		t.Fatalf("VM-side failure: %v", err)
	}
	if !strings.Contains(err.Error(), "exit code") {
		t.Errorf("error %q lacks the exit code", err)
	}
	// Transfers to an unknown VM fail with the API's 404.
	if err := env.c.Upload(ctx, "00000000-0000-0000-0000-000000000000", filepath.Join(src, "f"), "/root/f"); !fastvm.IsNotFound(err) {
		t.Fatalf("unknown VM: %v", err)
	}
}

func TestEmuBuild(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{}, fastvm.WithPollInterval(500*time.Millisecond))
	ctx := context.Background()
	bctx := t.TempDir()
	os.MkdirAll(filepath.Join(bctx, "app"), 0o755)
	os.WriteFile(filepath.Join(bctx, "app", "main.py"), []byte("print('built')\n"), 0o644)
	os.WriteFile(filepath.Join(bctx, "Dockerfile"), []byte("FROM python:3.13-slim\nWORKDIR /opt/app\nCOPY app/ /opt/app/\nRUN echo ok > /opt/app/run-marker\nCMD [\"python3\", \"main.py\"]\n"), 0o644)

	snap, err := env.c.Build(ctx, fastvm.BuildRequest{Name: "app-image"}, bctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Status != fastvm.SnapshotReady || snap.Name != "app-image" {
		t.Fatalf("snapshot %+v", snap)
	}
	puts := env.wire.find("PUT", "/_emulator/objects/")
	if len(puts) != 1 || puts[0].Header.Get("Content-Type") != "application/gzip" || puts[0].Header.Get("X-API-Key") != "" {
		t.Fatalf("context PUT %+v", puts)
	}
	if posts := env.wire.find("POST", "/v1/builds"); len(posts) != 1 || posts[0].Status != 202 {
		t.Fatalf("build POSTs %+v, want one 202", posts)
	}
	vm := env.launch(t, fastvm.LaunchRequest{SnapshotID: snap.ID})
	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("cd /opt/app && python3 main.py && cat run-marker")})
	if err != nil || res.Stdout != "built\nok\n" {
		t.Fatalf("in the built VM: %+v, %v", res, err)
	}

	// A failing RUN: *BuildError with the server's diagnostic.
	_, err = env.c.Build(ctx, fastvm.BuildRequest{DockerfileContent: "FROM debian\nRUN echo broken-step >&2; exit 9\n"}, "")
	var be *fastvm.BuildError
	if !errors.As(err, &be) || be.Status != fastvm.BuildFailed || be.BuildID == "" || be.Message == "" {
		t.Fatalf("failing build: %v", err)
	}
	// Neither an image nor a Dockerfile: refused before any request.
	if _, err := env.c.Build(ctx, fastvm.BuildRequest{}, ""); err == nil {
		t.Fatal("an empty build was accepted")
	}
	// The raw endpoints: an image-only build.
	b, err := env.c.CreateBuild(ctx, fastvm.BuildRequest{ImageRef: "alpine:3"})
	if err != nil || b.Status != fastvm.BuildPending || b.ImageRef != "alpine:3" {
		t.Fatalf("create build %+v, %v", b, err)
	}
	if b, err = env.c.GetBuild(ctx, b.ID); err != nil || b.ID == "" {
		t.Fatalf("get build %+v, %v", b, err)
	}
}
