package transport

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCheckOrigin(t *testing.T) {
	reached := 0
	h := checkOrigin([]string{"https://app.example"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached++
		w.WriteHeader(http.StatusUnauthorized) // as authentication would, without a token
	}))
	do := func(method, origin string) *http.Response {
		req := httptest.NewRequest(method, "http://127.0.0.1:8080/mcp", strings.NewReader("{}"))
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Result()
	}
	if r := do("POST", "https://evil.example"); r.StatusCode != http.StatusForbidden || reached != 0 {
		t.Errorf("a foreign origin: %d, reached %d", r.StatusCode, reached)
	}
	if r := do("POST", ""); r.StatusCode != http.StatusUnauthorized || reached != 1 {
		t.Errorf("no origin (not a browser): %d", r.StatusCode)
	}
	if r := do("POST", "http://127.0.0.1:8080"); r.StatusCode != http.StatusUnauthorized || reached != 2 {
		t.Errorf("the server's own origin: %d", r.StatusCode)
	}
	r := do("OPTIONS", "https://app.example")
	if r.StatusCode != http.StatusNoContent || reached != 2 || r.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(r.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Errorf("preflight of an allowed origin: %d %v", r.StatusCode, r.Header)
	}
	r = do("POST", "https://app.example")
	if r.StatusCode != http.StatusUnauthorized || reached != 3 || r.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(r.Header.Get("Access-Control-Expose-Headers"), "Mcp-Session-Id") {
		t.Errorf("a request of an allowed origin: %d %v", r.StatusCode, r.Header)
	}
}
