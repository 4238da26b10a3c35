package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/auth"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/sessions"
	"github.com/vmcp-dev/vmcp/tools"
	"github.com/vmcp-dev/vmcp/transport"
)

// httpConfig is the hosted endpoint's configuration.
type httpConfig struct {
	transport      string // stdio or http
	listen         string
	allowedOrigins []string
	maxConcurrent  int
	maxStreams     int
	maxRequestMB   int
	maxInFlightMB  int
	metricsListen  string
	enableLocal    bool   // the local backend over http (off by default)
	sessionStore   string // "" (bbolt in the state dir) or redis://...
	insecureNoAuth bool
	auth           auth.Config
	credentials    map[string]credentials // principal → its own backend credentials
	postParse      func()                 // fills the fields that come from list flags
	credsFile      *string
}

// credentials are backend credentials a principal brings.
type credentials struct {
	ForeverVMToken string `json:"forevervm_token,omitempty"`
	FastVMAPIKey   string `json:"fastvm_api_key,omitempty"`
}

// readCredentials reads the principals' credentials file. It must not be
// readable by others: it holds their secrets.
func readCredentials(path string) (map[string]credentials, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--principal-credentials: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("--principal-credentials %s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--principal-credentials: %w", err)
	}
	var creds map[string]credentials
	if err := json.Unmarshal(b, &creds); err != nil {
		// The decoder's error may quote the file; say where, not what.
		return nil, fmt.Errorf("--principal-credentials %s is not a JSON object of principal → {forevervm_token, fastvm_api_key}", path)
	}
	return creds, nil
}

