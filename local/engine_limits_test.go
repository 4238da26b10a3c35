//go:build linux && !vmcp_nolocal

package local

import (
	"testing"
)

// TestDefaultLimitsFollowTheEngine: a machine created with the default
// memory takes the new default after a restart with another (and runs
// under it); one whose creator chose its memory keeps it.
func TestDefaultLimitsFollowTheEngine(t *testing.T) {
	dir := t.TempDir()
	e := newTestEngine(t, Options{StateDir: dir, Limits: Limits{MemoryBytes: 256 << 20}})
	byDefault := newTestMachine(t, e, MachineSpec{})
	chosen := newTestMachine(t, e, MachineSpec{Limits: Limits{MemoryBytes: 300 << 20}})
	if got := byDefault.Info().Limits.MemoryBytes; got != 256<<20 {
		t.Fatalf("created with %d MiB of memory, want 256", got>>20)
	}
	e.Close()

	e2 := newTestEngine(t, Options{StateDir: dir, Limits: Limits{MemoryBytes: 1 << 30}})
	m, err := e2.Machine(byDefault.ID())
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Info().Limits.MemoryBytes; got != 1<<30 {
		t.Fatalf("after a restart with 1024 MiB, the default machine has %d MiB", got>>20)
	}
	// The sandbox runs under the new limit: 600 MiB fit now, not before.
	r := mustExec(t, m, "b = bytearray(600 << 20); len(b) >> 20", PythonOptions{})
	if value(r) != "600" {
		t.Fatalf("600 MiB under the new 1024 MiB limit: %s %s", value(r), r.Error)
	}
	c, err := e2.Machine(chosen.ID())
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Info().Limits.MemoryBytes; got != 300<<20 {
		t.Fatalf("the machine created with 300 MiB has %d MiB after the restart", got>>20)
	}
	if got := c.Info().Limits.DiskBytes; got != e2.opts.Limits.DiskBytes {
		t.Fatalf("its disk, left to the default, is %d, want %d", got, e2.opts.Limits.DiskBytes)
	}
}
