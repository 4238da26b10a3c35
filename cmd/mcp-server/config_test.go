package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// envOf is a getenv over a map.
func envOf(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// TestConfigFromEnvironment: each kind of setting is read from its
// environment variable when no flag is given.
func TestConfigFromEnvironment(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		got  func(Config) any
		want any
	}{
		{map[string]string{"VMCP_STATE_DIR": "/env/state"}, func(c Config) any { return c.StateDir }, "/env/state"},
		{map[string]string{"VMCP_STATE_DIR": "rel/state"}, func(c Config) any { return c.StateDir }, "/work/rel/state"},
		{map[string]string{"VMCP_ALLOWED_ROOTS": "/a" + string(filepath.ListSeparator) + "b"}, func(c Config) any { return c.AllowedRoots }, []string{"/a", "/work/b"}},
		{map[string]string{"VMCP_MAX_MACHINES": "3"}, func(c Config) any { return c.MaxMachines }, 3},
		{map[string]string{"VMCP_MEMORY_MB": "512"}, func(c Config) any { return c.Limits.Local().MemoryBytes }, int64(512 << 20)},
		{map[string]string{"VMCP_IDLE_FASTVM": "2s"}, func(c Config) any { return c.FastVM.Idle }, 2 * time.Second},
		{map[string]string{"VMCP_CONVERSATION_TTL": "0"}, func(c Config) any { return c.ConversationTTL }, time.Duration(0)},
		{map[string]string{"VMCP_NETWORK_OPEN": "1"}, func(c Config) any { return c.Network.Open }, true},
		{map[string]string{"VMCP_NETWORK_OPEN": "0"}, func(c Config) any { return c.Network.Open }, false},
		{map[string]string{"VMCP_NETWORK_ALLOW": "pypi.org, *.github.com"}, func(c Config) any { return c.Network.Allow }, []string{"pypi.org", "*.github.com"}},
		{map[string]string{"VMCP_LOG_LEVEL": "DEBUG"}, func(c Config) any { return c.Level().String() }, "debug"},
		{map[string]string{"FASTVM_BASE_URL": "http://127.0.0.1:2"}, func(c Config) any { return c.FastVM.URL }, "http://127.0.0.1:2"},
		{map[string]string{"FASTVM_API_KEY": "k"}, func(c Config) any { return c.FastVM.APIKey }, "k"},
		{map[string]string{"VMCP_FASTVM_IDLE_ACTION": "auto"}, func(c Config) any { return c.FastVM.idleAction() }, ""},
		{map[string]string{"VMCP_TRANSPORT": "http", "VMCP_INSECURE_NO_AUTH": "1", "VMCP_MAX_STREAMS": "0"},
			func(c Config) any { return [3]any{c.HTTP.Transport, c.HTTP.InsecureNoAuth, c.HTTP.MaxStreams} }, [3]any{"http", true, 0}},
		{map[string]string{"VMCP_TRANSPORT": "http", "VMCP_TOKENS_FILE": "t", "VMCP_PUBLIC_URL": "https://x/mcp", "VMCP_AUTHORIZATION_SERVERS": "https://a,https://b"},
			func(c Config) any {
				a := c.HTTP.Auth()
				return [3]any{a.TokensFile, a.Audience, len(a.AuthorizationServers)}
			}, [3]any{"/work/t", "https://x/mcp", 2}},
	} {
		cfg, err := loadConfig(nil, envOf(tc.env), "/work")
		if err != nil {
			t.Errorf("%v: %v", tc.env, err)
			continue
		}
		if got := tc.got(cfg); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v: got %v, want %v", tc.env, got, tc.want)
		}
	}
}

