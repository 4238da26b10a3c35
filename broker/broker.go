// Package broker gives each call the machine it acts on: a conversation's
// one default machine (created on first use, on the server's preferred
// backend) or a machine named by id or name, checked against the caller.
// It holds the machine busy for the call so that the idle reaper does not
// park it underneath, relaunches a machine that was parked, and reports
// what happened on the way (restored from a snapshot) as notes for the
// caller to show. It also reaps idle machines and conversations and, at
// start, reconciles the backends' machines with the conversations.
//
// The MCP tools (package tools) sit above it: a tool handler decodes its
// arguments, acquires a machine, calls it and shapes the result.
package broker

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
)

// Config configures a Broker.
type Config struct {
	// Backends in order of preference: the first is where new default
	// machines are created. Required.
	Backends []backend.Backend
	// BackendsFor, if set, gives the backends of a principal that brought
	// its own credentials (nil: the server's Backends).
	BackendsFor func(principal string) []backend.Backend
	// Conversations keeps the conversations. Required.
	Conversations *conversations.Manager
	// Instance names this server on the machines it creates.
	Instance string
	// Idle is each backend's idle timeout (absent or 0: machines stay).
	Idle map[string]time.Duration
	// ConversationTTL closes conversations idle this long (0: never).
	ConversationTTL time.Duration
	// SnapshotTTL deletes the snapshots of conversations closed this long
	// ago (0: they are kept until deleted).
	SnapshotTTL time.Duration
	// LocalPrincipal is the principal of a stdio server's user, whose
	// default conversation adopts the machines of versions from before
	// conversations.
	LocalPrincipal string
	// Now is the clock of idle and time-to-live decisions and of the
	// times the broker records (default time.Now): tests move it by hand
	// instead of waiting for timeouts.
	Now func() time.Time
	Log zerolog.Logger
}

// Broker hands out machines to calls; see the package comment.
type Broker struct {
	backends       []backend.Backend
	backendsFor    func(principal string) []backend.Backend
	conversations  *conversations.Manager
	instance       string
	idle           map[string]time.Duration
	ttl            time.Duration
	snapshotTTL    time.Duration
	localPrincipal string
	now            func() time.Time
	log            zerolog.Logger

	// mu guards relaunching parked machines and the maps below, so that
	// the reaper never parks a machine a call is using.
	mu      sync.Mutex
	idled   map[string]int64 // machine key → use stamp when it was stopped
	busy    map[string]int   // machine key → calls using it
	parking map[string]bool  // machine key → being parked now
}

// New returns a broker.
func New(cfg Config) (*Broker, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("no backend configured")
	}
	if cfg.Conversations == nil {
		return nil, errors.New("no session store configured")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Broker{backends: cfg.Backends, backendsFor: cfg.BackendsFor, conversations: cfg.Conversations, instance: cfg.Instance,
		idle: cfg.Idle, ttl: cfg.ConversationTTL, snapshotTTL: cfg.SnapshotTTL, localPrincipal: cfg.LocalPrincipal, now: cfg.Now, log: cfg.Log,
		idled: map[string]int64{}, busy: map[string]int{}, parking: map[string]bool{}}, nil
}

// Lease is a machine held for one call: the reaper leaves it alone until
// Release, from which its idle time counts.
type Lease struct {
	Machine backend.Machine
	// Notes say what happened to the machine on the way, for the call's
	// result (e.g. that it was relaunched from the snapshot it was parked
	// as).
	Notes   []string
	release func()
}

// Release gives the machine back; once is enough, more is harmless.
func (l *Lease) Release() {
	if l != nil && l.release != nil {
		l.release()
		l.release = nil
	}
}

