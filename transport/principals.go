package transport

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/internal/bigargs"
)

// The hosted endpoint serves many principals from one process; what one of
// them opens, another may not touch, and what one may hold is bounded:
//
//   - MCP session ids (streamable HTTP's Mcp-Session-Id and legacy SSE's
//     sessionId) are minted bound to the principal that opened the session,
//     with an HMAC under a key of this process: a session id presented by
//     another principal is "not found", before mcp-go ever sees it.
//   - Long-lived streams (GET /sse, GET /mcp) count against the principal's
//     stream limit.
//   - A legacy SSE message (POST /message) is answered 202 at once and runs
//     in the background; a tool call so started holds a slot of the
//     principal's call limit until it ends, as a streamable HTTP call does
//     for as long as its request is open.

// sessionPrefix starts every session id the endpoint mints.
const sessionPrefix = "mcp-session-"

// binder mints session ids bound to a principal.
type binder struct {
	key [32]byte
}

func newBinder() *binder {
	b := &binder{}
	rand.Read(b.key[:])
	return b
}

func (b *binder) mac(principal, nonce string) string {
	m := hmac.New(sha256.New, b.key[:])
	m.Write([]byte(principal))
	m.Write([]byte{0})
	m.Write([]byte(nonce))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// mint makes a new session id of principal.
func (b *binder) mint(principal string) string {
	n := make([]byte, 16)
	rand.Read(n)
	nonce := hex.EncodeToString(n)
	return sessionPrefix + nonce + "-" + b.mac(principal, nonce)
}

// owns reports whether id was minted for principal.
func (b *binder) owns(id, principal string) bool {
	rest, ok := strings.CutPrefix(id, sessionPrefix)
	if !ok {
		return false
	}
	nonce, mac, ok := strings.Cut(rest, "-")
	return ok && len(nonce) == 32 && hmac.Equal([]byte(mac), []byte(b.mac(principal, nonce)))
}

// sessionIDs is the streamable HTTP server's session id manager: ids of the
// principal of the request at hand.
type sessionIDs struct {
	b         *binder
	principal func(context.Context) string
}

// ResolveSessionIdManager implements server.SessionIdManagerResolver.
func (s sessionIDs) ResolveSessionIdManager(r *http.Request) server.SessionIdManager {
	p := ""
	if r != nil {
		p = s.principal(r.Context())
	}
	return boundIDs{b: s.b, principal: p, sweeper: r == nil}
}

// boundIDs manages the session ids of one principal.
type boundIDs struct {
	b         *binder
	principal string
	sweeper   bool // no request: mcp-go's idle session sweeper
}

func (m boundIDs) Generate() string { return m.b.mint(m.principal) }

func (m boundIDs) Validate(id string) (bool, error) {
	if m.sweeper || m.b.owns(id, m.principal) {
		return false, nil
	}
	return false, fmt.Errorf("session not found")
}

func (m boundIDs) Terminate(id string) (bool, error) {
	_, err := m.Validate(id)
	return false, err
}

// counter counts what each principal holds (calls in flight, open streams)
// against a limit.
type counter struct {
	max  int
	what string // for the refusal, e.g. "calls in flight"
	mu   sync.Mutex
	held map[string]int
}

func newCounter(max int, what string) *counter {
	return &counter{max: max, what: what, held: map[string]int{}}
}

// acquire takes one for principal; release gives it back (once, whatever
// calls it). ok is false at the limit.
func (c *counter) acquire(principal string) (release func(), ok bool) {
	if c.max <= 0 {
		return func() {}, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held[principal] >= c.max {
		return nil, false
	}
	c.held[principal]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if c.held[principal]--; c.held[principal] <= 0 {
				delete(c.held, principal)
			}
			c.mu.Unlock()
		})
	}, true
}

// refuse answers a request past the limit.
func (c *counter) refuse(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, fmt.Sprintf("too many %s for this principal (limit %d); retry when one ends", c.what, c.max), http.StatusTooManyRequests)
}

// slotKey holds, in a legacy SSE message's context, the release of the call
// slot it holds.
type slotKey struct{}

// releaseSlotWhenDone is an OnRequestInitialization hook: the request's
// context (the background one of a legacy SSE message) ends when its
// handling does, and then the slot it holds is given back.
func releaseSlotWhenDone(ctx context.Context, _ any, _ any) error {
	if release, ok := ctx.Value(slotKey{}).(func()); ok {
		context.AfterFunc(ctx, release)
	}
	return nil
}

