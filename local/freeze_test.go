//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// userStates maps each process of the machine but its helpers to its state
// letter.
func userStates(m *Machine) map[int]byte {
	_, pids := m.userProcesses(readProcesses())
	out := map[int]byte{}
	for _, pid := range pids {
		if st, _ := procState(pid); st != 0 {
			out[pid] = st
		}
	}
	return out
}

// counterValue reads the number a background counter last wrote.
func counterValue(t *testing.T, m *Machine) int {
	t.Helper()
	res := mustRun(t, m, Command{Shell: "cat counter"})
	n, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
	if err != nil {
		t.Fatalf("counter %q: %v", res.Stdout, err)
	}
	return n
}

// startCounter starts a background Python process that counts in memory
// and writes each number to counter, and waits for its first number.
func startCounter(t *testing.T, m *Machine) {
	t.Helper()
	mustRun(t, m, Command{Shell: `nohup python3 -c '
import time
n = 0
while True:
    n += 1
    open("counter.new", "w").write(str(n))
    __import__("os").replace("counter.new", "counter")
    time.sleep(0.02)
' >/dev/null 2>&1 &
while [ ! -s counter ]; do sleep 0.01; done`, Timeout: 30 * time.Second})
}

// readCounterFile reads the counter through the engine's file access,
// which works on a frozen machine (no command may run on it).
func readCounterFile(t *testing.T, m *Machine) int {
	t.Helper()
	var b strings.Builder
	if _, err := m.ReadFile(context.Background(), "counter", &b); err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(b.String()))
	if err != nil {
		t.Fatalf("counter %q: %v", b.String(), err)
	}
	return n
}

