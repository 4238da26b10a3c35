//go:build linux

package e2e

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	forevervmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/internal/faultproxy"
	"github.com/vmcp-dev/vmcp/local"
)

// A cloud service that stalls, trickles, resets connections or answers 500
// or 429 must not hold a call past its timeout: every tool, on each cloud
// backend, ends within its timeout plus 5 s (retries included), with an
// error that names the service; what the calls started ends too, and the
// server serves the next calls once the service is back.

// faultyCloud runs an emulator behind a fault proxy (its presigned URLs,
// for FastVM, through the proxy too) and returns the proxy and the server's
// flags and environment for it.
func faultyCloud(t *testing.T, fastvm bool) (p *faultproxy.Proxy, args, env []string) {
	t.Helper()
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if fastvm {
		emu, err := fastvmemu.New(fastvmemu.Options{Engine: engine, APIKey: "faults-key"})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(emu)
		p, err = faultproxy.Start(strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		emu.SetBaseURL(p.URL())
		t.Cleanup(func() { p.Close(); srv.Close(); emu.Close(); engine.Close() })
		return p, []string{"--fastvm-url", p.URL()}, []string{"FASTVM_API_KEY=faults-key"}
	}
	emu, err := forevervmemu.New(forevervmemu.Options{Engine: engine, Token: "faults.secret-token"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	p, err = faultproxy.Start(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); srv.Close(); emu.Close(); engine.Close() })
	return p, []string{"--forevervm-url", p.URL()}, []string{"FOREVERVM_TOKEN=faults.secret-token"}
}

// faultCalls are the calls each fault is tried on, by backend.
func faultCalls(fastvm bool, machine string) map[string]map[string]any {
	calls := map[string]map[string]any{
		"list_machines": {},
		"session_info":  {},
		"launch_vm":     {},
		"delete_vm":     {"machine": machine},
	}
	if fastvm {
		calls["exec_command"] = map[string]any{"command": "echo hi"}
		calls["upload_file"] = map[string]any{"path": "f.txt", "content": "hello"}
		calls["download_file"] = map[string]any{"path": "f.txt"}
		calls["snapshot_vm"] = map[string]any{}
		calls["set_firewall"] = map[string]any{"mode": "open"}
		calls["build_image"] = map[string]any{"dockerfile": "FROM python:3.12-slim\nRUN true\n"}
	} else {
		calls["run_python"] = map[string]any{"code": "1 + 1"}
	}
	return calls
}

func TestCloudFaultsEndCallsByTheirDeadline(t *testing.T) {
	t.Parallel()
	const timeout = 3 // seconds, each call's
	for _, fastvm := range []bool{true, false} {
		name := map[bool]string{true: "fastvm", false: "forevervm"}[fastvm]
		service := map[bool]string{true: "FastVM", false: "ForeverVM"}[fastvm]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, args, env := faultyCloud(t, fastvm)
			h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{serverArgs: args, serverEnv: env})
			// A machine, made while all is well.
			var out struct {
				Machine string `json:"machine"`
			}
			if fastvm {
				h.ok(t, "upload_file", map[string]any{"path": "f.txt", "content": "hello"}, &out)
			} else {
				h.ok(t, "run_python", map[string]any{"code": "x = 1"}, &out)
			}
			for _, mode := range []struct {
				name string
				m    faultproxy.Mode
			}{{"stall", faultproxy.Stall}, {"trickle", faultproxy.Trickle}, {"429", faultproxy.Status429}, {"500", faultproxy.Status500}, {"reset", faultproxy.Reset}} {
				p.Set(mode.m)
				var wg sync.WaitGroup
				for tool, args := range faultCalls(fastvm, out.Machine) {
					args["timeout_seconds"] = timeout
					wg.Add(1)
					go func() {
						defer wg.Done()
						start := time.Now()
						ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
						defer cancel()
						res, err := h.cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
						took := time.Since(start)
						if took > (timeout+5)*time.Second {
							t.Errorf("%s, %s: %s took %v (timeout %d s)", name, mode.name, tool, took, timeout)
						}
						if err != nil {
							t.Errorf("%s, %s: %s: %v", name, mode.name, tool, err)
							return
						}
						if !res.IsError {
							// Calls that need the service not at all may succeed.
							return
						}
						if msg := text(res); !strings.Contains(strings.ToLower(msg), strings.ToLower(service)) {
							t.Errorf("%s, %s: %s: the error does not say which service failed: %s", name, mode.name, tool, msg)
						}
					}()
				}
				wg.Wait()
				p.Set(faultproxy.Pass)
				// The service is back: so are the calls.
				deadline := time.Now().Add(30 * time.Second)
				for {
					res := h.call(t, "list_machines", map[string]any{})
					if !res.IsError {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s, after %s: the server does not recover: %s", name, mode.name, text(res))
					}
					time.Sleep(500 * time.Millisecond)
				}
			}
			// What the given-up calls started ends too: nothing of theirs
			// is left waiting on the service.
			deadline := time.Now().Add(30 * time.Second)
			for {
				log := h.stderr()
				given, ended := strings.Count(log, "passed its deadline and was given up"), strings.Count(log, "given up at its deadline ended")
				if given > 0 && given == ended {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d calls were given up at their deadline, %d of them have ended", given, ended)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}
