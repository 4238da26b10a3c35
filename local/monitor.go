//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmcp-dev/vmcp/internal/safefs"
	"github.com/vmcp-dev/vmcp/local/guest"
)

// The monitor holds every running machine to its limits at all times, not
// only while a call runs: a background writer left by a command, or a
// thread left in the REPL, is stopped too. (The warm pool's machines,
// where only the engine's code has run, from the moment they are handed
// out.)
//
//   - Disk: the machine's files (blocks and entries) against its quota, and
//     the state filesystem's free space against the engine's reserve, so
//     that no machine can fill the disk the server itself writes to. When a
//     limit is passed, the calls in progress are stopped first; if the files
//     still grow, every process of the machine but its agent is killed.
//   - Memory, where the machine has no memory cgroup (rlimits bound each
//     process only): the private and shared memory of all its processes
//     together; above the limit the largest process is killed, as the
//     kernel's OOM killer would in a cgroup.
//
// While no machine runs, the monitor does not look (every start, and
// every hand-out from the pool, wakes it), so an idle server leaves the
// host's processors asleep.
//
// The files are measured with descriptor-relative walks, every quarter
// second or less often if a walk takes long, and at once when the state
// filesystem's free space drops suddenly. A machine whose processes used
// no CPU since its last walk began (where the engine has CPU accounting),
// and whose files the host did not write to meanwhile, has the files that
// walk found: it is walked again only every idleMeasureEvery, which also
// bounds what the accounting's granularity could hide. Within the
// engine's reserve, the machines are frozen while they are measured (see
// brake): a walk cannot keep up with a flood of entries, a frozen machine
// makes none.

// monitorTick is how often the monitor reads the state filesystem's free
// space (a statfs): a drop of burstBytes or burstInodes since the last
// tick measures the running machines at once. Memory is looked at every
// memoryEvery ticks.
const (
	monitorTick = 10 * time.Millisecond
	memoryEvery = 10
	burstBytes  = 4 << 20
	burstInodes = 256
	// brakeAhead is how many ticks ahead the monitor looks: it brakes as
	// soon as the state filesystem, at the rate it fills, would be within
	// two reserves of full by then.
	brakeAhead = 8
	// measureEvery is how often a machine's files are measured without a
	// burst; a walk may take at most a fifth of the time between two.
	measureEvery = 250 * time.Millisecond
	// idleMeasureEvery is how often the files of a machine that did not
	// run are measured all the same.
	idleMeasureEvery = 5 * time.Second
	// monitorIdleLook is how often the monitor looks while no machine
	// runs, in case a start was not told (every start is).
	monitorIdleLook = time.Second
)

type monitor struct {
	e        *Engine
	stop     chan struct{}
	stopped  chan struct{}
	stopOnce sync.Once
	// kick wakes a monitor that found no running machine: one may run now.
	kick chan struct{}
	idle bool // the last look found no running machine

	space    spaceInfo
	machines map[*Machine]*watch
	ticks    atomic.Int64
}

// watch is what the monitor remembers of one running machine.
type watch struct {
	next         time.Time     // when to measure its files again
	measured     time.Time     // when they were last measured
	took         time.Duration // how long that took
	last         safefs.Usage  // what they took then
	callsStopped time.Time     // when calls in progress were last stopped for its files
	// cpu and hostWrites, read as the last walk began: while neither
	// changes, nothing has changed the files.
	cpu        uint64
	cpuKnown   bool
	hostWrites int64
	cpuFile    *os.File // the machine's CPU accounting, held open
}

// callGrace is how long calls stopped for a machine's files have to end
// before the monitor kills the machine's other processes too (unless the
// files run far past the limit meanwhile).
const callGrace = 500 * time.Millisecond

func (e *Engine) startMonitor() {
	mon := &monitor{e: e, stop: make(chan struct{}), stopped: make(chan struct{}), kick: make(chan struct{}, 1), machines: map[*Machine]*watch{}}
	e.monitor = mon
	go mon.run()
}

func (mon *monitor) close() {
	mon.stopOnce.Do(func() { close(mon.stop) })
	<-mon.stopped
}

