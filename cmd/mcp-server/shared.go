//go:build linux || darwin

package main

// Several servers of one user on one state directory. The first to start
// owns it: it runs the engine and the store, serves its own client in
// process, and listens on a unix socket of the state directory. Every
// later stdio server is a front end: it sends its client's messages to the
// owner over that socket, with its project and allowed roots, and writes
// back the answers. When the owner goes, a front end answers the calls
// that were in flight with an error that says so, and either takes the
// state directory over (the first to lock it) or connects to the one that
// did, replaying its client's initialize.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/pipeio"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
	"github.com/vmcp-dev/vmcp/transport"
)

// socketPath is where the owner of stateDir (absolute) listens: in a
// directory of its own there, or, when that path is too long for a unix
// socket, in a directory of this user's under the temporary directory.
func socketPath(stateDir string) string {
	p := filepath.Join(stateDir, "run", "server.sock")
	if len(p) < 100 {
		return p
	}
	sum := sha256.Sum256([]byte(stateDir))
	return filepath.Join(os.TempDir(), fmt.Sprintf("vmcp-%d", os.Getuid()), fmt.Sprintf("%x.sock", sum[:8]))
}

// hello is a front end's first line to the owner.
type hello struct {
	Project      string   `json:"project"`
	AllowedRoots []string `json:"allowed_roots"`
	PID          int      `json:"pid"`

	// An http server beside the owner sends its listening socket with
	// this line, and its command line, environment and working directory,
	// for the owner to serve its endpoint as it would.
	HTTP *httpBeside `json:"http,omitempty"`
}

// httpBeside is how an http server asks the owner to serve its endpoint.
type httpBeside struct {
	Args []string `json:"args"`
	Env  []string `json:"env"` // VMCP_*, FASTVM_* and FOREVERVM_* variables
	Cwd  string   `json:"cwd"`
}

// welcome is the owner's answer: its pid, or why it will not serve.
type welcome struct {
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// checkPeer refuses a connection whose other end runs as another user: the
// socket's directory already keeps them out, and this holds where it does
// not (the fallback under the temporary directory).
func checkPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var uid, pid int
	var credErr error
	if err := raw.Control(func(fd uintptr) { uid, pid, credErr = peerCred(fd) }); err != nil {
		return err
	}
	if credErr != nil {
		return credErr
	}
	if uid != os.Getuid() {
		return fmt.Errorf("the process at the other end of %s (pid %d) runs as user %d, not %d", c.LocalAddr(), pid, uid, os.Getuid())
	}
	return nil
}

// helloTimeout bounds the exchange of hello and welcome.
const helloTimeout = 10 * time.Second

// maxHello bounds a hello line.
const maxHello = 1 << 20

// owner serves the front ends of a state directory.
type owner struct {
	ln   *net.UnixListener
	srv  *server.MCPServer
	svc  *tools.Service
	info mcp.Implementation
	log  zerolog.Logger
	// endpoint readies an http server's endpoint, to serve on a listener
	// until ctx ends; nil where the owner cannot.
	endpoint func(h *httpBeside) (serve func(ctx context.Context, ln net.Listener) error, err error)

	mu      sync.Mutex
	conns   int
	next    int
	closing bool
	idle    chan struct{} // receives when conns drops to 0
	wg      sync.WaitGroup
}

// listenShared makes the owner's socket. The caller holds the state
// directory's lock, so a socket already there is a dead owner's.
func listenShared(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// The directory must be this user's alone: the fallback directory is
	// in a place where anyone may have made it first; os.MkdirAll leaves
	// an existing directory's mode as it is.
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s must be a directory of user %d that only it may use (mode 0700)", dir, os.Getuid())
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func newOwner(ln *net.UnixListener, srv *server.MCPServer, svc *tools.Service, info mcp.Implementation, log zerolog.Logger) *owner {
	return &owner{ln: ln, srv: srv, svc: svc, info: info, log: log, idle: make(chan struct{}, 1)}
}

// accept serves front ends until the listener is closed.
func (o *owner) accept(ctx context.Context) {
	for {
		c, err := o.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				o.log.Warn().Err(err).Msg("accepting a front end failed")
			}
			return
		}
		o.mu.Lock()
		if o.closing {
			o.mu.Unlock()
			c.Close() // it will connect to the next owner
			continue
		}
		o.conns++
		o.next++
		n := o.next
		o.wg.Add(1)
		o.mu.Unlock()
		go func() {
			defer o.wg.Done()
			o.serve(ctx, c, n)
			o.mu.Lock()
			o.conns--
			if o.conns == 0 {
				select {
				case o.idle <- struct{}{}:
				default:
				}
			}
			o.mu.Unlock()
		}()
	}
}

