package local

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vmcp-dev/vmcp/internal/pipeio"
)

// A sandbox is a machine's running bubblewrap with the agent inside. The
// engine starts it as:
//
//	this binary __vmcp_init (waits until placed in the machine's cgroup; for VM
//	machines, mounts the overlays) → exec bwrap → agent
const (
	initArg      = "__vmcp_init"
	sandboxUser  = 1000
	sandboxPath  = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	stderrKeep   = 8 << 10
	maxMaskPaths = 4096
)

// RunHelperIfRequested runs this process as a sandbox helper (the init
// wrapper or the agent) when the engine started it as one, and then exits.
// Call it first thing in main, and in TestMain of tests that use the engine.
func RunHelperIfRequested() {
	if len(os.Args) < 2 {
		return
	}
	switch os.Args[1] {
	case agentArg:
		os.Exit(runAgent(os.Args[2:]))
	case initArg:
		os.Exit(runInit(os.Args[2:]))
	}
}

// runInit waits on fd 3 (the gate) until the engine has put it into the
// machine's cgroups, builds a VM's filesystem if asked (with the mount
// trees the engine sends through the gate), and becomes bubblewrap.
func runInit(args []string) int {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	vm := fs.String("vm", "", "JSON layout of a VM's filesystem")
	keep := fs.String("keep-fds", "", "descriptors to pass on to bwrap, comma-separated")
	stage := fs.String("stage", "", "JSON list of host paths to bind under "+stageDir+" as 0, 1, …")
	uid := fs.Int("uid", -1, "host uid to become before starting bwrap")
	gid := fs.Int("gid", -1, "host gid to become before starting bwrap")
	if err := fs.Parse(args); err != nil || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "vmcp init: usage: __vmcp_init [--vm JSON] [--stage JSON] -- bwrap args")
		return 2
	}
	trees, ok := passGate()
	if !ok {
		return 1 // the engine gave up on this sandbox
	}
	if *vm != "" {
		var l vmLayout
		err := json.Unmarshal([]byte(*vm), &l)
		if err == nil {
			err = mountVM(l, trees)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmcp init: build the VM's filesystem:", err)
			return 1
		}
	}
	if *stage != "" {
		var paths []string
		err := json.Unmarshal([]byte(*stage), &paths)
		if err == nil {
			err = stageSources(paths)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmcp init: stage host paths:", err)
			return 1
		}
	}
	if *uid >= 0 {
		// Dropped here rather than at fork: the engine's binary may not be
		// executable by the sandbox user, bwrap is.
		if err := dropPrivileges(*uid, *gid); err != nil {
			fmt.Fprintln(os.Stderr, "vmcp init:", err)
			return 1
		}
	}
	closeInheritedFDs()
	for _, f := range strings.Split(*keep, ",") {
		if fd, err := strconv.Atoi(f); err == nil {
			unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
		}
	}
	argv := fs.Args()
	err := syscall.Exec(argv[0], argv, os.Environ())
	fmt.Fprintln(os.Stderr, "vmcp init: exec bwrap:", err)
	return 1
}

// gateFD is the init wrapper's end of the socket the engine opens it with.
const gateFD = 3

// passGate waits for the engine's go-ahead on the gate and returns the
// descriptors that came with it.
func passGate() (fds []int, ok bool) {
	var b [1]byte
	oob := make([]byte, unix.CmsgSpace(16*4))
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

// Descriptors the init wrapper is started with, after the gate. It keeps
// them open for bwrap, which passes them to the sandbox's first process:
// the agent runs from its descriptor (so no mount of the machine names the
// binary's host path), and bwrap copies the identity files in.
const (
	exeFD    = gateFD + 1 // this binary (O_PATH)
	passwdFD = gateFD + 2 // workspace machines: /etc/passwd and /etc/group
	groupFD  = gateFD + 3
)

// stageDir is where a root engine's init wrapper, in its own mount
// namespace, exposes the host paths bwrap binds into a workspace machine:
// bwrap runs as the unprivileged sandbox user, which cannot traverse the
// engine's state directory (nor, say, /root) to reach them.
const stageDir = "/run/vmcp-stage"

func stageSources(paths []string) error {
	// Opened before /run is covered, in case a path is under it.
	fds := make([]int, len(paths))
	for i, p := range paths {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", p, err)
		}
		fds[i] = fd
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	if err := os.Mkdir(stageDir, 0o755); err != nil {
		return err
	}
	for i, fd := range fds {
		src := "/proc/self/fd/" + strconv.Itoa(fd)
		dst := filepath.Join(stageDir, strconv.Itoa(i))
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			err = os.Mkdir(dst, 0o755)
		} else {
			err = os.WriteFile(dst, nil, 0o644)
		}
		if err != nil {
			return err
		}
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", paths[i], err)
		}
		unix.Close(fd)
	}
	return nil
}

