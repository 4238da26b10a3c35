// Package tools implements vmcp's MCP tools on top of the machine backends
// (package backend): one file per tool family (Python, commands, files,
// machines).
package tools

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/invopop/jsonschema"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/prompts"
)

// Instructions is the server's instructions for the model.
const Instructions = `vmcp gives you persistent sandboxed Linux machines with a stateful Python interpreter.
- Every tool takes an optional "machine" id. Without it, tools use the default machine, created on first use; launch_vm creates a new machine and makes it the default.
- run_python keeps globals between calls (like a notebook); matplotlib figures come back as images. exec_command runs bash or an argv in the same machine and its files.
- Files live in the machine's workspace; move them with upload_file and download_file.
- snapshot_vm saves a machine's files (not its Python state) under a snapshot id; launch_vm with snapshot_id starts a new machine from it. list_machines shows both; delete_vm removes a machine.
- Machines have no network access.`

// Service holds what the tools share: the backends, the host directories
// that local_path may use, and the default machine of each backend.
type Service struct {
	backends     []backend.Backend // in order of preference; the first is the default backend
	allowedRoots []string          // absolute, symbolic links resolved
	log          zerolog.Logger

	mu       sync.Mutex
	defaults map[string]string // backend name → default machine id
}

// NewService makes the tools' shared state. backends are in order of
// preference: a call without a machine uses the default machine of the first
// backend that can do what the tool needs. allowedRoots are the host
// directories that upload_file and download_file may read and write through
// local_path.
func NewService(backends []backend.Backend, allowedRoots []string, log zerolog.Logger) (*Service, error) {
	if len(backends) == 0 {
		return nil, errors.New("no backend configured")
	}
	roots, err := resolveRoots(allowedRoots)
	if err != nil {
		return nil, err
	}
	return &Service{backends: backends, allowedRoots: roots, log: log, defaults: map[string]string{}}, nil
}

// Tools are every tool with its handler.
func (s *Service) Tools() []server.ServerTool {
	var all []server.ServerTool
	all = append(all, s.pythonTools()...)
	all = append(all, s.commandTools()...)
	all = append(all, s.fileTools()...)
	all = append(all, s.machineTools()...)
	return all
}

// Definitions are the tool definitions, as tools/list shows them.
func Definitions() []mcp.Tool {
	var s Service
	var defs []mcp.Tool
	for _, t := range s.Tools() {
		defs = append(defs, t.Tool)
	}
	return defs
}

// Register adds every tool to srv.
func (s *Service) Register(srv *server.MCPServer) { srv.AddTools(s.Tools()...) }

// NewMCPServer builds vmcp's MCP server: every tool and prompt, the
// instructions, and validation of tool arguments against their schemas. version is what the server reports to clients.
func (s *Service) NewMCPServer(version string) *server.MCPServer {
	srv := server.NewMCPServer("vmcp", version,
		server.WithInstructions(Instructions),
		server.WithToolCapabilities(false),
		server.WithPromptCapabilities(false),
		server.WithInputSchemaValidation(),
		// No output validation: results are typed Go values made to match
		// their schemas, and the end-to-end tests validate every result
		// they receive against the announced output schema.
		server.WithRecovery(),
	)
	s.Register(srv)
	prompts.Register(srv)
	return srv
}

// machine returns the machine named by id (or by a unique name) — which
// must have capability need — or, without an id, the default machine of the
// first backend that has it, created on first use.
func (s *Service) machine(ctx context.Context, id string, need backend.Capability) (backend.Machine, error) {
	if id == "" {
		b := s.backendFor(need)
		if b == nil {
			return nil, fmt.Errorf("no configured backend can do %s", need)
		}
		return s.defaultMachine(ctx, b)
	}
	m, err := s.find(ctx, id)
	if err != nil {
		return nil, err
	}
	if b := s.backend(m.Backend()); b != nil && !b.Has(need) {
		e := &backend.UnsupportedError{Backend: m.Backend(), Capability: need}
		if other := s.backendFor(need); other != nil {
			e.Hint = fmt.Sprintf("leave machine out to use the default %s machine, or launch_vm with backend %q", other.Name(), other.Name())
		}
		return nil, e
	}
	return m, nil
}

// machineAs is s.machine with the machine's capability interface T.
func machineAs[T any](ctx context.Context, s *Service, id string, need backend.Capability) (backend.Machine, T, error) {
	var zero T
	m, err := s.machine(ctx, id, need)
	if err != nil {
		return nil, zero, err
	}
	t, ok := m.(T)
	if !ok {
		return nil, zero, &backend.UnsupportedError{Backend: m.Backend(), Capability: need}
	}
	return m, t, nil
}

// find looks a machine up by id, then by unique name, in every backend.
func (s *Service) find(ctx context.Context, id string) (backend.Machine, error) {
	for _, b := range s.backends {
		if !b.Recognizes(id) {
			continue
		}
		m, err := b.Machine(ctx, id)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
	}
	var match []backend.MachineInfo
	for _, b := range s.backends {
		infos, err := b.Machines(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s machines: %w", b.Name(), err)
		}
		for _, info := range infos {
			if info.Name == id {
				match = append(match, info)
			}
		}
	}
	if len(match) == 1 {
		return s.backend(match[0].Backend).Machine(ctx, match[0].ID)
	}
	if len(match) > 1 {
		return nil, fmt.Errorf("%d machines are named %q; pass the machine id instead (list_machines shows them)", len(match), id)
	}
	return nil, fmt.Errorf("machine %q not found; list_machines shows the machines", id)
}

