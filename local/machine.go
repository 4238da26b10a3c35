//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/vmcp-dev/vmcp/internal/capture"
	"github.com/vmcp-dev/vmcp/internal/linesplit"
	"github.com/vmcp-dev/vmcp/local/guest"
	"github.com/vmcp-dev/vmcp/local/wire"
)

// Machine is a persistent sandbox. Its methods are safe for concurrent use:
// Python instructions queue in order, one at a time; commands run side by side.
type Machine struct {
	e   *Engine
	dir string

	mu          sync.Mutex
	info        MachineInfo
	sb          *sandbox
	deleted     bool
	interp      string // the agent interpreter that ran the last instruction
	interpPID   int    // its process id in the sandbox
	resetReason string // why the next interpreter starts without the old state
	// ranSinceSave: Python ran since the last periodic checkpoint.
	ranSinceSave bool
	probe        bool // the self-test's machine, which starts before the self-test ends

	pyTurn chan struct{} // FIFO lock (channel waiters are served in order)
	// walks counts the walks of its files (measure); burstWalks those the
	// monitor made because the state filesystem filled fast.
	walks, burstWalks atomic.Int64
	// hostWriting counts the writes into the machine's files made from the
	// host's side (uploads) in progress; hostWrites those ended.
	hostWriting, hostWrites atomic.Int64
	// oomKills counts processes the monitor killed for the machine's
	// memory (without a memory cgroup).
	oomKills atomic.Int64

	quotaMu    sync.Mutex
	quotaCalls map[*quotaWatch]bool // calls in progress, stopped when the files pass a limit

	// loopback are the host-side services of ports on the machine's own
	// loopback (ServeLoopback), looked up for each connection.
	loopbackMu sync.Mutex
	loopback   map[int]func(net.Conn)
}

func newMachine(e *Engine, dir string, info MachineInfo) *Machine {
	return &Machine{e: e, dir: dir, info: info, pyTurn: make(chan struct{}, 1)}
}

// ID is the machine's id.
func (m *Machine) ID() string { return m.info.ID }

// Info returns the machine's metadata and status.
func (m *Machine) Info() MachineInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	info := m.info
	info.Status = StatusStopped
	if m.sb != nil && m.sb.alive() {
		info.Status = StatusRunning
	}
	return info
}

func (m *Machine) markDeleted() {
	m.mu.Lock()
	m.deleted = true
	m.mu.Unlock()
}

// ServeLoopback makes TCP connections to 127.0.0.1:port inside the machine
// reach serve, in the engine's process, which then owns the connection: a
// narrow endpoint that the host serves to a machine that has no network
// (the FastVM emulator serves its presigned object URLs to its VMs so, and
// nothing else of the host). The machine's agent listens on the port from
// the machine's next start; a machine already running keeps the ports it
// started with, while a new serve for one of them takes effect at once. A
// nil serve removes the port. The machine's own programs cannot listen on
// such a port. Not for machines with the host's network (AllowNetwork),
// nor on the port of an allow-list's proxy (wire.EgressPort).
func (m *Machine) ServeLoopback(port int, serve func(net.Conn)) error {
	switch {
	case port < 1 || port > 65535:
		return fmt.Errorf("loopback port %d: give a TCP port from 1 to 65535", port)
	case port == wire.EgressPort:
		return fmt.Errorf("loopback port %d is the machine's proxy port: choose another", port)
	case m.e.opts.DangerouslyDisableSandbox:
		return errors.New("loopback services need the sandbox (without it, machines have the host's network); it is disabled")
	}
	m.mu.Lock()
	hostNetwork := m.info.AllowNetwork
	m.mu.Unlock()
	if hostNetwork {
		return fmt.Errorf("machine %s has the host's network, whose loopback is the host's: it cannot have loopback services", m.info.ID)
	}
	m.loopbackMu.Lock()
	defer m.loopbackMu.Unlock()
	if serve == nil {
		delete(m.loopback, port)
		return nil
	}
	if m.loopback == nil {
		m.loopback = map[int]func(net.Conn){}
	}
	m.loopback[port] = serve
	return nil
}