func TestFreezeKeepsProcessesAndMemory(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	if r := mustExec(t, m, "x = 41", PythonOptions{}); r.Error != "" {
		t.Fatalf("python: %+v", r)
	}
	startCounter(t, m)

	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if !m.Frozen() {
		t.Fatal("Frozen() is false after Freeze")
	}
	// Every process of the machine (the REPL and the counter among them)
	// is stopped; the agent is not.
	states := userStates(m)
	if len(states) < 2 {
		t.Fatalf("user processes %v, want the interpreter and the counter at least", states)
	}
	for pid, st := range states {
		if st != 'T' {
			t.Errorf("process %d is in state %c while frozen, want T", pid, st)
		}
	}
	before := readCounterFile(t, m)
	time.Sleep(300 * time.Millisecond)
	if after := readCounterFile(t, m); after != before {
		t.Fatalf("the counter went on while frozen: %d, then %d", before, after)
	}
	// Freezing again is a no-op.
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}

	if err := m.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	if m.Frozen() {
		t.Fatal("Frozen() is true after Thaw")
	}
	// The counter goes on from where it was: the same process, its memory.
	deadline := time.Now().Add(10 * time.Second)
	for readCounterFile(t, m) <= before {
		if time.Now().After(deadline) {
			t.Fatal("the counter did not go on after Thaw")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := counterValue(t, m); n < before || n > before+200 {
		t.Fatalf("counter %d after thaw, was %d when frozen: it restarted", n, before)
	}
	r := mustExec(t, m, "x + 1", PythonOptions{})
	if value(r) != "42" || r.StateReset != "" {
		t.Fatalf("the interpreter lost its state: %+v", r)
	}
	for pid, st := range userStates(m) {
		if st == 'T' {
			t.Errorf("process %d still stopped after Thaw", pid)
		}
	}
}

// A process that the machine's own code stopped before the freeze stays
// stopped after the thaw.
func TestThawLeavesTheMachinesOwnStopsAlone(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	res := mustRun(t, m, Command{Shell: `nohup sleep 600 >/dev/null 2>&1 & echo $! > /tmp/pid; kill -STOP $!; nohup sleep 601 >/dev/null 2>&1 &`})
	if res.ExitCode != 0 {
		t.Fatalf("%+v", res)
	}
	var stoppedByUser, running int
	deadline := time.Now().Add(5 * time.Second)
	for stoppedByUser == 0 || running == 0 {
		for pid, st := range userStates(m) {
			cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			switch {
			case strings.Contains(string(cmd), "600") && st == 'T':
				stoppedByUser = pid
			case strings.Contains(string(cmd), "601"):
				running = pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleeps not found: %v", userStates(m))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := procState(running); st != 'T' {
		t.Fatalf("running sleep in state %c while frozen", st)
	}
	if err := m.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if st, _ := procState(stoppedByUser); st != 'T' {
		t.Errorf("the sleep the machine stopped itself is in state %c after Thaw, want T", st)
	}
	if st, _ := procState(running); st == 'T' {
		t.Error("the sleep Freeze stopped is still stopped after Thaw")
	}
}

// Processes forking as fast as they can are all stopped, and nothing runs
// while frozen.
func TestFreezeCatchesForks(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	mustRun(t, m, Command{Shell: `for i in 1 2 3; do nohup sh -c 'while :; do (sleep 0.05 &) ; done' >/dev/null 2>&1 & done; sleep 0.2`})
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Thaw(ctx)
	for range 3 {
		for pid, st := range userStates(m) {
			if st != 'T' && st != 'Z' && st != 'X' {
				t.Fatalf("process %d is in state %c while frozen", pid, st)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The monitor's brake stops and continues every running machine's
// processes: a frozen machine's must stay stopped.
func TestBrakeLeavesFrozenMachinesFrozen(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	startCounter(t, m)
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	u, err := m.measure()
	if err != nil {
		t.Fatal(err)
	}
	// Plenty of room left, and nothing grew: the brake only stops and
	// continues.
	space := spaceInfo{freeBytes: 1 << 40, freeInodes: 1 << 30, reserveBytes: 1 << 20, reserveInodes: 10}
	e.monitor.brake([]*Machine{m}, []*watch{{last: u}}, space)
	for pid, st := range userStates(m) {
		if st != 'T' {
			t.Fatalf("process %d is in state %c after a brake, want T (frozen)", pid, st)
		}
	}
	if !m.Frozen() {
		t.Fatal("no longer frozen after a brake")
	}
	before := readCounterFile(t, m)
	time.Sleep(100 * time.Millisecond)
	if readCounterFile(t, m) != before {
		t.Fatal("the counter went on after a brake")
	}
	if err := m.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
}

// Stop and Delete end a frozen machine at once; the next start is not
// frozen, and a machine that is not running has nothing to freeze.
func TestFrozenMachineStopsAndRestarts(t *testing.T) {
	e := newTestEngine(t, Options{})
	m := newTestMachine(t, e, MachineSpec{})
	ctx := context.Background()
	if err := m.Freeze(ctx); err != nil || m.Frozen() {
		t.Fatalf("freeze of a machine not started: %v, frozen %v", err, m.Frozen())
	}
	startCounter(t, m)
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop of a frozen machine hangs")
	}
	if m.Frozen() {
		t.Fatal("still frozen after Stop")
	}
	if res := mustRun(t, m, Command{Shell: "echo back"}); res.Stdout != "back\n" {
		t.Fatalf("after Stop: %+v", res)
	}
	if err := m.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	startCounter(t, m)
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	pids := m.HostPIDs()
	done = make(chan struct{})
	go func() { e.Delete(ctx, m.ID()); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Delete of a frozen machine hangs")
	}
	for _, pid := range pids {
		if unix.Kill(pid, 0) == nil {
			if st, _ := procState(pid); st != 'Z' && st != 0 {
				t.Errorf("process %d of the deleted machine is still there (state %c)", pid, st)
			}
		}
	}
}

// freezeCgroup, the cgroup v2 path, on a cgroup of the unified hierarchy
// where the host has one (this engine uses it when its machines have v2
// cgroups of their own).
func TestFreezeCgroupV2(t *testing.T) {
	var unified string
	for _, d := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			unified = d
			break
		}
	}
	if unified == "" || os.Geteuid() != 0 {
		t.Skip("needs root and a cgroup v2 hierarchy")
	}
	dir := filepath.Join(unified, "vmcp-freeze-test-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup v2: %v", err)
	}
	defer removeCgroup(dir)
	// A child process in it that spins.
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "while :; do :; done"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p.Pid)), 0); err != nil {
		t.Skipf("cannot move a process into a cgroup v2: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), freezeTimeout)
	defer cancel()
	if err := freezeCgroup(ctx, dir); err != nil {
		t.Fatal(err)
	}
	cpu := func() string {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(p.Pid) + "/stat")
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
		return f[11] // utime
	}
	before := cpu()
	time.Sleep(200 * time.Millisecond)
	if after := cpu(); after != before {
		t.Fatalf("a frozen process ran: utime %s, then %s", before, after)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if cpu() == before {
		t.Fatal("the process did not run again after the thaw")
	}
}
