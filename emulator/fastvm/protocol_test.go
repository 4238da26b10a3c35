//go:build linux

package fastvm

// The raw-protocol suite: plain net/http and hand-written JSON, going through
// the emulator checklist of shared/specs/fastvm-api.md §12.1 item by item.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestItem1_AuthAndHeaders(t *testing.T) {
	e := newEnv(t, Options{})
	// No key, a wrong key: 401 with the error body.
	for _, key := range []string{"", "wrong-key"} {
		status, _, b := e.do("GET", "/v1/vms", "", "X-API-Key", key)
		if status != http.StatusUnauthorized {
			t.Fatalf("key %q: status %d, want 401", key, status)
		}
		if msg := errorOf(t, b); strings.Contains(msg, testKey) {
			t.Fatalf("the error names the key: %q", msg)
		}
	}
	// Authorization: Bearer is accepted too; X-Stainless-* headers are ignored.
	status, _, b := e.do("GET", "/v1/vms", "", "X-API-Key", "", "Authorization", "Bearer "+testKey,
		"X-Stainless-Retry-Count", "0", "X-Stainless-Timeout", "60", "X-Stainless-OS", "Linux", "User-Agent", "Fastvm/Python 0.4.0")
	if status != http.StatusOK || strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("bearer: %d %s", status, b)
	}
	// Body-less POSTs with Content-Type: application/json and an empty body.
	vm := e.launch(`{"machineType":"c1m2"}`)
	for _, p := range []string{"/v1/vms/" + vm + "/console-token", "/v1/build-contexts/presign"} {
		status, _, b := e.do("POST", p, "", "Content-Type", "application/json")
		if status != http.StatusOK {
			t.Fatalf("POST %s with an empty JSON body: %d %s", p, status, b)
		}
	}
	// Health: no key needed.
	status, _, b = e.do("GET", "/healthz", "", "X-API-Key", "")
	if status != http.StatusOK || strings.TrimSpace(string(b)) != `{"status":"ok"}` {
		t.Fatalf("healthz: %d %s", status, b)
	}
	for _, p := range []string{"/livez", "/readyz"} {
		if status, _, b := e.do("GET", p, "", "X-API-Key", ""); status != http.StatusOK || len(b) != 0 {
			t.Fatalf("%s: %d %q", p, status, b)
		}
	}
	// Unknown endpoints answer the error body too.
	status, _, b = e.do("GET", "/v1/nope", "")
	if status != http.StatusNotFound {
		t.Fatalf("unknown endpoint: %d", status)
	}
	errorOf(t, b)
}

