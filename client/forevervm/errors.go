package forevervm

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// maxErrorBody is how much of an error response is read.
const maxErrorBody = 64 << 10

// APIError is a request the server refused, or an error message it sent on
// a REPL socket.
type APIError struct {
	// StatusCode is the HTTP status; 0 for a REPL "error" message.
	StatusCode int
	// Code is the server's error code (e.g. "MachineNotFound"), or empty when
	// the body was not the {code, id} JSON.
	Code string
	// ID is the server's error id, when it sent one.
	ID string
	// Body is the start of the response body when it was not {code, id}.
	Body string
	// Method and Path name the request ("GET", "/v1/whoami"); empty for a
	// REPL message.
	Method, Path string
}

func newAPIError(method, path string, status int, body []byte) *APIError {
	e := &APIError{StatusCode: status, Method: method, Path: path}
	var w struct {
		Code *string `json:"code"`
		ID   *string `json:"id"`
	}
	if json.Unmarshal(body, &w) == nil && w.Code != nil && *w.Code != "" {
		e.Code = *w.Code
		if w.ID != nil {
			e.ID = *w.ID
		}
		return e
	}
	e.Body = snippet(body)
	return e
}

// Error says what failed and, for the usual causes, what to do about it.
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("forevervm: ")
	if e.Method != "" {
		fmt.Fprintf(&b, "%s %s: ", e.Method, e.Path)
	}
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
		if e.Code == "" {
			b.WriteString(" " + http.StatusText(e.StatusCode))
		}
	} else {
		b.WriteString("the REPL server sent an error")
	}
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.ID != "" {
		b.WriteString(" (id " + e.ID + ")")
	}
	if e.Body != "" {
		b.WriteString(": " + e.Body)
	}
	switch {
	case IsUnauthorized(e):
		b.WriteString(" (check the API token, FOREVERVM_TOKEN)")
	case IsNotFound(e):
		b.WriteString(" (check the machine name with ListMachines, or the instruction seq)")
	}
	return b.String()
}

// IsNotFound reports whether err is the server saying that a machine or an
// instruction does not exist.
func IsNotFound(err error) bool {
	var e *APIError
	return errors.As(err, &e) && (e.StatusCode == http.StatusNotFound || strings.HasSuffix(e.Code, "NotFound"))
}

// IsUnauthorized reports whether err is the server refusing the token.
func IsUnauthorized(err error) bool {
	var e *APIError
	return errors.As(err, &e) && (e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden || e.Code == "Unauthorized")
}

// IsCode reports whether err is an *APIError with this server code.
func IsCode(err error, code string) bool {
	var e *APIError
	return errors.As(err, &e) && e.Code == code
}

// snippet is printable text from the start of b, for error messages.
func snippet(b []byte) string {
	const limit = 512
	s := strings.TrimSpace(string(b))
	if len(s) > limit {
		cut := limit
		for cut > limit-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
