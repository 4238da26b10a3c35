// Package backend is the vocabulary the tools speak to every kind of machine:
// the local sandbox engine, ForeverVM machines and FastVM VMs. A Backend
// creates, finds, lists and deletes machines; a Machine has the capabilities
// its backend offers, each a small interface (PythonRunner, CommandRunner,
// FileStore, Snapshotter) that the tools ask for with a type assertion and,
// when it is missing, answer with an error that says which backend can.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// ErrNotFound is returned for a machine or snapshot that does not exist (or
// is not the caller's to see).
var ErrNotFound = errors.New("not found")

// Capability is something a backend's machines can do.
type Capability string

// The capabilities.
const (
	Python    Capability = "python"    // a stateful Python REPL (PythonRunner)
	Shell     Capability = "shell"     // commands (CommandRunner)
	Files     Capability = "files"     // file transfer (FileStore)
	Snapshots Capability = "snapshots" // snapshots and launching from them (Snapshotter)
	Build     Capability = "build"     // images built from Dockerfiles (the Backend is an ImageBuilder)
	Firewall  Capability = "firewall"  // inbound traffic policies (FirewallSetter)
	Reset     Capability = "reset"     // stopping a machine's processes from outside it (Resetter)
	// MachineTypes: machines come in sizes (MachineSpec.MachineType).
	MachineTypes Capability = "machine_types"
)

// Backend is one kind of machine.
type Backend interface {
	// Name is the backend's name in tool arguments and results: "local",
	// "forevervm" or "fastvm".
	Name() string
	// Has reports whether the backend's machines have a capability.
	Has(Capability) bool
	// Recognizes reports whether id has the shape of this backend's machine
	// ids, so that a bare id can be routed without asking every backend.
	Recognizes(id string) bool
	// Create makes a new machine.
	Create(ctx context.Context, spec MachineSpec) (MachineInfo, error)
	// Machine returns an existing machine; ErrNotFound if there is none.
	Machine(ctx context.Context, id string) (Machine, error)
	// Machines lists the machines this server can see.
	Machines(ctx context.Context) ([]MachineInfo, error)
	// Delete deletes a machine and everything in it.
	Delete(ctx context.Context, id string) error
	// Snapshots lists the snapshots (nil for a backend without them).
	Snapshots(ctx context.Context) ([]SnapshotInfo, error)
}

// MachineSpec describes a machine to create.
type MachineSpec struct {
	Name         string            // optional, for people
	Tags         map[string]string // labels stored with the machine
	FromSnapshot string            // start from this snapshot
	MachineType  string            // backend-specific size (FastVM); "" = the default
	// Network is the machine's network policy; nil: the backend's default.
	// Only the local backend takes one.
	Network *Network
	// MemoryMiB and DiskMiB size the machine (local); 0: the default.
	MemoryMiB, DiskMiB int64
}

// Network is a machine's network policy: none (the zero value), the
// host's network (Open), or an allow-list of domains (exact, or *.suffix)
// that it reaches over HTTP and HTTPS through the server's proxy.
type Network struct {
	Open  bool
	Allow []string
}

// String is how results show the policy: none, open, or "allowlist: "
// and the domains.
func (n Network) String() string {
	switch {
	case n.Open:
		return "open"
	case len(n.Allow) > 0:
		return "allowlist: " + strings.Join(n.Allow, ", ")
	}
	return "none"
}

// ErrNetworkPolicy is a Create error of a backend whose machines' network
// is the service's own.
func ErrNetworkPolicy(backendName, hint string) error {
	return fmt.Errorf("%s machines take no network policy from vmcp: %s", backendName, hint)
}

// NetworkReporter is a machine that knows its network policy (local).
type NetworkReporter interface {
	Network() Network
}

// MachineInfo describes a machine.
type MachineInfo struct {
	ID           string
	Name         string
	Backend      string
	Status       string // e.g. running, stopped, provisioning
	Tags         map[string]string
	CreatedAt    time.Time
	FromSnapshot string
	// Network is the policy's description (Network.String), where vmcp
	// sets it; "" where the service decides (FastVM's firewall).
	Network string
	// MemoryMiB and DiskMiB are the machine's limits, where known.
	MemoryMiB, DiskMiB int64
}

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	ID        string
	Name      string
	Backend   string
	Machine   string // the machine it was taken from
	Status    string // e.g. ready, creating
	CreatedAt time.Time
	SizeBytes int64
	// Memory lists the Python variables the snapshot carries (see
	// MemorySnapshotter); none if empty.
	Memory []string
	// Notes are what the backend said of how an image was built: the base
	// it really used, what it did not do as the Dockerfile asked.
	Notes []string
}

// Machine is one machine. Its capabilities are the interfaces below that it
// implements.
type Machine interface {
	ID() string
	Backend() string
}

// PythonRunner runs Python in a persistent interpreter: globals survive
// between calls.
type PythonRunner interface {
	RunPython(ctx context.Context, code string, opts PythonOptions) (*PythonResult, error)
}

