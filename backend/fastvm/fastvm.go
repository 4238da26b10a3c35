// Package fastvm is the backend of FastVM virtual machines: cloud microVMs
// with commands, file transfer, snapshots, Dockerfile builds and a firewall.
// It adapts the backend interfaces to the FastVM client (package
// github.com/vmcp-dev/vmcp/client/fastvm).
package fastvm

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	"github.com/vmcp-dev/vmcp/internal/capture"
	"github.com/vmcp-dev/vmcp/internal/linesplit"
	"github.com/vmcp-dev/vmcp/internal/tarfs"
	"github.com/vmcp-dev/vmcp/internal/vmrepl"
)

// Name is the backend's name.
const Name = "fastvm"

// Home is where relative paths of a FastVM machine start.
const Home = "/root"

// DefaultMachineType is the size of machines launched without one.
const DefaultMachineType = "c1m2"

// maxStdin bounds the stdin of a command: FastVM takes it whole in the
// request.
const maxStdin = 8 << 20

// What Idle does with an idle VM (Options.IdleAction).
const (
	// IdleAuto pauses where the service can (learned from its first answer
	// to a pause), else snapshots. The default.
	IdleAuto = ""
	// IdlePause pauses the VM: it stays, with its memory and files (a
	// background process goes on where it was), holding no quota; the next
	// call resumes it.
	IdlePause = "pause"
	// IdleSnapshot snapshots the VM and has it deleted: its files are kept,
	// its processes are not; the next call relaunches it from the snapshot.
	IdleSnapshot = "snapshot"
)

// Options configure a Backend.
type Options struct {
	// Marks are metadata put on every VM this backend creates; only VMs
	// carrying all of them are listed and reachable. Default
	// {"created-by": "vmcp"}.
	Marks map[string]string
	// MachineType of machines launched without one; default DefaultMachineType.
	MachineType string
	// IdleAction is IdleAuto (default), IdlePause or IdleSnapshot. Pausing
	// is the default where the service supports it: like a snapshot it
	// frees the VM's quota, and it also keeps the VM's memory (its
	// processes go on where they were), and it is far quicker both ways
	// (BenchmarkIdleRoundTrip; figures in the README). Any other value
	// counts as IdleAuto.
	IdleAction string
	Logger     zerolog.Logger
}

// Backend serves FastVM VMs through a client.
type Backend struct {
	c           *fastvmclient.Client
	marks       map[string]string
	machineType string
	idleAction  string
	log         zerolog.Logger
	// pauseSupport is what the service said to the first pause: 1 it
	// pauses, -1 it has no pause endpoint (404 for a VM that exists), 0
	// not asked yet.
	pauseSupport atomic.Int32

	// known are VMs seen to carry the marks: looking one up again would
	// put a GET on every call. A VM deleted behind our back shows up as a
	// 404 from the call that uses it.
	mu    sync.Mutex
	known map[string]bool
	// paused are VMs known to be paused (by Idle, or seen so): the next
	// call on one resumes it first.
	paused map[string]bool
	// repls are the VMs' Python REPLs (see RunPython).
	repls map[string]*vmrepl.REPL
	// restore are VMs launched from a snapshot, whose first Python call
	// restores the variables the snapshot may carry (see park).
	restore map[string]bool
}

// New returns the backend of c's VMs.
func New(c *fastvmclient.Client, opts Options) *Backend {
	if len(opts.Marks) == 0 {
		opts.Marks = map[string]string{"created-by": "vmcp"}
	}
	if opts.MachineType == "" {
		opts.MachineType = DefaultMachineType
	}
	switch opts.IdleAction {
	case IdleAuto, IdlePause, IdleSnapshot:
	default:
		opts.Logger.Warn().Str("idle_action", opts.IdleAction).Msg("unknown FastVM idle action: pausing where the service can, else snapshotting (use pause or snapshot)")
		opts.IdleAction = IdleAuto
	}
	return &Backend{c: c, marks: opts.Marks, machineType: opts.MachineType, idleAction: opts.IdleAction, log: opts.Logger,
		known: map[string]bool{}, paused: map[string]bool{}, repls: map[string]*vmrepl.REPL{}, restore: map[string]bool{}}
}

// Name is "fastvm".
func (b *Backend) Name() string { return Name }

