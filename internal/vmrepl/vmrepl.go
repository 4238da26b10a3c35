// Package vmrepl gives a machine that vmcp reaches only through exec (run an
// argv, with optional stdin, stream its output: FastVM) a stateful Python
// REPL with the local engine's semantics: the value's repr, stdout and
// stderr streamed live line by line (and byte for byte to writers), the
// traceback of an exception, open matplotlib figures as PNGs, a timeout
// that interrupts the code and keeps the state (or kills the interpreter
// if it does not stop, and says so), and StateReset when the code ran in
// an interpreter that lost earlier state.
//
// Inside the machine a small host process (host.py, started detached on
// first use) keeps the interpreter: the local engine's driver.py, with the
// same protocol. Each call is one exec of `sh -c` with shell builtins only,
// no Python process per call (starting one costs more than the call): what
// it costs over an exec of `true` is the shell's start and the hand-offs to
// the host and the interpreter and back. The client writes the call's
// token and its pid to the host's request pipe; the host reads the request
// from the client's argv and writes the call's events straight into the
// client's stdout pipe (no process copies them), then signals it to exit.
// host.py describes the protocol in the machine.
//
// Everything that comes back is untrusted (code in the machine runs as the
// host's user and can replace it): lines, sizes and counts are bounded, the
// result must carry the call's token, and every wait is bounded by the
// call's context and timeout.
package vmrepl

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmcp-dev/vmcp/internal/capture"
	"github.com/vmcp-dev/vmcp/internal/linesplit"
	"github.com/vmcp-dev/vmcp/local/guest"

	"github.com/vmcp-dev/vmcp/backend"
)

//go:embed host.py
var hostSource string

// Execer runs one command in the machine: argv, with stdin when it is not
// nil. It calls onLine for every complete line of the command's stdout
// ("stdout") and stderr ("stderr"), without its newline, as it arrives (the
// REPL streams output through it, so it must not wait for the end), and
// returns the command's exit code. Lines up to MaxLine bytes must arrive
// whole. An error means the command's outcome is unknown (transport, ctx).
type Execer interface {
	Exec(ctx context.Context, argv []string, stdin io.Reader, onLine func(stream string, line []byte)) (exitCode int, err error)
}

// MaxLine is the longest line the host in the machine writes (a tag byte
// and at most 32 KiB of payload): an Execer may cut longer lines, and the
// REPL drops them.
const MaxLine = 64 << 10

// Options tune a REPL. Zero fields take the defaults.
type Options struct {
	// Python is the interpreter in the machine: default "python3".
	Python string
	// Dir is the machine's directory for the REPL's files (the host's
	// program, its log, a marker that Python has run): default
	// ~/.vmcp/repl, or /var/tmp/vmcp-repl-UID without a writable home. It
	// must be on a disk that keeps files across restarts, for StateReset.
	Dir string
	// DefaultTimeout interrupts code run with no timeout: default 15 s.
	DefaultTimeout time.Duration
	// Env is added to the environment the host starts with ("NAME=value"),
	// and so to its interpreter's and what that starts.
	Env []string
	// MaxOutput is how much of each of stdout and stderr a call returns and
	// streams: the first MaxOutput bytes, then a marker and the last 64 KiB
	// at the end. Default 1 MiB, the local engine's cap. A stream given a
	// writer (PythonOptions.Stdout, Stderr) is not capped: all of it goes
	// there, byte for byte.
	MaxOutput int

	relay bool // tests: the fallback for execs whose stdout is not a pipe
}

const (
	defaultTimeout = 15 * time.Second
	// interruptGrace is the host's: how long interrupted code may take to
	// stop before the interpreter is killed. The host adds up to 2 s for
	// the interpreter's last output.
	interruptGrace = 3 * time.Second
	// callSlack bounds a call past its timeout: the grace, the output, and
	// the execs of a slow machine.
	callSlack = interruptGrace + 12*time.Second
	// ensureTimeout bounds the exec that starts the host (a Python start on
	// a slow machine, twice).
	ensureTimeout = 60 * time.Second
	// maxArg is the largest request passed in argv: Linux takes at most
	// 128 KiB in one argument; larger ones go through stdin.
	maxArg = 100 << 10
	// MaxCode is the most code one call takes (FastVM's stdin limit).
	MaxCode = 8 << 20

	maxText      = 16<<20 + 4<<10 // a value or an error: the machine sends at most 16 Mi characters, and the host keeps 16 MiB of them
	maxImages    = 64
	maxImageData = 40 << 20 // all PNGs of a call, decoded
	tailBytes    = 64 << 10
)

