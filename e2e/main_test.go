//go:build linux

// Package e2e tests the real mcp-server binary over stdio with the official
// Go SDK client.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/local"
)

// serverBin is the mcp-server binary that TestMain builds.
var serverBin string

// buildVersion is the version serverBin was built with.
var buildVersion = "e2e"

func TestMain(m *testing.M) {
	local.RunHelperIfRequested() // the emulators run machines on an engine in this process
	dir, err := os.MkdirTemp("", "vmcp-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	serverBin = filepath.Join(dir, "mcp-server")
	// The servers the tests start keep no warm machines (each would fill
	// a pool beside the test): TestWarmMachines turns the pool on.
	os.Setenv("VMCP_WARM_MACHINES", "0")
	// The server is built as the Makefile builds it, with the version
	// that git describe gives.
	if out, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		buildVersion = strings.TrimSpace(string(out))
	}
	args := []string{"build", "-o", serverBin, "-ldflags", "-X main.version=" + buildVersion}
	if tags := os.Getenv("VMCP_E2E_SERVER_TAGS"); tags != "" {
		// VMCP_E2E_SERVER_TAGS=vmcp_nolocal: a server without the local
		// engine, as on macOS and Windows (the emulators keep theirs).
		args = append(args, "-tags", tags)
	}
	if os.Getenv("VMCP_E2E_RACE") != "" {
		args = append(args, "-race") // VMCP_E2E_RACE=1: a race-detector server
	}
	build := exec.Command("go", append(args, "github.com/vmcp-dev/vmcp/cmd/mcp-server")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "go build:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
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

// harness is one running server with its client session.
type harness struct {
	cs   *mcp.ClientSession
	root string // the server's only allowed root (and working directory)
	log  *syncBuffer
	cmd  *exec.Cmd // the server process

	mu       sync.Mutex
	progress []*mcp.ProgressNotificationParams

	schemasOnce sync.Once
	schemas     map[string]*jsonschema.Resolved // output schemas by tool
	schemasErr  error
}

// start runs the server with a fresh state dir and allowed root.
func start(t *testing.T) *harness {
	t.Helper()
	return startIn(t, t.TempDir(), t.TempDir())
}

// startIn runs the server on the given state dir, with root as its allowed
// root and working directory.
func startIn(t *testing.T, state, root string) *harness {
	t.Helper()
	return startWith(t, state, root, clientOptions{})
}

// clientOptions vary the MCP client, and the server's command line.
type clientOptions struct {
	roots           []string // host directories the client declares as roots
	protocolVersion string   // default: the SDK's latest
	serverArgs      []string // more flags for the server
	serverEnv       []string // more environment variables for the server
	wrap            []string // a command that runs the server: wrap... server args...
}

// startWith is startIn with a client set up by opts.
func startWith(t *testing.T, state, root string, opts clientOptions) *harness {
	t.Helper()
	h, err := launch(state, root, opts)
	if err != nil {
		t.Fatal(err)
	}
	h.cleanup(t)
	return h
}

// cleanup closes h's client when t ends and reports a data race the
// server found; it logs the server's stderr when t failed.
func (h *harness) cleanup(t *testing.T) {
	t.Cleanup(func() {
		h.cs.Close()
		if strings.Contains(h.log.String(), "DATA RACE") {
			t.Error("the server reported a data race")
		}
		if t.Failed() {
			t.Logf("server stderr:\n%s", h.log)
		}
	})
}

// launch starts a server and connects its client, for any goroutine.
func launch(state, root string, opts clientOptions) (*harness, error) {
	h := &harness{root: root}
	argv := append([]string{serverBin, "--state-dir", state, "--allowed-roots", h.root, "--log-level", "debug"}, opts.serverArgs...)
	argv = append(append([]string(nil), opts.wrap...), argv...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = h.root
	cmd.Env = append(os.Environ(), opts.serverEnv...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	h.log = stderr
	client := mcp.NewClient(&mcp.Implementation{Name: "vmcp-e2e", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			h.mu.Lock()
			h.progress = append(h.progress, req.Params)
			h.mu.Unlock()
		},
	})
	for _, r := range opts.roots {
		//lint:ignore SA1019 roots are what this exercises: clients before protocol 2026-07-28 send them
		client.AddRoots(&mcp.Root{URI: "file://" + r})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, &mcp.ClientSessionOptions{ProtocolVersion: opts.protocolVersion})
	if err != nil {
		return nil, fmt.Errorf("connect: %v\nserver stderr:\n%s", err, stderr)
	}
	h.cs = cs
	h.cmd = cmd
	return h, nil
}

// stderr is what the server has logged so far.
func (h *harness) stderr() string { return h.log.String() }

func (h *harness) progressCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.progress)
}

// call calls a tool; a protocol error fails the test.
func (h *harness) call(t *testing.T, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	res, err := h.callErr(name, args, nil)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return res
}

func (h *harness) callErr(name string, args map[string]any, progressToken any) (*mcp.CallToolResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	params := &mcp.CallToolParams{Name: name, Arguments: args}
	if progressToken != nil {
		params.SetProgressToken(progressToken)
	}
	res, err := h.cs.CallTool(ctx, params)
	if err != nil || res.StructuredContent == nil {
		return res, err
	}
	// The server does not validate its own results (they are typed Go
	// values); every result the tests see is checked against the output
	// schema that tools/list announces, so the schemas tell the truth.
	if err := h.checkOutput(ctx, name, res.StructuredContent); err != nil {
		return res, err
	}
	return res, nil
}

// checkOutput validates structured content against the tool's output schema.
func (h *harness) checkOutput(ctx context.Context, tool string, structured any) error {
	h.schemasOnce.Do(func() {
		h.schemas = map[string]*jsonschema.Resolved{}
		list, err := h.cs.ListTools(ctx, nil)
		if err != nil {
			h.schemasErr = err
			return
		}
		for _, tl := range list.Tools {
			b, err := json.Marshal(tl.OutputSchema)
			if err != nil {
				h.schemasErr = err
				return
			}
			var sch jsonschema.Schema
			if err := json.Unmarshal(b, &sch); err != nil {
				h.schemasErr = fmt.Errorf("%s output schema: %w", tl.Name, err)
				return
			}
			if h.schemas[tl.Name], err = sch.Resolve(nil); err != nil {
				h.schemasErr = fmt.Errorf("%s output schema: %w", tl.Name, err)
				return
			}
		}
	})
	if h.schemasErr != nil {
		return h.schemasErr
	}
	rs := h.schemas[tool]
	if rs == nil {
		return fmt.Errorf("%s returned structured content but announces no output schema", tool)
	}
	b, err := json.Marshal(structured)
	if err != nil {
		return err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if err := rs.Validate(v); err != nil {
		return fmt.Errorf("%s: the structured content %s does not match the output schema: %w", tool, b, err)
	}
	return nil
}

// ok calls a tool that must succeed and decodes its structured content.
func (h *harness) ok(t *testing.T, name string, args map[string]any, out any) *mcp.CallToolResult {
	t.Helper()
	res := h.call(t, name, args)
	if res.IsError {
		t.Fatalf("%s(%v): tool error: %s", name, args, text(res))
	}
	decode(t, res, out)
	return res
}

// fails calls a tool that must end in a tool error mentioning want.
func (h *harness) fails(t *testing.T, name string, args map[string]any, want string) *mcp.CallToolResult {
	t.Helper()
	res := h.call(t, name, args)
	if !res.IsError {
		t.Fatalf("%s(%v): no tool error; result %s", name, args, text(res))
	}
	if !strings.Contains(text(res), want) {
		t.Fatalf("%s(%v): error %q does not mention %q", name, args, text(res), want)
	}
	return res
}

func decode(t *testing.T, res *mcp.CallToolResult, out any) {
	t.Helper()
	if out == nil {
		return
	}
	if res.StructuredContent == nil {
		t.Fatalf("no structured content; content: %s", text(res))
	}
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("structured content %s: %v", b, err)
	}
}

// text joins the result's text content items.
func text(res *mcp.CallToolResult) string {
	var parts []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}
