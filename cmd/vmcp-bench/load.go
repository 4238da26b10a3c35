//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/vmcp-dev/vmcp/tools"
)

// loadResult is what benchLoad measured.
type loadResult struct {
	clients, calls int
	errors         int64
	latencies      []time.Duration
	first          []time.Duration // of each client's first call, which gets its conversation a machine
	warm           int             // the server's --warm-machines
	callSlots      int             // its --call-slots (0: its default)
	// The calls of one conversation begun before the burst: alone, and
	// during it.
	quiet, during  []time.Duration
	wall           time.Duration
	rssMiB, hwmMiB int64         // the server's resident set at the end, and its peak
	healthzMax     time.Duration // slowest /healthz answer during the load
	healthzFailed  int64
	errorSamples   []string // the first few errors' texts
	floor          *floorResult
}

// noteError keeps the text of one of the first errors.
func (r *loadResult) noteError(msg string) {
	if len(r.errorSamples) < 3 {
		r.errorSamples = append(r.errorSamples, msg)
	}
}

// establishedAfter is how long the pre-existing conversation works before
// the burst.
const establishedAfter = 11 * time.Second

// benchLoad starts the server over streamable HTTP and runs clients
// concurrent MCP clients (one conversation, hence one machine, each), each
// making calls run_python calls, while /healthz is polled.
func benchLoad(server, stateDir string, clients, calls, warm, callSlots int) (*loadResult, error) {
	// As many busy chains as calls run at once in the burst.
	busy := callSlots
	switch {
	case busy == 0:
		busy = tools.DefaultCallSlots()
	case busy < 0:
		busy = clients
	}
	floor, err := schedFloor(busy, floorRounds)
	if err != nil {
		return nil, fmt.Errorf("the host's floor: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	c := exec.Command(server, "--transport", "http", "--listen", addr, "--insecure-no-auth", "--enable-local-backend",
		"--max-concurrent-calls", "0", "--state-dir", stateDir, "--warm-machines", strconv.Itoa(warm), "--warm-imports=")
	if callSlots != 0 {
		c.Args = append(c.Args, "--call-slots", strconv.Itoa(callSlots))
	}
	stderr := &syncBuffer{}
	c.Stderr = stderr
	if err := c.Start(); err != nil {
		return nil, err
	}
	defer func() {
		c.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			c.Process.Kill()
			<-done
		}
	}()
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the server did not answer /healthz:\n%s", stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	r := &loadResult{clients: clients, calls: calls, warm: warm, callSlots: callSlots, floor: floor}
	if warm > 0 {
		if _, err := waitPoolReady(stderr, 10*time.Minute); err != nil {
			return nil, err
		}
	}
	// One conversation that exists before the burst, driven by a process
	// of its own: its calls alone, then during the burst. It works for a
	// while before the burst, as a conversation that is under way does (the
	// server tells established conversations, 10 s old, from new ones).
	probe, err := startProbe(base + "/mcp")
	if err != nil {
		return nil, err
	}
	defer probe.kill()
	warmUntil := time.Now().Add(2 * time.Minute)
	for {
		calls := probe.snapshot()
		if n := len(calls); n >= 60 && calls[n-1].start.Sub(calls[0].start) >= establishedAfter {
			break
		}
		for _, c := range calls {
			if c.err != "" {
				_, err := probe.stop()
				return nil, fmt.Errorf("probe call: %s (%v)", c.err, err)
			}
		}
		if time.Now().After(warmUntil) {
			return nil, fmt.Errorf("the probe made %d calls in 2 minutes; want 60 over %v\n%s", len(calls), establishedAfter, probe.stderr)
		}
		select {
		case <-probe.done:
			return nil, fmt.Errorf("the probe ended early: %v\n%s", probe.readErr, probe.stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	var mu sync.Mutex
	stopProbe := make(chan struct{})
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		hc := &http.Client{Timeout: 5 * time.Second}
		for {
			select {
			case <-stopProbe:
				return
			case <-time.After(100 * time.Millisecond):
			}
			start := time.Now()
			resp, err := hc.Get(base + "/healthz")
			d := time.Since(start)
			if err != nil || resp.StatusCode != 200 {
				atomic.AddInt64(&r.healthzFailed, 1)
			}
			if resp != nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			mu.Lock()
			r.healthzMax = max(r.healthzMax, d)
			mu.Unlock()
		}
	}()

	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			client := mcp.NewClient(&mcp.Implementation{Name: "vmcp-load", Version: "1"}, nil)
			cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: base + "/mcp"}, nil)
			if err != nil {
				atomic.AddInt64(&r.errors, int64(calls))
				return
			}
			defer cs.Close()
			// Each client is a conversation of its own (hence a machine of
			// its own): the first call starts it, the others pass its handle.
			session := "new"
			for j := 0; j < calls; j++ {
				t0 := time.Now()
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"code": fmt.Sprintf("%d * %d", i, j), "session": session}})
				d := time.Since(t0)
				if err != nil || res.IsError || text(res) == "" || !strings.Contains(text(res), strconv.Itoa(i*j)) {
					atomic.AddInt64(&r.errors, 1)
					msg := fmt.Sprint(err)
					if err == nil {
						msg = text(res)
					}
					mu.Lock()
					r.noteError(fmt.Sprintf("call %d after %v: %.300s", j+1, d.Round(time.Millisecond), msg))
					mu.Unlock()
					continue
				}
				if m, ok := res.StructuredContent.(map[string]any); ok {
					if h, ok := m["session"].(string); ok {
						session = h
					}
				}
				mu.Lock()
				r.latencies = append(r.latencies, d)
				if j == 0 {
					r.first = append(r.first, d)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	r.wall = time.Since(start)
	end := time.Now()
	probeCalls, err := probe.stop()
	if err != nil {
		return nil, err
	}
	for i, c := range probeCalls {
		switch {
		case c.err != "":
			r.errors++
			r.noteError("pre-existing conversation: " + c.err)
		case c.start.Add(c.d).Before(start):
			if i >= 10 {
				r.quiet = append(r.quiet, c.d)
			}
		case !c.start.Before(start) && c.start.Add(c.d).Before(end):
			r.during = append(r.during, c.d)
		}
	}
	close(stopProbe)
	<-probeDone
	r.rssMiB, r.hwmMiB = procMemory(c.Process.Pid)
	return r, nil
}

