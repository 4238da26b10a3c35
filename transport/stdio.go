// Package transport serves an mcp-go MCPServer to MCP clients.
//
// ServeStdio is vmcp's stdio transport. It replaces mcp-go's StdioServer for
// three reasons: latency (one reader, one decode of the envelope, one
// buffered writer, where mcp-go spawns a goroutine per line and decodes each
// message several times), ordering (a tool call's progress notifications are
// always written before its result) and cancellation (notifications/cancelled
// and the client closing stdin cancel the calls in flight, which kills what
// they started in the sandbox).
package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"
)

// MaxMessageBytes bounds one incoming JSON-RPC message (a line on stdin).
// Uploads travel inside messages as base64, so it is generous.
const MaxMessageBytes = 256 << 20

// drainTimeout is how long calls in flight get to end once the client has
// closed stdin and their contexts are cancelled.
const drainTimeout = 10 * time.Second

// StdioOptions tune ServeStdio.
type StdioOptions struct {
	// Logger receives transport errors. Default: disabled.
	Logger zerolog.Logger
	// MaxMessageBytes bounds one incoming message; default MaxMessageBytes.
	MaxMessageBytes int
	// ServerInfo is the name and version the MCP server reports, which
	// results to 2026-07-28 requests carry; without it those requests take
	// mcp-go's full path (see callTool).
	ServerInfo *mcp.Implementation
	// SessionID names the connection's session: one that begins with
	// StdioSessionPrefix, unique among the server's sessions. Default
	// "stdio".
	SessionID string
}

// ServeStdio serves srv to one client speaking newline-delimited JSON-RPC on
// in and out, until in ends or ctx is cancelled. Either way the calls in
// flight are cancelled and ServeStdio waits for them (at most drainTimeout)
// before it returns. A read blocked on in cannot be interrupted: after ctx is
// cancelled it is abandoned, which is harmless when the process is exiting.
func ServeStdio(ctx context.Context, srv *server.MCPServer, in io.Reader, out io.Writer, opts StdioOptions) error {
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = MaxMessageBytes
	}
	s := &stdio{
		srv:        srv,
		serverInfo: opts.ServerInfo,
		log:        opts.Logger,
		maxLine:    opts.MaxMessageBytes,
		out:        bufio.NewWriterSize(out, 64<<10),
		inFlight:   map[string]context.CancelFunc{},
		lead:       make(chan struct{}),
		quit:       make(chan struct{}),
		readDone:   make(chan error, 1),
	}
	if opts.SessionID == "" {
		opts.SessionID = StdioSessionPrefix
	}
	s.session = newSession(opts.SessionID, s.write)
	if err := srv.RegisterSession(ctx, s.session); err != nil {
		return fmt.Errorf("register the stdio session: %w", err)
	}
	defer srv.UnregisterSession(context.Background(), s.session.SessionID())

	ctx, cancel := context.WithCancel(srv.WithContext(ctx, s.session))
	defer cancel()
	stopPump := make(chan struct{})
	pumpDone := make(chan struct{})
	go func() { defer close(pumpDone); s.pumpNotifications(stopPump) }()

	s.in = bufio.NewReaderSize(in, 64<<10)
	go s.serve(ctx)
	defer close(s.quit)
	var readErr error
	select {
	case readErr = <-s.readDone:
	case <-ctx.Done():
	}

	// The client is gone or we are shutting down: cancel what runs, give it
	// time to end, then stop the writer.
	cancel()
	s.session.cancelPending()
	drained := make(chan struct{})
	go func() { s.calls.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		s.log.Warn().Dur("after", drainTimeout).Msg("calls still running after the client left; not waiting for them")
	}
	close(stopPump)
	<-pumpDone
	s.wmu.Lock()
	err := s.werr
	s.wmu.Unlock()
	if err != nil && readErr == nil {
		readErr = err
	}
	return readErr
}

