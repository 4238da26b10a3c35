//go:build linux

// Command vmcp-bench measures what the MCP layer costs: it times the same
// warm operations through a built mcp-server over stdio — with the official
// Go SDK client, and with a lean client that decodes each response once —
// and without MCP (on an engine in this process, or with vmcp's Go clients
// calling the ForeverVM and FastVM emulators, which run in a process of
// their own), and prints the p50 and p99 latencies and the ratios of the
// p50s. The paths take turns in rounds (--rounds), so that the load of a
// shared machine weighs on them alike.
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
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/internal/pipeio"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

// warmup is how many untimed calls of each operation precede the timed ones.
const warmup = 20

// callTimeout bounds one call, through MCP or direct.
const callTimeout = 60 * time.Second

func main() {
	local.RunHelperIfRequested()
	runProbeIfRequested()
	runHopIfRequested()
	runEmulatorIfRequested()
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vmcp-bench:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	server      string
	n           int
	rounds      int
	stateDir    string
	loadClients int // concurrent HTTP clients of the load test; 0 skips it
	loadCalls   int
	loadWarm    int    // the load test server's --warm-machines
	loadSlots   int    // and its --call-slots (0: its default)
	only        string // run only this part: first-calls, load or floor
	// instantRounds are the rounds of first calls of new conversations
	// (0: skip them).
	instantRounds int
	// outputRounds are the rounds of the 200 MB output benchmark; 0 skips it.
	outputRounds int
}