// Acquire returns the machine a call acts on, held until the lease is
// released: the machine named by id (by its id, or the name it was
// launched with), which the conversation's principal must own, or without
// an id the conversation's default machine, created on first use on the
// preferred backend. The machine must have capability need; when it does
// not, the error says which backend can.
func (b *Broker) Acquire(ctx context.Context, c *conversations.Conversation, id string, need backend.Capability) (*Lease, error) {
	l := &Lease{}
	var m backend.Machine
	var err error
	if id == "" {
		m, err = b.defaultMachine(ctx, c, l)
	} else {
		m, err = b.find(ctx, c, id, l)
	}
	if err != nil {
		l.Release()
		return nil, err
	}
	if be := b.Backend(c.Principal, m.Backend()); be != nil && !be.Has(need) {
		l.Release()
		return nil, b.unsupported(c.Principal, m.Backend(), need)
	}
	l.Machine = m
	return l, nil
}

// unsupported says that a machine's backend lacks a capability, and how to
// reach a machine that has it.
func (b *Broker) unsupported(principal, name string, need backend.Capability) error {
	e := &backend.UnsupportedError{Backend: name, Capability: need}
	if other := b.BackendFor(principal, need); other != nil {
		e.Hint = fmt.Sprintf("launch_vm with backend %q makes a %s machine the conversation's machine", other.Name(), other.Name())
	} else {
		e.Hint = "no backend configured on this server can"
	}
	return e
}

// ErrMachineNotFound is the answer for a machine that does not exist or is
// not the caller's: the two are never told apart.
func ErrMachineNotFound(id string) error {
	return fmt.Errorf("machine %q not found; list_machines shows your machines", id)
}

// Find returns a machine the conversation's principal owns, by id or by
// the name it was launched with, without holding it.
func (b *Broker) Find(ctx context.Context, c *conversations.Conversation, id string) (backend.Machine, error) {
	return b.find(ctx, c, id, nil)
}

// find is Find, holding the machine for l when l is not nil.
func (b *Broker) find(ctx context.Context, c *conversations.Conversation, id string, l *Lease) (backend.Machine, error) {
	principal := c.Principal
	for _, be := range b.Backends(principal) {
		if !be.Recognizes(id) {
			continue
		}
		owner, err := b.conversations.OwnerOf(ctx, principal, be.Name(), id)
		if errors.Is(err, conversations.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m, err := b.open(ctx, owner, be, id, l)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		return m, err
	}
	// By name, among the caller's machines.
	var match []backend.MachineInfo
	for _, be := range b.Backends(principal) {
		infos, err := b.OwnedMachines(ctx, principal, be)
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
		owner, err := b.conversations.OwnerOf(ctx, principal, match[0].Backend, match[0].ID)
		if err != nil {
			return nil, ErrMachineNotFound(id)
		}
		return b.open(ctx, owner, b.Backend(principal, match[0].Backend), match[0].ID, l)
	}
	if len(match) > 1 {
		return nil, fmt.Errorf("%d of your machines are named %q; pass the machine id instead (list_machines shows them)", len(match), id)
	}
	return nil, ErrMachineNotFound(id)
}

// OwnedMachines lists be's machines that the principal owns.
func (b *Broker) OwnedMachines(ctx context.Context, principal string, be backend.Backend) ([]backend.MachineInfo, error) {
	mine, err := b.conversations.Conversations(ctx, principal)
	if err != nil {
		return nil, err
	}
	owned := map[string]bool{}
	for _, c := range mine {
		for _, m := range c.Machines {
			if m.Backend == be.Name() {
				owned[m.ID] = true
			}
		}
	}
	if len(owned) == 0 {
		return nil, nil
	}
	infos, err := be.Machines(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %s machines: %w", be.Name(), err)
	}
	var out []backend.MachineInfo
	for _, info := range infos {
		if owned[info.ID] {
			out = append(out, info)
		}
	}
	return out, nil
}

// Backends are the backends of a principal's calls, preferred first: its
// own (with its own credentials) when it brought any, else the server's.
func (b *Broker) Backends(principal string) []backend.Backend {
	if b.backendsFor != nil {
		if bs := b.backendsFor(principal); bs != nil {
			return bs
		}
	}
	return b.backends
}

// BackendNames are the names of Backends(principal).
func (b *Broker) BackendNames(principal string) []string {
	var names []string
	for _, be := range b.Backends(principal) {
		names = append(names, be.Name())
	}
	return names
}

// OnlyLocal reports whether the principal's machines all run on the local
// engine.
func (b *Broker) OnlyLocal(principal string) bool {
	for _, be := range b.Backends(principal) {
		if be.Name() != "local" {
			return false
		}
	}
	return true
}

// Backend returns the principal's backend of that name, or nil.
func (b *Broker) Backend(principal, name string) backend.Backend {
	for _, be := range b.Backends(principal) {
		if be.Name() == name {
			return be
		}
	}
	return nil
}

// BackendFor is the principal's first backend with capability c, or nil.
func (b *Broker) BackendFor(principal string, c backend.Capability) backend.Backend {
	for _, be := range b.Backends(principal) {
		if be.Has(c) {
			return be
		}
	}
	return nil
}

// IdleTimeouts are the idle timeouts of the principal's backends.
func (b *Broker) IdleTimeouts(principal string) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, d := range b.idle {
		if d > 0 && b.Backend(principal, name) != nil {
			out[name] = d
		}
	}
	return out
}

