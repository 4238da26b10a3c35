//go:build linux && !vmcp_nolocal

package local

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/internal/capture"
)

func mustRun(t testing.TB, m *Machine, cmd Command) *CommandResult {
	t.Helper()
	res, err := m.Run(context.Background(), cmd)
	if err != nil {
		t.Fatalf("run %q %q: %v", cmd.Shell, cmd.Argv, err)
	}
	return res
}

func TestCommandExitCodeAndStreams(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	var lines []string
	res := mustRun(t, m, Command{Shell: "echo hi; echo err >&2; exit 3", OnOutput: func(s, l string) { lines = append(lines, s+":"+l) }})
	if res.ExitCode != 3 || res.Stdout != "hi\n" || res.Stderr != "err\n" || res.TimedOut {
		t.Fatalf("result %+v", res)
	}
	if len(lines) != 2 {
		t.Fatalf("streamed lines %q", lines)
	}
}

func TestCommandArgvStdinEnvWorkdir(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	res := mustRun(t, m, Command{Argv: []string{"printf", "%s|", "a b", "$HOME"}})
	if res.Stdout != "a b|$HOME|" {
		t.Fatalf("argv is not passed verbatim: %q", res.Stdout)
	}
	res = mustRun(t, m, Command{Argv: []string{"wc", "-l"}, Stdin: strings.NewReader("1\n2\n3\n")})
	if strings.TrimSpace(res.Stdout) != "3" {
		t.Fatalf("stdin: %q", res.Stdout)
	}
	mustRun(t, m, Command{Shell: "mkdir -p sub"})
	res = mustRun(t, m, Command{Shell: "echo $GREETING; pwd", Env: map[string]string{"GREETING": "hello"}, Workdir: "/workspace/sub"})
	if res.Stdout != "hello\n/workspace/sub\n" {
		t.Fatalf("env and workdir: %q", res.Stdout)
	}
	if _, err := m.Run(context.Background(), Command{Argv: []string{"no-such-program"}}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("missing program: %v", err)
	}
	if _, err := m.Run(context.Background(), Command{Argv: []string{"true"}, Shell: "true"}); err == nil {
		t.Fatal("argv and shell together were accepted")
	}
}

// rssSampler records the peak RSS of this process while it runs.
type rssSampler struct {
	stop chan struct{}
	done chan struct{}
	peak atomic.Int64
}

func startRSSSampler() *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	s.peak.Store(rss())
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(2 * time.Millisecond):
				if r := rss(); r > s.peak.Load() {
					s.peak.Store(r)
				}
			}
		}
	}()
	return s
}

func (s *rssSampler) Stop() int64 {
	close(s.stop)
	<-s.done
	return s.peak.Load()
}

// rss is this process's resident set size in bytes.
func rss() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func TestCommandLargeOutputIsCappedWithBoundedMemory(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustRun(t, m, Command{Argv: []string{"true"}}) // start the sandbox first
	before := rss()
	sampler := startRSSSampler()
	res := mustRun(t, m, Command{Shell: "yes abcdefghij | head -c 50000000; yes err | head -c 3000000 >&2"})
	peak := sampler.Stop()
	if !res.StdoutTruncated || !res.StderrTruncated {
		t.Fatalf("truncated flags %v %v", res.StdoutTruncated, res.StderrTruncated)
	}
	if res.StdoutBytes != 50000000 || res.StderrBytes != 3000000 {
		t.Fatalf("totals %d %d, want 50000000 3000000", res.StdoutBytes, res.StderrBytes)
	}
	if len(res.Stdout) != capture.DefaultMax || !strings.HasPrefix(res.Stdout, "abcdefghij\nabcdefghij\n") {
		t.Fatalf("kept %d bytes of stdout", len(res.Stdout))
	}
	growth := peak - before
	t.Logf("RSS grew by %.1f MiB while streaming 53 MB", float64(growth)/(1<<20))
	if growth > 20<<20 {
		t.Fatalf("RSS grew by %d MiB, want < 20 MiB", growth>>20)
	}
}

func TestCommandTimeoutKillsTheWholeTree(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	start := time.Now()
	res := mustRun(t, m, Command{Shell: "sleep 1000 & sleep 1000", Timeout: time.Second})
	if !res.TimedOut || time.Since(start) > 5*time.Second {
		t.Fatalf("result %+v after %v", res, time.Since(start))
	}
	// Checked from the host: no sleep is left in the machine's pid namespace.
	if len(m.HostPIDs()) == 0 {
		t.Fatal("found no process of the machine at all; the check is broken")
	}
	noSleepLeft(t, m, "the timeout")
	// Daemons that left the process group, and the tree, go too.
	mustRun(t, m, Command{Shell: "setsid sleep 1000 & (setsid sh -c 'sleep 1001 &' &); sleep 1000", Timeout: 500 * time.Millisecond})
	noSleepLeft(t, m, "the timeout of daemons")
	// A background process of a command that ended normally keeps running,
	// as on any machine.
	mustRun(t, m, Command{Shell: "nohup sleep 1002 >/dev/null 2>&1 &"})
	res = mustRun(t, m, Command{Shell: "for i in 1 2 3 4 5; do pgrep -f 'sleep 1002' && exit 0; sleep 0.2; done; exit 1"})
	if res.ExitCode != 0 {
		ps := mustRun(t, m, Command{Shell: "ps -eo pid,ppid,pgid,stat,args"})
		t.Fatalf("background process of a finished command is gone; the machine runs:\n%s", ps.Stdout)
	}
}

