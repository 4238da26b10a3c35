//go:build unix

package tarfs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

func TestWriteContentsNamesEntriesFromTheDirectory(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "b.txt"), []byte("b"), 0o644)
	root, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var tb bytes.Buffer
	if err := Write(context.Background(), &tb, root, ".", WriteOptions{Contents: true}); err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(tb.Bytes()))
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, hdr.Name)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "a.txt,sub/,sub/b.txt" {
		t.Fatalf("entries %q", names)
	}
}

// TestExtractPlantsNoLinkOutside: a tar of a machine's directory,
// saved on the host, must not leave links there that lead elsewhere on the
// host; links that stay inside are kept, and the top directory stands for
// the destination.
func TestExtractPlantsNoLinkOutside(t *testing.T) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, h := range []tar.Header{
		{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "data/sub/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "data/sub/f.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2},
		{Name: "data/abs", Typeflag: tar.TypeSymlink, Linkname: "/etc"},
		{Name: "data/sub/up", Typeflag: tar.TypeSymlink, Linkname: "../../.."},
		{Name: "data/sub/ok", Typeflag: tar.TypeSymlink, Linkname: "../sub/f.txt"},
	} {
		tw.WriteHeader(&h)
		if h.Size > 0 {
			tw.Write([]byte("hi"))
		}
	}
	tw.Close()
	dst := t.TempDir()
	root, _ := os.OpenRoot(dst)
	defer root.Close()
	var skipped []string
	if err := Extract(&tb, root, ExtractOptions{StripTop: true, ConfineLinks: true, Skipped: &skipped}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(skipped, ",") != "abs,sub/up" {
		t.Errorf("skipped %q", skipped)
	}
	for _, p := range []string{"abs", "sub/up"} {
		if _, err := os.Lstat(filepath.Join(dst, p)); err == nil {
			t.Errorf("%s was planted", p)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dst, "sub", "ok")); err != nil || string(b) != "hi" {
		t.Errorf("the inner link: %q %v", b, err)
	}
	// An entry outside the top directory is refused.
	var bad bytes.Buffer
	tw = tar.NewWriter(&bad)
	tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "other/x", Typeflag: tar.TypeReg, Mode: 0o644})
	tw.Close()
	if err := Extract(&bad, root, ExtractOptions{StripTop: true, ConfineLinks: true}); err == nil {
		t.Error("an entry outside the top directory was accepted")
	}
}

// tarOf builds a tar stream of headers; regular files hold "hi".
func tarOf(t *testing.T, hdrs ...tar.Header) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = 2
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("hi"))
		}
	}
	tw.Close()
	return &b
}

// TestExtractHardLinksStayInside: a hard link to an entry inside the
// destination is made; one whose target climbs out is refused, and nothing
// outside is linked.
func TestExtractHardLinksStayInside(t *testing.T) {
	dst := t.TempDir()
	root, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	err = Extract(tarOf(t, tar.Header{Name: "a.txt", Typeflag: tar.TypeReg, Mode: 0o644},
		tar.Header{Name: "b.txt", Typeflag: tar.TypeLink, Linkname: "a.txt"}), root, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "b.txt")); err != nil || string(b) != "hi" {
		t.Fatalf("the hard link: %q %v", b, err)
	}
	outside := filepath.Join(filepath.Dir(dst), "outside-"+filepath.Base(dst))
	os.WriteFile(outside, []byte("secret"), 0o600)
	defer os.Remove(outside)
	err = Extract(tarOf(t, tar.Header{Name: "c.txt", Typeflag: tar.TypeLink, Linkname: "../" + filepath.Base(outside)}), root, ExtractOptions{})
	if err == nil {
		t.Fatal("a hard link to a file outside the destination was made")
	}
	if _, err := os.Lstat(filepath.Join(dst, "c.txt")); err == nil {
		t.Fatal("c.txt exists")
	}
}

// TestExtractSpecialEntries: devices and FIFOs are refused, or left out
// and named with SkipSpecial; none is ever created.
func TestExtractSpecialEntries(t *testing.T) {
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	stream := func() *bytes.Buffer {
		return tarOf(t, tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666},
			tar.Header{Name: "pipe", Typeflag: tar.TypeFifo, Mode: 0o644}, tar.Header{Name: "ok.txt", Typeflag: tar.TypeReg, Mode: 0o644})
	}
	var pe *backend.PathError
	if err := Extract(stream(), root, ExtractOptions{}); !errors.As(err, &pe) {
		t.Fatalf("a device entry: %v, want a refusal", err)
	}
	var skipped []string
	if err := Extract(stream(), root, ExtractOptions{SkipSpecial: true, Skipped: &skipped}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(skipped, ",") != "null,pipe" {
		t.Errorf("skipped %q", skipped)
	}
	for _, name := range []string{"null", "pipe"} {
		if _, err := root.Lstat(name); err == nil {
			t.Errorf("%s was created", name)
		}
	}
}

// TestWriteLeavesOutAFIFO: a FIFO in the tree is left out without being
// opened (which would wait for a writer forever).
func TestWriteLeavesOutAFIFO(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("a"), 0o644)
	if err := syscall.Mkfifo(filepath.Join(src, "pipe"), 0o644); err != nil {
		t.Skip(err)
	}
	root, _ := os.OpenRoot(src)
	defer root.Close()
	done := make(chan error, 1)
	var b bytes.Buffer
	go func() { done <- Write(context.Background(), &b, root, ".", WriteOptions{Contents: true}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write blocked on a FIFO")
	}
	if strings.Contains(b.String(), "pipe") {
		t.Error("the FIFO has an entry")
	}
}

// TestRenamePutsNamesUnderBase: a stream of a directory's contents becomes
// one of the directory, hard links included.
func TestRenamePutsNamesUnderBase(t *testing.T) {
	var out bytes.Buffer
	err := Rename(&out, tarOf(t, tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		tar.Header{Name: "./a.txt", Typeflag: tar.TypeReg, Mode: 0o644},
		tar.Header{Name: "sub/", Typeflag: tar.TypeDir, Mode: 0o755},
		tar.Header{Name: "sub/l", Typeflag: tar.TypeLink, Linkname: "./a.txt"}), "data")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	tr := tar.NewReader(&out)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		got = append(got, h.Name+">"+h.Linkname)
	}
	if want := "data/>,data/a.txt>,data/sub/>,data/sub/l>data/a.txt"; strings.Join(got, ",") != want {
		t.Errorf("names %q, want %q", strings.Join(got, ","), want)
	}
}
