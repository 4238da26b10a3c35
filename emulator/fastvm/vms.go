//go:build linux

package fastvm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmcp-dev/vmcp/local"
)

// firewallPolicy is a VM's ingress policy (§3.3). The emulator stores,
// validates, reports and snapshots it as the spec says, and nothing needs
// enforcing: an emulated VM has no public IPv6 address and no network
// interface but its own loopback (network.go), so no inbound traffic
// reaches it whatever the policy (stricter than `open` and any rule).
type firewallPolicy struct {
	Mode    string         `json:"mode"`
	Ingress []firewallRule `json:"ingress,omitempty"`
}

// firewallRule allows inbound traffic to a port range (§3.3).
type firewallRule struct {
	Protocol    string   `json:"protocol"`
	PortStart   int      `json:"portStart"`
	PortEnd     int      `json:"portEnd,omitempty"`
	SourceCidrs []string `json:"sourceCidrs,omitempty"`
	Description string   `json:"description,omitempty"`
}

// vmJSON is the wire Vm (§3.2, with §9's fields). Spec §13 #15:
// portMappings is omitted.
type vmJSON struct {
	ID                string            `json:"id"`
	CPU               int               `json:"cpu"`
	CreatedAt         string            `json:"createdAt"`
	DiskGiB           int               `json:"diskGiB"`
	MemoryMiB         int               `json:"memoryMiB"`
	Name              string            `json:"name"`
	OrgID             string            `json:"orgId"`
	Status            string            `json:"status"`
	MachineName       string            `json:"machineName,omitempty"`
	SourceName        string            `json:"sourceName,omitempty"`
	Firewall          *firewallPolicy   `json:"firewall,omitempty"`
	EffectiveFirewall *firewallPolicy   `json:"effectiveFirewall,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
	EnvVars           map[string]string `json:"envVars,omitempty"`
	TTL               *vmTTL            `json:"ttl,omitempty"`
	ExpiresAtMs       *int64            `json:"expiresAtMs,omitempty"`    // only while running
	TTLRemainingMs    *int64            `json:"ttlRemainingMs,omitempty"` // only while paused
	PausedAt          string            `json:"pausedAt,omitempty"`       // only while paused
}

// vmJSON is v's wire view; the caller holds s.mu.
func (s *Server) vmJSON(v *vmRecord) vmJSON {
	out := vmJSON{ID: v.ID, CPU: v.CPU, CreatedAt: timestamp(v.CreatedAt), DiskGiB: v.DiskGiB, MemoryMiB: v.MemoryMiB,
		Name: v.Name, OrgID: s.orgID, Status: v.Status, MachineName: v.MachineName, SourceName: v.SourceName,
		Firewall: v.Firewall, EffectiveFirewall: effectiveFirewall(v), Metadata: v.Metadata, EnvVars: v.EnvVars}
	if v.TTL != nil {
		ttl := *v.TTL
		out.TTL = &ttl
	}
	switch {
	case v.Status == statusRunning && v.TTL != nil && !v.ExpiresAt.IsZero():
		ms := v.ExpiresAt.UnixMilli()
		out.ExpiresAtMs = &ms
	case v.Status == statusPaused:
		out.PausedAt = timestamp(v.PausedAt)
		if v.TTL != nil {
			ms := v.TTLRemaining.Milliseconds()
			out.TTLRemainingMs = &ms
		}
	}
	return out
}

// launchJSON is the wire VmLaunchResponse (§9): a Vm, with warnings when a
// restore could not register the snapshot's services again.
type launchJSON struct {
	vmJSON
	SnapshotRestoreWarnings *restoreWarnings `json:"snapshotRestoreWarnings,omitempty"`
}

type restoreWarnings struct {
	ServicesRegistrationFailed bool      `json:"servicesRegistrationFailed"`
	Reason                     string    `json:"reason,omitempty"`
	UnregisteredServices       []service `json:"unregisteredServices,omitempty"`
}

// machineTypes are the earliest spec's enumeration; INFERRED: cNmM is N vCPUs
// and M GiB of memory.
var machineTypes = map[string]struct{ cpu, memoryMiB int }{
	"c1m2": {1, 2048}, "c2m4": {2, 4096}, "c4m8": {4, 8192}, "c8m16": {8, 16384},
}

const baseDiskGiB = 10 // §3.2: diskGiB is grow-only from 10 GiB

// normalizeName trims, collapses whitespace and truncates to 64 runes (§2).
func normalizeName(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) > 64 {
		s = string([]rune(s)[:64])
	}
	return s
}

// checkMetadata applies the limits of §2.
func checkMetadata(md map[string]string) error {
	if len(md) > 256 {
		return fmt.Errorf("metadata has %d keys; at most 256 are allowed", len(md))
	}
	for k, v := range md {
		if len(k) < 1 || len(k) > 256 {
			return fmt.Errorf("metadata key %q must be 1 to 256 bytes long", k)
		}
		if len(v) > 4096 {
			return fmt.Errorf("metadata value of %q is %d bytes; at most 4096 are allowed", k, len(v))
		}
	}
	if b, _ := json.Marshal(md); len(b) > 65536 {
		return fmt.Errorf("metadata is %d bytes as JSON; at most 65536 are allowed", len(b))
	}
	return nil
}

// checkFirewall validates a policy (§3.3). Spec §13 #3: an IPv4 CIDR is a 400.
func checkFirewall(p *firewallPolicy) error {
	if p.Mode != "open" && p.Mode != "restricted" {
		return fmt.Errorf("firewall mode %q is not supported: use \"open\" or \"restricted\"", p.Mode)
	}
	for i, r := range p.Ingress {
		if r.Protocol != "tcp" && r.Protocol != "udp" {
			return fmt.Errorf("ingress rule %d: protocol %q is not supported: use \"tcp\" or \"udp\"", i, r.Protocol)
		}
		if r.PortStart < 1 || r.PortStart > 65535 {
			return fmt.Errorf("ingress rule %d: portStart %d must be between 1 and 65535", i, r.PortStart)
		}
		if r.PortEnd != 0 && (r.PortEnd < r.PortStart || r.PortEnd > 65535) {
			return fmt.Errorf("ingress rule %d: portEnd %d must be between portStart (%d) and 65535", i, r.PortEnd, r.PortStart)
		}
		for _, c := range r.SourceCidrs {
			pfx, err := netip.ParsePrefix(c)
			if err != nil {
				return fmt.Errorf("ingress rule %d: source CIDR %q is not a CIDR (e.g. 2001:db8::/32)", i, c)
			}
			if !pfx.Addr().Is6() || pfx.Addr().Is4In6() {
				return fmt.Errorf("ingress rule %d: source CIDR %q is IPv4; only IPv6 CIDRs are accepted (VMs are reached on their public IPv6 address)", i, c)
			}
		}
	}
	return nil
}

// decodeFirewall parses and validates a firewall policy from raw JSON.
func decodeFirewall(raw json.RawMessage) (*firewallPolicy, error) {
	var p firewallPolicy
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("invalid firewall policy: %v", err)
	}
	if err := checkFirewall(&p); err != nil {
		return nil, err
	}
	return &p, nil
}

// holdsQuota: a VM holds quota while it has (or is getting) a worker; a
// paused one does not (§9).
func holdsQuota(status string) bool {
	switch status {
	case statusProvisioning, statusRunning, statusPausing, statusResuming:
		return true
	}
	return false
}

// quotaUsage sums what live VMs and snapshots use; the caller holds s.mu.
func (s *Server) quotaUsage() (vms int, usage quotaValues) {
	for _, v := range s.store.vms {
		if holdsQuota(v.Status) {
			vms++
			usage.VCPU += v.CPU
			usage.MemoryMiB += v.MemoryMiB
			usage.DiskGiB += v.DiskGiB
		}
	}
	usage.SnapshotCount = len(s.store.snapshots)
	return vms, usage
}

type quotaValues struct {
	VCPU          int `json:"vcpu"`
	MemoryMiB     int `json:"memoryMiB"`
	DiskGiB       int `json:"diskGiB"`
	SnapshotCount int `json:"snapshotCount"`
}

// checkVMQuota says which quota a new VM would exceed; the caller holds s.mu.
// Spec §13 #12: quota exhaustion is a 429 with x-should-retry: false.
func (s *Server) checkVMQuota(cpu, memoryMiB, diskGiB int) error {
	n, u := s.quotaUsage()
	q := s.quotas
	switch {
	case n+1 > q.VMs:
		return fmt.Errorf("VM quota exceeded: %d of %d VMs in use; delete a VM first", n, q.VMs)
	case u.VCPU+cpu > q.VCPU:
		return fmt.Errorf("vCPU quota exceeded: %d of %d in use, this VM needs %d; delete a VM or use a smaller machine type", u.VCPU, q.VCPU, cpu)
	case u.MemoryMiB+memoryMiB > q.MemoryMiB:
		return fmt.Errorf("memory quota exceeded: %d of %d MiB in use, this VM needs %d; delete a VM or use a smaller machine type", u.MemoryMiB, q.MemoryMiB, memoryMiB)
	case u.DiskGiB+diskGiB > q.DiskGiB:
		return fmt.Errorf("disk quota exceeded: %d of %d GiB in use, this VM needs %d; delete a VM or ask for less disk", u.DiskGiB, q.DiskGiB, diskGiB)
	}
	return nil
}

func (s *Server) checkSnapshotQuota() error {
	if _, u := s.quotaUsage(); u.SnapshotCount+1 > s.quotas.SnapshotCount {
		return fmt.Errorf("snapshot quota exceeded: %d of %d snapshots exist; delete a snapshot first", u.SnapshotCount, s.quotas.SnapshotCount)
	}
	return nil
}

func (s *Server) getQuotas(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	_, usage := s.quotaUsage()
	q := s.quotas
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"orgId":  s.orgID,
		"limits": quotaValues{VCPU: q.VCPU, MemoryMiB: q.MemoryMiB, DiskGiB: q.DiskGiB, SnapshotCount: q.SnapshotCount},
		"usage":  usage,
	})
}

type launchRequest struct {
	MachineType *string           `json:"machineType"`
	SnapshotID  *string           `json:"snapshotId"`
	Name        *string           `json:"name"`
	DiskGiB     *int              `json:"diskGiB"`
	Firewall    json.RawMessage   `json:"firewall"`
	Metadata    map[string]string `json:"metadata"`
	EnvVars     map[string]string `json:"envVars"`
	TTL         json.RawMessage   `json:"ttl"`
}

func (s *Server) launchVM(w http.ResponseWriter, r *http.Request) {
	var req launchRequest
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	machineType := deref(req.MachineType)
	snapshotID := deref(req.SnapshotID)
	if machineType == "" && snapshotID == "" {
		// Spec §13 #3: 400.
		writeError(w, http.StatusBadRequest, "machineType is required unless snapshotId is given (e.g. \"c1m2\")")
		return
	}
	if err := checkMetadata(req.Metadata); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := checkEnvVars(req.EnvVars); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ttl, err := parseTTL(req.TTL)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	envVars := req.EnvVars
	var services []service
	var warnings *restoreWarnings
	// Default firewall when omitted: restricted with no rules (§3.2).
	firewall := &firewallPolicy{Mode: "restricted"}
	if len(req.Firewall) > 0 && string(req.Firewall) != "null" {
		var err error
		if firewall, err = decodeFirewall(req.Firewall); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	minDisk, sourceName, localSnap := baseDiskGiB, "", ""
	var imageEnv map[string]string
	s.mu.Lock()
	if snapshotID != "" {
		snap, ok := s.store.snapshots[snapshotID]
		if !ok {
			s.mu.Unlock()
			writeError(w, http.StatusNotFound, fmt.Sprintf("snapshot %s not found", snapshotID))
			return
		}
		if snap.Status != snapReady {
			s.mu.Unlock()
			writeError(w, http.StatusConflict, fmt.Sprintf("snapshot %s is %s, not ready: wait until GET /v1/snapshots/%s says ready", snapshotID, snap.Status, snapshotID))
			return
		}
		if machineType == "" {
			machineType = snap.MachineName // a restore inherits the type
		}
		minDisk, sourceName, localSnap, imageEnv = snap.DiskGiB, snap.Name, snap.LocalID, snap.ImageEnv
		if len(req.Firewall) == 0 && snap.Firewall != nil {
			firewall = snap.Firewall
		}
		if envVars == nil {
			envVars = snap.EnvVars
		}
		services, warnings = s.replayServices(snap.Services)
	}
	s.mu.Unlock()
	mt, ok := machineTypes[machineType]
	if !ok {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown machineType %q: use one of c1m2, c2m4, c4m8, c8m16", machineType))
		return
	}
	disk := minDisk
	if req.DiskGiB != nil {
		if *req.DiskGiB < minDisk {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("diskGiB %d is too small: disks only grow, give at least %d", *req.DiskGiB, minDisk))
			return
		}
		disk = *req.DiskGiB
	}
	v := &vmRecord{
		ID: newUUID(), MachineName: machineType, SourceName: sourceName, CPU: mt.cpu, MemoryMiB: mt.memoryMiB,
		DiskGiB: disk, Status: statusProvisioning, CreatedAt: time.Now().UTC(), Firewall: firewall, Metadata: req.Metadata,
		EnvVars: envVars, TTL: ttl, Services: services, ImageEnv: imageEnv,
	}
	v.Name = normalizeName(deref(req.Name))
	if v.Name == "" {
		v.Name = "vm-" + v.ID[:8]
	}
	s.mu.Lock()
	if err := s.checkVMQuota(v.CPU, v.MemoryMiB, v.DiskGiB); err != nil {
		s.mu.Unlock()
		writeError(w, http.StatusTooManyRequests, err.Error())
		return
	}
	fail := s.failNext
	s.failNext = false
	async := fail || s.delay > 0
	if err = s.store.saveVM(v); err == nil {
		s.store.vms[v.ID] = v
	}
	s.mu.Unlock()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "store the VM record: "+err.Error())
		return
	}
	if !async {
		ctx, cancel := s.requestContext(r)
		defer cancel()
		if err := s.provision(ctx, v, localSnap); err != nil {
			s.mu.Lock()
			s.store.removeVM(v.ID)
			s.mu.Unlock()
			writeError(w, http.StatusInternalServerError, "start the VM: "+err.Error())
			return
		}
		s.finishProvisioning(v, nil)
		s.mu.Lock()
		out := launchJSON{s.vmJSON(v), warnings}
		s.mu.Unlock()
		writeJSON(w, http.StatusCreated, out)
		return
	}
	s.mu.Lock()
	out := launchJSON{s.vmJSON(v), warnings}
	s.mu.Unlock()
	started := s.goBackground(func(ctx context.Context) {
		deadline := time.Now().Add(s.delay)
		var err error
		if fail {
			err = fmt.Errorf("provisioning failed (the emulator was told to fail this launch)")
		} else {
			err = s.provision(ctx, v, localSnap)
		}
		if err != nil && ctx.Err() != nil {
			err = errStopped
		}
		// The VM says running (or error) once the delay has passed.
		sleepCtx(ctx, time.Until(deadline))
		s.finishProvisioning(v, err)
	})
	if !started {
		writeError(w, http.StatusServiceUnavailable, "the FastVM emulator is closing")
		return
	}
	writeJSON(w, http.StatusAccepted, out)
}

// provision creates and starts the VM's machine and records it; the VM
// stays provisioning until finishProvisioning.
func (s *Server) provision(ctx context.Context, v *vmRecord, localSnap string) error {
	m, err := s.newMachine(ctx, map[string]string{tagVM: v.ID}, v.MemoryMiB, v.DiskGiB, localSnap)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v.MachineID = m.ID()
	return s.store.saveVM(v)
}

// newMachine creates a VM-flavoured machine and starts its sandbox. It has
// a network of its own, not the host's: loopback only (with the object URLs
// served on it), or the domains of Options.VMNetworkAllow (network.go). A
// fresh one (not from a snapshot) gets the emulator's package-manager
// guards (packages.go).
func (s *Server) newMachine(ctx context.Context, tags map[string]string, memoryMiB, diskGiB int, fromSnapshot string) (*local.Machine, error) {
	info, err := s.engine.Create(ctx, local.MachineSpec{
		Name:         "fastvm",
		Tags:         tags,
		Flavour:      local.VM,
		NetworkAllow: s.vmNetworkAllow,
		Limits:       local.Limits{MemoryBytes: int64(memoryMiB) << 20, DiskBytes: int64(diskGiB) << 30},
		FromSnapshot: fromSnapshot,
	})
	if err != nil {
		return nil, err
	}
	m, err := s.machine(info.ID)
	switch {
	case err != nil:
	case fromSnapshot == "":
		// Installing a fresh VM's package guards starts its sandbox, so
		// that "running" means it.
		err = installPackageGuards(ctx, m)
	default:
		// A snapshot's VM starts its sandbox with a first command.
		var res *local.CommandResult
		res, err = m.Run(ctx, local.Command{Argv: []string{"true"}, Timeout: time.Minute})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("the VM's first command failed: %s", res.Stderr)
		}
	}
	if err != nil {
		s.engine.Delete(context.Background(), info.ID)
		return nil, err
	}
	return m, nil
}

// finishProvisioning records the outcome of an asynchronous launch, or
// completes a deletion requested while it ran.
func (s *Server) finishProvisioning(v *vmRecord, err error) {
	s.mu.Lock()
	deleted := v.Status == statusDeleting || s.store.vms[v.ID] != v
	machineID := v.MachineID
	if !deleted {
		if err != nil {
			v.Status, v.Problem, v.MachineID = statusError, err.Error(), ""
			s.log.Warn().Str("vm", v.ID).Err(err).Msg("fastvm emulator: VM provisioning failed")
		} else {
			v.Status = statusRunning
			if v.TTL != nil { // the countdown starts with the VM
				v.ExpiresAt = time.Now().Add(time.Duration(v.TTL.Seconds) * time.Second)
			}
		}
		s.store.saveVM(v)
	}
	s.mu.Unlock()
	if machineID != "" && (deleted || err != nil) {
		s.engine.Delete(context.Background(), machineID)
	}
	if deleted {
		s.mu.Lock()
		s.store.removeVM(v.ID)
		s.mu.Unlock()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// lookupVM finds a VM for a handler, answering 404 itself when it is unknown
// (Spec §1: even for ids that are not UUIDs).
func (s *Server) lookupVM(w http.ResponseWriter, r *http.Request) (*vmRecord, bool) {
	id := r.PathValue("id")
	s.mu.Lock()
	v, ok := s.store.vms[id]
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("VM %s not found", id))
	}
	return v, ok
}

// runningMachine finds a running VM's machine. Spec §13 #6: exec, fetch and
// snapshot on a VM that is not running are a 409 with x-should-retry: false.
func (s *Server) runningMachine(w http.ResponseWriter, r *http.Request) (*vmRecord, *local.Machine, bool) {
	v, ok := s.lookupVM(w, r)
	if !ok {
		return nil, nil, false
	}
	s.mu.Lock()
	status, machineID := v.Status, v.MachineID
	s.mu.Unlock()
	switch status {
	case statusRunning:
	case statusPaused, statusPausing:
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s is %s, not running: resume it first (POST /v1/vms/%s/resume)", v.ID, status, v.ID))
		return nil, nil, false
	default:
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s is %s, not running", v.ID, status))
		return nil, nil, false
	}
	m, err := s.machine(machineID)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("VM %s: its machine is unavailable: %v", v.ID, err))
		return nil, nil, false
	}
	return v, m, true
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	out := s.vmJSON(v)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// listVMs answers a bare array, filtered by every metadata.<key>=<value>
// query parameter (AND) and by status=<value> (§9: an unknown status
// matches nothing, so the list is empty).
func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	filters := map[string][]string{}
	statuses := map[string]bool{}
	for k, vals := range r.URL.Query() {
		if key, ok := strings.CutPrefix(k, "metadata."); ok {
			filters[key] = vals
		}
		if k == "status" {
			for _, st := range vals {
				if st != "" { // an empty status=, as a form might send, filters nothing
					statuses[st] = true
				}
			}
		}
	}
	s.mu.Lock()
	out := []vmJSON{}
	for _, v := range s.store.sortedVMs() {
		if matchesMetadata(v.Metadata, filters) && (len(statuses) == 0 || statuses[v.Status]) {
			out = append(out, s.vmJSON(v))
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func matchesMetadata(md map[string]string, filters map[string][]string) bool {
	for k, vals := range filters {
		got, ok := md[k]
		if !ok {
			return false
		}
		for _, want := range vals {
			if got != want {
				return false
			}
		}
	}
	return true
}

// updateVM: name, metadata and envVars replace what they name (an omitted
// or null map is unchanged, {} clears it); ttl sets the timer and restarts
// its countdown, null removes it (§9).
func (s *Server) updateVM(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name     *string         `json:"name"`
		Metadata json.RawMessage `json:"metadata"`
		EnvVars  json.RawMessage `json:"envVars"`
		TTL      json.RawMessage `json:"ttl"`
	}
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	present := func(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }
	hasMD, hasEnv, hasTTL := present(req.Metadata), present(req.EnvVars), len(req.TTL) > 0
	if req.Name == nil && !hasMD && !hasEnv && !hasTTL {
		// Spec §13 #3: PATCH with no fields is a 400.
		writeError(w, http.StatusBadRequest, "give at least one of name, metadata, envVars and ttl")
		return
	}
	var md, env map[string]string
	if hasMD {
		if err := json.Unmarshal(req.Metadata, &md); err != nil {
			writeError(w, http.StatusBadRequest, "metadata must be an object of strings: "+err.Error())
			return
		}
		if err := checkMetadata(md); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	if hasEnv {
		if err := json.Unmarshal(req.EnvVars, &env); err != nil {
			writeError(w, http.StatusBadRequest, "envVars must be an object of strings: "+err.Error())
			return
		}
		if err := checkEnvVars(env); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	ttl, err := parseTTL(req.TTL)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.Status == statusDeleting {
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s is being deleted", v.ID))
		return
	}
	next := *v
	if req.Name != nil {
		if next.Name = normalizeName(*req.Name); next.Name == "" {
			next.Name = "vm-" + v.ID[:8]
		}
	}
	if hasMD {
		next.Metadata = md // replaces the whole map; {} clears it
	}
	if hasEnv {
		next.EnvVars = env
	}
	if hasTTL {
		next.setTTL(ttl, time.Now())
	}
	s.commitVM(w, v, &next)
}

// commitVM stores next as v's new record, then applies and answers it; the
// caller holds s.mu.
func (s *Server) commitVM(w http.ResponseWriter, v, next *vmRecord) {
	commit(w, v, next, s.store.saveVM, func(v *vmRecord) any { return s.vmJSON(v) })
}

// commit stores next with save, then makes it the record and answers its
// view: a failed write changes nothing. The caller holds s.mu.
func commit[T any](w http.ResponseWriter, rec, next *T, save func(*T) error, view func(*T) any) {
	if err := save(next); err != nil {
		writeError(w, http.StatusInternalServerError, "store the record: "+err.Error())
		return
	}
	*rec = *next
	writeJSON(w, http.StatusOK, view(rec))
}

// deleteVM answers at once; the VM reports "deleting" until its machine is
// gone, then 404 (Spec §13 #5).
func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	if err := s.startDelete(v); err != nil {
		writeError(w, http.StatusInternalServerError, "store the VM record: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": v.ID, "deleted": true})
}

// startDelete marks a VM deleting and removes its machine and record in the
// background. A pause or resume under way finds it deleting and leaves it.
func (s *Server) startDelete(v *vmRecord) error {
	s.mu.Lock()
	prev := v.Status
	v.Status = statusDeleting
	err := s.store.saveVM(v)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// A VM still provisioning is removed when its provisioning ends.
	if prev != statusDeleting && prev != statusProvisioning {
		s.goBackground(func(context.Context) {
			s.mu.Lock()
			machineID := v.MachineID
			s.mu.Unlock()
			if machineID != "" {
				if err := s.engine.Delete(context.Background(), machineID); err != nil && !isNotFound(err) {
					s.log.Warn().Str("vm", v.ID).Err(err).Msg("fastvm emulator: delete the VM's machine")
				}
			}
			s.mu.Lock()
			s.store.removeVM(v.ID)
			s.mu.Unlock()
		})
	}
	return nil
}

func (s *Server) setFirewall(w http.ResponseWriter, r *http.Request) {
	s.updateFirewall(w, r, true)
}

func (s *Server) patchFirewall(w http.ResponseWriter, r *http.Request) {
	s.updateFirewall(w, r, false)
}

// updateFirewall: PUT replaces the whole policy (mode required); PATCH
// changes what it names, `ingress: []` clearing the rules and an omitted
// ingress leaving them.
func (s *Server) updateFirewall(w http.ResponseWriter, r *http.Request, replace bool) {
	var req struct {
		Mode    *string         `json:"mode"`
		Ingress json.RawMessage `json:"ingress"`
	}
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	if replace && req.Mode == nil {
		writeError(w, http.StatusBadRequest, "mode is required: \"open\" or \"restricted\"")
		return
	}
	var rules []firewallRule
	hasIngress := len(req.Ingress) > 0 && string(req.Ingress) != "null"
	if hasIngress {
		if err := json.Unmarshal(req.Ingress, &rules); err != nil {
			writeError(w, http.StatusBadRequest, "ingress must be a list of rules: "+err.Error())
			return
		}
	}
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := firewallPolicy{Mode: "restricted"}
	if !replace && v.Firewall != nil {
		next = *v.Firewall
	}
	if replace {
		next.Ingress = nil
	}
	if req.Mode != nil {
		next.Mode = *req.Mode
	}
	if hasIngress || replace {
		next.Ingress = rules
	}
	if err := checkFirewall(&next); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	updated := *v
	updated.Firewall = &next
	s.commitVM(w, v, &updated)
}