// Default returns the conversation's default machine, nil when it has
// none yet, migrating the record of an older version first (see
// conversations.Conversation.MigrateDefault).
func (b *Broker) Default(ctx context.Context, c *conversations.Conversation) (*conversations.MachineRef, *conversations.Conversation, error) {
	latest, err := b.conversations.Load(ctx, c.Principal, c.Handle)
	if err != nil {
		return nil, c, err
	}
	c = latest
	if len(c.Defaults) > 0 {
		updated, err := b.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
			c.MigrateDefault(b.BackendNames(c.Principal))
			return nil
		})
		if err != nil {
			return nil, c, fmt.Errorf("migrate the conversation's default machine: %w", err)
		}
		c = updated
	}
	return c.Default, c, nil
}

// defaultMachine is the conversation's default machine, created (and
// recorded) on the preferred backend on first use.
func (b *Broker) defaultMachine(ctx context.Context, c *conversations.Conversation, l *Lease) (backend.Machine, error) {
	ref, c, err := b.Default(ctx, c)
	if err != nil {
		return nil, err
	}
	if ref != nil {
		be := b.Backend(c.Principal, ref.Backend)
		if be == nil {
			return nil, fmt.Errorf("the conversation's machine %s runs on %s, which this server no longer has configured; configure it again, or launch_vm to give the conversation a new machine", ref.ID, ref.Backend)
		}
		m, err := b.open(ctx, c, be, ref.ID, l)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
		// Gone behind our back (deleted outside the server): forget it and
		// start a fresh default below.
		b.log.Warn().Str("backend", ref.Backend).Str("machine", ref.ID).Msg("the default machine of a conversation no longer exists; creating a new one")
		if c, err = b.conversations.Update(ctx, c, func(c *conversations.Conversation) error { c.RemoveMachine(ref.Backend, ref.ID); return nil }); err != nil {
			return nil, err
		}
		l.Notes = append(l.Notes, fmt.Sprintf("The conversation's machine %s no longer existed (deleted outside this server); a new machine was created, without its files.", ref.ID))
	}
	if err := b.conversations.CheckMachineLimit(c); err != nil {
		return nil, err
	}
	be := b.Backends(c.Principal)[0]
	// Named after its conversation, so that lists of several tell them apart.
	info, err := be.Create(ctx, backend.MachineSpec{Name: "default-" + ConversationTag(c.Handle)[:6], Tags: b.MachineTags(c, nil)})
	if err != nil {
		return nil, fmt.Errorf("create the conversation's %s machine: %w", be.Name(), err)
	}
	if c, err = b.Own(ctx, c, be, info.ID, true); err != nil {
		return nil, err
	}
	b.log.Info().Str("backend", be.Name()).Str("machine", info.ID).Msg("created a conversation's default machine")
	return b.open(ctx, c, be, info.ID, l)
}

