package fastvm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// minPollDelay is the shortest pause between polls, whatever the interval.
const minPollDelay = 500 * time.Millisecond

// Launch creates a VM and waits until it runs. POST /v1/vms answers 201 with
// a running VM or 202 with a queued one; in the second case Launch polls GET
// /v1/vms/{id} like WaitReady. A VM that ends in error, stopped or deleting is
// a *LaunchError; one still not running after the wait timeout is a
// *NotReadyError. The POST is never retried (a retry could launch twice).
func (c *Client) Launch(ctx context.Context, req LaunchRequest) (*VM, error) {
	vm, err := c.LaunchNoWait(ctx, req)
	if err != nil {
		return nil, err
	}
	if vm.Status == StatusRunning {
		return vm, nil
	}
	return c.WaitReady(ctx, vm.ID)
}

// LaunchNoWait creates a VM and returns the server's first answer, running
// (201) or still provisioning (202), without polling.
func (c *Client) LaunchNoWait(ctx context.Context, req LaunchRequest) (*VM, error) {
	vm, err := callJSON[VM](ctx, c, call{method: http.MethodPost, path: "/v1/vms", body: req})
	if err == nil && vm.ID == "" {
		return nil, errors.New("fastvm: POST /v1/vms: the answer has no VM id; the VM may exist: check ListVMs")
	}
	return vm, err
}

// WaitReady polls a VM until it runs: a GET at once, then one every poll
// interval (±10 % jitter, at least 0.5 s, never past the deadline). It fails
// with a *LaunchError on error, stopped or deleting, with a *NotReadyError
// after the wait timeout, and with the API error if a GET fails (e.g. 404).
// Unknown statuses count as "still starting".
func (c *Client) WaitReady(ctx context.Context, vmID string) (*VM, error) {
	return c.waitRunning(ctx, vmID, "")
}

// waitRunning is WaitReady for a launch (op "") or a resume (op "resume",
// for which paused is a failure too: the resume did not take).
func (c *Client) waitRunning(ctx context.Context, vmID, op string) (*VM, error) {
	var vm *VM
	err := c.poll(ctx, c.waitTimeout, func() string { return fmt.Sprintf("VM %s to run (last status %q)", vmID, vm.Status) },
		func() (done bool, err error) {
			if vm, err = c.GetVM(ctx, vmID); err != nil {
				return false, err
			}
			switch vm.Status {
			case StatusRunning:
				return true, nil
			case StatusError, StatusStopped, StatusDeleting:
				return false, &LaunchError{VMID: vmID, Status: vm.Status, Op: op}
			case StatusPaused:
				if op == "resume" {
					return false, &LaunchError{VMID: vmID, Status: vm.Status, Op: op}
				}
			}
			return false, nil
		})
	if errors.Is(err, errPollTimeout) {
		return nil, &NotReadyError{VMID: vmID, LastStatus: vm.Status, Timeout: c.waitTimeout}
	}
	if err != nil {
		return nil, err
	}
	return vm, nil
}

// errPollTimeout is poll's report that its timeout passed.
var errPollTimeout = errors.New("fastvm: the wait timed out")

// poll calls check at once and then after every poll delay until check is
// done or fails (its error returned as is), the timeout passes
// (errPollTimeout) or ctx ends (its error, saying what was awaited).
func (c *Client) poll(ctx context.Context, timeout time.Duration, awaited func() string, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		if done, err := check(); done || err != nil {
			return err
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return errPollTimeout
		}
		if err := sleepCtx(ctx, pollDelay(c.pollInterval, remaining)); err != nil {
			return fmt.Errorf("fastvm: waiting for %s: %w", awaited(), err)
		}
	}
}

// pollDelay is interval ±10 %, at least minPollDelay, capped at remaining.
func pollDelay(interval, remaining time.Duration) time.Duration {
	d := time.Duration(float64(interval) * (0.9 + 0.2*rand.Float64()))
	return min(max(d, minPollDelay), remaining)
}

// GetVM returns a VM; an unknown id is a 404 *APIError (see IsNotFound).
func (c *Client) GetVM(ctx context.Context, vmID string) (*VM, error) {
	return callJSON[VM](ctx, c, call{method: http.MethodGet, path: "/v1/vms/" + pathID(vmID), retry: true})
}

// ListVMs returns the organisation's VMs (not deleted ones). A non-empty
// metadata keeps only the VMs whose metadata has every given key and value.
func (c *Client) ListVMs(ctx context.Context, metadata map[string]string) ([]VM, error) {
	return c.ListVMsWith(ctx, ListOptions{Metadata: metadata})
}

