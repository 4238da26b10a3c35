//go:build linux

package fastvm

// §12.1 items 6 to 8 and the other requirements: snapshots, builds, console,
// the SDK helpers' guest command lines, firewall, quotas, restart.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/vmcp-dev/vmcp/internal/tarfs"
)

func TestItem6_SnapshotCreateReadyRestore(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c2m4","diskGiB":15,"metadata":{"team":"a"}}`)
	e.sh(vm, "mkdir -p /opt/app && echo state-1 > /opt/app/data && echo home > /root/h")
	sn := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`","name":" base   image "}`, http.StatusCreated)
	id := sn["id"].(string)
	if sn["status"] != "creating" || len(id) != 36 || sn["vmId"] != vm || sn["name"] != "base image" || sn["orgId"] == "" {
		t.Fatalf("snapshot: %v", sn)
	}
	ready := e.waitStatus("/v1/snapshots/"+id, "ready", "error")
	if ready["metadata"].(map[string]any)["team"] != "a" {
		t.Fatalf("snapshot metadata: %v", ready)
	}
	// Later changes to the VM are not in the snapshot.
	e.sh(vm, "echo state-2 > /opt/app/data")
	status, _, b := e.do("GET", "/v1/snapshots", "")
	var list []map[string]any
	if status != http.StatusOK || json.Unmarshal(b, &list) != nil || len(list) != 1 || list[0]["id"] != id {
		t.Fatalf("list: %d %s", status, b)
	}
	// Restore: the type is inherited, the disk may only grow.
	if status, _, _ := e.do("POST", "/v1/vms", `{"snapshotId":"`+id+`","diskGiB":10}`); status != http.StatusBadRequest {
		t.Fatalf("restore with a smaller disk: %d", status)
	}
	restored := e.call("POST", "/v1/vms", `{"snapshotId":"`+id+`"}`, http.StatusCreated)
	if restored["machineName"] != "c2m4" || restored["cpu"] != 2.0 || restored["diskGiB"] != 15.0 || restored["sourceName"] != "base image" {
		t.Fatalf("restored VM: %v", restored)
	}
	if out := e.sh(restored["id"].(string), "cat /opt/app/data /root/h"); out != "state-1\nhome\n" {
		t.Fatalf("restored files: %q", out)
	}
	// Rename, delete, then 404.
	if r := e.call("PATCH", "/v1/snapshots/"+id, `{"name":"renamed"}`, http.StatusOK); r["name"] != "renamed" {
		t.Fatalf("rename: %v", r)
	}
	if d := e.call("DELETE", "/v1/snapshots/"+id, "", http.StatusOK); d["deleted"] != true || d["id"] != id {
		t.Fatalf("delete: %v", d)
	}
	for _, m := range []string{"GET", "DELETE"} {
		if status, _, _ := e.do(m, "/v1/snapshots/"+id, ""); status != http.StatusNotFound {
			t.Fatalf("%s after delete: %d", m, status)
		}
	}
	if len(e.engine.Snapshots()) != 0 {
		t.Fatal("the local snapshot was not deleted")
	}
	if status, _, _ := e.do("POST", "/v1/snapshots", `{}`); status != http.StatusBadRequest {
		t.Fatal("snapshot without vmId accepted")
	}
}

