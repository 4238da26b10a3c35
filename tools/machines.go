package tools

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
)

// LaunchVMInput is launch_vm's arguments.
type LaunchVMInput struct {
	Backend     string            `json:"backend,omitempty" jsonschema:"description=Where the machine runs: local (this host)\\, forevervm or fastvm\\, if the server is configured for it. Default: the snapshot's backend\\, else the server's default backend.,enum=local,enum=forevervm,enum=fastvm"`
	Name        string            `json:"name,omitempty" jsonschema:"description=A name for people; ids identify machines."`
	SnapshotID  string            `json:"snapshot_id,omitempty" jsonschema:"description=Start with the files of this snapshot (see list_machines)."`
	Tags        map[string]string `json:"tags,omitempty" jsonschema:"description=Labels stored with the machine."`
	MachineType string            `json:"machine_type,omitempty" jsonschema:"description=FastVM only: the machine's size\\, e.g. c1m2 (1 vCPU\\, 2 GiB) or c2m4. Default c1m2."`
	MemoryMB    int64             `json:"memory_mb,omitempty" jsonschema:"description=Local machines: memory limit in MiB (default: the server's; session_info gives the most it allows).,minimum=128"`
	DiskMB      int64             `json:"disk_mb,omitempty" jsonschema:"description=Local machines: disk quota of its files in MiB (default: the server's; session_info gives the most it allows).,minimum=16"`
	Network     *NetworkArg       `json:"network,omitempty" jsonschema:"description=What the machine may reach (local machines only): 'none' (the default unless session_info says otherwise); a list of domains (exact or *.suffix) within those session_info lists as allowed\\, reached over HTTP and HTTPS through vmcp's proxy (pip\\, git\\, npm and curl use it by themselves); or 'open' (the host's network) where the server enables it."`
	Count       int               `json:"count,omitempty" jsonschema:"description=How many machines to launch alike (default 1\\, at most 8)\\, each independent: with snapshot_id\\, copies of one snapshot's files (and Python variables) for parallel work. The last becomes the conversation's machine.,minimum=1,maximum=8"`
	CallTimeout
	SessionArg
}

// maxLaunchCount bounds launch_vm's count.
const maxLaunchCount = 8

// LaunchVMOutput is launch_vm's result.
type LaunchVMOutput struct {
	SessionResult
	Machine  string   `json:"machine" jsonschema:"description=The new machine's id; it is now the default machine."`
	Status   string   `json:"status" jsonschema:"description=The machine's status: running once launched (a local machine that could not start yet says stopped\\, and its first call tells why).,enum=running,enum=stopped,enum=provisioning"`
	Network  string   `json:"network,omitempty" jsonschema:"description=What the machine may reach: none\\, open (the host's network)\\, or 'allowlist: ' and its domains. Absent where the service decides (FastVM's firewall\\, ForeverVM)."`
	MemoryMB int64    `json:"memory_mb,omitempty" jsonschema:"description=Its memory limit in MiB (local machines)."`
	DiskMB   int64    `json:"disk_mb,omitempty" jsonschema:"description=Its disk quota in MiB (local machines)."`
	Machines []string `json:"machines,omitempty" jsonschema:"description=With count: every machine launched\\, in order (machine is the last)."`
}

// SnapshotVMInput is snapshot_vm's arguments.
type SnapshotVMInput struct {
	Machine string `json:"machine,omitempty" jsonschema:"description=Machine id; default: the default machine (created on first use)."`
	Name    string `json:"name,omitempty" jsonschema:"description=A name for the snapshot."`
	// IncludeMemory is a pointer: absent means true where the backend can.
	IncludeMemory *bool `json:"include_memory,omitempty" jsonschema:"description=Also save the Python variables (functions\\, classes and data defined in run_python; not open files\\, sockets or threads)\\, which a machine launched from the snapshot gets back at its first call. Default true on local machines; FastVM snapshots have files only; ForeverVM has no snapshots (its machines keep their memory themselves)."`
	CallTimeout
	SessionArg
}

// SnapshotVMOutput is snapshot_vm's result.
type SnapshotVMOutput struct {
	SessionResult
	SnapshotID string `json:"snapshot_id" jsonschema:"description=The snapshot's id\\, for launch_vm's snapshot_id."`
	Machine    string `json:"machine" jsonschema:"description=The machine the snapshot was taken from."`
	Status     string `json:"status" jsonschema:"description=Always 'created'.,enum=created"`
	SizeBytes  int64  `json:"size_bytes" jsonschema:"description=Disk space the snapshot takes."`
	// Memory lists the Python variables the snapshot carries.
	Memory []string `json:"memory,omitempty" jsonschema:"description=The Python variables the snapshot carries (include_memory)."`
}

