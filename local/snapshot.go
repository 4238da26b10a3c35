//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/vmcp-dev/vmcp/internal/safefs"
)

// SnapshotInfo describes a saved copy of a machine's files: the workspace of
// a workspace machine, or every change a VM machine made to its root
// filesystem. Processes and Python state are not part of it.
type SnapshotInfo struct {
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	Machine   string    `json:"machine"` // the machine it was taken from
	Flavour   Flavour   `json:"flavour"`
	CreatedAt time.Time `json:"created_at"`
	SizeBytes int64     `json:"size_bytes"`
	// VMHostIDBase is the id range a VM snapshot's files are owned by.
	VMHostIDBase int `json:"vm_host_id_base,omitempty"`
	// PythonCheckpoint, for a snapshot taken with the machine's Python
	// variables, describes them: a machine launched from it restores them.
	PythonCheckpoint *Checkpoint `json:"python_checkpoint,omitempty"`
}

// Snapshot saves the machine's files under a new snapshot id. The machine
// keeps running; a file being written during the copy may be caught half
// way, and an entry that code in the machine swaps for a link or a special
// file during the copy is left out (never followed).
func (m *Machine) Snapshot(ctx context.Context, name string) (SnapshotInfo, error) {
	return m.snapshot(ctx, name, nil)
}

// SnapshotWithMemory is Snapshot with the Python variables: they are saved
// into the machine's files first (see SavePython), so that a machine
// launched from the snapshot restores them; the machine itself goes on
// with its interpreter untouched. A machine whose interpreter has not
// started has none, and gets a plain snapshot.
func (m *Machine) SnapshotWithMemory(ctx context.Context, name string) (SnapshotInfo, error) {
	if err := m.e.checkReserve(); err != nil {
		return SnapshotInfo{}, err
	}
	select {
	case m.pyTurn <- struct{}{}:
	case <-ctx.Done():
		return SnapshotInfo{}, ctx.Err()
	}
	defer func() { <-m.pyTurn }()
	cp, err := m.savePython(ctx)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("save the Python variables for the snapshot (snapshot without them with include_memory false): %w", err)
	}
	if cp == nil {
		// A machine stopped with its variables saved has them in its
		// files already.
		m.mu.Lock()
		cp = m.info.PythonCheckpoint
		m.mu.Unlock()
		return m.snapshot(ctx, name, cp)
	}
	// The checkpoint file is the snapshot's now, not the machine's.
	defer m.discardCheckpoint(ctx)
	return m.snapshot(ctx, name, cp)
}

func (m *Machine) snapshot(ctx context.Context, name string, cp *Checkpoint) (SnapshotInfo, error) {
	info := m.Info()
	s := SnapshotInfo{ID: newID("s"), Name: name, Machine: info.ID, Flavour: info.Flavour, CreatedAt: time.Now().UTC(), VMHostIDBase: info.VMHostIDBase,
		PythonCheckpoint: cp}
	if err := m.e.checkReserve(); err != nil {
		return SnapshotInfo{}, err
	}
	dir := filepath.Join(m.e.opts.StateDir, "snapshots", s.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return SnapshotInfo{}, err
	}
	if err := copyTree(ctx, filepath.Join(m.dir, dataDirName(info.Flavour)), filepath.Join(dir, "data")); err != nil {
		removeAll(dir)
		return SnapshotInfo{}, fmt.Errorf("snapshot machine %s: %w", info.ID, err)
	}
	if u, err := safefs.Measure(ctx, filepath.Join(dir, "data")); err == nil {
		s.SizeBytes = u.Bytes
	}
	// The record is written last: a snapshot without one never existed.
	if err := writeJSON(filepath.Join(dir, "snapshot.json"), s); err != nil {
		removeAll(dir)
		return SnapshotInfo{}, err
	}
	m.e.mu.Lock()
	m.e.snapshots[s.ID] = s
	m.e.mu.Unlock()
	return s, nil
}

// Snapshot returns the snapshot with this id.
func (e *Engine) Snapshot(id string) (SnapshotInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.snapshots[id]
	if !ok {
		return SnapshotInfo{}, fmt.Errorf("snapshot %q: %w", id, ErrNotFound)
	}
	return s, nil
}

// Snapshots lists every snapshot, oldest first.
func (e *Engine) Snapshots() []SnapshotInfo {
	e.mu.Lock()
	out := make([]SnapshotInfo, 0, len(e.snapshots))
	for _, s := range e.snapshots {
		out = append(out, s)
	}
	e.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// DeleteSnapshot removes a snapshot and its files. Machines launched from
// it are not affected.
func (e *Engine) DeleteSnapshot(id string) error {
	e.mu.Lock()
	_, ok := e.snapshots[id]
	delete(e.snapshots, id)
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("snapshot %q: %w", id, ErrNotFound)
	}
	dir := filepath.Join(e.opts.StateDir, "snapshots", id)
	os.Remove(filepath.Join(dir, "snapshot.json"))
	return removeAll(dir)
}

// copyTree copies a machine's files, which code in the machine may be
// changing while it runs: never following a link out of the tree (see
// safefs), with modes, owners, links and extended attributes (overlay
// whiteouts among them), sharing blocks where the filesystem can.
func copyTree(ctx context.Context, src, dst string) error {
	return safefs.Copy(ctx, src, dst)
}