// open returns a machine of conversation c (named by its id or an earlier
// one), relaunching it first if it was parked while idle, and notes its
// use. With l, the machine is held busy until l is released, so that the
// reaper does not park it under the call.
// c must be the latest record.
func (b *Broker) open(ctx context.Context, c *conversations.Conversation, be backend.Backend, id string, l *Lease) (backend.Machine, error) {
	if rec := c.Machine(be.Name(), id); rec != nil {
		id = rec.ID
	}
	if l != nil {
		if err := b.hold(ctx, c.Handle+"/"+be.Name()+"/"+id, l); err != nil {
			return nil, err
		}
		if latest, err := b.conversations.Load(ctx, c.Principal, c.Handle); err == nil {
			c = latest // the reaper may have parked it before we held it
		}
		if rec := c.Machine(be.Name(), id); rec != nil && rec.Parked != nil {
			var err error
			if id, err = b.unpark(ctx, c, be, rec.ID, l); err != nil {
				return nil, err
			}
			// The reaper knows the relaunched machine by its new id: held
			// only under the old one, it would park it under the call.
			if err := b.hold(ctx, c.Handle+"/"+be.Name()+"/"+id, l); err != nil {
				return nil, err
			}
		}
	}
	m, err := be.Machine(ctx, id)
	if err != nil {
		return nil, err
	}
	b.conversations.TouchMachine(c.Handle, be.Name(), id)
	if l != nil {
		// A machine is idle from the end of its last call, not the start:
		// a call longer than the idle timeout must not have its machine
		// stopped (and its Python state lost) as soon as it ends. The use
		// is noted before the hold goes, so that the reaper never sees the
		// machine free with the old time.
		handle, name, release := c.Handle, be.Name(), l.release
		l.release = func() {
			b.conversations.TouchMachine(handle, name, id)
			if release != nil {
				release()
			}
		}
	}
	return m, nil
}

// hold marks a machine busy until l is released, waiting first while the
// reaper parks it.
func (b *Broker) hold(ctx context.Context, key string, l *Lease) error {
	for {
		b.mu.Lock()
		if !b.parking[key] {
			b.busy[key]++
			b.mu.Unlock()
			break
		}
		b.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	prev := l.release
	l.release = func() {
		if prev != nil {
			prev()
		}
		b.mu.Lock()
		if b.busy[key]--; b.busy[key] <= 0 {
			delete(b.busy, key)
		}
		b.mu.Unlock()
	}
	return nil
}

// unpark relaunches a machine that was parked while idle, from its
// snapshot, and records its new id (the old one keeps working). One at a
// time: two calls on a parked machine must not relaunch it twice.
func (b *Broker) unpark(ctx context.Context, c *conversations.Conversation, be backend.Backend, id string, l *Lease) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.conversations.Load(ctx, c.Principal, c.Handle) // the latest record
	if err != nil {
		return "", err
	}
	rec := c.Machine(be.Name(), id)
	if rec == nil {
		return "", backend.ErrNotFound
	}
	if rec.Parked == nil { // relaunched meanwhile
		return rec.ID, nil
	}
	snap, name := rec.Parked.Snapshot, cmp.Or(rec.Parked.Name, "restored")
	info, err := be.Create(ctx, backend.MachineSpec{Name: name, FromSnapshot: snap, Tags: b.MachineTags(c, nil)})
	if err != nil {
		return "", fmt.Errorf("machine %s was idle and parked as snapshot %s; relaunching it failed: %w", id, snap, err)
	}
	_, err = b.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		rec := c.Machine(be.Name(), id)
		if rec == nil {
			return conversations.ErrNotFound
		}
		if c.IsDefault(be.Name(), rec.ID) {
			c.SetDefault(be.Name(), info.ID)
		}
		rec.Previous = append(rec.Previous, rec.ID)
		rec.ID, rec.Parked, rec.LastUsed = info.ID, nil, b.now().UTC()
		return nil
	})
	if err != nil {
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		be.Delete(cleanup, info.ID)
		return "", fmt.Errorf("record the relaunched machine: %w", err)
	}
	b.log.Info().Str("backend", be.Name()).Str("machine", id).Str("now", info.ID).Str("snapshot", snap).Msg("relaunched a parked machine")
	// The parking snapshot served its purpose: it would only cost storage.
	if d, ok := be.(backend.SnapshotDeleter); ok {
		if err := d.DeleteSnapshot(ctx, snap); err != nil && !errors.Is(err, backend.ErrNotFound) {
			b.log.Warn().Err(err).Str("snapshot", snap).Msg("could not delete the snapshot of a restored machine")
		}
	}
	l.Notes = append(l.Notes, fmt.Sprintf("Machine %s had been idle, so it was saved as snapshot %s and stopped; it was restored from that snapshot as machine %s (files kept; running processes and memory were not).", id, snap, info.ID))
	return info.ID, nil
}