// serve is one front end's connection.
func (o *owner) serve(ctx context.Context, c *net.UnixConn, n int) {
	defer c.Close()
	if err := checkPeer(c); err != nil {
		o.log.Warn().Err(err).Msg("refused a connection to the state directory's socket")
		return
	}
	c.SetDeadline(time.Now().Add(helloTimeout))
	// The first read may bring an http server's listening socket.
	first := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	size, oobn, _, _, err := c.ReadMsgUnix(first, oob)
	if err != nil {
		o.log.Warn().Err(err).Msg("a front end did not say hello")
		return
	}
	listener := receivedFile(oob[:oobn])
	if listener != nil {
		defer listener.Close()
	}
	r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(first[:size]), c), 64<<10)
	line, err := readBounded(r, maxHello)
	if err != nil {
		o.log.Warn().Err(err).Msg("a front end did not say hello")
		return
	}
	var h hello
	var cctx context.Context
	if err = json.Unmarshal(line, &h); err == nil && h.HTTP != nil {
		o.serveEndpoint(ctx, c, r, &h, listener)
		return
	}
	if err == nil {
		cctx, err = o.svc.WithClient(ctx, h.Project, h.AllowedRoots)
	}
	w := welcome{PID: os.Getpid()}
	if err != nil {
		w = welcome{Error: fmt.Sprintf("the vmcp server of pid %d that owns the state directory cannot serve this one: %v", os.Getpid(), err)}
	}
	b, _ := json.Marshal(w)
	if _, werr := c.Write(append(b, '\n')); werr != nil || err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	log := o.log.With().Int("front_end_pid", h.PID).Logger()
	log.Info().Str("project", h.Project).Msg("serving a front end")
	err = transport.ServeStdio(cctx, o.srv, r, c, transport.StdioOptions{Logger: log, ServerInfo: &o.info, SessionID: fmt.Sprintf("%s-%d", transport.StdioSessionPrefix, n)})
	if err != nil && ctx.Err() == nil {
		log.Debug().Err(err).Msg("front end gone")
	}
}

// serveEndpoint serves an http server's endpoint on its listener until
// that server goes (its connection ends) or ctx ends.
func (o *owner) serveEndpoint(ctx context.Context, c *net.UnixConn, r *bufio.Reader, h *hello, listener *os.File) {
	log := o.log.With().Int("http_server_pid", h.PID).Logger()
	answer := func(w welcome) bool {
		b, _ := json.Marshal(w)
		_, err := c.Write(append(b, '\n'))
		return err == nil
	}
	var ln net.Listener
	var serve func(context.Context, net.Listener) error
	err := errors.New("no listening socket came with the request")
	if listener != nil {
		ln, err = net.FileListener(listener)
	}
	if err == nil && o.endpoint == nil {
		err = errors.New("it cannot serve an http endpoint")
	}
	if err == nil {
		serve, err = o.endpoint(h.HTTP)
	}
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		answer(welcome{Error: fmt.Sprintf("the vmcp server of pid %d that owns the state directory cannot serve this http server: %v", os.Getpid(), err)})
		return
	}
	if !answer(welcome{PID: os.Getpid()}) {
		ln.Close()
		return
	}
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serve(ectx, ln) }()
	c.SetDeadline(time.Time{})
	log.Info().Msg("serving the endpoint of an http server beside this one")
	go func() { io.Copy(io.Discard, r); cancel() }() // until the http server goes
	if err := <-served; err != nil && ectx.Err() == nil {
		log.Warn().Err(err).Msg("serving the http server's endpoint failed")
	}
	log.Info().Msg("stopped serving the endpoint of the http server beside this one")
}

// receivedFile is the file an SCM_RIGHTS message carried, if any; the
// others are closed.
func receivedFile(oob []byte) *os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var f *os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if f == nil {
				f = os.NewFile(uintptr(fd), "listener")
			} else {
				unix.Close(fd)
			}
		}
	}
	return f
}

