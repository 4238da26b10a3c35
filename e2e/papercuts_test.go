package e2e

import (
	"strings"
	"testing"
)

// TestWhatANewUserTripsOver: messages and paths as a new user meets them
// (issue 23): a missing workdir, "~/" paths, an upload onto a directory.
func TestWhatANewUserTripsOver(t *testing.T) {
	t.Parallel()
	h := start(t)

	h.fails(t, "exec_command", map[string]any{"command": "true", "workdir": "/nonexistent"},
		"workdir /nonexistent does not exist in the machine: create it first (mkdir -p /nonexistent), or leave workdir out to run in the home")
	h.ok(t, "upload_file", map[string]any{"path": "notes.txt", "content": "x"}, nil)
	h.fails(t, "exec_command", map[string]any{"command": "true", "workdir": "notes.txt"}, "workdir notes.txt is not a directory")

	// "~" is the machine's home, as in a shell.
	h.ok(t, "upload_file", map[string]any{"path": "~/tilde.txt", "content": "home\n"}, nil)
	var out struct {
		Stdout string `json:"stdout"`
	}
	h.ok(t, "exec_command", map[string]any{"command": "cat tilde.txt; ls -d '~' 2>/dev/null || echo 'no ~ directory'", "workdir": "~"}, &out)
	if out.Stdout != "home\nno ~ directory\n" {
		t.Errorf("~/tilde.txt: %q", out.Stdout)
	}
	res := h.ok(t, "download_file", map[string]any{"path": "~/tilde.txt"}, nil)
	if !strings.Contains(text(res), "home") {
		t.Errorf("download ~/tilde.txt: %s", text(res))
	}

	// An upload onto a directory says so, in words of the user's.
	h.ok(t, "exec_command", map[string]any{"command": "mkdir -p somedir"}, nil)
	res = h.fails(t, "upload_file", map[string]any{"path": "somedir", "content": "x"}, "is a directory; give a file path")
	if strings.Contains(text(res), ".vmcp-upload") {
		t.Errorf("the error leaks an internal name: %s", text(res))
	}
}
