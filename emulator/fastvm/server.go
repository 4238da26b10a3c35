//go:build linux

// Package fastvm emulates the FastVM cloud API (the generation described in
// shared/specs/fastvm-api.md) on top of the local sandbox engine: every VM is
// a local engine machine of flavour local.VM, commands really run in it, files
// really move through emulator-hosted presigned URLs, snapshots and builds
// produce real local snapshots. It is close enough that the official SDKs,
// their helpers and vmcp's Go client work against it unchanged.
//
// The server is an http.Handler: mount it on any listener (httptest.Server in
// tests) and tell it its own base URL, which presigned URLs are minted from.
//
// Beyond the spec's UNVERIFIED items (§13, whose choices are commented where
// they are implemented), the emulator makes these choices where a VM here
// cannot be what a FastVM VM is:
//
//   - Network (network.go): a VM has a network namespace of its own, with
//     loopback only, or HTTP(S) to the domains of Options.VMNetworkAllow
//     through the engine's proxy. It never reaches the host's loopback or
//     other addresses: not the emulator's API, not vmcp, not any other local
//     service. The presigned object URLs alone are served to it, on its own
//     loopback at the port of the emulator's base URL (which must name a
//     loopback host for that); files/fetch writes into the VM from the
//     emulator's side and needs no network at all.
//   - Firewall: policies are validated, stored, reported and snapshotted as
//     §3.3 says; nothing inbound reaches a VM whatever its policy (no public
//     address, no interface), so none is enforced, and services (§9) get
//     their URLs and firewall rules but no proxy.
//   - Builds (builds.go, dockerfile.go): FROM images and imageRef are not
//     pulled; the base is the host's OS as VMs see it, named in the build's
//     emulatorBase, warnings, log and failure. ENV outlives the build as an
//     image's does: in every command's environment (beneath envVars) of
//     VMs launched from the image and from their snapshots, and in the
//     image's /etc/environment.
//   - System packages (packages.go): apt-get, apt and dpkg refuse to change
//     packages, saying why (the host's root-only files, dpkg's locks among
//     them, are masked read-only in VMs, and mirrors are beyond a VM's
//     network), instead of apt's "are you root?".
package fastvm

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local"
)

// Options configure a Server.
type Options struct {
	Engine *local.Engine // required
	APIKey string        // required: the accepted X-API-Key
	// BaseURL is the emulator's own externally reachable base URL (e.g.
	// "http://127.0.0.1:PORT"), used to mint presigned URLs; set it after you
	// know the listener's address, or leave empty and call SetBaseURL.
	BaseURL string
	// ProvisioningDelay is how long a new VM stays "provisioning" (202) before
	// "running"; 0 = launch answers 201 running.
	ProvisioningDelay time.Duration
	Quotas            Quotas // org quotas; zero fields take generous defaults
	Logger            zerolog.Logger
	// ProxyDomain is the domain of services' public URLs,
	// https://<name>--<vm id without hyphens>.<ProxyDomain> (§9; the real
	// stack domain is unknown). Default DefaultProxyDomain.
	ProxyDomain string
	// NoExtensions serves the target generation's endpoints only: pause,
	// resume, TTL refresh and services (§9) answer 404, as on a service
	// without them, for tests of clients that must do without. Their
	// request fields (envVars, ttl, ?status=) are still accepted.
	NoExtensions bool
	// VMNetworkAllow lists the domains (exact, or *.suffix) that VMs reach
	// over HTTP(S) through the engine's proxy, e.g. pypi.org and
	// files.pythonhosted.org for pip; names that resolve to loopback,
	// link-local or private addresses stay refused unless the engine's
	// EgressOptions allow them. Default: none, VMs have no network (see
	// network.go). VMs never reach the host's loopback services.
	VMNetworkAllow []string
}

// DefaultProxyDomain is the domain of services' URLs unless
// Options.ProxyDomain says otherwise.
const DefaultProxyDomain = "proxy.fastvm.localhost"

