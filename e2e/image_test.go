//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/tools"
)

// The container image's checks: scripts/image-check (make image-check)
// builds the image and runs these against it with exactly the README's
// commands; without its variables they are skipped.
//
//	VMCP_IMAGE_STDIO   the command that runs the image over stdio
//	VMCP_IMAGE_MASKED  that command without the option that unmasks /proc
//	VMCP_IMAGE_SHARED  the host directory that command mounts at /home/vmcp/shared
//	VMCP_IMAGE_HTTP    the base URL of the image serving HTTP, and
//	VMCP_IMAGE_TOKEN   a bearer token it accepts
//	VMCP_IMAGE_HOSTED  the reverse proxy of the compose file's two replicas

// TestImageStdio drives the image over stdio as an MCP client starts it.
func TestImageStdio(t *testing.T) {
	command := os.Getenv("VMCP_IMAGE_STDIO")
	if command == "" {
		t.Skip("VMCP_IMAGE_STDIO is not set (make image-check sets it)")
	}
	h := connectCommand(t, command)
	imageScenario(t, h)

	shared := os.Getenv("VMCP_IMAGE_SHARED")
	if shared == "" {
		return
	}
	// local_path copies through the mounted directory, both ways.
	data := []byte(strings.Repeat("a,b,c\n", 100_000))
	if err := os.WriteFile(filepath.Join(shared, "in.csv"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	var up tools.UploadFileOutput
	h.ok(t, "upload_file", map[string]any{"path": "data/in.csv", "local_path": "/home/vmcp/shared/in.csv"}, &up)
	if up.Bytes != int64(len(data)) {
		t.Fatalf("uploaded %d bytes of %d", up.Bytes, len(data))
	}
	h.ok(t, "download_file", map[string]any{"path": "data/in.csv", "local_path": "/home/vmcp/shared/out.csv"}, nil)
	back, err := os.ReadFile(filepath.Join(shared, "out.csv"))
	if err != nil || sha256.Sum256(back) != sha256.Sum256(data) {
		t.Fatalf("the file that came back through the mounted directory differs: %v", err)
	}
	t.Logf("local_path: %d bytes there and back through %s", len(data), shared)
}

// TestImageMaskedProc: run without unmasking /proc, the image still
// starts, and its first call says which option is missing.
func TestImageMaskedProc(t *testing.T) {
	command := os.Getenv("VMCP_IMAGE_MASKED")
	if command == "" {
		t.Skip("VMCP_IMAGE_MASKED is not set (make image-check sets it)")
	}
	h := connectCommand(t, command)
	res, err := h.callErr("run_python", map[string]any{"code": "6*7"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.IsError || !strings.Contains(text(res), "systempaths=unconfined") || !strings.Contains(text(res), "unmask=ALL") {
		t.Fatalf("the first call did not say how to unmask /proc: %s", text(res))
	}
	if !logSays(h.stderr, "so a sandbox cannot mount its own") {
		t.Fatalf("no start-up line:\n%s", h.stderr())
	}
	t.Logf("first call: %s", text(res))
}

// TestImageHTTP drives the image serving streamable HTTP through its
// published port.
func TestImageHTTP(t *testing.T) {
	base, token := os.Getenv("VMCP_IMAGE_HTTP"), os.Getenv("VMCP_IMAGE_TOKEN")
	if base == "" {
		t.Skip("VMCP_IMAGE_HTTP is not set (make image-check sets it)")
	}
	s := &httpServer{base: base, log: &syncBuffer{}}
	imageScenario(t, s.connect(t, false, token))
}

// imageScenario is what an agent does first: Python, a command, a file
// there and back, and a snapshot launched as a second machine.
func imageScenario(t *testing.T, h *harness) {
	t.Helper()
	var py tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "import sys; answer = 6 * 7; answer"}, &py)
	if py.Value == nil || *py.Value != "42" {
		t.Fatalf("run_python: %+v", py)
	}
	t.Logf("run_python 6*7 = %s on %s", *py.Value, py.Machine)
	var ex tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "id -un; python3 -c 'import numpy, pandas; print(numpy.__version__)'"}, &ex)
	if ex.ExitCode != 0 {
		t.Fatalf("exec_command: %+v", ex)
	}
	t.Logf("exec_command: %s", strings.ReplaceAll(strings.TrimSpace(ex.Stdout), "\n", " / "))

	content := "hello from the image check\n"
	var up tools.UploadFileOutput
	h.ok(t, "upload_file", map[string]any{"path": "notes/hello.txt", "content": content}, &up)
	sum := sha256.Sum256([]byte(content))
	if up.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload_file: %+v", up)
	}
	var down tools.DownloadFileOutput
	res := h.ok(t, "download_file", map[string]any{"path": "notes/hello.txt"}, &down)
	if down.SHA256 != up.SHA256 || !resultHas(res, content) {
		t.Fatalf("download_file: %+v %s", down, text(res))
	}

	var snap tools.SnapshotVMOutput
	h.ok(t, "snapshot_vm", map[string]any{"name": "image-check"}, &snap)
	var launched tools.LaunchVMOutput
	h.ok(t, "launch_vm", map[string]any{"snapshot_id": snap.SnapshotID, "name": "from-snapshot"}, &launched)
	h.ok(t, "exec_command", map[string]any{"command": "cat notes/hello.txt", "machine": launched.Machine}, &ex)
	if ex.Stdout != content {
		t.Fatalf("the snapshot's machine has %q", ex.Stdout)
	}
	t.Logf("snapshot %s launched as %s with the file", snap.SnapshotID, launched.Machine)
	h.ok(t, "delete_vm", map[string]any{"machine": launched.Machine}, nil)
	h.ok(t, "delete_snapshot", map[string]any{"snapshot_id": snap.SnapshotID}, nil)
}

