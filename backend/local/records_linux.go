//go:build !vmcp_nolocal

package local

import (
	"github.com/vmcp-dev/vmcp/backend"
	engine "github.com/vmcp-dev/vmcp/local"
)

// InfoOf describes an engine machine's record as the backend does, for
// records read without an engine (engine.ReadMachines).
func InfoOf(i engine.MachineInfo) backend.MachineInfo { return machineInfo(i) }

// SnapshotInfoOf describes an engine snapshot's record as the backend
// does (see InfoOf).
func SnapshotInfoOf(s engine.SnapshotInfo) backend.SnapshotInfo { return snapshotInfo(s) }
