//go:build linux

package fastvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

// Builds (§3.5) run for real, without buildah: a fresh VM machine, the build
// context extracted into /tmp/buildctx with the Dockerfile written verbatim
// next to it, then a subset of the Dockerfile applied to the VM itself (see
// dockerfile.go), and finally a snapshot of it. FROM images (and imageRef)
// are not pulled, since the emulator cannot pull images: the base is always
// the host's OS as VMs see it, and the build says so where a client and an
// operator look: in BuildResponse's extension fields emulatorBase (that OS
// and its Python), warnings (the FROM that was not used first, then the
// instructions recorded but not applied) and log (each step and its
// output), in a failed build's error, and in the emulator's log.

const (
	buildTimeout  = time.Hour
	maxBuildError = 4 << 10 // §3.5: error truncated to ~4 KiB
	maxBuildLog   = 64 << 10
	buildCtxDir   = "/tmp/buildctx"
)

// errStopped is why work in flight when the emulator stopped failed.
var errStopped = errors.New("the emulator stopped while this was in progress: start it again")

// buildJSON is the wire BuildResponse.
type buildJSON struct {
	ID         string `json:"id"`
	CreatedAt  string `json:"createdAt"`
	ImageRef   string `json:"imageRef"`
	Status     string `json:"status"`
	Name       string `json:"name,omitempty"`
	Progress   string `json:"progress,omitempty"`
	SnapshotID string `json:"snapshotId,omitempty"`
	Error      string `json:"error,omitempty"`
	// Emulator extensions (clients ignore unknown fields, §0): the base the
	// build actually used, what it did not do as asked, and its log.
	EmulatorBase string   `json:"emulatorBase,omitempty"`
	Warnings     []string `json:"warnings,omitempty"`
	Log          string   `json:"log,omitempty"`
}

func buildView(b *buildRecord) buildJSON {
	out := buildJSON{ID: b.ID, CreatedAt: timestamp(b.CreatedAt), ImageRef: b.ImageRef, Status: b.Status,
		Name: b.Name, Progress: b.Progress, SnapshotID: b.SnapshotID, Error: b.Error, Log: b.Log}
	if b.Base != "" {
		out.EmulatorBase = "the host's OS as the emulator's VMs see it: " + b.Base
	}
	if b.FromWarning != "" {
		out.Warnings = append(out.Warnings, b.FromWarning)
	}
	out.Warnings = append(out.Warnings, b.Ignored...)
	return out
}

func (s *Server) createBuild(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ImageRef           string `json:"imageRef"`
		DockerfileContent  string `json:"dockerfileContent"`
		ContextDownloadURL string `json:"contextDownloadUrl"`
		MachineType        string `json:"machineType"`
		DiskGiB            *int   `json:"diskGiB"`
		Name               string `json:"name"`
	}
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	if req.ImageRef == "" && strings.TrimSpace(req.DockerfileContent) == "" {
		writeError(w, http.StatusBadRequest, "give imageRef, dockerfileContent or both")
		return
	}
	b := &buildRecord{ID: newUUID(), Status: buildPending, CreatedAt: time.Now().UTC(), Dockerfile: req.DockerfileContent,
		MachineName: "c1m2", DiskGiB: baseDiskGiB, ImageRef: req.ImageRef}
	if req.MachineType != "" {
		if _, ok := machineTypes[req.MachineType]; !ok {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown machineType %q: use one of c1m2, c2m4, c4m8, c8m16", req.MachineType))
			return
		}
		b.MachineName = req.MachineType
	}
	if req.DiskGiB != nil {
		if *req.DiskGiB < baseDiskGiB {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("diskGiB %d is too small: give at least %d", *req.DiskGiB, baseDiskGiB))
			return
		}
		b.DiskGiB = *req.DiskGiB
	}
	if req.ContextDownloadURL != "" {
		oid, err := s.mintedObject(req.ContextDownloadURL)
		if err != nil {
			writeError(w, http.StatusBadRequest, "contextDownloadUrl: "+err.Error())
			return
		}
		b.ContextOID = oid
	}
	if b.ImageRef == "" {
		// Spec §13 #11: the Dockerfile's first FROM image, else "".
		b.ImageRef = firstFromImage(req.DockerfileContent)
	}
	if b.Name = normalizeName(req.Name); b.Name == "" {
		b.Name = b.ID
	}
	s.mu.Lock()
	if err := s.checkSnapshotQuota(); err != nil {
		s.mu.Unlock()
		writeError(w, http.StatusTooManyRequests, err.Error())
		return
	}
	err := s.store.saveBuild(b)
	if err == nil {
		s.store.builds[b.ID] = b
	}
	out := buildView(b)
	s.mu.Unlock()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "store the build record: "+err.Error())
		return
	}
	if !s.goBackground(func(ctx context.Context) { s.runBuild(ctx, b) }) {
		writeError(w, http.StatusServiceUnavailable, "the FastVM emulator is closing")
		return
	}
	writeJSON(w, http.StatusAccepted, out)
}

