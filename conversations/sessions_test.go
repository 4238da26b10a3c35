//go:build linux

package conversations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func openTestStore(t *testing.T, path string) *BoltStore {
	t.Helper()
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// eachStore runs test against every Store implementation. Each call of open
// returns a new store over the same data: a restarted server, or (Redis
// only) another replica. Close a BoltStore before opening it again.
func eachStore(t *testing.T, test func(t *testing.T, open func() Store)) {
	t.Run("bolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s.db")
		test(t, func() Store { return openTestStore(t, path) })
	})
	t.Run("redis", func(t *testing.T) {
		url := startRedis(t).url
		test(t, func() Store { return openTestRedis(t, url, RedisOptions{}) })
	})
}

func TestResolve(t *testing.T) { eachStore(t, testResolve) }

func testResolve(t *testing.T, open func() Store) {
	ctx := context.Background()
	m := NewManager(open(), Limits{})

	def, created, err := m.Resolve(ctx, "alice", "", "")
	if err != nil || !created || !ValidHandle(def.Handle) || def.Principal != "alice" {
		t.Fatalf("default conversation: %+v, %v, %v", def, created, err)
	}
	again, created, err := m.Resolve(ctx, "alice", "", "")
	if err != nil || created || again.Handle != def.Handle {
		t.Fatalf("default again: %+v, %v, %v", again, created, err)
	}
	// Another scope (an MCP session) and another principal get their own.
	other, _, _ := m.Resolve(ctx, "alice", "", "mcp-session-1")
	bob, _, _ := m.Resolve(ctx, "bob", "", "")
	if other.Handle == def.Handle || bob.Handle == def.Handle || other.Handle == bob.Handle {
		t.Fatalf("scopes share conversations: %s %s %s", def.Handle, other.Handle, bob.Handle)
	}

	n1, created, err := m.Resolve(ctx, "alice", NewSession, "")
	if err != nil || !created || n1.Handle == def.Handle {
		t.Fatalf("new: %+v, %v, %v", n1, created, err)
	}
	if c, created, err := m.Resolve(ctx, "alice", n1.Handle, ""); err != nil || created || c.Handle != n1.Handle {
		t.Fatalf("by handle: %+v, %v, %v", c, created, err)
	}

	// Unknown, malformed and foreign handles are all "not found", and never
	// start a conversation.
	before, _ := m.Store().All(ctx)
	for _, tc := range []struct{ principal, handle string }{
		{"alice", NewHandle()},
		{"alice", "c-123"},
		{"alice", "../etc"},
		{"bob", n1.Handle},
		{"alice", bob.Handle},
	} {
		_, _, err := m.Resolve(ctx, tc.principal, tc.handle, "")
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s resolving %q: %v, want not found", tc.principal, tc.handle, err)
		}
	}
	if after, _ := m.Store().All(ctx); len(after) != len(before) {
		t.Errorf("failed resolutions created %d conversations", len(after)-len(before))
	}
}

func TestBindingsSurviveReopen(t *testing.T) { eachStore(t, testBindingsSurviveReopen) }

