//go:build !linux || vmcp_nolocal

package local

import (
	"context"

	"github.com/vmcp-dev/vmcp/backend"
)

// Create answers why no machine runs on this system.
func (b *Backend) Create(ctx context.Context, _ backend.MachineSpec) (backend.MachineInfo, error) {
	return backend.MachineInfo{}, b.e.SelfTest(ctx)
}

// Machine answers why no machine runs on this system.
func (b *Backend) Machine(ctx context.Context, _ string) (backend.Machine, error) {
	return nil, b.e.SelfTest(ctx)
}

// Machines lists none: there are none on this system.
func (b *Backend) Machines(context.Context) ([]backend.MachineInfo, error) { return nil, nil }

// Delete answers why no machine runs on this system.
func (b *Backend) Delete(ctx context.Context, _ string) error { return b.e.SelfTest(ctx) }

// Snapshots lists none.
func (b *Backend) Snapshots(context.Context) ([]backend.SnapshotInfo, error) { return nil, nil }
