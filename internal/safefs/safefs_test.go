//go:build linux

package safefs

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func write(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func TestCopyKeepsWhatATreeHolds(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	write(t, filepath.Join(src, "a.txt"), "alpha", 0o640)
	write(t, filepath.Join(src, "sub", "deep", "b.bin"), string(bytes.Repeat([]byte{0, 1, 2}, 100000)), 0o755)
	write(t, filepath.Join(src, "empty"), "", 0o600)
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/deep", filepath.Join(src, "rel-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "a.txt"), filepath.Join(src, "sub", "hard.txt")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(src, "a.txt"), "user.origin", []byte("test"), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
		t.Fatal(err)
	}
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	os.Chtimes(filepath.Join(src, "a.txt"), old, old)
	os.Chmod(filepath.Join(src, "sub"), 0o750)
	if os.Geteuid() == 0 {
		write(t, filepath.Join(src, "setuid"), "x", 0o755)
		os.Chown(filepath.Join(src, "setuid"), 4242, 4343)
		os.Chmod(filepath.Join(src, "setuid"), 0o755|fs.ModeSetuid)
		if err := unix.Mknod(filepath.Join(src, "whiteout"), unix.S_IFCHR, 0); err != nil {
			t.Fatal(err)
		}
	}

	dst := filepath.Join(t.TempDir(), "dst")
	if err := Copy(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"a.txt": "alpha", "sub/hard.txt": "alpha", "empty": ""} {
		if b, err := os.ReadFile(filepath.Join(dst, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", name, b, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "sub", "deep", "b.bin")); !bytes.Equal(b, bytes.Repeat([]byte{0, 1, 2}, 100000)) {
		t.Error("b.bin differs")
	}
	for name, want := range map[string]string{"abs-link": "/etc/passwd", "rel-link": "sub/deep"} {
		if got, err := os.Readlink(filepath.Join(dst, name)); err != nil || got != want {
			t.Errorf("%s → %q %v", name, got, err)
		}
	}
	a, _ := os.Stat(filepath.Join(dst, "a.txt"))
	h, _ := os.Stat(filepath.Join(dst, "sub", "hard.txt"))
	if !os.SameFile(a, h) {
		t.Error("the hard link became two files")
	}
	if a.Mode().Perm() != 0o640 || !a.ModTime().Equal(old) {
		t.Errorf("a.txt: mode %v, mtime %v", a.Mode(), a.ModTime())
	}
	if fi, _ := os.Stat(filepath.Join(dst, "sub")); fi.Mode().Perm() != 0o750 {
		t.Errorf("sub: mode %v", fi.Mode())
	}
	if fi, err := os.Lstat(filepath.Join(dst, "fifo")); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
		t.Errorf("fifo: %v %v", fi, err)
	}
	if v := make([]byte, 16); true {
		if n, err := unix.Getxattr(filepath.Join(dst, "a.txt"), "user.origin", v); err == nil && string(v[:n]) != "test" {
			t.Errorf("xattr %q", v[:n])
		}
	}
	if os.Geteuid() == 0 {
		fi, _ := os.Stat(filepath.Join(dst, "setuid"))
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode()&fs.ModeSetuid == 0 || st.Uid != 4242 || st.Gid != 4343 {
			t.Errorf("setuid file: %v %d:%d", fi.Mode(), st.Uid, st.Gid)
		}
		var wst unix.Stat_t
		if err := unix.Lstat(filepath.Join(dst, "whiteout"), &wst); err != nil || wst.Mode&unix.S_IFMT != unix.S_IFCHR || wst.Rdev != 0 {
			t.Errorf("whiteout: %+v %v", wst, err)
		}
	}
	u1, err := Measure(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	u2, _ := Measure(context.Background(), dst)
	if u1.Entries != u2.Entries || u1.Entries < 10 {
		t.Errorf("entries: source %d, copy %d", u1.Entries, u2.Entries)
	}
	if err := Copy(context.Background(), src, dst); err == nil {
		t.Error("a copy onto an existing directory succeeded")
	}
}

// TestCopyNeverFollowsASwappedInLink is the snapshot attack: while the tree
// is copied, a directory inside it is exchanged again and again with a
// symbolic link to a directory outside it. The copy must never contain what
// is outside.
func TestCopyNeverFollowsASwappedInLink(t *testing.T) {
	outside := t.TempDir()
	write(t, filepath.Join(outside, "secret.txt"), "outside-secret", 0o600)
	for i := 0; i < 200; i++ {
		write(t, filepath.Join(outside, "more", strconv.Itoa(i)), "outside", 0o600)
	}
	src := filepath.Join(t.TempDir(), "src")
	for i := 0; i < 50; i++ {
		write(t, filepath.Join(src, "d", "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))), "inside", 0o644)
	}
	if err := os.Symlink(outside, filepath.Join(src, "l")); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			unix.Renameat2(unix.AT_FDCWD, filepath.Join(src, "d"), unix.AT_FDCWD, filepath.Join(src, "l"), unix.RENAME_EXCHANGE)
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	dstBase := t.TempDir()
	for i := 0; i < 300; i++ {
		dst := filepath.Join(dstBase, "c"+strconv.Itoa(i))
		if err := Copy(context.Background(), src, dst); err != nil {
			t.Fatalf("copy %d: %v", i, err)
		}
		filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if b, _ := os.ReadFile(p); string(b) == "outside-secret" {
					t.Fatalf("copy %d holds the outside file at %s", i, p)
				}
			}
			return nil
		})
		u, err := Measure(context.Background(), src)
		if err != nil {
			t.Fatal(err)
		}
		if u.Entries > 60 {
			t.Fatalf("measure counted %d entries: it went outside", u.Entries)
		}
	}
}

// TestCopySpecialFilesDoNotBlock: a FIFO where a file was, or a file that
// keeps growing, must not hold the copy.
func TestCopySpecialFilesDoNotBlock(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	write(t, filepath.Join(src, "grow"), "start", 0o644)
	if err := unix.Mkfifo(filepath.Join(src, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	go func() {
		f, _ := os.OpenFile(filepath.Join(src, "grow"), os.O_APPEND|os.O_WRONLY, 0)
		defer f.Close()
		chunk := bytes.Repeat([]byte("g"), 1<<16)
		for !stop.Load() {
			f.Write(chunk)
		}
	}()
	defer stop.Store(true)
	done := make(chan error, 1)
	go func() { done <- Copy(context.Background(), src, filepath.Join(t.TempDir(), "dst")) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the copy did not end")
	}
}

func TestMeasureRefusesTooDeepTrees(t *testing.T) {
	dir := t.TempDir()
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxDepth+5; i++ {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "d", unix.O_DIRECTORY|unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = next
	}
	unix.Close(fd)
	if _, err := Measure(context.Background(), dir); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("measure: %v", err)
	}
	if err := Copy(context.Background(), dir, filepath.Join(t.TempDir(), "c")); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("copy: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
}

func TestMeasureCountsHardLinksOnce(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "big"), strings.Repeat("z", 1<<20), 0o644)
	before, _ := Measure(context.Background(), dir)
	for i := 0; i < 20; i++ {
		os.Link(filepath.Join(dir, "big"), filepath.Join(dir, "l"+strconv.Itoa(i)))
	}
	after, err := Measure(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if after.Bytes != before.Bytes || after.Entries != before.Entries+20 {
		t.Fatalf("before %+v, after 20 links %+v", before, after)
	}
}