func testBindingsSurviveReopen(t *testing.T, open func() Store) {
	ctx := context.Background()
	s := open()
	m := NewManager(s, Limits{})
	c, _, _ := m.Resolve(ctx, "alice", "", "")
	if _, err := m.AddMachine(ctx, c, "local", "m-1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Update(ctx, c, func(c *Conversation) error {
		c.Snapshots = append(c.Snapshots, Snapshot{Backend: "local", ID: "s-1", Machine: "m-1"})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	m2 := NewManager(open(), Limits{})
	c2, created, err := m2.Resolve(ctx, "alice", "", "")
	if err != nil || created || c2.Handle != c.Handle {
		t.Fatalf("after reopening: %+v, %v, %v", c2, created, err)
	}
	if !c2.IsDefault("local", "m-1") || c2.Machine("local", "m-1") == nil || c2.Snapshot("s-1") == nil {
		t.Fatalf("bindings lost: %+v", c2)
	}
	if owner, err := m2.OwnerOf(ctx, "alice", "local", "m-1"); err != nil || owner.Handle != c.Handle {
		t.Errorf("owner of m-1: %v, %v", owner, err)
	}
	if _, err := m2.OwnerOf(ctx, "bob", "local", "m-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("bob owns alice's machine: %v", err)
	}
	if _, _, err := m2.SnapshotOwner(ctx, "bob", "s-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("bob owns alice's snapshot: %v", err)
	}
}

func TestFailedUpdateWritesNothing(t *testing.T) { eachStore(t, testFailedUpdateWritesNothing) }

func testFailedUpdateWritesNothing(t *testing.T, open func() Store) {
	ctx := context.Background()
	m := NewManager(open(), Limits{})
	c, _, _ := m.Resolve(ctx, "alice", "", "")
	failed := errors.New("backend failed")
	_, err := m.Update(ctx, c, func(c *Conversation) error {
		c.AddMachine("local", "m-x", c.CreatedAt)
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("update failed with %v, want fn's error", err)
	}
	if got, _ := m.Store().Load(ctx, "alice", c.Handle); got.Machine("local", "m-x") != nil {
		t.Error("a failed update was written")
	}
}

func TestConcurrentUpdatesLoseNothing(t *testing.T) { eachStore(t, testConcurrentUpdatesLoseNothing) }

func testConcurrentUpdatesLoseNothing(t *testing.T, open func() Store) {
	ctx := context.Background()
	m := NewManager(open(), Limits{})
	c, _, _ := m.Resolve(ctx, "alice", "", "")
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := m.AddMachine(ctx, c, "local", fmt.Sprintf("m-%d", i), false); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, _ := m.Store().Load(ctx, "alice", c.Handle)
	if len(got.Machines) != 20 {
		t.Errorf("%d machines recorded, want 20", len(got.Machines))
	}
}

// TestPrincipalsIsolated: another principal's conversation is not found,
// whatever the call, and stays as it was; Create never replaces.
func TestPrincipalsIsolated(t *testing.T) { eachStore(t, testPrincipalsIsolated) }

func testPrincipalsIsolated(t *testing.T, open func() Store) {
	ctx := context.Background()
	s := open()
	now := time.Now().UTC()
	c := &Conversation{Handle: NewHandle(), Principal: "alice", CreatedAt: now, LastUsed: now}
	if err := s.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, &Conversation{Handle: c.Handle, Principal: "bob"}); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("a second create of %s: %v, want exists already", c.Handle, err)
	}
	if _, err := s.Load(ctx, "bob", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Errorf("bob loads alice's conversation: %v", err)
	}
	ran := false
	if _, err := s.Update(ctx, "bob", c.Handle, func(c *Conversation) error { ran = true; c.SetDefault("local", "m-bob"); return nil }); !errors.Is(err, ErrNotFound) || ran {
		t.Errorf("bob updates alice's conversation: %v (fn ran: %v)", err, ran)
	}
	if err := s.Delete(ctx, "bob", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Errorf("bob deletes alice's conversation: %v", err)
	}
	got, err := s.Load(ctx, "alice", c.Handle)
	if err != nil || got.Principal != "alice" || got.Default != nil {
		t.Fatalf("alice's conversation after bob's attempts: %+v, %v", got, err)
	}

	if err := s.Delete(ctx, "alice", c.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "alice", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Errorf("load after delete: %v", err)
	}
	if err := s.Delete(ctx, "alice", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if all, err := s.All(ctx); err != nil || len(all) != 0 {
		t.Errorf("all after delete: %v, %v", all, err)
	}
}

func TestLimits(t *testing.T) {
	m := NewManager(openTestStore(t, filepath.Join(t.TempDir(), "s.db")), Limits{MaxMachines: 1, MaxSnapshots: 1})
	c := &Conversation{}
	if m.CheckMachineLimit(c) != nil || m.CheckSnapshotLimit(c) != nil {
		t.Fatal("limits refuse an empty conversation")
	}
	c.Machines = []Machine{{ID: "m"}}
	c.Snapshots = []Snapshot{{ID: "s"}}
	if m.CheckMachineLimit(c) == nil || m.CheckSnapshotLimit(c) == nil {
		t.Fatal("limits not enforced")
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	openTestStore(t, path)
	defer func(d time.Duration) { openTimeout = d }(openTimeout)
	openTimeout = 100 * time.Millisecond
	if _, err := OpenBolt(path); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatal("a second open of a store in use succeeded")
	}
}

// TestDefaultConversationRace: managers racing to create a principal's
// default conversation (replicas sharing a store) agree on one.
func TestDefaultConversationRace(t *testing.T) {
	eachStore(t, func(t *testing.T, open func() Store) {
		ctx := context.Background()
		store := open()
		var wg sync.WaitGroup
		handles := make([]string, 8)
		for i := range handles {
			m := NewManager(store, Limits{}) // one manager per "replica": no shared mutex
			wg.Go(func() {
				c, _, err := m.Resolve(ctx, "alice", "", "")
				if err != nil {
					t.Error(err)
					return
				}
				handles[i] = c.Handle
			})
		}
		wg.Wait()
		for _, h := range handles {
			if h != handles[0] {
				t.Fatalf("replicas disagree on the default conversation: %v", handles)
			}
		}
		all, _ := store.All(ctx)
		if len(all) != 1 {
			t.Errorf("%d conversations left, want 1", len(all))
		}
	})
}

// TestMigrateDefault: a conversation stored by a version with one default
// machine per backend gets one default machine: the one on the preferred
// backend that has one, and keeps every machine.
func TestMigrateDefault(t *testing.T) {
	old := []byte(`{"handle":"c-00000000000000000000000000000001","principal":"alice",
		"defaults":{"local":"m-local","forevervm":"AbCdEfGhIjKlMnOp"},
		"machines":[{"backend":"local","id":"m-local"},{"backend":"forevervm","id":"AbCdEfGhIjKlMnOp"}]}`)
	for _, tc := range []struct {
		preferred []string
		want      MachineRef
	}{
		{[]string{"forevervm", "local"}, MachineRef{"forevervm", "AbCdEfGhIjKlMnOp"}},
		{[]string{"local", "forevervm"}, MachineRef{"local", "m-local"}},
		{[]string{"fastvm", "local"}, MachineRef{"local", "m-local"}},
		{nil, MachineRef{"forevervm", "AbCdEfGhIjKlMnOp"}}, // by name
	} {
		var c Conversation
		if err := json.Unmarshal(old, &c); err != nil {
			t.Fatal(err)
		}
		if !c.MigrateDefault(tc.preferred) || c.Default == nil || *c.Default != tc.want || c.Defaults != nil || len(c.Machines) != 2 {
			t.Errorf("preferring %v: default %+v, defaults %v, %d machines; want %+v", tc.preferred, c.Default, c.Defaults, len(c.Machines), tc.want)
		}
		if c.MigrateDefault(tc.preferred) {
			t.Error("a second migration changed something")
		}
		b, _ := json.Marshal(&c)
		if strings.Contains(string(b), `"defaults"`) {
			t.Errorf("the migrated record still writes defaults: %s", b)
		}
	}
	// A default whose machine the conversation no longer has is dropped.
	c := Conversation{Defaults: map[string]string{"local": "m-gone"}}
	if !c.MigrateDefault([]string{"local"}) || c.Default != nil {
		t.Errorf("a default of a forgotten machine: %+v", c.Default)
	}
}

// countingStore counts a store's writes, and fails its Creates on demand.
type countingStore struct {
	Store
	creates, updates atomic.Int64
	failCreate       atomic.Bool
}

func (s *countingStore) Create(ctx context.Context, c *Conversation) error {
	if s.failCreate.Load() {
		return errors.New("the disk is full")
	}
	s.creates.Add(1)
	return s.Store.Create(ctx, c)
}

func (s *countingStore) Update(ctx context.Context, principal, handle string, fn func(*Conversation) error) (*Conversation, error) {
	s.updates.Add(1)
	return s.Store.Update(ctx, principal, handle, fn)
}

// TestNewConversationIsWrittenWithItsFirstChange: a conversation begun by
// "new" is written by its first change (the machine its first call gets),
// one write instead of two, or by Save; until then only its principal sees
// it, and the store has nothing of it.
func TestNewConversationIsWrittenWithItsFirstChange(t *testing.T) {
	eachStore(t, testNewConversationIsWrittenWithItsFirstChange)
}

func testNewConversationIsWrittenWithItsFirstChange(t *testing.T, open func() Store) {
	ctx := context.Background()
	s := &countingStore{Store: open()}
	m := NewManager(s, Limits{})
	writes := func() int64 { return s.creates.Load() + s.updates.Load() }

	c, created, err := m.Resolve(ctx, "alice", NewSession, "")
	if err != nil || !created {
		t.Fatalf("new: %v, %v", created, err)
	}
	if _, err := s.Load(ctx, "alice", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the store has the new conversation before its first change: %v", err)
	}
	if got, err := m.Load(ctx, "alice", c.Handle); err != nil || got.Handle != c.Handle {
		t.Fatalf("its principal does not see it: %v", err)
	}
	if _, _, err := m.Resolve(ctx, "bob", c.Handle, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another principal resolves it: %v", err)
	}
	if _, err := m.Load(ctx, "bob", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another principal loads it: %v", err)
	}

	// A change that fails to write leaves it unwritten, and it can still be
	// written.
	s.failCreate.Store(true)
	if _, err := m.AddMachine(ctx, c, "local", "m-1", true); err == nil {
		t.Fatal("a failed write succeeded")
	}
	s.failCreate.Store(false)
	if _, err := s.Load(ctx, "alice", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a failed write wrote: %v", err)
	}

	before := writes()
	if _, err := m.AddMachine(ctx, c, "local", "m-1", true); err != nil {
		t.Fatal(err)
	}
	if got := writes() - before; got != 1 || s.updates.Load() != 0 {
		t.Errorf("the first change took %d writes (%d updates); want 1 create", got, s.updates.Load())
	}
	stored, err := s.Load(ctx, "alice", c.Handle)
	if err != nil || stored.Default == nil || stored.Default.ID != "m-1" || !stored.CreatedAt.Equal(c.CreatedAt) {
		t.Fatalf("stored: %+v, %v", stored, err)
	}
	if owner, err := m.OwnerOf(ctx, "alice", "local", "m-1"); err != nil || owner.Handle != c.Handle {
		t.Fatalf("the index does not find its machine: %v", err)
	}
	if err := m.Save(ctx, c); err != nil || writes()-before != 1 {
		t.Fatalf("Save of a written conversation: %v, %d writes", err, writes()-before)
	}
	if _, err := m.AddMachine(ctx, c, "local", "m-2", false); err != nil || s.updates.Load() != 1 {
		t.Fatalf("a later change: %v, %d updates", err, s.updates.Load())
	}

	// Saved with no change.
	c2, _, _ := m.Resolve(ctx, "alice", NewSession, "")
	if err := m.Save(ctx, c2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "alice", c2.Handle); err != nil {
		t.Fatalf("saved, not stored: %v", err)
	}

	// Forgotten: gone, and Save writes nothing.
	c3, _, _ := m.Resolve(ctx, "alice", NewSession, "")
	m.Forget(c3)
	if _, err := m.Load(ctx, "alice", c3.Handle); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a forgotten conversation loads: %v", err)
	}
	if err := m.Save(ctx, c3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "alice", c3.Handle); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a forgotten conversation was written: %v", err)
	}
	// A handler given up at its deadline still holds the conversation: its
	// change after Forget writes nothing.
	if _, err := m.AddMachine(ctx, c3, "local", "m-late", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a change to a forgotten conversation: %v", err)
	}
	if _, err := s.Load(ctx, "alice", c3.Handle); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a forgotten conversation was written by a late change: %v", err)
	}
}