func parseConfig(args []string) (config, error) {
	fs := flag.NewFlagSet("vmcp-bench", flag.ContinueOnError)
	server := fs.String("server", "", "path of a built mcp-server binary (required)")
	n := fs.Int("n", 2000, "timed calls of each operation, via MCP and direct")
	rounds := fs.Int("rounds", 10, "the calls of each path are made in this many rounds, the paths taking turns, so that a slow spell of the machine affects them alike")
	loadClients := fs.Int("load-clients", 0, "also run the load test: this many concurrent MCP clients over streamable HTTP (0: skip)")
	loadCalls := fs.Int("load-calls", 20, "run_python calls of each load-test client")
	loadWarm := fs.Int("load-warm-machines", 0, "--warm-machines of the load test's server")
	loadSlots := fs.Int("load-call-slots", 0, "--call-slots of the load test's server (0: its default; -1: no limit)")
	only := fs.String("only", "", "run only this part: first-calls (of new conversations), load, or floor (the host's scheduling floor for the load's ratio)")
	instantRounds := fs.Int("instant-rounds", 12, "rounds of first calls of new conversations, with a warm pool and without (0: skip them)")
	outputRounds := fs.Int("output-rounds", 5, "rounds of the benchmarks of a command printing 200 MB and of a 100 MiB download through a machine's proxy (0: skip them)")
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
	if *rounds < 1 {
		return config{}, fmt.Errorf("--rounds %d: want at least 1", *rounds)
	}
	if *outputRounds < 0 {
		return config{}, fmt.Errorf("--output-rounds %d: want 0 or more", *outputRounds)
	}
	if *loadClients < 0 || *loadCalls < 1 {
		return config{}, fmt.Errorf("--load-clients takes 0 or more, --load-calls 1 or more")
	}
	return config{server: *server, n: *n, rounds: *rounds, stateDir: *stateDir, loadClients: *loadClients, loadCalls: *loadCalls, loadWarm: *loadWarm, loadSlots: *loadSlots, only: *only, instantRounds: *instantRounds, outputRounds: *outputRounds}, nil
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

	// The warm calls are timed without a pool filling beside them; the
	// first calls of new conversations are timed with one and without.
	spec := serverSpec{path: server, args: []string{"--warm-machines", "0"}}
	switch cfg.only {
	case "":
	case "first-calls":
		return benchInstant(stdout, spec, filepath.Join(dir, "instant"), cfg.instantRounds)
	case "load":
		r, err := benchLoad(server, filepath.Join(dir, "load"), cfg.loadClients, cfg.loadCalls, cfg.loadWarm, cfg.loadSlots)
		if err != nil {
			return err
		}
		printLoad(stdout, r)
		return nil
	case "floor":
		busy := cfg.loadSlots
		if busy <= 0 {
			busy = tools.DefaultCallSlots()
		}
		r, err := schedFloor(busy, floorRounds)
		if err != nil {
			return err
		}
		printFloor(stdout, r)
		return nil
	default:
		return fmt.Errorf("--only takes first-calls, load or floor, not %q", cfg.only)
	}

	ops := []*operation{
		{name: "run_python 1+1", tool: "run_python", args: map[string]any{"code": "1+1"}, check: checkPython},
		{name: "exec_command true", tool: "exec_command", args: map[string]any{"argv": []string{"true"}}, check: checkTrue},
	}

	err = measureWith(cfg, ops, func() ([]*path, error) {
		return openPaths(
			func() ([]*path, error) { return one(openSDK(spec, filepath.Join(dir, "sdk"))) },
			func() ([]*path, error) { return one(openLean(spec, filepath.Join(dir, "lean"))) },
			func() ([]*path, error) { return one(openEngine(filepath.Join(dir, "engine"))) },
		)
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Local backend: through the MCP server over stdio, and on the engine directly (ms)")
	if err := printTable(stdout, ops, "engine"); err != nil {
		return err
	}

	if cfg.instantRounds > 0 {
		if err := benchInstant(stdout, spec, filepath.Join(dir, "instant"), cfg.instantRounds); err != nil {
			return fmt.Errorf("first calls: %w", err)
		}
	}

	if err := benchShared(stdout, cfg, spec, filepath.Join(dir, "shared")); err != nil {
		return fmt.Errorf("shared state directory: %w", err)
	}

	fv, err := benchForeverVM(cfg, spec, filepath.Join(dir, "forevervm"))
	if err != nil {
		return fmt.Errorf("forevervm: %w", err)
	}
	fmt.Fprintln(stdout, "\nForeverVM backend against the emulator (a process of its own) on loopback: through the MCP server, with the Go client on one\nREPL socket (direct), and with a new socket per call as forevervm-mcp does (ms)")
	if err := printTable(stdout, []*operation{fv}, "direct", "new socket"); err != nil {
		return err
	}

	fast, err := benchFastVM(cfg, spec, filepath.Join(dir, "fastvm"))
	if err != nil {
		return fmt.Errorf("fastvm: %w", err)
	}
	fmt.Fprintln(stdout, "\nFastVM backend against the emulator (a process of its own) on loopback: through the MCP server, with the Go client's\nJSON exec as the backend uses it without a progress token (direct), and its streamed exec (ms)")
	if err := printTable(stdout, []*operation{fast}, "direct", "streamed"); err != nil {
		return err
	}
	if cfg.outputRounds > 0 {
		if err := benchOutput(stdout, spec, filepath.Join(dir, "output"), cfg.outputRounds); err != nil {
			return fmt.Errorf("output: %w", err)
		}
	}
	if cfg.outputRounds > 0 {
		if err := benchEgress(stdout, spec, filepath.Join(dir, "egress"), cfg.outputRounds); err != nil {
			return fmt.Errorf("egress: %w", err)
		}
	}
	pair, err := benchFastVMPython(cfg, spec, filepath.Join(dir, "fastvm-python"))
	if err != nil {
		return fmt.Errorf("fastvm python: %w", err)
	}
	fmt.Fprintln(stdout, "\nFastVM: run_python (built on exec) and exec_command on the same VM of the emulator, through the MCP server (ms)")
	printPair(stdout, pair[0], pair[1])
	if cfg.loadClients > 0 {
		r, err := benchLoad(server, filepath.Join(dir, "load"), cfg.loadClients, cfg.loadCalls, cfg.loadWarm, cfg.loadSlots)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		printLoad(stdout, r)
	}
	return nil
}

// operation is one measured operation with its latencies on each path:
// through the server with the official Go SDK client ("go-sdk"), through
// the server with a lean client that decodes each response once ("lean": the
// server's own cost), and without MCP (the engine, or a client calling the
// emulator), plus any other variant worth comparing.
type operation struct {
	name  string
	tool  string
	args  map[string]any
	check func(structured []byte) error // of a tool result's structured content

	samples map[string][]time.Duration // path name → latencies
	steal   float64                    // share of the machine's CPU time the host took during the timed calls; -1: unknown
}

// cpuTimes are the machine's CPU times since boot, in clock ticks.
type cpuTimes struct{ steal, total uint64 }

// readCPUTimes reads the "cpu" line of /proc/stat; false where there is
// none. Steal is the time a VM's CPUs were runnable but the host ran
// something else: on a shared machine it is what makes figures move.
func readCPUTimes() (cpuTimes, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return cpuTimes{}, false
	}
	var t cpuTimes
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return cpuTimes{}, false
		}
		if i >= 8 { // guest times are already counted in user and nice
			break
		}
		t.total += v
		if i == 7 {
			t.steal = v
		}
	}
	return t, true
}

// path is one way to run operations: call times one call of op, not
// counting the checks of its result.
type path struct {
	name   string
	call   func(op *operation) (time.Duration, error)
	close  func()
	stderr *syncBuffer // of the server or emulator behind it, if any
	pid    int         // of the server behind it, if any
}

