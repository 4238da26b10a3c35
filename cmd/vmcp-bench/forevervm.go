//go:build linux

package main

import (
	"context"
	"fmt"
	"time"

	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
)

// benchForeverVM times run_python 1+1 on a ForeverVM machine of an emulator
// in a process of its own: through the server's forevervm backend (both
// clients), with the Go client on one REPL socket ("direct"), and with a new
// socket per call ("new socket").
func benchForeverVM(cfg config, server serverSpec, dir string) (*operation, error) {
	const token = "bench.emulator-token"
	return benchCloud(cfg, server, dir, cloud{
		kind: "forevervm", secret: token, urlFlag: "--forevervm-url", secretEnv: "FOREVERVM_TOKEN",
		op:     &operation{name: "run_python 1+1", tool: "run_python", args: map[string]any{"code": "1+1"}, check: checkPython},
		direct: func(emu *emulator) ([]*path, error) { return openForeverVM(emu, token) },
	})
}

// openForeverVM creates a machine with the Go client and gives two paths:
// one long-lived REPL socket ("direct"), and a new socket per call ("new
// socket"), as forevervm-mcp does.
func openForeverVM(emu *emulator, token string) ([]*path, error) {
	c := forevervmclient.New(token, forevervmclient.WithBaseURL(emu.url))
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	machine, err := c.CreateMachine(ctx, forevervmclient.CreateMachineOptions{})
	if err != nil {
		return nil, err
	}
	repl, err := c.REPL(ctx, machine)
	if err != nil {
		return nil, err
	}
	check := func(r *forevervmclient.Result) error {
		if r.IsError || r.Value == nil || *r.Value != "2" {
			return fmt.Errorf("1+1: value %s, error %q; want 2", strPtr(r.Value), r.Error)
		}
		return nil
	}
	direct := &path{name: "direct", stderr: emu.stderr, close: func() { repl.Close() }, call: func(op *operation) (time.Duration, error) {
		code, _ := op.args["code"].(string)
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		start := time.Now()
		r, err := repl.Exec(ctx, code, forevervmclient.ExecOptions{})
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(r)
	}}
	newSocket := &path{name: "new socket", stderr: emu.stderr, call: func(op *operation) (time.Duration, error) {
		code, _ := op.args["code"].(string)
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		start := time.Now()
		r, err := c.REPL(ctx, machine)
		if err != nil {
			return time.Since(start), err
		}
		res, err := r.Exec(ctx, code, forevervmclient.ExecOptions{})
		r.Close()
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(res)
	}}
	return []*path{direct, newSocket}, nil
}
