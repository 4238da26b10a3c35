package backendtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// deleteSnapshot deletes a snapshot when the test ends, where the backend
// deletes snapshots.
func (s *suite) deleteSnapshot(t *testing.T, id string) {
	t.Cleanup(func() {
		if d, ok := s.b.(backend.SnapshotDeleter); ok {
			c, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			if err := d.DeleteSnapshot(c, id); err != nil && !errors.Is(err, backend.ErrNotFound) {
				t.Errorf("DeleteSnapshot(%s): %v", id, err)
			}
		}
	})
}

// testSnapshots: a snapshot keeps the machine's files as they were when
// it was taken, and a machine created from it starts with them; an unknown
// snapshot is an error.
func (s *suite) testSnapshots(t *testing.T) {
	s.need(t, backend.Snapshots, backend.Files)
	m := s.newMachine(t, backend.MachineSpec{})
	write(t, m, "snap/kept.txt", []byte("before the snapshot\n"), 0o644)
	write(t, m, "snap/bytes.bin", allBytes(), 0o644)
	snap, err := m.(backend.Snapshotter).Snapshot(ctx(t), "backendtest-snapshot")
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	s.deleteSnapshot(t, snap.ID)
	if snap.ID == "" || snap.Backend != s.b.Name() || snap.Name != "backendtest-snapshot" {
		t.Errorf("Snapshot = %+v; want an id, backend %q and the name", snap, s.b.Name())
	}
	if snap.Machine != "" && snap.Machine != m.ID() {
		t.Errorf("the snapshot says it was taken of %s; it was of %s", snap.Machine, m.ID())
	}
	list, err := s.b.Snapshots(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range list {
		found = found || x.ID == snap.ID
	}
	if !found {
		t.Errorf("Snapshots() does not list %s: %+v", snap.ID, list)
	}
	// What changes after the snapshot is not in it.
	write(t, m, "snap/kept.txt", []byte("after the snapshot\n"), 0o644)

	info, err := s.b.Create(ctx(t), backend.MachineSpec{FromSnapshot: snap.ID})
	if err != nil {
		t.Fatalf("Create from snapshot %s: %v", snap.ID, err)
	}
	t.Cleanup(func() { s.b.Delete(context.Background(), info.ID) })
	if info.ID == m.ID() {
		t.Fatal("Create from a snapshot returned the machine it was taken of")
	}
	clone, err := s.b.Machine(ctx(t), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, clone, "snap/kept.txt"); string(got) != "before the snapshot\n" {
		t.Errorf("the machine from the snapshot has snap/kept.txt = %q; want it as it was snapshotted", got)
	}
	if got := read(t, clone, "snap/bytes.bin"); string(got) != string(allBytes()) {
		t.Error("the machine from the snapshot has a different snap/bytes.bin")
	}
	// And the two machines are apart.
	write(t, clone, "snap/clone-only.txt", []byte("clone"), 0o644)
	if _, err := m.(backend.FileStore).Stat(ctx(t), "snap/clone-only.txt"); err == nil {
		t.Error("a file written in the machine from the snapshot appeared in the original")
	}

	if info, err := s.b.Create(ctx(t), backend.MachineSpec{FromSnapshot: "no-such-snapshot"}); err == nil {
		s.b.Delete(ctx(t), info.ID)
		t.Error("Create from an unknown snapshot succeeded")
	}
}

// testReset: where a backend stops a machine's processes from outside,
// Reset ends what commands left running and keeps the interpreter when
// asked.
func (s *suite) testReset(t *testing.T) {
	s.need(t, backend.Reset, backend.Shell)
	m := s.newMachine(t, backend.MachineSpec{})
	rs := m.(backend.Resetter)
	if s.b.Has(backend.Python) {
		python(t, m, "x = 41")
	}
	r := run(t, m, backend.Command{Shell: "sleep 300 > /dev/null 2>&1 &"})
	if r.ExitCode != 0 {
		t.Fatalf("starting a background sleep: %+v", r)
	}
	if r.LeftRunning < 1 && !s.opts.UncountedLeftRunning {
		t.Errorf("LeftRunning = %d after a command left a sleep behind; want at least 1", r.LeftRunning)
	}
	others := func() int {
		procs, err := rs.Processes(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range procs {
			if !p.Interpreter {
				n++
			}
		}
		return n
	}
	if n := others(); n < 1 {
		t.Errorf("Processes lists %d processes besides the interpreter; want the sleep", n)
	}
	n, err := rs.Reset(ctx(t), true)
	if err != nil || n < 1 {
		t.Errorf("Reset(keepPython) = %d, %v; want the sleep stopped", n, err)
	}
	if n := others(); n != 0 {
		t.Errorf("after Reset, %d processes besides the interpreter run", n)
	}
	if s.b.Has(backend.Python) {
		wantX(t, m, "Reset(keepPython)")
	}
	if out := sh(t, m, "echo ok"); out != "ok\n" {
		t.Errorf("echo ok after Reset: %q", out)
	}
}

// testIdle: Idle frees an idle machine, and what it keeps comes back:
// a stopped (or paused) machine serves its next call with its files, and
// Python either kept its state or says it was reset; a parked one comes
// back from its snapshot with its files.
func (s *suite) testIdle(t *testing.T) {
	idler, ok := s.b.(backend.Idler)
	if !ok {
		t.Skipf("the %s backend does nothing with idle machines", s.b.Name())
	}
	m := s.newMachine(t, backend.MachineSpec{})
	files := s.b.Has(backend.Files)
	if files {
		write(t, m, "idle/kept.txt", []byte("kept\n"), 0o644)
	}
	hasPython := s.b.Has(backend.Python)
	if hasPython {
		python(t, m, "x = 41")
	}
	start := time.Now()
	parked, err := idler.Idle(ctx(t), m.ID())
	if err != nil {
		t.Fatalf("Idle: %v", err)
	}
	t.Logf("Idle took %v; parked as %q", time.Since(start), parked)

	if parked != "" {
		s.deleteSnapshot(t, parked)
		// The caller records the snapshot, deletes the machine and
		// creates it again from the snapshot on its next use.
		if err := s.b.Delete(ctx(t), m.ID()); err != nil {
			t.Fatalf("Delete of the parked machine: %v", err)
		}
		info, err := s.b.Create(ctx(t), backend.MachineSpec{FromSnapshot: parked})
		if err != nil {
			t.Fatalf("Create from the parked snapshot %s: %v", parked, err)
		}
		t.Cleanup(func() { s.b.Delete(context.Background(), info.ID) })
		if m, err = s.b.Machine(ctx(t), info.ID); err != nil {
			t.Fatal(err)
		}
	} else {
		// The machine stays: the next call brings it back by itself.
		if m, err = s.b.Machine(ctx(t), m.ID()); err != nil {
			t.Fatalf("Machine after Idle: %v", err)
		}
	}
	if files {
		if got := read(t, m, "idle/kept.txt"); string(got) != "kept\n" {
			t.Errorf("after Idle, idle/kept.txt = %q", got)
		}
	}
	if hasPython {
		r, err := m.(backend.PythonRunner).RunPython(ctx(t), "x + 1", backend.PythonOptions{})
		switch {
		case err != nil:
			t.Errorf("RunPython after Idle: %v", err)
		case value(r) == "42" && r.StateReset == "":
			t.Log("Idle kept the Python state")
		case r.StateReset != "":
			t.Logf("Idle reset the Python state, and the next call says so: %s", r.StateReset)
		default:
			t.Errorf("after Idle, x + 1 = %s (error %q) and the result does not say the state was reset", value(r), r.Error)
		}
		if r := python(t, m, "x = 1\nx + 1"); value(r) != "2" {
			t.Errorf("after Idle, x = 1; x + 1 = %s", value(r))
		}
	}
	if s.b.Has(backend.Shell) {
		if out := sh(t, m, "echo ok"); out != "ok\n" {
			t.Errorf("echo ok after Idle: %q", out)
		}
	}
	// Idling an idle machine again is harmless.
	if parked == "" {
		if _, err := idler.Idle(ctx(t), m.ID()); err != nil {
			t.Errorf("a second Idle: %v", err)
		}
		if _, err := s.b.Machine(ctx(t), m.ID()); err != nil {
			t.Errorf("Machine after a second Idle: %v", err)
		}
	}
}
