package forevervm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/internal/capture"
)

// Commands run through subprocess in the machine's interpreter, in a
// session (and process group) of their own. A command takes several
// instructions when it is fed stdin or runs long: stdin goes in chunks, and
// output is relayed (live, a line per output chunk) while an instruction
// waits on the command, at most outputBudget bytes and maxSlice per
// instruction. Between instructions the command runs on, held back only by
// its full pipes; its timeout is kept by a thread of the helper, which kills
// its process group, its descendants and every process carrying its marker
// in the environment, so that nothing it started outlives it.

// maxLine is the longest line OnOutput receives; longer ones come in
// pieces, as on the local backend.
const maxLine = 64 << 10

// maxSlice bounds how long one instruction waits on a command (the service
// runs instructions of up to 20 minutes); sliceMargin is added to the
// instruction's timeout, for the helper to kill and report.
const (
	maxSlice    = 5 * time.Minute
	sliceMargin = 30 * time.Second
)

type cmdResult struct {
	Done        bool   `json:"done"`
	Pending     int    `json:"pending"`
	Exited      bool   `json:"exited"`
	ExitCode    int    `json:"exit_code"`
	Signal      string `json:"signal"`
	TimedOut    bool   `json:"timed_out"`
	DurationMS  int64  `json:"duration_ms"`
	StdoutBytes int64  `json:"stdout_bytes"`
	StderrBytes int64  `json:"stderr_bytes"`
}

// Run runs a command in the machine. Command.Shell runs with bash -c (sh -c
// where there is no bash), Argv without a shell; Workdir is relative to the
// machine's home. A non-zero exit is a result, not an error. When ctx ends,
// the command is interrupted and its processes killed.
func (m *Machine) Run(ctx context.Context, c backend.Command) (*backend.CommandResult, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	for k, v := range c.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("invalid environment variable name %q", k)
		}
		if strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("environment variable %s contains a NUL byte", k)
		}
	}
	for _, a := range append([]string{c.Shell, c.Workdir}, c.Argv...) {
		if strings.ContainsRune(a, 0) {
			return nil, fmt.Errorf("the command contains a NUL byte: %q", a)
		}
	}
	maxOut := c.MaxOutput
	if maxOut <= 0 {
		maxOut = capture.DefaultMax
	}
	relay := int64(-1) // everything, for OnOutput or the writers
	if c.OnOutput == nil && c.Stdout == nil && c.Stderr == nil {
		relay = int64(maxOut) // only what the result keeps
	}
	out := &cmdOutput{max: maxOut, onOutput: c.OnOutput, w: [2]io.Writer{c.Stdout, c.Stderr}}
	op := newOpID()
	var deadline time.Time
	if c.Timeout > 0 {
		deadline = time.Now().Add(c.Timeout)
	}

	var buf []byte
	stdinOpen := c.Stdin != nil
	readStdin := func() (data []byte, final bool) {
		if buf == nil {
			buf = make([]byte, uploadChunk)
		}
		k, err := io.ReadFull(c.Stdin, buf)
		if err != nil {
			// The end of the input, or a failure to read it: either way
			// the command's stdin is closed (as on the local backend).
			stdinOpen = false
			return buf[:k], true
		}
		return buf[:k], false
	}
	args := map[string]any{
		"op": op, "argv": c.Argv, "shell": c.Shell, "env": c.Env, "workdir": c.Workdir,
		"stdin": c.Stdin != nil, "timeout_ms": c.Timeout.Milliseconds(), "relay_limit": relay,
	}
	var data []byte
	if stdinOpen {
		var final bool
		data, final = readStdin()
		args["final"] = final
	}
	name := "cmd_start"
	for started := false; ; started = true {
		if err := ctx.Err(); err != nil {
			if started {
				m.undo(false, op, "")
			}
			return nil, fmt.Errorf("command on ForeverVM machine %s: %w", m.name, err)
		}
		slice := maxSlice
		if !deadline.IsZero() {
			slice = max(min(slice, time.Until(deadline)+2*time.Second), time.Second)
		}
		args["budget"], args["slice_ms"] = outputBudget, slice.Milliseconds()
		var res cmdResult
		err := m.call(ctx, step{op: name, args: args, data: data, timeout: slice + sliceMargin, onData: out.onData}, &res)
		if err != nil {
			var he *HelperError
			if !errors.As(err, &he) {
				// The step may still be running the command (when ctx
				// ended): interrupt it rather than wait for its timeout.
				m.undo(ctx.Err() != nil, op, "")
			}
			return nil, err
		}
		if res.Done {
			return out.result(&res), nil
		}
		name, data = "cmd", nil
		args = map[string]any{"op": op}
		switch {
		case stdinOpen && !res.Exited && res.Pending == 0:
			var final bool
			data, final = readStdin()
			args["final"] = final
		case res.Pending > 0 && !res.Exited:
			// The command has not taken the last chunk yet: keep feeding.
		default:
			args["wait"] = true
		}
	}
}