// run looks every monitorTick, on a thread of its own that sleeps in the
// kernel: machines that keep the host's processors busy must not delay the
// look that stops them. Where the engine may (as root), the thread runs
// ahead of other processes.
func (mon *monitor) run() {
	defer close(mon.stopped)
	defer func() {
		for _, w := range mon.machines {
			w.close()
		}
	}()
	runtime.LockOSThread()
	tid := unix.Gettid()
	raised := unix.Setpriority(unix.PRIO_PROCESS, tid, -10) == nil
	defer func() {
		// The thread goes back to the pool as it was. It must not end with
		// the monitor: sandboxes started from it earlier would get their
		// parent-death signal.
		if !raised || unix.Setpriority(unix.PRIO_PROCESS, tid, 0) == nil {
			runtime.UnlockOSThread()
		}
	}()
	idleWait := time.NewTimer(monitorIdleLook)
	defer idleWait.Stop()
	for {
		if mon.idle {
			// Nothing to hold to its limits until a machine starts (or is
			// handed out running), which kicks: no tick meanwhile, so an idle
			// server leaves the host's processors asleep.
			idleWait.Reset(monitorIdleLook)
			select {
			case <-mon.stop:
				return
			case <-mon.kick:
			case <-idleWait.C:
			}
		} else {
			ts := unix.NsecToTimespec(int64(monitorTick))
			_ = unix.Nanosleep(&ts, nil)
			select {
			case <-mon.stop:
				return
			default:
			}
		}
		mon.tick()
	}
}

// wake has the monitor look at once if it found no running machine: m's
// sandbox is up, or a running machine was handed out.
func (mon *monitor) wake() {
	if mon == nil {
		return
	}
	select {
	case mon.kick <- struct{}{}:
	default:
	}
}

// decrease is how far a value went down from was to now, or 0.
func decrease(was, now uint64) uint64 {
	if was > now {
		return was - now
	}
	return 0
}

// tick looks at every running machine.
func (mon *monitor) tick() {
	ticks := mon.ticks.Add(1)
	var running []*Machine
	for _, m := range mon.e.machinesInUse() {
		if m.running() {
			running = append(running, m)
		}
	}
	for m, w := range mon.machines {
		if !m.running() {
			w.close()
			delete(mon.machines, m)
		}
	}
	wasIdle := mon.idle
	mon.idle = len(running) == 0
	if mon.idle {
		return
	}
	watches := make([]*watch, len(running))
	for i, m := range running {
		if mon.machines[m] == nil {
			mon.machines[m] = &watch{last: safefs.Usage{Bytes: -1}}
		}
		watches[i] = mon.machines[m]
	}
	space, err := mon.e.stateSpace()
	burst, filling := false, false
	if err == nil {
		if wasIdle {
			mon.space = space // the last reading is too old to tell a rate
		}
		dropBytes, dropInodes := decrease(mon.space.freeBytes, space.freeBytes), decrease(mon.space.freeInodes, space.freeInodes)
		burst = dropBytes > burstBytes || dropInodes > burstInodes
		// Within two reserves, or filling so fast that it would be there
		// in a few looks: a walk of a machine's files while it floods
		// them may take longer than that.
		ahead := space
		ahead.freeBytes -= min(ahead.freeBytes, brakeAhead*dropBytes)
		ahead.freeInodes -= min(ahead.freeInodes, brakeAhead*dropInodes)
		filling = (dropBytes > 0 || dropInodes > 0) && ahead.near()
		mon.space = space
		if monitorDebug != nil && (dropBytes > 0 || dropInodes > 0) {
			monitorDebug("space: %d MiB, %d inodes free, burst=%v filling=%v", space.freeBytes>>20, space.freeInodes, burst, filling)
		}
	}
	if filling {
		mon.brake(running, watches, space)
	} else {
		for i, m := range running {
			mon.checkDisk(m, watches[i], burst)
		}
	}
	if !mon.e.cgroups.enabled() && ticks%memoryEvery == 0 {
		procs := readProcesses()
		for _, m := range running {
			mon.checkMemory(m, procs)
		}
	}
}