// openPaths calls the openers in order; if one fails, the paths opened are
// closed.
func openPaths(openers ...func() ([]*path, error)) ([]*path, error) {
	var paths []*path
	for _, open := range openers {
		ps, err := open()
		if err != nil {
			closePaths(paths)
			return nil, err
		}
		paths = append(paths, ps...)
	}
	return paths, nil
}

// one is an opener's result for a single path.
func one(p *path, err error) ([]*path, error) {
	if err != nil {
		return nil, err
	}
	return []*path{p}, nil
}

func closePaths(paths []*path) {
	for _, p := range paths {
		if p.close != nil {
			p.close()
		}
	}
}

// measureWith opens the paths, measures ops on them, and closes them.
func measureWith(cfg config, ops []*operation, open func() ([]*path, error)) error {
	paths, err := open()
	if err != nil {
		return err
	}
	defer closePaths(paths)
	return measure(cfg.rounds, cfg.n, ops, paths)
}

// measure times n calls of every operation on every path, after warmup
// calls, in rounds: each round gives each path its share of each
// operation's calls in turn. A slow spell of a shared machine then falls on
// every path alike instead of on whichever ran during it.
func measure(rounds, n int, ops []*operation, paths []*path) error {
	if rounds > n {
		rounds = n
	}
	for _, op := range ops {
		op.samples = map[string][]time.Duration{}
	}
	timeCall := func(p *path, op *operation) (time.Duration, error) {
		d, err := p.call(op)
		if err != nil {
			err = fmt.Errorf("%s, %s: %w", p.name, op.name, err)
			if p.stderr != nil {
				err = fmt.Errorf("%w\nstderr:\n%s", err, p.stderr)
			}
		}
		return d, err
	}
	for _, p := range paths {
		for _, op := range ops {
			for i := 0; i < warmup; i++ {
				if _, err := timeCall(p, op); err != nil {
					return fmt.Errorf("warm-up: %w", err)
				}
			}
		}
	}
	before, stealKnown := readCPUTimes()
	defer func() {
		after, ok := readCPUTimes()
		share := -1.0
		if stealKnown && ok && after.total > before.total {
			share = float64(after.steal-before.steal) / float64(after.total-before.total)
		}
		for _, op := range ops {
			op.steal = share
		}
	}()
	for r := 0; r < rounds; r++ {
		share := n/rounds + boolInt(r < n%rounds)
		for _, p := range paths {
			for _, op := range ops {
				for i := 0; i < share; i++ {
					d, err := timeCall(p, op)
					if err != nil {
						return err
					}
					op.samples[p.name] = append(op.samples[p.name], d)
				}
			}
		}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
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

// piped is a child process with pipes to its stdin and stdout.
type piped struct {
	stdin  io.WriteCloser
	stdout io.Reader
	stderr *syncBuffer
	stop   func() // closes stdin, then waits (at most 10 s) for the process to exit
	pid    int
}

// startPiped starts c with pipes to its stdin and stdout.
func startPiped(c *exec.Cmd) (*piped, error) {
	stderr := &syncBuffer{}
	c.Stderr = stderr
	stdin, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	return &piped{stdin: stdin, stdout: stdout, stderr: stderr, pid: c.Process.Pid, stop: func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.Process.Kill()
			<-done
		}
	}}, nil
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

// openSDK starts the server over stdio, connected to the official Go SDK
// client.
func openSDK(server serverSpec, stateDir string) (*path, error) {
	c := server.command(stateDir)
	stderr := &syncBuffer{}
	c.Stderr = stderr
	client := mcp.NewClient(&mcp.Implementation{Name: "vmcp-bench", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	cs, err := client.Connect(ctx, &mcp.CommandTransport{Command: c}, nil)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("go-sdk client: connect: %w\nserver stderr:\n%s", err, stderr)
	}
	return &path{name: "go-sdk", stderr: stderr, close: func() { cs.Close() }, call: func(op *operation) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		start := time.Now()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: op.tool, Arguments: op.args})
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		if res.IsError {
			return d, fmt.Errorf("tool error: %s", text(res))
		}
		b, err := json.Marshal(res.StructuredContent)
		if err != nil {
			return d, err
		}
		return d, op.check(b)
	}}, nil
}