// closeInheritedFDs marks every descriptor above stderr close-on-exec, so
// that nothing the engine's own parent leaked to it (a pipe, a socket)
// reaches the next program.
func closeInheritedFDs() {
	if unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	entries, _ := os.ReadDir("/proc/self/fd") // kernels before 5.11
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

func dropPrivileges(uid, gid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	// Changing credentials clears the parent-death signal; bwrap's
	// --die-with-parent sets its own, this covers the moment until then.
	return unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0)
}

// sandboxEnv is the whole environment of a machine's processes: nothing of
// the engine's own environment (and so none of its tokens) gets in.
func sandboxEnv(f Flavour) []string {
	home, user := "/workspace", "sandbox"
	if f == VM {
		home, user = "/root", "root"
	}
	return []string{
		"PATH=" + sandboxPath,
		"HOME=" + home,
		"USER=" + user,
		"LOGNAME=" + user,
		"SHELL=/bin/bash",
		"LANG=C.UTF-8",
		"TERM=dumb",
		"TMPDIR=/tmp",
		"MPLBACKEND=Agg",
		"MPLCONFIGDIR=/tmp/.matplotlib",
	}
}

// hostLinks are the top-level directories that are symlinks into /usr on
// merged-/usr systems and real directories elsewhere.
var hostLinks = []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

func rootLinkArgs(args []string, bind string) []string {
	for _, p := range hostLinks {
		fi, err := os.Lstat(p)
		switch {
		case err != nil:
		case fi.Mode()&fs.ModeSymlink != 0:
			if target, err := os.Readlink(p); err == nil {
				args = append(args, "--symlink", target, p)
			}
		case fi.IsDir():
			args = append(args, bind, p, p)
		}
	}
	return args
}

// vmLowerDirs are the host OS directories a VM machine sees through an
// overlay. Never home directories or anything else holding host secrets.
var vmLowerDirs = []string{"/usr", "/etc", "/var", "/opt"}

// vmOwnDirs are a VM machine's directories with no host content.
var vmOwnDirs = []string{"/root", "/home", "/tmp", "/srv", "/mnt"}

