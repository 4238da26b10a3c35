package tools

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
)

// SessionArg is the conversation argument every tool takes.
type SessionArg struct {
	Session string `json:"session,omitempty" jsonschema:"description=Conversation handle from an earlier result; 'new' starts a new conversation with its own machines. Default: this client's conversation."`
}

func (a SessionArg) session() string { return a.Session }

// SessionResult is the conversation every result names.
type SessionResult struct {
	Session string `json:"session" jsonschema:"description=The conversation this call belonged to; pass it as session to continue it (also after a restart of the server)."`
}

// sessionArg is implemented by every tool input (through SessionArg).
type sessionArg interface{ session() string }

// CallTimeout is the timeout argument of the tools that have no other: how
// long the call may take before it gives up.
type CallTimeout struct {
	TimeoutSeconds int `json:"timeout_seconds,omitempty" jsonschema:"description=Give up after this many seconds (the tool's description gives its default; leave it out for that).,minimum=1,maximum=86400"`
}

func (c CallTimeout) timeout() int { return c.TimeoutSeconds }

// timedArg is implemented by tool inputs with a timeout argument.
type timedArg interface{ timeout() int }

type conversationKey struct{}

// conversationFrom is the conversation of the call being served.
func conversationFrom(ctx context.Context) *conversations.Conversation {
	c, _ := ctx.Value(conversationKey{}).(*conversations.Conversation)
	return c
}

type clientKey struct{}

// client is what WithClient sets.
type client struct {
	project      string
	allowedRoots []string
}

// WithClient returns a context whose calls come from a stdio client of a
// project other than Config.Project, with local_path bounded by its own
// allowed roots: a server that serves the stdio clients of several
// projects sets it for each connection. It fails when a root cannot be
// resolved.
func (s *Service) WithClient(ctx context.Context, project string, allowedRoots []string) (context.Context, error) {
	roots, err := resolveRoots(allowedRoots)
	if err != nil {
		return nil, err
	}
	return context.WithValue(ctx, clientKey{}, &client{project: project, allowedRoots: roots}), nil
}

type endpointKey struct{}

// endpoint is what HostedEndpoint sets.
type endpoint struct{ allowedRoots []string }

// HostedEndpoint returns what marks the context of a call to a hosted
// endpoint that this server serves beside its own configuration: local_path
// is bounded by allowedRoots, each principal in its own directory under
// them, and calls without a session of clients without MCP sessions join
// the principal's default conversation, not a project's. It fails when a
// root cannot be resolved.
func (s *Service) HostedEndpoint(allowedRoots []string) (func(context.Context) context.Context, error) {
	roots, err := resolveRoots(allowedRoots)
	if err != nil {
		return nil, err
	}
	ep := &endpoint{allowedRoots: roots}
	return func(ctx context.Context) context.Context { return context.WithValue(ctx, endpointKey{}, ep) }, nil
}

// principal is who is calling: the authenticated principal in hosted mode,
// else the local user running the server.
func (s *Service) principal(ctx context.Context) string {
	if p := principal.From(ctx); p != "" {
		return p
	}
	return s.localPrincipal
}

// scope is the conversation a call without a session argument joins: that
// of its client's MCP session on the legacy HTTP transports; on stdio, the
// project's for this client (Config.Project and the client's name), so that
// two agents in two projects do not share a machine or Python globals, and
// a project finds its conversation again after a restart; else the
// principal's default conversation. Requests of protocol 2026-07-28 have no
// sessions (mcp-go gives each a throwaway one).
func (s *Service) scope(ctx context.Context) string {
	cs := server.ClientSessionFromContext(ctx)
	if !server.IsModernRequest(ctx) && cs != nil && !strings.HasPrefix(cs.SessionID(), "stdio") {
		return "mcp-session:" + cs.SessionID()
	}
	project := s.project
	if c, ok := ctx.Value(clientKey{}).(*client); ok {
		project = c.project
	} else if _, ok := ctx.Value(endpointKey{}).(*endpoint); ok {
		project = ""
	}
	if project == "" {
		return ""
	}
	client := ""
	if ci, ok := cs.(server.SessionWithClientInfo); ok && !server.IsModernRequest(ctx) {
		client = ci.GetClientInfo().Name
	}
	sum := sha256.Sum256([]byte(project + "\x00" + client))
	return "project:" + hex.EncodeToString(sum[:16])
}