// noSleepLeft fails unless every sleep of the machine is gone within a few
// seconds: killed processes may take a moment to die and be reaped on a
// loaded host, but none may survive.
func noSleepLeft(t *testing.T, m *Machine, after string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var alive []string
		for _, pid := range m.HostPIDs() {
			stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i:]), ") Z") {
				continue // dead, not yet reaped
			}
			if comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); strings.TrimSpace(string(comm)) == "sleep" {
				cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
				alive = append(alive, fmt.Sprintf("%d (%q)", pid, cmdline))
			}
		}
		if len(alive) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still running: %s", after, strings.Join(alive, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCommandsRunConcurrentlyWithPython(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustRun(t, m, Command{Argv: []string{"true"}}) // started (and the engine's self-test over): what follows measures waiting only
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		mustExec(t, m, "import time; time.sleep(3)", PythonOptions{})
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	mustRun(t, m, Command{Argv: []string{"true"}})
	// Well before the instruction ends, with room for a loaded host.
	if time.Since(start) > 2*time.Second {
		t.Fatalf("a command waited %v for a Python instruction", time.Since(start))
	}
	wg.Wait()
}

func TestCommandCancelledByContext(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	res, err := m.Run(ctx, Command{Shell: "sleep 60"})
	if err == nil || res == nil || res.Signal != "SIGKILL" {
		t.Fatalf("cancelled command: %+v, %v", res, err)
	}
}

func TestCommandStderrWriter(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	var stdout, stderr strings.Builder
	res := mustRun(t, m, Command{Shell: "printf 'out'; printf 'e1\\ne2' >&2; exit 4", Stdout: &stdout, Stderr: &stderr})
	if stdout.String() != "out" || stderr.String() != "e1\ne2" {
		t.Fatalf("streamed stdout %q stderr %q", stdout.String(), stderr.String())
	}
	if res.Stderr != "" || res.Stdout != "" || res.StderrBytes != 5 || res.StdoutBytes != 3 || res.ExitCode != 4 {
		t.Fatalf("result %+v", res)
	}
}

func TestCommandTTY(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	sizes := make(chan WindowSize)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan *CommandResult, 1)
	go func() {
		res, err := m.Run(context.Background(), Command{
			Shell:   "tty; stty size; read line; stty size; echo \"got:$line\"",
			TTY:     &TTY{Size: WindowSize{Rows: 30, Cols: 100}, Resize: sizes},
			Stdin:   inR,
			Stdout:  outW,
			Timeout: 20 * time.Second,
		})
		if err != nil {
			t.Error(err)
		}
		outW.Close()
		done <- res
	}()
	// The terminal's output, read as it comes: the initial size first.
	var got strings.Builder
	buf := make([]byte, 4096)
	for !strings.Contains(got.String(), "30 100") {
		n, err := outR.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("tty output ended early: %q (%v)", got.String(), err)
		}
	}
	sizes <- WindowSize{Rows: 40, Cols: 120}
	// The resize is applied before the line is read: it went first.
	time.Sleep(200 * time.Millisecond)
	io.WriteString(inW, "hello\r")
	rest, _ := io.ReadAll(outR)
	got.Write(rest)
	res := <-done
	inW.Close()
	out := got.String()
	if res.ExitCode != 0 || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "40 120") ||
		!strings.Contains(out, "hello\r\n") || !strings.Contains(out, "got:hello") {
		t.Fatalf("tty session: exit %d, output %q", res.ExitCode, out)
	}
}

// TestKillSparesLaterCommands: the kill of a timed-out command goes on
// until its last process is gone, while the next commands start; it must
// not take them too (a namespace's number is reused once it is freed).
func TestKillSparesLaterCommands(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	for round := range 15 {
		res := mustRun(t, m, Command{Shell: "for i in $(seq 40); do sleep 100 & done; sleep 100", Timeout: 300 * time.Millisecond})
		if !res.TimedOut {
			t.Fatalf("round %d: the command did not time out: %+v", round, res)
		}
		for i := range 6 {
			if res := mustRun(t, m, Command{Shell: "true"}); res.ExitCode != 0 {
				t.Fatalf("round %d: command %d after a timeout ended with %d %s", round, i, res.ExitCode, res.Signal)
			}
		}
	}
	noSleepLeft(t, m, "the timeouts")
}
