//go:build linux

package forevervm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

// The local machine's Tags hold what the emulator must keep across restarts.
const (
	tagName      = "forevervm.name"       // the ForeverVM machine name; marks machines the emulator created
	tagCreatedAt = "forevervm.created_at" // in createdAtLayout
	tagMemoryMB  = "forevervm.memory_mb"  // as requested, never echoed (spec §2.3)
	tagUser      = "forevervm.tag."       // prefix of the user's own tags
)

// createdAtLayout is RFC 3339 in UTC with microseconds, as the service sends.
const createdAtLayout = "2006-01-02T15:04:05.000000Z"

// resultRetention is how many finished instructions a machine remembers
// (spec §8 #7: the last 1000).
const resultRetention = 1000

// minMemoryMB is the least memory a machine gets whatever memory_mb asks:
// below it Python cannot even start, which would look like an emulator bug.
const minMemoryMB = 128

// machine is a ForeverVM machine: a local machine plus the instruction
// queue and results that the ForeverVM API exposes.
type machine struct {
	s         *Server
	name      string
	createdAt time.Time
	tags      map[string]string // the user's tags; never nil
	lm        *local.Machine

	mu      sync.Mutex
	nextSeq int64                  // Spec §8 #4: one counter per machine, shared by HTTP and WebSocket
	queue   []*instruction         // Spec §8 #5: FIFO; queue[0] runs (or is about to)
	running bool                   // a runner goroutine is draining queue
	insts   map[int64]*instruction // the last resultRetention instructions, and every unfinished one
	oldest  int64                  // smallest seq that may still be in insts
}

// machineFromInfo rebuilds a machine from the record of a local machine;
// false for local machines the emulator did not create.
func (s *Server) machineFromInfo(info local.MachineInfo) (*machine, bool) {
	name := info.Tags[tagName]
	if !validName(name) {
		return nil, false
	}
	lm, err := s.opts.Engine.Machine(info.ID)
	if err != nil {
		return nil, false
	}
	created, err := time.Parse(time.RFC3339Nano, info.Tags[tagCreatedAt])
	if err != nil {
		created = info.CreatedAt
	}
	tags := map[string]string{}
	for k, v := range info.Tags {
		if user, ok := strings.CutPrefix(k, tagUser); ok {
			tags[user] = v
		}
	}
	return newMachine(s, name, created.UTC(), tags, lm), true
}

func newMachine(s *Server, name string, created time.Time, tags map[string]string, lm *local.Machine) *machine {
	return &machine{s: s, name: name, createdAt: created, tags: tags, lm: lm, insts: map[int64]*instruction{}}
}

// errMachineLimit is returned when Options.MaxMachines is reached.
var errMachineLimit = errors.New("the emulator's machine limit (Options.MaxMachines) is reached")

// createMachine makes a new ForeverVM machine with its local machine.
// memoryMB 0 means the default limits.
func (s *Server) createMachine(ctx context.Context, tags map[string]string, memoryMB uint32) (*machine, error) {
	s.mu.Lock()
	full := s.opts.MaxMachines > 0 && len(s.machines) >= s.opts.MaxMachines
	s.mu.Unlock()
	if full {
		return nil, errMachineLimit
	}
	name, err := s.newName()
	if err != nil {
		return nil, err
	}
	created := time.Now().UTC().Truncate(time.Microsecond)
	localTags := map[string]string{tagName: name, tagCreatedAt: created.Format(createdAtLayout)}
	userTags := map[string]string{}
	for k, v := range tags {
		localTags[tagUser+k] = v
		userTags[k] = v
	}
	limits := s.opts.Limits
	if memoryMB > 0 {
		// Spec §8 #11: accept any memory_mb, store it, never echo it, and
		// enforce it since the local sandbox can limit memory.
		localTags[tagMemoryMB] = strconv.FormatUint(uint64(memoryMB), 10)
		limits.MemoryBytes = int64(max(memoryMB, minMemoryMB)) << 20
	}
	info, err := s.opts.Engine.Create(ctx, local.MachineSpec{
		Name:         name,
		Tags:         localTags,
		Flavour:      local.Workspace,
		AllowNetwork: s.opts.AllowNetwork,
		Limits:       limits,
	})
	if err != nil {
		return nil, err
	}
	lm, err := s.opts.Engine.Machine(info.ID)
	if err != nil {
		return nil, err
	}
	m := newMachine(s, name, created, userTags, lm)
	s.mu.Lock()
	s.machines[name] = m
	s.mu.Unlock()
	s.log.Info().Str("machine", name).Str("local_id", info.ID).Msg("created machine")
	return m, nil
}

const nameAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newName draws an unused machine name: 16 characters of [A-Za-z0-9], like
// the service's (spec §2.3).
func (s *Server) newName() (string, error) {
	for {
		var b [16]byte
		for i := 0; i < len(b); {
			var r [32]byte
			if _, err := rand.Read(r[:]); err != nil {
				return "", err
			}
			for _, c := range r {
				// 248 = 4*62: drop the bytes that would bias the draw.
				if c < 248 && i < len(b) {
					b[i] = nameAlphabet[int(c)%len(nameAlphabet)]
					i++
				}
			}
		}
		name := string(b[:])
		s.mu.Lock()
		_, taken := s.machines[name]
		s.mu.Unlock()
		if !taken {
			return name, nil
		}
	}
}

func validName(name string) bool {
	if len(name) != 16 {
		return false
	}
	for _, c := range []byte(name) {
		if !strings.ContainsRune(nameAlphabet, rune(c)) {
			return false
		}
	}
	return true
}

// lookup returns the machine with this ForeverVM name, or nil.
func (s *Server) lookup(name string) *machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.machines[name]
}

// machineJSON is the list entry of a machine (ApiMachine, spec §2.4).
type machineJSON struct {
	Name                  string            `json:"name"`
	CreatedAt             string            `json:"created_at"`
	Running               bool              `json:"running"`
	HasPendingInstruction bool              `json:"has_pending_instruction"`
	ExpiresAt             *string           `json:"expires_at"` // Spec §8 #12: always null
	Tags                  map[string]string `json:"tags"`
}

// listMachines returns the machines carrying every tag in filter (spec
// §2.4: the filter is an AND), newest first.
func (s *Server) listMachines(filter map[string]string) []machineJSON {
	s.mu.Lock()
	all := make([]*machine, 0, len(s.machines))
	for _, m := range s.machines {
		all = append(all, m)
	}
	s.mu.Unlock()
	out := []machineJSON{}
	for _, m := range all {
		if !m.hasTags(filter) {
			continue
		}
		m.mu.Lock()
		pending := len(m.queue) > 0
		m.mu.Unlock()
		out = append(out, machineJSON{
			Name:      m.name,
			CreatedAt: m.createdAt.Format(createdAtLayout),
			// Spec §8 #12: running while the interpreter is live in memory.
			Running:               m.lm.Info().Status == local.StatusRunning,
			HasPendingInstruction: pending,
			Tags:                  m.tags,
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].CreatedAt != out[j].CreatedAt {
			return out[i].CreatedAt > out[j].CreatedAt
		}
		return out[i].Name > out[j].Name
	})
	return out
}

