//go:build linux

package fastvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

func mustPython(t testing.TB, m *Machine, code string, timeout time.Duration) *backend.PythonResult {
	t.Helper()
	res, err := m.RunPython(context.Background(), code, backend.PythonOptions{Timeout: timeout})
	if err != nil {
		t.Fatalf("%q: %v", code, err)
	}
	return res
}

func value(r *backend.PythonResult) string {
	if r.Value == nil {
		return "<nil>"
	}
	return *r.Value
}

// TestPythonOnFastVM: run_python on a FastVM VM keeps its state between
// calls, interrupts a timed-out call and keeps the state, keeps it across a
// pause, and says that it was reset once the VM comes back from a snapshot
// (its files kept).
func TestPythonOnFastVM(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{})
	ctx := context.Background()
	m := env.machine(t)
	if r := mustPython(t, m, "x = 41", 0); r.Value != nil || r.Error != "" || r.StateReset != "" {
		t.Fatalf("x = 41: %+v", r)
	}
	if r := mustPython(t, m, "x + 1", 0); value(r) != "42" {
		t.Fatalf("x + 1: %+v", r)
	}
	var lines []string
	r, err := m.RunPython(ctx, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n1/0", backend.PythonOptions{
		OnOutput: func(stream, line string) { lines = append(lines, stream+":"+line) }})
	if err != nil || !strings.Contains(r.Error, "ZeroDivisionError") || r.Stdout != "out" || r.Stderr != "err" {
		t.Fatalf("output and traceback: %+v, %v", r, err)
	}
	if strings.Join(lines, ",") != "stdout:out,stderr:err" {
		t.Errorf("live output: %q", lines)
	}
	if r := mustPython(t, m, "while True: pass", time.Second); !r.TimedOut || r.StateReset != "" {
		t.Fatalf("timeout: %+v", r)
	}
	if r := mustPython(t, m, "x", 0); value(r) != "41" {
		t.Fatalf("x after a timeout: %+v", r)
	}
	// A figure comes back as a PNG.
	r = mustPython(t, m, "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", 30*time.Second)
	if len(r.Images) != 1 || !strings.HasPrefix(string(r.Images[0]), "\x89PNG") {
		t.Fatalf("figure: %d images, error %q", len(r.Images), r.Error)
	}

	// Paused while idle and resumed by the next call: the state is there.
	if snap, err := env.b.Idle(ctx, m.ID()); err != nil || snap != "" {
		t.Fatalf("Idle: %q, %v", snap, err)
	}
	if r := mustPython(t, m, "x + 1", 0); value(r) != "42" || r.StateReset != "" {
		t.Fatalf("after a pause: %+v", r)
	}

	// Parked as a snapshot and relaunched: files kept, state reset, and
	// the result says so.
	mustRun(t, m, "echo kept > /root/f")
	parking := New(env.c, Options{IdleAction: IdleSnapshot})
	snap, err := parking.Idle(ctx, m.ID())
	if err != nil || snap == "" {
		t.Fatalf("parking: %q, %v", snap, err)
	}
	info, err := env.b.Create(ctx, backend.MachineSpec{FromSnapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.b.Delete(ctx, m.ID()); err != nil {
		t.Fatal(err)
	}
	bm, err := env.b.Machine(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	restored := bm.(*Machine)
	r = mustPython(t, restored, "open('/root/f').read()", 0)
	if value(r) != `'kept\n'` || r.StateReset == "" {
		t.Fatalf("after a restore: %+v", r)
	}
	if r := mustPython(t, restored, "'x' in globals()", 0); value(r) != "False" || r.StateReset != "" {
		t.Fatalf("the next call after a restore: %+v", r)
	}
}

// hashWriter counts and hashes what it is given.
type hashWriter struct {
	h    hash.Hash
	n    int64
	head []byte
}

func newHashWriter() *hashWriter { return &hashWriter{h: sha256.New()} }

func (w *hashWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	if len(w.head) < 64 {
		w.head = append(w.head, p[:min(len(p), 64-len(w.head))]...)
	}
	return len(p), nil
}

func wantStream(t *testing.T, what string, w *hashWriter, want ...[]byte) {
	t.Helper()
	h := sha256.New()
	var n int64
	for _, p := range want {
		h.Write(p)
		n += int64(len(p))
	}
	if sum := hex.EncodeToString(h.Sum(nil)); hex.EncodeToString(w.h.Sum(nil)) != sum || w.n != n {
		t.Fatalf("%s: got %d bytes (head %q), want %d bytes with sha256 %s", what, w.n, w.head, n, sum)
	}
}

// TestPythonOutputOnFastVM: run_python's output comes through the VM's
// exec byte for byte to PythonOptions.Stdout and Stderr, a 10 MB line
// whole and bytes that are not UTF-8 as they are; without writers the
// result holds it as the local engine's does, with no line added.
func TestPythonOutputOnFastVM(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{})
	ctx := context.Background()
	m := env.machine(t)
	out, errw := newHashWriter(), newHashWriter()
	r, err := m.RunPython(ctx, "import sys\nprint('x'*10_000_000); print('tail')\nsys.stdout.buffer.write(b'\\xff\\xfeab\\n')\nsys.stderr.buffer.write(b'\\x00\\xff')",
		backend.PythonOptions{Timeout: time.Minute, Stdout: out, Stderr: errw})
	if err != nil || r.Error != "" || r.Stdout != "" || r.Stderr != "" {
		t.Fatalf("%+v, %v", r, err)
	}
	wantStream(t, "stdout", out, bytes.Repeat([]byte("x"), 10_000_000), []byte("\ntail\n\xff\xfeab\n"))
	wantStream(t, "stderr", errw, []byte("\x00\xff"))

	r = mustPython(t, m, "print('y' * 900_000); print('tail')", 0)
	if r.Stdout != strings.Repeat("y", 900_000)+"\ntail" {
		t.Fatalf("a 900 kB line in the result: %d bytes, tail %q", len(r.Stdout), r.Stdout[max(0, len(r.Stdout)-20):])
	}
}

// TestParkKeepsPythonVariables: a machine parked by the backend that ran
// its Python saves its variables (a function and a class defined in the
// REPL included) into its files; the machine relaunched from the snapshot
// has them at its first call, which says so.
func TestParkKeepsPythonVariables(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{IdleAction: IdleSnapshot})
	ctx := context.Background()
	m := env.machine(t)
	mustPython(t, m, "x = 41\ndef f(n):\n    return n * x\nclass K:\n    v = 7", 0)
	snap, err := env.b.Idle(ctx, m.ID())
	if err != nil || snap == "" {
		t.Fatalf("parking: %q, %v", snap, err)
	}
	info, err := env.b.Create(ctx, backend.MachineSpec{FromSnapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	bm, err := env.b.Machine(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := mustPython(t, bm.(*Machine), "x + 1, f(2), K.v", time.Minute)
	if value(r) != "(42, 82, 7)" || !strings.Contains(r.StateRestored, "x") || r.StateReset != "" {
		t.Fatalf("after the park: %+v", r)
	}
}
