//go:build linux && !vmcp_nolocal

package local

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
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
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmcp-dev/vmcp/internal/pipeio"
	"github.com/vmcp-dev/vmcp/local/guest"
	"github.com/vmcp-dev/vmcp/local/wire"
)

// A sandbox is a machine's running bubblewrap with the agent inside. The
// engine starts it as:
//
//	this binary __vmcp_init (in the machine's user and mount namespaces: waits
//	until placed in its cgroups, mounts its directories; see init.go)
//	→ exec bwrap → agent
const (
	initArg = "__vmcp_init"
	// agentArg starts this binary as the agent inside a sandbox (package
	// guest).
	agentArg     = "__vmcp_agent"
	sandboxUser  = 1000
	sandboxPath  = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	stderrKeep   = 8 << 10
	maxMaskPaths = 4096
)

// sandboxEnv is the whole environment of a machine's processes: nothing of
// the engine's own environment (and so none of its tokens) gets in.
func sandboxEnv(f Flavour, egress bool) []string {
	home, user := "/workspace", "sandbox"
	if f == VM {
		home, user = "/root", "root"
	}
	env := networkEnv(egress)
	return append(env,
		"PATH="+sandboxPath,
		"HOME="+home,
		"USER="+user,
		"LOGNAME="+user,
		"SHELL=/bin/bash",
		"LANG=C.UTF-8",
		"TERM=dumb",
		"TMPDIR=/tmp",
		"MPLBACKEND=Agg",
		"MPLCONFIGDIR=/tmp/.matplotlib",
		// Files change fast in a machine (an upload, then a run, within the
		// second): a cached .pyc with the old file's mtime and size would be
		// taken for the new one.
		"PYTHONDONTWRITEBYTECODE=1",
	)
}

// networkEnv is what programs in a machine need to know of its network:
// the proxy, for a machine with an allow-list; else that there is none, so
// that pip fails at once instead of retrying. pip installs into the machine
// (the user's site under its home, or a virtual environment), never the
// host: the system's site is read-only there, and PEP 668's marker is moot.
func networkEnv(egress bool) []string {
	env := []string{"PIP_BREAK_SYSTEM_PACKAGES=1", "PIP_DISABLE_PIP_VERSION_CHECK=1"}
	if !egress {
		return append(env, "PIP_RETRIES=0", "PIP_TIMEOUT=5")
	}
	proxy := "http://127.0.0.1:" + strconv.Itoa(wire.EgressPort)
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "npm_config_proxy", "npm_config_https_proxy"} {
		env = append(env, k+"="+proxy)
	}
	return append(env, "NO_PROXY=localhost,127.0.0.1,::1", "no_proxy=localhost,127.0.0.1,::1")
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

