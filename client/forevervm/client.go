package forevervm

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

// DefaultBaseURL is the ForeverVM API.
const DefaultBaseURL = "https://api.forevervm.com"

// SDKName is the value of the x-forevervm-sdk header this client sends, so
// that the service can tell its clients apart.
const SDKName = "go"

// Timeouts that bound every call.
const (
	// DefaultTimeout is an instruction's timeout when ExecOptions.Timeout is
	// zero: the service's own default.
	DefaultTimeout = 15 * time.Second
	// MaxInstructionTimeout is the longest instruction the service runs;
	// long polls for results are sized from it.
	MaxInstructionTimeout = 20 * time.Minute
	// DefaultRequestTimeout bounds each short request (whoami, create, list,
	// exec submit) unless WithRequestTimeout says otherwise.
	DefaultRequestTimeout = time.Minute
)

// DefaultMaxMessageBytes caps one response body, NDJSON line or WebSocket
// frame: results can carry large base64 PNGs.
const DefaultMaxMessageBytes = 64 << 20

// resultSlack is added to an instruction's timeout for the HTTP deadline of
// the request that waits for its result: the instruction may queue, and the
// result must still travel back after the instruction ends.
const resultSlack = 2 * time.Minute

// Client calls the ForeverVM REST API. It is safe for concurrent use.
type Client struct {
	// auth sets the Authorization header. The token lives only in this
	// closure, which fmt prints as an address whatever the verb.
	auth            func(http.Header)
	baseURL         string
	baseErr         error
	http            *http.Client
	requestTimeout  time.Duration
	maxMessageBytes int64
	log             zerolog.Logger
	reconnect       ReconnectPolicy
	keepalive       time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithBaseURL points the client at another server, such as an emulator
// (e.g. "http://127.0.0.1:8080"). A trailing slash is ignored; a path prefix
// is kept.
func WithBaseURL(u string) Option { return func(c *Client) { c.baseURL = u } }

// WithHTTPClient sets the HTTP client for REST calls and the WebSocket
// handshake. Leave its Timeout at zero: long polls legitimately take up to 20
// minutes, and the client bounds each request itself.
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// WithRequestTimeout bounds each short request (default DefaultRequestTimeout).
// Long polls for results are bounded by the instruction's timeout instead.
func WithRequestTimeout(d time.Duration) Option {
	return func(c *Client) { c.requestTimeout = d }
}

// WithMaxMessageBytes caps one response body, NDJSON line or WebSocket frame
// (default DefaultMaxMessageBytes).
func WithMaxMessageBytes(n int64) Option { return func(c *Client) { c.maxMessageBytes = n } }

// WithLogger receives the client's diagnostics (REPL reconnections, server
// messages). The default discards them.
func WithLogger(l zerolog.Logger) Option { return func(c *Client) { c.log = l } }

// WithReconnectPolicy sets how REPLs reconnect after their socket drops.
func WithReconnectPolicy(p ReconnectPolicy) Option { return func(c *Client) { c.reconnect = p } }

// WithKeepalive sets how often an idle REPL pings the server so that a dead
// connection is noticed before the next instruction is sent (default 30 s;
// zero or negative disables it).
func WithKeepalive(d time.Duration) Option { return func(c *Client) { c.keepalive = d } }

// New returns a client that authenticates with token. A bad base URL is
// reported by the first call.
func New(token string, opts ...Option) *Client {
	c := &Client{
		auth:            func(h http.Header) { h.Set("Authorization", "Bearer "+token) },
		baseURL:         DefaultBaseURL,
		http:            &http.Client{},
		requestTimeout:  DefaultRequestTimeout,
		maxMessageBytes: DefaultMaxMessageBytes,
		log:             zerolog.Nop(),
		reconnect:       DefaultReconnectPolicy,
		keepalive:       30 * time.Second,
	}
	for _, o := range opts {
		o(c)
	}
	c.baseURL, c.baseErr = normalizeBaseURL(c.baseURL)
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.maxMessageBytes <= 0 {
		c.maxMessageBytes = DefaultMaxMessageBytes
	}
	c.reconnect = c.reconnect.withDefaults()
	return c
}

// NewFromEnv returns a client configured like the ForeverVM MCP server:
// the token from FOREVERVM_TOKEN and the base URL from FOREVERVM_BASE_URL
// (default DefaultBaseURL). Options apply on top.
func NewFromEnv(opts ...Option) (*Client, error) {
	token := os.Getenv("FOREVERVM_TOKEN")
	if token == "" {
		return nil, errors.New("forevervm: FOREVERVM_TOKEN is not set: set it to your ForeverVM API token")
	}
	if base := os.Getenv("FOREVERVM_BASE_URL"); base != "" {
		opts = append([]Option{WithBaseURL(base)}, opts...)
	}
	return New(token, opts...), nil
}

func normalizeBaseURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil {
		return "", fmt.Errorf("forevervm: base URL %q is not a URL: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("forevervm: base URL %q must be http:// or https:// with a host", raw)
	}
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// BaseURL is the server this client talks to.
func (c *Client) BaseURL() string { return c.baseURL }

// String describes the client without its token.
func (c *Client) String() string { return fmt.Sprintf("forevervm.Client{BaseURL: %q}", c.baseURL) }

// GoString is String, so that %#v does not print the token either.
func (c *Client) GoString() string { return c.String() }

// Whoami returns the name of the account the token belongs to.
func (c *Client) Whoami(ctx context.Context) (string, error) {
	var resp struct {
		Account string `json:"account"`
	}
	if err := c.doJSON(ctx, http.MethodGet, "/v1/whoami", nil, &resp, c.requestTimeout); err != nil {
		return "", err
	}
	return resp.Account, nil
}

// CreateMachineOptions describe a machine to create. The zero value is a
// plain machine.
type CreateMachineOptions struct {
	// Tags label the machine, for ListMachines filters.
	Tags map[string]string `json:"tags,omitempty"`
	// MemoryMB asks for this much memory; zero leaves the service's default.
	MemoryMB uint32 `json:"memory_mb,omitempty"`
}

// CreateMachine creates a machine and returns its name.
func (c *Client) CreateMachine(ctx context.Context, opts CreateMachineOptions) (string, error) {
	var resp struct {
		MachineName string `json:"machine_name"`
	}
	if err := c.doJSON(ctx, http.MethodPost, "/v1/machine/new", opts, &resp, c.requestTimeout); err != nil {
		return "", err
	}
	if resp.MachineName == "" {
		return "", errors.New("forevervm: create machine: the response names no machine")
	}
	return resp.MachineName, nil
}

// ListMachines lists the account's machines, newest first. With tags, only
// machines that carry every one of them are listed.
func (c *Client) ListMachines(ctx context.Context, tags map[string]string) ([]Machine, error) {
	req := struct {
		Tags map[string]string `json:"tags,omitempty"`
	}{tags}
	var resp struct {
		Machines []Machine `json:"machines"`
	}
	if err := c.doJSON(ctx, http.MethodPost, "/v1/machine/list", req, &resp, c.requestTimeout); err != nil {
		return nil, err
	}
	return resp.Machines, nil
}

// ExecOptions tune one instruction.
type ExecOptions struct {
	// Timeout interrupts the instruction after this long (whole seconds,
	// rounded up); the machine's state survives. Zero means DefaultTimeout.
	Timeout time.Duration
	// Interrupt (Client.Exec only) interrupts the machine's pending or
	// running instruction instead of being refused while it is busy. The
	// REPL protocol has no interrupt: REPL.Exec refuses it.
	Interrupt bool
	// OnOutput (REPL.Exec only) receives each output chunk, in order, on the
	// goroutine that called Exec. Over HTTP, use StreamResult.
	OnOutput func(OutputChunk)
}

// timeoutSeconds is the wire form of the timeout: at least one second.
func (o ExecOptions) timeoutSeconds() int64 {
	if o.Timeout <= 0 {
		return int64(DefaultTimeout / time.Second)
	}
	return int64((o.Timeout + time.Second - 1) / time.Second)
}

// instruction is the wire form of an instruction; timeout_seconds is always
// sent (spec §7.2).
type instruction struct {
	Code           string `json:"code"`
	TimeoutSeconds int64  `json:"timeout_seconds"`
}

// Exec submits code to run on the machine and returns at once; wait for the
// result with ExecResult or StreamResult. The returned InstructionSeq is nil
// when the machine is busy and opts.Interrupt is false: nothing was submitted.
func (c *Client) Exec(ctx context.Context, machine, code string, opts ExecOptions) (*ExecResponse, error) {
	if err := checkMachine(machine); err != nil {
		return nil, err
	}
	req := struct {
		Instruction instruction `json:"instruction"`
		Interrupt   bool        `json:"interrupt"`
	}{instruction{code, opts.timeoutSeconds()}, opts.Interrupt}
	var resp ExecResponse
	path := "/v1/machine/" + url.PathEscape(machine) + "/exec"
	if err := c.doJSON(ctx, http.MethodPost, path, req, &resp, c.requestTimeout); err != nil {
		return nil, err
	}
	return &resp, nil
}

// ExecResult waits for the instruction's result (a long poll of up to
// MaxInstructionTimeout plus a margin; ctx can end it sooner).
func (c *Client) ExecResult(ctx context.Context, machine string, seq int64) (*Result, error) {
	return c.execResult(ctx, machine, seq, MaxInstructionTimeout)
}

// execResult waits for a result with an HTTP deadline derived from the
// instruction's timeout, never under 20 minutes (spec §2.6, §7.2).
func (c *Client) execResult(ctx context.Context, machine string, seq int64, instrTimeout time.Duration) (*Result, error) {
	if err := checkMachine(machine); err != nil {
		return nil, err
	}
	var resp struct {
		Result *Result `json:"result"`
	}
	if err := c.doJSON(ctx, http.MethodGet, resultPath(machine, seq, "result"), nil, &resp, longPollTimeout(instrTimeout)); err != nil {
		return nil, err
	}
	if resp.Result == nil {
		return nil, fmt.Errorf("forevervm: result of instruction %d on %s: the response has no result", seq, machine)
	}
	return resp.Result, nil
}

func longPollTimeout(instr time.Duration) time.Duration {
	return max(MaxInstructionTimeout, instr) + resultSlack
}

func resultPath(machine string, seq int64, what string) string {
	return fmt.Sprintf("/v1/machine/%s/exec/%d/%s", url.PathEscape(machine), seq, what)
}

func checkMachine(machine string) error {
	if machine == "" {
		return errors.New("forevervm: no machine name given: create one with CreateMachine or pick one from ListMachines")
	}
	return nil
}

// request sends one request and returns the response when its status is
// 2xx; any other status becomes an *APIError. cancel must be called once the
// body is consumed.
func (c *Client) request(ctx context.Context, method, path string, body any, timeout time.Duration) (*http.Response, context.CancelFunc, error) {
	if c.baseErr != nil {
		return nil, nil, c.baseErr
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, nil, fmt.Errorf("forevervm: %s %s: encode request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, rd)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("forevervm: %s %s: %w", method, path, err)
	}
	c.setHeaders(req.Header)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("forevervm: %s %s: %w", method, path, stripURL(err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer cancel()
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return nil, nil, newAPIError(method, path, resp.StatusCode, b)
	}
	return resp, cancel, nil
}

func (c *Client) setHeaders(h http.Header) {
	c.auth(h)
	h.Set("x-forevervm-sdk", SDKName)
}

// doJSON sends a request and decodes its JSON response into out.
func (c *Client) doJSON(ctx context.Context, method, path string, body, out any, timeout time.Duration) error {
	resp, cancel, err := c.request(ctx, method, path, body, timeout)
	if err != nil {
		return err
	}
	defer cancel()
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, c.maxMessageBytes+1))
	if err != nil {
		return fmt.Errorf("forevervm: %s %s: read response: %w", method, path, stripURL(err))
	}
	if int64(len(b)) > c.maxMessageBytes {
		return fmt.Errorf("forevervm: %s %s: response larger than %d bytes (raise WithMaxMessageBytes)", method, path, c.maxMessageBytes)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("forevervm: %s %s: the response is not the expected JSON (%w): %s", method, path, err, snippet(b))
	}
	return nil
}

// stripURL drops the *url.Error wrapper, whose text repeats the URL: the
// callers already name the method and path.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
