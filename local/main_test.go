//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestMain(m *testing.M) {
	RunHelperIfRequested()
	if dir := os.Getenv(crashEngineEnv); dir != "" {
		runEngineUntilKilled(dir)
	}
	code := m.Run()
	if unprivBin != "" {
		os.RemoveAll(filepath.Dir(unprivBin))
	}
	os.Exit(code)
}

// newTestEngine opens an engine on a fresh state directory, closed (and its
// machines stopped) when the test ends.
func newTestEngine(t testing.TB, opts Options) *Engine {
	t.Helper()
	if opts.StateDir == "" {
		opts.StateDir = t.TempDir()
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// newTestMachine creates a machine on e.
func newTestMachine(t testing.TB, e *Engine, spec MachineSpec) *Machine {
	t.Helper()
	info, err := e.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Machine(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