// brake runs when the state filesystem is within two reserves of full and
// still filling: every running machine's processes are stopped (SIGSTOP)
// while their files are measured, which may take longer than the
// filesystem has left; within the reserve, the machines whose files grew
// have their processes killed. The others go on.
func (mon *monitor) brake(running []*Machine, watches []*watch, space spaceInfo) {
	// Not while a machine is being frozen or thawed; frozen machines stay
	// as they are (see freezes).
	defer holdFreezes()()
	frozen := make([][]int, len(running))
	roots := make([]int, len(running))
	procs := readProcesses()
	for i, m := range running {
		if m.frozenLocked() {
			continue
		}
		roots[i], frozen[i] = m.userProcesses(procs)
		for _, pid := range frozen[i] {
			signalIn(roots[i], pid, unix.SIGSTOP)
		}
	}
	reason := space.error().Error()
	// What is left above the reserve: a machine whose growth since it was
	// last measured, kept up for as many looks as the brake looks ahead,
	// would use it up is stopped now. A loaded host spaces the looks out
	// (the CI's did, by several ticks), and a flood of entries fills the
	// gap; a factor of two let one through to the last inode.
	marginBytes := int64(space.freeBytes) - int64(space.reserveBytes)
	marginInodes := int64(space.freeInodes) - int64(space.reserveInodes)
	for i, m := range running {
		u, err := m.measure()
		w := watches[i]
		grew := err != nil || w.last.Bytes < 0 || u.Bytes > w.last.Bytes || u.Entries > w.last.Entries
		fast := err != nil || w.last.Bytes < 0 || brakeAhead*(u.Bytes-w.last.Bytes) > marginBytes || brakeAhead*(u.Entries-w.last.Entries) > marginInodes
		if monitorDebug != nil {
			monitorDebug("brake %s: %+v grew=%v fast=%v", m.ID(), u, grew, fast)
		}
		if err == nil {
			w.last, w.next = u, time.Now().Add(measureEvery)
		}
		if grew && (space.low() || fast || u.Bytes > m.Info().Limits.DiskBytes) {
			m.stopCallsForQuota(reason)
			m.killAllButAgent(reason)
		}
		for _, pid := range frozen[i] {
			signalIn(roots[i], pid, unix.SIGCONT)
		}
	}
}

func (mon *monitor) checkDisk(m *Machine, w *watch, burst bool) {
	now := time.Now()
	forced := burst && now.Sub(w.measured) > 4*w.took
	if now.Before(w.next) && !forced {
		return
	}
	// Read before the walk: what runs during it changes them.
	writing, writes := m.hostWriting.Load(), m.hostWrites.Load()
	cpu, cpuKnown := w.cpuUsage(mon.e.cgroups, m.ID())
	if !forced && cpuKnown && w.cpuKnown && cpu == w.cpu && writing == 0 && writes == w.hostWrites && now.Sub(w.measured) < idleMeasureEvery {
		w.next = now.Add(measureEvery)
		return
	}
	if forced {
		m.burstWalks.Add(1)
	}
	u, err := m.measure()
	w.measured, w.took = now, time.Since(now)
	w.cpu, w.cpuKnown, w.hostWrites = cpu, cpuKnown && writing == 0 && err == nil, writes
	w.next = now.Add(max(measureEvery, 5*w.took))
	limits := m.Info().Limits
	var reason string
	switch {
	case errors.Is(err, safefs.ErrTooDeep):
		reason = "its files are " + safefs.ErrTooDeep.Error()
	case err != nil:
		return // it stopped meanwhile, or its files cannot be read now
	case u.Bytes > limits.DiskBytes:
		reason = m.quotaError(u.Bytes).Error()
	case limits.Files > 0 && u.Entries > limits.Files:
		reason = fmt.Sprintf("the machine's files are more than its limit of %d entries (files, directories and links): delete some to make room", limits.Files)
	}
	grew := u.Bytes > w.last.Bytes || u.Entries > w.last.Entries
	if monitorDebug != nil {
		monitorDebug("check %s: %+v grew=%v reason=%q burst=%v took %v", m.ID(), u, grew, reason, burst, w.took)
	}
	w.last = u
	if reason == "" || !grew {
		// Past a limit with nothing writing: new files are refused, and
		// calls (to delete some) go on.
		return
	}
	// The calls in progress are the writers, most likely: stop them first,
	// and the rest only if the files still grow after the calls had time
	// to end (or run far past the limit).
	if m.stopCallsForQuota(reason) {
		w.callsStopped = now
		return
	}
	far := u.Bytes > limits.DiskBytes+max(64<<20, limits.DiskBytes/4)
	if now.Sub(w.callsStopped) > callGrace || far {
		m.killAllButAgent(reason)
	}
}

// cpuUsage reads the CPU time the machine's processes have used; ok is
// false where it cannot be known (the file is opened again next time: the
// machine may have a new cgroup).
func (w *watch) cpuUsage(cg *cgroupManager, id string) (ns uint64, ok bool) {
	if w.cpuFile == nil {
		if w.cpuFile = cg.openCPUUsage(id); w.cpuFile == nil {
			return 0, false
		}
	}
	if ns, ok = readCPUUsage(w.cpuFile); !ok {
		w.close()
	}
	return ns, ok
}

