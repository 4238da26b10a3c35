package fastvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Version is the version of this client, sent in the User-Agent header.
const Version = "0.1.0"

// DefaultBaseURL is the production API. Paths carry their own /v1 prefix, so
// the base URL has none.
const DefaultBaseURL = "https://api.fastvm.org"

// Defaults of the client's options; each matches the official SDKs.
const (
	DefaultTimeout         = 60 * time.Second  // one API request
	DefaultMaxRetries      = 2                 // retries after the first attempt
	DefaultPollInterval    = 2 * time.Second   // between GETs while waiting for a VM
	DefaultWaitTimeout     = 300 * time.Second // for a VM to reach running
	DefaultTransferTimeout = 600 * time.Second // VM-side fetch and tar steps of Upload/Download
	DefaultBuildTimeout    = 30 * time.Minute  // for a build to complete
)

// execMinTimeout is the least HTTP timeout of an exec: the server's default
// command timeout (300 s) may run the whole time before it answers.
const execMinTimeout = 300 * time.Second

// defaultExecTimeoutSec is the server's command timeout when the request
// gives none (spec §4, emulator choice: 300 s).
const defaultExecTimeoutSec = 300

// maxErrorBody bounds how much of an error response is read into memory.
const maxErrorBody = 64 << 10

// Client talks to one FastVM API endpoint with one API key. It is safe for
// concurrent use; create it with New or NewFromEnv.
type Client struct {
	apiKey          string
	baseURL         string
	http            *http.Client // API requests, with X-API-Key
	storage         *http.Client // presigned URLs, never with X-API-Key
	headers         http.Header
	maxRetries      int
	timeout         time.Duration
	pollInterval    time.Duration
	waitTimeout     time.Duration
	transferTimeout time.Duration
	buildTimeout    time.Duration
	log             zerolog.Logger
	userHTTP        *http.Client // as given to WithHTTPClient, before the redirect guard
}

// Option configures a Client.
type Option func(*Client)

// WithBaseURL points the client at another API endpoint, such as an emulator
// ("http://127.0.0.1:8080"). Paths carry /v1 themselves, so give no /v1 suffix.
func WithBaseURL(u string) Option {
	return func(c *Client) { c.baseURL = strings.TrimRight(strings.TrimSpace(u), "/") }
}

// WithHTTPClient sends API requests through hc (its Timeout should be zero:
// the client applies its own per-request deadlines). The client works on a
// copy whose redirect policy drops X-API-Key when a redirect leaves the host.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.userHTTP = hc }
}

// WithStorageHTTPClient sends requests to presigned upload and download URLs
// through hc. It must not add credentials: signed URLs reject extra headers.
func WithStorageHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.storage = hc }
}

// WithMaxRetries sets how many times an idempotent call is retried after its
// first attempt (default 2; 0 disables retries).
func WithMaxRetries(n int) Option {
	return func(c *Client) { c.maxRetries = max(n, 0) }
}

// WithTimeout bounds each API request attempt (default 60 s). Exec and file
// fetches get at least max(300 s, their timeoutSec + 30 s) regardless.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) { setPositive(&c.timeout, d) }
}

// WithPollInterval sets the pause between GETs while Launch and WaitReady wait
// for a VM (default 2 s, ±10 % jitter, never under 0.5 s) and while Build and
// WaitSnapshot poll.
func WithPollInterval(d time.Duration) Option {
	return func(c *Client) { setPositive(&c.pollInterval, d) }
}

// WithWaitTimeout sets how long Launch and WaitReady wait for a VM to reach
// running before a *NotReadyError (default 300 s).
func WithWaitTimeout(d time.Duration) Option {
	return func(c *Client) { setPositive(&c.waitTimeout, d) }
}

// setPositive sets *field to d unless d is zero or negative (which keep the
// default).
func setPositive(field *time.Duration, d time.Duration) {
	if d > 0 {
		*field = d
	}
}

// WithTransferTimeout bounds the VM-side steps of Upload and Download: the
// server's fetch into the VM and the tar and curl commands (default 600 s).
// The local side of a transfer is bounded by its context only.
func WithTransferTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d >= time.Second {
			c.transferTimeout = d
		}
	}
}

