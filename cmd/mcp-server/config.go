package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/auth"
	"github.com/vmcp-dev/vmcp/backend"
	fastvmbackend "github.com/vmcp-dev/vmcp/backend/fastvm"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

// Config is the server's whole configuration. Every setting has a flag, an
// environment variable, a default and a help text, declared together in
// Config.settings; loadConfig fills a Config from them and Validate checks
// it. The few fields that are not settings say so.
type Config struct {
	StateDir     string
	LogLevel     string   // trace, debug, info, warn, error or disabled
	AllowedRoots []string // host directories local_path may use; see loadConfig for the default
	Backend      string   // local, forevervm, fastvm or auto

	// The most machines and snapshots one conversation may own; 0: no limit.
	MaxMachines, MaxSnapshots int
	// The budget of a result's text, and the most a call may ask for.
	MaxOutputChars, MaxOutputCharsLimit int
	// CallSlots is how many tool calls start at a time (tools.Config).
	CallSlots                int
	IdleLocal                time.Duration // 0: never
	PythonCheckpointInterval time.Duration // 0: never
	ConversationTTL          time.Duration // 0: never
	SnapshotTTL              time.Duration // 0: never

	Limits                    MachineLimits
	Network                   NetworkSettings
	Warm                      WarmSettings
	DangerouslyDisableSandbox bool

	FastVM    FastVMConfig
	ForeverVM ForeverVMConfig
	HTTP      HTTPConfig // the hosted endpoint, when HTTP.Transport is http

	// Version is --version: print the version and exit. It is a command
	// rather than a setting, so it has no environment variable.
	Version bool
	// Project is what a stdio server serves (its working directory): its
	// client's default conversation is the project's. run sets it.
	Project string
	// TestResolveLoopback is VMCP_TEST_RESOLVE_LOOPBACK, a hook for tests
	// only (see testResolver), so it has no flag.
	TestResolveLoopback string
}

// MachineLimits are a local machine's limits and the most launch_vm may
// give one, in MiB (and processes).
type MachineLimits struct {
	MemoryMB, DiskMB, Processes int64
	MaxMemoryMB, MaxDiskMB      int64
}

// WarmSettings size the pool of local machines kept started for new
// conversations.
type WarmSettings struct {
	Machines int
	Imports  []string
	HotFor   time.Duration // 0: never
}

// NetworkSettings say what local machines may reach.
type NetworkSettings struct {
	Allow        []string // domains launch_vm may give a machine
	Default      string   // none, allowlist or open
	Open         bool     // launch_vm may give the host's network
	AllowPrivate []string // domains that may resolve to private addresses
}

// FastVMConfig says how to reach FastVM; the backend is on when APIKey is set.
type FastVMConfig struct {
	URL, APIKeyFile, MachineType string
	Idle                         time.Duration // 0: never
	IdleAction                   string        // pause, snapshot or auto
	// APIKey is FASTVM_API_KEY, or what APIKeyFile holds: never a flag,
	// since flags show in ps.
	APIKey string
}

// ForeverVMConfig says how to reach ForeverVM; the backend is on when Token
// is set.
type ForeverVMConfig struct {
	URL, TokenFile string
	// Token is FOREVERVM_TOKEN, or what TokenFile holds: never a flag.
	Token string
}

// HTTPConfig is the hosted endpoint's configuration.
type HTTPConfig struct {
	Transport      string // stdio or http
	Listen         string
	MetricsListen  string
	AllowedOrigins []string
	// Per principal, 0: no limit; MaxRequestMB is always a limit.
	MaxConcurrentCalls, MaxStreams, MaxRequestMB, MaxInFlightRequestMB int

	EnableLocalBackend bool   // off by default: a hosted endpoint uses cloud backends
	SessionStore       string // "" (bbolt in the state dir) or redis://...

	InsecureNoAuth                            bool
	TokensFile, JWKSURL, JWTIssuer, PublicURL string
	AuthorizationServers                      []string
	PrincipalCredentials                      string // the file
	// Credentials are what PrincipalCredentials holds: principal → its own
	// backend credentials. loadConfig reads them.
	Credentials map[string]credentials
}

