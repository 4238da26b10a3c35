//go:build linux

package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestResetMachineAfterAForkBomb: a fork bomb left running by a command
// holds the machine at its process limit, and a command says so; after
// reset_machine, a command runs within 2 s, with the files and the Python
// variables still there.
func TestResetMachineAfterAForkBomb(t *testing.T) {
	t.Parallel()
	h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{serverArgs: []string{"--max-processes", "64"}})
	h.ok(t, "run_python", map[string]any{"code": "x = 41"}, nil)
	h.ok(t, "upload_file", map[string]any{"path": "notes.txt", "content": "kept\n"}, nil)
	// The bomb of the report, relaunched whenever it fizzles out.
	h.ok(t, "exec_command", map[string]any{"command": "nohup bash -c 'while :; do bash -c \":(){ :|:& };:\"; done' >/dev/null 2>&1 & sleep 2; echo survived", "timeout_seconds": 30}, nil)
	atLimit := false
	for i := 0; i < 100 && !atLimit; i++ {
		res := h.call(t, "exec_command", map[string]any{"command": "echo hi", "timeout_seconds": 10})
		atLimit = res.IsError && strings.Contains(text(res), "the machine is at its process limit (64 processes): stop them with reset_machine (keep_python: true keeps your Python variables), or delete the machine")
		if !atLimit {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !atLimit {
		t.Error("no command said the machine is at its process limit")
	}
	var reset struct {
		Stopped    int  `json:"stopped"`
		KeptPython bool `json:"kept_python"`
	}
	h.ok(t, "reset_machine", map[string]any{}, &reset)
	if reset.Stopped < 10 || !reset.KeptPython {
		t.Errorf("reset_machine: %+v", reset)
	}
	start := time.Now()
	var out struct {
		Stdout string `json:"stdout"`
	}
	h.ok(t, "exec_command", map[string]any{"command": "echo ok; cat notes.txt"}, &out)
	if out.Stdout != "ok\nkept\n" || time.Since(start) > 2*time.Second {
		t.Errorf("after reset_machine: %q in %v", out.Stdout, time.Since(start))
	}
	var py struct {
		Value *string `json:"value"`
	}
	h.ok(t, "run_python", map[string]any{"code": "x + 1"}, &py)
	if py.Value == nil || *py.Value != "42" {
		t.Errorf("Python after reset_machine: %v", py.Value)
	}
}

// TestBackgroundProcessesInSessionInfo: a process a command left running
// is listed by session_info, and gone after reset_machine.
func TestBackgroundProcessesInSessionInfo(t *testing.T) {
	t.Parallel()
	h := start(t)
	res := h.ok(t, "exec_command", map[string]any{"command": "sleep 1000 >/dev/null 2>&1 &"}, nil)
	if strings.Contains(text(res), "still running") {
		t.Errorf("one background process was noted: %s", text(res))
	}
	// More than five left running: the result says so.
	var many struct {
		ProcessesRunning int `json:"processes_running"`
	}
	res = h.ok(t, "exec_command", map[string]any{"command": "for i in 1 2 3 4 5 6; do sleep 1000 >/dev/null 2>&1 & done"}, &many)
	if many.ProcessesRunning != 7 || !strings.Contains(text(res), "Note: 7 processes started by this or earlier commands are still running in the machine; session_info lists them, reset_machine stops them.") {
		t.Errorf("seven left running: %d, %s", many.ProcessesRunning, text(res))
	}
	h.ok(t, "reset_machine", map[string]any{}, nil)
	h.ok(t, "exec_command", map[string]any{"command": "sleep 1000 >/dev/null 2>&1 &"}, nil)
	var before machineProcesses
	// The command line may still be "bash -c …", or empty, while the child
	// has not exec'd: look again for a while.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		res = h.ok(t, "session_info", map[string]any{}, &before)
		if len(before.Machines) != 1 || len(before.Machines[0].TopProcesses) == 0 ||
			strings.Contains(before.Machines[0].TopProcesses[0].Command, "sleep 1000") || time.Now().After(deadline) {
			break
		}
	}
	if len(before.Machines) != 1 || before.Machines[0].Processes != 1 || !strings.Contains(before.Machines[0].TopProcesses[0].Command, "sleep 1000") ||
		!strings.Contains(text(res), "sleep 1000") {
		t.Fatalf("session_info: %+v\n%s", before, text(res))
	}
	h.ok(t, "reset_machine", map[string]any{"keep_python": false}, nil)
	var after machineProcesses
	h.ok(t, "session_info", map[string]any{}, &after)
	if after.Machines[0].Processes != 0 {
		t.Errorf("after reset_machine: %+v", after)
	}
}

// TestResetFastVMMachine: on a FastVM machine (the emulator's), a process
// a command left running is listed by session_info and stopped by
// reset_machine, which keeps the Python variables.
func TestResetFastVMMachine(t *testing.T) {
	t.Parallel()
	_, url, key := fastvmEmulator(t)
	h := startFastVM(t, t.TempDir(), url, key)
	h.ok(t, "run_python", map[string]any{"code": "x = 41"}, nil)
	h.ok(t, "exec_command", map[string]any{"command": "sleep 1000 >/dev/null 2>&1 &"}, nil)
	var before machineProcesses
	res := h.ok(t, "session_info", map[string]any{}, &before)
	if len(before.Machines) != 1 || before.Machines[0].Processes != 1 || !strings.Contains(before.Machines[0].TopProcesses[0].Command, "sleep 1000") {
		t.Fatalf("session_info: %+v\n%s", before, text(res))
	}
	var reset struct {
		Stopped    int  `json:"stopped"`
		KeptPython bool `json:"kept_python"`
	}
	h.ok(t, "reset_machine", map[string]any{}, &reset)
	if reset.Stopped != 1 || !reset.KeptPython {
		t.Errorf("reset_machine: %+v", reset)
	}
	var after machineProcesses
	h.ok(t, "session_info", map[string]any{}, &after)
	if after.Machines[0].Processes != 0 {
		t.Errorf("after reset_machine: %+v", after)
	}
	var py struct {
		Value *string `json:"value"`
	}
	h.ok(t, "run_python", map[string]any{"code": "x + 1"}, &py)
	if py.Value == nil || *py.Value != "42" {
		t.Errorf("Python after reset_machine: %v", py.Value)
	}
}

// machineProcesses is what session_info says of its machines' processes.
type machineProcesses struct {
	Machines []struct {
		Processes    int `json:"processes"`
		TopProcesses []struct {
			Command string `json:"command"`
		} `json:"top_processes"`
	} `json:"machines"`
}
