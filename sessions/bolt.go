package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
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
)

// openTimeout bounds the wait for another process's lock on the file.
var openTimeout = 5 * time.Second

// BoltStore is a Store in a bbolt file. Its file lock makes it the file's
// only writer, so it keeps the decoded conversations in memory as well:
// reading one is a map lookup, not a transaction and a JSON decode.
// Cached conversations are never changed in place (Update replaces them),
// so the values Load returns must be treated as read-only.
type BoltStore struct {
	db *bolt.DB

	mu       sync.RWMutex
	cache    map[string]*Conversation // handle → conversation
	defaults map[string]string        // principal scope → handle
}

var _ Store = (*BoltStore)(nil)

// OpenBolt opens (creating if needed) the store at path.
func OpenBolt(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("the session store %s is locked by another process (is another vmcp server using this state dir?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open the session store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{conversationsBucket, defaultsBucket} {
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
	s := &BoltStore{db: db, cache: map[string]*Conversation{}, defaults: map[string]string{}}
	err = db.View(func(tx *bolt.Tx) error {
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
	return s, nil
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
	if err := s.db.Update(func(tx *bolt.Tx) error { return put(tx.Bucket(conversationsBucket), cp) }); err != nil {
		return err
	}
	s.cache[c.Handle] = cp
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
	if err := s.db.Update(func(tx *bolt.Tx) error { return put(tx.Bucket(conversationsBucket), c) }); err != nil {
		return nil, err
	}
	s.cache[handle] = c
	return c, nil
}

// Delete removes a conversation of the principal.
func (s *BoltStore) Delete(_ context.Context, principal, handle string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cache[handle]; c == nil || c.Principal != principal {
		return ErrNotFound
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(conversationsBucket).Delete([]byte(handle)) }); err != nil {
		return err
	}
	delete(s.cache, handle)
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