// ListVMsWith returns the organisation's VMs that pass the filters of opts.
func (c *Client) ListVMsWith(ctx context.Context, opts ListOptions) ([]VM, error) {
	q := url.Values{}
	for k, v := range opts.Metadata {
		q.Set("metadata."+k, v)
	}
	if opts.Status != "" {
		q.Set("status", opts.Status)
	}
	vms, err := callJSON[[]VM](ctx, c, call{method: http.MethodGet, path: "/v1/vms", query: q, retry: true})
	if err != nil {
		return nil, err
	}
	return *vms, nil
}

// PauseVM pauses a running VM: its state, memory included, is kept, and it
// holds no quota until ResumeVM. Pausing a paused VM answers it as it is.
// Servers before TS SDK 0.5 answer 404 (see IsNotFound).
func (c *Client) PauseVM(ctx context.Context, vmID string) (*VM, error) {
	return callJSON[VM](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/pause", retry: true})
}

// ResumeVM resumes a paused VM and waits until it runs: the server answers
// 200 when it resumed at once, 202 when the resume is queued, and then
// ResumeVM polls like WaitReady (a VM that ends paused again, in error,
// stopped or deleting is a *LaunchError). Resuming a running VM answers it
// as it is. A resume over the organisation's quota is a 429 *APIError.
func (c *Client) ResumeVM(ctx context.Context, vmID string) (*VM, error) {
	vm, err := c.ResumeVMNoWait(ctx, vmID)
	if err != nil {
		return nil, err
	}
	if vm.Status == StatusRunning {
		return vm, nil
	}
	return c.waitRunning(ctx, vmID, "resume")
}

// ResumeVMNoWait resumes a paused VM and returns the server's first answer,
// running (200) or resuming (202), without polling.
func (c *Client) ResumeVMNoWait(ctx context.Context, vmID string) (*VM, error) {
	return callJSON[VM](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/resume", retry: true})
}

// RefreshTTL restarts a VM's TTL cycle: a running VM's TTL fires Seconds
// from now, a paused one gets the whole cycle back for when it resumes. A
// VM without a TTL is a 409 *APIError.
func (c *Client) RefreshTTL(ctx context.Context, vmID string) (*VM, error) {
	return callJSON[VM](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/ttl/refresh", retry: true})
}

// UpdateVM renames a VM and/or replaces its metadata, environment variables
// or TTL (see VMUpdate).
func (c *Client) UpdateVM(ctx context.Context, vmID string, u VMUpdate) (*VM, error) {
	return callJSON[VM](ctx, c, call{method: http.MethodPatch, path: "/v1/vms/" + pathID(vmID), body: u, retry: true})
}

// DeleteVM deletes a VM and everything on its disk. It may report deleting
// for a moment before GetVM answers 404.
func (c *Client) DeleteVM(ctx context.Context, vmID string) (*DeleteResponse, error) {
	return callJSON[DeleteResponse](ctx, c, call{method: http.MethodDelete, path: "/v1/vms/" + pathID(vmID), retry: true})
}

// SetFirewall replaces a VM's whole firewall policy.
func (c *Client) SetFirewall(ctx context.Context, vmID string, p FirewallPolicy) (*VM, error) {
	return callJSON[VM](ctx, c, call{method: http.MethodPut, path: "/v1/vms/" + pathID(vmID) + "/firewall", body: p, retry: true})
}

// PatchFirewall changes a VM's firewall mode and/or rules (see FirewallPatch).
func (c *Client) PatchFirewall(ctx context.Context, vmID string, p FirewallPatch) (*VM, error) {
	return callJSON[VM](ctx, c, call{method: http.MethodPatch, path: "/v1/vms/" + pathID(vmID) + "/firewall", body: p, retry: true})
}

// ConsoleToken mints a short-lived, single-use token for the VM's serial
// console; ConsoleURL turns it into the WebSocket address.
func (c *Client) ConsoleToken(ctx context.Context, vmID string) (*ConsoleToken, error) {
	return callJSON[ConsoleToken](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/console-token", retry: true})
}

// ConsoleURL is the WebSocket URL of a console token: the API host with ws or
// wss, the token's path and ?session=<token>. Connect without the API key:
// the token is the credential, so keep the URL out of logs.
func (c *Client) ConsoleURL(t *ConsoleToken) (string, error) {
	var u *url.URL
	if strings.HasPrefix(t.WebsocketPath, "ws://") || strings.HasPrefix(t.WebsocketPath, "wss://") {
		var err error
		if u, err = url.Parse(t.WebsocketPath); err != nil {
			return "", fmt.Errorf("fastvm: the console token's websocketPath is not a URL: %w", err)
		}
	} else {
		// Relative to the base URL the same way API paths are.
		var err error
		if u, err = url.Parse(c.baseURL + t.WebsocketPath); err != nil {
			return "", fmt.Errorf("fastvm: the console URL does not parse (base URL %q): %w", c.baseURL, err)
		}
		switch u.Scheme {
		case "https":
			u.Scheme = "wss"
		case "http":
			u.Scheme = "ws"
		}
	}
	q := u.Query()
	q.Set("session", t.Token)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
