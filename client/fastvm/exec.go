package fastvm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"mime"
	"net/http"
	"time"
)

// ExecRequest is a command to run in a VM.
type ExecRequest struct {
	// Command is the argv; the first element must be non-empty. Use Shell
	// for a shell command line.
	Command []string `json:"command"`
	// TimeoutSec bounds the command in the VM (0 = the server's default,
	// 300 s). On expiry the result has TimedOut set.
	TimeoutSec int `json:"timeoutSec,omitempty"`
	// Stdin is written whole to the command, then its stdin is closed.
	Stdin []byte `json:"stdin,omitempty"` // base64 on the wire
}

// Shell returns the argv that runs a command line with sh -c.
func Shell(cmdline string) []string { return []string{"sh", "-c", cmdline} }

// ExecResult is how a command ended, with its output. Each stream is capped
// at 4 MiB by the server; the *Truncated flags say when bytes were dropped.
type ExecResult struct {
	ExitCode        int    `json:"exitCode"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	DurationMs      int64  `json:"durationMs"`
	TimedOut        bool   `json:"timedOut"`
	StdoutTruncated bool   `json:"stdoutTruncated"`
	StderrTruncated bool   `json:"stderrTruncated"`
}

// Duration is how long the command ran.
func (r *ExecResult) Duration() time.Duration { return time.Duration(r.DurationMs) * time.Millisecond }

// Event types of an exec stream.
const (
	EventStdout = "o"
	EventStderr = "e"
	EventExit   = "x" // exactly one, last
)

// ExecEvent is one line of an exec stream: output bytes (Type EventStdout or
// EventStderr, Data) or the exit (Type EventExit, ExitCode, TimedOut,
// DurationMs). Unknown types from newer servers are passed through.
type ExecEvent struct {
	Type       string `json:"t"`
	Data       []byte `json:"d,omitempty"`  // base64 on the wire
	ExitCode   int    `json:"c,omitempty"`  // omitted on the wire when 0
	TimedOut   bool   `json:"to,omitempty"` // omitted on the wire when false
	DurationMs int64  `json:"ms,omitempty"` // on the exit event
}

// maxEventLine bounds one NDJSON line held in memory.
const maxEventLine = 16 << 20

// execTimeout is the HTTP deadline of an exec or fetch: at least the client
// timeout and max(300 s, timeoutSec + 30 s), so that the server answers
// before the client gives up (spec §4).
func (c *Client) execTimeout(timeoutSec int) time.Duration {
	if timeoutSec <= 0 {
		timeoutSec = defaultExecTimeoutSec
	}
	return max(c.timeout, execMinTimeout, time.Duration(timeoutSec)*time.Second+30*time.Second)
}

// Exec runs a command in a VM and returns its aggregated result. A non-zero
// exit or a timeout is a result, not an error. Exec is never retried: a retry
// could run the command twice.
func (c *Client) Exec(ctx context.Context, vmID string, req ExecRequest) (*ExecResult, error) {
	return callJSON[ExecResult](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/exec", body: req, timeout: c.execTimeout(req.TimeoutSec)})
}

// ExecStream runs a command in a VM and yields its output as it is produced,
// uncapped, then the exit event. Output is raw bytes, not necessarily whole
// lines. A failure ends the sequence with a non-nil error. Stopping the loop
// early closes the connection; the command may still run to its timeout in
// the VM. Never retried.
func (c *Client) ExecStream(ctx context.Context, vmID string, req ExecRequest) iter.Seq2[ExecEvent, error] {
	return func(yield func(ExecEvent, error) bool) {
		cl := call{
			method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/exec", body: req,
			timeout: c.execTimeout(req.TimeoutSec), accept: "application/x-ndjson",
		}
		resp, err := c.send(ctx, cl)
		if err != nil {
			yield(ExecEvent{}, err)
			return
		}
		defer resp.close()
		if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/json" {
			// A server that ignores Accept answers with the aggregate.
			aggregateEvents(resp.Body, cl.path, yield)
			return
		}
		r := bufio.NewReaderSize(resp.Body, 64<<10)
		for {
			line, err := nextLine(r)
			if err == io.EOF {
				yield(ExecEvent{}, fmt.Errorf("fastvm: POST %s: the stream ended before the exit event: the connection was cut, the command's outcome is unknown", cl.path))
				return
			}
			if err != nil {
				yield(ExecEvent{}, fmt.Errorf("fastvm: POST %s: reading the stream: %w", cl.path, err))
				return
			}
			var ev ExecEvent
			if err := json.Unmarshal(line, &ev); err != nil {
				yield(ExecEvent{}, fmt.Errorf("fastvm: POST %s: a stream line is not an event (%q): %w", cl.path, truncate(string(line), 200), err))
				return
			}
			if !yield(ev, nil) || ev.Type == EventExit {
				return
			}
		}
	}
}

// aggregateEvents yields an aggregate ExecResult as stream events.
func aggregateEvents(body io.Reader, path string, yield func(ExecEvent, error) bool) {
	var res ExecResult
	if err := json.NewDecoder(body).Decode(&res); err != nil {
		yield(ExecEvent{}, fmt.Errorf("fastvm: POST %s: reading the result: %w", path, err))
		return
	}
	if res.Stdout != "" && !yield(ExecEvent{Type: EventStdout, Data: []byte(res.Stdout)}, nil) {
		return
	}
	if res.Stderr != "" && !yield(ExecEvent{Type: EventStderr, Data: []byte(res.Stderr)}, nil) {
		return
	}
	yield(ExecEvent{Type: EventExit, ExitCode: res.ExitCode, TimedOut: res.TimedOut, DurationMs: res.DurationMs}, nil)
}

// nextLine returns the next non-blank line, trimmed; an unterminated last
// line counts. It returns io.EOF when no line is left.
func nextLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > maxEventLine {
			return nil, fmt.Errorf("an event line is over %d bytes", maxEventLine)
		}
		buf = append(buf, chunk...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil && !errors.Is(err, io.EOF):
			return nil, err
		}
		if line := bytes.TrimSpace(buf); len(line) > 0 {
			return line, nil
		}
		if err != nil { // EOF with nothing left
			return nil, io.EOF
		}
		buf = buf[:0]
	}
}

// ExecStreamFunc runs a command like ExecStream and calls fn for each output
// event; it returns the exit event. An error from fn stops the stream and is
// returned.
func (c *Client) ExecStreamFunc(ctx context.Context, vmID string, req ExecRequest, fn func(ExecEvent) error) (ExecEvent, error) {
	for ev, err := range c.ExecStream(ctx, vmID, req) {
		if err != nil {
			return ExecEvent{}, err
		}
		if ev.Type == EventExit {
			return ev, nil
		}
		if err := fn(ev); err != nil {
			return ExecEvent{}, err
		}
	}
	return ExecEvent{}, errors.New("fastvm: exec stream ended without an exit event")
}