// Quotas are the organisation's limits. A VM counts against them from launch
// until it is deleted (or failed), except while paused (§9: pause frees all
// quota, resume takes it again); snapshots count until deleted.
type Quotas struct {
	VMs           int // live VMs at once; default 100
	VCPU          int // vCPUs of live VMs; default 512
	MemoryMiB     int // memory of live VMs; default 1 TiB
	DiskGiB       int // disk of live VMs; default 100000
	SnapshotCount int // snapshots; default 10000
}

func (q Quotas) withDefaults() Quotas {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&q.VMs, 100)
	def(&q.VCPU, 512)
	def(&q.MemoryMiB, 1<<20)
	def(&q.DiskGiB, 100000)
	def(&q.SnapshotCount, 10000)
	return q
}

// Server is the emulated FastVM API. It is safe for concurrent use.
type Server struct {
	engine   *local.Engine
	apiKey   []byte
	log      zerolog.Logger
	quotas   Quotas
	delay    time.Duration
	store    *store
	staging  string // presigned objects
	signKey  []byte
	mux      *http.ServeMux
	orgID    string
	ctx      context.Context // ends background work on Close
	cancel   context.CancelFunc
	bg       sync.WaitGroup
	baseURL  string
	failNext bool
	injected []*injection
	tokens   map[string]consoleToken
	closed   bool
	// maxUploadOverride, when positive, replaces every maxUploadBytes (tests
	// cannot upload 10 GiB to see the limit work).
	maxUploadOverride int64
	failReplay        bool // the next restore's service replay fails
	proxyDomain       string
	extensions        bool
	vmNetworkAllow    []string
	vmObjects         *vmObjects // the object URLs, as VMs reach them

	mu sync.Mutex // guards the fields above from baseURL on, and the store's records
}

type injection struct {
	method, prefix string
	status, left   int
}

// New opens the emulator's state (VMs, snapshots, builds) kept next to the
// engine's, in its state directory, so that it survives a restart.
func New(opts Options) (*Server, error) {
	if opts.Engine == nil {
		return nil, errors.New("fastvm emulator: Options.Engine is required: open a local.Engine and pass it")
	}
	if opts.APIKey == "" {
		return nil, errors.New("fastvm emulator: Options.APIKey is required: choose the key clients must send as X-API-Key")
	}
	if err := backend.ValidateDomains(opts.VMNetworkAllow); err != nil {
		return nil, fmt.Errorf("fastvm emulator: Options.VMNetworkAllow: %w", err)
	}
	st, err := openStore(opts.Engine.StateDir())
	if err != nil {
		return nil, err
	}
	// Staged objects are on disk next to the machines, not in a tmpfs /tmp.
	// Those of an earlier run are unreachable (their URLs were signed with
	// that run's key): they go.
	staging := filepath.Join(st.dir, "objects")
	os.RemoveAll(staging)
	if err := os.Mkdir(staging, 0o700); err != nil {
		return nil, fmt.Errorf("fastvm emulator: create the staging directory for presigned objects: %w", err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		engine:  opts.Engine,
		apiKey:  []byte(opts.APIKey),
		log:     opts.Logger,
		quotas:  opts.Quotas.withDefaults(),
		delay:   opts.ProvisioningDelay,
		store:   st,
		staging: staging,
		signKey: key,
		orgID:   st.orgID,
		ctx:     ctx,
		cancel:  cancel,
		baseURL: strings.TrimRight(opts.BaseURL, "/"),
		tokens:  map[string]consoleToken{},

		proxyDomain:    strings.Trim(opts.ProxyDomain, "."),
		extensions:     !opts.NoExtensions,
		vmNetworkAllow: slices.Clone(opts.VMNetworkAllow),
	}
	if s.proxyDomain == "" {
		s.proxyDomain = DefaultProxyDomain
	}
	s.vmObjects = s.newVMObjects()
	s.recover()
	s.routes()
	s.goBackground(s.runTTLs)
	s.goBackground(func(ctx context.Context) {
		stop := context.AfterFunc(ctx, func() { s.vmObjects.srv.Close() })
		defer stop()
		s.vmObjects.srv.Serve(s.vmObjects.ln)
	})
	s.warnBaseURL(s.baseURL)
	return s, nil
}

// SetBaseURL sets the emulator's externally reachable base URL (e.g.
// "http://127.0.0.1:PORT"), from which presigned URLs are minted.
func (s *Server) SetBaseURL(u string) {
	u = strings.TrimRight(u, "/")
	s.mu.Lock()
	s.baseURL = u
	s.mu.Unlock()
	s.warnBaseURL(u)
}

// warnBaseURL tells the operator when VMs cannot reach the presigned URLs
// minted from base (see network.go).
func (s *Server) warnBaseURL(base string) {
	if base != "" && !loopbackBase(base) {
		s.log.Warn().Str("base_url", base).Msg("fastvm emulator: VMs reach the presigned URLs only when the base URL's host is a loopback address (127.0.0.1, localhost): " +
			"the SDKs' downloads, which upload from inside the VM, will fail; listen on a loopback or wildcard address instead")
	}
}

// FailNextLaunch makes the next launched VM go to status "error" during
// provisioning (for tests of a client's launch error).
func (s *Server) FailNextLaunch() {
	s.mu.Lock()
	s.failNext = true
	s.mu.Unlock()
}

// FailNextServiceReplay makes the next launch from a snapshot fail to
// register the snapshot's services again, as the service reports in
// snapshotRestoreWarnings (for tests of a client's handling of it).
func (s *Server) FailNextServiceReplay() {
	s.mu.Lock()
	s.failReplay = true
	s.mu.Unlock()
}

// InjectTransient makes the next n requests whose method is method (any
// method if empty) and whose path starts with pathPrefix fail with status
// (429 or 503, say) before reaching their handler, with retry-after-ms: 0,
// for tests of a client's retries.
func (s *Server) InjectTransient(method, pathPrefix string, status, n int) {
	s.mu.Lock()
	s.injected = append(s.injected, &injection{method: method, prefix: pathPrefix, status: status, left: n})
	s.mu.Unlock()
}

// Close ends the emulator's background work (provisioning, builds,
// snapshots, deletions, console sessions, running execs) and removes staged
// objects. VMs, snapshots and their records stay; the engine is the caller's
// to close.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.bg.Wait()
	return os.RemoveAll(s.staging)
}

