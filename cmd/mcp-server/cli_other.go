//go:build !linux || vmcp_nolocal

package main

import (
	"context"
	"errors"

	"github.com/vmcp-dev/vmcp/backend"
)

// errNoLocalEngine: machines run on this host only on Linux.
var errNoLocalEngine = errors.New("the local backend needs Linux")

// recordedMachines lists none: no local machine runs on this system.
func recordedMachines(string) ([]backend.MachineInfo, error) { return nil, nil }

// recordedSnapshots lists none: no local machine runs on this system.
func recordedSnapshots(string) ([]backend.SnapshotInfo, error) { return nil, nil }

// machineDisk measures nothing: there are no local machines here.
func machineDisk(string, string) (int64, error) { return 0, errNoLocalEngine }

// localChecks says, in one line, that the local backend does not run here.
func localChecks(context.Context, Config, bool) []check {
	return []check{{Name: "local backend", Verdict: verdictSkip,
		Detail: "machines run on this host only on Linux (bubblewrap sandboxes); here the ForeverVM and FastVM backends serve (FOREVERVM_TOKEN, FASTVM_API_KEY)"}}
}
