package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
)

const (
	testIssuer   = "https://issuer.example"
	testResource = "https://mcp.example.com/mcp"
)

// authServer publishes a JWK set on loopback, as an authorization server
// does, and signs tokens with its private keys.
type authServer struct {
	srv     *httptest.Server
	url     string // of the key set
	fetches atomic.Int32
	ec      *ecdsa.PrivateKey // kid "ec1", published with alg ES256
	rsa     *rsa.PrivateKey   // kid "rsa1", published without alg

	mu  sync.Mutex
	set jwk.Set
}

func newAuthServer(t *testing.T) *authServer {
	t.Helper()
	as := &authServer{ec: newECKey(t), rsa: newRSAKey(t), set: jwk.NewSet()}
	as.publish(t, as.ec, "ec1", jwa.ES256())
	as.publish(t, as.rsa, "rsa1", jwa.SignatureAlgorithm{})
	as.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/garbage":
			w.Write([]byte("<html>not a key set</html>"))
			return
		case "/jwks.json":
		default:
			http.NotFound(w, r)
			return
		}
		as.fetches.Add(1)
		as.mu.Lock()
		defer as.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(as.set)
	}))
	t.Cleanup(as.srv.Close)
	as.url = as.srv.URL + "/jwks.json"
	return as
}

func newECKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newRSAKey(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// publish adds the public half of priv to the set, named kid, with alg
// unless it is the zero value.
func (as *authServer) publish(t *testing.T, priv any, kid string, alg jwa.SignatureAlgorithm) {
	t.Helper()
	pub, err := jwk.PublicKeyOf(priv)
	if err != nil {
		t.Fatal(err)
	}
	pub.Set(jwk.KeyIDKey, kid)
	pub.Set(jwk.KeyUsageKey, "sig")
	if alg.String() != "" {
		pub.Set(jwk.AlgorithmKey, alg)
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	if err := as.set.AddKey(pub); err != nil {
		t.Fatal(err)
	}
}

// claims are those of a valid token for alice.
func claims() map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": testIssuer, "sub": "alice", "aud": []string{"https://other.example", testResource},
		"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	}
}

// sign makes a compact JWS of c with key, naming kid in its header ("" for
// none).
func sign(t *testing.T, c map[string]any, alg jwa.SignatureAlgorithm, key any, kid string) string {
	t.Helper()
	return signWith(t, c, alg, key, kid, nil)
}

// signWith is sign with extra header fields.
func signWith(t *testing.T, c map[string]any, alg jwa.SignatureAlgorithm, key any, kid string, extra map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	hdr := jws.NewHeaders()
	if kid != "" {
		hdr.Set(jws.KeyIDKey, kid)
	}
	hdr.Set(jws.TypeKey, "at+jwt")
	for k, v := range extra {
		hdr.Set(k, v)
	}
	out, err := jws.Sign(payload, jws.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// unsigned makes an alg-none token of c.
func unsigned(c map[string]any) string {
	enc := base64.RawURLEncoding
	payload, _ := json.Marshal(c)
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT","kid":"ec1"}`)) + "." + enc.EncodeToString(payload) + "."
}

func newJWTAuth(t *testing.T, as *authServer, issuer string) *Authenticator {
	t.Helper()
	a, err := New(Config{JWKSURL: as.url, Issuer: issuer, ResourceURL: testResource,
		AuthorizationServers: []string{testIssuer}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// bearerRequest is a request carrying token.
func bearerRequest(token string) *http.Request {
	r := httptest.NewRequest("POST", "/mcp", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

func TestJWTValid(t *testing.T) {
	t.Parallel()
	as := newAuthServer(t)
	a := newJWTAuth(t, as, testIssuer)
	withinLeeway := claims()
	withinLeeway["exp"] = time.Now().Add(-Leeway / 3).Unix()
	audString := claims()
	audString["aud"] = testResource
	for name, token := range map[string]string{
		"ES256 with the key's alg":           sign(t, claims(), jwa.ES256(), as.ec, "ec1"),
		"RS256 for a key published sans alg": sign(t, claims(), jwa.RS256(), as.rsa, "rsa1"),
		"PS256":                              sign(t, claims(), jwa.PS256(), as.rsa, "rsa1"),
		"expired within the leeway":          sign(t, withinLeeway, jwa.ES256(), as.ec, "ec1"),
		"aud a string":                       sign(t, audString, jwa.ES256(), as.ec, "ec1"),
	} {
		p, err := a.Authenticate(bearerRequest(token))
		if err != nil || p != testIssuer+"|alice" {
			t.Errorf("%s: principal %q, err %v; want %q", name, p, err, testIssuer+"|alice")
		}
	}
}

func TestJWTRefused(t *testing.T) {
	t.Parallel()
	as := newAuthServer(t)
	a := newJWTAuth(t, as, testIssuer)
	with := func(k string, v any) map[string]any {
		c := claims()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	valid := sign(t, claims(), jwa.ES256(), as.ec, "ec1")
	parts := strings.Split(valid, ".")
	otherPayload, _ := json.Marshal(with("sub", "mallory"))
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(otherPayload) + "." + parts[2]
	rsaPubDER, err := x509.MarshalPKIXPublicKey(&as.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cases := []struct{ name, token, want string }{
		{"wrong audience", sign(t, with("aud", []string{"https://other.example"}), jwa.ES256(), as.ec, "ec1"), "wrong audience"},
		{"no audience", sign(t, with("aud", nil), jwa.ES256(), as.ec, "ec1"), "wrong audience"},
		{"expired", sign(t, with("exp", now.Add(-5*time.Minute).Unix()), jwa.ES256(), as.ec, "ec1"), "expired"},
		{"not yet valid", sign(t, with("nbf", now.Add(5*time.Minute).Unix()), jwa.ES256(), as.ec, "ec1"), "not valid yet"},
		{"issued in the future", sign(t, with("iat", now.Add(5*time.Minute).Unix()), jwa.ES256(), as.ec, "ec1"), "issued in the future"},
		{"wrong issuer", sign(t, with("iss", "https://evil.example"), jwa.ES256(), as.ec, "ec1"), "wrong issuer"},
		{"no expiry", sign(t, with("exp", nil), jwa.ES256(), as.ec, "ec1"), "no expiry"},
		{"no subject", sign(t, with("sub", nil), jwa.ES256(), as.ec, "ec1"), "subject"},
		{"bad signature: another key under a published kid", sign(t, claims(), jwa.ES256(), newECKey(t), "ec1"), "signature does not verify"},
		{"bad signature: payload changed", tampered, "signature does not verify"},
		{"bad signature: signature cut", parts[0] + "." + parts[1] + "." + parts[2][:20], "signature does not verify"},
		{"unknown kid", sign(t, claims(), jwa.ES256(), newECKey(t), "ghost"), "does not publish"},
		{"no kid, several keys", sign(t, claims(), jwa.ES256(), as.ec, ""), "names no key"},
		{"alg none", unsigned(claims()), "alg none"},
		{"HS256 with a secret", sign(t, claims(), jwa.HS256(), []byte("a shared secret of 32 bytes ...."), "ec1"), "HMAC"},
		{"HS256 keyed with the public key", sign(t, claims(), jwa.HS256(), rsaPubDER, "rsa1"), "HMAC"},
		{"alg not the key's alg", sign(t, claims(), jwa.ES384(), newKeyP384(t), "ec1"), "not its key's (alg)"},
		{"alg not the key's type", sign(t, claims(), jwa.ES256(), newECKey(t), "rsa1"), "does not fit its key's type"},
		{"critical extension", signWith(t, claims(), jwa.ES256(), as.ec, "ec1", map[string]any{"crit": []string{"exp"}, "exp": 1}), "crit"},
		{"not a JWT header", "bm90IGpzb24." + parts[1] + "." + parts[2], "not base64url JSON"},
	}
	for _, c := range cases {
		p, err := a.Authenticate(bearerRequest(c.token))
		if err == nil {
			t.Errorf("%s: accepted as %q", c.name, p)
			continue
		}
		if !errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q (invalid token: %v), want one saying %q", c.name, err, errors.Is(err, ErrInvalidToken), c.want)
		}
		for _, part := range strings.Split(c.token, ".") {
			if len(part) > 8 && strings.Contains(err.Error(), part) {
				t.Errorf("%s: the error quotes the token", c.name)
			}
		}
	}
}

func newKeyP384(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestJWTSingleKeyNoKid: a token without kid is verified with the set's
// only key.
func TestJWTSingleKeyNoKid(t *testing.T) {
	t.Parallel()
	as := newAuthServer(t)
	as.mu.Lock()
	as.set.RemoveKey(mustKey(t, as.set, "rsa1"))
	as.mu.Unlock()
	a := newJWTAuth(t, as, "")
	if p, err := a.Authenticate(bearerRequest(sign(t, claims(), jwa.ES256(), as.ec, ""))); err != nil || p != testIssuer+"|alice" {
		t.Errorf("no kid, one key: %q, %v", p, err)
	}
	// Without a configured issuer any issuer the keys sign for is accepted,
	// and names a principal of its own.
	other := claims()
	other["iss"] = "https://tenant2.example"
	if p, err := a.Authenticate(bearerRequest(sign(t, other, jwa.ES256(), as.ec, "ec1"))); err != nil || p != "https://tenant2.example|alice" {
		t.Errorf("other issuer: %q, %v", p, err)
	}
}

func mustKey(t *testing.T, set jwk.Set, kid string) jwk.Key {
	k, ok := set.LookupKeyID(kid)
	if !ok {
		t.Fatalf("no key %q", kid)
	}
	return k
}

// TestJWTKeyRotation: a key published after the start is fetched when a
// token names it; unknown kids do not make the server fetch again and again.
func TestJWTKeyRotation(t *testing.T) {
	t.Parallel()
	as := newAuthServer(t)
	a := newJWTAuth(t, as, testIssuer)
	fresh := newECKey(t)
	as.publish(t, fresh, "ec2", jwa.ES256())
	before := as.fetches.Load()
	if p, err := a.Authenticate(bearerRequest(sign(t, claims(), jwa.ES256(), fresh, "ec2"))); err != nil || p != testIssuer+"|alice" {
		t.Fatalf("token of a rotated-in key: %q, %v", p, err)
	}
	if got := as.fetches.Load(); got != before+1 {
		t.Errorf("the key set was fetched %d times for the new kid, want 1", got-before)
	}
	for range 5 {
		if _, err := a.Authenticate(bearerRequest(sign(t, claims(), jwa.ES256(), newECKey(t), "ghost"))); err == nil || !strings.Contains(err.Error(), "does not publish") {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if got := as.fetches.Load(); got != before+1 {
		t.Errorf("unknown kids made %d more fetches within the rate limit, want 0", got-before-1)
	}
}

func TestJWTConfigErrors(t *testing.T) {
	t.Parallel()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	as := newAuthServer(t)
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"unreachable JWKS", Config{JWKSURL: down.URL, ResourceURL: testResource}, "fetch the authorization server's keys"},
		{"JWKS not found", Config{JWKSURL: as.srv.URL + "/nothing-here", ResourceURL: testResource}, "fetch the authorization server's keys"},
		{"JWKS not a key set", Config{JWKSURL: as.srv.URL + "/garbage", ResourceURL: testResource}, "fetch the authorization server's keys"},
		{"plain http off loopback", Config{JWKSURL: "http://keys.example/jwks.json", ResourceURL: testResource}, "use https"},
		{"no audience", Config{JWKSURL: as.url}, "audience"},
		{"nothing configured", Config{}, "tokens file and/or a JWKS URL"},
		{"metadata without resource", Config{JWKSURL: as.url, Audience: "x", AuthorizationServers: []string{testIssuer}}, "resource URL"},
		{"realm with a quote", Config{JWKSURL: as.url, ResourceURL: testResource, Realm: `a"b`}, "realm"},
	} {
		a, err := New(c.cfg)
		if err == nil {
			a.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

// TestCloseStopsRefresher: Close ends the key set cache's goroutines. Not
// parallel: it counts goroutines of the whole test binary.
func TestCloseStopsRefresher(t *testing.T) {
	as := newAuthServer(t)
	a, err := New(Config{JWKSURL: as.url, ResourceURL: testResource})
	if err != nil {
		t.Fatal(err)
	}
	if n := httprcGoroutines(); n == 0 {
		t.Fatal("no refresher goroutine while open: the check below would prove nothing")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for httprcGoroutines() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d key set goroutines still run after Close", httprcGoroutines())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func httprcGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "lestrrat-go/httprc") {
			n++
		}
	}
	return n
}
