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
	// Another program filling the state filesystem fast makes the monitor
	// walk every machine's files, idle or not: those walks are not counted.
	before, bursts := m.walks.Load(), m.burstWalks.Load()
	time.Sleep(2 * time.Second)
	if idle := m.walks.Load() - before - (m.burstWalks.Load() - bursts); idle > 1 {
		t.Errorf("an idle machine's files were walked %d times in 2 s (and %d times for bursts); want at most 1 (once per %v)",
			idle, m.burstWalks.Load()-bursts, idleMeasureEvery)
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

// TestMonitorSleepsWhileNoMachineRuns: with no machine running (the warm
// pool's are not the monitor's), the monitor does not look every
// monitorTick; a machine handed out from the pool (its sandbox runs
// already), or one that starts, has it look every tick again at once.
func TestMonitorSleepsWhileNoMachineRuns(t *testing.T) {
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 1}})
	waitWarm(t, e, 1, time.Minute)
	ticks := func(d time.Duration) int64 {
		before := e.monitor.ticks.Load()
		time.Sleep(d)
		return e.monitor.ticks.Load() - before
	}
	idle := func(when string) {
		t.Helper()
		if n := ticks(2 * time.Second); n > 3 {
			t.Errorf("%s, the monitor looked %d times in 2 s; want one per %v at most", when, n, monitorIdleLook)
		}
	}
	idle("with only warm machines")

	// Within the refill's delay, which starts a machine for the pool.
	const window = warmRefillDelay * 8 / 10
	pooled := newTestMachine(t, e, MachineSpec{})
	if n := ticks(window); n < 3 {
		t.Errorf("in the %v after a machine was handed out from the pool, the monitor looked %d times; want one per %v", window, n, monitorTick)
	}
	waitWarm(t, e, 1, time.Minute)
	pooled.Stop()
	idle("after the pooled machine stopped")

	started := newTestMachine(t, e, MachineSpec{Limits: Limits{MemoryBytes: 300 << 20}})
	mustRun(t, started, Command{Shell: "true"})
	if n := ticks(window); n < 3 {
		t.Errorf("in the %v after a machine started, the monitor looked %d times; want one per %v", window, n, monitorTick)
	}
	started.Stop()
	idle("after the started machine stopped")
}