func TestItem2_LaunchGetListPatchDelete(t *testing.T) {
	e := newEnv(t, Options{})
	// 201 running, the Vm shape.
	vm := e.call("POST", "/v1/vms", `{"machineType":"c2m4","name":"  my   dev\tbox ","metadata":{"env":"prod","role":"api"},"diskGiB":12,"portMappings":{"web":80},"unknownField":1}`, http.StatusCreated)
	id := vm["id"].(string)
	if len(id) != 36 || vm["status"] != "running" || vm["cpu"] != 2.0 || vm["memoryMiB"] != 4096.0 || vm["diskGiB"] != 12.0 ||
		vm["name"] != "my dev box" || vm["machineName"] != "c2m4" || vm["orgId"] == "" {
		t.Fatalf("launched VM: %v", vm)
	}
	if _, err := time.Parse(time.RFC3339Nano, vm["createdAt"].(string)); err != nil {
		t.Fatalf("createdAt: %v", err)
	}
	if fw := vm["firewall"].(map[string]any); fw["mode"] != "restricted" {
		t.Fatalf("default firewall: %v", fw)
	}
	if _, ok := vm["portMappings"]; ok {
		t.Fatal("portMappings is in the answer (Spec §13 #15: omitted)")
	}
	// Default name, and the other VMs for the filters.
	other := e.call("POST", "/v1/vms", `{"machineType":"c1m2","metadata":{"env":"prod","role":"db"}}`, http.StatusCreated)
	if other["name"] != "vm-"+other["id"].(string)[:8] {
		t.Fatalf("default name %v", other["name"])
	}
	e.launch(`{"machineType":"c1m2","name":"` + strings.Repeat("x", 70) + `"}`)
	got := e.call("GET", "/v1/vms/"+id, "", http.StatusOK)
	if got["id"] != id || got["name"] != "my dev box" {
		t.Fatalf("get: %v", got)
	}
	// Lists are bare arrays; metadata.<k>=<v> filters combine with AND.
	list := func(query string) []map[string]any {
		status, _, b := e.do("GET", "/v1/vms"+query, "")
		var out []map[string]any
		if status != http.StatusOK || json.Unmarshal(b, &out) != nil {
			t.Fatalf("list %s: %d %s", query, status, b)
		}
		return out
	}
	if all := list(""); len(all) != 3 || len(all[2]["name"].(string)) != 64 {
		t.Fatalf("list: %d VMs (last name %v)", len(all), all[len(all)-1]["name"])
	}
	if l := list("?metadata.env=prod"); len(l) != 2 {
		t.Fatalf("env=prod: %d", len(l))
	}
	if l := list("?metadata.env=prod&metadata.role=api"); len(l) != 1 || l[0]["id"] != id {
		t.Fatalf("env=prod AND role=api: %v", l)
	}
	if l := list("?metadata.env=staging"); len(l) != 0 {
		t.Fatalf("env=staging: %v", l)
	}
	// Unknown ids are 404, UUID or not.
	for _, bad := range []string{"vm_does_not_exist_000000", "00000000-0000-4000-8000-000000000000"} {
		status, _, b := e.do("GET", "/v1/vms/"+bad, "")
		if status != http.StatusNotFound {
			t.Fatalf("GET unknown %s: %d", bad, status)
		}
		errorOf(t, b)
	}
	// PATCH: name, metadata replaced whole, {} clears, nothing is a 400.
	p := e.call("PATCH", "/v1/vms/"+id, `{"metadata":{"env":"dev"}}`, http.StatusOK)
	if md := p["metadata"].(map[string]any); len(md) != 1 || md["env"] != "dev" || p["name"] != "my dev box" {
		t.Fatalf("patch metadata: %v", p)
	}
	p = e.call("PATCH", "/v1/vms/"+id, `{"name":"renamed","metadata":{}}`, http.StatusOK)
	if _, has := p["metadata"]; has || p["name"] != "renamed" {
		t.Fatalf("patch clear: %v", p)
	}
	for _, body := range []string{`{}`, `{"metadata":{"k":"` + strings.Repeat("v", 4097) + `"}}`} {
		if status, _, b := e.do("PATCH", "/v1/vms/"+id, body); status != http.StatusBadRequest {
			t.Fatalf("PATCH %.40s: %d %s", body, status, b)
		}
	}
	// Launch validation (Spec §13 #3).
	for _, body := range []string{`{}`, `{"name":"x"}`, `{"machineType":"c3m7"}`, `{"machineType":"c1m2","diskGiB":5}`, `{"snapshotId":""}`} {
		status, _, b := e.do("POST", "/v1/vms", body)
		if status != http.StatusBadRequest {
			t.Fatalf("launch %s: %d, want 400", body, status)
		}
		errorOf(t, b)
	}
	if status, _, _ := e.do("POST", "/v1/vms", `{"snapshotId":"no-such-snapshot"}`); status != http.StatusNotFound {
		t.Fatalf("launch from an unknown snapshot: %d", status)
	}
	// DELETE: {"id","deleted":true}, deleting, then 404 and out of lists.
	machineID := e.s.store.vms[id].MachineID
	d := e.call("DELETE", "/v1/vms/"+id, "", http.StatusOK)
	if d["id"] != id || d["deleted"] != true {
		t.Fatalf("delete: %v", d)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, _, b := e.do("GET", "/v1/vms/"+id, "")
		if status == http.StatusNotFound {
			break
		}
		var v map[string]any
		json.Unmarshal(b, &v)
		if status != http.StatusOK || v["status"] != "deleting" || time.Now().After(deadline) {
			t.Fatalf("after delete: %d %s", status, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, v := range list("") {
		if v["id"] == id {
			t.Fatal("a deleted VM is still listed")
		}
	}
	if _, err := e.engine.Machine(machineID); err == nil {
		t.Fatal("the deleted VM's machine still exists")
	}
}

func TestItem2_LaunchQueuedAnswers202ThenRunning(t *testing.T) {
	e := newEnv(t, Options{ProvisioningDelay: 500 * time.Millisecond})
	vm := e.call("POST", "/v1/vms", `{"machineType":"c1m2"}`, http.StatusAccepted)
	if vm["status"] != "provisioning" {
		t.Fatalf("202 body status %v", vm["status"])
	}
	id := vm["id"].(string)
	// Not running yet: exec is a non-retryable conflict.
	status, h, b := e.do("POST", "/v1/vms/"+id+"/exec", `{"command":["true"]}`)
	if status != http.StatusConflict || h.Get("x-should-retry") != "false" {
		t.Fatalf("exec while provisioning: %d %q %s", status, h.Get("x-should-retry"), b)
	}
	e.waitStatus("/v1/vms/"+id, "running", "error")
	if out := e.sh(id, "echo ok"); out != "ok\n" {
		t.Fatalf("exec after provisioning: %q", out)
	}
	// A launch told to fail goes provisioning → error.
	e.s.FailNextLaunch()
	vm = e.call("POST", "/v1/vms", `{"machineType":"c1m2"}`, http.StatusAccepted)
	e.waitStatus("/v1/vms/"+vm["id"].(string), "error", "running")
	// Deleting a VM while it provisions removes it.
	vm = e.call("POST", "/v1/vms", `{"machineType":"c1m2"}`, http.StatusAccepted)
	e.call("DELETE", "/v1/vms/"+vm["id"].(string), "", http.StatusOK)
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, _, _ := e.do("GET", "/v1/vms/"+vm["id"].(string), "")
		if status == http.StatusNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a VM deleted while provisioning is still there")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestItem3_ExecAggregate(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	run := func(body string, headers ...string) execResult {
		t.Helper()
		status, h, b := e.do("POST", "/v1/vms/"+vm+"/exec", body, headers...)
		if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Fatalf("exec %s: %d %s %s", body, status, h.Get("Content-Type"), b)
		}
		var raw map[string]any
		json.Unmarshal(b, &raw)
		for _, f := range []string{"exitCode", "stdout", "stderr", "durationMs", "timedOut", "stdoutTruncated", "stderrTruncated"} {
			if _, ok := raw[f]; !ok {
				t.Fatalf("ExecResult lacks %s: %s", f, b)
			}
		}
		var res execResult
		json.Unmarshal(b, &res)
		return res
	}
	res := run(`{"command":["sh","-c","echo hi; echo warn >&2; pwd; id -u; exit 3"]}`)
	if res.ExitCode != 3 || res.Stdout != "hi\n/root\n0\n" || res.Stderr != "warn\n" || res.TimedOut {
		t.Fatalf("result %+v", res)
	}
	// argv is passed verbatim; Accept */* and no Accept give the aggregate.
	res = run(`{"command":["printf","%s|","a b","$HOME"]}`, "Accept", "*/*")
	if res.Stdout != "a b|$HOME|" {
		t.Fatalf("argv: %q", res.Stdout)
	}
	run(`{"command":["true"]}`, "Accept", "")
	// stdin is base64, written whole then closed.
	stdin := base64.StdEncoding.EncodeToString([]byte("line1\nline2\n\x00\xff"))
	res = run(`{"command":["sh","-c","wc -c; echo done"],"stdin":"` + stdin + `"}`)
	if res.Stdout != "14\ndone\n" {
		t.Fatalf("stdin: %q", res.Stdout)
	}
	// Timeout: exit 124 and timedOut (Spec §13 #7).
	res = run(`{"command":["sleep","30"],"timeoutSec":1}`)
	if res.ExitCode != 124 || !res.TimedOut {
		t.Fatalf("timeout: %+v", res)
	}
	// A missing program is exit 127, as on a VM.
	res = run(`{"command":["no-such-program-x"]}`)
	if res.ExitCode != 127 || !strings.Contains(res.Stderr, "no-such-program-x") {
		t.Fatalf("missing program: %+v", res)
	}
	// 4 MiB caps with flags; invalid UTF-8 becomes U+FFFD.
	res = run(`{"command":["sh","-c","yes | head -c 5000000; printf 'ok' >&2"]}`)
	if len(res.Stdout) != 4<<20 || !res.StdoutTruncated || res.StderrTruncated || res.Stderr != "ok" {
		t.Fatalf("cap: %d bytes, flags %v %v, stderr %q", len(res.Stdout), res.StdoutTruncated, res.StderrTruncated, res.Stderr)
	}
	res = run(`{"command":["printf","a\\377b"]}`)
	if res.Stdout != "a\uFFFDb" {
		t.Fatalf("invalid UTF-8: %q", res.Stdout)
	}
	// Bad requests (Spec §13 #3).
	for _, body := range []string{`{}`, `{"command":[]}`, `{"command":[""]}`, `{"command":["true"],"timeoutSec":0}`,
		`{"command":["true"],"timeoutSec":-5}`, `{"command":["true"],"stdin":"not base64!"}`} {
		status, _, b := e.do("POST", "/v1/vms/"+vm+"/exec", body)
		if status != http.StatusBadRequest {
			t.Fatalf("exec %s: %d, want 400", body, status)
		}
		errorOf(t, b)
	}
	if status, _, _ := e.do("POST", "/v1/vms/nope/exec", `{"command":["true"]}`); status != http.StatusNotFound {
		t.Fatalf("exec on an unknown VM: %d", status)
	}
}

// ndjsonExec runs an exec with Accept: application/x-ndjson and returns the
// raw lines.
func ndjsonExec(t *testing.T, e *env, vm, body string) []string {
	t.Helper()
	status, h, b := e.do("POST", "/v1/vms/"+vm+"/exec", body, "Accept", "application/x-ndjson")
	if status != http.StatusOK || h.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("ndjson exec: %d %q %s", status, h.Get("Content-Type"), b)
	}
	if !bytes.HasSuffix(b, []byte("\n")) {
		t.Fatalf("the stream does not end with a newline: %q", b)
	}
	return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
}

