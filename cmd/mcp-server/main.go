// Command mcp-server is vmcp's MCP server over stdio: it gives AI agents
// persistent sandboxed machines with Python, commands, files and snapshots.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmbackend "github.com/vmcp-dev/vmcp/backend/fastvm"
	forevervmbackend "github.com/vmcp-dev/vmcp/backend/forevervm"
	localbackend "github.com/vmcp-dev/vmcp/backend/local"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/pipeio"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
	"github.com/vmcp-dev/vmcp/transport"
)

// version is set at build time with -ldflags "-X main.version=..." (the
// Makefile gives `git describe`); a plain go build reports the commit.
var version = ""

func init() {
	if version != "" {
		return
	}
	version = "dev"
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision" && len(s.Value) >= 7:
			rev = s.Value[:7]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "-dirty"
		}
	}
	if rev != "" {
		version = rev + dirty
	}
}

func main() {
	local.RunHelperIfRequested()
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if errors.Is(err, errReported) {
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "mcp-server:", err)
		os.Exit(1)
	}
}

// backends builds the configured backends, the preferred one first, and
// the backends of each principal that brought credentials of its own.
func backends(cfg Config, engine *local.Engine, log zerolog.Logger) (server []backend.Backend, perPrincipal func(string) []backend.Backend, closeAll func()) {
	// Stdio clients (the user running the server, front ends of an http
	// server's state directory included) always have the local backend;
	// the hosted endpoint's principals only when enabled.
	localBackend := localbackend.New(engine)
	localBackend.DefaultNetwork = cfg.Network.Tools().Default
	var shared backend.Backend
	if cfg.HTTP.Transport != "http" || cfg.HTTP.EnableLocalBackend {
		shared = localBackend
	}
	var mu sync.Mutex
	var closers []func() error
	build := func(c credentials) []backend.Backend {
		var all []backend.Backend
		// auto: FastVM (full machines) first, then ForeverVM, then local.
		if c.FastVMAPIKey != "" {
			cl := fastvmclient.New(c.FastVMAPIKey, fastvmclient.WithBaseURL(cfg.FastVM.URL), fastvmclient.WithLogger(log.With().Str("backend", "fastvm").Logger()))
			all = append(all, fastvmbackend.New(cl, fastvmbackend.Options{MachineType: cfg.FastVM.MachineType, IdleAction: cfg.FastVM.idleAction(), Logger: log}))
		}
		if c.ForeverVMToken != "" {
			cl := forevervmclient.New(c.ForeverVMToken, forevervmclient.WithBaseURL(cfg.ForeverVM.URL), forevervmclient.WithLogger(log.With().Str("backend", "forevervm").Logger()))
			b := forevervmbackend.New(cl, forevervmbackend.Options{Logger: log})
			all = append(all, b)
			mu.Lock()
			closers = append(closers, b.Close)
			mu.Unlock()
		}
		if shared != nil {
			all = append(all, shared)
		}
		if cfg.Backend != "auto" {
			for i, b := range all {
				if b.Name() == cfg.Backend {
					all[0], all[i] = all[i], all[0]
				}
			}
		}
		return all
	}
	server = build(credentials{ForeverVMToken: cfg.ForeverVM.Token, FastVMAPIKey: cfg.FastVM.APIKey})
	user := server
	if shared == nil {
		user = append(append([]backend.Backend(nil), server...), localBackend)
	}
	sets := map[string][]backend.Backend{}
	perPrincipal = func(who string) []backend.Backend {
		if who == principal.Local() {
			return user
		}
		c, ok := cfg.HTTP.Credentials[who]
		if !ok {
			return nil
		}
		mu.Lock()
		set, built := sets[who]
		mu.Unlock()
		if built {
			return set
		}
		set = build(c)
		mu.Lock()
		if earlier, ok := sets[who]; ok {
			set = earlier
		} else {
			sets[who] = set
		}
		mu.Unlock()
		return set
	}
	return server, perPrincipal, func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range closers {
			c()
		}
	}
}