// Launch creates a machine for the conversation on be and makes it the
// conversation's default machine, recorded before it is returned.
func (b *Broker) Launch(ctx context.Context, c *conversations.Conversation, be backend.Backend, spec backend.MachineSpec) (backend.MachineInfo, error) {
	if err := b.conversations.CheckMachineLimit(c); err != nil {
		return backend.MachineInfo{}, err
	}
	spec.Tags = b.MachineTags(c, spec.Tags)
	info, err := be.Create(ctx, spec)
	if err != nil {
		return backend.MachineInfo{}, err
	}
	if _, err := b.Own(ctx, c, be, info.ID, true); err != nil {
		return backend.MachineInfo{}, err
	}
	b.log.Info().Str("backend", be.Name()).Str("machine", info.ID).Str("snapshot", spec.FromSnapshot).Msg("launched a machine")
	return info, nil
}

// Delete deletes a machine the caller's principal owns (by id or name) and
// forgets it.
func (b *Broker) Delete(ctx context.Context, c *conversations.Conversation, id string) (backend.Machine, error) {
	m, err := b.Find(ctx, c, id)
	if err != nil {
		return nil, err
	}
	owner, err := b.conversations.OwnerOf(ctx, c.Principal, m.Backend(), m.ID())
	if err != nil {
		return nil, ErrMachineNotFound(id)
	}
	if err := b.Backend(c.Principal, m.Backend()).Delete(ctx, m.ID()); err != nil {
		return nil, err
	}
	if _, err := b.conversations.Update(ctx, owner, func(c *conversations.Conversation) error {
		c.RemoveMachine(m.Backend(), m.ID())
		return nil
	}); err != nil {
		return nil, fmt.Errorf("the machine was deleted but forgetting it failed: %w", err)
	}
	b.log.Info().Str("backend", m.Backend()).Str("machine", m.ID()).Msg("deleted a machine")
	return m, nil
}

// Own records a machine created for the conversation, durably, before any
// result announces it. If the store fails, the machine is deleted again so
// that nothing runs that no conversation owns.
func (b *Broker) Own(ctx context.Context, c *conversations.Conversation, be backend.Backend, id string, asDefault bool) (*conversations.Conversation, error) {
	updated, err := b.conversations.AddMachine(ctx, c, be.Name(), id, asDefault)
	if err != nil {
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := be.Delete(cleanup, id); derr != nil {
			b.log.Error().Err(derr).Str("machine", id).Msg("could not delete a machine whose binding failed to save")
		}
		return nil, fmt.Errorf("record the new machine: %w", err)
	}
	return updated, nil
}

// Tags put on every machine the server creates.
const (
	TagServer       = "vmcp.server"       // the server instance
	TagConversation = "vmcp.conversation" // ConversationTag of the owner
)

// ConversationTag names a conversation on the machines it creates: a hash
// of the handle, since the handle itself is a secret and tags are visible to
// whoever can list the account's machines.
func ConversationTag(handle string) string {
	sum := sha256.Sum256([]byte(handle))
	return hex.EncodeToString(sum[:8])
}

// MachineTags are the tags of a machine created for conversation c.
func (b *Broker) MachineTags(c *conversations.Conversation, extra map[string]string) map[string]string {
	tags := maps.Clone(extra)
	if tags == nil {
		tags = map[string]string{}
	}
	tags[TagServer] = b.instance
	tags[TagConversation] = ConversationTag(c.Handle)
	return tags
}
