//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested() // the engine starts this test binary as its agent
	runEmulatorIfRequested()     // and the bench as its emulators
	runHopIfRequested()          // and the floor's chains
	os.Exit(m.Run())
}

// TestRun builds the server and runs a short measurement against it, so
// that the command keeps working.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mcp-server and starts sandboxes")
	}
	bin := filepath.Join(t.TempDir(), "mcp-server")
	build := exec.Command("go", "build", "-o", bin, "github.com/vmcp-dev/vmcp/cmd/mcp-server")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	state := t.TempDir()
	var out bytes.Buffer
	if err := run([]string{"--server", bin, "--n", "20", "--output-rounds", "1", "--instant-rounds", "1", "--state-dir", state}, &out); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	// Tables: the local backend's two operations, four servers on one
	// state directory by path, then ForeverVM's
	// and FastVM's one each; then the 200 MB output's ratio, and run_python
	// over exec_command on FastVM.
	var rows []string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasSuffix(l, "x") {
			rows = append(rows, l)
		}
	}
	want := []string{"run_python 1+1", "exec_command true", "owner ", "front end ", "alone ", "engine ", "run_python 1+1", "exec_command true", "yes | head: to the result / to /dev/null: ", "python print: to the result / to /dev/null: ", "through the proxy / directly (throughput): ", "run_python 1+1 / exec_command true (p50): "}
	if len(rows) != len(want) {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, prefix := range want {
		if !strings.HasPrefix(rows[i], prefix) {
			t.Errorf("row %q: want %q ... ratio", rows[i], prefix)
		}
	}
	if !strings.Contains(out.String(), "first 1+1 (session new)") || !strings.Contains(out.String(), "first pandas sum (session new)") {
		t.Errorf("no first calls of new conversations:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "new socket p50") {
		t.Errorf("no new-socket column:\n%s", out.String())
	}
	for _, sub := range []string{"sdk", "lean", "engine", "instant", "shared", "egress", "forevervm", "fastvm", "fastvm-python", "output"} {
		if _, err := os.Stat(filepath.Join(state, sub)); err != nil {
			t.Errorf("state dir: %v", err)
		}
	}
}

// TestSchedFloor: the floor's chains pass their tokens, and none of their
// processes outlives the measurement.
func TestSchedFloor(t *testing.T) {
	r, err := schedFloor(2, 20)
	if err != nil {
		t.Fatal(err)
	}
	// Each round spins 200 µs in each of the six processes at least.
	if min := floorHops * floorWork; r.alone < min || r.beside < min {
		t.Errorf("rounds of %v alone and %v beside busy chains; each takes %v of work at least", r.alone, r.beside, min)
	}
	var out bytes.Buffer
	printFloor(&out, r)
	if !strings.Contains(out.String(), "beside 2 busy chains") {
		t.Errorf("printed %q", out.String())
	}
	var children []byte
	for _, tid := range taskIDs(t) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", os.Getpid(), tid))
		children = append(children, b...)
	}
	if s := strings.TrimSpace(string(children)); s != "" {
		t.Errorf("processes left running: %s", s)
	}
}

// taskIDs lists the test process's threads.
func taskIDs(t *testing.T) []string {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Name())
	}
	return ids
}

func TestParseConfig(t *testing.T) {
	cfg, err := parseConfig([]string{"--server", "/x/mcp-server"})
	if err != nil || cfg.n != 2000 || cfg.stateDir != "" || cfg.server != "/x/mcp-server" {
		t.Errorf("defaults: %+v %v", cfg, err)
	}
	for _, args := range [][]string{
		{},
		{"--server", "s", "--n", "0"},
		{"--server", "s", "extra"},
	} {
		if _, err := parseConfig(args); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// TestMissingServer fails before starting anything.
func TestMissingServer(t *testing.T) {
	err := run([]string{"--server", filepath.Join(t.TempDir(), "nope")}, &bytes.Buffer{})
	if err == nil {
		t.Fatal("no error for a missing server binary")
	}
}
