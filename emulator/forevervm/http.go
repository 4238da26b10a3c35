//go:build linux

package forevervm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// decodeBody reads an optional JSON body into v. No body, only whitespace,
// and the literal null all leave v as it is: old clients send nothing or
// null (spec §2.3). Unknown fields are ignored (spec: old clients send some).
// On failure it has already answered and returns false.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "PayloadTooLarge",
			fmt.Sprintf("the request body is over %d bytes (Options.MaxBodyBytes)", s.opts.MaxBodyBytes))
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, "BadRequest", "could not read the request body")
		return false
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 || string(body) == "null" {
		return true
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeError(w, http.StatusBadRequest, "BadRequest", "the body is not the JSON this endpoint takes: "+err.Error())
		return false
	}
	return true
}

// POST /v1/machine/new (spec §2.3).
func (s *Server) handleNew(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Tags     map[string]string `json:"tags"`
		MemoryMB *uint32           `json:"memory_mb"`
	}
	if !s.decodeBody(w, r, &req) {
		return
	}
	var mem uint32
	if req.MemoryMB != nil {
		mem = *req.MemoryMB
	}
	m, ok := s.create(w, r, req.Tags, mem)
	if ok {
		writeJSON(w, map[string]string{"machine_name": m.name})
	}
}

// machineOrNew returns the machine called name, or a new machine for the
// name "new"; or answers with why there is none.
func (s *Server) machineOrNew(w http.ResponseWriter, r *http.Request, name string) (*machine, bool) {
	if name == "new" {
		return s.create(w, r, nil, 0)
	}
	m := s.lookup(name)
	if m == nil {
		writeError(w, http.StatusNotFound, "MachineNotFound", "no machine "+strconv.Quote(name)+": create one with POST /v1/machine/new")
	}
	return m, m != nil
}

// create makes a machine, or answers with why it could not.
func (s *Server) create(w http.ResponseWriter, r *http.Request, tags map[string]string, memoryMB uint32) (*machine, bool) {
	m, err := s.createMachine(r.Context(), tags, memoryMB)
	switch {
	case errors.Is(err, errMachineLimit):
		writeError(w, http.StatusForbidden, "MachineLimitReached", err.Error())
		return nil, false
	case err != nil:
		s.log.Error().Err(err).Msg("could not create a machine")
		writeError(w, http.StatusInternalServerError, "InternalError", "the local engine could not create the machine; see the emulator's log")
		return nil, false
	}
	return m, true
}

// GET or POST /v1/machine/list (spec §2.4).
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Tags map[string]string `json:"tags"`
	}
	if r.Method == http.MethodPost && !s.decodeBody(w, r, &req) {
		return
	}
	writeJSON(w, map[string]any{"machines": s.listMachines(req.Tags)})
}

// instructionJSON is an instruction as clients send it.
type instructionJSON struct {
	Code           *string `json:"code"`
	TimeoutSeconds *int64  `json:"timeout_seconds"`
}

// check validates the instruction and returns its timeout, or a reason for a
// BadRequest.
func (s *Server) check(in *instructionJSON) (time.Duration, string) {
	if in == nil || in.Code == nil {
		return 0, `the instruction needs "code" (a string): {"instruction":{"code":"1+1","timeout_seconds":15}}`
	}
	secs := int64(15) // spec §2.5: the default when missing
	if in.TimeoutSeconds != nil {
		secs = *in.TimeoutSeconds
	}
	if secs <= 0 {
		// Spec §8 #11: reject timeouts of zero or less.
		return 0, fmt.Sprintf("timeout_seconds must be positive (at most %d)", s.opts.MaxTimeoutSeconds)
	}
	// Spec §8 #11: clamp the rest to the maximum.
	secs = min(secs, int64(s.opts.MaxTimeoutSeconds))
	return time.Duration(secs) * time.Second, ""
}

// POST /v1/machine/{name}/exec (spec §2.5).
func (s *Server) handleExec(w http.ResponseWriter, r *http.Request, name string) {
	var req struct {
		Instruction *instructionJSON `json:"instruction"`
		Interrupt   bool             `json:"interrupt"`
	}
	if !s.decodeBody(w, r, &req) {
		return
	}
	timeout, bad := s.check(req.Instruction)
	if bad != "" {
		writeError(w, http.StatusBadRequest, "BadRequest", bad)
		return
	}
	// Spec §8 #14: /v1/machine/new/exec creates a machine and runs the
	// instruction there; the response names it in "machine".
	m, ok := s.machineOrNew(w, r, name)
	if !ok {
		return
	}
	// Spec §8 #3: a busy machine refuses an instruction sent without
	// interrupt (instruction_seq null).
	inst, interrupted, err := m.submit(*req.Instruction.Code, timeout, req.Interrupt, true)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "Unavailable", err.Error())
		return
	}
	var seq *int64
	if inst != nil {
		seq = &inst.seq
	}
	// Spec §8 #6: "interrupted" is always present.
	writeJSON(w, struct {
		InstructionSeq *int64 `json:"instruction_seq"`
		Machine        string `json:"machine"`
		Interrupted    bool   `json:"interrupted"`
	}{seq, m.name, interrupted})
}

