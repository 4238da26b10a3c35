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

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/prompts"
	"github.com/vmcp-dev/vmcp/sessions"
)

// Instructions is the server's instructions for the model.
const Instructions = `vmcp gives you persistent sandboxed Linux machines with a stateful Python interpreter.
- Your calls belong to a conversation that owns its machines. Without "session" you use this client's conversation; session "new" starts another, and every result names its session: pass it back to continue that conversation (also after a server restart). session_info shows what it owns.
- Every tool takes an optional "machine" id. Without it, tools use the conversation's default machine, created on first use; launch_vm creates a new machine and makes it the default.
- run_python keeps globals between calls (like a notebook); matplotlib figures come back as images. exec_command runs bash or an argv in the same machine and its files.
- Files live in the machine (relative paths start in its home); move them with upload_file and download_file.
- snapshot_vm saves a machine's files (not its Python state) under a snapshot id; launch_vm with snapshot_id starts a new machine from it. list_machines shows both; delete_vm removes a machine.
- Machines have no network access unless the server grants it. An idle machine may be stopped or parked and is restored on next use, with its files.`

// Service holds what the tools share: the backends, the conversations, and
// the host directories that local_path may use.
type Service struct {
	backends     []backend.Backend // in order of preference; the first is the default backend
	backendsFor  func(principal string) []backend.Backend
	sessions     *sessions.Manager
	allowedRoots []string // absolute, symbolic links resolved
	// rootsPerPrincipal: each principal's local_path lives in a directory
	// of its own under each allowed root (the hosted endpoint).
	rootsPerPrincipal bool
	instance          string // this server's instance id, tagged on its machines
	idle              map[string]time.Duration
	ttl               time.Duration
	localPrincipal    string
	log               zerolog.Logger

	// unparkMu guards relaunching parked machines and the maps below, so
	// that the reaper never parks a machine a call is using.
	unparkMu sync.Mutex
	onCall   func(tool, backend, outcome string, d time.Duration)
	idled    map[string]int64 // machine key → use stamp when it was stopped
	busy     map[string]int   // machine key → calls using it
	parking  map[string]bool  // machine key → being parked now
}

// Config configures a Service.
type Config struct {
	// Backends in order of preference: a call without a machine uses the
	// default machine of the first backend that can do what the tool needs.
	Backends []backend.Backend
	// BackendsFor, if set, gives the backends of a principal that brought
	// its own credentials (nil: the server's Backends).
	BackendsFor func(principal string) []backend.Backend
	// Sessions keeps the conversations. Required.
	Sessions *sessions.Manager
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
	// OnCall, if set, learns of every tool call when it ends: the tool, the
	// backend of the machine it used ("" if none), "ok", "tool_error" or
	// "error", and how long it took (for metrics).
	OnCall func(tool, backend, outcome string, d time.Duration)
	Log    zerolog.Logger
}

// NewService makes the tools' shared state.
func NewService(cfg Config) (*Service, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("no backend configured")
	}
	if cfg.Sessions == nil {
		return nil, errors.New("no session store configured")
	}
	roots, err := resolveRoots(cfg.AllowedRoots)
	if err != nil {
		return nil, err
	}
	return &Service{backends: cfg.Backends, backendsFor: cfg.BackendsFor, sessions: cfg.Sessions, allowedRoots: roots, rootsPerPrincipal: cfg.RootsPerPrincipal, instance: cfg.Instance,
		idle: cfg.Idle, ttl: cfg.ConversationTTL, localPrincipal: localPrincipal(), log: cfg.Log,
		onCall: cfg.OnCall, idled: map[string]int64{}, busy: map[string]int{}, parking: map[string]bool{}}, nil
}

