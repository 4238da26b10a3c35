//go:build linux

package fastvm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// tarOf builds a tar.gz from headers; regular files get their name as data.
func tarOf(t *testing.T, hdrs ...tar.Header) []byte {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, h := range hdrs {
		var data []byte
		if h.Typeflag == tar.TypeReg {
			data = []byte(h.Name)
			h.Size = int64(len(data))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

func TestExtractRefusesEntriesEscapingTheDestination(t *testing.T) {
	cases := map[string][]tar.Header{
		"dot-dot":          {{Name: "../evil", Typeflag: tar.TypeReg}},
		"nested dot-dot":   {{Name: "a/../../evil", Typeflag: tar.TypeReg}},
		"absolute":         {{Name: "/tmp/evil", Typeflag: tar.TypeReg}},
		"through symlink":  {{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE"}, {Name: "link/evil", Typeflag: tar.TypeReg}},
		"through relative": {{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "../out"}, {Name: "link/evil", Typeflag: tar.TypeReg}},
		"hard link out":    {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../out/victim"}},
		"hard link abs":    {{Name: "h", Typeflag: tar.TypeLink, Linkname: "OUTSIDE/victim"}},
		"dir via symlink":  {{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "../out"}, {Name: "link/sub/", Typeflag: tar.TypeDir}},
	}
	for name, hdrs := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			dest := filepath.Join(base, "dest")
			outside := filepath.Join(base, "out")
			if err := os.MkdirAll(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			victim := filepath.Join(outside, "victim")
			os.WriteFile(victim, []byte("untouched"), 0o644)
			for i := range hdrs {
				hdrs[i].Linkname = strings.ReplaceAll(hdrs[i].Linkname, "OUTSIDE", outside)
				hdrs[i].Name = strings.ReplaceAll(hdrs[i].Name, "/tmp", outside)
			}
			err := extractTarGz(bytes.NewReader(tarOf(t, hdrs...)), dest)
			if err == nil {
				t.Fatal("extracted an escaping entry")
			}
			entries, _ := os.ReadDir(outside)
			if len(entries) != 1 {
				t.Fatalf("something was written outside the destination: %v", entries)
			}
			if b, _ := os.ReadFile(victim); string(b) != "untouched" {
				t.Fatalf("the outside file was changed: %q", b)
			}
		})
	}
}

func TestExtractDoesNotWriteThroughExistingLinks(t *testing.T) {
	base := t.TempDir()
	dest, outside := filepath.Join(base, "dest"), filepath.Join(base, "out")
	os.MkdirAll(dest, 0o755)
	os.MkdirAll(outside, 0o755)
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("untouched"), 0o644)
	// The destination already holds a symlink and a hard link to the victim.
	os.Symlink(victim, filepath.Join(dest, "sym"))
	if err := os.Link(victim, filepath.Join(dest, "hard")); err != nil {
		t.Fatal(err)
	}
	err := extractTarGz(bytes.NewReader(tarOf(t, tar.Header{Name: "sym", Typeflag: tar.TypeReg}, tar.Header{Name: "hard", Typeflag: tar.TypeReg})), dest)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "untouched" {
		t.Fatalf("wrote through a link: %q", b)
	}
	for _, n := range []string{"sym", "hard"} {
		if b, _ := os.ReadFile(filepath.Join(dest, n)); string(b) != n {
			t.Errorf("%s = %q, want the archive's content", n, b)
		}
	}
}

func TestTarRoundTrip(t *testing.T) {
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "sub", "deeper"), 0o755))
	must(os.MkdirAll(filepath.Join(src, "empty"), 0o700))
	must(os.WriteFile(filepath.Join(src, "a.txt"), []byte("alpha"), 0o644))
	must(os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\n"), 0o755))
	long := strings.Repeat("n", 150) // needs a PAX or GNU long name
	must(os.WriteFile(filepath.Join(src, "sub", "deeper", long), []byte("long"), 0o600))
	must(os.WriteFile(filepath.Join(src, "zero"), nil, 0o644))
	must(os.Symlink("a.txt", filepath.Join(src, "link")))

	var buf bytes.Buffer
	root, err := os.OpenRoot(src)
	must(err)
	defer root.Close()
	must(writeTarGz(&buf, root))
	// Names are relative, owned by root.
	gz, _ := gzip.NewReader(bytes.NewReader(buf.Bytes()))
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if strings.HasPrefix(h.Name, "/") || strings.HasPrefix(h.Name, "..") || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("entry %q uid %d gid %d", h.Name, h.Uid, h.Gid)
		}
	}

	dest := filepath.Join(t.TempDir(), "new", "dest")
	must(extractTarGz(bytes.NewReader(buf.Bytes()), dest))
	for name, want := range map[string]string{"a.txt": "alpha", "sub/run.sh": "#!/bin/sh\n", "sub/deeper/" + long: "long", "zero": "", "link": "alpha"} {
		b, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(dest, "link")); err != nil || target != "a.txt" {
		t.Errorf("link -> %q, %v", target, err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "sub", "run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("run.sh mode %v, %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "empty")); err != nil || !fi.IsDir() {
		t.Errorf("empty dir: %v", err)
	}
}

func TestWriteTarSkipsSpecialFiles(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	if err := mkfifo(filepath.Join(src, "pipe")); err != nil {
		t.Skip("no mkfifo:", err)
	}
	var buf bytes.Buffer
	root, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := writeTarGz(&buf, root); err != nil { // would block forever reading a FIFO
		t.Fatal(err)
	}
	dest := t.TempDir()
	if err := extractTarGz(&buf, dest); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dest, "pipe")); !os.IsNotExist(err) {
		t.Errorf("the FIFO was archived: %v", err)
	}
	if _, err := fs.Stat(os.DirFS(dest), "f"); err != nil {
		t.Error(err)
	}
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }
