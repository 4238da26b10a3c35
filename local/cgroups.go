package local

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cgroupManager puts each machine in its own cgroup with a memory and a
// process limit, when the engine may create cgroups (as root, on cgroup v2
// or on v1's memory and pids hierarchies). Otherwise machines are limited by
// rlimits alone (RLIMIT_AS for memory, RLIMIT_NPROC for processes).
//
// It is a few file writes, so it is written here rather than taken from a
// container runtime's cgroup library.
type cgroupManager struct {
	v2   string   // the vmcp directory in the unified hierarchy, or ""
	v1   []string // the vmcp directories in the v1 memory and pids hierarchies
	mode string
}

const cgroupRoot = "/sys/fs/cgroup"

// agentReserve is the room in a machine's pids limit for the sandbox's own
// processes and threads (bwrap, the agent and its prewarmed threads).
const agentReserve = agentThreads + 20

func newCgroupManager(asRoot bool) *cgroupManager {
	m := &cgroupManager{mode: "none"}
	if !asRoot {
		return m
	}
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		dir := filepath.Join(cgroupRoot, "vmcp")
		if os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), []byte("+memory +pids"), 0) == nil &&
			os.MkdirAll(dir, 0o755) == nil &&
			os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +pids"), 0) == nil {
			m.v2, m.mode = dir, "v2"
		}
		return m
	}
	var dirs []string
	for _, c := range []string{"memory", "pids"} {
		dir := filepath.Join(cgroupRoot, c, "vmcp")
		if os.MkdirAll(dir, 0o755) != nil {
			return m
		}
		dirs = append(dirs, dir)
	}
	if len(dirs) == 2 {
		// Children of a v1 memory cgroup inherit hierarchy accounting only
		// when it is on; turn it on where the kernel still lets us choose.
		os.WriteFile(filepath.Join(dirs[0], "memory.use_hierarchy"), []byte("1"), 0)
		m.v1, m.mode = dirs, "v1"
	}
	return m
}

// enabled reports whether machines get cgroup memory and pids limits.
func (m *cgroupManager) enabled() bool { return m.mode != "none" }

func (m *cgroupManager) dirs(id string) []string {
	switch m.mode {
	case "v2":
		return []string{filepath.Join(m.v2, id)}
	case "v1":
		return []string{filepath.Join(m.v1[0], id), filepath.Join(m.v1[1], id)}
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

// remove deletes the machine's cgroups once its processes are gone.
func (m *cgroupManager) remove(id string) {
	for _, dir := range m.dirs(id) {
		for i := 0; i < 50; i++ {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
