// Package tools implements vmcp's MCP tools on top of the machine backends
// (package backend): one file per tool family (Python, commands, files,
// machines).
package tools

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/broker"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/prompts"
)

// Instructions is the server's instructions for the model.
const Instructions = `vmcp gives you persistent sandboxed Linux machines with a stateful Python interpreter.
- Your calls belong to a conversation that owns its machines. Without "session" you use this client's conversation; session "new" starts another, and every result names its session: pass it back to continue that conversation (also after a server restart). session_info shows what it owns.
- The conversation has one machine: every tool without "machine" acts on it (created on first use), so files, Python and commands all see the same files. launch_vm creates a new machine and makes it the conversation's machine for every tool. Every result's first line names the machine and backend it ran on.
- run_python keeps globals between calls (like a notebook); matplotlib figures come back as images. exec_command runs bash or an argv in the same machine and its files.
- Files live in the machine (relative paths start in its home); move them with upload_file and download_file.
- snapshot_vm saves a machine's files (not its Python state) under a snapshot id; launch_vm with snapshot_id starts a new machine from it. list_machines shows both; delete_vm removes a machine.
- Machines have no network by default. session_info says which domains the server lets a machine reach; launch_vm with network set to those it needs (e.g. ["pypi.org", "*.pythonhosted.org"]) gives a machine that reaches them over HTTP(S): pip install, git clone and curl then work there. pytest, requests, numpy, pandas, scipy and matplotlib are installed.
- An idle machine may be stopped or parked and is restored on next use, with its files.`

// Service holds what the tools share: the machine broker, the
// conversations, and the host directories that local_path may use.
type Service struct {
	broker        *broker.Broker
	conversations *conversations.Manager
	allowedRoots  []string // absolute, symbolic links resolved
	// rootsPerPrincipal: each principal's local_path lives in a directory
	// of its own under each allowed root (the hosted endpoint).
	rootsPerPrincipal bool
	localPrincipal    string
	log               zerolog.Logger
	onCall            func(tool, backend, outcome string, d time.Duration)
	// The budget of a result's text, and the most a call may ask for.
	maxOutputChars, maxOutputCharsLimit int
	spoolDir                            string
	project                             string
	network                             NetworkConfig
	maxMemoryMB, maxDiskMB              int64
	admission                           *admission
}

// Config configures a Service.
type Config struct {
	// Backends in order of preference: a conversation's machine is created
	// on the first.
	Backends []backend.Backend
	// BackendsFor, if set, gives the backends of a principal that brought
	// its own credentials (nil: the server's Backends).
	BackendsFor func(principal string) []backend.Backend
	// Conversations keeps the conversations. Required.
	Conversations *conversations.Manager
	// AllowedRoots are the host directories that upload_file and
	// download_file may read and write through local_path.
	AllowedRoots []string
	// RootsPerPrincipal gives each principal a directory of its own under
	// each allowed root, named after it, for local_path: the hosted endpoint
	// serves many principals from one host.
	RootsPerPrincipal bool
	// Instance names this server on the machines it creates.
	Instance string
	// Idle is each backend's idle timeout (absent or 0: machines stay).
	Idle map[string]time.Duration
	// ConversationTTL closes conversations idle this long (0: never).
	ConversationTTL time.Duration
	// SnapshotTTL deletes the snapshots of conversations closed this long
	// ago (0: never).
	SnapshotTTL time.Duration
	// OnCall, if set, learns of every tool call when it ends: the tool, the
	// backend of the machine it used ("" if none), "ok", "tool_error" or
	// "error", and how long it took (for metrics).
	OnCall func(tool, backend, outcome string, d time.Duration)
	// MaxOutputChars is the budget of a result's text (0:
	// DefaultMaxOutputChars); MaxOutputCharsLimit the most a call may ask
	// for with max_output_chars (0: DefaultMaxOutputCharsLimit, and never
	// less than MaxOutputChars).
	MaxOutputChars, MaxOutputCharsLimit int
	// SpoolDir holds, for the length of a call, the output of a command or
	// code that outgrew the result, on its way to the machine (default:
	// the system's temporary directory).
	SpoolDir string
	// Project is what a stdio server serves: its working directory. A call
	// without a session joins the conversation of the project and the
	// client (by its name); empty: the principal's one conversation.
	Project string
	// Network is what the operator lets machines reach.
	Network NetworkConfig
	// MaxMemoryMB and MaxDiskMB bound launch_vm's memory_mb and disk_mb;
	// 0: no bound.
	MaxMemoryMB, MaxDiskMB int64
	// CallSlots is how many calls start at a time; more wait their turn
	// (see admission.go). 0: DefaultCallSlots; negative: no limit.
	CallSlots int
	Log       zerolog.Logger
}

