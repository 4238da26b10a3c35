//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/local/guest"
)

// waitWarm waits until the pool has ready machines and returns how long
// that took.
func waitWarm(t *testing.T, e *Engine, ready int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		s := e.WarmStats()
		if s.Ready >= ready {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("the pool has %d ready machines after %v, want %d (%+v)", s.Ready, within, ready, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWarmMachineIsFresh: a machine from the pool comes running, with the
// imports in sys.modules but nothing in its globals, no files and no
// process but its interpreter; what one creator did in its machine is not
// in the next one's; and its first call says nothing of a reset.
func TestWarmMachineIsFresh(t *testing.T) {
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 1, Imports: []string{"json", "matplotlib.pyplot", "no_such_module_vmcp"}, HotFor: time.Minute}})
	waitWarm(t, e, 1, time.Minute)
	time.Sleep(3 * warmHotEvery) // woken while it waits (keepHot): that leaves nothing either

	first := newTestMachine(t, e, MachineSpec{Name: "first", Tags: map[string]string{"conversation": "a"}})
	if info := first.Info(); info.Status != StatusRunning || info.Name != "first" || info.Tags["conversation"] != "a" || info.Warm {
		t.Fatalf("a machine from the pool: %+v", info)
	}
	if s := e.WarmStats(); s.Hits != 1 || !strings.Contains(s.ImportErrors, "no_such_module_vmcp") || s.FilledIn == 0 || s.FilledPSSBytes == 0 {
		t.Errorf("stats after one creation: %+v", s)
	}
	r := mustExec(t, first, "import sys; sorted(k for k in globals() if not k.startswith('__')), 'json' in sys.modules", PythonOptions{})
	if value(r) != "(['sys'], True)" || r.StateReset != "" {
		t.Errorf("the first call in a warm machine: value %s, reset %q", value(r), r.StateReset)
	}
	// What the imports built (matplotlib's font caches) is not in the
	// workspace: it holds what every interpreter makes (.local), no more.
	if res := mustRun(t, first, Command{Shell: "ls -A /workspace"}); res.Stdout != ".local\n" {
		t.Errorf("a warm machine's workspace holds %q", res.Stdout)
	}
	mustExec(t, first, "secret = 'of a'", PythonOptions{})
	mustRun(t, first, Command{Shell: "echo a > mine.txt; (sleep 1000 &)"})

	waitWarm(t, e, 1, time.Minute)
	second := newTestMachine(t, e, MachineSpec{Name: "second"})
	if second.ID() == first.ID() {
		t.Fatal("the pool handed out one machine twice")
	}
	if r := mustExec(t, second, "'secret' in globals(), sorted(k for k in globals() if not k.startswith('__'))", PythonOptions{}); value(r) != "(False, [])" {
		t.Errorf("the second machine's globals: %s", value(r))
	}
	if res := mustRun(t, second, Command{Shell: "ls -A /workspace; ps -eo comm= | grep -v -e '^ps$' -e '^bash$' -e '^grep$' | sort"}); strings.Contains(res.Stdout, "mine.txt") || strings.Contains(res.Stdout, "sleep") {
		t.Errorf("the second machine sees the first's files or processes:\n%s", res.Stdout)
	}
	if _, err := e.Machine(first.ID()); err != nil {
		t.Errorf("the first machine: %v", err)
	}
}

