//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustExec(t testing.TB, m *Machine, code string, opts PythonOptions) *PythonResult {
	t.Helper()
	res, err := m.RunPython(context.Background(), code, opts)
	if err != nil {
		t.Fatalf("exec %q: %v", code, err)
	}
	return res
}

func value(r *PythonResult) string {
	if r.Value == nil {
		return "<none>"
	}
	return *r.Value
}

func TestREPLStatePersists(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	if r := mustExec(t, m, "x = 41", PythonOptions{}); r.Value != nil || r.Error != "" {
		t.Fatalf("assignment: value %s, error %q; want neither", value(r), r.Error)
	}
	if r := mustExec(t, m, "x + 1", PythonOptions{}); value(r) != "42" {
		t.Fatalf("x + 1 = %s (error %q), want 42", value(r), r.Error)
	}
	mustExec(t, m, "import math\ndef area(r):\n    return math.pi * r * r", PythonOptions{})
	if r := mustExec(t, m, "round(area(2), 3)", PythonOptions{}); value(r) != "12.566" {
		t.Fatalf("function across calls = %s (error %q)", value(r), r.Error)
	}
	for code, want := range map[string]string{
		"None":                    "<none>",
		"'done'":                  "'done'",
		"print(123) or 567":       "567",
		"for i in range(2): pass": "<none>",
	} {
		if r := mustExec(t, m, code, PythonOptions{}); value(r) != want {
			t.Errorf("%q gave %s, want %s", code, value(r), want)
		}
	}
}

func TestREPLOutputStreamsInOrderBeforeResult(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	var mu sync.Mutex
	var lines []string
	var firstAt time.Time
	code := "import sys, time\nfor i in range(5):\n    print(i)\nprint('oops', file=sys.stderr)\ntime.sleep(0.5)\nprint('partial', end='')"
	res := mustExec(t, m, code, PythonOptions{OnOutput: func(stream, line string) {
		mu.Lock()
		defer mu.Unlock()
		if firstAt.IsZero() {
			firstAt = time.Now()
		}
		lines = append(lines, stream+":"+line)
	}})
	returned := time.Now()
	want := []string{"stdout:0", "stdout:1", "stdout:2", "stdout:3", "stdout:4", "stderr:oops", "stdout:partial"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("lines %q, want %q", lines, want)
	}
	// The first lines were printed half a second before the code ended:
	// they must have been delivered then, not with the result.
	if returned.Sub(firstAt) < 300*time.Millisecond {
		t.Fatalf("first line arrived %v before the result; output is not streamed", returned.Sub(firstAt))
	}
	if res.Stdout != "0\n1\n2\n3\n4\npartial" || res.Stderr != "oops" {
		t.Fatalf("collected stdout %q stderr %q", res.Stdout, res.Stderr)
	}
}

func TestREPLErrorHasTracebackAndNoValue(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	r := mustExec(t, m, "def f():\n    return 1/0\nf()", PythonOptions{})
	if r.Value != nil {
		t.Fatalf("error result has a value %s", value(r))
	}
	for _, want := range []string{"Traceback", "ZeroDivisionError", "division by zero", "return 1/0"} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q lacks %q", r.Error, want)
		}
	}
	if strings.Contains(r.Error, "<string>") {
		t.Errorf("traceback shows the driver's frames: %q", r.Error)
	}
	if r := mustExec(t, m, "def broken(:", PythonOptions{}); !strings.Contains(r.Error, "SyntaxError") {
		t.Errorf("syntax error: %q", r.Error)
	}
}

func TestREPLTimeoutKeepsState(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustExec(t, m, "x = 41\nfrom time import sleep", PythonOptions{})
	start := time.Now()
	r := mustExec(t, m, "sleep(10)", PythonOptions{Timeout: time.Second})
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("timeout took %v, want < 2s", took)
	}
	if !strings.Contains(r.Error, "Timed out") || !r.TimedOut || r.Value != nil {
		t.Fatalf("result %+v, want a Timed out error", r)
	}
	if r := mustExec(t, m, "sleep(0.1); x", PythonOptions{}); value(r) != "41" || r.StateReset != "" {
		t.Fatalf("after timeout: x = %s (error %q, reset %q), want 41 and the same interpreter", value(r), r.Error, r.StateReset)
	}
}

func TestREPLTimeoutOfCodeThatIgnoresInterrupts(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustExec(t, m, "x = 1", PythonOptions{})
	code := "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass"
	r := mustExec(t, m, code, PythonOptions{Timeout: 500 * time.Millisecond})
	if !r.TimedOut || !r.InterpreterDied || !strings.Contains(r.Error, "Timed out") {
		t.Fatalf("result %+v: want a timeout that killed the interpreter", r)
	}
	r = mustExec(t, m, "1 + 1", PythonOptions{})
	if value(r) != "2" || r.StateReset == "" {
		t.Fatalf("next call: value %s, reset %q; want 2 and a reset notice", value(r), r.StateReset)
	}
}