// Exit codes of the client script (see directScript).
const (
	exitHostGone  = 112 // the host was not there: the request was not sent
	exitHostDied  = 113 // the host ended while it had the request
	exitNoRequest = 114 // the request could not be written to the machine's disk
	exitRelay     = 115 // the host could not write to the exec's stdout
	exitShell     = 2   // sh could not open the host's pipes: it ended just then
	exitNoPython  = 127
)

// REPL is the Python REPL of one machine. It is safe for concurrent use:
// calls take turns, as they share one interpreter.
type REPL struct {
	x       Execer
	opts    Options
	version string
	turn    chan struct{}
	host    *hostInfo // nil: check (and start) the host before the next call; guarded by turn
}

// hostInfo is how calls reach the host, from its ensure.
type hostInfo struct {
	dir, life, req string
	stat, start    string // the host's /proc/PID/stat and its start time there
	relay          bool
}

// New returns the REPL of the machine that x runs commands in. Nothing runs
// in the machine before the first call.
func New(x Execer, opts Options) *REPL {
	if opts.Python == "" {
		opts.Python = "python3"
	}
	if opts.DefaultTimeout <= 0 {
		opts.DefaultTimeout = defaultTimeout
	}
	if opts.MaxOutput <= 0 {
		opts.MaxOutput = capture.DefaultMax
	}
	sum := sha256.Sum256([]byte(hostSource + "\x00" + guest.DriverSource()))
	return &REPL{x: x, opts: opts, version: hex.EncodeToString(sum[:8]), turn: make(chan struct{}, 1)}
}

// errUnreached: the request did not reach the host, so the code did not
// run and the call can be made again.
var errUnreached = errors.New("the Python REPL process of the machine could not be reached")

// wireRequest is a call's request, in the client's argv or stdin.
type wireRequest struct {
	Code      string `json:"code"`
	TimeoutMS int64  `json:"timeout_ms"`
	MaxOutput int    `json:"max_output"`
	// Whole asks for stdout and stderr entire, not capped at MaxOutput:
	// for PythonOptions.Stdout and Stderr.
	Whole [2]bool `json:"whole"`
	// Checkpoint, instead of code, asks the driver to save ("save", at
	// most StateMax bytes) or restore ("restore") the interpreter's
	// variables (see the local engine's driver).
	Checkpoint string `json:"checkpoint,omitempty"`
	StateMax   int64  `json:"state_max,omitempty"`
}

// RunPython runs code in the machine's interpreter; globals persist between
// calls. A Python exception is a result with Error set. When ctx ends, the
// code is interrupted (the state survives) and the result is returned with
// ctx's error.
func (r *REPL) RunPython(ctx context.Context, code string, opts backend.PythonOptions) (*backend.PythonResult, error) {
	if len(code) > MaxCode {
		return nil, fmt.Errorf("the code is %d MiB; run_python takes at most %d MiB on this machine: upload it as a file and run it with exec(open(path).read())", len(code)>>20, MaxCode>>20)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = r.opts.DefaultTimeout
	}
	return r.send(ctx, wireRequest{Code: code, TimeoutMS: timeout.Milliseconds(), MaxOutput: r.opts.MaxOutput,
		Whole: [2]bool{opts.Stdout != nil, opts.Stderr != nil}}, timeout, opts)
}

// checkpointTimeout bounds saving or restoring the variables.
const checkpointTimeout = time.Minute

// SaveVariables saves the interpreter's variables in the machine, at most
// max bytes, for RestoreVariables in a later interpreter (of this machine,
// or of one launched from its snapshot); it returns the driver's JSON
// summary. An interpreter that has not run code has nothing to save.
func (r *REPL) SaveVariables(ctx context.Context, max int64) (string, error) {
	res, err := r.send(ctx, wireRequest{TimeoutMS: checkpointTimeout.Milliseconds(), MaxOutput: r.opts.MaxOutput, Checkpoint: "save", StateMax: max},
		checkpointTimeout, backend.PythonOptions{})
	return checkpointValue(res, err)
}

