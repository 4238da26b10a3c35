//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/internal/capture"
	"github.com/vmcp-dev/vmcp/local/guest"
)

// hashWriter counts and hashes what it is given, and keeps its first and
// last bytes for messages.
type hashWriter struct {
	h    hash.Hash
	n    int64
	head []byte
	tail []byte
}

func newHashWriter() *hashWriter { return &hashWriter{h: sha256.New()} }

func (w *hashWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	if len(w.head) < 64 {
		w.head = append(w.head, p[:min(len(p), 64-len(w.head))]...)
	}
	w.tail = append(w.tail, p...)
	if len(w.tail) > 64 {
		w.tail = append(w.tail[:0:0], w.tail[len(w.tail)-64:]...)
	}
	return len(p), nil
}

func (w *hashWriter) sum() string { return hex.EncodeToString(w.h.Sum(nil)) }

func sumOf(parts ...[]byte) (string, int64) {
	h := sha256.New()
	var n int64
	for _, p := range parts {
		h.Write(p)
		n += int64(len(p))
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

func wantStream(t *testing.T, what string, w *hashWriter, want ...[]byte) {
	t.Helper()
	sum, n := sumOf(want...)
	if w.sum() != sum || w.n != n {
		t.Fatalf("%s: got %d bytes (head %q, tail %q), want %d bytes with sha256 %s", what, w.n, w.head, w.tail, n, sum)
	}
}

// TestPythonOutputArrivesExactly: whatever the code prints reaches
// PythonOptions.Stdout and Stderr exactly, every byte in order: a 10 MB line,
// bytes that are not UTF-8, a partial line, the bytes of an end marker
// written as data, and 64 MiB in one call.
func TestPythonOutputArrivesExactly(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	exec := func(code string) (*PythonResult, *hashWriter, *hashWriter) {
		t.Helper()
		out, errw := newHashWriter(), newHashWriter()
		res := mustExec(t, m, code, PythonOptions{Timeout: 2 * time.Minute, Stdout: out, Stderr: errw})
		if res.Error != "" || res.Stdout != "" || res.Stderr != "" {
			t.Fatalf("%.80q: error %q, stdout %.80q, stderr %.80q (the writers take the output)", code, res.Error, res.Stdout, res.Stderr)
		}
		return res, out, errw
	}

	_, out, errw := exec("print('x'*10_000_000); print('tail')")
	wantStream(t, "a 10 MB line", out, bytes.Repeat([]byte("x"), 10_000_000), []byte("\ntail\n"))
	wantStream(t, "stderr of a 10 MB line", errw)

	_, out, _ = exec(`import sys; sys.stdout.buffer.write(b'\xff\xfeab\n')`)
	wantStream(t, "bytes that are not UTF-8", out, []byte("\xff\xfeab\n"))

	_, out, errw = exec(`import sys
sys.stderr.write('e' * 100_000)
sys.stdout.write('a' * 70_000 + '\n\n')
sys.stdout.buffer.write(b'\x00vmcp-end-0123456789abcdef0123456789abcdef\n\x00')
print('no newline', end='')`)
	wantStream(t, "stdout of mixed writes", out, bytes.Repeat([]byte("a"), 70_000), []byte("\n\n\x00vmcp-end-0123456789abcdef0123456789abcdef\n\x00no newline"))
	wantStream(t, "stderr of mixed writes", errw, bytes.Repeat([]byte("e"), 100_000))

	// fd 1 itself, as subprocesses and C code write it: 10 MB without a
	// newline, and bytes that are not UTF-8.
	_, out, _ = exec(`import os
data = b'\xff' + b'z' * 10_000_000
view = memoryview(data)
while view:
    view = view[os.write(1, view):]`)
	wantStream(t, "10 MB on fd 1", out, []byte{0xff}, bytes.Repeat([]byte("z"), 10_000_000))

	// 64 MiB of every byte value, in writes of all sizes.
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i * 7)
	}
	res, out, _ := exec(`import sys
block = bytes((i * 7) & 255 for i in range(1 << 20))
for i in range(64):
    sys.stdout.buffer.write(block[:i * 1000])
    sys.stdout.buffer.write(block[i * 1000:])`)
	want := make([][]byte, 64)
	for i := range want {
		want[i] = block
	}
	wantStream(t, "64 MiB", out, want...)
	t.Logf("64 MiB of output in %v", res.Runtime)
}

// stallWriter sleeps before its first write.
type stallWriter struct {
	*hashWriter
	stall time.Duration
}

func (w *stallWriter) Write(p []byte) (int, error) {
	if w.stall > 0 {
		time.Sleep(w.stall)
		w.stall = 0
	}
	return w.hashWriter.Write(p)
}

// TestPythonOutputToASlowWriter: output still on its way when the result
// comes (the writer took nothing for longer than the agent waits for an
// idle output's end marker) arrives whole, before RunPython returns.
func TestPythonOutputToASlowWriter(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	out := &stallWriter{newHashWriter(), 3 * time.Second}
	res := mustExec(t, m, "for i in range(100):\n    print('%999d' % i)", PythonOptions{Stdout: out})
	if res.Error != "" {
		t.Fatalf("error %q", res.Error)
	}
	var want []byte
	for i := range 100 {
		want = fmt.Appendf(want, "%999d\n", i)
	}
	wantStream(t, "100 kB to a stalled writer", out.hashWriter, want)
}