// waitIdle returns once no front end is connected, or ctx ends; it then
// stops accepting, so that a front end arriving now finds the next owner.
func (o *owner) waitIdle(ctx context.Context) {
	for {
		o.mu.Lock()
		if o.conns == 0 {
			o.closing = true
			o.mu.Unlock()
			break
		}
		o.mu.Unlock()
		select {
		case <-o.idle:
		case <-ctx.Done():
			o.mu.Lock()
			o.closing = true
			o.mu.Unlock()
		}
		if ctx.Err() != nil {
			break
		}
	}
	o.ln.Close()
}

// errLineTooLong is readBounded's error for a line over its bound.
var errLineTooLong = errors.New("a line longer than the bound")

// readBounded reads a line of at most max bytes, without its newline.
func readBounded(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("%w (%d bytes)", errLineTooLong, max)
		}
		if err == nil {
			return bytes.TrimSuffix(line, []byte{'\n'}), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// frontEnd carries one stdio client to the owner of the state directory.
type frontEnd struct {
	socket string
	hello  []byte // with its newline
	log    zerolog.Logger

	lines   chan []byte // the client's messages, each with its newline; closed when its input ends or fails
	pending []byte      // a message not yet delivered to an owner

	out *bufio.Writer // stdout, written under outMu
	wmu sync.Mutex

	// The client's initialize and initialized, replayed to a new owner.
	initialize, initialized []byte

	mu       sync.Mutex
	inFlight map[string]string // request id (raw JSON) → method
	replays  atomic.Int64
}

// replayPrefix begins the id of a replayed initialize; its answer is the
// front end's, not the client's.
const replayPrefix = `"vmcp-replay-`

func newFrontEnd(socket string, h hello, in io.Reader, out io.Writer, log zerolog.Logger) *frontEnd {
	hb, _ := json.Marshal(h)
	f := &frontEnd{socket: socket, hello: append(hb, '\n'), log: log, lines: make(chan []byte, 16),
		out: bufio.NewWriterSize(out, 64<<10), inFlight: map[string]string{}}
	go f.readClient(in)
	return f
}

// readClient reads the client's messages into lines, until its input ends.
func (f *frontEnd) readClient(in io.Reader) {
	defer close(f.lines)
	r := bufio.NewReaderSize(in, 64<<10)
	for {
		line, err := readBounded(r, transport.MaxMessageBytes)
		if err != nil && !errors.Is(err, errLineTooLong) {
			return // the end of input, or a read that failed: the client is gone
		}
		if err != nil { // the rest of the line is dropped, and the client told
			for {
				if _, err := r.ReadSlice('\n'); !errors.Is(err, bufio.ErrBufferFull) {
					break
				}
			}
			f.writeClient([]byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":null,"error":{"code":%d,"message":"the message is longer than the %d bytes the server accepts; send large files with local_path or in several parts"}}`, mcp.INVALID_REQUEST, transport.MaxMessageBytes) + "\n"))
			continue
		}
		f.lines <- append(line, '\n')
	}
}

// writeClient writes one message to the client.
func (f *frontEnd) writeClient(msg []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if _, err := f.out.Write(msg); err != nil {
		return err
	}
	return f.out.Flush()
}

// route is what the front end reads of a message.
type route struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
}

func (r route) hasID() bool { return len(r.ID) > 0 && string(r.ID) != "null" }

// errOwnerGone ends a connection whose owner went away.
var errOwnerGone = errors.New("the vmcp server that owns the state directory stopped")

// dial connects to the owner and says hello; it returns the owner's pid.
func (f *frontEnd) dial() (*net.UnixConn, *bufio.Reader, int, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: f.socket, Net: "unix"})
	if err != nil {
		return nil, nil, 0, err
	}
	if err := checkPeer(c); err != nil {
		c.Close()
		return nil, nil, 0, err
	}
	c.SetDeadline(time.Now().Add(helloTimeout))
	r := bufio.NewReaderSize(c, 64<<10)
	var w welcome
	line, err := []byte(nil), error(nil)
	if _, err = c.Write(f.hello); err == nil {
		if line, err = readBounded(r, maxHello); err == nil {
			err = json.Unmarshal(line, &w)
		}
	}
	if err != nil {
		c.Close()
		return nil, nil, 0, fmt.Errorf("%w: %v", errOwnerGone, err)
	}
	if w.Error != "" {
		c.Close()
		return nil, nil, 0, errors.New(w.Error)
	}
	c.SetDeadline(time.Time{})
	return c, r, w.PID, nil
}