// resolveConversation finds the call's conversation; created reports that
// it started with this call.
func (s *Service) resolveConversation(ctx context.Context, handle string) (*conversations.Conversation, bool, error) {
	c, created, err := s.conversations.Resolve(ctx, s.principal(ctx), handle, s.scope(ctx))
	if err != nil {
		if errors.Is(err, conversations.ErrNotFound) || errors.Is(err, conversations.ErrClosed) {
			return nil, false, fmt.Errorf("%w; leave session out to use this client's conversation, or pass \"new\"", err)
		}
		return nil, false, fmt.Errorf("the session store failed: %w", err)
	}
	return c, created, nil
}

// withSession sets the Session field of a result's structured content (a
// copy: handlers return their outputs by value) and, for a conversation
// that this call started, tells the model its handle in the text too.
func withSession(res *mcp.CallToolResult, handle string, created bool) {
	if res == nil {
		return
	}
	if res.StructuredContent != nil {
		v := reflect.ValueOf(res.StructuredContent)
		if i := sessionField(v.Type()); i != nil {
			cp := reflect.New(v.Type()).Elem()
			cp.Set(v)
			cp.FieldByIndex(i).SetString(handle)
			res.StructuredContent = cp.Interface()
		}
	}
	// A failed first call names its conversation too: it exists, and the
	// next call can go on with it.
	if created {
		res.Content = append(res.Content, mcp.NewTextContent(fmt.Sprintf(
			"Conversation %s started; pass session=%q to continue it later (it survives restarts).", handle, handle)))
	}
}

// sessionFields caches sessionField's answers: a lookup by name costs more
// than the rest of withSession.
var sessionFields sync.Map // reflect.Type → []int

// sessionField returns the index of t's string field Session (usually
// SessionResult's), or nil.
func sessionField(t reflect.Type) []int {
	if i, ok := sessionFields.Load(t); ok {
		return i.([]int)
	}
	var i []int
	if t.Kind() == reflect.Struct {
		if f, ok := t.FieldByName("Session"); ok && f.Type.Kind() == reflect.String {
			i = f.Index
		}
	}
	sessionFields.Store(t, i)
	return i
}

// SessionInfoInput is session_info's arguments.
type SessionInfoInput struct {
	CallTimeout
	SessionArg
}

// SessionMachine is a machine of the conversation.
type SessionMachine struct {
	ID       string    `json:"id" jsonschema:"description=Machine id."`
	Backend  string    `json:"backend" jsonschema:"description=Where it runs.,enum=local,enum=forevervm,enum=fastvm"`
	Default  bool      `json:"default" jsonschema:"description=It is the conversation's default machine on its backend."`
	LastUsed time.Time `json:"last_used" jsonschema:"description=When a tool last used it (RFC 3339)."`
	Parked   bool      `json:"parked" jsonschema:"description=It was idle: saved as a snapshot and deleted; the next call relaunches it with its files."`
	Network  string    `json:"network,omitempty" jsonschema:"description=What it may reach: none\\, open\\, or 'allowlist: ' and its domains (local machines)."`
	// Of a machine whose backend can list them (local).
	Processes    int              `json:"processes,omitempty" jsonschema:"description=How many processes its commands left running (background jobs\\, servers)\\, besides the Python interpreter; reset_machine stops them."`
	TopProcesses []SessionProcess `json:"top_processes,omitempty" jsonschema:"description=The busiest of them\\, the most CPU first (at most 5)."`
}

// SessionProcess is a process a machine's commands left running.
type SessionProcess struct {
	PID        int     `json:"pid" jsonschema:"description=Its id in the machine."`
	Command    string  `json:"command" jsonschema:"description=Its command line."`
	CPUSeconds float64 `json:"cpu_seconds" jsonschema:"description=CPU time it has used\\, in seconds."`
}

// SessionSnapshot is a snapshot of the conversation.
type SessionSnapshot struct {
	ID      string `json:"id" jsonschema:"description=Snapshot id."`
	Backend string `json:"backend" jsonschema:"description=Where it is kept.,enum=local,enum=forevervm,enum=fastvm"`
	Machine string `json:"machine" jsonschema:"description=The machine it was taken from."`
}

