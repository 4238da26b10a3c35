// Package fastvm is a Go client for the FastVM HTTP API (https://api.fastvm.org):
// cloud VMs that launch in seconds, run commands, move files and save snapshots.
//
// It speaks the same wire protocol as the official TypeScript and Python SDKs
// (the 21-endpoint generation with builds and the open/restricted firewall) and
// reproduces their hand-written helpers: Launch waits for a VM to run, Upload and
// Download move files and directories through presigned URLs, ExecStream
// decodes the NDJSON output stream, and Build turns a Dockerfile and a context
// directory into a snapshot.
//
// It also speaks the optional extensions of TS SDK 0.5–0.6: PauseVM and
// ResumeVM (a paused VM keeps its memory and holds no quota), TTLs
// (LaunchRequest.TTL, VMUpdate.TTL and ClearTTL, RefreshTTL), environment
// variables, ListVMsWith's status filter and services (CreateService and
// friends). A service without them answers those calls with a 404 (see
// IsNotFound).
//
// # Getting started
//
//	c, err := fastvm.NewFromEnv() // FASTVM_API_KEY, optional FASTVM_BASE_URL
//	if err != nil { ... }
//	vm, err := c.Launch(ctx, fastvm.LaunchRequest{MachineType: "c1m2"})
//	res, err := c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"uname", "-a"}})
//	fmt.Print(res.Stdout)
//
// # Behaviour shared by every call
//
// Every method takes a context; a request also ends after the client's request
// timeout (60 s by default, longer for exec and file fetches, see WithTimeout).
// Idempotent calls are retried twice on connection errors, 408, 409, 429 and
// 5xx with exponential backoff from 0.5 s (capped at 8 s, up to 25 % jitter),
// honouring the server's x-should-retry, retry-after-ms and retry-after
// headers. Calls that create something or run something (launch, exec, file
// presign and fetch, snapshot, build and service creation, build-context
// presign) are never retried, so a retry can never launch a second VM or run a command
// twice. A non-2xx answer is an *APIError.
//
// The API key is sent only as the X-API-Key header of API requests: never to
// presigned storage URLs, never across a redirect to another host, and it is
// redacted from errors and from the Client's fmt output.
package fastvm
