package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"
)

// HTTPOptions configure the hosted endpoint.
type HTTPOptions struct {
	// Listener, if set, is where to serve, instead of listening on Addr;
	// ServeHTTP closes it.
	Listener net.Listener
	// Addr is the listen address, e.g. 127.0.0.1:8080.
	Addr string
	// Authenticate, if set, wraps every MCP request: it answers 401 itself
	// or passes the request on with the caller's principal in its context.
	Authenticate func(http.Handler) http.Handler
	// Principal reads the principal Authenticate put in a request's
	// context; it keys the per-principal limit on concurrent calls.
	Principal func(context.Context) string
	// WithPrincipal puts the principal into the context the tools see.
	WithPrincipal func(ctx context.Context, principal string) context.Context
	// AllowedOrigins are the browser origins allowed to call (an Origin
	// header naming another is refused with 403). Requests without Origin
	// (non-browser clients) are allowed.
	AllowedOrigins []string
	// MaxRequestBytes bounds a request body; default 16 MiB.
	MaxRequestBytes int64
	// MaxConcurrentPerPrincipal bounds one principal's requests in flight,
	// legacy SSE tool calls included for as long as they run (0: no limit);
	// past it, 429.
	MaxConcurrentPerPrincipal int
	// MaxStreamsPerPrincipal bounds one principal's open streams (GET /sse,
	// GET /mcp) (0: no limit); past it, 429.
	MaxStreamsPerPrincipal int
	// MaxInFlightBytesPerPrincipal bounds the request bodies one
	// principal's calls in flight hold (0: no limit); past it, 429.
	MaxInFlightBytesPerPrincipal int64
	// LargeArgument reports the arguments of a tool that the transport
	// sets aside from the MCP library's decoding when they are large, for
	// the tool to read from the request itself (package bigargs); nil:
	// none.
	LargeArgument func(tool, argument string) bool
	// Metrics, Metadata and Healthz are served at /metrics,
	// /.well-known/oauth-protected-resource and /healthz when set; /metrics
	// behind authentication, as the MCP endpoints (serve it on a listener
	// of its own, without, with ServeMetrics).
	Metrics, Metadata, Healthz http.Handler
	// ShutdownTimeout bounds the drain of calls in flight; default 30 s.
	ShutdownTimeout time.Duration
	Logger          zerolog.Logger
}

// HTTP paths of the endpoint.
const (
	PathMCP     = "/mcp"     // streamable HTTP
	PathSSE     = "/sse"     // legacy SSE stream
	PathMessage = "/message" // legacy SSE messages
)

// limitBody refuses a request whose declared length is past max before
// reading it, and bounds what is read of one whose length is not declared.
func limitBody(next http.Handler, max int64) http.Handler {
	limited := http.MaxBytesHandler(next, max)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > max {
			http.Error(w, fmt.Sprintf("request body of %d MiB: at most %d MiB (--max-request-mb): split a large file into pieces (upload_file each, join them with exec_command cat)", r.ContentLength>>20, max>>20), http.StatusRequestEntityTooLarge)
			return
		}
		limited.ServeHTTP(w, r)
	})
}