// Has reports the capabilities: all of them, Python built on exec.
func (b *Backend) Has(c backend.Capability) bool {
	switch c {
	case backend.Python, backend.Shell, backend.Files, backend.Snapshots, backend.Build, backend.Firewall, backend.MachineTypes, backend.Reset:
		return true
	}
	return false
}

var uuidShape = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// Recognizes reports whether id looks like a FastVM VM id (a UUID).
func (b *Backend) Recognizes(id string) bool { return uuidShape.MatchString(id) }

// Create launches a VM and waits until it runs.
func (b *Backend) Create(ctx context.Context, spec backend.MachineSpec) (backend.MachineInfo, error) {
	if spec.Network != nil {
		return backend.MachineInfo{}, backend.ErrNetworkPolicy(Name, "a FastVM machine's network is FastVM's firewall: leave network out, and set its rules with set_firewall")
	}
	if spec.MemoryMiB != 0 || spec.DiskMiB != 0 {
		return backend.MachineInfo{}, errors.New("a FastVM machine's size comes with its machine_type (e.g. c2m4: 2 vCPUs, 4 GiB): give that instead of memory_mb and disk_mb")
	}
	meta := maps.Clone(spec.Tags)
	if meta == nil {
		meta = map[string]string{}
	}
	maps.Copy(meta, b.marks)
	req := fastvmclient.LaunchRequest{Name: spec.Name, SnapshotID: spec.FromSnapshot, Metadata: meta, MachineType: spec.MachineType}
	if req.MachineType == "" && req.SnapshotID == "" {
		req.MachineType = b.machineType
	}
	vm, err := b.c.Launch(ctx, req)
	if err != nil {
		if fastvmclient.IsNotFound(err) && spec.FromSnapshot != "" {
			return backend.MachineInfo{}, backend.ErrNotFound
		}
		return backend.MachineInfo{}, fmt.Errorf("launch a FastVM machine: %w", err)
	}
	b.remember(vm.ID, true)
	if spec.FromSnapshot != "" {
		b.mu.Lock()
		b.restore[vm.ID] = true
		b.mu.Unlock()
	}
	return machineInfo(vm), nil
}

func (b *Backend) remember(id string, known bool) {
	b.mu.Lock()
	if known {
		b.known[id] = true
	} else {
		delete(b.known, id)
		delete(b.paused, id)
	}
	b.mu.Unlock()
}

// notePaused records whether a VM is paused (or on its way: the next call
// resumes it), from what the service said of it.
func (b *Backend) notePaused(id, status string) {
	paused := status == fastvmclient.StatusPaused || status == fastvmclient.StatusPausing
	b.mu.Lock()
	if paused {
		b.paused[id] = true
	} else {
		delete(b.paused, id)
	}
	b.mu.Unlock()
}

func (b *Backend) isPaused(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.paused[id]
}

// resume resumes a paused VM and waits until it runs. Concurrent calls
// may both ask: a resume of a resuming or running VM is harmless.
func (b *Backend) resume(ctx context.Context, id string) error {
	vm, err := b.c.ResumeVM(ctx, id)
	if fastvmclient.IsNotFound(err) {
		b.remember(id, false)
		return backend.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("resume paused FastVM machine %s: %w", id, err)
	}
	b.notePaused(id, vm.Status)
	return nil
}

// Machine returns one of this server's VMs.
func (b *Backend) Machine(ctx context.Context, id string) (backend.Machine, error) {
	b.mu.Lock()
	known := b.known[id]
	b.mu.Unlock()
	if known {
		return &Machine{b: b, id: id}, nil
	}
	vm, err := b.c.GetVM(ctx, id)
	if fastvmclient.IsNotFound(err) {
		return nil, backend.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up FastVM machine %s: %w", id, err)
	}
	// A deleted VM reports deleting for a while before it is a 404:
	// it is gone already, as Machines says by leaving it out.
	if !b.marked(vm.Metadata) || vm.Status == fastvmclient.StatusDeleting {
		return nil, backend.ErrNotFound
	}
	b.remember(id, true)
	b.notePaused(id, vm.Status) // paused before a restart of this server, say
	return &Machine{b: b, id: id}, nil
}

func (b *Backend) marked(meta map[string]string) bool {
	for k, v := range b.marks {
		if meta[k] != v {
			return false
		}
	}
	return true
}