// openLean starts the server over stdio with a lean client: JSON-RPC lines
// written and read on the pipes, each response decoded once. What it
// measures beyond the engine is the server's cost.
func openLean(server serverSpec, stateDir string) (p *path, err error) {
	proc, err := startPiped(server.command(stateDir))
	if err != nil {
		return nil, err
	}
	stdin, stdout, stderr, stop := proc.stdin, proc.stdout, proc.stderr, proc.stop
	// The pipes are used as the server uses its own and the engine its
	// agent's (see pipeio), so that this client's runtime does not add
	// wake-ups of its own to what is counted as the server's cost.
	stdin, stdout = pipeio.WriteCloser(stdin), pipeio.Reader(stdout)
	defer func() {
		if err != nil {
			stop()
			err = fmt.Errorf("lean client: %w\nserver stderr:\n%s", err, stderr)
		}
	}()
	type response struct {
		ID     int64 `json:"id"`
		Result struct {
			IsError           bool            `json:"isError"`
			StructuredContent json.RawMessage `json:"structuredContent"`
			Content           []struct {
				Text string `json:"text"`
			} `json:"content"`
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
		return nil, fmt.Errorf("initialize: %w", err)
	}
	if _, err := stdin.Write([]byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}` + "\n")); err != nil {
		return nil, err
	}
	return &path{name: "lean", stderr: stderr, close: stop, pid: proc.pid, call: func(op *operation) (time.Duration, error) {
		d, r, err := rpc("tools/call", map[string]any{"name": op.tool, "arguments": op.args})
		if err != nil {
			return d, err
		}
		if r.Result.IsError {
			var text string
			if len(r.Result.Content) > 0 {
				text = r.Result.Content[0].Text
			}
			return d, fmt.Errorf("tool error: %s %s", text, r.Result.StructuredContent)
		}
		return d, op.check(r.Result.StructuredContent)
	}}, nil
}

// openEngine opens an engine in this process with one machine, on which it
// runs run_python's code with Machine.RunPython and exec_command's argv with
// Machine.Run.
func openEngine(stateDir string) (*path, error) {
	e, err := local.New(local.Options{StateDir: stateDir})
	if err != nil {
		return nil, err
	}
	info, err := e.Create(context.Background(), local.MachineSpec{})
	if err != nil {
		e.Close()
		return nil, err
	}
	m, err := e.Machine(info.ID)
	if err != nil {
		e.Close()
		return nil, err
	}
	return &path{name: "engine", close: func() { e.Close() }, call: func(op *operation) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		switch op.tool {
		case "run_python":
			code, _ := op.args["code"].(string)
			start := time.Now()
			r, err := m.RunPython(ctx, code, local.PythonOptions{})
			d := time.Since(start)
			if err != nil {
				return d, err
			}
			if r.Value == nil || *r.Value != "2" || r.Error != "" {
				return d, fmt.Errorf("python %s: value %s, error %q; want 2", code, strPtr(r.Value), r.Error)
			}
			return d, nil
		case "exec_command":
			argv, _ := op.args["argv"].([]string)
			start := time.Now()
			r, err := m.Run(ctx, local.Command{Argv: argv})
			d := time.Since(start)
			if err != nil {
				return d, err
			}
			if r.ExitCode != 0 || r.Signal != "" || r.TimedOut {
				return d, fmt.Errorf("command %v: exit code %d, signal %q, timed out %v; want exit code 0", argv, r.ExitCode, r.Signal, r.TimedOut)
			}
			return d, nil
		}
		return 0, fmt.Errorf("the engine path has no %s", op.tool)
	}}, nil
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
// the MCP paths' p50 to the base path's; extra names other paths to show.
func printTable(w io.Writer, ops []*operation, base string, extra ...string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := "operation\tgo-sdk p50\tgo-sdk p99\tlean p50\tlean p99\t" + base + " p50\t" + base + " p99"
	for _, e := range extra {
		header += "\t" + e + " p50\t" + e + " p99"
	}
	fmt.Fprintln(tw, header+"\tratio go-sdk\tratio lean")
	for _, op := range ops {
		sp50, sp99 := percentile(op.samples["go-sdk"], 0.50), percentile(op.samples["go-sdk"], 0.99)
		lp50, lp99 := percentile(op.samples["lean"], 0.50), percentile(op.samples["lean"], 0.99)
		bp50, bp99 := percentile(op.samples[base], 0.50), percentile(op.samples[base], 0.99)
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s", op.name, ms(sp50), ms(sp99), ms(lp50), ms(lp99), ms(bp50), ms(bp99))
		for _, e := range extra {
			row += fmt.Sprintf("\t%s\t%s", ms(percentile(op.samples[e], 0.50)), ms(percentile(op.samples[e], 0.99)))
		}
		fmt.Fprintf(tw, "%s\t%.2fx\t%.2fx\n", row, float64(sp50)/float64(bp50), float64(lp50)/float64(bp50))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(ops) > 0 && ops[0].steal >= 0 {
		_, err := fmt.Fprintf(w, "CPU time taken by the host (steal) during these calls: %.0f%% of the machine's CPU time\n", 100*ops[0].steal)
		return err
	}
	return nil
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
