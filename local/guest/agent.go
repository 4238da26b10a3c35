//go:build linux

// Package guest is the engine's side inside each sandbox: the agent that
// the engine starts (this same binary) in every machine, which keeps its
// Python interpreter and starts its commands. The engine (package local)
// is the host side; package local/wire is what passes between them.
package guest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/vmcp-dev/vmcp/local/wire"
	"golang.org/x/sys/unix"
)

// The agent keeps the machine's Python interpreter alive and starts
// commands, so that neither needs a new bubblewrap per call.

const (
	outputChunk = 32 << 10
	// MaxPythonLine is the most the agent reads of a record of the driver
	// at once, and the longest piece of a line the engine's OnOutput gets.
	MaxPythonLine = 64 << 10
	// InterruptGrace is how long an interrupted interpreter may take to
	// stop before it is killed (and its state lost).
	InterruptGrace = 3 * time.Second
	// pipeGrace is how long a command's output is still read after it exited,
	// for background processes that inherited its stdout.
	pipeGrace = 250 * time.Millisecond
)

type agent struct {
	limits []string // argv prefix that starts a child under its rlimits
	python string
	home   string
	// tagNS: each command starts in a UTS namespace of its own, which
	// marks every process it starts (see agentCommand.kill); needs
	// CAP_SYS_ADMIN in the sandbox's user namespace.
	tagNS bool
	spawn chan spawnRequest // to the spawner thread (see startSpawner)

	outMu sync.Mutex
	out   *bufio.Writer

	mu       sync.Mutex
	commands map[uint64]*agentCommand
	py       *interpreter
	pyCount  int           // interpreters started so far; names each one
	pyQueue  chan struct{} // FIFO lock: one instruction at a time
	// pyWaiting holds instructions received but not started, with the
	// reason they were stopped before they started ("" while not).
	pyWaiting map[uint64]string
}

// Run is the agent: it serves the engine's requests on stdin and answers
// on stdout until stdin ends, and returns the exit status.
func Run(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	python := fs.String("python", "/usr/bin/python3", "interpreter")
	home := fs.String("home", "/workspace", "working directory")
	memory := fs.Int64("memory", 0, "RLIMIT_AS bytes")
	procs := fs.Int64("procs", 0, "RLIMIT_NPROC")
	files := fs.Int64("files", 0, "RLIMIT_NOFILE")
	fsize := fs.Int64("fsize", 0, "RLIMIT_FSIZE bytes")
	egressFD := fs.Int("egress-fd", -1, "socket on which to hand the engine each connection to the ports of -egress-ports")
	egressPorts := fs.String("egress-ports", strconv.Itoa(wire.EgressPort), "comma-separated ports on the machine's loopback whose connections go to the engine: its proxy's, its loopback services'")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// The agent moves bytes between the engine and the machine's
	// programs; it needs no second processor. With more Ps, every
	// goroutine made ready woke another thread to look for work: in a
	// burst of calls, the hundred machines' agents took twice the CPU of
	// their interpreters, and the calls of the machines at work waited.
	runtime.GOMAXPROCS(1)
	if *egressFD >= 0 {
		// Before CloseInheritedFDs: it marks the socket close-on-exec,
		// which is what we want for the machine's programs.
		if err := forwardEgress(*egressFD, *egressPorts); err != nil {
			fmt.Fprintln(os.Stderr, "vmcp agent:", err)
			return 1
		}
	}
	CloseInheritedFDs() // for the unsandboxed mode; the init wrapper did it otherwise
	// Processes of the machine run as the same user as the agent; they must
	// not reach into it through /proc/<agent>.
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	spawn, tagNS := startSpawner()
	prewarmThreads()
	// Limits are set here, inside the sandbox's user namespace, so that the
	// process count is charged to this machine alone. The file limits bind
	// the agent too and are inherited; the memory and process limits (used
	// when the machine has no cgroup) would break the Go runtime of the agent,
	// so only its children get them, through prlimit.
	if err := setLimits(0, 0, *files, *fsize); err != nil {
		fmt.Fprintln(os.Stderr, "vmcp agent:", err)
		return 1
	}
	var childLimits []string
	if *memory > 0 || *procs > 0 {
		// util-linux's prlimit sets them and execs the program. A Go
		// trampoline cannot: its runtime may need memory or a thread between
		// setrlimit and exec, and then dies.
		prlimit, err := exec.LookPath("prlimit")
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmcp agent: prlimit (util-linux) is needed to limit machines without cgroups: install util-linux")
			return 1
		}
		childLimits = []string{prlimit}
		if *memory > 0 {
			childLimits = append(childLimits, "--as="+strconv.FormatInt(*memory, 10))
		}
		if *procs > 0 {
			childLimits = append(childLimits, "--nproc="+strconv.FormatInt(*procs, 10))
		}
		childLimits = append(childLimits, "--")
	}
	// A write past RLIMIT_FSIZE must fail with EFBIG, not kill the writer.
	signal.Ignore(syscall.SIGXFSZ)
	a := &agent{
		limits:    childLimits,
		python:    *python,
		home:      *home,
		tagNS:     tagNS,
		spawn:     spawn,
		out:       bufio.NewWriterSize(os.Stdout, 64<<10),
		commands:  map[uint64]*agentCommand{},
		pyQueue:   make(chan struct{}, 1),
		pyWaiting: map[uint64]string{},
	}
	in := bufio.NewReaderSize(os.Stdin, 256<<10)
	for {
		var req wire.Request
		if err := wire.ReadRequest(in, &req); err != nil {
			// The engine went away: end everything this machine runs.
			a.shutdown()
			if errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintf(os.Stderr, "vmcp agent: bad request: %v\n", err)
			return 1
		}
		a.handle(req)
	}
}

