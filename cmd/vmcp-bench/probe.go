//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The load test's pre-existing conversation is driven by a process of its
// own, as an agent is: in the bench's process, its calls would also wait
// behind the hundred load clients' goroutines, which is the load
// generator's cost, not the server's.

// probeEnv holds the MCP endpoint when the bench runs as that process.
const probeEnv = "VMCP_BENCH_PROBE_ENDPOINT"

// runProbeIfRequested runs the probe and exits if the bench was started as
// one.
func runProbeIfRequested() {
	endpoint := os.Getenv(probeEnv)
	if endpoint == "" {
		return
	}
	if err := runProbe(endpoint, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vmcp-bench probe:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runProbe calls run_python `1+1` in one conversation every 10 ms until
// stop reaches its end, writing a line per call: its start (Unix
// nanoseconds) and duration (nanoseconds), or "error" and the error.
func runProbe(endpoint string, stop io.Reader, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "vmcp-load-probe", Version: "1"}, nil).Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint}, nil)
	if err != nil {
		return err
	}
	defer cs.Close()
	stopped := make(chan struct{})
	go func() {
		io.Copy(io.Discard, stop)
		close(stopped)
	}()
	w := bufio.NewWriter(out)
	defer w.Flush()
	for {
		t0 := time.Now()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"code": "1+1"}})
		d := time.Since(t0)
		if err == nil && (res.IsError || !strings.Contains(text(res), "2")) {
			err = fmt.Errorf("%s", text(res))
		}
		if err != nil {
			fmt.Fprintf(w, "error %.300q\n", err.Error())
		} else {
			fmt.Fprintf(w, "%d %d\n", t0.UnixNano(), d.Nanoseconds())
		}
		w.Flush()
		select {
		case <-stopped:
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// probeCall is one call of the probe process.
type probeCall struct {
	start time.Time
	d     time.Duration
	err   string
}

// probeProcess is a running probe.
type probeProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	calls []probeCall
	done  chan struct{} // closed when the reader has read all
	// readErr is the reader's error, set before done closes.
	readErr error
	// stderr of the probe, for errors.
	stderr *syncBuffer
}

// startProbe starts a probe process on the endpoint.
func startProbe(endpoint string) (*probeProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &probeProcess{cmd: exec.Command(self), done: make(chan struct{}), stderr: &syncBuffer{}}
	p.cmd.Env = append(os.Environ(), probeEnv+"="+endpoint)
	p.cmd.Stderr = p.stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			var c probeCall
			if msg, ok := strings.CutPrefix(line, "error "); ok {
				c.err = msg
			} else {
				f := strings.Fields(line)
				if len(f) != 2 {
					continue
				}
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				d, _ := strconv.ParseInt(f[1], 10, 64)
				c.start, c.d = time.Unix(0, ns), time.Duration(d)
			}
			p.mu.Lock()
			p.calls = append(p.calls, c)
			p.mu.Unlock()
		}
		p.readErr = sc.Err()
	}()
	return p, nil
}

// snapshot returns the calls so far.
func (p *probeProcess) snapshot() []probeCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]probeCall(nil), p.calls...)
}

// stop ends the probe and returns all its calls.
func (p *probeProcess) stop() ([]probeCall, error) {
	p.stdin.Close()
	<-p.done
	err := p.cmd.Wait()
	if err == nil {
		err = p.readErr
	}
	if err != nil {
		err = fmt.Errorf("probe: %w\n%s", err, p.stderr)
	}
	return p.snapshot(), err
}

// kill ends the probe at once, if stop was not called.
func (p *probeProcess) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.stdin.Close()
		<-p.done
		p.cmd.Wait()
	}
}
