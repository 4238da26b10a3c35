//go:build linux && !vmcp_nolocal

package local

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmcp-dev/vmcp/local/guest"
	"github.com/vmcp-dev/vmcp/local/wire"
)

// warmRefillDelay is how long the pool waits after a machine leaves it
// before it starts another.
const warmRefillDelay = 100 * time.Millisecond

// warmYieldMax is the longest the pool waits for calls to end before it
// starts a machine (it always waits for other starts).
const warmYieldMax = 500 * time.Millisecond

// warmUpTimeout bounds the start of one warm machine, imports included.
const warmUpTimeout = 2 * time.Minute

// warmHotEvery is how often keepHot wakes the pool's interpreters: within
// the half second after which an idle one was measured slow to wake.
// warmHotMachines is how many it wakes, the next to be handed out: the
// cost stays that of a few machines however large the pool.
const (
	warmHotEvery    = 400 * time.Millisecond
	warmHotMachines = 4
)

// warmPool keeps machines started, interpreter and imports included, for
// Create to hand out: a new conversation's first call then finds a running
// machine. A machine leaves the pool once, to one creator; none of the
// pool's machines has run anything but the imports.
type warmPool struct {
	e    *Engine
	opts WarmOptions

	mu        sync.Mutex
	started   time.Time
	filledIn  time.Duration // the first time the pool was full
	filledPSS int64
	ready     []*Machine
	importErr string
	lastErr   string

	hits, misses atomic.Int64
	evicted      atomic.Int64  // machines whose interpreter ended while they waited
	hotLooks     atomic.Int64  // keepHot's looks, for the tests
	taken        chan struct{} // a machine left the pool: make another
	stop         chan struct{}
	stopped      chan struct{}
	cancel       context.CancelFunc // of the machine being made
	hot          sync.WaitGroup     // keepHot
	ctx          context.Context
}

func (e *Engine) startWarmPool() {
	if e.opts.Warm.Machines <= 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.warm = &warmPool{e: e, opts: e.opts.Warm, taken: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}),
		ctx: ctx, cancel: cancel, started: time.Now()}
	go e.warm.run()
	if e.opts.Warm.HotFor > 0 {
		e.warm.hot.Go(e.warm.keepHot)
	}
}

// WarmStats describes the pool of warm machines (all zero without one).
func (e *Engine) WarmStats() WarmStats {
	p := e.warm
	if p == nil {
		return WarmStats{}
	}
	p.mu.Lock()
	ready := slices.Clone(p.ready)
	s := WarmStats{Target: p.opts.Machines, Ready: len(ready), Hits: p.hits.Load(), Misses: p.misses.Load(), Evicted: p.evicted.Load(),
		ImportErrors: p.importErr, LastError: p.lastErr, FilledIn: p.filledIn, FilledPSSBytes: p.filledPSS}
	p.mu.Unlock()
	for _, m := range ready {
		s.PSSBytes += m.pss()
	}
	return s
}

func (p *warmPool) run() {
	defer close(p.stopped)
	select {
	case <-p.e.selfTestDone:
	case <-p.stop:
		return
	}
	if p.e.selfTestErr != nil {
		return
	}
	backoff := time.Second
	for {
		for p.count() < p.opts.Machines {
			if !p.yield() {
				return
			}
			m, err := p.make()
			select {
			case <-p.stop:
				if m != nil {
					p.e.discard(m)
				}
				return
			default:
			}
			if err != nil {
				p.mu.Lock()
				p.lastErr = err.Error()
				p.mu.Unlock()
				select {
				case <-p.stop:
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, time.Minute)
				continue
			}
			backoff = time.Second
			p.mu.Lock()
			p.ready = append(p.ready, m)
			p.lastErr = ""
			full := p.filledIn == 0 && len(p.ready) >= p.opts.Machines
			ready := slices.Clone(p.ready)
			p.mu.Unlock()
			if full {
				var pss int64
				for _, m := range ready {
					pss += m.pss()
				}
				p.mu.Lock()
				p.filledIn, p.filledPSS = time.Since(p.started), pss
				p.mu.Unlock()
			}
		}
		select {
		case <-p.taken:
		case <-p.stop:
			return
		}
		// The call that took a machine goes first: on a stdio server
		// (one thread of Go code) the refill would delay its result.
		select {
		case <-time.After(warmRefillDelay):
		case <-p.stop:
			return
		}
	}
}