// SessionInfoOutput is session_info's result.
type SessionInfoOutput struct {
	SessionResult
	CreatedAt    time.Time         `json:"created_at" jsonschema:"description=When the conversation started."`
	Machines     []SessionMachine  `json:"machines" jsonschema:"description=The conversation's machines."`
	Snapshots    []SessionSnapshot `json:"snapshots" jsonschema:"description=The conversation's snapshots."`
	Backends     []string          `json:"backends" jsonschema:"description=Backends this server can use\\, preferred first."`
	MaxMachines  int               `json:"max_machines" jsonschema:"description=Most machines the conversation may have (0: no limit)."`
	MaxSnapshots int               `json:"max_snapshots" jsonschema:"description=Most snapshots the conversation may have (0: no limit)."`
	IdleTimeouts map[string]string `json:"idle_timeouts,omitempty" jsonschema:"description=Per backend\\, how long a machine may stay idle before it is stopped or parked."`
	MaxMemoryMB  int64             `json:"max_memory_mb,omitempty" jsonschema:"description=The most memory_mb launch_vm may ask for (local machines)."`
	MaxDiskMB    int64             `json:"max_disk_mb,omitempty" jsonschema:"description=The most disk_mb launch_vm may ask for (local machines)."`
	Network      SessionNetwork    `json:"network" jsonschema:"description=What local machines may reach: the default policy\\, and what launch_vm's network may ask for."`
}

// SessionNetwork is what the operator lets local machines reach.
type SessionNetwork struct {
	Default string   `json:"default" jsonschema:"description=The policy of machines launched without network: none\\, open\\, or 'allowlist: ' and its domains."`
	Allowed []string `json:"allowed" jsonschema:"description=Domains (exact or *.suffix) launch_vm's network may list; empty: none."`
	Open    bool     `json:"open" jsonschema:"description=launch_vm may ask for the host's network (network: open)."`
}

func (s *Service) sessionTools() []server.ServerTool {
	return []server.ServerTool{newTool[SessionInfoInput, SessionInfoOutput](s, toolSpec{
		name:    "session_info",
		timeout: 60 * time.Second,
		title:   "Conversation info",
		description: "Show this conversation's handle, machines (default ones marked), snapshots, idle timeouts and limits. " +
			"Pass the handle as session to continue the conversation later, even after the server restarts. Gives up after timeout_seconds (default 60).",
		readOnly:   true,
		idempotent: true,
	}, s.sessionInfo)}
}