func run(args []string) error {
	if len(args) > 0 && args[0] == "token" {
		return tokenCommand(args[1:], os.Stdout)
	}
	if len(args) > 0 && isCLICommand(args[0]) {
		env, err := processEnv()
		if err != nil {
			return err
		}
		return runCLI(args, env)
	}
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	cfg, err := loadConfig(args, os.Getenv, cwd)
	if err != nil {
		return err
	}
	if cfg.Version {
		fmt.Println(version)
		return nil
	}
	if cfg.HTTP.Transport != "http" {
		cfg.Project = cwd
	}
	if cfg.HTTP.Transport == "stdio" && os.Getenv("GOMAXPROCS") == "" {
		// One client, whose calls mostly wait on sandboxes: with more Ps,
		// every goroutine made ready woke another thread to look for work,
		// which cost a run_python call about 0.05 ms on a 2-vCPU machine
		// and took CPU from the sandbox. The GOMAXPROCS variable still
		// decides when set.
		runtime.GOMAXPROCS(1)
	}

	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true}).Level(cfg.Level()).With().Timestamp().Logger()

	if cfg.DangerouslyDisableSandbox {
		log.Warn().Msg("THE SANDBOX IS DISABLED (--dangerously-disable-sandbox): machines run as plain host processes with your user's full access")
	}
	// A server on a state directory that another server owns serves its
	// client through that one, and takes the directory over if it goes.
	var clientIn io.Reader
	var clientOut io.Writer
	var httpLn net.Listener // the listener of an http server that took the state directory over
	opts := cfg.localOptions()
	opts.CheckpointInterval = cfg.PythonCheckpointInterval
	// Warm machines serve the first calls of new conversations, which go
	// to the preferred backend: only a local one wants them.
	if localInUse(cfg) {
		def := cfg.Network.Tools().Default
		opts.Warm = local.WarmOptions{Machines: cfg.Warm.Machines, Imports: cfg.Warm.Imports, HotFor: cfg.Warm.HotFor, AllowNetwork: def.Open, NetworkAllow: def.Allow}
	}
	engine, err := local.New(opts)
	if errors.Is(err, local.ErrStateDirInUse) {
		var restore func()
		engine, clientIn, clientOut, httpLn, restore, err = besideOwner(cfg, args, opts, log, err)
		if restore != nil {
			defer restore()
		}
		if err == nil && engine == nil {
			return nil // the client left, or the failure was served to it
		}
	}
	if err != nil {
		return startupFailure(cfg, explainStateDir(cfg.StateDir, err), log)
	}
	defer engine.Close()

	store, err := openStore(cfg.HTTP.SessionStore, engine.StateDir())
	if err != nil {
		return startupFailure(cfg, explainStateDir(cfg.StateDir, err), log)
	}
	defer store.Close()
	manager := conversations.NewManager(store, conversations.Limits{MaxMachines: cfg.MaxMachines, MaxSnapshots: cfg.MaxSnapshots})
	instance, err := instanceID(engine.StateDir())
	if err != nil {
		return err
	}

	bs, ownBackends, closeBackends := backends(cfg, engine, log)
	defer closeBackends()
	if len(bs) == 0 {
		return errNoBackend
	}
	go reportSelfTest(engine, bs[0].Name() == localbackend.Name, log)
	// The principals of an http server's endpoint served beside this one
	// (see owner.endpoint) get its backends.
	var hosted atomic.Pointer[func(string) []backend.Backend]
	principalBackends := func(who string) []backend.Backend {
		if f := hosted.Load(); f != nil && who != principal.Local() {
			return (*f)(who)
		}
		return ownBackends(who)
	}
	metrics := newMetrics(manager, engine)
	var onCall func(tool, backend, outcome string, d time.Duration)
	if cfg.HTTP.Transport == "http" { // the only one that serves /metrics
		onCall = metrics.observe
	}
	// Output on its way to a machine waits here, not in a tmpfs /tmp.
	spoolDir := filepath.Join(cfg.StateDir, "spool")
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return err
	}
	svc, err := tools.NewService(tools.Config{Backends: bs, BackendsFor: principalBackends, Conversations: manager, AllowedRoots: cfg.AllowedRoots, RootsPerPrincipal: cfg.HTTP.Transport == "http", Instance: instance,
		Idle: cfg.Idle(), ConversationTTL: cfg.ConversationTTL, SnapshotTTL: cfg.SnapshotTTL, OnCall: onCall, Log: log,
		MaxOutputChars: cfg.MaxOutputChars, MaxOutputCharsLimit: cfg.MaxOutputCharsLimit, SpoolDir: spoolDir, CallSlots: cfg.CallSlots,
		Project: cfg.Project, Network: cfg.Network.Tools(), MaxMemoryMB: cfg.Limits.MaxMemoryMB, MaxDiskMB: cfg.Limits.MaxDiskMB})
	if err != nil {
		return err
	}
	reconcileCtx, cancelReconcile := context.WithTimeout(context.Background(), 2*time.Minute)
	if _, err := svc.Broker().Reconcile(reconcileCtx); err != nil {
		log.Warn().Err(err).Msg("reconciling machines with conversations failed in part")
	}
	cancelReconcile()
	srv := svc.NewMCPServer(version)
	var names []string
	for _, b := range bs {
		names = append(names, b.Name())
	}
	log.Info().Str("state_dir", engine.StateDir()).Strs("allowed_roots", cfg.AllowedRoots).Bool("sandboxed", engine.Sandboxed()).
		Strs("backends", names).Str("transport", cfg.HTTP.Transport).Msg("vmcp MCP server")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go flushUses(ctx, manager, log)
	go reap(ctx, svc, reapInterval(cfg), log)
	defer manager.Flush(context.Background())
	info := tools.ServerInfo(version)

	// Other servers of this user on this state directory reach the
	// machines through this one.
	sharing, waitOthers := serveOthers(ctx, cfg, engine, srv, svc, manager, &hosted, info, log)
	defer waitOthers()
	if cfg.HTTP.Transport == "http" {
		return serveHTTP(ctx, cfg.HTTP, srv, metrics, log, httpLn, nil)
	}
	if clientIn == nil {
		in, out, restore, err := pipeio.Stdio(os.Stdin, os.Stdout)
		if err != nil {
			return err
		}
		defer restore()
		clientIn, clientOut = in, out
	}
	err = transport.ServeStdio(ctx, srv, clientIn, clientOut, transport.StdioOptions{Logger: log, ServerInfo: &info})
	if err != nil && ctx.Err() == nil {
		return err
	}
	if sharing && ctx.Err() == nil {
		log.Info().Msg("the client left; serving the other vmcp servers on this state directory until they leave")
	}
	log.Info().Msg("shutting down")
	return nil
}

