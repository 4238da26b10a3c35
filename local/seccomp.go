//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// A machine may not create user namespaces unless it asks for them
// (MachineSpec.AllowUserNamespaces): they widen the kernel's attack
// surface, and a process that could make one could also leave the UTS
// namespace that tracks its command. bwrap installs this seccomp filter
// last, for every process of the machine: unshare and clone with
// CLONE_NEWUSER fail with EPERM, clone3 (whose flags a filter cannot see)
// with ENOSYS, so that C libraries fall back to clone; system calls of
// another architecture (x32, 32-bit) fail with EPERM, as their numbers
// would slip past the filter.
//
// It does what bwrap's --disable-userns does without a nested user
// namespace, which costs time at every machine start (see the README).

// auditArch is the seccomp architecture of this build, 0 if the filter
// does not know it.
func auditArch() uint32 {
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64
	}
	return 0
}

// noUserNamespacesFilter is the seccomp program, as bwrap's --seccomp reads it.
func noUserNamespacesFilter() ([]byte, error) {
	arch := auditArch()
	if arch == 0 {
		return nil, fmt.Errorf("no seccomp filter for %s", runtime.GOARCH)
	}
	const (
		ldW    = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset   = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret    = unix.BPF_RET | unix.BPF_K
		allow  = unix.SECCOMP_RET_ALLOW
		eperm  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
		enosys = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
		x32bit = 0x40000000 // __X32_SYSCALL_BIT
	)
	prog := []unix.SockFilter{
		/* 0 */ {Code: ldW, K: 4}, // seccomp_data.arch
		/* 1 */ {Code: jeq, K: arch, Jt: 1},
		/* 2 */ {Code: ret, K: eperm},
		/* 3 */ {Code: ldW, K: 0}, // seccomp_data.nr
		/* 4 */ {Code: jset, K: x32bit, Jf: 1},
		/* 5 */ {Code: ret, K: eperm},
		/* 6 */ {Code: jeq, K: unix.SYS_CLONE3, Jf: 1},
		/* 7 */ {Code: ret, K: enosys},
		/* 8 */ {Code: jeq, K: unix.SYS_UNSHARE, Jt: 1},
		/* 9 */ {Code: jeq, K: unix.SYS_CLONE, Jf: 3},
		/* 10 */ {Code: ldW, K: 16}, // seccomp_data.args[0], low half (little-endian)
		/* 11 */ {Code: jset, K: unix.CLONE_NEWUSER, Jf: 1},
		/* 12 */ {Code: ret, K: eperm},
		/* 13 */ {Code: ret, K: allow},
	}
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, prog); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// seccompFile is a pipe from which bwrap reads the filter.
func seccompFile() (*os.File, error) {
	prog, err := noUserNamespacesFilter()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if _, err := w.Write(prog); err != nil { // a few hundred bytes: within the pipe's buffer
		r.Close()
		return nil, err
	}
	return r, nil
}
