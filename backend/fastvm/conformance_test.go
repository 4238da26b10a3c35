//go:build linux

package fastvm

import (
	"testing"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendtest"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

// TestConformance runs the backend suite against the emulator, whose VMs
// are machines of a local engine; idle VMs are paused (the default).
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return newTestEnv(t, fastvmemu.Options{}, Options{}).b
	}, backendtest.Options{RealPython: true, UncountedLeftRunning: true})
}

// TestConformanceIdleSnapshot runs the suite's idle part against a backend
// that parks idle VMs as snapshots instead.
func TestConformanceIdleSnapshot(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return newTestEnv(t, fastvmemu.Options{}, Options{IdleAction: IdleSnapshot}).b
	}, backendtest.Options{RealPython: true, Only: []string{"Idle"}})
}