// reportSelfTest logs, in one line, why the local engine cannot run
// machines here, once its self-test says so: as an error where the local
// backend is the one calls go to, as a note where a cloud backend is.
func reportSelfTest(engine *local.Engine, preferred bool, log zerolog.Logger) {
	err := engine.SelfTest(context.Background())
	switch {
	case err == nil:
		reportWarmPool(engine, log)
	case preferred:
		log.Error().Msg(err.Error())
	default:
		log.Info().Msg(err.Error())
	}
}

// reportWarmPool logs, once, when the pool of warm machines is first full,
// what it costs, or why it cannot fill.
func reportWarmPool(engine *local.Engine, log zerolog.Logger) {
	start := time.Now()
	for {
		s := engine.WarmStats()
		switch {
		case s.Target == 0:
			return
		case s.FilledIn > 0:
			ev := log.Info()
			if s.ImportErrors != "" {
				ev = log.Warn().Str("import_errors", s.ImportErrors)
			}
			ev.Int("machines", s.Target).Dur("took", s.FilledIn).Float64("pss_mib_per_machine", float64(s.FilledPSSBytes)/float64(s.Target)/(1<<20)).
				Msg("warm machines ready for new conversations (--warm-machines)")
			return
		case s.LastError != "":
			log.Warn().Str("error", s.LastError).Msg("could not start a warm machine; new conversations start their own")
			return
		case time.Since(start) > 10*time.Minute:
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// flushInterval is how often last-use times are written to the store.
const flushInterval = 30 * time.Second

// flushUses writes conversations' last-use times now and then, until ctx ends.
func flushUses(ctx context.Context, m *conversations.Manager, log zerolog.Logger) {
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.Flush(ctx); err != nil {
				log.Warn().Err(err).Msg("could not save conversations' last-use times")
			}
		}
	}
}

// reapInterval is how often idle machines and conversations are looked
// for: a quarter of the shortest timeout, between 1 s and 1 min.
func reapInterval(cfg Config) time.Duration {
	shortest := cfg.ConversationTTL
	for _, d := range append([]time.Duration{cfg.SnapshotTTL}, slices.Collect(maps.Values(cfg.Idle()))...) {
		if d > 0 && (shortest <= 0 || d < shortest) {
			shortest = d
		}
	}
	if shortest <= 0 {
		return 0
	}
	return min(max(shortest/4, time.Second), time.Minute)
}

// reap stops and parks idle machines and closes idle conversations now and
// then, until ctx ends.
func reap(ctx context.Context, svc *tools.Service, every time.Duration, log zerolog.Logger) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r, err := svc.Broker().Reap(ctx)
			if err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Msg("reaping idle machines failed in part")
			}
			if r.Stopped+r.Parked+r.Closed+r.SnapshotsExpired > 0 {
				log.Info().Int("stopped", r.Stopped).Int("parked", r.Parked).Int("closed", r.Closed).Int("snapshots_expired", r.SnapshotsExpired).Msg("reaped idle machines and conversations")
			}
		}
	}
}

// instanceID names this server (its state dir) on the machines it creates,
// so that a later start recognizes them; it is made once and kept.
func instanceID(stateDir string) (string, error) {
	p := filepath.Join(stateDir, "instance")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	b := make([]byte, 8)
	rand.Read(b)
	id := hex.EncodeToString(b)
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write the server's instance id: %w", err)
	}
	return id, nil
}

// testResolver is the proxy's resolver for tests, which have no names of
// their own: VMCP_TEST_RESOLVE_LOOPBACK lists names (comma-separated) that
// resolve to 127.0.0.1; nil (the system's resolver) when unset. A name so
// resolved is still refused unless --network-allow-private lists it.
func testResolver(names string) func(context.Context, string) ([]netip.Addr, error) {
	if names == "" {
		return nil
	}
	set := map[string]bool{}
	for _, n := range splitList(names) {
		set[n] = true
	}
	return func(ctx context.Context, host string) ([]netip.Addr, error) {
		if set[host] {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
}

// minMemoryMiB is the least memory a machine needs to start its Python
// interpreter (launch_vm's memory_mb has the same floor in its schema).
const minMemoryMiB = 128