// sandboxCommand builds the init wrapper's command line for a machine, and
// the layout of its directories.
// egress, if set, is the machine's end of the socket pair over which its
// agent hands the engine each connection to ports, on the machine's
// loopback: the proxy's (an allow-list's) and its loopback services'.
func (e *Engine) sandboxCommand(m *Machine, info MachineInfo, egress *os.File, ports []int) (*exec.Cmd, []*os.File, layout, error) {
	l := info.Limits
	var files []*os.File
	var lay layout
	fail := func(err error) (*exec.Cmd, []*os.File, layout, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, lay, err
	}
	// The wrapper gets files after its gate, in order; it keeps them open
	// for bwrap, which passes them to the sandbox's first process.
	var keep []string
	pass := func(f *os.File) string {
		files = append(files, f)
		fd := strconv.Itoa(gateFD + len(files))
		keep = append(keep, fd)
		return fd
	}
	open := func(p string, flag int) (string, error) {
		f, err := os.OpenFile(p, flag|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		return pass(f), nil
	}
	exeFD, err := open(e.helper, unix.O_PATH)
	if err != nil {
		return fail(err)
	}
	home := "/workspace"
	if info.Flavour == VM {
		home = "/root"
	}
	agentArgs := []string{"/proc/self/fd/" + exeFD, agentArg,
		"--python", e.opts.Python,
		"--home", home,
		"--files", strconv.FormatInt(l.OpenFiles, 10),
		"--fsize", strconv.FormatInt(l.DiskBytes, 10),
	}
	if egress != nil {
		list := make([]string, len(ports))
		for i, p := range ports {
			list[i] = strconv.Itoa(p)
		}
		agentArgs = append(agentArgs, "--egress-fd", pass(egress), "--egress-ports", strings.Join(list, ","))
	}
	if !e.cgroups.enabled() {
		agentArgs = append(agentArgs,
			"--memory", strconv.FormatInt(l.MemoryBytes, 10),
			"--procs", strconv.FormatInt(l.Processes+agentReserve, 10))
	}
	merged := func(name string) string { return stageDir + "/merged/" + name }

	// The wrapper starts in a user namespace whose root is the machine's
	// host user, from its descriptor: that user may not traverse the
	// directories that hold this binary.
	cmd := exec.Command(e.helper)
	cmd.Path = "/proc/self/fd/" + exeFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true,
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS}
	var args, afterDev []string
	if !info.AllowUserNamespaces {
		f, err := seccompFile()
		if err != nil {
			return fail(err)
		}
		args = append(args, "--seccomp", pass(f))
	}
	switch info.Flavour {
	case Workspace:
		passwdFD, err := open(filepath.Join(e.opts.StateDir, "etc", "passwd"), os.O_RDONLY)
		if err != nil {
			return fail(err)
		}
		groupFD, err := open(filepath.Join(e.opts.StateDir, "etc", "group"), os.O_RDONLY)
		if err != nil {
			return fail(err)
		}
		if err := m.prepareWorkspace(); err != nil {
			return fail(err)
		}
		lay = layout{Empty: workspaceDirs, BindIfNoOverlay: true}
		uid, gid := e.sandboxHostIDs()
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
		args = append(args,
			"--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
			"--uid", strconv.Itoa(sandboxUser), "--gid", strconv.Itoa(sandboxUser),
			// The agent alone keeps these, in the sandbox's user namespace
			// (it drops them from what its children inherit): it gives each
			// command a namespace of its own, and finds its processes.
			"--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SYS_PTRACE",
			"--ro-bind", "/usr", "/usr")
		args = rootLinkArgs(args, "--ro-bind")
		args = append(args,
			"--ro-bind", "/etc", "/etc",
			"--ro-bind-data", passwdFD, "/etc/passwd",
			"--ro-bind-data", groupFD, "/etc/group",
			"--bind", merged("workspace"), "/workspace",
			// Scratch space is on the machine's disk, in its quota, and
			// emptied at each start: no tmpfs of a machine holds memory
			// beyond its limit.
			"--bind", merged("scratch")+"/tmp", "/tmp",
			"--bind", merged("scratch")+"/var-tmp", "/var/tmp")
		// Then its root (bwrap's tmpfs) is made read-only, once all is
		// mounted on it.
		afterDev = []string{"--bind", merged("scratch") + "/shm", "/dev/shm", "--remount-ro", "/"}
	case VM:
		var vmArgs []string
		if lay, vmArgs, err = e.prepareVM(m, info); err != nil {
			return fail(err)
		}
		base := e.opts.VMHostIDBase
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: vmIDs}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: vmIDs}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
		args = append(args, vmArgs...)
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

	b, _ := json.Marshal(lay)
	initFlags := []string{"--layout", string(b), "--keep-fds", strings.Join(keep, ",")}
	if nice := e.niceness(info); nice != 0 {
		initFlags = append(initFlags, "--nice", strconv.Itoa(nice))
	}
	cmd.Args = append(append(append([]string{e.helper, initArg}, initFlags...), "--", e.bwrap), args...)
	cmd.Env = sandboxEnv(info.Flavour, info.proxied())
	return cmd, files, lay, nil
}

// niceness is the CPU niceness a machine's sandbox starts at: a warm
// machine's until it is handed out (adopt), and none where the engine could
// not raise it again then (without cgroups, not root).
func (e *Engine) niceness(info MachineInfo) int {
	if info.Warm && e.cgroups.enabled() {
		return warmNice
	}
	return 0
}

// sandboxHostIDs are the host ids a workspace machine's user is: the
// engine's sandbox user when it runs as root, else the engine's own.
func (e *Engine) sandboxHostIDs() (uid, gid int) {
	if e.asRoot {
		return e.opts.SandboxUID, e.opts.SandboxGID
	}
	return os.Getuid(), os.Getgid()
}

// workspaceDirs are a workspace machine's directories: its files, and its
// scratch space (its /tmp, /var/tmp and /dev/shm).
var workspaceDirs = []string{"workspace", "scratch"}

// scratchDirs are the directories of a machine's scratch space.
var scratchDirs = []string{"tmp", "var-tmp", "shm"}

// upperDir and workDir are where a machine's directory name lives on the
// host, and its overlay's work directory.
func (m *Machine) upperDir(name string) string {
	if m.info.Flavour == VM {
		return filepath.Join(m.dir, "root", "upper", name)
	}
	return filepath.Join(m.dir, name)
}

