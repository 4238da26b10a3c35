//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/tools"
)

func TestToolsListAndPrompts(t *testing.T) {
	t.Parallel()
	h := start(t)
	if got := h.cs.InitializeResult().Instructions; !strings.Contains(got, "snapshot") || !strings.Contains(got, "one machine") {
		t.Errorf("instructions: %q", got)
	}
	res, err := h.cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*mcp.Tool{}
	for _, tool := range res.Tools {
		byName[tool.Name] = tool
	}
	for _, name := range []string{"run_python", "exec_command", "upload_file", "download_file", "launch_vm", "snapshot_vm", "list_machines", "delete_vm", "delete_snapshot", "reset_machine", "build_image", "set_firewall", "session_info"} {
		tool := byName[name]
		if tool == nil {
			t.Errorf("tools/list lacks %s", name)
			continue
		}
		if tool.Description == "" || tool.InputSchema == nil || tool.OutputSchema == nil || tool.Annotations == nil {
			t.Errorf("%s: incomplete definition %+v", name, tool)
			continue
		}
		if tool.Annotations.DestructiveHint == nil || tool.Annotations.OpenWorldHint == nil {
			t.Errorf("%s: annotations lack hints: %+v", name, tool.Annotations)
		}
	}
	if len(res.Tools) != 13 {
		t.Errorf("%d tools, want 13", len(res.Tools))
	}
	if a := byName["delete_snapshot"].Annotations; a == nil || a.ReadOnlyHint || !*a.DestructiveHint || !a.IdempotentHint {
		t.Errorf("delete_snapshot annotations: %+v", a)
	}
	if a := byName["list_machines"].Annotations; a == nil || !a.ReadOnlyHint || *a.DestructiveHint {
		t.Errorf("list_machines annotations: %+v", a)
	}
	if a := byName["delete_vm"].Annotations; a == nil || a.ReadOnlyHint || !*a.DestructiveHint || !a.IdempotentHint {
		t.Errorf("delete_vm annotations: %+v", a)
	}
	prompts, err := h.cs.ListPrompts(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(prompts.Prompts) != 2 {
		t.Errorf("%d prompts, want 2", len(prompts.Prompts))
	}
	p, err := h.cs.GetPrompt(context.Background(), &mcp.GetPromptParams{Name: "analyse_data_file", Arguments: map[string]string{"local_path": "sales.csv"}})
	if err != nil {
		t.Fatal(err)
	}
	if tc, ok := p.Messages[0].Content.(*mcp.TextContent); !ok || !strings.Contains(tc.Text, "upload_file") {
		t.Errorf("prompt: %+v", p.Messages[0].Content)
	}
	if _, err := h.cs.GetPrompt(context.Background(), &mcp.GetPromptParams{Name: "fix_failing_script"}); err == nil {
		t.Error("prompt without its required argument succeeded")
	}
}

func TestRunPython(t *testing.T) {
	t.Parallel()
	pythonConversation(t, start(t))
}

// pythonConversation is the run_python scenario every Python backend passes:
// state persists, an exception is a tool error, a plot is an image next to
// the text, a timeout keeps the state.
func pythonConversation(t *testing.T, h *harness) {
	t.Helper()
	var out tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "x = 41"}, &out)
	if out.Value != nil || out.Machine == "" {
		t.Errorf("statement: %+v", out)
	}
	machine := out.Machine
	h.ok(t, "run_python", map[string]any{"code": "x + 1"}, &out)
	if out.Value == nil || *out.Value != "42" || out.Machine != machine {
		t.Errorf("x + 1: %+v", out)
	}

	res := h.fails(t, "run_python", map[string]any{"code": "1/0"}, "ZeroDivisionError")
	decode(t, res, &out)
	if !strings.Contains(out.Error, "ZeroDivisionError") {
		t.Errorf("structured error: %q", out.Error)
	}

	res = h.ok(t, "run_python", map[string]any{"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nprint('plotted')"}, &out)
	var images int
	for _, c := range res.Content {
		if img, ok := c.(*mcp.ImageContent); ok {
			images++
			if img.MIMEType != "image/png" || !bytes.HasPrefix(img.Data, []byte("\x89PNG")) {
				t.Errorf("image: %s, %d bytes", img.MIMEType, len(img.Data))
			}
		}
	}
	if images != 1 || out.Images != 1 || !strings.Contains(text(res), "plotted") {
		t.Errorf("plot: %d images, structured %d, text %q", images, out.Images, text(res))
	}

	start := time.Now()
	h.fails(t, "run_python", map[string]any{"code": "import time\ntime.sleep(10)", "timeout_seconds": 1}, "Timed out after 1s; the interpreter was interrupted and your variables are kept")
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("timeout took %s", d)
	}
	h.ok(t, "run_python", map[string]any{"code": "x"}, &out)
	if out.Value == nil || *out.Value != "41" {
		t.Errorf("x after the timeout: %+v", out)
	}
}

