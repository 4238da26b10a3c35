//go:build linux && !vmcp_nolocal

package local

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmcp-dev/vmcp/local/guest"
)

// cgroupManager puts each machine in its own cgroup with a memory and a
// process limit, when the engine may create cgroups (as root, on cgroup v2
// or on v1's memory and pids hierarchies). Otherwise machines are limited by
// rlimits alone (RLIMIT_AS for memory, RLIMIT_NPROC for processes).
//
// It is a few file writes, so it is written here rather than taken from a
// container runtime's cgroup library.
type cgroupManager struct {
	v2 string // the vmcp directory in the unified hierarchy, or ""
	// v1: the vmcp directories in the v1 memory and pids hierarchies, and
	// in the cpuacct one where the host has it.
	v1   []string
	mode string
}

const cgroupRoot = "/sys/fs/cgroup"

// agentReserve is the room in a machine's pids limit for the sandbox's own
// processes and threads (bwrap, the agent and its prewarmed threads).
const agentReserve = guest.Threads + 20

// newCgroupManager sets up the engine's cgroups: vmcp/<state> in each
// hierarchy, where <state> names the state directory, so that engines of
// different state directories never touch each other's machines.
func newCgroupManager(asRoot bool, stateDir string) *cgroupManager {
	m := &cgroupManager{mode: "none"}
	if !asRoot {
		return m
	}
	sum := sha256.Sum256([]byte(stateDir))
	own := "state-" + hex.EncodeToString(sum[:6])
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		top := filepath.Join(cgroupRoot, "vmcp")
		dir := filepath.Join(top, own)
		if os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), []byte("+memory +pids"), 0) == nil &&
			os.MkdirAll(dir, 0o755) == nil &&
			os.WriteFile(filepath.Join(top, "cgroup.subtree_control"), []byte("+memory +pids"), 0) == nil &&
			os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +pids"), 0) == nil {
			m.v2, m.mode = dir, "v2"
		}
		return m
	}
	var dirs []string
	for _, c := range []string{"memory", "pids"} {
		top := filepath.Join(cgroupRoot, c, "vmcp")
		if os.MkdirAll(top, 0o755) != nil {
			return m
		}
		if c == "memory" {
			// Children of a v1 memory cgroup inherit hierarchy accounting
			// only when it is on; turn it on where the kernel still lets us.
			os.WriteFile(filepath.Join(top, "memory.use_hierarchy"), []byte("1"), 0)
		}
		dir := filepath.Join(top, own)
		if os.MkdirAll(dir, 0o755) != nil {
			return m
		}
		dirs = append(dirs, dir)
	}
	// CPU accounting is optional (without it, the monitor measures idle
	// machines' files as often as busy ones'), and taken only from a
	// cpuacct hierarchy of its own: where the cpu controller shares it, a
	// cgroup per machine would change how the host shares its processors.
	acct := filepath.Join(cgroupRoot, "cpuacct")
	_, usage := os.Stat(filepath.Join(acct, "cpuacct.usage"))
	if _, shares := os.Stat(filepath.Join(acct, "cpu.shares")); usage == nil && errors.Is(shares, os.ErrNotExist) {
		if dir := filepath.Join(acct, "vmcp", own); os.MkdirAll(dir, 0o755) == nil {
			dirs = append(dirs, dir)
		}
	}
	m.v1, m.mode = dirs, "v1"
	return m
}

// reconcile removes the cgroups of machines that are not running: at start,
// none is, and what an engine killed before it could clean up (kill -9)
// is left. A process still in one is killed first.
func (m *cgroupManager) reconcile(running func(id string) bool) {
	var parents []string
	switch m.mode {
	case "v2":
		parents = []string{m.v2}
	case "v1":
		parents = m.v1
	}
	for _, parent := range parents {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if !e.IsDir() || running(e.Name()) {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			removeCgroup(dir)
		}
	}
}