// TestPythonOutputInResult: without writers, the result holds the output
// whole up to 1 MiB, with no line of its own added, and says when it was
// cut; OnOutput gets every line, a long one in pieces of at most 64 KiB;
// bytes that are not UTF-8 show as U+FFFD.
func TestPythonOutputInResult(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	var pieces []string
	res := mustExec(t, m, "print('y' * 900_000); print('tail')", PythonOptions{OnOutput: func(stream, line string) {
		pieces = append(pieces, line)
	}})
	if res.Stdout != strings.Repeat("y", 900_000)+"\ntail" || res.StdoutTruncated {
		t.Fatalf("a 900 KB line: %d bytes kept (truncated %v), tail %q", len(res.Stdout), res.StdoutTruncated, res.Stdout[max(0, len(res.Stdout)-20):])
	}
	joined := 0
	for i, p := range pieces[:len(pieces)-1] {
		if len(p) > guest.MaxPythonLine || strings.Trim(p, "y") != "" {
			t.Fatalf("piece %d of %d: %d bytes", i, len(pieces), len(p))
		}
		joined += len(p)
	}
	if joined != 900_000 || pieces[len(pieces)-1] != "tail" {
		t.Fatalf("OnOutput: %d pieces holding %d bytes, then %q", len(pieces), joined, pieces[len(pieces)-1])
	}

	res = mustExec(t, m, "print('x' * 10_000_000); print('tail')", PythonOptions{})
	if len(res.Stdout) != capture.DefaultMax || strings.Trim(res.Stdout, "x") != "" || !res.StdoutTruncated {
		t.Fatalf("a 10 MB line: %d bytes kept (truncated %v), want the first %d", len(res.Stdout), res.StdoutTruncated, capture.DefaultMax)
	}
	res = mustExec(t, m, "print('x' * 70_000)", PythonOptions{})
	if res.Stdout != strings.Repeat("x", 70_000) {
		t.Fatalf("a 70 kB line: %d bytes, tail %q", len(res.Stdout), res.Stdout[max(0, len(res.Stdout)-5):])
	}
	pieces = nil
	res = mustExec(t, m, `import sys; sys.stdout.buffer.write(b'\xff\xfeab\n'); print('é' * 40_000)`, PythonOptions{OnOutput: func(stream, line string) {
		pieces = append(pieces, line)
	}})
	if !strings.HasPrefix(res.Stdout, "\uFFFDab\n") || len(pieces) < 2 || pieces[0] != "\uFFFDab" {
		t.Fatalf("bytes that are not UTF-8: stdout %.20q, lines %.3q", res.Stdout, pieces)
	}
	if got := strings.Join(pieces[1:], ""); got != strings.Repeat("é", 40_000) {
		t.Fatalf("a long line of 2-byte characters, in %d pieces, is not whole: %d bytes, %d U+FFFD", len(pieces)-1, len(got), strings.Count(got, "\uFFFD"))
	}
}

// TestPythonOutputSurvivesInterrupts: code stopped by its timeout in the
// middle of heavy output leaves the next instruction's output clean.
func TestPythonOutputSurvivesInterrupts(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	for i := 0; i < 3; i++ {
		res := mustExec(t, m, "import sys\nwhile True:\n    print('y' * 50_000)\n    sys.stdout.write('z' * 40_000)", PythonOptions{Timeout: time.Second, Stdout: io.Discard})
		if !res.TimedOut {
			t.Fatalf("no timeout: %+v", res)
		}
		out := newHashWriter()
		res = mustExec(t, m, "print('next')\n7", PythonOptions{Stdout: out})
		if value(res) != "7" || res.Error != "" {
			t.Fatalf("after an interrupted flood: %+v", res)
		}
		wantStream(t, "the next instruction's output", out, []byte("next\n"))
	}
}

// TestCommandOutputArrivesExactly: a command's 10 MB without a newline and
// bytes that are not UTF-8 reach the writers exactly, and the result's first
// MaxOutput bytes are exact too.
func TestCommandOutputArrivesExactly(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	script := `head -c 10000000 /dev/zero | tr '\0' x; printf '\377\376'; printf '\377' >&2; head -c 3000000 /dev/zero >&2`
	want := append(bytes.Repeat([]byte("x"), 10_000_000), 0xff, 0xfe)
	wantErr := append([]byte{0xff}, make([]byte, 3_000_000)...)
	out, errw := newHashWriter(), newHashWriter()
	res := mustRun(t, m, Command{Shell: script, Stdout: out, Stderr: errw})
	if res.ExitCode != 0 || res.Stdout != "" || res.StdoutBytes != int64(len(want)) {
		t.Fatalf("result %+v", res)
	}
	wantStream(t, "stdout", out, want)
	wantStream(t, "stderr", errw, wantErr)

	res = mustRun(t, m, Command{Shell: script})
	if res.Stdout != string(want[:capture.DefaultMax]) || !res.StdoutTruncated || res.StdoutBytes != int64(len(want)) {
		t.Fatalf("capped stdout: %d bytes, truncated %v, total %d", len(res.Stdout), res.StdoutTruncated, res.StdoutBytes)
	}
	if res.Stderr != string(wantErr[:capture.DefaultMax]) || !res.StderrTruncated {
		t.Fatalf("capped stderr: %d bytes, truncated %v", len(res.Stderr), res.StderrTruncated)
	}
	res = mustRun(t, m, Command{Shell: `printf 'a\377b'`})
	if res.Stdout != "a\xffb" {
		t.Fatalf("bytes that are not UTF-8: %q", res.Stdout)
	}
}

