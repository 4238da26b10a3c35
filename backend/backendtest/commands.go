package backendtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// run runs a command that must run (whatever its exit) and returns its
// result.
func run(t *testing.T, m backend.Machine, c backend.Command) *backend.CommandResult {
	t.Helper()
	if c.Timeout == 0 {
		c.Timeout = time.Minute
	}
	res, err := m.(backend.CommandRunner).Run(ctx(t), c)
	if err != nil {
		t.Fatalf("Run(%q %q): %v", c.Shell, c.Argv, err)
	}
	return res
}

// sh runs a shell command line that must succeed and returns its stdout.
func sh(t *testing.T, m backend.Machine, line string) string {
	t.Helper()
	r := run(t, m, backend.Command{Shell: line})
	if r.ExitCode != 0 {
		t.Fatalf("%q exited %d: %s", line, r.ExitCode, r.Stderr)
	}
	return r.Stdout
}

// testCommands: exit codes, separate streams, argv without a shell, stdin,
// environment, working directory, output in order, output caps, and a
// timeout or cancellation that kills the process. One machine serves the
// subtests.
func (s *suite) testCommands(t *testing.T) {
	s.need(t, backend.Shell)
	m := s.newMachine(t, backend.MachineSpec{})
	cr := m.(backend.CommandRunner)

	s.run(t, "ExitCode", func(t *testing.T) {
		for line, want := range map[string]int{"true": 0, "false": 1, "exit 3": 3, "echo x; exit 42": 42} {
			if r := run(t, m, backend.Command{Shell: line}); r.ExitCode != want || r.TimedOut {
				t.Errorf("%q: exit %d (timed out: %v); want %d", line, r.ExitCode, r.TimedOut, want)
			}
		}
	})

	s.run(t, "Streams", func(t *testing.T) {
		r := run(t, m, backend.Command{Shell: "echo out; echo err >&2; echo more; exit 3"})
		if r.Stdout != "out\nmore\n" || r.Stderr != "err\n" || r.ExitCode != 3 {
			t.Errorf("stdout %q, stderr %q, exit %d; want \"out\\nmore\\n\", \"err\\n\", 3", r.Stdout, r.Stderr, r.ExitCode)
		}
		if r.StdoutTruncated || r.StderrTruncated {
			t.Errorf("short output marked truncated: %+v", r)
		}
	})

	s.run(t, "Argv", func(t *testing.T) {
		// Arguments reach the program as they are: no shell splits or
		// expands them.
		r := run(t, m, backend.Command{Argv: []string{"echo", "two  spaces", "$HOME", "'q'"}})
		if want := "two  spaces $HOME 'q'\n"; r.Stdout != want || r.ExitCode != 0 {
			t.Errorf("argv echo: stdout %q, exit %d; want %q", r.Stdout, r.ExitCode, want)
		}
		if _, err := cr.Run(ctx(t), backend.Command{}); err == nil {
			t.Error("an empty command ran")
		}
	})

	s.run(t, "Stdin", func(t *testing.T) {
		in := "line one\nline two\nno newline at the end"
		if r := run(t, m, backend.Command{Shell: "cat", Stdin: strings.NewReader(in)}); r.Stdout != in {
			t.Errorf("cat of stdin: %q; want %q", r.Stdout, in)
		}
		// Without stdin, a reader of it gets an end of file, not a wait.
		if r := run(t, m, backend.Command{Shell: "cat", Timeout: 30 * time.Second}); r.Stdout != "" || r.TimedOut || r.ExitCode != 0 {
			t.Errorf("cat without stdin: %+v; want it to end at once with nothing", r)
		}
		var b strings.Builder
		for i := range 5000 {
			fmt.Fprintf(&b, "stdin line %d\n", i)
		}
		if r := run(t, m, backend.Command{Argv: []string{"cat"}, Stdin: strings.NewReader(b.String())}); r.Stdout != b.String() {
			t.Errorf("cat of %d bytes of stdin gave %d bytes", b.Len(), len(r.Stdout))
		}
	})

	s.run(t, "Env", func(t *testing.T) {
		env := map[string]string{"VMCP_SUITE_VAR": "a value with spaces", "VMCP_SUITE_OTHER": "$HOME;'x'"}
		if r := run(t, m, backend.Command{Shell: "printenv VMCP_SUITE_VAR", Env: env}); r.Stdout != "a value with spaces\n" {
			t.Errorf("printenv VMCP_SUITE_VAR: %q, exit %d", r.Stdout, r.ExitCode)
		}
		if r := run(t, m, backend.Command{Argv: []string{"printenv", "VMCP_SUITE_OTHER"}, Env: env}); r.Stdout != "$HOME;'x'\n" {
			t.Errorf("printenv VMCP_SUITE_OTHER: %q, exit %d", r.Stdout, r.ExitCode)
		}
		// Only that command has it.
		if r := run(t, m, backend.Command{Shell: "printenv VMCP_SUITE_VAR"}); r.ExitCode == 0 {
			t.Errorf("a later command has the variable: %q", r.Stdout)
		}
	})

	s.run(t, "Workdir", func(t *testing.T) {
		home := strings.TrimSpace(sh(t, m, "pwd"))
		sh(t, m, "mkdir -p wd/sub")
		got := strings.TrimSpace(run(t, m, backend.Command{Shell: "pwd", Workdir: "wd/sub"}).Stdout)
		if want := strings.TrimSuffix(home, "/") + "/wd/sub"; got != want {
			t.Errorf("pwd with Workdir wd/sub = %q; want %q (relative to the home, %s)", got, want, home)
		}
		got = strings.TrimSpace(run(t, m, backend.Command{Argv: []string{"pwd"}, Workdir: home + "/wd"}).Stdout)
		if want := strings.TrimSuffix(home, "/") + "/wd"; got != want {
			t.Errorf("pwd with Workdir %s/wd = %q; want %q", home, got, want)
		}
		if r, err := cr.Run(ctx(t), backend.Command{Shell: "pwd", Workdir: "no/such/dir"}); err == nil && r.ExitCode == 0 {
			t.Errorf("a command ran in a missing directory: %+v", r)
		}
	})

	s.run(t, "Streaming", func(t *testing.T) {
		// The sleeps let each line cross before the next is written: two
		// pipes are read apart, so lines written at once may cross either
		// way.
		line := "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; sleep 0.2; echo four >&2"
		want := []string{"stdout:one", "stderr:two", "stdout:three", "stderr:four"}
		var log lineLog
		r := run(t, m, backend.Command{Shell: line, OnOutput: log.on})
		if got := log.get(); !equal(got, want) {
			t.Errorf("OnOutput got %q; want %q", got, want)
		}
		if r.Stdout != "one\nthree\n" || r.Stderr != "two\nfour\n" {
			t.Errorf("with OnOutput, the result has stdout %q, stderr %q", r.Stdout, r.Stderr)
		}

		// Many lines of one stream arrive whole and in order, the last
		// one without its newline too.
		var in strings.Builder
		var wantLines []string
		for i := range 3000 {
			fmt.Fprintf(&in, "\nline %d", i)
			wantLines = append(wantLines, fmt.Sprintf("stdout:line %d", i))
		}
		var many lineLog
		run(t, m, backend.Command{Shell: "cat", Stdin: strings.NewReader(in.String()[1:]), OnOutput: many.on})
		if got := many.get(); !equal(got, wantLines) {
			t.Errorf("3000 lines reached OnOutput as %d lines, %q…; want them in order", len(got), head(got))
		}

		var stdout, stderr lockedBuffer
		r = run(t, m, backend.Command{Shell: line, Stdout: &stdout, Stderr: &stderr})
		if stdout.String() != "one\nthree\n" || stderr.String() != "two\nfour\n" {
			t.Errorf("the writers got stdout %q, stderr %q", stdout.String(), stderr.String())
		}
		if r.Stdout != "" || r.Stderr != "" {
			t.Errorf("with writers, the result still has stdout %q, stderr %q", r.Stdout, r.Stderr)
		}
	})

	s.run(t, "MaxOutput", func(t *testing.T) {
		in := strings.Repeat("0123456789", 1000)
		r := run(t, m, backend.Command{Shell: "cat", Stdin: strings.NewReader(in), MaxOutput: 100})
		if r.Stdout != in[:100] || !r.StdoutTruncated || r.StderrTruncated {
			t.Errorf("10000 bytes with MaxOutput 100: %d bytes kept, truncated %v (stderr %v); want the first 100, truncated",
				len(r.Stdout), r.StdoutTruncated, r.StderrTruncated)
		}
	})

	s.run(t, "Timeout", func(t *testing.T) {
		// The command outlives its timeout by a second: if it were not
		// killed, its file would appear.
		const timeout = time.Second
		start := time.Now()
		r := run(t, m, backend.Command{Shell: "echo started; sleep 2; echo late > late.txt", Timeout: timeout})
		took := time.Since(start)
		if !r.TimedOut || r.ExitCode == 0 {
			t.Errorf("a command past its timeout: %+v; want TimedOut and a failed exit", r)
		}
		if r.Stdout != "started\n" {
			t.Errorf("a command past its timeout kept stdout %q; want what it wrote before", r.Stdout)
		}
		if took > timeout+s.opts.grace() {
			t.Errorf("a command with a %v timeout took %v", timeout, took)
		}
		time.Sleep(time.Until(start.Add(3 * time.Second)))
		if r := run(t, m, backend.Command{Shell: "cat late.txt"}); r.ExitCode == 0 {
			t.Errorf("the timed-out command ran on: late.txt holds %q", r.Stdout)
		}
	})

	s.run(t, "Cancel", func(t *testing.T) {
		const after = 500 * time.Millisecond
		c, cancel := context.WithCancel(ctx(t))
		timer := time.AfterFunc(after, cancel)
		defer timer.Stop()
		start := time.Now()
		r, err := cr.Run(c, backend.Command{Shell: "sleep 2; echo late > late-cancelled.txt", Timeout: time.Minute})
		took := time.Since(start)
		if err == nil {
			t.Errorf("Run returned no error after its context was cancelled: %+v", r)
		} else if !errors.Is(err, context.Canceled) {
			t.Errorf("Run after a cancellation = %v; want an error that is context.Canceled", err)
		}
		if took > after+s.opts.grace() {
			t.Errorf("Run cancelled after %v returned after %v", after, took)
		}
		if out := sh(t, m, "echo ok"); out != "ok\n" {
			t.Errorf("echo ok after a cancellation: %q", out)
		}
		time.Sleep(time.Until(start.Add(3 * time.Second)))
		if r := run(t, m, backend.Command{Shell: "cat late-cancelled.txt"}); r.ExitCode == 0 {
			t.Errorf("the cancelled command ran on: late-cancelled.txt holds %q", r.Stdout)
		}
	})
}