type stdio struct {
	srv        *server.MCPServer
	serverInfo *mcp.Implementation
	log        zerolog.Logger
	session    *session
	maxLine    int

	// Every message is written whole, and flushed, under wmu by the
	// goroutine that has it: a handler writes its own response, so that no
	// handoff to a writer goroutine sits on the path of every call. Progress
	// reaches the session's NotifyNow (synchronous, so it is on the wire
	// before the handler returns); other notifications come through the
	// session's channel and pumpNotifications.
	wmu  sync.Mutex
	out  *bufio.Writer
	werr error // the first write error; writing stops there

	calls    sync.WaitGroup
	mu       sync.Mutex
	inFlight map[string]context.CancelFunc // request id (raw JSON) → cancel

	// Reading is done by a pool of goroutines, one of which leads at a
	// time: see serve.
	in       *bufio.Reader // read only by the leader
	lead     chan struct{} // an idle goroutine receives the lead on it
	idle     atomic.Int32  // goroutines waiting on lead
	quit     chan struct{} // closed when ServeStdio returns: idle goroutines exit
	readDone chan error    // the end of input: nil at EOF
}

// maxIdleReaders bounds the goroutines kept waiting to lead.
const maxIdleReaders = 8

// envelope is the part of a JSON-RPC message the transport routes on, and
// what a tool call's fast path (see callTool) needs.
type envelope struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Result  json.RawMessage `json:"result"`
	Error   *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Params struct {
		RequestID json.RawMessage `json:"requestId"` // of notifications/cancelled

		// Of tools/call.
		Name           string          `json:"name"`
		Arguments      rawRef          `json:"arguments"`
		Meta           json.RawMessage `json:"_meta"`
		Task           json.RawMessage `json:"task"`
		InputResponses json.RawMessage `json:"inputResponses"`
		RequestState   json.RawMessage `json:"requestState"`
	} `json:"params"`
}

func (e *envelope) hasID() bool { return len(e.ID) > 0 && string(e.ID) != "null" }

var errTooLong = errors.New("message too long")

// serve is the loop of the goroutines that read stdin. One at a time leads:
// it reads messages and handles the quick ones itself, in order. On a tool
// call it hands the lead to an idle goroutine (or a new one) and runs the
// call itself, then waits to lead again. So a call starts on the goroutine
// that read it, without waiting for another thread to wake up, and the
// goroutines (and their grown stacks) are reused from call to call.
//
// Two ways to spare the hand-off were measured, and both made run_python
// 1+1 slower through the lean bench client, the engine's reply then waiting
// longer for a thread: keeping the lead during short calls, and handing it
// on only once the call waits for the engine (figures in the README).
func (s *stdio) serve(ctx context.Context) {
	for {
		line, err := readLine(s.in, s.maxLine)
		if errors.Is(err, errTooLong) {
			s.reply(errorMessage(nil, mcp.INVALID_REQUEST, fmt.Sprintf(
				"the message is longer than the %d bytes the server accepts; send large files with local_path or in several parts", s.maxLine)))
			continue
		}
		select {
		case <-s.quit: // ServeStdio has returned: nobody reads on
			return
		default:
		}
		var call func()
		if len(bytes.TrimSpace(line)) > 0 {
			call = s.dispatch(ctx, line)
		}
		if err != nil {
			if call != nil {
				go call() // the input ended: the call is cancelled with the rest
			}
			if err != io.EOF {
				err = fmt.Errorf("read stdin: %w", err)
			} else {
				err = nil
			}
			s.readDone <- err
			return
		}
		if call == nil {
			continue
		}
		s.handOff(ctx)
		call()
		if !s.awaitLead() {
			return
		}
	}
}

// handOff passes the lead to an idle reading goroutine, or a new one.
func (s *stdio) handOff(ctx context.Context) {
	select {
	case s.lead <- struct{}{}:
	default:
		go s.serve(ctx)
	}
}

// awaitLead waits until this goroutine leads again; false: it should exit
// instead (enough are idle, or the transport is closing).
func (s *stdio) awaitLead() bool {
	if s.idle.Add(1) > maxIdleReaders {
		s.idle.Add(-1)
		return false
	}
	defer s.idle.Add(-1)
	select {
	case <-s.lead:
		return true
	case <-s.quit:
		return false
	}
}

