package tools

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/local"
)

// LaunchVMInput is launch_vm's arguments.
type LaunchVMInput struct {
	Name       string            `json:"name,omitempty" jsonschema:"description=A name for people; ids identify machines."`
	SnapshotID string            `json:"snapshot_id,omitempty" jsonschema:"description=Start with the files of this snapshot (see list_machines)."`
	Tags       map[string]string `json:"tags,omitempty" jsonschema:"description=Labels stored with the machine."`
}

// LaunchVMOutput is launch_vm's result.
type LaunchVMOutput struct {
	Machine string `json:"machine" jsonschema:"description=The new machine's id; it is now the default machine."`
	Status  string `json:"status" jsonschema:"description=The machine's status (it starts on first use).,enum=running,enum=stopped"`
}

// SnapshotVMInput is snapshot_vm's arguments.
type SnapshotVMInput struct {
	Machine string `json:"machine,omitempty" jsonschema:"description=Machine id; default: the default machine (created on first use)."`
	Name    string `json:"name,omitempty" jsonschema:"description=A name for the snapshot."`
}

// SnapshotVMOutput is snapshot_vm's result.
type SnapshotVMOutput struct {
	SnapshotID string `json:"snapshot_id" jsonschema:"description=The snapshot's id\\, for launch_vm's snapshot_id."`
	Machine    string `json:"machine" jsonschema:"description=The machine the snapshot was taken from."`
	Status     string `json:"status" jsonschema:"description=Always 'created'.,enum=created"`
	SizeBytes  int64  `json:"size_bytes" jsonschema:"description=Disk space the snapshot takes."`
}

// ListMachinesInput is list_machines's arguments (none).
type ListMachinesInput struct{}

// MachineEntry describes one machine.
type MachineEntry struct {
	ID           string            `json:"id" jsonschema:"description=The machine id; pass it as machine to other tools."`
	Name         string            `json:"name,omitempty" jsonschema:"description=The name given at launch."`
	Tags         map[string]string `json:"tags,omitempty" jsonschema:"description=Labels stored with the machine."`
	Status       string            `json:"status" jsonschema:"description=running: its processes are live; stopped: it starts on next use.,enum=running,enum=stopped"`
	Default      bool              `json:"default" jsonschema:"description=This is the default machine of this server."`
	CreatedAt    time.Time         `json:"created_at" jsonschema:"description=When it was launched (RFC 3339)."`
	FromSnapshot string            `json:"from_snapshot,omitempty" jsonschema:"description=The snapshot it was launched from."`
}

// SnapshotEntry describes one snapshot.
type SnapshotEntry struct {
	ID        string    `json:"id" jsonschema:"description=The snapshot id; pass it as snapshot_id to launch_vm."`
	Name      string    `json:"name,omitempty" jsonschema:"description=The name given when it was taken."`
	Machine   string    `json:"machine" jsonschema:"description=The machine it was taken from."`
	CreatedAt time.Time `json:"created_at" jsonschema:"description=When it was taken (RFC 3339)."`
	SizeBytes int64     `json:"size_bytes" jsonschema:"description=Disk space the snapshot takes, in bytes."`
}

// ListMachinesOutput is list_machines's result.
type ListMachinesOutput struct {
	Machines  []MachineEntry  `json:"machines" jsonschema:"description=Every machine\\, oldest first."`
	Snapshots []SnapshotEntry `json:"snapshots" jsonschema:"description=Every snapshot\\, oldest first."`
}

// DeleteVMInput is delete_vm's arguments.
type DeleteVMInput struct {
	Machine string `json:"machine" jsonschema:"description=Id of the machine to delete\\, with all its files."`
}

// DeleteVMOutput is delete_vm's result.
type DeleteVMOutput struct {
	Machine string `json:"machine" jsonschema:"description=The deleted machine's id."`
	Status  string `json:"status" jsonschema:"description=Always 'deleted'.,enum=deleted"`
}

func (s *Service) machineTools() []server.ServerTool {
	return []server.ServerTool{
		newTool[LaunchVMInput, LaunchVMOutput](toolSpec{
			name:        "launch_vm",
			title:       "Launch a machine",
			description: "Create a new machine, empty or with the files of a snapshot, and make it the default machine for later calls.",
		}, s.launchVM),
		newTool[SnapshotVMInput, SnapshotVMOutput](toolSpec{
			name:        "snapshot_vm",
			title:       "Snapshot a machine",
			description: "Save a machine's files (not its running processes or Python state) as a snapshot that launch_vm can start new machines from.",
		}, s.snapshotVM),
		newTool[ListMachinesInput, ListMachinesOutput](toolSpec{
			name:        "list_machines",
			title:       "List machines and snapshots",
			description: "List every machine (with its status and whether it is the default) and every snapshot.",
			readOnly:    true,
			idempotent:  true,
		}, s.listMachines),
		newTool[DeleteVMInput, DeleteVMOutput](toolSpec{
			name:        "delete_vm",
			title:       "Delete a machine",
			description: "Stop a machine and delete it with all its files. Snapshots taken from it stay.",
			destructive: true,
			idempotent:  true,
		}, s.deleteVM),
	}
}

