//go:build linux

package conversations

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testRedis is a redis-server of the test's own, on a loopback port.
type testRedis struct {
	addr string
	url  string
	stop func() // idempotent
}

// startRedis starts Debian's redis-server in t.TempDir(), persisting
// nothing, with KEYS disabled so that a store using it fails. It is stopped
// when the test ends.
func startRedis(t testing.TB, extra ...string) *testRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is missing: run scripts/install-deps (or apt-get install redis-server)")
	}
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		args := append([]string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"), "--rename-command", "KEYS", ""}, extra...)
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					<-exited
				}
			})
		}
		t.Cleanup(stop)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if waitForRedis(addr, exited) {
			return &testRedis{addr: addr, url: "redis://" + addr + "/0", stop: stop}
		}
		stop()
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		if attempt == 3 {
			t.Fatalf("redis-server did not start on %s:\n%s", addr, log)
		}
		t.Logf("redis-server did not start on %s (port taken meanwhile?), trying another port", addr)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitForRedis waits until the server at addr answers a PING (with PONG,
// or NOAUTH when it wants a password), or has exited, or 10 seconds have
// passed.
func waitForRedis(addr string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.SetDeadline(time.Now().Add(time.Second))
			_, err = conn.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			if err == nil {
				_, err = io.ReadFull(conn, buf)
			}
			conn.Close()
			if err == nil && (string(buf) == "+PONG\r\n" || string(buf) == "-NOAUTH") {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func openTestRedis(t testing.TB, url string, opts RedisOptions) *RedisStore {
	t.Helper()
	s, err := OpenRedis(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rawClient reads and writes the test server directly, as an operator (or
// another program) would.
func rawClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRedisReplicasShareConversations: two stores on one server behave like
// two replicas behind a load balancer; what one records the other sees at
// once, and concurrent updates through both lose nothing.
func TestRedisReplicasShareConversations(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	m1 := NewManager(openTestRedis(t, srv.url, RedisOptions{}), Limits{})
	m2 := NewManager(openTestRedis(t, srv.url, RedisOptions{}), Limits{})

	c, created, err := m1.Resolve(ctx, "alice", "", "mcp-1")
	if err != nil || !created {
		t.Fatalf("create through replica 1: %v, %v", created, err)
	}
	if same, created, err := m2.Resolve(ctx, "alice", "", "mcp-1"); err != nil || created || same.Handle != c.Handle {
		t.Fatalf("replica 2 did not find replica 1's default conversation: %+v, %v, %v", same, created, err)
	}
	if _, _, err := m2.Resolve(ctx, "bob", c.Handle, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bob resolves alice's handle on replica 2: %v", err)
	}

	var wg sync.WaitGroup
	for i := range 20 {
		for r, m := range []*Manager{m1, m2} {
			wg.Go(func() {
				if _, err := m.AddMachine(ctx, c, "local", fmt.Sprintf("m-%d-%d", r, i), false); err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	for r, m := range []*Manager{m1, m2} {
		got, _, err := m.Resolve(ctx, "alice", c.Handle, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Machines) != 40 {
			t.Errorf("replica %d sees %d machines, want 40", r+1, len(got.Machines))
		}
		if owner, err := m.OwnerOf(ctx, "alice", "local", "m-1-19"); err != nil || owner.Handle != c.Handle {
			t.Errorf("replica %d: owner of m-1-19: %v, %v", r+1, owner, err)
		}
	}

	if err := m2.Store().Delete(ctx, "alice", c.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := m1.Store().Load(ctx, "alice", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Errorf("replica 1 still loads a conversation replica 2 deleted: %v", err)
	}
}

// TestRedisKeys checks the documented layout and prefixes: deployments with
// different prefixes share a server without seeing each other.
func TestRedisKeys(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	raw := rawClient(t, srv.addr)
	a := openTestRedis(t, srv.url, RedisOptions{})
	b := openTestRedis(t, srv.url, RedisOptions{KeyPrefix: "other:"})

	now := time.Now().UTC()
	c := &Conversation{Handle: NewHandle(), Principal: "alice", CreatedAt: now, LastUsed: now}
	if err := a.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got, err := a.SetDefaultHandle(ctx, "alice\x00", "", c.Handle); err != nil || got != c.Handle {
		t.Fatalf("set the default: %q, %v", got, err)
	}
	// A second writer that expected no default loses to the first.
	if got, err := a.SetDefaultHandle(ctx, "alice\x00", "", NewHandle()); err != nil || got != c.Handle {
		t.Fatalf("a racing replica's default: %q, %v; want the first, %s", got, err, c.Handle)
	}
	if n, err := raw.Exists(ctx, "vmcp:conversation:"+c.Handle).Result(); err != nil || n != 1 {
		t.Errorf("vmcp:conversation:%s: %d, %v", c.Handle, n, err)
	}
	if ok, err := raw.SIsMember(ctx, "vmcp:handles", c.Handle).Result(); err != nil || !ok {
		t.Errorf("vmcp:handles lacks %s: %v", c.Handle, err)
	}
	if h, err := raw.HGet(ctx, "vmcp:defaults", "alice\x00").Result(); err != nil || h != c.Handle {
		t.Errorf("vmcp:defaults: %q, %v", h, err)
	}
	if _, err := a.Update(ctx, "alice", c.Handle, func(c *Conversation) error {
		c.AddMachine("local", "m-1", now)
		c.Snapshots = append(c.Snapshots, Snapshot{Backend: "local", ID: "s-1"})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"vmcp:index:principal:5:alice", "vmcp:index:machine:5:alice5:local3:m-1", "vmcp:index:snapshot:5:alice3:s-1"} {
		if ok, err := raw.SIsMember(ctx, key, c.Handle).Result(); err != nil || !ok {
			t.Errorf("%s lacks %s: %v", key, c.Handle, err)
		}
	}
	if v, err := raw.Get(ctx, "vmcp:index-version").Result(); err != nil || v != indexVersion {
		t.Errorf("vmcp:index-version: %q, %v", v, err)
	}

	if _, err := b.Load(ctx, "alice", c.Handle); !errors.Is(err, ErrNotFound) {
		t.Errorf("another prefix loads the conversation: %v", err)
	}
	if all, err := b.All(ctx); err != nil || len(all) != 0 {
		t.Errorf("another prefix lists %d conversations, %v", len(all), err)
	}
	if h, err := b.DefaultHandle(ctx, "alice\x00"); err != nil || h != "" {
		t.Errorf("another prefix's default: %q, %v", h, err)
	}

	if err := raw.Set(ctx, "vmcp:conversation:"+c.Handle, "{not json", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load(ctx, "alice", c.Handle); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("loading a damaged conversation: %v", err)
	}
}

// TestRedisAllScansEveryHandle lists more conversations than one SSCAN
// batch returns, on a server where KEYS is disabled.
func TestRedisAllScansEveryHandle(t *testing.T) {
	ctx := context.Background()
	s := openTestRedis(t, startRedis(t).url, RedisOptions{})
	want := map[string]bool{}
	for range 450 {
		c := &Conversation{Handle: NewHandle(), Principal: "alice"}
		if err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		want[c.Handle] = true
	}
	all, err := s.All(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		if !want[c.Handle] {
			t.Fatalf("All listed %s twice or an unknown one", c.Handle)
		}
		delete(want, c.Handle)
	}
	if len(want) != 0 {
		t.Errorf("All missed %d of 450 conversations", len(want))
	}
}

// TestRedisUpdateRetriesAreBounded: a conversation changed by another
// writer during every attempt makes Update give up after UpdateAttempts,
// writing nothing of its own.
func TestRedisUpdateRetriesAreBounded(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	s := openTestRedis(t, srv.url, RedisOptions{UpdateAttempts: 3})
	other := openTestRedis(t, srv.url, RedisOptions{})
	c := &Conversation{Handle: NewHandle(), Principal: "alice"}
	if err := s.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	runs := 0
	_, err := s.Update(ctx, "alice", c.Handle, func(c *Conversation) error {
		runs++
		// Another replica records a snapshot between this read and write.
		_, err := other.Update(ctx, "alice", c.Handle, func(c *Conversation) error {
			c.Snapshots = append(c.Snapshots, Snapshot{ID: fmt.Sprint("s-", runs)})
			return nil
		})
		c.SetDefault("local", "m-lost")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "3 times in a row") || runs != 3 {
		t.Fatalf("update under constant conflict: %v after %d runs", err, runs)
	}
	got, err := s.Load(ctx, "alice", c.Handle)
	if err != nil || len(got.Snapshots) != 3 || got.Default != nil {
		t.Errorf("after the conflicts: %+v, %v; want the 3 snapshots of the other writer and no default", got, err)
	}
}

// TestRedisDown: a store that cannot reach its server fails quickly and
// says where it tried, without the password.
func TestRedisDown(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	s := openTestRedis(t, srv.url, RedisOptions{Timeout: 2 * time.Second})
	c := &Conversation{Handle: NewHandle(), Principal: "alice"}
	if err := s.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	srv.stop()

	start := time.Now()
	_, err := s.Load(ctx, "alice", c.Handle)
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), srv.addr) {
		t.Errorf("load with the server down: %v", err)
	}
	if _, err := s.Update(ctx, "alice", c.Handle, func(*Conversation) error { return nil }); err == nil || !strings.Contains(err.Error(), srv.addr) {
		t.Errorf("update with the server down: %v", err)
	}
	if _, err := s.All(ctx); err == nil || !strings.Contains(err.Error(), srv.addr) {
		t.Errorf("all with the server down: %v", err)
	}
	url := "redis://vmcp:s3cr3t-pw@" + srv.addr + "/0"
	_, err = OpenRedis(ctx, url, RedisOptions{Timeout: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), srv.addr) || !strings.Contains(err.Error(), "running and reachable") {
		t.Errorf("open with the server down: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "s3cr3t-pw") {
		t.Errorf("the error shows the password: %v", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("failing took %s", d)
	}
}

// TestRedisHung: a server that accepts connections but never answers fails
// the call within the store's timeout.
func TestRedisHung(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { l.Close(); conns.Wait() })
	conns.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { // read and never answer, until the client hangs up
				defer conn.Close()
				buf := make([]byte, 4096)
				for {
					if _, err := conn.Read(buf); err != nil {
						return
					}
				}
			})
		}
	})
	start := time.Now()
	_, err = OpenRedis(context.Background(), "redis://"+l.Addr().String(), RedisOptions{Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "did not answer in time") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("open of a hung server: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("failing took %s", d)
	}
}

// TestRedisURLs: malformed URLs and a wrong password are refused with
// errors that never show the password.
func TestRedisURLs(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t, "--requirepass", "right-pw")
	for _, tc := range []struct{ url, want string }{
		{"redis://:s3cr3t-pw@[::1", "malformed"},
		{"http://:s3cr3t-pw@" + srv.addr, "invalid URL scheme"},
		{"redis://:s3cr3t-pw@" + srv.addr + "/s3cr3t-pw", "invalid database"},
		{"redis://:s3cr3t-pw@" + srv.addr + "/0", "check the user and password"},
	} {
		_, err := OpenRedis(ctx, tc.url, RedisOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", strings.ReplaceAll(tc.url, "s3cr3t-pw", "…"), err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cr3t-pw") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
	s := openTestRedis(t, "redis://:right-pw@"+srv.addr+"/3", RedisOptions{})
	if err := s.Create(ctx, &Conversation{Handle: NewHandle(), Principal: "alice"}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.client.DBSize(ctx).Result(); err != nil || n != 4 {
		t.Errorf("database 3 holds %d keys (%v), want the conversation, the handle set, its principal's index entry and the index version", n, err)
	}
}

// TestRedisCheckDurability: the check refuses the test server's settings
// and accepts appendonly yes with appendfsync always.
func TestRedisCheckDurability(t *testing.T) {
	ctx := context.Background()
	srv := startRedis(t)
	s := openTestRedis(t, srv.url, RedisOptions{})
	if err := s.CheckDurability(ctx); err == nil || !strings.Contains(err.Error(), "appendonly no") {
		t.Errorf("appendonly no: %v", err)
	}
	raw := rawClient(t, srv.addr)
	for _, kv := range [][2]string{{"appendonly", "yes"}, {"appendfsync", "everysec"}} {
		if err := raw.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CheckDurability(ctx); err == nil || !strings.Contains(err.Error(), "appendfsync everysec") {
		t.Errorf("appendfsync everysec: %v", err)
	}
	if err := raw.ConfigSet(ctx, "appendfsync", "always").Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckDurability(ctx); err != nil {
		t.Errorf("appendonly yes, appendfsync always: %v", err)
	}
	// Redis ignores SIGTERM while it writes the first AOF: let it finish.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if info := raw.Info(ctx, "persistence").Val(); strings.Contains(info, "aof_rewrite_in_progress:0") && strings.Contains(info, "aof_rewrite_scheduled:0") {
			break
		}
	}
}
