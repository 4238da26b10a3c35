package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/vmcp-dev/vmcp/internal/principal"
)

// MetadataPath is where the protected resource metadata is served (RFC 9728
// §3), and where the challenges' resource_metadata points.
const MetadataPath = "/.well-known/oauth-protected-resource"

// Middleware lets through requests that authenticate, with their principal
// in the context (package principal) and
// without their Authorization header, so the token goes no further (MCP
// forbids passing it through). Others are answered 401 with a Bearer
// challenge (RFC 6750 §3), 400 when malformed, 503 when the keys to check
// them are unavailable.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.Authenticate(r)
		if err != nil {
			a.log.Debug().Str("path", r.URL.Path).Str("remote", r.RemoteAddr).Str("reason", err.Error()).Msg("request refused")
			a.writeError(w, err)
			return
		}
		r = r.Clone(principal.With(r.Context(), p))
		r.Header.Del("Authorization")
		next.ServeHTTP(w, r)
	})
}

// writeError answers a refused request.
func (a *Authenticator) writeError(w http.ResponseWriter, err error) {
	status, code := http.StatusUnauthorized, ""
	switch {
	case errors.Is(err, ErrInvalidRequest):
		status, code = http.StatusBadRequest, "invalid_request"
	case errors.Is(err, ErrInvalidToken):
		code = "invalid_token"
	case errors.Is(err, ErrUnavailable):
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	}
	desc := sanitize(err.Error())
	// A request without credentials gets the bare challenge (RFC 6750
	// §3.1: no error code when no authentication was attempted).
	challenge := a.challenge
	if code != "" {
		challenge += fmt.Sprintf(", error=%q, error_description=%q", code, desc)
	}
	if status != http.StatusServiceUnavailable {
		w.Header().Set("WWW-Authenticate", challenge)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if code == "" {
		code = "unauthorized"
		if status == http.StatusServiceUnavailable {
			code = "temporarily_unavailable"
		}
	}
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// sanitize makes s fit a quoted-string of a challenge (RFC 6750 §3).
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '?'
		}
		return r
	}, s)
}

// protectedResource is the RFC 9728 §2 document.
type protectedResource struct {
	Resource               string   `json:"resource"`
	AuthorizationServers   []string `json:"authorization_servers"`
	BearerMethodsSupported []string `json:"bearer_methods_supported"`
	ScopesSupported        []string `json:"scopes_supported,omitempty"`
}

func metadataDocument(cfg Config) ([]byte, error) {
	doc, err := json.Marshal(protectedResource{
		Resource:               cfg.ResourceURL,
		AuthorizationServers:   cfg.AuthorizationServers,
		BearerMethodsSupported: []string{"header"},
		ScopesSupported:        cfg.Scopes,
	})
	if err != nil {
		return nil, fmt.Errorf("auth: protected resource metadata: %w", err)
	}
	return doc, nil
}

// MetadataHandler serves the protected resource metadata (RFC 9728) at
// MetadataPath and at MetadataPath followed by the resource URL's path
// (§3.1, where clients look first); other paths, and every path when no
// authorization server is configured, are 404. Mount it at MetadataPath
// and under MetadataPath + "/". It is public: browsers may read it from
// any origin.
func (a *Authenticator) MetadataHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.metadata == nil {
			http.Error(w, "this server names no authorization server: it accepts the static tokens of its tokens file", http.StatusNotFound)
			return
		}
		if p := strings.TrimSuffix(r.URL.EscapedPath(), "/"); p != MetadataPath && p != a.metaPath {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		switch r.Method {
		case http.MethodGet, http.MethodHead:
		case http.MethodOptions:
			h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "*")
			w.WriteHeader(http.StatusNoContent)
			return
		default:
			h.Set("Allow", "GET, HEAD, OPTIONS")
			http.Error(w, "use GET", http.StatusMethodNotAllowed)
			return
		}
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "public, max-age=3600")
		w.Write(a.metadata)
	})
}
