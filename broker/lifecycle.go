package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
)

// Lifecycle: machines that nobody uses are stopped (local) or parked as a
// snapshot and deleted (FastVM), conversations idle past their time to live
// are closed, and at start the machines a killed server left behind are
// found and dealt with. Nothing may be left running that no conversation
// owns: cloud machines cost money.

// legacyDefaultTag marks the default machine of servers from before
// conversations existed; such a machine joins the local user's default
// conversation so that its files are not lost.
const legacyDefaultTag = "vmcp"

// ReapResult counts what one pass of Reap did.
type ReapResult struct {
	Stopped, Parked, Closed int
	// SnapshotsExpired counts the snapshots of conversations closed longer
	// than the snapshot time to live, deleted.
	SnapshotsExpired int
}

// Reap stops or parks the machines idle past their backend's idle timeout,
// closes the conversations idle past the time to live, and deletes the
// snapshots of those closed past the snapshot time to live.
func (b *Broker) Reap(ctx context.Context) (ReapResult, error) {
	var r ReapResult
	all, err := b.conversations.Store().All(ctx)
	if err != nil {
		return r, err
	}
	now := b.now()
	var errs []error
	for _, c := range all {
		if c.Closed != nil {
			if b.snapshotTTL > 0 && len(c.Snapshots) > 0 && now.Sub(*c.Closed) > b.snapshotTTL {
				n, err := b.expireSnapshots(ctx, c)
				r.SnapshotsExpired += n
				if err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if b.ttl > 0 && now.Sub(b.conversations.LastUsed(c)) > b.ttl {
			if err := b.closeConversation(ctx, c); err != nil {
				errs = append(errs, err)
			} else {
				r.Closed++
			}
			continue
		}
		for i := range c.Machines {
			m := c.Machines[i]
			limit := b.idle[m.Backend]
			if limit <= 0 || m.Parked != nil || now.Sub(b.conversations.MachineLastUsed(c, &m)) < limit {
				continue
			}
			outcome, err := b.idleMachine(ctx, c, m)
			switch {
			case err != nil:
				errs = append(errs, err)
			case outcome == idleParked:
				r.Parked++
			case outcome == idleStopped:
				r.Stopped++
			}
		}
	}
	return r, errors.Join(errs...)
}

// expireSnapshots deletes the snapshots of a closed conversation, on their
// backends and then from its record, and returns how many went. A snapshot
// its backend cannot delete stays, and is tried again at the next pass.
func (b *Broker) expireSnapshots(ctx context.Context, c *conversations.Conversation) (int, error) {
	gone := map[string]bool{}
	var errs []error
	for _, sn := range c.Snapshots {
		d, ok := b.Backend(c.Principal, sn.Backend).(backend.SnapshotDeleter)
		if !ok {
			continue
		}
		if err := d.DeleteSnapshot(ctx, sn.ID); err != nil && !errors.Is(err, backend.ErrNotFound) {
			errs = append(errs, fmt.Errorf("expire snapshot %s of closed conversation %s: %w", sn.ID, c.Handle, err))
			continue
		}
		gone[sn.ID] = true
	}
	if len(gone) == 0 {
		return 0, errors.Join(errs...)
	}
	if _, err := b.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		c.Snapshots = slices.DeleteFunc(c.Snapshots, func(sn conversations.Snapshot) bool { return gone[sn.ID] })
		return nil
	}); err != nil {
		errs = append(errs, fmt.Errorf("snapshots of closed conversation %s are deleted, but its record could not say so: %w", c.Handle, err))
	}
	b.log.Info().Str("conversation", c.Handle).Int("snapshots", len(gone)).Msg("deleted the snapshots of a conversation closed past the snapshot time to live")
	return len(gone), errors.Join(errs...)
}

// idleOutcome is what idleMachine did.
type idleOutcome int

const (
	idleNothing idleOutcome = iota // stopped already, in use, or not a backend that idles
	idleStopped
	idleParked
)

// idleMachine stops or parks one idle machine, unless a call is using it.
func (b *Broker) idleMachine(ctx context.Context, c *conversations.Conversation, m conversations.Machine) (outcome idleOutcome, err error) {
	be := b.Backend(c.Principal, m.Backend)
	idler, ok := be.(backend.Idler)
	if !ok {
		return idleNothing, nil
	}
	key := machineKey(c, m)
	stamp := b.conversations.MachineLastUsed(c, &m).UnixNano()
	b.mu.Lock()
	if b.idled[key] == stamp || b.busy[key] > 0 {
		b.mu.Unlock()
		return idleNothing, nil // stopped already and unused since, or in use
	}
	b.parking[key] = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.parking, key)
		b.mu.Unlock()
	}()
	snap, err := idler.Idle(ctx, m.ID)
	if errors.Is(err, backend.ErrNotFound) {
		// Gone behind our back: forget it.
		_, err = b.conversations.Update(ctx, c, func(c *conversations.Conversation) error { c.RemoveMachine(m.Backend, m.ID); return nil })
		return idleNothing, err
	}
	if err != nil {
		return idleNothing, fmt.Errorf("idle %s machine %s: %w", m.Backend, m.ID, err)
	}
	if snap == "" {
		b.mu.Lock()
		b.idled[key] = stamp
		b.mu.Unlock()
		b.log.Info().Str("backend", m.Backend).Str("machine", m.ID).Msg("stopped an idle machine")
		return idleStopped, nil
	}
	parked := &conversations.Parked{Snapshot: snap, At: b.now().UTC(), Name: machineName(ctx, be, m.ID)}
	// Record the snapshot before the machine goes: a crash in between
	// leaves a machine that the next start's reconciler deletes, never a
	// conversation without its files.
	if _, err := b.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		if rec := c.Machine(m.Backend, m.ID); rec != nil {
			rec.Parked = parked
		}
		return nil
	}); err != nil {
		return idleNothing, fmt.Errorf("record parked machine %s: %w", m.ID, err)
	}
	if err := be.Delete(ctx, m.ID); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return idleNothing, fmt.Errorf("delete parked machine %s: %w", m.ID, err)
	}
	b.log.Info().Str("backend", m.Backend).Str("machine", m.ID).Str("snapshot", snap).Msg("parked an idle machine")
	return idleParked, nil
}