func (w *watch) close() {
	if w.cpuFile != nil {
		w.cpuFile.Close()
		w.cpuFile = nil
	}
}

// measure is what the machine's files take: its data and its scratch space.
func (m *Machine) measure() (safefs.Usage, error) {
	m.walks.Add(1)
	var total safefs.Usage
	for _, d := range []string{dataDirName(m.Info().Flavour), "scratch"} {
		u, err := safefs.Measure(context.Background(), filepath.Join(m.dir, d))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return total, err
		}
		total.Bytes += u.Bytes
		total.Entries += u.Entries
	}
	return total, nil
}

// ---- calls told of a quota ----

// quotaWatch is a call in progress that the monitor stops when the
// machine's files pass a limit.
type quotaWatch struct {
	stop   func()
	reason atomic.Pointer[string]
}

// onQuota registers a call in progress; stop kills its process or
// interrupts its code. The returned function unregisters it and says why
// it was stopped ("" if it was not).
func (m *Machine) onQuota(stop func()) func() string {
	q := &quotaWatch{stop: stop}
	m.quotaMu.Lock()
	if m.quotaCalls == nil {
		m.quotaCalls = map[*quotaWatch]bool{}
	}
	m.quotaCalls[q] = true
	m.quotaMu.Unlock()
	return func() string {
		m.quotaMu.Lock()
		delete(m.quotaCalls, q)
		m.quotaMu.Unlock()
		if r := q.reason.Load(); r != nil {
			return *r
		}
		return ""
	}
}

// stopCallsForQuota stops the machine's calls in progress that were not
// stopped yet; false if there were none.
func (m *Machine) stopCallsForQuota(reason string) bool {
	m.quotaMu.Lock()
	defer m.quotaMu.Unlock()
	stopped := false
	for q := range m.quotaCalls {
		if q.reason.CompareAndSwap(nil, &reason) {
			q.stop()
			stopped = true
		}
	}
	return stopped
}

// ---- processes ----

// processTable is what the monitor read of the host's processes: parent
// and children of each.
type processTable map[int]*process

type process struct {
	pid, ppid int
	children  []int
}

func readProcesses() processTable {
	t := processTable{}
	for _, pid := range guest.ProcPIDs() {
		if pp := ppid(pid); pp > 0 {
			t[pid] = &process{pid: pid, ppid: pp}
		}
	}
	for _, p := range t {
		if parent := t[p.ppid]; parent != nil {
			parent.children = append(parent.children, p.pid)
		}
	}
	return t
}

// below lists the processes under root (root excluded).
func (t processTable) below(root int) []int {
	var out []int
	stack := []int{root}
	for len(stack) > 0 && len(out) < 1<<16 {
		p := t[stack[len(stack)-1]]
		stack = stack[:len(stack)-1]
		if p == nil {
			continue
		}
		for _, c := range p.children {
			out = append(out, c)
			stack = append(stack, c)
		}
	}
	return out
}

// userProcesses lists a running machine's processes but its own helpers:
// the wrapper that became bwrap, bwrap's init in the machine's pid
// namespace (its pid 1) and the agent (its pid 2).
func (m *Machine) userProcesses(t processTable) (root int, pids []int) {
	m.mu.Lock()
	sb := m.sb
	m.mu.Unlock()
	if sb == nil || !sb.alive() {
		return 0, nil
	}
	root = sb.cmd.Process.Pid
	for _, pid := range t.below(root) {
		if ns := innerPID(pid); ns > 2 {
			pids = append(pids, pid)
		}
	}
	return root, pids
}

// innerPID is a process's id in its innermost pid namespace, 0 if unknown.
func innerPID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}

// stoppedBecause begins the reset reason of a machine whose processes the
// monitor killed.
const stoppedBecause = "the machine's processes were stopped because "