// TestPythonOutputFloodAfterResult: a process of the code's that goes on
// writing to fd 1 after the code ended, which the driver's end marker no
// longer reaches, does not hold the call: the wait for the marker ends
// after a bounded flood, as it does for an output that goes quiet.
func TestPythonOutputFloodAfterResult(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	start := time.Now()
	res := mustExec(t, m, `import os, subprocess
flood = subprocess.Popen(['yes', 'flood'])
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
7`, PythonOptions{Timeout: time.Minute, Stdout: io.Discard})
	if value(res) != "7" || time.Since(start) > 20*time.Second {
		t.Fatalf("%+v after %v", res, time.Since(start))
	}
	if res := mustExec(t, m, "flood.kill(); flood.wait(); 8", PythonOptions{Stdout: io.Discard}); value(res) != "8" {
		t.Fatalf("%+v", res)
	}
	t.Logf("the flooded call took %v", time.Since(start))
}

// TestHugeValueIsBounded: a value's repr, or an error's text, crosses to the
// host at most 16 Mi characters long (its head and tail), whatever its size.
func TestHugeValueIsBounded(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	res := mustExec(t, m, "'a' * (40 << 20)", PythonOptions{Timeout: time.Minute})
	if res.Value == nil || len(*res.Value) > 16<<20+100 || !strings.Contains(*res.Value, "characters omitted") || !strings.HasSuffix(*res.Value, "aaa'") {
		t.Fatalf("a 40 MiB value came back with %d bytes", len(fmt.Sprint(res.Value)))
	}
	res = mustExec(t, m, "raise ValueError('b' * (40 << 20))", PythonOptions{Timeout: time.Minute})
	if len(res.Error) > 16<<20+100 || !strings.Contains(res.Error, "characters omitted") {
		t.Fatalf("a 40 MiB error came back with %d bytes", len(res.Error))
	}
}

// TestCommandOutputKeptInTheMachine: with SaveOutput, a long stream is kept
// whole in a file of the machine by the agent, and only its head and tail
// cross to the host.
func TestCommandOutputKeptInTheMachine(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	var whole bytes.Buffer
	for i := 1; i <= 1000000; i++ {
		fmt.Fprintf(&whole, "%d\n", i)
	}
	var head bytes.Buffer
	res, err := m.Run(context.Background(), Command{Shell: "seq 1 1000000; echo oops >&2", Stdout: &head, Stderr: io.Discard,
		SaveOutput: ".vmcp/output/t1", Keep: 1000, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Saved[0]
	if head.String() != whole.String()[:1000] || s.Total != int64(whole.Len()) || s.Lines != 1000000 ||
		string(s.Tail) != whole.String()[whole.Len()-1000:] || s.Path != ".vmcp/output/t1/stdout" || s.Partial || s.Err != "" {
		t.Fatalf("head %d bytes, saved %+v", head.Len(), struct {
			Total, Lines int64
			Path         string
			Partial      bool
			Err          string
		}{s.Total, s.Lines, s.Path, s.Partial, s.Err})
	}
	var file bytes.Buffer
	if _, err := m.ReadFile(context.Background(), s.Path, &file); err != nil || !bytes.Equal(file.Bytes(), whole.Bytes()) {
		t.Fatalf("the file in the machine: %d bytes, %v", file.Len(), err)
	}
	if e := res.Saved[1]; e.Total != 5 || e.Path != "" || string(e.Tail) != "" {
		t.Fatalf("a short stderr: %+v", e)
	}

	// Past SaveMax the file stops, and says so.
	res, err = m.Run(context.Background(), Command{Shell: "seq 1 1000000", Stdout: io.Discard, SaveOutput: ".vmcp/output/t2", Keep: 1000, SaveMax: 10000})
	if err != nil || !res.Saved[0].Partial || res.Saved[0].Total != int64(whole.Len()) {
		t.Fatalf("SaveMax: %+v, %v", res.Saved, err)
	}
	if fi, err := m.Stat(context.Background(), ".vmcp/output/t2/stdout"); err != nil || fi.Size != 10000 {
		t.Fatalf("the file past SaveMax: %+v, %v", fi, err)
	}
	for _, bad := range []string{"../x", "/tmp/x", "a/../../x", "."} {
		if _, err := m.Run(context.Background(), Command{Shell: "true", SaveOutput: bad, Keep: 10}); err == nil {
			t.Errorf("SaveOutput %q: no error", bad)
		}
	}
}
