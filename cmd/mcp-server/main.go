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
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
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
	"github.com/vmcp-dev/vmcp/internal/pipeio"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/sessions"
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

// config is what the flags and their environment fallbacks set.
type config struct {
	stateDir     string
	logLevel     zerolog.Level
	allowedRoots []string
	version      bool
	backend      string
	forevervm    forevervmConfig
	fastvm       fastvmConfig
	maxMachines  int
	maxSnapshots int
	// The budget of a result's text, and the most a call may ask for.
	maxOutputChars, maxOutputCharsLimit int
	// project is what a stdio server serves (its working directory): its
	// client's default conversation is the project's.
	project   string
	idle      map[string]time.Duration // backend → idle timeout
	ttl       time.Duration            // conversations idle this long are closed
	http      httpConfig               // the hosted endpoint, when transport is http
	limits    local.Limits
	noSandbox bool
	network   tools.NetworkConfig // what machines may reach
	// The most memory and disk launch_vm may give a machine, in MiB.
	maxMemoryMB, maxDiskMB int64
	egress                 local.EgressOptions
}

// parseConfig reads the flags; each falls back to its environment variable
// (through getenv), then to its default. The allowed roots default to cwd.
func parseConfig(args []string, getenv func(string) string, cwd string) (config, error) {
	envOr := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("mcp-server", flag.ContinueOnError)
	stateDir := fs.String("state-dir", envOr("VMCP_STATE_DIR", local.DefaultStateDir()), "directory for machines and snapshots (env VMCP_STATE_DIR)")
	logLevel := fs.String("log-level", envOr("VMCP_LOG_LEVEL", "info"), "log level: trace, debug, info, warn, error (env VMCP_LOG_LEVEL); logs go to stderr")
	roots := fs.String("allowed-roots", envOr("VMCP_ALLOWED_ROOTS", ""), "host directories that upload_file/download_file local_path may use, separated by "+string(filepath.ListSeparator)+" (env VMCP_ALLOWED_ROOTS); default: the working directory on stdio, none over http")
	hc := httpFlags(fs, envOr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	backendName := fs.String("backend", envOr("VMCP_BACKEND", "auto"), "where a conversation's machine runs: local, forevervm, fastvm, or auto (FastVM if configured, else ForeverVM, else local); every tool call without machine acts on the conversation's one machine (env VMCP_BACKEND)")
	maxMachines := fs.Int("max-machines", intEnv(getenv, "VMCP_MAX_MACHINES", 0), "most machines one conversation may own; 0: no limit (env VMCP_MAX_MACHINES)")
	maxSnapshots := fs.Int("max-snapshots", intEnv(getenv, "VMCP_MAX_SNAPSHOTS", 0), "most snapshots one conversation may own; 0: no limit (env VMCP_MAX_SNAPSHOTS)")
	maxOutputChars := fs.Int("max-output-chars", intEnv(getenv, "VMCP_MAX_OUTPUT_CHARS", tools.DefaultMaxOutputChars), "characters of text a result carries at most; longer output keeps head and tail, the whole saved in the machine (env VMCP_MAX_OUTPUT_CHARS)")
	maxOutputCharsLimit := fs.Int("max-output-chars-limit", intEnv(getenv, "VMCP_MAX_OUTPUT_CHARS_LIMIT", tools.DefaultMaxOutputCharsLimit), "the most a call may ask for with max_output_chars (env VMCP_MAX_OUTPUT_CHARS_LIMIT)")
	idleLocal := durationFlag(fs, "idle-local", durEnv(getenv, "VMCP_IDLE_LOCAL", 30*time.Minute), "stop a local machine's processes after this long unused (files stay; 0: never) (env VMCP_IDLE_LOCAL)")
	idleFast := durationFlag(fs, "idle-fastvm", durEnv(getenv, "VMCP_IDLE_FASTVM", 15*time.Minute), "pause a FastVM machine unused this long (memory and files kept, no quota held; the next use resumes it), or with --fastvm-idle-action snapshot park it as a snapshot (0: never) (env VMCP_IDLE_FASTVM)")
	fastIdleAction := fs.String("fastvm-idle-action", envOr("VMCP_FASTVM_IDLE_ACTION", "auto"), "what to do with an idle FastVM machine: pause, snapshot (snapshot it, delete it, relaunch it on next use), or auto (pause where the service can, else snapshot) (env VMCP_FASTVM_IDLE_ACTION)")
	ttl := durationFlag(fs, "conversation-ttl", durEnv(getenv, "VMCP_CONVERSATION_TTL", 7*24*time.Hour), "close conversations unused this long: delete their machines, keep their snapshots (0: never) (env VMCP_CONVERSATION_TTL)")
	fastURL := fs.String("fastvm-url", envOr("FASTVM_BASE_URL", fastvmclient.DefaultBaseURL), "FastVM API base URL (env FASTVM_BASE_URL)")
	fastKeyFile := fs.String("fastvm-api-key-file", envOr("FASTVM_API_KEY_FILE", ""), "file holding the FastVM API key; the FASTVM_API_KEY environment variable works too")
	fastType := fs.String("fastvm-machine-type", envOr("VMCP_FASTVM_MACHINE_TYPE", fastvmbackend.DefaultMachineType), "size of FastVM machines launched without machine_type (env VMCP_FASTVM_MACHINE_TYPE)")
	fvmURL := fs.String("forevervm-url", envOr("FOREVERVM_BASE_URL", forevervmclient.DefaultBaseURL), "ForeverVM API base URL (env FOREVERVM_BASE_URL)")
	fvmTokenFile := fs.String("forevervm-token-file", envOr("FOREVERVM_TOKEN_FILE", ""), "file holding the ForeverVM token; the FOREVERVM_TOKEN environment variable works too (never pass tokens as flags: they show in ps)")
	var limits local.Limits
	mib := func(name, env string, def int64, dst *int64, what string) {
		v := envOr(env, strconv.FormatInt(def, 10))
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			n = -1 // reported after parsing
		}
		*dst = n
		fs.Func(name, fmt.Sprintf("%s (env %s; default %d)", what, env, def), func(s string) error {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("want a positive whole number")
			}
			*dst = n
			return nil
		})
	}
	d := local.DefaultLimits
	mib("memory-mb", "VMCP_MEMORY_MB", d.MemoryBytes>>20, &limits.MemoryBytes, "memory limit of each machine, in MiB")
	mib("disk-mb", "VMCP_DISK_MB", d.DiskBytes>>20, &limits.DiskBytes, "disk quota of each machine's files, in MiB")
	mib("max-processes", "VMCP_MAX_PROCESSES", d.Processes, &limits.Processes, "process limit of each machine")
	var maxMemory, maxDisk int64
	mib("max-memory-mb", "VMCP_MAX_MEMORY_MB", 8192, &maxMemory, "the most memory_mb launch_vm may give a machine, in MiB")
	mib("max-disk-mb", "VMCP_MAX_DISK_MB", 16384, &maxDisk, "the most disk_mb launch_vm may give a machine, in MiB")
	netAllow := fs.String("network-allow", envOr("VMCP_NETWORK_ALLOW", ""), "comma-separated domains (exact, or *.suffix) that local machines may be given with launch_vm's network; they reach them over HTTP(S) through vmcp's proxy (env VMCP_NETWORK_ALLOW)")
	netDefault := fs.String("network-default", envOr("VMCP_NETWORK_DEFAULT", "none"), "network of local machines launched without one (every conversation's first machine too): none, allowlist (all of --network-allow), or open (needs --network-open) (env VMCP_NETWORK_DEFAULT)")
	netOpen := fs.Bool("network-open", envOr("VMCP_NETWORK_OPEN", "") == "1", "let launch_vm give local machines the host's network (network: open): for local use only (env VMCP_NETWORK_OPEN=1)")
	netPrivate := fs.String("network-allow-private", envOr("VMCP_NETWORK_ALLOW_PRIVATE", ""), "comma-separated domains that may resolve to loopback, link-local or private addresses (an internal package mirror); others that do are refused (env VMCP_NETWORK_ALLOW_PRIVATE)")
	noSandbox := fs.Bool("dangerously-disable-sandbox", envOr("VMCP_DANGEROUSLY_DISABLE_SANDBOX", "") == "1",
		"run machines as plain host processes with NO isolation, for hosts where bubblewrap cannot run and trusted code only (env VMCP_DANGEROUSLY_DISABLE_SANDBOX=1)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	// Paths are the caller's, relative to cwd: a server that serves an
	// http server's configuration beside its own reads them from another
	// working directory.
	at := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(cwd, *p)
		}
	}
	for _, p := range []*string{stateDir, fastKeyFile, fvmTokenFile, hc.credsFile, &hc.auth.TokensFile} {
		at(p)
	}
	if *roots != "" {
		list := filepath.SplitList(*roots)
		for i := range list {
			at(&list[i])
		}
		*roots = strings.Join(list, string(filepath.ListSeparator))
	}
	for name, v := range map[string]int64{"VMCP_MEMORY_MB": limits.MemoryBytes, "VMCP_DISK_MB": limits.DiskBytes, "VMCP_MAX_PROCESSES": limits.Processes,
		"VMCP_MAX_MEMORY_MB": maxMemory, "VMCP_MAX_DISK_MB": maxDisk} {
		if v <= 0 {
			return config{}, fmt.Errorf("%s must be a positive whole number", name)
		}
	}
	if limits.MemoryBytes < minMemoryMiB {
		return config{}, fmt.Errorf("--memory-mb %d is too small for a machine to start Python: give at least %d", limits.MemoryBytes, minMemoryMiB)
	}
	if maxMemory < limits.MemoryBytes || maxDisk < limits.DiskBytes {
		return config{}, errors.New("--max-memory-mb and --max-disk-mb must be at least --memory-mb and --disk-mb")
	}
	fvmCfg := forevervmConfig{url: *fvmURL, token: getenv("FOREVERVM_TOKEN")}
	if *fvmTokenFile != "" {
		b, err := os.ReadFile(*fvmTokenFile)
		if err != nil {
			return config{}, fmt.Errorf("--forevervm-token-file: %w", err)
		}
		fvmCfg.token = strings.TrimSpace(string(b))
	}
	if *idleLocal < 0 || *idleFast < 0 || *ttl < 0 {
		return config{}, errors.New("--idle-local, --idle-fastvm and --conversation-ttl take a duration such as 30m or 168h (VMCP_IDLE_LOCAL, VMCP_IDLE_FASTVM, VMCP_CONVERSATION_TTL), 0 for never")
	}
	if *maxOutputChars < 1000 || *maxOutputCharsLimit < *maxOutputChars {
		return config{}, fmt.Errorf("--max-output-chars %d, --max-output-chars-limit %d: give a budget of at least 1000 characters and a limit no smaller", *maxOutputChars, *maxOutputCharsLimit)
	}
	if *maxMachines < 0 || *maxSnapshots < 0 {
		return config{}, errors.New("--max-machines and --max-snapshots (VMCP_MAX_MACHINES, VMCP_MAX_SNAPSHOTS) take a whole number, 0 for no limit")
	}
	fastCfg := fastvmConfig{url: *fastURL, key: getenv("FASTVM_API_KEY"), machineType: *fastType}
	switch *fastIdleAction {
	case "auto":
	case fastvmbackend.IdlePause, fastvmbackend.IdleSnapshot:
		fastCfg.idleAction = *fastIdleAction
	default:
		return config{}, fmt.Errorf("--fastvm-idle-action %q: want pause, snapshot or auto", *fastIdleAction)
	}
	if *fastKeyFile != "" {
		b, err := os.ReadFile(*fastKeyFile)
		if err != nil {
			return config{}, fmt.Errorf("--fastvm-api-key-file: %w", err)
		}
		fastCfg.key = strings.TrimSpace(string(b))
	}
	switch *backendName {
	case "auto", "local":
	case "forevervm":
		if fvmCfg.token == "" {
			return config{}, errors.New("--backend forevervm needs a ForeverVM token: set FOREVERVM_TOKEN or --forevervm-token-file")
		}
	case "fastvm":
		if fastCfg.key == "" {
			return config{}, errors.New("--backend fastvm needs a FastVM API key: set FASTVM_API_KEY or --fastvm-api-key-file")
		}
	default:
		return config{}, fmt.Errorf("--backend %q: want local, forevervm, fastvm or auto", *backendName)
	}
	network := tools.NetworkConfig{Allow: splitList(*netAllow), Open: *netOpen}
	switch *netDefault {
	case "none":
	case "allowlist":
		if len(network.Allow) == 0 {
			return config{}, errors.New("--network-default allowlist needs domains in --network-allow")
		}
		network.Default = backend.Network{Allow: network.Allow}
	case "open":
		network.Default = backend.Network{Open: true}
	default:
		return config{}, fmt.Errorf("--network-default %q: want none, allowlist or open", *netDefault)
	}
	if err := network.Check(); err != nil {
		return config{}, err
	}
	private := splitList(*netPrivate)
	if err := backend.ValidateDomains(private); err != nil {
		return config{}, fmt.Errorf("--network-allow-private: %w", err)
	}
	limits.MemoryBytes <<= 20
	limits.DiskBytes <<= 20
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	level, err := zerolog.ParseLevel(strings.ToLower(*logLevel))
	if err != nil || level == zerolog.NoLevel {
		return config{}, fmt.Errorf("--log-level %q: want trace, debug, info, warn, error or disabled", *logLevel)
	}
	if err := hc.check(); err != nil {
		return config{}, err
	}
	if *roots == "" && hc.transport == "stdio" {
		*roots = cwd // over http, host paths stay off unless named
	}
	return config{http: *hc, stateDir: *stateDir, logLevel: level, allowedRoots: filepath.SplitList(*roots), version: *showVersion,
		backend: *backendName, forevervm: fvmCfg, fastvm: fastCfg, limits: limits, noSandbox: *noSandbox, maxMachines: *maxMachines, maxSnapshots: *maxSnapshots,
		maxOutputChars: *maxOutputChars, maxOutputCharsLimit: *maxOutputCharsLimit,
		idle: map[string]time.Duration{"local": *idleLocal, "fastvm": *idleFast}, ttl: *ttl,
		network: network, maxMemoryMB: maxMemory, maxDiskMB: maxDisk, egress: local.EgressOptions{PrivateAllowed: private, Resolve: testResolver(getenv("VMCP_TEST_RESOLVE_LOOPBACK"))}}, nil
}

