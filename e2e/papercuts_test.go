//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/vmcp-dev/vmcp/tools"
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

// TestWording: counts agree with their nouns, empty lists say so, and an
// unknown session says what to do once.
func TestWording(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	h := startIn(t, t.TempDir(), root)
	res := h.ok(t, "session_info", map[string]any{}, nil)
	if !strings.Contains(text(res), "Snapshots: none") {
		t.Errorf("session_info without snapshots: %s", text(res))
	}
	if err := os.MkdirAll(filepath.Join(root, "one"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "one", "only.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = h.ok(t, "upload_file", map[string]any{"local_path": "one", "path": "one"}, nil)
	if !strings.Contains(text(res), "Copied 1 file (") {
		t.Errorf("a directory of one file: %s", text(res))
	}
	res = h.call(t, "run_python", map[string]any{"code": "1", "session": "c-0123"})
	if !res.IsError || strings.Count(text(res), `"new"`) != 1 {
		t.Errorf("a malformed session handle: %s", text(res))
	}
}

// TestHTTPWithoutBackendSaysWhichFlags: a hosted server with nowhere to run
// machines names the settings that would give it one.
func TestHTTPWithoutBackendSaysWhichFlags(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, serverBin, "--transport", "http", "--listen", "127.0.0.1:0", "--insecure-no-auth", "--state-dir", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "set FASTVM_API_KEY (or --fastvm-api-key-file) for FastVM, or FOREVERVM_TOKEN (or --forevervm-token-file) for ForeverVM; over --transport http, --enable-local-backend") {
		t.Errorf("a hosted server without backends: %v\n%s", err, out)
	}
}

// TestCallsAreLogged: at debug, one line per tool call with its tool,
// machine, backend, duration and outcome, never its code or output; a call
// that fails logs a warning with the error.
func TestCallsAreLogged(t *testing.T) {
	t.Parallel()
	h := start(t) // --log-level debug
	var out tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "echo sekrit-value-4711"}, &out)
	h.fails(t, "exec_command", map[string]any{"command": "true", "machine": "m-00000000000000000000"}, "not found")
	want := []string{"DBG tool call", "tool=exec_command", "outcome=ok", "machine=" + out.Machine, "backend=local", "WRN tool call", "outcome=error"}
	if !logSays(h.stderr, "outcome=error") {
		t.Fatalf("no failed call in the log:\n%s", h.stderr())
	}
	log := h.stderr()
	for _, w := range want {
		if !strings.Contains(log, w) {
			t.Errorf("the log lacks %q:\n%s", w, log)
		}
	}
	if strings.Contains(log, "sekrit-value-4711") {
		t.Errorf("the log holds a command's code or output:\n%s", log)
	}
}

// TestDeleteSnapshot: snapshots can be deleted, which frees the room the
// snapshot limit counts (its error names the tool); delete_vm given a
// snapshot id says what to use; another principal's snapshot is "not
// found" and stays.
func TestDeleteSnapshot(t *testing.T) {
	t.Parallel()
	h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{serverArgs: []string{"--max-snapshots", "1"}})
	h.ok(t, "exec_command", map[string]any{"command": "echo kept > f.txt"}, nil)
	var snap tools.SnapshotVMOutput
	h.ok(t, "snapshot_vm", nil, &snap)
	h.fails(t, "snapshot_vm", nil, "delete one with delete_snapshot")
	h.fails(t, "delete_vm", map[string]any{"machine": snap.SnapshotID}, "is a snapshot id, not a machine's: delete it with delete_snapshot")
	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &list)
	if len(list.Snapshots) != 1 || list.Snapshots[0].SizeBytes <= 0 {
		t.Fatalf("list_machines: %+v", list.Snapshots)
	}
	var del tools.DeleteSnapshotOutput
	h.ok(t, "delete_snapshot", map[string]any{"snapshot_id": snap.SnapshotID}, &del)
	if del.Status != "deleted" || del.SnapshotID != snap.SnapshotID {
		t.Errorf("delete_snapshot: %+v", del)
	}
	h.ok(t, "list_machines", nil, &list)
	if len(list.Snapshots) != 0 {
		t.Errorf("after delete_snapshot: %+v", list.Snapshots)
	}
	h.fails(t, "launch_vm", map[string]any{"snapshot_id": snap.SnapshotID}, "not found")
	h.fails(t, "delete_snapshot", map[string]any{"snapshot_id": snap.SnapshotID}, "not found")
	h.ok(t, "snapshot_vm", nil, &snap) // the limit's room is back

	// Over http, bob cannot delete alice's snapshot.
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-token-for-tests", "bob": "vmcp_bob-token-for-tests"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend"})
	alice, bob := s.connect(t, false, "vmcp_alice-token-for-tests"), s.connect(t, false, "vmcp_bob-token-for-tests")
	var hers tools.SnapshotVMOutput
	alice.ok(t, "snapshot_vm", nil, &hers)
	bob.fails(t, "delete_snapshot", map[string]any{"snapshot_id": hers.SnapshotID}, "not found")
	alice.ok(t, "launch_vm", map[string]any{"snapshot_id": hers.SnapshotID}, nil)
}