// sandboxCommand builds the init wrapper's command line for a machine.
func (e *Engine) sandboxCommand(m *Machine, info MachineInfo) (*exec.Cmd, []*os.File, error) {
	l := info.Limits
	var files []*os.File
	fail := func(err error) (*exec.Cmd, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	open := func(p string, flag int) error {
		f, err := os.OpenFile(p, flag|unix.O_CLOEXEC, 0)
		if err == nil {
			files = append(files, f)
		}
		return err
	}
	if err := open(e.helper, unix.O_PATH); err != nil {
		return fail(err)
	}
	home := "/workspace"
	if info.Flavour == VM {
		home = "/root"
	}
	agentArgs := []string{"/proc/self/fd/" + strconv.Itoa(exeFD), agentArg,
		"--python", e.opts.Python,
		"--home", home,
		"--files", strconv.FormatInt(l.OpenFiles, 10),
		"--fsize", strconv.FormatInt(l.DiskBytes, 10),
	}
	if !e.cgroups.enabled() {
		agentArgs = append(agentArgs,
			"--memory", strconv.FormatInt(l.MemoryBytes, 10),
			"--procs", strconv.FormatInt(l.Processes+agentReserve, 10))
	}

	var args, afterDev []string
	keep := []string{strconv.Itoa(exeFD)}
	var initFlags []string
	cmd := exec.Command(e.helper)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	switch info.Flavour {
	case Workspace:
		for _, p := range []string{"passwd", "group"} {
			if err := open(filepath.Join(e.opts.StateDir, "etc", p), os.O_RDONLY); err != nil {
				return fail(err)
			}
		}
		keep = append(keep, strconv.Itoa(passwdFD), strconv.Itoa(groupFD))
		scratch, err := m.newScratch()
		if err != nil {
			return fail(err)
		}
		// A root engine's workspace sandboxes run as the sandbox user, who
		// may not reach these paths: the init wrapper stages them (see
		// stageSources). Otherwise bwrap binds them directly.
		src := append([]string{filepath.Join(m.dir, "workspace")}, scratch...)
		if e.asRoot {
			b, _ := json.Marshal(src)
			initFlags = append(initFlags, "--stage", string(b),
				"--uid", strconv.Itoa(e.opts.SandboxUID), "--gid", strconv.Itoa(e.opts.SandboxGID))
			cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNS
			for i := range src {
				src[i] = stageDir + "/" + strconv.Itoa(i)
			}
		}
		args = append(args,
			"--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
			"--uid", strconv.Itoa(sandboxUser), "--gid", strconv.Itoa(sandboxUser),
			// The agent alone keeps these, in the sandbox's user namespace
			// (it drops them from what its children inherit): it gives each
			// command a namespace of its own, and finds its processes.
			"--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SYS_PTRACE")
		if !info.AllowUserNamespaces && e.bwrapHas("--disable-userns") {
			args = append(args, "--disable-userns")
		}
		args = append(args, "--ro-bind", "/usr", "/usr")
		args = rootLinkArgs(args, "--ro-bind")
		args = append(args,
			"--ro-bind", "/etc", "/etc",
			"--ro-bind-data", strconv.Itoa(passwdFD), "/etc/passwd",
			"--ro-bind-data", strconv.Itoa(groupFD), "/etc/group",
			"--bind", src[0], "/workspace",
			// Scratch space is on the machine's disk, in its quota, and
			// emptied at each start: no tmpfs of a machine holds memory
			// beyond its limit.
			"--bind", src[1], "/tmp",
			"--bind", src[2], "/var/tmp")
		// Then its root (bwrap's tmpfs) is made read-only, once all is
		// mounted on it.
		afterDev = []string{"--bind", src[3], "/dev/shm", "--remount-ro", "/"}
	case VM:
		lay, vmArgs, err := e.prepareVM(m, info)
		if err != nil {
			return fail(err)
		}
		// The wrapper runs from its descriptor: the VM's root may not
		// traverse the directories that hold this binary.
		cmd.Path = "/proc/self/fd/" + strconv.Itoa(exeFD)
		base := e.opts.VMHostIDBase
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: vmIDs}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: vmIDs}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
		args = append(args, vmArgs...)
		initFlags = append(initFlags, "--vm", vmFlag(lay))
		afterDev = []string{"--size", strconv.FormatInt(vmShmBytes(l), 10), "--tmpfs", "/dev/shm"}
	}
	if !info.AllowNetwork {
		args = append(args, "--unshare-net")
	}
	args = append(args, "--hostname", "vmcp", "--proc", "/proc", "--dev", "/dev")
	args = append(args, afterDev...)
	args = append(args,
		"--remount-ro", "/dev",
		"--die-with-parent", "--new-session",
		"--chdir", home,
		"--")
	args = append(args, agentArgs...)

	initFlags = append(initFlags, "--keep-fds", strings.Join(keep, ","))
	cmd.Args = append(append(append([]string{e.helper, initArg}, initFlags...), "--", e.bwrap), args...)
	cmd.Env = sandboxEnv(info.Flavour)
	return cmd, files, nil
}

// vmShmBytes sizes a VM's /dev/shm, a tmpfs, within its memory limit.
func vmShmBytes(l Limits) int64 { return min(64<<20, l.MemoryBytes/4) }

