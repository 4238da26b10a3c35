//go:build linux

package fastvm

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"time"
)

// snapshotJSON is the wire Snapshot (§3.4).
type snapshotJSON struct {
	ID        string            `json:"id"`
	CreatedAt string            `json:"createdAt"`
	Name      string            `json:"name"`
	OrgID     string            `json:"orgId"`
	Status    string            `json:"status"`
	VMID      string            `json:"vmId"`
	Firewall  *firewallPolicy   `json:"firewall,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	EnvVars   map[string]string `json:"envVars,omitempty"`
	Services  []service         `json:"services,omitempty"`
}

func (s *Server) snapshotJSON(sn *snapshotRecord) snapshotJSON {
	return snapshotJSON{ID: sn.ID, CreatedAt: timestamp(sn.CreatedAt), Name: sn.Name, OrgID: s.orgID,
		Status: sn.Status, VMID: sn.VMID, Firewall: sn.Firewall, Metadata: sn.Metadata,
		EnvVars: sn.EnvVars, Services: sn.Services}
}

// createSnapshot answers 201 creating at once and copies the VM's files in
// the background; later reads say ready (Spec §13 #10: UUID ids, initial
// status creating). A running or a paused VM can be snapshotted (§9); a
// paused one's files are still, and a second request in the same pause
// answers the first's snapshot again, unchanged.
func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req struct {
		VMID string  `json:"vmId"`
		Name *string `json:"name"`
	}
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	if req.VMID == "" {
		writeError(w, http.StatusBadRequest, "vmId is required")
		return
	}
	s.mu.Lock()
	v, ok := s.store.vms[req.VMID]
	if !ok {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, fmt.Sprintf("VM %s not found", req.VMID))
		return
	}
	if v.Status != statusRunning && v.Status != statusPaused {
		s.mu.Unlock()
		// Spec §13 #6: 409 with x-should-retry: false.
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s is %s; only a running or paused VM can be snapshotted", v.ID, v.Status))
		return
	}
	if prev, ok := s.store.snapshots[v.PauseSnapshot]; ok && v.Status == statusPaused {
		out := s.snapshotJSON(prev)
		s.mu.Unlock()
		writeJSON(w, http.StatusCreated, out)
		return
	}
	if err := s.checkSnapshotQuota(); err != nil {
		s.mu.Unlock()
		writeError(w, http.StatusTooManyRequests, err.Error())
		return
	}
	sn := &snapshotRecord{ID: newUUID(), VMID: v.ID, Status: snapCreating, CreatedAt: time.Now().UTC(),
		Firewall: v.Firewall, Metadata: v.Metadata, MachineName: v.MachineName, DiskGiB: v.DiskGiB,
		EnvVars: v.EnvVars, Services: v.Services, ImageEnv: v.ImageEnv}
	if sn.Name = normalizeName(deref(req.Name)); sn.Name == "" {
		sn.Name = "snapshot-" + v.ID[:8]
	}
	machineID := v.MachineID
	err := s.store.saveSnap(sn)
	if err == nil {
		s.store.snapshots[sn.ID] = sn
		if v.Status == statusPaused {
			v.PauseSnapshot = sn.ID
			if err := s.store.saveVM(v); err != nil {
				s.log.Warn().Str("vm", v.ID).Err(err).Msg("fastvm emulator: store the VM's pause snapshot")
			}
		}
	}
	out := s.snapshotJSON(sn)
	s.mu.Unlock()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "store the snapshot record: "+err.Error())
		return
	}
	started := s.goBackground(func(ctx context.Context) {
		localID, err := s.takeSnapshot(ctx, machineID, sn.Name)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			sn.Status = snapError
			s.log.Warn().Str("snapshot", sn.ID).Err(err).Msg("fastvm emulator: snapshot failed")
		} else {
			sn.LocalID, sn.Status = localID, snapReady
		}
		s.store.saveSnap(sn)
	})
	if !started {
		writeError(w, http.StatusServiceUnavailable, "the FastVM emulator is closing")
		return
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) takeSnapshot(ctx context.Context, machineID, name string) (string, error) {
	m, err := s.machine(machineID)
	if err != nil {
		return "", err
	}
	info, err := m.Snapshot(ctx, name)
	if err != nil {
		return "", err
	}
	return info.ID, nil
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	list := make([]*snapshotRecord, 0, len(s.store.snapshots))
	for _, sn := range s.store.snapshots {
		list = append(list, sn)
	}
	sort.Slice(list, func(i, j int) bool {
		if !list[i].CreatedAt.Equal(list[j].CreatedAt) {
			return list[i].CreatedAt.Before(list[j].CreatedAt)
		}
		return list[i].ID < list[j].ID
	})
	out := make([]snapshotJSON, 0, len(list))
	for _, sn := range list {
		out = append(out, s.snapshotJSON(sn))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// lookupSnapshot finds a snapshot, answering 404 itself; the caller gets
// s.mu held when found.
func (s *Server) lookupSnapshot(w http.ResponseWriter, r *http.Request) (*snapshotRecord, bool) {
	id := r.PathValue("id")
	s.mu.Lock()
	sn, ok := s.store.snapshots[id]
	if !ok {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, fmt.Sprintf("snapshot %s not found", id))
	}
	return sn, ok
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	sn, ok := s.lookupSnapshot(w, r)
	if !ok {
		return
	}
	out := s.snapshotJSON(sn)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) renameSnapshot(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name *string `json:"name"`
	}
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	sn, ok := s.lookupSnapshot(w, r)
	if !ok {
		return
	}
	defer s.mu.Unlock()
	next := *sn
	if req.Name != nil {
		if next.Name = normalizeName(*req.Name); next.Name == "" {
			next.Name = "snapshot-" + sn.VMID[:min(8, len(sn.VMID))]
		}
	}
	commit(w, sn, &next, s.store.saveSnap, func(sn *snapshotRecord) any { return s.snapshotJSON(sn) })
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	sn, ok := s.lookupSnapshot(w, r)
	if !ok {
		return
	}
	if sn.Status == snapCreating {
		s.mu.Unlock()
		writeError(w, http.StatusConflict, fmt.Sprintf("snapshot %s is still being created: delete it once it is ready", sn.ID))
		return
	}
	localID := sn.LocalID
	s.store.removeSnap(sn.ID)
	s.mu.Unlock()
	if localID != "" {
		if err := s.engine.DeleteSnapshot(localID); err != nil && !isNotFound(err) {
			s.log.Warn().Str("snapshot", sn.ID).Err(err).Msg("fastvm emulator: delete the local snapshot")
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": sn.ID, "deleted": true})
}
