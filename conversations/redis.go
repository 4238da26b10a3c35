package conversations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis store lets several replicas of a hosted server share
// conversations: a conversation created through one replica continues
// through any other. Unlike BoltStore it keeps no copy in memory, since other
// replicas write too; every read goes to Redis.
//
// Keys, under the prefix (default "vmcp:"):
//
//	<prefix>conversation:<handle>  string: the conversation as JSON
//	<prefix>handles                set: every stored handle (All scans it, never KEYS)
//	<prefix>defaults               hash: principal scope → handle of its default conversation
//	<prefix>index:<index key>      set: the handles of the conversations filed under an index key (see index.go), e.g.
//	                               vmcp:index:machine:5:alice5:local3:m-1 (each part preceded by its length)
//	<prefix>index-version          string: the layout of the index, set once every conversation was indexed
//
// Every write of a conversation changes its index entries in the same
// MULTI/EXEC, under a WATCH of the conversation's key, by the difference
// between the record it read and the one it writes: so, whatever other
// replicas do, the sets hold exactly the entries the stored records imply.
// A store opened on data without index-version (written by a version before
// the index) indexes every conversation first. Replicas of such a version
// still running afterwards write records without index entries, and the
// lookups miss those bindings: once every replica is upgraded, call Reindex
// (or delete <prefix>index-version and restart one replica).

// RedisOptions configure a RedisStore. The zero value is usable.
type RedisOptions struct {
	// KeyPrefix starts every key the store uses, so that deployments can
	// share a Redis database; default "vmcp:".
	KeyPrefix string
	// Timeout bounds each store call, its retries included, so that a
	// down or hung Redis fails a tool call instead of blocking it; default
	// 5s. The URL's dial_timeout, read_timeout and write_timeout (go-redis
	// query parameters) bound each network step within it.
	Timeout time.Duration
	// UpdateAttempts bounds how often Update and Delete retry when another
	// writer changed the conversation between their read and their write;
	// default 50.
	UpdateAttempts int
}

// RedisStore is a Store in Redis, shared by every replica that opens the
// same server and key prefix. Create, Update and Delete are optimistic
// transactions (WATCH, then MULTI/EXEC, retried on conflict), so they are
// atomic across processes, index entries included; Create never
// overwrites.
//
// Durability is the server's: a write is acknowledged when Redis has it in
// memory. For "an announced binding is never lost" (a tool result is only
// returned after its binding is stored) the operator must run Redis with
// "appendonly yes" and "appendfsync always", so that each acknowledged write
// is on disk; "appendfsync everysec" can lose the last second on a power
// loss, and snapshots alone (save) lose everything since the last one. With
// replication and automatic failover, writes not yet copied to the replica
// are lost when it is promoted. CheckDurability reports a server that is
// not configured so.
type RedisStore struct {
	client   *redis.Client
	addr     string // host:port or socket path: never the password
	prefix   string
	timeout  time.Duration
	attempts int
}

var _ Store = (*RedisStore)(nil)

// OpenRedis connects to the Redis server at rawURL
// (redis://[user:password@]host:port/db, rediss:// for TLS, or
// unix:///path?db=N) and checks that it answers.
func OpenRedis(ctx context.Context, rawURL string, opts RedisOptions) (*RedisStore, error) {
	o, err := parseRedisURL(rawURL)
	if err != nil {
		return nil, err
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "vmcp:"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.UpdateAttempts <= 0 {
		opts.UpdateAttempts = 50
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = opts.Timeout
	}
	// One connection attempt per try: the command retries (max_retries)
	// already try again, and a down server should fail a call quickly.
	o.DialerRetries = 1
	// Deadlines of the caller's context (and of Timeout) cut a call short
	// instead of only the per-read and per-write socket timeouts.
	o.ContextTimeoutEnabled = true
	s := &RedisStore{client: redis.NewClient(o), addr: o.Addr, prefix: opts.KeyPrefix, timeout: opts.Timeout, attempts: opts.UpdateAttempts}
	pctx, cancel := s.withTimeout(ctx)
	defer cancel()
	if err := s.client.Ping(pctx).Err(); err != nil {
		s.client.Close()
		return nil, s.fail("connect", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.client.Close()
		return nil, err
	}
	return s, nil
}

// parseRedisURL parses a Redis URL into client options; its errors never
// contain the URL's password.
func parseRedisURL(rawURL string) (*redis.Options, error) {
	const form = "want redis://[user:password@]host:port/db, rediss://… for TLS, or unix:///path/to/socket?db=N"
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error quotes the whole URL, password included.
		return nil, fmt.Errorf("the Redis session store URL is malformed: %s", form)
	}
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		msg := fmt.Sprintf("the Redis session store URL %s is invalid (%s): %s", u.Redacted(), err, form)
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		return nil, errors.New(msg)
	}
	return o, nil
}