// loopbackPorts are the ports of the machine's loopback services, sorted.
func (m *Machine) loopbackPorts() []int {
	m.loopbackMu.Lock()
	defer m.loopbackMu.Unlock()
	ports := make([]int, 0, len(m.loopback))
	for p := range m.loopback {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports
}

// loopbackServer is the service of a loopback port, or nil.
func (m *Machine) loopbackServer(port int) func(net.Conn) {
	m.loopbackMu.Lock()
	defer m.loopbackMu.Unlock()
	return m.loopback[port]
}

// sandbox returns the machine's running sandbox, starting it if needed.
func (m *Machine) sandbox() (*sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deleted {
		return nil, fmt.Errorf("machine %q: %w", m.info.ID, ErrNotFound)
	}
	m.e.mu.Lock()
	closed := m.e.closed
	m.e.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if m.sb != nil && m.sb.alive() {
		return m.sb, nil
	}
	if !m.probe {
		<-m.e.selfTestDone
		if err := m.e.selfTestErr; err != nil {
			return nil, err
		}
	}
	if m.sb != nil && m.interp != "" && m.resetReason == "" {
		m.resetReason = "the machine's sandbox stopped since the last call"
	}
	if !m.probe {
		m.e.starts.acquire()
		defer m.e.starts.release()
	}
	sb, err := m.e.startSandbox(m, m.info)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", m.info.ID, err)
	}
	m.sb = sb
	m.e.monitor.wake()
	return sb, nil
}

// Stop ends every process of the machine. Its files stay; the next call
// starts it again (with a fresh Python interpreter).
func (m *Machine) Stop() {
	m.mu.Lock()
	sb := m.sb
	if sb != nil && m.interp != "" {
		m.resetReason = "the machine was stopped since the last call"
	}
	m.mu.Unlock()
	if sb != nil {
		sb.stop()
	}
}

// PythonOptions tune one Python instruction.
type PythonOptions struct {
	// Timeout interrupts the code after this long; the state survives.
	// Zero means DefaultExecTimeout.
	Timeout time.Duration
	// OnOutput receives stdout and stderr one line at a time (without the
	// newline) while the code runs; a line longer than 64 KiB comes in
	// pieces of at most that. Bytes that are not UTF-8 arrive as U+FFFD. It
	// runs on the machine's reader: keep it quick, and do not call the
	// machine from it.
	OnOutput func(stream, line string)
	// Stdout, if set, receives every byte the code writes to stdout (through
	// sys.stdout, its buffer, or fd 1), in order and exactly, however long
	// its lines, instead of the result's Stdout. It runs on the machine's
	// reader too: a slow writer slows the code's output down, and nothing
	// is dropped.
	Stdout io.Writer
	// Stderr, if set, does the same for stderr.
	Stderr io.Writer
}

// DefaultExecTimeout is ForeverVM's default instruction timeout.
const DefaultExecTimeout = 15 * time.Second

// PythonResult is the outcome of a Python instruction.
type PythonResult struct {
	// Value is the repr of the last expression; nil for statements and None.
	Value *string
	// Error is the exception with its traceback, "Timed out", or why the
	// interpreter died; empty on success.
	Error string
	// Stdout is what the code wrote to stdout, less one final newline (its
	// lines joined with "\n"), with bytes that are not UTF-8 as U+FFFD;
	// the first 1 MiB of it, and StdoutTruncated says whether there was
	// more. Empty when PythonOptions.Stdout is set.
	Stdout string
	// Stderr is the same for stderr.
	Stderr string
	// StdoutTruncated and StderrTruncated: the stream had more than 1 MiB.
	StdoutTruncated, StderrTruncated bool
	// Images are the PNGs of the matplotlib figures the code left open.
	Images      [][]byte
	Runtime     time.Duration
	TimedOut    bool
	Interrupted bool
	// StateRestored says that this code ran in a fresh interpreter into
	// which the machine's checkpoint was restored first, and what it held.
	StateRestored string
	// StateReset says why this code ran in a fresh interpreter that had lost
	// earlier state; empty when the state carried over.
	StateReset string
	// InterpreterDied: the interpreter ended while running this code.
	InterpreterDied bool
	// QuotaExceeded: the code was stopped because the machine's files
	// passed its disk quota (Error says so).
	QuotaExceeded bool
}