func TestProgressNotifications(t *testing.T) {
	t.Parallel()
	h := start(t)
	n := pythonProgress(t, h)
	// No token, no notifications.
	h.call(t, "exec_command", map[string]any{"command": "for i in 1 2 3; do echo $i; sleep 0.2; done"})
	if got := h.progressCount(); got != n {
		t.Errorf("%d notifications without a progress token", got-n)
	}
	// exec_command streams too.
	if _, err := h.callErr("exec_command", map[string]any{"command": "for i in 1 2 3; do echo step $i; sleep 0.2; done"}, 7); err != nil {
		t.Fatal(err)
	}
	if got := h.progressCount(); got <= n {
		t.Errorf("exec_command sent no progress")
	}
}

// pythonProgress runs a 5-line print loop with a progress token and checks
// the notifications that arrived before the result; it returns their count.
func pythonProgress(t *testing.T, h *harness) int {
	t.Helper()
	res, err := h.callErr("run_python", map[string]any{"code": "import time\nfor i in range(5):\n    print('line', i, flush=True)\n    time.sleep(0.2)"}, "tok-1")
	if err != nil {
		t.Fatal(err)
	}
	n := h.progressCount()
	if res.IsError || !strings.Contains(text(res), "line 4") {
		t.Fatalf("result: %s", text(res))
	}
	if n < 1 {
		t.Fatalf("no progress notification before the result")
	}
	h.mu.Lock()
	first, last := h.progress[0], h.progress[n-1]
	h.mu.Unlock()
	// The server writes a call's notifications before its result.
	if !strings.Contains(last.Message, "line 4") {
		t.Errorf("the last notification before the result is %q, want the last line", last.Message)
	}
	if first.ProgressToken != "tok-1" || !strings.Contains(first.Message, "line") {
		t.Errorf("notification: %+v", first)
	}
	return n
}

func TestExecCommand(t *testing.T) {
	t.Parallel()
	h := start(t)
	var out tools.ExecCommandOutput
	res := h.ok(t, "exec_command", map[string]any{"command": "echo out; echo err >&2; exit 3"}, &out)
	if out.ExitCode != 3 || out.Stdout != "out\n" || out.Stderr != "err\n" || out.TimedOut || out.Machine == "" {
		t.Errorf("exit 3: %+v", out)
	}
	if !strings.Contains(text(res), "exit code: 3") {
		t.Errorf("text: %q", text(res))
	}
	h.ok(t, "exec_command", map[string]any{"argv": []string{"printf", "%s-%s", "a b", "$HOME"}}, &out)
	if out.ExitCode != 0 || out.Stdout != "a b-$HOME" {
		t.Errorf("argv: %+v", out)
	}
	h.ok(t, "exec_command", map[string]any{"argv": []string{"tr", "a-z", "A-Z"}, "stdin": "hello\n"}, &out)
	if out.Stdout != "HELLO\n" {
		t.Errorf("stdin: %+v", out)
	}
	h.ok(t, "exec_command", map[string]any{"command": "mkdir -p sub && cd sub && pwd >/dev/null; echo $GREETING", "env": map[string]string{"GREETING": "hi"}}, &out)
	if out.Stdout != "hi\n" {
		t.Errorf("env: %+v", out)
	}
	h.ok(t, "exec_command", map[string]any{"command": "basename $PWD", "workdir": "sub"}, &out)
	if out.Stdout != "sub\n" {
		t.Errorf("workdir: %+v", out)
	}
	res = h.fails(t, "exec_command", map[string]any{"command": "echo before; sleep 10", "timeout_seconds": 1}, "Timed out")
	decode(t, res, &out)
	if !out.TimedOut || out.Stdout != "before\n" {
		t.Errorf("timeout: %+v", out)
	}
	// The timeout killed the whole tree, background children included.
	h.fails(t, "exec_command", map[string]any{"command": "sleep 501 & sleep 502", "timeout_seconds": 1}, "Timed out")
	h.ok(t, "exec_command", map[string]any{"command": "pgrep -c -f 'sleep 50[12]'"}, &out)
	if out.ExitCode != 1 || strings.TrimSpace(out.Stdout) != "0" {
		t.Errorf("processes survived the timeout: %+v", out)
	}
}

