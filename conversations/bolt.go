package conversations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// The embedded store is bbolt rather than SQLite: it is pure Go (no cgo, so
// the static binary and its Docker image stay simple), its copy-on-write
// B+tree with an fsync per committed transaction survives kill -9 at any
// point without a recovery step, and what we store — a few JSON records
// keyed by handle — needs no query language. Its file lock also keeps a
// second server from opening the same state at once.

var (
	conversationsBucket = []byte("conversations") // handle → JSON Conversation
	defaultsBucket      = []byte("defaults")      // principal → handle of its default conversation
	// indexBucket is the index (see index.go): an index key followed by
	// joinKey(handle) → handle, so that the handles filed under a key are
	// the entries its prefix finds, in handle order.
	indexBucket = []byte("index")
	metaBucket  = []byte("meta") // metaIndexVersion → indexVersion of the index bucket
)

var metaIndexVersion = []byte("index-version")

// openTimeout bounds the wait for another process's lock on the file.
var openTimeout = 5 * time.Second

// BoltStore is a Store in a bbolt file. Its file lock makes it the file's
// only writer, so it keeps the decoded conversations in memory as well:
// reading one is a map lookup, not a transaction and a JSON decode.
// Cached conversations are never changed in place (Update replaces them),
// so the values Load returns must be treated as read-only. The index (see
// index.go) is kept in the file, in the transactions that write the
// conversations; like them, it is read into memory on open and kept there
// after each commit, so that a lookup is two map lookups rather than a
// transaction and a walk down a B+tree whose depth grows with the store.
type BoltStore struct {
	db *bolt.DB

	mu       sync.RWMutex
	cache    map[string]*Conversation // handle → conversation
	defaults map[string]string        // principal scope → handle
	index    map[string][]string      // index key → handles filed under it, sorted: the index bucket's
}

var _ Store = (*BoltStore)(nil)