// backend returns the configured backend of that name, or nil.
func (s *Service) backend(name string) backend.Backend {
	for _, b := range s.backends {
		if b.Name() == name {
			return b
		}
	}
	return nil
}

// backendFor is the first configured backend with capability c, or nil.
func (s *Service) backendFor(c backend.Capability) backend.Backend {
	for _, b := range s.backends {
		if b.Has(c) {
			return b
		}
	}
	return nil
}

// defaultMachine is b's default machine, created on first use.
func (s *Service) defaultMachine(ctx context.Context, b backend.Backend) (backend.Machine, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id := s.defaults[b.Name()]; id != "" {
		m, err := b.Machine(ctx, id)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
	}
	// The default machine of an earlier run of the server is this run's too:
	// its files are where the user left them, and machines do not pile up.
	infos, err := b.Machines(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %s machines: %w", b.Name(), err)
	}
	var newest *backend.MachineInfo
	for _, info := range infos {
		if info.Tags[defaultTag] == "default" && (newest == nil || info.CreatedAt.After(newest.CreatedAt)) {
			newest = &info
		}
	}
	if newest == nil {
		info, err := b.Create(ctx, backend.MachineSpec{Name: "default", Tags: map[string]string{defaultTag: "default"}})
		if err != nil {
			return nil, fmt.Errorf("create the default %s machine: %w", b.Name(), err)
		}
		s.log.Info().Str("backend", b.Name()).Str("machine", info.ID).Msg("created the default machine")
		newest = &info
	}
	s.defaults[b.Name()] = newest.ID
	return b.Machine(ctx, newest.ID)
}

// defaultTag marks the machine a server created as its default.
const defaultTag = "vmcp"

func (s *Service) setDefault(b, id string) {
	s.mu.Lock()
	s.defaults[b] = id
	s.mu.Unlock()
}

func (s *Service) isDefault(b, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.defaults[b] == id
}

func (s *Service) forgetDefault(b, id string) {
	s.mu.Lock()
	if s.defaults[b] == id {
		delete(s.defaults, b)
	}
	s.mu.Unlock()
}

// toolSpec is the static part of a tool's definition.
type toolSpec struct {
	name, title, description          string
	readOnly, destructive, idempotent bool
	openWorld                         bool
}

// newTool builds a tool definition with input and output schemas generated
// from In and Out, and wraps a typed handler: arguments that do not decode
// are a tool error, as are errors the handler returns.
func newTool[In, Out any](spec toolSpec, handle func(ctx context.Context, req mcp.CallToolRequest, in In) (*mcp.CallToolResult, error)) server.ServerTool {
	tool := mcp.Tool{
		Name:            spec.name,
		Title:           spec.title,
		Description:     spec.description,
		RawInputSchema:  schemaFor[In](),
		RawOutputSchema: schemaFor[Out](),
		Annotations: mcp.ToolAnnotation{
			Title:           spec.title,
			ReadOnlyHint:    mcp.ToBoolPtr(spec.readOnly),
			DestructiveHint: mcp.ToBoolPtr(spec.destructive),
			IdempotentHint:  mcp.ToBoolPtr(spec.idempotent),
			OpenWorldHint:   mcp.ToBoolPtr(spec.openWorld),
		},
	}
	handler := func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		var in In
		if err := req.BindArguments(&in); err != nil {
			return mcp.NewToolResultError(fmt.Sprintf("invalid arguments for %s: %v", spec.name, err)), nil
		}
		res, err := handle(ctx, req, in)
		if err != nil {
			return mcp.NewToolResultError(errorText(err)), nil
		}
		return res, nil
	}
	return server.ServerTool{Tool: tool, Handler: handler}
}

// errorText explains an error to the model.
func errorText(err error) string {
	var pe *local.PathError
	switch {
	case errors.As(err, &pe):
		return "refused: " + pe.Error()
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return err.Error()
}

// structured makes a successful result with out as structured content and
// the given content items (a JSON text of out when none are given).
func structured(out any, isError bool, content ...mcp.Content) *mcp.CallToolResult {
	if len(content) == 0 {
		b, _ := json.MarshalIndent(out, "", "  ")
		content = []mcp.Content{mcp.NewTextContent(string(b))}
	}
	return &mcp.CallToolResult{Content: content, StructuredContent: out, IsError: isError}
}

var reflector = jsonschema.Reflector{
	DoNotReference: true,
	ExpandedStruct: true,
	Anonymous:      true,
}

// schemaFor generates the JSON schema of T: an object whose fields without
// omitempty are required.
func schemaFor[T any]() json.RawMessage {
	var zero T
	sc := reflector.Reflect(&zero)
	sc.Version = ""
	sc.ID = ""
	if sc.Properties == nil || sc.Properties.Len() == 0 {
		sc.Properties = nil
	}
	sc.Type = "object"
	b, err := json.Marshal(sc)
	if err != nil {
		panic(err)
	}
	if string(b) == `{"type":"object"}` || strings.Contains(string(b), `"additionalProperties":false`) && sc.Properties == nil {
		b = []byte(`{"type":"object","properties":{},"additionalProperties":false}`)
	}
	return b
}

func ms(d time.Duration) int64 { return d.Milliseconds() }