type event struct {
	T  string `json:"t"`
	D  string `json:"d"`
	C  *int   `json:"c"`
	TO *bool  `json:"to"`
	MS *int64 `json:"ms"`
}

// parseEvents decodes lines (each ending in \n but the last, which the
// caller trimmed) and checks that exactly one x event comes last.
func parseEvents(t *testing.T, lines []string) (out, errOut string, exit map[string]any) {
	t.Helper()
	for i, l := range lines {
		var ev event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %d is not JSON: %q", i, l)
		}
		if i < len(lines)-1 && !strings.HasSuffix(l, "\n") {
			t.Fatalf("line %d does not end with \\n: %q", i, l)
		}
		switch ev.T {
		case "o", "e":
			d, err := base64.StdEncoding.DecodeString(ev.D)
			if err != nil || ev.C != nil || ev.MS != nil {
				t.Fatalf("data event %q", l)
			}
			if ev.T == "o" {
				out += string(d)
			} else {
				errOut += string(d)
			}
		case "x":
			if i != len(lines)-1 {
				t.Fatalf("x event is not last: %q", lines)
			}
			json.Unmarshal([]byte(l), &exit)
		default:
			t.Fatalf("unknown event %q", l)
		}
	}
	if exit == nil {
		t.Fatalf("no x event: %q", lines)
	}
	return out, errOut, exit
}

