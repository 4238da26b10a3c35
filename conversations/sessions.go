// Package sessions keeps conversations: which machines and snapshots each
// conversation owns, its default machine per backend, and who (which
// principal) owns it. A conversation is named by a handle that the model can
// pass back; handles, and every binding a tool result announces, are
// written to a Store before the result is returned, so that a restart (even
// kill -9) loses nothing that was announced.
package conversations

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"maps"
	"regexp"
	"slices"
	"time"
)

// ErrNotFound is returned for a conversation, machine or snapshot that does
// not exist or belongs to another principal: the two are never told apart.
var ErrNotFound = errors.New("not found")

// Conversation is what a handle names.
type Conversation struct {
	Handle    string    `json:"handle"`
	Principal string    `json:"principal"`
	CreatedAt time.Time `json:"created_at"`
	LastUsed  time.Time `json:"last_used"`
	// Default is the conversation's machine: every call that names no
	// machine acts on it, whatever the tool.
	Default *MachineRef `json:"default,omitempty"`
	// Defaults are the default machines per backend that versions before
	// one machine per conversation stored; MigrateDefault turns them into
	// Default, and nothing writes them any more.
	Defaults  map[string]string `json:"defaults,omitempty"`
	Machines  []Machine         `json:"machines,omitempty"`
	Snapshots []Snapshot        `json:"snapshots,omitempty"`
	// Closed is set when the conversation was closed after being idle past
	// its time to live: its machines are gone, its snapshots stay its
	// principal's.
	Closed *time.Time `json:"closed,omitempty"`
}

// MachineRef names a machine: its backend and id.
type MachineRef struct {
	Backend string `json:"backend"`
	ID      string `json:"id"`
}

// Machine is a machine a conversation owns.
type Machine struct {
	Backend   string    `json:"backend"`
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	LastUsed  time.Time `json:"last_used"`
	// Parked is set while the machine is saved as a snapshot and deleted
	// because it was idle; it is relaunched from the snapshot on next use.
	Parked *Parked `json:"parked,omitempty"`
	// Previous are the ids the machine had before it was relaunched from
	// its parked snapshot: results that named them still reach it.
	Previous []string `json:"previous,omitempty"`
}

// Parked records an idle machine that was snapshotted and deleted.
type Parked struct {
	Snapshot string    `json:"snapshot"`
	At       time.Time `json:"at"`
	// Name is the machine's name, which the machine relaunched from the
	// snapshot takes again.
	Name string `json:"name,omitempty"`
}

// Snapshot is a snapshot a conversation owns.
type Snapshot struct {
	Backend   string    `json:"backend"`
	ID        string    `json:"id"`
	Machine   string    `json:"machine"`
	CreatedAt time.Time `json:"created_at"`
}

// Machine returns the conversation's record of a machine (by its id or an
// earlier one), or nil.
func (c *Conversation) Machine(backend, id string) *Machine {
	for i := range c.Machines {
		m := &c.Machines[i]
		if m.Backend == backend && (m.ID == id || slices.Contains(m.Previous, id)) {
			return m
		}
	}
	return nil
}

// AddMachine records a new machine.
func (c *Conversation) AddMachine(backend, id string, now time.Time) {
	if c.Machine(backend, id) == nil {
		c.Machines = append(c.Machines, Machine{Backend: backend, ID: id, CreatedAt: now, LastUsed: now})
	}
}

// RemoveMachine forgets a machine (deleted); the conversation has no
// default machine any more if it was that one.
func (c *Conversation) RemoveMachine(backend, id string) {
	c.Machines = slices.DeleteFunc(c.Machines, func(m Machine) bool { return m.Backend == backend && m.ID == id })
	if c.IsDefault(backend, id) {
		c.Default = nil
	}
}

// SetDefault makes a machine the conversation's default machine.
func (c *Conversation) SetDefault(backend, id string) {
	c.Default = &MachineRef{Backend: backend, ID: id}
	c.Defaults = nil
}

// IsDefault reports whether the machine is the conversation's default.
func (c *Conversation) IsDefault(backend, id string) bool {
	return c.Default != nil && c.Default.Backend == backend && c.Default.ID == id
}

