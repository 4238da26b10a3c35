package main

// The commands on machines and snapshots: list, rm, prune (see cli.go).

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	localbackend "github.com/vmcp-dev/vmcp/backend/local"
	"github.com/vmcp-dev/vmcp/broker"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/local"
)

// machineRow is one machine of `machines list`.
type machineRow struct {
	ID      string `json:"id"`
	Name    string `json:"name,omitempty"`
	Backend string `json:"backend"`
	// Status is running, stopped, or unknown while a server owns the
	// state directory.
	Status string `json:"status"`
	// Conversation is the tag of the conversation that owns the machine
	// (a hash of its handle, which stays secret; the machine's
	// vmcp.conversation tag), "" for none or unknown (see
	// machineListing.ConversationsKnown).
	Conversation string     `json:"conversation,omitempty"`
	Principal    string     `json:"principal,omitempty"`
	Default      bool       `json:"default,omitempty"` // the conversation's default machine
	CreatedAt    time.Time  `json:"created_at"`
	LastUsed     *time.Time `json:"last_used,omitempty"`
	DiskBytes    *int64     `json:"disk_bytes,omitempty"` // what its files take now
	MemoryMB     int64      `json:"memory_mb,omitempty"`
	DiskMB       int64      `json:"disk_mb,omitempty"` // its quota
	Network      string     `json:"network,omitempty"`
	FromSnapshot string     `json:"from_snapshot,omitempty"`
	// Legacy: the default machine of a version from before
	// conversations, which the next server adopts (prune keeps it).
	Legacy bool              `json:"legacy,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
}

// listingHeader opens `machines list --json` and `snapshots list --json`.
type listingHeader struct {
	StateDir string `json:"state_dir"`
	// ServerRunning: a server owns the state directory; ServerPID is its
	// pid where it can be told.
	ServerRunning bool `json:"server_running"`
	ServerPID     int  `json:"server_pid,omitempty"`
	// ConversationsKnown: the owners are known; otherwise (a server holds
	// the store) Conversation is empty for all.
	ConversationsKnown bool `json:"conversations_known"`
}

// header is the listing header of the opened state directory.
func (s *state) header() listingHeader {
	return listingHeader{StateDir: s.dir, ServerRunning: s.owned, ServerPID: s.serverPID, ConversationsKnown: s.store != nil}
}

// machineListing is `machines list --json`.
type machineListing struct {
	listingHeader
	Machines []machineRow `json:"machines"`
}

func machinesList(ctx context.Context, r *cliRun) error {
	s, err := r.openState()
	if err != nil {
		return err
	}
	defer s.close()
	infos, err := s.machines(ctx)
	if err != nil {
		return err
	}
	all, err := s.allConversations(ctx)
	if err != nil {
		return err
	}
	holders := broker.MachineHolders(all, localbackend.Name)
	out := machineListing{listingHeader: s.header(), Machines: []machineRow{}}
	for _, info := range infos {
		row := machineRow{ID: info.ID, Name: info.Name, Backend: info.Backend, Status: info.Status, CreatedAt: info.CreatedAt,
			MemoryMB: info.MemoryMiB, DiskMB: info.DiskMiB, Network: info.Network, FromSnapshot: info.FromSnapshot, Tags: info.Tags}
		if s.owned || row.Status == "" {
			row.Status = "unknown" // only the owner's engine knows what runs
		}
		if c := holders[info.ID]; c != nil {
			rec := c.Machine(localbackend.Name, info.ID)
			row.Conversation, row.Principal, row.Default = broker.ConversationTag(c.Handle), c.Principal, c.IsDefault(localbackend.Name, rec.ID)
			used := s.manager.MachineLastUsed(c, rec)
			row.LastUsed = &used
		} else {
			row.Legacy = broker.LegacyDefault(info.Tags)
		}
		if n, err := machineDisk(s.dir, info.ID); err == nil {
			row.DiskBytes = &n
		}
		out.Machines = append(out.Machines, row)
	}
	if r.flags.json {
		s.ownerNote(r.env.stderr)
		return writeJSON(r.env.stdout, out)
	}
	s.ownerNote(r.env.stderr)
	if len(out.Machines) == 0 {
		fmt.Fprintf(r.env.stdout, "no local machines in %s%s\n", s.dir, pick(s.missing, " (no vmcp state there yet)", ""))
		return nil
	}
	tw := tabwriter.NewWriter(r.env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tCONVERSATION\tPRINCIPAL\tCREATED\tLAST USED\tDISK")
	orphans, defaults := 0, false
	for _, m := range out.Machines {
		conv, principal := "unknown", "unknown"
		switch {
		case m.Conversation != "":
			conv, principal = m.Conversation, m.Principal
			if m.Default {
				conv += " *"
				defaults = true
			}
		case out.ConversationsKnown && m.Legacy:
			conv, principal = "(none: adopted at start)", "-"
		case out.ConversationsKnown:
			conv, principal = "(none)", "-"
			orphans++
		}
		lastUsed, disk := "-", "-"
		if m.LastUsed != nil {
			lastUsed = ago(*m.LastUsed)
		}
		if m.DiskBytes != nil {
			disk = humanBytes(*m.DiskBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, orDash(m.Name), m.Status, conv, principal, m.CreatedAt.Local().Format("2006-01-02 15:04"), lastUsed, disk)
	}
	tw.Flush()
	summary := plural(len(out.Machines), "local machine") + " in " + s.dir
	if orphans > 0 {
		summary += fmt.Sprintf("; %s no conversation refers to (`mcp-server machines prune` deletes %s)", plural(orphans, "machine"), pick(orphans == 1, "it", "them"))
	}
	if defaults {
		summary += "; * marks a conversation's default machine"
	}
	fmt.Fprintf(r.env.stdout, "\n%s\n", summary)
	return nil
}

// checkIDs checks, before anything is deleted, that every operand has the
// shape of an id of the kind (valid), so that a typo deletes nothing and
// no id names a path; other is the shape of the other kind, for a hint.
func checkIDs(ids []string, kind string, valid, other func(string) bool, otherCmd string) error {
	for _, id := range ids {
		switch {
		case valid(id):
		case other(id):
			return fmt.Errorf("%s is not a %s id: delete it with `mcp-server %s %s`", id, kind, otherCmd, id)
		default:
			return fmt.Errorf("%q is not a %s id (%s- and 20 hex digits, as `mcp-server %ss list` shows them); nothing was deleted", id, kind, kind[:1], kind)
		}
	}
	return nil
}

func machinesRemove(ctx context.Context, r *cliRun) error {
	if err := checkIDs(r.operands, "machine", local.ValidMachineID, local.ValidSnapshotID, "snapshots rm"); err != nil {
		return err
	}
	s, err := r.openState()
	if err != nil {
		return err
	}
	defer s.close()
	failed := 0
	for _, id := range r.operands {
		var rm broker.Removal
		err := fmt.Errorf("machine %q: %w", id, backend.ErrNotFound)
		if !s.missing {
			rm, err = s.broker.RemoveMachine(ctx, s.be, id, s.ownStore)
		}
		switch {
		case errors.Is(err, backend.ErrNotFound):
			fmt.Fprintf(r.env.stderr, "mcp-server: machine %s not found in %s: `mcp-server machines list` shows the machines\n", id, s.dir)
			failed++
		case err != nil:
			fmt.Fprintf(r.env.stderr, "mcp-server: machine %s: %v\n", id, err)
			failed++
		case rm.Forgotten:
			fmt.Fprintf(r.env.stdout, "machine %s no longer existed; conversation %s (%s) forgot it\n", id, broker.ConversationTag(rm.Owner.Handle), rm.Owner.Principal)
		case rm.Owner != nil:
			fmt.Fprintf(r.env.stdout, "deleted machine %s of conversation %s (%s)\n", id, broker.ConversationTag(rm.Owner.Handle), rm.Owner.Principal)
		default:
			fmt.Fprintf(r.env.stdout, "deleted machine %s (no conversation referred to it)\n", id)
		}
	}
	if failed > 0 {
		return errReported
	}
	return nil
}

func machinesPrune(ctx context.Context, r *cliRun) error {
	s, err := r.openState()
	if err != nil {
		return err
	}
	defer s.close()
	if s.missing {
		fmt.Fprintf(r.env.stdout, "nothing to prune: no vmcp state in %s yet\n", s.dir)
		return nil
	}
	opts := broker.PruneOptions{UnusedFor: r.flags.unusedFor, DryRun: true, ForgetGone: s.ownStore}
	plan, err := s.broker.Prune(ctx, s.be, opts)
	if err != nil {
		return err
	}
	// Measured before they go: what pruning frees.
	var freed int64
	for _, p := range plan {
		if n, err := machineDisk(s.dir, p.Machine.ID); err == nil && !p.Forgotten {
			freed += n
		}
	}
	done := plan
	if !r.flags.dryRun {
		opts.DryRun = false
		if done, err = s.broker.Prune(ctx, s.be, opts); err != nil && len(done) == 0 {
			return err
		}
	}
	verb, forgot := pick(r.flags.dryRun, "would delete", "deleted"), pick(r.flags.dryRun, "would forget", "forgot")
	deleted, forgotten, failed := 0, 0, 0
	for _, p := range done {
		switch {
		case p.Err != nil:
			fmt.Fprintf(r.env.stderr, "mcp-server: could not delete machine %s: %v\n", p.Machine.ID, p.Err)
			failed++
		case p.Forgotten:
			forgotten++
			fmt.Fprintf(r.env.stdout, "%s machine %s, which no longer exists: conversation %s (%s) referred to it\n", forgot, p.Machine.ID, broker.ConversationTag(p.Owner.Handle), p.Owner.Principal)
		default:
			deleted++
			why := "no conversation refers to it"
			if p.Owner != nil {
				why = fmt.Sprintf("conversation %s (%s) last used it %s", broker.ConversationTag(p.Owner.Handle), p.Owner.Principal, ago(p.LastUsed))
			}
			name := ""
			if p.Machine.Name != "" {
				name = fmt.Sprintf(" %q", p.Machine.Name)
			}
			fmt.Fprintf(r.env.stdout, "%s machine %s%s: %s\n", verb, p.Machine.ID, name, why)
		}
	}
	counts := plural(deleted, "machine")
	if forgotten > 0 {
		counts += fmt.Sprintf(" (and %s of machines gone already)", plural(forgotten, "record"))
	}
	switch {
	case len(done) == 0:
		within := ""
		if r.flags.unusedFor > 0 {
			within = " that used it within the last " + r.flags.unusedFor.String()
		}
		fmt.Fprintf(r.env.stdout, "nothing to prune in %s: every local machine belongs to a conversation%s\n", s.dir, within)
	case r.flags.dryRun:
		fmt.Fprintf(r.env.stdout, "dry run: %s would go, freeing %s; nothing was deleted\n", counts, humanBytes(freed))
	default:
		fmt.Fprintf(r.env.stdout, "pruned %s, freeing %s\n", counts, humanBytes(freed))
	}
	if failed > 0 {
		return errReported
	}
	return nil
}

// snapshotRow is one snapshot of `snapshots list`.
type snapshotRow struct {
	ID           string    `json:"id"`
	Name         string    `json:"name,omitempty"`
	Backend      string    `json:"backend"`
	Machine      string    `json:"machine"` // the machine it was taken from
	Conversation string    `json:"conversation,omitempty"`
	Principal    string    `json:"principal,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	SizeBytes    int64     `json:"size_bytes"`
	// Memory are the Python variables it carries.
	Memory []string `json:"memory,omitempty"`
}

