// Package local is vmcp's embedded sandbox engine: persistent machines on
// this host (Linux only), each isolated with bubblewrap, with a stateful Python REPL,
// commands, file transfer and snapshots.
//
// A binary that uses the engine must call RunHelperIfRequested first thing in
// main (and a test binary in TestMain): the engine starts the same binary
// inside each sandbox as its agent.
package local

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// Flavour is the kind of sandbox a machine is.
type Flavour string

const (
	// Workspace machines run as an unprivileged user with the host's OS
	// directories read-only and a writable /workspace (the default).
	Workspace Flavour = "workspace"
	// VM machines look like a virtual machine: a writable root filesystem
	// (an overlay over the host's OS directories) and root inside a user
	// namespace. The FastVM emulator runs its VMs as these.
	VM Flavour = "vm"
)

// Machine statuses.
const (
	StatusRunning = "running" // its sandbox is live
	StatusStopped = "stopped" // nothing runs; the next call starts it
)

// Limits bound what one machine may use. Zero fields take the defaults.
type Limits struct {
	MemoryBytes int64 `json:"memory_bytes"` // cgroup memory limit, or RLIMIT_AS without a writable cgroup; default 2 GiB
	Processes   int64 `json:"processes"`    // cgroup pids.max, or RLIMIT_NPROC; default 256
	OpenFiles   int64 `json:"open_files"`   // RLIMIT_NOFILE; default 1024
	DiskBytes   int64 `json:"disk_bytes"`   // quota of its files (workspace or root filesystem changes, and scratch space); default 1 GiB
	Files       int64 `json:"files"`        // most entries (files, directories, links) its files may have; default 200,000
}

// DefaultLimits are the limits of a machine created without its own.
var DefaultLimits = Limits{
	MemoryBytes: 2 << 30,
	Processes:   256,
	OpenFiles:   1024,
	DiskBytes:   1 << 30,
	Files:       200_000,
}

func (l Limits) withDefaults(d Limits) Limits {
	if l.MemoryBytes == 0 {
		l.MemoryBytes = d.MemoryBytes
	}
	if l.Processes == 0 {
		l.Processes = d.Processes
	}
	if l.OpenFiles == 0 {
		l.OpenFiles = d.OpenFiles
	}
	if l.DiskBytes == 0 {
		l.DiskBytes = d.DiskBytes
	}
	if l.Files == 0 {
		l.Files = d.Files
	}
	return l
}

// Options configure an Engine.
type Options struct {
	// StateDir holds machines and snapshots. Default: $XDG_STATE_HOME/vmcp,
	// else ~/.local/state/vmcp.
	StateDir string
	// Limits are the defaults for new machines.
	Limits Limits
	// Python is the interpreter inside machines. Default /usr/bin/python3.
	Python string
	// Bwrap is the bubblewrap binary. Default: bwrap on PATH.
	Bwrap string
	// DangerouslyDisableSandbox runs machines as plain host processes with no
	// isolation at all. Only for hosts where bubblewrap cannot run, and only
	// for code you would run on the host yourself.
	DangerouslyDisableSandbox bool
	// SandboxUID and SandboxGID are the host ids that sandboxes run as when
	// the engine runs as root. Default 65534 (nobody).
	SandboxUID, SandboxGID int
	// ReserveBytes and ReserveInodes are what the engine keeps free on the
	// state directory's filesystem: below them, machines' writers are
	// stopped and uploads refused. Default: the smaller of 512 MiB (50,000
	// inodes) and a twentieth of the filesystem.
	ReserveBytes, ReserveInodes int64
	// VMHostIDBase is the first of the 65536 host uids and gids that ids
	// 0-65535 of VM machines map to (their root is root of its own user
	// namespace only). Default 0x70000000; list the range in /etc/subuid
	// and /etc/subgid to keep other tools from handing it out.
	VMHostIDBase int
	// Egress tunes the proxy of machines with an allow-list.
	Egress EgressOptions
	// Warm configures a pool of machines kept started for Create.
	Warm WarmOptions
	// CheckpointInterval, if set, saves the Python variables of every
	// machine that ran code since its last save this often, so that a
	// crash loses only what came after (see Machine.SavePython). 0: only
	// when machines stop on purpose.
	CheckpointInterval time.Duration
}

// WarmOptions configure the pool of warm machines: machines started ahead
// of use, interpreter running and libraries imported, that Create hands
// out (each once) to callers that ask for a machine like them.
type WarmOptions struct {
	// Machines is how many the pool keeps ready (0: no pool).
	Machines int
	// Imports are the modules their interpreters import ahead of use.
	Imports []string
	// AllowNetwork and NetworkAllow are their network policy (see
	// MachineSpec): a Create that asks for another gets a machine of its
	// own.
	AllowNetwork bool
	NetworkAllow []string
	// HotFor is how long after the engine's last call (or the pool's
	// start) the pool wakes its interpreters every warmHotEvery: an
	// interpreter left idle answers its next instruction slowly (the host
	// has to bring its memory back into use), and a new conversation's
	// first call is that instruction. 0: never.
	HotFor time.Duration
}

// DefaultStateDir is the state directory used when Options.StateDir is empty.
func DefaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "vmcp")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "vmcp-state")
	}
	return filepath.Join(home, ".local", "state", "vmcp")
}

// ErrStateDirInUse is New's error when another engine holds the state
// directory.
var ErrStateDirInUse = errors.New("is in use by another vmcp process")

// PathError is a path that a machine refuses, with the reason: the
// backends' own, so that the engine's refusals read as every backend's.
type PathError = backend.PathError

// EgressOptions tune the proxy of allow-list machines.
type EgressOptions struct {
	// PrivateAllowed are domains (exact, or *.suffix for its subdomains)
	// that may resolve to loopback, link-local or private addresses, such
	// as an internal package mirror; a name in a machine's allow-list that
	// resolves to such an address is refused otherwise.
	PrivateAllowed []string
	// Resolve looks names up; default the system's resolver. Tests map
	// their names to loopback with it.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
}

// WarmStats describe the pool of warm machines.
type WarmStats struct {
	Target int // machines the pool keeps ready (Options.Warm.Machines)
	Ready  int // machines ready now
	// Hits are creations the pool served; Misses are those that fit it
	// but found it empty, and started a machine of their own.
	Hits, Misses int64
	// Evicted are ready machines deleted because their interpreter ended
	// while they waited (seen by a wake, see WarmOptions.HotFor).
	Evicted int64
	// PSSBytes is the proportional set size (resident memory, shared
	// pages divided among their users) of the ready machines' processes.
	PSSBytes int64
	// ImportErrors are the modules of Options.Warm.Imports that could not
	// be imported, with Python's reason, one per line.
	ImportErrors string
	// LastError is why the last warm machine could not be made, if it
	// could not.
	LastError string
	// FilledIn is how long the pool took to fill the first time (0 until
	// it has), and FilledPSSBytes the PSS of its machines then.
	FilledIn       time.Duration
	FilledPSSBytes int64
}
