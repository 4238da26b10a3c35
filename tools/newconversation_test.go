//go:build linux

package tools

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendfake"
	"github.com/vmcp-dev/vmcp/conversations"
)

// failingStore fails its Creates on demand.
type failingStore struct {
	conversations.Store
	fail atomic.Bool
}

func (s *failingStore) Create(ctx context.Context, c *conversations.Conversation) error {
	if s.fail.Load() {
		return errors.New("the disk is full")
	}
	return s.Store.Create(ctx, c)
}

// TestNewConversationIsSavedBeforeItIsNamed: a conversation begun by a
// call that gets no machine is written before the result names it (the
// next call finds it); one that cannot be written is named nowhere, and
// the error says what to do.
func TestNewConversationIsSavedBeforeItIsNamed(t *testing.T) {
	bolt, err := conversations.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bolt.Close() })
	store := &failingStore{Store: bolt}
	fake := backendfake.New(backendfake.Options{Name: "local"})
	svc, err := NewService(Config{Backends: []backend.Backend{fake},
		Conversations: conversations.NewManager(store, conversations.Limits{}), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := svc.NewMCPServer("test")

	text, out, isErr := call(t, srv, "alice", "list_machines", map[string]any{"session": conversations.NewSession})
	handle, _ := out["session"].(string)
	if isErr || !conversations.ValidHandle(handle) {
		t.Fatalf("first call: %s", text)
	}
	if _, err := bolt.Load(context.Background(), "alice", handle); err != nil {
		t.Fatalf("the result named a conversation that is not stored: %v", err)
	}
	if text, _, isErr := call(t, srv, "alice", "list_machines", map[string]any{"session": handle}); isErr {
		t.Fatalf("the next call: %s", text)
	}

	store.fail.Store(true)
	text, out, isErr = call(t, srv, "alice", "run_python", map[string]any{"code": "1 + 1", "session": conversations.NewSession})
	if !isErr || !strings.Contains(text, "the disk is full") || !strings.Contains(text, `session "new"`) {
		t.Fatalf("a first call whose conversation cannot be written: %v %s", isErr, text)
	}
	if strings.Contains(text, "c-") || out["session"] != nil {
		t.Fatalf("a conversation that is not stored was named: %s %v", text, out)
	}
	all, _ := bolt.All(context.Background())
	if len(all) != 1 {
		t.Fatalf("%d conversations stored; want the first one only", len(all))
	}
	if ms, _ := fake.Machines(context.Background()); len(ms) != 0 {
		t.Fatalf("the call's machine outlived its failed binding: %v", ms)
	}
}