// goBackground runs f as background work that Close ends and waits for.
func (s *Server) goBackground(f func(ctx context.Context)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f(s.ctx)
	}()
	return true
}

// requestContext is the request's context, also ended by Close.
func (s *Server) requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// Request body limits: JSON bodies are small; exec carries base64 stdin.
const (
	maxJSONBody = 1 << 20
	maxExecBody = 64 << 20
)

func (s *Server) routes() {
	mux := http.NewServeMux()
	h := func(pattern string, f func(http.ResponseWriter, *http.Request)) { mux.HandleFunc(pattern, f) }
	h("GET /healthz", s.health)
	h("GET /livez", s.probe)
	h("GET /readyz", s.probe)
	h("POST /v1/vms", s.launchVM)
	h("GET /v1/vms", s.listVMs)
	h("GET /v1/vms/{id}", s.getVM)
	h("PATCH /v1/vms/{id}", s.updateVM)
	h("DELETE /v1/vms/{id}", s.deleteVM)
	h("PUT /v1/vms/{id}/firewall", s.setFirewall)
	h("PATCH /v1/vms/{id}/firewall", s.patchFirewall)
	h("POST /v1/vms/{id}/exec", s.exec)
	h("POST /v1/vms/{id}/files/presign", s.presignVMFile)
	h("POST /v1/vms/{id}/files/fetch", s.fetchFile)
	h("POST /v1/vms/{id}/console-token", s.consoleToken)
	h("GET /v1/vms/{id}/console/ws", s.console)
	h("POST /v1/snapshots", s.createSnapshot)
	h("GET /v1/snapshots", s.listSnapshots)
	h("GET /v1/snapshots/{id}", s.getSnapshot)
	h("PATCH /v1/snapshots/{id}", s.renameSnapshot)
	h("DELETE /v1/snapshots/{id}", s.deleteSnapshot)
	h("POST /v1/build-contexts/presign", s.presignBuildContext)
	h("POST /v1/builds", s.createBuild)
	h("GET /v1/builds/{id}", s.getBuild)
	h("GET /v1/org/quotas", s.getQuotas)
	if s.extensions {
		h("POST /v1/vms/{id}/pause", s.pauseVM)
		h("POST /v1/vms/{id}/resume", s.resumeVM)
		h("POST /v1/vms/{id}/ttl/refresh", s.refreshTTL)
		h("POST /v1/vms/{id}/services", s.createService)
		h("GET /v1/vms/{id}/services", s.listServices)
		h("PUT /v1/vms/{id}/services/{name}", s.putService)
		h("DELETE /v1/vms/{id}/services/{name}", s.deleteService)
	}
	h("PUT "+objectsPath+"{oid}", s.putObject)
	h("GET "+objectsPath+"{oid}", s.getObject)
	h("HEAD "+objectsPath+"{oid}", s.getObject)
	h("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s in the FastVM API", r.Method, r.URL.Path))
	})
	s.mux = mux
}

