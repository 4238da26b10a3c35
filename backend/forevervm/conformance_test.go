//go:build linux

package forevervm

import (
	"testing"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendtest"
)

// TestConformance runs the backend suite against the emulator, whose
// machines run CPython in sandboxes of a local engine.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return startEmulator(t, emulatorOptions{}).b
	}, backendtest.Options{RealPython: true})
}