// spawnRequest asks the spawner thread to start a process.
type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// startSpawner starts the thread that starts every child of the agent.
//
// bwrap gives the agent capabilities in the sandbox's user namespace
// (CAP_SYS_ADMIN, CAP_SYS_PTRACE), as ambient ones, which children would
// inherit. Capabilities belong to threads, and a child takes those of the
// thread that forked it: the spawner thread drops them from its ambient and
// inheritable sets (keeping them effective, to create a command's
// namespace), so no child of the agent has any. It reports whether the
// spawner can create namespaces.
func startSpawner() (chan spawnRequest, bool) {
	reqs := make(chan spawnRequest)
	ready := make(chan bool)
	go func() {
		runtime.LockOSThread() // for good: this thread is the spawner's
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			panic("vmcp agent: clear ambient capabilities: " + err.Error())
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		canTag := false
		if unix.Capget(&hdr, &data[0]) == nil {
			data[0].Inheritable, data[1].Inheritable = 0, 0
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				panic("vmcp agent: clear inheritable capabilities: " + err.Error())
			}
			canTag = data[0].Effective&(1<<unix.CAP_SYS_ADMIN) != 0
		}
		ready <- canTag
		for r := range reqs {
			r.done <- r.cmd.Start()
		}
	}()
	return reqs, <-ready
}

// start starts cmd on the spawner thread.
func (a *agent) start(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	a.spawn <- spawnRequest{cmd, done}
	return <-done
}

// Threads is how many OS threads the agent creates at start. The Go
// runtime keeps idle threads for reuse, so when a fork bomb has used up the
// machine's process limit, the agent still has threads to kill it with: a Go
// program that cannot create a thread it needs dies.
const Threads = 12

func prewarmThreads() {
	var ready, release sync.WaitGroup
	ready.Add(Threads)
	release.Add(1)
	for i := 0; i < Threads; i++ {
		go func() {
			runtime.LockOSThread()
			ready.Done()
			release.Wait()
			runtime.UnlockOSThread()
		}()
	}
	ready.Wait()
	release.Done()
}

func setLimits(memory, procs, files, fsize int64) error {
	for _, l := range []struct {
		name string
		res  int
		v    int64
	}{{"RLIMIT_AS", unix.RLIMIT_AS, memory}, {"RLIMIT_NPROC", unix.RLIMIT_NPROC, procs}, {"RLIMIT_NOFILE", unix.RLIMIT_NOFILE, files}, {"RLIMIT_FSIZE", unix.RLIMIT_FSIZE, fsize}} {
		if l.v > 0 {
			if err := unix.Setrlimit(l.res, &unix.Rlimit{Cur: uint64(l.v), Max: uint64(l.v)}); err != nil {
				return fmt.Errorf("set %s to %d: %w", l.name, l.v, err)
			}
		}
	}
	return nil
}

// command prepares a child of the agent, under prlimit when the machine is
// limited by rlimits. path must be absolute.
func (a *agent) command(path string, args ...string) *exec.Cmd {
	if a.limits == nil {
		cmd := exec.Command(path, args...)
		cmd.Args[0] = path
		return cmd
	}
	argv := append(append(append([]string{}, a.limits...), path), args...)
	return exec.Command(argv[0], argv[1:]...)
}

func (a *agent) send(ev wire.Event) {
	a.outMu.Lock()
	defer a.outMu.Unlock()
	b, _ := json.Marshal(ev)
	a.out.Write(b)
	a.out.WriteByte('\n')
	a.out.Flush()
}

func (a *agent) handle(req wire.Request) {
	switch req.Op {
	case wire.OpPython:
		a.mu.Lock()
		a.pyWaiting[req.ID] = ""
		a.mu.Unlock()
		go a.runPython(req)
	case wire.OpRun:
		a.startCommand(req)
	case wire.OpStdin, wire.OpStdinClose:
		a.mu.Lock()
		c := a.commands[req.ID]
		a.mu.Unlock()
		if c != nil && c.stdin != nil {
			c.stdin <- req
		}
	case wire.OpResize:
		a.mu.Lock()
		c := a.commands[req.ID]
		a.mu.Unlock()
		if c != nil && c.pty != nil {
			pty.Setsize(c.pty, winsize(req))
		}
	case wire.OpHello:
		a.send(wire.Event{Ev: wire.EvHello, ID: req.ID})
	case wire.OpKill:
		a.mu.Lock()
		c := a.commands[req.ID]
		py := a.py
		_, waiting := a.pyWaiting[req.ID]
		if waiting {
			a.pyWaiting[req.ID] = req.Reason
		}
		a.mu.Unlock()
		if waiting {
			// runPython reports it stopped instead of starting it.
		} else if c != nil {
			c.kill(req.Reason)
		} else if py != nil {
			py.interrupt(req.ID, req.Reason)
		}
	default:
		a.send(wire.Event{Ev: wire.EvError, ID: req.ID, Error: "unknown operation " + req.Op})
	}
}

func (a *agent) shutdown() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.commands {
		c.kill("kill")
	}
	if a.py != nil {
		a.py.cmd.Process.Kill()
	}
}

// ---- Python ----

type interpreter struct {
	number   int
	cmd      *exec.Cmd
	requests *os.File
	results  *bufio.Reader

	mu        sync.Mutex
	current   uint64        // id of the instruction running now, 0 between instructions
	call      []byte        // the random token of the instruction running now (see driver.py)
	reason    string        // why it was interrupted, if it was
	outs      [3]*pyOutput  // fd 1, 2 and 5 as their readers go through them
	exited    chan struct{} // closed when the process is gone
	lines     chan []byte   // result lines; nil after the results pipe ends
	exitState *os.ProcessState
	readers   sync.WaitGroup
}

