// Command vmcp-bench measures what the MCP layer costs: it times the same
// warm operations through a built mcp-server over stdio — with the official
// Go SDK client, and with a lean client that decodes each response once —
// and directly on an engine in this process, and prints the p50 and p99
// latencies and the ratios of the p50s to the engine's.
//
//	go build -o /tmp/mcp-server ./cmd/mcp-server
//	go run ./cmd/vmcp-bench --server /tmp/mcp-server --n 2000
//
// It exits non-zero only on errors (a failed call or a wrong result), never
// because a figure misses its target.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/local"
)

// warmup is how many untimed calls of each operation precede the timed ones.
const warmup = 20

// callTimeout bounds one call, through MCP or direct.
const callTimeout = 60 * time.Second

func main() {
	local.RunHelperIfRequested()
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vmcp-bench:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	server      string
	n           int
	stateDir    string
	loadClients int // concurrent HTTP clients of the load test; 0 skips it
	loadCalls   int
}

func parseConfig(args []string) (config, error) {
	fs := flag.NewFlagSet("vmcp-bench", flag.ContinueOnError)
	server := fs.String("server", "", "path of a built mcp-server binary (required)")
	n := fs.Int("n", 2000, "timed calls of each operation, via MCP and direct")
	loadClients := fs.Int("load-clients", 0, "also run the load test: this many concurrent MCP clients over streamable HTTP (0: skip)")
	loadCalls := fs.Int("load-calls", 20, "run_python calls of each load-test client")
	stateDir := fs.String("state-dir", "", "directory for the servers' (<dir>/sdk, <dir>/lean) and the engine's (<dir>/engine) state; default a fresh temporary directory, removed at the end")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *server == "" {
		return config{}, errors.New("--server is required")
	}
	if *n < 1 {
		return config{}, fmt.Errorf("--n %d: want at least 1", *n)
	}
	if *loadClients < 0 || *loadCalls < 1 {
		return config{}, fmt.Errorf("--load-clients takes 0 or more, --load-calls 1 or more")
	}
	return config{server: *server, n: *n, stateDir: *stateDir, loadClients: *loadClients, loadCalls: *loadCalls}, nil
}

func run(args []string, stdout io.Writer) error {
	cfg, err := parseConfig(args)
	if err != nil {
		return err
	}
	server, err := filepath.Abs(cfg.server)
	if err != nil {
		return err
	}
	if _, err := os.Stat(server); err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	dir := cfg.stateDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "vmcp-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	ops := []*operation{
		{name: "run_python 1+1", tool: "run_python", args: map[string]any{"code": "1+1"}, check: checkPython},
		{name: "exec_command true", tool: "exec_command", args: map[string]any{"argv": []string{"true"}}, check: checkTrue},
	}
	// One after the other, so that the server and the engine do not compete
	// for the CPU.
	spec := serverSpec{path: server}
	if err := benchSDK(spec, filepath.Join(dir, "sdk"), cfg.n, ops); err != nil {
		return fmt.Errorf("mcp (go-sdk client): %w", err)
	}
	if err := benchLean(spec, filepath.Join(dir, "lean"), cfg.n, ops); err != nil {
		return fmt.Errorf("mcp (lean client): %w", err)
	}
	if err := benchEngine(filepath.Join(dir, "engine"), cfg.n, ops[0], ops[1]); err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	fmt.Fprintln(stdout, "Local backend: through the MCP server over stdio, and on the engine directly (ms)")
	if err := printTable(stdout, ops, "engine"); err != nil {
		return err
	}

	fv, err := benchForeverVM(spec, filepath.Join(dir, "forevervm"), cfg.n)
	if err != nil {
		return fmt.Errorf("forevervm: %w", err)
	}
	fmt.Fprintln(stdout, "\nForeverVM backend against the emulator on loopback: through the MCP server, with the Go client on one\nREPL socket (direct), and with a new socket per call as forevervm-mcp does (ms)")
	if err := printTable(stdout, []*operation{fv}, "direct", "new socket"); err != nil {
		return err
	}

	fast, err := benchFastVM(spec, filepath.Join(dir, "fastvm"), cfg.n)
	if err != nil {
		return fmt.Errorf("fastvm: %w", err)
	}
	fmt.Fprintln(stdout, "\nFastVM backend against the emulator on loopback: through the MCP server, with the Go client's\nJSON exec as the backend uses it without a progress token (direct), and its streamed exec (ms)")
	if err := printTable(stdout, []*operation{fast}, "direct", "streamed"); err != nil {
		return err
	}
	if cfg.loadClients > 0 {
		r, err := benchLoad(server, filepath.Join(dir, "load"), cfg.loadClients, cfg.loadCalls)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		printLoad(stdout, r)
	}
	return nil
}

// operation is one measured operation with its timings three ways: through
// the server with the official Go SDK client, through the server with a lean
// client (one JSON decode per response: the server's own cost), and on the
// engine directly.
type operation struct {
	name  string
	tool  string
	args  map[string]any
	check func(structured []byte) error // of a tool result's structured content

	sdk, lean []time.Duration
	engine    []time.Duration // the same operation without MCP: engine, or client calling the emulator
	extra     []time.Duration // another variant to compare, if any
}