// fail names what failed, where, and what to do about it.
func (s *RedisStore) fail(what string, err error) error {
	hint := "check that the Redis server is running and reachable from this host"
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		hint = fmt.Sprintf("Redis did not answer in time (the store's timeout is %s); check that the server is up and not overloaded", s.timeout)
	case errors.Is(err, context.Canceled):
		hint = "the call was cancelled"
	case strings.Contains(err.Error(), "WRONGPASS"), strings.Contains(err.Error(), "NOAUTH"):
		hint = "check the user and password in the session store URL"
	}
	return fmt.Errorf("redis session store at %s: %s: %w (%s)", s.addr, what, err, hint)
}

func (s *RedisStore) conversationKey(handle string) string {
	return s.prefix + "conversation:" + handle
}
func (s *RedisStore) handlesKey() string       { return s.prefix + "handles" }
func (s *RedisStore) defaultsKey() string      { return s.prefix + "defaults" }
func (s *RedisStore) indexKey(k string) string { return s.prefix + "index:" + k }
func (s *RedisStore) versionKey() string       { return s.prefix + "index-version" }
func (s *RedisStore) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// Close closes the connections to Redis.
func (s *RedisStore) Close() error { return s.client.Close() }

// Create stores a new conversation, refusing to replace an existing one.
func (s *RedisStore) Create(ctx context.Context, c *Conversation) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	v, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode conversation %s: %w", c.Handle, err)
	}
	key := s.conversationKey(c.Handle)
	// A transaction rather than SETNX alone: the index entries must only
	// be written along with the record.
	return s.optimistic(ctx, "create conversation "+c.Handle, []string{key}, func(tx *redis.Tx) (func(redis.Pipeliner) error, error) {
		n, err := tx.Exists(ctx, key).Result()
		if err != nil {
			return nil, s.fail("create conversation "+c.Handle, err)
		}
		if n > 0 {
			return nil, fmt.Errorf("conversation %s exists already", c.Handle)
		}
		return func(p redis.Pipeliner) error {
			p.Set(ctx, key, v, 0)
			p.SAdd(ctx, s.handlesKey(), c.Handle)
			s.fileIndex(ctx, p, c.Handle, nil, indexKeys(c))
			return nil
		}, nil
	})
}

// fileIndex queues, in a transaction, the moves of the handle's index
// entries from the sorted keys old (of the record replaced; none for a new
// one) to those of the record written (none when it is deleted).
func (s *RedisStore) fileIndex(ctx context.Context, p redis.Pipeliner, handle string, old, new []string) {
	removed, added := indexDiff(old, new)
	for _, k := range removed {
		p.SRem(ctx, s.indexKey(k), handle)
	}
	for _, k := range added {
		p.SAdd(ctx, s.indexKey(k), handle)
	}
}

// get reads and decodes a conversation of the principal; cmd is the
// client or a transaction.
func (s *RedisStore) get(ctx context.Context, cmd redis.Cmdable, principal, handle string) (*Conversation, error) {
	v, err := cmd.Get(ctx, s.conversationKey(handle)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, s.fail("read conversation "+handle, err)
	}
	c, err := decodeConversation(handle, v)
	if err != nil {
		return nil, err
	}
	if c.Principal != principal {
		return nil, ErrNotFound
	}
	return c, nil
}