// ListMachinesInput is list_machines's arguments (none).
type ListMachinesInput struct {
	CallTimeout
	SessionArg
}

// MachineEntry describes one machine.
type MachineEntry struct {
	ID           string            `json:"id" jsonschema:"description=The machine id; pass it as machine to other tools."`
	Backend      string            `json:"backend" jsonschema:"description=Where the machine runs.,enum=local,enum=forevervm,enum=fastvm"`
	Name         string            `json:"name,omitempty" jsonschema:"description=The name given at launch."`
	Tags         map[string]string `json:"tags,omitempty" jsonschema:"description=Labels stored with the machine."`
	Status       string            `json:"status" jsonschema:"description=running: its processes are live; stopped: it starts on next use.,enum=running,enum=stopped"`
	Default      bool              `json:"default" jsonschema:"description=This is this conversation's default machine on its backend."`
	CreatedAt    time.Time         `json:"created_at" jsonschema:"description=When it was launched (RFC 3339)."`
	FromSnapshot string            `json:"from_snapshot,omitempty" jsonschema:"description=The snapshot it was launched from."`
	Network      string            `json:"network,omitempty" jsonschema:"description=What it may reach: none\\, open\\, or 'allowlist: ' and its domains (local machines)."`
}

// SnapshotEntry describes one snapshot.
type SnapshotEntry struct {
	ID        string    `json:"id" jsonschema:"description=The snapshot id; pass it as snapshot_id to launch_vm."`
	Backend   string    `json:"backend" jsonschema:"description=Where the snapshot is kept.,enum=local,enum=forevervm,enum=fastvm"`
	Name      string    `json:"name,omitempty" jsonschema:"description=The name given when it was taken."`
	Machine   string    `json:"machine" jsonschema:"description=The machine it was taken from."`
	CreatedAt time.Time `json:"created_at" jsonschema:"description=When it was taken (RFC 3339)."`
	SizeBytes int64     `json:"size_bytes" jsonschema:"description=Disk space the snapshot takes, in bytes."`
}

// ListMachinesOutput is list_machines's result.
type ListMachinesOutput struct {
	SessionResult
	Machines  []MachineEntry  `json:"machines" jsonschema:"description=Your machines (of every conversation)\\, oldest first."`
	Snapshots []SnapshotEntry `json:"snapshots" jsonschema:"description=Your snapshots\\, oldest first."`
}

// DeleteVMInput is delete_vm's arguments.
type DeleteVMInput struct {
	Machine string `json:"machine" jsonschema:"description=Id of the machine to delete\\, with all its files."`
	CallTimeout
	SessionArg
}

// DeleteSnapshotInput is delete_snapshot's arguments.
type DeleteSnapshotInput struct {
	SnapshotID string `json:"snapshot_id" jsonschema:"description=Id of the snapshot to delete (see list_machines)."`
	CallTimeout
	SessionArg
}

// DeleteSnapshotOutput is delete_snapshot's result.
type DeleteSnapshotOutput struct {
	SessionResult
	SnapshotID string `json:"snapshot_id" jsonschema:"description=The deleted snapshot's id."`
	Status     string `json:"status" jsonschema:"description=Always 'deleted'.,enum=deleted"`
}

// DeleteVMOutput is delete_vm's result.
type DeleteVMOutput struct {
	SessionResult
	Machine string `json:"machine" jsonschema:"description=The deleted machine's id."`
	Status  string `json:"status" jsonschema:"description=Always 'deleted'.,enum=deleted"`
}