// isToolCall reports whether body is a JSON-RPC request (not a notification
// nor a response) to call a tool: what mcp-go hands to a tool's handler.
func isToolCall(body []byte) bool {
	var m struct {
		JSONRPC string          `json:"jsonrpc"`
		Method  string          `json:"method"`
		ID      json.RawMessage `json:"id"`
	}
	if json.Unmarshal(body, &m) != nil {
		return false
	}
	return m.JSONRPC == "2.0" && m.Method == "tools/call" && len(m.ID) > 0 && string(m.ID) != "null"
}

// readBody reads a request body (bounded by MaxBytesHandler upstream) and
// puts it back for the next handler.
func readBody(r *http.Request) ([]byte, error) {
	var b []byte
	var err error
	if n := r.ContentLength; n > 0 { // at most MaxRequestBytes (limitBody)
		b = make([]byte, n) // one allocation, where ReadAll would grow by copying
		var got int
		got, err = io.ReadFull(r.Body, b)
		b = b[:got]
	} else {
		b, err = io.ReadAll(r.Body)
	}
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, err
}

// guard applies the per-principal rules to the endpoint's handlers; the
// principal is in the request's context (authentication runs first).
type guard struct {
	ids            *binder
	principal      func(context.Context) string
	calls, streams *counter
	bodies         *budget // bytes of request bodies in flight
	// large reports the tool arguments to set aside from the MCP
	// library's decoding (nil: none).
	large func(tool, argument string) bool
	srv   *server.MCPServer // whose prompts' arguments are checked
	// toSSE sends a message on a legacy SSE session's stream, where the
	// answers to its POSTs go.
	toSSE func(sessionID string, message any) error
}

// budget bounds the bytes each principal's requests in flight hold: a
// request body is held (and copied, by the MCP library's decoding) until
// its call ends.
type budget struct {
	max  int64
	mu   sync.Mutex
	held map[string]int64
}

func newBudget(max int64) *budget { return &budget{max: max, held: map[string]int64{}} }

// take reserves n bytes for principal; release gives them back (once).
func (b *budget) take(principal string, n int64) (release func(), ok bool) {
	if b.max <= 0 {
		return func() {}, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held[principal]+n > b.max && b.held[principal] > 0 {
		return nil, false
	}
	b.held[principal] += n
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			if b.held[principal] -= n; b.held[principal] <= 0 {
				delete(b.held, principal)
			}
			b.mu.Unlock()
		})
	}, true
}

func (b *budget) refuse(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, fmt.Sprintf("too much request data in flight for this principal (at most %d MiB at once, --max-inflight-request-mb); retry when a call ends", b.max>>20), http.StatusTooManyRequests)
}

// holdBody reads the request's body within the principal's budget and puts
// it back for the next handler; release gives the bytes back.
func (g *guard) holdBody(w http.ResponseWriter, r *http.Request, p string) (body []byte, release func(), ok bool) {
	n := r.ContentLength
	if n < 0 {
		n = 0 // chunked: counted once read
	}
	release, ok = g.bodies.take(p, n)
	if !ok {
		g.bodies.refuse(w)
		return nil, nil, false
	}
	body, err := readBody(r)
	if err != nil {
		release()
		http.Error(w, "read the request: "+err.Error(), http.StatusBadRequest)
		return nil, nil, false
	}
	if extra := int64(len(body)) - n; extra > 0 {
		more, ok := g.bodies.take(p, extra)
		if !ok {
			release()
			g.bodies.refuse(w)
			return nil, nil, false
		}
		first := release
		release = func() { first(); more() }
	}
	return body, release, true
}

// setAside hands the next handler the body with its large arguments set
// aside (package bigargs); drop forgets them, once the call has ended.
func (g *guard) setAside(r *http.Request, body []byte) (drop func()) {
	if g.large == nil {
		return func() {}
	}
	small, drop, ok := bigargs.SetAside(body, g.large)
	if !ok {
		return func() {}
	}
	r.Body = io.NopCloser(bytes.NewReader(small))
	r.ContentLength = int64(len(small))
	return drop
}

