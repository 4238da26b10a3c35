//go:build linux

package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/tools"
)

// metric reads one sample of the server's /metrics, or "" if absent.
func metric(t *testing.T, base, token, name string) string {
	t.Helper()
	_, body := getWithToken(t, base+"/metrics", token)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestWarmMachines: with --warm-machines, a new conversation's first call
// gets a machine of the pool, already running; the next conversation gets
// another one, which has none of the first one's variables, files or
// processes; the pool refills and says so in /metrics.
func TestWarmMachines(t *testing.T) {
	if withoutEngine() {
		t.Skip("the server was built without the local engine")
	}
	t.Parallel()
	const token = "vmcp_alice-warm"
	tokens := tokensFile(t, map[string]string{"alice": token})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend", "--warm-machines", "1", "--warm-imports", "json,csv"})
	waitReady := func() {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for metric(t, s.base, token, `vmcp_warm_machines{state="ready"}`) != "1" {
			if time.Now().After(deadline) {
				t.Fatalf("the pool did not fill within a minute:\n%s", s.log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitReady()
	if got := metric(t, s.base, token, `vmcp_warm_machines{state="target"}`); got != "1" {
		t.Errorf("target %q, want 1", got)
	}
	if got := metric(t, s.base, token, `vmcp_warm_machines_evicted_total`); got != "0" {
		t.Errorf("evicted %q, want 0", got)
	}

	a := s.connect(t, false, token)
	var first tools.RunPythonOutput
	a.ok(t, "run_python", map[string]any{"code": "import sys; secret = 'a'; open('mine.txt', 'w').write('a'); 'csv' in sys.modules", "session": "new"}, &first)
	if first.Value == nil || *first.Value != "True" || first.StateReset != "" {
		t.Errorf("the first call in a warm machine: %+v", first)
	}
	var bg tools.ExecCommandOutput
	a.ok(t, "exec_command", map[string]any{"command": "sleep 1000 >/dev/null 2>&1 & echo started", "session": first.Session}, &bg)
	if got := metric(t, s.base, token, `vmcp_warm_machine_requests_total{result="hit"}`); got != "1" {
		t.Errorf("hits %q after one new conversation, want 1", got)
	}

	waitReady()
	b := s.connect(t, false, token)
	var second tools.RunPythonOutput
	b.ok(t, "run_python", map[string]any{"code": "import os; 'secret' in globals(), [f for f in os.listdir('.') if f != '.local']", "session": "new"}, &second)
	// (.local is where pip installs: every machine's interpreter makes it.)
	if second.Machine == first.Machine || second.Value == nil || *second.Value != "(False, [])" {
		t.Errorf("the second conversation's machine %s (the first's %s): %v", second.Machine, first.Machine, strValue(second.Value))
	}
	var ps tools.ExecCommandOutput
	b.ok(t, "exec_command", map[string]any{"command": "ps -eo comm=", "session": second.Session}, &ps)
	if strings.Contains(ps.Stdout, "sleep") {
		t.Errorf("the second machine runs the first one's processes:\n%s", ps.Stdout)
	}
	if got := metric(t, s.base, token, `vmcp_warm_machine_requests_total{result="hit"}`); got != "2" {
		t.Errorf("hits %q after two new conversations, want 2", got)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(s.log.String(), "warm machines ready for new conversations"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line for the pool:\n%s", s.log)
		}
	}
}

func strValue(p *string) string {
	if p == nil {
		return "<none>"
	}
	return *p
}
