package conversations

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrClosed is returned for a conversation closed after being idle.
var ErrClosed = errors.New("conversation closed")

// NewSession is the session argument that starts a new conversation.
const NewSession = "new"

// Limits bound one conversation.
type Limits struct {
	MaxMachines  int // live machines (parked ones count); 0 = no limit
	MaxSnapshots int // 0 = no limit
}

// Manager resolves handles to conversations and records what they own.
type Manager struct {
	store  Store
	limits Limits
	now    func() time.Time

	mu       sync.Mutex
	lastUsed map[string]time.Time // handle, or handle/backend/machine → last use not yet written

	unsavedMu sync.Mutex
	unsaved   map[string]*unsaved // handle → a new conversation not yet written (see Resolve)
}

// unsaved is a conversation that its first call began and nothing has
// written yet.
type unsaved struct {
	principal string
	mu        sync.Mutex    // held while it is being written
	c         *Conversation // nil once written
}

// NewManager returns a manager over store.
func NewManager(store Store, limits Limits) *Manager {
	return &Manager{store: store, limits: limits, now: func() time.Time { return time.Now().UTC() }, lastUsed: map[string]time.Time{}, unsaved: map[string]*unsaved{}}
}

// SetClock makes the manager read the time from now (default time.Now in
// UTC): the broker measures idleness against the manager's stamps, so a
// test that moves the broker's clock by hand moves this one too. Call it
// before the manager is used.
func (m *Manager) SetClock(now func() time.Time) { m.now = now }

// Store is the manager's store.
func (m *Manager) Store() Store { return m.store }

// Limits are the per-conversation limits.
func (m *Manager) Limits() Limits { return m.limits }

// Resolve returns the conversation a call belongs to. handle is the call's
// session argument: a handle, NewSession, or "" for the conversation bound
// to scope (a client's MCP session id, or "" for the principal's default
// conversation), created on first use. created reports a new conversation.
// A handle that is malformed, unknown or another principal's is
// ErrNotFound: a handle never silently starts a new conversation.
//
// A conversation begun by NewSession is not written yet: its first write
// (the machine it gets, most often) writes it whole, in one transaction
// instead of two, and the call that began it must Save it before its
// result names the handle.
func (m *Manager) Resolve(ctx context.Context, principal, handle, scope string) (c *Conversation, created bool, err error) {
	switch {
	case handle == NewSession:
		now := m.now()
		c = &Conversation{Handle: NewHandle(), Principal: principal, CreatedAt: now, LastUsed: now}
		m.unsavedMu.Lock()
		m.unsaved[c.Handle] = &unsaved{principal: principal, c: c}
		m.unsavedMu.Unlock()
		return c, true, nil
	case handle != "":
		if !ValidHandle(handle) {
			return nil, false, fmt.Errorf("session %q: %w (handles look like c- followed by 32 hex digits)", handle, ErrNotFound)
		}
		c, err = m.Load(ctx, principal, handle)
		if err != nil {
			return nil, false, fmt.Errorf("session %s: %w", handle, err)
		}
		if c.Closed != nil {
			return nil, false, fmt.Errorf("session %s was closed on %s after being idle; its machines were deleted and its snapshots kept (list_machines shows them): %w",
				handle, c.Closed.Format(time.RFC3339), ErrClosed)
		}
		m.touch(c.Handle)
		return c, false, nil
	}
	key := principal + "\x00" + scope
	m.mu.Lock()
	defer m.mu.Unlock() // one default conversation per key, even under concurrent first calls
	h, err := m.store.DefaultHandle(ctx, key)
	if err != nil {
		return nil, false, err
	}
	if h != "" {
		c, err = m.store.Load(ctx, principal, h)
		if err == nil && c.Closed != nil {
			err = ErrNotFound // a closed default conversation is replaced
		}
		if err == nil {
			m.lastUsed[c.Handle] = m.now()
			return c, false, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, false, err
		}
	}
	if c, err = m.create(ctx, principal); err != nil {
		return nil, false, err
	}
	winner, err := m.store.SetDefaultHandle(ctx, key, h, c.Handle)
	if err != nil {
		return nil, false, err
	}
	if winner != c.Handle {
		// Another replica made the default first: use that one, and drop
		// ours (it owns nothing yet).
		m.store.Delete(ctx, principal, c.Handle)
		if c, err = m.store.Load(ctx, principal, winner); err != nil {
			return nil, false, err
		}
		return c, false, nil
	}
	return c, true, nil
}

