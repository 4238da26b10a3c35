//go:build linux

package fastvm

// Raw-protocol tests of the optional extensions of shared/specs/fastvm-api.md
// §9 (TS SDK 0.5–0.6): pause, resume, TTLs, envVars, the status filter and
// services, endpoint by endpoint, with plain net/http and hand-written JSON.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

// counterScript starts a Python process in the background that counts in
// its memory and writes each number to /root/counter.
const counterScript = `nohup python3 -c 'import os, time
n = 0  # vmcp-test-counter
while True:
    n += 1
    open("/root/counter.tmp", "w").write(str(n))
    os.replace("/root/counter.tmp", "/root/counter")
    time.sleep(0.02)
' >/dev/null 2>&1 &
while [ ! -s /root/counter ]; do sleep 0.01; done`

// machine is the engine machine of a VM.
func (e *env) machine(vm string) *local.Machine {
	e.t.Helper()
	e.s.mu.Lock()
	id := e.s.store.vms[vm].MachineID
	e.s.mu.Unlock()
	m, err := e.engine.Machine(id)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// counterPID finds the host pid of the VM's counter process.
func (e *env) counterPID(vm string) int {
	e.t.Helper()
	for _, pid := range e.machine(vm).HostPIDs() {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if strings.HasPrefix(string(b), "python3\x00") && strings.Contains(string(b), "vmcp-test-counter") {
			return pid
		}
	}
	e.t.Fatal("the counter process is not running")
	return 0
}

// counter reads /root/counter through the engine, not by exec (which a
// paused VM refuses).
func (e *env) counter(vm string) int {
	e.t.Helper()
	var b strings.Builder
	if _, err := e.machine(vm).ReadFile(context.Background(), "/root/counter", &b); err != nil {
		e.t.Fatal(err)
	}
	n, err := strconv.Atoi(b.String())
	if err != nil {
		e.t.Fatalf("counter %q", b.String())
	}
	return n
}

// procStateOf is a host process's state letter from /proc (0 if gone).
func procStateOf(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
	return f[0][0]
}

// conflict checks a 409 with x-should-retry: false and the error body.
func (e *env) conflict(method, path, body string) string {
	e.t.Helper()
	status, h, b := e.do(method, path, body)
	if status != http.StatusConflict || h.Get("x-should-retry") != "false" {
		e.t.Fatalf("%s %s: %d (x-should-retry %q) %s, want a non-retryable 409", method, path, status, h.Get("x-should-retry"), b)
	}
	return errorOf(e.t, b)
}

// status expects an error status with the error body.
func (e *env) status(method, path, body string, want int) string {
	e.t.Helper()
	status, _, b := e.do(method, path, body)
	if status != want {
		e.t.Fatalf("%s %s %.80s: %d %s, want %d", method, path, body, status, b, want)
	}
	return errorOf(e.t, b)
}

func TestExtPauseKeepsMemoryAndResumeContinues(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	e.sh(vm, counterScript)
	pid := e.counterPID(vm)

	p := e.call("POST", "/v1/vms/"+vm+"/pause", "", http.StatusOK)
	if p["status"] != "paused" || p["pausedAt"] == nil {
		t.Fatalf("pause: %v", p)
	}
	if _, err := time.Parse(time.RFC3339Nano, p["pausedAt"].(string)); err != nil {
		t.Fatalf("pausedAt: %v", err)
	}
	// The process is there, stopped by the host; the counter stands still.
	if st := procStateOf(pid); st != 'T' {
		t.Fatalf("the counter process is in state %c while paused, want T", st)
	}
	before := e.counter(vm)
	time.Sleep(300 * time.Millisecond)
	if after := e.counter(vm); after != before {
		t.Fatalf("the counter went on while paused: %d, then %d", before, after)
	}
	if got := e.call("GET", "/v1/vms/"+vm, "", http.StatusOK); got["status"] != "paused" || got["pausedAt"] != p["pausedAt"] {
		t.Fatalf("GET while paused: %v", got)
	}
	// Idempotent: the same answer again (with Content-Type JSON and an
	// empty body, as the Python SDK sends).
	if again := e.call("POST", "/v1/vms/"+vm+"/pause", `{}`, http.StatusOK); again["pausedAt"] != p["pausedAt"] || again["status"] != "paused" {
		t.Fatalf("second pause: %v", again)
	}
	// Everything that runs in the VM is a non-retryable 409.
	down := e.call("POST", "/v1/vms/"+vm+"/files/presign", `{"path":"/root/x"}`, http.StatusOK)["downloadUrl"].(string)
	for _, req := range [][2]string{
		{"/v1/vms/" + vm + "/exec", `{"command":["true"]}`},
		{"/v1/vms/" + vm + "/files/fetch", `{"url":"` + down + `","path":"/root/x"}`},
		{"/v1/vms/" + vm + "/console-token", ``},
	} {
		if msg := e.conflict("POST", req[0], req[1]); !strings.Contains(msg, "resume") {
			t.Errorf("409 of %s does not say to resume: %q", req[0], msg)
		}
	}

	r := e.call("POST", "/v1/vms/"+vm+"/resume", "", http.StatusOK)
	if r["status"] != "running" || r["pausedAt"] != nil {
		t.Fatalf("resume: %v", r)
	}
	// The same process counts on from where it stood: its memory was kept.
	if got := e.counterPID(vm); got != pid {
		t.Fatalf("the counter is process %d after resume, was %d", got, pid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.counter(vm) <= before {
		if time.Now().After(deadline) {
			t.Fatal("the counter did not go on after resume")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, _ := strconv.Atoi(e.sh(vm, "cat /root/counter")); n < before {
		t.Fatalf("counter %d after resume, %d before: it restarted", n, before)
	}
	// Idempotent on a running VM.
	if again := e.call("POST", "/v1/vms/"+vm+"/resume", "", http.StatusOK); again["status"] != "running" {
		t.Fatalf("second resume: %v", again)
	}
	// Unknown VMs are 404 on every new endpoint.
	for _, p := range []string{"pause", "resume", "ttl/refresh", "services"} {
		e.status("POST", "/v1/vms/nope/"+p, `{"name":"a","port":2000}`, http.StatusNotFound)
	}
}

func TestExtPauseResumeRefusedInOtherStates(t *testing.T) {
	e := newEnv(t, Options{ProvisioningDelay: 300 * time.Millisecond})
	vm := e.call("POST", "/v1/vms", `{"machineType":"c1m2"}`, http.StatusAccepted)["id"].(string)
	e.conflict("POST", "/v1/vms/"+vm+"/pause", "")
	e.conflict("POST", "/v1/vms/"+vm+"/resume", "")
	e.waitStatus("/v1/vms/"+vm, "running", "error")
	// A queued resume answers 202 resuming, then runs.
	e.call("POST", "/v1/vms/"+vm+"/pause", "", http.StatusOK)
	r := e.call("POST", "/v1/vms/"+vm+"/resume", "", http.StatusAccepted)
	if r["status"] != "resuming" {
		t.Fatalf("queued resume: %v", r)
	}
	e.conflict("POST", "/v1/vms/"+vm+"/exec", `{"command":["true"]}`)
	e.conflict("POST", "/v1/vms/"+vm+"/pause", "")
	if again := e.call("POST", "/v1/vms/"+vm+"/resume", "", http.StatusAccepted); again["status"] != "resuming" {
		t.Fatalf("resume while resuming: %v", again)
	}
	e.waitStatus("/v1/vms/"+vm, "running", "error")
	e.sh(vm, "true")
	// A deleting VM cannot be paused.
	e.call("DELETE", "/v1/vms/"+vm, "", http.StatusOK)
	if status, _, b := e.do("POST", "/v1/vms/"+vm+"/pause", ""); status != http.StatusConflict && status != http.StatusNotFound {
		t.Fatalf("pause while deleting: %d %s", status, b)
	}
}

func TestExtQuotaFreedWhilePaused(t *testing.T) {
	e := newEnv(t, Options{Quotas: Quotas{VMs: 1}})
	a := e.launch(`{"machineType":"c2m4"}`)
	if status, h, _ := e.do("POST", "/v1/vms", `{"machineType":"c1m2"}`); status != http.StatusTooManyRequests || h.Get("x-should-retry") != "false" {
		t.Fatalf("second VM: %d", status)
	}
	e.call("POST", "/v1/vms/"+a+"/pause", "", http.StatusOK)
	q := e.call("GET", "/v1/org/quotas", "", http.StatusOK)
	if u := q["usage"].(map[string]any); u["vcpu"] != 0.0 || u["memoryMiB"] != 0.0 || u["diskGiB"] != 0.0 {
		t.Fatalf("usage while the only VM is paused: %v", u)
	}
	b := e.launch(`{"machineType":"c1m2"}`)
	// Resuming takes the quota back: not while b holds it.
	status, h, body := e.do("POST", "/v1/vms/"+a+"/resume", "")
	if status != http.StatusTooManyRequests || h.Get("x-should-retry") != "false" {
		t.Fatalf("resume over quota: %d %s", status, body)
	}
	errorOf(t, body)
	if got := e.call("GET", "/v1/vms/"+a, "", http.StatusOK); got["status"] != "paused" {
		t.Fatalf("after a refused resume: %v", got)
	}
	e.call("DELETE", "/v1/vms/"+b, "", http.StatusOK)
	e.waitGone(b)
	e.call("POST", "/v1/vms/"+a+"/resume", "", http.StatusOK)
	q = e.call("GET", "/v1/org/quotas", "", http.StatusOK)
	if u := q["usage"].(map[string]any); u["vcpu"] != 2.0 {
		t.Fatalf("usage after resume: %v", u)
	}
}

func TestExtEnvVars(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.call("POST", "/v1/vms", `{"machineType":"c1m2","envVars":{"GREETING":"hello world","_X1":"a=b; $(not run)"}}`, http.StatusCreated)
	id := vm["id"].(string)
	if env := vm["envVars"].(map[string]any); env["GREETING"] != "hello world" || len(env) != 2 {
		t.Fatalf("envVars: %v", vm["envVars"])
	}
	if out := e.sh(id, `printf '%s|%s' "$GREETING" "$_X1"`); out != "hello world|a=b; $(not run)" {
		t.Fatalf("the VM's environment: %q", out)
	}
	// Through a plain argv too (no shell of ours in between).
	if res := e.execJSON(id, "printenv", "GREETING"); res.Stdout != "hello world\n" {
		t.Fatalf("printenv: %+v", res)
	}
	// Invalid keys and values, and too much of them, are 400s.
	big := `{"A":"` + strings.Repeat("v", 65536) + `"}`
	for _, env := range []string{`{"1X":"v"}`, `{"":"v"}`, `{"A-B":"v"}`, `{"A B":"v"}`, `{"` + strings.Repeat("K", 257) + `":"v"}`,
		`{"A":"line\nbreak"}`, `{"A":"cr\r"}`, `{"A":"nul\u0000"}`, big, `["A"]`, `{"A":1}`} {
		e.status("POST", "/v1/vms", `{"machineType":"c1m2","envVars":`+env+`}`, http.StatusBadRequest)
		e.status("PATCH", "/v1/vms/"+id, `{"envVars":`+env+`}`, http.StatusBadRequest)
	}
	e.call("POST", "/v1/vms", `{"machineType":"c1m2","envVars":{"`+strings.Repeat("K", 256)+`":"v"}}`, http.StatusCreated)
	// PATCH replaces the map; {} clears it; null leaves it.
	p := e.call("PATCH", "/v1/vms/"+id, `{"envVars":{"GREETING":"bye"}}`, http.StatusOK)
	if env := p["envVars"].(map[string]any); len(env) != 1 || env["GREETING"] != "bye" {
		t.Fatalf("patched envVars: %v", p)
	}
	if out := e.sh(id, `printf '%s|%s' "$GREETING" "${_X1-unset}"`); out != "bye|unset" {
		t.Fatalf("after PATCH: %q", out)
	}
	p = e.call("PATCH", "/v1/vms/"+id, `{"name":"n","envVars":null}`, http.StatusOK)
	if p["envVars"] == nil {
		t.Fatalf("envVars: null changed them: %v", p)
	}
	// A snapshot carries them; a restore inherits them unless it gives its own.
	sn := e.call("POST", "/v1/snapshots", `{"vmId":"`+id+`"}`, http.StatusCreated)
	if env, _ := sn["envVars"].(map[string]any); env["GREETING"] != "bye" {
		t.Fatalf("snapshot envVars: %v", sn)
	}
	e.waitStatus("/v1/snapshots/"+sn["id"].(string), "ready")
	restored := e.launch(`{"snapshotId":"` + sn["id"].(string) + `"}`)
	if out := e.sh(restored, `echo "$GREETING"`); out != "bye\n" {
		t.Fatalf("restored VM's environment: %q", out)
	}
	own := e.launch(`{"snapshotId":"` + sn["id"].(string) + `","envVars":{"OWN":"1"}}`)
	if out := e.sh(own, `echo "${GREETING-unset} $OWN"`); out != "unset 1\n" {
		t.Fatalf("restore with its own envVars: %q", out)
	}
	e.call("PATCH", "/v1/vms/"+id, `{"envVars":{}}`, http.StatusOK)
	if got := e.call("GET", "/v1/vms/"+id, "", http.StatusOK); got["envVars"] != nil {
		t.Fatalf("envVars {} did not clear them: %v", got)
	}
}

// near checks that ms is within tolerance of want.
func near(t *testing.T, what string, got any, want, tolerance int64) {
	t.Helper()
	f, ok := got.(float64)
	if !ok || int64(f) < want-tolerance || int64(f) > want+tolerance {
		t.Fatalf("%s = %v, want %d ± %d", what, got, want, tolerance)
	}
}

func TestExtTTLFieldsAndRefresh(t *testing.T) {
	e := newEnv(t, Options{})
	// Validation: action pause or delete, seconds 1..31536000, whole.
	for _, ttl := range []string{`{"action":"pause","seconds":0}`, `{"action":"pause","seconds":-1}`, `{"action":"pause","seconds":31536001}`,
		`{"action":"pause","seconds":1.5}`, `{"action":"pause","seconds":"10"}`, `{"action":"stop","seconds":10}`, `{"seconds":10}`,
		`{"action":"pause"}`, `[]`, `10`} {
		e.status("POST", "/v1/vms", `{"machineType":"c1m2","ttl":`+ttl+`}`, http.StatusBadRequest)
	}
	e.call("POST", "/v1/vms", `{"machineType":"c1m2","ttl":{"action":"delete","seconds":31536000}}`, http.StatusCreated)

	start := time.Now().UnixMilli()
	vm := e.call("POST", "/v1/vms", `{"machineType":"c1m2","ttl":{"action":"pause","seconds":60}}`, http.StatusCreated)
	id := vm["id"].(string)
	if ttl := vm["ttl"].(map[string]any); ttl["action"] != "pause" || ttl["seconds"] != 60.0 || vm["ttlRemainingMs"] != nil {
		t.Fatalf("launched with a TTL: %v", vm)
	}
	near(t, "expiresAtMs", vm["expiresAtMs"], start+60000, 5000)
	// Paused: the countdown stops; only ttlRemainingMs.
	p := e.call("POST", "/v1/vms/"+id+"/pause", "", http.StatusOK)
	if p["expiresAtMs"] != nil {
		t.Fatalf("expiresAtMs while paused: %v", p)
	}
	near(t, "ttlRemainingMs", p["ttlRemainingMs"], 58000, 2500)
	time.Sleep(200 * time.Millisecond)
	if got := e.call("GET", "/v1/vms/"+id, "", http.StatusOK); got["ttlRemainingMs"] != p["ttlRemainingMs"] {
		t.Fatalf("the countdown went on while paused: %v, then %v", p["ttlRemainingMs"], got["ttlRemainingMs"])
	}
	// Refresh while paused: a full budget.
	if r := e.call("POST", "/v1/vms/"+id+"/ttl/refresh", "", http.StatusOK); r["ttlRemainingMs"] != 60000.0 || r["status"] != "paused" {
		t.Fatalf("refresh while paused: %v", r)
	}
	// Resumed: it counts down from the budget again.
	r := e.call("POST", "/v1/vms/"+id+"/resume", "", http.StatusOK)
	near(t, "expiresAtMs after resume", r["expiresAtMs"], time.Now().UnixMilli()+60000, 3000)
	if r["ttlRemainingMs"] != nil {
		t.Fatalf("ttlRemainingMs while running: %v", r)
	}
	// PATCH sets a new cycle and restarts it; refresh while running.
	p = e.call("PATCH", "/v1/vms/"+id, `{"ttl":{"action":"delete","seconds":120}}`, http.StatusOK)
	near(t, "expiresAtMs after PATCH", p["expiresAtMs"], time.Now().UnixMilli()+120000, 3000)
	time.Sleep(1100 * time.Millisecond)
	r = e.call("POST", "/v1/vms/"+id+"/ttl/refresh", "", http.StatusOK)
	if r["expiresAtMs"].(float64) <= p["expiresAtMs"].(float64) {
		t.Fatalf("refresh did not move the deadline: %v, then %v", p["expiresAtMs"], r["expiresAtMs"])
	}
	// null removes the TTL; refresh is then a 409.
	p = e.call("PATCH", "/v1/vms/"+id, `{"ttl":null}`, http.StatusOK)
	if _, has := p["ttl"]; has || p["expiresAtMs"] != nil {
		t.Fatalf("after ttl null: %v", p)
	}
	e.conflict("POST", "/v1/vms/"+id+"/ttl/refresh", "")
	e.status("PATCH", "/v1/vms/"+id, `{"ttl":{"action":"pause","seconds":31536001}}`, http.StatusBadRequest)
}

func TestExtTTLExpiryActs(t *testing.T) {
	e := newEnv(t, Options{})
	// Action pause: the VM is paused with its processes, re-armed.
	paused := e.launch(`{"machineType":"c1m2","ttl":{"action":"pause","seconds":1}}`)
	e.sh(paused, counterScript)
	pid := e.counterPID(paused)
	// Action delete: the VM goes.
	deleted := e.launch(`{"machineType":"c1m2","ttl":{"action":"delete","seconds":1}}`)
	got := e.waitStatus("/v1/vms/"+paused, "paused", "error", "deleting")
	if got["ttlRemainingMs"] != 1000.0 || got["expiresAtMs"] != nil {
		t.Fatalf("paused by its TTL: %v, want the cycle re-armed (ttlRemainingMs 1000)", got)
	}
	if st := procStateOf(pid); st != 'T' {
		t.Fatalf("the counter is in state %c after the TTL paused the VM", st)
	}
	e.waitGone(deleted)
	// Resumed, it counts down again and pauses again.
	e.call("POST", "/v1/vms/"+paused+"/resume", "", http.StatusOK)
	e.waitStatus("/v1/vms/"+paused, "paused", "error", "deleting")
	if procStateOf(pid) != 'T' {
		t.Fatal("the counter is not stopped after the second TTL pause")
	}
}

func TestExtStatusFilter(t *testing.T) {
	e := newEnv(t, Options{})
	a := e.launch(`{"machineType":"c1m2","metadata":{"role":"x"}}`)
	b := e.launch(`{"machineType":"c1m2","metadata":{"role":"x"}}`)
	c := e.launch(`{"machineType":"c1m2","metadata":{"role":"y"}}`)
	e.call("POST", "/v1/vms/"+a+"/pause", "", http.StatusOK)
	list := func(query string) []string {
		t.Helper()
		status, _, body := e.do("GET", "/v1/vms"+query, "")
		var out []map[string]any
		if status != http.StatusOK || json.Unmarshal(body, &out) != nil {
			t.Fatalf("list %s: %d %s", query, status, body)
		}
		ids := []string{}
		for _, v := range out {
			ids = append(ids, v["id"].(string))
		}
		return ids
	}
	for query, want := range map[string][]string{
		"?status=paused":                   {a},
		"?status=running":                  {b, c},
		"?status=running&metadata.role=x":  {b},
		"?status=paused&metadata.role=y":   {},
		"?status=no-such-status":           {},
		"?status=":                         {a, b, c},
		"?status=paused&metadata.role=x":   {a},
		"?metadata.role=x":                 {a, b},
		"?status=deleting&metadata.role=x": {},
	} {
		if got := list(query); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("GET /v1/vms%s = %v, want %v", query, got, want)
		}
	}
	// The raw answer for an unknown status is a bare empty array.
	if _, _, body := e.do("GET", "/v1/vms?status=bogus", ""); strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("unknown status: %s", body)
	}
}

func TestExtServices(t *testing.T) {
	e := newEnv(t, Options{ProxyDomain: "proxy.example.test"})
	vm := e.launch(`{"machineType":"c1m2","firewall":{"mode":"restricted","ingress":[{"protocol":"udp","portStart":5000}]}}`)
	base := "/v1/vms/" + vm + "/services"
	// Validation: 400s.
	for _, body := range []string{`{}`, `{"name":"web"}`, `{"port":8080}`, `{"name":"","port":8080}`, `{"name":"Web","port":8080}`,
		`{"name":"-a","port":8080}`, `{"name":"a-","port":8080}`, `{"name":"a--b","port":8080}`, `{"name":"a.b","port":8080}`,
		`{"name":"` + strings.Repeat("a", 30) + `","port":8080}`, `{"name":"web","port":80}`, `{"name":"web","port":1023}`,
		`{"name":"web","port":65536}`, `{"name":"web","port":"8080"}`, `{"name":"web","port":8080.5}`, `{"name":"web","port":8080,"h2c":"yes"}`} {
		e.status("POST", base, body, http.StatusBadRequest)
	}
	// 201 with the Service, and again for the same (port, h2c).
	sv := e.call("POST", base, `{"name":"web","port":8080}`, http.StatusCreated)
	wantURL := "https://web--" + strings.ReplaceAll(vm, "-", "") + ".proxy.example.test"
	if sv["name"] != "web" || sv["port"] != 8080.0 || sv["h2c"] != false || sv["url"] != wantURL {
		t.Fatalf("service: %v", sv)
	}
	e.call("POST", base, `{"name":"web","port":8080,"h2c":false}`, http.StatusCreated)
	e.call("POST", base, `{"name":"`+strings.Repeat("z", 29)+`","port":1024,"h2c":true}`, http.StatusCreated)
	// A different port or h2c under that name is a conflict.
	e.conflict("POST", base, `{"name":"web","port":8081}`)
	e.conflict("POST", base, `{"name":"web","port":8080,"h2c":true}`)
	// PUT registers or updates: 200; an omitted h2c keeps the old one.
	if got := e.call("PUT", base+"/web", `{"port":8081}`, http.StatusOK); got["port"] != 8081.0 || got["h2c"] != false {
		t.Fatalf("PUT web: %v", got)
	}
	if got := e.call("PUT", base+"/grpc", `{"port":9000,"h2c":true}`, http.StatusOK); got["h2c"] != true {
		t.Fatalf("PUT grpc: %v", got)
	}
	if got := e.call("PUT", base+"/grpc", `{"port":9001}`, http.StatusOK); got["h2c"] != true || got["port"] != 9001.0 {
		t.Fatalf("PUT grpc without h2c: %v", got)
	}
	e.status("PUT", base+"/grpc", `{}`, http.StatusBadRequest)
	e.status("PUT", base+"/Bad", `{"port":9000}`, http.StatusBadRequest)
	e.status("PUT", base+"/grpc", `{"port":22}`, http.StatusBadRequest)
	// GET lists them sorted by name.
	status, _, body := e.do("GET", base, "")
	var list []map[string]any
	if status != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list) != 3 ||
		list[0]["name"] != "grpc" || list[1]["name"] != "web" || list[2]["name"] != strings.Repeat("z", 29) {
		t.Fatalf("list: %d %s", status, body)
	}
	// The effective firewall has an auto-rule per service; the policy does not.
	got := e.call("GET", "/v1/vms/"+vm, "", http.StatusOK)
	if fw := got["firewall"].(map[string]any); len(fw["ingress"].([]any)) != 1 {
		t.Fatalf("firewall changed: %v", fw)
	}
	eff := got["effectiveFirewall"].(map[string]any)
	rules := eff["ingress"].([]any)
	if eff["mode"] != "restricted" || len(rules) != 4 {
		t.Fatalf("effectiveFirewall: %v", eff)
	}
	auto := rules[1].(map[string]any)
	if auto["protocol"] != "tcp" || auto["portStart"] != 9001.0 || fmt.Sprint(auto["sourceCidrs"]) != "[::/0]" || auto["description"] != "auto: proxy service grpc" {
		t.Fatalf("auto-rule: %v", auto)
	}
	// DELETE: 204 with no body, also when absent; the auto-rule goes.
	for range 2 {
		status, _, body := e.do("DELETE", base+"/web", "")
		if status != http.StatusNoContent || len(body) != 0 {
			t.Fatalf("DELETE: %d %q", status, body)
		}
	}
	for _, r := range e.call("GET", "/v1/vms/"+vm, "", http.StatusOK)["effectiveFirewall"].(map[string]any)["ingress"].([]any) {
		if strings.Contains(fmt.Sprint(r), "service web") {
			t.Fatalf("the auto-rule of a deleted service is left: %v", r)
		}
	}
	// At most 16: the 17th is a conflict, by POST or PUT; updates still go.
	for i := 0; i < 14; i++ {
		e.call("POST", base, fmt.Sprintf(`{"name":"s%d","port":%d}`, i, 2000+i), http.StatusCreated)
	}
	e.conflict("POST", base, `{"name":"one-more","port":3000}`)
	e.conflict("PUT", base+"/one-more", `{"port":3000}`)
	e.call("PUT", base+"/s0", `{"port":3001}`, http.StatusOK)
	e.call("POST", base, `{"name":"s1","port":2001}`, http.StatusCreated)
	// Unknown VMs are 404.
	e.status("GET", "/v1/vms/nope/services", "", http.StatusNotFound)
	e.status("PUT", "/v1/vms/nope/services/web", `{"port":8080}`, http.StatusNotFound)
	e.status("DELETE", "/v1/vms/nope/services/web", "", http.StatusNotFound)
}

func TestExtServicesAcrossSnapshots(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	e.call("POST", "/v1/vms/"+vm+"/services", `{"name":"web","port":8080}`, http.StatusCreated)
	e.call("POST", "/v1/vms/"+vm+"/services", `{"name":"grpc","port":9090,"h2c":true}`, http.StatusCreated)
	sn := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`"}`, http.StatusCreated)
	if fmt.Sprint(sn["services"]) != "[map[h2c:true name:grpc port:9090] map[name:web port:8080]]" {
		t.Fatalf("snapshot services: %v", sn["services"])
	}
	id := sn["id"].(string)
	e.waitStatus("/v1/snapshots/"+id, "ready")
	// A restore registers them again, with no warnings.
	restored := e.call("POST", "/v1/vms", `{"snapshotId":"`+id+`"}`, http.StatusCreated)
	if _, has := restored["snapshotRestoreWarnings"]; has {
		t.Fatalf("warnings on a clean restore: %v", restored)
	}
	status, _, body := e.do("GET", "/v1/vms/"+restored["id"].(string)+"/services", "")
	if status != http.StatusOK || !strings.Contains(string(body), `"name":"grpc","port":9090,"h2c":true`) || !strings.Contains(string(body), `"name":"web"`) {
		t.Fatalf("restored services: %d %s", status, body)
	}
	// When the replay fails: the VM has none, and the launch says which.
	e.s.FailNextServiceReplay()
	failed := e.call("POST", "/v1/vms", `{"snapshotId":"`+id+`"}`, http.StatusCreated)
	w, _ := failed["snapshotRestoreWarnings"].(map[string]any)
	if w["servicesRegistrationFailed"] != true || w["reason"] == "" || len(w["unregisteredServices"].([]any)) != 2 {
		t.Fatalf("warnings: %v", failed)
	}
	if _, _, body := e.do("GET", "/v1/vms/"+failed["id"].(string)+"/services", ""); strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("services after a failed replay: %s", body)
	}
	// The warnings are in the launch answer only.
	if _, has := e.call("GET", "/v1/vms/"+failed["id"].(string), "", http.StatusOK)["snapshotRestoreWarnings"]; has {
		t.Fatal("snapshotRestoreWarnings in GET")
	}
}