func TestREPLPlotIsAPNG(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	r := mustExec(t, m, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()", PythonOptions{Timeout: time.Minute})
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	if len(r.Images) != 1 {
		t.Fatalf("%d images, want 1", len(r.Images))
	}
	img, err := png.Decode(bytes.NewReader(r.Images[0]))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Fatalf("image is %v", b)
	}
	// Figures are closed once returned.
	if r := mustExec(t, m, "len(plt.get_fignums())", PythonOptions{}); value(r) != "0" || len(r.Images) != 0 {
		t.Fatalf("figures left open: %s, %d images", value(r), len(r.Images))
	}
}

func TestREPLInterpreterExitIsReported(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustExec(t, m, "x = 41", PythonOptions{})
	r := mustExec(t, m, "import os; os._exit(1)", PythonOptions{})
	if !r.InterpreterDied || !strings.Contains(r.Error, "exited with status 1") || !strings.Contains(r.Error, "state") {
		t.Fatalf("result %+v: want a clear error about the interpreter exiting", r)
	}
	r = mustExec(t, m, "'x' in globals()", PythonOptions{})
	if value(r) != "False" || !strings.Contains(r.StateReset, "interpreter") {
		t.Fatalf("next call: %s, reset %q; want a fresh interpreter that says so", value(r), r.StateReset)
	}
	if r := mustExec(t, m, "1 + 1", PythonOptions{}); r.StateReset != "" {
		t.Fatalf("reset reported twice: %q", r.StateReset)
	}
	// A segfault is the same story.
	r = mustExec(t, m, "import ctypes; ctypes.string_at(0)", PythonOptions{})
	if !r.InterpreterDied || !strings.Contains(r.Error, "SIGSEGV") {
		t.Fatalf("segfault: %+v", r)
	}
}

func TestREPLInstructionsQueueInOrder(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustExec(t, m, "seen = []", PythonOptions{})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			mustExec(t, m, fmt.Sprintf("import time; time.sleep(0.02); seen.append(%d)", i), PythonOptions{})
		}(i)
		time.Sleep(5 * time.Millisecond) // submit in a known order
	}
	wg.Wait()
	if r := mustExec(t, m, "seen", PythonOptions{}); value(r) != "[0, 1, 2, 3, 4, 5, 6, 7]" {
		t.Fatalf("instructions ran as %s", value(r))
	}
}

func TestREPLContextCancelInterrupts(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustExec(t, m, "y = 7", PythonOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r, err := m.RunPython(ctx, "import time; time.sleep(30)", PythonOptions{Timeout: time.Minute})
	if err == nil || r == nil || !r.Interrupted {
		t.Fatalf("cancelled exec: %+v, %v", r, err)
	}
	if r := mustExec(t, m, "y", PythonOptions{}); value(r) != "7" {
		t.Fatalf("after cancel y = %s (%q)", value(r), r.Error)
	}
}

// An interrupt that lands just as the code is handed to the interpreter
// (before the driver runs it) still stops the code, and the state survives.
func TestREPLInterruptRightAfterSubmissionKeepsState(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	mustExec(t, m, "y = 7", PythonOptions{})
	for i := 0; i < 30; i++ {
		delay := time.Duration(i%6) * 100 * time.Microsecond
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(delay, cancel)
		start := time.Now()
		r, err := m.RunPython(ctx, "import time; time.sleep(60)", PythonOptions{Timeout: 2 * time.Minute})
		cancel()
		if err == nil {
			t.Fatalf("attempt %d (cancel after %v): no error, result %+v", i, delay, r)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("attempt %d (cancel after %v): the code stopped only after %v", i, delay, d)
		}
		if r := mustExec(t, m, "y", PythonOptions{}); value(r) != "7" || r.StateReset != "" {
			t.Fatalf("attempt %d (cancel after %v): y = %s, reset %q", i, delay, value(r), r.StateReset)
		}
	}
}

// TestREPLRestartOfTheEngineKeepsState: an engine closed on purpose saves
// each machine's variables, and the next engine's first call restores
// them (a crash, which saves nothing, is TestPythonVariablesSurviveStops'
// last case).
func TestREPLRestartOfTheEngineKeepsState(t *testing.T) {
	dir := t.TempDir()
	e := newTestEngine(t, Options{StateDir: dir})
	m := newTestMachine(t, e, MachineSpec{})
	mustExec(t, m, "x = 1", PythonOptions{})
	if _, err := m.WriteFile(context.Background(), "kept.txt", strings.NewReader("still here"), 0); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e2 := newTestEngine(t, Options{StateDir: dir})
	m2, err := e2.Machine(m.ID())
	if err != nil {
		t.Fatal(err)
	}
	r := mustExec(t, m2, "open('kept.txt').read(), x", PythonOptions{})
	if value(r) != "('still here', 1)" || r.StateReset != "" || !strings.Contains(r.StateRestored, "x") {
		t.Fatalf("after restart: %s, reset %q, restored %q", value(r), r.StateReset, r.StateRestored)
	}
}
