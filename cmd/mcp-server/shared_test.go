//go:build linux || darwin

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestListenSharedRefusesADirectoryOthersControl: the fallback socket
// directory is under the temporary directory, where another user may have
// made it first, or made it open to all: the owner will not listen there.
func TestListenSharedRefusesADirectoryOthersControl(t *testing.T) {
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	if _, err := listenShared(filepath.Join(open, "s.sock")); err == nil || !strings.Contains(err.Error(), "only it may use") {
		t.Errorf("a directory open to all: %v", err)
	}
	if os.Geteuid() == 0 {
		theirs := filepath.Join(t.TempDir(), "theirs")
		os.Mkdir(theirs, 0o700)
		if err := os.Chown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := listenShared(filepath.Join(theirs, "s.sock")); err == nil || !strings.Contains(err.Error(), "only it may use") {
			t.Errorf("another user's directory: %v", err)
		}
	}
	mine := filepath.Join(t.TempDir(), "mine")
	ln, err := listenShared(filepath.Join(mine, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

// TestSocketPathFitsAUnixSocket: a state directory too deep for a socket
// path gets one under the temporary directory, the same for every server.
func TestSocketPathFitsAUnixSocket(t *testing.T) {
	deep := "/" + strings.Repeat("d", 150)
	p := socketPath(deep)
	if len(p) >= 100 || p != socketPath(deep) || !strings.HasPrefix(p, os.TempDir()) {
		t.Errorf("socketPath(%d characters) = %s", len(deep), p)
	}
	if p := socketPath("/home/u/.local/state/vmcp"); p != "/home/u/.local/state/vmcp/run/server.sock" {
		t.Errorf("socketPath = %s", p)
	}
}