// httpFlags declares the hosted endpoint's flags.
func httpFlags(fs *flag.FlagSet, envOr func(key, def string) string) *httpConfig {
	hc := &httpConfig{}
	fs.StringVar(&hc.transport, "transport", envOr("VMCP_TRANSPORT", "stdio"), "stdio, or http: streamable HTTP at /mcp and legacy SSE at /sse + /message (env VMCP_TRANSPORT)")
	fs.StringVar(&hc.listen, "listen", envOr("VMCP_LISTEN", "127.0.0.1:8080"), "address of the http transport (env VMCP_LISTEN)")
	origins := fs.String("allowed-origins", envOr("VMCP_ALLOWED_ORIGINS", ""), "comma-separated browser origins allowed to call over http; requests with another Origin get 403 (env VMCP_ALLOWED_ORIGINS)")
	fs.IntVar(&hc.maxConcurrent, "max-concurrent-calls", atoiOr(envOr("VMCP_MAX_CONCURRENT_CALLS", ""), 16), "requests one principal may have in flight over http; 0: no limit (env VMCP_MAX_CONCURRENT_CALLS)")
	fs.IntVar(&hc.maxStreams, "max-streams", atoiOr(envOr("VMCP_MAX_STREAMS", ""), 16), "open streams (GET /sse, GET /mcp) one principal may hold over http; 0: no limit (env VMCP_MAX_STREAMS)")
	fs.StringVar(&hc.metricsListen, "metrics-listen", envOr("VMCP_METRICS_LISTEN", ""), "serve Prometheus /metrics on this address without authentication (e.g. a private 127.0.0.1:9090); without it, /metrics is on --listen behind the same authentication as /mcp (env VMCP_METRICS_LISTEN)")
	fs.IntVar(&hc.maxInFlightMB, "max-inflight-request-mb", atoiOr(envOr("VMCP_MAX_INFLIGHT_REQUEST_MB", ""), 64), "request data one principal's calls in flight may hold over http, in MiB; past it, 429; 0: no limit (env VMCP_MAX_INFLIGHT_REQUEST_MB)")
	fs.IntVar(&hc.maxRequestMB, "max-request-mb", atoiOr(envOr("VMCP_MAX_REQUEST_MB", ""), 16), "largest request body over http, in MiB (env VMCP_MAX_REQUEST_MB)")
	fs.BoolVar(&hc.enableLocal, "enable-local-backend", envOr("VMCP_ENABLE_LOCAL_BACKEND", "") == "1", "over http, also run machines on this host (off by default: a hosted endpoint uses cloud backends) (env VMCP_ENABLE_LOCAL_BACKEND=1)")
	fs.StringVar(&hc.sessionStore, "session-store", envOr("VMCP_SESSION_STORE", ""), "where conversations live: empty for a file in the state dir, or redis://[:password@]host:port/db to share them between replicas (env VMCP_SESSION_STORE)")
	fs.BoolVar(&hc.insecureNoAuth, "insecure-no-auth", envOr("VMCP_INSECURE_NO_AUTH", "") == "1", "serve http without authentication, every caller one principal: for local testing only (env VMCP_INSECURE_NO_AUTH=1)")
	fs.StringVar(&hc.auth.TokensFile, "tokens-file", envOr("VMCP_TOKENS_FILE", ""), "file of 'principal sha256:HEX' lines: bearer tokens (hashed) and who they are; make one with 'mcp-server token new PRINCIPAL' (env VMCP_TOKENS_FILE)")
	fs.StringVar(&hc.auth.JWKSURL, "jwks-url", envOr("VMCP_JWKS_URL", ""), "JWKS of the authorization server whose JWT access tokens are accepted (env VMCP_JWKS_URL)")
	fs.StringVar(&hc.auth.Issuer, "jwt-issuer", envOr("VMCP_JWT_ISSUER", ""), "required iss of JWT access tokens (env VMCP_JWT_ISSUER)")
	fs.StringVar(&hc.auth.ResourceURL, "public-url", envOr("VMCP_PUBLIC_URL", ""), "this server's public URL, e.g. https://mcp.example.com/mcp: the audience of JWTs and the resource of its metadata (env VMCP_PUBLIC_URL)")
	credsFile := fs.String("principal-credentials", envOr("VMCP_PRINCIPAL_CREDENTIALS", ""), "JSON file of principals' own backend credentials: {\"alice\": {\"forevervm_token\": \"...\", \"fastvm_api_key\": \"...\"}}; their calls use them instead of the server's (env VMCP_PRINCIPAL_CREDENTIALS)")
	servers := fs.String("authorization-server", envOr("VMCP_AUTHORIZATION_SERVERS", ""), "comma-separated OAuth authorization servers to publish in the protected-resource metadata (env VMCP_AUTHORIZATION_SERVERS)")
	hc.credsFile = credsFile
	hc.postParse = func() {
		hc.allowedOrigins = splitList(*origins)
		hc.auth.AuthorizationServers = splitList(*servers)
		hc.auth.Audience = hc.auth.ResourceURL
	}
	return hc
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func atoiOr(s string, def int) int {
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

// check validates the hosted endpoint's settings after parsing.
func (hc *httpConfig) check() error {
	hc.postParse()
	switch hc.transport {
	case "stdio":
		return nil
	case "http":
	default:
		return fmt.Errorf("--transport %q: want stdio or http", hc.transport)
	}
	if hc.credsFile != nil && *hc.credsFile != "" {
		creds, err := readCredentials(*hc.credsFile)
		if err != nil {
			return err
		}
		hc.credentials = creds
	}
	if hc.maxConcurrent < 0 || hc.maxStreams < 0 || hc.maxInFlightMB < 0 || hc.maxRequestMB <= 0 {
		return errors.New("--max-concurrent-calls, --max-streams and --max-inflight-request-mb take a whole number (0: no limit), --max-request-mb a positive one")
	}
	hasAuth := hc.auth.TokensFile != "" || hc.auth.JWKSURL != ""
	if !hasAuth && !hc.insecureNoAuth {
		return errors.New("--transport http needs authentication: --tokens-file and/or --jwks-url with --public-url (or --insecure-no-auth for local testing)")
	}
	if hc.auth.JWKSURL != "" && hc.auth.ResourceURL == "" {
		return errors.New("--jwks-url needs --public-url: JWTs must be issued for this server (their audience)")
	}
	return nil
}

// openStore opens the conversation store: bbolt in the state dir, or Redis.
func openStore(url, stateDir string) (sessions.Store, error) {
	if url == "" {
		return sessions.OpenBolt(filepath.Join(stateDir, "sessions.db"))
	}
	if !strings.HasPrefix(url, "redis://") && !strings.HasPrefix(url, "rediss://") {
		return nil, fmt.Errorf("--session-store %q: want redis://host:port/db or nothing", url)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return sessions.OpenRedis(ctx, url, sessions.RedisOptions{})
}

// metrics are the Prometheus metrics of the server.
type metrics struct {
	registry *prometheus.Registry
	calls    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(m *sessions.Manager) *metrics {
	reg := prometheus.NewRegistry()
	x := &metrics{
		registry: reg,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmcp_tool_calls_total", Help: "Tool calls by tool, backend of the machine used, and outcome (ok, tool_error, error).",
		}, []string{"tool", "backend", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vmcp_tool_call_seconds", Help: "Tool call latency by tool and backend.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"tool", "backend"}),
	}
	machines := prometheus.NewDesc("vmcp_machines", "Machines owned by conversations, by backend and state (live or parked).", []string{"backend", "state"}, nil)
	reg.MustRegister(x.calls, x.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectorFunc{desc: machines, collect: func(ch chan<- prometheus.Metric) {
			counts := map[[2]string]int{}
			all, _ := m.Store().All(context.Background())
			for _, c := range all {
				for _, mc := range c.Machines {
					state := "live"
					if mc.Parked != nil {
						state = "parked"
					}
					counts[[2]string{mc.Backend, state}]++
				}
			}
			for k, n := range counts {
				ch <- prometheus.MustNewConstMetric(machines, prometheus.GaugeValue, float64(n), k[0], k[1])
			}
		}})
	return x
}

func (x *metrics) observe(tool, backend, outcome string, d time.Duration) {
	x.calls.WithLabelValues(tool, backend, outcome).Inc()
	x.latency.WithLabelValues(tool, backend).Observe(d.Seconds())
}

// collectorFunc is a collector of metrics computed at scrape time.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

// serveHTTP serves the hosted endpoint until ctx ends: on ln, if not nil
// (else it listens on hc.listen); mark, if not nil, marks each call's
// context (see tools.Service.HostedEndpoint).
func serveHTTP(ctx context.Context, hc httpConfig, srv *server.MCPServer, x *metrics, log zerolog.Logger, ln net.Listener, mark func(context.Context) context.Context) error {
	withPrincipal := principal.With
	if mark != nil {
		withPrincipal = func(ctx context.Context, p string) context.Context { return mark(principal.With(ctx, p)) }
	}
	opts := transport.HTTPOptions{
		Listener:                     ln,
		Addr:                         hc.listen,
		AllowedOrigins:               hc.allowedOrigins,
		MaxRequestBytes:              int64(hc.maxRequestMB) << 20,
		MaxConcurrentPerPrincipal:    hc.maxConcurrent,
		MaxStreamsPerPrincipal:       hc.maxStreams,
		MaxInFlightBytesPerPrincipal: int64(hc.maxInFlightMB) << 20,
		LargeArgument:                tools.IsTextArgument,
		Principal:                    principal.From,
		WithPrincipal:                withPrincipal,
		Logger:                       log,
	}
	if c := local.Container(); c != "" && ln == nil && loopbackOnly(hc.listen) {
		log.Warn().Msgf("listening on %s inside a %s container: a published port (-p) cannot reach it; pass --listen 0.0.0.0:8080", hc.listen, c)
	}
	metricsHandler := promhttp.HandlerFor(x.registry, promhttp.HandlerOpts{})
	if hc.metricsListen != "" {
		go func() {
			err := transport.ServeMetrics(ctx, hc.metricsListen, metricsHandler, func(addr net.Addr) {
				log.Info().Str("url", "http://"+addr.String()+"/metrics").Msg("serving metrics without authentication")
			})
			if err != nil {
				log.Error().Err(err).Msg("metrics listener")
			}
		}()
	} else {
		opts.Metrics = metricsHandler
	}
	if hc.insecureNoAuth {
		log.Warn().Msg("serving http WITHOUT AUTHENTICATION (--insecure-no-auth): every caller is the same principal")
		opts.Principal = func(context.Context) string { return "anonymous" }
	} else {
		hc.auth.Logger = log
		a, err := auth.New(hc.auth)
		if err != nil {
			return err
		}
		defer a.Close()
		opts.Authenticate = a.Middleware
		opts.Metadata = a.MetadataHandler()
	}
	return transport.ServeHTTP(ctx, srv, opts, func(addr net.Addr) {
		log.Info().Str("url", "http://"+addr.String()+transport.PathMCP).Msg("listening (streamable HTTP at /mcp, SSE at /sse)")
	})
}

// tokenCommand is "mcp-server token new PRINCIPAL": it prints a new bearer
// token (shown once, never stored) and the line that grants it in the
// --tokens-file.
func tokenCommand(args []string, stdout io.Writer) error {
	if len(args) != 2 || args[0] != "new" {
		return errors.New("usage: mcp-server token new PRINCIPAL (prints a new token and the line to add to the --tokens-file)")
	}
	token := auth.NewToken()
	line, err := auth.TokenLine(args[1], token)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token (give it to the client; it is not stored anywhere): %s\nadd this line to the tokens file:\n%s\n", token, line)
	return nil
}

// loopbackOnly reports whether addr listens on a loopback address only.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
