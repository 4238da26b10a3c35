//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/tools"
)

// cliRun is what a command of the binary printed, and its exit status.
type cliRun struct {
	stdout, stderr string
	code           int
}

// runCommand runs `mcp-server args... --state-dir state`.
func runCommand(t *testing.T, state string, args ...string) cliRun {
	t.Helper()
	cmd := exec.Command(serverBin, append(args, "--state-dir", state)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("mcp-server %s: %v", strings.Join(args, " "), err)
	}
	return cliRun{out.String(), errOut.String(), cmd.ProcessState.ExitCode()}
}

// listed is `machines list --json` as the test reads it.
type listed struct {
	ServerRunning      bool `json:"server_running"`
	ServerPID          int  `json:"server_pid"`
	ConversationsKnown bool `json:"conversations_known"`
	Machines           []struct {
		ID, Name, Status, Conversation string
		Default                        bool
	} `json:"machines"`
}

func listMachines(t *testing.T, state string) listed {
	t.Helper()
	r := runCommand(t, state, "machines", "list", "--json")
	var l listed
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || r.code != 0 {
		t.Fatalf("machines list --json: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	return l
}

// TestCommandLineMachines: machines made through a server are seen from
// the command line while it runs, and the commands that delete refuse,
// naming the server that owns the state directory (not a front end beside
// it). Once it stops, `machines list` shows them with their conversations,
// `machines rm` deletes one, `machines prune` the rest by its rule, and
// `snapshots rm` the snapshot; a server started again finds its
// conversations consistent and works on. `doctor` passes on this host.
func TestCommandLineMachines(t *testing.T) {
	state, root := t.TempDir(), t.TempDir()
	h := startIn(t, state, root)
	var first tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "x = 1"}, &first)
	var alpha, beta tools.LaunchVMOutput
	h.ok(t, "launch_vm", map[string]any{"name": "alpha"}, &alpha)
	h.ok(t, "launch_vm", map[string]any{"name": "beta", "session": "new"}, &beta)
	var snap tools.SnapshotVMOutput
	h.ok(t, "snapshot_vm", map[string]any{"machine": alpha.Machine, "name": "s1"}, &snap)
	// A second client's server serves through the first, which owns the
	// state directory.
	front := startIn(t, state, t.TempDir())
	front.ok(t, "list_machines", nil, nil)
	owner := h.cmd.Process.Pid

	l := listMachines(t, state)
	if !l.ServerRunning || l.ServerPID != owner || l.ConversationsKnown || len(l.Machines) != 3 {
		t.Errorf("machines list while the server runs: %+v", l)
	}
	for _, m := range l.Machines {
		if m.Status != "unknown" {
			t.Errorf("machine %s while the server runs: status %q", m.ID, m.Status)
		}
	}
	refusal := fmt.Sprintf("a vmcp server (pid %d) owns state directory %s", owner, state)
	for _, args := range [][]string{{"machines", "rm", first.Machine}, {"machines", "prune"}, {"snapshots", "rm", snap.SnapshotID}} {
		r := runCommand(t, state, args...)
		if r.code != 1 || !strings.Contains(r.stderr, refusal) || !strings.Contains(r.stderr, "Stop that server") {
			t.Errorf("%s while the server runs: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	front.ok(t, "run_python", map[string]any{"code": "1"}, nil) // nothing was taken from the owner
	front.cs.Close()
	h.cs.Close()

	// The server has stopped.
	l = listMachines(t, state)
	byID := map[string]int{}
	for i, m := range l.Machines {
		byID[m.ID] = i
		if m.Status != "stopped" || m.Conversation == "" {
			t.Errorf("machine %+v after the server stopped", m)
		}
	}
	if l.ServerRunning || !l.ConversationsKnown || len(l.Machines) != 4 { // the front end's client made one more
		t.Fatalf("machines list after the server stopped: %+v", l)
	}
	if m := l.Machines[byID[alpha.Machine]]; !m.Default || m.Name != "alpha" || m.Conversation != l.Machines[byID[first.Machine]].Conversation {
		t.Errorf("alpha: %+v", m)
	}
	if m := l.Machines[byID[beta.Machine]]; !m.Default || m.Conversation == l.Machines[byID[alpha.Machine]].Conversation {
		t.Errorf("beta, in a conversation of its own: %+v", m)
	}
	text := runCommand(t, state, "machines", "list")
	for _, want := range []string{"CONVERSATION", alpha.Machine, "alpha", "stopped", "4 local machines in " + state} {
		if !strings.Contains(text.stdout, want) {
			t.Errorf("machines list lacks %q:\n%s", want, text.stdout)
		}
	}

	r := runCommand(t, state, "machines", "rm", first.Machine)
	if r.code != 0 || !strings.Contains(r.stdout, "deleted machine "+first.Machine+" of conversation") {
		t.Errorf("machines rm: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCommand(t, state, "machines", "rm", first.Machine); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("machines rm of a deleted machine: exit %d\n%s", r.code, r.stderr)
	}
	// Every machine belongs to a conversation: prune's first rule takes
	// none; --unused-for takes those unused that long, here all.
	if r := runCommand(t, state, "machines", "prune"); r.code != 0 || !strings.Contains(r.stdout, "nothing to prune") {
		t.Errorf("machines prune: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCommand(t, state, "machines", "prune", "--unused-for", "1ms", "--dry-run"); r.code != 0 || !strings.Contains(r.stdout, "dry run: 3 machines would go") {
		t.Errorf("machines prune --dry-run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCommand(t, state, "machines", "prune", "--unused-for", "1ms"); r.code != 0 || !strings.Contains(r.stdout, "pruned 3 machines") ||
		!strings.Contains(r.stdout, "deleted machine "+beta.Machine+` "beta"`) {
		t.Errorf("machines prune --unused-for: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if l := listMachines(t, state); len(l.Machines) != 0 {
		t.Errorf("machines left after prune: %+v", l.Machines)
	}
	r = runCommand(t, state, "snapshots", "list")
	if r.code != 0 || !strings.Contains(r.stdout, snap.SnapshotID) || !strings.Contains(r.stdout, "s1") {
		t.Errorf("snapshots list: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCommand(t, state, "snapshots", "rm", snap.SnapshotID); r.code != 0 || !strings.Contains(r.stdout, "deleted snapshot "+snap.SnapshotID) {
		t.Errorf("snapshots rm: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The server again: its conversations forgot what went, and the
	// client's conversation gets a new machine.
	h = startIn(t, state, root)
	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &list)
	if len(list.Machines) != 0 || len(list.Snapshots) != 0 {
		t.Errorf("list_machines after the commands: %+v", list)
	}
	var again tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "2 + 2"}, &again)
	if again.Value == nil || *again.Value != "4" || again.Machine == first.Machine {
		t.Errorf("run_python after the commands: %+v", again)
	}
	h.cs.Close()

	r = runCommand(t, state, "doctor")
	if r.code != 0 {
		t.Errorf("doctor: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"ok    state directory", "ok    bubblewrap", "ok    user namespaces", "ok    sandbox", "ok    python", "cgroups", "every check passed"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("doctor lacks %q:\n%s", want, r.stdout)
		}
	}
}
