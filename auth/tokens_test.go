package auth

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewToken(t *testing.T) {
	t.Parallel()
	a, b := NewToken(), NewToken()
	if a == b {
		t.Fatal("two tokens are equal")
	}
	for _, tok := range []string{a, b} {
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(tok, "vmcp_"))
		if !strings.HasPrefix(tok, "vmcp_") || err != nil || len(raw) != 32 {
			t.Errorf("token %q: want vmcp_ and 32 bytes of base64url (%v, %d bytes)", tok, err, len(raw))
		}
		if !isB64Token(tok) {
			t.Errorf("token %q is not a valid bearer token", tok)
		}
	}
}

func TestHashToken(t *testing.T) {
	t.Parallel()
	// The SHA-256 test vector of FIPS 180-2 for "abc".
	if got, want := HashToken("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf("HashToken(abc) = %s, want %s", got, want)
	}
	line, err := TokenLine("alice@example.com", "abc")
	if err != nil || line != "alice@example.com "+HashToken("abc") {
		t.Errorf("TokenLine: %q, %v", line, err)
	}
	for _, p := range []string{"", "a b", "iss|sub", "local:bob", "-x", strings.Repeat("a", 129), "é"} {
		if _, err := TokenLine(p, "abc"); err == nil {
			t.Errorf("principal %q accepted", p)
		}
	}
}

// writeTokens writes a tokens file and returns its path.
func writeTokens(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTokensFileErrors(t *testing.T) {
	t.Parallel()
	secret := NewToken()
	for _, c := range []struct{ name, content, want string }{
		{"plaintext token", "# ok\nbob " + HashToken("x") + "\nalice " + secret + "\n", "line 3: the second field looks like a plaintext token"},
		{"plaintext other", "alice hunter2-is-my-password\n", "line 1: the second field is not sha256:HEX"},
		{"short hash", "alice sha256:abcd\n", "line 1: after sha256: the hash must be 64 hex digits"},
		{"not hex", "alice sha256:" + strings.Repeat("zz", 32) + "\n", "line 1: after sha256: the hash must be 64 hex digits"},
		{"one field", "\n\nalice\n", "line 3: want \"principal sha256:HEX\" (two fields), got 1"},
		{"three fields", "alice " + HashToken("x") + " extra\n", "got 3 fields"},
		{"bad principal", "a|b " + HashToken("x") + "\n", "line 1: principal"},
		{"one token, two principals", "alice " + HashToken("x") + "\nbob " + HashToken("x") + "\n", "line 2: the same token hash"},
	} {
		_, err := New(Config{TokensFile: writeTokens(t, c.content)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error repeats the token: %v", c.name, err)
		}
	}
	if _, err := New(Config{TokensFile: filepath.Join(t.TempDir(), "missing")}); err == nil || !strings.Contains(err.Error(), "token new") {
		t.Errorf("missing file: %v", err)
	}
}

func TestStaticTokens(t *testing.T) {
	t.Parallel()
	alice, alice2, bob := NewToken(), NewToken(), NewToken()
	a, err := New(Config{TokensFile: writeTokens(t, strings.Join([]string{
		"# principal sha256:HEX", "", "alice " + HashToken(alice), "  alice " + HashToken(alice2) + "  ", "bob " + HashToken(bob), "",
	}, "\n"))})
	if err != nil {
		t.Fatal(err)
	}
	for token, want := range map[string]string{alice: "alice", alice2: "alice", bob: "bob"} {
		if p, err := a.Authenticate(bearerRequest(token)); err != nil || p != want {
			t.Errorf("token of %s: %q, %v", want, p, err)
		}
	}
	r := bearerRequest(bob)
	r.Header.Set("Authorization", "bearer   "+bob) // the scheme is case-insensitive (RFC 9110 §11.1)
	if p, err := a.Authenticate(r); err != nil || p != "bob" {
		t.Errorf("lower-case scheme: %q, %v", p, err)
	}
	for _, c := range []struct {
		name, token string
		kind        error
	}{
		{"unknown", NewToken(), ErrInvalidToken},
		{"a hash instead of the token", HashToken(alice)[len("sha256:"):], ErrInvalidToken},
		{"a prefix of the token", alice[:20], ErrInvalidToken},
		{"JWT-shaped without a JWKS", "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", ErrInvalidToken},
		{"not token characters", "vmcp_abc,def", ErrInvalidToken},
	} {
		p, err := a.Authenticate(bearerRequest(c.token))
		if !errors.Is(err, c.kind) {
			t.Errorf("%s: %q, %v; want %v", c.name, p, err, c.kind)
		}
	}
}

// TestTokensFileReload: a changed file takes effect without a restart; a
// broken one keeps the tokens read before.
func TestTokensFileReload(t *testing.T) {
	t.Parallel()
	alice, bob := NewToken(), NewToken()
	path := writeTokens(t, "alice "+HashToken(alice)+"\n")
	a, err := New(Config{TokensFile: path})
	if err != nil {
		t.Fatal(err)
	}
	a.tokens.checkEvery = 0
	check := func(step string, token, want string) {
		t.Helper()
		p, err := a.Authenticate(bearerRequest(token))
		if want == "" && err == nil {
			t.Errorf("%s: accepted as %q", step, p)
		}
		if want != "" && (err != nil || p != want) {
			t.Errorf("%s: %q, %v; want %q", step, p, err, want)
		}
	}
	rewrite := func(content string, age time.Duration) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		// A distinct mtime even on file systems with coarse timestamps.
		mt := time.Now().Add(age)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	check("before", alice, "alice")
	rewrite("bob "+HashToken(bob)+"\n", time.Hour)
	check("revoked alice", alice, "")
	check("added bob", bob, "bob")
	rewrite("bob "+bob+"\n", 2*time.Hour)
	check("broken file keeps bob", bob, "bob")
	rewrite("alice "+HashToken(alice)+"\n", 3*time.Hour)
	check("fixed file: alice back", alice, "alice")
	check("fixed file: bob gone", bob, "")
}
