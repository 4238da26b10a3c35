//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/local/guest"
	"golang.org/x/sys/unix"
)

// ProcessInfo is a process of a machine's own (not its agent).
type ProcessInfo struct {
	PID         int    // in the machine
	Command     string // its command line, cut to 200 bytes
	CPU         time.Duration
	Interpreter bool // the machine's Python interpreter
}

// Processes lists the machine's processes but its agent: those its
// commands left running, and its Python interpreter. A stopped machine has
// none.
func (m *Machine) Processes() []ProcessInfo {
	root, pids := m.userProcesses(readProcesses())
	if root == 0 {
		return nil
	}
	m.mu.Lock()
	interp := m.interpPID
	m.mu.Unlock()
	out := make([]ProcessInfo, 0, len(pids))
	for _, pid := range pids {
		if guest.Zombie(pid) {
			continue // ended; its parent has yet to collect it
		}
		inner := innerPID(pid)
		p := ProcessInfo{PID: inner, Command: cmdline(pid), CPU: cpuTime(pid)}
		p.Interpreter = inner == interp && innerPID(ppid(pid)) == agentPID
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CPU > out[j].CPU })
	return out
}

// agentPID is the agent's process id in its sandbox (bubblewrap's init is
// 1).
const agentPID = 2

// Reset stops every process of the machine but its agent, and but its
// Python interpreter when keepPython is set (its variables stay; what it
// started is stopped); the machine's files stay. The engine does it from
// outside the machine's processes, so it works too when the machine is at
// its process limit (a fork bomb). It returns how many processes it
// stopped.
func (m *Machine) Reset(ctx context.Context, keepPython bool) (int, error) {
	m.mu.Lock()
	interp := m.interpPID
	if !keepPython && m.interp != "" {
		m.resetReason = "the machine was reset (reset_machine) and its interpreter stopped"
	}
	m.mu.Unlock()
	keep := func(pid int) bool {
		return keepPython && interp > 0 && innerPID(pid) == interp && innerPID(ppid(pid)) == agentPID
	}
	killed := map[int]bool{}
	// Stopped first, then killed: a stopped process forks no more, so a
	// fork bomb cannot outrun the passes.
	for pass := 0; pass < 200; pass++ {
		if err := ctx.Err(); err != nil {
			return len(killed), err
		}
		root, pids := m.userProcesses(readProcesses())
		var left []int
		for _, pid := range pids {
			if !keep(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return len(killed), nil
		}
		for _, pid := range left {
			signalIn(root, pid, unix.SIGSTOP)
		}
		for _, pid := range left {
			if killIn(root, pid) {
				killed[pid] = true
			}
		}
		time.Sleep(time.Millisecond)
	}
	return len(killed), fmt.Errorf("the machine's processes kept coming back after 200 passes; delete the machine")
}

// cmdline is a process's command line, its arguments joined by spaces; for
// a process without one (in the middle of an exec, or that blanked it),
// its name in brackets, as ps shows it.
func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	s := strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ")
	if s == "" {
		if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil {
			s = "[" + strings.TrimSuffix(string(comm), "\n") + "]"
		}
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// cpuTime is the CPU time a process has used (user and system).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command (in parentheses, which may hold spaces).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// ErrProcessLimit is the error of a command that could not start because
// the machine is at its process limit.
type ErrProcessLimit struct{ Limit int64 }

func (e *ErrProcessLimit) Error() string {
	return fmt.Sprintf("the machine is at its process limit (%d processes): stop them with reset_machine (keep_python: true keeps your Python variables), or delete the machine", e.Limit)
}

// startError is the error of a command the agent could not start: at the
// process limit it says so and what to do.
func (m *Machine) startError(msg string) error {
	if strings.Contains(msg, "resource temporarily unavailable") {
		return &ErrProcessLimit{Limit: m.Info().Limits.Processes}
	}
	return errors.New(msg)
}