// OpenBolt opens (creating if needed) the store at path.
func OpenBolt(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("the session store %s is locked by another process (is another vmcp server using this state dir?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open the session store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{conversationsBucket, defaultsBucket, indexBucket, metaBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("prepare the session store %s: %w", path, err)
	}
	s := &BoltStore{db: db, cache: map[string]*Conversation{}, defaults: map[string]string{}, index: map[string][]string{}}
	indexed := false
	err = db.View(func(tx *bolt.Tx) error {
		indexed = string(tx.Bucket(metaBucket).Get(metaIndexVersion)) == indexVersion
		if err := tx.Bucket(conversationsBucket).ForEach(func(k, v []byte) error {
			var c Conversation
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("conversation %s is damaged in the store: %w", k, err)
			}
			s.cache[c.Handle] = &c
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(defaultsBucket).ForEach(func(k, v []byte) error {
			s.defaults[string(k)] = string(v)
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("read the session store %s: %w", path, err)
	}
	if !indexed {
		if err := db.Update(s.reindex); err != nil {
			db.Close()
			return nil, fmt.Errorf("index the session store %s: %w (the store is unchanged; free disk space if it is full, or restore it from a backup)", path, err)
		}
	}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(indexBucket).ForEach(func(k, v []byte) error {
			key, ok := strings.CutSuffix(string(k), joinKey(string(v)))
			if !ok {
				return fmt.Errorf("index entry %q does not end with its handle %q (delete the bucket %s, or the key %s of the bucket %s, to index the store again)",
					k, v, indexBucket, metaIndexVersion, metaBucket)
			}
			s.index[key] = append(s.index[key], string(v))
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("read the session store's index %s: %w", path, err)
	}
	for _, hs := range s.index {
		slices.Sort(hs) // in key order already, unless handles differ in length
	}
	return s, nil
}

// reindex builds the index anew from the cached conversations, for a store
// that a version before the index (or before its current layout) wrote, in
// one transaction: a crash leaves the store as it was, to index again on
// next open. The entries are put in key order, which bbolt appends cheaply;
// in random order each insert would move half a growing node.
func (s *BoltStore) reindex(tx *bolt.Tx) error {
	if err := tx.DeleteBucket(indexBucket); err != nil {
		return err
	}
	b, err := tx.CreateBucket(indexBucket)
	if err != nil {
		return err
	}
	var entries [][2]string // key, handle
	for _, c := range s.cache {
		suffix := joinKey(c.Handle)
		for _, k := range indexKeys(c) {
			entries = append(entries, [2]string{k + suffix, c.Handle})
		}
	}
	slices.SortFunc(entries, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	for _, e := range entries {
		if err := b.Put([]byte(e[0]), []byte(e[1])); err != nil {
			return err
		}
	}
	return tx.Bucket(metaBucket).Put(metaIndexVersion, []byte(indexVersion))
}

// write replaces the record old (nil: none) by c (nil: delete it) in tx,
// and moves the handle's index entries from old's keys to c's.
func write(tx *bolt.Tx, handle string, old, c *Conversation) error {
	if c == nil {
		if err := tx.Bucket(conversationsBucket).Delete([]byte(handle)); err != nil {
			return err
		}
	} else if err := put(tx.Bucket(conversationsBucket), c); err != nil {
		return err
	}
	return fileIndex(tx, handle, old, c)
}

// cacheIndex makes the index in memory what write made the index bucket,
// once its transaction committed.
func (s *BoltStore) cacheIndex(handle string, old, c *Conversation) {
	removed, added := indexDiff(keysOf(old), keysOf(c))
	for _, k := range removed {
		hs := s.index[k]
		if i, ok := slices.BinarySearch(hs, handle); ok {
			hs = slices.Delete(hs, i, i+1)
		}
		if len(hs) == 0 {
			delete(s.index, k)
		} else {
			s.index[k] = hs
		}
	}
	for _, k := range added {
		hs := s.index[k]
		if i, ok := slices.BinarySearch(hs, handle); !ok {
			s.index[k] = slices.Insert(hs, i, handle)
		}
	}
}

// fileIndex moves the handle's index entries from old's keys to c's.
func fileIndex(tx *bolt.Tx, handle string, old, c *Conversation) error {
	b := tx.Bucket(indexBucket)
	removed, added := indexDiff(keysOf(old), keysOf(c))
	suffix := joinKey(handle)
	for _, k := range removed {
		if err := b.Delete([]byte(k + suffix)); err != nil {
			return err
		}
	}
	for _, k := range added {
		if err := b.Put([]byte(k+suffix), []byte(handle)); err != nil {
			return err
		}
	}
	return nil
}

// lookup returns the cached conversations that the index files under key
// and that pass holds, in handle order.
func (s *BoltStore) lookup(key string, holds func(*Conversation) bool) []*Conversation {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var found []*Conversation
	for _, h := range s.index[key] {
		if c := s.cache[h]; c != nil && holds(c) {
			found = append(found, c)
		}
	}
	return found
}

// lookupOne returns the first conversation of lookup, or ErrNotFound.
func (s *BoltStore) lookupOne(key string, holds func(*Conversation) bool) (*Conversation, error) {
	found := s.lookup(key, holds)
	if len(found) == 0 {
		return nil, ErrNotFound
	}
	return found[0], nil
}

// ByMachine returns the principal's conversation that holds the machine
// (read-only: see BoltStore).
func (s *BoltStore) ByMachine(_ context.Context, principal, backend, id string) (*Conversation, error) {
	return s.lookupOne(machineIndexKey(principal, backend, id), holdsMachine(principal, backend, id))
}

// BySnapshot returns the principal's conversation that holds the snapshot
// (read-only: see BoltStore).
func (s *BoltStore) BySnapshot(_ context.Context, principal, id string) (*Conversation, error) {
	return s.lookupOne(snapshotIndexKey(principal, id), holdsSnapshot(principal, id))
}

// ByPrincipal lists the principal's conversations (read-only values).
func (s *BoltStore) ByPrincipal(_ context.Context, principal string) ([]*Conversation, error) {
	return s.lookup(principalIndexKey(principal), ownedBy(principal)), nil
}

// cached returns the principal's conversation from memory.
func (s *BoltStore) cached(principal, handle string) (*Conversation, error) {
	s.mu.RLock()
	c := s.cache[handle]
	s.mu.RUnlock()
	if c == nil || c.Principal != principal {
		return nil, ErrNotFound
	}
	return c, nil
}

// Close closes the file.
func (s *BoltStore) Close() error { return s.db.Close() }

// Create stores a new conversation.
func (s *BoltStore) Create(_ context.Context, c *Conversation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache[c.Handle] != nil {
		return fmt.Errorf("conversation %s exists already", c.Handle)
	}
	cp, err := clone(c)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return write(tx, cp.Handle, nil, cp) }); err != nil {
		return err
	}
	s.cache[c.Handle] = cp
	s.cacheIndex(cp.Handle, nil, cp)
	return nil
}

// Load returns a conversation of the principal (read-only: see BoltStore).
func (s *BoltStore) Load(_ context.Context, principal, handle string) (*Conversation, error) {
	return s.cached(principal, handle)
}

// Update applies fn to a copy in one transaction (bbolt fsyncs before it
// returns) and then makes the copy the cached conversation.
func (s *BoltStore) Update(_ context.Context, principal, handle string, fn func(*Conversation) error) (*Conversation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cache[handle]
	if old == nil || old.Principal != principal {
		return nil, ErrNotFound
	}
	c, err := clone(old)
	if err != nil {
		return nil, err
	}
	if err := fn(c); err != nil {
		return nil, err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return write(tx, handle, old, c) }); err != nil {
		return nil, err
	}
	s.cache[handle] = c
	s.cacheIndex(handle, old, c)
	return c, nil
}

// Delete removes a conversation of the principal.
func (s *BoltStore) Delete(_ context.Context, principal, handle string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cache[handle]
	if old == nil || old.Principal != principal {
		return ErrNotFound
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return write(tx, handle, old, nil) }); err != nil {
		return err
	}
	delete(s.cache, handle)
	s.cacheIndex(handle, old, nil)
	return nil
}

// All lists every conversation (read-only values).
func (s *BoltStore) All(context.Context) ([]*Conversation, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	all := make([]*Conversation, 0, len(s.cache))
	for _, c := range s.cache {
		all = append(all, c)
	}
	return all, nil
}

// DefaultHandle returns the handle of the principal's default conversation.
func (s *BoltStore) DefaultHandle(_ context.Context, principal string) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defaults[principal], nil
}

// SetDefaultHandle swaps the principal's default conversation from old to
// handle (see Store).
func (s *BoltStore) SetDefaultHandle(_ context.Context, principal, old, handle string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.defaults[principal]; cur != old {
		return cur, nil
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(defaultsBucket).Put([]byte(principal), []byte(handle))
	}); err != nil {
		return "", err
	}
	s.defaults[principal] = handle
	return handle, nil
}

// clone deep-copies a conversation.
func clone(c *Conversation) (*Conversation, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var cp Conversation
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, err
	}
	return &cp, nil
}

func put(b *bolt.Bucket, c *Conversation) error {
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return b.Put([]byte(c.Handle), v)
}
