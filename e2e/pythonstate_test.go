//go:build linux

package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/tools"
)

// TestPythonMemoryOutlivesTheProcess: the variables of a conversation's
// machine survive its idle stop and a restart of the server on SIGTERM
// (sockets and open files are named as not restored); after a kill -9
// the next result says the state was reset; a snapshot carries them to
// three machines launched from it at once, each independent of the others and of
// the source.
func TestPythonMemoryOutlivesTheProcess(t *testing.T) {
	if withoutEngine() {
		t.Skip("the server was built without the local engine")
	}
	t.Parallel()
	state, root := t.TempDir(), t.TempDir()
	opts := clientOptions{serverArgs: []string{"--idle-local", "2s"}}
	h := startWith(t, state, root, opts)
	// A million-row DataFrame, a function, a class and a lambda, and a
	// socket and an open file, which no checkpoint keeps.
	definitions, err := os.ReadFile("../local/testdata/repl_definitions.py")
	if err != nil {
		t.Fatal(err)
	}
	out := runPython(t, h, map[string]any{"code": string(definitions), "timeout_seconds": 60})
	source := out.Machine

	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(h.stderr(), "stopped an idle machine") {
		if time.Now().After(deadline) {
			t.Fatalf("the machine was not stopped after 2 s idle:\n%s", h.stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	out = runPython(t, h, map[string]any{"code": "df.shape, f(2), K().v, lam(3), 'sock' in globals()", "timeout_seconds": 60})
	if out.Value == nil || *out.Value != "((1000000, 1), 4, 7, 4, False)" || out.StateReset != "" {
		t.Fatalf("after the idle stop: %+v", out)
	}
	for _, want := range []string{"df", "lam", "sock (a socket", "fh (an open file"} {
		if !strings.Contains(out.StateRestored, want) {
			t.Errorf("after the idle stop, state_restored %q lacks %q", out.StateRestored, want)
		}
	}

	// SIGTERM: the server saves the variables as it stops.
	out = runPython(t, h, map[string]any{"code": "n = 41"})
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	h.cs.Close()
	h = startWith(t, state, root, opts)
	out = runPython(t, h, map[string]any{"code": "df.a.sum(), f(3), n + 1", "timeout_seconds": 60})
	if out.Machine != source || out.Value == nil || *out.Value != "(499999500000, 6, 42)" || out.StateRestored == "" {
		t.Fatalf("after a restart on SIGTERM: %+v", out)
	}

	// kill -9 saves nothing, and the next call says so.
	out = runPython(t, h, map[string]any{"code": "z = 1"})
	kill(t, h)
	h = startWith(t, state, root, opts)
	out = runPython(t, h, map[string]any{"code": "'z' in globals()"})
	if out.Value == nil || *out.Value != "False" || !strings.Contains(out.StateReset, "killed") {
		t.Fatalf("after kill -9: %+v", out)
	}

	// A snapshot with the variables, launched three times.
	out = runPython(t, h, map[string]any{"code": "base = [1, 2]"})
	var snap tools.SnapshotVMOutput
	h.ok(t, "snapshot_vm", map[string]any{}, &snap)
	if !strings.Contains(strings.Join(snap.Memory, ","), "base") {
		t.Fatalf("the snapshot carries %v", snap.Memory)
	}
	var l tools.LaunchVMOutput
	h.ok(t, "launch_vm", map[string]any{"snapshot_id": snap.SnapshotID, "count": 3}, &l)
	forks := l.Machines
	if len(forks) != 3 || l.Machine != forks[2] {
		t.Fatalf("launch_vm count 3: %+v", l)
	}
	h.fails(t, "launch_vm", map[string]any{"snapshot_id": snap.SnapshotID, "count": 9}, "count")
	for i, m := range forks {
		out = runPython(t, h, map[string]any{"code": fmt.Sprintf("base.append(%d); base", i), "machine": m})
		if out.Value == nil || *out.Value != fmt.Sprintf("[1, 2, %d]", i) || out.StateRestored == "" {
			t.Errorf("fork %d: %+v", i, out)
		}
	}
	out = runPython(t, h, map[string]any{"code": "base", "machine": source})
	// (It may have been stopped idle meanwhile, and restored.)
	if out.Value == nil || *out.Value != "[1, 2]" || out.StateReset != "" {
		t.Errorf("the source after the forks: %+v", out)
	}
}

// runPython calls run_python and decodes its result into a fresh value
// (decoding into a used one would keep fields the new result leaves out).
func runPython(t *testing.T, h *harness, args map[string]any) tools.RunPythonOutput {
	t.Helper()
	var out tools.RunPythonOutput
	h.ok(t, "run_python", args, &out)
	return out
}

// TestPeriodicCheckpointAfterAKill: with --python-checkpoint-interval,
// what a server killed with SIGKILL had saved periodically comes back, and
// the result says from when.
func TestPeriodicCheckpointAfterAKill(t *testing.T) {
	if withoutEngine() {
		t.Skip("the server was built without the local engine")
	}
	t.Parallel()
	state, root := t.TempDir(), t.TempDir()
	opts := clientOptions{serverArgs: []string{"--python-checkpoint-interval", "1s"}}
	h := startWith(t, state, root, opts)
	runPython(t, h, map[string]any{"code": "saved = 'before the save'\ndef twice(x):\n    return 2 * x"})
	deadline := time.Now().Add(30 * time.Second)
	for {
		time.Sleep(200 * time.Millisecond)
		if out := runPython(t, h, map[string]any{"code": "import os; os.path.exists(os.path.expanduser('~/.vmcp/python-state.dill'))"}); out.Value != nil && *out.Value == "True" {
			time.Sleep(500 * time.Millisecond) // the machine's record follows the file
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no periodic checkpoint within 30 s")
		}
	}
	kill(t, h)
	h = startWith(t, state, root, opts)
	out := runPython(t, h, map[string]any{"code": "saved, twice(21)"})
	if out.Value == nil || *out.Value != "('before the save', 42)" || !strings.Contains(out.StateRestored, "periodic") || out.StateReset != "" {
		t.Fatalf("after kill -9 with periodic checkpoints: %+v", out)
	}
}