// NewService makes the tools' shared state.
func NewService(cfg Config) (*Service, error) {
	roots, err := resolveRoots(cfg.AllowedRoots)
	if err != nil {
		return nil, err
	}
	if err := cfg.Network.Check(); err != nil {
		return nil, err
	}
	b, err := broker.New(broker.Config{Backends: cfg.Backends, BackendsFor: cfg.BackendsFor, Conversations: cfg.Conversations, Instance: cfg.Instance,
		Idle: cfg.Idle, ConversationTTL: cfg.ConversationTTL, SnapshotTTL: cfg.SnapshotTTL, LocalPrincipal: principal.Local(), Log: cfg.Log})
	if err != nil {
		return nil, err
	}
	if cfg.MaxOutputChars <= 0 {
		cfg.MaxOutputChars = DefaultMaxOutputChars
	}
	if cfg.MaxOutputCharsLimit <= 0 {
		cfg.MaxOutputCharsLimit = DefaultMaxOutputCharsLimit
	}
	cfg.MaxOutputCharsLimit = max(cfg.MaxOutputCharsLimit, cfg.MaxOutputChars)
	if cfg.CallSlots == 0 {
		cfg.CallSlots = DefaultCallSlots()
	}
	return &Service{broker: b, conversations: cfg.Conversations, allowedRoots: roots, rootsPerPrincipal: cfg.RootsPerPrincipal,
		localPrincipal: principal.Local(), log: cfg.Log, onCall: cfg.OnCall,
		maxOutputChars: cfg.MaxOutputChars, maxOutputCharsLimit: cfg.MaxOutputCharsLimit, spoolDir: cfg.SpoolDir, project: cfg.Project, network: cfg.Network,
		maxMemoryMB: cfg.MaxMemoryMB, maxDiskMB: cfg.MaxDiskMB, admission: newAdmission(cfg.CallSlots)}, nil
}

// Broker is the service's machine broker (for the reaper and the
// reconciler).
func (s *Service) Broker() *broker.Broker { return s.broker }

