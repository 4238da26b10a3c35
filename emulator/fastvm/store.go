//go:build linux

package fastvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

// The emulator's records live in a JSON file per VM, snapshot and build under
// <engine state dir>/fastvm-emulator/, next to the engine's machines. Not in
// the machines' Tags: the engine fixes tags at creation, while PATCH changes
// a VM's name and metadata and the firewall is a structured policy; snapshots
// and builds need records of their own anyway. Each file is replaced
// atomically (temporary file, then rename) before a response announces its
// content, so a restart of the emulator on the same state directory finds
// every VM, snapshot and build it told a client about. Tags do carry the
// record's id, so machines the emulator created but never recorded (a crash
// in between) can be found and removed.

const (
	storeDirName = "fastvm-emulator"
	tagVM        = "fastvm-emulator.vm"    // on a VM's machine: the VM id
	tagBuild     = "fastvm-emulator.build" // on a build VM's machine: the build id
)

// VM statuses (§6, and §9's pausing, paused, resuming). Spec §13 #14: queued
// and pending are never emitted.
const (
	statusProvisioning = "provisioning"
	statusRunning      = "running"
	statusPausing      = "pausing"
	statusPaused       = "paused"
	statusResuming     = "resuming"
	statusDeleting     = "deleting"
	statusError        = "error"
)

// Snapshot statuses (§3.4).
const (
	snapCreating = "creating"
	snapReady    = "ready"
	snapError    = "error"
)

// Build statuses (§3.5).
const (
	buildPending   = "pending"
	buildRunning   = "running"
	buildCompleted = "completed"
	buildFailed    = "failed"
)

type vmRecord struct {
	ID          string            `json:"id"`
	MachineID   string            `json:"machineId,omitempty"` // the local engine machine
	Name        string            `json:"name"`
	MachineName string            `json:"machineName"`
	SourceName  string            `json:"sourceName,omitempty"`
	CPU         int               `json:"cpu"`
	MemoryMiB   int               `json:"memoryMiB"`
	DiskGiB     int               `json:"diskGiB"`
	Status      string            `json:"status"`
	CreatedAt   time.Time         `json:"createdAt"`
	Firewall    *firewallPolicy   `json:"firewall,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Problem     string            `json:"problem,omitempty"` // why it is in status error (not on the wire)
	// The extensions of §9.
	EnvVars map[string]string `json:"envVars,omitempty"`
	TTL     *vmTTL            `json:"ttl,omitempty"`
	// ExpiresAt is when the TTL fires, while running; TTLRemaining is what
	// is left of its cycle, while paused (the countdown stops).
	ExpiresAt    time.Time     `json:"expiresAt,omitzero"`
	TTLRemaining time.Duration `json:"ttlRemaining,omitempty"`
	PausedAt     time.Time     `json:"pausedAt,omitzero"`
	Services     []service     `json:"services,omitempty"` // sorted by name
	// PauseSnapshot is the snapshot taken during the current pause, which
	// a repeated POST /v1/snapshots answers again (§9).
	PauseSnapshot string `json:"pauseSnapshot,omitempty"`
	// ImageEnv is the ENV of the image the VM was launched from (a build's
	// snapshot, or a snapshot of a VM launched from one): beneath EnvVars
	// in every command's environment, not on the wire.
	ImageEnv map[string]string `json:"imageEnv,omitempty"`
}

// vmTTL is a VM's auto-action timer (§9).
type vmTTL struct {
	Action  string `json:"action"` // ttlPause or ttlDelete
	Seconds int64  `json:"seconds"`
}

// service is an HTTPS reverse-proxy registration (§9); h2c is optional in
// a snapshot's list.
type service struct {
	Name string `json:"name"`
	Port int    `json:"port"`
	H2C  bool   `json:"h2c,omitempty"`
}

type snapshotRecord struct {
	ID          string            `json:"id"`
	LocalID     string            `json:"localId,omitempty"` // the local engine snapshot
	Name        string            `json:"name"`
	VMID        string            `json:"vmId"`
	Status      string            `json:"status"`
	CreatedAt   time.Time         `json:"createdAt"`
	Firewall    *firewallPolicy   `json:"firewall,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	MachineName string            `json:"machineName"` // what a restore inherits
	DiskGiB     int               `json:"diskGiB"`
	EnvVars     map[string]string `json:"envVars,omitempty"`
	Services    []service         `json:"services,omitempty"`
	ImageEnv    map[string]string `json:"imageEnv,omitempty"` // see vmRecord
}

