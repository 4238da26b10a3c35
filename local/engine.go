//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/internal/safefs"
)

// MachineSpec describes a machine to create.
type MachineSpec struct {
	Name         string            // optional, for people; ids identify machines
	Tags         map[string]string // optional labels, stored with the machine
	Flavour      Flavour           // default Workspace
	AllowNetwork bool              // share the host's network; off by default
	// NetworkAllow, if set, is the machine's allow-list: it reaches these
	// domains (exact, or *.suffix) over HTTP(S) through the engine's proxy,
	// and nothing else (see EgressOptions).
	NetworkAllow []string
	// AllowUserNamespaces lets code in a workspace machine create user
	// namespaces of its own (e.g. to run a sandbox inside the sandbox). Off
	// by default: they widen the kernel's attack surface, and with them a
	// command's processes can leave the namespace that tracks them.
	AllowUserNamespaces bool
	Limits              Limits // zero fields take the engine's defaults
	FromSnapshot        string // start with this snapshot's files
}

// MachineInfo is a machine's metadata record.
type MachineInfo struct {
	ID           string            `json:"id"`
	Name         string            `json:"name,omitempty"`
	Tags         map[string]string `json:"tags,omitempty"`
	Flavour      Flavour           `json:"flavour"`
	AllowNetwork bool              `json:"allow_network"`
	NetworkAllow []string          `json:"network_allow,omitempty"`
	// AllowUserNamespaces: see MachineSpec.
	AllowUserNamespaces bool `json:"allow_user_namespaces,omitempty"`
	// Limits are what the machine may use: ChosenLimits, and the engine's
	// defaults for what its creator left at zero. Those follow the
	// defaults: an engine started with other defaults applies them to
	// such machines too (a restart with more memory gives the old default
	// machine more memory).
	Limits       Limits    `json:"limits"`
	ChosenLimits Limits    `json:"chosen_limits"`
	CreatedAt    time.Time `json:"created_at"`
	FromSnapshot string    `json:"from_snapshot,omitempty"`
	// VMHostIDBase is the host id that a VM machine's root maps to; its
	// files are owned by that range.
	VMHostIDBase int `json:"vm_host_id_base,omitempty"`
	// Warm marks a machine of the warm pool, not yet handed out: one left
	// on disk is deleted at the next start.
	Warm bool `json:"warm,omitempty"`
	// PythonCheckpoint, when set, is a saved Python state that the next
	// interpreter restores before its first instruction.
	PythonCheckpoint *Checkpoint `json:"python_checkpoint,omitempty"`
	// LastCheckpoint is the latest periodic save of the Python variables
	// (Options.CheckpointInterval): after a crash, the next start
	// restores it.
	LastCheckpoint *Checkpoint `json:"last_checkpoint,omitempty"`
	// PythonUsed is set once the machine has run Python, so that the first
	// call after a restart of the engine can say that the state was reset.
	PythonUsed bool `json:"python_used,omitempty"`
	// Status is StatusRunning or StatusStopped; not stored.
	Status string `json:"-"`
}

// ErrNotFound is returned for machines and snapshots that do not exist.
var ErrNotFound = errors.New("not found")

// ErrClosed is returned for calls on an engine that was closed.
var ErrClosed = errors.New("the sandbox engine is closed")

// Engine owns the machines and snapshots under one state directory. Only
// one Engine may use a state directory at a time.
type Engine struct {
	opts      Options
	helper    string // this binary, started as the agent inside sandboxes
	bwrap     string
	cgroups   *cgroupManager
	asRoot    bool
	lock      *os.File
	startedAt time.Time

	monitor *monitor

	mu        sync.Mutex
	machines  map[string]*Machine
	snapshots map[string]SnapshotInfo
	closed    bool

	selfTestDone chan struct{}
	selfTestErr  error // set before selfTestDone closes

	warm   *warmPool // nil without one
	starts *startQueue
	calls  atomic.Int64 // Python instructions and commands running
	// lastCall is when the last of them began (Unix nanoseconds).
	lastCall atomic.Int64
	// callBegan is told of each call's beginning (it holds one).
	callBegan chan struct{}
}