// RunPython runs Python code in the machine's interpreter. Globals persist
// between calls. A Python exception is a result with Error set, not an error;
// the error return is for failures of the machine itself.
func (m *Machine) RunPython(ctx context.Context, code string, opts PythonOptions) (*PythonResult, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultExecTimeout
	}
	m.e.calls.Add(1)
	defer m.e.calls.Add(-1)
	m.e.noteCall()
	select {
	case m.pyTurn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-m.pyTurn }()
	sb, err := m.sandbox()
	if err != nil {
		return nil, err
	}
	res := &PythonResult{}
	var resetBeforehand string
	res.StateRestored, resetBeforehand = m.restorePython(ctx, sb)
	var out [2]capture.Capped
	var lines [2]linesplit.Splitter
	writers := [2]io.Writer{opts.Stdout, opts.Stderr}
	names := [2]string{"stdout", "stderr"}
	var writeErr error
	onLine := func(i int) func([]byte) {
		return func(l []byte) { opts.OnOutput(names[i], validUTF8(l)) }
	}
	var final wire.Event
	c, err := sb.start(wire.Request{Op: wire.OpPython, Code: code, TimeoutMS: opts.Timeout.Milliseconds()}, func(ev wire.Event) bool {
		switch ev.Ev {
		case wire.EvOutput:
			i := 0
			if ev.Stream == "stderr" {
				i = 1
			}
			if w := writers[i]; w != nil {
				if writeErr == nil {
					_, writeErr = w.Write(ev.Data)
				}
			} else {
				out[i].Write(ev.Data)
			}
			if opts.OnOutput != nil {
				lines[i].Split(ev.Data, onLine(i))
			}
			return false
		default:
			final = ev
			return true
		}
	})
	if err != nil {
		return nil, err
	}
	quotaStopped := m.onQuota(func() { sb.send(wire.Request{Op: wire.OpKill, ID: c.id, Reason: "quota"}) })
	defer quotaStopped()
	oomBefore := m.oomKills.Load()
	select {
	case <-c.done:
	case <-ctx.Done():
		sb.send(wire.Request{Op: wire.OpKill, ID: c.id, Reason: "interrupt"})
		// The agent stops the code within guest.InterruptGrace; wait for it so the
		// next instruction finds the interpreter free.
		select {
		case <-c.done:
		case <-time.After(guest.InterruptGrace + 2*time.Second):
			m.Stop()
			<-c.done
		}
	}
	if final.Ev == wire.EvError {
		return nil, errors.New(final.Error)
	}
	res.Value, res.Error, res.Images = final.Value, final.Error, final.PNG
	res.Runtime = time.Duration(final.RuntimeMS) * time.Millisecond
	res.TimedOut, res.Interrupted, res.InterpreterDied = final.TimedOut, final.Interrupted, final.Died
	if opts.OnOutput != nil {
		for i := range lines {
			lines[i].Flush(onLine(i))
		}
	}
	res.Stdout, res.StdoutTruncated = pythonText(&out[0]), out[0].Truncated
	res.Stderr, res.StderrTruncated = pythonText(&out[1]), out[1].Truncated
	if reason := quotaStopped(); reason != "" && (res.Interrupted || res.InterpreterDied) {
		res.Error, res.QuotaExceeded = "Stopped: "+reason, true
	}

	m.mu.Lock()
	key := interpreterKey(sb, final.Interpreter)
	if final.Interpreter != 0 && key != m.interp {
		if m.interp != "" && m.resetReason == "" {
			m.resetReason = "the previous interpreter exited"
		}
		res.StateReset = m.resetReason
		m.interp, m.resetReason = key, ""
	}
	if resetBeforehand != "" {
		res.StateReset = resetBeforehand
	}
	m.interpPID = final.PID
	if final.Died {
		// The monitor killed it (a disk quota, a full state filesystem):
		// say so rather than guess at memory.
		if why, ok := strings.CutPrefix(m.resetReason, stoppedBecause); ok && !final.TimedOut && res.Error != "" && !res.QuotaExceeded {
			res.Error = "The Python interpreter was killed because " + why + "; its state was lost. The next call starts a fresh interpreter."
		}
		m.resetReason = "the interpreter ended during an earlier call"
		if (m.e.cgroups.oomKills(m.info.ID) > 0 || m.oomKills.Load() > oomBefore) && !final.TimedOut {
			res.Error = fmt.Sprintf("The Python interpreter was killed because the machine ran out of memory (limit %d MiB); its state was lost. The next call starts a fresh interpreter.", m.info.Limits.MemoryBytes>>20)
		}
	}
	firstUse := !m.info.PythonUsed
	m.info.PythonUsed, m.ranSinceSave = true, true
	info := m.info
	m.mu.Unlock()
	if firstUse {
		if err := writeJSON(filepath.Join(m.dir, "machine.json"), info); err != nil {
			return nil, err
		}
	}
	if writeErr != nil {
		return res, fmt.Errorf("write the Python code's output: %w", writeErr)
	}
	if ctx.Err() != nil && !res.TimedOut {
		return res, ctx.Err()
	}
	return res, nil
}

