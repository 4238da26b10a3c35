//go:build linux

package conversations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// indexEntries reads a store's index as it is stored: index key → handles,
// sorted.
func indexEntries(t *testing.T, s Store) map[string][]string {
	t.Helper()
	ctx := context.Background()
	got := map[string][]string{}
	switch s := s.(type) {
	case *BoltStore:
		defer func() {
			// The index in memory is the bucket's.
			s.mu.RLock()
			defer s.mu.RUnlock()
			if !reflect.DeepEqual(s.index, got) && !(len(s.index) == 0 && len(got) == 0) {
				t.Errorf("the index in memory differs from the bucket's:\n%v\n%v", s.index, got)
			}
		}()
		err := s.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(indexBucket).ForEach(func(k, v []byte) error {
				key, ok := strings.CutSuffix(string(k), joinKey(string(v)))
				if !ok {
					return fmt.Errorf("index entry %q does not end with its handle %q", k, v)
				}
				got[key] = append(got[key], string(v))
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
	case *RedisStore:
		iter := s.client.Scan(ctx, 0, s.prefix+"index:*", 1000).Iterator()
		for iter.Next(ctx) {
			members, err := s.client.SMembers(ctx, iter.Val()).Result()
			if err != nil {
				t.Fatal(err)
			}
			got[strings.TrimPrefix(iter.Val(), s.prefix+"index:")] = members
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("no index reader for %T", s)
	}
	for _, hs := range got {
		slices.Sort(hs)
	}
	return got
}

// checkIndex fails unless the store's index holds exactly the entries its
// conversations imply: none stale, none missing.
func checkIndex(t *testing.T, s Store) {
	t.Helper()
	all, err := s.All(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{}
	for _, c := range all {
		for _, k := range indexKeys(c) {
			want[k] = append(want[k], c.Handle)
		}
	}
	for _, hs := range want {
		slices.Sort(hs)
	}
	got := indexEntries(t, s)
	if reflect.DeepEqual(got, want) {
		return
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if !slices.Equal(got[k], want[k]) {
			t.Errorf("index %s: %v, want %v", k, got[k], want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if _, ok := got[k]; !ok {
			t.Errorf("index %s missing, want %v", k, want[k])
		}
	}
}

// TestOwnerLookups: the lookups find the owner of a machine (by its id or
// an earlier one) and of a snapshot, and a principal's conversations; not
// after the binding is undone or the conversation deleted, and never for
// another principal.
func TestOwnerLookups(t *testing.T) { eachStore(t, testOwnerLookups) }

func testOwnerLookups(t *testing.T, open func() Store) {
	ctx := context.Background()
	s := open()
	m := NewManager(s, Limits{})
	a1, _, _ := m.Resolve(ctx, "alice", NewSession, "")
	a2, _, _ := m.Resolve(ctx, "alice", NewSession, "")
	bob, _, _ := m.Resolve(ctx, "bob", NewSession, "")
	if _, err := m.AddMachine(ctx, a1, "local", "m-1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddMachine(ctx, a2, "local", "m-2", true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddMachine(ctx, bob, "local", "m-bob", true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Update(ctx, a1, func(c *Conversation) error {
		c.Snapshots = append(c.Snapshots, Snapshot{Backend: "local", ID: "s-1", Machine: "m-1"})
		// m-1 was relaunched from a snapshot: its old id still reaches it.
		rec := c.Machine("local", "m-1")
		rec.Previous = append(rec.Previous, rec.ID)
		rec.ID = "m-1b"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkIndex(t, s)

	owner := func(m *Manager, principal, backend, id string) string {
		t.Helper()
		c, err := m.OwnerOf(ctx, principal, backend, id)
		if errors.Is(err, ErrNotFound) {
			return ""
		}
		if err != nil {
			t.Fatalf("owner of %s/%s for %s: %v", backend, id, principal, err)
		}
		return c.Handle
	}
	snapOwner := func(m *Manager, principal, id string) string {
		t.Helper()
		c, snap, err := m.SnapshotOwner(ctx, principal, id)
		if errors.Is(err, ErrNotFound) {
			return ""
		}
		if err != nil || snap.ID != id {
			t.Fatalf("owner of snapshot %s for %s: %v, %v", id, principal, snap, err)
		}
		return c.Handle
	}
	handles := func(m *Manager, principal string) []string {
		t.Helper()
		cs, err := m.Conversations(ctx, principal)
		if err != nil {
			t.Fatal(err)
		}
		var hs []string
		for _, c := range cs {
			hs = append(hs, c.Handle)
		}
		return hs
	}
	for _, tc := range []struct{ principal, backend, id, want string }{
		{"alice", "local", "m-1b", a1.Handle},
		{"alice", "local", "m-1", a1.Handle}, // the earlier id
		{"alice", "local", "m-2", a2.Handle},
		{"alice", "fastvm", "m-2", ""}, // another backend
		{"alice", "local", "m-bob", ""},
		{"bob", "local", "m-1b", ""},
		{"bob", "local", "m-2", ""},
		{"bob", "local", "m-bob", bob.Handle},
		{"alice", "local", "m-none", ""},
	} {
		if got := owner(m, tc.principal, tc.backend, tc.id); got != tc.want {
			t.Errorf("%s: owner of %s/%s: %q, want %q", tc.principal, tc.backend, tc.id, got, tc.want)
		}
	}
	if got := snapOwner(m, "alice", "s-1"); got != a1.Handle {
		t.Errorf("owner of s-1: %q, want %s", got, a1.Handle)
	}
	if got := snapOwner(m, "bob", "s-1"); got != "" {
		t.Errorf("bob owns alice's snapshot s-1: %s", got)
	}
	if got, want := handles(m, "alice"), slices.Sorted(slices.Values([]string{a1.Handle, a2.Handle})); !slices.Equal(got, want) {
		t.Errorf("alice's conversations: %v, want %v", got, want)
	}
	if got := handles(m, "bob"); !slices.Equal(got, []string{bob.Handle}) {
		t.Errorf("bob's conversations: %v", got)
	}
	if got := handles(m, "carol"); len(got) != 0 {
		t.Errorf("carol's conversations: %v", got)
	}

	// The index is in the store: a restarted server (or another replica)
	// finds the same.
	s.Close()
	s = open()
	m = NewManager(s, Limits{})
	if got := owner(m, "alice", "local", "m-1"); got != a1.Handle {
		t.Errorf("after reopening: owner of m-1: %q", got)
	}

	// Undone bindings and deleted conversations are found no more.
	if _, err := m.Update(ctx, a1, func(c *Conversation) error {
		c.RemoveMachine("local", "m-1b")
		c.Snapshots = nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"m-1", "m-1b"} {
		if got := owner(m, "alice", "local", id); got != "" {
			t.Errorf("owner of the removed machine %s: %s", id, got)
		}
	}
	if got := snapOwner(m, "alice", "s-1"); got != "" {
		t.Errorf("owner of the removed snapshot s-1: %s", got)
	}
	if err := s.Delete(ctx, "alice", a2.Handle); err != nil {
		t.Fatal(err)
	}
	if got := owner(m, "alice", "local", "m-2"); got != "" {
		t.Errorf("owner of m-2 after its conversation was deleted: %s", got)
	}
	if got := handles(m, "alice"); !slices.Equal(got, []string{a1.Handle}) {
		t.Errorf("alice's conversations after a deletion: %v", got)
	}
	// A failed update changes no index entry either.
	if _, err := m.Update(ctx, a1, func(c *Conversation) error {
		c.AddMachine("local", "m-x", time.Now())
		return errors.New("backend failed")
	}); err == nil {
		t.Fatal("a failed update succeeded")
	}
	if got := owner(m, "alice", "local", "m-x"); got != "" {
		t.Errorf("owner of a machine of a failed update: %s", got)
	}
	checkIndex(t, s)
}

// TestForgedIndexEntries: an index entry that points at a conversation not
// holding the id, or at another principal's, finds nothing.
func TestForgedIndexEntries(t *testing.T) {
	// forge files each entry's handle under its key in the closed store,
	// as an operator's hand would.
	test := func(t *testing.T, open func() Store, forge func(entries [][2]string)) {
		ctx := context.Background()
		s := open()
		m := NewManager(s, Limits{})
		alice, _, _ := m.Resolve(ctx, "alice", NewSession, "")
		if _, err := m.AddMachine(ctx, alice, "local", "m-alice", true); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Update(ctx, alice, func(c *Conversation) error {
			c.Snapshots = append(c.Snapshots, Snapshot{Backend: "local", ID: "s-alice"})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		forge([][2]string{
			{machineIndexKey("mallory", "local", "m-alice"), alice.Handle},
			{snapshotIndexKey("mallory", "s-alice"), alice.Handle},
			{principalIndexKey("mallory"), alice.Handle},
			{machineIndexKey("alice", "local", "m-other"), alice.Handle}, // stale: alice's, without the machine
			{snapshotIndexKey("alice", "s-other"), alice.Handle},
			{machineIndexKey("alice", "local", "m-ghost"), NewHandle()}, // no such conversation
		})
		s = open()
		m = NewManager(s, Limits{})

		if c, err := m.OwnerOf(ctx, "mallory", "local", "m-alice"); !errors.Is(err, ErrNotFound) {
			t.Errorf("mallory owns alice's machine through a forged entry: %v, %v", c, err)
		}
		if c, err := s.ByMachine(ctx, "mallory", "local", "m-alice"); !errors.Is(err, ErrNotFound) {
			t.Errorf("the store gives mallory alice's conversation: %v, %v", c, err)
		}
		if c, _, err := m.SnapshotOwner(ctx, "mallory", "s-alice"); !errors.Is(err, ErrNotFound) {
			t.Errorf("mallory owns alice's snapshot through a forged entry: %v, %v", c, err)
		}
		if c, err := s.BySnapshot(ctx, "mallory", "s-alice"); !errors.Is(err, ErrNotFound) {
			t.Errorf("the store gives mallory alice's conversation for a snapshot: %v, %v", c, err)
		}
		if cs, err := m.Conversations(ctx, "mallory"); err != nil || len(cs) != 0 {
			t.Errorf("mallory's conversations through a forged entry: %v, %v", cs, err)
		}
		if cs, err := s.ByPrincipal(ctx, "mallory"); err != nil || len(cs) != 0 {
			t.Errorf("the store lists alice's conversation as mallory's: %v, %v", cs, err)
		}
		for _, id := range []string{"m-other", "m-ghost"} {
			if c, err := m.OwnerOf(ctx, "alice", "local", id); !errors.Is(err, ErrNotFound) {
				t.Errorf("a stale entry for %s: %v, %v", id, c, err)
			}
		}
		if c, _, err := m.SnapshotOwner(ctx, "alice", "s-other"); !errors.Is(err, ErrNotFound) {
			t.Errorf("a stale entry for s-other: %v, %v", c, err)
		}
		if c, err := m.OwnerOf(ctx, "alice", "local", "m-alice"); err != nil || c.Handle != alice.Handle {
			t.Errorf("alice's own machine: %v, %v", c, err)
		}
	}
	t.Run("bolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s.db")
		test(t, func() Store { return openTestStore(t, path) }, func(entries [][2]string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.Update(func(tx *bolt.Tx) error {
				for _, e := range entries {
					if err := tx.Bucket(indexBucket).Put([]byte(e[0]+joinKey(e[1])), []byte(e[1])); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("redis", func(t *testing.T) {
		srv := startRedis(t)
		raw := rawClient(t, srv.addr)
		test(t, func() Store { return openTestRedis(t, srv.url, RedisOptions{}) }, func(entries [][2]string) {
			for _, e := range entries {
				if err := raw.SAdd(context.Background(), "vmcp:index:"+e[0], e[1]).Err(); err != nil {
					t.Fatal(err)
				}
			}
		})
	})
}

// legacyConversations are conversations as a version before the index
// stored them.
func legacyConversations(n int) []*Conversation {
	var cs []*Conversation
	now := time.Now().UTC()
	for i := range n {
		c := &Conversation{Handle: NewHandle(), Principal: fmt.Sprintf("user-%d", i%3), CreatedAt: now, LastUsed: now}
		c.AddMachine("local", fmt.Sprintf("m-%d", i), now)
		c.SetDefault("local", fmt.Sprintf("m-%d", i))
		c.Snapshots = append(c.Snapshots, Snapshot{Backend: "local", ID: fmt.Sprintf("s-%d", i), Machine: fmt.Sprintf("m-%d", i)})
		cs = append(cs, c)
	}
	return cs
}

// TestIndexMigration: a store written by a version before the index, which
// has none, is indexed when opened, once; its machines and snapshots are
// then found, and later changes keep the index right.
func TestIndexMigration(t *testing.T) {
	test := func(t *testing.T, legacy []*Conversation, open func() Store, version func() string) {
		ctx := context.Background()
		s := open()
		if v := version(); v != indexVersion {
			t.Errorf("index version after opening: %q, want %q", v, indexVersion)
		}
		checkIndex(t, s)
		m := NewManager(s, Limits{})
		for i, c := range legacy {
			if got, err := m.OwnerOf(ctx, c.Principal, "local", fmt.Sprintf("m-%d", i)); err != nil || got.Handle != c.Handle {
				t.Fatalf("owner of m-%d after the migration: %v, %v", i, got, err)
			}
			if got, _, err := m.SnapshotOwner(ctx, c.Principal, fmt.Sprintf("s-%d", i)); err != nil || got.Handle != c.Handle {
				t.Fatalf("owner of s-%d after the migration: %v, %v", i, got, err)
			}
			other := fmt.Sprintf("user-%d", (i+1)%3)
			if _, err := m.OwnerOf(ctx, other, "local", fmt.Sprintf("m-%d", i)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s owns m-%d: %v", other, i, err)
			}
		}
		if cs, err := m.Conversations(ctx, "user-0"); err != nil || len(cs) != (len(legacy)+2)/3 {
			t.Errorf("user-0's conversations: %d, %v", len(cs), err)
		}
		if _, err := m.Update(ctx, legacy[0], func(c *Conversation) error { c.RemoveMachine("local", "m-0"); return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := m.OwnerOf(ctx, legacy[0].Principal, "local", "m-0"); !errors.Is(err, ErrNotFound) {
			t.Errorf("owner of a machine removed after the migration: %v", err)
		}
		checkIndex(t, s)
		s.Close()
		// Opened again (no migration now), the index is as it was.
		s = open()
		checkIndex(t, s)
	}

	t.Run("bolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s.db")
		legacy := legacyConversations(450)
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket(conversationsBucket)
			if err != nil {
				return err
			}
			if _, err := tx.CreateBucket(defaultsBucket); err != nil {
				return err
			}
			for _, c := range legacy {
				if err := put(b, c); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		db.Close()
		var s *BoltStore
		test(t, legacy, func() Store { s = openTestStore(t, path); return s }, func() string {
			var v []byte
			s.db.View(func(tx *bolt.Tx) error { v = tx.Bucket(metaBucket).Get(metaIndexVersion); return nil })
			return string(v)
		})
	})
	t.Run("redis", func(t *testing.T) {
		ctx := context.Background()
		srv := startRedis(t)
		raw := rawClient(t, srv.addr)
		legacy := legacyConversations(450) // more than one batch
		for _, c := range legacy {
			v, _ := json.Marshal(c)
			if err := raw.Set(ctx, "vmcp:conversation:"+c.Handle, v, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if err := raw.SAdd(ctx, "vmcp:handles", c.Handle).Err(); err != nil {
				t.Fatal(err)
			}
		}
		// A handle whose conversation is gone (deleted between the two
		// writes of an older version) is skipped.
		raw.SAdd(ctx, "vmcp:handles", NewHandle())
		test(t, legacy, func() Store { return openTestRedis(t, srv.url, RedisOptions{}) }, func() string {
			return raw.Get(ctx, "vmcp:index-version").Val()
		})

		// A replica of the old version, still running, records a binding
		// without its entry; Reindex, once it stopped, files it.
		s := openTestRedis(t, srv.url, RedisOptions{})
		late := legacyConversations(1)[0]
		late.Machines[0].ID = "m-late"
		v, _ := json.Marshal(late)
		raw.Set(ctx, "vmcp:conversation:"+late.Handle, v, 0)
		raw.SAdd(ctx, "vmcp:handles", late.Handle)
		if _, err := s.ByMachine(ctx, late.Principal, "local", "m-late"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a binding without an entry found: %v", err)
		}
		if err := s.Reindex(ctx); err != nil {
			t.Fatal(err)
		}
		if c, err := s.ByMachine(ctx, late.Principal, "local", "m-late"); err != nil || c.Handle != late.Handle {
			t.Errorf("after Reindex: %v, %v", c, err)
		}
		checkIndex(t, s)

		// A store that is damaged is not opened half indexed: the error
		// says which conversation, and what to do.
		raw.Del(ctx, "vmcp:index-version")
		bad := NewHandle()
		raw.Set(ctx, "vmcp:conversation:"+bad, "{not json", 0)
		raw.SAdd(ctx, "vmcp:handles", bad)
		if _, err := OpenRedis(ctx, srv.url, RedisOptions{}); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "restore it") {
			t.Errorf("opening a damaged store: %v", err)
		}
		if v := raw.Get(ctx, "vmcp:index-version").Val(); v != "" {
			t.Errorf("a failed migration set the index version %q", v)
		}
	})
}

// TestConcurrentIndex: replicas binding, moving, renaming and unbinding the
// same machines and snapshots at once, and deleting conversations, leave an
// index that holds exactly what the records imply; on Redis, a replica that
// indexes the store meanwhile (as after an upgrade) changes nothing of
// that.
func TestConcurrentIndex(t *testing.T) { eachStore(t, testConcurrentIndex) }

func testConcurrentIndex(t *testing.T, open func() Store) {
	ctx := context.Background()
	first := open()
	stores := []Store{first, first} // bbolt: one process, one store
	redisStore, isRedis := first.(*RedisStore)
	if isRedis {
		stores[1] = open()
	}
	managers := []*Manager{NewManager(stores[0], Limits{}), NewManager(stores[1], Limits{})}
	var convs []*Conversation
	for i := range 6 {
		c, _, err := managers[0].Resolve(ctx, []string{"alice", "bob"}[i%2], NewSession, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := managers[0].Save(ctx, c); err != nil { // as the call that began it does
			t.Fatal(err)
		}
		convs = append(convs, c)
	}

	var wg, writers sync.WaitGroup
	var done atomic.Bool
	if isRedis {
		// Upgraded replicas starting meanwhile index every conversation
		// while the others write, again and again.
		wg.Go(func() {
			for !done.Load() {
				if err := redisStore.client.Del(ctx, redisStore.versionKey()).Err(); err != nil {
					t.Error(err)
					return
				}
				if err := redisStore.migrate(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for w := range 4 {
		m := managers[w%2]
		rnd := rand.New(rand.NewPCG(uint64(w), 1))
		writers.Go(func() {
			for range 150 {
				c := convs[rnd.IntN(len(convs))]
				id := fmt.Sprintf("m-%d", rnd.IntN(4))
				snap := fmt.Sprintf("s-%d", rnd.IntN(4))
				var err error
				switch op := rnd.IntN(6); op {
				case 0, 1:
					_, err = m.AddMachine(ctx, c, "local", id, op == 0)
				case 2:
					_, err = m.Update(ctx, c, func(c *Conversation) error { c.RemoveMachine("local", id); return nil })
				case 3:
					_, err = m.Update(ctx, c, func(c *Conversation) error {
						if c.Snapshot(snap) == nil {
							c.Snapshots = append(c.Snapshots, Snapshot{Backend: "local", ID: snap})
						} else {
							c.Snapshots = slices.DeleteFunc(c.Snapshots, func(s Snapshot) bool { return s.ID == snap })
						}
						return nil
					})
				case 4: // relaunched: a new id, the old one kept
					_, err = m.Update(ctx, c, func(c *Conversation) error {
						if rec := c.Machine("local", id); rec != nil {
							rec.Previous = append(rec.Previous, rec.ID)
							rec.ID = id + "-r"
						}
						return nil
					})
				case 5: // deleted and created again under the same handle
					if err = m.Store().Delete(ctx, c.Principal, c.Handle); errors.Is(err, ErrNotFound) {
						err = nil
					}
					if err == nil {
						if err = m.Store().Create(ctx, &Conversation{Handle: c.Handle, Principal: c.Principal}); err != nil && strings.Contains(err.Error(), "exists already") {
							err = nil
						}
					}
				}
				if err != nil && !errors.Is(err, ErrNotFound) {
					t.Error(err)
				}
			}
		})
	}
	writers.Wait()
	done.Store(true)
	wg.Wait()
	checkIndex(t, stores[0])
	// The lookups agree with a scan of every conversation.
	all, err := stores[1].All(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, principal := range []string{"alice", "bob"} {
		for i := range 4 {
			for _, id := range []string{fmt.Sprintf("m-%d", i), fmt.Sprintf("m-%d-r", i)} {
				var want []string
				for _, c := range all {
					if c.Principal == principal && c.Machine("local", id) != nil {
						want = append(want, c.Handle)
					}
				}
				slices.Sort(want)
				got, err := managers[1].OwnerOf(ctx, principal, "local", id)
				switch {
				case len(want) == 0 && !errors.Is(err, ErrNotFound):
					t.Errorf("%s: owner of %s: %v, %v; want not found", principal, id, got, err)
				case len(want) > 0 && (err != nil || got.Handle != want[0]):
					t.Errorf("%s: owner of %s: %v, %v; want %s", principal, id, got, err, want[0])
				}
			}
		}
	}
}

// TestIndexKeys: the keys of different parts never coincide, and the diff
// finds what to remove and what to add.
func TestIndexKeys(t *testing.T) {
	if machineIndexKey("a:1", "b", "c") == machineIndexKey("a", "1:b", "c") || joinKey("ab", "c") == joinKey("a", "bc") {
		t.Error("keys of different parts coincide")
	}
	if strings.HasPrefix(machineIndexKey("alice", "local", "m-12"), machineIndexKey("alice", "local", "m-1")) {
		t.Error("a machine's key is a prefix of another's")
	}
	removed, added := indexDiff([]string{"a", "b", "d"}, []string{"b", "c", "d", "e"})
	if !slices.Equal(removed, []string{"a"}) || !slices.Equal(added, []string{"c", "e"}) {
		t.Errorf("diff: removed %v, added %v", removed, added)
	}
	removed, added = indexDiff(nil, []string{"x"})
	if removed != nil || !slices.Equal(added, []string{"x"}) {
		t.Errorf("diff from nothing: removed %v, added %v", removed, added)
	}
}
