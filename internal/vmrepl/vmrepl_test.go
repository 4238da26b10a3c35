//go:build linux

package vmrepl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

// machineExecer runs commands in a local engine machine: what the FastVM
// emulator does with an exec, without HTTP.
type machineExecer struct{ m *local.Machine }

func (e machineExecer) Exec(ctx context.Context, argv []string, stdin io.Reader, onLine func(string, []byte)) (int, error) {
	cmd := local.Command{Argv: argv, Stdout: io.Discard, Stderr: io.Discard,
		OnOutput: func(stream, line string) { onLine(stream, []byte(line)) }}
	if stdin != nil {
		cmd.Stdin = stdin
	}
	res, err := e.m.Run(ctx, cmd)
	if err != nil {
		return 0, err
	}
	return res.ExitCode, nil
}

// newMachine creates a VM-flavoured machine (root, writable root
// filesystem: what the FastVM emulator runs) on a fresh engine.
func newMachine(t testing.TB) (*local.Engine, *local.Machine) {
	t.Helper()
	e, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, newMachineOn(t, e, "")
}

func newMachineOn(t testing.TB, e *local.Engine, snapshot string) *local.Machine {
	t.Helper()
	info, err := e.Create(context.Background(), local.MachineSpec{Flavour: local.VM, FromSnapshot: snapshot})
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Machine(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newREPL(t testing.TB, opts Options) (*REPL, *local.Machine) {
	t.Helper()
	_, m := newMachine(t)
	return New(machineExecer{m}, opts), m
}

func run(t testing.TB, r *REPL, code string, opts backend.PythonOptions) *backend.PythonResult {
	t.Helper()
	res, err := r.RunPython(context.Background(), code, opts)
	if err != nil {
		t.Fatalf("run %.60q: %v", code, err)
	}
	return res
}

func value(res *backend.PythonResult) string {
	if res.Value == nil {
		return "<nil>"
	}
	return *res.Value
}

func sh(t testing.TB, m *local.Machine, script string) string {
	t.Helper()
	res, err := m.Run(context.Background(), local.Command{Shell: script})
	if err != nil {
		t.Fatal(err)
	}
	return res.Stdout + res.Stderr
}

func TestStateValuesAndErrors(t *testing.T) {
	r, _ := newREPL(t, Options{})
	res := run(t, r, "x = 41", backend.PythonOptions{})
	if res.Value != nil || res.Error != "" || res.StateReset != "" {
		t.Fatalf("x = 41 on a new machine: %+v (a brand-new machine has no state to lose)", res)
	}
	if res := run(t, r, "x + 1", backend.PythonOptions{}); value(res) != "42" || res.Error != "" {
		t.Fatalf("x + 1: %+v", res)
	}
	if res := run(t, r, "print('hi'); None", backend.PythonOptions{}); res.Value != nil || res.Stdout != "hi" {
		t.Fatalf("print and None: %+v", res)
	}
	res = run(t, r, "def f():\n    return 1/0\nf()", backend.PythonOptions{})
	if res.Value != nil || !strings.Contains(res.Error, "Traceback") || !strings.Contains(res.Error, "ZeroDivisionError") ||
		!strings.Contains(res.Error, "return 1/0") || strings.Contains(res.Error, "vmcp") {
		t.Fatalf("exception: %+v", res)
	}
	if res := run(t, r, "1 +", backend.PythonOptions{}); !strings.Contains(res.Error, "SyntaxError") {
		t.Fatalf("syntax error: %+v", res)
	}
	if res := run(t, r, "import sys; print('to err', file=sys.stderr); 'é\\u2603' * 2", backend.PythonOptions{}); res.Stderr != "to err" || value(res) != "'é☃é☃'" {
		t.Fatalf("stderr and unicode: %+v", res)
	}
	// Another vmcp process (a new REPL on the same machine) finds the state.
	_, m := r, r.x.(machineExecer).m
	if res := run(t, New(machineExecer{m}, Options{}), "x", backend.PythonOptions{}); value(res) != "41" || res.StateReset != "" {
		t.Fatalf("x from a second REPL: %+v", res)
	}
}

func TestOutputIsStreamedLive(t *testing.T) {
	r, _ := newREPL(t, Options{})
	start := time.Now()
	var mu sync.Mutex
	var got []string
	var firstAt time.Duration
	res := run(t, r, "import time\nprint('first')\ntime.sleep(1)\nprint('second')\nimport sys; print('err', file=sys.stderr)", backend.PythonOptions{
		OnOutput: func(stream, line string) {
			mu.Lock()
			defer mu.Unlock()
			if len(got) == 0 {
				firstAt = time.Since(start)
			}
			got = append(got, stream+":"+line)
		},
	})
	total := time.Since(start)
	if strings.Join(got, ",") != "stdout:first,stdout:second,stderr:err" || res.Stdout != "first\nsecond" || res.Stderr != "err" {
		t.Fatalf("output %q, result %+v", got, res)
	}
	if total-firstAt < 800*time.Millisecond {
		t.Fatalf("the first line came %v after the start, the call ended at %v: it was not streamed", firstAt, total)
	}
}

// stubPyplot is a matplotlib.pyplot stand-in: the driver asks it for open
// figures and has each saved as a PNG.
const stubPyplot = `import sys, types
class _Fig:
    def __init__(self, data): self.data = data
    def savefig(self, buf, format=None, bbox_inches=None): buf.write(self.data)
_figs = {1: _Fig(b"\x89PNG\r\n\x1a\n" + b"a" * 100), 2: _Fig(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400)}
pyplot = types.ModuleType("matplotlib.pyplot")
pyplot.get_fignums = lambda: sorted(_figs)
pyplot.figure = lambda n: _figs[n]
pyplot.close = lambda which: _figs.clear()
sys.modules["matplotlib.pyplot"] = pyplot
`

func TestFigures(t *testing.T) {
	r, _ := newREPL(t, Options{})
	t.Run("stub", func(t *testing.T) {
		res := run(t, r, stubPyplot, backend.PythonOptions{})
		if len(res.Images) != 2 || len(res.Images[0]) != 108 || len(res.Images[1]) != 8+256*400 || res.Images[1][8+255] != 255 || res.Error != "" {
			t.Fatalf("figures: %d images, error %q", len(res.Images), res.Error)
		}
		if res := run(t, r, "1", backend.PythonOptions{}); len(res.Images) != 0 {
			t.Fatal("closed figures came again")
		}
	})
	t.Run("matplotlib", func(t *testing.T) {
		if err := exec.Command("python3", "-c", "import matplotlib").Run(); err != nil {
			t.Skip("matplotlib is not installed in this host's python3 (which the machines use): pip install matplotlib to run this test")
		}
		res := run(t, r, "del sys.modules['matplotlib.pyplot']\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])", backend.PythonOptions{})
		if len(res.Images) != 1 || !strings.HasPrefix(string(res.Images[0]), "\x89PNG") || res.Error != "" {
			t.Fatalf("matplotlib: %d images, %+v", len(res.Images), res.Error)
		}
	})
}

func TestTimeoutInterruptsAndKeepsState(t *testing.T) {
	r, _ := newREPL(t, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	start := time.Now()
	res := run(t, r, "while True: pass", backend.PythonOptions{Timeout: time.Second})
	if !res.TimedOut || res.Error != "Timed out" || time.Since(start) > 2500*time.Millisecond {
		t.Fatalf("timeout: %+v after %v", res, time.Since(start))
	}
	if res := run(t, r, "x", backend.PythonOptions{}); value(res) != "41" || res.StateReset != "" {
		t.Fatalf("x after the timeout: %+v", res)
	}
}

func TestIgnoredInterruptKillsTheInterpreter(t *testing.T) {
	r, _ := newREPL(t, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	start := time.Now()
	res := run(t, r, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('stubborn')\nwhile True: pass", backend.PythonOptions{Timeout: time.Second})
	if !res.TimedOut || !strings.Contains(res.Error, "killed") || !strings.Contains(res.Error, "state was lost") || res.Stdout != "stubborn" {
		t.Fatalf("stubborn code: %+v", res)
	}
	if d := time.Since(start); d < 3*time.Second || d > 6*time.Second {
		t.Fatalf("killed after %v: the grace is 3 s after the 1 s timeout", d)
	}
	res = run(t, r, "x", backend.PythonOptions{})
	if !strings.Contains(res.Error, "NameError") || res.StateReset == "" {
		t.Fatalf("the next call must say that the state was reset: %+v", res)
	}
	if res := run(t, r, "x = 1; x", backend.PythonOptions{}); value(res) != "1" || res.StateReset != "" {
		t.Fatalf("the reset is reported once: %+v", res)
	}
}

func TestInterpreterExit(t *testing.T) {
	r, _ := newREPL(t, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	res := run(t, r, "import os; os._exit(3)", backend.PythonOptions{})
	if !strings.Contains(res.Error, "exited with status 3") {
		t.Fatalf("os._exit: %+v", res)
	}
	if res := run(t, r, "x", backend.PythonOptions{}); res.StateReset == "" || !strings.Contains(res.Error, "NameError") {
		t.Fatalf("after os._exit: %+v", res)
	}
	if res := run(t, r, "raise SystemExit(2)", backend.PythonOptions{}); !strings.Contains(res.Error, "SystemExit: 2") {
		t.Fatalf("SystemExit: %+v", res)
	}
}

func TestHostKilled(t *testing.T) {
	r, m := newREPL(t, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	// Between calls: the next call finds it gone, starts a new one and says so.
	sh(t, m, "pkill -KILL -f 'host.py serve'; true")
	res := run(t, r, "x", backend.PythonOptions{})
	if res.StateReset == "" || !strings.Contains(res.Error, "NameError") {
		t.Fatalf("after the host was killed: %+v", res)
	}
	// During a call.
	run(t, r, "x = 41", backend.PythonOptions{})
	go func() {
		time.Sleep(700 * time.Millisecond)
		sh(t, m, "pkill -KILL -f 'host.py serve'; true")
	}()
	start := time.Now()
	res = run(t, r, "import time; print('before'); time.sleep(10)", backend.PythonOptions{})
	if !strings.Contains(res.Error, "ended while running this code") || res.Stdout != "before" || time.Since(start) > 5*time.Second {
		t.Fatalf("host killed during a call: %+v after %v", res, time.Since(start))
	}
	res = run(t, r, "x", backend.PythonOptions{})
	if res.StateReset == "" || !strings.Contains(res.Error, "NameError") {
		t.Fatalf("after the host was killed during a call: %+v", res)
	}
	// The interpreter of the killed host did not outlive it.
	if out := sh(t, m, "ps -eo pid,args | grep -c '[p]ython3 -I -c'"); strings.TrimSpace(out) != "1" {
		t.Fatalf("interpreters running: %s", out)
	}
}

func TestMachineStopAndSnapshotReportReset(t *testing.T) {
	e, m := newMachine(t)
	r := New(machineExecer{m}, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	m.Stop() // every process of the machine ends; its files stay
	res := run(t, r, "x", backend.PythonOptions{})
	if res.StateReset == "" || !strings.Contains(res.Error, "NameError") {
		t.Fatalf("after the machine stopped: %+v", res)
	}
	run(t, r, "x = 41", backend.PythonOptions{})
	snap, err := m.Snapshot(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	m2 := newMachineOn(t, e, snap.ID)
	res = run(t, New(machineExecer{m2}, Options{}), "x", backend.PythonOptions{})
	if res.StateReset == "" || !strings.Contains(res.Error, "NameError") {
		t.Fatalf("in a machine made from a snapshot: %+v", res)
	}
}

// impostor, run by python3 in a machine, becomes the process with pid
// argv[1] and pipes at fds argv[2] (a write end, as the host's life pipe)
// and argv[3] (a read end, as its request pipe), and stays: pids are given
// in order, so it forks until a child gets that pid.
const impostor = `import os, sys, time
want, life, req = map(int, sys.argv[1:4])
while True:
    pid = os.fork()
    if pid == 0:
        if os.getpid() != want:
            os._exit(0)
        os.setsid()
        r, w = os.pipe()
        os.dup2(w, life)
        r2, w2 = os.pipe()
        os.dup2(r2, req)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(3600)
        os._exit(0)
    if pid == want:
        break
    os.waitpid(pid, 0)
    if pid > want:
        sys.exit("pid %d is taken" % want)
`

// TestCallAfterRestartNeverReachesAProcessThatTookTheHostsPid: a machine
// started again numbers its processes from 1 again. A process of the new
// start that got the old host's pid, with pipes at the same fds, must not
// be taken for the host: the call starts a new host and runs.
func TestCallAfterRestartNeverReachesAProcessThatTookTheHostsPid(t *testing.T) {
	_, m := newMachine(t)
	r := New(machineExecer{m}, Options{})
	// Pids used first, so that the host's is one the next start reaches only
	// when the impostor takes it.
	sh(t, m, "i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done")
	run(t, r, "x = 41", backend.PythonOptions{})
	var pid, life, req int
	if _, err := fmt.Sscanf(r.host.life+" "+r.host.req, "/proc/%d/fd/%d /proc/%d/fd/%d", &pid, &life, &pid, &req); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	if out := sh(t, m, fmt.Sprintf("python3 -c '%s' %d %d %d & wait; [ -p /proc/%d/fd/%d ] && [ -p /proc/%d/fd/%d ] && echo ready",
		impostor, pid, life, req, pid, life, pid, req)); !strings.Contains(out, "ready") {
		t.Fatalf("the impostor did not get pid %d: %s", pid, out)
	}
	start := time.Now()
	res, err := r.RunPython(context.Background(), "x", backend.PythonOptions{Timeout: 10 * time.Second})
	if err != nil || res.StateReset == "" || !strings.Contains(res.Error, "NameError") || time.Since(start) > 8*time.Second {
		t.Fatalf("after the restart: %+v, %v, in %v", res, err, time.Since(start))
	}
	if res := run(t, r, "x = 1; x", backend.PythonOptions{}); value(res) != "1" {
		t.Fatalf("the next call: %+v", res)
	}
}

func TestLargeCodeAndOutput(t *testing.T) {
	r, _ := newREPL(t, Options{})
	code := "s = '" + strings.Repeat("a", 1<<20) + "'\nlen(s)"
	if res := run(t, r, code, backend.PythonOptions{}); value(res) != "1048576" {
		t.Fatalf("1 MiB of code: %+v", res.Error)
	}
	// 1 MiB of output (1024 lines of 1 KiB, under the cap).
	var lines int
	start := time.Now()
	res := run(t, r, "for i in range(1023): print('%1023d' % i)", backend.PythonOptions{OnOutput: func(string, string) { lines++ }})
	d := time.Since(start)
	if lines != 1023 || len(res.Stdout) != 1023*1024-1 {
		t.Fatalf("1 MiB of output: %d lines streamed, %d bytes kept", lines, len(res.Stdout))
	}
	t.Logf("1 MiB of output in %v (%.1f MiB/s)", d, 1/d.Seconds())
	// 900 KiB in one line: passed on in 32 KiB pieces.
	res = run(t, r, "print('b' * (900 << 10))", backend.PythonOptions{})
	if strings.Count(res.Stdout, "b") != 900<<10 {
		t.Fatalf("a 900 KiB line: %d bytes kept", strings.Count(res.Stdout, "b"))
	}
	// Past the cap: the head, a marker, and the tail.
	res = run(t, r, "for i in range(30000): print('%99d' % i)", backend.PythonOptions{})
	if !strings.HasPrefix(res.Stdout, fmt.Sprintf("%99d", 0)) || !strings.HasSuffix(res.Stdout, fmt.Sprintf("%99d", 29999)) ||
		!strings.Contains(res.Stdout, "bytes of stdout left out here") || len(res.Stdout) > 1<<20+70<<10 {
		t.Fatalf("3 MiB of output: %d bytes kept, head %.100q", len(res.Stdout), res.Stdout)
	}
	// A large value: whole up to 16 Mi characters, past them the head and
	// the tail.
	res = run(t, r, "'x' * (3 << 20)", backend.PythonOptions{})
	if v := value(res); len(v) != 3<<20+2 {
		t.Fatalf("a 3 MiB value: %d bytes", len(v))
	}
	res = run(t, r, "'x' * (20 << 20)", backend.PythonOptions{Timeout: time.Minute})
	if v := value(res); len(v) > 16<<20+100 || !strings.Contains(v, "characters omitted") {
		t.Fatalf("a 20 MiB value: %d bytes", len(v))
	}
}

func TestConcurrentCallsTakeTurns(t *testing.T) {
	r, _ := newREPL(t, Options{})
	run(t, r, "log = []\nimport time", backend.PythonOptions{})
	var wg sync.WaitGroup
	results := make([]*backend.PythonResult, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = run(t, r, fmt.Sprintf("log.append('start %d'); time.sleep(0.3); log.append('end %d'); %d * 10", i, i, i), backend.PythonOptions{})
		}()
	}
	wg.Wait()
	for i, res := range results {
		if value(res) != fmt.Sprint(i*10) {
			t.Fatalf("call %d: %+v", i, res)
		}
	}
	log := value(run(t, r, "log", backend.PythonOptions{}))
	if log != "['start 0', 'end 0', 'start 1', 'end 1']" && log != "['start 1', 'end 1', 'start 0', 'end 0']" {
		t.Fatalf("the calls overlapped: %s", log)
	}
}

func TestCancelInterruptsAndKeepsState(t *testing.T) {
	r, _ := newREPL(t, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	start := time.Now()
	res, err := r.RunPython(ctx, "while True: pass", backend.PythonOptions{Timeout: 30 * time.Second})
	if !errors.Is(err, context.Canceled) || res == nil || res.Error != "Interrupted" || time.Since(start) > 3*time.Second {
		t.Fatalf("cancel: %+v, %v after %v", res, err, time.Since(start))
	}
	if res := run(t, r, "x", backend.PythonOptions{}); value(res) != "41" || res.StateReset != "" {
		t.Fatalf("x after the cancel: %+v", res)
	}
}

func TestForgedEventsAreOutput(t *testing.T) {
	r, _ := newREPL(t, Options{})
	run(t, r, "1", backend.PythonOptions{})
	tok := "0123456789abcdef0123456789abcdef"
	code := fmt.Sprintf(`import os, sys, json, subprocess
fake = json.dumps({"call": %[1]q, "value": True})
print("r" + fake)
print("vNjY2")
print("\x00vmcp-end-%[1]s")
sys.stdout.write("partial\x00vmcp-end-%[1]s\n")
os.write(1, b"raw\x00vmcp-end-zzz\n")
os.write(4, (json.dumps({"call": %[1]q, "value": "666"}) + "\n").encode())
subprocess.run(["sh", "-c", "echo from-child; printf 'rX\\n'"])
import time; time.sleep(0.2)
7`, tok)
	var streamed []string
	res := run(t, r, code, backend.PythonOptions{OnOutput: func(s, l string) { streamed = append(streamed, l) }})
	if value(res) != "7" || res.Error != "" {
		t.Fatalf("forged result: %+v", res)
	}
	// Output is passed on byte for byte, what looks like events and markers
	// too (a marker is one only on fd 1 or 2, and with the current token).
	want := `r{"call": "` + tok + `", "value": true}` + "\nvNjY2\n\x00vmcp-end-" + tok + "\npartial\x00vmcp-end-" + tok +
		"\nraw\x00vmcp-end-zzz\nfrom-child\nrX"
	if res.Stdout != want {
		t.Fatalf("stdout %q, want %q", res.Stdout, want)
	}
	if res := run(t, r, "8", backend.PythonOptions{}); value(res) != "8" {
		t.Fatalf("the next call: %+v", res)
	}
}

func TestRelayMode(t *testing.T) {
	r, _ := newREPL(t, Options{relay: true})
	run(t, r, "x = 41", backend.PythonOptions{})
	if !r.host.relay {
		t.Fatal("not in relay mode")
	}
	var lines []string
	res := run(t, r, "print('a'); print('b'); x + 1", backend.PythonOptions{OnOutput: func(s, l string) { lines = append(lines, l) }})
	if value(res) != "42" || res.Stdout != "a\nb" || len(lines) != 2 {
		t.Fatalf("relay: %+v, %q", res, lines)
	}
	code := "s = '" + strings.Repeat("a", 300<<10) + "'\nlen(s)"
	if res := run(t, r, code, backend.PythonOptions{}); value(res) != "307200" {
		t.Fatalf("relay, large code: %+v", res.Error)
	}
	res = run(t, r, "while True: pass", backend.PythonOptions{Timeout: time.Second})
	if !res.TimedOut {
		t.Fatalf("relay timeout: %+v", res)
	}
}

func TestNoPython(t *testing.T) {
	r, _ := newREPL(t, Options{Python: "python3-missing"})
	_, err := r.RunPython(context.Background(), "1", backend.PythonOptions{})
	if err == nil || !strings.Contains(err.Error(), "no python3-missing") || !strings.Contains(err.Error(), "apt-get install") {
		t.Fatalf("without Python: %v", err)
	}
}

func TestUpgradedHostIsReplaced(t *testing.T) {
	r, m := newREPL(t, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	// A vmcp with another version of the host: it replaces the running one.
	r2 := New(machineExecer{m}, Options{})
	r2.version = "0000000000000000"
	res := run(t, r2, "x", backend.PythonOptions{})
	if !strings.Contains(res.StateReset, "updated") || !strings.Contains(res.Error, "NameError") {
		t.Fatalf("after an upgrade: %+v", res)
	}
	if out := sh(t, m, "ps -eo args | grep -c '[h]ost.py serve'"); strings.TrimSpace(out) != "1" {
		t.Fatalf("hosts running: %s", out)
	}
}

// dyingExecer kills the client of the next call after a while, as an exec
// whose connection broke would.
type dyingExecer struct {
	machineExecer
	after time.Duration
}

func (e *dyingExecer) Exec(ctx context.Context, argv []string, stdin io.Reader, onLine func(string, []byte)) (int, error) {
	if e.after > 0 && len(argv) > 2 && argv[2] == directScript {
		var cancel func()
		ctx, cancel = context.WithTimeout(ctx, e.after)
		defer cancel()
		e.after = 0
	}
	return e.machineExecer.Exec(ctx, argv, stdin, onLine)
}

func TestClientGoneMidCall(t *testing.T) {
	_, m := newMachine(t)
	x := &dyingExecer{machineExecer: machineExecer{m}}
	r := New(x, Options{})
	run(t, r, "x = 41", backend.PythonOptions{})
	x.after = 500 * time.Millisecond
	_, err := r.RunPython(context.Background(), "import time\nfor i in range(30):\n    print('x' * 10000)\n    time.sleep(0.05)\nx = 42", backend.PythonOptions{})
	if err == nil {
		t.Fatal("the call whose exec died returned no error")
	}
	// The code ran on without its client, and its output went nowhere.
	start := time.Now()
	if res := run(t, r, "x", backend.PythonOptions{}); value(res) != "42" || res.StateReset != "" {
		t.Fatalf("the next call: %+v", res)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the next call took %v", d)
	}
}
