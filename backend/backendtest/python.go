package backendtest

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

// python runs code that must not fail and returns its result.
func python(t *testing.T, m backend.Machine, code string) *backend.PythonResult {
	t.Helper()
	res, err := m.(backend.PythonRunner).RunPython(ctx(t), code, backend.PythonOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatalf("RunPython(%q): %v", code, err)
	}
	if res.Error != "" {
		t.Fatalf("RunPython(%q) raised: %s", code, res.Error)
	}
	return res
}

// value is a result's value as the tests compare it: "<nil>" for none.
func value(r *backend.PythonResult) string {
	if r.Value == nil {
		return "<nil>"
	}
	return *r.Value
}

// wantX checks that the interpreter still holds x = 41, as a machine that
// survived a failed, timed-out or cancelled call must.
func wantX(t *testing.T, m backend.Machine, after string) {
	t.Helper()
	res := python(t, m, "x + 1")
	if value(res) != "42" || res.StateReset != "" {
		t.Errorf("x + 1 after %s = %s (state reset: %q); want 42 and the state kept", after, value(res), res.StateReset)
	}
}

// text is a stream of a Python result without the one final newline that
// some backends keep and others drop.
func text(s string) string { return strings.TrimSuffix(s, "\n") }

// lineLog records OnOutput calls, as "stream:line", safe for any goroutine.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) on(stream, line string) {
	l.mu.Lock()
	l.lines = append(l.lines, stream+":"+line)
	l.mu.Unlock()
}

