//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmcp-dev/vmcp/local/guest"
	"github.com/vmcp-dev/vmcp/local/wire"
)

// checkpointTimeout bounds saving or restoring one machine's Python state.
const checkpointTimeout = time.Minute

// closeCheckpointTimeout bounds the checkpoints of all machines when the
// engine closes.
const closeCheckpointTimeout = 20 * time.Second

// Checkpoint describes a machine's saved Python state: the user's
// variables, serialised inside the machine (with dill) into a file of its
// home, restored into the next interpreter before its first instruction.
type Checkpoint struct {
	SavedAt time.Time `json:"saved_at"`
	Names   []string  `json:"names"`
	// Skipped are the variables left out, with the reason (an open file,
	// a socket…).
	Skipped map[string]string `json:"skipped,omitempty"`
	Bytes   int64             `json:"bytes"`
	// Periodic: a save of Options.CheckpointInterval, restored after a
	// crash (what came after it is lost).
	Periodic bool `json:"periodic,omitempty"`
}

// SavePython saves the interpreter's variables to the machine's checkpoint,
// for the next interpreter to restore: call it before stopping a machine
// on purpose. A machine without a live interpreter has nothing to save
// (nil, nil).
func (m *Machine) SavePython(ctx context.Context) (*Checkpoint, error) {
	select {
	case m.pyTurn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-m.pyTurn }()
	cp, err := m.savePython(ctx)
	if cp == nil || err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.info.PythonCheckpoint, m.info.LastCheckpoint = cp, nil
	info := m.info
	m.mu.Unlock()
	if err := writeJSON(filepath.Join(m.dir, "machine.json"), info); err != nil {
		return nil, err
	}
	return cp, nil
}

// savePython writes the checkpoint file, with the Python turn held.
func (m *Machine) savePython(ctx context.Context) (*Checkpoint, error) {
	m.mu.Lock()
	sb, interp, limit := m.sb, m.interp, m.info.Limits.DiskBytes/2
	live := sb != nil && sb.alive() && interp != ""
	m.mu.Unlock()
	if !live {
		return nil, nil
	}
	final, err := m.control(ctx, sb, wire.Request{Op: wire.OpPython, Checkpoint: "save", StateMax: limit})
	if err != nil {
		return nil, err
	}
	if interpreterKey(sb, final.Interpreter) != interp {
		return nil, nil // the interpreter had ended: a new one has nothing
	}
	if final.Error != "" || final.Value == nil {
		return nil, errors.New(guest.ExceptionLine(final.Error))
	}
	cp := Checkpoint{SavedAt: time.Now().UTC()}
	if err := json.Unmarshal([]byte(*final.Value), &cp); err != nil {
		return nil, fmt.Errorf("the checkpoint's summary: %w", err)
	}
	return &cp, nil
}

// discardCheckpoint removes the checkpoint file from the machine (inside
// it: the host never touches what the machine's code could have swapped
// for a link), with the Python turn held.
func (m *Machine) discardCheckpoint(ctx context.Context) {
	m.mu.Lock()
	sb := m.sb
	m.mu.Unlock()
	if sb != nil && sb.alive() {
		m.control(ctx, sb, wire.Request{Op: wire.OpPython, Checkpoint: "discard"})
	}
	m.mu.Lock()
	if m.info.LastCheckpoint != nil {
		m.info.LastCheckpoint, m.ranSinceSave = nil, true // its file went too
	}
	m.mu.Unlock()
}

// StopSaving saves the machine's Python state (see SavePython) and stops
// its processes. A state that cannot be saved is lost, and the next
// call's result says why.
func (m *Machine) StopSaving(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	defer cancel()
	_, err := m.SavePython(ctx)
	m.Stop()
	if err != nil {
		m.mu.Lock()
		m.resetReason = "the machine was stopped and its Python variables could not be saved (" + err.Error() + ")"
		m.mu.Unlock()
	}
	return err
}

