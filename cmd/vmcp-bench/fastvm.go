package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	fvc "github.com/vmcp-dev/vmcp/client/fastvm"
)

// benchFastVM times exec_command true on a FastVM VM of an emulator in a
// process of its own: through the server's fastvm backend (both clients),
// with the Go client's JSON exec as the backend uses it without a progress
// token ("direct"), and with the client's streamed exec, used with one
// ("streamed").
func benchFastVM(cfg config, server serverSpec, dir string) (*operation, error) {
	const key = "bench-fastvm-key"
	emu, err := startEmulator("fastvm", key, filepath.Join(dir, "emulator"))
	if err != nil {
		return nil, err
	}
	defer emu.stop()

	op := &operation{name: "exec_command true", tool: "exec_command", args: map[string]any{"argv": []string{"true"}}, check: checkTrue}
	spec := server
	spec.args = append(append([]string(nil), spec.args...), "--fastvm-url", emu.url, "--backend", "fastvm")
	spec.env = append(append([]string(nil), spec.env...), "FASTVM_API_KEY="+key)
	err = measureWith(cfg, []*operation{op}, func() ([]*path, error) {
		return openPaths(
			func() ([]*path, error) { return one(openSDK(spec, filepath.Join(dir, "sdk"))) },
			func() ([]*path, error) { return one(openLean(spec, filepath.Join(dir, "lean"))) },
			func() ([]*path, error) { return openFastVM(emu, key) },
		)
	})
	return op, err
}

// openFastVM launches a VM with the Go client and gives two paths on it:
// the JSON exec ("direct") and the streamed exec ("streamed").
func openFastVM(emu *emulator, key string) ([]*path, error) {
	c := fvc.New(key, fvc.WithBaseURL(emu.url))
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	vm, err := c.Launch(ctx, fvc.LaunchRequest{MachineType: "c1m2"})
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
	request := func(op *operation) fvc.ExecRequest {
		argv, _ := op.args["argv"].([]string)
		return fvc.ExecRequest{Command: argv}
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
		exit, err := c.ExecStreamFunc(ctx, vm.ID, req, func(fvc.ExecEvent) error { return nil })
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		return d, check(exit.ExitCode, exit.TimedOut)
	}}
	return []*path{direct, streamed}, nil
}