func (s *Server) getBuild(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	b, ok := s.store.builds[id]
	var out buildJSON
	if ok {
		out = buildView(b)
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("build %s not found", id))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// setBuild updates a build's record under the lock and stores it.
func (s *Server) setBuild(b *buildRecord, f func(b *buildRecord)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(b)
	if err := s.store.saveBuild(b); err != nil {
		s.log.Warn().Str("build", b.ID).Err(err).Msg("fastvm emulator: store the build record")
	}
}

func (s *Server) progress(b *buildRecord, phase string) {
	s.setBuild(b, func(b *buildRecord) { b.Status, b.Progress = buildRunning, phase })
}

func (s *Server) runBuild(ctx context.Context, b *buildRecord) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	log := &buildLog{max: maxBuildLog}
	snap, ignored, err := s.build(ctx, b, log)
	if err != nil && s.ctx.Err() != nil {
		err = errStopped
	}
	s.setBuild(b, func(b *buildRecord) {
		b.Progress, b.Ignored, b.Log = "", ignored, log.String()
		if err != nil {
			msg := err.Error()
			// The base goes last, and survives the truncation: a step that
			// fails on the host's OS may well have worked on the image's.
			note := ""
			if b.Base != "" && b.ImageRef != "" && !errors.Is(err, errStopped) {
				note = fmt.Sprintf("\n(this build's base was the host's OS, %s, not %s, which the emulator cannot pull)", b.Base, b.ImageRef)
			}
			if len(msg)+len(note) > maxBuildError {
				msg = msg[:max(maxBuildError-len(note), 0)]
			}
			b.Status, b.Error = buildFailed, msg+note
			return
		}
		b.Status, b.SnapshotID = buildCompleted, snap
	})
}

// build runs the build's phases and returns the id of the ready snapshot,
// and the instructions recorded but not applied.
func (s *Server) build(ctx context.Context, b *buildRecord, log *buildLog) (string, []string, error) {
	s.progress(b, "creating build VM")
	mt := machineTypes[b.MachineName]
	m, err := s.newMachine(ctx, map[string]string{tagBuild: b.ID}, mt.memoryMiB, b.DiskGiB, "")
	if err != nil {
		return "", nil, fmt.Errorf("create the build VM: %w", err)
	}
	defer s.engine.Delete(context.Background(), m.ID())
	// The image asked for is the Dockerfile's first FROM, else imageRef:
	// createBuild keeps it in ImageRef (Spec §13 #11).
	base, python := describeBase(ctx, m)
	s.setBuild(b, func(b *buildRecord) {
		b.Base = base
		if b.ImageRef != "" {
			b.FromWarning = fromWarning(b.ImageRef, base, python)
		}
	})
	if img := b.ImageRef; img != "" {
		s.log.Warn().Str("build", b.ID).Str("image", img).Str("base", base).
			Msg("fastvm emulator: the build's image is not pulled (the emulator cannot pull images): it is built on the host's OS as VMs see it")
	}
	log.printf("Base: the host's OS as the emulator's VMs see it: %s\n", base)
	if err := runChecked(ctx, m, local.Command{Argv: []string{"mkdir", "-p", buildCtxDir}}); err != nil {
		return "", nil, err
	}
	if b.ContextOID != "" {
		if err := s.extractContext(ctx, m, b.ContextOID); err != nil {
			return "", nil, err
		}
	}
	var ignored []string
	var env map[string]string
	if strings.TrimSpace(b.Dockerfile) == "" {
		// Image-only build: the image cannot be pulled; the snapshot is
		// the base as it is.
		s.progress(b, "buildah pull")
		log.printf("Image %s: not pulled; the image is the base as it is\n", b.ImageRef)
	} else {
		s.progress(b, "buildah bud")
		if _, err := m.WriteFile(ctx, buildCtxDir+"/Dockerfile", strings.NewReader(b.Dockerfile), 0o644); err != nil {
			return "", nil, fmt.Errorf("write the Dockerfile: %w", err)
		}
		df, err := parseDockerfile(b.Dockerfile)
		if err != nil {
			return "", nil, err
		}
		if !hasFrom(df) && b.ImageRef != "" {
			log.printf("No FROM: the base stands for imageRef %s\n", b.ImageRef)
		}
		baseLine := "not pulled (the emulator cannot pull images); the base is the host's OS: " + base
		st, err := applyDockerfile(ctx, m, df, baseLine, log)
		ignored, env = st.ignored, st.env
		if err != nil {
			return "", ignored, err
		}
	}
	s.progress(b, "applying image")
	if err := writeImageEnv(ctx, m, env); err != nil {
		return "", ignored, err
	}
	s.progress(b, "settling VM")
	if err := runChecked(ctx, m, local.Command{Argv: []string{"rm", "-rf", buildCtxDir, buildCtxDir + ".tar.gz"}}); err != nil {
		return "", ignored, err
	}
	s.progress(b, "creating snapshot")
	info, err := m.Snapshot(ctx, b.Name)
	if err != nil {
		return "", ignored, fmt.Errorf("snapshot the build VM: %w", err)
	}
	sn := &snapshotRecord{ID: newUUID(), LocalID: info.ID, Name: b.Name, VMID: newUUID(), Status: snapReady,
		CreatedAt: time.Now().UTC(), MachineName: b.MachineName, DiskGiB: b.DiskGiB, Firewall: &firewallPolicy{Mode: "restricted"},
		ImageEnv: env}
	s.mu.Lock()
	err = s.store.saveSnap(sn)
	if err == nil {
		s.store.snapshots[sn.ID] = sn
	}
	s.mu.Unlock()
	if err != nil {
		s.engine.DeleteSnapshot(info.ID)
		return "", ignored, fmt.Errorf("store the snapshot record: %w", err)
	}
	log.printf("Snapshot %s\n", sn.ID)
	return sn.ID, ignored, nil
}

