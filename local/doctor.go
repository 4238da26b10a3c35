//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Checks of this host, for a user who asks whether machines can run here
// and what to fix (mcp-server doctor). Each does what the engine does, not
// an imitation of it, so that a check that passes means the engine works.

// errMissingBwrap is the engine's answer on a host without bubblewrap.
var errMissingBwrap = errors.New("bubblewrap (bwrap) is not installed, and vmcp needs it to isolate machines: " +
	"install it with `sudo apt-get install -y bubblewrap` (Debian/Ubuntu) or `sudo dnf install -y bubblewrap` (Fedora); " +
	"only if that is impossible, and only for code you trust, run with the sandbox disabled (--dangerously-disable-sandbox)" + cloudHint)

// CheckBubblewrap finds the bubblewrap the engine would use (Options.Bwrap,
// else bwrap on PATH) and asks its version.
func CheckBubblewrap(ctx context.Context, opts Options) (path, version string, err error) {
	name := opts.Bwrap
	if name == "" {
		name = "bwrap"
	}
	if path, err = exec.LookPath(name); err != nil {
		return "", "", errMissingBwrap
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		return path, "", fmt.Errorf("%s --version failed: %v %s: reinstall bubblewrap", path, err, oneLine(string(out)))
	}
	return path, strings.TrimSpace(string(out)), nil
}

// CheckUserNamespaces creates a user namespace, as every sandbox starts
// with, and runs `true` in it; its error says why it could not and what to
// do.
func CheckUserNamespaces(ctx context.Context) error {
	truePath, err := exec.LookPath("true")
	if err != nil {
		return fmt.Errorf("no `true` command on PATH to start in a user namespace: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, truePath)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		// "namespace" in the message lets diagnose name the cause.
		return diagnose(fmt.Errorf("create a user namespace: %v %s", err, out), readHostFacts())
	}
	return nil
}

// CgroupHierarchy names the cgroup hierarchy of this host: "v2" (unified)
// with the controllers it offers, "v1" with its hierarchies, or "none".
func CgroupHierarchy() (version string, controllers []string) {
	if b, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return "v2", strings.Fields(string(b))
	}
	entries, err := os.ReadDir(cgroupRoot)
	if err != nil {
		return "none", nil
	}
	for _, e := range entries {
		if e.IsDir() {
			controllers = append(controllers, e.Name())
		}
	}
	if len(controllers) == 0 {
		return "none", nil
	}
	return "v1", controllers
}

// Space is the free space of a state directory's filesystem, and what the
// engine keeps free there (Options.ReserveBytes and ReserveInodes, or their
// defaults): below the reserve it stops machines' writers and refuses new
// files.
type Space struct {
	FreeBytes, FreeInodes       uint64
	ReserveBytes, ReserveInodes uint64
}

// Low reports whether the filesystem is down to the reserve: the engine
// refuses new files.
func (s Space) Low() bool { return s.engine().low() }

// Near reports whether the filesystem is within two reserves of full: the
// engine watches machines' writes closely.
func (s Space) Near() bool { return s.engine().near() }

// engine is s as the engine keeps it.
func (s Space) engine() spaceInfo {
	return spaceInfo{freeBytes: s.FreeBytes, freeInodes: s.FreeInodes, reserveBytes: s.ReserveBytes, reserveInodes: s.ReserveInodes}
}

// FreeSpace measures the filesystem of dir as the engine of a state
// directory there would.
func FreeSpace(dir string, opts Options) (Space, error) {
	opts.StateDir = dir
	s, err := (&Engine{opts: opts}).stateSpace()
	return Space{FreeBytes: s.freeBytes, FreeInodes: s.freeInodes, ReserveBytes: s.reserveBytes, ReserveInodes: s.reserveInodes}, err
}

// SandboxCheck is what ProbeSandbox found.
type SandboxCheck struct {
	// Took is how long the sandbox took to start and run `true`.
	Took time.Duration
	// Cgroups is how machines' memory and processes are limited: "v2" or
	// "v1" (cgroups; the engine runs as root), or "none" (rlimits).
	Cgroups string
	// Python is the version of Options.Python run in the sandbox, "" when
	// it did not run: PythonErr says why.
	Python    string
	PythonErr error
}

// ProbeSandbox starts a sandbox exactly as a machine's, with opts's
// settings, on an engine of a state directory of its own under the
// temporary directory (removed after), and runs `true` and then Python in
// it. Unlike SelfTest it always probes: a pass earlier this boot is not
// taken for one now. Its error is SelfTest's diagnosis.
func ProbeSandbox(ctx context.Context, opts Options) (SandboxCheck, error) {
	dir, err := os.MkdirTemp("", "vmcp-doctor-")
	if err != nil {
		return SandboxCheck{}, err
	}
	defer removeAll(dir)
	opts.StateDir, opts.Warm, opts.CheckpointInterval = dir, WarmOptions{}, 0
	e, err := New(opts)
	if err != nil {
		return SandboxCheck{}, err
	}
	defer e.Close() // which removes its cgroups too
	check := SandboxCheck{Cgroups: e.cgroups.mode}
	// New's own self-test (a probe, unless one passed this boot) ends
	// first: it may fail, and it must not share the machine below.
	if err := e.SelfTest(ctx); err != nil {
		return check, err
	}
	info := MachineInfo{ID: "doctor", Flavour: Workspace, Limits: e.opts.Limits, CreatedAt: time.Now()}
	mdir := filepath.Join(dir, "probe")
	if err := e.prepareMachineDir(ctx, mdir, info, SnapshotInfo{}); err != nil {
		return check, err
	}
	m := newMachine(e, mdir, info)
	m.probe = true
	defer func() {
		m.Stop()
		e.cgroups.remove(info.ID)
	}()
	start := time.Now()
	res, err := m.Run(ctx, Command{Argv: []string{"true"}})
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("`true` exited with status %d in the sandbox: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
	}
	if err != nil {
		return check, diagnose(err, readHostFacts())
	}
	check.Took = time.Since(start)
	res, err = m.Run(ctx, Command{Argv: []string{e.opts.Python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"}, Timeout: 30 * time.Second})
	switch {
	case err != nil:
		check.PythonErr = fmt.Errorf("%s did not start in the sandbox: %v", e.opts.Python, err)
	case res.ExitCode != 0:
		check.PythonErr = fmt.Errorf("%s exited with status %d in the sandbox: %s", e.opts.Python, res.ExitCode, oneLine(res.Stderr))
	default:
		check.Python = strings.TrimSpace(res.Stdout)
	}
	return check, nil
}
