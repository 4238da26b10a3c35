//go:build linux

package vmrepl

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/internal/linesplit"
)

// hashWriter counts and hashes what it is given; stall, if set, runs
// before its first write.
type hashWriter struct {
	h     hash.Hash
	n     int64
	head  []byte
	stall func()
	once  sync.Once
}

func newHashWriter() *hashWriter { return &hashWriter{h: sha256.New()} }

func (w *hashWriter) Write(p []byte) (int, error) {
	if w.stall != nil {
		w.once.Do(w.stall)
	}
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

// TestOutputArrivesExactly: with PythonOptions.Stdout and Stderr, what the
// code prints reaches them exactly, every byte in order, past the cap of
// the result: a 10 MB line, bytes that are not UTF-8, fd 1 written
// directly, 64 MiB in one call, and output that a slow writer takes long
// after the code ended.
func TestOutputArrivesExactly(t *testing.T) {
	r, _ := newREPL(t, Options{})
	exec := func(code string, out, errw *hashWriter) {
		t.Helper()
		res := run(t, r, code, backend.PythonOptions{Timeout: 2 * time.Minute, Stdout: out, Stderr: errw})
		if res.Error != "" || res.Stdout != "" || res.Stderr != "" {
			t.Fatalf("%.80q: error %q, stdout %.80q, stderr %.80q (the writers take the output)", code, res.Error, res.Stdout, res.Stderr)
		}
	}
	out, errw := newHashWriter(), newHashWriter()
	exec("print('x'*10_000_000); print('tail')", out, errw)
	wantStream(t, "a 10 MB line", out, bytes.Repeat([]byte("x"), 10_000_000), []byte("\ntail\n"))
	wantStream(t, "stderr of a 10 MB line", errw)

	out, errw = newHashWriter(), newHashWriter()
	exec(`import os, sys
sys.stdout.buffer.write(b'\xff\xfeab\n')
sys.stderr.write('e' * 100_000)
sys.stdout.flush()
os.write(1, b'\x00raw\xff' + b'z' * 3_000_000)
sys.stdout.write('\n\x00vmcp-end-0123456789abcdef0123456789abcdef\npartial')`, out, errw)
	wantStream(t, "mixed stdout", out, []byte("\xff\xfeab\n\x00raw\xff"), bytes.Repeat([]byte("z"), 3_000_000),
		[]byte("\n\x00vmcp-end-0123456789abcdef0123456789abcdef\npartial"))
	wantStream(t, "mixed stderr", errw, bytes.Repeat([]byte("e"), 100_000))

	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i * 7)
	}
	var want [][]byte
	for range 64 {
		want = append(want, block)
	}
	out = newHashWriter()
	start := time.Now()
	exec(`import sys
block = bytes((i * 7) & 255 for i in range(1 << 20))
for i in range(64):
    sys.stdout.buffer.write(block)`, out, nil)
	wantStream(t, "64 MiB", out, want...)
	t.Logf("64 MiB of output in %v", time.Since(start))

	// The writer takes nothing for 3 s, longer than the host waits for an
	// idle output's end marker: the host holds the interpreter's output
	// back meanwhile, and loses none of it.
	out = newHashWriter()
	out.stall = func() { time.Sleep(3 * time.Second) }
	exec("import sys\nfor i in range(8):\n    sys.stdout.buffer.write(bytes([65 + i]) * (1 << 20))", out, nil)
	want = nil
	for i := range 8 {
		want = append(want, bytes.Repeat([]byte{byte(65 + i)}, 1<<20))
	}
	wantStream(t, "8 MiB to a stalled writer", out, want...)
	if res := run(t, r, "print('next')", backend.PythonOptions{}); res.Stdout != "next" {
		t.Fatalf("the next call: %+v", res)
	}
}