// NewHTTPHandler serves srv over streamable HTTP at /mcp and legacy SSE at
// /sse and /message, behind the origin check, the size limit,
// authentication and the per-principal limit; plus /healthz, /metrics and
// the protected-resource metadata. shutdown ends the MCP sessions.
func NewHTTPHandler(srv *server.MCPServer, opts HTTPOptions) (h http.Handler, shutdown func(context.Context) error) {
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = 16 << 20
	}
	principalOf := opts.Principal
	if principalOf == nil {
		principalOf = func(context.Context) string { return "" }
	}
	ids := newBinder()
	g := &guard{ids: ids, principal: principalOf, srv: srv,
		calls:   newCounter(opts.MaxConcurrentPerPrincipal, "requests in flight"),
		streams: newCounter(opts.MaxStreamsPerPrincipal, "open streams"),
		bodies:  newBudget(opts.MaxInFlightBytesPerPrincipal),
		large:   opts.LargeArgument}
	if hooks := srv.GetHooks(); hooks != nil {
		hooks.AddOnRequestInitialization(releaseSlotWhenDone)
	}
	principalCtx := func(ctx context.Context, r *http.Request) context.Context {
		if opts.Principal != nil && opts.WithPrincipal != nil {
			if p := opts.Principal(r.Context()); p != "" {
				return opts.WithPrincipal(ctx, p)
			}
		}
		return ctx
	}
	streamable := server.NewStreamableHTTPServer(srv,
		server.WithEndpointPath(PathMCP),
		server.WithHTTPContextFunc(principalCtx),
		server.WithHeartbeatInterval(30*time.Second),
		server.WithSessionIdManagerResolver(sessionIDs{b: ids, principal: principalOf}),
	)
	sse := server.NewSSEServer(srv,
		server.WithSSEEndpoint(PathSSE),
		server.WithMessageEndpoint(PathMessage),
		server.WithSSEContextFunc(principalCtx),
		server.WithKeepAlive(true),
		server.WithSessionIDGenerator(func(_ context.Context, r *http.Request) (string, error) {
			return ids.mint(principalOf(r.Context())), nil
		}),
	)
	g.toSSE = sse.SendEventToSession
	protect := func(next http.Handler) http.Handler {
		if opts.Authenticate != nil {
			next = opts.Authenticate(next)
		}
		return checkOrigin(opts.AllowedOrigins, limitBody(next, opts.MaxRequestBytes))
	}
	mux := http.NewServeMux()
	mux.Handle(PathMCP, protect(g.streamable(withInputParams(streamable))))
	mux.Handle(PathSSE, protect(g.stream(withInputParams(sse.SSEHandler()))))
	mux.Handle(PathMessage, protect(g.message(withInputParams(sse.MessageHandler()))))
	healthz := opts.Healthz
	if healthz == nil {
		healthz = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"status":"ok"}`))
		})
	}
	mux.Handle("GET /healthz", healthz)
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", protect(opts.Metrics))
	}
	if opts.Metadata != nil {
		mux.Handle("GET /.well-known/oauth-protected-resource", opts.Metadata)
		mux.Handle("GET /.well-known/oauth-protected-resource/", opts.Metadata)
	}
	shutdown = func(ctx context.Context) error {
		return errors.Join(streamable.Shutdown(ctx), sse.Shutdown(ctx))
	}
	return mux, shutdown
}

// ServeHTTP listens on opts.Addr (or takes opts.Listener) and serves srv until ctx ends, then drains
// the requests in flight (up to opts.ShutdownTimeout). ready, if set,
// learns the address once it listens.
func ServeHTTP(ctx context.Context, srv *server.MCPServer, opts HTTPOptions, ready func(addr net.Addr)) error {
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 30 * time.Second
	}
	handler, shutdownMCP := NewHTTPHandler(srv, opts)
	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", opts.Addr); err != nil {
			return fmt.Errorf("listen on %s: %w", opts.Addr, err)
		}
	}
	if ready != nil {
		ready(ln.Addr())
	}
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	failed := make(chan error, 1)
	go func() { failed <- hs.Serve(ln) }()
	select {
	case err := <-failed:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), opts.ShutdownTimeout)
	defer cancel()
	// Stop taking requests and let those in flight finish, while ending the
	// long-lived MCP streams that Shutdown would otherwise wait for.
	done := make(chan error, 1)
	go func() { done <- hs.Shutdown(sctx) }()
	mcpErr := shutdownMCP(sctx)
	if err := <-done; err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if mcpErr != nil && !errors.Is(mcpErr, context.DeadlineExceeded) {
		opts.Logger.Warn().Err(mcpErr).Msg("closing MCP sessions")
	}
	return nil
}

// ServeMetrics serves metrics at /metrics on addr, without authentication,
// until ctx ends: for a scraper on a private network, apart from the
// public endpoint.
func ServeMetrics(ctx context.Context, addr string, metrics http.Handler, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s for metrics: %w", addr, err)
	}
	if ready != nil {
		ready(ln.Addr())
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// checkOrigin refuses browser requests from origins not allowed: a web page
// must not drive a server the browser can reach (DNS rebinding included).
// Allowed origins get CORS headers, and their preflight requests are
// answered here: a preflight carries no credentials, so it must not reach
// authentication.
func checkOrigin(allowed []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		listed := origin != "" && slices.Contains(allowed, origin)
		if origin != "" && !listed && !sameOrigin(origin, r) {
			http.Error(w, "origin "+origin+" is not allowed (the server's --allowed-origins)", http.StatusForbidden)
			return
		}
		if listed {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			h.Set("Access-Control-Expose-Headers", "Mcp-Session-Id, WWW-Authenticate")
			if r.Method == http.MethodOptions {
				h.Set("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// sameOrigin reports whether origin is the request's own host.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}