// Machines lists this server's VMs.
func (b *Backend) Machines(ctx context.Context) ([]backend.MachineInfo, error) {
	vms, err := b.c.ListVMs(ctx, b.marks)
	if err != nil {
		return nil, fmt.Errorf("list FastVM machines: %w", err)
	}
	out := make([]backend.MachineInfo, 0, len(vms))
	for i := range vms {
		if vms[i].Status == fastvmclient.StatusDeleting {
			continue
		}
		b.notePaused(vms[i].ID, vms[i].Status)
		out = append(out, machineInfo(&vms[i]))
	}
	return out, nil
}

// Delete deletes a VM.
func (b *Backend) Delete(ctx context.Context, id string) error {
	b.remember(id, false)
	b.forgetREPL(id)
	if _, err := b.c.DeleteVM(ctx, id); err != nil {
		if fastvmclient.IsNotFound(err) {
			return backend.ErrNotFound
		}
		return fmt.Errorf("delete FastVM machine %s: %w", id, err)
	}
	return nil
}

// Snapshots lists the account's snapshots.
func (b *Backend) Snapshots(ctx context.Context) ([]backend.SnapshotInfo, error) {
	snaps, err := b.c.ListSnapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("list FastVM snapshots: %w", err)
	}
	out := make([]backend.SnapshotInfo, 0, len(snaps))
	for i := range snaps {
		out = append(out, snapshotInfo(&snaps[i]))
	}
	return out, nil
}

// Idle frees what an idle VM holds, as Options.IdleAction says. Paused, it
// stays ("" is returned) with its memory and files and the next call on it
// resumes it. Parked, it is snapshotted (disk and files) and the snapshot
// returned: the caller records it and deletes the VM, which costs nothing
// until it is relaunched from the snapshot.
func (b *Backend) Idle(ctx context.Context, id string) (string, error) {
	if b.idleAction == IdleSnapshot || (b.idleAction == IdleAuto && b.pauseSupport.Load() < 0) {
		return b.park(ctx, id)
	}
	vm, err := b.c.PauseVM(ctx, id)
	if err == nil {
		b.pauseSupport.Store(1)
		b.notePaused(id, vm.Status)
		return "", nil
	}
	if !fastvmclient.IsNotFound(err) {
		return "", fmt.Errorf("pause idle FastVM machine %s: %w", id, err)
	}
	// A 404: no such VM, or no pause endpoint (a service before TS SDK 0.5).
	if _, gerr := b.c.GetVM(ctx, id); fastvmclient.IsNotFound(gerr) {
		b.remember(id, false)
		return "", backend.ErrNotFound
	} else if gerr != nil {
		return "", fmt.Errorf("pause idle FastVM machine %s: %w (and looking it up: %v)", id, err, gerr)
	}
	b.pauseSupport.Store(-1)
	if b.idleAction == IdlePause {
		return "", fmt.Errorf("the FastVM service at %s cannot pause machines (POST /v1/vms/{id}/pause is a 404: it predates TS SDK 0.5): set the FastVM idle action to snapshot", b.c.BaseURL())
	}
	b.log.Info().Str("backend", Name).Msg("the FastVM service cannot pause machines: idle ones are snapshotted and deleted instead")
	return b.park(ctx, id)
}

// park snapshots an idle VM for Idle; the caller deletes it. Its Python
// variables, if its interpreter ran code, are saved into its files first,
// for the first call of the VM launched from the snapshot to restore.
func (b *Backend) park(ctx context.Context, id string) (string, error) {
	b.mu.Lock()
	r := b.repls[id]
	b.mu.Unlock()
	if r != nil {
		if _, err := r.SaveVariables(ctx, maxSavedVariables); err != nil {
			b.log.Warn().Err(err).Str("machine", id).Msg("could not save an idle FastVM machine's Python variables before parking it: they are lost")
		}
	}
	s, err := b.c.CreateSnapshot(ctx, id, "vmcp-parked-"+id)
	if fastvmclient.IsNotFound(err) {
		return "", backend.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("snapshot idle FastVM machine %s: %w", id, err)
	}
	if _, err := b.c.WaitSnapshot(ctx, s.ID); err != nil {
		return "", fmt.Errorf("snapshot %s of idle FastVM machine %s: %w", s.ID, id, err)
	}
	return s.ID, nil
}

