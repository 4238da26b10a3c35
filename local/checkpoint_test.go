//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestPythonVariablesSurviveStops: a machine stopped on purpose (idle, or
// the engine closing) saves its variables — a million-row DataFrame, a
// function, a class and a lambda defined in the REPL — and the next call
// finds them; a socket and an open file are named as not restored. A stop
// without a save (a crash) says that the state was reset.
func TestPythonVariablesSurviveStops(t *testing.T) {
	dir := t.TempDir()
	e, err := New(Options{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	definitions, err := os.ReadFile("testdata/repl_definitions.py")
	if err != nil {
		t.Fatal(err)
	}
	if r := mustExec(t, m, string(definitions), PythonOptions{Timeout: time.Minute}); r.Error != "" {
		t.Fatal(r.Error)
	}

	if err := m.StopSaving(ctx); err != nil {
		t.Fatal(err)
	}
	cp := m.Info().PythonCheckpoint
	if cp == nil || cp.Skipped["sock"] == "" || cp.Skipped["fh"] == "" || !strings.Contains(strings.Join(cp.Names, ","), "df") {
		t.Fatalf("checkpoint after an idle stop: %+v", cp)
	}
	t.Logf("checkpoint: %d bytes, names %v, skipped %v", cp.Bytes, cp.Names, cp.Skipped)
	r := mustExec(t, m, "df.shape, f(2), K().v, lam(3), 'sock' in globals()", PythonOptions{Timeout: time.Minute})
	if value(r) != "((1000000, 1), 4, 7, 4, False)" || r.StateReset != "" {
		t.Fatalf("after the stop: value %s, error %q, reset %q", value(r), r.Error, r.StateReset)
	}
	for _, want := range []string{"restored", "df", "lam", "sock (a socket", "fh (an open file"} {
		if !strings.Contains(r.StateRestored, want) {
			t.Errorf("the result says %q, without %q", r.StateRestored, want)
		}
	}

	// The engine closing (the server stopping on SIGTERM) saves too.
	id := m.ID()
	mustExec(t, m, "n = 41\ng = 1\ndef h():\n    return g", PythonOptions{})
	e.Close()
	e = newTestEngine(t, Options{StateDir: dir})
	m, err = e.Machine(id)
	if err != nil {
		t.Fatal(err)
	}
	// h sees the globals as they are now, not as they were saved.
	r = mustExec(t, m, "g = 5\ndf.a.sum(), f(3), n + 1, h()", PythonOptions{Timeout: time.Minute})
	if value(r) != "(499999500000, 6, 42, 5)" || r.StateRestored == "" || r.StateReset != "" {
		t.Fatalf("after a restart: value %s, error %q, restored %q, reset %q", value(r), r.Error, r.StateRestored, r.StateReset)
	}

	// A stop that saves nothing loses the variables, and says so.
	mustExec(t, m, "z = 1", PythonOptions{})
	m.Stop()
	r = mustExec(t, m, "'z' in globals(), 'df' in globals()", PythonOptions{})
	if value(r) != "(False, False)" || r.StateReset == "" || r.StateRestored != "" {
		t.Errorf("after a stop without a save: value %s, restored %q, reset %q", value(r), r.StateRestored, r.StateReset)
	}
}

// TestCheckpointAboveTheLimitNamesTheLargest: a state larger than half the
// machine's disk quota is not saved; the next call says why, naming the
// largest variables.
func TestCheckpointAboveTheLimitNamesTheLargest(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{Limits: Limits{DiskBytes: 64 << 20}})
	mustExec(t, m, "import os; big = os.urandom(40 << 20); small = 1", PythonOptions{Timeout: time.Minute})
	err := m.StopSaving(context.Background())
	if err == nil || !strings.Contains(err.Error(), "big (about 40 MiB)") {
		t.Fatalf("saving 40 MiB with a limit of 32: %v", err)
	}
	r := mustExec(t, m, "'small' in globals()", PythonOptions{})
	if value(r) != "False" || !strings.Contains(r.StateReset, "could not be saved") || !strings.Contains(r.StateReset, "big") {
		t.Errorf("the next call: value %s, reset %q", value(r), r.StateReset)
	}
}

// TestSnapshotWithMemoryForks: a snapshot with the variables gives them to
// each machine launched from it; the source goes on untouched.
func TestSnapshotWithMemoryForks(t *testing.T) {
	e := newTestEngine(t, Options{})
	ctx := context.Background()
	src := newTestMachine(t, e, MachineSpec{})
	mustExec(t, src, "base = [1, 2]", PythonOptions{})
	snap, err := src.SnapshotWithMemory(ctx, "")
	if err != nil || snap.PythonCheckpoint == nil {
		t.Fatalf("snapshot: %+v %v", snap, err)
	}
	if cp := src.Info().PythonCheckpoint; cp != nil {
		t.Fatalf("the source has a checkpoint to restore: %+v", cp)
	}
	for i := range 3 {
		fork := newTestMachine(t, e, MachineSpec{FromSnapshot: snap.ID})
		r := mustExec(t, fork, fmt.Sprintf("base.append(%d); base", i), PythonOptions{})
		if value(r) != fmt.Sprintf("[1, 2, %d]", i) || r.StateRestored == "" {
			t.Errorf("fork %d: %s %q", i, value(r), r.StateRestored)
		}
	}
	r := mustExec(t, src, "import os; base, os.path.exists(os.path.expanduser('~/.vmcp/python-state.dill'))", PythonOptions{})
	if value(r) != "([1, 2], False)" || r.StateRestored != "" || r.StateReset != "" {
		t.Errorf("the source: %s restored %q reset %q", value(r), r.StateRestored, r.StateReset)
	}
}

// BenchmarkCheckpoint100MB times saving and restoring a 100 MB DataFrame
// (a stop that saves, then the next call), and prints the checkpoint's
// size.
func BenchmarkCheckpoint100MB(b *testing.B) {
	e := newTestEngine(b, Options{Limits: Limits{DiskBytes: 4 << 30}})
	m := newTestMachine(b, e, MachineSpec{})
	mustExec(b, m, "import numpy as np, pandas as pd; df = pd.DataFrame(np.random.rand(1_250_000, 10)); df.memory_usage().sum() >> 20", PythonOptions{Timeout: time.Minute})
	ctx := context.Background()
	var save, restore latencies
	var size int64
	for b.Loop() {
		t0 := time.Now()
		cp, err := m.SavePython(ctx)
		if err != nil || cp == nil {
			b.Fatalf("%+v %v", cp, err)
		}
		save = append(save, time.Since(t0))
		size = cp.Bytes
		m.Stop()
		m.sandbox() // the sandbox's start is not the restore's
		t1 := time.Now()
		r := mustExec(b, m, "df.shape", PythonOptions{Timeout: time.Minute})
		restore = append(restore, time.Since(t1))
		if value(r) != "(1250000, 10)" || r.StateRestored == "" {
			b.Fatalf("after the restore: %s %q %q", value(r), r.StateRestored, r.StateReset)
		}
	}
	b.ReportMetric(float64(save.p50().Microseconds())/1000, "save-p50-ms")
	b.ReportMetric(float64(restore.p50().Microseconds())/1000, "restore-p50-ms")
	b.ReportMetric(float64(size)/(1<<20), "checkpoint-MiB")
}

// TestAttackCheckpointSwappedForAFIFO: the machine's own processes put a
// FIFO where the checkpoint is read, and where it is written; neither
// blocks the interpreter: the save makes its file anew, the restore
// refuses what is not a regular file, and the call says the state was
// reset.
func TestAttackCheckpointSwappedForAFIFO(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	mustExec(t, m, "x = 1", PythonOptions{})
	mustRun(t, m, Command{Shell: "mkdir -p ~/.vmcp && mkfifo ~/.vmcp/python-state.dill.tmp"})
	start := time.Now()
	if _, err := m.SavePython(ctx); err != nil || time.Since(start) > 10*time.Second {
		t.Fatalf("saving with a FIFO at the temporary name: %v after %v", err, time.Since(start))
	}
	mustRun(t, m, Command{Shell: "rm ~/.vmcp/python-state.dill && mkfifo ~/.vmcp/python-state.dill"})
	m.Stop()
	start = time.Now()
	r := mustExec(t, m, "'x' in globals()", PythonOptions{})
	if took := time.Since(start); took > 10*time.Second || value(r) != "False" || !strings.Contains(r.StateReset, "not a regular file") {
		t.Fatalf("restoring a FIFO: %s, reset %q, after %v", value(r), r.StateReset, took)
	}
}
