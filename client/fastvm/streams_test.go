//go:build linux

package fastvm_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

func TestEmuStreams(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})

	// A reader of unknown size goes up chunked and comes back byte for byte.
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	if err := env.c.UploadReader(ctx, vm.ID, io.MultiReader(bytes.NewReader(data)), -1, "/root/s/data.bin"); err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	n, err := env.c.DownloadWriter(ctx, vm.ID, "/root/s/data.bin", &back)
	if err != nil || n != int64(len(data)) || sha256.Sum256(back.Bytes()) != sha256.Sum256(data) {
		t.Fatalf("round trip: %d bytes, %v", n, err)
	}

	// An archive unpacks into a directory, and a directory comes back as one.
	var tgz bytes.Buffer
	gz := gzip.NewWriter(&tgz)
	tw := tar.NewWriter(gz)
	for name, body := range map[string]string{"a.txt": "alpha", "sub/b.txt": "beta"} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	if err := env.c.UploadArchive(ctx, vm.ID, &tgz, "/root/tree"); err != nil {
		t.Fatal(err)
	}
	var arch bytes.Buffer
	if _, err := env.c.DownloadArchive(ctx, vm.ID, "/root/tree", &arch); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&arch)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			got[strings.TrimPrefix(h.Name, "./")] = string(b)
		}
	}
	if got["a.txt"] != "alpha" || got["sub/b.txt"] != "beta" {
		t.Fatalf("archive back: %v", got)
	}

	// Wrong kinds and missing paths are clear errors.
	if _, err := env.c.DownloadWriter(ctx, vm.ID, "/root/tree", io.Discard); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("a directory as a file: %v", err)
	}
	if _, err := env.c.DownloadArchive(ctx, vm.ID, "/root/s/data.bin", io.Discard); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file as a directory: %v", err)
	}
	if _, err := env.c.DownloadWriter(ctx, vm.ID, "/root/none", io.Discard); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}
