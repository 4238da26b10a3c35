package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"time"

	fvc "github.com/vmcp-dev/vmcp/client/fastvm"
	fastemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	"github.com/vmcp-dev/vmcp/local"
)

// benchFastVM times exec_command true on a FastVM VM of an emulator served
// from this process: through the server's fastvm backend (both clients),
// with the Go client's JSON exec as the backend uses it without a progress
// token (direct), and with the client's streamed exec (used with one).
func benchFastVM(server serverSpec, dir string, n int) (*operation, error) {
	engine, err := local.New(local.Options{StateDir: filepath.Join(dir, "emulator")})
	if err != nil {
		return nil, err
	}
	defer engine.Close()
	const key = "bench-fastvm-key"
	emu, err := fastemu.New(fastemu.Options{Engine: engine, APIKey: key})
	if err != nil {
		return nil, err
	}
	defer emu.Close()
	hs := httptest.NewServer(emu)
	defer hs.Close()
	emu.SetBaseURL(hs.URL)

	op := &operation{name: "exec_command true", tool: "exec_command", args: map[string]any{"argv": []string{"true"}}, check: checkTrue}
	spec := server
	spec.args = append(append([]string(nil), spec.args...), "--fastvm-url", hs.URL, "--backend", "fastvm")
	spec.env = append(append([]string(nil), spec.env...), "FASTVM_API_KEY="+key)
	if err := benchSDK(spec, filepath.Join(dir, "sdk"), n, []*operation{op}); err != nil {
		return nil, fmt.Errorf("mcp (go-sdk client): %w", err)
	}
	if err := benchLean(spec, filepath.Join(dir, "lean"), n, []*operation{op}); err != nil {
		return nil, fmt.Errorf("mcp (lean client): %w", err)
	}

	c := fvc.New(key, fvc.WithBaseURL(hs.URL))
	ctx := context.Background()
	vm, err := c.Launch(ctx, fvc.LaunchRequest{MachineType: "c1m2"})
	if err != nil {
		return nil, err
	}
	defer c.DeleteVM(context.Background(), vm.ID)
	req := fvc.ExecRequest{Command: []string{"true"}}
	check := func(code int, timedOut bool) error {
		if code != 0 || timedOut {
			return fmt.Errorf("true: exit code %d, timed out %v; want 0", code, timedOut)
		}
		return nil
	}
	streamed := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		exit, err := c.ExecStreamFunc(ctx, vm.ID, req, func(fvc.ExecEvent) error { return nil })
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(exit.ExitCode, exit.TimedOut)
	}
	aggregate := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		res, err := c.Exec(ctx, vm.ID, req)
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(res.ExitCode, res.TimedOut)
	}
	if op.engine, err = timeN(n, aggregate); err != nil {
		return nil, fmt.Errorf("client exec: %w", err)
	}
	if op.extra, err = timeN(n, streamed); err != nil {
		return nil, fmt.Errorf("client exec stream: %w", err)
	}
	return op, nil
}
