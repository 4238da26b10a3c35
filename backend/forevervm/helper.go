package forevervm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
)

// Files and commands are built on the REPL, the only thing a ForeverVM
// machine offers: a helper module (helper.py) is installed in the machine's
// interpreter, and each step of an operation is one instruction calling it.
// See helper.py for the protocol.

//go:embed helper.py
var helperSource string

// helperModule is the helper's name in the machine's sys.modules. It carries
// a hash of the source, so that a changed helper is installed anew beside
// an older one rather than used in its place.
var helperModule = func() string {
	sum := sha256.Sum256([]byte(helperSource))
	return "_vmcp_" + hex.EncodeToString(sum[:6])
}()

// installCode installs the helper without binding any name in the user's
// globals (exec gets a dict of its own) and evaluates to None, so the REPL
// echoes nothing and `_` keeps its value. Installing twice is harmless:
// the module is made only when it is missing, so that operations in flight
// keep their state.
var installCode = func() string {
	boot := fmt.Sprintf("import sys, types, base64\n"+
		"if %[1]q not in sys.modules:\n"+
		"    m = types.ModuleType(%[1]q)\n"+
		"    exec(compile(base64.b64decode(%[2]q).decode('utf-8'), '<vmcp helper>', 'exec'), m.__dict__)\n"+
		"    sys.modules[%[1]q] = m\n",
		helperModule, base64.StdEncoding.EncodeToString([]byte(helperSource)))
	return "exec(__import__('base64').b64decode('" + base64.StdEncoding.EncodeToString([]byte(boot)) + "'), {'__name__': '_vmcp_boot'})"
}()

// Sizes of the steps. An instruction carries at most uploadChunk bytes (as
// base64: the emulator takes messages of up to 4 MiB), and prints at most
// about outputBudget bytes (as base64 lines of 48 KiB: the emulator keeps
// 8 MiB of output per instruction).
const (
	uploadChunk  = 1 << 20
	outputBudget = 4 << 20
)

// Timeouts of the steps: a chunk takes a fraction of a second, unless the
// machine is very slow. Undoing an operation runs with a context of its own
// (the caller's may have ended) for up to cleanupTimeout, but the caller
// waits for it only cleanupWait: a call must end soon after its deadline
// even when the service stalls.
const (
	stepTimeout    = 2 * time.Minute
	cleanupTimeout = 30 * time.Second
	cleanupWait    = 2 * time.Second
)

// HelperError is a failure the helper in the machine reported: a path
// outside the home, a missing file, a full disk, an unsafe tar entry.
type HelperError struct {
	Kind string // notfound, outside, path, nospace, unsafe, damaged, lost, os, error
	Msg  string
}

func (e *HelperError) Error() string { return e.Msg }

// Is makes errors.Is(err, fs.ErrNotExist) hold for a missing file.
func (e *HelperError) Is(target error) bool {
	return target == fs.ErrNotExist && e.Kind == "notfound"
}

// instructionError is an instruction that ended without the helper's
// reply: interrupted, timed out, or the interpreter died.
type instructionError struct {
	machine, op, text string
}

func (e *instructionError) Error() string {
	return fmt.Sprintf("the %s step on ForeverVM machine %s ended without a reply: %s", e.op, e.machine, firstLines(e.text, 5))
}

// step is one helper call: one instruction.
type step struct {
	op      string
	args    any
	data    []byte        // sent as base64
	timeout time.Duration // of the instruction; 0: stepTimeout
	// onData receives the bytes of "d" lines (stream 0) and of "o" lines
	// (stream 1 or 2), at their offset in the stream.
	onData func(stream int, offset int64, p []byte) error
}

// newOpID names an operation in the helper (and its temporary files).
func newOpID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// call runs a step and decodes its result into out. It installs the helper
// when the machine lacks it (first use, or the interpreter restarted). A
// failure the helper reports is a *HelperError; when ctx ends, the error
// wraps ctx's.
func (m *Machine) call(ctx context.Context, s step, out any) error {
	args, err := json.Marshal(s.args)
	if err != nil {
		return err
	}
	code := instruction(s.op, args, s.data)
	for attempt := 0; ; attempt++ {
		err := m.exec(ctx, code, s, out)
		var ie *instructionError
		if attempt == 0 && errors.As(err, &ie) && strings.Contains(ie.text, "KeyError: '"+helperModule+"'") {
			if err := m.install(ctx); err != nil {
				return err
			}
			continue
		}
		return err
	}
}

// instruction is the code of a step: one expression that evaluates to None.
func instruction(op string, args, data []byte) string {
	var b strings.Builder
	b.Grow(base64.StdEncoding.EncodedLen(len(data)) + len(args) + 128)
	b.WriteString("__import__('sys').modules['")
	b.WriteString(helperModule)
	b.WriteString("'].call('")
	token := newOpID()[:16]
	b.WriteString(token)
	b.WriteString("', '")
	b.WriteString(op)
	b.WriteString("', ")
	// Valid UTF-8 JSON quoted with Go's ASCII escapes, which are Python's.
	b.WriteString(strconv.QuoteToASCII(string(args)))
	// A bytes literal: Python parses it faster than a str one.
	b.WriteString(", b'")
	enc := base64.NewEncoder(base64.StdEncoding, &b)
	enc.Write(data)
	enc.Close()
	b.WriteString("')")
	return b.String()
}

