package fastvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	"github.com/vmcp-dev/vmcp/internal/capture"
	"github.com/vmcp-dev/vmcp/internal/vmrepl"
)

// FastVM has no REPL on the wire: run_python is built on exec by package
// vmrepl, which keeps the local engine's Python driver running in the VM
// and reaches it with one small exec per call.

var _ backend.PythonRunner = (*Machine)(nil)

// RunPython runs code in the VM's persistent interpreter, resuming the VM
// first if it was paused (the interpreter's state survives a pause; a VM
// relaunched from a snapshot starts a fresh one, and the result says so).
//
// opts.Stdout and Stderr receive the code's output byte for byte, however
// long, as the VM's exec streams it.
func (m *Machine) RunPython(ctx context.Context, code string, opts backend.PythonOptions) (*backend.PythonResult, error) {
	r := m.b.repl(m.id)
	var res *backend.PythonResult
	var counted []*capture.CountingWriter
	for _, w := range []*io.Writer{&opts.Stdout, &opts.Stderr} {
		if *w != nil {
			c := &capture.CountingWriter{W: *w}
			counted = append(counted, c)
			*w = c
		}
	}
	unwritten := func() bool {
		for _, c := range counted {
			if c.N > 0 {
				return false
			}
		}
		return true
	}
	// A 409 means the exec was refused (the VM was paused behind our back)
	// before anything ran: the call can be made again once it is resumed,
	// unless output reached the caller's writers (it cannot be taken back).
	var restored, reset string
	err := m.resumed(ctx, unwritten, func() error {
		var err error
		if restored, reset, err = m.restoreVariables(ctx, r); err != nil {
			return err
		}
		res, err = r.RunPython(ctx, code, opts)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("run Python on FastVM machine %s: %w", m.id, err)
	}
	res.StateRestored = restored
	if res.StateReset == "" {
		res.StateReset = reset
	}
	return res, nil
}

// maxSavedVariables bounds the variables a FastVM machine saves when it is
// parked.
const maxSavedVariables = 1 << 30

// restoreVariables restores, before the first call of a VM launched from
// a snapshot, the variables the snapshot carries (a parked machine's), and
// says so; without any, it passes on what that first call would have said
// of the state.
func (m *Machine) restoreVariables(ctx context.Context, r *vmrepl.REPL) (restored, reset string, err error) {
	m.b.mu.Lock()
	pending := m.b.restore[m.id]
	m.b.mu.Unlock()
	if !pending {
		return "", "", nil
	}
	names, res, err := r.RestoreVariables(ctx)
	if res == nil && err != nil {
		return "", "", err // the REPL could not be reached: the next call tries again
	}
	m.b.mu.Lock()
	delete(m.b.restore, m.id)
	m.b.mu.Unlock()
	if err != nil {
		// No variables in the snapshot (FileNotFoundError), or they could
		// not be loaded: the interpreter starts empty, as it would have.
		if !strings.Contains(err.Error(), "FileNotFoundError") {
			reset = "the Python variables of the snapshot could not be restored (" + err.Error() + ")"
		} else {
			reset = res.StateReset
		}
		return "", reset, nil
	}
	var list []string
	json.Unmarshal([]byte(names), &list)
	return "Python variables restored (saved when the machine was parked): " + strings.Join(list, ", "), "", nil
}

// repl is the REPL of a VM, made on first use and kept for the next calls
// (it knows how to reach the VM's interpreter without asking again).
func (b *Backend) repl(id string) *vmrepl.REPL {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r := b.repls[id]; r != nil {
		return r
	}
	r := vmrepl.New(execer{b: b, id: id}, vmrepl.Options{Env: []string{jobMarker}})
	b.repls[id] = r
	return r
}

// forgetREPL drops the REPL of a VM that is gone.
func (b *Backend) forgetREPL(id string) {
	b.mu.Lock()
	delete(b.repls, id)
	b.mu.Unlock()
}

// execer runs vmrepl's commands through the streamed exec, cutting the
// output into lines as vmrepl wants them.
type execer struct {
	b  *Backend
	id string
}

func (x execer) Exec(ctx context.Context, argv []string, stdin io.Reader, onLine func(stream string, line []byte)) (int, error) {
	req := fastvmclient.ExecRequest{Command: argv}
	if deadline, ok := ctx.Deadline(); ok {
		// The service ends the command by then too (and says so), rather
		// than leaving it to run after the caller has gone.
		req.TimeoutSec = max(1, int(time.Until(deadline)/time.Second)+1)
	}
	if stdin != nil {
		b, err := io.ReadAll(io.LimitReader(stdin, maxStdin+1))
		if err != nil {
			return 0, err
		}
		if len(b) > maxStdin {
			return 0, fmt.Errorf("over %d MiB of input, FastVM's limit for a command", maxStdin>>20)
		}
		req.Stdin = b
	}
	out := [2]lineCutter{{stream: "stdout", on: onLine}, {stream: "stderr", on: onLine}}
	exit, err := x.b.c.ExecStreamFunc(ctx, x.id, req, func(ev fastvmclient.ExecEvent) error {
		switch ev.Type {
		case fastvmclient.EventStdout:
			out[0].write(ev.Data)
		case fastvmclient.EventStderr:
			out[1].write(ev.Data)
		}
		return nil
	})
	if err != nil {
		return 0, atLimit(err)
	}
	out[0].flush()
	out[1].flush()
	return exit.ExitCode, nil
}

// lineCutter hands out a stream's complete lines, without their newline;
// a line longer than vmrepl.MaxLine goes out in pieces of that size (vmrepl
// never writes one).
type lineCutter struct {
	stream  string
	on      func(stream string, line []byte)
	partial []byte
}

func (c *lineCutter) write(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			c.partial = append(c.partial, b...)
			for len(c.partial) > vmrepl.MaxLine {
				c.on(c.stream, c.partial[:vmrepl.MaxLine])
				c.partial = append(c.partial[:0], c.partial[vmrepl.MaxLine:]...)
			}
			return
		}
		if len(c.partial) > 0 {
			c.partial = append(c.partial, b[:i]...)
			c.on(c.stream, c.partial)
			c.partial = c.partial[:0]
		} else {
			c.on(c.stream, b[:i])
		}
		b = b[i+1:]
	}
}

func (c *lineCutter) flush() {
	if len(c.partial) > 0 {
		c.on(c.stream, c.partial)
		c.partial = nil
	}
}
