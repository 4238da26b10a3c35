//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestResetStopsAForkBomb: a fork bomb left running by a command holds the
// machine at its process limit; a command then says so, word for word;
// Reset stops it from outside, and the machine works again at once, with
// its files and (keepPython) its Python variables.
func TestResetStopsAForkBomb(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{Limits: Limits{Processes: 64}})
	mustExec(t, m, "x = 41", PythonOptions{})
	mustRun(t, m, Command{Shell: "echo kept > f.txt"})
	// The classic bomb, relaunched whenever it fizzles out: the machine
	// stays at its limit.
	res := mustRun(t, m, Command{Shell: "nohup bash -c 'while :; do bash -c \":(){ :|:& };:\"; done' >/dev/null 2>&1 & sleep 2; echo survived", Timeout: 30 * time.Second})
	if !strings.Contains(res.Stdout, "survived") {
		t.Logf("the bomb's command: %+v", res)
	}
	var limitErr *ErrProcessLimit
	for i := 0; i < 100 && limitErr == nil; i++ {
		_, err := m.Run(context.Background(), Command{Shell: "echo hi", Timeout: 10 * time.Second})
		if !errors.As(err, &limitErr) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if limitErr == nil {
		t.Fatal("no command said the machine is at its process limit")
	}
	const want = "the machine is at its process limit (64 processes): stop them with reset_machine (keep_python: true keeps your Python variables), or delete the machine"
	if limitErr.Error() != want {
		t.Errorf("the message:\n%s\nwant\n%s", limitErr.Error(), want)
	}

	n, err := m.Reset(context.Background(), true)
	if err != nil || n < 10 {
		t.Fatalf("reset: %d processes stopped, %v", n, err)
	}
	start := time.Now()
	res = mustRun(t, m, Command{Shell: "echo ok; cat f.txt", Timeout: 10 * time.Second})
	if res.Stdout != "ok\nkept\n" || time.Since(start) > 2*time.Second {
		t.Fatalf("after the reset: %q in %v", res.Stdout, time.Since(start))
	}
	if r := mustExec(t, m, "x + 1", PythonOptions{}); r.Value == nil || *r.Value != "42" || r.StateReset != "" {
		t.Fatalf("Python after a reset that keeps it: %+v", r)
	}
}

// TestResetListsAndStopsBackgroundProcesses: a process a command left
// running is listed, and gone after a reset that stops Python too.
func TestResetListsAndStopsBackgroundProcesses(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustExec(t, m, "y = 1", PythonOptions{})
	mustRun(t, m, Command{Shell: "sleep 1000 >/dev/null 2>&1 & sleep 1001 2>/dev/null | (exec -a '' cat >/dev/null) &"})
	// The shell returns before its children are done with their exec.
	var sleeping, blank, interp bool
	var listed []ProcessInfo
	for deadline := time.Now().Add(10 * time.Second); !(sleeping && blank && interp) && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		sleeping, blank, interp = false, false, false
		listed = m.Processes()
		for _, p := range listed {
			sleeping = sleeping || p.Command == "sleep 1000"
			blank = blank || p.Command == "[cat]" // no command line: its name
			interp = interp || p.Interpreter
		}
	}
	if !sleeping || !blank || !interp {
		t.Fatalf("processes: %+v", listed)
	}
	if _, err := m.Reset(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if ps := m.Processes(); len(ps) != 0 {
		t.Fatalf("after a reset: %+v", ps)
	}
	r := mustExec(t, m, "'y' in globals()", PythonOptions{})
	if r.Value == nil || *r.Value != "False" || !strings.Contains(r.StateReset, "reset") {
		t.Fatalf("Python after a full reset: %+v", r)
	}
}
