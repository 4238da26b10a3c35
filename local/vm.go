//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmcp-dev/vmcp/internal/safefs"
)

// A VM machine's root is root of its own user namespace only: ids 0-65535
// inside map to an unprivileged range of host ids (Options.VMHostIDBase),
// so files it creates belong on the host to that range, a setuid file it
// leaves is setuid to that range, and the kernel refuses it what only the
// host's root may do (/proc/sys, /proc/sysrq-trigger, other users' files).
//
// Its root filesystem is one overlay per host OS directory. The lower
// layers are the host's directories seen through idmapped mounts (made by
// the engine, which is root, for the VM's user namespace), so that files
// the host's root owns look owned by the VM's root, which may then change
// them: the change lands in the machine's upper directory only. Its own
// directories (/, /root, /tmp…) are overlays over an empty layer, so that
// no mount of the machine names a host path (mountinfo shows the options
// as given: /proc/self/fd/N…).

// vmIDs is how many ids a VM's user namespace maps.
const vmIDs = 65536

// defaultVMHostIDBase is the first host id of VM machines' ranges: far above
// the ranges /etc/subuid usually hands out (100000 onwards).
const defaultVMHostIDBase = 0x70000000

// vmDirs are the host OS directories a VM sees through an overlay: never
// home directories or anything else holding host secrets; the top-level
// links of merged-/usr systems when they are directories.
func vmDirs() []string {
	dirs := append([]string(nil), vmLowerDirs...)
	for _, d := range hostLinks {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			dirs = append(dirs, d)
		}
	}
	var out []string
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			out = append(out, d)
		}
	}
	return out
}

// prepareVM makes the directories of a VM's layers, owned by its root, and
// returns the layout and the bwrap arguments that mount them.
func (e *Engine) prepareVM(m *Machine, info MachineInfo) (layout, []string, error) {
	data := filepath.Join(m.dir, "root")
	base := e.opts.VMHostIDBase
	if err := e.shiftVMOwners(m, info); err != nil {
		return layout{}, nil, err
	}
	l := layout{Empty: []string{"rootfs"}}
	for _, d := range vmDirs() {
		l.Lower = append(l.Lower, strings.TrimPrefix(d, "/"))
	}
	for _, d := range vmOwnDirs {
		l.Empty = append(l.Empty, strings.TrimPrefix(d, "/"))
	}
	mk := func(p string, mode os.FileMode) error {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return err
		}
		if err := os.Lchown(p, base, base); err != nil {
			return err
		}
		return os.Chmod(p, mode)
	}
	if err := mk(data, 0o700); err != nil {
		return l, nil, err
	}
	for _, d := range []string{"upper", "work", "merged"} {
		if err := mk(filepath.Join(data, d), 0o700); err != nil {
			return l, nil, err
		}
	}
	for _, name := range append(append([]string(nil), l.Lower...), l.Empty...) {
		mode := os.FileMode(0o755)
		switch name {
		case "root":
			mode = 0o700
		case "tmp":
			mode = 0o777 | os.ModeSticky
		}
		if err := mk(filepath.Join(data, "upper", name), mode); err != nil {
			return l, nil, err
		}
		if err := mk(filepath.Join(data, "work", name), 0o700); err != nil {
			return l, nil, err
		}
	}
	// bwrap makes the usr-merge links (/bin → usr/bin) in the root at each
	// start and refuses to find them there already.
	for _, link := range hostLinks {
		p := filepath.Join(data, "upper", "rootfs", link)
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			os.Remove(p)
		}
	}
	stage := func(name string) string { return stageDir + "/merged/" + name }
	args := []string{"--bind", stage("rootfs"), "/",
		"--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"}
	for _, name := range l.Lower {
		args = append(args, "--bind", stage(name), "/"+name)
	}
	for _, link := range hostLinks {
		if fi, err := os.Lstat(link); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if target, err := os.Readlink(link); err == nil {
				args = append(args, "--symlink", target, link)
			}
		}
	}
	for _, name := range l.Empty[1:] {
		args = append(args, "--bind", stage(name), "/"+name)
	}
	args = append(args, "--size", "1048576", "--tmpfs", "/run")
	for _, p := range hostSecrets() {
		if p.dir {
			args = append(args, "--size", "4096", "--tmpfs", p.path, "--remount-ro", p.path)
		} else {
			args = append(args, "--ro-bind", "/dev/null", p.path)
		}
	}
	return l, args, nil
}

// shiftVMOwners moves the owners of a VM's files to the engine's id range
// when the machine was made with another one (a different VMHostIDBase, or
// an older vmcp whose VM root was the host's root). The caller holds m.mu,
// and the machine runs nothing.
func (e *Engine) shiftVMOwners(m *Machine, info MachineInfo) error {
	base := e.opts.VMHostIDBase
	if info.VMHostIDBase == base {
		return nil
	}
	if err := safefs.ShiftOwners(context.Background(), filepath.Join(m.dir, "root"), info.VMHostIDBase, base, vmIDs); err != nil {
		return fmt.Errorf("move the VM's files to its id range: %w", err)
	}
	m.info.VMHostIDBase = base
	return writeJSON(filepath.Join(m.dir, "machine.json"), m.info)
}

// idmappedTrees makes, for each host directory /<name>, a detached
// read-only copy of its mount tree whose owners are mapped through the
// user namespace of process pid: what the host's root owns looks owned by
// the VM's root. The caller closes the descriptors.
func idmappedTrees(pid int, names []string) ([]int, error) {
	userns, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(userns)
	var fds []int
	fail := func(err error) ([]int, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, err
	}
	for _, name := range names {
		fd, err := idmappedTree("/"+name, userns, true)
		if err != nil {
			// A submount on a filesystem without idmapped mounts: the
			// directory alone, without what is mounted below it.
			if fd, err = idmappedTree("/"+name, userns, false); err != nil {
				return fail(fmt.Errorf("map the owners of /%s for the VM (needs Linux 5.12 and a filesystem with idmapped mounts): %w", name, err))
			}
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func idmappedTree(dir string, userns int, recursive bool) (int, error) {
	flags, at := uint(unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC), uint(0)
	if recursive {
		flags |= unix.AT_RECURSIVE
		at = unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, flags)
	if err != nil {
		return -1, err
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NODEV, Userns_fd: uint64(userns)}
	if err := unix.MountSetattr(fd, "", uint(unix.AT_EMPTY_PATH)|at, &attr); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// errVMNeedsRoot is the answer to a VM machine asked of an engine that is
// not root.
var errVMNeedsRoot = errors.New("vm machines need the engine to run as root: their root filesystem overlays the host's, " +
	"mapped to an unprivileged range of host ids, which only root may set up")