type buildRecord struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	ImageRef   string    `json:"imageRef"`
	Status     string    `json:"status"`
	Progress   string    `json:"progress,omitempty"`
	SnapshotID string    `json:"snapshotId,omitempty"`
	Error      string    `json:"error,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	// What the build was asked for.
	Dockerfile  string `json:"dockerfile,omitempty"`
	ContextOID  string `json:"contextObject,omitempty"`
	MachineName string `json:"machineName"`
	DiskGiB     int    `json:"diskGiB"`
	// Ignored lists the instructions accepted and recorded but not applied.
	Ignored []string `json:"ignored,omitempty"`
	// Base is the OS (and Python) the build really started from; FromWarning
	// says that the image it was asked for was not used; Log is its log.
	Base        string `json:"base,omitempty"`
	FromWarning string `json:"fromWarning,omitempty"`
	Log         string `json:"log,omitempty"`
}

type store struct {
	dir       string
	orgID     string
	vms       map[string]*vmRecord
	snapshots map[string]*snapshotRecord
	builds    map[string]*buildRecord
}

func openStore(stateDir string) (*store, error) {
	st := &store{
		dir:       filepath.Join(stateDir, storeDirName),
		vms:       map[string]*vmRecord{},
		snapshots: map[string]*snapshotRecord{},
		builds:    map[string]*buildRecord{},
	}
	for _, d := range []string{"vms", "snapshots", "builds"} {
		if err := os.MkdirAll(filepath.Join(st.dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("fastvm emulator: create its state directory: %w", err)
		}
	}
	var org struct {
		OrgID string `json:"orgId"`
	}
	orgFile := filepath.Join(st.dir, "org.json")
	if err := readJSONFile(orgFile, &org); err != nil || org.OrgID == "" {
		org.OrgID = newUUID()
		if err := writeJSONFile(orgFile, org); err != nil {
			return nil, fmt.Errorf("fastvm emulator: write %s: %w", orgFile, err)
		}
	}
	st.orgID = org.OrgID
	if err := loadRecords(filepath.Join(st.dir, "vms"), st.vms); err != nil {
		return nil, err
	}
	if err := loadRecords(filepath.Join(st.dir, "snapshots"), st.snapshots); err != nil {
		return nil, err
	}
	if err := loadRecords(filepath.Join(st.dir, "builds"), st.builds); err != nil {
		return nil, err
	}
	return st, nil
}

func loadRecords[T any](dir string, into map[string]*T) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("fastvm emulator: read %s: %w", dir, err)
	}
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		rec := new(T)
		if err := readJSONFile(filepath.Join(dir, e.Name()), rec); err != nil {
			return fmt.Errorf("fastvm emulator: record %s is unreadable (%v): remove it or fix it", filepath.Join(dir, e.Name()), err)
		}
		into[e.Name()[:len(e.Name())-len(".json")]] = rec
	}
	return nil
}

func (st *store) path(kind, id string) string { return filepath.Join(st.dir, kind, id+".json") }

func (st *store) saveVM(v *vmRecord) error { return writeJSONFile(st.path("vms", v.ID), v) }
func (st *store) saveSnap(v *snapshotRecord) error {
	return writeJSONFile(st.path("snapshots", v.ID), v)
}
func (st *store) saveBuild(v *buildRecord) error { return writeJSONFile(st.path("builds", v.ID), v) }

func (st *store) removeVM(id string) {
	delete(st.vms, id)
	os.Remove(st.path("vms", id))
}

func (st *store) removeSnap(id string) {
	delete(st.snapshots, id)
	os.Remove(st.path("snapshots", id))
}

// sortedVMs lists VMs oldest first.
func (st *store) sortedVMs() []*vmRecord {
	out := make([]*vmRecord, 0, len(st.vms))
	for _, v := range st.vms {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// recover brings the records in line with the engine after a restart: work
// that was in flight when the previous emulator stopped cannot resume.
func (s *Server) recover() {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.store
	known := map[string]bool{}
	for _, v := range st.vms {
		if v.MachineID != "" {
			known[v.MachineID] = true
		}
	}
	for _, m := range s.engine.Machines() {
		if m.Tags[tagBuild] != "" || (m.Tags[tagVM] != "" && !known[m.ID]) {
			// A build VM of an interrupted build, or a machine whose VM record
			// was never written: nothing a client was told about.
			s.engine.Delete(context.Background(), m.ID)
		} else if m.Tags[tagVM] != "" && m.AllowNetwork {
			// The engine fixes a machine's network at its creation.
			s.log.Warn().Str("vm", m.Tags[tagVM]).Msg("fastvm emulator: this VM was made by an earlier emulator with the host's network, which it keeps " +
				"(it reaches the host's loopback services): delete it, or snapshot it and launch the snapshot, to give it a network of its own")
		}
	}
	for _, v := range st.vms {
		_, err := s.engine.Machine(v.MachineID)
		exists := v.MachineID != "" && err == nil
		switch {
		case v.Status == statusDeleting:
			if exists {
				s.engine.Delete(context.Background(), v.MachineID)
			}
			st.removeVM(v.ID)
		case v.Status == statusError:
		case !exists:
			v.Status, v.Problem = statusError, "the VM's machine is gone: "+errStopped.Error()
			st.saveVM(v)
		case v.Status == statusProvisioning:
			v.Status = statusRunning
			if v.TTL != nil {
				v.ExpiresAt = time.Now().Add(time.Duration(v.TTL.Seconds) * time.Second)
			}
			st.saveVM(v)
		case v.Status == statusResuming:
			// The processes of a paused VM did not survive the restart (no
			// emulated VM's do): resuming ends on a fresh start, files kept.
			v.Status, v.PausedAt, v.PauseSnapshot = statusRunning, time.Time{}, ""
			if v.TTL != nil {
				v.ExpiresAt, v.TTLRemaining = time.Now().Add(v.TTLRemaining), 0
			}
			st.saveVM(v)
		case v.Status == statusPausing:
			// It was running, with its countdown going.
			v.Status, v.PausedAt = statusPaused, time.Now().UTC()
			if v.TTL != nil {
				v.TTLRemaining, v.ExpiresAt = max(time.Until(v.ExpiresAt), 0), time.Time{}
			}
			st.saveVM(v)
		}
	}
	for _, sn := range st.snapshots {
		if sn.Status != snapCreating {
			continue
		}
		if _, err := s.engine.Snapshot(sn.LocalID); sn.LocalID != "" && err == nil {
			sn.Status = snapReady
		} else {
			sn.Status = snapError
		}
		st.saveSnap(sn)
	}
	for _, b := range st.builds {
		if b.Status == buildPending || b.Status == buildRunning {
			b.Status, b.Progress, b.Error = buildFailed, "", errStopped.Error()
			st.saveBuild(b)
		}
	}
}

func readJSONFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// writeJSONFile replaces path with v as JSON, atomically: a crash leaves the
// old or the new record, never half of one.
func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// errNotFound maps engine lookups to 404s.
func isNotFound(err error) bool { return errors.Is(err, local.ErrNotFound) }