func (s *Service) machineTools() []server.ServerTool {
	return []server.ServerTool{
		newTool[LaunchVMInput, LaunchVMOutput](s, toolSpec{
			name:        "launch_vm",
			title:       "Launch a machine",
			description: "Create a new machine, empty or with the files of a snapshot, and make it the default machine for later calls.",
		}, s.launchVM),
		newTool[SnapshotVMInput, SnapshotVMOutput](s, toolSpec{
			name:        "snapshot_vm",
			title:       "Snapshot a machine",
			description: "Save a machine's files (not its running processes or Python state) as a snapshot that launch_vm can start new machines from.",
		}, s.snapshotVM),
		newTool[ListMachinesInput, ListMachinesOutput](s, toolSpec{
			name:        "list_machines",
			title:       "List machines and snapshots",
			description: "List every machine (with its status and whether it is the default) and every snapshot.",
			readOnly:    true,
			idempotent:  true,
		}, s.listMachines),
		newTool[DeleteVMInput, DeleteVMOutput](s, toolSpec{
			name:        "delete_vm",
			title:       "Delete a machine",
			description: "Stop a machine and delete it with all its files. Snapshots taken from it stay.",
			destructive: true,
			idempotent:  true,
		}, s.deleteVM),
		newTool[DeleteSnapshotInput, DeleteSnapshotOutput](s, toolSpec{
			name:        "delete_snapshot",
			title:       "Delete a snapshot",
			description: "Delete a snapshot of this conversation's (list_machines lists them, with their sizes) and free its disk space. Machines launched from it keep their files.",
			destructive: true,
			idempotent:  true,
		}, s.deleteSnapshot),
	}
}

func (s *Service) launchVM(ctx context.Context, _ mcp.CallToolRequest, in LaunchVMInput) (*mcp.CallToolResult, error) {
	c := conversationFrom(ctx)
	b, err := s.launchBackend(ctx, c, in)
	if err != nil {
		return nil, err
	}
	if in.MachineType != "" && !b.Has(backend.MachineTypes) {
		return nil, fmt.Errorf("machine_type is a FastVM option; %s machines have no types (leave it out, or launch with backend \"fastvm\")", b.Name())
	}
	policy, err := s.networkPolicy(in.Network)
	if err != nil {
		return nil, err
	}
	if s.maxMemoryMB > 0 && in.MemoryMB > s.maxMemoryMB {
		return nil, fmt.Errorf("memory_mb %d is above the %d MiB this server allows (--max-memory-mb)", in.MemoryMB, s.maxMemoryMB)
	}
	if s.maxDiskMB > 0 && in.DiskMB > s.maxDiskMB {
		return nil, fmt.Errorf("disk_mb %d is above the %d MiB this server allows (--max-disk-mb)", in.DiskMB, s.maxDiskMB)
	}
	if in.Count < 0 || in.Count > maxLaunchCount {
		return nil, fmt.Errorf("count %d: launch 1 to %d machines at once", in.Count, maxLaunchCount)
	}
	var launched []string
	var out LaunchVMOutput
	var text string
	for range max(in.Count, 1) {
		if out, text, err = s.launchOne(ctx, c, b, in, policy); err != nil {
			if len(launched) > 0 {
				err = fmt.Errorf("%w (launched before it: %s)", err, strings.Join(launched, ", "))
			}
			return nil, err
		}
		launched = append(launched, out.Machine)
	}
	if len(launched) > 1 {
		out.Machines = launched
		text = fmt.Sprintf("Launched %d %s machines: %s", len(launched), b.Name(), strings.Join(launched, ", "))
		if in.SnapshotID != "" {
			text += " from snapshot " + in.SnapshotID
		}
		text += fmt.Sprintf("; the last, %s, is now the conversation's machine: every tool call without machine acts on it.", out.Machine)
	}
	return structured(out, false, mcp.NewTextContent(text)), nil
}

// launchOne launches one machine for launchVM.
func (s *Service) launchOne(ctx context.Context, c *conversations.Conversation, b backend.Backend, in LaunchVMInput, policy *backend.Network) (LaunchVMOutput, string, error) {
	info, err := s.broker.Launch(ctx, c, b, backend.MachineSpec{Name: in.Name, Tags: in.Tags, FromSnapshot: in.SnapshotID, MachineType: in.MachineType, Network: policy,
		MemoryMiB: in.MemoryMB, DiskMiB: in.DiskMB})
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) && in.SnapshotID != "" {
			return LaunchVMOutput{}, "", fmt.Errorf("snapshot %q not found; list_machines shows the snapshots", in.SnapshotID)
		}
		return LaunchVMOutput{}, "", err
	}
	noteMachine(ctx, b.Name(), info.ID)
	status := info.Status
	if status == "stopped" || status == "" {
		// A local machine starts on first use: start it now, so that the
		// result's "running" is true and the first call does not wait.
		if m, err := s.broker.Find(ctx, c, info.ID); err == nil {
			if r, ok := m.(backend.CommandRunner); ok {
				if res, err := r.Run(ctx, backend.Command{Argv: []string{"true"}, Timeout: time.Minute}); err == nil && res.ExitCode == 0 {
					status = "running"
				}
			}
		}
	}
	if status == "" {
		status = "stopped"
	}
	out := LaunchVMOutput{Machine: info.ID, Status: status, Network: info.Network, MemoryMB: info.MemoryMiB, DiskMB: info.DiskMiB}
	text := fmt.Sprintf("Launched %s machine %s", b.Name(), info.ID)
	if info.MemoryMiB > 0 {
		text += fmt.Sprintf(" (%d MiB of memory, %d MiB of disk)", info.MemoryMiB, info.DiskMiB)
	}
	if info.Network != "" {
		text += " (network: " + info.Network + ")"
	}
	if in.SnapshotID != "" {
		text += " from snapshot " + in.SnapshotID
	}
	return out, text + "; it is now the conversation's machine: every tool call without machine acts on it.", nil
}