// noteCall notes that a call begins.
func (e *Engine) noteCall() {
	e.lastCall.Store(time.Now().UnixNano())
	select {
	case e.callBegan <- struct{}{}:
	default:
	}
}

// New opens (or creates) the state directory and loads its machines and
// snapshots, and starts a self-test of the sandbox in the background: where
// sandboxes cannot run (bubblewrap missing, no user namespaces, a hidden
// /proc), the engine still serves its state, and every machine call
// answers with SelfTest's diagnosis.
func New(opts Options) (*Engine, error) {
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir()
	}
	if abs, err := filepath.Abs(opts.StateDir); err == nil {
		opts.StateDir = abs
	}
	if opts.Python == "" {
		opts.Python = "/usr/bin/python3"
	}
	if opts.SandboxUID == 0 {
		opts.SandboxUID = 65534
	}
	if opts.SandboxGID == 0 {
		opts.SandboxGID = 65534
	}
	if opts.VMHostIDBase == 0 {
		opts.VMHostIDBase = defaultVMHostIDBase
	}
	opts.Limits = opts.Limits.withDefaults(DefaultLimits)
	e := &Engine{
		opts:      opts,
		asRoot:    os.Geteuid() == 0,
		machines:  map[string]*Machine{},
		snapshots: map[string]SnapshotInfo{},
		startedAt: time.Now(),
		starts:    &startQueue{limit: max(2, runtime.NumCPU())},
		callBegan: make(chan struct{}, 1),
	}
	var err, missingBwrap error
	if e.helper, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("find this binary to run as the sandbox agent: %w", err)
	}
	if !opts.DangerouslyDisableSandbox {
		bwrap := opts.Bwrap
		if bwrap == "" {
			bwrap = "bwrap"
		}
		if e.bwrap, err = exec.LookPath(bwrap); err != nil {
			missingBwrap = errMissingBwrap
		}
	}
	for _, d := range []string{"machines", "snapshots", "etc"} {
		if err := os.MkdirAll(filepath.Join(opts.StateDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("create state directory: %w", err)
		}
	}
	if e.lock, err = lockStateDir(opts.StateDir); err != nil {
		return nil, err
	}
	if err := e.writeIdentityFiles(); err != nil {
		e.lock.Close()
		return nil, err
	}
	e.cgroups = newCgroupManager(e.asRoot && !opts.DangerouslyDisableSandbox, opts.StateDir)
	e.cgroups.reconcile(func(string) bool { return false }) // nothing runs yet
	if err := e.load(); err != nil {
		e.lock.Close()
		return nil, err
	}
	e.startMonitor()
	e.startSelfTest(missingBwrap)
	e.startWarmPool()
	e.startCheckpoints()
	return e, nil
}

// Sandboxed reports whether machines are isolated with bubblewrap.
func (e *Engine) Sandboxed() bool { return !e.opts.DangerouslyDisableSandbox }

// StateDir is the directory the engine keeps its machines and snapshots in.
func (e *Engine) StateDir() string { return e.opts.StateDir }

func (e *Engine) load() error {
	dirs, err := os.ReadDir(filepath.Join(e.opts.StateDir, "machines"))
	if err != nil {
		return err
	}
	for _, d := range dirs {
		dir := filepath.Join(e.opts.StateDir, "machines", d.Name())
		var info MachineInfo
		if err := readJSON(filepath.Join(dir, "machine.json"), &info); err != nil || info.Warm {
			// A machine whose creation did not finish, or one of the warm
			// pool: nothing announced it.
			removeAll(dir)
			continue
		}
		// Limits left to the defaults take today's defaults. (Machines of
		// versions that did not record ChosenLimits take them all.)
		info.Limits = info.ChosenLimits.withDefaults(e.opts.Limits)
		m := newMachine(e, dir, info)
		if info.PythonUsed && info.PythonCheckpoint == nil && info.LastCheckpoint != nil {
			// A crash after a periodic save: that save is what is left.
			m.info.PythonCheckpoint, m.info.LastCheckpoint = info.LastCheckpoint, nil
		}
		if info.PythonUsed && m.info.PythonCheckpoint == nil {
			m.resetReason = "vmcp restarted since the last call, without saving the Python variables (it was killed, or it crashed)"
		}
		e.machines[info.ID] = m
	}
	snaps, err := os.ReadDir(filepath.Join(e.opts.StateDir, "snapshots"))
	if err != nil {
		return err
	}
	for _, d := range snaps {
		var s SnapshotInfo
		dir := filepath.Join(e.opts.StateDir, "snapshots", d.Name())
		if err := readJSON(filepath.Join(dir, "snapshot.json"), &s); err != nil {
			os.RemoveAll(dir)
			continue
		}
		e.snapshots[s.ID] = s
	}
	return nil
}

