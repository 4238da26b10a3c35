package forevervm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"
)

// ErrClosed is returned by a REPL after Close.
var ErrClosed = errors.New("forevervm: the REPL is closed: open a new one with Client.REPL")

// ErrUnacknowledged means the REPL socket dropped after an instruction was
// sent but before the server acknowledged it, so nobody knows whether it
// ran. It is not resent automatically, because running code twice can do
// harm: check the machine's state before running it again.
var ErrUnacknowledged = errors.New("forevervm: the REPL connection dropped before the server acknowledged the instruction; it may or may not have run, check before running it again")

// writeTimeout bounds sending one frame; pingTimeout waits for a pong (a
// missing pong closes the socket, so it must allow for a busy host).
const (
	writeTimeout = 10 * time.Second
	pingTimeout  = 15 * time.Second
)

// ReconnectPolicy bounds how a REPL reconnects after its socket drops. Zero
// fields take the values of DefaultReconnectPolicy.
type ReconnectPolicy struct {
	// Attempts is how many dials one reconnection tries before the REPL
	// reports the failure (the next Exec tries again); negative disables
	// reconnection.
	Attempts int
	// InitialBackoff is the pause before the first retry; it doubles per
	// attempt up to MaxBackoff.
	InitialBackoff, MaxBackoff time.Duration
	// DialTimeout bounds one dial, up to the server's connected message.
	DialTimeout time.Duration
}

// DefaultReconnectPolicy retries for about ten seconds.
var DefaultReconnectPolicy = ReconnectPolicy{
	Attempts:       8,
	InitialBackoff: 50 * time.Millisecond,
	MaxBackoff:     2 * time.Second,
	DialTimeout:    10 * time.Second,
}

func (p ReconnectPolicy) withDefaults() ReconnectPolicy {
	d := DefaultReconnectPolicy
	if p.Attempts != 0 {
		d.Attempts = p.Attempts
	}
	if p.InitialBackoff > 0 {
		d.InitialBackoff = p.InitialBackoff
	}
	if p.MaxBackoff > 0 {
		d.MaxBackoff = p.MaxBackoff
	}
	if p.DialTimeout > 0 {
		d.DialTimeout = p.DialTimeout
	}
	return d
}