// removeCgroup removes a cgroup directory once its processes are gone.
func removeCgroup(dir string) {
	for i := 0; i < 100; i++ {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// enabled reports whether machines get cgroup memory and pids limits.
func (m *cgroupManager) enabled() bool { return m.mode != "none" }

func (m *cgroupManager) dirs(id string) []string {
	switch m.mode {
	case "v2":
		return []string{filepath.Join(m.v2, id)}
	case "v1":
		dirs := make([]string, len(m.v1))
		for i, d := range m.v1 {
			dirs[i] = filepath.Join(d, id)
		}
		return dirs
	}
	return nil
}

func (m *cgroupManager) create(id string, l Limits) error {
	for _, dir := range m.dirs(id) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	// The pids limit counts threads, and the agent's and bwrap's too: they get
	// room of their own on top of the machine's process limit.
	mem, procs := strconv.FormatInt(l.MemoryBytes, 10), strconv.FormatInt(l.Processes+agentReserve, 10)
	var writes [][2]string
	switch m.mode {
	case "v2":
		d := m.dirs(id)[0]
		writes = [][2]string{{d + "/memory.max", mem}, {d + "/memory.swap.max", "0"}, {d + "/pids.max", procs}}
	case "v1":
		d := m.dirs(id)
		writes = [][2]string{{d[0] + "/memory.limit_in_bytes", mem}, {d[1] + "/pids.max", procs}}
	}
	for _, w := range writes {
		if err := os.WriteFile(w[0], []byte(w[1]), 0); err != nil && !strings.HasSuffix(w[0], "swap.max") {
			return err
		}
	}
	return nil
}

func (m *cgroupManager) add(id string, pid int) error {
	for _, dir := range m.dirs(id) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return err
		}
	}
	return nil
}

// oomKills is how many times the kernel killed a process of the machine for
// exceeding its memory limit.
func (m *cgroupManager) oomKills(id string) int {
	var path, key string
	switch m.mode {
	case "v2":
		path, key = filepath.Join(m.dirs(id)[0], "memory.events"), "oom_kill"
	case "v1":
		path, key = filepath.Join(m.dirs(id)[0], "memory.oom_control"), "oom_kill"
	default:
		return 0
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == key {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// openCPUUsage opens the file that accounts the CPU time of the machine's
// processes, for readCPUUsage; nil where the engine has no CPU accounting.
func (m *cgroupManager) openCPUUsage(id string) *os.File {
	var path string
	switch {
	case m.mode == "v2":
		path = filepath.Join(m.v2, id, "cpu.stat")
	case m.mode == "v1" && len(m.v1) > 2:
		path = filepath.Join(m.v1[2], id, "cpuacct.usage")
	default:
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	return f
}

// readCPUUsage reads a file of openCPUUsage: the CPU time used, in
// nanoseconds (to the microsecond on cgroup v2).
func readCPUUsage(f *os.File) (ns uint64, ok bool) {
	var buf [512]byte
	n, err := f.ReadAt(buf[:], 0)
	if n == 0 || err != nil && !errors.Is(err, io.EOF) {
		return 0, false
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	us, isV2 := strings.CutPrefix(line, "usage_usec ")
	v, err := strconv.ParseUint(strings.TrimSpace(us), 10, 64)
	if isV2 {
		v *= 1000
	}
	return v, err == nil
}

// close removes the engine's own cgroup directories when no machine's is
// left in them: a state directory used once (a test's) leaves nothing
// behind in the host's hierarchies.
func (m *cgroupManager) close() {
	dirs := m.v1
	if m.v2 != "" {
		dirs = []string{m.v2}
	}
	for _, dir := range dirs {
		os.Remove(dir) // fails while a machine's cgroup is in it, which is right
	}
}

// renice sets the niceness of the machine's threads that have niceness
// from to to (what a process of the machine chose for itself stays). It
// reads the thread list again until a pass finds none left at from (a
// thread at from may have been starting others), ten passes at most.
func (m *cgroupManager) renice(id string, from, to int) {
	var file string
	switch m.mode {
	case "v2":
		file = filepath.Join(m.dirs(id)[0], "cgroup.threads")
	case "v1":
		file = filepath.Join(m.dirs(id)[1], "tasks")
	default:
		return
	}
	for pass := 0; pass < 10; pass++ {
		b, err := os.ReadFile(file)
		if err != nil {
			return
		}
		changed := 0
		for _, f := range strings.Fields(string(b)) {
			tid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			// The system call answers 20 - niceness.
			if prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid); err == nil && 20-prio == from {
				if syscall.Setpriority(syscall.PRIO_PROCESS, tid, to) == nil {
					changed++
				}
			}
		}
		if changed == 0 {
			return
		}
	}
}

// remove deletes the machine's cgroups once its processes are gone.
func (m *cgroupManager) remove(id string) {
	for _, dir := range m.dirs(id) {
		removeCgroup(dir)
	}
}