// TestDownloadTheWholeHome: the machine's home, as ".", "./", "~" or its
// absolute path, downloads whole to a host directory.
func TestDownloadTheWholeHome(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.ok(t, "upload_file", map[string]any{"path": "a.txt", "content": "A"}, nil)
	h.ok(t, "upload_file", map[string]any{"path": "sub/b.txt", "content": "B"}, nil)
	var home tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "pwd"}, &home)
	for i, p := range []string{".", "./", "~", strings.TrimSpace(home.Stdout), strings.TrimSpace(home.Stdout) + "/"} {
		dest := filepath.Join(h.root, fmt.Sprintf("home-%d", i))
		h.ok(t, "download_file", map[string]any{"path": p, "local_path": dest}, nil)
		for name, want := range map[string]string{"a.txt": "A", "sub/b.txt": "B"} {
			if b, err := os.ReadFile(filepath.Join(dest, name)); err != nil || string(b) != want {
				t.Errorf("download_file %q: %s is %q (%v)", p, name, b, err)
			}
		}
	}
}

// TestDefaultMachinesHaveDistinctNames: the machines conversations get by
// themselves are named apart, so that a list of them tells which is which.
func TestDefaultMachinesHaveDistinctNames(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.ok(t, "exec_command", map[string]any{"command": "true"}, nil)
	h.ok(t, "exec_command", map[string]any{"command": "true", "session": "new"}, nil)
	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &list)
	if len(list.Machines) != 2 || list.Machines[0].Name == list.Machines[1].Name {
		t.Fatalf("machines: %+v", list.Machines)
	}
	for _, m := range list.Machines {
		if !strings.HasPrefix(m.Name, "default-") {
			t.Errorf("machine %s is named %q", m.ID, m.Name)
		}
	}
}

// TestLaunchWithMemoryAndDisk: launch_vm sizes a local machine within the
// operator's maxima, and says what it got; above them, or on a backend
// that sizes its machines itself, it refuses and creates nothing.
func TestLaunchWithMemoryAndDisk(t *testing.T) {
	t.Parallel()
	h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{serverArgs: []string{"--max-memory-mb", "4096", "--max-disk-mb", "2048"}})
	var l tools.LaunchVMOutput
	res := h.ok(t, "launch_vm", map[string]any{"memory_mb": 512, "disk_mb": 256}, &l)
	if l.MemoryMB != 512 || l.DiskMB != 256 || !strings.Contains(text(res), "512 MiB of memory, 256 MiB of disk") {
		t.Errorf("launch_vm: %+v %s", l, text(res))
	}
	var out tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "head -c 300000000 /dev/zero > big"}, &out)
	if out.ExitCode == 0 {
		t.Errorf("300 MB written under a 256 MiB quota: %+v", out)
	}
	var info tools.SessionInfoOutput
	h.ok(t, "session_info", nil, &info)
	if info.MaxMemoryMB != 4096 || info.MaxDiskMB != 2048 {
		t.Errorf("session_info maxima: %d %d", info.MaxMemoryMB, info.MaxDiskMB)
	}
	var before tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &before)
	h.fails(t, "launch_vm", map[string]any{"memory_mb": 8192}, "above the 4096 MiB this server allows (--max-memory-mb)")
	h.fails(t, "launch_vm", map[string]any{"disk_mb": 4096}, "above the 2048 MiB this server allows (--max-disk-mb)")
	h.fails(t, "launch_vm", map[string]any{"memory_mb": 10}, "memory_mb")
	var after tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &after)
	if len(after.Machines) != len(before.Machines) {
		t.Errorf("a refused launch created a machine")
	}
}

// TestPromptWithoutItsArgumentOverHTTP: over streamable HTTP and legacy
// SSE too, a prompts/get without a required argument is -32602 naming it.
func TestPromptWithoutItsArgumentOverHTTP(t *testing.T) {
	t.Parallel()
	s := startHTTPServer(t, t.TempDir(), []string{"--insecure-no-auth", "--enable-local-backend"})
	post := func(session, body string) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, s.base+"/mcp", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if session != "" {
			req.Header.Set("Mcp-Session-Id", session)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, _ := post("", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	session := resp.Header.Get("Mcp-Session-Id")
	post(session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	_, body := post(session, `{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"fix_failing_script"}}`)
	if !strings.Contains(body, `"code":-32602`) || !strings.Contains(body, `needs the argument \"local_path\"`) {
		t.Errorf("prompts/get without local_path: %s", body)
	}
	_, body = post(session, `{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"fix_failing_script","arguments":{"local_path":"x.py"}}}`)
	if !strings.Contains(body, `"messages"`) {
		t.Errorf("prompts/get with local_path: %s", body)
	}
	// Legacy SSE, whose answers come on the stream: the official client
	// gets the same -32602, and the prompt with its argument.
	h := s.connect(t, true, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := h.cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "fix_failing_script"})
	var werr *jsonrpc.Error
	if !errors.As(err, &werr) || werr.Code != -32602 || !strings.Contains(werr.Message, `needs the argument "local_path"`) {
		t.Errorf("prompts/get without local_path over SSE: %v", err)
	}
	if res, err := h.cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "fix_failing_script", Arguments: map[string]string{"local_path": "x.py"}}); err != nil || len(res.Messages) == 0 {
		t.Errorf("prompts/get with local_path over SSE: %+v %v", res, err)
	}
}
