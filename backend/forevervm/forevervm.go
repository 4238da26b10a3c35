// Package forevervm is the backend of ForeverVM machines: Python REPLs in the
// cloud that live forever. It adapts the backend interfaces to the ForeverVM
// client (package github.com/vmcp-dev/vmcp/client/forevervm), keeping one
// long-lived REPL WebSocket per machine rather than a socket per call.
//
// The service offers nothing but the REPL, so files (FileStore) and commands
// (CommandRunner) are built on it: a helper module installed in the
// machine's interpreter (helper.py, outside the user's globals) does the
// work, one instruction per step.
package forevervm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
)

// Name is the backend's name.
const Name = "forevervm"

// nameTag stores the name a machine was launched with: ForeverVM machines
// have generated names only.
const nameTag = "vmcp.name"

// interruptTimeout bounds the request that interrupts an instruction whose
// caller has gone away.
const interruptTimeout = 10 * time.Second

// Options configure a Backend.
type Options struct {
	// Marks are tags put on every machine this backend creates; only
	// machines carrying all of them are listed and reachable, so that the
	// server finds its own machines (and only those) after a restart.
	// Default: {"created-by": "vmcp"}.
	Marks  map[string]string
	Logger zerolog.Logger
}

// Backend serves ForeverVM machines through a client.
type Backend struct {
	c     *forevervmclient.Client
	marks map[string]string
	log   zerolog.Logger

	mu    sync.Mutex
	known map[string]bool                  // machines seen in a list or created here
	repls map[string]*forevervmclient.REPL // one open REPL per machine
}

// New returns the backend of c's machines.
func New(c *forevervmclient.Client, opts Options) *Backend {
	if len(opts.Marks) == 0 {
		opts.Marks = map[string]string{"created-by": "vmcp"}
	}
	return &Backend{c: c, marks: opts.Marks, log: opts.Logger, known: map[string]bool{}, repls: map[string]*forevervmclient.REPL{}}
}

// Name is "forevervm".
func (b *Backend) Name() string { return Name }

// Has reports the capabilities: Python natively; files and commands
// through the REPL.
func (b *Backend) Has(c backend.Capability) bool {
	switch c {
	case backend.Python, backend.Files, backend.Shell:
		return true
	}
	return false
}

var nameShape = regexp.MustCompile(`^[A-Za-z0-9]{16}$`)

// Recognizes reports whether id looks like a ForeverVM machine name (16
// letters and digits).
func (b *Backend) Recognizes(id string) bool { return nameShape.MatchString(id) }