func (a *agent) startInterpreter() (*interpreter, error) {
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	resR, resW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	chunkR, chunkW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := a.command(a.python, "-I", "-c", driverSource)
	cmd.Dir = a.home
	cmd.Env = os.Environ()
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.ExtraFiles = []*os.File{reqR, resW, chunkW} // fd 3, 4 and 5
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = a.start(cmd)
	for _, f := range []*os.File{reqR, resW, outW, errW, chunkW} {
		f.Close()
	}
	if err != nil {
		reqW.Close()
		resR.Close()
		outR.Close()
		errR.Close()
		chunkR.Close()
		return nil, fmt.Errorf("start %s: %w", a.python, err)
	}
	a.pyCount++
	py := &interpreter{
		number:   a.pyCount,
		cmd:      cmd,
		requests: reqW,
		results:  bufio.NewReaderSize(resR, 64<<10),
		outs:     [3]*pyOutput{newPyOutput(), newPyOutput(), newPyOutput()},
		exited:   make(chan struct{}),
		lines:    make(chan []byte, 1),
	}
	go func() {
		for {
			line, err := py.results.ReadBytes('\n')
			if err != nil {
				close(py.lines)
				return
			}
			py.lines <- line
		}
	}()
	py.readers.Add(3)
	go py.readRaw(a, outR, py.outs[0], "stdout")
	go py.readRaw(a, errR, py.outs[1], "stderr")
	go py.readRecords(a, chunkR, py.outs[2])
	go func() {
		cmd.Wait()
		// A background process of the user's may hold fd 1 or 2 open.
		waited := make(chan struct{})
		go func() { py.readers.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(pipeGrace):
			outR.Close()
			errR.Close()
			chunkR.Close()
			<-waited
		}
		py.exitState = cmd.ProcessState
		reqW.Close()
		resR.Close()
		close(py.exited)
	}()
	return py, nil
}

// pyOutput is one of the interpreter's outputs, as its reader goes
// through it.
type pyOutput struct {
	marked chan struct{} // gets a value when the running instruction's end marker is read
	done   chan struct{} // closed when the reader returns
	busy   atomic.Bool   // the reader holds bytes it has not passed on yet
	last   atomic.Int64  // when it was last busy (UnixNano)
	passed atomic.Int64  // bytes passed on
}

func newPyOutput() *pyOutput {
	return &pyOutput{marked: make(chan struct{}, 1), done: make(chan struct{})}
}

func (o *pyOutput) mark() {
	select {
	case o.marked <- struct{}{}:
	default:
	}
}

func (o *pyOutput) idle() {
	o.last.Store(time.Now().UnixNano())
	o.busy.Store(false)
}

// markerWait is how long an output that is neither busy nor read from may
// go without its end marker once the result is in: user code closed fd 1
// or 2, and no marker will come. An output still passing bytes on (to a
// slow engine) is waited for, so that none is lost; but not past
// floodAfterResult bytes: what the code wrote before its result is in the
// pipes and buffers, far less than that, and more is a process of the
// code's that writes on without a marker.
const (
	markerWait       = 2 * time.Second
	floodAfterResult = 4 << 20
)

