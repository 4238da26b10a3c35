package fastvm

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// VM statuses. The server may add values: treat any other as "in transition".
const (
	StatusProvisioning = "provisioning"
	StatusRunning      = "running"
	StatusStopped      = "stopped" // terminal failure for a launch
	StatusDeleting     = "deleting"
	StatusError        = "error" // terminal failure
	// Pausing, paused and resuming come with pause and resume (TS SDK 0.5+).
	StatusPausing  = "pausing"
	StatusPaused   = "paused" // memory kept, no quota held: ResumeVM
	StatusResuming = "resuming"
)

// TTL actions: what a VM's TTL does when it runs out.
const (
	TTLPause  = "pause"  // pause the VM; the cycle starts again on resume
	TTLDelete = "delete" // delete the VM
)

// MaxTTLSeconds is the longest TTL cycle the API accepts: a year.
const MaxTTLSeconds = 31536000

// Snapshot statuses. The server may add values: treat any other as "not yet".
const (
	SnapshotCreating = "creating"
	SnapshotReady    = "ready"
	SnapshotError    = "error"
)

// Build statuses. The server may add values: treat any other as "in progress".
const (
	BuildPending   = "pending"
	BuildRunning   = "running"
	BuildCompleted = "completed"
	BuildFailed    = "failed"
)

// Firewall modes.
const (
	FirewallOpen       = "open"       // all inbound traffic allowed
	FirewallRestricted = "restricted" // inbound denied except the ingress rules
)

// VM is a virtual machine. Unknown fields sent by newer servers are ignored.
type VM struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	OrgID       string            `json:"orgId"`
	Status      string            `json:"status"`
	CPU         int               `json:"cpu"`
	MemoryMiB   int               `json:"memoryMiB"`
	DiskGiB     int               `json:"diskGiB"`
	CreatedAt   string            `json:"createdAt"`           // ISO 8601 (RFC 3339)
	DeletedAt   *string           `json:"deletedAt,omitempty"` // null until deleted
	MachineName string            `json:"machineName,omitempty"`
	SourceName  string            `json:"sourceName,omitempty"` // snapshot or image it started from
	PublicIPv6  string            `json:"publicIpv6,omitempty"`
	Firewall    *FirewallPolicy   `json:"firewall,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	// PortMappings maps service names to guest TCP ports (in the reference
	// schema only; no server is known to send it).
	PortMappings map[string]int `json:"portMappings,omitempty"`

	// The fields below come with TS SDK 0.5–0.6 servers; older ones leave
	// them empty.

	// EffectiveFirewall is Firewall plus an auto-rule per service (read only).
	EffectiveFirewall *FirewallPolicy   `json:"effectiveFirewall,omitempty"`
	EnvVars           map[string]string `json:"envVars,omitempty"`
	TTL               *TTL              `json:"ttl,omitempty"`
	// ExpiresAtMs is when the TTL fires (Unix milliseconds), while running.
	ExpiresAtMs *int64 `json:"expiresAtMs,omitempty"`
	// TTLRemainingMs is what is left of the TTL's cycle, while paused (the
	// countdown stops).
	TTLRemainingMs *int64  `json:"ttlRemainingMs,omitempty"`
	PausedAt       *string `json:"pausedAt,omitempty"` // while paused, ISO 8601
	// SnapshotRestoreWarnings is set in Launch's answer only, when a restore
	// could not register the snapshot's services again: the VM runs, with
	// none of them.
	SnapshotRestoreWarnings *SnapshotRestoreWarnings `json:"snapshotRestoreWarnings,omitempty"`
}

// TTL is a VM's auto-action timer: after Seconds of running (the countdown
// stops while paused) the VM is paused or deleted. RefreshTTL restarts it.
type TTL struct {
	Action  string `json:"action"`  // TTLPause or TTLDelete
	Seconds int64  `json:"seconds"` // 1 to MaxTTLSeconds
}

// Service is an HTTPS reverse-proxy registration of a VM's TCP port,
// published at ServiceURL(name, vm id, the stack's proxy domain).
type Service struct {
	Name string `json:"name"` // 1–29 characters; part of the public host name
	Port int    `json:"port"` // ≥ 1024
	// H2C makes the proxy speak HTTP/2 cleartext to the port (gRPC);
	// otherwise HTTP/1.1 (SSE and WebSocket pass through).
	H2C bool `json:"h2c,omitempty"`
	// URL is the public URL, when the server sends it (the emulator does;
	// the API's Service has no such field).
	URL string `json:"url,omitempty"`
}

// ServiceURL is the public URL of a VM's service:
// https://<name>--<vm id without hyphens>.<proxyDomain>, where proxyDomain
// is the stack's, e.g. "proxy.fastvm.org".
func ServiceURL(name, vmID, proxyDomain string) string {
	return "https://" + name + "--" + strings.ReplaceAll(vmID, "-", "") + "." + strings.Trim(proxyDomain, ".")
}

// SnapshotRestoreWarnings reports that a restore registered none of the
// snapshot's services (all or none): register them again one by one.
type SnapshotRestoreWarnings struct {
	ServicesRegistrationFailed bool      `json:"servicesRegistrationFailed"`
	Reason                     string    `json:"reason,omitempty"`
	UnregisteredServices       []Service `json:"unregisteredServices,omitempty"`
}

// ListOptions filter ListVMsWith.
type ListOptions struct {
	// Metadata keeps the VMs whose metadata has every key and value.
	Metadata map[string]string
	// Status keeps the VMs in this status (e.g. StatusPaused); an unknown
	// status lists nothing. Servers before TS SDK 0.5 ignore it.
	Status string
}

// FirewallPolicy filters inbound traffic to the VM's public IPv6 address.
type FirewallPolicy struct {
	Mode    string         `json:"mode"` // FirewallOpen or FirewallRestricted
	Ingress []FirewallRule `json:"ingress,omitempty"`
}

// FirewallRule allows inbound traffic on a port range.
type FirewallRule struct {
	Protocol  string `json:"protocol"`          // "tcp" or "udp"
	PortStart int    `json:"portStart"`         // inclusive
	PortEnd   int    `json:"portEnd,omitempty"` // inclusive; 0 for a single port
	// SourceCIDRs are IPv6 CIDRs (IPv4 is rejected); empty allows any source.
	SourceCIDRs []string `json:"sourceCidrs,omitempty"`
	Description string   `json:"description,omitempty"`
}

// FirewallPatch changes part of a firewall policy: an empty Mode keeps the
// mode; nil Ingress keeps the rules, an empty non-nil slice clears them
// (omitzero sends [] but omits nil).
type FirewallPatch struct {
	Mode    string         `json:"mode,omitempty"`
	Ingress []FirewallRule `json:"ingress,omitzero"`
}

// LaunchRequest is the body of POST /v1/vms. MachineType is required unless
// SnapshotID is set (a restore inherits the snapshot's type).
type LaunchRequest struct {
	MachineType string            `json:"machineType,omitempty"` // e.g. "c1m2": 1 vCPU, 2 GiB
	SnapshotID  string            `json:"snapshotId,omitempty"`
	Name        string            `json:"name,omitempty"`
	DiskGiB     int               `json:"diskGiB,omitempty"` // grow-only: ≥ 10 or the snapshot's disk
	Firewall    *FirewallPolicy   `json:"firewall,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	// EnvVars are in the environment of the VM's commands. Keys are shell
	// variable names; values have no newline, carriage return or NUL.
	EnvVars map[string]string `json:"envVars,omitempty"`
	TTL     *TTL              `json:"ttl,omitempty"`
}

