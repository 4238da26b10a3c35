//go:build linux && !vmcp_nolocal

package local

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmcp-dev/vmcp/local/guest"
	"golang.org/x/sys/unix"
)

// The init wrapper is this binary started by the engine (argv[1] ==
// initArg) in a user and mount namespace of the machine's own: root there
// is the machine's host user (the sandbox user, or a VM's id range). It
// waits at the gate until the engine has put it in the machine's cgroups
// and sent it the machine's directories, mounts them, and becomes bwrap.
//
// Every directory of a machine is an overlay over an empty (or, for a VM,
// the host's idmapped) layer: the upper directory, the machine's files on
// the host, is given as /proc/self/fd/N, so no mount of the machine names
// a host path (mountinfo shows overlay options as they were given). The
// engine then works on a running machine's files through the machine's
// own mount (/proc/<pid>/root/…), as an overlay requires.

// gateFD is the init wrapper's end of the socket the engine opens it with.
const gateFD = 3

// stageDir is where the init wrapper mounts the machine's directories, in
// its own mount namespace, for bwrap to bind into place.
const stageDir = "/run/vmcp-stage"

// layout is what the init wrapper mounts under stageDir/merged. Through the
// gate come, for each name of Lower then of Empty, the overlay's upper and
// work directories (opened in the wrapper's mount namespace: an overlay
// takes only mounts of its own), then, for each name of Lower, a detached
// idmapped tree of the host directory /<name>.
type layout struct {
	Lower []string `json:"lower,omitempty"` // VM: host directories, as lower layers
	Empty []string `json:"empty"`           // directories over an empty layer
	// BindIfNoOverlay: where overlays cannot be mounted (kernels before
	// 5.11, filesystems without user extended attributes), bind the upper
	// directories instead, which shows their host paths.
	BindIfNoOverlay bool `json:"bind_if_no_overlay,omitempty"`
}

// RunHelperIfRequested runs this process as a sandbox helper (the init
// wrapper or the agent) when the engine started it as one, and then exits.
// Call it first thing in main, and in TestMain of tests that use the engine.
func RunHelperIfRequested() {
	if len(os.Args) < 2 {
		return
	}
	switch os.Args[1] {
	case agentArg:
		os.Exit(guest.Run(os.Args[2:]))
	case initArg:
		os.Exit(runInit(os.Args[2:]))
	}
}

func runInit(args []string) int {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	mounts := fs.String("layout", "", "JSON layout of the machine's directories")
	keep := fs.String("keep-fds", "", "descriptors to pass on to bwrap, comma-separated")
	nice := fs.Int("nice", 0, "CPU niceness of the sandbox's processes (a warm machine's until it is handed out)")
	if err := fs.Parse(args); err != nil || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "vmcp init: usage: __vmcp_init --layout JSON [--keep-fds N,…] -- bwrap args")
		return 2
	}
	if *nice != 0 {
		// Niceness is a thread's: this goroutine stays on the thread that
		// execs bwrap, which passes it on to all that follows.
		runtime.LockOSThread()
		unix.Setpriority(unix.PRIO_PROCESS, 0, *nice)
	}
	fds, ok := passGate()
	if !ok {
		return 1 // the engine gave up on this sandbox
	}
	var l layout
	err := json.Unmarshal([]byte(*mounts), &l)
	if err == nil {
		err = mountLayout(l, fds)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmcp init: mount the machine's directories:", err)
		return 1
	}
	guest.CloseInheritedFDs()
	for _, f := range strings.Split(*keep, ",") {
		if fd, err := strconv.Atoi(f); err == nil {
			unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
		}
	}
	argv := fs.Args()
	err = syscall.Exec(argv[0], argv, os.Environ())
	fmt.Fprintln(os.Stderr, "vmcp init: exec bwrap:", err)
	return 1
}

// passGate waits for the engine's go-ahead on the gate and returns the
// descriptors that came with it.
func passGate() (fds []int, ok bool) {
	var b [1]byte
	oob := make([]byte, unix.CmsgSpace(64*4))
	n, oobn, _, _, err := unix.Recvmsg(gateFD, b[:], oob, 0)
	unix.Close(gateFD)
	if err != nil || n != 1 {
		return nil, false
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for i := range msgs {
		rights, err := unix.ParseUnixRights(&msgs[i])
		if err == nil {
			fds = append(fds, rights...)
		}
	}
	return fds, true
}

// mountLayout mounts l under stageDir with the descriptors from the gate.
func mountLayout(l layout, fds []int) error {
	names := append(append([]string(nil), l.Lower...), l.Empty...)
	if len(fds) != 2*len(names)+len(l.Lower) {
		return fmt.Errorf("got %d descriptors for %d directories", len(fds), len(names))
	}
	trees := fds[2*len(names):]
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	empty := stageDir + "/empty"
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return err
	}
	for i, name := range names {
		lower := empty
		if i < len(l.Lower) {
			lower = stageDir + "/lower/" + name
			if err := os.MkdirAll(lower, 0o755); err != nil {
				return err
			}
			if err := unix.MoveMount(trees[i], "", unix.AT_FDCWD, lower, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("attach /%s: %w", name, err)
			}
			unix.Close(trees[i])
		}
		merged := stageDir + "/merged/" + name
		if err := os.MkdirAll(merged, 0o755); err != nil {
			return err
		}
		upper, work := "/proc/self/fd/"+strconv.Itoa(fds[2*i]), "/proc/self/fd/"+strconv.Itoa(fds[2*i+1])
		err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work+",userxattr")
		if err != nil && l.BindIfNoOverlay {
			err = unix.Mount(upper, merged, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("mount the overlay of %s: %w", name, err)
		}
	}
	return nil
}
