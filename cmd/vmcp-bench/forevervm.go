package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"time"

	fvm "github.com/vmcp-dev/vmcp/client/forevervm"
	fvmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
)

// benchForeverVM times run_python 1+1 on a ForeverVM machine of an emulator
// served from this process: through the server's forevervm backend (both
// clients), with the Go client on one REPL socket, and with a new socket
// per call.
func benchForeverVM(server serverSpec, dir string, n int) (*operation, error) {
	engine, err := local.New(local.Options{StateDir: filepath.Join(dir, "emulator")})
	if err != nil {
		return nil, err
	}
	defer engine.Close()
	const token = "bench.emulator-token"
	emu, err := fvmemu.New(fvmemu.Options{Engine: engine, Token: token})
	if err != nil {
		return nil, err
	}
	defer emu.Close()
	hs := httptest.NewServer(emu)
	defer hs.Close()

	op := &operation{name: "run_python 1+1", tool: "run_python", args: map[string]any{"code": "1+1"}, check: checkPython}
	spec := server
	spec.args = append(append([]string(nil), spec.args...), "--forevervm-url", hs.URL, "--backend", "forevervm")
	spec.env = append(append([]string(nil), spec.env...), "FOREVERVM_TOKEN="+token)
	if err := benchSDK(spec, filepath.Join(dir, "sdk"), n, []*operation{op}); err != nil {
		return nil, fmt.Errorf("mcp (go-sdk client): %w", err)
	}
	if err := benchLean(spec, filepath.Join(dir, "lean"), n, []*operation{op}); err != nil {
		return nil, fmt.Errorf("mcp (lean client): %w", err)
	}

	c := fvm.New(token, fvm.WithBaseURL(hs.URL))
	ctx := context.Background()
	machine, err := c.CreateMachine(ctx, fvm.CreateMachineOptions{})
	if err != nil {
		return nil, err
	}
	check := func(r *fvm.Result) error {
		if r.IsError || r.Value == nil || *r.Value != "2" {
			return fmt.Errorf("1+1: value %s, error %q; want 2", strPtr(r.Value), r.Error)
		}
		return nil
	}
	repl, err := c.REPL(ctx, machine)
	if err != nil {
		return nil, err
	}
	defer repl.Close()
	op.engine, err = timeN(n, func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		r, err := repl.Exec(ctx, "1+1", fvm.ExecOptions{})
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(r)
	})
	if err != nil {
		return nil, fmt.Errorf("client REPL: %w", err)
	}
	op.extra, err = timeN(n, func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		r, err := c.REPL(ctx, machine)
		if err != nil {
			return time.Since(start), err
		}
		res, err := r.Exec(ctx, "1+1", fvm.ExecOptions{})
		r.Close()
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(res)
	})
	if err != nil {
		return nil, fmt.Errorf("client, new socket per call: %w", err)
	}
	return op, nil
}