// machineKey names a machine of a conversation in the idle bookkeeping.
func machineKey(c *conversations.Conversation, m conversations.Machine) string {
	return c.Handle + "/" + m.Backend + "/" + m.ID
}

// closeConversation deletes the machines of a conversation idle past its
// time to live (ForeverVM's cannot be deleted and stay) and marks it
// closed; its snapshots stay its principal's.
func (b *Broker) closeConversation(ctx context.Context, c *conversations.Conversation) error {
	var errs []error
	for _, m := range c.Machines {
		if m.Parked != nil {
			continue // nothing runs; the snapshot is kept
		}
		be := b.Backend(c.Principal, m.Backend)
		if be == nil {
			continue
		}
		if err := be.Delete(ctx, m.ID); err != nil && !errors.Is(err, backend.ErrNotFound) {
			b.log.Warn().Err(err).Str("backend", m.Backend).Str("machine", m.ID).Msg("kept a machine of a closed conversation")
		}
	}
	_, err := b.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		now := b.now().UTC()
		c.Closed = &now
		for _, m := range c.Machines {
			if m.Parked != nil {
				c.Snapshots = append(c.Snapshots, conversations.Snapshot{Backend: m.Backend, ID: m.Parked.Snapshot, Machine: m.ID, CreatedAt: m.Parked.At})
			}
		}
		c.Machines, c.Default, c.Defaults = nil, nil, nil
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	b.log.Info().Str("conversation", ConversationTag(c.Handle)).Msg("closed an idle conversation")
	return errors.Join(errs...)
}

// ReconcileResult counts what Reconcile found.
type ReconcileResult struct {
	Orphans, Deleted, Adopted int
}

// Reconcile runs at start: machines this server instance created for a
// conversation that does not own them (the server was killed between
// creating and recording them) are deleted where the backend allows it;
// the default machine of a server from before conversations joins the
// local user's default conversation.
func (b *Broker) Reconcile(ctx context.Context) (ReconcileResult, error) {
	var r ReconcileResult
	all, err := b.conversations.Store().All(ctx)
	if err != nil {
		return r, err
	}
	owned := map[string]bool{}
	for _, c := range all {
		for _, m := range c.Machines {
			owned[m.Backend+"/"+m.ID] = true
		}
	}
	// The server's backends, and those of principals with credentials of
	// their own (each account once).
	sets := [][]backend.Backend{b.backends}
	for _, c := range all {
		sets = append(sets, b.Backends(c.Principal))
	}
	seen := map[backend.Backend]bool{}
	var bs []backend.Backend
	for _, set := range sets {
		for _, be := range set {
			if !seen[be] {
				seen[be] = true
				bs = append(bs, be)
			}
		}
	}
	var errs []error
	for _, be := range bs {
		infos, err := be.Machines(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s machines: %w", be.Name(), err))
			continue
		}
		for _, info := range infos {
			if owned[be.Name()+"/"+info.ID] {
				continue
			}
			switch {
			case info.Tags[TagServer] == b.instance && info.Tags[TagConversation] != "":
				r.Orphans++
				if err := be.Delete(ctx, info.ID); err != nil {
					b.log.Warn().Err(err).Str("backend", be.Name()).Str("machine", info.ID).Msg("could not delete an orphaned machine")
					continue
				}
				r.Deleted++
			case info.Tags[legacyDefaultTag] == "default" && info.Tags[TagConversation] == "":
				if err := b.adopt(ctx, be, info.ID); err != nil {
					errs = append(errs, err)
					continue
				}
				r.Adopted++
			}
		}
	}
	b.log.Info().Int("orphans", r.Orphans).Int("deleted", r.Deleted).Int("adopted", r.Adopted).Msg("reconciled machines with conversations")
	return r, errors.Join(errs...)
}

// adopt makes a legacy default machine the local user's default
// conversation's, as its default machine unless it has one.
func (b *Broker) adopt(ctx context.Context, be backend.Backend, id string) error {
	c, _, err := b.conversations.Resolve(ctx, b.localPrincipal, "", "")
	if err != nil {
		return err
	}
	_, err = b.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		c.AddMachine(be.Name(), id, b.now().UTC())
		c.MigrateDefault(b.BackendNames(c.Principal))
		if c.Default == nil {
			c.SetDefault(be.Name(), id)
		}
		return nil
	})
	return err
}

// machineName is a machine's name, or "" if it has none or the backend
// cannot list it (the relaunched machine is then named "restored").
func machineName(ctx context.Context, be backend.Backend, id string) string {
	infos, err := be.Machines(ctx)
	if err != nil {
		return ""
	}
	for _, info := range infos {
		if info.ID == id {
			return info.Name
		}
	}
	return ""
}