// Tools are every tool with its handler.
func (s *Service) Tools() []server.ServerTool {
	var all []server.ServerTool
	all = append(all, s.pythonTools()...)
	all = append(all, s.commandTools()...)
	all = append(all, s.fileTools()...)
	all = append(all, s.machineTools()...)
	all = append(all, s.resetTools()...)
	all = append(all, s.imageTools()...)
	all = append(all, s.sessionTools()...)
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

// ServerInfo is the name and version the server reports to clients.
func ServerInfo(version string) mcp.Implementation {
	return mcp.Implementation{Name: "vmcp", Version: version}
}

// NewMCPServer builds vmcp's MCP server: every tool and prompt, the
// instructions. Every tool checks its arguments against its input schema
// itself (see compileSchema). version is what the server reports to clients.
func (s *Service) NewMCPServer(version string) *server.MCPServer {
	info := ServerInfo(version)
	srv := server.NewMCPServer(info.Name, info.Version,
		server.WithInstructions(Instructions),
		server.WithToolCapabilities(false),
		server.WithPromptCapabilities(false),
		server.WithResourceCapabilities(false, false), // the machines' files (resources.go)
		server.WithLogging(),
		// No output validation: results are typed Go values made to match
		// their schemas, and the end-to-end tests validate every result
		// they receive against the announced output schema.
		server.WithRecovery(),
		// Hooks the transports may add to (the hosted endpoint does).
		server.WithHooks(&server.Hooks{}),
	)
	s.Register(srv)
	s.registerResources(srv)
	prompts.Register(srv, prompts.Options{Snapshots: func(ctx context.Context) bool {
		return s.broker.Backends(s.principal(ctx))[0].Has(backend.Snapshots)
	}})
	return srv
}

// machine returns the machine a call acts on (see broker.Acquire), held
// until the call ends; what happened to it on the way goes into the call's
// notes.
func (s *Service) machine(ctx context.Context, id string, need backend.Capability) (backend.Machine, error) {
	l, err := s.broker.Acquire(ctx, conversationFrom(ctx), id, need)
	if err != nil {
		return nil, err
	}
	if n, ok := ctx.Value(notesKey{}).(*callNotes); ok {
		n.onEnd(l.Release)
	} else {
		l.Release() // no call to hold it for (a test)
	}
	noteMachine(ctx, l.Machine.Backend(), l.Machine.ID())
	for _, note := range l.Notes {
		addNote(ctx, note)
	}
	return l.Machine, nil
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

// toolSpec is the static part of a tool's definition.
type toolSpec struct {
	name, title, description          string
	readOnly, destructive, idempotent bool
	openWorld                         bool
	// timeout is how long a call may take when it sets no timeout_seconds;
	// past it and callGrace, the call ends with an error whatever the
	// machine's service does.
	timeout time.Duration
}

// callGrace is how long past its timeout a call may take to end: to stop
// what it started and answer (the answer then travels within the 5 s that
// a call may take past its timeout).
const callGrace = 4 * time.Second

// newTool builds a tool definition with input and output schemas generated
// from In and Out, and wraps a typed handler: arguments that do not decode
// are a tool error, as are errors the handler returns.
//
// Every input embeds SessionArg: the wrapper resolves the conversation
// before the handler runs (the handler finds it with conversationFrom) and
// names it in the result.
func newTool[In sessionArg, Out any](s *Service, spec toolSpec, handle func(ctx context.Context, req mcp.CallToolRequest, in In) (*mcp.CallToolResult, error)) server.ServerTool {
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
	inputSchema := compileSchema(spec.name, tool.RawInputSchema)
	noteTextArguments[In](spec.name)
	handler := func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		if err := checkArguments(inputSchema, req); err != nil {
			return mcp.NewToolResultError(fmt.Sprintf("invalid arguments for %s: %v", spec.name, err)), nil
		}
		var in In
		if err := req.BindArguments(&in); err != nil {
			return mcp.NewToolResultError(fmt.Sprintf("invalid arguments for %s: %v", spec.name, err)), nil
		}
		c, created, err := s.resolveConversation(ctx, in.session())
		if err != nil {
			return mcp.NewToolResultError(err.Error()), nil
		}
		if created {
			// Saved or dropped when the call ends (announce), even if its
			// handler panics.
			defer func() {
				if p := recover(); p != nil {
					s.conversations.Forget(c)
					panic(p)
				}
			}()
		}
		s.conversations.Touch(c.Handle)
		notes := &callNotes{}
		ctx = context.WithValue(context.WithValue(context.WithValue(ctx, conversationKey{}, c), notesKey{}, notes), firstCallKey{}, created)
		start := time.Now()
		timeout := spec.timeout
		if t, ok := any(in).(timedArg); ok && t.timeout() > 0 {
			timeout = time.Duration(t.timeout()) * time.Second
		}
		if timeout > 0 {
			// The wait for its turn counts: the call ends within its
			// timeout and callGrace of its arrival.
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, start.Add(timeout+callGrace))
			defer cancel()
		}
		release, err := s.admission.enter(ctx, c.CreatedAt, created)
		if err != nil {
			res := mcp.NewToolResultError(fmt.Sprintf("%s was cancelled while it waited for its turn to start: %v", spec.name, err))
			if created {
				s.conversations.Forget(c) // it did nothing: no conversation to name
			} else {
				withSession(res, c.Handle, false)
			}
			return res, nil
		}
		defer release()
		res, err := s.runBounded(ctx, spec.name, timeout, notes, s.broker.OnlyLocal(c.Principal), func(ctx context.Context) (*mcp.CallToolResult, error) {
			return handle(ctx, req, in)
		})
		outcome := "ok"
		if err != nil {
			res, outcome = mcp.NewToolResultError(errorText(err)), "error"
		} else if res.IsError {
			outcome = "tool_error"
		}
		notes.end(res)
		if s.onCall != nil {
			s.onCall(spec.name, notes.backend, outcome, time.Since(start))
		}
		s.logCall(spec.name, c.Handle, notes, outcome, err, time.Since(start))
		if res.ResultType == mcp.ResultTypeInputRequired {
			s.conversations.Forget(c) // named nowhere: the client asks again
			return res, nil
		}
		return s.announce(ctx, res, c, created), nil
	}
	return server.ServerTool{Tool: tool, Handler: handler}
}

// announce names the call's conversation in its result; one that this call
// began is saved first (see conversations.Manager.Resolve). If it cannot
// be, the result (whatever the call did elsewhere) says so and names none.
func (s *Service) announce(ctx context.Context, res *mcp.CallToolResult, c *conversations.Conversation, created bool) *mcp.CallToolResult {
	if created {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
		err := s.conversations.Save(ctx, c)
		cancel()
		if err != nil {
			s.conversations.Forget(c)
			s.log.Error().Err(err).Msg("a new conversation could not be saved")
			res.Content = append(res.Content, mcp.NewTextContent(fmt.Sprintf(
				"This call's new conversation could not be recorded: the session store failed (%v). Nothing refers to it: "+
					"call again with session \"new\" once the store works.", err)))
			return res
		}
	}
	withSession(res, c.Handle, created)
	return res
}

// saveTimeout bounds the write of a new conversation at the end of its
// first call, which may have used up the call's own time.
const saveTimeout = 5 * time.Second