// awaitMarker waits for the end marker of the instruction whose result
// came at since, within markerWait of the output's last activity.
func (o *pyOutput) awaitMarker(since time.Time) {
	passed := o.passed.Load()
	for {
		if o.passed.Load()-passed > floodAfterResult {
			return
		}
		wait := markerWait
		if !o.busy.Load() {
			last := time.Unix(0, o.last.Load())
			if last.Before(since) {
				last = since
			}
			if wait = markerWait - time.Since(last); wait <= 0 {
				return
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-o.marked:
			t.Stop()
			return
		case <-o.done:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// now is the instruction running now (id 0 between instructions) and its
// call token.
func (py *interpreter) now() (uint64, []byte) {
	py.mu.Lock()
	defer py.mu.Unlock()
	return py.current, py.call
}

// emit passes output of the instruction id on; output between
// instructions belongs to no one.
func (py *interpreter) emit(a *agent, o *pyOutput, id uint64, stream string, data []byte) {
	if id != 0 && len(data) > 0 {
		a.send(wire.Event{Ev: wire.EvOutput, ID: id, Stream: stream, Data: data})
		o.passed.Add(int64(len(data)))
	}
}

// markerLen is the length of a whole end marker: endMarker, the call token
// (32 hex digits, see newCallToken) and a newline.
const markerLen = len("\x00vmcp-end-") + 32 + 1

// Whether bytes start an end marker: markerAt's answers.
const (
	markerNo    = iota
	markerMaybe // they are the start of one: more bytes will tell
	markerYes
)

// markerAt tells whether b starts with an end marker.
func markerAt(b []byte) int {
	for k := 0; k < len(b) && k < markerLen; k++ {
		c := b[k]
		switch {
		case k < len(endMarker):
			if c != endMarker[k] {
				return markerNo
			}
		case k < markerLen-1:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return markerNo
			}
		case c != '\n':
			return markerNo
		}
	}
	if len(b) < markerLen {
		return markerMaybe
	}
	return markerYes
}

// readRaw passes fd 1 or 2 of the interpreter on byte for byte, in chunks
// as they come, less the end markers the driver writes there: the running
// instruction's ends its output; any other (late, or forged by user code)
// is dropped. Bytes that may begin a marker wait for the next read (the
// marker that follows every instruction settles them).
func (py *interpreter) readRaw(a *agent, r *os.File, o *pyOutput, stream string) {
	defer py.readers.Done()
	defer close(o.done)
	defer r.Close()
	buf := make([]byte, outputChunk+markerLen)
	held := 0
	for {
		n, err := r.Read(buf[held:])
		if n > 0 {
			o.busy.Store(true)
		}
		data := buf[:held+n]
		held = py.passRaw(a, o, stream, data, err != nil)
		copy(buf, data[len(data)-held:])
		o.idle()
		if err != nil {
			return
		}
	}
}

// passRaw passes data on, less end markers; it returns how many bytes at
// its end may begin a marker and were kept back (none when final).
func (py *interpreter) passRaw(a *agent, o *pyOutput, stream string, data []byte, final bool) int {
	id, call := py.now()
	start := 0
	for i := 0; ; {
		j := bytes.IndexByte(data[i:], 0)
		if j < 0 {
			break
		}
		j += i
		switch markerAt(data[j:]) {
		case markerNo:
			i = j + 1
		case markerMaybe:
			if final {
				i = j + 1
				continue
			}
			py.emit(a, o, id, stream, data[start:j])
			return len(data) - j
		case markerYes:
			py.emit(a, o, id, stream, data[start:j])
			if id != 0 && bytes.Equal(data[j+len(endMarker):j+markerLen-1], call) {
				o.mark()
			}
			i = j + markerLen
			start = i
		}
	}
	py.emit(a, o, id, stream, data[start:])
	return 0
}

// readRecords passes on the records the driver writes to fd 5 (see
// driver.py): their data, byte for byte, in events of up to outputChunk
// bytes (consecutive records of a stream are gathered), and the running
// instruction's end marker. A record longer than the buffer (user code
// writes to fd 5 too) goes on in pieces; one with an unknown tag is dropped.
func (py *interpreter) readRecords(a *agent, r *os.File, o *pyOutput) {
	defer py.readers.Done()
	defer close(o.done)
	defer r.Close()
	br := bufio.NewReaderSize(r, MaxPythonLine)
	var (
		tag      byte // of the record being read
		inRecord bool // its start was read, its newline not yet
		out      []byte
		outID    uint64
		outName  string
	)
	flush := func() {
		py.emit(a, o, outID, outName, out)
		out = out[:0]
	}
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			o.busy.Store(true)
			whole := err == nil // the slice ends the record
			if !inRecord {
				tag, line = line[0], line[1:]
			}
			inRecord = !whole
			id, call := py.now()
			switch tag {
			case '1', '2', '3', '4':
				name := "stdout"
				if tag == '2' || tag == '4' {
					name = "stderr"
				}
				if whole && (tag == '3' || tag == '4') {
					line = line[:len(line)-1] // the newline only ends the record
				}
				if len(out) > 0 && (id != outID || name != outName) {
					flush()
				}
				outID, outName = id, name
				out = append(out, line...)
				if len(out) >= outputChunk {
					flush()
				}
			case 0:
				if whole && len(line) == markerLen-1 && bytes.Equal(line[:len(endMarker)-1], endMarker[1:]) {
					flush()
					if id != 0 && bytes.Equal(line[len(endMarker)-1:len(line)-1], call) {
						o.mark()
					}
				}
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			flush()
			return
		}
		// Gather what is already there; pass it on before the read waits.
		if next, _ := br.Peek(br.Buffered()); bytes.IndexByte(next, '\n') < 0 {
			flush()
			o.idle()
		}
	}
}

// endMarker starts the line the driver writes to each output after an
// instruction, followed by the instruction's call token.
var endMarker = []byte("\x00vmcp-end-")

// newCallToken is the random token that ties a result and its end markers
// to one instruction.
func newCallToken() []byte {
	b := make([]byte, 16)
	rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

// interruptRetry is how often an interrupt is repeated until the
// instruction stops: the driver ignores SIGINT outside user code, so a
// signal that lands just before the code starts would otherwise be lost.
const interruptRetry = 50 * time.Millisecond

func (py *interpreter) interrupt(id uint64, reason string) {
	py.mu.Lock()
	if py.current != id || py.current == 0 {
		py.mu.Unlock()
		return
	}
	if py.reason == "" {
		py.reason = reason
	}
	py.mu.Unlock()
	// signal sends SIGINT while the instruction is still the current one.
	// It holds mu while sending: the next instruction is written to the
	// driver only after current changes, so a signal can never reach it.
	signal := func() bool {
		py.mu.Lock()
		defer py.mu.Unlock()
		if py.current != id {
			return false
		}
		py.cmd.Process.Signal(syscall.SIGINT)
		return true
	}
	if !signal() {
		return
	}
	go func() {
		tick := time.NewTicker(interruptRetry)
		defer tick.Stop()
		grace := time.NewTimer(InterruptGrace)
		defer grace.Stop()
		for {
			select {
			case <-py.exited:
				return
			case <-tick.C:
				if !signal() {
					return
				}
			case <-grace.C:
				py.mu.Lock()
				still := py.current == id
				py.mu.Unlock()
				if still {
					syscall.Kill(-py.cmd.Process.Pid, syscall.SIGKILL)
				}
				return
			}
		}
	}()
}

// driverRequest is an instruction to the driver (driver.py).
type driverRequest struct {
	Code       string   `json:"code"`
	Call       string   `json:"call"`
	Warm       bool     `json:"warm,omitempty"`
	Imports    []string `json:"imports,omitempty"`
	Checkpoint string   `json:"checkpoint,omitempty"`
	StateMax   int64    `json:"state_max,omitempty"`
}

type driverResult struct {
	Call        string   `json:"call"`
	Value       *string  `json:"value"`
	Error       *string  `json:"error"`
	PNG         [][]byte `json:"png"`
	RuntimeMS   int64    `json:"runtime_ms"`
	Interrupted bool     `json:"interrupted"`
}

func (a *agent) runPython(req wire.Request) {
	a.pyQueue <- struct{}{}
	defer func() { <-a.pyQueue }()
	start := time.Now()
	a.mu.Lock()
	py := a.py
	if py != nil {
		select {
		case <-py.exited:
			py = nil // it died between instructions; the engine is told by the new pid
		default:
		}
	}
	if py == nil {
		var err error
		if py, err = a.startInterpreter(); err != nil {
			delete(a.pyWaiting, req.ID)
			a.mu.Unlock()
			a.send(wire.Event{Ev: wire.EvPython, ID: req.ID, Error: "could not start the Python interpreter: " + err.Error(), Died: true})
			return
		}
		a.py = py
	}
	a.mu.Unlock()

	// Leaving pyWaiting and becoming current happen under a.mu together,
	// so that a kill finds the instruction in one place or the other.
	call := newCallToken()
	a.mu.Lock()
	stopped := a.pyWaiting[req.ID]
	delete(a.pyWaiting, req.ID)
	if stopped == "" {
		py.mu.Lock()
		py.current, py.call, py.reason = req.ID, call, ""
		py.mu.Unlock()
	}
	a.mu.Unlock()
	if stopped != "" {
		ev := wire.Event{Ev: wire.EvPython, ID: req.ID, Interpreter: py.number, PID: py.cmd.Process.Pid, Error: "Interrupted", Interrupted: true}
		if stopped == "timeout" {
			ev.Error, ev.Interrupted, ev.TimedOut = "Timed out", false, true
		}
		a.send(ev)
		return
	}
	for _, o := range py.outs { // left over from an instruction whose output was cut short
		select {
		case <-o.marked:
		default:
		}
	}
	defer func() {
		py.mu.Lock()
		py.current = 0
		py.mu.Unlock()
	}()
	b, _ := json.Marshal(driverRequest{Code: req.Code, Call: string(call), Warm: req.Warm, Imports: req.Imports,
		Checkpoint: req.Checkpoint, StateMax: req.StateMax})
	ev := wire.Event{Ev: wire.EvPython, ID: req.ID, Interpreter: py.number, PID: py.cmd.Process.Pid}
	if _, err := py.requests.Write(append(b, '\n')); err != nil {
		<-py.exited
		a.send(a.diedResult(ev, py, start))
		return
	}
	var timer *time.Timer
	if req.TimeoutMS > 0 {
		timer = time.AfterFunc(time.Duration(req.TimeoutMS)*time.Millisecond, func() { py.interrupt(req.ID, "timeout") })
		defer timer.Stop()
	}
	// The result is the line that carries this instruction's call token;
	// lines without it were forged by user code or are late ones of an
	// earlier instruction, and are dropped.
	var res driverResult
	for {
		line, ok := <-py.lines
		if !ok {
			if timer != nil {
				timer.Stop()
			}
			<-py.exited
			a.send(a.diedResult(ev, py, start))
			return
		}
		if json.Unmarshal(line, &res) == nil && res.Call == string(call) {
			break
		}
		res = driverResult{}
	}
	if timer != nil {
		timer.Stop()
	}
	// All output was written before the result: wait for the end markers.
	resultAt := time.Now()
	for _, o := range py.outs {
		o.awaitMarker(resultAt)
	}
	py.mu.Lock()
	reason := py.reason
	py.mu.Unlock()
	ev.RuntimeMS, ev.PNG = res.RuntimeMS, res.PNG
	switch {
	case res.Interrupted && reason == "timeout":
		ev.Error, ev.TimedOut = "Timed out", true
	case res.Interrupted:
		ev.Error, ev.Interrupted = "Interrupted", true
	case res.Error != nil:
		ev.Error = *res.Error
	default:
		ev.Value = res.Value
	}
	a.send(ev)
}

func (a *agent) diedResult(ev wire.Event, py *interpreter, start time.Time) wire.Event {
	a.mu.Lock()
	if a.py == py {
		a.py = nil
	}
	a.mu.Unlock()
	py.mu.Lock()
	reason := py.reason
	py.mu.Unlock()
	ev.Died = true
	ev.RuntimeMS = time.Since(start).Milliseconds()
	how := describeExit(py.exitState)
	switch reason {
	case "timeout":
		ev.TimedOut = true
		ev.Error = "Timed out (the interpreter did not stop when interrupted and was killed; its state was lost)"
	case "interrupt":
		ev.Interrupted = true
		ev.Error = "Interrupted (the interpreter did not stop when interrupted and was killed; its state was lost)"
	default:
		ev.Error = "The Python interpreter " + how + " while running this code; its state (variables, imports) was lost. The next call starts a fresh interpreter."
	}
	return ev
}

func describeExit(st *os.ProcessState) string {
	if st == nil {
		return "stopped"
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		if ws.Signal() == syscall.SIGKILL {
			return "was killed (SIGKILL, most often the machine's memory limit)"
		}
		return "was killed by signal " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("exited with status %d", st.ExitCode())
}

// ---- commands ----

type agentCommand struct {
	id uint64
	ns string // the command's own UTS namespace, or "" (see agent.tagNS)
	// nsHold keeps the namespace alive until the command has ended and no
	// kill is under way: a namespace's number is reused once it is freed,
	// and a kill that matched a later command's namespace would kill it.
	nsHold *os.File
	cmd    *exec.Cmd
	pty    *os.File // the terminal's controlling side, for TTY commands
	stdin  chan wire.Request
	killMu sync.Mutex // held through a kill
	killed string
	ended  bool // reported: nothing of it is killed any more
	done   chan struct{}
}

func (a *agent) startCommand(req wire.Request) {
	fail := func(err error) {
		a.send(wire.Event{Ev: wire.EvError, ID: req.ID, Error: err.Error()})
	}
	if len(req.Argv) == 0 {
		fail(errors.New("empty command"))
		return
	}
	path := req.Argv[0]
	if !strings.Contains(path, "/") {
		var err error
		if path, err = exec.LookPath(path); err != nil {
			fail(fmt.Errorf("%s: command not found (PATH is %s)", req.Argv[0], os.Getenv("PATH")))
			return
		}
	}
	cmd := a.command(path, req.Argv[1:]...)
	if a.limits == nil {
		cmd.Args[0] = req.Argv[0]
	}
	cmd.Dir = req.Dir
	if cmd.Dir == "" {
		cmd.Dir = a.home
	} else if fi, err := os.Stat(cmd.Dir); err != nil || !fi.IsDir() {
		// Said plainly: exec would blame the program ("fork/exec
		// /bin/bash: no such file or directory").
		switch {
		case err == nil:
			fail(fmt.Errorf("workdir %s is not a directory: give a directory, or leave workdir out to run in the home", req.Dir))
		case os.IsNotExist(err):
			fail(fmt.Errorf("workdir %s does not exist in the machine: create it first (mkdir -p %s), or leave workdir out to run in the home", req.Dir, req.Dir))
		default:
			fail(fmt.Errorf("workdir %s: %v", req.Dir, err))
		}
		return
	}
	cmd.Env = os.Environ()
	for k, v := range req.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// The marker finds the command's daemons, which leave both its process
	// group and its tree, when it must be killed.
	cmd.Env = append(cmd.Env, commandMarker+"="+strconv.FormatUint(req.ID, 10))
	c := &agentCommand{id: req.ID, cmd: cmd, done: make(chan struct{})}
	if req.TTY {
		a.startTTYCommand(req, c)
		return
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Cloneflags: a.cloneFlags()}
	outR, outW, err := os.Pipe()
	if err != nil {
		fail(err)
		return
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		fail(err)
		return
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	var stdinW *os.File
	if req.Stdin {
		var stdinR *os.File
		if stdinR, stdinW, err = os.Pipe(); err != nil {
			fail(err)
			return
		}
		cmd.Stdin = stdinR
		defer stdinR.Close()
		c.stdin = make(chan wire.Request, 16)
	}
	err = a.start(cmd)
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if stdinW != nil {
			stdinW.Close()
		}
		fail(err)
		return
	}
	c.ns, c.nsHold = a.namespaceOf(cmd.Process.Pid)
	a.mu.Lock()
	a.commands[req.ID] = c
	a.mu.Unlock()
	if stdinW != nil {
		go c.feedStdin(a, stdinW, stdinW.Close)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	if req.SaveDir != "" && req.Keep > 0 {
		dir := req.SaveDir
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(a.home, dir)
		}
		go c.forwardSaving(a, &readers, outR, "stdout", dir, req)
		go c.forwardSaving(a, &readers, errR, "stderr", dir, req)
	} else {
		go c.forward(a, &readers, outR, "stdout")
		go c.forward(a, &readers, errR, "stderr")
	}
	c.wait(a, req, &readers, outR, errR)
}

// startTTYCommand starts a command on a new pseudo-terminal, as the leader
// of a new session whose controlling terminal it is. Everything it prints
// comes back as stdout; stdin goes to the terminal.
func (a *agent) startTTYCommand(req wire.Request, c *agentCommand) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		a.send(wire.Event{Ev: wire.EvError, ID: req.ID, Error: "open a pseudo-terminal: " + err.Error()})
		return
	}
	pty.Setsize(ptmx, winsize(req))
	cmd := c.cmd
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// A new session is also a new process group, which kill relies on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Cloneflags: a.cloneFlags()}
	err = a.start(cmd)
	tty.Close()
	if err != nil {
		ptmx.Close()
		a.send(wire.Event{Ev: wire.EvError, ID: req.ID, Error: err.Error()})
		return
	}
	c.pty = ptmx
	c.ns, c.nsHold = a.namespaceOf(cmd.Process.Pid)
	if req.Stdin {
		c.stdin = make(chan wire.Request, 16)
	}
	a.mu.Lock()
	a.commands[req.ID] = c
	a.mu.Unlock()
	if req.Stdin {
		// The end of the input is not the end of the terminal: it stays open
		// for the command's output.
		go c.feedStdin(a, ptmx, func() error { return nil })
	}
	var readers sync.WaitGroup
	readers.Add(1)
	go c.forward(a, &readers, ptmx, "stdout")
	c.wait(a, req, &readers, ptmx)
}

func winsize(req wire.Request) *pty.Winsize {
	ws := &pty.Winsize{Rows: req.Rows, Cols: req.Cols}
	if ws.Rows == 0 {
		ws.Rows = 24
	}
	if ws.Cols == 0 {
		ws.Cols = 80
	}
	return ws
}

// wait reports the command's exit once it ended and its output was read
// (outputs are closed if background processes keep them open).
func (c *agentCommand) wait(a *agent, req wire.Request, readers *sync.WaitGroup, outputs ...*os.File) {
	cmd := c.cmd
	var timer *time.Timer
	if req.TimeoutMS > 0 {
		timer = time.AfterFunc(time.Duration(req.TimeoutMS)*time.Millisecond, func() { c.kill("timeout") })
	}
	go func() {
		cmd.Wait()
		if timer != nil {
			timer.Stop()
		}
		// Background processes may hold the pipes open: read what they wrote
		// within a short grace, then stop reading.
		waited := make(chan struct{})
		go func() { readers.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(pipeGrace):
			for _, f := range outputs {
				f.Close()
			}
			<-waited
		}
		for _, f := range outputs {
			f.Close()
		}
		close(c.done)
		a.mu.Lock()
		delete(a.commands, req.ID)
		a.mu.Unlock()
		c.killMu.Lock() // waits for a kill under way
		killed := c.killed
		c.ended = true
		if c.nsHold != nil {
			c.nsHold.Close()
		}
		c.killMu.Unlock()
		ev := wire.Event{Ev: wire.EvExit, ID: req.ID, ExitCode: cmd.ProcessState.ExitCode(), Killed: killed, Left: a.leftRunning()}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ev.Signal = unix.SignalName(ws.Signal())
			ev.ExitCode = 128 + int(ws.Signal())
		}
		a.send(ev)
	}()
}

func (c *agentCommand) forward(a *agent, wg *sync.WaitGroup, r *os.File, stream string) {
	defer wg.Done()
	buf := make([]byte, outputChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			a.send(wire.Event{Ev: wire.EvOutput, ID: c.id, Stream: stream, Data: buf[:n]})
		}
		if err != nil {
			return
		}
	}
}