// Command is a process to run in a machine.
type Command struct {
	// Argv is the program and its arguments; or set Shell instead.
	Argv []string
	// Shell is a bash command line, run as bash -c Shell.
	Shell string
	// Stdin, if set, is streamed to the process; otherwise it reads nothing.
	Stdin io.Reader
	// Env adds to (or overrides) the machine's environment.
	Env map[string]string
	// Workdir is the working directory inside the machine; default its home.
	Workdir string
	// Timeout kills the process and everything it started; zero means none
	// (the context still applies).
	Timeout time.Duration
	// OnOutput receives stdout and stderr one line at a time while it runs.
	OnOutput func(stream, line string)
	// Stdout, if set, receives the whole stdout instead of the result.
	Stdout io.Writer
	// Stderr, if set, receives the whole stderr, as raw bytes in the chunks
	// the command wrote them, instead of the result.
	Stderr io.Writer
	// TTY, if set, runs the command on a pseudo-terminal of the machine (an
	// interactive console): its controlling terminal is the pty, whose output
	// (the command's stdout and stderr, with the terminal's echo) arrives as
	// stdout, and Stdin feeds the terminal's input.
	TTY *TTY
	// MaxOutput caps the bytes of each stream kept in the result; default 1 MiB.
	MaxOutput int
	// SaveOutput, if set, is a directory of the machine (relative to its
	// home) where each stream that outgrows Keep bytes is kept whole, in a
	// file named after it, by the agent inside the machine (up to SaveMax
	// bytes; default no limit): only the first Keep bytes cross to the host
	// (to Stdout, Stderr or the result), and the result's Saved tells the
	// rest. What a command prints then costs no transfer. OnOutput still
	// sees lines past the head, now and then. Not with TTY.
	SaveOutput string
	Keep       int
	SaveMax    int64
}

// SavedStream is what the result of a command run with SaveOutput tells of
// one of its streams.
type SavedStream struct {
	Total, Lines int64
	// Tail is the stream's last Keep bytes, when it outgrew Keep.
	Tail []byte
	// Path is the file that holds the stream, relative to the home; empty
	// when it fitted in Keep and nothing was saved.
	Path string
	// Partial: the file stops at SaveMax bytes, or where writing it failed
	// (Err).
	Partial bool
	Err     string
}

// TTY is the pseudo-terminal of a command run with Command.TTY.
type TTY struct {
	Size WindowSize // initial size; zero means 24 rows of 80 columns
	// Resize, if set, delivers new sizes of the terminal while the command
	// runs (a terminal window resized).
	Resize <-chan WindowSize
}

// WindowSize is the size of a terminal, in characters.
type WindowSize struct {
	Rows, Cols uint16
}

// checkSavePath refuses a SaveOutput that is not a plain relative path
// inside the home: the agent writes there.
func checkSavePath(p string) error {
	if p != filepath.Clean(p) || filepath.IsAbs(p) || p == "." || strings.HasPrefix(p, "..") {
		return fmt.Errorf("SaveOutput %q: give a clean path relative to the machine's home", p)
	}
	return nil
}

// CommandResult is how a command ended.
type CommandResult struct {
	// LeftRunning is how many processes of the machine were still running
	// when the command ended, besides its agent and Python interpreter: what
	// this and earlier commands left in the background (-1: unknown).
	LeftRunning int
	// Saved tells of each stream (stdout, stderr) of a command run with
	// SaveOutput; nil otherwise.
	Saved           *[2]SavedStream
	ExitCode        int
	Signal          string // set when a signal ended it
	Stdout, Stderr  string
	StdoutTruncated bool
	StderrTruncated bool
	StdoutBytes     int64 // total bytes written, kept or not
	StderrBytes     int64
	TimedOut        bool
	// QuotaExceeded: the command was killed because the machine's files
	// grew past its disk quota.
	QuotaExceeded bool
	Duration      time.Duration
}