func TestExtSnapshotOfPausedVM(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	e.sh(vm, "echo paused-files > /root/f")
	e.call("POST", "/v1/vms/"+vm+"/pause", "", http.StatusOK)
	first := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`","name":"one"}`, http.StatusCreated)
	// Within one pause, the same record, unchanged.
	again := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`","name":"two"}`, http.StatusCreated)
	if again["id"] != first["id"] || again["name"] != "one" {
		t.Fatalf("second snapshot in one pause: %v, first %v", again, first)
	}
	e.waitStatus("/v1/snapshots/"+first["id"].(string), "ready")
	restored := e.launch(`{"snapshotId":"` + first["id"].(string) + `"}`)
	if out := e.sh(restored, "cat /root/f"); out != "paused-files\n" {
		t.Fatalf("restore of a paused VM's snapshot: %q", out)
	}
	// A new pause is a new cycle: a new snapshot.
	e.call("POST", "/v1/vms/"+vm+"/resume", "", http.StatusOK)
	e.call("POST", "/v1/vms/"+vm+"/pause", "", http.StatusOK)
	if third := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`"}`, http.StatusCreated); third["id"] == first["id"] {
		t.Fatal("a new pause answered the last pause's snapshot")
	}
}

func TestExtNoExtensionsAnswers404(t *testing.T) {
	e := newEnv(t, Options{NoExtensions: true})
	vm := e.launch(`{"machineType":"c1m2"}`)
	for _, req := range [][3]string{
		{"POST", "/v1/vms/" + vm + "/pause", ""},
		{"POST", "/v1/vms/" + vm + "/resume", ""},
		{"POST", "/v1/vms/" + vm + "/ttl/refresh", ""},
		{"POST", "/v1/vms/" + vm + "/services", `{"name":"web","port":8080}`},
		{"GET", "/v1/vms/" + vm + "/services", ""},
		{"PUT", "/v1/vms/" + vm + "/services/web", `{"port":8080}`},
		{"DELETE", "/v1/vms/" + vm + "/services/web", ""},
	} {
		e.status(req[0], req[1], req[2], http.StatusNotFound)
	}
}

// A paused VM stays paused across a restart of the emulator; its processes
// do not survive one (no emulated VM's do), its files do.
func TestExtPausedVMAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnvAt(t, dir, Options{})
	vm := e.launch(`{"machineType":"c1m2","ttl":{"action":"pause","seconds":600}}`)
	e.sh(vm, "echo kept > /root/f")
	p := e.call("POST", "/v1/vms/"+vm+"/pause", "", http.StatusOK)
	e.close()
	e2 := newEnvAt(t, dir, Options{})
	got := e2.call("GET", "/v1/vms/"+vm, "", http.StatusOK)
	if got["status"] != "paused" || got["pausedAt"] != p["pausedAt"] || got["ttlRemainingMs"] != p["ttlRemainingMs"] {
		t.Fatalf("after restart: %v\nbefore: %v", got, p)
	}
	e2.call("POST", "/v1/vms/"+vm+"/resume", "", http.StatusOK)
	if out := e2.sh(vm, "cat /root/f"); out != "kept\n" {
		t.Fatalf("files after restart and resume: %q", out)
	}
}
