//go:build linux

// Package forevervm emulates the ForeverVM cloud API (api.forevervm.com) on
// loopback, running every instruction for real in a machine of the local
// sandbox engine. It speaks the wire protocol closely enough that the
// official SDKs (Rust, JS, Python), the forevervm CLI and forevervm-mcp work
// against it unchanged, so that vmcp's ForeverVM backend can be tested
// without the cloud.
//
// The § numbers in comments refer to the project's ForeverVM API spec
// (forevervm-api.md). Where it marks a behaviour UNVERIFIED, the code follows
// the spec's choice (§8) and says so where it is implemented.
package forevervm

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/local"
)

// Defaults of Options.
const (
	DefaultAccount           = "emulator"
	DefaultMaxTimeoutSeconds = 1200     // Spec §8 #11: clamp timeout_seconds to 1200
	DefaultMaxBodyBytes      = 4 << 20  // requests and WebSocket messages
	DefaultMaxOutputBytes    = 64 << 20 // buffered output of one instruction
)

// Options configure a Server.
type Options struct {
	// Engine runs the machines: each ForeverVM machine is a local Workspace
	// machine. Required. The Server does not close it.
	Engine *local.Engine
	// Token is the one accepted API token, shaped "id.secret" like the real
	// service's (the Rust SDK refuses tokens without a dot). Required.
	Token string
	// Account is the name whoami returns; default "emulator".
	Account string
	// MaxTimeoutSeconds clamps instruction timeouts; default 1200 (spec §8 #11).
	MaxTimeoutSeconds int
	// Limits are the limits of new machines; zero fields take the engine's.
	Limits local.Limits
	// Logger receives the emulator's logs; the zero value logs nothing.
	Logger zerolog.Logger

	// MaxBodyBytes caps request bodies and WebSocket messages; larger ones get
	// 413 PayloadTooLarge. Default 4 MiB.
	MaxBodyBytes int64
	// MaxOutputBytes caps the output kept for one instruction (kept so that
	// stream-result can replay it), a line being gathered included; past it,
	// later output is dropped and one stderr line says so. Default 64 MiB;
	// negative means no cap.
	MaxOutputBytes int64
	// MaxMachines caps the machines an emulator will create (those it finds
	// on disk count); past it, machine/new answers 403 MachineLimitReached.
	// Zero means no cap (spec §8 #11: no quotas by default).
	MaxMachines int
	// AllowNetwork gives new machines the host's network, as the real service
	// allows outbound traffic. Off by default: emulated machines run untrusted
	// test code on this host.
	AllowNetwork bool
}

// Server serves the ForeverVM API. It is an http.Handler meant to be served
// at the root of a host: the Rust SDK drops any path prefix of its base URL.
type Server struct {
	opts Options
	log  zerolog.Logger

	// ctx ends when the Server closes: it bounds long polls, streams,
	// WebSockets and running instructions.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	machines map[string]*machine // by ForeverVM name
	conns    map[*websocket.Conn]struct{}
	accounts map[string]bool // signed-up account names, lower case
	emails   map[string]bool // signed-up emails, lower case
	wg       sync.WaitGroup  // goroutines and WebSocket handlers to wait for in Close
}