// RestoreVariables restores the variables SaveVariables saved into the
// interpreter (starting it if needed); the file is removed. It returns
// the names restored as JSON; the result's StateReset is what a fresh
// interpreter's first call would have said.
func (r *REPL) RestoreVariables(ctx context.Context) (string, *backend.PythonResult, error) {
	res, err := r.send(ctx, wireRequest{TimeoutMS: checkpointTimeout.Milliseconds(), MaxOutput: r.opts.MaxOutput, Checkpoint: "restore"},
		checkpointTimeout, backend.PythonOptions{})
	v, err := checkpointValue(res, err)
	return v, res, err
}

func checkpointValue(res *backend.PythonResult, err error) (string, error) {
	switch {
	case err != nil:
		return "", err
	case res.Error != "":
		return "", errors.New(guest.ExceptionLine(res.Error))
	case res.Value == nil:
		return "", errors.New("no summary")
	}
	return *res.Value, nil
}

// send makes one request of the interpreter, starting its host if needed.
func (r *REPL) send(ctx context.Context, w wireRequest, timeout time.Duration, opts backend.PythonOptions) (*backend.PythonResult, error) {
	req, err := json.Marshal(w)
	if err != nil {
		return nil, err
	}
	select {
	case r.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-r.turn }()
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if r.host == nil {
			if err := r.ensure(ctx); err != nil {
				return nil, err
			}
		}
		res, err := r.call(ctx, req, timeout, opts)
		if errors.Is(err, errUnreached) && attempt == 0 {
			continue // the code did not run: once more, after a new ensure
		}
		return res, err
	}
}

// hostCheck exits 112 unless the host runs and is the one ensure found: a
// machine started again numbers its processes again, and its host's pid
// may now be another process's. $6 is the host's /proc/PID/stat, $7 its
// start time there ("" from a host that does not say it).
const hostCheck = `started() { [ $# -ge 20 ] && shift 19 && [ "$1" = "$want" ]; }
want=$7
if [ -n "$want" ]; then { read -r s <"$6"; } 2>/dev/null && started ${s##*) } || exit 112; fi
[ -p "$2" ] && [ -p "$3" ] || exit 112
`

// The client of one call: shell builtins only (cat only for a large request).
// $1 dir, $2 the host's life pipe, $3 its request pipe, $4 the call's token,
// $5 the request, or "-" for stdin; $6 and $7 for hostCheck. The host writes
// the events to this shell's stdout, through fd 3 (during printf's
// redirection fd 1 is the request pipe), and sends SIGUSR1 when it is done;
// if it dies, the life pipe ends and read returns.
const directScript = `umask 077
trap 'exit 0' USR1
trap 'exit 115' USR2
` + hostCheck + `if [ "$5" = - ]; then cat >"$1/q.$4" || exit 114; fi
exec 3>&1 4<"$2" 5>>"$3"
printf '%s %s d 3\n' "$4" "$$" >&5
exec 5>&-
read -r x <&4
exit 113`

// relayScript is the client when the exec's stdout is not a pipe the host
// can open: the host writes the events into a FIFO, which cat copies.
const relayScript = `umask 077
` + hostCheck + `if [ "$5" = - ]; then cat >"$1/q.$4" || exit 114; else printf '%s' "$5" >"$1/q.$4" || exit 114; fi
mkfifo "$1/o.$4" || exit 114
exec 5>>"$3"
printf '%s %s r 0\n' "$4" "$$" >&5
exec 5>&-
exec cat "$1/o.$4"`

// interruptScript asks the host to interrupt call $2 ($1: request pipe).
const interruptScript = `[ -p "$1" ] || exit 112
exec 5>>"$1"
printf 'int %s\n' "$2" >&5`

// ensureScript runs the host's ensure mode, or exits 127 without Python.
const ensureScript = `command -v "$1" >/dev/null 2>&1 || exit 127
exec "$@"`

// bootstrap runs host.py from argv, for the ensure mode.
const bootstrap = `import sys; exec(compile(sys.argv[1], "vmrepl-host.py", "exec"))`