// VMUpdate is the body of PATCH /v1/vms/{id}; at least one field must be set.
// An empty Name keeps the name. For Metadata and EnvVars, nil keeps the map,
// an empty non-nil one clears it (omitzero sends {} but omits nil), any
// other replaces it whole. TTL sets the timer and restarts its countdown;
// ClearTTL removes it (sends "ttl": null); neither leaves it unchanged.
type VMUpdate struct {
	Name     string            `json:"name,omitempty"`
	Metadata map[string]string `json:"metadata,omitzero"`
	EnvVars  map[string]string `json:"envVars,omitzero"`
	TTL      *TTL              `json:"-"`
	ClearTTL bool              `json:"-"`
}

// MarshalJSON sends ttl as the object, as null (ClearTTL) or not at all.
func (u VMUpdate) MarshalJSON() ([]byte, error) {
	type fields VMUpdate // without this method
	var ttl json.RawMessage
	switch {
	case u.ClearTTL && u.TTL != nil:
		return nil, errors.New("fastvm: VMUpdate sets both TTL and ClearTTL: set one")
	case u.ClearTTL:
		ttl = json.RawMessage("null")
	case u.TTL != nil:
		var err error
		if ttl, err = json.Marshal(u.TTL); err != nil {
			return nil, err
		}
	}
	return json.Marshal(struct {
		fields
		TTL json.RawMessage `json:"ttl,omitempty"`
	}{fields(u), ttl})
}

// DeleteResponse confirms a deletion.
type DeleteResponse struct {
	ID      string `json:"id"`
	Deleted bool   `json:"deleted"`
}

