// Package auth authenticates the requests of the hosted HTTP endpoint and
// names their caller (the principal): static bearer tokens kept hashed in a
// file, and JWT access tokens of an OAuth authorization server verified
// against its JWKS. It also answers unauthenticated requests the way MCP
// clients expect (RFC 6750 challenges pointing at RFC 9728 metadata).
package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Config says which credentials the endpoint accepts and how it describes
// itself to clients.
type Config struct {
	// TokensFile holds the static tokens: lines "principal sha256:HEX".
	TokensFile string
	// JWKSURL is the authorization server's key set; JWT access tokens are
	// accepted when it is set.
	JWKSURL string
	// Issuer, if set, is the iss every JWT must carry.
	Issuer string
	// Audience must be among a JWT's aud; default ResourceURL.
	Audience string
	// ResourceURL is this server's public URL (e.g. https://mcp.example.com/mcp):
	// the resource of the protected resource metadata and the default audience.
	ResourceURL string
	// AuthorizationServers are published in the protected resource
	// metadata; without them no metadata is served.
	AuthorizationServers []string
	// Scopes, if set, are published as scopes_supported and in challenges
	// so that clients ask for them; they are not enforced.
	Scopes []string
	// Realm names the protection space in challenges; default "vmcp".
	Realm string
	// Logger receives reloads of the tokens file, key set fetch failures
	// and refusals (debug); never a token. The zero value logs nothing.
	Logger zerolog.Logger
}

// Errors of Authenticate, to be told apart with errors.Is; the message of
// the error returned says what exactly is wrong, never quoting the token.
var (
	// ErrNoCredentials: the request carries no bearer token.
	ErrNoCredentials = errors.New("no bearer token: send Authorization: Bearer <token>")
	// ErrInvalidRequest: the request is malformed (RFC 6750 invalid_request),
	// e.g. a token in the query string.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrInvalidToken: a token was given but refused (RFC 6750 invalid_token).
	ErrInvalidToken = errors.New("invalid token")
	// ErrUnavailable: the token could not be checked now (the
	// authorization server's keys cannot be fetched); retrying may help.
	ErrUnavailable = errors.New("authentication unavailable")
)

// authError is a refusal: kind is one of the Err values, msg the reason.
type authError struct {
	kind error
	msg  string
}

func (e *authError) Error() string { return e.msg }
func (e *authError) Unwrap() error { return e.kind }

