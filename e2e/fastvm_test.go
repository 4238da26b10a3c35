//go:build linux

package e2e

import (
	"context"
	"encoding/base64"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

// fastvmEmulator serves the FastVM API on loopback, running VMs on an
// engine of this test process; it returns a client of it (for checks behind
// the server's back) and the base URL and key.
func fastvmEmulator(t *testing.T) (c *fastvmclient.Client, url, key string) {
	t.Helper()
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	key = "e2e-fastvm-key"
	emu, err := fastvmemu.New(fastvmemu.Options{Engine: engine, APIKey: key})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	emu.SetBaseURL(srv.URL)
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
		engine.Close()
	})
	return fastvmclient.New(key, fastvmclient.WithBaseURL(srv.URL)), srv.URL, key
}

// startFastVM runs the server with the fastvm backend pointed at url.
func startFastVM(t *testing.T, root, url, key string) *harness {
	return startWith(t, t.TempDir(), root, clientOptions{
		serverArgs: []string{"--fastvm-url", url},
		serverEnv:  []string{"FASTVM_API_KEY=" + key},
	})
}

var uuid = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// TestFastVMTools drives every machine tool against FastVM VMs (the
// emulator's): commands, files both ways, snapshots and launching from one,
// an image built from a Dockerfile with RUN and COPY, the firewall, delete —
// and leaves no VM behind.
func TestFastVMTools(t *testing.T) {
	t.Parallel()
	client, url, key := fastvmEmulator(t)
	root := t.TempDir()
	h := startFastVM(t, root, url, key)

	var cmd tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "echo hi from $(whoami); echo err >&2; exit 3"}, &cmd)
	if !uuid.MatchString(cmd.Machine) || cmd.ExitCode != 3 || cmd.Stdout != "hi from root\n" || cmd.Stderr != "err\n" {
		t.Fatalf("exec_command on FastVM: %+v", cmd)
	}
	vm := cmd.Machine
	h.ok(t, "exec_command", map[string]any{"argv": []string{"cat"}, "stdin": "piped", "workdir": "/tmp", "env": map[string]string{"A": "1"}}, &cmd)
	if cmd.Stdout != "piped" || cmd.Machine != vm {
		t.Errorf("argv with stdin: %+v", cmd)
	}
	h.ok(t, "exec_command", map[string]any{"command": "pwd; echo $A", "workdir": "/tmp", "env": map[string]string{"A": "it's \"quoted\""}}, &cmd)
	if cmd.Stdout != "/tmp\nit's \"quoted\"\n" {
		t.Errorf("workdir and env: %q", cmd.Stdout)
	}

	// Files: text, binary and a directory, each back byte-identical.
	var up tools.UploadFileOutput
	var down tools.DownloadFileOutput
	h.ok(t, "upload_file", map[string]any{"path": "notes/a.txt", "content": "hello fastvm\n"}, &up)
	if up.Path != "/root/notes/a.txt" || up.Bytes != 13 || up.SHA256 != sha([]byte("hello fastvm\n")) {
		t.Errorf("upload: %+v", up)
	}
	res := h.ok(t, "download_file", map[string]any{"path": "notes/a.txt"}, &down)
	if down.SHA256 != up.SHA256 || !strings.Contains(text(res), "hello fastvm") {
		t.Errorf("download: %+v", down)
	}
	bin := []byte{0, 1, 2, 255, 254, 10, 13}
	h.ok(t, "upload_file", map[string]any{"path": "/tmp/b.bin", "content_base64": base64.StdEncoding.EncodeToString(bin)}, &up)
	h.ok(t, "download_file", map[string]any{"path": "/tmp/b.bin"}, &down)
	if down.SHA256 != sha(bin) || down.Encoding != "base64" {
		t.Errorf("binary: %+v", down)
	}
	src := filepath.Join(root, "tree")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "one.txt"), []byte("one"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "two.txt"), []byte("two"), 0o644)
	h.ok(t, "upload_file", map[string]any{"path": "tree", "local_path": src}, &up)
	h.ok(t, "download_file", map[string]any{"path": "tree", "local_path": filepath.Join(root, "back")}, &down)
	if up.Files != 2 || down.Files != 2 || down.SHA256 != up.SHA256 {
		t.Errorf("directory round trip: up %+v, down %+v", up, down)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "back", "sub", "two.txt")); string(b) != "two" {
		t.Errorf("sub/two.txt back: %q", b)
	}

	// Snapshot, and a machine launched from it has the files.
	var snap tools.SnapshotVMOutput
	h.ok(t, "snapshot_vm", map[string]any{"name": "with-notes"}, &snap)
	var launched tools.LaunchVMOutput
	h.ok(t, "launch_vm", map[string]any{"snapshot_id": snap.SnapshotID}, &launched)
	if !uuid.MatchString(launched.Machine) || launched.Machine == vm || launched.Status != "running" {
		t.Fatalf("launch from snapshot: %+v", launched)
	}
	h.ok(t, "exec_command", map[string]any{"command": "cat notes/a.txt"}, &cmd) // the new default machine
	if cmd.Machine != launched.Machine || cmd.Stdout != "hello fastvm\n" {
		t.Errorf("files of the snapshot: %+v", cmd)
	}

	// An image from a Dockerfile with COPY from the context and RUN.
	ctxDir := filepath.Join(root, "image")
	os.MkdirAll(ctxDir, 0o755)
	os.WriteFile(filepath.Join(ctxDir, "app.py"), []byte("print('app')\n"), 0o644)
	var img tools.BuildImageOutput
	h.ok(t, "build_image", map[string]any{
		"dockerfile":         "FROM python:3.13-slim\nWORKDIR /app\nENV GREETING=hello\nCOPY app.py /app/app.py\nRUN echo built > /app/built.txt\n",
		"context_local_path": ctxDir, "name": "app-image",
	}, &img)
	// The emulator cannot pull python:3.13-slim: the result says which base
	// the image has instead.
	if notes := strings.Join(img.Notes, "\n"); !strings.Contains(notes, "base: ") || !strings.Contains(notes, "python:3.13-slim was not used") {
		t.Errorf("build_image's notes do not say which base was used: %q", img.Notes)
	}
	h.ok(t, "launch_vm", map[string]any{"snapshot_id": img.SnapshotID, "machine_type": "c1m2"}, &launched)
	h.ok(t, "exec_command", map[string]any{"command": "cat /app/built.txt /app/app.py; echo $GREETING"}, &cmd)
	if cmd.Stdout != "built\nprint('app')\nhello\n" {
		t.Errorf("a machine of the built image: %+v", cmd)
	}
	h.fails(t, "build_image", map[string]any{"dockerfile": "FROM x\n", "context_local_path": "/etc"}, "outside the allowed roots")

	// Firewall: a valid policy is set; IPv4 sources are refused.
	var fw tools.SetFirewallOutput
	h.ok(t, "set_firewall", map[string]any{"mode": "restricted", "ingress": []map[string]any{{"protocol": "tcp", "port_start": 8080, "source_cidrs": []string{"2001:db8::/32"}}}}, &fw)
	if fw.Machine != launched.Machine || fw.Rules != 1 {
		t.Errorf("set_firewall: %+v", fw)
	}
	got, err := client.GetVM(context.Background(), launched.Machine)
	if err != nil || got.Firewall == nil || got.Firewall.Mode != "restricted" || len(got.Firewall.Ingress) != 1 {
		t.Errorf("the VM's policy: %+v, %v", got, err)
	}
	h.fails(t, "set_firewall", map[string]any{"mode": "restricted", "ingress": []map[string]any{{"protocol": "tcp", "port_start": 22, "source_cidrs": []string{"10.0.0.0/8"}}}}, "IPv4")

	// Python runs on the conversation's FastVM machine too, with its state
	// between calls, and sees its files.
	var py tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "x = 41"}, &py)
	if py.Machine != launched.Machine {
		t.Errorf("run_python ran on %s, not the conversation's machine %s", py.Machine, launched.Machine)
	}
	h.ok(t, "run_python", map[string]any{"code": "x + 1"}, &py)
	if py.Value == nil || *py.Value != "42" {
		t.Errorf("x + 1: %+v", py)
	}
	h.ok(t, "run_python", map[string]any{"code": "import os\nsorted(os.listdir('/root'))", "machine": vm}, &py)
	if py.Machine != vm || py.Value == nil || !strings.Contains(*py.Value, "notes") {
		t.Errorf("run_python on machine %s: %+v", vm, py)
	}

	// Delete every FastVM machine: the account has none left.
	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &list)
	var fast int
	for _, m := range list.Machines {
		if m.Backend == "fastvm" {
			fast++
			h.ok(t, "delete_vm", map[string]any{"machine": m.ID}, nil)
		}
	}
	if fast != 3 {
		t.Errorf("%d FastVM machines listed, want 3: %+v", fast, list.Machines)
	}
	vms, err := client.ListVMs(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.Status != fastvmclient.StatusDeleting {
			t.Errorf("VM %s (%s) left behind", v.ID, v.Status)
		}
	}
	if strings.Contains(h.stderr(), key) {
		t.Error("the API key appears in the server's log")
	}
}