func (m *Manager) create(ctx context.Context, principal string) (*Conversation, error) {
	now := m.now()
	c := &Conversation{Handle: NewHandle(), Principal: principal, CreatedAt: now, LastUsed: now}
	if err := m.store.Create(ctx, c); err != nil {
		return nil, err
	}
	return c, nil
}

// Load returns the latest record of a conversation of the principal, one
// not yet written included (read-only: see BoltStore).
func (m *Manager) Load(ctx context.Context, principal, handle string) (*Conversation, error) {
	if u := m.unsavedOf(principal, handle); u != nil {
		u.mu.Lock()
		c := u.c
		u.mu.Unlock()
		if c != nil {
			return c, nil
		}
	}
	return m.store.Load(ctx, principal, handle)
}

// Update changes a conversation durably (see Store.Update). A conversation
// not yet written is written with the change, in one transaction.
func (m *Manager) Update(ctx context.Context, c *Conversation, fn func(*Conversation) error) (*Conversation, error) {
	if u := m.unsavedOf(c.Principal, c.Handle); u != nil {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.c != nil {
			next, err := clone(u.c)
			if err != nil {
				return nil, err
			}
			if err := fn(next); err != nil {
				return nil, err
			}
			if err := m.store.Create(ctx, next); err != nil {
				return nil, err
			}
			m.saved(c.Handle, u)
			return next, nil
		}
	}
	return m.store.Update(ctx, c.Principal, c.Handle, fn)
}

// Save writes a conversation that Resolve began, if nothing has written
// it yet: the call that began it saves it before its result names it.
func (m *Manager) Save(ctx context.Context, c *Conversation) error {
	u := m.unsavedOf(c.Principal, c.Handle)
	if u == nil {
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.c == nil {
		return nil
	}
	if err := m.store.Create(ctx, u.c); err != nil {
		return err
	}
	m.saved(c.Handle, u)
	return nil
}

// Forget drops a conversation that Resolve began and that is not to be
// kept (its first call failed to save it); it does nothing to a saved one.
func (m *Manager) Forget(c *Conversation) {
	m.unsavedMu.Lock()
	u := m.unsaved[c.Handle]
	delete(m.unsaved, c.Handle)
	m.unsavedMu.Unlock()
	if u != nil {
		// A handler still running (given up at its deadline) may hold u:
		// its change must find the conversation gone, not write it.
		u.mu.Lock()
		u.c = nil
		u.mu.Unlock()
	}
}

// unsavedOf returns the principal's unsaved conversation of that handle,
// or nil.
func (m *Manager) unsavedOf(principal, handle string) *unsaved {
	m.unsavedMu.Lock()
	defer m.unsavedMu.Unlock()
	if u := m.unsaved[handle]; u != nil && u.principal == principal {
		return u
	}
	return nil
}

// saved notes that u is written: the store has it now. u.mu is held.
func (m *Manager) saved(handle string, u *unsaved) {
	u.c = nil
	m.unsavedMu.Lock()
	delete(m.unsaved, handle)
	m.unsavedMu.Unlock()
}

// AddMachine records a machine the conversation created, as its default
// machine when asDefault. It fails, and records nothing, when the
// conversation is at its machine limit.
func (m *Manager) AddMachine(ctx context.Context, c *Conversation, backend, id string, asDefault bool) (*Conversation, error) {
	return m.Update(ctx, c, func(c *Conversation) error {
		c.AddMachine(backend, id, m.now())
		if asDefault {
			c.SetDefault(backend, id)
		}
		return nil
	})
}

// CheckMachineLimit says whether the conversation may create another machine.
func (m *Manager) CheckMachineLimit(c *Conversation) error {
	if m.limits.MaxMachines > 0 && len(c.Machines) >= m.limits.MaxMachines {
		return fmt.Errorf("this conversation has %d machines, its limit: delete one with delete_vm first", len(c.Machines))
	}
	return nil
}

// CheckSnapshotLimit says whether the conversation may take another snapshot.
func (m *Manager) CheckSnapshotLimit(c *Conversation) error {
	if m.limits.MaxSnapshots > 0 && len(c.Snapshots) >= m.limits.MaxSnapshots {
		return fmt.Errorf("this conversation has %d snapshots, its limit: delete one with delete_snapshot (list_machines lists them)", len(c.Snapshots))
	}
	return nil
}

// OwnerOf returns the principal's conversation that owns the machine. It
// reads the store's index, not every conversation, so that its cost does
// not grow with the number of conversations.
func (m *Manager) OwnerOf(ctx context.Context, principal, backend, id string) (*Conversation, error) {
	c, err := m.store.ByMachine(ctx, principal, backend, id)
	if err != nil {
		return nil, err
	}
	// The store checks this already; checking again keeps a faulty Store
	// implementation from handing out another principal's machine.
	if c.Principal != principal || c.Machine(backend, id) == nil {
		return nil, ErrNotFound
	}
	return c, nil
}

// SnapshotOwner returns the principal's conversation that owns a snapshot,
// through the store's index like OwnerOf.
func (m *Manager) SnapshotOwner(ctx context.Context, principal, id string) (*Conversation, *Snapshot, error) {
	c, err := m.store.BySnapshot(ctx, principal, id)
	if err != nil {
		return nil, nil, err
	}
	s := c.Snapshot(id)
	if c.Principal != principal || s == nil {
		return nil, nil, ErrNotFound
	}
	return c, s, nil
}

// Conversations lists the principal's conversations (closed ones
// included), through the store's index: calls on behalf of one principal
// should use it rather than Store().All, whose cost grows with every
// principal's conversations.
func (m *Manager) Conversations(ctx context.Context, principal string) ([]*Conversation, error) {
	all, err := m.store.ByPrincipal(ctx, principal)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(c *Conversation) bool { return c.Principal != principal }), nil
}