// MigrateDefault turns the per-backend defaults of a conversation stored
// by an older version into its one default machine: the one on the first
// backend of preferred that has one (else on the first backend by name),
// so that calls go on where they went before. The others stay the
// conversation's machines, reachable by id. It reports whether it changed
// c.
func (c *Conversation) MigrateDefault(preferred []string) bool {
	if len(c.Defaults) == 0 {
		return false
	}
	if c.Default == nil {
		names := slices.Sorted(maps.Keys(c.Defaults))
		names = append(slices.Clone(preferred), names...)
		for _, b := range names {
			if id := c.Defaults[b]; id != "" && c.Machine(b, id) != nil {
				c.Default = &MachineRef{Backend: b, ID: c.Machine(b, id).ID}
				break
			}
		}
	}
	c.Defaults = nil
	return true
}

// Snapshot returns the conversation's record of a snapshot, or nil.
func (c *Conversation) Snapshot(id string) *Snapshot {
	for i := range c.Snapshots {
		if c.Snapshots[i].ID == id {
			return &c.Snapshots[i]
		}
	}
	return nil
}

// Store keeps conversations durably. Every method is safe for concurrent
// use; Update is atomic per conversation. Conversations that Load, All,
// Update and the lookups return may be shared: never change them (change a
// conversation with Update, whose fn gets a private copy).
//
// The lookups (ByMachine, BySnapshot, ByPrincipal) use an index the store
// keeps in the same transactions as the conversations, so that their cost
// does not grow with the number of conversations. Like Load, they only
// return the principal's conversations, and only ones that hold what was
// asked for.
type Store interface {
	// Create stores a new conversation.
	Create(ctx context.Context, c *Conversation) error
	// Load returns a conversation of the principal (ErrNotFound otherwise).
	Load(ctx context.Context, principal, handle string) (*Conversation, error)
	// Update applies fn to the principal's conversation and stores the
	// result durably before returning it; when fn fails nothing is written.
	Update(ctx context.Context, principal, handle string, fn func(*Conversation) error) (*Conversation, error)
	// Delete removes a conversation.
	Delete(ctx context.Context, principal, handle string) error
	// All lists every conversation of every principal (for the reaper and
	// the reconciler). It reads every conversation: calls on behalf of one
	// principal use the lookups instead.
	All(ctx context.Context) ([]*Conversation, error)
	// ByMachine returns the principal's conversation that holds the
	// machine (by its id or an earlier one, as Conversation.Machine finds
	// it); ErrNotFound if none does. Should several, the one with the
	// smallest handle is returned.
	ByMachine(ctx context.Context, principal, backend, id string) (*Conversation, error)
	// BySnapshot returns the principal's conversation that holds the
	// snapshot (as Conversation.Snapshot finds it); ErrNotFound if none
	// does. Should several, the one with the smallest handle is returned.
	BySnapshot(ctx context.Context, principal, id string) (*Conversation, error)
	// ByPrincipal lists the principal's conversations, closed ones
	// included, ordered by handle.
	ByPrincipal(ctx context.Context, principal string) ([]*Conversation, error)
	// DefaultHandle returns the handle of the principal's default
	// conversation ("" if none).
	DefaultHandle(ctx context.Context, principal string) (string, error)
	// SetDefaultHandle makes handle the principal's default conversation if
	// the current one is still old ("" for none), and returns the default
	// after the call: handle, or the one another writer (a replica) set
	// first. It is a compare-and-swap.
	SetDefaultHandle(ctx context.Context, principal, old, handle string) (string, error)
	// Close releases the store.
	Close() error
}

// handleShape: "c-" and 32 hex digits (128 random bits).
var handleShape = regexp.MustCompile(`^c-[0-9a-f]{32}$`)

// NewHandle returns an unguessable conversation handle (128 random bits).
func NewHandle() string {
	b := make([]byte, 16)
	rand.Read(b)
	return "c-" + hex.EncodeToString(b)
}

// ValidHandle reports whether h has the shape of a handle, so that
// malformed input is refused before any lookup.
func ValidHandle(h string) bool { return handleShape.MatchString(h) }