func decodeConversation(handle string, v []byte) (*Conversation, error) {
	var c Conversation
	if err := json.Unmarshal(v, &c); err != nil {
		return nil, fmt.Errorf("conversation %s is damaged in Redis (restore it from a backup or delete it): %w", handle, err)
	}
	return &c, nil
}

// Load returns a conversation of the principal, read from Redis.
func (s *RedisStore) Load(ctx context.Context, principal, handle string) (*Conversation, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	return s.get(ctx, s.client, principal, handle)
}

// Update applies fn to a freshly read copy and writes the result only if no
// other writer changed the conversation since it was read; otherwise it
// reads again and reapplies fn, up to UpdateAttempts times. fn may thus run
// more than once: it must only change the conversation it is given. When fn
// fails nothing is written.
func (s *RedisStore) Update(ctx context.Context, principal, handle string, fn func(*Conversation) error) (*Conversation, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	key := s.conversationKey(handle)
	var c *Conversation
	err := s.optimistic(ctx, "update conversation "+handle, []string{key}, func(tx *redis.Tx) (func(redis.Pipeliner) error, error) {
		var err error
		if c, err = s.get(ctx, tx, principal, handle); err != nil {
			return nil, err
		}
		oldKeys := indexKeys(c) // fn changes c
		if err := fn(c); err != nil {
			return nil, err
		}
		v, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encode conversation %s: %w", handle, err)
		}
		return func(p redis.Pipeliner) error {
			p.Set(ctx, key, v, 0)
			s.fileIndex(ctx, p, handle, oldKeys, indexKeys(c))
			return nil
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Delete removes a conversation of the principal.
func (s *RedisStore) Delete(ctx context.Context, principal, handle string) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	key := s.conversationKey(handle)
	return s.optimistic(ctx, "delete conversation "+handle, []string{key}, func(tx *redis.Tx) (func(redis.Pipeliner) error, error) {
		old, err := s.get(ctx, tx, principal, handle)
		if err != nil {
			return nil, err
		}
		return func(p redis.Pipeliner) error {
			p.Del(ctx, key)
			p.SRem(ctx, s.handlesKey(), handle)
			s.fileIndex(ctx, p, handle, indexKeys(old), nil)
			return nil
		}, nil
	})
}

// prepared carries an error of prepare through go-redis's Watch: it is
// final and already says what failed, unlike Redis's own errors.
type prepared struct{ err error }

func (p prepared) Error() string { return p.err.Error() }

// optimistic watches keys, lets prepare read through the transaction and
// decide the writes, and commits them with MULTI/EXEC unless another writer
// changed one of the keys in between; then it starts again, after a growing random
// pause so that contenders spread out, at most s.attempts times. prepare's
// errors end it unchanged, and nothing is written.
func (s *RedisStore) optimistic(ctx context.Context, what string, keys []string, prepare func(*redis.Tx) (func(redis.Pipeliner) error, error)) error {
	pause := time.Millisecond
	for range s.attempts {
		err := s.client.Watch(ctx, func(tx *redis.Tx) error {
			write, err := prepare(tx)
			if err != nil {
				return prepared{err}
			}
			_, err = tx.TxPipelined(ctx, write)
			return err
		}, keys...)
		var p prepared
		switch {
		case err == nil:
			return nil
		case errors.As(err, &p):
			return p.err
		case !errors.Is(err, redis.TxFailedErr):
			return s.fail(what, err)
		}
		select {
		case <-time.After(pause/2 + rand.N(pause)):
		case <-ctx.Done():
			return s.fail(what, ctx.Err())
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
	return fmt.Errorf("redis session store at %s: %s: other writers changed the conversation %d times in a row; retry the call", s.addr, what, s.attempts)
}

// migrate runs Reindex unless index-version says the index is complete (a
// store written by a version before the index has none).
func (s *RedisStore) migrate(ctx context.Context) error {
	vctx, cancel := s.withTimeout(ctx)
	v, err := s.client.Get(vctx, s.versionKey()).Result()
	cancel()
	if err == nil && v == indexVersion {
		return nil
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return s.fail("read the index version", err)
	}
	return s.Reindex(ctx)
}

// Reindex files every conversation in the index, as opening a store
// without one does: for the bindings that replicas of a version before the
// index recorded while this one ran (a rolling upgrade), once the last of
// them has stopped. Then it sets index-version.
//
// Each batch of conversations is read and filed in one optimistic
// transaction, watching their keys: a replica that changes one meanwhile
// (and files its own entries) makes the batch start again, so a stale
// record is never filed. Entries are only ever added here, those the
// stored records imply: it is safe while other replicas serve calls, from
// several at once, and again. Each batch gets the store's timeout (ctx
// bounds the whole).
func (s *RedisStore) Reindex(ctx context.Context) error {
	var cursor uint64
	for {
		// Each batch gets the store's timeout: indexing a large store as a
		// whole takes longer than one call may.
		bctx, cancel := s.withTimeout(ctx)
		next, err := s.indexBatch(bctx, cursor)
		cancel()
		if err != nil {
			return err
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	vctx, cancel := s.withTimeout(ctx)
	defer cancel()
	if err := s.client.Set(vctx, s.versionKey(), indexVersion, 0).Err(); err != nil {
		return s.fail("record the index version", err)
	}
	return nil
}

// indexBatch files the conversations of one SSCAN batch of the handle set,
// and returns the next cursor.
func (s *RedisStore) indexBatch(ctx context.Context, cursor uint64) (uint64, error) {
	handles, next, err := s.client.SScan(ctx, s.handlesKey(), cursor, "", 200).Result()
	if err != nil {
		return 0, s.fail("list conversations to index them", err)
	}
	if len(handles) == 0 {
		return next, nil
	}
	keys := make([]string, len(handles))
	for i, h := range handles {
		keys[i] = s.conversationKey(h)
	}
	err = s.optimistic(ctx, "index conversations", keys, func(tx *redis.Tx) (func(redis.Pipeliner) error, error) {
		vals, err := tx.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, s.fail("read conversations to index them", err)
		}
		var convs []*Conversation
		for i, v := range vals {
			str, ok := v.(string)
			if !ok {
				continue // deleted, with its entries
			}
			c, err := decodeConversation(handles[i], []byte(str))
			if err != nil {
				return nil, err
			}
			convs = append(convs, c)
		}
		return func(p redis.Pipeliner) error {
			for _, c := range convs {
				s.fileIndex(ctx, p, c.Handle, nil, indexKeys(c))
			}
			return nil
		}, nil
	})
	return next, err
}

// All lists every conversation of every principal, scanning the set of
// handles (never KEYS, which blocks the server) and reading them in batches.
func (s *RedisStore) All(ctx context.Context) ([]*Conversation, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	return s.scan(ctx, s.handlesKey(), nil)
}

// scan reads the conversations whose handles are in the set at key, in
// batches, and returns those that pass keep (nil: all of them).
func (s *RedisStore) scan(ctx context.Context, key string, keep func(*Conversation) bool) ([]*Conversation, error) {
	seen := map[string]bool{} // SSCAN may return a handle twice
	var all []*Conversation
	var cursor uint64
	for {
		handles, next, err := s.client.SScan(ctx, key, cursor, "", 200).Result()
		if err != nil {
			return nil, s.fail("list conversations", err)
		}
		keys := make([]string, 0, len(handles))
		fresh := handles[:0]
		for _, h := range handles {
			if !seen[h] {
				seen[h] = true
				fresh = append(fresh, h)
				keys = append(keys, s.conversationKey(h))
			}
		}
		if len(keys) > 0 {
			vals, err := s.client.MGet(ctx, keys...).Result()
			if err != nil {
				return nil, s.fail("read conversations", err)
			}
			for i, v := range vals {
				str, ok := v.(string)
				if !ok {
					continue // deleted since the scan
				}
				c, err := decodeConversation(fresh[i], []byte(str))
				if err != nil {
					return nil, err
				}
				if keep == nil || keep(c) {
					all = append(all, c)
				}
			}
		}
		if cursor = next; cursor == 0 {
			return all, nil
		}
	}
}

// lookup returns the conversations that the index files under key and that
// pass holds, in handle order. The index is one SSCAN (its sets are small)
// and the records one MGET: the cost does not grow with the number of
// conversations. holds, not the index, decides: an entry another writer
// left stale, or forged, finds nothing.
func (s *RedisStore) lookup(ctx context.Context, key string, holds func(*Conversation) bool) ([]*Conversation, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	found, err := s.scan(ctx, s.indexKey(key), holds)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(found, func(a, b *Conversation) int { return strings.Compare(a.Handle, b.Handle) })
	return found, nil
}

// lookupOne returns the first conversation of lookup, or ErrNotFound.
func (s *RedisStore) lookupOne(ctx context.Context, key string, holds func(*Conversation) bool) (*Conversation, error) {
	found, err := s.lookup(ctx, key, holds)
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return nil, ErrNotFound
	}
	return found[0], nil
}

// ByMachine returns the principal's conversation that holds the machine.
func (s *RedisStore) ByMachine(ctx context.Context, principal, backend, id string) (*Conversation, error) {
	return s.lookupOne(ctx, machineIndexKey(principal, backend, id), holdsMachine(principal, backend, id))
}

// BySnapshot returns the principal's conversation that holds the snapshot.
func (s *RedisStore) BySnapshot(ctx context.Context, principal, id string) (*Conversation, error) {
	return s.lookupOne(ctx, snapshotIndexKey(principal, id), holdsSnapshot(principal, id))
}

// ByPrincipal lists the principal's conversations.
func (s *RedisStore) ByPrincipal(ctx context.Context, principal string) ([]*Conversation, error) {
	return s.lookup(ctx, principalIndexKey(principal), ownedBy(principal))
}

// DefaultHandle returns the handle of the principal's default conversation.
func (s *RedisStore) DefaultHandle(ctx context.Context, principal string) (string, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	h, err := s.client.HGet(ctx, s.defaultsKey(), principal).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", s.fail("read a default conversation", err)
	}
	return h, nil
}

// setDefaultScript swaps a hash field from ARGV[2] ("" = absent) to
// ARGV[3] and returns the field's value after: atomic on the server.
var setDefaultScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then return cur end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return ARGV[3]
`)

// SetDefaultHandle swaps the principal's default conversation from old to
// handle (see Store); replicas racing to create it agree on one.
func (s *RedisStore) SetDefaultHandle(ctx context.Context, principal, old, handle string) (string, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	cur, err := setDefaultScript.Run(ctx, s.client, []string{s.defaultsKey()}, principal, old, handle).Text()
	if err != nil {
		return "", s.fail("record a default conversation", err)
	}
	return cur, nil
}

// CheckDurability reports whether the server keeps every acknowledged
// write on disk (appendonly yes, appendfsync always): an error says what
// is missing, for the operator to fix or knowingly accept. Servers that
// refuse CONFIG GET (some managed services) cannot be checked, which is
// an error too.
func (s *RedisStore) CheckDurability(ctx context.Context) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	cfg, err := s.client.ConfigGet(ctx, "append*").Result()
	if err != nil {
		return s.fail("read the persistence settings (CONFIG GET; check them by hand if your provider disables it)", err)
	}
	if cfg["appendonly"] != "yes" || cfg["appendfsync"] != "always" {
		return fmt.Errorf("redis session store at %s: persistence is appendonly %s, appendfsync %s: a crash or power loss can lose conversations "+
			"whose machines were already announced; set appendonly yes and appendfsync always", s.addr, cfg["appendonly"], cfg["appendfsync"])
	}
	return nil
}
