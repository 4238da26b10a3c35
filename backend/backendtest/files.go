package backendtest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/backend"
)

// write writes a file that must be written and checks what WriteFile says
// it wrote.
func write(t *testing.T, m backend.Machine, p string, data []byte, mode fs.FileMode) *backend.WriteResult {
	t.Helper()
	w, err := m.(backend.FileStore).WriteFile(ctx(t), p, bytes.NewReader(data), mode)
	if err != nil {
		t.Fatalf("WriteFile(%s): %v", p, err)
	}
	sum := sha256.Sum256(data)
	if w.Bytes != int64(len(data)) || w.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("WriteFile(%s) of %d bytes says it wrote %d bytes with sha256 %s", p, len(data), w.Bytes, w.SHA256)
	}
	if !strings.HasSuffix(w.Path, path.Clean(p)) {
		t.Errorf("WriteFile(%s) says it wrote %s", p, w.Path)
	}
	return w
}

// read reads a file that must be there.
func read(t *testing.T, m backend.Machine, p string) []byte {
	t.Helper()
	var b bytes.Buffer
	n, err := m.(backend.FileStore).ReadFile(ctx(t), p, &b)
	if err != nil {
		t.Fatalf("ReadFile(%s): %v", p, err)
	}
	if n != int64(b.Len()) {
		t.Errorf("ReadFile(%s) wrote %d bytes and says %d", p, b.Len(), n)
	}
	return b.Bytes()
}

// stat describes a path that must be there.
func stat(t *testing.T, m backend.Machine, p string) *backend.FileInfo {
	t.Helper()
	fi, err := m.(backend.FileStore).Stat(ctx(t), p)
	if err != nil {
		t.Fatalf("Stat(%s): %v", p, err)
	}
	return fi
}

// allBytes is every byte value, up and down, then again.
func allBytes() []byte {
	var b []byte
	for i := range 256 {
		b = append(b, byte(i))
	}
	for i := range 256 {
		b = append(b, byte(255-i))
	}
	return append(b, b...)
}

