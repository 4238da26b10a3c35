//go:build unix

package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// stateOwner tells whether a process (a vmcp server) holds the lock of
// state directory dir, and its pid where the system tells (Linux's
// /proc/locks; 0 elsewhere). It never waits, and takes the lock itself
// only for the instant of a test, where /proc/locks does not tell.
func stateOwner(dir string) (owned bool, pid int) {
	path := filepath.Join(dir, "lock")
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return false, 0
	}
	if pid := lockHolder(&st); pid > 0 {
		return true, pid
	}
	f, err := os.Open(path)
	if err != nil {
		return false, 0
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK), 0
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false, 0
}

// lockHolder is the pid that holds a flock on the file st describes, as
// /proc/locks lists it ("1: FLOCK ADVISORY WRITE 7457 fe:00:10002738 0
// EOF"), or 0. The inode decides; the device, where it matches, picks
// among inodes of the same number (an overlay filesystem may report
// another device than the lock's).
func lockHolder(st *unix.Stat_t) int {
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0
	}
	var byInode []int
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" { // "->" marks a waiter, not a holder
			continue
		}
		pid, err := strconv.Atoi(f[4])
		dev := strings.Split(f[5], ":")
		if err != nil || pid <= 0 || len(dev) != 3 {
			continue
		}
		if ino, err := strconv.ParseUint(dev[2], 10, 64); err != nil || ino != uint64(st.Ino) {
			continue
		}
		major, err1 := strconv.ParseUint(dev[0], 16, 32)
		minor, err2 := strconv.ParseUint(dev[1], 16, 32)
		if err1 == nil && err2 == nil && uint32(major) == unix.Major(uint64(st.Dev)) && uint32(minor) == unix.Minor(uint64(st.Dev)) {
			return pid
		}
		byInode = append(byInode, pid)
	}
	if len(byInode) == 1 {
		return byInode[0]
	}
	return 0
}