// TestWarmInterpretersAreWokenAfterUse: for HotFor after a call, the
// pool's interpreters are woken every warmHotEvery (once the engine is
// quiet); after that, left alone.
func TestWarmInterpretersAreWokenAfterUse(t *testing.T) {
	const hotFor = 2 * time.Second
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 1, HotFor: hotFor}})
	waitWarm(t, e, 1, time.Minute)
	w := e.warm.machines()[0]
	switches := interpreterSwitches(t, w)
	// A call in a machine of its own kind (not from the pool).
	other := newTestMachine(t, e, MachineSpec{Limits: Limits{MemoryBytes: 300 << 20}})
	mustExec(t, other, "1 + 1", PythonOptions{})
	called := time.Now()
	before := switches()
	time.Sleep(7 * warmHotEvery / 2) // the first wake waits for warmHotEvery of quiet
	if woken := switches() - before; woken < 2 {
		t.Errorf("the warm interpreter woke %d times in %v after a call; want one per %v", woken, 7*warmHotEvery/2, warmHotEvery)
	}
	time.Sleep(time.Until(called.Add(hotFor + warmHotEvery)))
	before = switches()
	looks := e.warm.hotLooks.Load()
	time.Sleep(3 * warmHotEvery)
	if woken := switches() - before; woken != 0 {
		t.Errorf("the warm interpreter woke %d times %v after the last call; want none past HotFor (%v)", woken, time.Since(called).Round(time.Millisecond), hotFor)
	}
	// Nor does the pool look every warmHotEvery: it sleeps until a call.
	if n := e.warm.hotLooks.Load() - looks; n > 1 {
		t.Errorf("the pool looked %d times in %v past HotFor; want it asleep until the next call", n, 3*warmHotEvery)
	}

	// The next call wakes it: the interpreters are kept awake again.
	mustExec(t, other, "2 + 2", PythonOptions{})
	before = switches()
	time.Sleep(7 * warmHotEvery / 2)
	if woken := switches() - before; woken < 2 {
		t.Errorf("the warm interpreter woke %d times in %v after a call past HotFor; want one per %v again", woken, 7*warmHotEvery/2, warmHotEvery)
	}
}

// interpreterSwitches returns a function that reads how many times the
// machine's interpreter has slept (its voluntary context switches: one
// per instruction at least).
func interpreterSwitches(t *testing.T, m *Machine) func() int {
	t.Helper()
	m.mu.Lock()
	interp := m.interpPID
	m.mu.Unlock()
	_, pids := m.userProcesses(readProcesses())
	host := 0
	for _, pid := range pids {
		if innerPID(pid) == interp {
			host = pid
		}
	}
	if host == 0 {
		t.Fatalf("the interpreter (pid %d in the machine) was not found among %v", interp, pids)
	}
	return func() int { return procStatus(t, strconv.Itoa(host), "voluntary_ctxt_switches") }
}

// TestWarmMachineWhoseInterpreterDiedSaysNothingOfIt: a warm machine
// whose interpreter ended while it waited (killed from outside, as the
// host's OOM killer would) is handed out without a word of lost state: its
// new owner had none. The first call runs in a new interpreter.
func TestWarmMachineWhoseInterpreterDiedSaysNothingOfIt(t *testing.T) {
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 1}})
	waitWarm(t, e, 1, time.Minute)
	pool := e.warm.machines()
	if len(pool) != 1 {
		t.Fatalf("%d machines in the pool; want 1", len(pool))
	}
	w := pool[0]
	killInterpreter(t, w)
	m := newTestMachine(t, e, MachineSpec{})
	if m.ID() != w.ID() {
		t.Fatal("the machine did not come from the pool")
	}
	r := mustExec(t, m, "x = 41; x + 1", PythonOptions{})
	if value(r) != "42" || r.StateReset != "" {
		t.Errorf("the first call: value %s, reset %q; want 42 and no reset", value(r), r.StateReset)
	}
	if r := mustExec(t, m, "x", PythonOptions{}); value(r) != "41" || r.StateReset != "" {
		t.Errorf("the second call: value %s, reset %q", value(r), r.StateReset)
	}
}

// killInterpreter kills a machine's interpreter from outside, as the
// host's OOM killer would, and waits until it has ended.
func killInterpreter(t *testing.T, m *Machine) {
	t.Helper()
	m.mu.Lock()
	interp := m.interpPID
	m.mu.Unlock()
	root, pids := m.userProcesses(readProcesses())
	killed := false
	for _, pid := range pids {
		if innerPID(pid) == interp {
			killed = killIn(root, pid)
		}
	}
	if !killed {
		t.Fatalf("the machine's interpreter (pid %d in it) was not found among %v", interp, pids)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, pids := m.userProcesses(readProcesses())
		alive := false
		for _, pid := range pids {
			alive = alive || innerPID(pid) == interp && !guest.Zombie(pid)
		}
		if !alive {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed interpreter still runs")
		}
	}
}