// logCall logs a call: at debug, one line per call; a call that failed
// (not a tool error, which is the model's to read) at warn with its
// error. Never arguments, output or results: they may hold code, data or
// secrets. The conversation is named by a hash of its handle, which grants
// access.
func (s *Service) logCall(tool, handle string, notes *callNotes, outcome string, err error, d time.Duration) {
	level := zerolog.DebugLevel
	if err != nil {
		level = zerolog.WarnLevel
	}
	if s.log.GetLevel() > level {
		return
	}
	sum := sha256.Sum256([]byte(handle))
	notes.mu.Lock()
	backendName, machine := notes.backend, notes.machine
	notes.mu.Unlock()
	ev := s.log.WithLevel(level).Str("tool", tool).Str("conversation", hex.EncodeToString(sum[:6])).
		Str("backend", backendName).Str("machine", machine).Dur("duration", d).Str("outcome", outcome)
	if err != nil {
		ev = ev.Str("error", errorText(err))
	}
	ev.Msg("tool call")
}

// runBounded runs a call's handler and returns by its deadline (timeout
// plus callGrace) whatever the handler does: a remote service that stalls
// or trickles cannot hold the call, nor the slot it takes on the endpoint.
// A handler still running at the deadline goes on alone until the service
// answers or its context ends it, and only then gives back what it holds
// (notes.finish).
//
// With the local engine alone (which ends every operation when its context
// does), the handler runs on the caller's goroutine: the hop to another
// would add to every call of the stdio fast path.
func (s *Service) runBounded(ctx context.Context, tool string, timeout time.Duration, notes *callNotes, inline bool, handle func(context.Context) (*mcp.CallToolResult, error)) (*mcp.CallToolResult, error) {
	if timeout <= 0 {
		res, err := handle(ctx)
		notes.finish()
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+callGrace)
	if inline {
		defer cancel()
		res, err := handle(ctx)
		notes.finish()
		if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, s.deadlineError(ctx, tool, timeout, notes.usedBackend())
		}
		return res, err
	}
	type outcome struct {
		res *mcp.CallToolResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		defer cancel()
		defer notes.finish()
		defer func() {
			if p := recover(); p != nil {
				s.log.Error().Str("tool", tool).Interface("panic", p).Msg("a tool handler panicked")
				done <- outcome{err: fmt.Errorf("internal error in %s; the server logged it", tool)}
			}
		}()
		res, err := handle(ctx)
		done <- outcome{res, err}
	}()
	select {
	case o := <-done:
		if o.err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, s.deadlineError(ctx, tool, timeout, notes.usedBackend())
		}
		return o.res, o.err
	case <-ctx.Done():
		start := time.Now()
		go func() {
			<-done
			s.log.Info().Str("tool", tool).Dur("after", time.Since(start)).Msg("a call given up at its deadline ended")
		}()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			s.log.Warn().Str("tool", tool).Str("backend", notes.usedBackend()).Dur("timeout", timeout).Msg("a call passed its deadline and was given up")
			return nil, s.deadlineError(ctx, tool, timeout, notes.usedBackend())
		}
		return nil, ctx.Err()
	}
}

// deadlineError says that a call passed its deadline, and which service
// kept it waiting: the backend of the machine it used, or else the cloud
// services it may have asked.
func (s *Service) deadlineError(ctx context.Context, tool string, timeout time.Duration, backend string) error {
	names := map[string]string{"fastvm": "the FastVM API", "forevervm": "the ForeverVM API", "local": "the machine"}
	service := names[backend]
	if service == "" {
		var cloud []string
		for _, b := range s.broker.Backends(conversationFrom(ctx).Principal) {
			if b.Name() != "local" {
				cloud = append(cloud, names[b.Name()])
			}
		}
		service = "the machine's service"
		if len(cloud) > 0 {
			service = strings.Join(cloud, " or ")
		}
	}
	err := fmt.Errorf("%s did not finish within its timeout of %v (plus %v to wind down): %s did not answer in time (stalled or too slow). "+
		"The call was given up; what it started may still finish. Try again, or give a larger timeout_seconds", tool, timeout, callGrace, service)
	if first, _ := ctx.Value(firstCallKey{}).(bool); first {
		err = fmt.Errorf("%w. This was the conversation's first call, and its time includes starting the conversation's machine, "+
			"which waits its turn when many machines start at once: call again with the session handle of this result", err)
	}
	return err
}

// firstCallKey marks the context of a call that began its conversation.
type firstCallKey struct{}

// errorText explains an error to the model.
func errorText(err error) string {
	var pe *backend.PathError
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

func ms(d time.Duration) int64 { return d.Milliseconds() }