// rawRef is a JSON value kept where the message holds it: unlike
// json.RawMessage, not copied (a file's content may be most of a message).
// The message's line is never reused.
type rawRef []byte

// UnmarshalJSON keeps b, a slice of the line being decoded.
func (r *rawRef) UnmarshalJSON(b []byte) error {
	*r = b
	return nil
}

// readLine reads one line without its newline, at most max bytes long; a
// longer line is skipped whole and reported as errTooLong. A long line is
// gathered in pieces and joined once, into memory of its exact size: no
// more than twice its size is ever held for it.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var pieces [][]byte
	size := 0
	for {
		chunk, err := r.ReadSlice('\n')
		if size+len(chunk) > max+1 { // +1: the newline
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			if err != nil && err != io.EOF {
				return nil, err
			}
			return nil, errTooLong
		}
		if pieces == nil && err == nil {
			return bytes.Clone(chunk[:len(chunk)-1]), nil // the common case: one slice
		}
		pieces = append(pieces, bytes.Clone(chunk))
		size += len(chunk)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		line := make([]byte, 0, size)
		for _, p := range pieces {
			line = append(line, p...)
		}
		if err == nil {
			return line[:len(line)-1], nil
		}
		return line, err
	}
}

// dispatch routes one message. Requests other than tool calls are quick
// and handled at once, in order, which keeps initialize before everything
// else. A tool call is returned as a function, for serve to run while
// another goroutine reads on, so that a long call never holds up pings,
// cancellations or other calls.
func (s *stdio) dispatch(ctx context.Context, line []byte) (call func()) {
	var env envelope
	if err := json.Unmarshal(line, &env); err != nil {
		s.reply(errorMessage(nil, mcp.PARSE_ERROR, "Parse error: the line is not valid JSON: "+err.Error()))
		return nil
	}
	switch {
	case env.Method == "" && env.hasID():
		s.session.resolve(env)
	case env.Method == string(mcp.MethodNotificationCancelled):
		s.cancelCall(env.Params.RequestID)
	case !env.hasID():
		s.handle(ctx, line) // a notification: no response
	case env.Method == string(mcp.MethodToolsCall):
		ctx, cancel := context.WithCancel(ctx)
		key := string(env.ID)
		s.mu.Lock()
		s.inFlight[key] = cancel
		s.mu.Unlock()
		s.calls.Add(1)
		return func() {
			defer func() {
				s.mu.Lock()
				delete(s.inFlight, key)
				s.mu.Unlock()
				cancel()
				s.calls.Done()
			}()
			if !s.callTool(ctx, &env) {
				s.handle(ctx, line)
			}
		}
	case env.Method == string(mcp.MethodPromptsGet):
		if msg := missingPromptArgument(s.srv, line); msg != "" {
			s.reply(errorMessage(env.ID, mcp.INVALID_PARAMS, msg))
			return nil
		}
		s.handle(ctx, line)
	default:
		s.handle(ctx, line)
	}
	return nil
}