// liveEvery is how often a command whose output is saved sends a chunk
// past its head, for the caller's progress.
const liveEvery = 100 * time.Millisecond

// liveBytes is how much of the latest chunk such a command sends: enough
// for its last lines, which are all progress shows.
const liveBytes = 4 << 10

// forwardSaving is forward for a command whose output the machine keeps
// (request.SaveDir): the first Keep bytes go to the engine; a stream that
// outgrows them is written whole (up to SaveMax) to a file of dir, here in
// the machine, so that what the command prints costs no transfer; the
// last Keep bytes and the counts go in the stream's evSaved.
func (c *agentCommand) forwardSaving(a *agent, wg *sync.WaitGroup, r *os.File, stream, dir string, req wire.Request) {
	defer wg.Done()
	keep := req.Keep
	// Large reads from a large pipe: fewer wake-ups for a command that
	// prints a lot (the size is a hint; a smaller pipe works too).
	_, _ = unix.FcntlInt(r.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	buf := make([]byte, 1<<20)
	head := make([]byte, 0, keep)
	tail := make([]byte, keep) // a ring, from tailAt once full
	tailAt, tailFull := 0, false
	var total, lines int64
	var f *os.File
	var written int64
	var saveErr string
	var lastLive time.Time
	path := filepath.Join(dir, stream)
	for {
		n, err := r.Read(buf)
		p := buf[:n]
		if n > 0 {
			total += int64(n)
			lines += int64(bytes.Count(p, []byte{'\n'}))
			if len(head) < keep {
				k := min(keep-len(head), n)
				head = append(head, p[:k]...)
				a.send(wire.Event{Ev: wire.EvOutput, ID: c.id, Stream: stream, Data: p[:k]})
			} else if now := time.Now(); now.Sub(lastLive) >= liveEvery {
				lastLive = now
				a.send(wire.Event{Ev: wire.EvOutput, ID: c.id, Stream: stream, Data: p[max(0, len(p)-liveBytes):], Live: true})
			}
			q := p
			if len(q) > keep { // only the chunk's last Keep bytes can end up in the tail
				q = q[len(q)-keep:]
			}
			for len(q) > 0 {
				k := copy(tail[tailAt:], q)
				q = q[k:]
				tailAt += k
				if tailAt == keep {
					tailAt, tailFull = 0, true
				}
			}
			if total > int64(keep) && saveErr == "" && written < req.SaveMax {
				if f == nil {
					if err := os.MkdirAll(dir, 0o700); err != nil {
						saveErr = err.Error()
					} else if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600); err != nil {
						saveErr, f = err.Error(), nil
					} else {
						// What came before this chunk is all in head.
						before := total - int64(n)
						k, err := f.Write(head[:before])
						written += int64(k)
						if err != nil {
							saveErr = err.Error()
						}
					}
				}
				if f != nil && saveErr == "" {
					k, err := f.Write(p[:min(int64(n), req.SaveMax-written)])
					written += int64(k)
					if err != nil {
						saveErr = err.Error()
					}
				}
			}
		}
		if err != nil {
			break
		}
	}
	ev := wire.Event{Ev: wire.EvSaved, ID: c.id, Stream: stream, Total: total, Lines: lines}
	if f != nil {
		if err := f.Close(); err != nil && saveErr == "" {
			saveErr = err.Error()
		}
		rel, err := filepath.Rel(a.home, path)
		if err != nil || strings.HasPrefix(rel, "..") {
			rel = path
		}
		ev.Path, ev.Partial = rel, written < total
	}
	if saveErr != "" {
		ev.Error = saveErr
	}
	if total > int64(keep) {
		if tailFull {
			ev.Data = append(append([]byte(nil), tail[tailAt:]...), tail[:tailAt]...)
		} else {
			ev.Data = tail[:tailAt]
		}
	}
	a.send(ev)
}

