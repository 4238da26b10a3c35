// Package backendfake is an in-memory backend for tests of the layers
// above the backends (tools, broker, sessions): machines with a tiny fake
// Python, a few shell built-ins, files and snapshots, all in this process,
// created in microseconds, on a clock the test controls. It passes the
// suite of package backendtest (with Options.RealPython off), so what a
// test learns against it holds against the real backends too.
//
// Its limits, on purpose:
//   - Python is not Python. It runs statements one per line (or separated
//     by ';'): `name = expr`, `print(expr, ...)` with an optional
//     `file=sys.stderr`, `time.sleep(expr)`, `import ...` (ignored) and bare
//     expressions, whose repr is the value of the last one. Expressions are
//     int (64-bit), float, str literals, True, False, None, names, unary
//     minus, + - * / // % and parentheses. Anything else is a SyntaxError;
//     there are no loops, functions, calls or files.
//   - Commands are a shell of built-ins: echo (with `> file` and `>&2`), cat
//     (files or stdin), printenv, pwd, mkdir [-p], rm [-rf], sleep, true,
//     false and exit, separated by ';' or newlines, with words split on
//     blanks and quoted with '…' or "…" (no expansion, pipes or &&). Argv
//     runs a built-in by its name, and sh -c / bash -c run a line.
//   - Files live in a map under Home; modes are stored, not enforced.
//   - Snapshots keep files only, as on the real backends; Python state
//     lives until the machine is idled. The first Python call of a machine
//     created from a snapshot says that the state was reset (as FastVM's
//     does), since it may be a parked machine brought back.
//
// Sleeps (time.sleep, sleep) take real time and honour timeouts and
// cancellation; every timestamp (creation, modification, last use,
// runtimes) comes from Options.Now, so that a test can move time on in
// milliseconds.
package backendfake

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// Name is the backend's default name.
const Name = "fake"

// Home is where relative paths of a fake machine start, and its commands'
// working directory.
const Home = "/home/fake"

// DefaultTimeout is how long Python may run when the call gives no
// timeout, as on the local engine.
const DefaultTimeout = 15 * time.Second

// Options configure a Backend.
type Options struct {
	// Name is what Name and the machines' Backend return; default "fake".
	Name string
	// Now is the clock of every timestamp; default time.Now.
	Now func() time.Time
	// IdleParks makes Idle park a machine as a snapshot (as FastVM does
	// without pause) rather than stop it (as the local engine does).
	IdleParks bool
}

// Backend is the fake backend. Its zero value is not usable: call New.
type Backend struct {
	name      string
	now       func() time.Time
	idleParks bool

	mu        sync.Mutex
	machines  map[string]*Machine
	snapshots map[string]*snapshot
	// seq orders machines and snapshots made at the same instant of a
	// clock that a test holds still.
	seq int
}

type snapshot struct {
	info  backend.SnapshotInfo
	files map[string]*file
	seq   int
}

// New returns an empty fake backend.
func New(opts Options) *Backend {
	if opts.Name == "" {
		opts.Name = Name
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Backend{name: opts.Name, now: opts.Now, idleParks: opts.IdleParks,
		machines: map[string]*Machine{}, snapshots: map[string]*snapshot{}}
}

var (
	_ backend.Backend         = (*Backend)(nil)
	_ backend.Idler           = (*Backend)(nil)
	_ backend.SnapshotDeleter = (*Backend)(nil)
	_ backend.PythonRunner    = (*Machine)(nil)
	_ backend.CommandRunner   = (*Machine)(nil)
	_ backend.FileStore       = (*Machine)(nil)
	_ backend.Snapshotter     = (*Machine)(nil)
)

// Name is the backend's name.
func (b *Backend) Name() string { return b.name }

// Has reports Python, Shell, Files and Snapshots: the interfaces its
// machines implement.
func (b *Backend) Has(c backend.Capability) bool {
	switch c {
	case backend.Python, backend.Shell, backend.Files, backend.Snapshots:
		return true
	}
	return false
}

var idShape = regexp.MustCompile(`^fake-[0-9a-f]{16}$`)

// Recognizes reports whether id looks like a fake machine id.
func (b *Backend) Recognizes(id string) bool { return idShape.MatchString(id) }

func newID(prefix string) string {
	var r [8]byte
	rand.Read(r[:])
	return prefix + hex.EncodeToString(r[:])
}

// Create makes a machine, with the files of spec.FromSnapshot if set.
// Network policies and sizes are taken and ignored.
func (b *Backend) Create(_ context.Context, spec backend.MachineSpec) (backend.MachineInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	files := map[string]*file{".": {dir: true, mode: 0o755, mod: b.now()}}
	if spec.FromSnapshot != "" {
		s := b.snapshots[spec.FromSnapshot]
		if s == nil {
			return backend.MachineInfo{}, fmt.Errorf("snapshot %s: %w", spec.FromSnapshot, backend.ErrNotFound)
		}
		files = cloneFiles(s.files)
	}
	m := &Machine{b: b, files: files, turn: make(chan struct{}, 1), vars: map[string]value{}}
	if spec.FromSnapshot != "" {
		// As on FastVM: the machine may be a parked one brought back,
		// whose caller must learn that its variables did not come along.
		m.pythonUsed, m.resetReason = true, "the machine was created from a snapshot, which keeps files only"
	}
	m.info = backend.MachineInfo{ID: newID("fake-"), Name: spec.Name, Backend: b.name, Status: "running",
		Tags: maps.Clone(spec.Tags), CreatedAt: b.now(), FromSnapshot: spec.FromSnapshot}
	if spec.Network != nil {
		m.info.Network = spec.Network.String()
	}
	m.lastUsed = m.info.CreatedAt
	b.seq++
	m.seq = b.seq
	b.machines[m.info.ID] = m
	return m.infoLocked(), nil
}

// Machine returns a machine; ErrNotFound if there is none.
func (b *Backend) Machine(_ context.Context, id string) (backend.Machine, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.machines[id]
	if m == nil {
		return nil, backend.ErrNotFound
	}
	return m, nil
}

// Machines lists the machines, oldest first.
func (b *Backend) Machines(context.Context) ([]backend.MachineInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ms := slices.SortedFunc(maps.Values(b.machines), func(x, y *Machine) int { return x.seq - y.seq })
	out := make([]backend.MachineInfo, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.infoLocked())
	}
	return out, nil
}

