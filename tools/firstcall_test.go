//go:build linux

package tools

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendfake"
	"github.com/vmcp-dev/vmcp/conversations"
)

// slowStarts is a backend whose machines take longer to start than a
// call's time, as when many start at once and queue.
type slowStarts struct{ *backendfake.Backend }

func (b slowStarts) Create(ctx context.Context, spec backend.MachineSpec) (backend.MachineInfo, error) {
	<-ctx.Done()
	return backend.MachineInfo{}, ctx.Err()
}

// TestFirstCallTimeoutSaysWhy: a new conversation's first call that runs
// out of time while its machine starts ends within its timeout and grace,
// and says that its time included the machine's start and to call again
// with the session handle, which the result carries.
func TestFirstCallTimeoutSaysWhy(t *testing.T) {
	store, err := conversations.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	svc, err := NewService(Config{Backends: []backend.Backend{slowStarts{backendfake.New(backendfake.Options{Name: "local"})}},
		Conversations: conversations.NewManager(store, conversations.Limits{}), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := svc.NewMCPServer("test")
	start := time.Now()
	text, _, isErr := call(t, srv, "alice", "exec_command", map[string]any{"command": "true", "session": "new", "timeout_seconds": 1})
	if took := time.Since(start); took > time.Second+callGrace+time.Second {
		t.Errorf("the call took %v; want its timeout and grace at most", took)
	}
	if !isErr || !strings.Contains(text, "This was the conversation's first call, and its time includes starting the conversation's machine") {
		t.Errorf("a first call that timed out while its machine started: %s", text)
	}
	if !strings.Contains(text, "Conversation c-") || !strings.Contains(text, "pass session=") {
		t.Errorf("the failed first call does not name its conversation, to call again with: %s", text)
	}
}