// snapshotListing is `snapshots list --json`.
type snapshotListing struct {
	listingHeader
	Snapshots []snapshotRow `json:"snapshots"`
}

func snapshotsList(ctx context.Context, r *cliRun) error {
	s, err := r.openState()
	if err != nil {
		return err
	}
	defer s.close()
	snaps, err := s.snapshots(ctx)
	if err != nil {
		return err
	}
	all, err := s.allConversations(ctx)
	if err != nil {
		return err
	}
	owner := broker.SnapshotHolders(all, localbackend.Name)
	out := snapshotListing{listingHeader: s.header(), Snapshots: []snapshotRow{}}
	for _, sn := range snaps {
		row := snapshotRow{ID: sn.ID, Name: sn.Name, Backend: sn.Backend, Machine: sn.Machine, CreatedAt: sn.CreatedAt, SizeBytes: sn.SizeBytes, Memory: sn.Memory}
		if c := owner[sn.ID]; c != nil {
			row.Conversation, row.Principal = broker.ConversationTag(c.Handle), c.Principal
		}
		out.Snapshots = append(out.Snapshots, row)
	}
	s.ownerNote(r.env.stderr)
	if r.flags.json {
		return writeJSON(r.env.stdout, out)
	}
	if len(out.Snapshots) == 0 {
		fmt.Fprintf(r.env.stdout, "no local snapshots in %s%s\n", s.dir, pick(s.missing, " (no vmcp state there yet)", ""))
		return nil
	}
	tw := tabwriter.NewWriter(r.env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tFROM MACHINE\tCONVERSATION\tPRINCIPAL\tCREATED\tSIZE\tPYTHON")
	var total int64
	for _, sn := range out.Snapshots {
		conv, principal := "unknown", "unknown"
		switch {
		case sn.Conversation != "":
			conv, principal = sn.Conversation, sn.Principal
		case out.ConversationsKnown:
			conv, principal = "(none)", "-"
		}
		python := "-"
		if len(sn.Memory) > 0 {
			python = plural(len(sn.Memory), "variable")
		}
		total += sn.SizeBytes
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sn.ID, orDash(sn.Name), sn.Machine, conv, principal, sn.CreatedAt.Local().Format("2006-01-02 15:04"), humanBytes(sn.SizeBytes), python)
	}
	tw.Flush()
	fmt.Fprintf(r.env.stdout, "\n%s in %s, %s\n", plural(len(out.Snapshots), "local snapshot"), s.dir, humanBytes(total))
	return nil
}