func checkPython(structured []byte) error {
	var out struct {
		Value *string `json:"value"`
		Error string  `json:"error"`
	}
	if err := json.Unmarshal(structured, &out); err != nil {
		return fmt.Errorf("structured content %s: %w", structured, err)
	}
	if out.Value == nil || *out.Value != "2" || out.Error != "" {
		return fmt.Errorf("run_python 1+1: value %s, error %q; want 2", strPtr(out.Value), out.Error)
	}
	return nil
}

func checkTrue(structured []byte) error {
	var out struct {
		ExitCode *int   `json:"exit_code"`
		Signal   string `json:"signal"`
		TimedOut bool   `json:"timed_out"`
	}
	if err := json.Unmarshal(structured, &out); err != nil {
		return fmt.Errorf("structured content %s: %w", structured, err)
	}
	if out.ExitCode == nil || *out.ExitCode != 0 || out.Signal != "" || out.TimedOut {
		return fmt.Errorf("exec_command true: exit code %s, signal %q, timed out %v; want exit code 0", intPtr(out.ExitCode), out.Signal, out.TimedOut)
	}
	return nil
}

// timeN calls f warmup times, then n times keeping the latencies it
// reports. f times only the call itself, not the checks of its result.
func timeN(n int, f func() (time.Duration, error)) ([]time.Duration, error) {
	for i := 0; i < warmup; i++ {
		if _, err := f(); err != nil {
			return nil, fmt.Errorf("warm-up call %d: %w", i+1, err)
		}
	}
	l := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		d, err := f()
		if err != nil {
			return nil, fmt.Errorf("call %d: %w", i+1, err)
		}
		l = append(l, d)
	}
	return l, nil
}

// syncBuffer is a bytes.Buffer safe for the server's stderr copier.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// withStderr adds the server's stderr to an error.
func withStderr(err *error, stderr *syncBuffer) {
	if *err != nil {
		*err = fmt.Errorf("%w\nserver stderr:\n%s", *err, stderr)
	}
}

// serverSpec says how to start the server under test.
type serverSpec struct {
	path string
	args []string // beyond --state-dir
	env  []string // added to the environment
}

func (s serverSpec) command(stateDir string) *exec.Cmd {
	c := exec.Command(s.path, append([]string{"--state-dir", stateDir}, s.args...)...)
	c.Env = append(os.Environ(), s.env...)
	return c
}