// backoff is the pause before retry number n (from 0), with ±20% jitter so
// that many clients dropped together do not retry together.
func (p ReconnectPolicy) backoff(n int) time.Duration {
	d := p.InitialBackoff << min(n, 20)
	if d > p.MaxBackoff || d <= 0 {
		d = p.MaxBackoff
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

type replState int

const (
	stateConnected  replState = iota
	stateConnecting           // the socket dropped; a reconnection is under way
	stateBroken               // the last reconnection failed; the next Exec retries
	stateClosed
)

// REPL is a WebSocket session with one machine's Python REPL. One socket
// runs any number of instructions. It is safe for concurrent use: concurrent
// Exec calls are all sent at once, and the machine runs them one after the
// other. (The official SDKs never do this, so how the real service treats it
// is unknown; the emulator queues them. Should the server refuse one with an
// error message, that Exec returns it as an *APIError.)
//
// If the socket drops, the REPL reconnects (see ReconnectPolicy) and fetches
// the results of the instructions that were running over HTTP, with their
// remaining output, so their Exec calls still return them.
type REPL struct {
	c      *Client
	log    zerolog.Logger
	ctx    context.Context // ends at Close, and with it everything the REPL started
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // asks a broken REPL to reconnect

	mu      sync.Mutex
	machine string
	state   replState
	conn    *websocket.Conn  // nil unless connected
	changed chan struct{}    // closed and replaced at every state change
	err     error            // why the last reconnection failed
	nextReq uint32           // request ids count on across reconnections
	byReq   map[uint32]*call // sent, not yet acknowledged
	bySeq   map[int64]*call  // acknowledged, waiting for the result
}

// call is one instruction in flight.
type call struct {
	ctx     context.Context // the caller's: recovery stops when it ends
	timeout time.Duration

	// Guarded by REPL.mu.
	reqID uint32
	sent  bool
	acked bool
	seq   int64

	mu        sync.Mutex
	chunks    []OutputChunk // not yet handed to OnOutput
	lastChunk int64         // highest chunk seq received
	result    *Result
	err       error
	done      bool
	notify    chan struct{} // capacity 1: there is something new
}

func (c *call) signal() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// push queues an output chunk. With dedupe, chunks at or before the last
// one received are dropped: a recovery replays the instruction's output
// from the start.
func (c *call) push(ch OutputChunk, dedupe bool) {
	c.mu.Lock()
	if c.done || dedupe && ch.Seq <= c.lastChunk {
		c.mu.Unlock()
		return
	}
	c.lastChunk = max(c.lastChunk, ch.Seq)
	c.chunks = append(c.chunks, ch)
	c.mu.Unlock()
	c.signal()
}

// finish ends the call; only the first outcome counts.
func (c *call) finish(res *Result, err error) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done, c.result, c.err = true, res, err
	c.mu.Unlock()
	c.signal()
}

// REPL opens the WebSocket REPL of a machine; an empty name (or "new")
// creates a machine, whose name Machine then reports. Close it when done.
func (c *Client) REPL(ctx context.Context, machine string) (*REPL, error) {
	if machine == "" {
		machine = "new"
	}
	conn, name, err := c.dialREPL(ctx, machine)
	if err != nil {
		return nil, err
	}
	if name == "" {
		if machine == "new" {
			conn.CloseNow()
			return nil, errors.New("forevervm: the server created a machine for the REPL but did not name it in its connected message, so the REPL could not reconnect to it: pass a machine from CreateMachine")
		}
		name = machine
	}
	rctx, cancel := context.WithCancel(context.Background())
	r := &REPL{
		c:       c,
		log:     c.log.With().Str("machine", name).Logger(),
		ctx:     rctx,
		cancel:  cancel,
		kick:    make(chan struct{}, 1),
		machine: name,
		state:   stateConnected,
		conn:    conn,
		changed: make(chan struct{}),
		byReq:   map[uint32]*call{},
		bySeq:   map[int64]*call{},
	}
	r.wg.Add(1)
	go r.run(conn)
	if c.keepalive > 0 {
		r.wg.Add(1)
		go r.keepalive(c.keepalive)
	}
	return r, nil
}

// Machine is the name of the machine this REPL runs on.
func (r *REPL) Machine() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.machine
}

// Exec runs code on the machine and returns its result once it ends, after
// handing each output chunk to opts.OnOutput. A Python exception or a
// timeout is a result with IsError, not an error. If ctx ends first, Exec
// returns ctx's error and the instruction goes on until its own timeout (use
// Client.Exec with Interrupt to stop it).
func (r *REPL) Exec(ctx context.Context, code string, opts ExecOptions) (*Result, error) {
	if opts.Interrupt {
		return nil, errors.New("forevervm: the REPL protocol cannot interrupt: use Client.Exec with Interrupt")
	}
	cl := &call{
		ctx:       ctx,
		timeout:   time.Duration(opts.timeoutSeconds()) * time.Second,
		lastChunk: -1,
		notify:    make(chan struct{}, 1),
	}
	if err := r.send(ctx, cl, code, opts.timeoutSeconds()); err != nil {
		return nil, err
	}
	for {
		select {
		case <-cl.notify:
		case <-ctx.Done():
			r.forget(cl)
			cl.finish(nil, ctx.Err())
			return nil, fmt.Errorf("forevervm: stopped waiting for the instruction (it keeps running on the machine until its timeout): %w", ctx.Err())
		}
		cl.mu.Lock()
		chunks, done, res, err := cl.chunks, cl.done, cl.result, cl.err
		cl.chunks = nil
		cl.mu.Unlock()
		if opts.OnOutput != nil {
			for _, ch := range chunks {
				opts.OnOutput(ch)
			}
		}
		if done {
			return res, err
		}
	}
}