// proxy carries messages both ways over c until the client leaves (nil)
// or the owner goes (errOwnerGone). A new owner first gets the client's
// initialize again.
func (f *frontEnd) proxy(c *net.UnixConn, r *bufio.Reader) error {
	defer c.Close()
	var replayID []byte
	if f.initialize != nil {
		id := fmt.Sprintf(`%s%d"`, replayPrefix, f.replays.Add(1))
		msg, err := withID(f.initialize, id)
		if err != nil {
			return err
		}
		replayID = []byte(id)
		if _, err := c.Write(append(msg, f.initialized...)); err != nil {
			return errOwnerGone
		}
	}
	ownerDone := make(chan error, 1)
	go func() { ownerDone <- f.fromOwner(r, replayID) }()
	for {
		msg := f.pending
		if msg == nil {
			var ok bool
			select {
			case msg, ok = <-f.lines:
				if !ok { // the client left: let the owner finish, then go
					c.CloseWrite()
					select {
					case <-ownerDone:
					case <-time.After(2 * drainGrace):
					}
					return nil
				}
			case err := <-ownerDone:
				return f.ownerGone(err)
			}
			f.note(msg)
			f.pending = msg
		}
		if _, err := c.Write(msg); err != nil {
			c.Close()
			return f.ownerGone(<-ownerDone)
		}
		f.pending = nil
	}
}

// drainGrace is how long a leaving client's calls get to end.
const drainGrace = 10 * time.Second

// note records what the owner must know again after a restart, and the
// requests that await an answer.
func (f *frontEnd) note(msg []byte) {
	var rt route
	if json.Unmarshal(msg, &rt) != nil {
		return
	}
	switch rt.Method {
	case "initialize":
		f.initialize = msg
	case "notifications/initialized":
		f.initialized = msg
	}
	if rt.Method != "" && rt.hasID() {
		f.mu.Lock()
		f.inFlight[string(rt.ID)] = rt.Method
		f.mu.Unlock()
	}
}

// fromOwner writes the owner's messages to the client, until the owner
// ends the connection.
func (f *frontEnd) fromOwner(r *bufio.Reader, replayID []byte) error {
	for {
		line, err := readBounded(r, transport.MaxMessageBytes*2)
		if err != nil {
			return err
		}
		var rt route
		if json.Unmarshal(line, &rt) == nil && rt.Method == "" && rt.hasID() {
			if replayID != nil && bytes.Equal(rt.ID, replayID) {
				continue
			}
			f.mu.Lock()
			delete(f.inFlight, string(rt.ID))
			f.mu.Unlock()
		}
		if err := f.writeClient(append(line, '\n')); err != nil {
			return err
		}
	}
}

// ownerGone answers the requests the owner took and did not answer.
func (f *frontEnd) ownerGone(cause error) error {
	f.mu.Lock()
	lost := f.inFlight
	f.inFlight = map[string]string{}
	f.mu.Unlock()
	msg := "the vmcp server that ran this call stopped before it ended, and vmcp restarted it: run the call again " +
		"(files and conversations are kept; Python variables of local machines are lost)"
	for id, method := range lost {
		var b []byte
		if method == "tools/call" {
			b, _ = json.Marshal(map[string]any{"jsonrpc": "2.0", "id": json.RawMessage(id), "result": mcp.NewToolResultError(msg)})
		} else {
			b, _ = json.Marshal(map[string]any{"jsonrpc": "2.0", "id": json.RawMessage(id), "error": map[string]any{"code": mcp.INTERNAL_ERROR, "message": msg}})
		}
		f.writeClient(append(b, '\n'))
	}
	f.log.Warn().AnErr("cause", cause).Int("calls_failed", len(lost)).Msg("the vmcp server that owns the state directory stopped; connecting to the next")
	return errOwnerGone
}

// withID is msg with its id replaced.
func withID(msg []byte, id string) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(msg, &m); err != nil {
		return nil, err
	}
	m["id"] = json.RawMessage(id)
	b, err := json.Marshal(m)
	return append(b, '\n'), err
}

