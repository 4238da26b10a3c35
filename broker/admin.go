package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
)

// The operator's actions: what the user who runs vmcp does to the machines
// and snapshots of a state directory from the command line (mcp-server
// machines, mcp-server snapshots), whichever principal's conversations own
// them. They keep the conversations consistent as the tools do: a machine
// or snapshot deleted is forgotten by the conversation that owned it, in
// the same steps as delete_vm and delete_snapshot (Delete, DeleteSnapshot).
// They read every conversation (Store.All), as Reap and Reconcile do: an
// operator acts on all of them.

// MachineHolder returns the conversation, of any principal, that refers to
// a machine of the named backend by its id or an earlier one; nil when
// none does.
func (b *Broker) MachineHolder(ctx context.Context, backendName, id string) (*conversations.Conversation, error) {
	all, err := b.conversations.Store().All(ctx)
	if err != nil {
		return nil, err
	}
	return MachineHolders(all, backendName)[id], nil
}

// MachineHolders maps each id (earlier ones too) of the named backend's
// machines that conversations of all refer to, to the conversation that
// does: should several, the one with the smallest handle, as
// Store.ByMachine.
func MachineHolders(all []*conversations.Conversation, backendName string) map[string]*conversations.Conversation {
	out := map[string]*conversations.Conversation{}
	for _, c := range all {
		for _, m := range c.Machines {
			if m.Backend != backendName {
				continue
			}
			for _, id := range append([]string{m.ID}, m.Previous...) {
				if h := out[id]; h == nil || c.Handle < h.Handle {
					out[id] = c
				}
			}
		}
	}
	return out
}

// SnapshotHolder returns the conversation, of any principal, that owns a
// snapshot of the named backend; nil when none does.
func (b *Broker) SnapshotHolder(ctx context.Context, backendName, id string) (*conversations.Conversation, error) {
	all, err := b.conversations.Store().All(ctx)
	if err != nil {
		return nil, err
	}
	return SnapshotHolders(all, backendName)[id], nil
}

// SnapshotHolders maps each of the named backend's snapshots that
// conversations of all own to the conversation that does (the one with the
// smallest handle, should several, as Store.BySnapshot).
func SnapshotHolders(all []*conversations.Conversation, backendName string) map[string]*conversations.Conversation {
	out := map[string]*conversations.Conversation{}
	for _, c := range all {
		for _, s := range c.Snapshots {
			if h := out[s.ID]; s.Backend == backendName && (h == nil || c.Handle < h.Handle) {
				out[s.ID] = c
			}
		}
	}
	return out
}

// Removal says what RemoveMachine did.
type Removal struct {
	// Owner is the conversation that referred to the machine, nil for
	// none; it refers to it no more.
	Owner *conversations.Conversation
	// Forgotten: the backend had no such machine any more (deleted
	// outside vmcp); only the conversation's record of it went.
	Forgotten bool
}

// RemoveMachine deletes a machine of be, whoever owns it: as delete_vm
// does when a conversation refers to it, and on the backend alone when
// none does. With forgetGone, a machine that be no longer has but that a
// conversation still refers to is forgotten: give it only where be has
// every machine of its name that the store records (a store of its own,
// not one that replicas with engines of their own share). An id that be
// does not know (and, with forgetGone, no conversation either) is
// backend.ErrNotFound.
func (b *Broker) RemoveMachine(ctx context.Context, be backend.Backend, id string, forgetGone bool) (Removal, error) {
	owner, err := b.MachineHolder(ctx, be.Name(), id)
	if err != nil {
		return Removal{}, err
	}
	_, err = be.Machine(ctx, id)
	switch {
	case err == nil && owner != nil:
		_, err := b.Delete(ctx, owner, id)
		return Removal{Owner: owner}, err
	case err == nil:
		if err := be.Delete(ctx, id); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return Removal{}, err
		}
		b.log.Info().Str("backend", be.Name()).Str("machine", id).Msg("deleted a machine that no conversation referred to")
		return Removal{}, nil
	case !errors.Is(err, backend.ErrNotFound):
		return Removal{Owner: owner}, err
	case owner == nil || !forgetGone:
		return Removal{}, fmt.Errorf("machine %q: %w", id, backend.ErrNotFound)
	}
	if err := b.forget(ctx, owner, be.Name(), id); err != nil {
		return Removal{Owner: owner}, err
	}
	return Removal{Owner: owner, Forgotten: true}, nil
}

// forget removes a machine that no longer exists from the conversation's
// record.
func (b *Broker) forget(ctx context.Context, c *conversations.Conversation, backendName, id string) error {
	_, err := b.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		if rec := c.Machine(backendName, id); rec != nil {
			c.RemoveMachine(backendName, rec.ID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget machine %s, which no longer exists: %w", id, err)
	}
	b.log.Info().Str("backend", backendName).Str("machine", id).Msg("forgot a machine that no longer exists")
	return nil
}

// DeleteSnapshot deletes a snapshot that conversation owner owns: first on
// its backend (one gone already counts as deleted), then from owner's
// record, so that a failure in between leaves a record that the next
// delete clears, never a snapshot that no one can see. It is
// conversations.ErrNotFound when owner does not own it.
func (b *Broker) DeleteSnapshot(ctx context.Context, owner *conversations.Conversation, id string) error {
	snap := owner.Snapshot(id)
	if snap == nil {
		return conversations.ErrNotFound
	}
	be := b.Backend(owner.Principal, snap.Backend)
	d, ok := be.(backend.SnapshotDeleter)
	if be == nil || !ok {
		return fmt.Errorf("snapshot %s is on backend %s, which this server cannot delete snapshots on", id, snap.Backend)
	}
	if err := d.DeleteSnapshot(ctx, id); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return err
	}
	if _, err := b.conversations.Update(ctx, owner, func(c *conversations.Conversation) error {
		c.Snapshots = slices.DeleteFunc(c.Snapshots, func(s conversations.Snapshot) bool { return s.ID == id })
		return nil
	}); err != nil {
		return fmt.Errorf("snapshot %s is deleted, but the conversation's record of it could not be updated (%w): delete it again", id, err)
	}
	return nil
}