// PythonOptions tune one Python instruction.
type PythonOptions struct {
	Timeout  time.Duration // zero: the backend's default
	OnOutput func(stream, line string)
	// Stdout and Stderr, when set, receive every byte the code writes to
	// the streams, in order, however long its lines; the result's Stdout
	// and Stderr are then empty.
	Stdout, Stderr io.Writer
}

// PythonResult is the outcome of a Python instruction. A Python exception is
// a result with Error set, not an error.
type PythonResult struct {
	Value      *string // repr of the last expression; nil for statements and None
	Error      string  // the exception with its traceback, or "Timed out"
	Stdout     string
	Stderr     string
	Images     [][]byte // PNG figures
	Runtime    time.Duration
	TimedOut   bool
	StateReset string // why the code ran in an interpreter that lost earlier state
	// StateRestored says that the code ran in a new interpreter into which
	// the variables of the previous one were restored, and which.
	StateRestored string
}

// CommandRunner runs commands.
type CommandRunner interface {
	Run(ctx context.Context, cmd Command) (*CommandResult, error)
}

// Command is a process to run in a machine.
type Command struct {
	Argv      []string // or Shell
	Shell     string   // a command line for the machine's shell
	Stdin     io.Reader
	Env       map[string]string
	Workdir   string
	Timeout   time.Duration
	OnOutput  func(stream, line string)
	MaxOutput int // bytes of each stream kept; 0 = the backend's default
	// Stdout and Stderr, when set, receive every byte of the streams, in
	// order; the result's Stdout and Stderr are then empty.
	Stdout, Stderr io.Writer
	// SaveOutput asks a backend that can to keep each stream that outgrows
	// Keep bytes whole in the machine itself, in a file named after it in
	// that directory (relative to the home; at most SaveMax bytes): Stdout
	// and Stderr then receive only the first Keep bytes, and the result's
	// Saved tells the rest. A backend that cannot ignores it (Saved nil).
	SaveOutput string
	Keep       int
	SaveMax    int64
}

// SavedStream is what a backend that kept a stream in the machine (see
// Command.SaveOutput) tells of it.
type SavedStream struct {
	Total, Lines int64
	Tail         []byte // the last Keep bytes, when the stream outgrew Keep
	Path         string // the file in the machine; empty when the stream fitted in Keep
	Partial      bool   // the file stops at SaveMax, or where writing failed (Err)
	Err          string
}

// CommandResult is how a command ended. A non-zero exit is a result.
type CommandResult struct {
	ExitCode        int
	Signal          string
	Stdout, Stderr  string
	StdoutTruncated bool
	StderrTruncated bool
	TimedOut        bool
	QuotaExceeded   bool
	Duration        time.Duration
	// Saved tells of stdout and stderr when the backend kept them in the
	// machine (Command.SaveOutput); nil when it did not.
	Saved *[2]SavedStream
	// LeftRunning is how many processes of the machine were still running
	// when the command ended, besides the Python interpreter (0: none or
	// unknown).
	LeftRunning int
}

// FileStore moves files in and out of a machine as streams.
type FileStore interface {
	// WriteFile creates or replaces a file; it appears whole or not at all.
	WriteFile(ctx context.Context, path string, r io.Reader, mode fs.FileMode) (*WriteResult, error)
	// ReadFile streams a file to w and returns its size.
	ReadFile(ctx context.Context, path string, w io.Writer) (int64, error)
	// Stat describes a path.
	Stat(ctx context.Context, path string) (*FileInfo, error)
	// CopyIn extracts a tar stream into a directory (created if missing).
	CopyIn(ctx context.Context, dir string, tar io.Reader) error
	// CopyOut writes a file or directory tree as a tar stream, with names
	// relative to the path's parent.
	CopyOut(ctx context.Context, path string, w io.Writer) error
}

// WriteResult is what WriteFile wrote.
type WriteResult struct {
	Path   string // as the machine sees it
	Bytes  int64
	SHA256 string
}

// FileInfo describes a file in a machine.
type FileInfo struct {
	Path    string
	Size    int64
	Mode    fs.FileMode
	ModTime time.Time
	IsDir   bool
}

// Snapshotter saves a machine as a snapshot that Create can start from.
type Snapshotter interface {
	Snapshot(ctx context.Context, name string) (SnapshotInfo, error)
}

// MemorySnapshotter is a Snapshotter whose snapshots can carry the Python
// variables of the machine's interpreter too (saved inside the machine),
// restored by the first call of a machine launched from them.
type MemorySnapshotter interface {
	SnapshotWithMemory(ctx context.Context, name string) (SnapshotInfo, error)
}

// Idler is a backend that does something with idle machines: Idle frees
// what an idle machine holds. When it returns a snapshot ("parkedAs"), the
// machine was saved as that snapshot and may now be deleted: the caller
// records the snapshot, then deletes the machine, and Create from the
// snapshot brings it back with its files. "" means the machine stays (and
// restarts by itself on its next use).
type Idler interface {
	Idle(ctx context.Context, id string) (parkedAs string, err error)
}

// SnapshotDeleter is a backend that deletes snapshots (the server deletes
// the snapshot an idle machine was parked as once it is restored).
type SnapshotDeleter interface {
	DeleteSnapshot(ctx context.Context, id string) error
}