// setting is one configuration setting: its flag, its environment
// variable, the field it sets (through value, which knows its type and
// default) and its help.
type setting struct {
	flag, env string
	value     flag.Value
	help      string
}

// settings binds every setting to its field of c and sets the field to its
// default: this table is the one place a setting is declared.
func (c *Config) settings() []setting {
	d := local.DefaultLimits
	h := &c.HTTP
	return []setting{
		{"state-dir", "VMCP_STATE_DIR", path(&c.StateDir, local.DefaultStateDir()), "directory for machines and snapshots"},
		{"log-level", "VMCP_LOG_LEVEL", text(&c.LogLevel, "info"), "log level: trace, debug, info, warn, error; logs go to stderr"},
		{"allowed-roots", "VMCP_ALLOWED_ROOTS", paths(&c.AllowedRoots), "host directories that upload_file/download_file local_path may use, separated by " + string(filepath.ListSeparator) + "; default: the working directory on stdio, none over http"},
		{"backend", "VMCP_BACKEND", text(&c.Backend, "auto"), "where a conversation's machine runs: local, forevervm, fastvm, or auto (FastVM if configured, else ForeverVM, else local); every tool call without machine acts on the conversation's one machine"},
		{"max-machines", "VMCP_MAX_MACHINES", whole(&c.MaxMachines, 0), "most machines one conversation may own; 0: no limit"},
		{"max-snapshots", "VMCP_MAX_SNAPSHOTS", whole(&c.MaxSnapshots, 0), "most snapshots one conversation may own; 0: no limit"},
		{"max-output-chars", "VMCP_MAX_OUTPUT_CHARS", whole(&c.MaxOutputChars, tools.DefaultMaxOutputChars), "characters of text a result carries at most; longer output keeps head and tail, the whole saved in the machine"},
		{"max-output-chars-limit", "VMCP_MAX_OUTPUT_CHARS_LIMIT", whole(&c.MaxOutputCharsLimit, tools.DefaultMaxOutputCharsLimit), "the most a call may ask for with max_output_chars"},
		{"call-slots", "VMCP_CALL_SLOTS", whole(&c.CallSlots, tools.DefaultCallSlots()), "tool calls that start at a time; more wait their turn, established conversations' first (a burst of new ones leaves them their latency); -1: no limit"},
		{"python-checkpoint-interval", "VMCP_PYTHON_CHECKPOINT_INTERVAL", duration(&c.PythonCheckpointInterval, 0), "also save local machines' Python variables this often (those that ran code since), so that a crash of vmcp loses only what came after; 0: only when machines stop on purpose (idle, or vmcp stopping)"},
		{"idle-local", "VMCP_IDLE_LOCAL", duration(&c.IdleLocal, 30*time.Minute), "stop a local machine's processes after this long unused (files stay; 0: never)"},
		{"idle-fastvm", "VMCP_IDLE_FASTVM", duration(&c.FastVM.Idle, 15*time.Minute), "pause a FastVM machine unused this long (memory and files kept, no quota held; the next use resumes it), or with --fastvm-idle-action snapshot park it as a snapshot (0: never)"},
		{"fastvm-idle-action", "VMCP_FASTVM_IDLE_ACTION", text(&c.FastVM.IdleAction, "auto"), "what to do with an idle FastVM machine: pause, snapshot (snapshot it, delete it, relaunch it on next use), or auto (pause where the service can, else snapshot)"},
		{"conversation-ttl", "VMCP_CONVERSATION_TTL", duration(&c.ConversationTTL, 7*24*time.Hour), "close conversations unused this long: delete their machines, keep their snapshots (0: never)"},
		{"snapshot-ttl", "VMCP_SNAPSHOT_TTL", duration(&c.SnapshotTTL, 30*24*time.Hour), "delete the snapshots of conversations closed this long ago (0: keep them until deleted)"},
		{"fastvm-url", "FASTVM_BASE_URL", text(&c.FastVM.URL, fastvmclient.DefaultBaseURL), "FastVM API base URL"},
		{"fastvm-api-key-file", "FASTVM_API_KEY_FILE", path(&c.FastVM.APIKeyFile, ""), "file holding the FastVM API key; the FASTVM_API_KEY environment variable works too"},
		{"fastvm-machine-type", "VMCP_FASTVM_MACHINE_TYPE", text(&c.FastVM.MachineType, fastvmbackend.DefaultMachineType), "size of FastVM machines launched without machine_type"},
		{"forevervm-url", "FOREVERVM_BASE_URL", text(&c.ForeverVM.URL, forevervmclient.DefaultBaseURL), "ForeverVM API base URL"},
		{"forevervm-token-file", "FOREVERVM_TOKEN_FILE", path(&c.ForeverVM.TokenFile, ""), "file holding the ForeverVM token; the FOREVERVM_TOKEN environment variable works too (never pass tokens as flags: they show in ps)"},
		{"memory-mb", "VMCP_MEMORY_MB", whole(&c.Limits.MemoryMB, d.MemoryBytes>>20), "memory limit of each machine, in MiB"},
		{"disk-mb", "VMCP_DISK_MB", whole(&c.Limits.DiskMB, d.DiskBytes>>20), "disk quota of each machine's files, in MiB"},
		{"max-processes", "VMCP_MAX_PROCESSES", whole(&c.Limits.Processes, d.Processes), "process limit of each machine"},
		{"max-memory-mb", "VMCP_MAX_MEMORY_MB", whole(&c.Limits.MaxMemoryMB, 8192), "the most memory_mb launch_vm may give a machine, in MiB"},
		{"max-disk-mb", "VMCP_MAX_DISK_MB", whole(&c.Limits.MaxDiskMB, 16384), "the most disk_mb launch_vm may give a machine, in MiB"},
		{"warm-machines", "VMCP_WARM_MACHINES", whole(&c.Warm.Machines, 2), "local machines kept started, Python and --warm-imports loaded, for new conversations' first calls (each is used once, then replaced); 0: none"},
		{"warm-imports", "VMCP_WARM_IMPORTS", listOr(&c.Warm.Imports, []string{"numpy", "pandas", "matplotlib.pyplot"}), "comma-separated Python modules that warm machines import ahead of use (into sys.modules, not the user's variables); empty: none"},
		{"warm-hot-for", "VMCP_WARM_HOT_FOR", duration(&c.Warm.HotFor, 2*time.Minute), "after a call (or the start), keep warm machines' interpreters awake this long with an empty request every 400 ms, so that a new conversation's first call does not wake a slow, idle one (0: never)"},
		{"network-allow", "VMCP_NETWORK_ALLOW", list(&c.Network.Allow), "comma-separated domains (exact, or *.suffix) that local machines may be given with launch_vm's network; they reach them over HTTP(S) through vmcp's proxy"},
		{"network-default", "VMCP_NETWORK_DEFAULT", text(&c.Network.Default, "none"), "network of local machines launched without one (every conversation's first machine too): none, allowlist (all of --network-allow), or open (needs --network-open)"},
		{"network-open", "VMCP_NETWORK_OPEN", boolean(&c.Network.Open), "let launch_vm give local machines the host's network (network: open): for local use only"},
		{"network-allow-private", "VMCP_NETWORK_ALLOW_PRIVATE", list(&c.Network.AllowPrivate), "comma-separated domains that may resolve to loopback, link-local or private addresses (an internal package mirror); others that do are refused"},
		{"dangerously-disable-sandbox", "VMCP_DANGEROUSLY_DISABLE_SANDBOX", boolean(&c.DangerouslyDisableSandbox), "run machines as plain host processes with NO isolation, for hosts where bubblewrap cannot run and trusted code only"},

		// The hosted endpoint.
		{"transport", "VMCP_TRANSPORT", text(&h.Transport, "stdio"), "stdio, or http: streamable HTTP at /mcp and legacy SSE at /sse + /message"},
		{"listen", "VMCP_LISTEN", text(&h.Listen, "127.0.0.1:8080"), "address of the http transport"},
		{"allowed-origins", "VMCP_ALLOWED_ORIGINS", list(&h.AllowedOrigins), "comma-separated browser origins allowed to call over http; requests with another Origin get 403"},
		{"max-concurrent-calls", "VMCP_MAX_CONCURRENT_CALLS", whole(&h.MaxConcurrentCalls, 16), "requests one principal may have in flight over http; 0: no limit"},
		{"max-streams", "VMCP_MAX_STREAMS", whole(&h.MaxStreams, 16), "open streams (GET /sse, GET /mcp) one principal may hold over http; 0: no limit"},
		{"metrics-listen", "VMCP_METRICS_LISTEN", text(&h.MetricsListen, ""), "serve Prometheus /metrics on this address without authentication (e.g. a private 127.0.0.1:9090); without it, /metrics is on --listen behind the same authentication as /mcp"},
		{"max-inflight-request-mb", "VMCP_MAX_INFLIGHT_REQUEST_MB", whole(&h.MaxInFlightRequestMB, 64), "request data one principal's calls in flight may hold over http, in MiB; past it, 429; 0: no limit"},
		{"max-request-mb", "VMCP_MAX_REQUEST_MB", whole(&h.MaxRequestMB, 16), "largest request body over http, in MiB"},
		{"enable-local-backend", "VMCP_ENABLE_LOCAL_BACKEND", boolean(&h.EnableLocalBackend), "over http, also run machines on this host (off by default: a hosted endpoint uses cloud backends)"},
		{"session-store", "VMCP_SESSION_STORE", text(&h.SessionStore, ""), "where conversations live: empty for a file in the state dir, or redis://[:password@]host:port/db to share them between replicas"},
		{"insecure-no-auth", "VMCP_INSECURE_NO_AUTH", boolean(&h.InsecureNoAuth), "serve http without authentication, every caller one principal: for local testing only"},
		{"tokens-file", "VMCP_TOKENS_FILE", path(&h.TokensFile, ""), "file of 'principal sha256:HEX' lines: bearer tokens (hashed) and who they are; make one with 'mcp-server token new PRINCIPAL'"},
		{"jwks-url", "VMCP_JWKS_URL", text(&h.JWKSURL, ""), "JWKS of the authorization server whose JWT access tokens are accepted"},
		{"jwt-issuer", "VMCP_JWT_ISSUER", text(&h.JWTIssuer, ""), "required iss of JWT access tokens"},
		{"public-url", "VMCP_PUBLIC_URL", text(&h.PublicURL, ""), "this server's public URL, e.g. https://mcp.example.com/mcp: the audience of JWTs and the resource of its metadata"},
		{"principal-credentials", "VMCP_PRINCIPAL_CREDENTIALS", path(&h.PrincipalCredentials, ""), "JSON file of principals' own backend credentials: {\"alice\": {\"forevervm_token\": \"...\", \"fastvm_api_key\": \"...\"}}; their calls use them instead of the server's"},
		{"authorization-server", "VMCP_AUTHORIZATION_SERVERS", list(&h.AuthorizationServers), "comma-separated OAuth authorization servers to publish in the protected-resource metadata"},
	}
}