func TestDefaultMachineSurvivesARestart(t *testing.T) {
	t.Parallel()
	state, root := t.TempDir(), t.TempDir()
	h := startIn(t, state, root)
	var out tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "echo kept > notes.txt"}, &out)
	first := out.Machine
	h.cs.Close()

	h = startIn(t, state, root)
	h.ok(t, "exec_command", map[string]any{"command": "cat notes.txt"}, &out)
	if out.Machine != first || out.Stdout != "kept\n" {
		t.Fatalf("after a restart: machine %s (was %s), notes.txt %q", out.Machine, first, out.Stdout)
	}
	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", map[string]any{}, &list)
	if len(list.Machines) != 1 {
		t.Fatalf("machines piled up: %+v", list.Machines)
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestFiles(t *testing.T) {
	t.Parallel()
	h := start(t)
	var up tools.UploadFileOutput
	var down tools.DownloadFileOutput

	// Text.
	textBody := "héllo\nworld\n"
	h.ok(t, "upload_file", map[string]any{"path": "notes/a.txt", "content": textBody}, &up)
	if up.Bytes != int64(len(textBody)) || up.SHA256 != sha([]byte(textBody)) || up.Machine == "" {
		t.Errorf("upload text: %+v", up)
	}
	res := h.ok(t, "download_file", map[string]any{"path": "notes/a.txt"}, &down)
	if down.SHA256 != up.SHA256 || down.Encoding != "utf-8" || down.Truncated || down.Machine != up.Machine {
		t.Errorf("download text: %+v", down)
	}
	// The first item names the machine; the second is the file.
	if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != "[machine "+up.Machine+" (local)]" {
		t.Errorf("first item: %#v", res.Content[0])
	}
	if tc, ok := res.Content[1].(*mcp.TextContent); !ok || tc.Text != textBody {
		t.Errorf("text content: %#v", res.Content[1])
	}
	h.ok(t, "download_file", map[string]any{"path": "notes/a.txt", "max_bytes": 2}, &down)
	if !down.Truncated || down.Bytes != int64(len(textBody)) || down.SHA256 != up.SHA256 {
		t.Errorf("max_bytes: %+v", down)
	}

	// Binary, through base64.
	bin := []byte{0, 1, 2, 0xff, 0xfe, 'P', 'N', 'G', 0x80}
	h.ok(t, "upload_file", map[string]any{"path": "b.bin", "content_base64": base64.StdEncoding.EncodeToString(bin)}, &up)
	if up.SHA256 != sha(bin) {
		t.Errorf("upload binary: %+v", up)
	}
	res = h.ok(t, "download_file", map[string]any{"path": "b.bin"}, &down)
	if down.Encoding != "base64" || down.SHA256 != sha(bin) {
		t.Errorf("download binary: %+v", down)
	}
	if er, ok := res.Content[1].(*mcp.EmbeddedResource); !ok || !bytes.Equal(er.Resource.Blob, bin) {
		t.Errorf("blob content: %#v", res.Content[1])
	}

	// A file and a directory through local_path.
	src := filepath.Join(h.root, "project")
	os.MkdirAll(filepath.Join(src, "data"), 0o755)
	os.WriteFile(filepath.Join(src, "main.py"), []byte("print('hi')\n"), 0o644)
	os.WriteFile(filepath.Join(src, "data", "x.bin"), bin, 0o644)
	h.ok(t, "upload_file", map[string]any{"path": "proj", "local_path": src}, &up)
	if up.Files != 2 || up.Bytes != int64(12+len(bin)) {
		t.Errorf("upload dir: %+v", up)
	}
	var out tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "python3 main.py && cmp data/x.bin ../b.bin && echo same", "workdir": "proj"}, &out)
	if out.Stdout != "hi\nsame\n" {
		t.Errorf("uploaded dir in the machine: %+v", out)
	}
	dst := filepath.Join(h.root, "back")
	h.ok(t, "download_file", map[string]any{"path": "proj", "local_path": dst}, &down)
	if down.SHA256 != up.SHA256 || down.Files != 2 || down.LocalPath == "" {
		t.Errorf("download dir: %+v, upload %+v", down, up)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "data", "x.bin")); !bytes.Equal(got, bin) {
		t.Errorf("downloaded x.bin: %q", got)
	}
	h.ok(t, "upload_file", map[string]any{"path": "single.py", "local_path": "project/main.py"}, &up)
	h.ok(t, "download_file", map[string]any{"path": "single.py", "local_path": filepath.Join(h.root, "single.py")}, &down)
	if down.SHA256 != up.SHA256 || up.SHA256 != sha([]byte("print('hi')\n")) {
		t.Errorf("file via local_path: up %+v down %+v", up, down)
	}
	h.fails(t, "download_file", map[string]any{"path": "single.py", "local_path": filepath.Join(h.root, "single.py")}, "already exists")
	h.fails(t, "download_file", map[string]any{"path": "proj"}, "directory")

	// Outside the allowed roots.
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret.txt"), []byte("s"), 0o644)
	h.fails(t, "upload_file", map[string]any{"path": "s.txt", "local_path": filepath.Join(outside, "secret.txt")}, h.root)
	h.fails(t, "upload_file", map[string]any{"path": "s.txt", "local_path": "/etc/passwd"}, "outside the allowed roots")
	h.fails(t, "download_file", map[string]any{"path": "b.bin", "local_path": filepath.Join(outside, "b.bin")}, "outside the allowed roots")
	if _, err := os.Stat(filepath.Join(outside, "b.bin")); err == nil {
		t.Error("download_file wrote outside the allowed roots")
	}
	h.fails(t, "upload_file", map[string]any{"path": "x", "content": "a", "content_base64": "YQ=="}, "exactly one")
	h.fails(t, "download_file", map[string]any{"path": "../../etc/passwd"}, "outside the machine's home")
	h.fails(t, "download_file", map[string]any{"path": "missing.txt"}, "missing.txt")
}