// TestWarmMachineWhoseInterpreterDiedIsReplaced: a wake that finds a new
// interpreter in a warm machine (the one that imported the modules ended
// while it waited) deletes the machine and the pool makes another, so a
// new conversation still finds the modules imported.
func TestWarmMachineWhoseInterpreterDiedIsReplaced(t *testing.T) {
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 1, HotFor: time.Minute, Imports: []string{"fractions"}}})
	waitWarm(t, e, 1, time.Minute)
	w := e.warm.machines()[0]
	killInterpreter(t, w)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		s := e.WarmStats()
		if pool := e.warm.machines(); s.Evicted == 1 && len(pool) == 1 && pool[0] != w {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after its interpreter was killed: %+v, the pool still holds the machine: %v", s, slices.Contains(e.warm.machines(), w))
		}
	}
	if _, err := os.Stat(w.dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the evicted machine's directory: %v; want it deleted", err)
	}
	m := newTestMachine(t, e, MachineSpec{})
	if m.ID() == w.ID() {
		t.Fatal("the evicted machine was handed out")
	}
	if r := mustExec(t, m, "import sys; 'fractions' in sys.modules", PythonOptions{}); value(r) != "True" || r.StateReset != "" {
		t.Errorf("the replacement's first call: value %s, reset %q; want the module imported already", value(r), r.StateReset)
	}
}

// TestWarmPoolRefillsWithinASecond: a machine leaving the pool is replaced
// within a second (a pool without imports: they add their own import
// time).
func TestWarmPoolRefillsWithinASecond(t *testing.T) {
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 2}})
	// The best of three: the other packages' tests share the processors.
	best := time.Hour
	for range 3 {
		waitWarm(t, e, 2, time.Minute)
		time.Sleep(200 * time.Millisecond) // let the filler settle
		newTestMachine(t, e, MachineSpec{})
		if s := e.WarmStats(); s.Ready != 1 {
			t.Fatalf("after one creation: %+v", s)
		}
		took := waitWarm(t, e, 2, 10*time.Second)
		t.Logf("refilled in %v", took)
		best = min(best, took)
	}
	if best > time.Second {
		t.Errorf("the pool took %v at best to refill, want at most 1 s", best)
	}
}

// TestWarmPoolOnlyServesItsKind: machines with other limits, network or
// files start on their own; so do all without a pool.
func TestWarmPoolOnlyServesItsKind(t *testing.T) {
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 1}})
	waitWarm(t, e, 1, time.Minute)
	for _, spec := range []MachineSpec{{Limits: Limits{MemoryBytes: 512 << 20}}, {AllowNetwork: true}, {NetworkAllow: []string{"example.com"}}} {
		if info, err := e.Create(context.Background(), spec); err != nil || info.Status != StatusStopped {
			t.Errorf("create %+v: %+v %v; want a stopped machine of its own", spec, info, err)
		}
	}
	if s := e.WarmStats(); s.Hits != 0 || s.Ready != 1 {
		t.Errorf("stats: %+v", s)
	}

	none := newTestEngine(t, Options{})
	if info, err := none.Create(context.Background(), MachineSpec{}); err != nil || info.Status != StatusStopped {
		t.Errorf("without a pool: %+v %v", info, err)
	}
	if s := none.WarmStats(); s != (WarmStats{}) {
		t.Errorf("stats without a pool: %+v", s)
	}
}

