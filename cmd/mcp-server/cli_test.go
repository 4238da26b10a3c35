package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	// The engine of the commands' tests starts this binary as the agent
	// of its sandboxes.
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

// cliResult is what a command printed and returned.
type cliResult struct {
	stdout, stderr string
	err            error
}

// runCLITest runs a command with env as its whole environment.
func runCLITest(t *testing.T, env map[string]string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runCLI(args, cliEnv{stdout: &out, stderr: &errOut, getenv: func(k string) string { return env[k] }, cwd: t.TempDir()})
	return cliResult{out.String(), errOut.String(), err}
}

// TestCLIDispatch: the commands are recognized before the server's flags,
// and only they.
func TestCLIDispatch(t *testing.T) {
	for _, arg := range []string{"machines", "snapshots", "doctor"} {
		if !isCLICommand(arg) {
			t.Errorf("%s is not a command", arg)
		}
	}
	for _, arg := range []string{"--state-dir", "token", "machine", ""} {
		if isCLICommand(arg) {
			t.Errorf("%q is taken for a command", arg)
		}
	}
}

// TestCLIArgs: a command's flags, the server's flags and the operands come
// in any order; what is wrong is said in one line.
func TestCLIArgs(t *testing.T) {
	r := &cliRun{cmd: findCommand("machines", "prune")}
	own := r.flagSet()
	ownArgs, serverArgs, operands, err := splitArgs([]string{"--dry-run", "a", "--state-dir", "/s", "-unused-for=2h", "--network-open", "b", "--", "--c"}, own)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ownArgs, " ") != "--dry-run -unused-for=2h" || strings.Join(serverArgs, " ") != "--state-dir /s --network-open" ||
		strings.Join(operands, " ") != "a b --c" {
		t.Errorf("own %q, server %q, operands %q", ownArgs, serverArgs, operands)
	}
	if err := own.Parse(ownArgs); err != nil || !r.flags.dryRun || r.flags.unusedFor.Hours() != 2 {
		t.Errorf("parsed %+v, %v", r.flags, err)
	}

	env := map[string]string{"VMCP_STATE_DIR": t.TempDir()}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"machines"}, "give a command: mcp-server machines list|rm|prune"},
		{[]string{"machines", "frob"}, `unknown command "frob"`},
		{[]string{"machines", "list", "--bogus"}, "unknown flag --bogus"},
		{[]string{"machines", "list", "--memory-mb", "lots"}, `--memory-mb "lots": want a whole number`},
		{[]string{"machines", "list", "--state-dir"}, "flag --state-dir needs a value"},
		{[]string{"machines", "list", "extra"}, "machines list takes no arguments"},
		{[]string{"machines", "rm"}, "usage: mcp-server machines rm ID..."},
		{[]string{"machines", "prune", "--unused-for", "3"}, "3 has no unit"},
		{[]string{"machines", "prune", "--json"}, "unknown flag --json"},
		{[]string{"doctor", "now"}, "doctor takes no arguments"},
		// Ids are checked before anything is opened or deleted.
		{[]string{"machines", "rm", "m-0123456789abcdef0123", "../../etc"}, `"../../etc" is not a machine id`},
		{[]string{"machines", "rm", "s-0123456789abcdef0123"}, "s-0123456789abcdef0123 is not a machine id: delete it with `mcp-server snapshots rm"},
		{[]string{"snapshots", "rm", "s-0123456789abcdef0123/.."}, "is not a snapshot id"},
		{[]string{"snapshots", "rm", "m-0123456789abcdef0123"}, "delete it with `mcp-server machines rm m-0123456789abcdef0123`"},
	} {
		res := runCLITest(t, env, c.args...)
		if res.err == nil || !strings.Contains(res.err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.args, res.err, c.want)
		}
	}
}

// TestCLIHelp: -h anywhere prints the command's usage on stdout and ends
// without an error status (flag.ErrHelp).
func TestCLIHelp(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"machines", "-h"}, []string{"usage: mcp-server machines COMMAND", "list", "rm", "prune"}},
		{[]string{"snapshots", "--help"}, []string{"usage: mcp-server snapshots COMMAND", "list", "rm"}},
		{[]string{"machines", "list", "--state-dir", "/x", "-h"}, []string{"usage: mcp-server machines list [flags]", "--json", "--state-dir", "VMCP_STATE_DIR"}},
		{[]string{"machines", "prune", "-h"}, []string{"--dry-run", "--unused-for", "no conversation refers to"}},
		{[]string{"machines", "rm", "-h"}, []string{"usage: mcp-server machines rm [flags] ID...", "Refuses while a server owns"}},
		{[]string{"doctor", "-h"}, []string{"usage: mcp-server doctor [flags]", "bubblewrap", "--json"}},
	} {
		res := runCLITest(t, nil, c.args...)
		if !errors.Is(res.err, flag.ErrHelp) {
			t.Errorf("%q: error %v, want flag.ErrHelp", c.args, res.err)
		}
		for _, w := range c.want {
			if !strings.Contains(res.stdout, w) {
				t.Errorf("%q: usage lacks %q:\n%s", c.args, w, res.stdout)
			}
		}
	}
	// The server's own -h names the commands.
	fs := flag.NewFlagSet("mcp-server", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.String("state-dir", "", "the state directory")
	serverUsage(fs)
	for _, w := range []string{"mcp-server machines list|rm|prune", "mcp-server snapshots list|rm", "mcp-server doctor", "-state-dir"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("the server's usage lacks %q:\n%s", w, out.String())
		}
	}
}

