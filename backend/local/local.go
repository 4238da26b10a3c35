// Package local is the backend of machines on this host: an adapter from the
// backend interfaces to the embedded sandbox engine (package
// github.com/vmcp-dev/vmcp/local).
package local

import (
	"github.com/vmcp-dev/vmcp/backend"
	engine "github.com/vmcp-dev/vmcp/local"
)

// Name is the backend's name.
const Name = "local"

// Backend serves machines of an engine.
type Backend struct {
	e *engine.Engine
	// DefaultNetwork is the policy of machines created without one.
	DefaultNetwork backend.Network
}

// New returns the backend of e's machines.
func New(e *engine.Engine) *Backend { return &Backend{e: e} }

// Engine is the engine behind the backend.
func (b *Backend) Engine() *engine.Engine { return b.e }

// Name is "local".
func (b *Backend) Name() string { return Name }

// Has reports the capabilities: local machines have them all.
func (b *Backend) Has(c backend.Capability) bool {
	switch c {
	case backend.Python, backend.Shell, backend.Files, backend.Snapshots, backend.Reset:
		return true
	}
	return false
}

// Recognizes reports whether id looks like an engine machine id.
func (b *Backend) Recognizes(id string) bool { return engine.ValidMachineID(id) }
