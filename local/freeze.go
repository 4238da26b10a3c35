//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Freeze and Thaw pause a machine with its memory: its processes stay, not
// running and not scheduled, until Thaw continues them where they were (a
// Python process still holds its variables). The FastVM emulator pauses
// its VMs with them.
//
// Where the machine has a cgroup v2 of its own, its cgroup.freeze does it:
// atomic, invisible to the processes, and a frozen process can still be
// killed, so Stop and Delete work as ever. Elsewhere every process of the
// machine but the engine's own (the sandbox's init and the agent, which
// must keep answering) is stopped with SIGSTOP, found and signalled as the
// monitor's brake does (pidfd-checked, under the sandbox). Not the cgroup v1
// freezer: the engine gives machines no freezer cgroup there, moving their
// processes into one would race with their forks, and a v1-frozen process
// ignores SIGKILL until thawed, which would hang Stop and Delete.

// freezeTimeout bounds how long Freeze waits for the processes to stop (one
// in an uninterruptible sleep stops when its system call ends).
const freezeTimeout = 5 * time.Second

// frozenMachine is what Thaw needs to undo a Freeze.
type frozenMachine struct {
	sb     *sandbox // the sandbox frozen; once it ends, the freeze is over
	cgroup string   // the cgroup.freeze file written, or "" for SIGSTOP
	root   int      // the sandbox's outer process, under which the stopped ones are
	// stopped are the processes Freeze stopped: Thaw continues these
	// only, not those the machine's own code had stopped before.
	stopped []procID
}

// procID identifies a process across pid reuse: its pid and start time.
type procID struct {
	pid   int
	start uint64
}

// freezes are the frozen machines. Its lock is held through Freeze, Thaw
// and the monitor's brake: a brake's SIGSTOP seen by Freeze would be taken
// for the machine's own (and never continued), and a brake's SIGCONT would
// undo a freeze.
var freezes = struct {
	mu       sync.Mutex
	machines map[*Machine]*frozenMachine
}{machines: map[*Machine]*frozenMachine{}}

// holdFreezes keeps machines from being frozen or thawed until the returned
// function is called (see freezes).
func holdFreezes() func() {
	freezes.mu.Lock()
	return freezes.mu.Unlock
}

// Freeze stops every process of the machine in place, memory kept, until
// Thaw. A machine that is not running has nothing to freeze; a frozen one
// stays as it is. The caller must not run commands or Python on a frozen
// machine: under SIGSTOP a new command would run beside the frozen
// processes, under the cgroup freezer it would wait for Thaw. Files can be
// read, written and snapshotted as usual. If the processes do not all stop
// within a few seconds, the ones stopped are continued and Freeze fails.
func (m *Machine) Freeze(ctx context.Context) error {
	defer holdFreezes()()
	pruneFreezes()
	if m.frozenLocked() {
		return nil
	}
	m.mu.Lock()
	sb := m.sb
	m.mu.Unlock()
	if sb == nil || !sb.alive() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	defer cancel()
	f := &frozenMachine{sb: sb}
	var err error
	if dirs := m.e.cgroups.dirs(m.ID()); m.e.cgroups.mode == "v2" && len(dirs) == 1 {
		f.cgroup = filepath.Join(dirs[0], "cgroup.freeze")
		err = freezeCgroup(ctx, dirs[0])
	} else {
		f.root, f.stopped, err = m.stopAll(ctx, sb)
	}
	if err != nil {
		return fmt.Errorf("freeze machine %s: %w", m.ID(), err)
	}
	freezes.machines[m] = f
	return nil
}

// Thaw continues the processes of a frozen machine; on one that is not
// frozen it does nothing.
func (m *Machine) Thaw(ctx context.Context) error {
	defer holdFreezes()()
	f := freezes.machines[m]
	if f == nil {
		return nil
	}
	delete(freezes.machines, m)
	if !f.sb.alive() {
		return nil // stopped meanwhile: nothing is left to continue
	}
	if f.cgroup != "" {
		if err := os.WriteFile(f.cgroup, []byte("0"), 0); err != nil {
			freezes.machines[m] = f
			return fmt.Errorf("thaw machine %s: %w", m.ID(), err)
		}
		return nil
	}
	for _, p := range f.stopped {
		if _, start := procState(p.pid); start == p.start {
			signalIn(f.root, p.pid, unix.SIGCONT)
		}
	}
	return nil
}

// Frozen reports whether the machine is frozen: Freeze was called, Thaw was
// not, and the sandbox frozen still runs.
func (m *Machine) Frozen() bool {
	defer holdFreezes()()
	return m.frozenLocked()
}

// frozenLocked is Frozen for a caller holding the freezes lock.
func (m *Machine) frozenLocked() bool {
	f := freezes.machines[m]
	if f == nil {
		return false
	}
	m.mu.Lock()
	current := m.sb
	m.mu.Unlock()
	if f.sb != current || !f.sb.alive() {
		delete(freezes.machines, m)
		return false
	}
	return true
}

// pruneFreezes forgets the freezes of sandboxes that ended (machines
// stopped or deleted while frozen).
func pruneFreezes() {
	for m, f := range freezes.machines {
		if !f.sb.alive() {
			delete(freezes.machines, m)
		}
	}
}

// stopAll sends SIGSTOP to every process of the machine but its helpers
// until two looks in a row, a moment apart, find all of them stopped: a
// process may fork, or continue another, until it is stopped itself. It
// returns the processes it stopped; on failure it continues them.
func (m *Machine) stopAll(ctx context.Context, sb *sandbox) (root int, stopped []procID, err error) {
	seen := map[procID]bool{}
	calm := 0
	defer func() {
		if err != nil {
			for _, p := range stopped {
				signalIn(root, p.pid, unix.SIGCONT)
			}
			stopped = nil
		}
	}()
	for calm < 2 {
		if !sb.alive() {
			return root, stopped, errors.New("the machine stopped while it was being frozen")
		}
		r, pids := m.userProcesses(readProcesses())
		if r != 0 {
			root = r
		}
		calm++
		for _, pid := range pids {
			state, start := procState(pid)
			id := procID{pid, start}
			switch state {
			case 0, 'T', 't', 'Z', 'X':
				// Gone, stopped (by us, or by the machine's own code if we never
				// stopped it), or exiting.
			default:
				calm = 0
				if signalIn(root, pid, unix.SIGSTOP) && !seen[id] {
					seen[id] = true
					stopped = append(stopped, id)
				}
			}
		}
		select {
		case <-ctx.Done():
			return root, stopped, fmt.Errorf("its processes did not all stop within %v (one may be stuck in a system call): %w", freezeTimeout, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	return root, stopped, nil
}

// freezeCgroup freezes a cgroup v2 and waits until the kernel reports it
// frozen; on failure it thaws it again.
func freezeCgroup(ctx context.Context, dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0); err != nil {
		return err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.events")); err == nil && strings.Contains("\n"+string(b), "\nfrozen 1") {
			return nil
		}
		select {
		case <-ctx.Done():
			os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
			return fmt.Errorf("its cgroup did not freeze within %v: %w", freezeTimeout, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// procState reads a process's state letter (R, S, D, T, t, Z, ...) and
// start time from /proc; 0 if it is gone.
func procState(pid int) (state byte, start uint64) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0
	}
	// After the command: state (field 3) ... starttime (field 22).
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0
	}
	start, _ = strconv.ParseUint(f[19], 10, 64)
	return f[0][0], start
}