// TestCLIMissingStateDirectory: a state directory that does not exist, or
// holds no vmcp state (a mistyped --state-dir), lists nothing, and no
// command makes anything there.
func TestCLIMissingStateDirectory(t *testing.T) {
	other := t.TempDir()
	os.WriteFile(other+"/notes.txt", []byte("mine"), 0o600)
	res := runCLITest(t, map[string]string{"VMCP_STATE_DIR": other}, "machines", "list")
	if entries, _ := os.ReadDir(other); res.err != nil || !strings.Contains(res.stdout, "no local machines in "+other+" (no vmcp state there yet)") || len(entries) != 1 {
		t.Errorf("list of a directory without vmcp state: %+v; it now holds %v", res, entries)
	}

	dir := t.TempDir() + "/nope"
	env := map[string]string{"VMCP_STATE_DIR": dir}
	if res := runCLITest(t, env, "machines", "list"); res.err != nil || !strings.Contains(res.stdout, "no local machines in "+dir+" (no vmcp state there yet)") {
		t.Errorf("list: %+v", res)
	}
	if res := runCLITest(t, env, "snapshots", "list", "--json"); res.err != nil || !strings.Contains(res.stdout, `"snapshots": []`) {
		t.Errorf("snapshots list --json: %+v", res)
	}
	if res := runCLITest(t, env, "machines", "rm", "m-0123456789abcdef0123"); !errors.Is(res.err, errReported) || !strings.Contains(res.stderr, "not found") {
		t.Errorf("rm: %+v", res)
	}
	if res := runCLITest(t, env, "machines", "prune"); res.err != nil || !strings.Contains(res.stdout, "nothing to prune") {
		t.Errorf("prune: %+v", res)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("a command made the state directory: %v", err)
	}
}

// TestCLIDoctorCloudBackends: doctor makes a real request to each cloud
// backend configured, says whether it answered and took the key, and
// never prints the key; one that fails is a failed check (exit status 1).
func TestCLIDoctorCloudBackends(t *testing.T) {
	const fastKey, foreverToken = "fvk-secret-1234567890", "fvt-secret-0987654321"
	var sawKey, sawToken bool
	fast := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/org/quotas" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("X-API-Key") != fastKey {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"bad key ` + r.Header.Get("X-API-Key") + `"}`)) // echoes it: doctor must not
			return
		}
		sawKey = true
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"orgId":"org-42","limits":{},"usage":{}}`))
	}))
	defer fast.Close()
	forever := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/whoami" || r.Header.Get("Authorization") != "Bearer "+foreverToken {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		sawToken = true
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"account":"acme"}`))
	}))
	defer forever.Close()

	env := map[string]string{"VMCP_STATE_DIR": t.TempDir(), "FASTVM_API_KEY": fastKey, "FASTVM_BASE_URL": fast.URL,
		"FOREVERVM_TOKEN": foreverToken, "FOREVERVM_BASE_URL": forever.URL}
	res := runCLITest(t, env, "doctor", "--json")
	var report doctorReport
	if err := json.Unmarshal([]byte(res.stdout), &report); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, res.stdout)
	}
	verdicts := map[string]check{}
	for _, c := range report.Checks {
		verdicts[c.Name] = c
	}
	if c := verdicts["fastvm"]; c.Verdict != verdictOK || !strings.Contains(c.Detail, "org-42") || !sawKey {
		t.Errorf("fastvm: %+v", c)
	}
	if c := verdicts["forevervm"]; c.Verdict != verdictOK || !strings.Contains(c.Detail, "acme") || !sawToken {
		t.Errorf("forevervm: %+v", c)
	}
	// With cloud backends preferred, what the local backend lacks only
	// warns: the exit status is the cloud's.
	if res.err != nil || !report.OK {
		t.Errorf("doctor with working cloud backends: %v\n%s", res.err, res.stdout)
	}

	// A key refused, a service that does not answer.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + closed.Addr().String()
	closed.Close()
	env["FASTVM_API_KEY"] = "fvk-wrong-key-5555555555"
	env["FOREVERVM_BASE_URL"] = deadURL
	res = runCLITest(t, env, "doctor")
	if !errors.Is(res.err, errReported) {
		t.Errorf("doctor with failing backends: error %v", res.err)
	}
	for _, want := range []string{"fail  fastvm", "401", "check --fastvm-url (FASTVM_BASE_URL) and the key", "fail  forevervm", deadURL, "checks failed: fastvm, forevervm"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, res.stdout)
		}
	}
	for _, secret := range []string{fastKey, foreverToken, "fvk-wrong-key-5555555555"} {
		if strings.Contains(res.stdout+res.stderr, secret) {
			t.Errorf("doctor printed a key (%s):\n%s", secret, res.stdout)
		}
	}
}
