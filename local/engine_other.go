//go:build !linux || vmcp_nolocal

package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// errUnsupportedOS is every machine call's answer where sandboxes need a
// Linux kernel.
var errUnsupportedOS = errors.New("the local backend is not available on this operating system (its sandboxes need Linux): " +
	"configure a ForeverVM token (FOREVERVM_TOKEN) or a FastVM key (FASTVM_API_KEY)")

// Engine, on systems other than Linux, owns the state directory (the
// server's conversations live there) but runs no machines.
type Engine struct {
	opts Options
	lock *os.File
}

// New opens (or creates) the state directory and takes its lock.
func New(opts Options) (*Engine, error) {
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir()
	}
	if abs, err := filepath.Abs(opts.StateDir); err == nil {
		opts.StateDir = abs
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	lock, err := lockStateDir(opts.StateDir)
	if err != nil {
		return nil, err
	}
	return &Engine{opts: opts, lock: lock}, nil
}

// SelfTest returns why machines cannot run here: this system is not Linux.
func (e *Engine) SelfTest(context.Context) error { return errUnsupportedOS }

// Sandboxed reports whether machines are isolated; there are none here.
func (e *Engine) Sandboxed() bool { return false }

// StateDir is the directory the engine keeps its state in.
func (e *Engine) StateDir() string { return e.opts.StateDir }

// Close releases the state directory.
func (e *Engine) Close() error { return e.lock.Close() }

// RunHelperIfRequested does nothing: no sandbox starts this binary here.
func RunHelperIfRequested() {}

// WarmStats is all zero: there are no warm machines here.
func (e *Engine) WarmStats() WarmStats { return WarmStats{} }
