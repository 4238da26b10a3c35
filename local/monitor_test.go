//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// requireCPUAccounting skips where the engine cannot tell that a machine's
// processes did not run (no cgroups, or no CPU accounting in them): there
// every machine's files are walked every measureEvery.
func requireCPUAccounting(t *testing.T, e *Engine, m *Machine) {
	t.Helper()
	f := e.cgroups.openCPUUsage(m.ID())
	if f == nil {
		t.Skip("no CPU accounting for machines here (root with cgroup v2, or a v1 cpuacct hierarchy of its own)")
	}
	f.Close()
}

// TestIdleMachinesFilesAreWalkedSeldom: the monitor walks the files of a
// machine whose processes do not run once per idleMeasureEvery, and those
// of a machine at work every measureEvery.
func TestIdleMachinesFilesAreWalkedSeldom(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	mustExec(t, m, "1 + 1", PythonOptions{})
	requireCPUAccounting(t, e, m)
	time.Sleep(2 * measureEvery) // the walk after the call
	before := m.walks.Load()
	time.Sleep(2 * time.Second)
	if idle := m.walks.Load() - before; idle > 1 {
		t.Errorf("an idle machine's files were walked %d times in 2 s; want at most 1 (once per %v)", idle, idleMeasureEvery)
	}

	mustRun(t, m, Command{Shell: "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &"})
	before = m.walks.Load()
	time.Sleep(2 * time.Second)
	if busy := m.walks.Load() - before; busy < 4 {
		t.Errorf("a busy machine's files were walked %d times in 2 s; want one per %v", busy, measureEvery)
	}
}

// TestHostWritesToAnIdleMachineAreMeasured: an upload into a machine whose
// processes do not run (the machine's CPU time does not show it) has its
// files walked at the monitor's next look all the same.
func TestHostWritesToAnIdleMachineAreMeasured(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	mustExec(t, m, "1 + 1", PythonOptions{})
	requireCPUAccounting(t, e, m)
	time.Sleep(2 * measureEvery)
	before := m.walks.Load()
	if _, err := m.WriteFile(context.Background(), "up.bin", bytes.NewReader(make([]byte, 4<<20)), 0); err != nil {
		t.Fatal(err)
	}
	// The upload walks once itself, to check the quota before it writes.
	time.Sleep(3 * measureEvery)
	if n := m.walks.Load() - before; n < 2 {
		t.Errorf("the files were walked %d times since the upload (its own check included); want the monitor's walk after it", n)
	}
}
