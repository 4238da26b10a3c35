//go:build linux

package fastvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Pause, resume and TTLs (§9). A paused VM keeps its memory: its machine's
// processes are frozen in place (local.Machine.Freeze), not scheduled, and
// continue where they were on resume. It holds no quota while paused, and
// exec, files and console answer 409 as for any VM that is not running.
// Pause is synchronous; resume answers 200 running, or 202 resuming when the
// emulator has a provisioning delay (as a queued resume would).
//
// Emulator choices (not in the spec): a pause does not wait for commands in
// flight, which are frozen with the rest (their timeouts keep counting); a
// resume over the org's quota is a 429 with x-should-retry: false, like a
// launch; a pause or resume of a VM in another transition is a 409. After
// a restart of the emulator, a paused VM's processes are gone (none of an
// emulated VM's survive one): it resumes on a fresh start, files kept.

// TTL actions.
const (
	ttlPause  = "pause"  // pause on expiry, re-armed for the next running spell
	ttlDelete = "delete" // delete on expiry
)

// maxTTLSeconds is a TTL's longest cycle: a year (§9).
const maxTTLSeconds = 31536000

// ttlTick is how often TTLs are checked for expiry.
const ttlTick = 100 * time.Millisecond

// envVarName is a shell variable name (§9).
var envVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkEnvVars applies the limits of §9: keys are shell variable names of 1
// to 256 bytes, values have no newline, carriage return or NUL, and the map
// is at most 65536 bytes as JSON.
func checkEnvVars(env map[string]string) error {
	for k, v := range env {
		if len(k) < 1 || len(k) > 256 || !envVarName.MatchString(k) {
			return fmt.Errorf("envVars key %q is not a shell variable name of 1 to 256 bytes (letters, digits and _, not starting with a digit)", truncateString(k, 64))
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return fmt.Errorf("envVars value of %s contains a newline, carriage return or NUL byte, which are not allowed", k)
		}
	}
	if b, _ := json.Marshal(env); len(b) > 65536 {
		return fmt.Errorf("envVars is %d bytes as JSON; at most 65536 are allowed", len(b))
	}
	return nil
}