// send registers the call and writes its exec frame. A write that fails
// sent nothing whole, so it is retried once on the next connection.
func (r *REPL) send(ctx context.Context, cl *call, code string, timeoutSeconds int64) error {
	for attempt := 0; ; attempt++ {
		conn, err := r.waitConnected(ctx)
		if err != nil {
			return err
		}
		r.mu.Lock()
		if r.conn != conn {
			r.mu.Unlock()
			continue
		}
		cl.reqID = r.nextReq
		r.nextReq++
		r.byReq[cl.reqID] = cl
		r.mu.Unlock()

		frame, err := json.Marshal(struct {
			Type        string      `json:"type"`
			Instruction instruction `json:"instruction"`
			RequestID   uint32      `json:"request_id"`
		}{"exec", instruction{code, timeoutSeconds}, cl.reqID})
		if err != nil {
			r.forget(cl)
			return fmt.Errorf("forevervm: encode the exec message: %w", err)
		}
		wctx, cancel := context.WithTimeout(r.ctx, writeTimeout)
		werr := conn.Write(wctx, websocket.MessageText, frame)
		cancel()

		r.mu.Lock()
		switch {
		case cl.acked:
			// The server acknowledged it: the write went through whatever
			// it reported.
			r.mu.Unlock()
			return nil
		case werr == nil && r.conn == conn:
			cl.sent = true
			r.mu.Unlock()
			return nil
		case werr == nil:
			// The socket dropped while the frame was being written.
			delete(r.byReq, cl.reqID)
			r.mu.Unlock()
			return ErrUnacknowledged
		}
		delete(r.byReq, cl.reqID)
		r.mu.Unlock()
		if attempt >= 1 || r.ctx.Err() != nil {
			if r.ctx.Err() != nil {
				return ErrClosed
			}
			return fmt.Errorf("forevervm: send the instruction to the REPL of %s: %w", r.Machine(), werr)
		}
		r.log.Debug().Err(werr).Msg("exec frame not sent; retrying on the next connection")
	}
}

// waitConnected returns the current socket, waiting while the REPL
// reconnects. A broken REPL is asked to reconnect once per call.
func (r *REPL) waitConnected(ctx context.Context) (*websocket.Conn, error) {
	kicked := false
	r.mu.Lock()
	for {
		switch r.state {
		case stateClosed:
			r.mu.Unlock()
			return nil, ErrClosed
		case stateConnected:
			conn := r.conn
			r.mu.Unlock()
			return conn, nil
		case stateBroken:
			if kicked {
				err := r.err
				r.mu.Unlock()
				return nil, err
			}
			kicked = true
			r.setState(stateConnecting)
			select {
			case r.kick <- struct{}{}:
			default:
			}
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("forevervm: waiting for the REPL connection of %s: %w", r.Machine(), ctx.Err())
		}
		r.mu.Lock()
	}
}

// setState changes the state and wakes its waiters; r.mu must be held.
func (r *REPL) setState(s replState) {
	r.state = s
	close(r.changed)
	r.changed = make(chan struct{})
}

// forget drops a call from the routing tables, so that frames still coming
// for it are ignored.
func (r *REPL) forget(cl *call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byReq[cl.reqID] == cl {
		delete(r.byReq, cl.reqID)
	}
	if cl.acked && r.bySeq[cl.seq] == cl {
		delete(r.bySeq, cl.seq)
	}
}

