//go:build linux && !vmcp_nolocal

package local

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Reading a state directory that another process owns. A command that
// lists machines while a server runs on the state directory cannot open an
// Engine (the server holds the lock, and must: two engines would drive one
// machine); it reads the records instead. Reading changes nothing, and
// records are written whole (writeFileAtomic) and last, so a record read
// is complete, and a machine or snapshot being made or deleted is either
// there or not.

// ReadMachines lists the machines recorded in a state directory, oldest
// first, without taking the directory: what an Engine opened on it would
// load, except that their Status is unknown (""): only the engine that
// owns the directory knows what runs. Records that the next Engine would
// delete (unfinished, or of the warm pool) are left out.
func ReadMachines(stateDir string) ([]MachineInfo, error) {
	dirs, err := os.ReadDir(filepath.Join(stateDir, "machines"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []MachineInfo
	for _, d := range dirs {
		var info MachineInfo
		if !d.IsDir() || !ValidMachineID(d.Name()) || readJSON(filepath.Join(stateDir, "machines", d.Name(), "machine.json"), &info) != nil ||
			info.Warm || info.ID != d.Name() {
			continue
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// ReadSnapshots lists the snapshots recorded in a state directory, oldest
// first, without taking the directory (see ReadMachines).
func ReadSnapshots(stateDir string) ([]SnapshotInfo, error) {
	dirs, err := os.ReadDir(filepath.Join(stateDir, "snapshots"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, d := range dirs {
		var s SnapshotInfo
		if !d.IsDir() || !ValidSnapshotID(d.Name()) || readJSON(filepath.Join(stateDir, "snapshots", d.Name(), "snapshot.json"), &s) != nil || s.ID != d.Name() {
			continue
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// DiskUsage is the space that machine id of a state directory takes on
// disk, measured as Machine.DiskUsage measures it, without the engine: the
// measure reads and never follows a link, so what code in a running
// machine puts in its files cannot lead it out of them.
func DiskUsage(stateDir, id string) (int64, error) {
	if !ValidMachineID(id) {
		return 0, fmt.Errorf("machine %q: %w", id, ErrNotFound)
	}
	dir := filepath.Join(stateDir, "machines", id)
	var info MachineInfo
	if err := readJSON(filepath.Join(dir, "machine.json"), &info); err != nil {
		return 0, fmt.Errorf("machine %q: %w", id, ErrNotFound)
	}
	u, err := newMachine(nil, dir, info).measure()
	return u.Bytes, err
}