// TestConfigFlagOverEnvironment: a flag wins over its environment
// variable, which wins over the default; a bad environment variable that
// a flag overrides does not matter.
func TestConfigFlagOverEnvironment(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		got  func(Config) any
		want any
	}{
		{map[string]string{"VMCP_STATE_DIR": "/env"}, []string{"--state-dir", "/flag"}, func(c Config) any { return c.StateDir }, "/flag"},
		{map[string]string{"VMCP_MAX_SNAPSHOTS": "5"}, []string{"--max-snapshots=7"}, func(c Config) any { return c.MaxSnapshots }, 7},
		{map[string]string{"VMCP_DISK_MB": "100"}, []string{"--disk-mb", "200"}, func(c Config) any { return c.Limits.DiskMB }, int64(200)},
		{map[string]string{"VMCP_IDLE_LOCAL": "1h"}, []string{"--idle-local", "90s"}, func(c Config) any { return c.IdleLocal }, 90 * time.Second},
		{map[string]string{"VMCP_DANGEROUSLY_DISABLE_SANDBOX": "1"}, []string{"--dangerously-disable-sandbox=false"}, func(c Config) any { return c.DangerouslyDisableSandbox }, false},
		{map[string]string{"VMCP_NETWORK_ALLOW": "a.example"}, []string{"--network-allow", "b.example"}, func(c Config) any { return c.Network.Allow }, []string{"b.example"}},
		{map[string]string{"VMCP_BACKEND": "fastvm"}, []string{"--backend", "local"}, func(c Config) any { return c.Backend }, "local"},
		{map[string]string{"VMCP_DISK_MB": "lots"}, []string{"--disk-mb", "300"}, func(c Config) any { return c.Limits.DiskMB }, int64(300)},
		{map[string]string{"VMCP_ALLOWED_ROOTS": "/a"}, []string{"--transport", "http", "--insecure-no-auth"}, func(c Config) any { return c.AllowedRoots }, []string{"/a"}},
		{nil, []string{"--max-output-chars", "2000", "--max-output-chars-limit", "2000"}, func(c Config) any { return [2]int{c.MaxOutputChars, c.MaxOutputCharsLimit} }, [2]int{2000, 2000}},
		// Defaults.
		{nil, nil, func(c Config) any { return [4]any{c.Backend, c.FastVM.IdleAction, c.Network.Default, c.HTTP.Listen} }, [4]any{"auto", "auto", "none", "127.0.0.1:8080"}},
		{nil, nil, func(c Config) any { return [3]int64{c.Limits.MemoryMB, c.Limits.MaxMemoryMB, c.Limits.MaxDiskMB} }, [3]int64{2048, 8192, 16384}},
		{nil, nil, func(c Config) any { return c.Idle() }, map[string]time.Duration{"local": 30 * time.Minute, "fastvm": 15 * time.Minute}},
	} {
		cfg, err := loadConfig(tc.args, envOf(tc.env), "/work")
		if err != nil {
			t.Errorf("%v %q: %v", tc.env, tc.args, err)
			continue
		}
		if got := tc.got(cfg); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v %q: got %v, want %v", tc.env, tc.args, got, tc.want)
		}
	}
}

