//go:build linux

package e2e

import (
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/tools"
)

// TestConversationsAreSeparate: two conversations on one stdio server each
// have their own interpreter; a call without session uses a third, the
// default conversation; a handle that is not one is "not found".
func TestConversationsAreSeparate(t *testing.T) {
	t.Parallel()
	h := start(t)
	var a, b, d tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "x = 1", "session": "new"}, &a)
	h.ok(t, "run_python", map[string]any{"code": "x = 2", "session": "new"}, &b)
	if a.Session == "" || a.Session == b.Session || a.Machine == b.Machine {
		t.Fatalf("two new conversations: %+v and %+v", a, b)
	}
	h.ok(t, "run_python", map[string]any{"code": "x", "session": a.Session}, &a)
	h.ok(t, "run_python", map[string]any{"code": "x", "session": b.Session}, &b)
	if a.Value == nil || *a.Value != "1" || b.Value == nil || *b.Value != "2" {
		t.Fatalf("each conversation's x: %v and %v", a.Value, b.Value)
	}
	res := h.fails(t, "run_python", map[string]any{"code": "x"}, "NameError")
	decode(t, res, &d)
	if d.Session == "" || d.Session == a.Session || d.Session == b.Session || d.Machine == a.Machine {
		t.Errorf("the default conversation: %+v", d)
	}
	// A conversation's machine is its owner's: the default conversation can
	// address it by id (same principal), and gets its session named.
	h.ok(t, "run_python", map[string]any{"code": "x", "machine": a.Machine}, &d)
	if d.Value == nil || *d.Value != "1" {
		t.Errorf("by machine id: %+v", d)
	}
	for _, bad := range []string{"c-00000000000000000000000000000000", "c-1", "nonsense"} {
		h.fails(t, "run_python", map[string]any{"code": "1", "session": bad}, "not found")
	}
	var info tools.SessionInfoOutput
	h.ok(t, "session_info", map[string]any{"session": a.Session}, &info)
	if info.Session != a.Session || len(info.Machines) != 1 || info.Machines[0].ID != a.Machine || !info.Machines[0].Default {
		t.Errorf("session_info: %+v", info)
	}
}

// TestKillNineLosesNoBinding: a conversation continues on the same machines
// after the server is killed with SIGKILL, on the local backend (files) and
// on ForeverVM (memory); and killing the server at random points while it
// launches machines never loses a machine a result announced, nor the store.
func TestKillNineLosesNoBinding(t *testing.T) {
	t.Parallel()
	url, token := forevervmEmulator(t)
	state := t.TempDir()
	h := startForeverVM(t, state, url, token)
	var py tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "y = 7", "session": "new"}, &py)
	handle := py.Session
	var cmd tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "echo kept > f", "session": handle}, &cmd)
	kill(t, h)

	h = startForeverVM(t, state, url, token)
	h.ok(t, "exec_command", map[string]any{"command": "cat f", "session": handle}, &cmd)
	if cmd.Stdout != "kept\n" {
		t.Errorf("the file after kill -9: %q", cmd.Stdout)
	}
	h.ok(t, "run_python", map[string]any{"code": "y", "session": handle}, &py)
	if py.Value == nil || *py.Value != "7" || py.Machine == "" {
		t.Errorf("y after kill -9: %+v", py)
	}

	announced := map[string]bool{}
	for i := range 20 {
		var mu sync.Mutex
		var once sync.Once
		done, launched := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for {
				var out tools.LaunchVMOutput
				res, err := h.callErr("launch_vm", map[string]any{"session": handle, "backend": "local"}, nil)
				if err != nil {
					return // the server died
				}
				if res.IsError {
					t.Errorf("launch_vm: %s", text(res))
					return
				}
				decode(t, res, &out)
				mu.Lock()
				announced[out.Machine] = true
				mu.Unlock()
				once.Do(func() { close(launched) })
			}
		}()
		// Every other kill comes after a launch has completed, so that some
		// machines are announced on a loaded host too, in the next launch.
		if i%2 == 1 {
			select {
			case <-launched:
			case <-done:
			case <-time.After(time.Minute):
				t.Fatalf("kill %d: no launch completed within a minute", i)
			}
		}
		time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
		kill(t, h)
		<-done

		h = startForeverVM(t, state, url, token)
		var info tools.SessionInfoOutput
		h.ok(t, "session_info", map[string]any{"session": handle}, &info)
		have := map[string]bool{}
		for _, m := range info.Machines {
			have[m.ID] = true
		}
		for id := range announced {
			if !have[id] {
				t.Fatalf("kill %d: machine %s was announced but the conversation lost it", i, id)
			}
		}
	}
	if len(announced) == 0 {
		t.Error("no launch completed before any kill")
	}
	t.Logf("%d machines announced across 20 kills; all kept", len(announced))
	if strings.Contains(h.stderr(), "damaged") {
		t.Errorf("the store reported damage:\n%s", h.stderr())
	}
}

// kill ends the server with SIGKILL and waits for it.
func kill(t *testing.T, h *harness) {
	t.Helper()
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.cs.Close()
}