// launchBackend picks where launch_vm creates the machine: the backend asked
// for, else the one that holds the snapshot (which the caller must own),
// else the default backend.
func (s *Service) launchBackend(ctx context.Context, c *conversations.Conversation, in LaunchVMInput) (backend.Backend, error) {
	var snapBackend string
	if in.SnapshotID != "" {
		_, snap, err := s.conversations.SnapshotOwner(ctx, c.Principal, in.SnapshotID)
		if errors.Is(err, conversations.ErrNotFound) {
			return nil, fmt.Errorf("snapshot %q not found; list_machines shows your snapshots", in.SnapshotID)
		}
		if err != nil {
			return nil, err
		}
		snapBackend = snap.Backend
	}
	name := in.Backend
	if name == "" {
		name = snapBackend
	}
	if name == "" {
		return s.broker.Backends(c.Principal)[0], nil
	}
	b := s.broker.Backend(c.Principal, name)
	if b == nil {
		return nil, fmt.Errorf("backend %q is not configured on this server; configured: %s", name, strings.Join(s.broker.BackendNames(c.Principal), ", "))
	}
	if snapBackend != "" && snapBackend != name {
		return nil, fmt.Errorf("snapshot %s is a %s snapshot; launch it on %s (leave backend out)", in.SnapshotID, snapBackend, snapBackend)
	}
	return b, nil
}

func (s *Service) snapshotVM(ctx context.Context, _ mcp.CallToolRequest, in SnapshotVMInput) (*mcp.CallToolResult, error) {
	c := conversationFrom(ctx)
	if err := s.conversations.CheckSnapshotLimit(c); err != nil {
		return nil, err
	}
	m, snapper, err := machineAs[backend.Snapshotter](ctx, s, in.Machine, backend.Snapshots)
	if err != nil {
		return nil, err
	}
	withMemory := in.IncludeMemory == nil || *in.IncludeMemory
	memSnapper, canMemory := snapper.(backend.MemorySnapshotter)
	var snap backend.SnapshotInfo
	switch {
	case withMemory && canMemory:
		snap, err = memSnapper.SnapshotWithMemory(ctx, in.Name)
	case in.IncludeMemory != nil && *in.IncludeMemory:
		return nil, fmt.Errorf("%s snapshots keep files only, not Python variables: snapshot without include_memory, or use a local machine", m.Backend())
	default:
		snap, err = snapper.Snapshot(ctx, in.Name)
	}
	if err != nil {
		return nil, err
	}
	if _, err := s.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		c.Snapshots = append(c.Snapshots, conversations.Snapshot{Backend: m.Backend(), ID: snap.ID, Machine: m.ID(), CreatedAt: snap.CreatedAt})
		return nil
	}); err != nil {
		return nil, fmt.Errorf("record the snapshot: %w", err)
	}
	out := SnapshotVMOutput{SnapshotID: snap.ID, Machine: m.ID(), Status: "created", SizeBytes: snap.SizeBytes, Memory: snap.Memory}
	text := fmt.Sprintf("Snapshot %s of machine %s created (%d bytes).", snap.ID, m.ID(), snap.SizeBytes)
	if len(snap.Memory) > 0 {
		text += " It carries the Python variables " + strings.Join(snap.Memory, ", ") + ": a machine launched from it has them at its first call."
	}
	return structured(out, false, mcp.NewTextContent(text)), nil
}

