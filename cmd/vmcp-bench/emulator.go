package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	fastemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	fvmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
)

// The emulators run in a process of their own (this binary again, with
// emulatorEnv set), as the clouds they stand for do: served from the
// bench's own process, the direct client would reach the emulator without
// crossing a process boundary while the MCP server would have to, which
// measures the hop, not the MCP layer.
const emulatorEnv = "VMCP_BENCH_EMULATOR" // "forevervm:TOKEN" or "fastvm:KEY"

// emulator is a running emulator process.
type emulator struct {
	url    string
	cmd    *exec.Cmd
	stdin  io.Closer
	stderr *syncBuffer
}

// startEmulator starts an emulator process (kind "forevervm" or "fastvm",
// accepting secret) with its state in dir, and waits for its URL.
func startEmulator(kind, secret, dir string) (*emulator, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	c := exec.Command(self)
	c.Env = append(os.Environ(), emulatorEnv+"="+kind+":"+secret, "VMCP_BENCH_EMULATOR_DIR="+dir)
	stderr := &syncBuffer{}
	c.Stderr = stderr
	stdin, err := c.StdinPipe() // the emulator exits when it closes
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
	e := &emulator{cmd: c, stdin: stdin, stderr: stderr}
	urls := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		urls <- strings.TrimSpace(line)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case e.url = <-urls:
	case <-time.After(30 * time.Second):
	}
	if !strings.HasPrefix(e.url, "http://") {
		e.stop()
		return nil, fmt.Errorf("the %s emulator did not start: %s", kind, stderr.String())
	}
	return e, nil
}

// stop ends the emulator process.
func (e *emulator) stop() {
	e.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- e.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		e.cmd.Process.Kill()
		<-done
	}
}

// runEmulatorIfRequested serves an emulator and exits, when this process is
// one started by startEmulator: it prints its URL, then serves until its
// stdin closes.
func runEmulatorIfRequested() {
	spec := os.Getenv(emulatorEnv)
	if spec == "" {
		return
	}
	if err := serveEmulator(spec, os.Getenv("VMCP_BENCH_EMULATOR_DIR")); err != nil {
		fmt.Fprintln(os.Stderr, "vmcp-bench emulator:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serveEmulator(spec, dir string) error {
	kind, secret, _ := strings.Cut(spec, ":")
	engine, err := local.New(local.Options{StateDir: dir})
	if err != nil {
		return err
	}
	defer engine.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	url := "http://" + ln.Addr().String()
	var handler http.Handler
	switch kind {
	case "forevervm":
		emu, err := fvmemu.New(fvmemu.Options{Engine: engine, Token: secret})
		if err != nil {
			return err
		}
		defer emu.Close()
		handler = emu
	case "fastvm":
		emu, err := fastemu.New(fastemu.Options{Engine: engine, APIKey: secret})
		if err != nil {
			return err
		}
		defer emu.Close()
		emu.SetBaseURL(url)
		handler = emu
	default:
		return fmt.Errorf("unknown emulator %q", kind)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Println(url)
	stdinClosed := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	select {
	case <-stdinClosed:
	case err := <-served:
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