func (s *Service) launchVM(ctx context.Context, _ mcp.CallToolRequest, in LaunchVMInput) (*mcp.CallToolResult, error) {
	info, err := s.engine.Create(ctx, local.MachineSpec{Name: in.Name, Tags: in.Tags, FromSnapshot: in.SnapshotID})
	if err != nil {
		if errors.Is(err, local.ErrNotFound) && in.SnapshotID != "" {
			return nil, fmt.Errorf("snapshot %q not found; list_machines shows the snapshots", in.SnapshotID)
		}
		return nil, err
	}
	s.setDefault(info.ID)
	s.log.Info().Str("machine", info.ID).Str("snapshot", in.SnapshotID).Msg("launched a machine")
	status := info.Status
	if status == "" {
		status = local.StatusStopped
	}
	out := LaunchVMOutput{Machine: info.ID, Status: status}
	text := fmt.Sprintf("Launched machine %s", info.ID)
	if in.SnapshotID != "" {
		text += " from snapshot " + in.SnapshotID
	}
	return structured(out, false, mcp.NewTextContent(text+"; it is now the default machine.")), nil
}

func (s *Service) snapshotVM(ctx context.Context, _ mcp.CallToolRequest, in SnapshotVMInput) (*mcp.CallToolResult, error) {
	m, err := s.machine(ctx, in.Machine)
	if err != nil {
		return nil, err
	}
	snap, err := m.Snapshot(ctx, in.Name)
	if err != nil {
		return nil, err
	}
	out := SnapshotVMOutput{SnapshotID: snap.ID, Machine: m.ID(), Status: "created", SizeBytes: snap.SizeBytes}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Snapshot %s of machine %s created (%d bytes).", snap.ID, m.ID(), snap.SizeBytes))), nil
}

func (s *Service) listMachines(ctx context.Context, _ mcp.CallToolRequest, _ ListMachinesInput) (*mcp.CallToolResult, error) {
	out := ListMachinesOutput{Machines: []MachineEntry{}, Snapshots: []SnapshotEntry{}}
	var b strings.Builder
	b.WriteString("Machines:\n")
	for _, info := range s.engine.Machines() {
		e := MachineEntry{ID: info.ID, Name: info.Name, Tags: info.Tags, Status: info.Status, Default: s.isDefault(info.ID), CreatedAt: info.CreatedAt, FromSnapshot: info.FromSnapshot}
		if e.Status == "" {
			e.Status = local.StatusStopped
		}
		out.Machines = append(out.Machines, e)
		fmt.Fprintf(&b, "- %s %q %s", e.ID, e.Name, e.Status)
		if e.Default {
			b.WriteString(" (default)")
		}
		b.WriteString("\n")
	}
	b.WriteString("Snapshots:\n")
	for _, snap := range s.engine.Snapshots() {
		out.Snapshots = append(out.Snapshots, SnapshotEntry{ID: snap.ID, Name: snap.Name, Machine: snap.Machine, CreatedAt: snap.CreatedAt, SizeBytes: snap.SizeBytes})
		fmt.Fprintf(&b, "- %s %q from %s\n", snap.ID, snap.Name, snap.Machine)
	}
	return structured(out, false, mcp.NewTextContent(strings.TrimRight(b.String(), "\n"))), nil
}

func (s *Service) deleteVM(ctx context.Context, _ mcp.CallToolRequest, in DeleteVMInput) (*mcp.CallToolResult, error) {
	if in.Machine == "" {
		return nil, errors.New("missing machine: give the id of the machine to delete")
	}
	m, err := s.machine(ctx, in.Machine)
	if err != nil {
		return nil, err
	}
	if err := s.engine.Delete(ctx, m.ID()); err != nil {
		return nil, err
	}
	s.forgetDefault(m.ID())
	s.log.Info().Str("machine", m.ID()).Msg("deleted a machine")
	out := DeleteVMOutput{Machine: m.ID(), Status: "deleted"}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Deleted machine %s.", m.ID()))), nil
}
