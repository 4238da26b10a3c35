//go:build linux

package forevervm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

func TestCommands(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 2*time.Minute)
	h := home(t, m)
	run(t, m, "mkdir -p sub/dir")
	for _, tc := range []struct {
		name string
		cmd  backend.Command
		want backend.CommandResult
	}{
		{"exit code", backend.Command{Shell: "echo out; echo err >&2; exit 3"}, backend.CommandResult{ExitCode: 3, Stdout: "out\n", Stderr: "err\n"}},
		{"bash", backend.Command{Shell: `[[ -n $BASH_VERSION ]] && echo bash`}, backend.CommandResult{Stdout: "bash\n"}},
		{"argv without a shell", backend.Command{Argv: []string{"printf", "%s|", "a b", "$HOME", "*"}}, backend.CommandResult{Stdout: "a b|$HOME|*|"}},
		{"signal", backend.Command{Shell: "echo before; kill -9 $$"}, backend.CommandResult{ExitCode: 137, Signal: "SIGKILL", Stdout: "before\n"}},
		{"env", backend.Command{Shell: `echo "$A-$B"`, Env: map[string]string{"A": "1", "B": "two words"}}, backend.CommandResult{Stdout: "1-two words\n"}},
		{"home", backend.Command{Argv: []string{"pwd"}}, backend.CommandResult{Stdout: h + "\n"}},
		{"relative workdir", backend.Command{Argv: []string{"pwd"}, Workdir: "sub/dir"}, backend.CommandResult{Stdout: h + "/sub/dir\n"}},
		{"absolute workdir", backend.Command{Argv: []string{"pwd"}, Workdir: "/tmp"}, backend.CommandResult{Stdout: "/tmp\n"}},
		{"no stdin", backend.Command{Shell: "cat; echo end"}, backend.CommandResult{Stdout: "end\n"}},
		{"empty stdin", backend.Command{Shell: "wc -c", Stdin: strings.NewReader("")}, backend.CommandResult{Stdout: "0\n"}},
		{"binary output", backend.Command{Shell: `printf 'a\0b\377'`}, backend.CommandResult{Stdout: "a\x00b\xff"}},
	} {
		res, err := m.Run(ctx, tc.cmd)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if res.ExitCode != tc.want.ExitCode || res.Signal != tc.want.Signal || res.Stdout != tc.want.Stdout || res.Stderr != tc.want.Stderr || res.TimedOut || res.StdoutTruncated {
			t.Errorf("%s: %+v; want %+v", tc.name, res, tc.want)
		}
	}
	for _, tc := range []struct {
		cmd  backend.Command
		want string
	}{
		{backend.Command{Argv: []string{"no-such-program"}}, "command not found"},
		{backend.Command{Shell: "pwd", Workdir: "missing"}, "no such directory"},
		{backend.Command{}, "nothing to run"},
		{backend.Command{Shell: "true", Argv: []string{"true"}}, "not both"},
		{backend.Command{Shell: "true", Env: map[string]string{"A=B": "x"}}, "invalid environment variable"},
	} {
		if _, err := m.Run(ctx, tc.cmd); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v; want an error with %q", tc.cmd, err, tc.want)
		}
	}
	user.check(t, m)
}

func TestCommandStdin(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 2*time.Minute)
	stdin := randomBytes(7<<20 + 3)
	res, err := m.Run(ctx, backend.Command{Shell: "sha256sum", Stdin: bytes.NewReader(stdin)})
	if err != nil || res.Stdout != sha(stdin)+"  -\n" || res.ExitCode != 0 {
		t.Errorf("sha256sum of %d bytes of stdin: %+v, %v; want %s", len(stdin), res, err, sha(stdin))
	}
	// A command that stops reading early: the rest of stdin is dropped.
	res, err = m.Run(ctx, backend.Command{Shell: "head -c 5", Stdin: bytes.NewReader(stdin)})
	if err != nil || res.Stdout != string(stdin[:5]) {
		t.Errorf("head -c 5: %+v, %v", res, err)
	}
	// A command that reads only after a while.
	res, err = m.Run(ctx, backend.Command{Shell: "sleep 1; wc -c", Stdin: bytes.NewReader(stdin[:3<<20])})
	if err != nil || strings.TrimSpace(res.Stdout) != "3145728" {
		t.Errorf("sleep 1; wc -c: %+v, %v", res, err)
	}
	user.check(t, m)
}

// sleepers lists the machine's processes running "sleep N" for the given N.
func sleepers(t testing.TB, m *Machine, n string) string {
	return run(t, m, `for p in /proc/[0-9]*; do c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null); case "$c" in "sleep `+n+` ") echo "${p#/proc/}";; esac; done`)
}