// meterBody takes the request's body from the principal's budget without
// reading it, when its length is declared (the MCP library reads it); a
// body of unknown length is read here, within the budget.
func (g *guard) meterBody(w http.ResponseWriter, r *http.Request, p string) (release func(), ok bool) {
	if r.ContentLength < 0 {
		_, release, ok = g.holdBody(w, r, p)
		return release, ok
	}
	release, ok = g.bodies.take(p, r.ContentLength)
	if !ok {
		g.bodies.refuse(w)
	}
	return release, ok
}

// notFound answers a session id that is not the caller's, worded as one
// that does not exist.
func notFound(w http.ResponseWriter) {
	http.Error(w, "session not found: start a new one (initialize)", http.StatusNotFound)
}

// streamable guards /mcp: the session must be the caller's; a GET is a
// stream, anything else a request that holds a call slot while it is open.
func (g *guard) streamable(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := g.principal(r.Context())
		if id := r.Header.Get("Mcp-Session-Id"); id != "" && !g.ids.owns(id, p) {
			notFound(w)
			return
		}
		c := g.calls
		if r.Method == http.MethodGet {
			c = g.streams
		}
		release, ok := c.acquire(p)
		if !ok {
			c.refuse(w)
			return
		}
		defer release()
		if r.Method == http.MethodPost {
			if g.large != nil && (r.ContentLength < 0 || r.ContentLength >= bigargs.MinSize) {
				body, releaseBody, ok := g.holdBody(w, r, p)
				if !ok {
					return
				}
				defer releaseBody()
				// mcp-go handles a POST before ServeHTTP returns.
				defer g.setAside(r, body)()
			} else {
				releaseBody, ok := g.meterBody(w, r, p)
				if !ok {
					return
				}
				defer releaseBody()
				if g.badPrompt(w, r) {
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// stream guards GET /sse: a stream.
func (g *guard) stream(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		release, ok := g.streams.acquire(g.principal(r.Context()))
		if !ok {
			g.streams.refuse(w)
			return
		}
		defer release()
		next.ServeHTTP(w, r)
	})
}

// message guards POST /message: the session must be the caller's, and a
// tool call holds a call slot until it ends (releaseSlotWhenDone), long
// after the 202 that answers the request.
func (g *guard) message(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := g.principal(r.Context())
		if !g.ids.owns(r.URL.Query().Get("sessionId"), p) {
			notFound(w)
			return
		}
		body, releaseBody, ok := g.holdBody(w, r, p)
		if !ok {
			return
		}
		if !isToolCall(body) {
			defer releaseBody()
			if id, msg := g.promptError(body); msg != "" && g.toSSE != nil {
				if err := g.toSSE(r.URL.Query().Get("sessionId"), errorMessage(id, mcp.INVALID_PARAMS, msg)); err == nil {
					w.WriteHeader(http.StatusAccepted)
					return
				}
			}
			next.ServeHTTP(w, r)
			return
		}
		releaseCall, ok := g.calls.acquire(p)
		if !ok {
			releaseBody()
			g.calls.refuse(w)
			return
		}
		// The message is held until its call ends, in the background.
		drop := g.setAside(r, body)
		release := func() { releaseCall(); drop(); releaseBody() }
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), slotKey{}, release)))
		if sw.status != http.StatusAccepted {
			release() // refused before it ran: nothing will give the slot back
		}
	})
}

// statusWriter remembers the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Flush passes flushes on, for streams.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// badPrompt answers a prompts/get request that lacks a required argument
// with -32602, as the stdio transport does (mcp-go would answer -32603),
// and reports whether it did. Other small bodies are put back as read.
func (g *guard) badPrompt(w http.ResponseWriter, r *http.Request) bool {
	if g.srv == nil || r.ContentLength < 0 {
		return false
	}
	body, err := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return false
	}
	id, msg := g.promptError(body)
	if msg == "" {
		return false
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(errorMessage(id, mcp.INVALID_PARAMS, msg))
	return true
}

// promptError is the -32602 message for a prompts/get request that lacks a
// required argument, with the request's id; "" for any other body.
func (g *guard) promptError(body []byte) (id json.RawMessage, msg string) {
	if g.srv == nil || !bytes.Contains(body, []byte(`"prompts/get"`)) {
		return nil, ""
	}
	var m struct {
		Method string          `json:"method"`
		ID     json.RawMessage `json:"id"`
	}
	if json.Unmarshal(body, &m) != nil || m.Method != string(mcp.MethodPromptsGet) {
		return nil, ""
	}
	return m.ID, missingPromptArgument(g.srv, body)
}
