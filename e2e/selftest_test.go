//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// maskProc mounts over /proc what Docker's default masks and read-only
// paths do, then runs its arguments: a sandbox started there cannot mount
// a /proc of its own.
const maskProc = `set -e
for p in /proc/acpi /proc/scsi; do [ -d $p ] && mount -t tmpfs -o ro tmpfs $p; done
for p in /proc/kcore /proc/keys /proc/latency_stats /proc/timer_list /proc/timer_stats /proc/sched_debug; do [ -e $p ] && mount --bind /dev/null $p; done
for p in /proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger; do [ -e $p ] && mount -o bind,ro $p $p; done
exec "$@"
`

// TestSelfTestDiagnosesMaskedProc starts the server where /proc is masked
// as in a Docker container run without systempaths=unconfined: the server
// starts, logs one line that names the cause and the fix, and every local
// call answers with that line instead of a sandbox crash.
func TestSelfTestDiagnosesMaskedProc(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("masking /proc in a mount namespace needs root")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare (util-linux) is missing")
	}
	script := filepath.Join(t.TempDir(), "mask.sh")
	if err := os.WriteFile(script, []byte(maskProc), 0o755); err != nil {
		t.Fatal(err)
	}
	h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{wrap: []string{"unshare", "--mount", "--propagation", "private", "sh", script}})
	const cause = "so a sandbox cannot mount its own"
	if !logSays(h.stderr, cause) {
		t.Fatalf("no start-up line names the masked /proc:\n%s", h.stderr())
	}
	line := regexp.MustCompile(`ERR (the local sandbox cannot start on this host: [^\n]*)`).FindStringSubmatch(h.stderr())
	if line == nil {
		t.Fatalf("the diagnosis is not an error line of its own:\n%s", h.stderr())
	}
	for _, want := range []string{"systempaths=unconfined", "unmask=ALL", "Can't mount proc"} {
		if !strings.Contains(line[1], want) {
			t.Errorf("the diagnosis does not say %q: %s", want, line[1])
		}
	}
	for _, call := range []struct {
		tool string
		args map[string]any
	}{
		{"run_python", map[string]any{"code": "6*7"}},
		{"exec_command", map[string]any{"command": "echo hi"}},
		{"launch_vm", map[string]any{"name": "second"}},
	} {
		res, err := h.callErr(call.tool, call.args, nil)
		if err != nil {
			t.Fatalf("%s: %v", call.tool, err)
		}
		if !res.IsError || !strings.Contains(text(res), line[1]) {
			t.Errorf("%s answered %q, not the start-up diagnosis", call.tool, text(res))
		}
	}
	if n := strings.Count(h.stderr(), "ERR the local sandbox cannot start"); n != 1 {
		t.Errorf("the diagnosis was logged %d times at start-up, not once", n)
	}
}

// TestVersionIsGitDescribe: --version and the handshake's serverInfo
// report the version the binary was built with (git describe).
func TestVersionIsGitDescribe(t *testing.T) {
	out, err := exec.Command(serverBin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != buildVersion || got == "dev" {
		t.Errorf("--version printed %q, want %q", got, buildVersion)
	}
	h := start(t)
	if got := h.cs.InitializeResult().ServerInfo.Version; got != buildVersion {
		t.Errorf("serverInfo.version is %q, want %q", got, buildVersion)
	}
}