// restorePython restores a pending checkpoint into the sandbox's
// interpreter before an instruction runs there, and says what it did for
// the instruction's result: the restored variables, or why the state was
// lost. It is called with the machine's Python turn held.
func (m *Machine) restorePython(ctx context.Context, sb *sandbox) (restored, reset string) {
	m.mu.Lock()
	cp := m.info.PythonCheckpoint
	m.mu.Unlock()
	if cp == nil {
		return "", ""
	}
	ctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	defer cancel()
	final, err := m.control(ctx, sb, wire.Request{Op: wire.OpPython, Checkpoint: "restore"})
	if errors.Is(err, context.Canceled) {
		return "", "" // the call was cancelled: the next one restores
	}
	m.mu.Lock()
	if final.Interpreter != 0 {
		m.interp, m.interpPID = interpreterKey(sb, final.Interpreter), final.PID
	}
	// The file is gone with the restore.
	m.info.PythonCheckpoint, m.info.LastCheckpoint = nil, nil
	info := m.info
	switch {
	case err == nil && final.Error == "":
		m.resetReason = ""
		restored = "Python variables restored from the checkpoint of " + cp.SavedAt.Format(time.RFC3339) + ": " + strings.Join(cp.Names, ", ")
		if cp.Periodic {
			restored = "vmcp stopped without saving (it was killed, or it crashed): " + restored + " (the last periodic save; what came after it is lost)"
		}
		if len(cp.Skipped) > 0 {
			restored += "; not restored: " + skippedText(cp.Skipped)
		}
	case err != nil:
		reset = "the checkpoint of the Python variables could not be restored (" + err.Error() + ")"
	default:
		reset = "the checkpoint of the Python variables could not be restored (" + guest.ExceptionLine(final.Error) + ")"
	}
	m.mu.Unlock()
	if werr := writeJSON(filepath.Join(m.dir, "machine.json"), info); werr != nil && reset == "" {
		reset = "the machine's record could not be written: " + werr.Error()
	}
	return restored, reset
}

// skippedText lists variables left out of a checkpoint, with the reasons.
func skippedText(skipped map[string]string) string {
	names := make([]string, 0, len(skipped))
	for n := range skipped {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + " (" + skipped[n] + ")"
	}
	return strings.Join(parts, ", ")
}

// control sends a request that runs no user code to the machine's
// interpreter and waits for its result; the caller holds the Python turn.
func (m *Machine) control(ctx context.Context, sb *sandbox, req wire.Request) (wire.Event, error) {
	var final wire.Event
	if req.TimeoutMS == 0 {
		if d, ok := ctx.Deadline(); ok {
			req.TimeoutMS = max(time.Until(d).Milliseconds(), 1)
		}
	}
	c, err := sb.start(req, func(ev wire.Event) bool {
		if ev.Ev == wire.EvOutput {
			return false // what it prints is nobody's output
		}
		final = ev
		return true
	})
	if err != nil {
		return final, err
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		m.Stop()
		<-c.done
		return final, ctx.Err()
	}
	if final.Ev == wire.EvError {
		return final, errors.New(final.Error)
	}
	if final.Died || final.TimedOut || final.Interpreter == 0 {
		return final, fmt.Errorf("the interpreter did not answer: %s", final.Error)
	}
	return final, nil
}

// saveAll checkpoints every machine with a live interpreter, side by
// side, within closeCheckpointTimeout.
func (e *Engine) saveAll(ms []*Machine) {
	ctx, cancel := context.WithTimeout(context.Background(), closeCheckpointTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, m := range ms {
		if !m.running() {
			continue
		}
		wg.Go(func() { m.SavePython(ctx) })
	}
	wg.Wait()
}

// startCheckpoints saves, every Options.CheckpointInterval, the variables
// of the machines that ran Python since their last save and are not
// running it now, one machine at a time.
func (e *Engine) startCheckpoints() {
	every := e.opts.CheckpointInterval
	if every <= 0 {
		return
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for range t.C {
			e.mu.Lock()
			closed := e.closed
			ms := make([]*Machine, 0, len(e.machines))
			for _, m := range e.machines {
				ms = append(ms, m)
			}
			e.mu.Unlock()
			if closed {
				return
			}
			for _, m := range ms {
				m.savePeriodically()
			}
		}
	}()
}

// savePeriodically saves the variables as the machine's LastCheckpoint if
// its interpreter ran code since the last save and is free now.
func (m *Machine) savePeriodically() {
	select {
	case m.pyTurn <- struct{}{}:
	default:
		return // an instruction runs: next time
	}
	defer func() { <-m.pyTurn }()
	m.mu.Lock()
	changed := m.ranSinceSave
	m.mu.Unlock()
	if !changed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkpointTimeout)
	defer cancel()
	cp, err := m.savePython(ctx)
	if err != nil || cp == nil {
		return
	}
	cp.Periodic = true
	m.mu.Lock()
	m.info.LastCheckpoint, m.ranSinceSave = cp, false
	info := m.info
	m.mu.Unlock()
	writeJSON(filepath.Join(m.dir, "machine.json"), info)
}