// connectCommand connects an MCP client to the server that command starts
// (words split on spaces).
func connectCommand(t *testing.T, command string) *harness {
	t.Helper()
	argv := strings.Fields(command)
	cmd := exec.Command(argv[0], argv[1:]...)
	log := &syncBuffer{}
	cmd.Stderr = log
	h := &harness{log: log, cmd: cmd}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "vmcp-image-check", Version: "1"}, nil).Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect to %s: %v\n%s", command, err, log)
	}
	h.cs = cs
	h.cleanup(t)
	return h
}

// resultHas reports whether a result's text or embedded resources hold s.
func resultHas(res *mcp.CallToolResult, s string) bool {
	for _, c := range res.Content {
		switch c := c.(type) {
		case *mcp.TextContent:
			if strings.Contains(c.Text, s) {
				return true
			}
		case *mcp.EmbeddedResource:
			if c.Resource != nil && (strings.Contains(c.Resource.Text, s) || strings.Contains(string(c.Resource.Blob), s)) {
				return true
			}
		}
	}
	return false
}

// TestImageHosted is TestReplicasShareConversations through the compose
// file's reverse proxy: a conversation begun by one client continues in
// another, Python variables included, whichever replica serves each call.
func TestImageHosted(t *testing.T) {
	base, token := os.Getenv("VMCP_IMAGE_HOSTED"), os.Getenv("VMCP_IMAGE_TOKEN")
	if base == "" {
		t.Skip("VMCP_IMAGE_HOSTED is not set (make image-check sets it with --hosted)")
	}
	s := &httpServer{base: base, log: &syncBuffer{}}
	h1 := s.connect(t, false, token)
	var out tools.RunPythonOutput
	h1.ok(t, "run_python", map[string]any{"code": "shared = 'from the first client'", "session": "new"}, &out)
	handle, machine := out.Session, out.Machine
	h2 := s.connect(t, false, token)
	// The proxy spreads stateless requests over the replicas: enough calls
	// that both serve some (the script checks their logs).
	for i := range 20 {
		h2.ok(t, "run_python", map[string]any{"code": "shared", "session": handle}, &out)
		if out.Value == nil || *out.Value != "'from the first client'" || out.Machine != machine || out.Session != handle {
			t.Fatalf("call %d through the proxy: %+v", i, out)
		}
	}
	var info tools.SessionInfoOutput
	h2.ok(t, "session_info", map[string]any{"session": handle}, &info)
	if len(info.Machines) != 1 || info.Machines[0].ID != machine {
		t.Errorf("session_info through the proxy: %+v", info)
	}
	t.Logf("conversation %s on machine %s: 21 calls through the proxy", handle, machine)
}