// usage is a setting's help as -h prints it: with its environment variable.
func (s setting) usage() string {
	if isBool(s.value) {
		return s.help + " (env " + s.env + "=1)"
	}
	return s.help + " (env " + s.env + ")"
}

// loadConfig reads the configuration: each setting's default, over it its
// environment variable (through getenv; empty is unset), over that its
// flag. Relative paths are cwd's; the allowed roots default to cwd on stdio.
// Secrets come from the environment or from files, never from flags. The
// result is validated.
func loadConfig(args []string, getenv func(string) string, cwd string) (Config, error) {
	var c Config
	all := c.settings()
	fs := flag.NewFlagSet("mcp-server", flag.ContinueOnError)
	for _, s := range all {
		fs.Var(s.value, s.flag, s.usage())
	}
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	fs.Usage = func() { serverUsage(fs) }

	// An environment variable that does not parse is an error unless its
	// flag overrides it, so both are gathered before either is reported.
	envErr := map[string]error{}
	for _, s := range all {
		v := getenv(s.env)
		if v == "" {
			continue
		}
		if err := setFromEnv(s.value, v); err != nil {
			envErr[s.flag] = fmt.Errorf("%s=%q: %w", s.env, v, err)
		}
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	fs.Visit(func(f *flag.Flag) { delete(envErr, f.Name) })
	for _, s := range all {
		if err := envErr[s.flag]; err != nil {
			return Config{}, err
		}
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}

	// Paths are the caller's, relative to cwd: a server that serves an
	// http server's configuration beside its own reads them from another
	// working directory.
	for _, s := range all {
		if p, ok := s.value.(relative); ok {
			p.resolve(cwd)
		}
	}
	if len(c.AllowedRoots) == 0 && c.HTTP.Transport == "stdio" {
		c.AllowedRoots = []string{cwd} // over http, host paths stay off unless named
	}
	c.TestResolveLoopback = getenv("VMCP_TEST_RESOLVE_LOOPBACK")
	if err := c.readSecrets(getenv); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// readSecrets fills the backends' credentials: from the environment, or
// from the files the settings name, which win.
func (c *Config) readSecrets(getenv func(string) string) error {
	c.ForeverVM.Token = getenv("FOREVERVM_TOKEN")
	if c.ForeverVM.TokenFile != "" {
		b, err := os.ReadFile(c.ForeverVM.TokenFile)
		if err != nil {
			return fmt.Errorf("--forevervm-token-file: %w", err)
		}
		c.ForeverVM.Token = strings.TrimSpace(string(b))
	}
	c.FastVM.APIKey = getenv("FASTVM_API_KEY")
	if c.FastVM.APIKeyFile != "" {
		b, err := os.ReadFile(c.FastVM.APIKeyFile)
		if err != nil {
			return fmt.Errorf("--fastvm-api-key-file: %w", err)
		}
		c.FastVM.APIKey = strings.TrimSpace(string(b))
	}
	// Only the hosted endpoint has principals of its own.
	if c.HTTP.Transport == "http" && c.HTTP.PrincipalCredentials != "" {
		creds, err := readCredentials(c.HTTP.PrincipalCredentials)
		if err != nil {
			return err
		}
		c.HTTP.Credentials = creds
	}
	return nil
}

// maxWarmMachines bounds --warm-machines: each holds a started sandbox.
const maxWarmMachines = 256

// pythonModule is a dotted Python module name.
var pythonModule = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// Validate checks the settings against each other and their ranges; its
// errors name the flags (and environment variables) and say what to give.
func (c *Config) Validate() error {
	l := c.Limits
	for _, v := range []struct {
		name string
		n    int64
	}{{"--memory-mb (VMCP_MEMORY_MB)", l.MemoryMB}, {"--disk-mb (VMCP_DISK_MB)", l.DiskMB}, {"--max-processes (VMCP_MAX_PROCESSES)", l.Processes},
		{"--max-memory-mb (VMCP_MAX_MEMORY_MB)", l.MaxMemoryMB}, {"--max-disk-mb (VMCP_MAX_DISK_MB)", l.MaxDiskMB}} {
		if v.n <= 0 {
			return fmt.Errorf("%s must be a positive whole number", v.name)
		}
	}
	if l.MemoryMB < minMemoryMiB {
		return fmt.Errorf("--memory-mb %d is too small for a machine to start Python: give at least %d", l.MemoryMB, minMemoryMiB)
	}
	if l.MaxMemoryMB < l.MemoryMB || l.MaxDiskMB < l.DiskMB {
		return errors.New("--max-memory-mb and --max-disk-mb must be at least --memory-mb and --disk-mb")
	}
	if c.CallSlots == 0 || c.CallSlots < -1 {
		return errors.New("--call-slots (VMCP_CALL_SLOTS) takes 1 or more calls at a time, or -1 for no limit")
	}
	if c.Warm.Machines < 0 || c.Warm.Machines > maxWarmMachines {
		return fmt.Errorf("--warm-machines (VMCP_WARM_MACHINES) takes 0 to %d machines", maxWarmMachines)
	}
	for _, m := range c.Warm.Imports {
		if !pythonModule.MatchString(m) {
			return fmt.Errorf("--warm-imports (VMCP_WARM_IMPORTS): %q is not a Python module name; give names such as numpy,pandas,matplotlib.pyplot", m)
		}
	}
	if c.PythonCheckpointInterval < 0 || c.PythonCheckpointInterval > 0 && c.PythonCheckpointInterval < time.Second {
		return errors.New("--python-checkpoint-interval (VMCP_PYTHON_CHECKPOINT_INTERVAL) takes 0 (off) or a duration of at least 1s, such as 5m")
	}
	if c.Warm.HotFor < 0 {
		return errors.New("--warm-hot-for (VMCP_WARM_HOT_FOR) takes a duration such as 2m, or 0 for never")
	}
	if c.IdleLocal < 0 || c.FastVM.Idle < 0 || c.ConversationTTL < 0 || c.SnapshotTTL < 0 {
		return errors.New("--idle-local, --idle-fastvm, --conversation-ttl and --snapshot-ttl take a duration such as 30m or 168h (VMCP_IDLE_LOCAL, VMCP_IDLE_FASTVM, VMCP_CONVERSATION_TTL, VMCP_SNAPSHOT_TTL), 0 for never")
	}
	if c.MaxOutputChars < 1000 || c.MaxOutputCharsLimit < c.MaxOutputChars {
		return fmt.Errorf("--max-output-chars %d, --max-output-chars-limit %d: give a budget of at least 1000 characters and a limit no smaller", c.MaxOutputChars, c.MaxOutputCharsLimit)
	}
	if c.MaxMachines < 0 || c.MaxSnapshots < 0 {
		return errors.New("--max-machines and --max-snapshots (VMCP_MAX_MACHINES, VMCP_MAX_SNAPSHOTS) take a whole number, 0 for no limit")
	}
	switch c.FastVM.IdleAction {
	case "auto", fastvmbackend.IdlePause, fastvmbackend.IdleSnapshot:
	default:
		return fmt.Errorf("--fastvm-idle-action %q: want pause, snapshot or auto", c.FastVM.IdleAction)
	}
	switch c.Backend {
	case "auto", "local":
	case "forevervm":
		if c.ForeverVM.Token == "" {
			return errors.New("--backend forevervm needs a ForeverVM token: set FOREVERVM_TOKEN or --forevervm-token-file")
		}
	case "fastvm":
		if c.FastVM.APIKey == "" {
			return errors.New("--backend fastvm needs a FastVM API key: set FASTVM_API_KEY or --fastvm-api-key-file")
		}
	default:
		return fmt.Errorf("--backend %q: want local, forevervm, fastvm or auto", c.Backend)
	}
	switch c.Network.Default {
	case "none", "open":
	case "allowlist":
		if len(c.Network.Allow) == 0 {
			return errors.New("--network-default allowlist needs domains in --network-allow")
		}
	default:
		return fmt.Errorf("--network-default %q: want none, allowlist or open", c.Network.Default)
	}
	if err := c.Network.Tools().Check(); err != nil {
		return err
	}
	if err := backend.ValidateDomains(c.Network.AllowPrivate); err != nil {
		return fmt.Errorf("--network-allow-private: %w", err)
	}
	if level, err := zerolog.ParseLevel(strings.ToLower(c.LogLevel)); err != nil || level == zerolog.NoLevel {
		return fmt.Errorf("--log-level %q: want trace, debug, info, warn, error or disabled", c.LogLevel)
	}
	return c.HTTP.validate()
}

// validate checks the hosted endpoint's settings; over stdio they are unused.
func (h *HTTPConfig) validate() error {
	switch h.Transport {
	case "stdio":
		return nil
	case "http":
	default:
		return fmt.Errorf("--transport %q: want stdio or http", h.Transport)
	}
	if h.MaxConcurrentCalls < 0 || h.MaxStreams < 0 || h.MaxInFlightRequestMB < 0 || h.MaxRequestMB <= 0 {
		return errors.New("--max-concurrent-calls, --max-streams and --max-inflight-request-mb take a whole number (0: no limit), --max-request-mb a positive one")
	}
	if h.TokensFile == "" && h.JWKSURL == "" && !h.InsecureNoAuth {
		return errors.New("--transport http needs authentication: --tokens-file and/or --jwks-url with --public-url (or --insecure-no-auth for local testing)")
	}
	if h.JWKSURL != "" && h.PublicURL == "" {
		return errors.New("--jwks-url needs --public-url: JWTs must be issued for this server (their audience)")
	}
	return nil
}

// Level is the log level; Validate has checked that it parses.
func (c *Config) Level() zerolog.Level {
	level, _ := zerolog.ParseLevel(strings.ToLower(c.LogLevel))
	return level
}

// Idle are the idle timeouts by backend name, as the tools take them.
func (c *Config) Idle() map[string]time.Duration {
	return map[string]time.Duration{"local": c.IdleLocal, "fastvm": c.FastVM.Idle}
}

// Egress is what the engine's proxy needs: the private domains, and the
// test resolver when a test asked for one.
func (c *Config) Egress() local.EgressOptions {
	return local.EgressOptions{PrivateAllowed: c.Network.AllowPrivate, Resolve: testResolver(c.TestResolveLoopback)}
}

// Local are the engine's limits of each machine, in bytes; the ones no
// setting names keep the engine's defaults.
func (l *MachineLimits) Local() local.Limits {
	return local.Limits{MemoryBytes: l.MemoryMB << 20, DiskBytes: l.DiskMB << 20, Processes: l.Processes}
}

// Tools is the network configuration as the tools take it.
func (n *NetworkSettings) Tools() tools.NetworkConfig {
	c := tools.NetworkConfig{Allow: n.Allow, Open: n.Open}
	switch n.Default {
	case "allowlist":
		c.Default = backend.Network{Allow: n.Allow}
	case "open":
		c.Default = backend.Network{Open: true}
	}
	return c
}

// idleAction is the backend's IdleAction: "" lets it choose (auto).
func (f *FastVMConfig) idleAction() string {
	if f.IdleAction == "auto" {
		return ""
	}
	return f.IdleAction
}

// Auth is the authentication's configuration: the JWTs' audience is the
// public URL.
func (h *HTTPConfig) Auth() auth.Config {
	return auth.Config{TokensFile: h.TokensFile, JWKSURL: h.JWKSURL, Issuer: h.JWTIssuer, Audience: h.PublicURL,
		ResourceURL: h.PublicURL, AuthorizationServers: h.AuthorizationServers}
}

// The kinds of setting. Each is a flag.Value bound to a field; its
// constructor sets the field to the default. Their errors say what to give,
// and serve flags and environment variables alike.

// field is a flag.Value of a T parsed by parse and shown by show.
type field[T any] struct {
	p     *T
	parse func(string) (T, error)
	show  func(T) string
}

// bind sets *p to def and returns the value that sets *p.
func bind[T any](p *T, def T, parse func(string) (T, error), show func(T) string) field[T] {
	*p = def
	return field[T]{p, parse, show}
}

// Set parses s into the field; on an error the field keeps its value.
func (f field[T]) Set(s string) error {
	v, err := f.parse(s)
	if err != nil {
		return err
	}
	*f.p = v
	return nil
}

// String shows the value; flag.PrintDefaults calls it on a zero field to
// learn what "no default" looks like.
func (f field[T]) String() string {
	if f.p == nil {
		return ""
	}
	return f.show(*f.p)
}

// text is a string setting.
func text(p *string, def string) flag.Value {
	return bind(p, def, func(s string) (string, error) { return s, nil }, func(s string) string { return s })
}

// pathField is a setting that names a host path, relative to the working
// directory of the one who gave it.
type pathField struct{ field[string] }

// relative is a setting whose paths resolve against a working directory.
type relative interface{ resolve(cwd string) }

func (f pathField) resolve(cwd string) { *f.p = absolute(*f.p, cwd) }

// path is a setting that names a file or directory.
func path(p *string, def string) flag.Value {
	return pathField{bind(p, def, func(s string) (string, error) { return s, nil }, func(s string) string { return s })}
}

// pathsField is a list of host paths, separated as PATH is.
type pathsField struct{ field[[]string] }

func (f pathsField) resolve(cwd string) {
	for i, p := range *f.p {
		(*f.p)[i] = absolute(p, cwd)
	}
}

// paths is a setting that lists directories; its default is none.
func paths(p *[]string) flag.Value {
	return pathsField{bind(p, nil, func(s string) ([]string, error) { return filepath.SplitList(s), nil },
		func(v []string) string { return strings.Join(v, string(filepath.ListSeparator)) })}
}

// absolute is p, relative to cwd if it is relative; "" stays "".
func absolute(p, cwd string) string {
	if p != "" && !filepath.IsAbs(p) {
		return filepath.Join(cwd, p)
	}
	return p
}

// list is a comma-separated setting; its default is none.
func list(p *[]string) flag.Value { return listOr(p, nil) }

// listOr is a comma-separated list with a default.
func listOr(p *[]string, def []string) flag.Value {
	return bind(p, def, func(s string) ([]string, error) { return splitList(s), nil }, func(v []string) string { return strings.Join(v, ",") })
}

// whole is a setting of a whole number; ranges are Validate's.
func whole[T int | int64](p *T, def T) flag.Value {
	return bind(p, def, func(s string) (T, error) {
		n, err := strconv.ParseInt(s, 10, 64)
		if v := T(n); err == nil && int64(v) == n {
			return v, nil
		}
		if errors.Is(err, strconv.ErrRange) || err == nil {
			return 0, errors.New("out of range: want a smaller whole number")
		}
		return 0, errors.New("want a whole number")
	}, func(v T) string { return strconv.FormatInt(int64(v), 10) })
}

// duration is a setting of a duration; its errors say what one looks like
// ("5" alone has no unit).
func duration(p *time.Duration, def time.Duration) flag.Value {
	return bind(p, def, parseDuration, time.Duration.String)
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return 0, fmt.Errorf("%s has no unit: give one, such as %sm, %ss or %sh (0 for never)", s, s, s, s)
		}
		return 0, fmt.Errorf("%q is not a duration: give a number with a unit, such as 30m, 90s or 2h (0 for never)", s)
	}
	return d, nil
}