// testFiles: text and binary round trips, an empty file, a replaced file,
// parents made on the way, directories in and out as tar, a large file,
// and errors for what is not there. One machine serves the subtests.
func (s *suite) testFiles(t *testing.T) {
	s.need(t, backend.Files)
	m := s.newMachine(t, backend.MachineSpec{})
	fsys := m.(backend.FileStore)

	s.run(t, "Text", func(t *testing.T) {
		data := []byte("hello, machine\nsecond line\n")
		write(t, m, "suite/text.txt", data, 0o644)
		if got := read(t, m, "suite/text.txt"); !bytes.Equal(got, data) {
			t.Errorf("read back %q; want %q", got, data)
		}
		fi := stat(t, m, "suite/text.txt")
		if fi.Size != int64(len(data)) || fi.IsDir || !fi.Mode.IsRegular() {
			t.Errorf("Stat = %+v; want a regular file of %d bytes", fi, len(data))
		}
		if fi.ModTime.IsZero() {
			t.Error("Stat has no modification time")
		}
		// The parent was made on the way.
		if fi := stat(t, m, "suite"); !fi.IsDir || !fi.Mode.IsDir() {
			t.Errorf("Stat(suite) = %+v; want a directory", fi)
		}
		// Replacing a file replaces all of it.
		write(t, m, "suite/text.txt", []byte("short"), 0o644)
		if got := read(t, m, "suite/text.txt"); string(got) != "short" {
			t.Errorf("after a shorter write, read back %q; want \"short\"", got)
		}
		write(t, m, "suite/empty", nil, 0o644)
		if got := read(t, m, "suite/empty"); len(got) != 0 {
			t.Errorf("an empty file reads back as %q", got)
		}
		write(t, m, "suite/a/b/c/deep.txt", []byte("deep"), 0)
		if fi := stat(t, m, "suite/a/b"); !fi.IsDir {
			t.Errorf("Stat(suite/a/b) = %+v; want the parent made", fi)
		}
	})

	s.run(t, "Binary", func(t *testing.T) {
		data := allBytes()
		write(t, m, "suite/binary.bin", data, 0o600)
		if got := read(t, m, "suite/binary.bin"); !bytes.Equal(got, data) {
			t.Errorf("binary round trip: %d bytes back, differing; want all 256 byte values as written", len(got))
		}
	})

	s.run(t, "Mode", func(t *testing.T) {
		write(t, m, "suite/run.sh", []byte("#!/bin/sh\necho ran\n"), 0o755)
		if fi := stat(t, m, "suite/run.sh"); fi.Mode.Perm() != 0o755 {
			t.Errorf("a file written with mode 0755 has mode %v", fi.Mode)
		}
	})

	s.run(t, "Directories", func(t *testing.T) {
		tree := map[string][]byte{
			"tree/a.txt":         []byte("a\n"),
			"tree/sub/b.bin":     allBytes(),
			"tree/sub/deeper/c":  []byte("c"),
			"tree/sub/empty.txt": nil,
		}
		if err := fsys.CopyIn(ctx(t), "copied", bytes.NewReader(tarOf(t, tree, "tree/empty-dir/"))); err != nil {
			t.Fatalf("CopyIn: %v", err)
		}
		for name, data := range tree {
			if got := read(t, m, "copied/"+name); !bytes.Equal(got, data) {
				t.Errorf("copied/%s holds %q; want %q", name, got, data)
			}
		}
		for _, dir := range []string{"copied", "copied/tree/sub/deeper", "copied/tree/empty-dir"} {
			if fi := stat(t, m, dir); !fi.IsDir {
				t.Errorf("Stat(%s) = %+v; want a directory", dir, fi)
			}
		}

		var out bytes.Buffer
		if err := fsys.CopyOut(ctx(t), "copied/tree", &out); err != nil {
			t.Fatalf("CopyOut: %v", err)
		}
		files, dirs := untar(t, out.Bytes())
		if !maps.EqualFunc(files, tree, bytes.Equal) {
			t.Errorf("CopyOut(copied/tree) gave files %q; want %q", slices.Sorted(maps.Keys(files)), slices.Sorted(maps.Keys(tree)))
		}
		for _, d := range []string{"tree", "tree/sub", "tree/empty-dir"} {
			if !dirs[d] {
				t.Errorf("CopyOut(copied/tree) has no directory %s (it has %q)", d, slices.Sorted(maps.Keys(dirs)))
			}
		}

		out.Reset()
		if err := fsys.CopyOut(ctx(t), "copied/tree/a.txt", &out); err != nil {
			t.Fatalf("CopyOut of a file: %v", err)
		}
		if files, _ := untar(t, out.Bytes()); len(files) != 1 || string(files["a.txt"]) != "a\n" {
			t.Errorf("CopyOut(copied/tree/a.txt) gave %q; want a.txt alone", slices.Sorted(maps.Keys(files)))
		}
	})

	s.run(t, "Large", func(t *testing.T) {
		size := s.opts.largeFileBytes()
		want := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), want)
		w, err := fsys.WriteFile(ctx(t), "suite/large.bin", src, 0o644)
		if err != nil {
			t.Fatalf("WriteFile of %d bytes: %v", size, err)
		}
		sum := hex.EncodeToString(want.Sum(nil))
		if w.Bytes != size || w.SHA256 != sum {
			t.Errorf("WriteFile of %d bytes says %d bytes, sha256 %s; want sha256 %s", size, w.Bytes, w.SHA256, sum)
		}
		if fi := stat(t, m, "suite/large.bin"); fi.Size != size {
			t.Errorf("Stat of the large file: %d bytes; want %d", fi.Size, size)
		}
		got := sha256.New()
		n, err := fsys.ReadFile(ctx(t), "suite/large.bin", got)
		if err != nil || n != size || hex.EncodeToString(got.Sum(nil)) != sum {
			t.Errorf("ReadFile of the large file: %d bytes, sha256 %x, %v; want %d bytes, sha256 %s", n, got.Sum(nil), err, size, sum)
		}
	})

	s.run(t, "Missing", func(t *testing.T) {
		if n, err := fsys.ReadFile(ctx(t), "suite/no-such-file", io.Discard); err == nil {
			t.Errorf("ReadFile of a missing file = %d bytes and no error", n)
		}
		if fi, err := fsys.Stat(ctx(t), "suite/no-such-file"); err == nil {
			t.Errorf("Stat of a missing file = %+v and no error", fi)
		}
		if err := fsys.CopyOut(ctx(t), "suite/no-such-dir", io.Discard); err == nil {
			t.Error("CopyOut of a missing path gave no error")
		}
		write(t, m, "suite/dir/f", []byte("f"), 0o644)
		if n, err := fsys.ReadFile(ctx(t), "suite/dir", io.Discard); err == nil {
			t.Errorf("ReadFile of a directory = %d bytes and no error", n)
		}
	})

	s.run(t, "SeenByCommands", func(t *testing.T) {
		// Relative paths mean the same place to files and to commands.
		s.need(t, backend.Shell)
		write(t, m, "suite/shared.txt", []byte("shared\n"), 0o644)
		if out := sh(t, m, "cat suite/shared.txt"); out != "shared\n" {
			t.Errorf("a command reads suite/shared.txt as %q", out)
		}
		sh(t, m, "echo from-command > suite/made.txt")
		if got := read(t, m, "suite/made.txt"); string(got) != "from-command\n" {
			t.Errorf("a file a command made reads back as %q", got)
		}
	})

	s.run(t, "SeenByPython", func(t *testing.T) {
		s.need(t, backend.Python)
		if !s.opts.RealPython {
			t.Skip("the backend's Python cannot open files")
		}
		write(t, m, "suite/py.txt", []byte("from files"), 0o644)
		if r := python(t, m, "open('suite/py.txt').read()"); value(r) != "'from files'" {
			t.Errorf("Python reads suite/py.txt as %s", value(r))
		}
	})
}

// tarOf is a tar of files (with their parent directories) and of extra
// empty directories (names ending in /).
func tarOf(t *testing.T, files map[string][]byte, dirs ...string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	seen := map[string]bool{}
	addDir := func(d string) {
		for _, p := range parents(d) {
			if !seen[p] {
				seen[p] = true
				if err := tw.WriteHeader(&tar.Header{Name: p + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		addDir(path.Dir(name))
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[name]))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(files[name])
	}
	for _, d := range dirs {
		addDir(strings.TrimSuffix(d, "/"))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// parents is d and the directories above it, top first ("a/b" gives a,
// a/b).
func parents(d string) []string {
	if d == "." || d == "" {
		return nil
	}
	return append(parents(path.Dir(d)), d)
}

// untar reads a tar into its regular files and its directories, with
// names cleaned of ./ and trailing slashes.
func untar(t *testing.T, b []byte) (files map[string][]byte, dirs map[string]bool) {
	t.Helper()
	files, dirs = map[string][]byte{}, map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, dirs
		}
		if err != nil {
			t.Fatalf("the tar stream: %v", err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		switch h.Typeflag {
		case tar.TypeDir:
			dirs[name] = true
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[name] = data
		default:
			t.Errorf("the tar stream has %s of type %c", h.Name, h.Typeflag)
		}
	}
}
