//go:build linux

package tools

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendfake"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
)

// fillers are n conversations of 1,000 principals (alice among them), one
// machine and one snapshot each, none of which the benchmark's calls name.
func fillers(n int) []*conversations.Conversation {
	now := time.Now().UTC()
	cs := make([]*conversations.Conversation, n)
	for i := range cs {
		who := fmt.Sprintf("user-%d", i%1000)
		if i%1000 == 0 {
			who = "alice"
		}
		c := &conversations.Conversation{Handle: conversations.NewHandle(), Principal: who, CreatedAt: now, LastUsed: now}
		id := fmt.Sprintf("m-%020x", rand.Uint64())
		c.AddMachine("local", id, now)
		c.SetDefault("local", id)
		c.Snapshots = []conversations.Snapshot{{Backend: "local", ID: fmt.Sprintf("s-%020x", rand.Uint64()), Machine: id, CreatedAt: now}}
		cs[i] = c
	}
	return cs
}

// boltWith writes cs into a new bbolt store the way a version without the
// owner index did (one transaction; a Create per conversation is an fsync
// each), then opens it, which indexes it.
func boltWith(b *testing.B, cs []*conversations.Conversation) conversations.Store {
	path := filepath.Join(b.TempDir(), "s.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		bucket, err := tx.CreateBucket([]byte("conversations"))
		if err != nil {
			return err
		}
		for _, c := range cs {
			v, err := json.Marshal(c)
			if err != nil {
				return err
			}
			if err := bucket.Put([]byte(c.Handle), v); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		b.Fatal(err)
	}
	s, err := conversations.OpenBolt(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// redisWith writes cs into database db of a Redis server as a version
// without the index did, then opens it, which indexes it.
func redisWith(b *testing.B, addr string, db int, cs []*conversations.Conversation) conversations.Store {
	ctx := context.Background()
	raw := redis.NewClient(&redis.Options{Addr: addr, DB: db})
	defer raw.Close()
	for start := 0; start < len(cs); start += 1000 {
		p := raw.Pipeline()
		for _, c := range cs[start:min(start+1000, len(cs))] {
			v, err := json.Marshal(c)
			if err != nil {
				b.Fatal(err)
			}
			p.Set(ctx, "vmcp:conversation:"+c.Handle, v, 0)
			p.SAdd(ctx, "vmcp:handles", c.Handle)
		}
		if _, err := p.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	s, err := conversations.OpenRedis(ctx, fmt.Sprintf("redis://%s/%d", addr, db), conversations.RedisOptions{Timeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// benchRedisServer starts a throwaway redis-server on loopback.
func benchRedisServer(b *testing.B) string {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Skip("redis-server is missing: run scripts/install-deps")
	}
	dir := b.TempDir()
	for attempt := 0; attempt < 5; attempt++ {
		port := 20000 + rand.IntN(30000)
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		addr := "127.0.0.1:" + strconv.Itoa(port)
		c := redis.NewClient(&redis.Options{Addr: addr})
		for i := 0; i < 100; i++ {
			if c.Ping(context.Background()).Err() == nil {
				c.Close()
				return addr
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.Close()
	}
	b.Fatal("redis-server did not start")
	return ""
}

// stealTicks reads the host's stolen and total CPU ticks from /proc/stat.
func stealTicks() (steal, total uint64) {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		if i >= 8 {
			break
		}
		n, _ := strconv.ParseUint(f, 10, 64)
		total += n
		if i == 7 {
			steal = n
		}
	}
	return steal, total
}

// BenchmarkCallNamingMachine is issue 20's owner-index target: an
// exec_command that names a machine of another of the caller's
// conversations (found through its owner), served in process
// by the MCP server on the fake backend, with 10 conversations in the
// store and with 100,000, for bbolt and Redis. The two sides run in
// alternating blocks in one run; it reports each side's time per call,
// their ratio (the target: within 1.2) and the host's CPU steal.
func BenchmarkCallNamingMachine(b *testing.B) {
	for _, kind := range []string{"bolt", "redis"} {
		b.Run(kind, func(b *testing.B) {
			var addr string
			if kind == "redis" {
				addr = benchRedisServer(b)
			}
			type side struct {
				n       int
				srv     *server.MCPServer
				ctx     context.Context
				request json.RawMessage
				spent   time.Duration
				calls   int
			}
			sides := []*side{{n: 10}, {n: 100_000}}
			for i, s := range sides {
				var store conversations.Store
				if kind == "bolt" {
					store = boltWith(b, fillers(s.n-1))
				} else {
					store = redisWith(b, addr, i, fillers(s.n-1))
				}
				svc, err := NewService(Config{Backends: []backend.Backend{backendfake.New(backendfake.Options{Name: "local"})},
					Conversations: conversations.NewManager(store, conversations.Limits{}), Log: zerolog.Nop()})
				if err != nil {
					b.Fatal(err)
				}
				srv := svc.NewMCPServer("bench")
				ctx := principal.With(context.Background(), "alice")
				first, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
					"params": map[string]any{"name": "exec_command", "arguments": map[string]any{"command": "true", "session": conversations.NewSession}}})
				resp, _ := json.Marshal(srv.HandleMessage(ctx, first))
				var r struct {
					Result struct {
						StructuredContent struct{ Session, Machine string } `json:"structuredContent"`
					} `json:"result"`
				}
				if err := json.Unmarshal(resp, &r); err != nil || r.Result.StructuredContent.Machine == "" {
					b.Fatalf("the first call with %d conversations: %s", s.n, resp)
				}
				machine := r.Result.StructuredContent.Machine
				// The calls come from another conversation of alice's, so
				// that the machine is found through its owner (the index),
				// not in the calling conversation's own record.
				resp, _ = json.Marshal(srv.HandleMessage(ctx, first))
				if err := json.Unmarshal(resp, &r); err != nil || r.Result.StructuredContent.Session == "" {
					b.Fatalf("the second conversation with %d conversations: %s", s.n, resp)
				}
				s.request, _ = json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 2, "method": "tools/call",
					"params": map[string]any{"name": "exec_command", "arguments": map[string]any{"command": "true",
						"machine": machine, "session": r.Result.StructuredContent.Session}}})
				s.srv, s.ctx = srv, ctx
				resp, _ = json.Marshal(srv.HandleMessage(ctx, s.request))
				if strings.Contains(string(resp), `"isError":true`) || strings.Contains(string(resp), `"error"`) || !strings.Contains(string(resp), machine) {
					b.Fatalf("a call naming its machine with %d conversations: %s", s.n, resp)
				}
			}
			steal0, total0 := stealTicks()
			b.ResetTimer()
			const block = 50
			for done := 0; done < b.N; {
				for _, s := range sides {
					start := time.Now()
					for range block {
						s.srv.HandleMessage(s.ctx, s.request)
					}
					s.spent += time.Since(start)
					s.calls += block
				}
				done += 2 * block
			}
			b.StopTimer()
			steal1, total1 := stealTicks()
			per := func(s *side) float64 { return float64(s.spent.Nanoseconds()) / float64(s.calls) }
			b.ReportMetric(per(sides[0]), "ns/call-10")
			b.ReportMetric(per(sides[1]), "ns/call-100000")
			b.ReportMetric(per(sides[1])/per(sides[0]), "ratio")
			if total1 > total0 {
				b.ReportMetric(100*float64(steal1-steal0)/float64(total1-total0), "steal%")
			}
		})
	}
}
