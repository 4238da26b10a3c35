//go:build linux

package tools

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendfake"
	"github.com/vmcp-dev/vmcp/broker"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
)

// The tests of this file drive the tools through the MCP server, in this
// process, over the in-memory fake backend on a clock they move by hand:
// what the results say when a machine was stopped or parked while idle,
// or its conversation closed, without the seconds of waiting of the
// end-to-end tests.

// clockedServer is an MCP server over one fake backend, whose service's
// broker, session manager and backend all read clock.
type clockedServer struct {
	clock *backendfake.Clock
	svc   *Service
	srv   *server.MCPServer
}

// newClockedServer serves a fake backend (parking idle machines when
// parks) with cfg's timeouts. It is named "local" whatever it does: with
// local machines alone a handler runs on the caller's goroutine and lets
// go of its machine before the result returns, whereas with other backends
// the machine may be let go of just after, when the clock may have moved,
// and the idle time would start then.
func newClockedServer(t *testing.T, parks bool, cfg Config) *clockedServer {
	t.Helper()
	clock := backendfake.NewClock()
	store, err := conversations.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cfg.Backends = []backend.Backend{backendfake.New(backendfake.Options{Name: "local", Now: clock.Now, IdleParks: parks})}
	cfg.Conversations, cfg.Log = conversations.NewManager(store, conversations.Limits{}), zerolog.Nop()
	// The manager stamps every use and the broker measures idleness against
	// those stamps: both read the test's clock (the broker is replaced by
	// one on the clock, configured as NewService configures it).
	cfg.Conversations.SetClock(clock.Now)
	svc, err := NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc.broker, err = broker.New(broker.Config{Backends: cfg.Backends, Conversations: cfg.Conversations, Instance: cfg.Instance,
		Idle: cfg.Idle, ConversationTTL: cfg.ConversationTTL, LocalPrincipal: principal.Local(), Now: clock.Now, Log: cfg.Log})
	if err != nil {
		t.Fatal(err)
	}
	return &clockedServer{clock: clock, svc: svc, srv: svc.NewMCPServer("test")}
}

// ok calls a tool as alice and fails the test on a tool error.
func (s *clockedServer) ok(t *testing.T, tool string, args map[string]any) (string, map[string]any) {
	t.Helper()
	text, out, isErr := call(t, s.srv, "alice", tool, args)
	if isErr {
		t.Fatalf("%s %v: %s", tool, args, text)
	}
	return text, out
}

// reap runs one pass of the server's reaper and checks what it did.
func (s *clockedServer) reap(t *testing.T, want broker.ReapResult, why string) {
	t.Helper()
	got, err := s.svc.Broker().Reap(context.Background())
	if err != nil || got != want {
		t.Fatalf("%s: reap did %+v, %v; want %+v", why, got, err, want)
	}
}

// sessionMachine is the one machine session_info shows, as JSON.
func (s *clockedServer) sessionMachine(t *testing.T, handle string) map[string]any {
	t.Helper()
	_, info := s.ok(t, "session_info", map[string]any{"session": handle})
	ms, _ := info["machines"].([]any)
	if len(ms) != 1 {
		t.Fatalf("session_info shows machines %v, want one", info["machines"])
	}
	return ms[0].(map[string]any)
}

const fakeIdle = 10 * time.Minute

// TestToolsAfterParking: a machine that parks (as FastVM's do), idle for
// its timeout, is parked, as session_info shows, and not a nanosecond
// before; the next command finds its files on the relaunched machine and
// its result says it was restored, the next Python call says its state was
// reset, and the old machine id still works.
func TestToolsAfterParking(t *testing.T) {
	s := newClockedServer(t, true, Config{Idle: map[string]time.Duration{"local": fakeIdle}})
	_, out := s.ok(t, "run_python", map[string]any{"code": "x = 41", "session": conversations.NewSession})
	handle, first := out["session"].(string), out["machine"].(string)
	s.ok(t, "exec_command", map[string]any{"command": "echo kept > f", "session": handle})

	s.clock.Advance(fakeIdle - time.Nanosecond)
	s.reap(t, broker.ReapResult{}, "a nanosecond before the timeout")
	if m := s.sessionMachine(t, handle); m["parked"] != false || m["id"] != first {
		t.Fatalf("session_info before the timeout: %v", m)
	}
	s.clock.Advance(time.Nanosecond)
	s.reap(t, broker.ReapResult{Parked: 1}, "at the timeout")
	if m := s.sessionMachine(t, handle); m["parked"] != true || m["id"] != first {
		t.Fatalf("session_info after parking: %v", m)
	}
	_, info := s.ok(t, "session_info", map[string]any{"session": handle})
	if fmt.Sprint(info["idle_timeouts"]) != "map[local:10m0s]" {
		t.Errorf("session_info's idle timeouts: %v", info["idle_timeouts"])
	}

	text, out := s.ok(t, "exec_command", map[string]any{"command": "cat f", "session": handle})
	now := out["machine"].(string)
	if out["stdout"] != "kept\n" || now == first || !strings.Contains(text, "restored from that snapshot") || !strings.Contains(text, first) {
		t.Fatalf("the command after parking: %v\n%s", out, text)
	}
	// x is gone: a NameError, which is a tool error.
	text, out, _ = call(t, s.srv, "alice", "run_python", map[string]any{"code": "x", "session": handle})
	if out["state_reset"] == nil || !strings.Contains(text, "Note: the interpreter state was reset") || !strings.Contains(text, "NameError") {
		t.Errorf("Python after parking: %v\n%s", out, text)
	}
	if strings.Contains(text, "restored from that snapshot") {
		t.Errorf("the restore is told again on the next call:\n%s", text)
	}
	_, out = s.ok(t, "exec_command", map[string]any{"command": "cat f", "session": handle, "machine": first})
	if out["stdout"] != "kept\n" || out["machine"] != now {
		t.Errorf("by the old id: %v", out)
	}
	if m := s.sessionMachine(t, handle); m["parked"] != false || m["id"] != now {
		t.Errorf("session_info after the restore: %v", m)
	}
}