// durationValue is a duration flag whose errors say what a duration looks
// like ("5" alone has no unit).
type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return fmt.Errorf("%s has no unit: give one, such as %sm, %ss or %sh (0 for never)", s, s, s, s)
		}
		return fmt.Errorf("%q is not a duration: give a number with a unit, such as 30m, 90s or 2h (0 for never)", s)
	}
	*v.d = d
	return nil
}

// durationFlag defines a duration flag with durationValue's errors.
func durationFlag(fs *flag.FlagSet, name string, def time.Duration, usage string) *time.Duration {
	d := def
	fs.Var(durationValue{&d}, name, usage)
	return &d
}

// durEnv reads a duration from the environment; anything else gives -1,
// which the flag checks refuse.
func durEnv(getenv func(string) string, key string, def time.Duration) time.Duration {
	v := getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return -1
	}
	return d
}

// intEnv reads a whole number from the environment; anything else gives -1,
// which the flag checks refuse.
func intEnv(getenv func(string) string, key string, def int) int {
	v := getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// fastvmConfig says how to reach FastVM; the backend is on when a key is set.
type fastvmConfig struct {
	url, key, machineType string
	idleAction            string // fastvmbackend.Idle*
}

// forevervmConfig says how to reach ForeverVM; the backend is on when a
// token is set.
type forevervmConfig struct {
	url, token string
}

// backends builds the configured backends, the preferred one first, and
// the backends of each principal that brought credentials of its own.
func backends(cfg config, engine *local.Engine, log zerolog.Logger) (server []backend.Backend, perPrincipal func(string) []backend.Backend, closeAll func()) {
	// Stdio clients (the user running the server, front ends of an http
	// server's state directory included) always have the local backend;
	// the hosted endpoint's principals only when enabled.
	localBackend := localbackend.New(engine)
	localBackend.DefaultNetwork = cfg.network.Default
	var shared backend.Backend
	if cfg.http.transport != "http" || cfg.http.enableLocal {
		shared = localBackend
	}
	var mu sync.Mutex
	var closers []func() error
	build := func(c credentials) []backend.Backend {
		var all []backend.Backend
		// auto: FastVM (full machines) first, then ForeverVM, then local.
		if c.FastVMAPIKey != "" {
			cl := fastvmclient.New(c.FastVMAPIKey, fastvmclient.WithBaseURL(cfg.fastvm.url), fastvmclient.WithLogger(log.With().Str("backend", "fastvm").Logger()))
			all = append(all, fastvmbackend.New(cl, fastvmbackend.Options{MachineType: cfg.fastvm.machineType, IdleAction: cfg.fastvm.idleAction, Logger: log}))
		}
		if c.ForeverVMToken != "" {
			cl := forevervmclient.New(c.ForeverVMToken, forevervmclient.WithBaseURL(cfg.forevervm.url), forevervmclient.WithLogger(log.With().Str("backend", "forevervm").Logger()))
			b := forevervmbackend.New(cl, forevervmbackend.Options{Logger: log})
			all = append(all, b)
			mu.Lock()
			closers = append(closers, b.Close)
			mu.Unlock()
		}
		if shared != nil {
			all = append(all, shared)
		}
		if cfg.backend != "auto" {
			for i, b := range all {
				if b.Name() == cfg.backend {
					all[0], all[i] = all[i], all[0]
				}
			}
		}
		return all
	}
	server = build(credentials{ForeverVMToken: cfg.forevervm.token, FastVMAPIKey: cfg.fastvm.key})
	user := server
	if shared == nil {
		user = append(append([]backend.Backend(nil), server...), localBackend)
	}
	sets := map[string][]backend.Backend{}
	perPrincipal = func(who string) []backend.Backend {
		if who == principal.Local() {
			return user
		}
		c, ok := cfg.http.credentials[who]
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
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	cfg, err := parseConfig(args, os.Getenv, cwd)
	if err != nil {
		return err
	}
	if cfg.version {
		fmt.Println(version)
		return nil
	}
	if cfg.http.transport != "http" {
		cfg.project = cwd
	}
	if cfg.http.transport == "stdio" && os.Getenv("GOMAXPROCS") == "" {
		// One client, whose calls mostly wait on sandboxes: with more Ps,
		// every goroutine made ready woke another thread to look for work,
		// which cost a run_python call about 0.05 ms on a 2-vCPU machine
		// and took CPU from the sandbox. The GOMAXPROCS variable still
		// decides when set.
		runtime.GOMAXPROCS(1)
	}

	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true}).Level(cfg.logLevel).With().Timestamp().Logger()

	if cfg.noSandbox {
		log.Warn().Msg("THE SANDBOX IS DISABLED (--dangerously-disable-sandbox): machines run as plain host processes with your user's full access")
	}
	// A server on a state directory that another server owns serves its
	// client through that one, and takes the directory over if it goes.
	var clientIn io.Reader
	var clientOut io.Writer
	var httpLn net.Listener // the listener of an http server that took the state directory over
	opts := local.Options{StateDir: cfg.stateDir, Limits: cfg.limits, DangerouslyDisableSandbox: cfg.noSandbox, Egress: cfg.egress}
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
		return startupFailure(cfg, explainStateDir(cfg.stateDir, err), log)
	}
	defer engine.Close()

	store, err := openStore(cfg.http.sessionStore, engine.StateDir())
	if err != nil {
		return startupFailure(cfg, explainStateDir(cfg.stateDir, err), log)
	}
	defer store.Close()
	manager := sessions.NewManager(store, sessions.Limits{MaxMachines: cfg.maxMachines, MaxSnapshots: cfg.maxSnapshots})
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
	metrics := newMetrics(manager)
	var onCall func(tool, backend, outcome string, d time.Duration)
	if cfg.http.transport == "http" { // the only one that serves /metrics
		onCall = metrics.observe
	}
	// Output on its way to a machine waits here, not in a tmpfs /tmp.
	spoolDir := filepath.Join(cfg.stateDir, "spool")
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return err
	}
	svc, err := tools.NewService(tools.Config{Backends: bs, BackendsFor: principalBackends, Sessions: manager, AllowedRoots: cfg.allowedRoots, RootsPerPrincipal: cfg.http.transport == "http", Instance: instance,
		Idle: cfg.idle, ConversationTTL: cfg.ttl, OnCall: onCall, Log: log,
		MaxOutputChars: cfg.maxOutputChars, MaxOutputCharsLimit: cfg.maxOutputCharsLimit, SpoolDir: spoolDir,
		Project: cfg.project, Network: cfg.network, MaxMemoryMB: cfg.maxMemoryMB, MaxDiskMB: cfg.maxDiskMB})
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
	log.Info().Str("state_dir", engine.StateDir()).Strs("allowed_roots", cfg.allowedRoots).Bool("sandboxed", engine.Sandboxed()).
		Strs("backends", names).Str("transport", cfg.http.transport).Msg("vmcp MCP server")

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
	if cfg.http.transport == "http" {
		return serveHTTP(ctx, cfg.http, srv, metrics, log, httpLn, nil)
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
	case preferred:
		log.Error().Msg(err.Error())
	default:
		log.Info().Msg(err.Error())
	}
}

// flushInterval is how often last-use times are written to the store.
const flushInterval = 30 * time.Second

// flushUses writes conversations' last-use times now and then, until ctx ends.
func flushUses(ctx context.Context, m *sessions.Manager, log zerolog.Logger) {
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
func reapInterval(cfg config) time.Duration {
	shortest := cfg.ttl
	for _, d := range cfg.idle {
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
			if r.Stopped+r.Parked+r.Closed > 0 {
				log.Info().Int("stopped", r.Stopped).Int("parked", r.Parked).Int("closed", r.Closed).Msg("reaped idle machines and conversations")
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