// GET /v1/machine/{name}/exec/{seq}/result, a long poll (spec §2.6), and
// .../stream-result, NDJSON (spec §2.7).
func (s *Server) handleResult(w http.ResponseWriter, r *http.Request, name, seqText string, stream bool) {
	m := s.lookup(name)
	if m == nil {
		writeError(w, http.StatusNotFound, "MachineNotFound", "no machine "+strconv.Quote(name))
		return
	}
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "BadRequest", "the instruction seq must be a whole number, as returned by exec")
		return
	}
	inst := m.instruction(seq)
	if inst == nil {
		// Spec §8 #7: results of the last 1000 instructions only.
		writeError(w, http.StatusNotFound, "InstructionNotFound",
			fmt.Sprintf("machine %s has no instruction %d (only the last %d are kept)", name, seq, resultRetention))
		return
	}
	ctx, cancel := s.requestContext(r)
	defer cancel()
	if stream {
		s.streamResult(ctx, w, inst)
		return
	}
	select {
	case <-inst.done:
	case <-ctx.Done():
		if s.ctx.Err() != nil {
			writeError(w, http.StatusServiceUnavailable, "Unavailable", "the emulator is shutting down")
		}
		return // otherwise the client is gone
	}
	_, result, _ := inst.since(0)
	writeJSON(w, struct {
		InstructionID int64           `json:"instruction_id"`
		Result        json.RawMessage `json:"result"`
	}{inst.seq, result})
}

// streamResult replays the instruction's output so far, then sends the rest
// as it comes, one message per line; each line is flushed at once.
func (s *Server) streamResult(ctx context.Context, w http.ResponseWriter, inst *instruction) {
	// Spec §8 #15: the Content-Type is application/x-ndjson.
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	err := inst.follow(ctx, func(frame []byte) error {
		// Every line ends in "\n": clients drop an unterminated last line.
		if _, err := w.Write(append(frame, '\n')); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil {
		s.log.Debug().Err(err).Int64("seq", inst.seq).Msg("stream-result ended early")
	}
}

// POST /internal/signup, without auth (spec §2.9). The emulator cannot email
// a token: it only checks the request and remembers the names it accepted.
func (s *Server) handleSignup(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email       string `json:"email"`
		AccountName string `json:"account_name"`
	}
	if !s.decodeBody(w, r, &req) {
		return
	}
	if !strings.Contains(req.Email, "@") {
		writeError(w, http.StatusBadRequest, "BadRequest", `"email" must be an email address`)
		return
	}
	if !validAccountName(req.AccountName) {
		writeError(w, http.StatusBadRequest, "BadRequest", `"account_name" must be 3 to 16 letters, digits, "_" or "-"`)
		return
	}
	account, email := strings.ToLower(req.AccountName), strings.ToLower(req.Email)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.accounts[account] || account == strings.ToLower(s.opts.Account):
		writeError(w, http.StatusConflict, "AccountNameAlreadyExists", "") // Spec §8 #2: 409
		return
	case s.emails[email]:
		writeError(w, http.StatusConflict, "EmailAlreadyExists", "")
		return
	}
	// Bounded, so that a signup loop cannot grow the emulator's memory; past
	// the bound, conflicts are no longer detected.
	if len(s.accounts) < maxSignups {
		s.accounts[account], s.emails[email] = true, true
	}
	s.log.Info().Str("account_name", req.AccountName).Msg("signup accepted (no token is emailed by the emulator)")
	writeJSON(w, struct{}{}) // Spec §8 #15: 200 {}
}

const maxSignups = 10000

// validAccountName applies the CLI's rule: 3–16 characters, alphanumeric,
// "_" or "-".
func validAccountName(name string) bool {
	if len(name) < 3 || len(name) > 16 {
		return false
	}
	for _, c := range name {
		ok := c == '_' || c == '-' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !ok {
			return false
		}
	}
	return true
}