func (m *Machine) workDir(name string) string {
	if m.info.Flavour == VM {
		return filepath.Join(m.dir, "root", "work", name)
	}
	return filepath.Join(m.dir, "overlay-work", name)
}

// prepareWorkspace empties and makes a workspace machine's scratch
// directories (its /tmp, /var/tmp and /dev/shm, which live on its disk,
// counted in its quota, until it stops) and its overlays' work
// directories, owned by its user.
func (m *Machine) prepareWorkspace() error {
	for _, d := range []string{"scratch", "overlay-work"} {
		if err := removeAll(filepath.Join(m.dir, d)); err != nil {
			return err
		}
	}
	dirs := []string{m.workDir("workspace"), m.workDir("scratch"), m.upperDir("scratch")}
	for _, name := range scratchDirs {
		dirs = append(dirs, filepath.Join(m.upperDir("scratch"), name))
	}
	for _, p := range dirs {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return err
		}
		if err := m.e.chownToSandbox(p); err != nil {
			return err
		}
	}
	for _, name := range scratchDirs {
		if err := os.Chmod(filepath.Join(m.upperDir("scratch"), name), 0o777|os.ModeSticky); err != nil {
			return err
		}
	}
	return nil
}

// vmShmBytes sizes a VM's /dev/shm, a tmpfs, within its memory limit.
func vmShmBytes(l Limits) int64 { return min(64<<20, l.MemoryBytes/4) }

// unsandboxedCommand starts the agent as a plain host process.
func (e *Engine) unsandboxedCommand(m *Machine, info MachineInfo) *exec.Cmd {
	ws := filepath.Join(m.dir, "workspace")
	cmd := exec.Command(e.helper, agentArg, "--python", e.opts.Python, "--home", ws,
		"--procs", strconv.FormatInt(info.Limits.Processes+agentReserve, 10),
		"--files", strconv.FormatInt(info.Limits.OpenFiles, 10),
		"--fsize", strconv.FormatInt(info.Limits.DiskBytes, 10),
		"--memory", strconv.FormatInt(info.Limits.MemoryBytes, 10))
	env := sandboxEnv(Workspace, false)
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

	// init is the sandbox's first process (bwrap's, pid 1 in its pid
	// namespace), pinned by a pidfd: /proc/<init>/root is the machine's
	// own view of its files.
	initPID, initFD int
}

// call is one request in flight; its handler runs on the reader goroutine,
// in order, so it must not block for long nor call back into the sandbox.
type call struct {
	id     uint64
	handle func(wire.Event) (final bool)
	done   chan struct{}
}

// startSandbox starts m's sandbox; the caller holds m.mu.
func (e *Engine) startSandbox(m *Machine, info MachineInfo) (*sandbox, error) {
	var cmd *exec.Cmd
	var files []*os.File
	var lay layout
	var gate *os.File       // the engine's end of the init wrapper's gate
	var egressHost *os.File // the engine's end of the machine's proxy socket pair
	defer func() {
		if egressHost != nil {
			egressHost.Close()
		}
	}()
	if e.opts.DangerouslyDisableSandbox {
		cmd = e.unsandboxedCommand(m, info)
	} else {
		var err error
		var machineEnd *os.File
		var ports []int // where the agent listens and hands connections to the engine
		if info.proxied() {
			ports = append(ports, wire.EgressPort)
		}
		if !info.AllowNetwork {
			ports = append(ports, m.loopbackPorts()...)
		}
		if len(ports) > 0 {
			pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return nil, err
			}
			egressHost, machineEnd = os.NewFile(uintptr(pair[0]), "egress"), os.NewFile(uintptr(pair[1]), "egress")
		}
		if cmd, files, lay, err = e.sandboxCommand(m, info, machineEnd, ports); err != nil {
			if egressHost != nil {
				egressHost.Close()
				machineEnd.Close()
			}
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
		err := e.openGate(gate, m, lay, cmd.Process.Pid)
		gate.Close()
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("start the sandbox: %w", err)
		}
	}
	sb.initFD = -1
	if egressHost != nil {
		go e.serveEgress(egressHost, m, info, filepath.Join(m.dir, "network.log"))
		egressHost = nil
	}
	go sb.read(pipeio.Reader(stdout))
	if err := sb.hello(); err != nil {
		sb.stop()
		return nil, err
	}
	if gate != nil {
		if err := sb.findInit(); err != nil {
			sb.stop()
			return nil, err
		}
	}
	return sb, nil
}

// sandboxStartTimeout bounds how long a sandbox may take to set itself up.
const sandboxStartTimeout = 30 * time.Second

