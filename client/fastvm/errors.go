package fastvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// maxMessage bounds an error message taken from a raw (non-JSON) body, like
// the SDKs' 2000-character excerpt.
const maxMessage = 2000

// APIError is a non-2xx answer of the API, after any retries.
type APIError struct {
	StatusCode int    // HTTP status, e.g. 404
	Message    string // the body's "error", else "message", else "detail", else the raw body
	Method     string // of the request, e.g. "POST"
	Path       string // of the request, e.g. "/v1/vms"
	Body       string // the raw body (at most 64 KiB)
	// ShouldRetry is the server's x-should-retry header ("true", "false" or "").
	ShouldRetry string
	Attempts    int // how many times the request was sent
}

// Error describes the failure with a hint of what to do about it.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fastvm: %s %s: %d %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" && e.Message != http.StatusText(e.StatusCode) {
		b.WriteString(": " + e.Message)
	}
	if h := statusHint(e.StatusCode); h != "" {
		b.WriteString(" (" + h + ")")
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " after %d attempts", e.Attempts)
	}
	return b.String()
}

// statusHint says what a caller can do about an error class.
func statusHint(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "check the API key, e.g. FASTVM_API_KEY"
	case status == http.StatusForbidden:
		return "this API key may not do that"
	case status == http.StatusNotFound:
		return "no such resource: check the id, it may have been deleted"
	case status == http.StatusConflict:
		return "the resource is not in a state that allows this: check its status"
	case status == http.StatusTooManyRequests:
		return "rate or quota limit: wait, or delete VMs and snapshots you no longer need"
	case status >= 500:
		return "server-side failure: try again later"
	}
	return ""
}

// IsNotFound reports whether err is an *APIError with status 404.
func IsNotFound(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

// newAPIError builds the error of a non-2xx response whose body was read.
// The API key is redacted in case a server echoes it.
func newAPIError(method, path string, resp *http.Response, body []byte, apiKey string) *APIError {
	raw := string(body)
	msg := errorMessage(body)
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	if apiKey != "" {
		raw = strings.ReplaceAll(raw, apiKey, "[redacted]")
		msg = strings.ReplaceAll(msg, apiKey, "[redacted]")
	}
	return &APIError{
		StatusCode:  resp.StatusCode,
		Message:     msg,
		Method:      method,
		Path:        path,
		Body:        raw,
		ShouldRetry: resp.Header.Get("X-Should-Retry"),
	}
}

// errorMessage finds the message of an error body: a string under "error",
// then "message", then "detail" (or such an object's own "message"), else the
// trimmed raw body.
func errorMessage(body []byte) string {
	var obj map[string]json.RawMessage
	if json.Unmarshal(body, &obj) == nil {
		for _, k := range []string{"error", "message", "detail"} {
			if s := jsonString(obj[k]); s != "" {
				return s
			}
			var nested map[string]json.RawMessage
			if json.Unmarshal(obj[k], &nested) == nil {
				if s := jsonString(nested["message"]); s != "" {
					return s
				}
			}
		}
	}
	return truncate(strings.TrimSpace(string(body)), maxMessage)
}

func jsonString(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return strings.TrimSpace(s)
}

// truncate cuts s to at most n runes, marking the cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

// ConnError is a request that got no HTTP answer (connection refused, reset,
// timed out), after any retries.
type ConnError struct {
	Method   string
	Path     string
	Attempts int
	// Idempotent is false for calls that are never retried (launch, exec,
	// file presign and fetch, snapshot, build and service creation): such a call may
	// or may not have taken effect.
	Idempotent bool
	Err        error
}

// Error says what failed and whether repeating the call is safe.
func (e *ConnError) Error() string {
	s := fmt.Sprintf("fastvm: %s %s: no answer from the API", e.Method, e.Path)
	if e.Attempts > 1 {
		s += fmt.Sprintf(" after %d attempts", e.Attempts)
	}
	s += fmt.Sprintf(": %v", e.Err)
	if !e.Idempotent {
		s += " (not retried: the call may have taken effect, check before repeating it)"
	} else {
		s += " (check the network and the base URL)"
	}
	return s
}

// Unwrap returns the transport error.
func (e *ConnError) Unwrap() error { return e.Err }

// LaunchError is a VM that reached a terminal failure status (error, stopped
// or deleting) while Launch, WaitReady or ResumeVM waited for it to run (or,
// for ResumeVM, went back to paused).
type LaunchError struct {
	VMID   string
	Status string
	Op     string // "" for a launch, "resume" for ResumeVM
}

// Error names the VM and the status it ended in.
func (e *LaunchError) Error() string {
	if e.Op == "resume" {
		return fmt.Sprintf("fastvm: VM %s failed to resume (status %q): check its status, resume it again or delete it", e.VMID, e.Status)
	}
	return fmt.Sprintf("fastvm: VM %s failed to launch (status %q): delete it and launch another", e.VMID, e.Status)
}

// NotReadyError is a VM still not running when Launch or WaitReady stopped
// waiting (WithWaitTimeout). The VM may still come up: WaitReady can resume.
type NotReadyError struct {
	VMID       string
	LastStatus string
	Timeout    time.Duration
}

// Error names the VM, the wait and the last status seen.
func (e *NotReadyError) Error() string {
	return fmt.Sprintf("fastvm: VM %s did not reach status running within %s (last observed status %q): wait longer with WaitReady or delete it",
		e.VMID, e.Timeout, e.LastStatus)
}

// Unwrap makes errors.Is(err, context.DeadlineExceeded) true: the error is a
// timeout.
func (e *NotReadyError) Unwrap() error { return context.DeadlineExceeded }

// FileTransferError is an Upload or Download that failed in the VM or in
// storage. ExecResult is the VM-side step's outcome when that step failed.
type FileTransferError struct {
	Op         string // "upload" or "download"
	VMID       string
	Path       string // the path in the VM
	Message    string
	ExecResult *ExecResult
	Err        error // an underlying cause, e.g. fs.ErrNotExist
}

// Error describes the failed step, with the VM-side command's exit status and
// stderr when there is one.
func (e *FileTransferError) Error() string {
	s := fmt.Sprintf("fastvm: %s of %s in VM %s: %s", e.Op, e.Path, e.VMID, e.Message)
	if r := e.ExecResult; r != nil {
		if r.TimedOut {
			s += " (timed out in the VM)"
		} else {
			s += fmt.Sprintf(" (exit code %d)", r.ExitCode)
		}
		if msg := strings.TrimSpace(r.Stderr); msg != "" {
			s += ": " + truncate(msg, 500)
		}
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying cause, if any.
func (e *FileTransferError) Unwrap() error { return e.Err }

// BuildError is a build that ended in status failed, or in a state Build
// cannot use.
type BuildError struct {
	BuildID string
	Status  string
	Message string // the build's error diagnostic
}

// Error names the build and carries the server's diagnostic.
func (e *BuildError) Error() string {
	return fmt.Sprintf("fastvm: build %s %s: %s", e.BuildID, e.Status, e.Message)
}