// newScratch empties and makes a workspace machine's scratch directories:
// its /tmp, /var/tmp and /dev/shm, which live on its disk (counted in its
// quota) and last until it stops.
func (m *Machine) newScratch() ([]string, error) {
	dir := filepath.Join(m.dir, "scratch")
	if err := removeAll(dir); err != nil {
		return nil, err
	}
	var out []string
	for _, name := range []string{"tmp", "var-tmp", "shm"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, err
		}
		if err := m.e.chownToSandbox(p); err != nil {
			return nil, err
		}
		if err := os.Chmod(p, 0o777|os.ModeSticky); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// unsandboxedCommand starts the agent as a plain host process.
func (e *Engine) unsandboxedCommand(m *Machine, info MachineInfo) *exec.Cmd {
	ws := filepath.Join(m.dir, "workspace")
	cmd := exec.Command(e.helper, agentArg, "--python", e.opts.Python, "--home", ws,
		"--procs", strconv.FormatInt(info.Limits.Processes+agentReserve, 10),
		"--files", strconv.FormatInt(info.Limits.OpenFiles, 10),
		"--fsize", strconv.FormatInt(info.Limits.DiskBytes, 10),
		"--memory", strconv.FormatInt(info.Limits.MemoryBytes, 10))
	env := sandboxEnv(Workspace)
	for i, kv := range env {
		if strings.HasPrefix(kv, "HOME=") {
			env[i] = "HOME=" + ws
		}
	}
	cmd.Env = env
	cmd.Dir = ws
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	return cmd
}

type maskedPath struct {
	path string
	dir  bool
}

var (
	secretsOnce sync.Once
	secrets     []maskedPath
)

// hostSecrets lists what under the VM lower directories is not readable by
// everyone (/etc/shadow, private keys, root-only directories under /var). A
// VM's root could read them through the overlay, so they are masked.
func hostSecrets() []maskedPath {
	secretsOnce.Do(func() {
		for _, root := range vmLowerDirs {
			if root == "/usr" {
				continue
			}
			filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil || len(secrets) >= maxMaskPaths {
					return filepath.SkipDir
				}
				if d.Type()&fs.ModeSymlink != 0 {
					return nil
				}
				fi, err := d.Info()
				if err != nil {
					return nil
				}
				perm := fi.Mode().Perm()
				switch {
				case d.IsDir() && perm&0o005 != 0o005:
					secrets = append(secrets, maskedPath{p, true})
					return filepath.SkipDir
				case fi.Mode().IsRegular() && perm&0o004 == 0:
					secrets = append(secrets, maskedPath{p, false})
				}
				return nil
			})
		}
	})
	return secrets
}

// sandbox is the engine's side of a running machine.
type sandbox struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	wmu   sync.Mutex // serialises writes to stdin

	mu     sync.Mutex
	calls  map[uint64]*call
	nextID uint64
	dead   error // why it ended, once it has

	done   chan struct{}
	stderr *tailBuffer
}

// call is one request in flight; its handler runs on the reader goroutine,
// in order, so it must not block for long nor call back into the sandbox.
type call struct {
	id     uint64
	handle func(event) (final bool)
	done   chan struct{}
}

