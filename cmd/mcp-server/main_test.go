package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"
)

func TestParseConfig(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	cfg, err := parseConfig(nil, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.logLevel != zerolog.InfoLevel || len(cfg.allowedRoots) != 1 || cfg.allowedRoots[0] != "/work" || cfg.stateDir == "" {
		t.Errorf("defaults: %+v", cfg)
	}

	env["VMCP_STATE_DIR"] = "/env/state"
	env["VMCP_LOG_LEVEL"] = "DEBUG"
	env["VMCP_ALLOWED_ROOTS"] = "/a:/b"
	cfg, err = parseConfig(nil, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.stateDir != "/env/state" || cfg.logLevel != zerolog.DebugLevel || len(cfg.allowedRoots) != 2 || cfg.allowedRoots[1] != "/b" {
		t.Errorf("environment: %+v", cfg)
	}

	cfg, err = parseConfig([]string{"--state-dir", "/flag/state", "--log-level", "warn", "--allowed-roots", "/c"}, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.stateDir != "/flag/state" || cfg.logLevel != zerolog.WarnLevel || len(cfg.allowedRoots) != 1 || cfg.allowedRoots[0] != "/c" {
		t.Errorf("flags over environment: %+v", cfg)
	}

	cfg, err = parseConfig([]string{"--memory-mb", "512", "--max-processes", "64"}, getenv, "/work")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.limits.MemoryBytes != 512<<20 || cfg.limits.Processes != 64 || cfg.limits.DiskBytes != 1<<30 || cfg.backend != "auto" || cfg.noSandbox {
		t.Errorf("limits: %+v", cfg)
	}
	env["VMCP_DISK_MB"] = "100"
	env["VMCP_DANGEROUSLY_DISABLE_SANDBOX"] = "1"
	if cfg, _ = parseConfig(nil, getenv, "/work"); cfg.limits.DiskBytes != 100<<20 || !cfg.noSandbox {
		t.Errorf("limits from the environment: %+v", cfg)
	}
	env["VMCP_DISK_MB"] = "lots"
	if _, err := parseConfig(nil, getenv, "/work"); err == nil {
		t.Error("VMCP_DISK_MB=lots accepted")
	}
	delete(env, "VMCP_DISK_MB")

	for _, args := range [][]string{{"--log-level", "loud"}, {"extra"}, {"--nope"}, {"--memory-mb", "0"}, {"--backend", "cloud"},
		{"--backend", "forevervm"}, {"--forevervm-token-file", "/no/such/file"}} {
		if _, err := parseConfig(args, getenv, "/work"); err == nil {
			t.Errorf("%q accepted", args)
		}
	}

	// ForeverVM: the token comes from the environment or a file, never a flag.
	env["FOREVERVM_TOKEN"] = "id.from-env"
	if cfg, err := parseConfig([]string{"--backend", "forevervm"}, getenv, "/work"); err != nil || cfg.forevervm.token != "id.from-env" || cfg.forevervm.url != "https://api.forevervm.com" {
		t.Errorf("forevervm from the environment: %+v, %v", cfg.forevervm, err)
	}
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("id.from-file\n"), 0o600)
	if cfg, err := parseConfig([]string{"--forevervm-token-file", file, "--forevervm-url", "http://127.0.0.1:1"}, getenv, "/work"); err != nil ||
		cfg.forevervm.token != "id.from-file" || cfg.forevervm.url != "http://127.0.0.1:1" {
		t.Errorf("forevervm from a file: %+v, %v", cfg.forevervm, err)
	}
}