func (r *REPL) call(ctx context.Context, req []byte, timeout time.Duration, opts backend.PythonOptions) (*backend.PythonResult, error) {
	h := r.host
	tok := newToken()
	arg, stdin := string(req), io.Reader(nil)
	if len(req) > maxArg {
		arg, stdin = "-", bytes.NewReader(req)
	}
	script := directScript
	if h.relay {
		script = relayScript
	}
	argv := []string{"/bin/sh", "-c", script, "sh", h.dir, h.life, h.req, tok, arg, h.stat, h.start}
	// The exec outlives a cancelled ctx: the host interrupts the code and
	// answers, and the state survives. The call's timeout bounds it.
	execCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout+callSlack)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		ictx, icancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer icancel()
		r.x.Exec(ictx, []string{"/bin/sh", "-c", interruptScript, "sh", h.req, tok}, nil, func(string, []byte) {})
		time.AfterFunc(interruptGrace+3*time.Second, cancel)
	})
	defer stop()
	p := newParser(tok, r.opts.MaxOutput, opts, cancel)
	start := time.Now()
	code, err := r.x.Exec(execCtx, argv, stdin, p.line)
	p.end()
	w := p.result
	switch {
	case p.overflow:
		r.host = nil
		return nil, fmt.Errorf("the Python REPL process of the machine sent more than %d MiB for one call, which is more than any call returns; the call was stopped and the process will be checked at the next call", p.budget>>20)
	case w != nil:
		res := p.pythonResult()
		if p.writeErr != nil {
			return res, fmt.Errorf("write the Python code's output: %w", p.writeErr)
		}
		if ctx.Err() != nil && !res.TimedOut {
			return res, ctx.Err()
		}
		return res, nil
	case err != nil:
		r.host = nil
		if ctx.Err() != nil {
			return nil, fmt.Errorf("the Python code was interrupted, but the machine did not answer: %w", ctx.Err())
		}
		if execCtx.Err() != nil {
			return nil, fmt.Errorf("the Python REPL process of the machine did not answer within %s (the call's timeout and a grace); it will be checked, and restarted if needed, at the next call", (timeout + callSlack).Round(time.Second))
		}
		return nil, fmt.Errorf("run Python in the machine: %w", err)
	case code == exitRelay && !h.relay:
		h.relay = true // the exec's stdout is not a pipe: the host refused before running anything
		return nil, errUnreached
	case code == exitHostGone || code == exitShell || (!p.started && (code == exitHostDied || (code == 0 && h.relay))):
		// The host was gone, or ended before it started the code: nothing ran.
		r.host = nil
		return nil, errUnreached
	case code == exitHostDied || (code == 0 && h.relay):
		r.host = nil
		return &backend.PythonResult{
			Error: "The Python REPL process of the machine ended while running this code (it was killed, or the machine " +
				"stopped); the interpreter state (variables, imports) was lost. The next call starts a fresh one.",
			Stdout: p.out[0].text(), Stderr: p.out[1].text(), Runtime: time.Since(start),
		}, nil
	case code == exitNoRequest:
		return nil, fmt.Errorf("could not write the Python code to the machine's disk (directory %s)%s; free some space in the machine and try again", h.dir, p.stderrNote())
	default:
		r.host = nil
		return nil, fmt.Errorf("the Python REPL process of the machine gave no result (exit status %d%s); it will be checked, and restarted if needed, at the next call", code, p.stderrNote())
	}
}

// ensureStatus is the line ensure prints.
type ensureStatus struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error"`
	Dir     string `json:"dir"`
	PID     int    `json:"pid"`
	Life    int    `json:"life"`
	Req     int    `json:"req"`
	Mode    string `json:"mode"`
	Version string `json:"version"`
	Start   string `json:"start"` // in clock ticks since boot; "" from an older host
}