func snapshotsRemove(ctx context.Context, r *cliRun) error {
	if err := checkIDs(r.operands, "snapshot", local.ValidSnapshotID, local.ValidMachineID, "machines rm"); err != nil {
		return err
	}
	s, err := r.openState()
	if err != nil {
		return err
	}
	defer s.close()
	failed := 0
	for _, id := range r.operands {
		var owner *conversations.Conversation
		err := fmt.Errorf("snapshot %q: %w", id, backend.ErrNotFound)
		if !s.missing {
			owner, err = s.broker.RemoveSnapshot(ctx, s.be, id)
		}
		switch {
		case errors.Is(err, backend.ErrNotFound):
			fmt.Fprintf(r.env.stderr, "mcp-server: snapshot %s not found in %s: `mcp-server snapshots list` shows the snapshots\n", id, s.dir)
			failed++
		case err != nil:
			fmt.Fprintf(r.env.stderr, "mcp-server: snapshot %s: %v\n", id, err)
			failed++
		case owner != nil:
			fmt.Fprintf(r.env.stdout, "deleted snapshot %s of conversation %s (%s)\n", id, broker.ConversationTag(owner.Handle), owner.Principal)
		default:
			fmt.Fprintf(r.env.stdout, "deleted snapshot %s (no conversation owned it)\n", id)
		}
	}
	if failed > 0 {
		return errReported
	}
	return nil
}