// feedStdin writes the engine's stdin chunks to the command, acknowledging
// each so the engine never has more than a small window in flight.
func (c *agentCommand) feedStdin(a *agent, w io.Writer, closeInput func() error) {
	defer closeInput()
	for {
		select {
		case req := <-c.stdin:
			if req.Op == wire.OpStdinClose {
				return
			}
			if _, err := w.Write(req.Data); err != nil {
				// The command stopped reading; keep acknowledging so the engine
				// does not block, and drop the data.
				a.send(wire.Event{Ev: wire.EvStdinAck, ID: c.id})
				go c.drainStdin(a)
				return
			}
			a.send(wire.Event{Ev: wire.EvStdinAck, ID: c.id})
		case <-c.done:
			return
		}
	}
}

func (c *agentCommand) drainStdin(a *agent) {
	for {
		select {
		case req := <-c.stdin:
			if req.Op == wire.OpStdinClose {
				return
			}
			a.send(wire.Event{Ev: wire.EvStdinAck, ID: c.id})
		case <-c.done:
			return
		}
	}
}

// cloneFlags are the namespaces a command starts in.
func (a *agent) cloneFlags() uintptr {
	if a.tagNS {
		return syscall.CLONE_NEWUTS
	}
	return 0
}

// namespaceOf is the UTS namespace of a command the agent just started, if
// it is one of its own: the tag of everything the command starts; hold
// keeps it from being freed (and its number reused) until closed.
func (a *agent) namespaceOf(pid int) (ns string, hold *os.File) {
	if !a.tagNS {
		return "", nil
	}
	path := "/proc/" + strconv.Itoa(pid) + "/ns/uts"
	hold, err := os.Open(path)
	if err != nil {
		return "", nil // it has ended already
	}
	ns, err = os.Readlink(path)
	if own, _ := os.Readlink("/proc/self/ns/uts"); err != nil || ns == own || !sameFile(hold, ns) {
		hold.Close()
		return "", nil
	}
	return ns, hold
}