func (m *machine) hasTags(filter map[string]string) bool {
	for k, v := range filter {
		if got, ok := m.tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// submit queues an instruction. With interrupt, every pending or running
// instruction is interrupted first (and interrupted says whether there was
// one). With rejectIfBusy (HTTP exec without interrupt), a busy machine
// refuses the instruction: inst is nil (spec §8 #3).
func (m *machine) submit(code string, timeout time.Duration, interrupt, rejectIfBusy bool) (inst *instruction, interrupted bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if interrupt {
		for _, q := range m.queue {
			q.interrupt()
			interrupted = true
		}
	} else if rejectIfBusy && len(m.queue) > 0 {
		return nil, false, nil
	}
	if !m.running {
		if !m.s.track() {
			return nil, interrupted, errClosed
		}
		m.running = true
		go m.run()
	}
	inst = newInstruction(m.nextSeq, code, timeout, m.s.opts.MaxOutputBytes)
	m.nextSeq++
	m.insts[inst.seq] = inst
	m.queue = append(m.queue, inst)
	m.prune()
	return inst, interrupted, nil
}

// errClosed is returned for work submitted to a closed Server.
var errClosed = errors.New("the emulator is shutting down")

// prune forgets finished instructions beyond the retention; m.mu held.
func (m *machine) prune() {
	for ; m.oldest <= m.nextSeq-1-resultRetention; m.oldest++ {
		inst := m.insts[m.oldest]
		if inst != nil && !inst.finished() {
			return // still queued: keep it and everything after it
		}
		delete(m.insts, m.oldest)
	}
}

// instruction returns the instruction with this seq, or nil.
func (m *machine) instruction(seq int64) *instruction {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.insts[seq]
}

// run executes the queue in order until it is empty. One runner at most
// runs per machine; submit starts it.
func (m *machine) run() {
	defer m.s.wg.Done()
	for {
		m.mu.Lock()
		if len(m.queue) == 0 {
			m.running = false
			m.mu.Unlock()
			return
		}
		inst := m.queue[0]
		ctx, cancel := context.WithCancel(m.s.ctx)
		inst.cancel = cancel
		if inst.interrupted {
			cancel() // interrupted while it waited in the queue
		}
		m.mu.Unlock()

		result := m.execute(ctx, inst)
		cancel()
		// Nothing reads the code again, and the last 1000 instructions are
		// kept: large ones (vmcp's file chunks) would pile up.
		inst.code = ""

		// Dequeue and publish under one lock, so that a client that has seen
		// the result finds the machine free for its next instruction.
		m.mu.Lock()
		m.queue = m.queue[1:]
		inst.finish(result)
		m.prune()
		m.mu.Unlock()
	}
}

// execute runs one instruction on the local machine and shapes its result.
func (m *machine) execute(ctx context.Context, inst *instruction) json.RawMessage {
	if ctx.Err() != nil {
		// Spec §8 #6: an interrupted instruction's result is the error "Interrupted".
		return errorResult("Interrupted", 0)
	}
	// The engine passes the output on byte for byte, long lines whole; the
	// writers cut it into the chunks of the wire.
	stdout, stderr := &lineWriter{in: inst, stream: "stdout"}, &lineWriter{in: inst, stream: "stderr"}
	res, err := m.lm.RunPython(ctx, inst.code, local.PythonOptions{Timeout: inst.timeout, Stdout: stdout, Stderr: stderr})
	stdout.flush() // spec §3.4: a partial line is a final chunk
	stderr.flush()
	log := m.s.log.Debug().Str("machine", m.name).Int64("seq", inst.seq)
	if res != nil && res.StateReset != "" {
		// The real service keeps memory forever; the local engine loses it when
		// its interpreter restarts (for instance after an emulator restart).
		log = log.Str("state_reset", res.StateReset)
	}
	switch {
	case res == nil && ctx.Err() != nil:
		log.Msg("interrupted before it started")
		return errorResult("Interrupted", 0)
	case res == nil:
		m.s.log.Warn().Err(err).Str("machine", m.name).Int64("seq", inst.seq).Msg("the local machine could not run an instruction")
		return errorResult("The emulator could not run this instruction: "+err.Error(), 0)
	}
	ms := res.Runtime.Milliseconds()
	switch {
	case res.TimedOut:
		// Spec §8 #8: exactly "Timed out". The engine keeps the interpreter
		// (and its state) unless it would not stop, which it adds to its own
		// text; that detail goes to the log.
		log.Str("engine_error", res.Error).Msg("timed out")
		return errorResult("Timed out", ms)
	case res.Interrupted && res.QuotaExceeded:
		// The engine's disk quota is a watcher that stops the code; on a
		// real machine the disk fills and the write raises.
		log.Str("engine_error", res.Error).Msg("stopped at the disk quota")
		return errorResult("OSError: [Errno 28] No space left on device ("+strings.TrimPrefix(res.Error, "Stopped: ")+")", ms)
	case res.Interrupted:
		log.Str("engine_error", res.Error).Msg("interrupted")
		return errorResult("Interrupted", ms) // Spec §8 #6
	case res.Error != "":
		// Spec §8 #8: the engine's text is the formatted traceback of user
		// code, ending with "ExcType: message".
		log.Msg("raised")
		return errorResult(res.Error, ms)
	}
	log.Msg("done")
	var png string
	if len(res.Images) > 0 {
		png = encodePNG(res.Images[0])
	}
	return valueResult(res.Value, png, ms)
}