// keepHot wakes the interpreters of the next warmHotMachines ready
// machines every warmHotEvery while the engine had a call within HotFor
// (or the pool started within it), but none in the last warmHotEvery: a
// busy engine (a burst of calls) keeps the processors warm itself, and
// its calls go first. A wake runs no code (a warm request without
// imports: nothing reaches the globals), at the waiting machine's
// niceness. Past HotFor it sleeps until the next call.
func (p *warmPool) keepHot() {
	t := time.NewTicker(warmHotEvery)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.hotLooks.Add(1)
		lastCall := p.e.lastCall.Load()
		recent := time.Since(time.Unix(0, max(lastCall, p.started.UnixNano()))) <= p.opts.HotFor
		if !recent {
			select {
			case <-p.stop:
				return
			case <-p.e.callBegan:
			}
			t.Reset(warmHotEvery)
			continue
		}
		quiet := time.Since(time.Unix(0, lastCall)) >= warmHotEvery && p.e.calls.Load() == 0
		if !quiet {
			continue
		}
		p.mu.Lock()
		next := slices.Clone(p.ready[:min(len(p.ready), warmHotMachines)])
		p.mu.Unlock()
		for _, m := range next {
			if p.e.calls.Load() > 0 {
				break
			}
			if !m.wake(p.ctx) {
				p.evict(m)
			}
		}
	}
}

// evict takes a machine that can no longer be handed out as warm out of
// the pool, deletes it, and has the pool make another.
func (p *warmPool) evict(m *Machine) {
	select {
	case <-p.stop:
		return // close deletes the pool's machines
	default:
	}
	p.mu.Lock()
	i := slices.Index(p.ready, m)
	if i >= 0 {
		p.ready = slices.Delete(p.ready, i, i+1)
	}
	p.mu.Unlock()
	if i < 0 {
		return // handed out meanwhile: its creator's now
	}
	p.evicted.Add(1)
	p.e.discard(m)
	select {
	case p.taken <- struct{}{}:
	default:
	}
}

// wake sends a warm machine's interpreter an empty warm request, unless
// the machine is busy or stopped, or was handed out: its creator's
// interpreter is the creator's alone (a wake that began before the
// hand-out ends before the first call, which waits for the turn). It
// reports false if the machine is no longer warm as made: stopped, or its
// interpreter is not the one that imported the modules (that one ended,
// and the agent started another for the wake).
func (m *Machine) wake(ctx context.Context) bool {
	select {
	case m.pyTurn <- struct{}{}:
	default:
		return true // busy: being handed out, or warmed up
	}
	defer func() { <-m.pyTurn }()
	m.mu.Lock()
	sb, warm, interp := m.sb, m.info.Warm, m.interp
	m.mu.Unlock()
	if !warm {
		return true // its creator's
	}
	if sb == nil || !sb.alive() {
		return false
	}
	// An interpreter that cannot answer an empty request in this long has
	// its machine stopped (control).
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	final, err := m.control(ctx, sb, wire.Request{Op: wire.OpPython, Warm: true})
	return err == nil && interpreterKey(sb, final.Interpreter) == interp
}

