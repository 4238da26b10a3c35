//go:build linux

package pipeio

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func nonblocking(t *testing.T, f *os.File) bool {
	t.Helper()
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return flags&unix.O_NONBLOCK != 0
}

// A pipe far larger than the kernel's buffer makes both ends wait in the
// poller: the writer while the pipe is full, the reader while it is empty.
func TestPipeCarriesEveryByteThenEOF(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rr, wc := Reader(r), WriteCloser(w)
	if _, ok := rr.(rawFile); !ok {
		t.Fatalf("Reader(os.Pipe reader) = %T, want the raw reader", rr)
	}
	if _, ok := wc.(io.Writer).(interface{ Close() error }); !ok {
		t.Fatal("WriteCloser lost Close")
	}
	want := make([]byte, 8<<20)
	rand.Read(want)
	werr := make(chan error, 1)
	go func() {
		// Uneven pieces, so that reads and writes do not line up.
		var err error
		for p := want; len(p) > 0 && err == nil; {
			n := min(len(p), 100_003)
			_, err = wc.Write(p[:n])
			p = p[n:]
		}
		if cerr := wc.Close(); err == nil {
			err = cerr
		}
		werr <- err
	}()
	got, err := io.ReadAll(rr)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, not the %d written", len(got), len(want))
	}
}

func TestReadOfAClosedFileFails(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rr := Reader(r)
	done := make(chan error, 1)
	go func() {
		_, err := rr.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the read wait in the poller
	r.Close()
	select {
	case err := <-done:
		if err == nil || err == io.EOF {
			t.Fatalf("read after close: %v, want an error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a read waiting on a closed file never returned")
	}
}

func TestWriteToAPipeWithoutReaderFails(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	defer w.Close()
	if _, err := WriteCloser(w).Write([]byte("x")); !errors.Is(err, unix.EPIPE) {
		t.Fatalf("write with no reader: %v, want EPIPE", err)
	}
}

// What is not a file in nonblocking mode is returned as it is: a raw read
// there would block a thread the scheduler thinks is running.
func TestOthersAreLeftAlone(t *testing.T) {
	if r := Reader(bytes.NewReader(nil)); !isBytesReader(r) {
		t.Fatalf("Reader(*bytes.Reader) = %T", r)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if r := Reader(f); r != io.Reader(f) {
		t.Fatalf("Reader(regular file) = %T, want the file", r)
	}
	if w := WriteCloser(f); w != io.WriteCloser(f) {
		t.Fatalf("WriteCloser(regular file) = %T, want the file", w)
	}
}

func isBytesReader(r io.Reader) bool { _, ok := r.(*bytes.Reader); return ok }

// Stdio switches pipes to nonblocking mode and back, and leaves regular
// files as they are.
func TestStdioRestoresBlockingMode(t *testing.T) {
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inR.Close()
	defer inW.Close()
	// os.NewFile of a blocking descriptor, as os.Stdin is.
	fd, err := unix.Dup(int(inR.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	in := os.NewFile(uintptr(fd), "stdin")
	defer in.Close()
	out, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()

	r, w, restore, err := Stdio(in, out)
	if err != nil {
		t.Fatal(err)
	}
	if !nonblocking(t, in) {
		t.Fatal("stdin, a pipe, is still blocking")
	}
	if w != io.Writer(out) {
		t.Fatalf("stdout, a regular file, came back as %T", w)
	}
	if _, err := inW.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "hello\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if _, err := w.Write([]byte("out")); err != nil {
		t.Fatal(err)
	}
	restore()
	if nonblocking(t, in) {
		t.Fatal("restore left stdin nonblocking")
	}
}