// sameFile reports whether the namespace f is the one named ns
// ("uts:[INODE]"): the pid was not reused between the two looks.
func sameFile(f *os.File, ns string) bool {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return false
	}
	return strings.HasSuffix(ns, "["+strconv.FormatUint(st.Ino, 10)+"]")
}

// kill ends the command and everything it started: its process group, any
// descendant that left the group, and every process in its namespace
// (which a process cannot leave: nothing in the machine may create or
// enter namespaces), repeated until none is left.
func (c *agentCommand) kill(reason string) {
	c.killMu.Lock()
	defer c.killMu.Unlock()
	if c.ended {
		return
	}
	if c.killed == "" {
		c.killed = reason
	}
	killTree(c.cmd.Process.Pid, []byte(commandMarker+"="+strconv.FormatUint(c.id, 10)+"\x00"), c.ns)
}

// commandMarker is the environment variable that tags a command's processes.
const commandMarker = "VMCP_COMMAND"

func killTree(pid int, marker []byte, ns string) {
	for i := 0; i < 100; i++ {
		victims := append(descendants(pid), marked(marker)...)
		if ns != "" {
			victims = append(victims, inNamespace(ns)...)
		}
		errGroup := syscall.Kill(-pid, syscall.SIGKILL)
		for _, p := range victims {
			syscall.Kill(p, syscall.SIGKILL)
		}
		if errors.Is(errGroup, syscall.ESRCH) && len(victims) == 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// marked lists the processes whose environment holds marker.
func marked(marker []byte) []int {
	var out []int
	self := os.Getpid()
	for _, p := range ProcPIDs() {
		if p == self {
			continue
		}
		env, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/environ")
		if err == nil && (bytes.HasPrefix(env, marker) || bytes.Contains(env, append([]byte{0}, marker...))) {
			out = append(out, p)
		}
	}
	return out
}

// inNamespace lists the processes in the UTS namespace ns.
func inNamespace(ns string) []int {
	var out []int
	for _, p := range ProcPIDs() {
		if l, err := os.Readlink("/proc/" + strconv.Itoa(p) + "/ns/uts"); err == nil && l == ns {
			out = append(out, p)
		}
	}
	return out
}

// leftRunning counts the machine's processes but bubblewrap's init, the
// agent and the Python interpreter: what commands left running. It is -1
// where the agent does not have a process namespace of its own (so /proc
// shows more than the machine).
func (a *agent) leftRunning() int {
	if os.Getpid() != 2 {
		return -1
	}
	interp := 0
	a.mu.Lock()
	if a.py != nil && a.py.cmd.Process != nil {
		interp = a.py.cmd.Process.Pid
	}
	a.mu.Unlock()
	n := 0
	for _, p := range ProcPIDs() {
		if p > 2 && p != interp && !Zombie(p) {
			n++
		}
	}
	return n
}

func ProcPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		if p, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// descendants lists the processes below pid, from /proc.
func descendants(pid int) []int {
	parent := map[int]int{}
	for _, p := range ProcPIDs() {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and may hold spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 {
			pp, _ := strconv.Atoi(fields[1])
			parent[p] = pp
		}
	}
	var out []int
	for p := range parent {
		for q, n := parent[p], 0; q > 1 && n < 64; q, n = parent[q], n+1 {
			if q == pid {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// forwardEgress listens on the machine's loopback at each of ports (the
// proxy's wire.EgressPort, loopback services') and hands each connection to
// the engine over ctl with the port it was made to: a socket pair per
// connection, one end sent with SCM_RIGHTS, the other spliced to it.
func forwardEgress(ctl int, ports string) error {
	unix.CloseOnExec(ctl)
	for _, p := range strings.Split(ports, ",") {
		port, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return fmt.Errorf("egress port %q: %w", p, err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+p)
		if err != nil {
			return fmt.Errorf("the machine's loopback port %s: %w", p, err)
		}
		go handOver(ctl, ln, uint16(port))
		// And on IPv6's loopback where the machine has one, which is where
		// localhost and [::] lead first.
		if ln6, err := net.Listen("tcp6", "[::1]:"+p); err == nil {
			go handOver(ctl, ln6, uint16(port))
		}
	}
	return nil
}

// handOver hands the engine each connection ln accepts.
func handOver(ctl int, ln net.Listener, port uint16) {
	msg := binary.BigEndian.AppendUint16(nil, port)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			c.Close()
			continue
		}
		err = unix.Sendmsg(ctl, msg, unix.UnixRights(pair[1]), nil, 0)
		unix.Close(pair[1])
		if err != nil {
			unix.Close(pair[0])
			c.Close()
			continue
		}
		f := os.NewFile(uintptr(pair[0]), "egress")
		up, err := net.FileConn(f)
		f.Close()
		if err != nil {
			c.Close()
			continue
		}
		go func() {
			defer c.Close()
			defer up.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(up, c)
				up.(*net.UnixConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, up)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// CloseInheritedFDs marks every descriptor above stderr close-on-exec, so
// that nothing the engine's own parent leaked to it (a pipe, a socket)
// reaches the next program.
func CloseInheritedFDs() {
	if unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	entries, _ := os.ReadDir("/proc/self/fd") // kernels before 5.11
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// Zombie reports whether a process has ended and waits to be collected.
func Zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // gone
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}
