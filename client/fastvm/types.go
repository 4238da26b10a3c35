package fastvm

import "fmt"

// VM statuses. The server may add values: treat any other as "in transition".
const (
	StatusProvisioning = "provisioning"
	StatusRunning      = "running"
	StatusStopped      = "stopped" // terminal failure for a launch
	StatusDeleting     = "deleting"
	StatusError        = "error" // terminal failure
)

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
}

// VMUpdate is the body of PATCH /v1/vms/{id}; at least one field must be set.
// An empty Name keeps the name; nil Metadata keeps it, an empty non-nil map
// clears it (omitzero sends {} but omits nil), any other map replaces it whole.
type VMUpdate struct {
	Name     string            `json:"name,omitempty"`
	Metadata map[string]string `json:"metadata,omitzero"`
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
