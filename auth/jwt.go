package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/httprc/v3/errsink"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/rs/zerolog"
)

// jwtVerifier checks JWT access tokens against the authorization server's
// key set, kept fresh by jwx's cache.
type jwtVerifier struct {
	url      string
	issuer   string
	audience string
	cache    *jwk.Cache
	stop     context.CancelFunc

	// An unknown kid may be a key the server just rotated in: the key set
	// is then fetched again, at most every forceEvery (unknown kids are
	// cheap to send, fetches are not).
	forceEvery time.Duration
	mu         sync.Mutex
	lastForced time.Time
}

// Refresh bounds of the key set: Cache-Control within these is honoured.
const (
	jwksMinRefresh = 5 * time.Minute
	jwksMaxRefresh = time.Hour
)

func newJWTVerifier(cfg Config, log zerolog.Logger) (*jwtVerifier, error) {
	u, err := parseHTTPURL(cfg.JWKSURL)
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS URL: %w", err)
	}
	if u.Scheme != "https" && !isLoopback(u) {
		return nil, fmt.Errorf("auth: JWKS URL %q: use https (over plain http anyone on the path could swap the keys and forge tokens)", cfg.JWKSURL)
	}
	// The cache's goroutines live until Close, not until some request ends.
	ctx, stop := context.WithCancel(context.Background())
	fetchErrs := make(chan error, 1) // the first failures, for start
	client := httprc.NewClient(httprc.WithWorkers(1), httprc.WithErrorSink(errsink.NewFunc(func(_ context.Context, err error) {
		select {
		case fetchErrs <- err:
		default:
		}
		log.Warn().Err(err).Str("jwks", cfg.JWKSURL).Msg("fetching the authorization server's keys failed; the keys fetched before stay in use")
	})))
	cache, err := jwk.NewCache(ctx, client)
	if err != nil {
		stop()
		return nil, fmt.Errorf("auth: start the key set cache: %w", err)
	}
	v := &jwtVerifier{url: cfg.JWKSURL, issuer: cfg.Issuer, audience: cfg.Audience, cache: cache, stop: stop, forceEvery: 30 * time.Second}
	if err := v.start(ctx, fetchErrs); err != nil {
		v.close()
		return nil, err
	}
	return v, nil
}

// start registers the key set and waits for its first fetch, so that a
// wrong URL is reported now with its cause.
func (v *jwtVerifier) start(ctx context.Context, fetchErrs <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := v.cache.Register(ctx, v.url, jwk.WithWaitReady(false), jwk.WithMaxFetchBodySize(1<<20),
		jwk.WithHttprcResourceOption(httprc.WithMinInterval(jwksMinRefresh)),
		jwk.WithHttprcResourceOption(httprc.WithMaxInterval(jwksMaxRefresh))); err != nil {
		return fmt.Errorf("auth: register the JWKS URL: %w", err)
	}
	r, err := v.cache.LookupResource(ctx, v.url)
	if err != nil {
		return fmt.Errorf("auth: the JWKS URL is not registered: %w", err)
	}
	ready := make(chan error, 1)
	go func() { ready <- r.Ready(ctx) }() // ends with ctx at the latest
	select {
	case err = <-ready:
	case err = <-fetchErrs:
	}
	if err != nil {
		return fmt.Errorf("auth: fetch the authorization server's keys from %s: %w (check the JWKS URL and that the server is reachable)", v.url, err)
	}
	return nil
}

func (v *jwtVerifier) close() error {
	v.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return v.cache.Shutdown(ctx)
}

// jwsHeader is what is read of a token's header before verifying it.
type jwsHeader struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

// acceptedAlgs are the asymmetric signature algorithms accepted. "none"
// and the HMAC ones are out: with only a public key set, an HMAC "secret"
// could be the public key itself, which anyone has.
var acceptedAlgs = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true, "Ed25519": true,
}

// readHeader decodes the header of a compact JWS and checks its algorithm.
func readHeader(token string) (jwsHeader, error) {
	var h jwsHeader
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return h, refuse(ErrInvalidToken, "the token is not a compact JWT")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(raw, &h) != nil {
		return h, refuse(ErrInvalidToken, "the JWT header is not base64url JSON")
	}
	switch {
	case strings.EqualFold(h.Alg, "none") || h.Alg == "" || parts[2] == "":
		return h, refuse(ErrInvalidToken, "unsigned JWTs (alg none) are refused")
	case strings.HasPrefix(h.Alg, "HS"):
		return h, refuse(ErrInvalidToken, "HMAC-signed JWTs (%s) are refused: only the authorization server's public keys are trusted", h.Alg)
	case !acceptedAlgs[h.Alg]:
		return h, refuse(ErrInvalidToken, "the JWT's signature algorithm is not accepted (accepted: RS*, PS*, ES*, EdDSA)")
	case h.Crit != nil:
		// RFC 7515 §4.1.11: extensions marked critical that the recipient
		// does not understand (here: any) make the token invalid.
		return h, refuse(ErrInvalidToken, "the JWT header marks extensions critical (crit) that this server does not implement")
	}
	return h, nil
}