// Touch notes that a conversation and one of its machines were used now.
// Uses are kept in memory and written by Flush: a last-use time is not a
// binding, and writing it on every call would put an fsync on every call.
func (m *Manager) Touch(handle string) { m.touch(handle) }

func (m *Manager) touch(handle string) {
	m.mu.Lock()
	m.lastUsed[handle] = m.now()
	m.mu.Unlock()
}

// TouchMachine notes that a conversation's machine was used now.
func (m *Manager) TouchMachine(handle, backend, id string) {
	now := m.now()
	m.mu.Lock()
	m.lastUsed[handle] = now
	m.lastUsed[machineKey(handle, backend, id)] = now
	m.mu.Unlock()
}

func machineKey(handle, backend, id string) string { return handle + "/" + backend + "/" + id }

// LastUsed returns when a conversation was last used, counting uses not yet
// flushed.
func (m *Manager) LastUsed(c *Conversation) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.lastUsed[c.Handle]; ok && t.After(c.LastUsed) {
		return t
	}
	return c.LastUsed
}

// MachineLastUsed returns when a conversation's machine was last used.
func (m *Manager) MachineLastUsed(c *Conversation, mc *Machine) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.lastUsed[machineKey(c.Handle, mc.Backend, mc.ID)]; ok && t.After(mc.LastUsed) {
		return t
	}
	return mc.LastUsed
}

// Flush writes the pending last-use times; those of conversations not yet
// written (their first call still runs) wait for the next Flush.
func (m *Manager) Flush(ctx context.Context) error {
	m.unsavedMu.Lock()
	unwritten := make(map[string]bool, len(m.unsaved))
	for h := range m.unsaved {
		unwritten[h] = true
	}
	m.unsavedMu.Unlock()
	m.mu.Lock()
	pending := m.lastUsed
	m.lastUsed = map[string]time.Time{}
	m.mu.Unlock()
	all, err := m.store.All(ctx)
	if err != nil {
		return err
	}
	var errs []error
	written := make(map[string]bool, len(all))
	for _, c := range all {
		written[c.Handle] = true
		t, used := pending[c.Handle]
		if !used {
			continue
		}
		_, err := m.store.Update(ctx, c.Principal, c.Handle, func(c *Conversation) error {
			if t.After(c.LastUsed) {
				c.LastUsed = t
			}
			for i := range c.Machines {
				mc := &c.Machines[i]
				if mt, ok := pending[machineKey(c.Handle, mc.Backend, mc.ID)]; ok && mt.After(mc.LastUsed) {
					mc.LastUsed = mt
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	m.keepUnwritten(pending, written, unwritten)
	return errors.Join(errs...)
}

// keepUnwritten puts back, for the next Flush, the pending uses of
// conversations that were not written when Flush read the store (their
// first call still ran); the uses of conversations that are gone are
// dropped.
func (m *Manager) keepUnwritten(pending map[string]time.Time, written, unwritten map[string]bool) {
	m.unsavedMu.Lock()
	defer m.unsavedMu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, t := range pending {
		handle, _, _ := strings.Cut(key, "/")
		if written[handle] || !unwritten[handle] && m.unsaved[handle] == nil {
			continue
		}
		if later, ok := m.lastUsed[key]; !ok || t.After(later) {
			m.lastUsed[key] = t
		}
	}
}
