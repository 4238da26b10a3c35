//go:build linux

package fastvm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

// TestResetAfterAForkBomb: a fork bomb holds the VM at its process limit
// (the emulator's engine limit), and a command says so in the words of
// errAtProcessLimit; Reset gets in all the same, stops the bomb, and keeps
// the interpreter: a command then runs within 2 s, and the variable is
// there.
func TestResetAfterAForkBomb(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{})
	m := env.machine(t)
	ctx := context.Background()
	if r, err := m.RunPython(ctx, "x = 41", backend.PythonOptions{}); err != nil || r.Error != "" {
		t.Fatalf("x = 41: %+v, %v", r, err)
	}
	mustRun(t, m, "echo kept > notes.txt")
	res, err := m.Run(ctx, backend.Command{Shell: "nohup bash -c 'while :; do bash -c \":(){ :|:& };:\"; done' >/dev/null 2>&1 & sleep 2; echo survived", Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("the bomb: %v", err)
	}
	t.Logf("the bomb's command: exit %d", res.ExitCode)
	atLimit := false
	for i := 0; i < 100 && !atLimit; i++ {
		_, err := m.Run(ctx, backend.Command{Shell: "echo hi", Timeout: 10 * time.Second})
		atLimit = errors.Is(err, errAtProcessLimit)
		if !atLimit {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !atLimit {
		t.Error("no command said the machine is at its process limit")
	}
	n, err := m.Reset(ctx, true)
	if err != nil || n < 10 {
		t.Fatalf("Reset(keepPython) = %d, %v; want the bomb stopped", n, err)
	}
	start := time.Now()
	if out := mustRun(t, m, "echo ok; cat notes.txt"); out != "ok\nkept\n" || time.Since(start) > 2*time.Second {
		t.Errorf("after Reset: %q in %v", out, time.Since(start))
	}
	if r, err := m.RunPython(ctx, "x + 1", backend.PythonOptions{}); err != nil || r.Value == nil || *r.Value != "42" {
		t.Errorf("x + 1 after Reset(keepPython): %+v, %v", r, err)
	}
	ps, err := m.Processes(ctx)
	if err != nil || len(ps) != 1 || !ps[0].Interpreter || !strings.Contains(ps[0].Command, "python3") {
		t.Errorf("Processes after Reset(keepPython) = %+v, %v; want the interpreter alone", ps, err)
	}
	if n, err := m.Reset(ctx, false); err != nil || n != 1 {
		t.Errorf("Reset(all) = %d, %v; want the interpreter stopped", n, err)
	}
	if r, err := m.RunPython(ctx, "'x' in globals()", backend.PythonOptions{}); err != nil || r.Value == nil || *r.Value != "False" || r.StateReset == "" {
		t.Errorf("after Reset(all): %+v, %v; want a fresh interpreter that says so", r, err)
	}
}

// TestResetSparesTheVMsOwnProcesses: a process the VM runs of its own
// (started by an exec that is not vmcp's, so without the marker) outlives
// a reset of everything, Python included; the marked one does not.
func TestResetSparesTheVMsOwnProcesses(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{})
	m := env.machine(t)
	ctx := context.Background()
	service, err := env.c.Exec(ctx, m.id, fastvmclient.ExecRequest{Command: []string{"sh", "-c", "setsid sleep 1000 > /dev/null 2>&1 < /dev/null & echo $!"}})
	if err != nil || service.ExitCode != 0 {
		t.Fatalf("starting the VM's own process: %+v, %v", service, err)
	}
	ours := mustRun(t, m, "setsid sleep 1001 > /dev/null 2>&1 < /dev/null & echo $!")
	if n, err := m.Reset(ctx, false); err != nil || n != 1 {
		t.Errorf("Reset(all) = %d, %v; want vmcp's one sleep stopped", n, err)
	}
	for _, c := range []struct {
		pid   string
		alive bool
	}{{strings.TrimSpace(service.Stdout), true}, {strings.TrimSpace(ours), false}} {
		r, err := env.c.Exec(ctx, m.id, fastvmclient.ExecRequest{Command: []string{"sh", "-c", "kill -0 " + c.pid + " 2>/dev/null && echo alive || echo gone"}})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(r.Stdout) == "alive"; got != c.alive {
			t.Errorf("pid %s after Reset: %s; want alive=%v", c.pid, r.Stdout, c.alive)
		}
	}
}