func refuse(kind error, format string, args ...any) error {
	return &authError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Authenticator checks the credentials of requests. Its methods are safe
// for concurrent use; Close releases the key set refresher.
type Authenticator struct {
	log       zerolog.Logger
	tokens    *tokenFile   // nil without TokensFile
	jwt       *jwtVerifier // nil without JWKSURL
	metadata  []byte       // the RFC 9728 document; nil without authorization servers
	metaPath  string       // path of the document for ResourceURL's path (RFC 9728 §3.1), "" if none
	challenge string       // the fixed part of WWW-Authenticate
	close     sync.Once
}

// Leeway tolerated on exp, nbf and iat: the clocks of this host and of the
// authorization server may differ a little.
const Leeway = 30 * time.Second

// maxTokenBytes bounds a presented token; real ones are far shorter.
const maxTokenBytes = 8 << 10

// New checks cfg, reads the tokens file and fetches the key set once (so
// that a wrong file or URL fails at start, not at the first request).
func New(cfg Config) (*Authenticator, error) {
	if cfg.TokensFile == "" && cfg.JWKSURL == "" {
		return nil, errors.New("auth: configure a tokens file and/or a JWKS URL: without either no request could authenticate")
	}
	if cfg.Realm == "" {
		cfg.Realm = "vmcp"
	}
	if !headerSafe(cfg.Realm) {
		return nil, fmt.Errorf("auth: realm %q: use printable ASCII without quotes or backslashes", cfg.Realm)
	}
	for _, s := range cfg.Scopes {
		if s == "" || !headerSafe(s) || strings.Contains(s, " ") {
			return nil, fmt.Errorf("auth: scope %q: a scope is printable ASCII without spaces, quotes or backslashes", s)
		}
	}
	var resource *url.URL
	if cfg.ResourceURL != "" {
		u, err := parseHTTPURL(cfg.ResourceURL)
		if err != nil {
			return nil, fmt.Errorf("auth: resource URL: %w", err)
		}
		if u.Fragment != "" {
			return nil, fmt.Errorf("auth: resource URL %q must not have a fragment (RFC 9728 §1.2)", cfg.ResourceURL)
		}
		resource = u
	}
	if cfg.Audience == "" {
		cfg.Audience = cfg.ResourceURL
	}
	a := &Authenticator{log: cfg.Logger}
	a.challenge = fmt.Sprintf("Bearer realm=%q", cfg.Realm)
	if len(cfg.AuthorizationServers) > 0 {
		if resource == nil {
			return nil, errors.New("auth: authorization servers are published in the protected resource metadata, which needs the resource URL (this server's public URL)")
		}
		for _, s := range cfg.AuthorizationServers {
			if _, err := parseHTTPURL(s); err != nil {
				return nil, fmt.Errorf("auth: authorization server: %w", err)
			}
		}
		doc, err := metadataDocument(cfg)
		if err != nil {
			return nil, err
		}
		a.metadata = doc
		if p := strings.TrimSuffix(resource.EscapedPath(), "/"); p != "" {
			a.metaPath = MetadataPath + p
		}
		a.challenge += fmt.Sprintf(", resource_metadata=%q", resource.Scheme+"://"+resource.Host+MetadataPath)
	}
	if len(cfg.Scopes) > 0 {
		a.challenge += fmt.Sprintf(", scope=%q", strings.Join(cfg.Scopes, " "))
	}
	if cfg.TokensFile != "" {
		tf, err := openTokenFile(cfg.TokensFile, a.log)
		if err != nil {
			return nil, err
		}
		a.tokens = tf
	}
	if cfg.JWKSURL != "" {
		if cfg.Audience == "" {
			return nil, errors.New("auth: JWT access tokens need an audience to check (the resource URL, this server's public URL): otherwise a token issued for any other service would be accepted")
		}
		v, err := newJWTVerifier(cfg, a.log)
		if err != nil {
			return nil, err
		}
		a.jwt = v
	}
	return a, nil
}

// Close stops refreshing the key set. Authenticate must not be called after.
func (a *Authenticator) Close() error {
	var err error
	a.close.Do(func() {
		if a.jwt != nil {
			err = a.jwt.close()
		}
	})
	return err
}

// Authenticate returns the principal of the request's bearer token: the
// principal of its line in the tokens file, or iss|sub of a JWT. The error
// wraps ErrNoCredentials, ErrInvalidRequest, ErrInvalidToken or
// ErrUnavailable and never contains the token.
func (a *Authenticator) Authenticate(r *http.Request) (string, error) {
	token, err := bearerToken(r)
	if err != nil {
		return "", err
	}
	if strings.Count(token, ".") == 2 {
		if a.jwt == nil {
			return "", refuse(ErrInvalidToken, "this server accepts no JWT access tokens (no JWKS configured); use a token of its tokens file")
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		return a.jwt.verify(ctx, token)
	}
	if a.tokens == nil {
		return "", refuse(ErrInvalidToken, "the token is not a JWT, and this server has no static tokens")
	}
	if p, ok := a.tokens.lookup(token); ok {
		return p, nil
	}
	return "", refuse(ErrInvalidToken, "unknown or revoked token")
}

// bearerToken extracts the token of the Authorization header (RFC 6750
// §2.1), the only place a token is accepted: in a URL it ends up in logs.
func bearerToken(r *http.Request) (string, error) {
	inQuery := r.URL.Query().Has("access_token")
	values := r.Header.Values("Authorization")
	switch {
	case inQuery:
		return "", refuse(ErrInvalidRequest, "a token in the URL (access_token) is refused: send it in the Authorization header, and replace it, since URLs are logged")
	case len(values) == 0:
		return "", ErrNoCredentials
	case len(values) > 1:
		return "", refuse(ErrInvalidRequest, "several Authorization headers: send one")
	}
	scheme, token, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", ErrNoCredentials
	}
	token = strings.TrimLeft(token, " ")
	switch {
	case token == "":
		return "", refuse(ErrInvalidRequest, "the Authorization header has no token after Bearer")
	case len(token) > maxTokenBytes:
		return "", refuse(ErrInvalidToken, "the token is longer than %d bytes", maxTokenBytes)
	case !isB64Token(token):
		return "", refuse(ErrInvalidToken, "the token has characters a bearer token cannot have (RFC 6750 §2.1)")
	}
	return token, nil
}

// isB64Token reports whether s has the b64token syntax of RFC 6750 §2.1.
func isB64Token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for _, c := range []byte(body) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'
		if !ok {
			return false
		}
	}
	return true
}

// headerSafe reports whether s can be a quoted-string parameter of a
// challenge as RFC 6750 §3 restricts them (no quote, no backslash).
func headerSafe(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// parseHTTPURL parses an absolute http(s) URL.
func parseHTTPURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	return u, nil
}

// isLoopback reports whether u's host is this machine, where plain HTTP
// cannot be intercepted.
func isLoopback(u *url.URL) bool { return IsLoopbackHost(u.Hostname()) }

// IsLoopbackHost reports whether host (a name or an address, without a
// port) is this machine's loopback.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
