package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/auth"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
	"github.com/vmcp-dev/vmcp/transport"
)

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

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// openStore opens the conversation store: bbolt in the state dir, or Redis.
func openStore(url, stateDir string) (conversations.Store, error) {
	if url == "" {
		return conversations.OpenBolt(filepath.Join(stateDir, "sessions.db"))
	}
	if !strings.HasPrefix(url, "redis://") && !strings.HasPrefix(url, "rediss://") {
		return nil, fmt.Errorf("--session-store %q: want redis://host:port/db or nothing", url)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return conversations.OpenRedis(ctx, url, conversations.RedisOptions{})
}

// metrics are the Prometheus metrics of the server.
type metrics struct {
	registry *prometheus.Registry
	calls    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(m *conversations.Manager, engine *local.Engine) *metrics {
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
	warmReady := prometheus.NewDesc("vmcp_warm_machines", "Warm local machines ready for new conversations (--warm-machines), and the pool's target.", []string{"state"}, nil)
	warmTaken := prometheus.NewDesc("vmcp_warm_machine_requests_total", "New machines that fit the warm pool: served from it (hit) or started cold because it was empty (miss).", []string{"result"}, nil)
	warmPSS := prometheus.NewDesc("vmcp_warm_machines_pss_bytes", "Proportional set size of the ready warm machines' processes.", nil, nil)
	warmEvicted := prometheus.NewDesc("vmcp_warm_machines_evicted_total", "Warm machines deleted before use because their interpreter ended while they waited.", nil, nil)
	reg.MustRegister(collectorFunc{descs: []*prometheus.Desc{warmReady, warmTaken, warmPSS, warmEvicted}, collect: func(ch chan<- prometheus.Metric) {
		s := engine.WarmStats()
		ch <- prometheus.MustNewConstMetric(warmReady, prometheus.GaugeValue, float64(s.Ready), "ready")
		ch <- prometheus.MustNewConstMetric(warmReady, prometheus.GaugeValue, float64(s.Target), "target")
		ch <- prometheus.MustNewConstMetric(warmTaken, prometheus.CounterValue, float64(s.Hits), "hit")
		ch <- prometheus.MustNewConstMetric(warmTaken, prometheus.CounterValue, float64(s.Misses), "miss")
		ch <- prometheus.MustNewConstMetric(warmPSS, prometheus.GaugeValue, float64(s.PSSBytes))
		ch <- prometheus.MustNewConstMetric(warmEvicted, prometheus.CounterValue, float64(s.Evicted))
	}})
	machines := prometheus.NewDesc("vmcp_machines", "Machines owned by conversations, by backend and state (live or parked).", []string{"backend", "state"}, nil)
	reg.MustRegister(x.calls, x.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectorFunc{descs: []*prometheus.Desc{machines}, collect: func(ch chan<- prometheus.Metric) {
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
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

// serveHTTP serves the hosted endpoint until ctx ends: on ln, if not nil
// (else it listens on hc.Listen); mark, if not nil, marks each call's
// context (see tools.Service.HostedEndpoint).
func serveHTTP(ctx context.Context, hc HTTPConfig, srv *server.MCPServer, x *metrics, log zerolog.Logger, ln net.Listener, mark func(context.Context) context.Context) error {
	withPrincipal := principal.With
	if mark != nil {
		withPrincipal = func(ctx context.Context, p string) context.Context { return mark(principal.With(ctx, p)) }
	}
	opts := transport.HTTPOptions{
		Listener:                     ln,
		Addr:                         hc.Listen,
		AllowedOrigins:               hc.AllowedOrigins,
		MaxRequestBytes:              int64(hc.MaxRequestMB) << 20,
		MaxConcurrentPerPrincipal:    hc.MaxConcurrentCalls,
		MaxStreamsPerPrincipal:       hc.MaxStreams,
		MaxInFlightBytesPerPrincipal: int64(hc.MaxInFlightRequestMB) << 20,
		LargeArgument:                tools.IsTextArgument,
		Principal:                    principal.From,
		WithPrincipal:                withPrincipal,
		Logger:                       log,
	}
	if c := local.Container(); c != "" && ln == nil && loopbackOnly(hc.Listen) {
		log.Warn().Msgf("listening on %s inside a %s container: a published port (-p) cannot reach it; pass --listen 0.0.0.0:8080", hc.Listen, c)
	}
	metricsHandler := promhttp.HandlerFor(x.registry, promhttp.HandlerOpts{})
	if hc.MetricsListen != "" {
		go func() {
			err := transport.ServeMetrics(ctx, hc.MetricsListen, metricsHandler, func(addr net.Addr) {
				log.Info().Str("url", "http://"+addr.String()+"/metrics").Msg("serving metrics without authentication")
			})
			if err != nil {
				log.Error().Err(err).Msg("metrics listener")
			}
		}()
	} else {
		opts.Metrics = metricsHandler
	}
	if hc.InsecureNoAuth {
		log.Warn().Msg("serving http WITHOUT AUTHENTICATION (--insecure-no-auth): every caller is the same principal")
		opts.Principal = func(context.Context) string { return "anonymous" }
	} else {
		ac := hc.Auth()
		ac.Logger = log
		a, err := auth.New(ac)
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
	return err == nil && auth.IsLoopbackHost(host)
}