// ServeHTTP answers one API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() {
		// The path only: query strings carry signatures and console tokens.
		s.log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", rec.status).
			Dur("duration", time.Since(start)).Msg("fastvm emulator request")
	}()
	s.mu.Lock()
	closed := s.closed
	inj := s.takeInjection(r)
	s.mu.Unlock()
	switch {
	case closed:
		writeError(rec, http.StatusServiceUnavailable, "the FastVM emulator is closed")
		return
	case inj != 0:
		rec.Header().Set("retry-after-ms", "0")
		writeError(rec, inj, fmt.Sprintf("injected transient failure (HTTP %d): retry the request", inj))
		return
	case needsAPIKey(r.URL.Path) && !s.authorized(r):
		writeError(rec, http.StatusUnauthorized, "missing or invalid API key: send it in the X-API-Key header")
		return
	}
	s.mux.ServeHTTP(rec, r)
}

func (s *Server) takeInjection(r *http.Request) int {
	for _, in := range s.injected {
		if in.left > 0 && (in.method == "" || strings.EqualFold(in.method, r.Method)) && strings.HasPrefix(r.URL.Path, in.prefix) {
			in.left--
			return in.status
		}
	}
	return 0
}

// needsAPIKey: /v1 endpoints need the key, except the console WebSocket,
// whose session token is the capability (§7). Health probes and presigned
// object URLs need none (§3.1, §5).
func needsAPIKey(p string) bool {
	return strings.HasPrefix(p, "/v1/") && !strings.HasSuffix(p, "/console/ws")
}

// authorized accepts X-API-Key, and also Authorization: Bearer (§1, as the
// earliest generated spec had it).
func (s *Server) authorized(r *http.Request) bool {
	key := r.Header.Get("X-API-Key")
	if key == "" {
		if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			key = strings.TrimSpace(b)
		}
	}
	return key != "" && subtle.ConstantTimeCompare([]byte(key), s.apiKey) == 1
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	// Spec §13 #2: {"status":"ok"}, no auth.
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) probe(w http.ResponseWriter, r *http.Request) {
	// Spec §13 #2: /livez and /readyz answer 200 with an empty body.
	w.WriteHeader(http.StatusOK)
}

// statusRecorder remembers the status written, for the request log, and
// passes flushes and deadlines through (NDJSON exec needs them).
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encode the response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeError answers with the spec's error body. Spec §13 #1: exactly
// {"error": "<message>"}. 409 and 429 answers are not transient here: they
// say x-should-retry: false, or the SDKs would retry them twice (§12.1 #5).
func writeError(w http.ResponseWriter, status int, msg string) {
	if status == http.StatusConflict || (status == http.StatusTooManyRequests && w.Header().Get("retry-after-ms") == "") {
		w.Header().Set("x-should-retry", "false")
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

// decodeBody reads a JSON request body of at most limit bytes into v. An
// empty body is an empty object (the Python SDK sends Content-Type JSON on
// body-less POSTs); unknown fields are ignored (§0).
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", limit))
		} else {
			writeError(w, http.StatusBadRequest, "invalid JSON request body: "+err.Error())
		}
		return false
	}
	return true
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// timestamp formats times as the API does (INFERRED §2: RFC 3339 with
// nanoseconds, UTC).
func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