// cmdOutput collects a command's output as the helper relays it: up to
// max bytes of each stream, or all of it passed to its writer.
type cmdOutput struct {
	max      int
	onOutput func(stream, line string)
	w        [2]io.Writer
	got      [2]int64
	buf      [2]bytes.Buffer
	partial  [2][]byte
}

var streamNames = [2]string{"stdout", "stderr"}

func (o *cmdOutput) onData(stream int, off int64, p []byte) error {
	if stream != 1 && stream != 2 {
		return fmt.Errorf("output of an unknown stream %d", stream)
	}
	i := stream - 1
	if off != o.got[i] {
		return fmt.Errorf("%s bytes %d… of the command were lost on the way (got bytes from %d)", streamNames[i], o.got[i], off)
	}
	o.got[i] += int64(len(p))
	if o.w[i] != nil {
		if _, err := o.w[i].Write(p); err != nil {
			return err
		}
	} else if room := o.max - o.buf[i].Len(); room > 0 {
		o.buf[i].Write(p[:min(room, len(p))])
	}
	if o.onOutput != nil {
		o.split(i, p)
	}
	return nil
}

// split passes complete lines to onOutput, and lines longer than maxLine in
// pieces.
func (o *cmdOutput) split(i int, p []byte) {
	for len(p) > 0 {
		j := bytes.IndexByte(p, '\n')
		if j < 0 {
			o.partial[i] = append(o.partial[i], p...)
			if len(o.partial[i]) >= maxLine {
				o.onOutput(streamNames[i], string(o.partial[i]))
				o.partial[i] = o.partial[i][:0]
			}
			return
		}
		if len(o.partial[i]) > 0 {
			o.partial[i] = append(o.partial[i], p[:j]...)
			o.onOutput(streamNames[i], string(o.partial[i]))
			o.partial[i] = o.partial[i][:0]
		} else {
			o.onOutput(streamNames[i], string(p[:j]))
		}
		p = p[j+1:]
	}
}

func (o *cmdOutput) result(r *cmdResult) *backend.CommandResult {
	if o.onOutput != nil {
		for i := range o.partial {
			if len(o.partial[i]) > 0 {
				o.onOutput(streamNames[i], string(o.partial[i]))
				o.partial[i] = nil
			}
		}
	}
	return &backend.CommandResult{
		ExitCode:        r.ExitCode,
		Signal:          r.Signal,
		Stdout:          o.buf[0].String(),
		Stderr:          o.buf[1].String(),
		StdoutTruncated: o.w[0] == nil && r.StdoutBytes > int64(o.max),
		StderrTruncated: o.w[1] == nil && r.StderrBytes > int64(o.max),
		TimedOut:        r.TimedOut,
		Duration:        time.Duration(r.DurationMS) * time.Millisecond,
	}
}