// Create makes a new machine. Its sandbox starts on first use.
func (e *Engine) Create(ctx context.Context, spec MachineSpec) (MachineInfo, error) {
	if spec.Flavour == "" {
		spec.Flavour = Workspace
	}
	if spec.Flavour != Workspace && spec.Flavour != VM {
		return MachineInfo{}, fmt.Errorf("unknown machine flavour %q: use %q or %q", spec.Flavour, Workspace, VM)
	}
	if err := e.SelfTest(ctx); err != nil {
		return MachineInfo{}, err
	}
	if spec.Flavour == VM && e.opts.DangerouslyDisableSandbox {
		return MachineInfo{}, errors.New("vm machines need the sandbox; it is disabled")
	}
	if spec.Flavour == VM && !e.asRoot {
		return MachineInfo{}, errVMNeedsRoot
	}
	if err := backend.ValidateDomains(spec.NetworkAllow); err != nil {
		return MachineInfo{}, err
	}
	if spec.AllowNetwork && len(spec.NetworkAllow) > 0 {
		return MachineInfo{}, errors.New("a machine has the host's network or an allow-list, not both")
	}
	if len(spec.NetworkAllow) > 0 && e.opts.DangerouslyDisableSandbox {
		return MachineInfo{}, errors.New("an allow-list needs the sandbox (without it, machines have the host's network); it is disabled")
	}
	var snap SnapshotInfo
	if spec.FromSnapshot != "" {
		var err error
		if snap, err = e.Snapshot(spec.FromSnapshot); err != nil {
			return MachineInfo{}, err
		}
		if snap.Flavour != spec.Flavour {
			return MachineInfo{}, fmt.Errorf("snapshot %s is of a %s machine; launch it as one", snap.ID, snap.Flavour)
		}
	}
	if m := e.warm.take(spec); m != nil {
		if info, err := e.adopt(m, spec); err == nil {
			return info, nil
		}
	}
	if err := e.checkReserve(); err != nil {
		return MachineInfo{}, err
	}
	m, err := e.materialize(ctx, e.newInfo(spec), snap)
	if err != nil {
		return MachineInfo{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		removeAll(m.dir)
		return MachineInfo{}, ErrClosed
	}
	e.machines[m.info.ID] = m
	info := m.info
	info.Status = StatusStopped
	return info, nil
}

// newInfo is the record of a new machine of spec.
func (e *Engine) newInfo(spec MachineSpec) MachineInfo {
	info := MachineInfo{
		ID:                  newID("m"),
		Name:                spec.Name,
		Tags:                spec.Tags,
		Flavour:             spec.Flavour,
		AllowNetwork:        spec.AllowNetwork,
		NetworkAllow:        spec.NetworkAllow,
		AllowUserNamespaces: spec.AllowUserNamespaces,
		Limits:              spec.Limits.withDefaults(e.opts.Limits),
		ChosenLimits:        spec.Limits,
		CreatedAt:           time.Now().UTC(),
		FromSnapshot:        spec.FromSnapshot,
	}
	if info.Flavour == VM {
		info.VMHostIDBase = e.opts.VMHostIDBase
	}
	return info
}

// materialize makes a machine's directory and record (the files of snap,
// if given), not yet known to the engine.
func (e *Engine) materialize(ctx context.Context, info MachineInfo, snap SnapshotInfo) (*Machine, error) {
	if info.Flavour == VM && snap.ID != "" {
		info.VMHostIDBase = snap.VMHostIDBase // its files' owners: moved at the first start
	}
	// The snapshot's Python variables came with its files: the first call
	// restores them.
	info.PythonCheckpoint = snap.PythonCheckpoint
	dir := filepath.Join(e.opts.StateDir, "machines", info.ID)
	if err := e.prepareMachineDir(ctx, dir, info, snap); err != nil {
		removeAll(dir)
		return nil, err
	}
	// The record is written last: a machine without one was never created.
	if err := writeJSON(filepath.Join(dir, "machine.json"), info); err != nil {
		removeAll(dir)
		return nil, err
	}
	return newMachine(e, dir, info), nil
}

func (e *Engine) prepareMachineDir(ctx context.Context, dir string, info MachineInfo, snap SnapshotInfo) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data := filepath.Join(dir, dataDirName(info.Flavour))
	if snap.ID != "" {
		if err := copyTree(ctx, filepath.Join(e.opts.StateDir, "snapshots", snap.ID, "data"), data); err != nil {
			return fmt.Errorf("copy snapshot %s: %w", snap.ID, err)
		}
	} else if err := os.Mkdir(data, 0o755); err != nil {
		return err
	}
	if info.Flavour == Workspace {
		return e.chownToSandbox(data)
	}
	return nil
}