// cancelCall cancels the tool call with the given request id, if it runs.
func (s *stdio) cancelCall(id json.RawMessage) {
	s.mu.Lock()
	cancel := s.inFlight[string(id)]
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// handle runs one message through the MCP server and writes its response.
func (s *stdio) handle(ctx context.Context, line []byte) {
	var resp mcp.JSONRPCMessage
	func() {
		defer func() {
			if r := recover(); r != nil {
				s.log.Error().Interface("panic", r).Msg("request handler panicked")
				var env envelope
				_ = json.Unmarshal(line, &env)
				if env.hasID() {
					resp = errorMessage(env.ID, mcp.INTERNAL_ERROR, "internal error in the server; the request was not carried out")
				}
			}
		}()
		resp = s.srv.HandleMessage(ctx, line)
	}()
	if resp != nil {
		s.reply(resp)
	}
}

// reply encodes a message from mcp-go and writes it.
func (s *stdio) reply(msg any) {
	b, err := json.Marshal(msg)
	if err != nil {
		s.log.Error().Err(err).Msg("encode a response")
		return
	}
	if bytes.Contains(b, []byte(`"inputRequests"`)) {
		b = withInputRequestParams(b)
	}
	s.write(b)
}

// respond encodes the transport's own response to request id and writes
// it; one that does not encode is answered with an error.
func (s *stdio) respond(id json.RawMessage, msg any) {
	b, err := json.Marshal(msg)
	if err != nil {
		s.log.Error().Err(err).Msg("encode a response")
		s.reply(errorMessage(id, mcp.INTERNAL_ERROR, "the server could not encode the result: "+err.Error()))
		return
	}
	s.write(b)
}

// write writes one message and its newline, and flushes; it reports false
// once writing has failed (the client is gone).
func (s *stdio) write(b []byte) bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return false
	}
	if _, err := s.out.Write(b); err != nil {
		s.werr = fmt.Errorf("write stdout: %w", err)
	} else if err := s.out.WriteByte('\n'); err != nil {
		s.werr = fmt.Errorf("write stdout: %w", err)
	} else if err := s.out.Flush(); err != nil {
		s.werr = fmt.Errorf("write stdout: %w", err)
	}
	return s.werr == nil
}

// pumpNotifications writes the notifications mcp-go queues on the session
// (list changes, log messages) until stop closes, then what is left.
func (s *stdio) pumpNotifications(stop <-chan struct{}) {
	notes := s.session.notifications
	send := func(n mcp.JSONRPCNotification) {
		b, err := json.Marshal(n)
		if err != nil {
			s.log.Error().Err(err).Msg("encode a notification")
			return
		}
		s.write(b)
	}
	for {
		select {
		case n := <-notes:
			send(n)
		case <-stop:
			for {
				select {
				case n := <-notes:
					send(n)
				default:
					return
				}
			}
		}
	}
}

// errorMessage is a JSON-RPC error response.
func errorMessage(id json.RawMessage, code int, message string) any {
	if id == nil {
		id = json.RawMessage("null")
	}
	return map[string]any{
		"jsonrpc": mcp.JSONRPC_VERSION,
		"id":      id,
		"error":   map[string]any{"code": code, "message": message},
	}
}

// withInputRequestParams gives every input request of a result an explicit
// "params" object. mcp-go omits params for roots/list (they are optional in
// the protocol), but the official Go SDK (v1.8) fails to decode an input
// request without them.
func withInputRequestParams(b []byte) []byte {
	var msg struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Result  map[string]any  `json:"result"`
	}
	if json.Unmarshal(b, &msg) != nil || msg.Result == nil {
		return b
	}
	reqs, ok := msg.Result["inputRequests"].(map[string]any)
	if !ok {
		return b
	}
	for _, r := range reqs {
		if r, ok := r.(map[string]any); ok && r["params"] == nil {
			r["params"] = map[string]any{}
		}
	}
	out, err := json.Marshal(msg)
	if err != nil {
		return b
	}
	return out
}

// missingPromptArgument says which required argument a prompts/get request
// lacks, if any: an invalid request (-32602), which mcp-go would report as
// its handler's internal error (-32603).
func missingPromptArgument(srv *server.MCPServer, line []byte) string {
	var req struct {
		Params struct {
			Name      string         `json:"name"`
			Arguments map[string]any `json:"arguments"`
		} `json:"params"`
	}
	if json.Unmarshal(line, &req) != nil {
		return ""
	}
	p, ok := srv.ListPrompts()[req.Params.Name]
	if !ok {
		return ""
	}
	for _, a := range p.Prompt.Arguments {
		if v, given := req.Params.Arguments[a.Name]; a.Required && (!given || v == nil || v == "") {
			return fmt.Sprintf("prompt %s needs the argument %q", req.Params.Name, a.Name)
		}
	}
	return ""
}