// TestConfigBadValues: values that do not parse, are negative or out of
// range are refused, from a flag or from the environment, with a message
// that names the setting and says what to give.
func TestConfigBadValues(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		// Not a number.
		{nil, []string{"--max-machines", "lots"}, `invalid value "lots" for flag -max-machines: want a whole number`},
		{map[string]string{"VMCP_MAX_MACHINES": "lots"}, nil, `VMCP_MAX_MACHINES="lots": want a whole number`},
		{map[string]string{"VMCP_DISK_MB": "1.5"}, nil, `VMCP_DISK_MB="1.5": want a whole number`},
		{map[string]string{"VMCP_MAX_STREAMS": "x"}, nil, `VMCP_MAX_STREAMS="x": want a whole number`},
		{nil, []string{"--idle-local", "5"}, "5 has no unit: give one, such as 5m, 5s or 5h (0 for never)"},
		{map[string]string{"VMCP_CONVERSATION_TTL": "soon"}, nil, `VMCP_CONVERSATION_TTL="soon": "soon" is not a duration`},
		{map[string]string{"VMCP_NETWORK_OPEN": "yes"}, nil, `VMCP_NETWORK_OPEN="yes": want 1 (on) or 0 (off)`},
		{nil, []string{"--network-open=maybe"}, "want true or false"},
		// Negative.
		{nil, []string{"--max-machines", "-1"}, "--max-machines and --max-snapshots (VMCP_MAX_MACHINES, VMCP_MAX_SNAPSHOTS) take a whole number, 0 for no limit"},
		{map[string]string{"VMCP_MAX_SNAPSHOTS": "-2"}, nil, "--max-machines and --max-snapshots (VMCP_MAX_MACHINES, VMCP_MAX_SNAPSHOTS) take a whole number, 0 for no limit"},
		{nil, []string{"--memory-mb", "0"}, "--memory-mb (VMCP_MEMORY_MB) must be a positive whole number"},
		{map[string]string{"VMCP_MAX_PROCESSES": "-5"}, nil, "--max-processes (VMCP_MAX_PROCESSES) must be a positive whole number"},
		{nil, []string{"--idle-fastvm", "-1m"}, "--idle-local, --idle-fastvm, --conversation-ttl and --snapshot-ttl take a duration such as 30m or 168h"},
		{nil, []string{"--transport", "http", "--insecure-no-auth", "--max-concurrent-calls", "-1"},
			"--max-concurrent-calls, --max-streams and --max-inflight-request-mb take a whole number (0: no limit), --max-request-mb a positive one"},
		{nil, []string{"--transport", "http", "--insecure-no-auth", "--max-request-mb", "0"}, "--max-request-mb a positive one"},
		// Out of range, alone or against another setting.
		{nil, []string{"--max-snapshots", "99999999999999999999"}, "out of range: want a smaller whole number"},
		{map[string]string{"VMCP_MAX_OUTPUT_CHARS": "99999999999999999999"}, nil, `VMCP_MAX_OUTPUT_CHARS="99999999999999999999": out of range`},
		{nil, []string{"--memory-mb", "100"}, "--memory-mb 100 is too small for a machine to start Python: give at least 128"},
		{nil, []string{"--max-memory-mb", "1024"}, "--max-memory-mb and --max-disk-mb must be at least --memory-mb and --disk-mb"},
		{map[string]string{"VMCP_DISK_MB": "20000"}, nil, "--max-memory-mb and --max-disk-mb must be at least --memory-mb and --disk-mb"},
		{nil, []string{"--max-output-chars", "999"}, "--max-output-chars 999, --max-output-chars-limit 400000: give a budget of at least 1000 characters and a limit no smaller"},
		{nil, []string{"--max-output-chars", "5000", "--max-output-chars-limit", "4000"}, "give a budget of at least 1000 characters and a limit no smaller"},
		// Not one of the choices, or missing what it needs.
		{nil, []string{"--log-level", "loud"}, `--log-level "loud": want trace, debug, info, warn, error or disabled`},
		{nil, []string{"--backend", "cloud"}, `--backend "cloud": want local, forevervm, fastvm or auto`},
		{nil, []string{"--backend", "forevervm"}, "--backend forevervm needs a ForeverVM token: set FOREVERVM_TOKEN or --forevervm-token-file"},
		{map[string]string{"VMCP_BACKEND": "fastvm"}, nil, "--backend fastvm needs a FastVM API key: set FASTVM_API_KEY or --fastvm-api-key-file"},
		{nil, []string{"--fastvm-idle-action", "sleep"}, `--fastvm-idle-action "sleep": want pause, snapshot or auto`},
		{nil, []string{"--network-default", "everything"}, `--network-default "everything": want none, allowlist or open`},
		{nil, []string{"--network-default", "allowlist"}, "--network-default allowlist needs domains in --network-allow"},
		{nil, []string{"--network-default", "open"}, "--network-default open needs --network-open"},
		{nil, []string{"--network-allow", "a.*.b"}, "--network-allow: "},
		{nil, []string{"--network-allow-private", "*"}, "--network-allow-private: "},
		{nil, []string{"--transport", "carrier-pigeon"}, `--transport "carrier-pigeon": want stdio or http`},
		{nil, []string{"--transport", "http"}, "--transport http needs authentication"},
		{map[string]string{"VMCP_TRANSPORT": "http", "VMCP_JWKS_URL": "http://127.0.0.1:1/jwks"}, nil, "--jwks-url needs --public-url"},
		{nil, []string{"--forevervm-token-file", "/no/such/file"}, "--forevervm-token-file: "},
		{nil, []string{"--fastvm-api-key-file", "/no/such/file"}, "--fastvm-api-key-file: "},
		{nil, []string{"--transport", "http", "--insecure-no-auth", "--principal-credentials", "/no/such/file"}, "--principal-credentials: "},
		{nil, []string{"--nope"}, "flag provided but not defined: -nope"},
		{nil, []string{"extra"}, "unexpected arguments: extra"},
	} {
		_, err := loadConfig(tc.args, envOf(tc.env), "/work")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %q: %v, want %q", tc.env, tc.args, err, tc.want)
		}
	}
}