// Run runs a command in the machine. A non-zero exit is a result, not an
// error; the error return is for commands that could not run.
func (m *Machine) Run(ctx context.Context, cmd Command) (*CommandResult, error) {
	m.e.calls.Add(1)
	defer m.e.calls.Add(-1)
	m.e.noteCall()
	argv := cmd.Argv
	switch {
	case len(argv) > 0 && cmd.Shell != "":
		return nil, errors.New("give either argv or a shell command line, not both")
	case cmd.Shell != "":
		argv = []string{"/bin/bash", "-c", cmd.Shell}
	case len(argv) == 0:
		return nil, errors.New("nothing to run: give argv or a shell command line")
	}
	for k := range cmd.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("invalid environment variable name %q", k)
		}
	}
	max := cmd.MaxOutput
	if max <= 0 {
		max = capture.DefaultMax
	}
	sb, err := m.sandbox()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res := &CommandResult{}
	out := [2]capture.Capped{{Max: max}, {Max: max}}
	lines := [2]linesplit.Splitter{}
	var final wire.Event
	var writeErr error
	acks := make(chan struct{}, 64)
	writers := [2]io.Writer{cmd.Stdout, cmd.Stderr}
	var saved [2]SavedStream
	handle := func(ev wire.Event) bool {
		switch ev.Ev {
		case wire.EvSaved:
			i := 0
			if ev.Stream == "stderr" {
				i = 1
			}
			saved[i] = SavedStream{Total: ev.Total, Lines: ev.Lines, Tail: ev.Data, Path: ev.Path, Partial: ev.Partial, Err: ev.Error}
			return false
		case wire.EvOutput:
			i := 0
			if ev.Stream == "stderr" {
				i = 1
			}
			if ev.Live {
				if cmd.OnOutput != nil {
					// A piece of the stream past its head: its first and
					// last lines are likely cut.
					var l linesplit.Splitter
					l.Split(ev.Data, func(b []byte) { cmd.OnOutput(ev.Stream, string(b)) })
				}
				return false
			}
			if w := writers[i]; w != nil {
				if i == 0 {
					res.StdoutBytes += int64(len(ev.Data))
				} else {
					res.StderrBytes += int64(len(ev.Data))
				}
				if writeErr == nil {
					_, writeErr = w.Write(ev.Data)
				}
			} else {
				out[i].Write(ev.Data)
			}
			if cmd.OnOutput != nil {
				lines[i].Split(ev.Data, func(l []byte) { cmd.OnOutput(ev.Stream, string(l)) })
			}
			return false
		case wire.EvStdinAck:
			acks <- struct{}{}
			return false
		default:
			final = ev
			return true
		}
	}
	req := wire.Request{Op: wire.OpRun, Argv: argv, Env: cmd.Env, Dir: cmd.Workdir, Stdin: cmd.Stdin != nil, TimeoutMS: cmd.Timeout.Milliseconds()}
	if cmd.SaveOutput != "" && cmd.Keep > 0 && cmd.TTY == nil {
		if err := checkSavePath(cmd.SaveOutput); err != nil {
			return nil, err
		}
		req.SaveDir, req.Keep, req.SaveMax = cmd.SaveOutput, cmd.Keep, cmd.SaveMax
		if req.SaveMax <= 0 {
			req.SaveMax = math.MaxInt64
		}
	}
	if cmd.TTY != nil {
		req.TTY = true
		req.Rows, req.Cols = cmd.TTY.Size.Rows, cmd.TTY.Size.Cols
	}
	c, err := sb.start(req, handle)
	if err != nil {
		return nil, err
	}
	id := c.id
	if cmd.Stdin != nil {
		go feedStdin(sb, id, cmd.Stdin, acks, c.done)
	}
	if cmd.TTY != nil && cmd.TTY.Resize != nil {
		go forwardResizes(sb, id, cmd.TTY.Resize, c.done)
	}
	quotaStopped := m.onQuota(func() { sb.send(wire.Request{Op: wire.OpKill, ID: id, Reason: "quota"}) })
	defer quotaStopped()
	select {
	case <-c.done:
	case <-ctx.Done():
		sb.send(wire.Request{Op: wire.OpKill, ID: id, Reason: "kill"})
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			m.Stop()
			<-c.done
		}
	}
	if final.Ev == wire.EvError {
		return nil, m.startError(final.Error)
	}
	if cmd.OnOutput != nil {
		for i, name := range []string{"stdout", "stderr"} {
			lines[i].Flush(func(l []byte) { cmd.OnOutput(name, string(l)) })
		}
	}
	res.ExitCode, res.Signal, res.LeftRunning = final.ExitCode, final.Signal, final.Left
	res.TimedOut = final.Killed == "timeout"
	if reason := quotaStopped(); reason != "" {
		res.QuotaExceeded = true
		msg := "vmcp: killed: " + reason + "\n"
		if cmd.Stderr != nil {
			cmd.Stderr.Write([]byte(msg))
			res.StderrBytes += int64(len(msg))
		} else {
			out[1].Write([]byte(msg))
		}
	}
	res.Duration = time.Since(start)
	if req.SaveDir != "" {
		res.Saved = &saved
	}
	res.Stdout, res.StdoutTruncated = out[0].String(), out[0].Truncated
	res.Stderr, res.StderrTruncated = out[1].String(), out[1].Truncated
	if cmd.Stdout == nil {
		res.StdoutBytes = out[0].Total
	}
	if cmd.Stderr == nil {
		res.StderrBytes = out[1].Total
	}
	if writeErr != nil {
		return res, fmt.Errorf("write the command's output: %w", writeErr)
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, nil
}

