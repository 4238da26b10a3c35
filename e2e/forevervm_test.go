//go:build linux

package e2e

import (
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	forevervmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

// forevervmEmulator serves the ForeverVM API on loopback, running machines
// on an engine of this test process; it returns the base URL and token.
func forevervmEmulator(t *testing.T) (url, token string) {
	t.Helper()
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	token = "e2e.secret-token-value"
	emu, err := forevervmemu.New(forevervmemu.Options{Engine: engine, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
		engine.Close()
	})
	return srv.URL, token
}

// startForeverVM runs the server with the forevervm backend pointed at url.
func startForeverVM(t *testing.T, state, url, token string) *harness {
	// The project is the state directory's parent: a restart on the same
	// state is the same project, whose conversation it continues.
	return startWith(t, state, filepath.Dir(state), clientOptions{
		serverArgs: []string{"--forevervm-url", url},
		serverEnv:  []string{"FOREVERVM_TOKEN=" + token},
	})
}

var forevervmName = regexp.MustCompile(`^[A-Za-z0-9]{16}$`)

// TestForeverVMConversation: with a ForeverVM token, run_python runs on a
// ForeverVM machine (here the emulator's) and behaves exactly as on the
// local backend; the machine is found again after a restart of the server,
// with its state.
func TestForeverVMConversation(t *testing.T) {
	t.Parallel()
	url, token := forevervmEmulator(t)
	state := t.TempDir()
	h := startForeverVM(t, state, url, token)

	pythonConversation(t, h)
	pythonProgress(t, h)

	var out tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "x"}, &out)
	if !forevervmName.MatchString(out.Machine) {
		t.Errorf("run_python ran on %q, not a ForeverVM machine", out.Machine)
	}
	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &list)
	var found bool
	for _, m := range list.Machines {
		if m.ID == out.Machine {
			found = m.Backend == "forevervm" && m.Default
		}
	}
	if !found {
		t.Errorf("list_machines: %+v; want %s as the default forevervm machine", list.Machines, out.Machine)
	}

	// Commands run on the same machine, built on its REPL.
	var cmd tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "echo hi"}, &cmd)
	if cmd.Machine != out.Machine || cmd.Stdout != "hi\n" {
		t.Errorf("exec_command: %+v; want hi from %s", cmd, out.Machine)
	}
	h.fails(t, "delete_vm", map[string]any{"machine": out.Machine}, "cannot be deleted")
	h.fails(t, "run_python", map[string]any{"code": "1", "machine": "AAAAAAAAAAAAAAAA"}, "not found")

	// A new server process finds its default machine again; ForeverVM keeps
	// the interpreter's state.
	h.cs.Close()
	h2 := startForeverVM(t, state, url, token)
	h2.ok(t, "run_python", map[string]any{"code": "x * 2"}, &out)
	if out.Value == nil || *out.Value != "82" || !forevervmName.MatchString(out.Machine) {
		t.Errorf("after a restart: %+v", out)
	}
	if strings.Contains(h2.stderr(), token) || strings.Contains(h.stderr(), token) {
		t.Error("the token appears in the server's log")
	}
}