// Delete removes a machine and its files.
func (b *Backend) Delete(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.machines[id] == nil {
		return backend.ErrNotFound
	}
	b.machines[id].deleted = true
	delete(b.machines, id)
	return nil
}

// Snapshots lists the snapshots, oldest first.
func (b *Backend) Snapshots(context.Context) ([]backend.SnapshotInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []backend.SnapshotInfo{}
	for _, s := range slices.SortedFunc(maps.Values(b.snapshots), func(x, y *snapshot) int { return x.seq - y.seq }) {
		out = append(out, s.info)
	}
	return out, nil
}

// DeleteSnapshot removes a snapshot.
func (b *Backend) DeleteSnapshot(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.snapshots[id] == nil {
		return backend.ErrNotFound
	}
	delete(b.snapshots, id)
	return nil
}

// Idle stops a machine: its Python state goes (the next call says so) and
// its files stay. With Options.IdleParks it is snapshotted instead, and the
// snapshot returned for the caller to record before it deletes the machine.
func (b *Backend) Idle(_ context.Context, id string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.machines[id]
	if m == nil {
		return "", backend.ErrNotFound
	}
	if b.idleParks {
		return b.snapshotLocked(m, "vmcp-parked-"+id).ID, nil
	}
	if !m.stopped {
		m.stopped = true
		if len(m.vars) > 0 || m.pythonUsed {
			m.resetReason = "the machine was stopped since the last call"
		}
		m.vars = map[string]value{}
	}
	return "", nil
}

// LastUsed is when a machine was created or last called (on the clock of
// Options.Now); false if there is no such machine.
func (b *Backend) LastUsed(id string) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.machines[id]
	if m == nil {
		return time.Time{}, false
	}
	return m.lastUsed, true
}

func (b *Backend) snapshotLocked(m *Machine, name string) backend.SnapshotInfo {
	b.seq++
	s := &snapshot{files: cloneFiles(m.files), seq: b.seq}
	var size int64
	for _, f := range s.files {
		size += int64(len(f.data))
	}
	s.info = backend.SnapshotInfo{ID: newID("fakesnap-"), Name: name, Backend: b.name, Machine: m.info.ID,
		Status: "ready", CreatedAt: b.now(), SizeBytes: size}
	b.snapshots[s.info.ID] = s
	return s.info
}

// Machine is a fake machine.
type Machine struct {
	b *Backend
	// turn lets one Python instruction run at a time, as in a real REPL.
	turn chan struct{}

	// The rest is guarded by b.mu.
	seq         int
	info        backend.MachineInfo
	files       map[string]*file // by cleaned path relative to Home; "." is Home
	vars        map[string]value
	pythonUsed  bool
	stopped     bool
	resetReason string
	lastUsed    time.Time
	deleted     bool
}

// ID is the machine's id.
func (m *Machine) ID() string { return m.info.ID }

// Backend is the backend's name.
func (m *Machine) Backend() string { return m.b.name }

func (m *Machine) infoLocked() backend.MachineInfo {
	info := m.info
	info.Tags = maps.Clone(info.Tags)
	if m.stopped {
		info.Status = "stopped"
	}
	return info
}

// use marks the machine used now and running again; it fails for a
// deleted machine.
func (m *Machine) use() error {
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	if m.deleted {
		return fmt.Errorf("fake machine %s: %w", m.info.ID, backend.ErrNotFound)
	}
	m.lastUsed = m.b.now()
	m.stopped = false
	return nil
}

// Snapshot saves the machine's files.
func (m *Machine) Snapshot(_ context.Context, name string) (backend.SnapshotInfo, error) {
	if err := m.use(); err != nil {
		return backend.SnapshotInfo{}, err
	}
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	return m.b.snapshotLocked(m, name), nil
}

// sleep waits d, or until ctx ends or the deadline passes; it says why it
// stopped early ("" when it did not).
func sleep(ctx context.Context, d time.Duration, deadline time.Time) string {
	timedOut := false
	if !deadline.IsZero() && time.Now().Add(d).After(deadline) {
		d, timedOut = time.Until(deadline), true
	}
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return "cancelled"
	case <-t.C:
		if timedOut {
			return "timed out"
		}
		return ""
	}
}