// procMemory reads a process's current and peak resident set, in MiB.
func procMemory(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return -1, -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb >> 10
		case "VmHWM:":
			hwm = kb >> 10
		}
	}
	return rss, hwm
}

func printLoad(w io.Writer, r *loadResult) {
	slots := "default"
	if r.callSlots != 0 {
		slots = strconv.Itoa(r.callSlots)
	}
	fmt.Fprintf(w, "\nLoad over streamable HTTP: %d concurrent clients x %d run_python calls, a new conversation and a local machine each; --warm-machines %d, --call-slots %s\n", r.clients, r.calls, r.warm, slots)
	fmt.Fprintf(w, "first call of each client: p50 %s ms, p99 %s ms; a conversation begun %v before the burst: p50 %s ms alone, %s ms during it (%.2fx, %d calls)\n",
		ms(percentile(r.first, 0.5)), ms(percentile(r.first, 0.99)), establishedAfter, ms(percentile(r.quiet, 0.5)), ms(percentile(r.during, 0.5)),
		float64(percentile(r.during, 0.5))/float64(max(percentile(r.quiet, 0.5), 1)), len(r.during))
	fmt.Fprintf(w, "errors %d of %d; latency p50 %s ms, p99 %s ms; wall %.1f s; server RSS %d MiB (peak %d MiB); /healthz slowest %s ms, failed %d\n",
		r.errors, r.clients*r.calls, ms(percentile(r.latencies, 0.5)), ms(percentile(r.latencies, 0.99)), r.wall.Seconds(),
		r.rssMiB, r.hwmMiB, ms(r.healthzMax), r.healthzFailed)
	for _, e := range r.errorSamples {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
	printFloor(w, r.floor)
}
