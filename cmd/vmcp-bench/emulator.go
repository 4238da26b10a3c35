//go:build linux

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
	"path/filepath"
	"strings"
	"time"

	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	forevervmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
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
	*piped
	url string
}

// cloud is an emulated cloud to measure a backend against.
type cloud struct {
	kind      string // the emulator and the backend: "forevervm" or "fastvm"
	secret    string // the token or API key the emulator accepts
	urlFlag   string // the server's flag naming the service's URL
	secretEnv string // the server's environment variable with the secret
	op        *operation
	// direct opens the paths that call the emulator without MCP.
	direct func(emu *emulator) ([]*path, error)
}

// benchCloud starts the cloud's emulator and measures its operation through
// the server's backend with both clients, and on the direct paths.
func benchCloud(cfg config, server serverSpec, dir string, cl cloud) (*operation, error) {
	emu, err := startEmulator(cl.kind, cl.secret, filepath.Join(dir, "emulator"))
	if err != nil {
		return nil, err
	}
	defer emu.stop()
	spec := server
	spec.args = append(append([]string(nil), spec.args...), cl.urlFlag, emu.url, "--backend", cl.kind)
	spec.env = append(append([]string(nil), spec.env...), cl.secretEnv+"="+cl.secret)
	err = measureWith(cfg, []*operation{cl.op}, func() ([]*path, error) {
		return openPaths(
			func() ([]*path, error) { return one(openSDK(spec, filepath.Join(dir, "sdk"))) },
			func() ([]*path, error) { return one(openLean(spec, filepath.Join(dir, "lean"))) },
			func() ([]*path, error) { return cl.direct(emu) },
		)
	})
	return cl.op, err
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
	proc, err := startPiped(c) // the emulator exits when its stdin closes
	if err != nil {
		return nil, err
	}
	e := &emulator{piped: proc}
	urls := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(proc.stdout).ReadString('\n')
		urls <- strings.TrimSpace(line)
		io.Copy(io.Discard, proc.stdout)
	}()
	select {
	case e.url = <-urls:
	case <-time.After(30 * time.Second):
	}
	if !strings.HasPrefix(e.url, "http://") {
		e.stop()
		return nil, fmt.Errorf("the %s emulator did not start: %s", kind, proc.stderr)
	}
	return e, nil
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
		emu, err := forevervmemu.New(forevervmemu.Options{Engine: engine, Token: secret})
		if err != nil {
			return err
		}
		defer emu.Close()
		handler = emu
	case "fastvm":
		emu, err := fastvmemu.New(fastvmemu.Options{Engine: engine, APIKey: secret})
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