// Create makes a machine tagged with the backend's marks.
func (b *Backend) Create(ctx context.Context, spec backend.MachineSpec) (backend.MachineInfo, error) {
	if spec.Network != nil {
		return backend.MachineInfo{}, backend.ErrNetworkPolicy(Name, "ForeverVM decides what its machines reach: leave network out")
	}
	if spec.MemoryMiB != 0 || spec.DiskMiB != 0 {
		return backend.MachineInfo{}, errors.New("ForeverVM sizes its machines itself: leave memory_mb and disk_mb out")
	}
	if spec.FromSnapshot != "" {
		return backend.MachineInfo{}, &backend.UnsupportedError{Backend: Name, Capability: backend.Snapshots,
			Hint: "ForeverVM keeps each machine's memory and files forever instead"}
	}
	tags := maps.Clone(spec.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	maps.Copy(tags, b.marks)
	if spec.Name != "" {
		tags[nameTag] = spec.Name
	}
	name, err := b.c.CreateMachine(ctx, forevervmclient.CreateMachineOptions{Tags: tags})
	if err != nil {
		return backend.MachineInfo{}, fmt.Errorf("create a ForeverVM machine: %w", err)
	}
	b.mu.Lock()
	b.known[name] = true
	b.mu.Unlock()
	return backend.MachineInfo{ID: name, Name: spec.Name, Backend: Name, Status: "running", Tags: tags, CreatedAt: time.Now().UTC()}, nil
}

// Machine returns one of this server's machines.
func (b *Backend) Machine(ctx context.Context, id string) (backend.Machine, error) {
	b.mu.Lock()
	known := b.known[id]
	b.mu.Unlock()
	if !known {
		// There is no per-machine GET: list this server's machines.
		if _, err := b.Machines(ctx); err != nil {
			return nil, err
		}
		b.mu.Lock()
		known = b.known[id]
		b.mu.Unlock()
		if !known {
			return nil, backend.ErrNotFound
		}
	}
	return &Machine{b: b, name: id}, nil
}

// Machines lists the machines that carry the backend's marks.
func (b *Backend) Machines(ctx context.Context) ([]backend.MachineInfo, error) {
	list, err := b.c.ListMachines(ctx, b.marks)
	if err != nil {
		return nil, fmt.Errorf("list ForeverVM machines: %w", err)
	}
	out := make([]backend.MachineInfo, 0, len(list))
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- { // the service lists newest first
		m := list[i]
		b.known[m.Name] = true
		status := "stopped" // swapped out to disk; it resumes on next use
		if m.Running {
			status = "running"
		}
		out = append(out, backend.MachineInfo{ID: m.Name, Name: m.Tags[nameTag], Backend: Name, Status: status, Tags: m.Tags, CreatedAt: m.CreatedAt})
	}
	return out, nil
}

// Delete is not something ForeverVM offers: its machines live forever.
func (b *Backend) Delete(context.Context, string) error {
	return errors.New("ForeverVM machines cannot be deleted: the service keeps every machine forever and swaps idle ones to disk, so an unused machine costs nothing")
}

// Snapshots: ForeverVM has none.
func (b *Backend) Snapshots(context.Context) ([]backend.SnapshotInfo, error) { return nil, nil }

// Close closes every open REPL socket; the machines stay.
func (b *Backend) Close() error {
	b.mu.Lock()
	repls := b.repls
	b.repls = map[string]*forevervmclient.REPL{}
	b.mu.Unlock()
	for _, r := range repls {
		r.Close()
	}
	return nil
}

// repl returns the machine's open REPL, opening it on first use.
func (b *Backend) repl(ctx context.Context, name string) (*forevervmclient.REPL, error) {
	b.mu.Lock()
	r := b.repls[name]
	b.mu.Unlock()
	if r != nil {
		return r, nil
	}
	r, err := b.c.REPL(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open the REPL of ForeverVM machine %s: %w", name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if other := b.repls[name]; other != nil { // opened concurrently
		r.Close()
		return other, nil
	}
	b.repls[name] = r
	return r, nil
}

// forget drops a REPL that failed, so that the next call opens a new one.
func (b *Backend) forget(name string, r *forevervmclient.REPL) {
	b.mu.Lock()
	if b.repls[name] == r {
		delete(b.repls, name)
	}
	b.mu.Unlock()
	r.Close()
}

// Machine is a ForeverVM machine: a Python REPL, with files and commands
// built on it.
type Machine struct {
	b    *Backend
	name string
}

var (
	_ backend.PythonRunner  = (*Machine)(nil)
	_ backend.FileStore     = (*Machine)(nil)
	_ backend.CommandRunner = (*Machine)(nil)
)

// ID is the machine's name.
func (m *Machine) ID() string { return m.name }

// Backend is "forevervm".
func (m *Machine) Backend() string { return Name }

// maxPythonOutput is how much of each stream a result keeps when the
// caller gives no writer for it.
const maxPythonOutput = 1 << 20

// RunPython runs code on the machine's REPL. When ctx ends first, the
// instruction is interrupted on the machine (its state survives).
func (m *Machine) RunPython(ctx context.Context, code string, opts backend.PythonOptions) (*backend.PythonResult, error) {
	r, err := m.b.repl(ctx, m.name)
	if err != nil {
		return nil, err
	}
	// The wire carries output a line at a time, without its newline.
	var stdout, stderr strings.Builder
	res, err := r.Exec(ctx, code, forevervmclient.ExecOptions{
		Timeout: opts.Timeout,
		OnOutput: func(ch forevervmclient.OutputChunk) {
			out, w := &stdout, opts.Stdout
			if ch.Stream == "stderr" {
				out, w = &stderr, opts.Stderr
			}
			if w != nil {
				io.WriteString(w, ch.Data+"\n")
			} else if out.Len() < maxPythonOutput {
				out.WriteString(ch.Data[:min(len(ch.Data), maxPythonOutput-out.Len())])
				out.WriteByte('\n')
			}
			if opts.OnOutput != nil {
				opts.OnOutput(ch.Stream, ch.Data)
			}
		},
	})
	if err != nil {
		if ctx.Err() != nil {
			m.interrupt()
			return nil, ctx.Err()
		}
		if errors.Is(err, forevervmclient.ErrClosed) {
			m.b.forget(m.name, r)
		}
		return nil, fmt.Errorf("run on ForeverVM machine %s: %w", m.name, err)
	}
	out := &backend.PythonResult{
		Value:   res.Value,
		Stdout:  stdout.String(),
		Stderr:  stderr.String(),
		Runtime: time.Duration(res.RuntimeMS) * time.Millisecond,
	}
	if res.IsError {
		out.Value = nil
		out.Error = res.Error
		out.TimedOut = res.Error == "Timed out"
	}
	if png, err := res.PNG(); err == nil && png != nil {
		out.Images = [][]byte{png}
	}
	return out, nil
}

// interrupt stops whatever the machine runs, for a caller that has gone.
// ForeverVM interrupts by submitting another instruction with interrupt set.
func (m *Machine) interrupt() {
	ctx, cancel := context.WithTimeout(context.Background(), interruptTimeout)
	defer cancel()
	if _, err := m.b.c.Exec(ctx, m.name, "None", forevervmclient.ExecOptions{Interrupt: true}); err != nil {
		m.b.log.Warn().Err(err).Str("machine", m.name).Msg("could not interrupt a cancelled instruction")
	}
}