func TestCommandTimeoutKillsEverything(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 2*time.Minute)
	began := time.Now()
	// A background job in the group, and a daemon that left both the group
	// (setsid) and the tree (its parent exits).
	res, err := m.Run(ctx, backend.Command{Shell: "sleep 1000 & (setsid sleep 1001 &); echo started; sleep 1000", Timeout: time.Second})
	took := time.Since(began)
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.ExitCode != 137 || res.Signal != "SIGKILL" || res.Stdout != "started\n" || res.Duration < time.Second || res.Duration > 3*time.Second {
		t.Errorf("a timed-out command: %+v", res)
	}
	if took > 5*time.Second {
		t.Errorf("a 1 s timeout took %v", took)
	}
	if left := sleepers(t, m, "1000") + sleepers(t, m, "1001"); left != "" {
		t.Errorf("processes left after the timeout: %s", left)
	}

	// A cancelled call kills the command too, promptly.
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	began = time.Now()
	_, err = m.Run(cctx, backend.Command{Shell: "sleep 1000 & sleep 1000"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a cancelled command: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("a cancelled command returned after %v", took)
	}
	if left := sleepers(t, m, "1000"); left != "" {
		t.Errorf("processes left after a cancel: %s", left)
	}
	// Without a timeout, background jobs outlive the command (as on the
	// local backend); they do not hold it up past a short grace.
	began = time.Now()
	res, err = m.Run(ctx, backend.Command{Shell: "sleep 1002 & echo done"})
	if err != nil || res.Stdout != "done\n" || time.Since(began) > 3*time.Second {
		t.Errorf("a command with a background job: %+v, %v after %v", res, err, time.Since(began))
	}
	left := sleepers(t, m, "1002")
	if left == "" {
		t.Error("the background job of a command without a timeout was killed")
	}
	run(t, m, "kill "+strings.ReplaceAll(left, "\n", " "))
	user.check(t, m)
}

func TestCommandOutput(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 2*time.Minute)

	// Lines arrive while the command runs.
	type line struct {
		stream, text string
		at           time.Time
	}
	var mu sync.Mutex
	var lines []line
	began := time.Now()
	res, err := m.Run(ctx, backend.Command{Shell: "echo one; echo two >&2; sleep 2; printf 'three\\nfour'", OnOutput: func(stream, text string) {
		mu.Lock()
		lines = append(lines, line{stream, text, time.Now()})
		mu.Unlock()
	}})
	ended := time.Now()
	if err != nil || res.Stdout != "one\nthree\nfour" || res.Stderr != "two\n" {
		t.Fatalf("%+v, %v", res, err)
	}
	var got []string
	for _, l := range lines {
		got = append(got, l.stream+":"+l.text)
	}
	if strings.Join(got, ",") != "stdout:one,stderr:two,stdout:three,stdout:four" && strings.Join(got, ",") != "stderr:two,stdout:one,stdout:three,stdout:four" {
		t.Errorf("lines: %v", got)
	}
	if len(lines) > 0 && ended.Sub(lines[0].at) < time.Second {
		t.Errorf("the first line came %v after the start and %v before the end: not live", lines[0].at.Sub(began), ended.Sub(lines[0].at))
	}

	// Output past MaxOutput is cut (and counted) whether lines are
	// watched or not; with a watcher every line still arrives, across
	// several instructions.
	for _, watch := range []bool{false, true} {
		var n, count int
		c := backend.Command{Shell: "yes 0123456789abcdef | head -c 20000000; echo end >&2", MaxOutput: 1000}
		if watch {
			c.OnOutput = func(stream, text string) {
				if stream == "stdout" {
					n += len(text) + 1
					count++
				}
			}
		}
		res, err := m.Run(ctx, c)
		if err != nil || len(res.Stdout) != 1000 || !res.StdoutTruncated || res.Stdout[:17] != "0123456789abcdef\n" || res.Stderr != "end\n" || res.StderrTruncated {
			t.Errorf("watch=%v: %.100v, %v", watch, res, err)
		}
		// 20000000 bytes: 1176470 lines of 17, then a partial one of 10.
		if watch && (n != 20000000+1 || count != 20000000/17+1) {
			t.Errorf("watched %d bytes in %d lines; want 20000001 in %d", n, count, 20000000/17+1)
		}
	}
	// The default keeps 1 MiB, as the local backend does.
	res, err = m.Run(ctx, backend.Command{Shell: "head -c 1500000 /dev/zero"})
	if err != nil || len(res.Stdout) != 1<<20 || !res.StdoutTruncated {
		t.Errorf("1.5 MB of output: %d bytes kept, truncated %v, %v", len(res.Stdout), res.StdoutTruncated, err)
	}
	user.check(t, m)
}

// TestOutputOfAnEndedCommandIsRelayed: output a command wrote just before
// it ended is relayed even when the helper looks at the pipes only after
// its grace period (a loaded machine); here the grace is made zero.
func TestOutputOfAnEndedCommandIsRelayed(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	run(t, m, "true") // the helper, installed
	python(t, m, "__import__('sys').modules['"+helperModule+"'].GRACE = 0")
	var want strings.Builder
	for i := 1; i <= 2000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	for i := range 20 {
		if got := run(t, m, "seq 1 2000"); got != want.String() {
			t.Fatalf("run %d: %d bytes of output; want %d", i, len(got), want.Len())
		}
	}
}