// tokenOf finds the token in an instruction built by instruction.
func tokenOf(code string) string {
	i := strings.Index(code, "].call('")
	return code[i+8 : i+8+16]
}

func (m *Machine) install(ctx context.Context) error {
	r, err := m.b.repl(ctx, m.name)
	if err != nil {
		return err
	}
	res, err := r.Exec(ctx, installCode, forevervmclient.ExecOptions{Timeout: stepTimeout})
	if err != nil {
		return m.execError(ctx, r, err)
	}
	if res.IsError {
		return fmt.Errorf("install vmcp's helper in ForeverVM machine %s (files and commands need it): %s", m.name, firstLines(res.Error, 5))
	}
	return nil
}

// exec runs the instruction code of step s, routing the lines of its reply.
func (m *Machine) exec(ctx context.Context, code string, s step, out any) error {
	r, err := m.b.repl(ctx, m.name)
	if err != nil {
		return err
	}
	token := tokenOf(code)
	var result, failure string
	var lineErr error
	var dec []byte
	timeout := s.timeout
	if timeout <= 0 {
		timeout = stepTimeout
	}
	res, err := r.Exec(ctx, code, forevervmclient.ExecOptions{
		Timeout: timeout,
		OnOutput: func(ch forevervmclient.OutputChunk) {
			if ch.Stream != "stdout" || lineErr != nil {
				return
			}
			// A user's thread may print during the instruction: its lines
			// have no token, and a partial line of its glued in front of
			// one of ours is cut off.
			i := strings.Index(ch.Data, token)
			if i < 0 {
				return
			}
			line := ch.Data[i+len(token):]
			if len(line) < 3 || line[0] != ' ' || line[2] != ' ' {
				lineErr = fmt.Errorf("a malformed reply line from the helper: %.80q", line)
				return
			}
			kind, rest := line[1], line[3:]
			switch kind {
			case 'r':
				result = rest
			case 'x':
				failure = rest
			case 'd', 'o':
				stream := 0
				if kind == 'o' {
					if len(rest) < 2 {
						lineErr = errors.New("a malformed output line from the helper")
						return
					}
					stream, rest = int(rest[0]-'0'), rest[2:]
				}
				offText, b64, ok := strings.Cut(rest, " ")
				off, perr := strconv.ParseInt(offText, 10, 64)
				if !ok || perr != nil || s.onData == nil {
					lineErr = errors.New("a malformed data line from the helper")
					return
				}
				n := base64.StdEncoding.DecodedLen(len(b64))
				if cap(dec) < n {
					dec = make([]byte, n)
				}
				k, derr := base64.StdEncoding.Decode(dec[:n], []byte(b64))
				if derr != nil {
					lineErr = fmt.Errorf("a data line from the helper is not base64: %w (%d bytes, ends %q)", derr, len(b64), b64[max(len(b64)-30, 0):])
					return
				}
				lineErr = s.onData(stream, off, dec[:k])
			}
		},
	})
	if err != nil {
		return m.execError(ctx, r, err)
	}
	switch {
	case res.IsError:
		return &instructionError{machine: m.name, op: s.op, text: res.Error}
	case lineErr != nil:
		return lineErr
	case failure != "":
		var f struct{ Error, Kind string }
		if err := json.Unmarshal([]byte(failure), &f); err != nil {
			return fmt.Errorf("a malformed failure from the helper: %.200s", failure)
		}
		return &HelperError{Kind: f.Kind, Msg: f.Error}
	case result == "":
		return fmt.Errorf("the %s step on ForeverVM machine %s printed no result: its output did not arrive (was sys.stdout replaced?)", s.op, m.name)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal([]byte(result), out); err != nil {
		return fmt.Errorf("a malformed result from the helper: %w", err)
	}
	return nil
}

// execError explains an Exec that returned no result.
func (m *Machine) execError(ctx context.Context, r *forevervmclient.REPL, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("ForeverVM machine %s: %w", m.name, ctx.Err())
	}
	if errors.Is(err, forevervmclient.ErrClosed) {
		m.b.forget(m.name, r)
	}
	return fmt.Errorf("ForeverVM machine %s: %w", m.name, err)
}

// undo undoes an operation in the machine: a half-done one must not stay
// (a temporary file, a command's processes). With interrupt, the running
// instruction is interrupted first. It runs with a context of its own, as
// the caller's may have ended, and returns once it is done or after
// cleanupWait, leaving it to finish in the background.
func (m *Machine) undo(interrupt bool, opid, path string) {
	args := map[string]any{"op": opid}
	if path != "" {
		args["path"] = path // an upload's temporary file is found by name
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if interrupt {
			m.interrupt()
		}
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := m.call(ctx, step{op: "abort", args: args, timeout: cleanupTimeout}, nil); err != nil {
			m.b.log.Warn().Err(err).Str("machine", m.name).Msg("could not undo an operation in the machine; its helper undoes it after 10 idle minutes")
		}
	}()
	select {
	case <-done:
	case <-time.After(cleanupWait):
	}
}

// firstLines shortens a traceback for an error message.
func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:1], append([]string{"…"}, lines[len(lines)-n+1:]...)...)
	}
	return strings.Join(lines, "\n")
}
