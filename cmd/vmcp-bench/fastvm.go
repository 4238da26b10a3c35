//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
)

// benchFastVM times exec_command true on a FastVM VM of an emulator in a
// process of its own: through the server's fastvm backend (both clients),
// with the Go client's JSON exec as the backend uses it without a progress
// token ("direct"), and with the client's streamed exec, used with one
// ("streamed").
func benchFastVM(cfg config, server serverSpec, dir string) (*operation, error) {
	const key = "bench-fastvm-key"
	return benchCloud(cfg, server, dir, cloud{
		kind: "fastvm", secret: key, urlFlag: "--fastvm-url", secretEnv: "FASTVM_API_KEY",
		op:     &operation{name: "exec_command true", tool: "exec_command", args: map[string]any{"argv": []string{"true"}}, check: checkTrue},
		direct: func(emu *emulator) ([]*path, error) { return openFastVM(emu, key) },
	})
}

// openFastVM launches a VM with the Go client and gives two paths on it:
// the JSON exec ("direct") and the streamed exec ("streamed").
func openFastVM(emu *emulator, key string) ([]*path, error) {
	c := fastvmclient.New(key, fastvmclient.WithBaseURL(emu.url))
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	vm, err := c.Launch(ctx, fastvmclient.LaunchRequest{MachineType: "c1m2"})
	if err != nil {
		return nil, err
	}
	deleteVM := func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		c.DeleteVM(ctx, vm.ID)
	}
	check := func(code int, timedOut bool) error {
		if code != 0 || timedOut {
			return fmt.Errorf("exit code %d, timed out %v; want 0", code, timedOut)
		}
		return nil
	}
	request := func(op *operation) fastvmclient.ExecRequest {
		argv, _ := op.args["argv"].([]string)
		return fastvmclient.ExecRequest{Command: argv}
	}
	direct := &path{name: "direct", stderr: emu.stderr, close: deleteVM, call: func(op *operation) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		req := request(op)
		start := time.Now()
		res, err := c.Exec(ctx, vm.ID, req)
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(res.ExitCode, res.TimedOut)
	}}
	streamed := &path{name: "streamed", stderr: emu.stderr, call: func(op *operation) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		req := request(op)
		start := time.Now()
		exit, err := c.ExecStreamFunc(ctx, vm.ID, req, func(fastvmclient.ExecEvent) error { return nil })
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(exit.ExitCode, exit.TimedOut)
	}}
	return []*path{direct, streamed}, nil
}

// benchFastVMPython times run_python 1+1 and exec_command true on the same
// FastVM VM of an emulator, through the server (lean client), interleaved:
// FastVM has no REPL on the wire, so each run_python is one exec that
// reaches the interpreter the backend keeps in the VM, and its cost over a
// plain exec is what the REPL adds.
func benchFastVMPython(cfg config, server serverSpec, dir string) ([]*operation, error) {
	const key = "bench-fastvm-key"
	emu, err := startEmulator("fastvm", key, filepath.Join(dir, "emulator"))
	if err != nil {
		return nil, err
	}
	defer emu.stop()
	spec := server
	spec.args = append(append([]string(nil), spec.args...), "--fastvm-url", emu.url, "--backend", "fastvm")
	spec.env = append(append([]string(nil), spec.env...), "FASTVM_API_KEY="+key)
	ops := []*operation{
		// The first call starts the REPL in the VM: on a loaded machine it
		// may take longer than run_python's default timeout.
		{name: "run_python 1+1", tool: "run_python", args: map[string]any{"code": "1+1", "timeout_seconds": 120}, check: checkPython},
		{name: "exec_command true", tool: "exec_command", args: map[string]any{"argv": []string{"true"}}, check: checkTrue},
	}
	err = measureWith(cfg, ops, func() ([]*path, error) {
		return one(openLean(spec, filepath.Join(dir, "lean")))
	})
	return ops, err
}

// printPair prints two operations' p50 and p99 on the lean path and the
// first's p50 over the second's.
func printPair(w io.Writer, a, b *operation) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "operation\tp50\tp99")
	for _, op := range []*operation{a, b} {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", op.name, ms(percentile(op.samples["lean"], 0.50)), ms(percentile(op.samples["lean"], 0.99)))
	}
	tw.Flush()
	fmt.Fprintf(w, "%s / %s (p50): %.2fx\n", a.name, b.name, float64(percentile(a.samples["lean"], 0.50))/float64(percentile(b.samples["lean"], 0.50)))
	if a.steal >= 0 {
		fmt.Fprintf(w, "CPU time taken by the host (steal) during these calls: %.0f%% of the machine's CPU time\n", 100*a.steal)
	}
}