// yield waits until no machine is starting or waiting to, and no call is
// running for a while (warmYieldMax at most): the pool's work is done
// when it costs calls nothing. It reports false if the pool stopped.
func (p *warmPool) yield() bool {
	deadline := time.Now().Add(warmYieldMax)
	for p.e.starts.busy() || p.e.calls.Load() > 0 && time.Now().Before(deadline) {
		select {
		case <-p.stop:
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	return true
}

func (p *warmPool) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// make starts a machine of the pool's kind and imports the modules into
// its interpreter.
func (p *warmPool) make() (*Machine, error) {
	e := p.e
	info := e.newInfo(MachineSpec{Flavour: Workspace, AllowNetwork: p.opts.AllowNetwork, NetworkAllow: p.opts.NetworkAllow})
	info.Warm = true
	m, err := e.materialize(p.ctx, info, SnapshotInfo{})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(p.ctx, warmUpTimeout)
	defer cancel()
	failed, err := m.warmUp(ctx, p.opts.Imports)
	if err != nil {
		e.discard(m)
		return nil, fmt.Errorf("start a warm machine: %w", err)
	}
	p.mu.Lock()
	p.importErr = failed
	p.mu.Unlock()
	return m, nil
}

// fits reports whether a machine of spec may come from the pool: one with
// the engine's default limits and the pool's network policy, started
// empty.
func (p *warmPool) fits(spec MachineSpec) bool {
	return p != nil && spec.Flavour == Workspace && !spec.AllowUserNamespaces && spec.Limits == (Limits{}) && spec.FromSnapshot == "" &&
		spec.AllowNetwork == p.opts.AllowNetwork && slices.Equal(spec.NetworkAllow, p.opts.NetworkAllow)
}

// take hands out a ready machine that fits spec, or nil.
func (p *warmPool) take(spec MachineSpec) *Machine {
	if !p.fits(spec) {
		return nil
	}
	var m *Machine
	p.mu.Lock()
	for m == nil && len(p.ready) > 0 {
		m, p.ready = p.ready[0], p.ready[1:]
		if !m.running() {
			go p.e.discard(m)
			m = nil
		}
	}
	p.mu.Unlock()
	if m == nil {
		p.misses.Add(1)
	} else {
		p.hits.Add(1)
	}
	select {
	case p.taken <- struct{}{}:
	default:
	}
	return m
}

// close stops the pool and deletes its machines.
func (p *warmPool) close() {
	if p == nil {
		return
	}
	close(p.stop)
	p.cancel()
	<-p.stopped
	p.hot.Wait()
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	for _, m := range ready {
		p.e.discard(m)
	}
}

// warmNice is the CPU niceness of a warm machine's processes until it is
// handed out.
const warmNice = 19

// adopt gives a machine from the pool to its creator: the creator's name
// and tags, recorded before the machine is announced.
func (e *Engine) adopt(m *Machine, spec MachineSpec) (MachineInfo, error) {
	m.mu.Lock()
	// PythonUsed now, not at the first call: that call's result would
	// wait for the record's write, and its interpreter is running.
	m.info.Name, m.info.Tags, m.info.Warm, m.info.PythonUsed = spec.Name, spec.Tags, false, true
	m.info.CreatedAt = time.Now().UTC()
	// The creator has no Python state yet: if the warm interpreter ended
	// while it waited, the first call's new one has lost nothing to report.
	m.interp, m.resetReason = "", ""
	info := m.info
	m.mu.Unlock()
	// One takes the CPU and the other the disk: side by side.
	reniced := make(chan struct{})
	go func() {
		e.cgroups.renice(m.ID(), warmNice, 0)
		close(reniced)
	}()
	err := writeJSON(filepath.Join(m.dir, "machine.json"), info)
	<-reniced
	if err != nil {
		go e.discard(m)
		return MachineInfo{}, err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		go e.discard(m)
		return MachineInfo{}, ErrClosed
	}
	e.machines[info.ID] = m
	e.mu.Unlock()
	e.monitor.wake()
	info.Status = StatusRunning
	return info, nil
}

// discard stops and removes a machine that was never handed out.
func (e *Engine) discard(m *Machine) {
	m.markDeleted()
	m.Stop()
	e.cgroups.remove(m.ID())
	os.Remove(filepath.Join(m.dir, "machine.json"))
	removeAll(m.dir)
}

// warmUp starts the machine's sandbox and interpreter, and imports modules
// into the interpreter (not into its globals). It returns the imports that
// failed, one per line, with Python's reason.
func (m *Machine) warmUp(ctx context.Context, imports []string) (string, error) {
	select {
	case m.pyTurn <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-m.pyTurn }()
	sb, err := m.sandbox()
	if err != nil {
		return "", err
	}
	final, err := m.control(ctx, sb, wire.Request{Op: wire.OpPython, Warm: true, Imports: imports, TimeoutMS: warmUpTimeout.Milliseconds()})
	switch {
	case err != nil:
		return "", err
	case final.Error != "":
		return "", fmt.Errorf("its interpreter failed: %s", guest.ExceptionLine(final.Error))
	}
	m.mu.Lock()
	m.interp, m.interpPID = interpreterKey(sb, final.Interpreter), final.PID
	m.mu.Unlock()
	if final.Value != nil {
		return *final.Value, nil
	}
	return "", nil
}

// interpreterKey names one interpreter of one sandbox: a new key means the
// Python state was reset.
func interpreterKey(sb *sandbox, n int) string { return fmt.Sprintf("%p/%d", sb, n) }

// pss is the proportional set size of the machine's processes, bwrap's
// outer one included.
func (m *Machine) pss() int64 {
	m.mu.Lock()
	sb := m.sb
	m.mu.Unlock()
	if sb == nil {
		return 0
	}
	var total int64
	for _, pid := range append(m.HostPIDs(), sb.cmd.Process.Pid) {
		total += procMemField(pid, "smaps_rollup", "Pss:")
	}
	return total
}

// procMemField reads a "Name: N kB" field of /proc/pid/file, in bytes (0
// when it cannot).
func procMemField(pid int, file, field string) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/" + file)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// startQueue bounds how many sandboxes start at once and serves them in
// the order they asked, so that a burst of new machines waits its turn
// instead of taking every core from the calls of running machines.
type startQueue struct {
	mu      sync.Mutex
	limit   int
	running int
	waiting []chan struct{}
}

func (q *startQueue) acquire() {
	q.mu.Lock()
	if q.running < q.limit && len(q.waiting) == 0 {
		q.running++
		q.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	q.waiting = append(q.waiting, ch)
	q.mu.Unlock()
	<-ch // the releaser passed its place on
}

func (q *startQueue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) > 0 {
		close(q.waiting[0])
		q.waiting = q.waiting[1:]
		return
	}
	q.running--
}

// busy reports whether a start runs or waits.
func (q *startQueue) busy() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.running > 0 || len(q.waiting) > 0
}