// DeleteSnapshot deletes a snapshot.
func (b *Backend) DeleteSnapshot(ctx context.Context, id string) error {
	if _, err := b.c.DeleteSnapshot(ctx, id); err != nil {
		if fastvmclient.IsNotFound(err) {
			return backend.ErrNotFound
		}
		return fmt.Errorf("delete FastVM snapshot %s: %w", id, err)
	}
	return nil
}

// BuildImage builds a Dockerfile into a ready snapshot.
func (b *Backend) BuildImage(ctx context.Context, spec backend.BuildSpec) (backend.SnapshotInfo, error) {
	dir := spec.Context
	if dir == nil {
		empty, err := os.MkdirTemp("", "vmcp-build-context-")
		if err != nil {
			return backend.SnapshotInfo{}, err
		}
		defer os.RemoveAll(empty)
		if dir, err = os.OpenRoot(empty); err != nil {
			return backend.SnapshotInfo{}, err
		}
		defer dir.Close()
	}
	build, snap, err := b.c.BuildAndWait(ctx, fastvmclient.BuildRequest{Name: spec.Name, ImageRef: spec.ImageRef, DockerfileContent: spec.Dockerfile, MachineType: spec.MachineType}, dir)
	if err != nil {
		return backend.SnapshotInfo{}, err
	}
	info := snapshotInfo(snap)
	if build.BaseUsed != "" {
		info.Notes = append(info.Notes, "base: "+build.BaseUsed)
	}
	info.Notes = append(info.Notes, build.Warnings...)
	return info, nil
}

func machineInfo(vm *fastvmclient.VM) backend.MachineInfo {
	created, _ := time.Parse(time.RFC3339, vm.CreatedAt)
	status := vm.Status
	switch status {
	case fastvmclient.StatusPaused, fastvmclient.StatusPausing, fastvmclient.StatusResuming:
		// In the tools' words a paused VM is stopped: nothing of it runs,
		// and the next call starts it again (here with its memory).
		status = "stopped"
	}
	return backend.MachineInfo{ID: vm.ID, Name: vm.Name, Backend: Name, Status: status, Tags: vm.Metadata, CreatedAt: created, FromSnapshot: vm.SourceName}
}

func snapshotInfo(s *fastvmclient.Snapshot) backend.SnapshotInfo {
	created, _ := time.Parse(time.RFC3339, s.CreatedAt)
	return backend.SnapshotInfo{ID: s.ID, Name: s.Name, Backend: Name, Machine: s.VMID, Status: s.Status, CreatedAt: created}
}

// Machine is a FastVM VM.
type Machine struct {
	b  *Backend
	id string
}

var (
	_ backend.CommandRunner   = (*Machine)(nil)
	_ backend.FileStore       = (*Machine)(nil)
	_ backend.Snapshotter     = (*Machine)(nil)
	_ backend.FirewallSetter  = (*Machine)(nil)
	_ backend.ImageBuilder    = (*Backend)(nil)
	_ backend.Idler           = (*Backend)(nil)
	_ backend.SnapshotDeleter = (*Backend)(nil)
)

// ID is the VM id.
func (m *Machine) ID() string { return m.id }

// Backend is "fastvm".
func (m *Machine) Backend() string { return Name }

// abs makes a machine path absolute: relative ones start at Home.
func abs(p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(Home, p)
}

// Run runs a command, streaming its output. FastVM commands take an argv
// only: a working directory and environment go through a small sh wrapper,
// with every value passed as an argument, never spliced into the script.
func (m *Machine) Run(ctx context.Context, c backend.Command) (*backend.CommandResult, error) {
	argv := c.Argv
	if c.Shell != "" {
		argv = []string{"bash", "-c", c.Shell}
	}
	if c.Workdir != "" || len(c.Env) > 0 {
		wrapper := []string{"sh", "-c", `cd "$1" && shift && exec env "$@"`, "sh", abs(orHome(c.Workdir))}
		for k, v := range c.Env {
			wrapper = append(wrapper, k+"="+v)
		}
		argv = append(wrapper, argv...)
	}
	req := fastvmclient.ExecRequest{Command: markedArgv(argv)}
	if c.Timeout > 0 {
		req.TimeoutSec = int((c.Timeout + time.Second - 1) / time.Second)
	}
	if c.Stdin != nil {
		b, err := io.ReadAll(io.LimitReader(c.Stdin, maxStdin+1))
		if err != nil {
			return nil, err
		}
		if len(b) > maxStdin {
			return nil, fmt.Errorf("stdin is over %d MiB, FastVM's limit for a command; upload the data as a file instead", maxStdin>>20)
		}
		req.Stdin = b
	}
	var res *backend.CommandResult
	err := m.resumed(ctx, repeatable, func() error {
		var err error
		res, err = m.exec(ctx, req, c)
		return err
	})
	return res, err
}