// ConsoleToken grants one WebSocket connection to a VM's serial console. The
// token is a credential: it is redacted from fmt output.
type ConsoleToken struct {
	Token         string `json:"token"`
	ExpiresInSec  int    `json:"expiresInSec"`
	WebsocketPath string `json:"websocketPath"`
}

// String describes the token without revealing it.
func (t ConsoleToken) String() string {
	return fmt.Sprintf("ConsoleToken{websocketPath: %q, expiresInSec: %d, token: redacted}", t.WebsocketPath, t.ExpiresInSec)
}

// GoString is String, so that %#v does not reveal the token either.
func (t ConsoleToken) GoString() string { return t.String() }

// PresignedURLs are signed storage URLs for one staging object. Either side
// (client or VM) may PUT to UploadURL or GET from DownloadURL, without the API
// key. They are credentials until they expire.
type PresignedURLs struct {
	UploadURL      string `json:"uploadUrl"`   // PUT, Content-Type application/octet-stream
	DownloadURL    string `json:"downloadUrl"` // GET
	ExpiresInSec   int    `json:"expiresInSec"`
	MaxUploadBytes int64  `json:"maxUploadBytes"` // the VM's disk size
}

// String describes the URLs without revealing their signatures.
func (p PresignedURLs) String() string {
	return fmt.Sprintf("PresignedURLs{uploadUrl: %s, downloadUrl: %s, expiresInSec: %d, maxUploadBytes: %d}",
		redactURL(p.UploadURL), redactURL(p.DownloadURL), p.ExpiresInSec, p.MaxUploadBytes)
}

// GoString is String, so that %#v does not reveal the signatures either.
func (p PresignedURLs) GoString() string { return p.String() }

// FetchRequest is the body of POST /v1/vms/{id}/files/fetch.
type FetchRequest struct {
	URL        string `json:"url"`                  // a DownloadURL from PresignFile
	Path       string `json:"path"`                 // absolute path in the VM
	TimeoutSec int    `json:"timeoutSec,omitempty"` // 0 = the server's default
}

// Snapshot is a saved VM disk that new VMs can launch from.
type Snapshot struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	OrgID     string            `json:"orgId"`
	VMID      string            `json:"vmId"`
	Status    string            `json:"status"` // SnapshotCreating, SnapshotReady, SnapshotError
	CreatedAt string            `json:"createdAt"`
	Firewall  *FirewallPolicy   `json:"firewall,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	// EnvVars and Services are the VM's when it was taken (TS SDK 0.5+); a
	// restore gets them.
	EnvVars  map[string]string `json:"envVars,omitempty"`
	Services []Service         `json:"services,omitempty"`
}

// BuildRequest is the body of POST /v1/builds; ImageRef or DockerfileContent
// is required.
type BuildRequest struct {
	Name              string `json:"name,omitempty"`     // of the snapshot; default the build id
	ImageRef          string `json:"imageRef,omitempty"` // e.g. "python:3.13-slim"; also the fallback FROM
	DockerfileContent string `json:"dockerfileContent,omitempty"`
	MachineType       string `json:"machineType,omitempty"`
	DiskGiB           int    `json:"diskGiB,omitempty"` // default 10
	// ContextDownloadURL is a DownloadURL from PresignBuildContext whose
	// object is a tar.gz of the build context. Build sets it.
	ContextDownloadURL string `json:"contextDownloadUrl,omitempty"`
}

// Build is the state of a build.
type Build struct {
	ID         string `json:"id"`
	Name       string `json:"name,omitempty"`
	Status     string `json:"status"` // BuildPending, BuildRunning, BuildCompleted, BuildFailed
	ImageRef   string `json:"imageRef"`
	Progress   string `json:"progress,omitempty"`   // phase while running
	SnapshotID string `json:"snapshotId,omitempty"` // when completed
	Error      string `json:"error,omitempty"`      // when failed
	CreatedAt  string `json:"createdAt"`
	// BaseUsed and Warnings are sent by vmcp's emulator only (extension
	// fields; the service sends neither): the base image the build really
	// ran on, and what it did not do as the Dockerfile asked.
	BaseUsed string   `json:"emulatorBase,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// QuotaValues are amounts of an organisation's resources.
type QuotaValues struct {
	VCPU          int `json:"vcpu"`
	MemoryMiB     int `json:"memoryMiB"`
	DiskGiB       int `json:"diskGiB"`
	SnapshotCount int `json:"snapshotCount"`
}

// Quotas are an organisation's limits and current usage.
type Quotas struct {
	OrgID  string      `json:"orgId"`
	Limits QuotaValues `json:"limits"`
	Usage  QuotaValues `json:"usage"`
}

// Health is the answer of GET /healthz.
type Health struct {
	Status string `json:"status,omitempty"`
}