// describeBase says what a build's base really is, as the build VM sees it:
// its OS, and its python3's version and path ("" if it has none).
func describeBase(ctx context.Context, m *local.Machine) (base, python string) {
	const probe = `. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-an unknown Linux}"
python3 -c 'import platform, sys; print(platform.python_version(), sys.executable)' 2>/dev/null`
	res, err := m.Run(ctx, local.Command{Argv: []string{"/bin/sh", "-c", probe}, Timeout: time.Minute, MaxOutput: 4 << 10})
	if err != nil {
		return "an unknown Linux (it could not be probed: " + err.Error() + ")", ""
	}
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	base = strings.TrimSpace(lines[0])
	if len(lines) > 1 {
		if v, exe, ok := strings.Cut(strings.TrimSpace(lines[1]), " "); ok {
			python = v
			return fmt.Sprintf("%s, with Python %s (%s)", base, v, exe), python
		}
	}
	return base + ", without python3", ""
}

// fromWarning says plainly that image was not used, and what was instead;
// for an official python image whose version differs from the base's
// python3, that too.
func fromWarning(image, base, python string) string {
	msg := fmt.Sprintf("%s was not used: the emulator cannot pull images, so the image was built on the host's OS as the emulator's VMs see it: %s", image, base)
	name, tag, _ := strings.Cut(path.Base(image), ":")
	if name == "python" && python != "" {
		want := tag
		if i := strings.IndexFunc(tag, func(r rune) bool { return r != '.' && (r < '0' || r > '9') }); i >= 0 {
			want = strings.TrimRight(tag[:i], ".")
		}
		if want != "" && python != want && !strings.HasPrefix(python, want+".") {
			msg += fmt.Sprintf(". Its Python is %s, not the image's %s", python, want)
		}
	}
	return msg
}

func hasFrom(df []instruction) bool {
	for _, in := range df {
		if in.cmd == "FROM" {
			return true
		}
	}
	return false
}