func TestItem3_ExecNDJSON(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	// Exit 0: c is omitted, to is omitted, ms is there.
	lines := ndjsonExec(t, e, vm, `{"command":["sh","-c","echo hi; echo warn >&2"]}`)
	out, errOut, x := parseEvents(t, lines)
	if out != "hi\n" || errOut != "warn\n" {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}
	if _, has := x["c"]; has {
		t.Fatalf("c present for exit 0: %v", x)
	}
	if _, has := x["to"]; has {
		t.Fatalf("to present without a timeout: %v", x)
	}
	if _, has := x["ms"]; !has {
		t.Fatalf("ms missing: %v", x)
	}
	if !strings.HasPrefix(lines[0], `{"t":"o","d":"aGkK"}`) && !strings.HasPrefix(lines[1], `{"t":"o","d":"aGkK"}`) {
		t.Fatalf("compact data event expected, got %q", lines)
	}
	// A non-zero exit has c; binary output survives (base64), stdin works.
	stdin := base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 0xff})
	_, _, x = parseEvents(t, ndjsonExec(t, e, vm, `{"command":["sh","-c","cat; exit 2"],"stdin":"`+stdin+`"}`))
	if x["c"] != 2.0 {
		t.Fatalf("exit 2: %v", x)
	}
	out, _, _ = parseEvents(t, ndjsonExec(t, e, vm, `{"command":["cat"],"stdin":"`+stdin+`"}`))
	if out != "\x00\x01\x02\xff" {
		t.Fatalf("binary round trip: %q", out)
	}
	// Timeout: to true, c 124.
	_, _, x = parseEvents(t, ndjsonExec(t, e, vm, `{"command":["sleep","30"],"timeoutSec":1}`))
	if x["to"] != true || x["c"] != 124.0 {
		t.Fatalf("timeout: %v", x)
	}
	// No output cap in the stream.
	out, _, _ = parseEvents(t, ndjsonExec(t, e, vm, `{"command":["sh","-c","yes | head -c 5000000"]}`))
	if len(out) != 5000000 {
		t.Fatalf("streamed %d bytes, want all 5000000", len(out))
	}
}

