//go:build linux

// Package pipeio reads and writes pipes with raw system calls on nonblocking
// descriptors, waiting in the Go runtime's poller while a pipe is empty or
// full.
//
// Why: os.File's Read and Write enter the runtime's blocking-system-call
// path, and entering it wakes the runtime's monitor thread (sysmon) whenever
// the process was idle; sysmon then polls every 20 µs until the process is
// idle again. A server that sleeps between requests paid that on every
// request: on a 2-vCPU VM, sysmon's sleeps and wake-ups were about half of
// the server's context switches during a run_python call, and they took CPU
// from the sandbox the call waits for. A read or write on a nonblocking
// descriptor never blocks, so it needs none of that bookkeeping.
//
// The race detector does not see the order that data passing through these
// pipes implies (os.File's I/O tells it; raw system calls cannot), so code
// that relies on that order must also synchronise in Go.
package pipeio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawFile reads and writes a file that is in nonblocking mode and registered
// with the poller.
type rawFile struct {
	rc syscall.RawConn
}

// Read reads once, waiting in the poller until the pipe has data.
func (f rawFile) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := f.rc.Read(func(fd uintptr) bool {
		n, errno = rawIO(unix.SYS_READ, fd, p)
		return errno != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, errno
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting in the poller while the pipe is full.
func (f rawFile) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		var n int
		var errno syscall.Errno
		err := f.rc.Write(func(fd uintptr) bool {
			n, errno = rawIO(unix.SYS_WRITE, fd, p[written:])
			return errno != syscall.EAGAIN
		})
		if err != nil {
			return written, err
		}
		if errno != 0 {
			return written, errno
		}
		written += n
	}
	return written, nil
}

// rawIO makes one read or write without telling the scheduler, retrying
// when a signal interrupts it.
func rawIO(trap, fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if errno != syscall.EINTR {
			if errno != 0 {
				return 0, errno
			}
			return int(n), 0
		}
	}
}

// syscallConn is what an *os.File offers, and so whatever embeds one, such
// as the pipe exec.Cmd's StdinPipe returns.
type syscallConn interface {
	SyscallConn() (syscall.RawConn, error)
}

// raw returns a rawFile for v if it is a file in nonblocking mode.
func raw(v any) (rawFile, bool) {
	c, ok := v.(syscallConn)
	if !ok {
		return rawFile{}, false
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return rawFile{}, false
	}
	nonblocking := false
	if err := rc.Control(func(fd uintptr) {
		flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		nonblocking = err == nil && flags&unix.O_NONBLOCK != 0
	}); err != nil || !nonblocking {
		return rawFile{}, false
	}
	return rawFile{rc}, true
}

// Reader returns a reader of r that uses raw system calls when r is a file
// in nonblocking mode, such as a pipe from os.Pipe or exec.Cmd.StdoutPipe;
// otherwise it returns r.
func Reader(r io.Reader) io.Reader {
	if f, ok := raw(r); ok {
		return f
	}
	return r
}

// WriteCloser returns a writer of w that uses raw system calls when w is a
// file in nonblocking mode, such as a pipe from os.Pipe or
// exec.Cmd.StdinPipe, and closes w; otherwise it returns w.
func WriteCloser(w io.WriteCloser) io.WriteCloser {
	if f, ok := raw(w); ok {
		return struct {
			io.Writer
			io.Closer
		}{f, w}
	}
	return w
}

// Stdio returns a reader of in and a writer of out for a process's
// standard input and output. Each that is a pipe or a socket is switched to
// nonblocking mode and used with raw system calls; restore switches them
// back, for whoever shares them once this process is done. A terminal or a
// regular file is used as it is.
func Stdio(in, out *os.File) (r io.Reader, w io.Writer, restore func(), err error) {
	r, restoreIn, err := std(in)
	if err != nil {
		return nil, nil, nil, err
	}
	w, restoreOut, err := std(out)
	if err != nil {
		restoreIn()
		return nil, nil, nil, err
	}
	return r, w, func() { restoreIn(); restoreOut() }, nil
}

// std returns a raw file for f if it is a pipe or a socket, and the function
// that puts it back in blocking mode; otherwise f and a no-op.
func std(f *os.File) (io.ReadWriter, func(), error) {
	none := func() {}
	var st unix.Stat_t
	fd := int(f.Fd())
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, none, fmt.Errorf("pipeio: stat %s: %w", f.Name(), err)
	}
	if kind := st.Mode & unix.S_IFMT; kind != unix.S_IFIFO && kind != unix.S_IFSOCK {
		return f, none, nil
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, none, fmt.Errorf("pipeio: %s: %w", f.Name(), err)
	}
	// A new *os.File registers with the poller (f never will), on a
	// duplicate, so that closing it, as its finalizer would, leaves fd
	// open. The mode belongs to the pipe, so the duplicate shares it.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.SetNonblock(fd, false)
		return nil, none, fmt.Errorf("pipeio: duplicate %s: %w", f.Name(), err)
	}
	pf := os.NewFile(uintptr(dup), f.Name())
	rf, ok := raw(pf)
	if !ok {
		pf.Close()
		unix.SetNonblock(fd, false)
		return nil, none, errors.New("pipeio: " + f.Name() + " cannot be polled")
	}
	return rf, func() {
		unix.SetNonblock(fd, false)
		pf.Close()
	}, nil
}
