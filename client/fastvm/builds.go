package fastvm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
)

// PresignBuildContext mints signed URLs for a build-context tarball (tar.gz,
// PUT with Content-Type application/gzip). Never retried.
func (c *Client) PresignBuildContext(ctx context.Context) (*PresignedURLs, error) {
	return callJSON[PresignedURLs](ctx, c, call{method: http.MethodPost, path: "/v1/build-contexts/presign"})
}

// CreateBuild starts a build that turns an image or a Dockerfile into a
// snapshot. It answers at once (status pending); GetBuild follows it. Never
// retried.
func (c *Client) CreateBuild(ctx context.Context, req BuildRequest) (*Build, error) {
	return callJSON[Build](ctx, c, call{method: http.MethodPost, path: "/v1/builds", body: req})
}

// GetBuild returns a build's current state.
func (c *Client) GetBuild(ctx context.Context, id string) (*Build, error) {
	return callJSON[Build](ctx, c, call{method: http.MethodGet, path: "/v1/builds/" + pathID(id), retry: true})
}

// Build builds a snapshot and returns it once ready. With a contextDir, its
// contents are streamed as a tar.gz to a build-context staging object and
// become the build context (COPY sources); a Dockerfile at its top is used
// when req.DockerfileContent is empty. Build polls the build every poll
// interval for at most the build timeout; a failed build is a *BuildError
// with the server's diagnostic.
func (c *Client) Build(ctx context.Context, req BuildRequest, contextDir string) (*Snapshot, error) {
	if contextDir == "" {
		return c.BuildFrom(ctx, req, nil)
	}
	fi, err := os.Stat(contextDir)
	if err != nil {
		return nil, fmt.Errorf("fastvm: build context: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("fastvm: build context %s is not a directory", contextDir)
	}
	root, err := os.OpenRoot(contextDir)
	if err != nil {
		return nil, fmt.Errorf("fastvm: build context: %w", err)
	}
	defer root.Close()
	return c.BuildFrom(ctx, req, root)
}

// BuildFrom is Build with the build context given as an opened directory
// (nil for none): nothing outside it is read, even if links inside it
// change while it is sent.
func (c *Client) BuildFrom(ctx context.Context, req BuildRequest, contextDir *os.Root) (*Snapshot, error) {
	_, snap, err := c.BuildAndWait(ctx, req, contextDir)
	return snap, err
}

// BuildAndWait is BuildFrom that also returns the completed build, with
// what the service said of it (Build.Warnings).
func (c *Client) BuildAndWait(ctx context.Context, req BuildRequest, contextDir *os.Root) (*Build, *Snapshot, error) {
	if contextDir != nil && req.DockerfileContent == "" {
		if df, err := contextDir.ReadFile("Dockerfile"); err == nil {
			req.DockerfileContent = string(df)
		}
	}
	if req.ImageRef == "" && req.DockerfileContent == "" {
		return nil, nil, fmt.Errorf("fastvm: a build needs an ImageRef or a Dockerfile (DockerfileContent, or a Dockerfile in the context directory)")
	}
	if contextDir != nil {
		p, err := c.PresignBuildContext(ctx)
		if err != nil {
			return nil, nil, err
		}
		if err := c.putTarGz(ctx, p.UploadURL, contextDir, "application/gzip"); err != nil {
			return nil, nil, fmt.Errorf("fastvm: sending the build context: %w", err)
		}
		req.ContextDownloadURL = p.DownloadURL
	}
	b, err := c.CreateBuild(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	first := true
	err = c.poll(ctx, c.buildTimeout, func() string { return fmt.Sprintf("build %s (status %q)", b.ID, b.Status) },
		func() (done bool, err error) {
			if !first {
				if b, err = c.GetBuild(ctx, b.ID); err != nil {
					return false, err
				}
			}
			first = false
			switch b.Status {
			case BuildCompleted:
				if b.SnapshotID == "" {
					return false, &BuildError{BuildID: b.ID, Status: b.Status, Message: "completed without a snapshot id"}
				}
				return true, nil
			case BuildFailed:
				return false, &BuildError{BuildID: b.ID, Status: b.Status, Message: b.Error}
			}
			return false, nil
		})
	if errors.Is(err, errPollTimeout) {
		return nil, nil, fmt.Errorf("fastvm: build %s not completed within %s (status %q, %s): follow it with GetBuild: %w",
			b.ID, c.buildTimeout, b.Status, b.Progress, context.DeadlineExceeded)
	}
	if err != nil {
		return nil, nil, err
	}
	snap, err := c.GetSnapshot(ctx, b.SnapshotID)
	return b, snap, err
}