func (l *lineLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// lockedBuffer is a bytes.Buffer for writers that a backend may call from
// its own goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// testPython: the REPL keeps state; an exception is a result; output
// arrives in order through OnOutput and the writers; a timeout and a
// cancellation each end the call in time and leave the state. One machine
// serves the subtests, in order: each leaves x = 41 for the next.
func (s *suite) testPython(t *testing.T) {
	s.need(t, backend.Python)
	m := s.newMachine(t, backend.MachineSpec{})
	py := m.(backend.PythonRunner)

	s.run(t, "State", func(t *testing.T) {
		if r := python(t, m, "x = 41"); r.Value != nil {
			t.Errorf("an assignment has value %s; want none", *r.Value)
		}
		r := python(t, m, "x + 1")
		if value(r) != "42" {
			t.Errorf("x + 1 = %s; want 42", value(r))
		}
		if r.StateReset != "" {
			t.Errorf("the second call says the state was reset: %s", r.StateReset)
		}
		if r := python(t, m, "'a' + 'b'"); value(r) != "'ab'" {
			t.Errorf("'a' + 'b' = %s; want the repr 'ab'", value(r))
		}
		if r := python(t, m, "None"); r.Value != nil {
			t.Errorf("None has value %s; want none", *r.Value)
		}
		python(t, m, "y = x * 2\nz = y - 1")
		if r := python(t, m, "z"); value(r) != "81" {
			t.Errorf("z = %s; want 81", value(r))
		}
	})

	s.run(t, "Exception", func(t *testing.T) {
		python(t, m, "x = 41")
		for code, want := range map[string]string{"1 // 0": "ZeroDivisionError", "no_such_name_here": "NameError"} {
			r, err := py.RunPython(ctx(t), code, backend.PythonOptions{})
			if err != nil {
				t.Fatalf("RunPython(%q) = %v; an exception is a result, not an error", code, err)
			}
			if !strings.Contains(r.Error, want) || r.Value != nil {
				t.Errorf("RunPython(%q): error %q, value %s; want a %s and no value", code, r.Error, value(r), want)
			}
			if r.TimedOut {
				t.Errorf("RunPython(%q) says it timed out", code)
			}
		}
		// What ran before the exception stays done.
		r, err := py.RunPython(ctx(t), "w = 7\nprint(w)\n1 // 0\nw = 8", backend.PythonOptions{})
		if err != nil || !strings.Contains(r.Error, "ZeroDivisionError") || text(r.Stdout) != "7" {
			t.Errorf("print, then an exception: %+v, %v; want stdout 7 and a ZeroDivisionError", r, err)
		}
		if r := python(t, m, "w"); value(r) != "7" {
			t.Errorf("w after the exception = %s; want 7", value(r))
		}
		wantX(t, m, "exceptions")
		if s.opts.RealPython {
			r, err := py.RunPython(ctx(t), "def f():\n    raise ValueError('boom')\nf()", backend.PythonOptions{})
			if err != nil || !strings.Contains(r.Error, "ValueError: boom") || !strings.Contains(r.Error, "Traceback") {
				t.Errorf("a raised ValueError: %+v, %v; want its traceback", r, err)
			}
		}
	})

	s.run(t, "Output", func(t *testing.T) {
		r := python(t, m, "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nprint(6 * 7)")
		if text(r.Stdout) != "to out\n42" || text(r.Stderr) != "to err" {
			t.Errorf("stdout %q, stderr %q; want \"to out\\n42\" and \"to err\"", r.Stdout, r.Stderr)
		}
		if r.Value != nil {
			t.Errorf("print has value %s; want none", *r.Value)
		}
	})

	s.run(t, "Streaming", func(t *testing.T) {
		// Interleaved prints reach OnOutput in the order they were made,
		// across the two streams, and the result keeps them too.
		code := "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')\nprint('four', file=sys.stderr)"
		var log lineLog
		r, err := py.RunPython(ctx(t), code, backend.PythonOptions{OnOutput: log.on})
		if err != nil || r.Error != "" {
			t.Fatalf("%+v, %v", r, err)
		}
		want := []string{"stdout:one", "stderr:two", "stdout:three", "stderr:four"}
		if got := log.get(); !equal(got, want) {
			t.Errorf("OnOutput got %q; want %q", got, want)
		}
		if text(r.Stdout) != "one\nthree" || text(r.Stderr) != "two\nfour" {
			t.Errorf("with OnOutput, the result has stdout %q, stderr %q", r.Stdout, r.Stderr)
		}

		// Many lines of one stream arrive whole and in order.
		var b strings.Builder
		var wantLines []string
		for i := range 200 {
			fmt.Fprintf(&b, "print(%d)\n", i)
			wantLines = append(wantLines, fmt.Sprintf("stdout:%d", i))
		}
		var many lineLog
		if r, err := py.RunPython(ctx(t), b.String(), backend.PythonOptions{OnOutput: many.on}); err != nil || r.Error != "" {
			t.Fatalf("200 prints: %+v, %v", r, err)
		}
		if got := many.get(); !equal(got, wantLines) {
			t.Errorf("200 prints reached OnOutput as %d lines, %q…; want them in order", len(got), head(got))
		}
	})

	s.run(t, "Writers", func(t *testing.T) {
		// Stdout and Stderr writers get every byte, in order; the result's
		// streams are then empty.
		var stdout, stderr lockedBuffer
		var log lineLog
		code := "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')"
		r, err := py.RunPython(ctx(t), code, backend.PythonOptions{Stdout: &stdout, Stderr: &stderr, OnOutput: log.on})
		if err != nil || r.Error != "" {
			t.Fatalf("%+v, %v", r, err)
		}
		if stdout.String() != "one\nthree\n" || stderr.String() != "two\n" {
			t.Errorf("the writers got stdout %q, stderr %q; want \"one\\nthree\\n\" and \"two\\n\"", stdout.String(), stderr.String())
		}
		if r.Stdout != "" || r.Stderr != "" {
			t.Errorf("with writers, the result still has stdout %q, stderr %q", r.Stdout, r.Stderr)
		}
		if got, want := log.get(), []string{"stdout:one", "stderr:two", "stdout:three"}; !equal(got, want) {
			t.Errorf("with writers, OnOutput got %q; want %q", got, want)
		}
	})

	s.run(t, "Timeout", func(t *testing.T) {
		python(t, m, "x = 41")
		codes := []string{"import time\nprint('before')\ntime.sleep(60)\nx = 0"}
		if s.opts.RealPython {
			codes = append(codes, "while True:\n    pass") // CPU-bound: no sleep to wake from
		}
		for _, code := range codes {
			const timeout = time.Second
			start := time.Now()
			r, err := py.RunPython(ctx(t), code, backend.PythonOptions{Timeout: timeout})
			took := time.Since(start)
			if err != nil {
				t.Fatalf("RunPython(%q) past its timeout = %v; a timeout is a result, not an error", code, err)
			}
			if !r.TimedOut || r.Error == "" || r.Value != nil {
				t.Errorf("RunPython(%q) past its timeout: %+v; want TimedOut and an Error", code, r)
			}
			if took > timeout+s.opts.grace() {
				t.Errorf("RunPython(%q) with a %v timeout took %v", code, timeout, took)
			}
			wantX(t, m, "a timeout")
		}
	})

	s.run(t, "Cancel", func(t *testing.T) {
		python(t, m, "x = 41")
		const after = 500 * time.Millisecond
		c, cancel := context.WithCancel(ctx(t))
		timer := time.AfterFunc(after, cancel)
		defer timer.Stop()
		start := time.Now()
		r, err := py.RunPython(c, "import time\ntime.sleep(60)\nx = 0", backend.PythonOptions{Timeout: time.Minute})
		took := time.Since(start)
		if err == nil {
			t.Errorf("RunPython returned no error after its context was cancelled: %+v", r)
		} else if !errors.Is(err, context.Canceled) {
			t.Errorf("RunPython after a cancellation = %v; want an error that is context.Canceled", err)
		}
		if took > after+s.opts.grace() {
			t.Errorf("RunPython cancelled after %v returned after %v", after, took)
		}
		// The machine is usable at once: the cancelled code no longer runs.
		start = time.Now()
		wantX(t, m, "a cancellation")
		if took := time.Since(start); took > s.opts.grace() {
			t.Errorf("the call after a cancellation took %v", took)
		}
	})
}

// equal reports whether two string slices are the same.
func equal(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00") && len(a) == len(b)
}

// head is the first few of many lines, for messages.
func head(lines []string) []string { return lines[:min(len(lines), 5)] }