// stdinWindow is how many stdin chunks may be in flight to the agent.
const stdinWindow = 8

// stdinChunk is the most stdin one request carries.
const stdinChunk = 128 << 10

// feedStdin sends r to command id in chunks, at most stdinWindow of them
// unacknowledged, until r ends or the command does (done).
func feedStdin(sb *sandbox, id uint64, r io.Reader, acks <-chan struct{}, done <-chan struct{}) {
	buf := make([]byte, stdinChunk)
	inFlight := 0
	for {
		for inFlight >= stdinWindow {
			select {
			case <-acks:
				inFlight--
			case <-done:
				return
			}
		}
		select {
		case <-done: // the command is gone: the rest of r is not wanted
			return
		default:
		}
		n, err := r.Read(buf)
		if n > 0 {
			if sb.send(wire.Request{Op: wire.OpStdin, ID: id, Data: buf[:n]}) != nil {
				return
			}
			inFlight++
		}
		if err != nil {
			sb.send(wire.Request{Op: wire.OpStdinClose, ID: id})
			return
		}
	}
}

// forwardResizes passes a TTY command's new window sizes to the agent until
// the command ends.
func forwardResizes(sb *sandbox, id uint64, sizes <-chan WindowSize, done <-chan struct{}) {
	for {
		select {
		case ws, ok := <-sizes:
			if !ok {
				return
			}
			if sb.send(wire.Request{Op: wire.OpResize, ID: id, Rows: ws.Rows, Cols: ws.Cols}) != nil {
				return
			}
		case <-done:
			return
		}
	}
}

// HostPIDs lists the host process ids of everything running in the machine
// (its agent and interpreter included): the processes in its pid namespace.
func (m *Machine) HostPIDs() []int {
	m.mu.Lock()
	sb := m.sb
	m.mu.Unlock()
	if sb == nil || !sb.alive() {
		return nil
	}
	// The sandbox's pid namespace is that of the init wrapper's (bwrap's)
	// first child.
	var ns string
	for _, pid := range guest.ProcPIDs() {
		if ppid(pid) == sb.cmd.Process.Pid {
			ns, _ = os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid")
			break
		}
	}
	if ns == "" {
		return nil
	}
	var out []int
	for _, pid := range guest.ProcPIDs() {
		if l, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid"); l == ns {
			out = append(out, pid)
		}
	}
	return out
}

func ppid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// pythonText is a Python stream as PythonResult holds it: without its last
// newline (lines joined with "\n", as they always were), in valid UTF-8.
func pythonText(b *capture.Capped) string {
	p := b.Bytes()
	if !b.Truncated {
		p = bytes.TrimSuffix(p, []byte{'\n'})
	}
	return validUTF8(p)
}

// validUTF8 is p as a string, its invalid bytes as U+FFFD.
func validUTF8(p []byte) string {
	if utf8.Valid(p) {
		return string(p)
	}
	return strings.ToValidUTF8(string(p), "\uFFFD")
}
