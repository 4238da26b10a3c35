//go:build linux

package fastvm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

// Builds (§3.5) run for real, without buildah: a fresh VM machine, the build
// context extracted into /tmp/buildctx with the Dockerfile written verbatim
// next to it, then a subset of the Dockerfile applied to the VM itself (see
// dockerfile.go), and finally a snapshot of it. FROM images are labels: the
// base is always the host OS that VMs see.

const (
	buildTimeout  = time.Hour
	maxBuildError = 4 << 10 // §3.5: error truncated to ~4 KiB
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
}

func buildView(b *buildRecord) buildJSON {
	return buildJSON{ID: b.ID, CreatedAt: timestamp(b.CreatedAt), ImageRef: b.ImageRef, Status: b.Status,
		Name: b.Name, Progress: b.Progress, SnapshotID: b.SnapshotID, Error: b.Error}
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
	snap, ignored, err := s.build(ctx, b)
	if err != nil && s.ctx.Err() != nil {
		err = errStopped
	}
	s.setBuild(b, func(b *buildRecord) {
		b.Progress, b.Ignored = "", ignored
		if err != nil {
			msg := err.Error()
			if len(msg) > maxBuildError {
				msg = msg[:maxBuildError]
			}
			b.Status, b.Error = buildFailed, msg
			return
		}
		b.Status, b.SnapshotID = buildCompleted, snap
	})
}

// build runs the build's phases and returns the id of the ready snapshot.
func (s *Server) build(ctx context.Context, b *buildRecord) (string, []string, error) {
	s.progress(b, "creating build VM")
	mt := machineTypes[b.MachineName]
	m, err := s.newMachine(ctx, map[string]string{tagBuild: b.ID}, mt.memoryMiB, b.DiskGiB, "")
	if err != nil {
		return "", nil, fmt.Errorf("create the build VM: %w", err)
	}
	defer s.engine.Delete(context.Background(), m.ID())
	if err := runChecked(ctx, m, local.Command{Argv: []string{"mkdir", "-p", buildCtxDir}}); err != nil {
		return "", nil, err
	}
	if b.ContextOID != "" {
		if err := s.extractContext(ctx, m, b.ContextOID); err != nil {
			return "", nil, err
		}
	}
	var ignored []string
	if strings.TrimSpace(b.Dockerfile) == "" {
		// Image-only build: the image is a label, there is nothing to pull.
		s.progress(b, "buildah pull")
	} else {
		s.progress(b, "buildah bud")
		if _, err := m.WriteFile(ctx, buildCtxDir+"/Dockerfile", strings.NewReader(b.Dockerfile), 0o644); err != nil {
			return "", nil, fmt.Errorf("write the Dockerfile: %w", err)
		}
		df, err := parseDockerfile(b.Dockerfile)
		if err != nil {
			return "", nil, err
		}
		if ignored, err = applyDockerfile(ctx, m, df); err != nil {
			return "", ignored, err
		}
	}
	s.progress(b, "applying image")
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
		CreatedAt: time.Now().UTC(), MachineName: b.MachineName, DiskGiB: b.DiskGiB, Firewall: &firewallPolicy{Mode: "restricted"}}
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
	return sn.ID, ignored, nil
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
