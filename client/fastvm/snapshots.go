package fastvm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// CreateSnapshot saves a running VM's disk as a snapshot named name (empty:
// "snapshot-<vm id prefix>"). It answers at once, usually in status
// creating; WaitSnapshot waits for ready. Never retried.
func (c *Client) CreateSnapshot(ctx context.Context, vmID, name string) (*Snapshot, error) {
	body := map[string]string{"vmId": vmID}
	if name != "" {
		body["name"] = name
	}
	return callJSON[Snapshot](ctx, c, call{method: http.MethodPost, path: "/v1/snapshots", body: body})
}

// ListSnapshots returns the organisation's snapshots.
func (c *Client) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	out, err := callJSON[[]Snapshot](ctx, c, call{method: http.MethodGet, path: "/v1/snapshots", retry: true})
	if err != nil {
		return nil, err
	}
	return *out, nil
}

// GetSnapshot returns a snapshot; an unknown id is a 404 *APIError.
func (c *Client) GetSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	return callJSON[Snapshot](ctx, c, call{method: http.MethodGet, path: "/v1/snapshots/" + pathID(id), retry: true})
}

// RenameSnapshot changes a snapshot's name (trimmed, at most 64 runes).
func (c *Client) RenameSnapshot(ctx context.Context, id, name string) (*Snapshot, error) {
	body := map[string]string{"name": name}
	return callJSON[Snapshot](ctx, c, call{method: http.MethodPatch, path: "/v1/snapshots/" + pathID(id), body: body, retry: true})
}

// DeleteSnapshot deletes a snapshot. VMs launched from it are not affected.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) (*DeleteResponse, error) {
	return callJSON[DeleteResponse](ctx, c, call{method: http.MethodDelete, path: "/v1/snapshots/" + pathID(id), retry: true})
}

// WaitSnapshot polls a snapshot until it is ready (every poll interval, for
// at most the wait timeout). Status error fails; unknown statuses count as
// "not yet".
func (c *Client) WaitSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	var s *Snapshot
	err := c.poll(ctx, c.waitTimeout, func() string { return fmt.Sprintf("snapshot %s (status %q)", id, s.Status) },
		func() (done bool, err error) {
			if s, err = c.GetSnapshot(ctx, id); err != nil {
				return false, err
			}
			if s.Status == SnapshotError {
				return false, fmt.Errorf("fastvm: snapshot %s ended in status error: delete it and snapshot the VM again", id)
			}
			return s.Status == SnapshotReady, nil
		})
	if errors.Is(err, errPollTimeout) {
		return nil, fmt.Errorf("fastvm: snapshot %s not ready within %s (status %q): %w", id, c.waitTimeout, s.Status, context.DeadlineExceeded)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Quotas returns the organisation's resource limits and current usage.
func (c *Client) Quotas(ctx context.Context) (*Quotas, error) {
	return callJSON[Quotas](ctx, c, call{method: http.MethodGet, path: "/v1/org/quotas", retry: true})
}

// Health checks that the API answers (GET /healthz).
func (c *Client) Health(ctx context.Context) (*Health, error) {
	return callJSON[Health](ctx, c, call{method: http.MethodGet, path: "/healthz", retry: true})
}