// WithBuildTimeout sets how long Build waits for a build to complete
// (default 30 minutes).
func WithBuildTimeout(d time.Duration) Option {
	return func(c *Client) { setPositive(&c.buildTimeout, d) }
}

// WithHeader adds a header to every API request (not to presigned URLs).
// It cannot replace X-API-Key.
func WithHeader(name, value string) Option {
	return func(c *Client) { c.headers.Add(name, value) }
}

// WithLogger receives debug records of retries and polls. The default logs
// nothing. Records never contain the API key or presigned URLs.
func WithLogger(l zerolog.Logger) Option {
	return func(c *Client) { c.log = l }
}

// New returns a client that authenticates with apiKey. With an empty key
// every API call fails with a 401 *APIError; NewFromEnv checks for that.
func New(apiKey string, opts ...Option) *Client {
	c := &Client{
		apiKey:          apiKey,
		baseURL:         DefaultBaseURL,
		headers:         http.Header{},
		maxRetries:      DefaultMaxRetries,
		timeout:         DefaultTimeout,
		pollInterval:    DefaultPollInterval,
		waitTimeout:     DefaultWaitTimeout,
		transferTimeout: DefaultTransferTimeout,
		buildTimeout:    DefaultBuildTimeout,
		log:             zerolog.Nop(),
	}
	for _, o := range opts {
		o(c)
	}
	base := c.userHTTP
	if base == nil {
		base = &http.Client{}
	}
	hc := *base
	hc.CheckRedirect = guardRedirect(base.CheckRedirect)
	c.http = &hc
	if c.storage == nil {
		c.storage = &http.Client{}
	}
	return c
}

// NewFromEnv returns a client configured like the official SDKs:
// FASTVM_API_KEY (required), FASTVM_BASE_URL (empty means the default) and
// FASTVM_CUSTOM_HEADERS (newline-separated "Name: value" lines added to every
// API request). Options given here override the environment.
func NewFromEnv(opts ...Option) (*Client, error) {
	key := strings.TrimSpace(os.Getenv("FASTVM_API_KEY"))
	if key == "" {
		return nil, errors.New("fastvm: FASTVM_API_KEY is not set: export the API key from your FastVM account (or call New with it)")
	}
	var env []Option
	if u := strings.TrimSpace(os.Getenv("FASTVM_BASE_URL")); u != "" {
		env = append(env, WithBaseURL(u))
	}
	for line := range strings.Lines(os.Getenv("FASTVM_CUSTOM_HEADERS")) {
		name, value, ok := strings.Cut(line, ":")
		if name = strings.TrimSpace(name); ok && name != "" {
			env = append(env, WithHeader(name, strings.TrimSpace(value)))
		}
	}
	return New(key, append(env, opts...)...), nil
}

// BaseURL is the API endpoint the client talks to.
func (c *Client) BaseURL() string { return c.baseURL }

// Format prints the client with its API key redacted, whatever the verb, so
// that logging a client never leaks the key. (A value receiver, so that a
// dereferenced Client is covered too.)
func (c Client) Format(f fmt.State, verb rune) {
	key := "unset"
	if c.apiKey != "" {
		key = "redacted"
	}
	fmt.Fprintf(f, "fastvm.Client{baseURL: %q, apiKey: %s}", c.baseURL, key)
}

// guardRedirect wraps a redirect policy so that the API key never follows a
// redirect to another host (Go forwards custom headers on redirects).
func guardRedirect(next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) > 0 && req.URL.Host != via[0].URL.Host {
			req.Header.Del("X-API-Key")
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
}

// call describes one API request.
type call struct {
	method string
	path   string     // starting with /v1/ or /healthz; already escaped
	query  url.Values // optional
	body   any        // marshalled as JSON; nil sends no body
	// retry allows retries; false for the non-idempotent POSTs (spec §1).
	retry bool
	// timeout bounds each attempt, response body included; 0 = c.timeout.
	timeout time.Duration
	accept  string // default application/json
}

