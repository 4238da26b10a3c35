//go:build !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"io"
	"io/fs"

	"github.com/vmcp-dev/vmcp/backend"
	engine "github.com/vmcp-dev/vmcp/local"
)

// Create makes a machine; it starts on first use.
func (b *Backend) Create(ctx context.Context, spec backend.MachineSpec) (backend.MachineInfo, error) {
	policy := b.DefaultNetwork
	if spec.Network != nil {
		policy = *spec.Network
	}
	info, err := b.e.Create(ctx, engine.MachineSpec{Name: spec.Name, Tags: spec.Tags, FromSnapshot: spec.FromSnapshot,
		AllowNetwork: policy.Open, NetworkAllow: policy.Allow,
		Limits: engine.Limits{MemoryBytes: spec.MemoryMiB << 20, DiskBytes: spec.DiskMiB << 20}})
	if errors.Is(err, engine.ErrNotFound) {
		err = backend.ErrNotFound
	}
	return machineInfo(info), err
}

// Machine returns a machine of the engine.
func (b *Backend) Machine(_ context.Context, id string) (backend.Machine, error) {
	m, err := b.e.Machine(id)
	if errors.Is(err, engine.ErrNotFound) {
		return nil, backend.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &Machine{m}, nil
}

// Machines lists the engine's machines, oldest first.
func (b *Backend) Machines(context.Context) ([]backend.MachineInfo, error) {
	var out []backend.MachineInfo
	for _, info := range b.e.Machines() {
		out = append(out, machineInfo(info))
	}
	return out, nil
}

// Delete ends a machine's processes and removes its files.
func (b *Backend) Delete(ctx context.Context, id string) error {
	err := b.e.Delete(ctx, id)
	if errors.Is(err, engine.ErrNotFound) {
		return backend.ErrNotFound
	}
	return err
}

// Snapshots lists the engine's snapshots, oldest first.
func (b *Backend) Snapshots(context.Context) ([]backend.SnapshotInfo, error) {
	var out []backend.SnapshotInfo
	for _, s := range b.e.Snapshots() {
		out = append(out, snapshotInfo(s))
	}
	return out, nil
}

// Idle stops an idle machine's processes, its Python variables saved to
// its checkpoint first (see engine.Machine.SavePython); its files stay. It
// starts again on its next use, variables restored.
func (b *Backend) Idle(ctx context.Context, id string) (string, error) {
	m, err := b.e.Machine(id)
	if errors.Is(err, engine.ErrNotFound) {
		return "", backend.ErrNotFound
	}
	if err != nil {
		return "", err
	}
	// A state that cannot be saved is lost; the next call says why.
	m.StopSaving(ctx)
	return "", nil
}

func machineInfo(i engine.MachineInfo) backend.MachineInfo {
	return backend.MachineInfo{ID: i.ID, Name: i.Name, Backend: Name, Status: i.Status, Tags: i.Tags, CreatedAt: i.CreatedAt, FromSnapshot: i.FromSnapshot,
		Network: networkOf(i).String(), MemoryMiB: i.Limits.MemoryBytes >> 20, DiskMiB: i.Limits.DiskBytes >> 20}
}

func networkOf(i engine.MachineInfo) backend.Network {
	return backend.Network{Open: i.AllowNetwork, Allow: i.NetworkAllow}
}

// Network is the machine's network policy.
func (m *Machine) Network() backend.Network { return networkOf(m.m.Info()) }

func snapshotInfo(s engine.SnapshotInfo) backend.SnapshotInfo {
	info := backend.SnapshotInfo{ID: s.ID, Name: s.Name, Backend: Name, Machine: s.Machine, Status: "ready", CreatedAt: s.CreatedAt, SizeBytes: s.SizeBytes}
	if s.PythonCheckpoint != nil {
		info.Memory = s.PythonCheckpoint.Names
	}
	return info
}

// Machine is an engine machine with every capability.
type Machine struct {
	m *engine.Machine
}

var (
	_ backend.Idler             = (*Backend)(nil)
	_ backend.PythonRunner      = (*Machine)(nil)
	_ backend.NetworkReporter   = (*Machine)(nil)
	_ backend.CommandRunner     = (*Machine)(nil)
	_ backend.FileStore         = (*Machine)(nil)
	_ backend.Snapshotter       = (*Machine)(nil)
	_ backend.MemorySnapshotter = (*Machine)(nil)
)

// ID is the machine's id.
func (m *Machine) ID() string { return m.m.ID() }

// Backend is "local".
func (m *Machine) Backend() string { return Name }

// RunPython runs code in the machine's interpreter.
func (m *Machine) RunPython(ctx context.Context, code string, opts backend.PythonOptions) (*backend.PythonResult, error) {
	r, err := m.m.RunPython(ctx, code, engine.PythonOptions{Timeout: opts.Timeout, OnOutput: opts.OnOutput, Stdout: opts.Stdout, Stderr: opts.Stderr})
	if r == nil {
		return nil, err
	}
	// A result comes with an error when ctx ended or a writer failed: both
	// are the caller's to see.
	return &backend.PythonResult{Value: r.Value, Error: r.Error, Stdout: r.Stdout, Stderr: r.Stderr, Images: r.Images,
		Runtime: r.Runtime, TimedOut: r.TimedOut, StateReset: r.StateReset, StateRestored: r.StateRestored}, err
}

// Run runs a command.
func (m *Machine) Run(ctx context.Context, c backend.Command) (*backend.CommandResult, error) {
	r, err := m.m.Run(ctx, engine.Command{Argv: c.Argv, Shell: c.Shell, Stdin: c.Stdin, Env: c.Env, Workdir: c.Workdir,
		Timeout: c.Timeout, OnOutput: c.OnOutput, MaxOutput: c.MaxOutput, Stdout: c.Stdout, Stderr: c.Stderr,
		SaveOutput: c.SaveOutput, Keep: c.Keep, SaveMax: c.SaveMax})
	if err != nil {
		return nil, err
	}
	return &backend.CommandResult{ExitCode: r.ExitCode, Signal: r.Signal, Stdout: r.Stdout, Stderr: r.Stderr,
		StdoutTruncated: r.StdoutTruncated, StderrTruncated: r.StderrTruncated, TimedOut: r.TimedOut,
		QuotaExceeded: r.QuotaExceeded, Duration: r.Duration, Saved: savedStreams(r.Saved),
		LeftRunning: max(r.LeftRunning, 0)}, nil
}

// Reset stops the machine's processes from outside them.
func (m *Machine) Reset(ctx context.Context, keepPython bool) (int, error) {
	return m.m.Reset(ctx, keepPython)
}

// Processes lists the machine's processes.
func (m *Machine) Processes(ctx context.Context) ([]backend.ProcessInfo, error) {
	var out []backend.ProcessInfo
	for _, p := range m.m.Processes() {
		out = append(out, backend.ProcessInfo{PID: p.PID, Command: p.Command, CPU: p.CPU, Interpreter: p.Interpreter})
	}
	return out, nil
}

// WriteFile creates or replaces a file of the workspace.
func (m *Machine) WriteFile(ctx context.Context, p string, r io.Reader, mode fs.FileMode) (*backend.WriteResult, error) {
	w, err := m.m.WriteFile(ctx, p, r, mode)
	if err != nil {
		return nil, err
	}
	return &backend.WriteResult{Path: w.Path, Bytes: w.Bytes, SHA256: w.SHA256}, nil
}

// ReadFile streams a file to w.
func (m *Machine) ReadFile(ctx context.Context, p string, w io.Writer) (int64, error) {
	return m.m.ReadFile(ctx, p, w)
}

// Stat describes a path.
func (m *Machine) Stat(ctx context.Context, p string) (*backend.FileInfo, error) {
	fi, err := m.m.Stat(ctx, p)
	if err != nil {
		return nil, err
	}
	return &backend.FileInfo{Path: fi.Path, Size: fi.Size, Mode: fi.Mode, ModTime: fi.ModTime, IsDir: fi.IsDir}, nil
}

// CopyIn extracts a tar stream into a directory.
func (m *Machine) CopyIn(ctx context.Context, dir string, r io.Reader) error {
	return m.m.CopyIn(ctx, dir, r)
}

// CopyOut writes a file or directory as a tar stream.
func (m *Machine) CopyOut(ctx context.Context, p string, w io.Writer) error {
	return m.m.CopyOut(ctx, p, w)
}

// Snapshot saves the machine's files.
func (m *Machine) Snapshot(ctx context.Context, name string) (backend.SnapshotInfo, error) {
	s, err := m.m.Snapshot(ctx, name)
	return snapshotInfo(s), err
}

// SnapshotWithMemory saves the machine's files and Python variables.
func (m *Machine) SnapshotWithMemory(ctx context.Context, name string) (backend.SnapshotInfo, error) {
	s, err := m.m.SnapshotWithMemory(ctx, name)
	return snapshotInfo(s), err
}

func savedStreams(s *[2]engine.SavedStream) *[2]backend.SavedStream {
	if s == nil {
		return nil
	}
	var out [2]backend.SavedStream
	for i, x := range s {
		out[i] = backend.SavedStream{Total: x.Total, Lines: x.Lines, Tail: x.Tail, Path: x.Path, Partial: x.Partial, Err: x.Err}
	}
	return &out
}

// DeleteSnapshot removes a snapshot and its files.
func (b *Backend) DeleteSnapshot(_ context.Context, id string) error {
	err := b.e.DeleteSnapshot(id)
	if errors.Is(err, engine.ErrNotFound) {
		err = backend.ErrNotFound
	}
	return err
}
