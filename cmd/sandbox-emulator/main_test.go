//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/emulator/fastvm"
	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

const testToken = "cmdtest.s3cret"

// Builds the command, runs it, waits for its "listening" line, asks whoami
// over plain HTTP, then stops it with SIGTERM: it must exit 0.
func TestCommandServesAndExitsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "sandbox-emulator")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	cmd := exec.CommandContext(ctx, bin, "--forevervm-listen", "127.0.0.1:0", "--fastvm-listen", "127.0.0.1:0", "--log-level", "debug")
	// The token, the key and the state directory come from the environment fallbacks.
	cmd.Env = append(os.Environ(), "FOREVERVM_TOKEN="+testToken, "FASTVM_API_KEY=fastvm-s3cret-key", "VMCP_EMULATOR_STATE_DIR="+filepath.Join(dir, "state"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	lines := make(chan string, 100)
	logDone := make(chan string)
	go func() {
		var all strings.Builder
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			select {
			case lines <- sc.Text():
			default:
			}
		}
		logDone <- all.String()
	}()
	listening := regexp.MustCompile(`^(forevervm|fastvm) emulator listening on (http://127\.0\.0\.1:\d+)$`)
	urls := map[string]string{}
	timeout := time.After(60 * time.Second)
	for len(urls) < 2 {
		select {
		case line := <-lines:
			if m := listening.FindStringSubmatch(line); m != nil {
				urls[m[1]] = m[2]
			}
		case <-timeout:
			t.Fatalf("no \"listening\" lines for both emulators within 60 s: %v", urls)
		}
	}
	base := urls["forevervm"]

	// FastVM answers with its API key, and mints presigned URLs on its own
	// listening address.
	req, _ := http.NewRequestWithContext(ctx, "GET", urls["fastvm"]+"/v1/vms", nil)
	req.Header.Set("X-API-Key", "fastvm-s3cret-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("fastvm list: %d %s", resp.StatusCode, body)
	}

	get := func(auth string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/whoami", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := get("Bearer " + testToken); status != 200 || body != `{"account":"emulator"}` {
		t.Fatalf("whoami: %d %s", status, body)
	}
	if status, _ := get(""); status != http.StatusUnauthorized {
		t.Fatalf("whoami without a token: %d, want 401", status)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v, want exit status 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30 s after SIGTERM")
	}
	if log := <-logDone; strings.Contains(log, "s3cret") || strings.Contains(log, "fastvm-s3cret-key") {
		t.Fatalf("the token appears in the log:\n%s", log)
	}
}

// Flags win over the environment, which wins over the defaults.
func TestParseConfig(t *testing.T) {
	env := map[string]string{
		"FOREVERVM_EMULATOR_LISTEN": "127.0.0.1:1",
		"FOREVERVM_TOKEN":           "env.token",
		"VMCP_EMULATOR_STATE_DIR":   "/env/state",
	}
	getenv := func(k string) string { return env[k] }
	cfg, err := parseConfig(nil, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.forevervmListen != "127.0.0.1:1" || cfg.forevervmToken != "env.token" || cfg.stateDir != "/env/state" || cfg.logLevel != zerolog.InfoLevel ||
		cfg.fastvmProxyDomain != fastvm.DefaultProxyDomain || cfg.fastvmNoExtensions {
		t.Fatalf("from the environment: %+v", cfg)
	}
	env["FASTVM_EMULATOR_PROXY_DOMAIN"], env["FASTVM_EMULATOR_NO_EXTENSIONS"] = "proxy.env.test", "1"
	if cfg, err = parseConfig(nil, getenv, io.Discard); err != nil || cfg.fastvmProxyDomain != "proxy.env.test" || !cfg.fastvmNoExtensions {
		t.Fatalf("FastVM settings from the environment: %+v, %v", cfg, err)
	}
	if cfg, err = parseConfig([]string{"--fastvm-proxy-domain", "p.flag.test", "--fastvm-no-extensions=false"}, getenv, io.Discard); err != nil || cfg.fastvmProxyDomain != "p.flag.test" || cfg.fastvmNoExtensions {
		t.Fatalf("FastVM settings from flags: %+v, %v", cfg, err)
	}
	env["FASTVM_EMULATOR_VM_NETWORK_ALLOW"] = "pypi.org, *.pythonhosted.org"
	if cfg, err = parseConfig(nil, getenv, io.Discard); err != nil || !slices.Equal(cfg.fastvmVMNetworkAllow, []string{"pypi.org", "*.pythonhosted.org"}) {
		t.Fatalf("VMs' network from the environment: %+v, %v", cfg, err)
	}
	if cfg, err = parseConfig([]string{"--fastvm-vm-network-allow", ""}, getenv, io.Discard); err != nil || len(cfg.fastvmVMNetworkAllow) != 0 {
		t.Fatalf("no network for VMs from the flag: %+v, %v", cfg, err)
	}
	delete(env, "FASTVM_EMULATOR_PROXY_DOMAIN")
	delete(env, "FASTVM_EMULATOR_NO_EXTENSIONS")
	delete(env, "FASTVM_EMULATOR_VM_NETWORK_ALLOW")
	cfg, err = parseConfig([]string{"--forevervm-listen", "127.0.0.1:2", "--forevervm-token", "flag.token", "--state-dir", "/flag/state", "--log-level", "warn"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.forevervmListen != "127.0.0.1:2" || cfg.forevervmToken != "flag.token" || cfg.stateDir != "/flag/state" || cfg.logLevel != zerolog.WarnLevel {
		t.Fatalf("from flags: %+v", cfg)
	}

	none := func(string) string { return "" }
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--forevervm-listen"},
		{[]string{"--fastvm-listen", "127.0.0.1:0"}, "--fastvm-api-key"},
		{[]string{"--forevervm-listen", "127.0.0.1:0"}, "--forevervm-token"},
		{[]string{"--forevervm-listen", "127.0.0.1:0", "--forevervm-token", "a.b", "--log-level", "loud"}, "--log-level"},
		{[]string{"--forevervm-listen", "127.0.0.1:0", "--forevervm-token", "a.b", "extra"}, "unexpected arguments"},
		{[]string{"--fastvm-listen", "127.0.0.1:0", "--fastvm-api-key", "k", "--fastvm-vm-network-allow", "127.0.0.1"}, "--fastvm-vm-network-allow"},
	} {
		if _, err := parseConfig(tc.args, none, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%q: error %v, want one naming %s", tc.args, err, tc.want)
		}
	}
	if _, err := parseConfig([]string{"-h"}, none, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	if d := defaultStateDir(); filepath.Base(d) != "vmcp-emulator" || d == local.DefaultStateDir() {
		t.Fatalf("the default state dir %s must not be vmcp's own", defaultStateDir())
	}
}