// boolField is an on/off setting: a flag alone turns it on.
type boolField struct{ field[bool] }

// String is "false" for the zero boolField, as for flag.Bool, so that -h
// shows no default for a setting that is off.
func (f boolField) String() string {
	if f.p == nil {
		return "false"
	}
	return f.field.String()
}

// IsBoolFlag lets the flag stand alone (--network-open), as flag.Bool's do.
func (boolField) IsBoolFlag() bool { return true }

// boolean is an on/off setting, off by default.
func boolean(p *bool) flag.Value {
	return boolField{bind(p, false, func(s string) (bool, error) {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return false, errors.New("want true or false")
		}
		return b, nil
	}, strconv.FormatBool)}
}

func isBool(v flag.Value) bool {
	b, ok := v.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// setFromEnv sets v from an environment variable's value. An on/off
// variable is on with 1 and off with 0 (as the README documents), and
// anything else is refused rather than guessed: "true" was once silently
// off, a surprise for VMCP_DANGEROUSLY_DISABLE_SANDBOX either way.
func setFromEnv(v flag.Value, s string) error {
	if isBool(v) {
		switch s {
		case "1":
			s = "true"
		case "0":
			s = "false"
		default:
			return errors.New("want 1 (on) or 0 (off)")
		}
	}
	return v.Set(s)
}

// localInUse reports whether the local backend is where machines go by
// default (the preferred backend, served): only then does the server keep
// warm machines, and does doctor count a host that cannot run sandboxes as
// a failure rather than a warning.
func localInUse(cfg Config) bool {
	if cfg.HTTP.Transport == "http" && !cfg.HTTP.EnableLocalBackend {
		return false
	}
	return cfg.Backend == "local" || cfg.Backend == "auto" && cfg.FastVM.APIKey == "" && cfg.ForeverVM.Token == ""
}

// localOptions are the local engine's options as every opener of the state
// directory gives them (the server adds its warm pool and checkpoints).
func (c *Config) localOptions() local.Options {
	return local.Options{StateDir: c.StateDir, Limits: c.Limits.Local(), DangerouslyDisableSandbox: c.DangerouslyDisableSandbox, Egress: c.Egress()}
}
