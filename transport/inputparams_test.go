package transport

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHTTPInputRequestsGetParams: input requests in JSON bodies and in event
// stream data lines (even split across writes) get "params":{}; other
// responses pass through unchanged.
func TestHTTPInputRequestsGetParams(t *testing.T) {
	const result = `{"jsonrpc":"2.0","id":1,"result":{"inputRequests":{"roots":{"method":"roots/list"}},"resultType":"input_required"}}`
	const patched = `"roots":{"method":"roots/list","params":{}}`
	serve := func(contentType string, writes ...string) *httptest.ResponseRecorder {
		h := withInputParams(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", contentType)
			w.Header().Set("Content-Length", "999")
			w.WriteHeader(http.StatusOK)
			for _, s := range writes {
				w.Write([]byte(s))
				w.(http.Flusher).Flush()
			}
		}))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/mcp", nil))
		return rec
	}

	rec := serve("application/json", result[:40], result[40:]+"\n")
	if body := rec.Body.String(); !strings.Contains(body, patched) || rec.Code != 200 || rec.Header().Get("Content-Length") != "" {
		t.Errorf("JSON: %d %q (Content-Length %q)", rec.Code, body, rec.Header().Get("Content-Length"))
	}

	event := "event: message\ndata: " + result + "\n\n"
	rec = serve("text/event-stream", ": ping\n\n", event[:30], event[30:], "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n")
	body := rec.Body.String()
	if !strings.Contains(body, "data: "+strings.Replace(result, `"roots":{"method":"roots/list"}`, patched, 1)+"\n\n") ||
		!strings.HasPrefix(body, ": ping\n\n") || !strings.HasSuffix(body, `data: {"jsonrpc":"2.0","method":"x"}`+"\n\n") {
		t.Errorf("event stream: %q", body)
	}

	other := `{"inputRequests" in a text}`
	if rec := serve("text/plain", other); rec.Body.String() != other {
		t.Errorf("text/plain changed: %q", rec.Body.String())
	}
}
