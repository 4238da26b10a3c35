package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
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
// same server and key prefix. Update and Delete are optimistic transactions
// (WATCH, then MULTI/EXEC, retried on conflict), so they are atomic across
// processes; Create never overwrites.
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
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.client.Ping(ctx).Err(); err != nil {
		s.client.Close()
		return nil, s.fail("connect", err)
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
func (s *RedisStore) handlesKey() string  { return s.prefix + "handles" }
func (s *RedisStore) defaultsKey() string { return s.prefix + "defaults" }
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
	var created *redis.BoolCmd
	_, err = s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		created = p.SetNX(ctx, s.conversationKey(c.Handle), v, 0)
		p.SAdd(ctx, s.handlesKey(), c.Handle) // a no-op when it exists already
		return nil
	})
	if err != nil {
		return s.fail("create conversation "+c.Handle, err)
	}
	if !created.Val() {
		return fmt.Errorf("conversation %s exists already", c.Handle)
	}
	return nil
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
	err := s.optimistic(ctx, "update conversation "+handle, key, func(tx *redis.Tx) (func(redis.Pipeliner) error, error) {
		var err error
		if c, err = s.get(ctx, tx, principal, handle); err != nil {
			return nil, err
		}
		if err := fn(c); err != nil {
			return nil, err
		}
		v, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encode conversation %s: %w", handle, err)
		}
		return func(p redis.Pipeliner) error { return p.Set(ctx, key, v, 0).Err() }, nil
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
	return s.optimistic(ctx, "delete conversation "+handle, key, func(tx *redis.Tx) (func(redis.Pipeliner) error, error) {
		if _, err := s.get(ctx, tx, principal, handle); err != nil {
			return nil, err
		}
		return func(p redis.Pipeliner) error {
			p.Del(ctx, key)
			return p.SRem(ctx, s.handlesKey(), handle).Err()
		}, nil
	})
}

// prepared carries an error of prepare through go-redis's Watch: it is
// final and already says what failed, unlike Redis's own errors.
type prepared struct{ err error }

func (p prepared) Error() string { return p.err.Error() }

// optimistic watches key, lets prepare read through the transaction and
// decide the writes, and commits them with MULTI/EXEC unless another writer
// changed key in between; then it starts again, after a growing random
// pause so that contenders spread out, at most s.attempts times. prepare's
// errors end it unchanged, and nothing is written.
func (s *RedisStore) optimistic(ctx context.Context, what, key string, prepare func(*redis.Tx) (func(redis.Pipeliner) error, error)) error {
	pause := time.Millisecond
	for range s.attempts {
		err := s.client.Watch(ctx, func(tx *redis.Tx) error {
			write, err := prepare(tx)
			if err != nil {
				return prepared{err}
			}
			_, err = tx.TxPipelined(ctx, write)
			return err
		}, key)
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

// All lists every conversation of every principal, scanning the set of
// handles (never KEYS, which blocks the server) and reading them in batches.
func (s *RedisStore) All(ctx context.Context) ([]*Conversation, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	seen := map[string]bool{} // SSCAN may return a handle twice
	var all []*Conversation
	var cursor uint64
	for {
		handles, next, err := s.client.SScan(ctx, s.handlesKey(), cursor, "", 200).Result()
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
				all = append(all, c)
			}
		}
		if cursor = next; cursor == 0 {
			return all, nil
		}
	}
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