// Tools are every tool with its handler.
func (s *Service) Tools() []server.ServerTool {
	var all []server.ServerTool
	all = append(all, s.pythonTools()...)
	all = append(all, s.commandTools()...)
	all = append(all, s.fileTools()...)
	all = append(all, s.machineTools()...)
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
		server.WithResourceCapabilities(false, false), // none yet; clients may still ask
		server.WithLogging(),
		// No output validation: results are typed Go values made to match
		// their schemas, and the end-to-end tests validate every result
		// they receive against the announced output schema.
		server.WithRecovery(),
		// Hooks the transports may add to (the hosted endpoint does).
		server.WithHooks(&server.Hooks{}),
	)
	s.Register(srv)
	prompts.Register(srv)
	return srv
}

// machine returns the machine named by id — which the caller must own and
// which must have capability need — or, without an id, the conversation's
// default machine on the first backend that has the capability, created on
// first use.
func (s *Service) machine(ctx context.Context, id string, need backend.Capability) (backend.Machine, error) {
	c := conversationFrom(ctx)
	if id == "" {
		b := s.backendFor(c.Principal, need)
		if b == nil {
			return nil, fmt.Errorf("no configured backend can do %s", need)
		}
		return s.defaultMachine(ctx, c, b)
	}
	m, err := s.find(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if b := s.backend(c.Principal, m.Backend()); b != nil && !b.Has(need) {
		e := &backend.UnsupportedError{Backend: m.Backend(), Capability: need}
		if other := s.backendFor(c.Principal, need); other != nil {
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

// errMachineNotFound is the answer for a machine that does not exist or is
// not the caller's: the two are never told apart.
func errMachineNotFound(id string) error {
	return fmt.Errorf("machine %q not found; list_machines shows your machines", id)
}

// find looks up a machine the caller's principal owns, by id or by the name
// it was launched with.
func (s *Service) find(ctx context.Context, c *sessions.Conversation, id string) (backend.Machine, error) {
	principal := c.Principal
	for _, b := range s.backendsOf(principal) {
		if !b.Recognizes(id) {
			continue
		}
		owner, err := s.sessions.OwnerOf(ctx, principal, b.Name(), id)
		if errors.Is(err, sessions.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m, err := s.open(ctx, owner, b, id)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		return m, err
	}
	// By name, among the caller's machines.
	var match []backend.MachineInfo
	for _, b := range s.backendsOf(principal) {
		infos, err := s.ownedMachines(ctx, principal, b)
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			if info.Name == id {
				match = append(match, info)
			}
		}
	}
	if len(match) == 1 {
		return s.backend(principal, match[0].Backend).Machine(ctx, match[0].ID)
	}
	if len(match) > 1 {
		return nil, fmt.Errorf("%d of your machines are named %q; pass the machine id instead (list_machines shows them)", len(match), id)
	}
	return nil, errMachineNotFound(id)
}

// ownedMachines lists b's machines that the principal owns.
func (s *Service) ownedMachines(ctx context.Context, principal string, b backend.Backend) ([]backend.MachineInfo, error) {
	all, err := s.sessions.Store().All(ctx)
	if err != nil {
		return nil, err
	}
	owned := map[string]bool{}
	for _, c := range all {
		if c.Principal != principal {
			continue
		}
		for _, m := range c.Machines {
			if m.Backend == b.Name() {
				owned[m.ID] = true
			}
		}
	}
	if len(owned) == 0 {
		return nil, nil
	}
	infos, err := b.Machines(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %s machines: %w", b.Name(), err)
	}
	var out []backend.MachineInfo
	for _, info := range infos {
		if owned[info.ID] {
			out = append(out, info)
		}
	}
	return out, nil
}

// backendsOf are the backends of a principal's calls: its own (with its
// own credentials) when it brought any, else the server's.
func (s *Service) backendsOf(principal string) []backend.Backend {
	if s.backendsFor != nil {
		if bs := s.backendsFor(principal); bs != nil {
			return bs
		}
	}
	return s.backends
}

// onlyLocal reports whether the principal's machines all run on the local
// engine.
func (s *Service) onlyLocal(principal string) bool {
	for _, b := range s.backendsOf(principal) {
		if b.Name() != "local" {
			return false
		}
	}
	return true
}

// backend returns the principal's backend of that name, or nil.
func (s *Service) backend(principal, name string) backend.Backend {
	for _, b := range s.backendsOf(principal) {
		if b.Name() == name {
			return b
		}
	}
	return nil
}

// backendFor is the principal's first backend with capability c, or nil.
func (s *Service) backendFor(principal string, c backend.Capability) backend.Backend {
	for _, b := range s.backendsOf(principal) {
		if b.Has(c) {
			return b
		}
	}
	return nil
}

// defaultMachine is the conversation's default machine on b, created (and
// recorded) on first use.
func (s *Service) defaultMachine(ctx context.Context, c *sessions.Conversation, b backend.Backend) (backend.Machine, error) {
	if id := c.Defaults[b.Name()]; id != "" {
		m, err := s.open(ctx, c, b, id)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
		// Gone behind our back (deleted outside the server): forget it and
		// start a fresh default below.
		s.log.Warn().Str("backend", b.Name()).Str("machine", id).Msg("the default machine of a conversation no longer exists; creating a new one")
		if _, err := s.sessions.Update(ctx, c, func(c *sessions.Conversation) error { c.RemoveMachine(b.Name(), id); return nil }); err != nil {
			return nil, err
		}
	}
	if err := s.sessions.CheckMachineLimit(c); err != nil {
		return nil, err
	}
	info, err := b.Create(ctx, backend.MachineSpec{Name: "default", Tags: s.machineTags(c, nil)})
	if err != nil {
		return nil, fmt.Errorf("create the default %s machine: %w", b.Name(), err)
	}
	if _, err := s.own(ctx, c, b, info.ID, true); err != nil {
		return nil, err
	}
	s.log.Info().Str("backend", b.Name()).Str("machine", info.ID).Msg("created a conversation's default machine")
	return s.open(ctx, c, b, info.ID)
}

// open returns a machine of conversation c (named by its id or an earlier
// one), relaunching it first if it was parked while idle, and notes its use.
// The machine is held busy until the call ends, so that the reaper does not
// park it under the call.
func (s *Service) open(ctx context.Context, c *sessions.Conversation, b backend.Backend, id string) (backend.Machine, error) {
	if latest, err := s.sessions.Store().Load(ctx, c.Principal, c.Handle); err == nil {
		c = latest
	}
	if rec := c.Machine(b.Name(), id); rec != nil {
		id = rec.ID
	}
	if err := s.hold(ctx, c.Handle+"/"+b.Name()+"/"+id); err != nil {
		return nil, err
	}
	if latest, err := s.sessions.Store().Load(ctx, c.Principal, c.Handle); err == nil {
		c = latest // the reaper may have parked it before we held it
	}
	if rec := c.Machine(b.Name(), id); rec != nil && rec.Parked != nil {
		var err error
		if id, err = s.unpark(ctx, c, b, rec.ID); err != nil {
			return nil, err
		}
	}
	m, err := b.Machine(ctx, id)
	if err != nil {
		return nil, err
	}
	s.sessions.TouchMachine(c.Handle, b.Name(), id)
	if n, ok := ctx.Value(notesKey{}).(*callNotes); ok {
		n.setBackend(b.Name())
	}
	return m, nil
}

// hold marks a machine busy until the call ends, waiting first while the
// reaper parks it.
func (s *Service) hold(ctx context.Context, key string) error {
	n, ok := ctx.Value(notesKey{}).(*callNotes)
	if !ok {
		return nil
	}
	for {
		s.unparkMu.Lock()
		if !s.parking[key] {
			s.busy[key]++
			s.unparkMu.Unlock()
			break
		}
		s.unparkMu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	n.onEnd(func() {
		s.unparkMu.Lock()
		if s.busy[key]--; s.busy[key] <= 0 {
			delete(s.busy, key)
		}
		s.unparkMu.Unlock()
	})
	return nil
}

// unpark relaunches a machine that was parked while idle, from its
// snapshot, and records its new id (the old one keeps working). One at a
// time: two calls on a parked machine must not relaunch it twice.
func (s *Service) unpark(ctx context.Context, c *sessions.Conversation, b backend.Backend, id string) (string, error) {
	s.unparkMu.Lock()
	defer s.unparkMu.Unlock()
	c, err := s.sessions.Store().Load(ctx, c.Principal, c.Handle) // the latest record
	if err != nil {
		return "", err
	}
	rec := c.Machine(b.Name(), id)
	if rec == nil {
		return "", backend.ErrNotFound
	}
	if rec.Parked == nil { // relaunched meanwhile
		return rec.ID, nil
	}
	snap := rec.Parked.Snapshot
	info, err := b.Create(ctx, backend.MachineSpec{Name: "restored", FromSnapshot: snap, Tags: s.machineTags(c, nil)})
	if err != nil {
		return "", fmt.Errorf("machine %s was idle and parked as snapshot %s; relaunching it failed: %w", id, snap, err)
	}
	_, err = s.sessions.Update(ctx, c, func(c *sessions.Conversation) error {
		rec := c.Machine(b.Name(), id)
		if rec == nil {
			return sessions.ErrNotFound
		}
		if c.Defaults[b.Name()] == rec.ID {
			c.Defaults[b.Name()] = info.ID
		}
		rec.Previous = append(rec.Previous, rec.ID)
		rec.ID, rec.Parked, rec.LastUsed = info.ID, nil, time.Now().UTC()
		return nil
	})
	if err != nil {
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		b.Delete(cleanup, info.ID)
		return "", fmt.Errorf("record the relaunched machine: %w", err)
	}
	s.log.Info().Str("backend", b.Name()).Str("machine", id).Str("now", info.ID).Str("snapshot", snap).Msg("relaunched a parked machine")
	// The parking snapshot served its purpose: it would only cost storage.
	if d, ok := b.(backend.SnapshotDeleter); ok {
		if err := d.DeleteSnapshot(ctx, snap); err != nil && !errors.Is(err, backend.ErrNotFound) {
			s.log.Warn().Err(err).Str("snapshot", snap).Msg("could not delete the snapshot of a restored machine")
		}
	}
	addNote(ctx, fmt.Sprintf("Machine %s had been idle, so it was saved as snapshot %s and stopped; it was restored from that snapshot as machine %s (files kept; running processes and memory were not).", id, snap, info.ID))
	return info.ID, nil
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
		s.sessions.Touch(c.Handle)
		notes := &callNotes{}
		ctx = context.WithValue(context.WithValue(ctx, conversationKey{}, c), notesKey{}, notes)
		start := time.Now()
		timeout := spec.timeout
		if t, ok := any(in).(timedArg); ok && t.timeout() > 0 {
			timeout = time.Duration(t.timeout()) * time.Second
		}
		res, err := s.runBounded(ctx, spec.name, timeout, notes, s.onlyLocal(c.Principal), func(ctx context.Context) (*mcp.CallToolResult, error) {
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
		if res.ResultType != mcp.ResultTypeInputRequired {
			withSession(res, c.Handle, created)
		}
		return res, nil
	}
	return server.ServerTool{Tool: tool, Handler: handler}
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
		for _, b := range s.backendsOf(conversationFrom(ctx).Principal) {
			if b.Name() != "local" {
				cloud = append(cloud, names[b.Name()])
			}
		}
		service = "the machine's service"
		if len(cloud) > 0 {
			service = strings.Join(cloud, " or ")
		}
	}
	return fmt.Errorf("%s did not finish within its timeout of %v (plus %v to wind down): %s did not answer in time (stalled or too slow). "+
		"The call was given up; what it started may still finish. Try again, or give a larger timeout_seconds", tool, timeout, callGrace, service)
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

func ms(d time.Duration) int64 { return d.Milliseconds() }