// tarGz builds a gzipped tar of files (name → content; names ending in /
// are directories).
func tarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, content := range files {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg, Uid: 1234, Gid: 1234}
		if strings.HasSuffix(name, "/") {
			hdr = &tar.Header{Name: name, Mode: 0o755, Typeflag: tar.TypeDir}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// uploadContext presigns a build context and uploads it as the client does.
func (e *env) uploadContext(files map[string]string) string {
	e.t.Helper()
	p := e.call("POST", "/v1/build-contexts/presign", "", http.StatusOK)
	if status, b := httpDo(e.t, "PUT", p["uploadUrl"].(string), bytes.NewReader(tarGz(e.t, files)), "Content-Type", "application/gzip"); status != http.StatusOK {
		e.t.Fatalf("context upload: %d %s", status, b)
	}
	return p["downloadUrl"].(string)
}

func TestItem6_BuildFromDockerfile(t *testing.T) {
	e := newEnv(t, Options{})
	ctxURL := e.uploadContext(map[string]string{
		"app/":            "",
		"app/main.py":     "print('hello from the build')\n",
		"app/lib/util.py": "X = 1\n",
		"config.toml":     "port = 8080\n",
	})
	dockerfile := `# syntax=docker/dockerfile:1
FROM python:3.13-slim AS base
ARG GREETING=hi
ENV APP_HOME=/srv/app \
    MODE="production mode"
WORKDIR $APP_HOME
COPY app/ ./
COPY config.toml /etc/myapp/
RUN echo "$GREETING $MODE in $(pwd)" > built.txt && test -f main.py && test -f lib/util.py
RUN ["sh", "-c", "echo exec-form >> /srv/app/built.txt"]
WORKDIR sub
RUN pwd > /srv/app/where.txt; sleep 1
EXPOSE 8080
CMD ["python3", "main.py"]
`
	b := e.call("POST", "/v1/builds", mustJSON(t, map[string]any{"dockerfileContent": dockerfile, "contextDownloadUrl": ctxURL, "name": "my image"}), http.StatusAccepted)
	if b["status"] != "pending" || b["imageRef"] != "python:3.13-slim" || b["name"] != "my image" || len(b["id"].(string)) != 36 {
		t.Fatalf("build: %v", b)
	}
	// It runs with a progress phase, then completes with a ready snapshot.
	path := "/v1/builds/" + b["id"].(string)
	sawRunning := false
	deadline := time.Now().Add(120 * time.Second)
	for {
		got := e.call("GET", path, "", http.StatusOK)
		if got["status"] == "running" {
			sawRunning = true
			if got["progress"] == nil || got["progress"] == "" {
				t.Fatalf("running without progress: %v", got)
			}
		}
		if got["status"] == "failed" {
			t.Fatalf("build failed: %v", got["error"])
		}
		if got["status"] == "completed" {
			if _, has := got["progress"]; has || got["snapshotId"] == nil {
				t.Fatalf("completed build: %v", got)
			}
			b = got
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("build still %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !sawRunning {
		t.Fatal("never saw the build running")
	}
	snap := e.call("GET", "/v1/snapshots/"+b["snapshotId"].(string), "", http.StatusOK)
	if snap["status"] != "ready" || snap["name"] != "my image" {
		t.Fatalf("build snapshot: %v", snap)
	}
	vm := e.call("POST", "/v1/vms", `{"snapshotId":"`+snap["id"].(string)+`"}`, http.StatusCreated)["id"].(string)
	out := e.sh(vm, "cat /srv/app/built.txt /srv/app/where.txt /etc/myapp/config.toml; python3 /srv/app/main.py; stat -c %u /srv/app/main.py; test ! -e /tmp/buildctx && echo no-ctx")
	want := "hi production mode in /srv/app\nexec-form\n/srv/app/sub\nport = 8080\nhello from the build\n0\nno-ctx\n"
	if out != want {
		t.Fatalf("built VM:\n%s\nwant:\n%s", out, want)
	}
	e.s.mu.Lock()
	ignored := strings.Join(e.s.store.builds[b["id"].(string)].Ignored, "\n")
	e.s.mu.Unlock()
	if !strings.Contains(ignored, "EXPOSE") || !strings.Contains(ignored, "CMD") {
		t.Fatalf("recorded instructions: %q", ignored)
	}
}

func TestItem6_BuildFailuresAndImageOnly(t *testing.T) {
	e := newEnv(t, Options{})
	build := func(body, want string) map[string]any {
		t.Helper()
		b := e.call("POST", "/v1/builds", body, http.StatusAccepted)
		other := map[string]string{"completed": "failed", "failed": "completed"}[want]
		return e.waitStatus("/v1/builds/"+b["id"].(string), want, other)
	}
	failed := build(mustJSON(t, map[string]any{"dockerfileContent": "FROM alpine\nRUN echo broken >&2; exit 3\n"}), "failed")
	if msg, _ := failed["error"].(string); !strings.Contains(msg, "exit code 3") || !strings.Contains(msg, "broken") || failed["snapshotId"] != nil {
		t.Fatalf("failed build: %v", failed)
	}
	multi := build(mustJSON(t, map[string]any{"dockerfileContent": "FROM a AS x\nFROM b\nCOPY --from=x /a /a\n"}), "failed")
	if !strings.Contains(multi["error"].(string), "multi-stage") {
		t.Fatalf("multi-stage: %v", multi)
	}
	missing := build(mustJSON(t, map[string]any{"dockerfileContent": "FROM a\nCOPY nothing.txt /x\n"}), "failed")
	if !strings.Contains(missing["error"].(string), "nothing.txt") {
		t.Fatalf("missing COPY source: %v", missing)
	}
	// Image-only: the image is a label; the result is a ready snapshot.
	ok := build(`{"imageRef":"ok/python:3.13-slim"}`, "completed")
	if ok["imageRef"] != "ok/python:3.13-slim" || ok["snapshotId"] == nil {
		t.Fatalf("image-only build: %v", ok)
	}
	for _, body := range []string{`{}`, `{"imageRef":"x","contextDownloadUrl":"https://example.com/ctx.tgz"}`, `{"imageRef":"x","machineType":"big"}`, `{"imageRef":"x","diskGiB":2}`} {
		status, _, b := e.do("POST", "/v1/builds", body)
		if status != http.StatusBadRequest {
			t.Fatalf("build %s: %d", body, status)
		}
		errorOf(t, b)
	}
	if status, _, _ := e.do("GET", "/v1/builds/nope", ""); status != http.StatusNotFound {
		t.Fatal("unknown build is not a 404")
	}
	// No build VM is left behind.
	for _, m := range e.engine.Machines() {
		if m.Tags[tagBuild] != "" {
			t.Fatalf("build machine left: %+v", m)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestItem7_Console(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	tok := e.call("POST", "/v1/vms/"+vm+"/console-token", "", http.StatusOK)
	if tok["expiresInSec"] != 60.0 || tok["websocketPath"] != "/v1/vms/"+vm+"/console/ws" || tok["token"] == "" {
		t.Fatalf("token: %v", tok)
	}
	wsURL := "ws" + strings.TrimPrefix(e.srv.URL, "http") + tok["websocketPath"].(string)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// No session, a wrong one: refused before the upgrade.
	for _, q := range []string{"", "?session=wrong"} {
		_, resp, err := websocket.Dial(ctx, wsURL+q, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("dial %q: %v %v", q, err, resp)
		}
	}
	// The token alone authenticates (no API key on the upgrade).
	c, _, err := websocket.Dial(ctx, wsURL+"?session="+tok["token"].(string), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte(`{"type":"resize","cols":120,"rows":40}`))
	c.Write(ctx, websocket.MessageText, []byte("stty size; echo hi-$((6*7))\r"))
	var screen strings.Builder
	for !strings.Contains(screen.String(), "40 120") || !strings.Contains(screen.String(), "hi-42") {
		typ, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("console read: %v; screen so far %q", err, screen.String())
		}
		if typ != websocket.MessageBinary {
			t.Fatalf("console output frame of type %v", typ)
		}
		screen.Write(data)
	}
	// exit ends the session with a normal closure.
	c.Write(ctx, websocket.MessageText, []byte("exit\r"))
	for {
		if _, _, err = c.Read(ctx); err != nil {
			break
		}
	}
	if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("close: %v", err)
	}
	// Single use: the same token is refused the second time.
	if _, resp, err := websocket.Dial(ctx, wsURL+"?session="+tok["token"].(string), nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token reused: %v", err)
	}
	// A token of another VM does not open this one.
	other := e.launch(`{"machineType":"c1m2"}`)
	tok2 := e.call("POST", "/v1/vms/"+other+"/console-token", "", http.StatusOK)["token"].(string)
	if _, resp, err := websocket.Dial(ctx, wsURL+"?session="+tok2, nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("another VM's token: %v", err)
	}
}

// The SDK helpers' exact guest command lines (§5) work unchanged in a VM.
func TestItem8_GuestHelperCommandLines(t *testing.T) {
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	for _, tool := range []string{"sh", "test", "tar", "curl"} {
		e.sh(vm, "command -v "+tool)
	}
	presign := func(p string) (string, string) {
		r := e.call("POST", "/v1/vms/"+vm+"/files/presign", mustJSON(t, map[string]string{"path": p}), http.StatusOK)
		return r["uploadUrl"].(string), r["downloadUrl"].(string)
	}
	fetch := func(url, path string) {
		r := e.call("POST", "/v1/vms/"+vm+"/files/fetch", mustJSON(t, map[string]any{"url": url, "path": path, "timeoutSec": 600}), http.StatusOK)
		if r["exitCode"] != 0.0 {
			t.Fatalf("fetch: %v", r)
		}
	}
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

	// upload(file): presign → PUT with Content-Length → fetch.
	up, down := presign("/etc/app.toml")
	if status, _ := httpDo(t, "PUT", up, bytes.NewReader([]byte("key = 1\n")), "Content-Type", "application/octet-stream"); status != 200 {
		t.Fatal(status)
	}
	fetch(down, "/etc/app.toml")
	if out := e.sh(vm, "cat /etc/app.toml"); out != "key = 1\n" {
		t.Fatalf("uploaded file: %q", out)
	}

	// upload(dir): tar -cz rooted at . → chunked PUT → fetch to the staging
	// path → the TS and the Python extraction lines.
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "pkg", "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "pkg", "a.txt"), []byte("A"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg", "sub", "b.bin"), []byte{0, 1, 2}, 0o644)
	var tgz bytes.Buffer
	gz := gzip.NewWriter(&tgz)
	srcRoot, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer srcRoot.Close()
	if err := tarfs.Write(context.Background(), gz, srcRoot, ".", tarfs.WriteOptions{Contents: true}); err != nil {
		t.Fatal(err)
	}
	gz.Close()
	for _, c := range []struct{ stage, dest, line string }{
		{"/var/tmp/fastvm-upload-4242-0a1b2c3d.tar.gz", "/root/src", "mkdir -p %R && tar -xzf %S -C %R && rm -f %S"},
		{"/tmp/fastvm-upload-4242-deadbeef.tar.gz", "/root/py src", "set -eu; mkdir -p %R && tar -xzf %S -C %R && rm -f %S"},
	} {
		up, down := presign(c.stage)
		if status, b := httpDo(t, "PUT", up, bytes.NewBuffer(tgz.Bytes()), "Content-Type", "application/octet-stream"); status != 200 {
			t.Fatalf("chunked PUT: %d %s", status, b)
		}
		fetch(down, c.stage)
		e.sh(vm, strings.NewReplacer("%R", q(c.dest), "%S", q(c.stage)).Replace(c.line))
		if out := e.sh(vm, "cat "+q(c.dest)+"/pkg/a.txt; od -An -tx1 "+q(c.dest)+"/pkg/sub/b.bin; test ! -e "+q(c.stage)+" && echo staged-removed"); out != "A 00 01 02\nstaged-removed\n" {
			t.Fatalf("extracted dir %s: %q", c.dest, out)
		}
	}

	// download probes: Python's exit codes and TS's dir/file answer.
	for _, c := range []struct {
		path     string
		pyExit   int    // 2 missing, 0 directory, else file
		tsOutput string // "" when the probe fails
	}{{"/root/src", 0, "dir\n"}, {"/etc/app.toml", 1, "file\n"}, {"/nope", 2, ""}} {
		res := e.execJSON(vm, "sh", "-c", "test -e "+q(c.path)+" || exit 2; test -d "+q(c.path))
		if res.ExitCode != c.pyExit {
			t.Fatalf("python probe %s: exit %d, want %d", c.path, res.ExitCode, c.pyExit)
		}
		res = e.execJSON(vm, "sh", "-c", "test -e "+q(c.path)+" && (test -d "+q(c.path)+" && echo dir || echo file)")
		if res.Stdout != c.tsOutput || (c.tsOutput == "") != (res.ExitCode != 0) {
			t.Fatalf("ts probe %s: %+v", c.path, res)
		}
	}

	// download(file): the VM uploads with curl -T, the client GETs.
	up, down = presign("/etc/app.toml")
	e.sh(vm, "curl --fail --show-error -s -X PUT -H 'Content-Type: application/octet-stream' -T /etc/app.toml "+q(up))
	if status, b := httpDo(t, "GET", down, nil); status != 200 || string(b) != "key = 1\n" {
		t.Fatalf("downloaded file: %d %q", status, b)
	}
	// download(dir): tar -cz | curl -T - (chunked), then the client extracts.
	up, down = presign("/root/src")
	e.sh(vm, "tar -cz -C /root/src . | curl --fail --show-error -s -H 'Content-Type: application/octet-stream' -T - "+q(up))
	status, b := httpDo(t, "GET", down, nil)
	if status != 200 {
		t.Fatal(status)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	dstRoot, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer dstRoot.Close()
	if err := tarfs.Extract(zr, dstRoot, tarfs.ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "pkg", "sub", "b.bin")); !bytes.Equal(got, []byte{0, 1, 2}) {
		t.Fatalf("downloaded dir: %q", got)
	}
	// A failing VM-side upload is a non-zero exit the helpers turn into
	// FileTransferError.
	res := e.execJSON(vm, "sh", "-c", "curl --fail --show-error -s -X PUT -H 'Content-Type: application/octet-stream' -T /etc/app.toml "+q(up+"x"))
	if res.ExitCode == 0 {
		t.Fatalf("curl to a tampered URL succeeded: %+v", res)
	}
}

func TestFirewallValidation(t *testing.T) {
	e := newEnv(t, Options{})
	if status, _, b := e.do("POST", "/v1/vms", `{"machineType":"c1m2","firewall":{"mode":"restricted","ingress":[{"protocol":"tcp","portStart":22,"sourceCidrs":["10.0.0.0/8"]}]}}`); status != http.StatusBadRequest {
		t.Fatalf("launch with an IPv4 CIDR: %d %s", status, b)
	}
	vm := e.call("POST", "/v1/vms", `{"machineType":"c1m2","firewall":{"mode":"open"}}`, http.StatusCreated)
	id := vm["id"].(string)
	if vm["firewall"].(map[string]any)["mode"] != "open" {
		t.Fatalf("launch firewall: %v", vm["firewall"])
	}
	rules := `[{"protocol":"tcp","portStart":80},{"protocol":"udp","portStart":5000,"portEnd":5010,"sourceCidrs":["2001:db8::/32"],"description":"media"}]`
	put := e.call("PUT", "/v1/vms/"+id+"/firewall", `{"mode":"restricted","ingress":`+rules+`}`, http.StatusOK)
	fw := put["firewall"].(map[string]any)
	if fw["mode"] != "restricted" || len(fw["ingress"].([]any)) != 2 {
		t.Fatalf("PUT: %v", fw)
	}
	if r := fw["ingress"].([]any)[0].(map[string]any); r["portStart"] != 80.0 || r["portEnd"] != nil {
		t.Fatalf("single-port rule: %v", r)
	}
	// PATCH mode only keeps the rules; ingress [] clears them.
	fw = e.call("PATCH", "/v1/vms/"+id+"/firewall", `{"mode":"open"}`, http.StatusOK)["firewall"].(map[string]any)
	if fw["mode"] != "open" || len(fw["ingress"].([]any)) != 2 {
		t.Fatalf("PATCH mode: %v", fw)
	}
	fw = e.call("PATCH", "/v1/vms/"+id+"/firewall", `{"ingress":[]}`, http.StatusOK)["firewall"].(map[string]any)
	if fw["mode"] != "open" || fw["ingress"] != nil {
		t.Fatalf("PATCH clear: %v", fw)
	}
	// PUT without ingress replaces the rules with none.
	e.call("PATCH", "/v1/vms/"+id+"/firewall", `{"ingress":`+rules+`}`, http.StatusOK)
	fw = e.call("PUT", "/v1/vms/"+id+"/firewall", `{"mode":"restricted"}`, http.StatusOK)["firewall"].(map[string]any)
	if fw["ingress"] != nil {
		t.Fatalf("PUT without ingress kept rules: %v", fw)
	}
	for _, c := range []struct{ method, body string }{
		{"PUT", `{"ingress":[]}`},
		{"PUT", `{"mode":"closed"}`},
		{"PATCH", `{"ingress":[{"protocol":"tcp","portStart":22,"sourceCidrs":["192.168.1.0/24"]}]}`},
		{"PATCH", `{"ingress":[{"protocol":"tcp","portStart":22,"sourceCidrs":["::ffff:10.0.0.0/104"]}]}`},
		{"PATCH", `{"ingress":[{"protocol":"tcp","portStart":22,"sourceCidrs":["not-a-cidr"]}]}`},
		{"PATCH", `{"ingress":[{"protocol":"tcp","portStart":0}]}`},
		{"PATCH", `{"ingress":[{"protocol":"tcp","portStart":100,"portEnd":99}]}`},
		{"PATCH", `{"ingress":[{"protocol":"sctp","portStart":100}]}`},
	} {
		status, _, b := e.do(c.method, "/v1/vms/"+id+"/firewall", c.body)
		if status != http.StatusBadRequest {
			t.Fatalf("%s %s: %d, want 400", c.method, c.body, status)
		}
		errorOf(t, b)
	}
	if got := e.call("GET", "/v1/vms/"+id, "", http.StatusOK)["firewall"].(map[string]any); got["mode"] != "restricted" {
		t.Fatalf("a refused change altered the policy: %v", got)
	}
}

func TestQuotas(t *testing.T) {
	e := newEnv(t, Options{Quotas: Quotas{VCPU: 3, SnapshotCount: 1}})
	q := e.call("GET", "/v1/org/quotas", "", http.StatusOK)
	limits, usage := q["limits"].(map[string]any), q["usage"].(map[string]any)
	if q["orgId"] == "" || limits["vcpu"] != 3.0 || limits["snapshotCount"] != 1.0 || usage["vcpu"] != 0.0 || limits["memoryMiB"] == 0.0 {
		t.Fatalf("quotas: %v", q)
	}
	vm := e.launch(`{"machineType":"c2m4"}`)
	status, h, b := e.do("POST", "/v1/vms", `{"machineType":"c2m4"}`)
	if status != http.StatusTooManyRequests || h.Get("x-should-retry") != "false" || !strings.Contains(errorOf(t, b), "vCPU") {
		t.Fatalf("over the vCPU quota: %d %s", status, b)
	}
	e.launch(`{"machineType":"c1m2"}`)
	usage = e.call("GET", "/v1/org/quotas", "", http.StatusOK)["usage"].(map[string]any)
	if usage["vcpu"] != 3.0 || usage["memoryMiB"] != 6144.0 || usage["diskGiB"] != 20.0 {
		t.Fatalf("usage: %v", usage)
	}
	sn := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`"}`, http.StatusCreated)
	if sn["name"] != "snapshot-"+vm[:8] {
		t.Fatalf("default snapshot name: %v", sn["name"])
	}
	if status, h, _ := e.do("POST", "/v1/snapshots", `{"vmId":"`+vm+`"}`); status != http.StatusTooManyRequests || h.Get("x-should-retry") != "false" {
		t.Fatalf("over the snapshot quota: %d", status)
	}
	// Deleting releases the VM's share.
	e.call("DELETE", "/v1/vms/"+vm, "", http.StatusOK)
	e.launch(`{"machineType":"c2m4"}`)
}

func TestRestartKeepsVMsSnapshotsAndBuilds(t *testing.T) {
	dir := t.TempDir()
	e := newEnvAt(t, dir, Options{})
	vm := e.launch(`{"machineType":"c1m2","metadata":{"k":"v"},"firewall":{"mode":"open"}}`)
	e.call("PATCH", "/v1/vms/"+vm, `{"name":"kept"}`, http.StatusOK)
	e.sh(vm, "echo persisted > /root/file")
	sn := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`"}`, http.StatusCreated)["id"].(string)
	e.waitStatus("/v1/snapshots/"+sn, "ready")
	b := e.call("POST", "/v1/builds", `{"imageRef":"x"}`, http.StatusAccepted)["id"].(string)
	e.waitStatus("/v1/builds/"+b, "completed")
	before := e.call("GET", "/v1/vms/"+vm, "", http.StatusOK)
	e.close()

	e2 := newEnvAt(t, dir, Options{})
	after := e2.call("GET", "/v1/vms/"+vm, "", http.StatusOK)
	if mustJSON(t, after) != mustJSON(t, before) || after["name"] != "kept" || after["status"] != "running" {
		t.Fatalf("after restart:\n%v\nbefore:\n%v", after, before)
	}
	if out := e2.sh(vm, "cat /root/file"); out != "persisted\n" {
		t.Fatalf("file after restart: %q", out)
	}
	if s := e2.call("GET", "/v1/snapshots/"+sn, "", http.StatusOK); s["status"] != "ready" {
		t.Fatalf("snapshot after restart: %v", s)
	}
	if got := e2.call("GET", "/v1/builds/"+b, "", http.StatusOK); got["status"] != "completed" {
		t.Fatalf("build after restart: %v", got)
	}
	restored := e2.call("POST", "/v1/vms", `{"snapshotId":"`+sn+`"}`, http.StatusCreated)["id"].(string)
	if out := e2.sh(restored, "cat /root/file"); out != "persisted\n" {
		t.Fatalf("restore after restart: %q", out)
	}
}