// exec runs a prepared command for Run.
func (m *Machine) exec(ctx context.Context, req fastvmclient.ExecRequest, c backend.Command) (*backend.CommandResult, error) {
	max := c.MaxOutput
	if max <= 0 {
		max = capture.DefaultMax
	}
	if c.OnOutput == nil && c.Stdout == nil && c.Stderr == nil {
		// Nobody watches the output as it comes, and the service's cut of
		// it will do: the JSON exec is quicker than the stream (one
		// response instead of an event per chunk).
		r, err := m.b.c.Exec(ctx, m.id, req)
		if err != nil {
			return nil, fmt.Errorf("run on FastVM machine %s: %w", m.id, atLimit(err))
		}
		res := &backend.CommandResult{ExitCode: r.ExitCode, TimedOut: r.TimedOut, Duration: r.Duration(),
			Stdout: r.Stdout, Stderr: r.Stderr, StdoutTruncated: r.StdoutTruncated, StderrTruncated: r.StderrTruncated}
		var cut bool
		res.Stdout, cut = capture.Cut(res.Stdout, max)
		res.StdoutTruncated = res.StdoutTruncated || cut
		res.Stderr, cut = capture.Cut(res.Stderr, max)
		res.StderrTruncated = res.StderrTruncated || cut
		return res, nil
	}
	out := [2]*stream{{kept: capture.Capped{Max: max}, name: "stdout", on: c.OnOutput, w: c.Stdout}, {kept: capture.Capped{Max: max}, name: "stderr", on: c.OnOutput, w: c.Stderr}}
	start := time.Now()
	exit, err := m.b.c.ExecStreamFunc(ctx, m.id, req, func(ev fastvmclient.ExecEvent) error {
		switch ev.Type {
		case fastvmclient.EventStdout:
			out[0].write(ev.Data)
		case fastvmclient.EventStderr:
			out[1].write(ev.Data)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("run on FastVM machine %s: %w", m.id, atLimit(err))
	}
	out[0].flush()
	out[1].flush()
	res := &backend.CommandResult{ExitCode: exit.ExitCode, TimedOut: exit.TimedOut,
		Stdout: out[0].kept.String(), Stderr: out[1].kept.String(),
		StdoutTruncated: out[0].kept.Truncated, StderrTruncated: out[1].kept.Truncated,
		Duration: time.Duration(exit.DurationMs) * time.Millisecond}
	if res.Duration == 0 {
		res.Duration = time.Since(start)
	}
	return res, nil
}

func orHome(dir string) string {
	if dir == "" {
		return Home
	}
	return dir
}

// stream collects one output stream: kept up to max bytes (or all of it
// passed to w), and handed out line by line as it arrives.
type stream struct {
	name  string
	on    func(stream, line string)
	w     io.Writer
	kept  capture.Capped
	lines linesplit.Splitter
}

func (s *stream) write(b []byte) {
	if s.w != nil {
		s.w.Write(b)
	} else {
		s.kept.Write(b)
	}
	if s.on != nil {
		s.lines.Split(b, func(line []byte) { s.on(s.name, string(line)) })
	}
}

func (s *stream) flush() {
	if s.on != nil {
		s.lines.Flush(func(line []byte) { s.on(s.name, string(line)) })
	}
}

// WriteFile streams r into a file of the VM.
func (m *Machine) WriteFile(ctx context.Context, p string, r io.Reader, mode fs.FileMode) (*backend.WriteResult, error) {
	h := sha256.New()
	cr := &capture.CountingReader{R: io.TeeReader(r, h)}
	err := m.resumed(ctx, func() bool { return cr.N == 0 }, func() error { return m.b.c.UploadReader(ctx, m.id, cr, -1, abs(p)) })
	if err != nil {
		return nil, err
	}
	if err := m.chmod(ctx, abs(p), mode); err != nil {
		return nil, err
	}
	return &backend.WriteResult{Path: abs(p), Bytes: cr.N, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// chmod gives an uploaded file its mode: the upload takes none, and files
// arrive 0644, which is the default (mode 0) and what needs no request.
func (m *Machine) chmod(ctx context.Context, p string, mode fs.FileMode) error {
	perm := mode.Perm()
	if perm == 0 || perm == 0o644 {
		return nil
	}
	res, err := m.b.c.Exec(ctx, m.id, fastvmclient.ExecRequest{Command: []string{"chmod", strconv.FormatUint(uint64(perm), 8), "--", p}, TimeoutSec: 60})
	if err == nil && res.ExitCode != 0 {
		err = errors.New(strings.TrimSpace(res.Stderr))
	}
	if err != nil {
		return fmt.Errorf("set the mode of %s in FastVM machine %s to %o: %w", p, m.id, perm, err)
	}
	return nil
}

// repeatable is resumed's again for calls that take nothing from the
// caller's streams: one refused with a 409 did nothing.
func repeatable() bool { return true }

// resumed runs op on the VM, resuming the VM first if it is known to be
// paused, so that a call on a machine paused while idle just works. When op
// finds the VM not running (a 409) and it turns out to be paused — by its
// TTL, by another server, or before this one started — it is resumed, and
// op runs again if again says it consumed nothing of the caller's streams;
// otherwise the error says to repeat the call.
func (m *Machine) resumed(ctx context.Context, again func() bool, op func() error) error {
	if m.b.isPaused(m.id) {
		if err := m.b.resume(ctx, m.id); err != nil {
			return err
		}
	}
	err := op()
	var apiErr *fastvmclient.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		return err
	}
	vm, gerr := m.b.c.GetVM(ctx, m.id)
	if gerr != nil || (vm.Status != fastvmclient.StatusPaused && vm.Status != fastvmclient.StatusPausing && vm.Status != fastvmclient.StatusResuming) {
		return err
	}
	if rerr := m.b.resume(ctx, m.id); rerr != nil {
		return fmt.Errorf("%w (the machine is paused, and resuming it failed: %v)", err, rerr)
	}
	if !again() {
		return fmt.Errorf("FastVM machine %s was paused, which stopped this call part way; it runs again now: repeat the call", m.id)
	}
	return op()
}

// ReadFile streams a file of the VM to w.
func (m *Machine) ReadFile(ctx context.Context, p string, w io.Writer) (int64, error) {
	var n int64
	err := m.resumed(ctx, func() bool { return n == 0 }, func() error {
		var err error
		n, err = m.b.c.DownloadWriter(ctx, m.id, abs(p), w)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return n, fmt.Errorf("%s: no such file in FastVM machine %s", abs(p), m.id)
	}
	return n, err
}

// statScript prints size, mode (hex) and modification time of $1, or exits 2.
const statScript = `test -e "$1" || test -L "$1" || exit 2; stat -c '%s %f %Y' -- "$1"`

// Stat describes a path of the VM.
func (m *Machine) Stat(ctx context.Context, p string) (*backend.FileInfo, error) {
	var fi *backend.FileInfo
	err := m.resumed(ctx, repeatable, func() error {
		var err error
		fi, err = m.stat(ctx, p)
		return err
	})
	return fi, err
}

func (m *Machine) stat(ctx context.Context, p string) (*backend.FileInfo, error) {
	res, err := m.b.c.Exec(ctx, m.id, fastvmclient.ExecRequest{Command: []string{"sh", "-c", statScript, "sh", abs(p)}, TimeoutSec: 60})
	if err != nil {
		return nil, err
	}
	if res.ExitCode == 2 {
		return nil, fmt.Errorf("%s: no such file or directory in FastVM machine %s", abs(p), m.id)
	}
	f := strings.Fields(res.Stdout)
	if res.ExitCode != 0 || len(f) != 3 {
		return nil, fmt.Errorf("stat %s in FastVM machine %s failed: %s", abs(p), m.id, strings.TrimSpace(res.Stderr))
	}
	size, _ := strconv.ParseInt(f[0], 10, 64)
	raw, _ := strconv.ParseUint(f[1], 16, 32)
	mtime, _ := strconv.ParseInt(f[2], 10, 64)
	const sIFMT, sIFDIR = 0o170000, 0o040000
	isDir := raw&sIFMT == sIFDIR
	mode := fs.FileMode(raw & 0o777)
	if isDir {
		mode |= fs.ModeDir
	}
	return &backend.FileInfo{Path: abs(p), Size: size, Mode: mode, ModTime: time.Unix(mtime, 0).UTC(), IsDir: isDir}, nil
}

// CopyIn extracts a tar stream into a directory of the VM.
func (m *Machine) CopyIn(ctx context.Context, dir string, r io.Reader) error {
	cr := &capture.CountingReader{R: r}
	return m.resumed(ctx, func() bool { return cr.N == 0 }, func() error { return m.copyIn(ctx, dir, cr) })
}

func (m *Machine) copyIn(ctx context.Context, dir string, r io.Reader) error {
	pr, pw := io.Pipe()
	go func() {
		gz, _ := gzip.NewWriterLevel(pw, gzip.BestSpeed)
		_, err := io.Copy(gz, r)
		if cerr := gz.Close(); err == nil {
			err = cerr
		}
		pw.CloseWithError(err)
	}()
	err := m.b.c.UploadArchive(ctx, m.id, pr, abs(dir))
	pr.CloseWithError(io.ErrClosedPipe)
	return err
}

// CopyOut writes a file or directory of the VM as a tar stream whose names
// start with the path's last element, like the local engine's.
func (m *Machine) CopyOut(ctx context.Context, p string, w io.Writer) error {
	cw := &capture.CountingWriter{W: w}
	return m.resumed(ctx, func() bool { return cw.N == 0 }, func() error { return m.copyOut(ctx, p, cw) })
}

func (m *Machine) copyOut(ctx context.Context, p string, w io.Writer) error {
	fi, err := m.stat(ctx, p)
	if err != nil {
		return err
	}
	base := path.Base(abs(p))
	if !fi.IsDir {
		tw := tar.NewWriter(w)
		if err := tw.WriteHeader(&tar.Header{Name: base, Mode: int64(fi.Mode.Perm()), Size: fi.Size, ModTime: fi.ModTime, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		n, err := m.b.c.DownloadWriter(ctx, m.id, abs(p), tw)
		if err != nil {
			return err
		}
		if n != fi.Size {
			return fmt.Errorf("%s changed size while it was copied (%d bytes, then %d)", abs(p), fi.Size, n)
		}
		return tw.Close()
	}
	// The VM sends a tar.gz of the directory's contents: prefix the names.
	pr, pw := io.Pipe()
	go func() {
		_, err := m.b.c.DownloadArchive(ctx, m.id, abs(p), pw)
		pw.CloseWithError(err)
	}()
	defer pr.CloseWithError(io.ErrClosedPipe)
	zr, err := gzip.NewReader(pr)
	if err != nil {
		return fmt.Errorf("the archive of %s: %w", abs(p), err)
	}
	if err := tarfs.Rename(w, zr, base); err != nil {
		return fmt.Errorf("the archive of %s: %w", abs(p), err)
	}
	return nil
}

// Snapshot saves the VM's disk and waits until the snapshot is ready. A
// paused VM is resumed first: FastVM answers every snapshot request of one
// pause with the same snapshot, whatever its name.
func (m *Machine) Snapshot(ctx context.Context, name string) (backend.SnapshotInfo, error) {
	var s *fastvmclient.Snapshot
	err := m.resumed(ctx, repeatable, func() error {
		var err error
		s, err = m.b.c.CreateSnapshot(ctx, m.id, name)
		return err
	})
	if err != nil {
		return backend.SnapshotInfo{}, fmt.Errorf("snapshot FastVM machine %s: %w", m.id, err)
	}
	id := s.ID
	if s, err = m.b.c.WaitSnapshot(ctx, id); err != nil {
		return backend.SnapshotInfo{}, fmt.Errorf("snapshot %s of FastVM machine %s: %w", id, m.id, err)
	}
	return snapshotInfo(s), nil
}

// SetFirewall replaces the VM's inbound policy.
func (m *Machine) SetFirewall(ctx context.Context, p backend.FirewallPolicy) error {
	pol := fastvmclient.FirewallPolicy{Mode: p.Mode}
	for _, r := range p.Ingress {
		pol.Ingress = append(pol.Ingress, fastvmclient.FirewallRule{Protocol: r.Protocol, PortStart: r.PortStart, PortEnd: r.PortEnd, SourceCIDRs: r.SourceCIDRs, Description: r.Description})
	}
	_, err := m.b.c.SetFirewall(ctx, m.id, pol)
	return err
}
