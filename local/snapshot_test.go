//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readString(t *testing.T, m *Machine, p string) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := m.ReadFile(context.Background(), p, &b); err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return b.String()
}

func TestSnapshotLaunchAndDelete(t *testing.T) {
	dir := t.TempDir()
	e := newTestEngine(t, Options{StateDir: dir})
	ctx := context.Background()
	orig := newTestMachine(t, e, MachineSpec{Name: "orig", Tags: map[string]string{"team": "a"}})
	mustRun(t, orig, Command{Shell: "echo old > notes.txt && mkdir -p src && echo 'print(1)' > src/main.py"})
	snap, err := orig.Snapshot(ctx, "before-change")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Machine != orig.ID() || snap.Name != "before-change" || snap.SizeBytes <= 0 {
		t.Fatalf("snapshot %+v", snap)
	}
	mustRun(t, orig, Command{Shell: "echo new > notes.txt"})

	info, err := e.Create(ctx, MachineSpec{FromSnapshot: snap.ID})
	if err != nil {
		t.Fatal(err)
	}
	clone, _ := e.Machine(info.ID)
	if got := readString(t, clone, "notes.txt"); got != "old\n" {
		t.Fatalf("launched from snapshot: notes.txt = %q, want old", got)
	}
	if res := mustRun(t, clone, Command{Shell: "python3 src/main.py && touch mine"}); res.Stdout != "1\n" {
		t.Fatalf("clone cannot use its files: %+v", res)
	}
	if got := readString(t, orig, "notes.txt"); got != "new\n" {
		t.Fatalf("original: notes.txt = %q, want new", got)
	}
	if orig.Info().Status != StatusRunning {
		t.Fatal("the original stopped while being snapshotted")
	}

	// Listings, and survival across a restart of the engine.
	if len(e.Snapshots()) != 1 || len(e.Machines()) != 2 {
		t.Fatalf("%d snapshots, %d machines", len(e.Snapshots()), len(e.Machines()))
	}
	e.Close()
	e = newTestEngine(t, Options{StateDir: dir})
	if len(e.Snapshots()) != 1 || len(e.Machines()) != 2 {
		t.Fatalf("after restart: %d snapshots, %d machines", len(e.Snapshots()), len(e.Machines()))
	}
	orig, _ = e.Machine(orig.ID())
	if info := orig.Info(); info.Name != "orig" || info.Tags["team"] != "a" || info.Status != StatusStopped {
		t.Fatalf("metadata after restart: %+v", info)
	}

	// Delete removes everything on disk.
	if err := e.DeleteSnapshot(snap.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{orig.ID(), info.ID} {
		if err := e.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{"machines", "snapshots"} {
		entries, _ := os.ReadDir(filepath.Join(dir, sub))
		if len(entries) != 0 {
			t.Fatalf("%s left on disk: %v", sub, entries)
		}
	}
	if _, err := e.Machine(orig.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted machine: %v", err)
	}
	if _, err := e.Create(ctx, MachineSpec{FromSnapshot: snap.ID}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("launch from a deleted snapshot: %v", err)
	}
	if err := e.Delete(ctx, orig.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestDeleteEndsTheMachinesProcesses(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	mustRun(t, m, Command{Shell: "nohup sleep 1000 >/dev/null 2>&1 &"})
	mustExec(t, m, "x = 1", PythonOptions{})
	pids := m.HostPIDs()
	if len(pids) < 3 {
		t.Fatalf("machine has processes %v", pids)
	}
	if err := e.Delete(context.Background(), m.ID()); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if stat, err := os.ReadFile("/proc/" + itoa(pid) + "/stat"); err == nil && !strings.Contains(string(stat), ") Z ") {
			t.Fatalf("process %d of the deleted machine is still running: %s", pid, stat)
		}
	}
	if _, err := m.RunPython(context.Background(), "1", PythonOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("exec on a deleted machine: %v", err)
	}
}

func TestClosedEngineStartsNothing(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	mustRun(t, m, Command{Argv: []string{"true"}})
	pids := m.HostPIDs()
	e.Close()
	if _, err := m.Run(context.Background(), Command{Argv: []string{"true"}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("run after close: %v", err)
	}
	if _, err := e.Create(context.Background(), MachineSpec{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("create after close: %v", err)
	}
	for _, pid := range pids {
		if stat, err := os.ReadFile("/proc/" + itoa(pid) + "/stat"); err == nil && !strings.Contains(string(stat), ") Z ") {
			t.Fatalf("process %d survived Close", pid)
		}
	}
	// A second engine may take over the state directory.
	e2 := newTestEngine(t, Options{StateDir: e.StateDir()})
	if _, err := e2.Machine(m.ID()); err != nil {
		t.Fatal(err)
	}
}

func TestStateDirIsLocked(t *testing.T) {
	e := newTestEngine(t, Options{})
	if _, err := New(Options{StateDir: e.StateDir()}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second engine on one state dir: %v", err)
	}
}