// TestUsesOfUnwrittenConversationsWaitForTheNextFlush: a Flush while a new
// conversation's first call runs keeps that call's uses for the next
// Flush, which writes them once the conversation is written; the uses of a
// conversation that was never kept are dropped.
func TestUsesOfUnwrittenConversationsWaitForTheNextFlush(t *testing.T) {
	eachStore(t, testUsesOfUnwrittenConversationsWaitForTheNextFlush)
}

func testUsesOfUnwrittenConversationsWaitForTheNextFlush(t *testing.T, open func() Store) {
	ctx := context.Background()
	s := open()
	m := NewManager(s, Limits{})
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.SetClock(func() time.Time { return clock })

	c, _, err := m.Resolve(ctx, "alice", NewSession, "")
	if err != nil {
		t.Fatal(err)
	}
	gone, _, _ := m.Resolve(ctx, "alice", NewSession, "")
	clock = clock.Add(time.Minute)
	used := clock
	m.Touch(c.Handle)
	m.Touch(gone.Handle)
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := m.LastUsed(c); !got.Equal(used) {
		t.Fatalf("after a Flush before the conversation was written, its last use is %v; want %v", got, used)
	}
	m.Forget(gone)

	clock = clock.Add(time.Minute)
	if err := m.Save(ctx, c); err != nil { // its call ends: announce
		t.Fatal(err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	stored, err := s.Load(ctx, "alice", c.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if !stored.LastUsed.Equal(used) {
		t.Errorf("stored last use %v; want %v", stored.LastUsed, used)
	}
	if got := m.LastUsed(gone); !got.Equal(gone.LastUsed) {
		t.Errorf("a forgotten conversation's use is kept after a Flush: %v", got)
	}
	m.mu.Lock()
	left := len(m.lastUsed)
	m.mu.Unlock()
	if left != 0 {
		t.Errorf("%d uses still pending after the second Flush", left)
	}
}