// TestToolsAfterStopping: a machine of a backend that stops idle machines
// is listed stopped from its timeout on, not a nanosecond before; the next
// Python call runs on the same machine, with its files, and says that the
// interpreter state was reset and why.
func TestToolsAfterStopping(t *testing.T) {
	s := newClockedServer(t, false, Config{Idle: map[string]time.Duration{"local": fakeIdle}})
	_, out := s.ok(t, "run_python", map[string]any{"code": "x = 41", "session": conversations.NewSession})
	handle, first := out["session"].(string), out["machine"].(string)
	s.ok(t, "exec_command", map[string]any{"command": "echo kept > f", "session": handle})
	status := func() any {
		t.Helper()
		_, list := s.ok(t, "list_machines", map[string]any{"session": handle})
		ms, _ := list["machines"].([]any)
		if len(ms) != 1 {
			t.Fatalf("list_machines: %v", list["machines"])
		}
		return ms[0].(map[string]any)["status"]
	}

	s.clock.Advance(fakeIdle - time.Nanosecond)
	s.reap(t, broker.ReapResult{}, "a nanosecond before the timeout")
	if got := status(); got != "running" {
		t.Fatalf("before the timeout the machine is %v", got)
	}
	// list_machines used no machine: the idle time still runs.
	s.clock.Advance(time.Nanosecond)
	s.reap(t, broker.ReapResult{Stopped: 1}, "at the timeout")
	if got := status(); got != "stopped" {
		t.Fatalf("after the timeout the machine is %v", got)
	}
	text, out, _ := call(t, s.srv, "alice", "run_python", map[string]any{"code": "x", "session": handle})
	if out["machine"] != first || !strings.Contains(text, "NameError") || !strings.Contains(fmt.Sprint(out["state_reset"]), "stopped") || !strings.Contains(text, "Note: the interpreter state was reset") {
		t.Fatalf("Python after the stop: %v\n%s", out, text)
	}
	if _, out = s.ok(t, "exec_command", map[string]any{"command": "cat f", "session": handle}); out["stdout"] != "kept\n" || out["machine"] != first {
		t.Errorf("the file after the stop: %v", out)
	}
}

// TestToolsAfterConversationClosed: a conversation unused for longer than
// its time to live is closed by the reaper, not at exactly that age; its
// handle is then refused with a result saying so, and its machine is gone.
func TestToolsAfterConversationClosed(t *testing.T) {
	const ttl = time.Hour
	s := newClockedServer(t, true, Config{ConversationTTL: ttl})
	_, out := s.ok(t, "exec_command", map[string]any{"command": "true", "session": conversations.NewSession})
	handle, machine := out["session"].(string), out["machine"].(string)
	s.ok(t, "exec_command", map[string]any{"command": "true", "session": conversations.NewSession}) // another, as old

	s.clock.Advance(ttl / 2)
	_, out = s.ok(t, "exec_command", map[string]any{"command": "true", "session": conversations.NewSession})
	later := out["session"].(string)
	s.clock.Advance(ttl / 2)
	s.reap(t, broker.ReapResult{}, "at exactly the time to live")
	s.clock.Advance(time.Nanosecond)
	s.reap(t, broker.ReapResult{Closed: 2}, "a nanosecond past the time to live")

	text, _, isErr := call(t, s.srv, "alice", "exec_command", map[string]any{"command": "true", "session": handle})
	if !isErr || !strings.Contains(text, "was closed") {
		t.Errorf("a call on the closed conversation: %q", text)
	}
	text, _, isErr = call(t, s.srv, "alice", "exec_command", map[string]any{"command": "true", "session": later, "machine": machine})
	if !isErr || !strings.Contains(text, "not found") {
		t.Errorf("the closed conversation's machine from another: %q", text)
	}
	if _, out = s.ok(t, "exec_command", map[string]any{"command": "true", "session": later}); out["machine"] == machine {
		t.Errorf("the later conversation runs on the closed one's machine %s", machine)
	}
}