// Close closes the socket and ends every goroutine the REPL started; Exec
// calls still waiting return ErrClosed. The machine and its state remain.
func (r *REPL) Close() error {
	r.mu.Lock()
	if r.state == stateClosed {
		r.mu.Unlock()
		return nil
	}
	conn := r.conn
	r.conn = nil
	r.setState(stateClosed)
	var calls []*call
	for _, cl := range r.byReq {
		calls = append(calls, cl)
	}
	for _, cl := range r.bySeq {
		calls = append(calls, cl)
	}
	clear(r.byReq)
	clear(r.bySeq)
	r.mu.Unlock()

	if conn != nil {
		// A clean close first, while the reader still answers the
		// server's close frame; its error only says the socket was
		// already gone.
		_ = conn.Close(websocket.StatusNormalClosure, "")
	}
	r.cancel()
	for _, cl := range calls {
		cl.finish(nil, ErrClosed)
	}
	r.wg.Wait()
	return nil
}

// run reads the socket, and reconnects when it drops, until Close.
func (r *REPL) run(conn *websocket.Conn) {
	defer r.wg.Done()
	for {
		err := r.read(conn)
		r.mu.Lock()
		closed := r.state == stateClosed
		r.mu.Unlock()
		if closed {
			return
		}
		r.log.Warn().Err(err).Msg("the REPL connection dropped; reconnecting")
		r.dropped(conn)
		if conn = r.reconnect(); conn == nil {
			return
		}
	}
}