// hello waits until the agent answers: the sandbox is set up.
func (sb *sandbox) hello() error {
	c, err := sb.start(wire.Request{Op: wire.OpHello}, func(wire.Event) bool { return true })
	if err != nil {
		return err
	}
	select {
	case <-c.done:
	case <-time.After(sandboxStartTimeout):
		return fmt.Errorf("the machine's sandbox did not start within %v", sandboxStartTimeout)
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.dead
}

// findInit finds and pins the sandbox's first process: the only child of
// bwrap (which the init wrapper became).
func (sb *sandbox) findInit() error {
	outer := sb.cmd.Process.Pid
	for _, pid := range childrenOf(outer) {
		if ppid(pid) != outer {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return fmt.Errorf("find the sandbox's first process: %w", err)
		}
		if ppid(pid) != outer { // it ended and its pid was taken meanwhile
			unix.Close(fd)
			break
		}
		sb.initPID, sb.initFD = pid, fd
		return nil
	}
	return errors.New("the machine's sandbox has no first process: it stopped while starting")
}

// childrenOf lists the children of a process: from its threads' children
// files where the kernel has them, else by scanning /proc.
func childrenOf(pid int) []int {
	var out []int
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err == nil {
		for _, t := range tasks {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + t.Name() + "/children")
			if err != nil {
				out = nil
				break
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
		if out != nil {
			return out
		}
	}
	for _, p := range guest.ProcPIDs() {
		if ppid(p) == pid {
			out = append(out, p)
		}
	}
	return out
}

// openRoot opens the directory dir of the machine as the machine itself
// sees it (through its first process's root), as an os.Root.
func (sb *sandbox) openRoot(dir string) (*os.Root, error) {
	r, err := os.OpenRoot("/proc/" + strconv.Itoa(sb.initPID) + "/root" + dir)
	if err != nil {
		return nil, err
	}
	// The pid was pinned: if its process still runs, r is its view.
	if unix.PidfdSendSignal(sb.initFD, 0, nil, 0) != nil {
		r.Close()
		return nil, errors.New("the machine's sandbox stopped")
	}
	return r, nil
}

// openGate puts the init wrapper pid into the machine's cgroups and lets it
// go on, with the machine's directories (see layout).
func (e *Engine) openGate(gate *os.File, m *Machine, lay layout, pid int) error {
	if err := e.cgroups.add(m.ID(), pid); err != nil {
		return fmt.Errorf("put it in its cgroup: %w", err)
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	// Through the wrapper's root: opened in its mount namespace.
	for _, name := range append(append([]string(nil), lay.Lower...), lay.Empty...) {
		for _, p := range []string{m.upperDir(name), m.workDir(name)} {
			fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/root"+p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open the machine's %s directory: %w", name, err)
			}
			fds = append(fds, fd)
		}
	}
	if len(lay.Lower) > 0 {
		trees, err := idmappedTrees(pid, lay.Lower)
		if err != nil {
			return err
		}
		fds = append(fds, trees...)
	}
	return unix.Sendmsg(int(gate.Fd()), []byte{1}, unix.UnixRights(fds...), nil, 0)
}

func (sb *sandbox) read(stdout io.Reader) {
	br := bufio.NewReaderSize(stdout, 256<<10)
	var err, malformed error
	for {
		var line []byte
		line, err = br.ReadBytes('\n')
		if len(line) > 0 {
			var ev wire.Event
			if jerr := json.Unmarshal(line, &ev); jerr != nil {
				malformed = fmt.Errorf("its agent sent a malformed event, so the sandbox was stopped: %w", jerr)
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
	if malformed != nil {
		sb.dead = fmt.Errorf("the machine's sandbox stopped (%w)", malformed)
	}
	if sb.initFD >= 0 {
		// bwrap's child dies with bwrap, and takes every process of the
		// machine with it before it is gone: wait for that.
		unix.PidfdSendSignal(sb.initFD, unix.SIGKILL, nil, 0)
		unix.Poll([]unix.PollFd{{Fd: int32(sb.initFD), Events: unix.POLLIN}}, 10000)
		unix.Close(sb.initFD)
		sb.initFD = -1
	}
	calls := sb.calls
	sb.calls = map[uint64]*call{}
	sb.mu.Unlock()
	for id, c := range calls {
		c.handle(wire.Event{Ev: wire.EvError, ID: id, Error: sb.dead.Error()})
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
func (sb *sandbox) start(req wire.Request, handle func(wire.Event) bool) (*call, error) {
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

func (sb *sandbox) send(req wire.Request) error {
	b, err := wire.EncodeRequest(req)
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