func TestCloseEndsBackgroundWork(t *testing.T) {
	e := newEnv(t, Options{ProvisioningDelay: time.Hour})
	vm := e.call("POST", "/v1/vms", `{"machineType":"c1m2"}`, http.StatusAccepted)["id"].(string)
	b := e.call("POST", "/v1/builds", `{"dockerfileContent":"FROM x\nRUN sleep 600\n"}`, http.StatusAccepted)["id"].(string)
	deadline := time.Now().Add(30 * time.Second)
	for e.call("GET", "/v1/builds/"+b, "", http.StatusOK)["progress"] != "buildah bud" {
		if time.Now().After(deadline) {
			t.Fatal("the build did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- e.s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not end the provisioning and the build")
	}
	if status, _, _ := e.do("GET", "/v1/vms/"+vm, ""); status != http.StatusServiceUnavailable {
		t.Fatalf("a closed emulator answered %d", status)
	}
	if _, err := os.Stat(e.s.staging); !os.IsNotExist(err) {
		t.Fatalf("staging directory left: %v", err)
	}
	// After a restart the interrupted build is failed, its build VM gone,
	// and the VM that was provisioning is usable or failed, never stuck.
	e.close()
	e2 := newEnvAt(t, e.dir, Options{})
	got := e2.call("GET", "/v1/builds/"+b, "", http.StatusOK)
	if got["status"] != "failed" || !strings.Contains(got["error"].(string), "emulator stopped") {
		t.Fatalf("interrupted build after restart: %v", got)
	}
	for _, m := range e2.engine.Machines() {
		if m.Tags[tagBuild] != "" {
			t.Fatalf("build machine left after restart: %+v", m)
		}
	}
	switch st := e2.call("GET", "/v1/vms/"+vm, "", http.StatusOK)["status"]; st {
	case "running":
		e2.sh(vm, "true")
	case "error":
	default:
		t.Fatalf("VM interrupted while provisioning: status %v after restart", st)
	}
}