// RemoveSnapshot deletes a snapshot of be, whoever owns it: as
// delete_snapshot does when a conversation owns it, and on the backend
// alone when none does. It returns the conversation that owned it, nil for
// none; an id that neither be nor any conversation knows is
// backend.ErrNotFound.
func (b *Broker) RemoveSnapshot(ctx context.Context, be backend.Backend, id string) (*conversations.Conversation, error) {
	owner, err := b.SnapshotHolder(ctx, be.Name(), id)
	if err != nil {
		return nil, err
	}
	if owner != nil {
		return owner, b.DeleteSnapshot(ctx, owner, id)
	}
	d, ok := be.(backend.SnapshotDeleter)
	if !ok {
		return nil, fmt.Errorf("snapshot %q: %w", id, backend.ErrNotFound) // a backend without snapshots has none
	}
	return nil, d.DeleteSnapshot(ctx, id)
}

// LegacyDefault reports whether a machine's tags mark the default machine
// of a version from before conversations, which Reconcile gives to the
// local user's default conversation.
func LegacyDefault(tags map[string]string) bool {
	return tags[legacyDefaultTag] == "default" && tags[TagConversation] == ""
}

// PruneOptions choose what Prune deletes.
type PruneOptions struct {
	// UnusedFor, when positive, also has Prune delete the machines of
	// conversations that last used them longer ago than this.
	UnusedFor time.Duration
	// DryRun has Prune report what it would do, and do nothing.
	DryRun bool
	// ForgetGone has Prune forget the conversations' records of machines
	// that be no longer has: only where be has every machine of its name
	// that the store records (see RemoveMachine).
	ForgetGone bool
}

// Pruned is a machine that Prune deleted (or, with DryRun, would delete).
type Pruned struct {
	// Machine is the machine; only its ID and Backend when it was gone
	// already (Forgotten).
	Machine backend.MachineInfo
	// Owner is the conversation that referred to it, nil for none.
	Owner *conversations.Conversation
	// LastUsed is when Owner last used it (zero without an owner).
	LastUsed time.Time
	// Forgotten: the machine no longer existed; only Owner's record of
	// it went.
	Forgotten bool
	// Err is why it could not be deleted, if it could not.
	Err error
}

// Prune deletes the machines of be that nothing will use again:
//   - those that no conversation refers to (a server killed between making
//     and recording one, a closed conversation whose machine could not be
//     deleted then, an older version's), except the default machine of a
//     version from before conversations, which the next server adopts;
//   - with UnusedFor, also those whose conversation last used them longer
//     ago than that (delete_vm's steps: the conversation forgets them, and
//     its next call gets a new machine);
//
// and, with ForgetGone, forgets the records of machines that no longer
// exist. It goes on past a machine it cannot delete (its Err says why).
func (b *Broker) Prune(ctx context.Context, be backend.Backend, opts PruneOptions) ([]Pruned, error) {
	all, err := b.conversations.Store().All(ctx)
	if err != nil {
		return nil, err
	}
	infos, err := be.Machines(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %s machines: %w", be.Name(), err)
	}
	holders := MachineHolders(all, be.Name())
	exists := map[string]bool{}
	var out []Pruned
	for _, info := range infos {
		exists[info.ID] = true
		owner := holders[info.ID]
		switch {
		case owner == nil && LegacyDefault(info.Tags):
			continue // Reconcile adopts it
		case owner == nil:
			out = append(out, Pruned{Machine: info})
		case opts.UnusedFor > 0 && owner.Closed == nil:
			rec := owner.Machine(be.Name(), info.ID)
			if used := b.conversations.MachineLastUsed(owner, rec); b.now().Sub(used) > opts.UnusedFor {
				out = append(out, Pruned{Machine: info, Owner: owner, LastUsed: used})
			}
		}
	}
	for _, c := range all {
		for _, m := range c.Machines {
			if opts.ForgetGone && m.Backend == be.Name() && m.Parked == nil && !exists[m.ID] {
				out = append(out, Pruned{Machine: backend.MachineInfo{ID: m.ID, Backend: m.Backend}, Owner: c, LastUsed: m.LastUsed, Forgotten: true})
			}
		}
	}
	if opts.DryRun {
		return out, nil
	}
	var errs []error
	for i := range out {
		p := &out[i]
		switch {
		case p.Forgotten:
			p.Err = b.forget(ctx, p.Owner, be.Name(), p.Machine.ID)
		case p.Owner != nil:
			_, p.Err = b.Delete(ctx, p.Owner, p.Machine.ID) // the owner is known: no second look through the store
		default:
			if p.Err = be.Delete(ctx, p.Machine.ID); errors.Is(p.Err, backend.ErrNotFound) {
				p.Err = nil
			}
		}
		if p.Err != nil {
			errs = append(errs, fmt.Errorf("machine %s: %w", p.Machine.ID, p.Err))
		}
	}
	return out, errors.Join(errs...)
}
