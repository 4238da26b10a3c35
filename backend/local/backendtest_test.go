//go:build linux && !vmcp_nolocal

package local_test

import (
	"testing"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendtest"
	"github.com/vmcp-dev/vmcp/backend/local"
	engine "github.com/vmcp-dev/vmcp/local"
)

// TestConformance runs the backend suite against machines of an engine on
// a fresh state directory.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		e, err := engine.New(engine.Options{StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return local.New(e)
	}, backendtest.Options{RealPython: true})
}