// startSandbox starts m's sandbox; the caller holds m.mu.
func (e *Engine) startSandbox(m *Machine, info MachineInfo) (*sandbox, error) {
	var cmd *exec.Cmd
	var files []*os.File
	var gate *os.File // the engine's end of the init wrapper's gate
	if e.opts.DangerouslyDisableSandbox {
		cmd = e.unsandboxedCommand(m, info)
	} else {
		var err error
		if cmd, files, err = e.sandboxCommand(m, info); err != nil {
			return nil, err
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		gate = os.NewFile(uintptr(fds[0]), "gate")
		wrapperEnd := os.NewFile(uintptr(fds[1]), "gate")
		cmd.ExtraFiles = append([]*os.File{wrapperEnd}, files...)
		files = append(files, wrapperEnd)
		if err := e.cgroups.create(info.ID, info.Limits); err != nil {
			gate.Close()
			return nil, err
		}
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// Requests and events travel with raw system calls (see pipeio): they
	// are on the path of every call.
	sb := &sandbox{cmd: cmd, stdin: pipeio.WriteCloser(stdin), calls: map[uint64]*call{}, done: make(chan struct{}), stderr: &tailBuffer{max: stderrKeep}}
	cmd.Stderr = sb.stderr
	if err := cmd.Start(); err != nil {
		if gate != nil {
			gate.Close()
		}
		return nil, fmt.Errorf("start the sandbox: %w", err)
	}
	if gate != nil {
		err := e.openGate(gate, info, cmd.Process.Pid)
		gate.Close()
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("start the sandbox: %w", err)
		}
	}
	go sb.read(pipeio.Reader(stdout))
	return sb, nil
}

// openGate puts the init wrapper pid into the machine's cgroups and lets it
// go on, with a VM's idmapped mount trees.
func (e *Engine) openGate(gate *os.File, info MachineInfo, pid int) error {
	if err := e.cgroups.add(info.ID, pid); err != nil {
		return fmt.Errorf("put it in its cgroup: %w", err)
	}
	var rights []byte
	if info.Flavour == VM {
		var l vmLayout
		for _, d := range vmDirs() {
			l.Lower = append(l.Lower, strings.TrimPrefix(d, "/"))
		}
		fds, err := vmGateFDs(pid, filepath.Join(e.opts.StateDir, "machines", info.ID, "root"), l)
		if err != nil {
			return err
		}
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		rights = unix.UnixRights(fds...)
	}
	return unix.Sendmsg(int(gate.Fd()), []byte{1}, rights, nil, 0)
}

func (sb *sandbox) read(stdout io.Reader) {
	br := bufio.NewReaderSize(stdout, 256<<10)
	var err error
	for {
		var line []byte
		line, err = br.ReadBytes('\n')
		if len(line) > 0 {
			var ev event
			if jerr := json.Unmarshal(line, &ev); jerr != nil {
				err = fmt.Errorf("agent sent a malformed event: %w", jerr)
				break
			}
			sb.mu.Lock()
			c := sb.calls[ev.ID]
			sb.mu.Unlock()
			if c != nil && c.handle(ev) {
				sb.mu.Lock()
				delete(sb.calls, ev.ID)
				sb.mu.Unlock()
				close(c.done)
			}
		}
		if err != nil {
			break
		}
	}
	sb.cmd.Process.Kill()
	werr := sb.cmd.Wait()
	sb.mu.Lock()
	sb.dead = sb.describeEnd(werr)
	calls := sb.calls
	sb.calls = map[uint64]*call{}
	sb.mu.Unlock()
	for id, c := range calls {
		c.handle(event{Ev: evError, ID: id, Error: sb.dead.Error()})
		close(c.done)
	}
	close(sb.done)
}

func (sb *sandbox) describeEnd(err error) error {
	msg := strings.TrimSpace(sb.stderr.String())
	if msg == "" && err != nil {
		msg = err.Error()
	}
	if msg == "" {
		msg = "it exited"
	}
	return fmt.Errorf("the machine's sandbox stopped (%s)", msg)
}

// start sends a request and registers its handler. The returned call's done
// channel closes after the final event.
func (sb *sandbox) start(req request, handle func(event) bool) (*call, error) {
	c := &call{handle: handle, done: make(chan struct{})}
	sb.mu.Lock()
	if sb.dead != nil {
		sb.mu.Unlock()
		return nil, sb.dead
	}
	sb.nextID++
	req.ID = sb.nextID
	c.id = req.ID
	sb.calls[req.ID] = c
	sb.mu.Unlock()
	if err := sb.send(req); err != nil {
		sb.mu.Lock()
		delete(sb.calls, req.ID)
		sb.mu.Unlock()
		return nil, err
	}
	return c, nil
}

func (sb *sandbox) send(req request) error {
	b, err := encodeRequest(req)
	if err != nil {
		return err
	}
	sb.wmu.Lock()
	defer sb.wmu.Unlock()
	if _, err := sb.stdin.Write(b); err != nil {
		return fmt.Errorf("the machine's sandbox is not responding: %w", err)
	}
	return nil
}

// stop kills the sandbox and everything in it, and waits until it is gone.
func (sb *sandbox) stop() {
	// The process group holds the init wrapper (then bwrap); with
	// --die-with-parent and a private pid namespace, every process of the
	// machine dies with it.
	syscall.Kill(-sb.cmd.Process.Pid, syscall.SIGKILL)
	sb.stdin.Close()
	<-sb.done
}

func (sb *sandbox) alive() bool {
	select {
	case <-sb.done:
		return false
	default:
		return true
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.ToValidUTF8(t.buf, []byte("?")))
}
