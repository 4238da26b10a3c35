package auth

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/vmcp-dev/vmcp/internal/principal"
)

// serve runs a on loopback the way the hosted endpoint mounts it: /mcp
// behind Middleware (answering with the principal it sees) and the
// metadata at MetadataPath and under it.
func serve(t *testing.T, a *Authenticator) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/mcp", a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "principal=%s authorization=%q", principal.From(r.Context()), r.Header.Get("Authorization"))
	})))
	mux.Handle(MetadataPath, a.MetadataHandler())
	mux.Handle(MetadataPath+"/", a.MetadataHandler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// call sends a request to url with the given Authorization headers.
func call(t *testing.T, method, url string, authorization ...string) (status int, header http.Header, body string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range authorization {
		req.Header.Add("Authorization", v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestMiddlewareStaticTokens(t *testing.T) {
	t.Parallel()
	alice := NewToken()
	a, err := New(Config{TokensFile: writeTokens(t, "alice "+HashToken(alice)+"\n")})
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, a)
	status, _, body := call(t, "POST", base+"/mcp", "Bearer "+alice)
	if status != 200 || body != `principal=alice authorization=""` {
		t.Errorf("right token: %d %s; want the principal, and no Authorization header passed on", status, body)
	}
	wrong := NewToken()
	for _, c := range []struct {
		name, url   string
		auth        []string
		status      int
		challenge   string
		bodyError   string
		description string
	}{
		{"missing", "/mcp", nil, 401, `Bearer realm="vmcp"`, "unauthorized", "no bearer token"},
		{"another scheme", "/mcp", []string{"Basic YWxpY2U6eA=="}, 401, `Bearer realm="vmcp"`, "unauthorized", "no bearer token"},
		{"wrong", "/mcp", []string{"Bearer " + wrong}, 401,
			`Bearer realm="vmcp", error="invalid_token", error_description="unknown or revoked token"`, "invalid_token", "unknown or revoked"},
		{"in the query", "/mcp?access_token=" + alice, nil, 400,
			`Bearer realm="vmcp", error="invalid_request", error_description="a token in the URL (access_token) is refused: send it in the Authorization header, and replace it, since URLs are logged"`,
			"invalid_request", "in the URL"},
		{"in the query and the header", "/mcp?access_token=" + alice, []string{"Bearer " + alice}, 400, "", "invalid_request", "in the URL"},
		{"two headers", "/mcp", []string{"Bearer " + alice, "Bearer " + alice}, 400, "", "invalid_request", "several Authorization headers"},
		{"empty bearer", "/mcp", []string{"Bearer "}, 400, "", "invalid_request", "no token after Bearer"},
	} {
		status, h, body := call(t, "POST", base+c.url, c.auth...)
		var doc struct {
			Error            string `json:"error"`
			ErrorDescription string `json:"error_description"`
		}
		json.Unmarshal([]byte(body), &doc)
		got := h.Get("WWW-Authenticate")
		if status != c.status || !strings.HasPrefix(got, `Bearer realm="vmcp"`) || (c.challenge != "" && got != c.challenge) {
			t.Errorf("%s: %d %q, want %d %q", c.name, status, got, c.status, c.challenge)
		}
		if doc.Error != c.bodyError || !strings.Contains(doc.ErrorDescription, c.description) {
			t.Errorf("%s: body %s, want error %q saying %q", c.name, body, c.bodyError, c.description)
		}
		if strings.Contains(body+got, alice) || strings.Contains(body+got, wrong) {
			t.Errorf("%s: the answer repeats the token", c.name)
		}
	}
	// Without authorization servers there is no metadata to point to.
	if status, _, _ := call(t, "GET", base+MetadataPath); status != 404 {
		t.Errorf("metadata without authorization servers: %d, want 404", status)
	}
}

func TestMiddlewareJWT(t *testing.T) {
	t.Parallel()
	as := newAuthServer(t)
	a, err := New(Config{JWKSURL: as.url, Issuer: testIssuer, ResourceURL: testResource,
		AuthorizationServers: []string{testIssuer}, Scopes: []string{"mcp:tools"}, Realm: "sandboxes"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	base := serve(t, a)
	token := sign(t, claims(), jwa.ES256(), as.ec, "ec1")
	if status, _, body := call(t, "POST", base+"/mcp", "Bearer "+token); status != 200 || body != `principal=https://issuer.example|alice authorization=""` {
		t.Errorf("valid JWT: %d %s", status, body)
	}
	challenge := `Bearer realm="sandboxes", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", scope="mcp:tools"`
	if status, h, _ := call(t, "POST", base+"/mcp"); status != 401 || h.Get("WWW-Authenticate") != challenge {
		t.Errorf("no token: %d %q, want 401 %q", status, h.Get("WWW-Authenticate"), challenge)
	}
	expired := claims()
	expired["exp"] = 1_000_000_000
	want := challenge + `, error="invalid_token", error_description="the JWT expired (exp); get a new access token"`
	if status, h, _ := call(t, "POST", base+"/mcp", "Bearer "+sign(t, expired, jwa.ES256(), as.ec, "ec1")); status != 401 || h.Get("WWW-Authenticate") != want {
		t.Errorf("expired JWT: %d %q, want 401 %q", status, h.Get("WWW-Authenticate"), want)
	}
}

// TestMetadata: the RFC 9728 document, where MCP clients look for it.
func TestMetadata(t *testing.T) {
	t.Parallel()
	a, err := New(Config{TokensFile: writeTokens(t, ""), ResourceURL: testResource,
		AuthorizationServers: []string{"https://as1.example", "https://as2.example/tenant"}, Scopes: []string{"mcp"}})
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, a)
	want := map[string]any{
		"resource":                 testResource,
		"authorization_servers":    []any{"https://as1.example", "https://as2.example/tenant"},
		"bearer_methods_supported": []any{"header"},
		"scopes_supported":         []any{"mcp"},
	}
	for _, path := range []string{MetadataPath, MetadataPath + "/mcp"} {
		status, h, body := call(t, "GET", base+path)
		var got map[string]any
		if err := json.Unmarshal([]byte(body), &got); err != nil || status != 200 || !reflect.DeepEqual(got, want) {
			t.Errorf("GET %s: %d %s (%v), want %v", path, status, body, err, want)
		}
		if h.Get("Content-Type") != "application/json" || h.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("GET %s: headers %v", path, h)
		}
	}
	if status, _, _ := call(t, "GET", base+MetadataPath+"/other"); status != 404 {
		t.Errorf("metadata of another resource: %d, want 404", status)
	}
	if status, _, _ := call(t, "POST", base+MetadataPath); status != 405 {
		t.Errorf("POST metadata: %d, want 405", status)
	}
	// Without configured scopes none are published.
	b, err := New(Config{TokensFile: writeTokens(t, ""), ResourceURL: testResource, AuthorizationServers: []string{"https://as1.example"}})
	if err != nil {
		t.Fatal(err)
	}
	_, _, body := call(t, "GET", serve(t, b)+MetadataPath)
	if strings.Contains(body, "scopes_supported") {
		t.Errorf("scopes published though none configured: %s", body)
	}
}