// TestOutputInResult: without writers the result holds the output whole up
// to the cap, with no line of its own added; past it, the head, a marker
// and the tail; OnOutput gets every line, a long one in pieces of at most
// 64 KiB; bytes that are not UTF-8 show as U+FFFD.
func TestOutputInResult(t *testing.T) {
	r, _ := newREPL(t, Options{})
	var pieces []string
	res := run(t, r, "print('y' * 900_000); print('tail')", backend.PythonOptions{OnOutput: func(stream, line string) {
		pieces = append(pieces, line)
	}})
	if res.Stdout != strings.Repeat("y", 900_000)+"\ntail" {
		t.Fatalf("a 900 kB line: %d bytes kept, tail %q", len(res.Stdout), res.Stdout[max(0, len(res.Stdout)-20):])
	}
	joined := 0
	for i, p := range pieces[:len(pieces)-1] {
		if len(p) > linesplit.MaxPiece || strings.Trim(p, "y") != "" {
			t.Fatalf("piece %d of %d: %d bytes", i, len(pieces), len(p))
		}
		joined += len(p)
	}
	if joined != 900_000 || pieces[len(pieces)-1] != "tail" {
		t.Fatalf("OnOutput: %d pieces holding %d bytes, then %q", len(pieces), joined, pieces[len(pieces)-1])
	}

	res = run(t, r, "print('x' * 10_000_000); print('tail')", backend.PythonOptions{})
	head, rest, ok := strings.Cut(res.Stdout, "\n[vmcp: ")
	if !ok || head != strings.Repeat("x", 1<<20) || !strings.Contains(rest, "bytes of stdout left out here") ||
		!strings.HasSuffix(rest, strings.Repeat("x", 1000)+"\ntail") {
		t.Fatalf("a 10 MB line: %d bytes kept, head %d bytes, rest %.200q", len(res.Stdout), len(head), rest)
	}
	if res := run(t, r, "print('x' * 70_000)", backend.PythonOptions{}); res.Stdout != strings.Repeat("x", 70_000) {
		t.Fatalf("a 70 kB line: %d bytes, tail %q", len(res.Stdout), res.Stdout[max(0, len(res.Stdout)-5):])
	}
	pieces = nil
	res = run(t, r, `import sys; sys.stdout.buffer.write(b'\xff\xfeab\n'); print('é' * 40_000)`, backend.PythonOptions{OnOutput: func(stream, line string) {
		pieces = append(pieces, line)
	}})
	if !strings.HasPrefix(res.Stdout, "\uFFFDab\n") || len(pieces) < 2 || pieces[0] != "\uFFFDab" {
		t.Fatalf("bytes that are not UTF-8: stdout %.20q, lines %.3q", res.Stdout, pieces)
	}
	if got := strings.Join(pieces[1:], ""); got != strings.Repeat("é", 40_000) {
		t.Fatalf("a long line of 2-byte characters, in %d pieces, is not whole: %d bytes, %d U+FFFD", len(pieces)-1, len(got), strings.Count(got, "\uFFFD"))
	}
}

// TestFloodAfterResult: a process of the code's that goes on writing to
// fd 1 after the code ended, which the driver's end marker no longer
// reaches, does not hold the call, with or without a writer.
func TestFloodAfterResult(t *testing.T) {
	r, _ := newREPL(t, Options{})
	start := time.Now()
	res := run(t, r, `import os, subprocess
flood = subprocess.Popen(['yes', 'flood'])
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
7`, backend.PythonOptions{Timeout: time.Minute, Stdout: io.Discard})
	if value(res) != "7" || time.Since(start) > 20*time.Second {
		t.Fatalf("%+v after %v", res, time.Since(start))
	}
	if res := run(t, r, "8", backend.PythonOptions{}); value(res) != "8" || time.Since(start) > 40*time.Second {
		t.Fatalf("%+v after %v", res, time.Since(start))
	}
	if res := run(t, r, "flood.kill(); flood.wait(); 9", backend.PythonOptions{}); value(res) != "9" {
		t.Fatalf("%+v", res)
	}
	t.Logf("the calls took %v", time.Since(start))
}