// read dispatches the socket's messages until it fails. Reading all the
// time is also what answers the server's pings.
func (r *REPL) read(conn *websocket.Conn) error {
	for {
		typ, b, err := conn.Read(r.ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText {
			r.log.Debug().Int("bytes", len(b)).Msg("ignoring a binary REPL message")
			continue
		}
		var m serverMessage
		if err := json.Unmarshal(b, &m); err != nil {
			r.log.Debug().Err(err).Str("message", snippet(b)).Msg("ignoring a REPL message that is not JSON")
			continue
		}
		r.dispatch(&m, b)
	}
}

func (r *REPL) dispatch(m *serverMessage, raw []byte) {
	switch m.Type {
	case "exec_received":
		if m.RequestID == nil || m.Seq == nil {
			r.log.Debug().Str("message", snippet(raw)).Msg("ignoring an exec_received without request_id or seq")
			return
		}
		r.mu.Lock()
		if cl := r.byReq[*m.RequestID]; cl != nil {
			delete(r.byReq, *m.RequestID)
			cl.acked, cl.seq = true, *m.Seq
			r.bySeq[cl.seq] = cl
		}
		r.mu.Unlock()
	case "output":
		if cl := r.routed(m, false); cl != nil && m.Chunk != nil {
			cl.push(*m.Chunk, false)
		}
	case "result":
		if cl := r.routed(m, true); cl != nil {
			cl.finish(m.result())
		}
	case "error":
		e := &APIError{Code: m.Code}
		if m.ID != nil {
			e.ID = *m.ID
		}
		// The message names no instruction: it answers the oldest exec the
		// server has not acknowledged, if any (the JS SDK fails its one
		// pending exec the same way).
		r.mu.Lock()
		var oldest *call
		for _, cl := range r.byReq {
			if oldest == nil || cl.reqID-r.nextReq < oldest.reqID-r.nextReq {
				oldest = cl
			}
		}
		if oldest != nil {
			delete(r.byReq, oldest.reqID)
		}
		r.mu.Unlock()
		if oldest != nil {
			oldest.finish(nil, e)
			return
		}
		r.log.Warn().Str("code", e.Code).Str("id", e.ID).Msg("the REPL server sent an error")
	case "message":
		level, err := zerolog.ParseLevel(m.Level)
		if err != nil || level == zerolog.NoLevel {
			level = zerolog.InfoLevel
		}
		r.log.WithLevel(level).Str("server_message", m.Message).Msg("message from the REPL server")
	default:
		// connected again, or a type this client does not know: the
		// protocol may grow, so it is not an error.
		r.log.Debug().Str("type", m.Type).Msg("ignoring a REPL message")
	}
}

// routed finds the call an output or result message belongs to.
func (r *REPL) routed(m *serverMessage, last bool) *call {
	if m.InstructionID == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cl := r.bySeq[*m.InstructionID]
	if cl != nil && last {
		delete(r.bySeq, cl.seq)
	}
	return cl
}

// dropped handles the loss of conn: instructions the server acknowledged
// are recovered over HTTP; those it had not are failed with
// ErrUnacknowledged.
func (r *REPL) dropped(conn *websocket.Conn) {
	conn.CloseNow()
	r.mu.Lock()
	if r.state == stateClosed {
		r.mu.Unlock()
		return
	}
	r.conn = nil
	r.setState(stateConnecting)
	var unacked, acked []*call
	for id, cl := range r.byReq {
		// A call not yet marked sent is in the middle of its write; send
		// sorts it out when the write returns.
		if cl.sent {
			unacked = append(unacked, cl)
			delete(r.byReq, id)
		}
	}
	for seq, cl := range r.bySeq {
		acked = append(acked, cl)
		delete(r.bySeq, seq)
	}
	machine := r.machine
	r.wg.Add(len(acked))
	r.mu.Unlock()

	for _, cl := range unacked {
		cl.finish(nil, ErrUnacknowledged)
	}
	for _, cl := range acked {
		go r.recoverResult(machine, cl)
	}
}

// recoverResult fetches over HTTP the output not yet received and the
// result of an instruction whose socket dropped.
func (r *REPL) recoverResult(machine string, cl *call) {
	defer r.wg.Done()
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	defer context.AfterFunc(cl.ctx, cancel)()
	p := r.c.reconnect
	var err error
	for attempt := 0; attempt < max(p.Attempts, 1); attempt++ {
		if attempt > 0 && !sleep(ctx, p.backoff(attempt-1)) {
			break
		}
		var res *Result
		if res, err = r.streamRemaining(ctx, machine, cl); err == nil {
			cl.finish(res, nil)
			return
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.StatusCode < 500 {
			// The stream was refused: ask for the bare result instead.
			if res, err = r.c.execResult(ctx, machine, cl.seq, cl.timeout); err == nil {
				cl.finish(res, nil)
				return
			}
			break
		}
		r.log.Debug().Err(err).Int64("seq", cl.seq).Msg("recovering a result over HTTP failed; retrying")
	}
	if r.ctx.Err() != nil {
		err = ErrClosed
	}
	cl.finish(nil, fmt.Errorf("forevervm: the REPL connection dropped while instruction %d ran on %s, and fetching its result over HTTP failed (get it later with ExecResult): %w", cl.seq, machine, err))
}

func (r *REPL) streamRemaining(ctx context.Context, machine string, cl *call) (*Result, error) {
	for ev, err := range r.c.streamResult(ctx, machine, cl.seq, cl.timeout) {
		if err != nil {
			return nil, err
		}
		if ev.Output != nil {
			cl.push(*ev.Output, true)
		}
		if ev.Result != nil {
			return ev.Result, nil
		}
	}
	return nil, errors.New("the result stream ended early")
}

// reconnect dials again until it succeeds, the policy gives up (then it
// waits for an Exec to ask again) or the REPL is closed (then it returns
// nil).
func (r *REPL) reconnect() *websocket.Conn {
	for {
		conn, err := r.redial()
		r.mu.Lock()
		if r.state == stateClosed {
			r.mu.Unlock()
			if conn != nil {
				conn.CloseNow()
			}
			return nil
		}
		if err == nil {
			r.conn = conn
			r.setState(stateConnected)
			r.mu.Unlock()
			r.log.Info().Msg("the REPL reconnected")
			return conn
		}
		r.err = err
		r.setState(stateBroken)
		r.mu.Unlock()
		r.log.Warn().Err(err).Msg("the REPL could not reconnect; the next Exec tries again")
		select {
		case <-r.kick:
		case <-r.ctx.Done():
			return nil
		}
	}
}

// redial makes the attempts of one reconnection.
func (r *REPL) redial() (*websocket.Conn, error) {
	p := r.c.reconnect
	if p.Attempts < 0 {
		return nil, errors.New("forevervm: the REPL connection dropped and reconnection is disabled: open a new REPL")
	}
	var err error
	for attempt := range p.Attempts {
		if !sleep(r.ctx, p.backoff(attempt)) {
			return nil, ErrClosed
		}
		machine := r.Machine()
		ctx, cancel := context.WithTimeout(r.ctx, p.DialTimeout)
		var conn *websocket.Conn
		var name string
		conn, name, err = r.c.dialREPL(ctx, machine)
		cancel()
		if err == nil {
			if name != "" && name != machine {
				r.log.Warn().Str("connected_to", name).Msg("the server reconnected the REPL to another machine")
				r.mu.Lock()
				r.machine = name
				r.mu.Unlock()
			}
			return conn, nil
		}
		if IsNotFound(err) || IsUnauthorized(err) {
			break // retrying cannot help
		}
		r.log.Debug().Err(err).Int("attempt", attempt+1).Msg("REPL reconnection attempt failed")
	}
	return nil, fmt.Errorf("forevervm: the REPL connection to %s dropped and could not be reopened: %w", r.Machine(), err)
}

// keepalive pings the server so that a dead socket is found and replaced
// while idle rather than when the next instruction is sent.
func (r *REPL) keepalive(every time.Duration) {
	defer r.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		conn := r.conn
		r.mu.Unlock()
		if conn == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(r.ctx, pingTimeout)
		if err := conn.Ping(ctx); err != nil && r.ctx.Err() == nil {
			// A failed ping closes the socket, and the reader reconnects.
			r.log.Debug().Err(err).Msg("REPL keepalive ping failed")
		}
		cancel()
	}
}

// dialREPL opens the REPL socket of machine and waits for the server's
// connected message, which must come first (spec §3.2). It returns the
// machine name that message gives.
func (c *Client) dialREPL(ctx context.Context, machine string) (*websocket.Conn, string, error) {
	if c.baseErr != nil {
		return nil, "", c.baseErr
	}
	path := "/v1/machine/" + url.PathEscape(machine) + "/repl"
	wsURL, err := websocketURL(c.baseURL + path)
	if err != nil {
		return nil, "", err
	}
	h := http.Header{}
	c.setHeaders(h)
	conn, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode >= 300 {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
			}
			return nil, "", newAPIError(http.MethodGet, path, resp.StatusCode, body)
		}
		return nil, "", fmt.Errorf("forevervm: open the REPL of %s: %w", machine, err)
	}
	conn.SetReadLimit(c.maxMessageBytes)
	typ, b, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, "", fmt.Errorf("forevervm: open the REPL of %s: waiting for the connected message: %w", machine, err)
	}
	var m serverMessage
	if typ == websocket.MessageText {
		_ = json.Unmarshal(b, &m)
	}
	switch m.Type {
	case "connected":
		return conn, m.MachineName, nil
	case "error":
		conn.CloseNow()
		e := &APIError{Code: m.Code, Method: http.MethodGet, Path: path}
		if m.ID != nil {
			e.ID = *m.ID
		}
		return nil, "", e
	}
	conn.CloseNow()
	return nil, "", fmt.Errorf("forevervm: open the REPL of %s: the server's first message is not \"connected\": %s", machine, snippet(b))
}

// websocketURL maps http to ws and https to wss.
func websocketURL(u string) (string, error) {
	switch {
	case strings.HasPrefix(u, "https://"):
		return "wss://" + strings.TrimPrefix(u, "https://"), nil
	case strings.HasPrefix(u, "http://"):
		return "ws://" + strings.TrimPrefix(u, "http://"), nil
	}
	return "", fmt.Errorf("forevervm: base URL %q must be http:// or https://", u)
}

// sleep waits for d unless ctx ends first; it reports whether it slept.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
