package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// errClientGone ends server-to-client requests still waiting when the
// client disconnects.
var errClientGone = errors.New("the MCP client disconnected")

// session is the one client session of a stdio connection. Besides the
// notification channel it remembers what the client said at initialize and
// sends server-to-client requests (roots/list).
type session struct {
	notifications chan mcp.JSONRPCNotification
	initialized   atomic.Bool
	logLevel      atomic.Value // mcp.LoggingLevel
	clientInfo    atomic.Value // mcp.Implementation
	clientCaps    atomic.Value // mcp.ClientCapabilities
	version       atomic.Value // string

	id      string
	send    func([]byte) bool
	nextID  atomic.Int64
	mu      sync.Mutex
	pending map[int64]chan envelope
}

var (
	_ server.SessionWithLogging         = (*session)(nil)
	_ server.SessionWithClientInfo      = (*session)(nil)
	_ server.SessionWithRoots           = (*session)(nil)
	_ server.SessionWithProtocolVersion = (*session)(nil)
)

func newSession(id string, send func([]byte) bool) *session {
	// The channel is large because mcp-go drops a notification rather than
	// block when it is full; progress is rate-limited, so it never fills.
	return &session{id: id, notifications: make(chan mcp.JSONRPCNotification, 1024), send: send, pending: map[int64]chan envelope{}}
}

// StdioSessionPrefix begins the id of every stdio session: a connection
// has exactly one session, named "stdio" or, among several connections
// of one server, "stdio-" and a number.
const StdioSessionPrefix = "stdio"

// SessionID names the session.
func (s *session) SessionID() string { return s.id }

// NotificationChannel is where mcp-go queues notifications to the client.
func (s *session) NotificationChannel() chan<- mcp.JSONRPCNotification { return s.notifications }

// Initialize marks the session ready for notifications.
func (s *session) Initialize() { s.initialized.Store(true) }

// Initialized reports whether the client has initialized.
func (s *session) Initialized() bool { return s.initialized.Load() }

// SetLogLevel records the level the client asked for with logging/setLevel.
func (s *session) SetLogLevel(level mcp.LoggingLevel) { s.logLevel.Store(level) }

// GetLogLevel is the client's logging level (error until it sets one).
func (s *session) GetLogLevel() mcp.LoggingLevel {
	if l, ok := s.logLevel.Load().(mcp.LoggingLevel); ok {
		return l
	}
	return mcp.LoggingLevelError
}

// GetClientInfo is the client's name and version from initialize.
func (s *session) GetClientInfo() mcp.Implementation {
	v, _ := s.clientInfo.Load().(mcp.Implementation)
	return v
}

// SetClientInfo records the client's name and version.
func (s *session) SetClientInfo(info mcp.Implementation) { s.clientInfo.Store(info) }

// GetClientCapabilities are the capabilities the client declared.
func (s *session) GetClientCapabilities() mcp.ClientCapabilities {
	v, _ := s.clientCaps.Load().(mcp.ClientCapabilities)
	return v
}

// SetClientCapabilities records the client's capabilities.
func (s *session) SetClientCapabilities(caps mcp.ClientCapabilities) { s.clientCaps.Store(caps) }

// ProtocolVersion is the version negotiated at initialize ("" before).
func (s *session) ProtocolVersion() string {
	v, _ := s.version.Load().(string)
	return v
}

// SetProtocolVersion records the negotiated protocol version.
func (s *session) SetProtocolVersion(v string) { s.version.Store(v) }

// NotifyNow writes a notification to the client before it returns, so that
// it precedes anything the caller writes next (a progress notification
// precedes its call's result). It fails once the client is gone.
func (s *session) NotifyNow(method string, params map[string]any) error {
	b, err := json.Marshal(map[string]any{"jsonrpc": mcp.JSONRPC_VERSION, "method": method, "params": params})
	if err != nil {
		return err
	}
	if !s.send(b) {
		return errClientGone
	}
	return nil
}

// ListRoots asks the client for its roots (a server-to-client request).
func (s *session) ListRoots(ctx context.Context, _ mcp.ListRootsRequest) (*mcp.ListRootsResult, error) {
	raw, err := s.request(ctx, string(mcp.MethodListRoots))
	if err != nil {
		return nil, err
	}
	var res mcp.ListRootsResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("the client's roots/list answer is not valid: %w", err)
	}
	return &res, nil
}

// request sends a request without parameters to the client and waits for
// its result.
func (s *session) request(ctx context.Context, method string) (json.RawMessage, error) {
	id := s.nextID.Add(1)
	ch := make(chan envelope, 1)
	s.mu.Lock()
	if s.pending == nil {
		s.mu.Unlock()
		return nil, errClientGone
	}
	s.pending[id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}()
	msg, _ := json.Marshal(map[string]any{"jsonrpc": mcp.JSONRPC_VERSION, "id": id, "method": method, "params": map[string]any{}})
	if !s.send(msg) {
		return nil, errClientGone
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case env, ok := <-ch:
		if !ok {
			return nil, errClientGone
		}
		if env.Error != nil {
			return nil, fmt.Errorf("the client answered %s with error %d: %s", method, env.Error.Code, env.Error.Message)
		}
		return env.Result, nil
	}
}

// resolve delivers a client's response to the request waiting for it.
func (s *session) resolve(env envelope) {
	id, err := strconv.ParseInt(string(env.ID), 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock() // held while sending: cancelPending closes channels under it
	if ch := s.pending[id]; ch != nil {
		select {
		case ch <- env:
		default:
		}
	}
}

// cancelPending ends every request still waiting for the client.
func (s *session) cancelPending() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, ch := range s.pending {
		close(ch)
		delete(s.pending, id)
	}
	s.pending = nil
}