// The stream is flushed as produced: the first event arrives while the
// command still runs (it waits for a file that only a later exec creates).
func TestItem3_ExecNDJSONFlushesAsProduced(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/vms/"+vm+"/exec",
		strings.NewReader(`{"command":["sh","-c","echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second"],"timeoutSec":60}`))
	req.Header.Set("X-API-Key", testKey)
	req.Header.Set("Accept", "application/x-ndjson")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n')
	if err != nil || first != `{"t":"o","d":"`+base64.StdEncoding.EncodeToString([]byte("first\n"))+`"}`+"\n" {
		t.Fatalf("first line %q %v", first, err)
	}
	e.sh(vm, "touch /tmp/go")
	var rest []string
	for {
		l, err := br.ReadString('\n')
		if l != "" {
			rest = append(rest, l)
		}
		if err != nil {
			break
		}
	}
	out, _, x := parseEvents(t, append([]string{first}, rest...))
	if out != "first\nsecond\n" || x["t"] != "x" {
		t.Fatalf("stream %q", rest)
	}
}

func TestItem4_PresignedURLs(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2","diskGiB":20}`)
	p := e.call("POST", "/v1/vms/"+vm+"/files/presign", `{"path":"/root/file.txt"}`, http.StatusOK)
	up, down := p["uploadUrl"].(string), p["downloadUrl"].(string)
	if !strings.HasPrefix(up, e.srv.URL+"/") || !strings.HasPrefix(down, e.srv.URL+"/") || up == down ||
		p["expiresInSec"] != 3600.0 || p["maxUploadBytes"] != float64(20<<30) {
		t.Fatalf("presign: %v", p)
	}
	if status, _, _ := e.do("POST", "/v1/vms/"+vm+"/files/presign", `{}`); status != http.StatusBadRequest {
		t.Fatal("presign without a path was accepted")
	}
	// Upload without an API key (and with a wrong one, which is ignored).
	data := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	if status, b := httpDo(t, "PUT", up, bytes.NewReader(data), "Content-Type", "application/octet-stream", "X-API-Key", "ignored"); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, b)
	}
	if status, b := httpDo(t, "GET", down, nil); status != http.StatusOK || !bytes.Equal(b, data) {
		t.Fatalf("GET: %d, %d bytes", status, len(b))
	}
	// Chunked upload (no Content-Length), gzip content type.
	if status, b := httpDo(t, "PUT", up, strings.NewReader("chunked body"), "Content-Type", "application/gzip"); status != http.StatusOK {
		t.Fatalf("chunked PUT: %d %s", status, b)
	}
	if _, b := httpDo(t, "GET", down, nil); string(b) != "chunked body" {
		t.Fatalf("after chunked PUT: %q", b)
	}
	// Refused: a tampered signature, another object, the other method, an
	// expired URL, a wrong Content-Type.
	other := e.call("POST", "/v1/vms/"+vm+"/files/presign", `{"path":"/root/other"}`, http.StatusOK)
	otherDown := other["downloadUrl"].(string)
	tampered := down[:len(down)-1] + map[bool]string{true: "0", false: "1"}[strings.HasSuffix(down, "1")]
	swapped := strings.Replace(down, objectID(t, down), objectID(t, otherDown), 1)
	expired := e.s.expiredURL(t, objectID(t, down))
	for name, u := range map[string]string{"tampered": tampered, "other object": swapped, "upload URL for GET": up, "expired": expired} {
		status, b := httpDo(t, "GET", u, nil)
		if status != http.StatusForbidden {
			t.Fatalf("%s: GET %d", name, status)
		}
		errorOf(t, b)
	}
	if status, _ := httpDo(t, "PUT", down, bytes.NewReader(data), "Content-Type", "application/octet-stream"); status != http.StatusForbidden {
		t.Fatalf("PUT to the download URL: %d", status)
	}
	if status, _ := httpDo(t, "PUT", up, bytes.NewReader(data), "Content-Type", "text/plain"); status != http.StatusForbidden {
		t.Fatalf("PUT with text/plain: %d", status)
	}
	if status, _ := httpDo(t, "GET", otherDown, nil); status != http.StatusNotFound {
		t.Fatalf("GET of an object never uploaded: %d", status)
	}
	// maxUploadBytes is enforced, with and without Content-Length.
	e.s.mu.Lock()
	e.s.maxUploadOverride = 1000
	e.s.mu.Unlock()
	small := e.call("POST", "/v1/vms/"+vm+"/files/presign", `{"path":"/root/small"}`, http.StatusOK)
	if small["maxUploadBytes"] != 1000.0 {
		t.Fatalf("override: %v", small)
	}
	sup := small["uploadUrl"].(string)
	if status, _ := httpDo(t, "PUT", sup, bytes.NewReader(make([]byte, 1001)), "Content-Type", "application/octet-stream"); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized PUT: %d", status)
	}
	if status, _ := httpDo(t, "PUT", sup, strings.NewReader(strings.Repeat("x", 1001)), "Content-Type", "application/octet-stream"); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized chunked PUT: %d", status)
	}
	if status, _ := httpDo(t, "PUT", sup, bytes.NewReader(make([]byte, 1000)), "Content-Type", "application/octet-stream"); status != http.StatusOK {
		t.Fatalf("PUT of exactly maxUploadBytes: %d", status)
	}

	// files/fetch writes the object into the guest, parents created, and
	// answers an ExecResult.
	f := e.call("POST", "/v1/vms/"+vm+"/files/fetch", `{"url":"`+down+`","path":"/opt/deep/new/dir/f.txt","timeoutSec":600}`, http.StatusOK)
	if f["exitCode"] != 0.0 || f["timedOut"] != false {
		t.Fatalf("fetch: %v", f)
	}
	if out := e.sh(vm, "cat /opt/deep/new/dir/f.txt"); out != "chunked body" {
		t.Fatalf("fetched file: %q", out)
	}
	// A URL that was never uploaded: the download step fails.
	f = e.call("POST", "/v1/vms/"+vm+"/files/fetch", `{"url":"`+otherDown+`","path":"/root/x"}`, http.StatusOK)
	if f["exitCode"] == 0.0 {
		t.Fatalf("fetch of a missing object: %v", f)
	}
	// Refused with 400: foreign, tampered and upload URLs, relative paths.
	for _, body := range []string{
		`{"url":"https://example.com/file","path":"/root/x"}`,
		`{"url":"` + e.srv.URL + `/_emulator/objects/00000000000000000000000000000000?method=GET","path":"/root/x"}`,
		`{"url":"` + tampered + `","path":"/root/x"}`,
		`{"url":"` + up + `","path":"/root/x"}`,
		`{"url":"` + down + `","path":"relative/x"}`,
		`{"path":"/root/x"}`,
	} {
		status, _, b := e.do("POST", "/v1/vms/"+vm+"/files/fetch", body)
		if status != http.StatusBadRequest {
			t.Fatalf("fetch %s: %d, want 400", body, status)
		}
		errorOf(t, b)
	}
}

