//go:build linux

package fastvm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// presignServer answers presign with URLs on itself (signature "SECRET") and
// the given size limit, and storage requests with storageStatus.
func presignServer(t *testing.T, maxBytes int64, storageStatus int) (*Client, *atomic.Int32) {
	var puts atomic.Int32
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/files/presign"):
			fmt.Fprintf(w, `{"uploadUrl":"%[1]s/obj?sig=SECRET","downloadUrl":"%[1]s/obj?sig=SECRET","expiresInSec":3600,"maxUploadBytes":%[2]d}`, srv.URL, maxBytes)
		case r.URL.Path == "/obj":
			puts.Add(1)
			if r.Header.Get("X-API-Key") != "" {
				t.Error("the API key was sent to storage")
			}
			w.WriteHeader(storageStatus)
			fmt.Fprint(w, "<Error>SignatureDoesNotMatch</Error>")
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(srv.Close)
	return New(testKey, WithBaseURL(srv.URL)), &puts
}

func TestUploadRefusesFilesOverTheVMLimit(t *testing.T) {
	c, puts := presignServer(t, 10, 200)
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("eleven byte"), 0o644)
	err := c.Upload(context.Background(), "v", src, "/root/f")
	var fte *FileTransferError
	if !errors.As(err, &fte) || !strings.Contains(err.Error(), "diskGiB") || puts.Load() != 0 {
		t.Fatalf("err = %v after %d PUTs, want a FileTransferError before any PUT", err, puts.Load())
	}
}

func TestStorageErrorsHideTheSignature(t *testing.T) {
	c, puts := presignServer(t, 1<<30, 403)
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("data"), 0o644)
	err := c.Upload(context.Background(), "v", src, "/root/f")
	var fte *FileTransferError
	if !errors.As(err, &fte) || puts.Load() != 1 || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("the signature leaked: %v", err)
	}
	// A directory upload takes the chunked path; its archiver ends cleanly.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), make([]byte, 4<<20), 0o644)
	if err := c.Upload(context.Background(), "v", dir, "/root/d"); err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("directory upload to a refusing storage: %v", err)
	}
}