// ImageBuilder builds a machine image from a Dockerfile, as a snapshot that
// Create can start machines from.
type ImageBuilder interface {
	BuildImage(ctx context.Context, spec BuildSpec) (SnapshotInfo, error)
}

// BuildSpec describes an image build.
type BuildSpec struct {
	Dockerfile  string   // its text; "" uses the Dockerfile at the top of Context
	Context     *os.Root // host directory sent as the build context; nil for none
	ImageRef    string   // base image label (FROM) when the Dockerfile has none
	Name        string   // of the snapshot
	MachineType string   // of the build machine; "" = the default
}

// FirewallSetter sets the policy for inbound traffic to a machine.
type FirewallSetter interface {
	SetFirewall(ctx context.Context, p FirewallPolicy) error
}

// FirewallPolicy filters inbound traffic: "open" lets everything in,
// "restricted" only what Ingress allows.
type FirewallPolicy struct {
	Mode    string
	Ingress []FirewallRule
}

// FirewallRule lets in one protocol on a port range from some sources.
type FirewallRule struct {
	Protocol    string // tcp or udp
	PortStart   int
	PortEnd     int      // 0 for PortStart alone
	SourceCIDRs []string // IPv6; empty: any source
	Description string
}

// UnsupportedError says that a machine's backend lacks a capability, and
// which configured backend has it.
type UnsupportedError struct {
	Backend    string
	Capability Capability
	Hint       string // what to use instead
}

func (e *UnsupportedError) Error() string {
	msg := fmt.Sprintf("%s machines cannot do %s", e.Backend, describe[e.Capability])
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

var describe = map[Capability]string{
	Python:    "stateful Python (run_python)",
	Shell:     "shell commands (exec_command)",
	Files:     "file transfer (upload_file/download_file)",
	Snapshots: "snapshots (snapshot_vm)",
	Build:     "image builds (build_image)",
	Firewall:  "firewall policies (set_firewall)",
	Reset:     "a reset of their processes (reset_machine)",
}

// Resetter stops a machine's processes from outside them, keeping its
// files: what a fork bomb or a runaway background job leaves needs no
// process of the machine to be stopped.
type Resetter interface {
	// Reset stops every process of the machine but its Python interpreter
	// when keepPython is set (its variables stay), and returns how many it
	// stopped.
	Reset(ctx context.Context, keepPython bool) (int, error)
	// Processes lists the machine's processes: those its commands left
	// running, and its Python interpreter; the most CPU first.
	Processes(ctx context.Context) ([]ProcessInfo, error)
}

// ProcessInfo is a process of a machine (see Resetter).
type ProcessInfo struct {
	PID         int
	Command     string
	CPU         time.Duration
	Interpreter bool
}

// MaxPathDepth and MaxPathBytes bound the machine paths the file tools take,
// on every backend: deeper or longer is not a path a person or a program
// means, and each level costs a walk.
const (
	MaxPathDepth = 256
	MaxPathBytes = 4096
)

// CheckPath refuses a machine path past MaxPathDepth or MaxPathBytes, or a
// relative one that climbs out of the machine's home, with an error that
// says so.
func CheckPath(p string) error {
	if len(p) > MaxPathBytes {
		return fmt.Errorf("path %.64q… is %d bytes long; paths may have at most %d", p, len(p), MaxPathBytes)
	}
	if n := strings.Count(p, "/"); n > MaxPathDepth {
		return fmt.Errorf("path %.64q… is %d directories deep; paths may be at most %d deep", p, n, MaxPathDepth)
	}
	if c := path.Clean(p); !path.IsAbs(c) && (c == ".." || strings.HasPrefix(c, "../")) {
		return fmt.Errorf("path %q leads outside the machine's home (relative paths start in it); give a path inside it", p)
	}
	return nil
}

// PathError is a path that a machine refuses (outside its files, through a
// link that leads out, too deep, a special file), with the reason. Every
// backend returns it for such paths, so that tools tell the agent
// "refused" and why, whatever the machine.
type PathError struct {
	Path   string
	Reason string
}

func (e *PathError) Error() string { return fmt.Sprintf("path %q: %s", e.Path, e.Reason) }

// UnixMode turns a st_mode of stat(2) (as `stat -c %f` prints it in a
// machine, or a remote service reports it) into an fs.FileMode.
func UnixMode(raw uint32) fs.FileMode {
	mode := fs.FileMode(raw & 0o777)
	switch raw & 0o170000 {
	case 0o040000:
		mode |= fs.ModeDir
	case 0o120000:
		mode |= fs.ModeSymlink
	case 0o010000:
		mode |= fs.ModeNamedPipe
	case 0o140000:
		mode |= fs.ModeSocket
	case 0o020000:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		mode |= fs.ModeDevice
	}
	return mode
}

// Check refuses a command that gives both Argv and Shell, or neither.
func (c Command) Check() error {
	switch {
	case len(c.Argv) > 0 && c.Shell != "":
		return errors.New("give either argv or a shell command line, not both")
	case len(c.Argv) == 0 && c.Shell == "":
		return errors.New("nothing to run: give argv or a shell command line")
	}
	return nil
}