// verify checks token and returns its principal, iss|sub.
func (v *jwtVerifier) verify(ctx context.Context, token string) (string, error) {
	h, err := readHeader(token)
	if err != nil {
		return "", err
	}
	set, err := v.cache.Lookup(ctx, v.url)
	if err != nil {
		return "", refuse(ErrUnavailable, "the authorization server's keys are not available; retry later")
	}
	t, kp, err := v.parse(ctx, token, h, set)
	if kp.unknownKid && v.mayForce() {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		fresh, ferr := v.cache.Refresh(rctx, v.url)
		cancel()
		if ferr == nil {
			t, kp, err = v.parse(ctx, token, h, fresh)
		}
	}
	if err != nil {
		return "", v.explain(err, kp)
	}
	iss, _ := t.Issuer()
	sub, _ := t.Subject()
	if _, ok := t.Expiration(); !ok {
		return "", refuse(ErrInvalidToken, "the JWT has no expiry (exp); access tokens must expire")
	}
	if iss == "" || sub == "" {
		return "", refuse(ErrInvalidToken, "the JWT lacks its issuer (iss) or subject (sub), which name the caller")
	}
	return iss + "|" + sub, nil
}

// parse verifies and validates token with the keys of set.
func (v *jwtVerifier) parse(ctx context.Context, token string, h jwsHeader, set jwk.Set) (jwt.Token, *keyPicker, error) {
	kp := &keyPicker{set: set, header: h}
	opts := []jwt.ParseOption{
		jwt.WithKeyProvider(kp),
		jwt.WithContext(ctx),
		jwt.WithAcceptableSkew(Leeway),
		jwt.WithAudience(v.audience),
	}
	if v.issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.issuer))
	}
	t, err := jwt.ParseString(token, opts...)
	return t, kp, err
}

// mayForce reports whether the key set may be fetched again now.
func (v *jwtVerifier) mayForce() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if time.Since(v.lastForced) < v.forceEvery {
		return false
	}
	v.lastForced = time.Now()
	return true
}

// explain turns a jwx error into a reason for the client. jwx's own text is
// not passed on: it may quote parts of the token.
func (v *jwtVerifier) explain(err error, kp *keyPicker) error {
	switch {
	case kp.refusal != "":
		return refuse(ErrInvalidToken, "%s", kp.refusal)
	case errors.Is(err, jws.VerificationError()), errors.Is(err, jws.VerifyError()):
		return refuse(ErrInvalidToken, "the JWT's signature does not verify with the authorization server's key")
	case errors.Is(err, jwt.TokenExpiredError()):
		return refuse(ErrInvalidToken, "the JWT expired (exp); get a new access token")
	case errors.Is(err, jwt.TokenNotYetValidError()):
		return refuse(ErrInvalidToken, "the JWT is not valid yet (nbf)")
	case errors.Is(err, jwt.InvalidIssuedAtError()):
		return refuse(ErrInvalidToken, "the JWT was issued in the future (iat); check the clocks")
	case errors.Is(err, jwt.InvalidAudienceError()):
		return refuse(ErrInvalidToken, "wrong audience: the JWT was not issued for this server; request it with resource=%s", v.audience)
	case errors.Is(err, jwt.InvalidIssuerError()):
		return refuse(ErrInvalidToken, "wrong issuer: this server accepts JWTs of %s", v.issuer)
	}
	return refuse(ErrInvalidToken, "the JWT is malformed or failed validation")
}

// keyPicker gives jwx the one key of the set that may verify a token: the
// key named by the token's kid (or the set's only key if the token names
// none), of a type matching the token's algorithm. It records why it found
// none, for the reason told to the client.
type keyPicker struct {
	set        jwk.Set
	header     jwsHeader
	unknownKid bool
	refusal    string
}

func (kp *keyPicker) FetchKeys(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
	alg, ok := sig.ProtectedHeaders().Algorithm()
	// jwx parses the header again: it must say what readHeader checked.
	if !ok || alg.String() != kp.header.Alg || !acceptedAlgs[alg.String()] {
		return kp.fail("the JWT's signature algorithm is not accepted")
	}
	var key jwk.Key
	if kid, has := sig.ProtectedHeaders().KeyID(); has {
		if key, ok = kp.set.LookupKeyID(kid); !ok {
			kp.unknownKid = true
			return kp.fail("the JWT was signed by a key (kid) the authorization server does not publish")
		}
	} else {
		if kp.set.Len() != 1 {
			return kp.fail("the JWT names no key (kid) and the authorization server publishes several")
		}
		key, _ = kp.set.Key(0)
	}
	if use, has := key.KeyUsage(); has && use != "" && use != jwk.ForSignature.String() {
		return kp.fail("the JWT's key is not a signing key (use)")
	}
	if keyAlg, has := key.Algorithm(); has && keyAlg.String() != alg.String() {
		return kp.fail("the JWT's algorithm is not its key's (alg)")
	}
	var raw any
	if err := jwk.Export(key, &raw); err != nil {
		return kp.fail("the JWT's key cannot be used")
	}
	pub, ok := publicKeyFor(alg.String(), raw)
	if !ok {
		return kp.fail("the JWT's algorithm does not fit its key's type")
	}
	sink.Key(alg, pub)
	return nil
}

func (kp *keyPicker) fail(reason string) error {
	kp.refusal = reason
	return errors.New(reason)
}

// publicKeyFor returns the public key of raw if its type and curve are
// those of alg (a custom key provider is not checked by jwx for this).
func publicKeyFor(alg string, raw any) (any, bool) {
	switch k := raw.(type) {
	case *rsa.PrivateKey:
		return publicKeyFor(alg, &k.PublicKey)
	case *ecdsa.PrivateKey:
		return publicKeyFor(alg, &k.PublicKey)
	case ed25519.PrivateKey:
		return publicKeyFor(alg, k.Public())
	case *rsa.PublicKey:
		return k, strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		curves := map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()}
		return k, curves[alg] != nil && curves[alg] == k.Curve
	case ed25519.PublicKey:
		return k, alg == "EdDSA" || alg == "Ed25519"
	}
	return nil, false
}