// TestWarmMachinesLeaveNoTrace: closing the engine deletes the pool's
// machines; a pool machine's record found at start is deleted, not
// served.
func TestWarmMachinesLeaveNoTrace(t *testing.T) {
	dir := t.TempDir()
	e, err := New(Options{StateDir: dir, Warm: WarmOptions{Machines: 2}})
	if err != nil {
		t.Fatal(err)
	}
	waitWarm(t, e, 2, time.Minute)
	kept, _ := e.Create(context.Background(), MachineSpec{Name: "kept"})
	e.Close()
	entries, _ := os.ReadDir(filepath.Join(dir, "machines"))
	if len(entries) != 1 || entries[0].Name() != kept.ID {
		t.Errorf("after close, machines on disk: %v; want only %s", entries, kept.ID)
	}

	stale := filepath.Join(dir, "machines", "m-stale")
	os.MkdirAll(filepath.Join(stale, "workspace"), 0o700)
	if err := writeJSON(filepath.Join(stale, "machine.json"), MachineInfo{ID: "m-stale", Flavour: Workspace, Warm: true}); err != nil {
		t.Fatal(err)
	}
	e2 := newTestEngine(t, Options{StateDir: dir})
	if ms := e2.Machines(); len(ms) != 1 || ms[0].ID != kept.ID {
		t.Errorf("machines after a restart: %+v", ms)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("a stale pool machine is still on disk: %v", err)
	}
}

// TestWarmMachinesWaitAtLowPriority: a warm machine's processes run at the
// lowest CPU priority while it waits in the pool (its start and imports
// take only the CPU that calls leave), and at the ordinary one once it is
// handed out, what they start after too; a process that chooses its own
// niceness keeps it.
func TestWarmMachinesWaitAtLowPriority(t *testing.T) {
	e := newTestEngine(t, Options{Warm: WarmOptions{Machines: 1}})
	if !e.cgroups.enabled() {
		t.Skip("warm machines are niced only where the engine has cgroups (root)")
	}
	waitWarm(t, e, 1, time.Minute)
	pool := e.warm.machines()
	if len(pool) != 1 {
		t.Fatalf("%d machines in the pool; want 1", len(pool))
	}
	waiting := threadNiceness(t, e, pool[0].ID())
	if len(waiting) < 3 {
		t.Fatalf("the warm machine has %d threads: %v", len(waiting), waiting)
	}
	for tid, n := range waiting {
		if n != warmNice {
			t.Errorf("thread %d of a waiting warm machine has niceness %d; want %d", tid, n, warmNice)
		}
	}
	m := newTestMachine(t, e, MachineSpec{})
	if m.ID() != pool[0].ID() {
		t.Fatal("the machine did not come from the pool")
	}
	mustRun(t, m, Command{Shell: "sleep 1000 > /dev/null 2>&1 & nice -n 3 sleep 1001 > /dev/null 2>&1 &"})
	mustExec(t, m, "1 + 1", PythonOptions{})
	// The background processes may still be starting.
	var handed map[int]int
	self := 0
	for deadline := time.Now().Add(2 * time.Second); self == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		handed = threadNiceness(t, e, m.ID())
		for tid, n := range handed {
			if n == 3 {
				self = tid
			}
		}
	}
	if self == 0 {
		t.Fatalf("no thread of `nice -n 3 sleep` at 3: %v", handed)
	}
	if len(handed) <= len(waiting) {
		t.Errorf("no new thread after the calls: %v", handed)
	}
	for tid, n := range handed {
		if tid != self && n != 0 {
			t.Errorf("thread %d of a handed-out machine has niceness %d; want 0", tid, n)
		}
	}
}

// threadNiceness maps each thread of the machine to its niceness.
func threadNiceness(t *testing.T, e *Engine, id string) map[int]int {
	t.Helper()
	tasks, err := os.ReadFile(filepath.Join(e.cgroups.dirs(id)[len(e.cgroups.dirs(id))-1], map[string]string{"v1": "tasks", "v2": "cgroup.threads"}[e.cgroups.mode]))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, f := range strings.Fields(string(tasks)) {
		stat, err := os.ReadFile("/proc/" + f + "/stat")
		if err != nil {
			continue
		}
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		n, _ := strconv.Atoi(fields[16]) // nice, the stat file's 19th field
		tid, _ := strconv.Atoi(f)
		out[tid] = n
	}
	return out
}

// machines lists the pool's ready machines.
func (p *warmPool) machines() []*Machine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ready)
}