func objectID(t *testing.T, u string) string {
	t.Helper()
	i := strings.Index(u, objectsPath)
	j := strings.Index(u, "?")
	if i < 0 || j < i {
		t.Fatalf("not an object URL: %s", u)
	}
	return u[i+len(objectsPath) : j]
}

// expiredURL mints a correctly signed GET URL that expired a second ago.
func (s *Server) expiredURL(t *testing.T, oid string) string {
	exp := time.Now().Add(-time.Second).Unix()
	return fmt.Sprintf("%s%s%s?method=GET&expires=%d&max=%d&sig=%s", s.baseURL, objectsPath, oid, exp, 1, s.sign("GET", oid, exp, 1))
}

func TestItem5_ErrorsAndRetryHeaders(t *testing.T) {
	e := newEnv(t, Options{Quotas: Quotas{VMs: 1}})
	vm := e.launch(`{"machineType":"c1m2"}`)
	// 429 on quota, not retryable.
	status, h, b := e.do("POST", "/v1/vms", `{"machineType":"c1m2"}`)
	if status != http.StatusTooManyRequests || h.Get("x-should-retry") != "false" {
		t.Fatalf("over quota: %d %q", status, h.Get("x-should-retry"))
	}
	errorOf(t, b)
	// 409 on a VM that is not running, not retryable.
	e.s.FailNextLaunch()
	e.call("DELETE", "/v1/vms/"+vm, "", http.StatusOK)
	e.waitGone(vm)
	failed := e.call("POST", "/v1/vms", `{"machineType":"c1m2"}`, http.StatusAccepted)["id"].(string)
	e.waitStatus("/v1/vms/"+failed, "error")
	for _, req := range [][2]string{
		{"/v1/vms/" + failed + "/exec", `{"command":["true"]}`},
		{"/v1/vms/" + failed + "/files/fetch", `{"url":"` + e.call("POST", "/v1/vms/"+failed+"/files/presign", `{"path":"/x"}`, 200)["downloadUrl"].(string) + `","path":"/x"}`},
		{"/v1/snapshots", `{"vmId":"` + failed + `"}`},
	} {
		status, h, b := e.do("POST", req[0], req[1])
		if status != http.StatusConflict || h.Get("x-should-retry") != "false" {
			t.Fatalf("POST %s on an errored VM: %d %q %s", req[0], status, h.Get("x-should-retry"), b)
		}
		errorOf(t, b)
	}
	// Injected transient failures: retry-after-ms 0, retryable, then normal.
	e.s.InjectTransient("GET", "/v1/vms/", http.StatusServiceUnavailable, 2)
	for i := 0; i < 2; i++ {
		status, h, b := e.do("GET", "/v1/vms/"+failed, "")
		if status != http.StatusServiceUnavailable || h.Get("retry-after-ms") != "0" || h.Get("x-should-retry") == "false" {
			t.Fatalf("injected %d: %d %v", i, status, h)
		}
		errorOf(t, b)
	}
	e.call("GET", "/v1/vms/"+failed, "", http.StatusOK)
	e.s.InjectTransient("", "/v1/org", http.StatusTooManyRequests, 1)
	if status, h, _ := e.do("GET", "/v1/org/quotas", ""); status != 429 || h.Get("x-should-retry") == "false" {
		t.Fatalf("injected 429: %d %v", status, h)
	}
	e.call("GET", "/v1/org/quotas", "", http.StatusOK)
}

func (e *env) waitGone(vm string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if status, _, _ := e.do("GET", "/v1/vms/"+vm, ""); status == http.StatusNotFound {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("VM %s was not deleted", vm)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