// TestValidate: the defaults are valid, and Validate alone (without
// loadConfig) refuses what the settings' ranges forbid.
func TestValidate(t *testing.T) {
	var c Config
	c.settings()
	if err := c.Validate(); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	for _, tc := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.Limits.DiskMB = 0 }, "--disk-mb (VMCP_DISK_MB) must be a positive whole number"},
		{func(c *Config) { c.ConversationTTL = -time.Second }, "--snapshot-ttl take a duration"},
		{func(c *Config) { c.LogLevel = "" }, `--log-level "": want`},
		{func(c *Config) { c.HTTP.Transport = "http"; c.HTTP.TokensFile = "/t"; c.HTTP.MaxInFlightRequestMB = -1 }, "--max-inflight-request-mb take a whole number"},
		{func(c *Config) { c.Network.Default = "allowlist"; c.Network.Allow = []string{"10.0.0.1"} }, "--network-allow: "},
	} {
		c := c
		tc.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", c, err, tc.want)
		}
	}
	// Over stdio, the hosted endpoint's settings are not checked: they are unused.
	c.HTTP.MaxStreams = -1
	if err := c.Validate(); err != nil {
		t.Errorf("stdio with a negative --max-streams: %v", err)
	}
}

// TestSettingsAreDocumented: every setting has a flag, an environment
// variable and help text, none shared with another, and the README's
// configuration tables list every flag.
func TestSettingsAreDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	flags, envs := map[string]bool{}, map[string]bool{}
	var c Config
	for _, s := range c.settings() {
		if s.flag == "" || s.env == "" || strings.TrimSpace(s.help) == "" || s.value == nil {
			t.Errorf("setting %+v lacks a flag, an environment variable, help or a field", s)
		}
		if flags[s.flag] || envs[s.env] {
			t.Errorf("--%s or %s is declared twice", s.flag, s.env)
		}
		flags[s.flag], envs[s.env] = true, true
		// The README names each flag in backquotes, the JWT flags three in one row.
		if !strings.Contains(string(readme), "`--"+s.flag+"`") {
			t.Errorf("README.md does not mention `--%s`", s.flag)
		}
	}
	if len(flags) < 40 {
		t.Errorf("only %d settings: the table lost some", len(flags))
	}
}

// TestHelp: -h lists every flag with its environment variable and ends
// the program without an error.
func TestHelp(t *testing.T) {
	_, err := loadConfig([]string{"-h"}, envOf(nil), "/work")
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	var c Config
	for _, s := range c.settings() {
		if u := s.usage(); !strings.Contains(u, "(env "+s.env) {
			t.Errorf("--%s's help does not name %s: %s", s.flag, s.env, u)
		}
	}
}