// takeOver is the input and output of a front end that became the owner:
// its client's messages, after the replayed initialize; and its output,
// without the answer to that initialize.
func (f *frontEnd) takeOver() (io.Reader, io.Writer) {
	var replay []byte
	replayID := ""
	if f.initialize != nil {
		replayID = fmt.Sprintf(`%s%d"`, replayPrefix, f.replays.Add(1))
		if msg, err := withID(f.initialize, replayID); err == nil {
			replay = append(msg, f.initialized...)
		}
	}
	if f.pending != nil {
		replay = append(replay, f.pending...)
		f.pending = nil
	}
	in := io.MultiReader(bytes.NewReader(replay), &chanReader{lines: f.lines})
	return in, &swallowWriter{f: f, id: []byte(replayID)}
}

// chanReader reads the front end's queue of client messages.
type chanReader struct {
	lines <-chan []byte
	cur   []byte
}

func (r *chanReader) Read(p []byte) (int, error) {
	if len(r.cur) == 0 {
		line, ok := <-r.lines
		if !ok {
			return 0, io.EOF
		}
		r.cur = line
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// swallowWriter writes to the client all but the answer whose id is id.
type swallowWriter struct {
	f    *frontEnd
	id   []byte
	done bool
	buf  []byte
}

func (w *swallowWriter) Write(p []byte) (int, error) {
	if w.done || len(w.id) == 0 {
		return len(p), w.f.writeClient(p)
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := w.buf[:i+1]
		w.buf = w.buf[i+1:]
		var rt route
		if json.Unmarshal(line, &rt) == nil && rt.Method == "" && bytes.Equal(rt.ID, w.id) {
			w.done = true
			rest := w.buf
			w.buf = nil
			if len(rest) > 0 {
				return len(p), w.f.writeClient(rest)
			}
			return len(p), nil
		}
		if err := w.f.writeClient(line); err != nil {
			return len(p), err
		}
	}
}

// takeOverWait bounds how long a front end waits for an owner that holds
// the state directory and does not answer on its socket (one starting).
const takeOverWait = 20 * time.Second

// frontEndUntilOwner serves this process's stdio client as a front end of
// the owner of the state directory. It returns a nil engine when the
// client has left, or the engine of the state directory once this process
// took it over; fe is the front end, nil when none started.
func frontEndUntilOwner(cfg Config, opts local.Options, log zerolog.Logger) (engine *local.Engine, fe *frontEnd, restore func(), err error) {
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, nil, nil, err
	}
	in, out, restore, err := pipeio.Stdio(os.Stdin, os.Stdout)
	if err != nil {
		return nil, nil, nil, err
	}
	fe = newFrontEnd(socketPath(stateDir), hello{Project: cfg.Project, AllowedRoots: cfg.AllowedRoots, PID: os.Getpid()}, in, out, log)
	waitingSince := time.Now()
	lastPID, drops := 0, 0 // an owner alive that keeps dropping the connection
	for {
		c, r, pid, err := fe.dial()
		if err == nil {
			log.Info().Int("owner_pid", pid).Str("state_dir", stateDir).Msg("serving through the vmcp server that owns the state directory")
			connected := time.Now()
			if err := fe.proxy(c, r); err == nil {
				return nil, fe, restore, nil
			}
			if time.Since(connected) < time.Second && pid == lastPID {
				drops++
			} else {
				drops = 0
			}
			lastPID = pid
			if drops >= 5 && unix.Kill(pid, 0) == nil {
				return nil, fe, restore, fmt.Errorf("the vmcp server of pid %d that owns state directory %s keeps closing this server's connection: see its log, or give this server its own --state-dir", pid, stateDir)
			}
			waitingSince = time.Now()
		} else if !isDialFailure(err) {
			return nil, fe, restore, err
		}
		engine, err := local.New(opts)
		if err == nil {
			return engine, fe, restore, nil
		}
		if !errors.Is(err, local.ErrStateDirInUse) {
			return nil, fe, restore, err
		}
		if time.Since(waitingSince) > takeOverWait {
			return nil, fe, restore, fmt.Errorf("%w, and it has not answered on %s for %s: stop it, or give this server its own --state-dir", err, fe.socket, takeOverWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isDialFailure tells an owner not there (yet, or any more) from one that
// answered and refused.
func isDialFailure(err error) bool {
	return errors.Is(err, errOwnerGone) || errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT)
}

// serveHTTPBeside is an http server on a state directory that another
// server owns: it listens, and has the owner serve its endpoint on that
// socket, passed over the owner's unix socket, until ctx ends (a nil
// engine). If the owner goes, it takes the state directory over and
// returns its engine with the listener, to serve the endpoint itself.
func serveHTTPBeside(ctx context.Context, cfg Config, args []string, opts local.Options, log zerolog.Logger) (*local.Engine, net.Listener, error) {
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", cfg.HTTP.Listen, err)
	}
	tcp := ln.(*net.TCPListener)
	file, err := tcp.File()
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	defer file.Close()
	var env []string
	for _, kv := range os.Environ() {
		for _, prefix := range []string{"VMCP_", "FASTVM_", "FOREVERVM_"} {
			if strings.HasPrefix(kv, prefix) {
				env = append(env, kv)
			}
		}
	}
	h, _ := json.Marshal(hello{PID: os.Getpid(), HTTP: &httpBeside{Args: args, Env: env, Cwd: cwd}})
	h = append(h, '\n')
	socket := socketPath(stateDir)
	waitingSince := time.Now()
	for {
		pid, c, err := askOwner(socket, h, file)
		if err == nil {
			log.Info().Int("owner_pid", pid).Str("url", "http://"+ln.Addr().String()+transport.PathMCP).
				Msg("listening; the vmcp server that owns the state directory serves this endpoint")
			gone := make(chan struct{})
			go func() { io.Copy(io.Discard, c); close(gone) }()
			select {
			case <-ctx.Done():
				c.Close()
				ln.Close()
				return nil, nil, nil
			case <-gone:
				c.Close()
				log.Warn().Msg("the vmcp server that owns the state directory stopped; taking it over")
				waitingSince = time.Now()
			}
		} else if !isDialFailure(err) {
			ln.Close()
			return nil, nil, err
		}
		engine, err := local.New(opts)
		if err == nil {
			return engine, ln, nil
		}
		if !errors.Is(err, local.ErrStateDirInUse) || time.Since(waitingSince) > takeOverWait {
			ln.Close()
			if errors.Is(err, local.ErrStateDirInUse) {
				err = fmt.Errorf("%w, and it has not answered on %s for %s: stop it, or give this server its own --state-dir", err, socket, takeOverWait)
			}
			return nil, nil, err
		}
		select {
		case <-ctx.Done():
			ln.Close()
			return nil, nil, nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// askOwner sends hello with the listening socket to the owner at socket,
// and returns the owner's pid and the connection that lasts as long as
// the owner serves the endpoint.
func askOwner(socket string, hello []byte, listener *os.File) (int, *net.UnixConn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return 0, nil, err
	}
	if err := checkPeer(c); err != nil {
		c.Close()
		return 0, nil, err
	}
	c.SetDeadline(time.Now().Add(helloTimeout))
	var w welcome
	if _, _, err = c.WriteMsgUnix(hello, unix.UnixRights(int(listener.Fd())), nil); err == nil {
		var line []byte
		if line, err = readBounded(bufio.NewReader(c), maxHello); err == nil {
			err = json.Unmarshal(line, &w)
		}
	}
	if err != nil {
		c.Close()
		return 0, nil, fmt.Errorf("%w: %v", errOwnerGone, err)
	}
	if w.Error != "" {
		c.Close()
		return 0, nil, errors.New(w.Error)
	}
	c.SetDeadline(time.Time{})
	return w.PID, c, nil
}

// besideEndpoint readies the endpoint of an http server beside this one
// (the owner, configured by cfg), as that server's command line and
// environment configure it: its backends for its principals (through
// hosted), its roots, its authentication.
func besideEndpoint(h *httpBeside, cfg Config, engine *local.Engine, svc *tools.Service, srv *server.MCPServer, manager *conversations.Manager,
	hosted *atomic.Pointer[func(string) []backend.Backend], log zerolog.Logger) (func(context.Context, net.Listener) error, error) {
	env := map[string]string{}
	for _, kv := range h.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	hc, err := loadConfig(h.Args, func(k string) string { return env[k] }, h.Cwd)
	if err != nil {
		return nil, err
	}
	switch {
	case hc.HTTP.Transport != "http":
		return nil, errors.New("it is not an http server")
	case hc.StateDir != engine.StateDir():
		return nil, fmt.Errorf("it names state directory %s, not %s", hc.StateDir, engine.StateDir())
	case hc.HTTP.SessionStore != cfg.HTTP.SessionStore:
		return nil, errors.New("its --session-store is not this server's: give it a state directory of its own")
	}
	bs, perPrincipal, closeBackends := backends(hc, engine, log)
	if len(bs) == 0 && len(hc.HTTP.Credentials) == 0 {
		closeBackends()
		return nil, errNoBackend
	}
	mark, err := svc.HostedEndpoint(hc.AllowedRoots)
	if err != nil {
		closeBackends()
		return nil, err
	}
	of := func(principal string) []backend.Backend {
		if set := perPrincipal(principal); set != nil {
			return set
		}
		return append([]backend.Backend{}, bs...) // never nil: not the owner's
	}
	if !hosted.CompareAndSwap(nil, &of) {
		closeBackends()
		return nil, errors.New("it already serves the endpoint of another http server")
	}
	return func(ctx context.Context, ln net.Listener) error {
		defer closeBackends()
		defer hosted.Store(nil)
		return serveHTTP(ctx, hc.HTTP, srv, newMetrics(manager, engine), log, ln, mark)
	}, nil
}

// besideOwner runs when another server owns the state directory (inUse is
// local.New's error): a stdio server serves its client through the owner,
// and an http server its endpoint, until the client leaves (engine nil,
// err nil) or the owner goes and this server takes the directory over
// (engine set; clientIn and clientOut are then the stdio client's streams,
// httpLn the http server's listener). restore, when set, is to be called
// once the client is served.
func besideOwner(cfg Config, args []string, opts local.Options, log zerolog.Logger, inUse error) (engine *local.Engine, clientIn io.Reader, clientOut io.Writer, httpLn net.Listener, restore func(), err error) {
	switch cfg.HTTP.Transport {
	case "stdio":
		var fe *frontEnd
		engine, fe, restore, err = frontEndUntilOwner(cfg, opts, log)
		if err == nil && engine == nil {
			return nil, nil, nil, nil, restore, nil
		}
		if fe != nil && err != nil {
			err = explainStateDir(cfg.StateDir, err)
			log.Error().Msg(err.Error())
			return nil, nil, nil, nil, restore, serveFailure(err, log, &chanReader{lines: fe.lines}, &swallowWriter{f: fe})
		}
		if fe != nil {
			clientIn, clientOut = fe.takeOver()
			log.Info().Msg("took over the state directory from the vmcp server that owned it")
		}
		return engine, clientIn, clientOut, nil, restore, err
	case "http":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		engine, httpLn, err = serveHTTPBeside(ctx, cfg, args, opts, log)
		if err == nil && engine != nil {
			log.Info().Msg("took over the state directory from the vmcp server that owned it")
		}
		return engine, nil, nil, httpLn, nil, err
	}
	return nil, nil, nil, nil, nil, inUse
}

// serveOthers lets the later servers of this user on this state directory
// reach its machines through this one, until ctx ends: sharing reports
// whether they can, and wait returns once they have left.
func serveOthers(ctx context.Context, cfg Config, engine *local.Engine, srv *server.MCPServer, svc *tools.Service, manager *conversations.Manager,
	hosted *atomic.Pointer[func(string) []backend.Backend], info mcp.Implementation, log zerolog.Logger) (sharing bool, wait func()) {
	ln, err := listenShared(socketPath(engine.StateDir()))
	if err != nil {
		log.Warn().Err(err).Msg("other vmcp servers cannot share this state directory: its socket failed")
		return false, func() {}
	}
	o := newOwner(ln, srv, svc, info, log)
	if cfg.HTTP.Transport != "http" {
		o.endpoint = func(h *httpBeside) (func(context.Context, net.Listener) error, error) {
			return besideEndpoint(h, cfg, engine, svc, srv, manager, hosted, log)
		}
	}
	go o.accept(ctx)
	return true, func() {
		o.waitIdle(ctx)
		o.wg.Wait()
	}
}