// ensure makes sure that the host runs in the machine and answers (starting
// it if needed), and learns how to reach it.
func (r *REPL) ensure(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, ensureTimeout)
	defer cancel()
	argv := []string{"/bin/sh", "-c", ensureScript, "sh", r.opts.Python, "-I", "-c", bootstrap, hostSource,
		"ensure", r.opts.Dir, r.version, guest.DriverSource(), newToken(), "ping"}
	if len(r.opts.Env) > 0 {
		argv = append(append([]string{"env"}, r.opts.Env...), argv...)
	}
	var status []byte
	var stderr tail
	code, err := r.x.Exec(ctx, argv, nil, func(stream string, line []byte) {
		switch {
		case stream != "stdout":
			stderr.add(line)
		case len(line) > 1 && len(line) < 16<<10 && line[0] == 'E':
			status = bytes.Clone(line[1:])
		}
	})
	if err != nil {
		return fmt.Errorf("start the Python REPL in the machine: %w", err)
	}
	if code == exitNoPython {
		return fmt.Errorf("this machine has no %s: install it with exec_command (apt-get install -y python3) or launch a machine from an image with Python", r.opts.Python)
	}
	var st ensureStatus
	if status == nil || json.Unmarshal(status, &st) != nil {
		return fmt.Errorf("could not start the Python REPL in the machine (exit status %d%s)", code, stderr.note())
	}
	if !st.OK {
		return fmt.Errorf("could not start the Python REPL in the machine: %s", clipText(st.Error, 2000))
	}
	if st.Version != r.version || st.PID <= 1 || st.PID >= 1<<30 || st.Life < 0 || st.Life >= 1<<20 || st.Req < 0 || st.Req >= 1<<20 ||
		(st.Mode != "direct" && st.Mode != "relay") || len(st.Start) > 20 || strings.Trim(st.Start, "0123456789") != "" || !path.IsAbs(st.Dir) || len(st.Dir) > 4096 || strings.ContainsAny(st.Dir, "\x00\n") {
		return fmt.Errorf("the Python REPL in the machine answered with an invalid status %.200q; remove %s in the machine to reset it", status, clipText(st.Dir, 200))
	}
	r.host = &hostInfo{
		dir:   st.Dir,
		life:  fmt.Sprintf("/proc/%d/fd/%d", st.PID, st.Life),
		req:   fmt.Sprintf("/proc/%d/fd/%d", st.PID, st.Req),
		stat:  fmt.Sprintf("/proc/%d/stat", st.PID),
		start: st.Start,
		relay: st.Mode == "relay" || r.opts.relay,
	}
	return nil
}

// wireResult is the host's "r" line.
type wireResult struct {
	Call        string `json:"call"`
	Value       bool   `json:"value"` // the value came in "v" lines
	Error       bool   `json:"error"` // the error came in "x" lines
	RuntimeMS   int64  `json:"runtime_ms"`
	TimedOut    bool   `json:"timed_out"`
	Interrupted bool   `json:"interrupted"`
	Died        bool   `json:"died"`
	Reset       string `json:"reset"`
}

// parser reads one call's events, within bounds.
type parser struct {
	tok       string
	onOutput  func(stream, line string)
	writers   [2]io.Writer // the streams asked whole go there
	writeErr  error
	out       [2]streamBuffer
	lines     [2]linesplit.Splitter // for onOutput
	scratch   []byte
	value     []byte
	errText   []byte
	images    [][]byte
	imagesLen int    // bytes of images
	image     []byte // the figure being received
	imageBad  bool
	started   bool // the host started the code ("s")
	result    *wireResult
	total     int64
	budget    int64
	overflow  bool
	cancel    func()
	stderr    tail
}

func newParser(tok string, maxOutput int, opts backend.PythonOptions, cancel func()) *parser {
	keep := maxOutput + tailBytes + 4<<10 // what the host sends at most, with its marker
	return &parser{
		tok: tok, onOutput: opts.OnOutput, cancel: cancel,
		writers: [2]io.Writer{opts.Stdout, opts.Stderr},
		out:     [2]streamBuffer{{max: keep}, {max: keep}},
		// The streams asked whole are not counted: they go to the writers.
		budget: int64(2*keep) + 2*(maxText*4/3) + maxImageData*4/3 + 4<<20,
	}
}

func (p *parser) line(stream string, line []byte) {
	if stream != "stdout" {
		p.stderr.add(line)
		return
	}
	if p.overflow || p.result != nil || len(line) == 0 {
		return
	}
	tag, payload := line[0], line[1:]
	i := strings.IndexByte("oeOE", tag) // output: the stream is i%2; "o" and "e" end a line
	if i < 0 || p.writers[i%2] == nil {
		if p.total += int64(len(line)) + 1; p.total > p.budget {
			p.overflow = true
			p.cancel()
			return
		}
	}
	if len(line) > MaxLine {
		return
	}
	switch tag {
	case 'o', 'e', 'O', 'E':
		if i < 2 { // the Execer took the newline off
			p.scratch = append(append(p.scratch[:0], payload...), '\n')
			payload = p.scratch
		}
		p.output(i%2, payload)
	case 's':
		p.started = true
	case 'v':
		p.value = appendBase64(p.value, payload, maxText)
	case 'x':
		p.errText = appendBase64(p.errText, payload, maxText)
	case 'p':
		if !p.imageBad {
			before := len(p.image)
			p.image = appendBase64(p.image, payload, maxImageData-p.imagesLen)
			p.imageBad = len(p.image) == before // over the bound, or invalid: the figure is dropped
		}
	case 'P':
		if !p.imageBad && len(p.images) < maxImages && bytes.HasPrefix(p.image, []byte("\x89PNG\r\n\x1a\n")) {
			p.images = append(p.images, p.image)
			p.imagesLen += len(p.image)
		}
		p.image, p.imageBad = nil, false
	case 'r':
		var w wireResult
		if json.Unmarshal(payload, &w) == nil && w.Call == p.tok {
			if len(w.Reset) > 1000 {
				w.Reset = clipText(w.Reset, 1000)
			}
			p.result = &w
		}
	}
}

