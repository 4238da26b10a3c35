package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/auth"
)

func TestLoadConfig(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	cfg, err := loadConfig(nil, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Level() != zerolog.InfoLevel || len(cfg.AllowedRoots) != 1 || cfg.AllowedRoots[0] != "/work" || cfg.StateDir == "" {
		t.Errorf("defaults: %+v", cfg)
	}

	env["VMCP_STATE_DIR"] = "/env/state"
	env["VMCP_LOG_LEVEL"] = "DEBUG"
	env["VMCP_ALLOWED_ROOTS"] = "/a:/b"
	cfg, err = loadConfig(nil, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != "/env/state" || cfg.Level() != zerolog.DebugLevel || len(cfg.AllowedRoots) != 2 || cfg.AllowedRoots[1] != "/b" {
		t.Errorf("environment: %+v", cfg)
	}

	cfg, err = loadConfig([]string{"--state-dir", "/flag/state", "--log-level", "warn", "--allowed-roots", "/c"}, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != "/flag/state" || cfg.Level() != zerolog.WarnLevel || len(cfg.AllowedRoots) != 1 || cfg.AllowedRoots[0] != "/c" {
		t.Errorf("flags over environment: %+v", cfg)
	}

	cfg, err = loadConfig([]string{"--memory-mb", "512", "--max-processes", "64"}, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.MemoryMB != 512 || cfg.Limits.Processes != 64 || cfg.Limits.DiskMB != 1024 || cfg.Backend != "auto" || cfg.DangerouslyDisableSandbox {
		t.Errorf("limits: %+v", cfg)
	}
	env["VMCP_DISK_MB"] = "100"
	env["VMCP_DANGEROUSLY_DISABLE_SANDBOX"] = "1"
	if cfg, _ = loadConfig(nil, getenv, "/work"); cfg.Limits.DiskMB != 100 || !cfg.DangerouslyDisableSandbox {
		t.Errorf("limits from the environment: %+v", cfg)
	}
	env["VMCP_DISK_MB"] = "lots"
	if _, err := loadConfig(nil, getenv, "/work"); err == nil {
		t.Error("VMCP_DISK_MB=lots accepted")
	}
	delete(env, "VMCP_DISK_MB")

	for _, args := range [][]string{{"--log-level", "loud"}, {"extra"}, {"--nope"}, {"--memory-mb", "0"}, {"--backend", "cloud"},
		{"--backend", "forevervm"}, {"--forevervm-token-file", "/no/such/file"}, {"--memory-mb", "10"}, {"--max-memory-mb", "1024"},
		{"--network-allow", "10.0.0.1"}, {"--network-allow", "a.*.b"}, {"--network-default", "allowlist"}, {"--network-default", "open"},
		{"--network-default", "everything"}, {"--network-allow-private", "*"}} {
		if _, err := loadConfig(args, getenv, "/work"); err == nil {
			t.Errorf("%q accepted", args)
		}
	}

	// ForeverVM: the token comes from the environment or a file, never a flag.
	env["FOREVERVM_TOKEN"] = "id.from-env"
	if cfg, err := loadConfig([]string{"--backend", "forevervm"}, getenv, "/work"); err != nil || cfg.ForeverVM.Token != "id.from-env" || cfg.ForeverVM.URL != "https://api.forevervm.com" {
		t.Errorf("forevervm from the environment: %+v, %v", cfg.ForeverVM, err)
	}
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("id.from-file\n"), 0o600)
	if cfg, err := loadConfig([]string{"--forevervm-token-file", file, "--forevervm-url", "http://127.0.0.1:1"}, getenv, "/work"); err != nil ||
		cfg.ForeverVM.Token != "id.from-file" || cfg.ForeverVM.URL != "http://127.0.0.1:1" {
		t.Errorf("forevervm from a file: %+v, %v", cfg.ForeverVM, err)
	}
}

func TestTokenCommand(t *testing.T) {
	var out strings.Builder
	if err := tokenCommand([]string{"new", "alice"}, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	token := strings.TrimSpace(lines[0][strings.LastIndex(lines[0], " "):])
	if !strings.HasPrefix(token, "vmcp_") || lines[2] != "alice "+auth.HashToken(token) {
		t.Fatalf("output:\n%s", out.String())
	}
	for _, args := range [][]string{nil, {"new"}, {"old", "alice"}, {"new", "bad principal"}} {
		if err := tokenCommand(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

func TestLoadHTTPConfig(t *testing.T) {
	none := func(string) string { return "" }
	if _, err := loadConfig([]string{"--transport", "http"}, none, "/work"); err == nil || !strings.Contains(err.Error(), "needs authentication") {
		t.Errorf("http without auth: %v", err)
	}
	if _, err := loadConfig([]string{"--transport", "carrier-pigeon"}, none, "/work"); err == nil {
		t.Error("an unknown transport accepted")
	}
	if _, err := loadConfig([]string{"--transport", "http", "--jwks-url", "http://127.0.0.1:1/jwks"}, none, "/work"); err == nil || !strings.Contains(err.Error(), "--public-url") {
		t.Errorf("a JWKS without an audience: %v", err)
	}
	cfg, err := loadConfig([]string{"--transport", "http", "--tokens-file", "/t", "--allowed-origins", "https://a.example, https://b.example"}, none, "/work")
	if err != nil {
		t.Fatal(err)
	}
	// Hosted defaults: no host directories, no local machines.
	if len(cfg.AllowedRoots) != 0 || cfg.HTTP.EnableLocalBackend || len(cfg.HTTP.AllowedOrigins) != 2 || cfg.HTTP.MaxConcurrentCalls != 16 {
		t.Errorf("hosted defaults: roots %v, local %v, origins %v, concurrent %d", cfg.AllowedRoots, cfg.HTTP.EnableLocalBackend, cfg.HTTP.AllowedOrigins, cfg.HTTP.MaxConcurrentCalls)
	}
	if cfg, _ := loadConfig(nil, none, "/work"); len(cfg.AllowedRoots) != 1 || cfg.AllowedRoots[0] != "/work" {
		t.Errorf("stdio keeps the working directory as its root: %v", cfg.AllowedRoots)
	}
}

// TestDurationWithoutUnit: a duration flag given a bare number says it
// needs a unit, with examples.
func TestDurationWithoutUnit(t *testing.T) {
	_, err := loadConfig([]string{"--idle-local", "5"}, func(string) string { return "" }, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "5 has no unit: give one, such as 5m, 5s or 5h (0 for never)") {
		t.Errorf("--idle-local 5: %v", err)
	}
	_, err = loadConfig([]string{"--conversation-ttl", "soon"}, func(string) string { return "" }, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), `"soon" is not a duration`) {
		t.Errorf("--conversation-ttl soon: %v", err)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "localhost:8080": true, "[::1]:8080": true,
		"0.0.0.0:8080": false, ":8080": false, "10.0.0.5:8080": false, "nonsense": false,
	} {
		if got := loopbackOnly(addr); got != want {
			t.Errorf("loopbackOnly(%q) = %v, want %v", addr, got, want)
		}
	}
}