// writeImageEnv writes the image's ENV into its /etc/environment (what a
// login reads; the emulator itself applies the snapshot's record to each
// command), replacing lines that set the same names.
func writeImageEnv(ctx context.Context, m *local.Machine, env map[string]string) error {
	if len(env) == 0 {
		return nil
	}
	cur, err := m.Run(ctx, local.Command{Argv: []string{"/bin/sh", "-c", "cat /etc/environment 2>/dev/null; true"}, Timeout: time.Minute})
	if err != nil {
		return fmt.Errorf("read the image's /etc/environment: %w", err)
	}
	var out strings.Builder
	for _, line := range strings.Split(cur.Stdout, "\n") {
		name, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "export "), "=")
		if _, set := env[strings.TrimSpace(name)]; set || line == "" {
			continue
		}
		out.WriteString(line + "\n")
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		v := env[k]
		if strings.ContainsAny(v, "\"\n") {
			fmt.Fprintf(&out, "%s=%s\n", k, strings.ReplaceAll(v, "\n", " "))
		} else {
			fmt.Fprintf(&out, "%s=\"%s\"\n", k, v)
		}
	}
	if _, err := m.WriteFile(ctx, "/etc/environment", strings.NewReader(out.String()), 0o644); err != nil {
		return fmt.Errorf("write the image's ENV to /etc/environment: %w", err)
	}
	return nil
}

// buildLog is a build's log: its steps and their output, the last max
// bytes of it.
type buildLog struct {
	max     int
	mu      sync.Mutex
	b       []byte
	dropped bool
}

func (l *buildLog) printf(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = fmt.Appendf(l.b, format, args...)
	if l.max > 0 && len(l.b) > l.max {
		l.b = l.b[len(l.b)-l.max:]
		if i := bytes.IndexByte(l.b, '\n'); i >= 0 {
			l.b = l.b[i+1:]
		}
		l.dropped = true
	}
}

// String is the log, with a first line saying when its start was dropped.
func (l *buildLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped {
		return "[the log's start was dropped: it keeps its last " + fmt.Sprint(l.max>>10) + " KiB]\n" + string(l.b)
	}
	return string(l.b)
}

// extractContext unpacks the uploaded tar.gz context into /tmp/buildctx,
// inside the build VM (the archive is the user's: the host never parses it).
func (s *Server) extractContext(ctx context.Context, m *local.Machine, oid string) error {
	f, err := os.Open(s.objectFile(oid))
	if err != nil {
		return fmt.Errorf("the build context was never uploaded: PUT the tar.gz to the uploadUrl of build-contexts/presign before creating the build")
	}
	defer f.Close()
	if _, err := m.WriteFile(ctx, buildCtxDir+".tar.gz", f, 0o600); err != nil {
		return fmt.Errorf("copy the build context into the build VM: %w", err)
	}
	err = runChecked(ctx, m, local.Command{Argv: []string{"tar", "-xzf", buildCtxDir + ".tar.gz", "--no-same-owner", "-C", buildCtxDir}})
	if err != nil {
		return fmt.Errorf("extract the build context (it must be a tar.gz): %w", err)
	}
	return nil
}

// runLogged is runChecked, with the command's output lines in log.
func runLogged(ctx context.Context, m *local.Machine, cmd local.Command, log *buildLog) error {
	if log != nil {
		cmd.OnOutput = func(_, line string) { log.printf("%s\n", strings.TrimRight(line, "\n")) }
	}
	return runChecked(ctx, m, cmd)
}

// runChecked runs a build step and turns a failure into an error with the
// tail of its output.
func runChecked(ctx context.Context, m *local.Machine, cmd local.Command) error {
	if cmd.MaxOutput == 0 {
		cmd.MaxOutput = 64 << 10
	}
	res, err := m.Run(ctx, cmd)
	if err != nil {
		return err
	}
	if res.TimedOut || res.ExitCode != 0 {
		out := strings.TrimSpace(res.Stdout + "\n" + res.Stderr)
		if len(out) > 2048 {
			out = "…" + out[len(out)-2048:]
		}
		how := fmt.Sprintf("exit code %d", res.ExitCode)
		if res.TimedOut {
			how = "timed out"
		}
		return fmt.Errorf("%s: %s", how, out)
	}
	return nil
}

// firstFromImage is the image of the Dockerfile's first FROM, or "".
func firstFromImage(dockerfile string) string {
	df, err := parseDockerfile(dockerfile)
	if err != nil {
		return ""
	}
	for _, in := range df {
		if in.cmd == "FROM" {
			return fromImage(in.args)
		}
	}
	return ""
}

func fromImage(args string) string {
	for _, f := range strings.Fields(args) {
		if !strings.HasPrefix(f, "--") {
			return f
		}
	}
	return ""
}

// resolve makes p absolute against dir.
func resolve(dir, p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(dir, p)
}