// dataDirName is the directory in a machine's state that holds its files:
// the workspace, or the VM's filesystem changes.
func dataDirName(f Flavour) string {
	if f == VM {
		return "root"
	}
	return "workspace"
}

// Machine returns the machine with this id.
func (e *Engine) Machine(id string) (*Machine, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m, ok := e.machines[id]
	if !ok {
		return nil, fmt.Errorf("machine %q: %w", id, ErrNotFound)
	}
	return m, nil
}

// Machines lists every machine, oldest first.
func (e *Engine) Machines() []MachineInfo {
	e.mu.Lock()
	ms := make([]*Machine, 0, len(e.machines))
	for _, m := range e.machines {
		ms = append(ms, m)
	}
	e.mu.Unlock()
	out := make([]MachineInfo, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Info())
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Delete ends a machine's processes and removes everything it stored.
func (e *Engine) Delete(ctx context.Context, id string) error {
	e.mu.Lock()
	m, ok := e.machines[id]
	if ok {
		delete(e.machines, id)
	}
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("machine %q: %w", id, ErrNotFound)
	}
	m.markDeleted()
	m.Stop()
	e.cgroups.remove(id)
	// Remove the record first so that a crash half-way leaves no machine
	// behind, only a directory that the next start cleans up.
	os.Remove(filepath.Join(m.dir, "machine.json"))
	return removeAll(m.dir)
}

// Close stops every machine's processes. Machines and snapshots stay on disk.
func (e *Engine) Close() error {
	e.mu.Lock()
	e.closed = true
	ms := make([]*Machine, 0, len(e.machines))
	for _, m := range e.machines {
		ms = append(ms, m)
	}
	e.mu.Unlock()
	e.warm.close()
	// Stopping on purpose: the variables go to each machine's checkpoint,
	// for the next start of the engine to restore.
	e.saveAll(ms)
	e.monitor.close()
	for _, m := range ms {
		m.Stop()
		e.cgroups.remove(m.ID())
	}
	e.cgroups.close()
	return e.lock.Close()
}

func newID(prefix string) string {
	b := make([]byte, 10)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// writeFileAtomic replaces path with data so that a crash leaves either the
// old or the new content.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// removeAll removes a machine or snapshot directory, including files that an
// overlay's work directory left without write permission.
func removeAll(dir string) error { return safefs.RemoveAll(dir) }

func (e *Engine) chownToSandbox(path string) error {
	if !e.asRoot || e.opts.DangerouslyDisableSandbox {
		return nil
	}
	return os.Lchown(path, e.opts.SandboxUID, e.opts.SandboxGID)
}

func (e *Engine) writeIdentityFiles() error {
	// Workspace machines see their user by name; the host's own accounts
	// are none of their business.
	passwd := "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:vmcp sandbox:/workspace:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
	group := "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"
	for name, content := range map[string]string{"passwd": passwd, "group": group} {
		path := filepath.Join(e.opts.StateDir, "etc", name)
		if b, err := os.ReadFile(path); err == nil && string(b) == content {
			continue
		}
		if err := writeFileAtomic(path, []byte(content)); err != nil {
			return err
		}
		os.Chmod(path, 0o644)
	}
	return os.Chmod(filepath.Join(e.opts.StateDir, "etc"), 0o755)
}
