//go:build linux

package tools

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	localbackend "github.com/vmcp-dev/vmcp/backend/local"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

// call runs a tool through the MCP server as principal (the hosted mode's
// way in: principal.With) and returns its text and structured content.
func call(t *testing.T, srv interface {
	HandleMessage(context.Context, json.RawMessage) mcp.JSONRPCMessage
}, who, tool string, args map[string]any) (text string, out map[string]any, isError bool) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": map[string]any{"name": tool, "arguments": args}})
	resp := srv.HandleMessage(principal.With(context.Background(), who), b)
	raw, _ := json.Marshal(resp)
	var r struct {
		Result struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
			Structured map[string]any `json:"structuredContent"`
			IsError    bool           `json:"isError"`
		} `json:"result"`
		Error *struct{ Message string } `json:"error"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || r.Error != nil {
		t.Fatalf("%s %s: %s", who, tool, raw)
	}
	for _, c := range r.Result.Content {
		text += c.Text + "\n"
	}
	return text, r.Result.Structured, r.Result.IsError
}

// TestPrincipalsAreIsolated: one principal's handles, machines and
// snapshots are "not found" for another, exactly like things that do not
// exist.
func TestPrincipalsAreIsolated(t *testing.T) {
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	store, err := conversations.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	svc, err := NewService(Config{Backends: []backend.Backend{localbackend.New(engine)}, Conversations: conversations.NewManager(store, conversations.Limits{}), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := svc.NewMCPServer("test")

	_, a, isErr := call(t, srv, "alice", "run_python", map[string]any{"code": "secret = 42"})
	if isErr {
		t.Fatalf("alice: %v", a)
	}
	handle, machine := a["session"].(string), a["machine"].(string)
	_, snap, _ := call(t, srv, "alice", "snapshot_vm", map[string]any{})
	snapID := snap["snapshot_id"].(string)

	missingMachine := "m-00000000000000000000"
	missingHandle := "c-00000000000000000000000000000000"
	// Bob's own conversation exists first: a call that starts one says so,
	// which would tell the first of the pair below from the second.
	call(t, srv, "bob", "session_info", map[string]any{})
	for _, tc := range []struct {
		tool          string
		foreign, none map[string]any
	}{
		{"run_python", map[string]any{"code": "secret", "machine": machine}, map[string]any{"code": "secret", "machine": missingMachine}},
		{"exec_command", map[string]any{"command": "ls", "machine": machine}, map[string]any{"command": "ls", "machine": missingMachine}},
		{"download_file", map[string]any{"path": "x", "machine": machine}, map[string]any{"path": "x", "machine": missingMachine}},
		{"delete_vm", map[string]any{"machine": machine}, map[string]any{"machine": missingMachine}},
		{"snapshot_vm", map[string]any{"machine": machine}, map[string]any{"machine": missingMachine}},
		{"run_python", map[string]any{"code": "1", "session": handle}, map[string]any{"code": "1", "session": missingHandle}},
		{"session_info", map[string]any{"session": handle}, map[string]any{"session": missingHandle}},
		{"launch_vm", map[string]any{"snapshot_id": snapID}, map[string]any{"snapshot_id": "s-00000000000000000000"}},
	} {
		foreign, _, isErr := call(t, srv, "bob", tc.tool, tc.foreign)
		none, _, _ := call(t, srv, "bob", tc.tool, tc.none)
		if !isErr || !strings.Contains(foreign, "not found") {
			t.Errorf("bob %s on alice's: %q, want not found", tc.tool, foreign)
		}
		// The answer must not tell "exists but not yours" from "does not exist".
		for _, id := range []string{machine, handle, snapID, missingMachine, missingHandle, "s-00000000000000000000"} {
			foreign = strings.ReplaceAll(foreign, id, "ID")
			none = strings.ReplaceAll(none, id, "ID")
		}
		if foreign != none {
			t.Errorf("bob %s: foreign %q, missing %q", tc.tool, foreign, none)
		}
	}
	text, list, _ := call(t, srv, "bob", "list_machines", map[string]any{})
	if strings.Contains(text, machine) || strings.Contains(text, snapID) || fmt.Sprint(list["machines"]) != "[]" {
		t.Errorf("bob's list shows alice's things: %s", text)
	}
	// Alice still has it all.
	_, a, _ = call(t, srv, "alice", "run_python", map[string]any{"code": "secret", "session": handle})
	if a["value"] != "42" || a["machine"] != machine {
		t.Errorf("alice after bob's attempts: %v", a)
	}
}