// killAllButAgent kills every process of the machine but its agent: its
// REPL too, whose state the next call reports lost, with reason.
func (m *Machine) killAllButAgent(reason string) {
	m.mu.Lock()
	if m.interp != "" {
		m.resetReason = stoppedBecause + reason
	}
	m.mu.Unlock()
	for i := 0; i < 50; i++ {
		t := readProcesses()
		root, pids := m.userProcesses(t)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			killIn(root, pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// killIn kills pid if it still is a process under root.
func killIn(root, pid int) bool { return signalIn(root, pid, unix.SIGKILL) }

// signalIn sends sig to pid if it still is a process under root: the pid
// is pinned with a pidfd first, so that a pid reused by another process
// since it was listed is never signalled.
func signalIn(root, pid int, sig unix.Signal) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	for p, n := pid, 0; n < 1024; p, n = ppid(p), n+1 {
		if p == root {
			return unix.PidfdSendSignal(fd, sig, nil, 0) == nil
		}
		if p <= 1 {
			return false
		}
	}
	return false
}

// ---- memory without cgroups ----

func (mon *monitor) checkMemory(m *Machine, t processTable) {
	root, pids := m.userProcesses(t)
	if len(pids) == 0 {
		return
	}
	var total int64
	largest, largestPID := int64(-1), 0
	for _, pid := range pids {
		held := heldMemory(pid)
		total += held
		if held > largest {
			largest, largestPID = held, pid
		}
	}
	limit := m.Info().Limits.MemoryBytes
	if total <= limit || largestPID == 0 {
		return
	}
	if killIn(root, largestPID) {
		m.oomKills.Add(1)
		m.mu.Lock()
		if m.interp != "" {
			m.resetReason = fmt.Sprintf("a process was killed because the machine's processes held more than its memory limit (%d MiB)", limit>>20)
		}
		m.mu.Unlock()
	}
}

// heldMemory is the memory a process holds that no file backs: anonymous
// and shared (shm, tmpfs) pages, from /proc/pid/status, which anyone may
// read. Shared pages mapped by several processes count in each: the sum
// errs on the safe side.
func heldMemory(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	var kb int64
	for _, line := range strings.Split(string(b), "\n") {
		for _, key := range []string{"RssAnon:", "RssShmem:"} {
			if v, ok := strings.CutPrefix(line, key); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					n, _ := strconv.ParseInt(f[0], 10, 64)
					kb += n
				}
			}
		}
	}
	return kb << 10
}

// ---- the state filesystem's reserve ----

// spaceInfo is the free space of the state directory's filesystem, and the
// reserve the engine keeps there.
type spaceInfo struct {
	freeBytes, freeInodes       uint64
	reserveBytes, reserveInodes uint64
}

// near reports whether the filesystem is within two reserves of full.
func (s spaceInfo) near() bool {
	return s.freeBytes < 2*s.reserveBytes || (s.reserveInodes > 0 && s.freeInodes < 2*s.reserveInodes)
}

func (s spaceInfo) low() bool {
	return s.freeBytes < s.reserveBytes || (s.reserveInodes > 0 && s.freeInodes < s.reserveInodes)
}

func (s spaceInfo) error() error {
	return fmt.Errorf("the host's disk that holds vmcp's state is nearly full (%d MiB and %d inodes free; vmcp keeps %d MiB and %d inodes for itself): delete files, machines or snapshots",
		s.freeBytes>>20, s.freeInodes, s.reserveBytes>>20, s.reserveInodes)
}

// stateSpace reads the state filesystem's free space. The reserve is
// Options.ReserveBytes and ReserveInodes, or by default the smaller of
// 512 MiB (50,000 inodes) and a twentieth of the filesystem.
func (e *Engine) stateSpace() (spaceInfo, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(e.opts.StateDir, &st); err != nil {
		return spaceInfo{}, err
	}
	s := spaceInfo{freeBytes: st.Bavail * uint64(st.Bsize), freeInodes: st.Ffree}
	s.reserveBytes = uint64(e.opts.ReserveBytes)
	if s.reserveBytes == 0 {
		s.reserveBytes = min(512<<20, st.Blocks*uint64(st.Bsize)/20)
	}
	s.reserveInodes = uint64(e.opts.ReserveInodes)
	if s.reserveInodes == 0 && st.Files > 0 {
		s.reserveInodes = min(50000, st.Files/20)
	}
	return s, nil
}

// checkReserve refuses new files in machines while the state filesystem is
// down to the engine's reserve.
func (e *Engine) checkReserve() error {
	s, err := e.stateSpace()
	if err != nil || !s.low() {
		return nil
	}
	return s.error()
}

// machinesInUse lists the engine's machines but the warm pool's: nothing
// but the engine's own code has run in those (the interpreter and the
// configured imports), and measuring them would double the monitor's
// work when the pool is as large as the machines in use. A machine is
// measured from the first look after it leaves the pool, which adopt
// asks for at once.
func (e *Engine) machinesInUse() []*Machine {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*Machine, 0, len(e.machines))
	for _, m := range e.machines {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].info.ID < out[j].info.ID })
	return out
}

// running reports whether the machine's sandbox is up.
func (m *Machine) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sb != nil && m.sb.alive()
}

var monitorDebug func(format string, args ...any)