func (s *Service) listMachines(ctx context.Context, _ mcp.CallToolRequest, _ ListMachinesInput) (*mcp.CallToolResult, error) {
	c := conversationFrom(ctx)
	out := ListMachinesOutput{Machines: []MachineEntry{}, Snapshots: []SnapshotEntry{}}
	ownedSnaps := map[string]bool{}
	mine, err := s.conversations.Conversations(ctx, c.Principal)
	if err != nil {
		return nil, err
	}
	for _, conv := range mine {
		for _, sn := range conv.Snapshots {
			ownedSnaps[sn.ID] = true
		}
	}
	var b strings.Builder
	b.WriteString("Machines:\n")
	var snaps []backend.SnapshotInfo
	def, c, err := s.broker.Default(ctx, c)
	if err != nil {
		return nil, err
	}
	for _, be := range s.broker.Backends(c.Principal) {
		infos, err := s.broker.OwnedMachines(ctx, c.Principal, be)
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			e := MachineEntry{ID: info.ID, Backend: info.Backend, Name: info.Name, Tags: info.Tags, Status: info.Status,
				Default: def != nil && def.Backend == info.Backend && def.ID == info.ID, CreatedAt: info.CreatedAt, FromSnapshot: info.FromSnapshot, Network: info.Network}
			if e.Status == "" {
				e.Status = "stopped"
			}
			out.Machines = append(out.Machines, e)
			fmt.Fprintf(&b, "- %s (%s) %q %s", e.ID, e.Backend, e.Name, e.Status)
			if e.Default {
				b.WriteString(" (default)")
			}
			b.WriteString("\n")
		}
		if be.Has(backend.Snapshots) && len(ownedSnaps) > 0 {
			l, err := be.Snapshots(ctx)
			if err != nil {
				return nil, fmt.Errorf("list %s snapshots: %w", be.Name(), err)
			}
			for _, sn := range l {
				if ownedSnaps[sn.ID] {
					snaps = append(snaps, sn)
				}
			}
		}
	}
	b.WriteString("Snapshots:\n")
	for _, snap := range snaps {
		out.Snapshots = append(out.Snapshots, SnapshotEntry{ID: snap.ID, Backend: snap.Backend, Name: snap.Name, Machine: snap.Machine, CreatedAt: snap.CreatedAt, SizeBytes: snap.SizeBytes})
		fmt.Fprintf(&b, "- %s (%s) %q from %s\n", snap.ID, snap.Backend, snap.Name, snap.Machine)
	}
	return structured(out, false, mcp.NewTextContent(strings.TrimRight(b.String(), "\n"))), nil
}

func (s *Service) deleteVM(ctx context.Context, _ mcp.CallToolRequest, in DeleteVMInput) (*mcp.CallToolResult, error) {
	if in.Machine == "" {
		return nil, errors.New("missing machine: give the id of the machine to delete")
	}
	m, err := s.broker.Delete(ctx, conversationFrom(ctx), in.Machine)
	if err != nil {
		if strings.HasPrefix(in.Machine, "s-") && strings.Contains(err.Error(), "not found") {
			return nil, fmt.Errorf("%s is a snapshot id, not a machine's: delete it with delete_snapshot", in.Machine)
		}
		return nil, err
	}
	out := DeleteVMOutput{Machine: m.ID(), Status: "deleted"}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Deleted machine %s.", m.ID()))), nil
}

// deleteSnapshot deletes one of the principal's snapshots, on its backend
// and from the conversation that owns it (see broker.DeleteSnapshot).
func (s *Service) deleteSnapshot(ctx context.Context, _ mcp.CallToolRequest, in DeleteSnapshotInput) (*mcp.CallToolResult, error) {
	if in.SnapshotID == "" {
		return nil, errors.New("missing snapshot_id: give the id of the snapshot to delete (list_machines lists them)")
	}
	c := conversationFrom(ctx)
	owner, _, err := s.conversations.SnapshotOwner(ctx, c.Principal, in.SnapshotID)
	if errors.Is(err, conversations.ErrNotFound) {
		return nil, fmt.Errorf("snapshot %q not found; list_machines shows your snapshots", in.SnapshotID)
	}
	if err != nil {
		return nil, err
	}
	if err := s.broker.DeleteSnapshot(ctx, owner, in.SnapshotID); err != nil {
		return nil, err
	}
	out := DeleteSnapshotOutput{SnapshotID: in.SnapshotID, Status: "deleted"}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Deleted snapshot %s.", in.SnapshotID))), nil
}