func TestMachinesAndSnapshots(t *testing.T) {
	t.Parallel()
	h := start(t)
	var launch tools.LaunchVMOutput
	h.ok(t, "launch_vm", map[string]any{"name": "first", "tags": map[string]string{"team": "a"}}, &launch)
	a := launch.Machine
	if a == "" || launch.Status != "running" {
		t.Fatalf("launch: %+v", launch)
	}
	var out tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "echo kept > f.txt"}, &out)
	if out.Machine != a {
		t.Errorf("default machine after launch_vm: %s, want %s", out.Machine, a)
	}
	var snap tools.SnapshotVMOutput
	h.ok(t, "snapshot_vm", map[string]any{"name": "with-f"}, &snap)
	if snap.SnapshotID == "" || snap.Machine != a || snap.Status != "created" {
		t.Fatalf("snapshot: %+v", snap)
	}
	h.ok(t, "launch_vm", map[string]any{"snapshot_id": snap.SnapshotID}, &launch)
	b := launch.Machine
	h.ok(t, "exec_command", map[string]any{"command": "cat f.txt"}, &out)
	if out.Machine != b || out.Stdout != "kept\n" {
		t.Errorf("machine from the snapshot: %+v", out)
	}
	h.ok(t, "exec_command", map[string]any{"command": "echo changed > f.txt", "machine": a}, &out)
	h.ok(t, "exec_command", map[string]any{"command": "cat f.txt", "machine": b}, &out)
	if out.Stdout != "kept\n" {
		t.Errorf("machines share files: %+v", out)
	}

	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", map[string]any{}, &list)
	if len(list.Machines) != 2 || len(list.Snapshots) != 1 || list.Snapshots[0].ID != snap.SnapshotID {
		t.Fatalf("list: %+v", list)
	}
	for _, m := range list.Machines {
		if m.Default != (m.ID == b) {
			t.Errorf("default flag: %+v", m)
		}
		if m.ID == a && (m.Name != "first" || m.Tags["team"] != "a") {
			t.Errorf("machine a: %+v", m)
		}
		if m.ID == b && m.FromSnapshot != snap.SnapshotID {
			t.Errorf("machine b: %+v", m)
		}
	}

	var del tools.DeleteVMOutput
	h.ok(t, "delete_vm", map[string]any{"machine": a}, &del)
	if del.Machine != a || del.Status != "deleted" {
		t.Errorf("delete: %+v", del)
	}
	h.ok(t, "list_machines", nil, &list)
	if len(list.Machines) != 1 || list.Machines[0].ID != b {
		t.Errorf("list after delete: %+v", list)
	}
	h.fails(t, "exec_command", map[string]any{"command": "true", "machine": a}, "not found")
	h.fails(t, "launch_vm", map[string]any{"snapshot_id": "s-nope"}, "not found")
	// Deleting the default machine: the next call gets a new one.
	h.ok(t, "delete_vm", map[string]any{"machine": b}, &del)
	h.ok(t, "exec_command", map[string]any{"command": "test ! -e f.txt && echo fresh"}, &out)
	if out.Machine == b || out.Stdout != "fresh\n" {
		t.Errorf("after deleting the default: %+v", out)
	}
}