// benchSDK starts the server over stdio and times each operation with the
// official Go SDK client.
func benchSDK(server serverSpec, stateDir string, n int, ops []*operation) (err error) {
	c := server.command(stateDir)
	stderr := &syncBuffer{}
	c.Stderr = stderr
	defer withStderr(&err, stderr)
	client := mcp.NewClient(&mcp.Implementation{Name: "vmcp-bench", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	cs, err := client.Connect(ctx, &mcp.CommandTransport{Command: c}, nil)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer cs.Close()

	for _, op := range ops {
		params := &mcp.CallToolParams{Name: op.tool, Arguments: op.args}
		op.sdk, err = timeN(n, func() (time.Duration, error) {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			start := time.Now()
			res, err := cs.CallTool(ctx, params)
			d := time.Since(start)
			if err != nil {
				return d, err
			}
			if res.IsError {
				return d, fmt.Errorf("%s: tool error: %s", op.tool, text(res))
			}
			b, err := json.Marshal(res.StructuredContent)
			if err != nil {
				return d, err
			}
			return d, op.check(b)
		})
		if err != nil {
			return fmt.Errorf("%s: %w", op.tool, err)
		}
	}
	return nil
}

// benchLean starts the server over stdio and times each operation with a
// lean client: JSON-RPC lines written and read on the pipes, each response
// decoded once. What it measures beyond the engine is the server's cost.
func benchLean(server serverSpec, stateDir string, n int, ops []*operation) (err error) {
	c := server.command(stateDir)
	stderr := &syncBuffer{}
	c.Stderr = stderr
	defer withStderr(&err, stderr)
	stdin, err := c.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return err
	}
	if err := c.Start(); err != nil {
		return err
	}
	defer func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.Process.Kill()
			<-done
		}
	}()
	type response struct {
		ID     int64 `json:"id"`
		Result struct {
			IsError           bool            `json:"isError"`
			StructuredContent json.RawMessage `json:"structuredContent"`
		} `json:"result"`
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	lines := bufio.NewReaderSize(stdout, 1<<20)
	var id int64
	// rpc sends a request and reads lines until its response; the timer
	// does not cover building the request.
	rpc := func(method string, params any) (time.Duration, *response, error) {
		id++
		req, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
		if err != nil {
			return 0, nil, err
		}
		req = append(req, '\n')
		start := time.Now()
		if _, err := stdin.Write(req); err != nil {
			return 0, nil, err
		}
		for {
			line, err := lines.ReadBytes('\n')
			if err != nil {
				return time.Since(start), nil, fmt.Errorf("read the response: %w", err)
			}
			var r response
			if err := json.Unmarshal(line, &r); err != nil {
				return time.Since(start), nil, fmt.Errorf("response %q: %w", line, err)
			}
			if r.ID == id {
				d := time.Since(start)
				if r.Error != nil {
					return d, nil, fmt.Errorf("%s: %s", method, r.Error.Message)
				}
				return d, &r, nil
			}
		}
	}
	if _, _, err := rpc("initialize", map[string]any{
		"protocolVersion": "2025-11-25",
		"capabilities":    map[string]any{},
		"clientInfo":      map[string]any{"name": "vmcp-bench-lean", "version": "1"},
	}); err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	if _, err := stdin.Write([]byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}` + "\n")); err != nil {
		return err
	}
	for _, op := range ops {
		params := map[string]any{"name": op.tool, "arguments": op.args}
		op.lean, err = timeN(n, func() (time.Duration, error) {
			d, r, err := rpc("tools/call", params)
			if err != nil {
				return d, err
			}
			if r.Result.IsError {
				return d, fmt.Errorf("%s: tool error: %s", op.tool, r.Result.StructuredContent)
			}
			return d, op.check(r.Result.StructuredContent)
		})
		if err != nil {
			return fmt.Errorf("%s: %w", op.tool, err)
		}
	}
	return nil
}

// benchEngine opens an engine in this process and times Machine.Exec and
// Machine.Run on one machine.
func benchEngine(stateDir string, n int, py, cmd *operation) error {
	e, err := local.New(local.Options{StateDir: stateDir})
	if err != nil {
		return err
	}
	defer e.Close()
	info, err := e.Create(context.Background(), local.MachineSpec{})
	if err != nil {
		return err
	}
	m, err := e.Machine(info.ID)
	if err != nil {
		return err
	}

	py.engine, err = timeN(n, func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		start := time.Now()
		r, err := m.Exec(ctx, "1+1", local.ExecOptions{})
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		if r.Value == nil || *r.Value != "2" || r.Error != "" {
			return d, fmt.Errorf("Exec 1+1: value %s, error %q; want 2", strPtr(r.Value), r.Error)
		}
		return d, nil
	})
	if err != nil {
		return fmt.Errorf("Exec: %w", err)
	}

	cmd.engine, err = timeN(n, func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		start := time.Now()
		r, err := m.Run(ctx, local.Command{Argv: []string{"true"}})
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		if r.ExitCode != 0 || r.Signal != "" || r.TimedOut {
			return d, fmt.Errorf("Run true: exit code %d, signal %q, timed out %v; want exit code 0", r.ExitCode, r.Signal, r.TimedOut)
		}
		return d, nil
	})
	if err != nil {
		return fmt.Errorf("Run: %w", err)
	}
	return nil
}

// percentile returns the q-th percentile (0 < q < 1) of l, which it sorts.
func percentile(l []time.Duration, q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	i := int(float64(len(l)) * q)
	if i >= len(l) {
		i = len(l) - 1
	}
	return l[i]
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

// printTable prints each operation's p50 and p99 per path and the ratios of
// the MCP paths' p50 to the base path's (named base); extra names the extra
// column, if measured.
func printTable(w io.Writer, ops []*operation, base string, extra ...string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := "operation\tgo-sdk p50\tgo-sdk p99\tlean p50\tlean p99\t" + base + " p50\t" + base + " p99"
	for _, e := range extra {
		header += "\t" + e + " p50\t" + e + " p99"
	}
	fmt.Fprintln(tw, header+"\tratio go-sdk\tratio lean")
	for _, op := range ops {
		sp50, sp99 := percentile(op.sdk, 0.50), percentile(op.sdk, 0.99)
		lp50, lp99 := percentile(op.lean, 0.50), percentile(op.lean, 0.99)
		bp50, bp99 := percentile(op.engine, 0.50), percentile(op.engine, 0.99)
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s", op.name, ms(sp50), ms(sp99), ms(lp50), ms(lp99), ms(bp50), ms(bp99))
		if len(extra) > 0 {
			row += fmt.Sprintf("\t%s\t%s", ms(percentile(op.extra, 0.50)), ms(percentile(op.extra, 0.99)))
		}
		fmt.Fprintf(tw, "%s\t%.2fx\t%.2fx\n", row, float64(sp50)/float64(bp50), float64(lp50)/float64(bp50))
	}
	return tw.Flush()
}

func strPtr(s *string) string {
	if s == nil {
		return "<none>"
	}
	return *s
}

func intPtr(i *int) string {
	if i == nil {
		return "<none>"
	}
	return fmt.Sprint(*i)
}

// text joins the result's text content items.
func text(res *mcp.CallToolResult) string {
	var s string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			if s != "" {
				s += "\n"
			}
			s += tc.Text
		}
	}
	return s
}