var streamNames = [2]string{"stdout", "stderr"}

// output takes bytes of stream i (0 stdout, 1 stderr).
func (p *parser) output(i int, data []byte) {
	if w := p.writers[i]; w != nil {
		if p.writeErr == nil {
			_, p.writeErr = w.Write(data)
		}
	} else if !p.out[i].add(data) {
		return // over the bound: the host sent more than it may
	}
	if p.onOutput != nil {
		p.lines[i].Split(data, func(l []byte) { p.onOutput(streamNames[i], validUTF8(l)) })
	}
}

// end passes the streams' partial lines to onOutput.
func (p *parser) end() {
	if p.onOutput == nil {
		return
	}
	for i := range p.lines {
		p.lines[i].Flush(func(l []byte) { p.onOutput(streamNames[i], validUTF8(l)) })
	}
}

func (p *parser) pythonResult() *backend.PythonResult {
	w := p.result
	res := &backend.PythonResult{
		Stdout:     p.out[0].text(),
		Stderr:     p.out[1].text(),
		Images:     p.images,
		Runtime:    time.Duration(max(w.RuntimeMS, 0)) * time.Millisecond,
		TimedOut:   w.TimedOut,
		StateReset: w.Reset,
	}
	switch {
	case w.Error:
		res.Error = string(p.errText)
		if res.Error == "" {
			res.Error = "Error"
		}
	case w.Value:
		v := string(p.value)
		res.Value = &v
	}
	return res
}

func (p *parser) stderrNote() string { return p.stderr.note() }

// appendBase64 decodes one piece onto b, if b stays within max bytes; an
// invalid piece is dropped.
func appendBase64(b, piece []byte, max int) []byte {
	n := base64.StdEncoding.DecodedLen(len(piece))
	if len(b)+n > max {
		return b
	}
	if b == nil {
		b = []byte{}
	}
	out := make([]byte, n)
	m, err := base64.StdEncoding.Decode(out, piece)
	if err != nil {
		return b
	}
	return append(b, out[:m]...)
}

// streamBuffer keeps a stream's bytes, up to max.
type streamBuffer struct {
	max int
	buf []byte
}

// add appends p; false when the stream is over its bound.
func (b *streamBuffer) add(p []byte) bool {
	if len(b.buf)+len(p) > b.max {
		return false
	}
	b.buf = append(b.buf, p...)
	return true
}

// text is the stream as PythonResult holds it, as the local engine does:
// without its last newline (its lines joined with "\n"), in valid UTF-8.
func (b *streamBuffer) text() string {
	return validUTF8(bytes.TrimSuffix(b.buf, []byte{'\n'}))
}

// validUTF8 is p as a string, its invalid bytes as U+FFFD.
func validUTF8(p []byte) string {
	if utf8.Valid(p) {
		return string(p)
	}
	return strings.ToValidUTF8(string(p), "\uFFFD")
}

// tail keeps the last bytes of a command's stderr, for error messages.
type tail struct{ b []byte }

func (t *tail) add(line []byte) {
	t.b = append(t.b, line...)
	t.b = append(t.b, '\n')
	if len(t.b) > 4<<10 {
		t.b = t.b[len(t.b)-2<<10:]
	}
}

func (t *tail) note() string {
	s := strings.TrimSpace(strings.ToValidUTF8(string(t.b), "?"))
	if s == "" {
		return ""
	}
	return ": " + clipText(s, 1000)
}

func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func newToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
