package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// BoltStore is a Store in a bbolt file.
type BoltStore struct {
	db *bolt.DB
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
	return &BoltStore{db: db}, nil
}

// Close closes the file.
func (s *BoltStore) Close() error { return s.db.Close() }

// Create stores a new conversation.
func (s *BoltStore) Create(_ context.Context, c *Conversation) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(conversationsBucket)
		if b.Get([]byte(c.Handle)) != nil {
			return fmt.Errorf("conversation %s exists already", c.Handle)
		}
		return put(b, c)
	})
}

// Load returns a conversation of the principal.
func (s *BoltStore) Load(_ context.Context, principal, handle string) (*Conversation, error) {
	var c *Conversation
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		c, err = get(tx.Bucket(conversationsBucket), principal, handle)
		return err
	})
	return c, err
}

// Update applies fn in one transaction; bbolt fsyncs before it returns.
func (s *BoltStore) Update(_ context.Context, principal, handle string, fn func(*Conversation) error) (*Conversation, error) {
	var c *Conversation
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(conversationsBucket)
		var err error
		if c, err = get(b, principal, handle); err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
		return put(b, c)
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Delete removes a conversation of the principal.
func (s *BoltStore) Delete(_ context.Context, principal, handle string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(conversationsBucket)
		if _, err := get(b, principal, handle); err != nil {
			return err
		}
		return b.Delete([]byte(handle))
	})
}

// All lists every conversation.
func (s *BoltStore) All(context.Context) ([]*Conversation, error) {
	var all []*Conversation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(conversationsBucket).ForEach(func(_, v []byte) error {
			var c Conversation
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			all = append(all, &c)
			return nil
		})
	})
	return all, err
}

// DefaultHandle returns the handle of the principal's default conversation.
func (s *BoltStore) DefaultHandle(_ context.Context, principal string) (string, error) {
	var h string
	err := s.db.View(func(tx *bolt.Tx) error {
		h = string(tx.Bucket(defaultsBucket).Get([]byte(principal)))
		return nil
	})
	return h, err
}

// SetDefaultHandle records the principal's default conversation.
func (s *BoltStore) SetDefaultHandle(_ context.Context, principal, handle string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(defaultsBucket).Put([]byte(principal), []byte(handle))
	})
}

func get(b *bolt.Bucket, principal, handle string) (*Conversation, error) {
	v := b.Get([]byte(handle))
	if v == nil {
		return nil, ErrNotFound
	}
	var c Conversation
	if err := json.Unmarshal(v, &c); err != nil {
		return nil, fmt.Errorf("conversation %s is damaged in the store: %w", handle, err)
	}
	if c.Principal != principal {
		return nil, ErrNotFound
	}
	return &c, nil
}

func put(b *bolt.Bucket, c *Conversation) error {
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return b.Put([]byte(c.Handle), v)
}
