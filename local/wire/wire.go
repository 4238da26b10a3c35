// Package wire is the protocol between the engine (package local, on the
// host) and its agent inside each sandbox (package local/guest): requests
// one way, events the other, one JSON object per line.
package wire

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// The engine talks to the agent inside each sandbox over the sandbox's stdin
// and stdout: one JSON object per line in each direction. Requests carry an id
// chosen by the engine; every event names the request it belongs to. The one
// exception is the data of an opStdin request: its Len bytes follow the line
// raw, since decoding them from JSON (base64 in a string) would bound uploads
// to what the agent's JSON decoder manages (see the README).

// Request operations.
const (
	OpPython     = "py"          // run Python code in the machine's interpreter
	OpRun        = "run"         // start a command
	OpStdin      = "stdin"       // a chunk of a command's standard input
	OpStdinClose = "stdin_close" // end of a command's standard input
	OpKill       = "kill"        // kill a command's process tree, or interrupt Python
	OpResize     = "resize"      // new window size of a TTY command's terminal
	OpHello      = "hello"       // answered at once: the sandbox is set up
)

// Event kinds.
const (
	EvOutput   = "out"       // a chunk of stdout or stderr
	EvPython   = "py_result" // the result of an opPython request
	EvExit     = "exit"      // a command ended
	EvSaved    = "saved"     // a stream of a command that saves its output ended (see request.SaveDir)
	EvStdinAck = "stdin_ack" // a stdin chunk was written to the command
	EvError    = "error"     // the request failed before it could run
	EvHello    = "hello"     // the answer to opHello
)

type Request struct {
	Op   string `json:"op"`
	ID   uint64 `json:"id"`
	Code string `json:"code,omitempty"`
	// Warm, of an OpPython, runs no code: it starts the interpreter and
	// imports Imports ahead of use (a warm machine's), into sys.modules,
	// not the user's globals. The result's value lists the imports that
	// failed.
	Warm    bool     `json:"warm,omitempty"`
	Imports []string `json:"imports,omitempty"`
	// Checkpoint, of an OpPython without code, is "save" (the user's
	// globals to the machine's checkpoint file, at most StateMax bytes) or
	// "restore" (them back, the file removed). The result's value is a
	// JSON summary.
	Checkpoint string            `json:"checkpoint,omitempty"`
	StateMax   int64             `json:"state_max,omitempty"`
	Argv       []string          `json:"argv,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Dir        string            `json:"dir,omitempty"`
	Stdin      bool              `json:"stdin,omitempty"`
	Data       []byte            `json:"-"`             // of opStdin: sent raw after the line
	Len        int               `json:"len,omitempty"` // of opStdin: how many bytes of data follow the line
	TimeoutMS  int64             `json:"timeout_ms,omitempty"`
	// TTY runs the command on a pseudo-terminal of Rows × Cols (also the
	// new size in an opResize).
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Reason says why an opKill was sent: "timeout" or "interrupt".
	Reason string `json:"reason,omitempty"`
	// SaveDir, for an opRun, has the agent keep each output stream that
	// outgrows Keep bytes whole in a file of that directory (relative to
	// the home), at most SaveMax bytes of it: only the first Keep bytes
	// travel as output events, then, now and then, a live one for progress,
	// and the last Keep bytes in the stream's evSaved.
	SaveDir string `json:"save_dir,omitempty"`
	Keep    int    `json:"keep,omitempty"`
	SaveMax int64  `json:"save_max,omitempty"`
}

type Event struct {
	Ev     string `json:"ev"`
	ID     uint64 `json:"id"`
	Stream string `json:"stream,omitempty"`
	Data   []byte `json:"data,omitempty"`

	// Python results.
	Value       *string  `json:"value,omitempty"`
	Error       string   `json:"error,omitempty"`
	PNG         [][]byte `json:"png,omitempty"`
	RuntimeMS   int64    `json:"runtime_ms,omitempty"`
	Interpreter int      `json:"interpreter,omitempty"` // which interpreter (1, 2, …) of this agent ran the code
	PID         int      `json:"pid,omitempty"`         // the interpreter's process id in the sandbox
	TimedOut    bool     `json:"timed_out,omitempty"`
	Interrupted bool     `json:"interrupted,omitempty"`
	Died        bool     `json:"died,omitempty"` // the interpreter exited while running the code

	// Live marks an output event sent only to show progress: its bytes are
	// in the saved file, not the stream's head.
	Live bool `json:"live,omitempty"`
	// Of an evSaved: the stream's bytes and lines, the file that holds it
	// (relative to the home; empty when the stream fitted in Keep), whether
	// the file stops at SaveMax, and Error when it could not be written.
	Total   int64  `json:"total,omitempty"`
	Lines   int64  `json:"lines,omitempty"`
	Path    string `json:"path,omitempty"`
	Partial bool   `json:"partial,omitempty"`

	// Command exits.
	// Left is how many processes of the machine were still running when
	// the command ended, besides the agent and the Python interpreter (-1:
	// unknown).
	Left     int    `json:"left,omitempty"`
	ExitCode int    `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	Killed   string `json:"killed,omitempty"` // why the agent killed the command: "timeout" or "kill"
}

// MaxStdinChunk bounds the data of one opStdin request.
const MaxStdinChunk = 1 << 20

// ReadRequest reads one request: its JSON line and, for opStdin, the raw data
// that follows. It returns io.EOF at the end of the input.
func ReadRequest(br *bufio.Reader, req *Request) error {
	line, err := br.ReadBytes('\n')
	if err != nil {
		if err == io.EOF && len(bytes.TrimSpace(line)) > 0 {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if err := json.Unmarshal(line, req); err != nil {
		return err
	}
	if req.Len < 0 || req.Len > MaxStdinChunk {
		return fmt.Errorf("a stdin chunk of %d bytes (at most %d)", req.Len, MaxStdinChunk)
	}
	if req.Len > 0 {
		req.Data = make([]byte, req.Len)
		if _, err := io.ReadFull(br, req.Data); err != nil {
			return fmt.Errorf("the data of a stdin chunk: %w", err)
		}
	}
	return nil
}

// EncodeRequest is req as readRequest reads it.
func EncodeRequest(req Request) ([]byte, error) {
	data := req.Data
	req.Len = len(data)
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return append(append(b, '\n'), data...), nil
}

// EgressPort is where an allow-list machine's proxy listens, on its
// loopback.
const EgressPort = 3128