func (s *Service) sessionInfo(ctx context.Context, _ mcp.CallToolRequest, _ SessionInfoInput) (*mcp.CallToolResult, error) {
	c := conversationFrom(ctx)
	_, c, err := s.broker.Default(ctx, c)
	if err != nil {
		return nil, err
	}
	lim := s.conversations.Limits()
	out := SessionInfoOutput{CreatedAt: c.CreatedAt, Machines: []SessionMachine{}, Snapshots: []SessionSnapshot{},
		Backends: s.broker.BackendNames(c.Principal), MaxMachines: lim.MaxMachines, MaxSnapshots: lim.MaxSnapshots,
		Network:     SessionNetwork{Default: s.network.Default.String(), Allowed: append([]string{}, s.network.Allow...), Open: s.network.Open},
		MaxMemoryMB: s.maxMemoryMB, MaxDiskMB: s.maxDiskMB}
	summaries := map[string]string{}
	for _, m := range c.Machines {
		sm := SessionMachine{ID: m.ID, Backend: m.Backend, Default: c.IsDefault(m.Backend, m.ID),
			LastUsed: m.LastUsed, Parked: m.Parked != nil}
		if be := s.broker.Backend(c.Principal, m.Backend); m.Parked == nil && be != nil && be.Has(backend.Reset) {
			if bm, err := s.broker.Find(ctx, c, m.ID); err == nil {
				if r, ok := bm.(backend.NetworkReporter); ok {
					sm.Network = r.Network().String()
				}
				if r, ok := bm.(backend.Resetter); ok {
					if ps, err := r.Processes(ctx); err == nil {
						for _, p := range ps {
							if p.Interpreter {
								continue
							}
							sm.Processes++
							if len(sm.TopProcesses) < 5 {
								sm.TopProcesses = append(sm.TopProcesses, SessionProcess{PID: p.PID, Command: p.Command, CPUSeconds: p.CPU.Seconds()})
							}
						}
						summaries[m.ID] = processSummary(ps)
					}
				}
			}
		}
		out.Machines = append(out.Machines, sm)
	}
	for _, sn := range c.Snapshots {
		out.Snapshots = append(out.Snapshots, SessionSnapshot{ID: sn.ID, Backend: sn.Backend, Machine: sn.Machine})
	}
	for b, d := range s.broker.IdleTimeouts(c.Principal) {
		if out.IdleTimeouts == nil {
			out.IdleTimeouts = map[string]string{}
		}
		out.IdleTimeouts[b] = d.String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Conversation %s (since %s)\nMachines:", c.Handle, c.CreatedAt.Format(time.RFC3339))
	sort.Slice(out.Machines, func(i, j int) bool {
		return out.Machines[i].Backend+out.Machines[i].ID < out.Machines[j].Backend+out.Machines[j].ID
	})
	for _, m := range out.Machines {
		fmt.Fprintf(&b, "\n- %s (%s)", m.ID, m.Backend)
		if m.Default {
			b.WriteString(" default")
		}
		if m.Parked {
			b.WriteString(" parked")
		}
		if sum := summaries[m.ID]; sum != "" {
			b.WriteString(": " + sum)
		}
	}
	if len(out.Machines) == 0 {
		b.WriteString(" none yet (the first tool call creates one)")
	}
	b.WriteString("\nSnapshots:")
	if len(out.Snapshots) == 0 {
		b.WriteString(" none")
	}
	for _, sn := range out.Snapshots {
		fmt.Fprintf(&b, "\n- %s (%s) of %s", sn.ID, sn.Backend, sn.Machine)
	}
	return structured(out, false, mcp.NewTextContent(b.String())), nil
}

type notesKey struct{}

// callNotes collects what a call should tell the model besides its result
// (e.g. that its machine was restored from a snapshot).
type callNotes struct {
	mu      sync.Mutex
	lines   []string
	ends    []func() // run when the call ends
	backend string   // of the machine the call used
	machine string   // the machine the call used
}

// noteMachine records the machine the call acts on, which its result
// names.
func noteMachine(ctx context.Context, backend, id string) {
	if n, ok := ctx.Value(notesKey{}).(*callNotes); ok {
		n.mu.Lock()
		n.backend, n.machine = backend, id
		n.mu.Unlock()
	}
}

// onEnd runs f when the call ends.
func (n *callNotes) onEnd(f func()) {
	n.mu.Lock()
	n.ends = append(n.ends, f)
	n.mu.Unlock()
}

// addNote records a note for the call's result.
func addNote(ctx context.Context, note string) {
	if n, ok := ctx.Value(notesKey{}).(*callNotes); ok {
		n.mu.Lock()
		n.lines = append(n.lines, note)
		n.mu.Unlock()
	}
}

// finish runs the end functions, once: when the handler is done, which is
// after the call's result when the call was given up at its deadline.
func (n *callNotes) finish() {
	n.mu.Lock()
	ends := n.ends
	n.ends = nil
	n.mu.Unlock()
	for _, f := range ends {
		f()
	}
}

// usedBackend is the backend of the machine the call used, "" if none yet.
func (n *callNotes) usedBackend() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.backend
}

// end adds the notes to the call's result.
func (n *callNotes) end(res *mcp.CallToolResult) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if res == nil || res.ResultType == mcp.ResultTypeInputRequired {
		return
	}
	for _, l := range n.lines {
		res.Content = append(res.Content, mcp.NewTextContent(l))
	}
	if n.machine != "" {
		// The model reads the text: it must see where the call ran. An item
		// of its own, so that a file's content stays the file's.
		res.Content = append([]mcp.Content{mcp.NewTextContent(machineTag(n.machine, n.backend))}, res.Content...)
	}
}

// machineTag is the first line of a result's text: the machine it ran on.
func machineTag(id, backend string) string { return "[machine " + id + " (" + backend + ")]" }