// New creates a Server and indexes the machines that earlier emulators left
// in the engine's state directory, so that they survive a restart.
func New(opts Options) (*Server, error) {
	if opts.Engine == nil {
		return nil, errors.New("forevervm emulator: Options.Engine is required")
	}
	if opts.Token == "" {
		return nil, errors.New("forevervm emulator: Options.Token is required (shaped \"id.secret\")")
	}
	if !strings.Contains(opts.Token, ".") {
		// The token is not quoted: it is a secret.
		return nil, errors.New("forevervm emulator: Options.Token must be shaped \"id.secret\" (the Rust SDK rejects tokens without a dot)")
	}
	if opts.Account == "" {
		opts.Account = DefaultAccount
	}
	if opts.MaxTimeoutSeconds <= 0 {
		opts.MaxTimeoutSeconds = DefaultMaxTimeoutSeconds
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxOutputBytes == 0 {
		opts.MaxOutputBytes = DefaultMaxOutputBytes
	}
	s := &Server{
		opts:     opts,
		log:      opts.Logger.With().Str("component", "forevervm-emulator").Logger(),
		machines: make(map[string]*machine),
		conns:    make(map[*websocket.Conn]struct{}),
		accounts: make(map[string]bool),
		emails:   make(map[string]bool),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for _, info := range opts.Engine.Machines() {
		m, ok := s.machineFromInfo(info)
		if !ok {
			continue
		}
		s.machines[m.name] = m
	}
	s.log.Debug().Int("machines", len(s.machines)).Msg("indexed machines")
	return s, nil
}

// Close ends the emulator: it closes WebSockets, ends long polls and
// streams, interrupts running instructions and waits for its goroutines.
// Machines stay on disk, for the next Server on the same engine.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := s.connList()
	s.mu.Unlock()
	s.cancel()
	for _, c := range conns {
		c.CloseNow()
	}
	s.wg.Wait()
	return nil
}

// DropREPLConnections abruptly closes every open REPL WebSocket (TCP close,
// no close frame) without touching the instructions they submitted, which
// keep running; returns how many. For tests of client reconnection.
func (s *Server) DropREPLConnections() int {
	s.mu.Lock()
	conns := s.connList()
	s.mu.Unlock()
	for _, c := range conns {
		// CloseNow closes the TCP connection without a close handshake.
		c.CloseNow()
	}
	return len(conns)
}

// connList copies the open WebSockets; s.mu must be held.
func (s *Server) connList() []*websocket.Conn {
	conns := make([]*websocket.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// track registers a goroutine that Close must wait for; false once closed.
func (s *Server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// requestContext ends when the request does or when the Server closes.
func (s *Server) requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// ServeHTTP routes a request. It normalises the path itself rather than use
// http.ServeMux, whose path cleaning answers "//v1/..." (sent by JS and
// Python clients given a base URL with a trailing slash) with a redirect that
// POST clients do not follow.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		writeError(w, http.StatusServiceUnavailable, "Unavailable", "the emulator is shutting down")
		return
	}
	seg := pathSegments(r.URL.Path)
	route := strings.Join(seg, "/")
	if route == "internal/signup" {
		if allowMethods(w, r, http.MethodPost) {
			s.handleSignup(w, r)
		}
		return
	}
	if len(seg) < 2 || seg[0] != "v1" {
		writeError(w, http.StatusNotFound, "NotFound", "no such endpoint: the API lives under /v1/")
		return
	}
	isREPL := len(seg) == 4 && seg[1] == "machine" && seg[3] == "repl"
	if !s.authorized(r, isREPL) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="forevervm"`)
		writeError(w, http.StatusUnauthorized, "Unauthorized", "send the emulator's token as \"Authorization: Bearer <token>\"")
		return
	}
	switch {
	case route == "v1/whoami":
		if allowMethods(w, r, http.MethodGet) {
			writeJSON(w, map[string]string{"account": s.opts.Account})
		}
	case route == "v1/machine/new":
		if allowMethods(w, r, http.MethodPost) {
			s.handleNew(w, r)
		}
	case route == "v1/machine/list":
		// Python 0.1.35 lists with GET, Rust and JS with POST (spec §2.4).
		if allowMethods(w, r, http.MethodGet, http.MethodPost) {
			s.handleList(w, r)
		}
	case len(seg) == 4 && seg[1] == "machine" && seg[3] == "exec":
		if allowMethods(w, r, http.MethodPost) {
			s.handleExec(w, r, seg[2])
		}
	case len(seg) == 6 && seg[1] == "machine" && seg[3] == "exec" && (seg[5] == "result" || seg[5] == "stream-result"):
		if allowMethods(w, r, http.MethodGet) {
			s.handleResult(w, r, seg[2], seg[4], seg[5] == "stream-result")
		}
	case isREPL:
		if allowMethods(w, r, http.MethodGet) {
			s.handleREPL(w, r, seg[2])
		}
	default:
		writeError(w, http.StatusNotFound, "NotFound", "no such endpoint")
	}
}

// pathSegments splits a URL path, ignoring empty segments: "//v1/whoami/"
// and "/v1/whoami" are the same route.
func pathSegments(p string) []string {
	var seg []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			seg = append(seg, s)
		}
	}
	return seg
}

// allowMethods answers 405 unless the request uses one of methods.
func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use "+strings.Join(methods, " or "))
	return false
}

// authorized checks the token: the Authorization header, or on the REPL
// WebSocket the _forevervm_jwt query parameter that browsers must use.
func (s *Server) authorized(r *http.Request, websocket bool) bool {
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return s.tokenMatches(strings.TrimSpace(tok))
	}
	if !websocket {
		return false
	}
	// The JS SDK appends the token without URL-encoding it (spec §1), so
	// compare the raw value as well as the decoded one.
	for _, kv := range strings.Split(r.URL.RawQuery, "&") {
		if raw, ok := strings.CutPrefix(kv, "_forevervm_jwt="); ok && s.tokenMatches(raw) {
			return true
		}
	}
	return s.tokenMatches(r.URL.Query().Get("_forevervm_jwt"))
}

func (s *Server) tokenMatches(tok string) bool {
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.opts.Token)) == 1
}

// detailHeader carries a human-readable explanation of an error. The body
// must stay exactly {"code","id"} (spec §2.1), so the hint goes here, where
// SDKs ignore it and people using curl -i see it.
const detailHeader = "X-Forevervm-Emulator-Detail"

// writeError answers with the ForeverVM error shape {"code", "id": null}
// (spec §8 #2: id is always null).
func writeError(w http.ResponseWriter, status int, code, detail string) {
	if detail != "" {
		w.Header().Set(detailHeader, detail)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"code":%q,"id":null}`, code)
}

// writeJSON answers 200 with v (spec §8 #1: 200 for every success).
func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "InternalError", "could not encode the response")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}