func truncateString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// parseTTL reads a ttl field: absent or null is no TTL; otherwise
// {"action":"pause"|"delete","seconds":1..31536000}.
func parseTTL(raw json.RawMessage) (*vmTTL, error) {
	if len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	var req struct {
		Action  *string         `json:"action"`
		Seconds json.RawMessage `json:"seconds"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf(`ttl must be an object such as {"action":"pause","seconds":3600}, or null: %v`, err)
	}
	if req.Action == nil || (*req.Action != ttlPause && *req.Action != ttlDelete) {
		return nil, fmt.Errorf(`ttl.action must be "pause" or "delete"`)
	}
	if len(req.Seconds) == 0 || string(req.Seconds) == "null" {
		return nil, fmt.Errorf("ttl.seconds is required: the cycle's length in seconds, 1 to %d", maxTTLSeconds)
	}
	// A JSON number only (json.Number would take a quoted one too).
	n, err := strconv.ParseInt(string(req.Seconds), 10, 64)
	if err != nil || n < 1 || n > maxTTLSeconds {
		return nil, fmt.Errorf("ttl.seconds must be a whole number of seconds from 1 to %d (a year), not %s", maxTTLSeconds, truncateString(string(req.Seconds), 32))
	}
	return &vmTTL{Action: *req.Action, Seconds: n}, nil
}

// setTTL replaces the VM's timer (nil removes it) and restarts its
// countdown: from now while it runs, as a full budget while it is paused,
// and when it starts while it provisions.
func (v *vmRecord) setTTL(ttl *vmTTL, now time.Time) {
	v.TTL, v.ExpiresAt, v.TTLRemaining = ttl, time.Time{}, 0
	if ttl == nil {
		return
	}
	cycle := time.Duration(ttl.Seconds) * time.Second
	switch v.Status {
	case statusRunning, statusPausing:
		v.ExpiresAt = now.Add(cycle)
	case statusPaused, statusResuming:
		v.TTLRemaining = cycle
	}
}

// errTransition is a pause or resume refused for the VM's status (409).
type errTransition struct{ msg string }

func (e *errTransition) Error() string { return e.msg }

// statusOf maps pause and resume failures to HTTP statuses.
func statusOf(err error) int {
	var t *errTransition
	var q *errQuota
	switch {
	case errors.As(err, &t):
		return http.StatusConflict
	case errors.As(err, &q):
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

// errQuota is a resume refused for the org's quota (429).
type errQuota struct{ error }

func (s *Server) pauseVM(w http.ResponseWriter, r *http.Request) {
	var ignored map[string]any
	if !decodeBody(w, r, maxJSONBody, &ignored) {
		return
	}
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	ctx, cancel := s.requestContext(r)
	defer cancel()
	out, err := s.pause(ctx, v, false)
	if err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// pause freezes a running VM's machine and marks it paused; a paused VM is
// answered as it is. rearm (a TTL's pause) restarts the TTL's cycle for the
// next running spell instead of keeping what was left of it.
func (s *Server) pause(ctx context.Context, v *vmRecord, rearm bool) (vmJSON, error) {
	s.mu.Lock()
	switch v.Status {
	case statusPaused:
		out := s.vmJSON(v)
		s.mu.Unlock()
		return out, nil // idempotent
	case statusRunning:
	default:
		s.mu.Unlock()
		return vmJSON{}, &errTransition{fmt.Sprintf("VM %s is %s; only a running VM can be paused", v.ID, v.Status)}
	}
	v.Status = statusPausing
	err := s.store.saveVM(v)
	machineID := v.MachineID
	if err != nil {
		v.Status = statusRunning
	}
	s.mu.Unlock()
	if err != nil {
		return vmJSON{}, fmt.Errorf("store the VM record: %w", err)
	}
	m, err := s.machine(machineID)
	if err == nil {
		err = m.Freeze(ctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.Status != statusPausing || s.store.vms[v.ID] != v {
		return vmJSON{}, &errTransition{fmt.Sprintf("VM %s was deleted while it was being paused", v.ID)}
	}
	if err != nil {
		v.Status = statusRunning
		s.store.saveVM(v)
		return vmJSON{}, fmt.Errorf("VM %s could not be paused and is still running: %w", v.ID, err)
	}
	now := time.Now()
	v.Status, v.PausedAt, v.PauseSnapshot = statusPaused, now.UTC(), ""
	if v.TTL != nil {
		v.TTLRemaining = max(v.ExpiresAt.Sub(now), 0)
		if rearm {
			v.TTLRemaining = time.Duration(v.TTL.Seconds) * time.Second
		}
		v.ExpiresAt = time.Time{}
	}
	if err := s.store.saveVM(v); err != nil {
		s.log.Warn().Str("vm", v.ID).Err(err).Msg("fastvm emulator: store the paused VM's record")
	}
	return s.vmJSON(v), nil
}

func (s *Server) resumeVM(w http.ResponseWriter, r *http.Request) {
	var ignored map[string]any
	if !decodeBody(w, r, maxJSONBody, &ignored) {
		return
	}
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	status := v.Status
	s.mu.Unlock()
	switch status {
	case statusRunning:
		s.mu.Lock()
		out := s.vmJSON(v)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out) // idempotent
		return
	case statusResuming:
		s.mu.Lock()
		out := s.vmJSON(v)
		s.mu.Unlock()
		writeJSON(w, http.StatusAccepted, out) // already under way
		return
	}
	if err := s.startResume(v); err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	if s.delay > 0 {
		// Queued, as for a launch: resuming now, running after the delay.
		s.mu.Lock()
		out := s.vmJSON(v)
		s.mu.Unlock()
		started := s.goBackground(func(ctx context.Context) {
			sleepCtx(ctx, s.delay)
			if err := s.finishResume(ctx, v); err != nil {
				s.log.Warn().Str("vm", v.ID).Err(err).Msg("fastvm emulator: resume")
			}
		})
		if !started {
			writeError(w, http.StatusServiceUnavailable, "the FastVM emulator is closing")
			return
		}
		writeJSON(w, http.StatusAccepted, out)
		return
	}
	ctx, cancel := s.requestContext(r)
	defer cancel()
	if err := s.finishResume(ctx, v); err != nil {
		writeError(w, statusOf(err), err.Error())
		return
	}
	s.mu.Lock()
	out := s.vmJSON(v)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// startResume takes the quota back for a paused VM and marks it resuming.
func (s *Server) startResume(v *vmRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.Status != statusPaused {
		return &errTransition{fmt.Sprintf("VM %s is %s; only a paused VM can be resumed", v.ID, v.Status)}
	}
	if err := s.checkVMQuota(v.CPU, v.MemoryMiB, v.DiskGiB); err != nil {
		return &errQuota{fmt.Errorf("cannot resume VM %s: %w", v.ID, err)}
	}
	v.Status = statusResuming
	if err := s.store.saveVM(v); err != nil {
		v.Status = statusPaused
		return fmt.Errorf("store the VM record: %w", err)
	}
	return nil
}

// finishResume thaws a resuming VM's machine and marks it running, its TTL
// counting down again from what was left; if the thaw fails it is paused
// again.
func (s *Server) finishResume(ctx context.Context, v *vmRecord) error {
	s.mu.Lock()
	machineID := v.MachineID
	s.mu.Unlock()
	m, err := s.machine(machineID)
	if err == nil {
		err = m.Thaw(ctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.Status != statusResuming || s.store.vms[v.ID] != v {
		return &errTransition{fmt.Sprintf("VM %s was deleted while it was being resumed", v.ID)}
	}
	if err != nil {
		v.Status = statusPaused
		s.store.saveVM(v)
		return fmt.Errorf("VM %s could not be resumed and is still paused: %w", v.ID, err)
	}
	now := time.Now()
	v.Status, v.PausedAt, v.PauseSnapshot = statusRunning, time.Time{}, ""
	if v.TTL != nil {
		v.ExpiresAt, v.TTLRemaining = now.Add(v.TTLRemaining), 0
	}
	if err := s.store.saveVM(v); err != nil {
		s.log.Warn().Str("vm", v.ID).Err(err).Msg("fastvm emulator: store the resumed VM's record")
	}
	return nil
}

// refreshTTL restarts a VM's TTL cycle (§9): 409 without a TTL.
func (s *Server) refreshTTL(w http.ResponseWriter, r *http.Request) {
	var ignored map[string]any
	if !decodeBody(w, r, maxJSONBody, &ignored) {
		return
	}
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case v.TTL == nil:
		writeError(w, http.StatusConflict, fmt.Sprintf(`VM %s has no TTL to refresh: set one with PATCH /v1/vms/%s {"ttl":{"action":"pause","seconds":3600}}`, v.ID, v.ID))
		return
	case v.Status == statusDeleting || v.Status == statusError:
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s is %s", v.ID, v.Status))
		return
	}
	next := *v
	next.setTTL(v.TTL, time.Now())
	s.commitVM(w, v, &next)
}

// runTTLs acts on expired TTLs until the emulator closes: a running VM
// whose time is up is paused (its cycle re-armed) or deleted.
func (s *Server) runTTLs(ctx context.Context) {
	t := time.NewTicker(ttlTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.expireTTLs(ctx)
		}
	}
}

func (s *Server) expireTTLs(ctx context.Context) {
	now := time.Now()
	type expiry struct {
		v      *vmRecord
		action string
	}
	var due []expiry
	s.mu.Lock()
	for _, v := range s.store.vms {
		if v.Status == statusRunning && v.TTL != nil && !v.ExpiresAt.IsZero() && !now.Before(v.ExpiresAt) {
			due = append(due, expiry{v, v.TTL.Action})
		}
	}
	s.mu.Unlock()
	for _, d := range due {
		v := d.v
		var err error
		if d.action == ttlDelete {
			err = s.startDelete(v)
		} else {
			_, err = s.pause(ctx, v, true)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn().Str("vm", v.ID).Err(err).Msg("fastvm emulator: act on an expired TTL; trying again in a second")
			s.mu.Lock()
			if v.Status == statusRunning {
				v.ExpiresAt = time.Now().Add(time.Second)
			}
			s.mu.Unlock()
		}
	}
}