// response is a successful (2xx) answer whose body is still open. close
// releases the body and the attempt's deadline.
type response struct {
	*http.Response
	cancel context.CancelFunc
}

func (r *response) close() {
	r.Body.Close()
	r.cancel()
}

// doJSON runs a call and decodes a 2xx JSON answer into out (if non-nil).
// It returns the HTTP status code.
func (c *Client) doJSON(ctx context.Context, cl call, out any) (int, error) {
	resp, err := c.send(ctx, cl)
	if err != nil {
		return 0, err
	}
	defer resp.close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	} else {
		err = json.NewDecoder(resp.Body).Decode(out)
	}
	if err != nil {
		return resp.StatusCode, fmt.Errorf("fastvm: %s %s: reading the %d response: %w", cl.method, cl.path, resp.StatusCode, err)
	}
	return resp.StatusCode, nil
}

// callJSON runs a call and decodes its 2xx JSON answer into a new T.
func callJSON[T any](ctx context.Context, c *Client, cl call) (*T, error) {
	var out T
	if _, err := c.doJSON(ctx, cl, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// send runs a call with the retry policy and returns the first 2xx answer.
// Any other final answer becomes an *APIError.
func (c *Client) send(ctx context.Context, cl call) (*response, error) {
	var payload []byte
	if cl.body != nil {
		var err error
		if payload, err = json.Marshal(cl.body); err != nil {
			return nil, fmt.Errorf("fastvm: %s %s: encoding the request: %w", cl.method, cl.path, err)
		}
	}
	u := c.baseURL + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	timeout := cl.timeout
	if timeout <= 0 {
		timeout = c.timeout
	}
	retries := 0
	if cl.retry {
		retries = c.maxRetries
	}
	for attempt := 0; ; attempt++ {
		var body io.Reader
		if payload != nil {
			body = bytes.NewReader(payload)
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		req, err := http.NewRequestWithContext(actx, cl.method, u, body)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("fastvm: %s %s: %w (check the base URL %q)", cl.method, cl.path, err, c.baseURL)
		}
		c.setHeaders(req, cl, payload != nil)
		resp, err := c.http.Do(req)
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("fastvm: %s %s: %w", cl.method, cl.path, context.Cause(ctx))
			}
			if attempt < retries {
				d := backoff(attempt)
				c.log.Debug().Str("method", cl.method).Str("path", cl.path).Err(err).
					Int("attempt", attempt+1).Dur("delay", d).Msg("fastvm: retrying after a connection error")
				if err := sleepCtx(ctx, d); err != nil {
					return nil, fmt.Errorf("fastvm: %s %s: %w", cl.method, cl.path, err)
				}
				continue
			}
			return nil, &ConnError{Method: cl.method, Path: cl.path, Attempts: attempt + 1, Idempotent: cl.retry, Err: err}
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return &response{Response: resp, cancel: cancel}, nil
		}
		errBody, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		cancel()
		apiErr := newAPIError(cl.method, cl.path, resp, errBody, c.apiKey)
		apiErr.Attempts = attempt + 1
		if attempt < retries && shouldRetry(resp) {
			d := retryDelay(resp.Header, attempt, time.Now())
			c.log.Debug().Str("method", cl.method).Str("path", cl.path).Int("status", resp.StatusCode).
				Int("attempt", attempt+1).Dur("delay", d).Msg("fastvm: retrying")
			if err := sleepCtx(ctx, d); err != nil {
				return nil, fmt.Errorf("%w (then: %w)", apiErr, err)
			}
			continue
		}
		return nil, apiErr
	}
}

// setHeaders applies the headers of spec §12.2: the caller's extra headers
// first, so that they can never replace the key or the content negotiation.
func (c *Client) setHeaders(req *http.Request, cl call, hasBody bool) {
	for k, vs := range c.headers {
		req.Header[k] = append([]string(nil), vs...)
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "fastvm-go/"+Version+" (vmcp)")
	}
	accept := cl.accept
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-API-Key", c.apiKey)
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// pathID escapes an id for use as one path segment.
func pathID(id string) string { return url.PathEscape(id) }