// tree lists every path under the dirs with its size, to compare.
func tree(t *testing.T, dirs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() == "lock" {
				return nil
			}
			fi, _ := d.Info()
			fmt.Fprintf(&b, "%s %d\n", p, fi.Size())
			return nil
		})
	}
	return b.String()
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	h := startIn(t, state, t.TempDir())
	// A machine with a file, so that a bad call has something to damage.
	h.ok(t, "exec_command", map[string]any{"command": "echo keep > keep.txt"}, &tools.ExecCommandOutput{})
	before := tree(t, state, h.root)
	if _, err := h.callErr("no_such_tool", map[string]any{}, nil); err == nil || !strings.Contains(err.Error(), "no_such_tool") {
		t.Errorf("unknown tool: %v", err)
	}
	h.fails(t, "run_python", map[string]any{}, "code")
	h.fails(t, "run_python", map[string]any{"code": 5}, "code")
	h.fails(t, "run_python", map[string]any{"code": "1", "timeout_seconds": "soon"}, "timeout_seconds")
	h.fails(t, "run_python", map[string]any{"code": "1", "bogus": true}, "bogus")
	// timeout_seconds 0 is not "the default" in disguise: it is refused.
	h.fails(t, "run_python", map[string]any{"code": "1", "timeout_seconds": 0}, "timeout_seconds")
	h.fails(t, "exec_command", map[string]any{"command": "true", "timeout_seconds": 0}, "timeout_seconds")
	h.fails(t, "list_machines", map[string]any{"timeout_seconds": 0}, "timeout_seconds")
	h.fails(t, "exec_command", map[string]any{"command": "ls", "argv": []string{"ls"}}, "not both")
	h.fails(t, "exec_command", map[string]any{}, "missing command")
	h.fails(t, "run_python", map[string]any{"code": "1", "machine": "m-does-not-exist"}, "m-does-not-exist")
	h.fails(t, "delete_vm", map[string]any{}, "machine")
	h.fails(t, "upload_file", map[string]any{"path": "x", "content_base64": "!!!"}, "base64")
	for tail, want := range map[string]string{"!!!!": `not valid base64 ('!' at byte 409600)`, "QQ": "padding missing", "QQ==QUJD": `('Q' at byte 409604)`} {
		res := h.call(t, "upload_file", map[string]any{"path": "keep.txt", "content_base64": strings.Repeat("QUJD", 100<<10) + tail})
		if !res.IsError || !strings.Contains(text(res), want) {
			t.Errorf("400 KiB of base64 ending in %q: %.200s", tail, text(res))
		}
	}
	h.fails(t, "upload_file", map[string]any{"path": "../../etc/passwd", "content": "x"}, "outside the machine's home")
	h.fails(t, "upload_file", map[string]any{"path": "y", "local_path": "/etc/passwd"}, "allowed")
	h.fails(t, "launch_vm", map[string]any{"snapshot_id": "s-does-not-exist"}, "s-does-not-exist")
	if after := tree(t, state, h.root); after != before {
		t.Errorf("bad input changed the disk:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Still serving.
	var out tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "6 * 7"}, &out)
	if out.Value == nil || *out.Value != "42" {
		t.Errorf("after bad input: %+v", out)
	}
}
