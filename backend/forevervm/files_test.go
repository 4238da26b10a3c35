//go:build linux

package forevervm

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// run runs a shell command in the machine and returns its stdout, failing
// the test unless it exits 0.
func run(t testing.TB, m *Machine, shell string) string {
	t.Helper()
	res, err := m.Run(testCtx(t, time.Minute), backend.Command{Shell: shell, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("%s: %v", shell, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%s: exit %d: %s", shell, res.ExitCode, res.Stderr)
	}
	return res.Stdout
}

// home is the machine's home.
func home(t testing.TB, m *Machine) string {
	t.Helper()
	fi, err := m.Stat(testCtx(t, time.Minute), ".")
	if err != nil {
		t.Fatal(err)
	}
	return fi.Path
}

// noLeftovers fails the test if an upload left a temporary file.
func noLeftovers(t testing.TB, m *Machine) {
	t.Helper()
	if out := run(t, m, "find . -name '.vmcp-upload-*'"); out != "" {
		t.Errorf("temporary files left behind: %s", out)
	}
}

func TestFileRoundTrips(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	h := home(t, m)
	ctx := testCtx(t, 5*time.Minute)
	for _, n := range []int{0, 1, lineBytes - 1, lineBytes, lineBytes + 1, uploadChunk - 1, uploadChunk, uploadChunk + 1,
		outputBudget + 1, 2*uploadChunk + 3, 7<<20 + 5} {
		data := randomBytes(n)
		p := fmt.Sprintf("dir/sub/f%d.bin", n)
		res, err := m.WriteFile(ctx, p, bytes.NewReader(data), 0)
		if err != nil {
			t.Fatalf("write %d bytes: %v", n, err)
		}
		if res.Path != h+"/"+p || res.Bytes != int64(n) || res.SHA256 != sha(data) {
			t.Errorf("write %d bytes: %+v; want %s, %d bytes, sha256 %s", n, res, h+"/"+p, n, sha(data))
		}
		// A reader that does not know its size goes the same way.
		if _, err := m.WriteFile(ctx, p+".2", io.MultiReader(bytes.NewReader(data)), 0); err != nil {
			t.Fatalf("write %d bytes of unknown size: %v", n, err)
		}
		var got bytes.Buffer
		k, err := m.ReadFile(ctx, h+"/"+p, &got)
		if err != nil || k != int64(n) || !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("read back %d bytes: got %d (%d bytes equal: %v), %v", n, k, got.Len(), bytes.Equal(got.Bytes(), data), err)
		}
		if out := run(t, m, "sha256sum "+p+" "+p+".2"); strings.Count(out, sha(data)) != 2 {
			t.Errorf("the machine's sha256 of the %d-byte files: %s; want %s", n, out, sha(data))
		}
	}
	// Overwriting replaces; the mode is the one given.
	if _, err := m.WriteFile(ctx, "dir/sub/f1.bin", strings.NewReader("new"), 0o750); err != nil {
		t.Fatal(err)
	}
	if out := run(t, m, "cat dir/sub/f1.bin; stat -c ' %a' dir/sub/f1.bin"); out != "new 750\n" {
		t.Errorf("after overwriting with mode 0750: %q", out)
	}
	noLeftovers(t, m)
	user.check(t, m)
	// The REPL keeps each instruction's source for tracebacks; the helper
	// drops its own, which carry file data.
	if got := python(t, m, `sum(1 for v in __import__('linecache').cache.values() if v[2] and v[2][0].startswith("__import__('sys').modules['_vmcp"))`); got != "0" {
		t.Errorf("%s instructions of the helper kept in linecache", got)
	}
}

// lineBytes is the helper's LINE: raw bytes per output line.
const lineBytes = 36 * 1024

// failingReader yields n random bytes, then its error (or, with cancel, it
// cancels the call and goes on yielding).
type failingReader struct {
	n      int
	err    error
	cancel context.CancelFunc
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		if f.cancel != nil {
			f.cancel()
			f.cancel = nil
			time.Sleep(50 * time.Millisecond)
		} else {
			return 0, f.err
		}
	}
	k := len(p)
	if f.n > 0 {
		k = min(k, f.n)
	}
	rand.Read(p[:k])
	f.n -= k
	return k, nil
}

// hugeReader claims a size larger than any disk.
type hugeReader struct{ io.Reader }

func (hugeReader) Len() int { return 1 << 50 }

func TestFailedUploadKeepsTheOldFile(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 5*time.Minute)
	old := randomBytes(3<<20 + 17)
	if _, err := m.WriteFile(ctx, "keep.bin", bytes.NewReader(old), 0); err != nil {
		t.Fatal(err)
	}
	intact := func(what string) {
		t.Helper()
		var got bytes.Buffer
		if _, err := m.ReadFile(ctx, "keep.bin", &got); err != nil || !bytes.Equal(got.Bytes(), old) {
			t.Errorf("%s: the old file is not intact (%d bytes, %v)", what, got.Len(), err)
		}
		noLeftovers(t, m)
	}

	// The reader fails midway, after chunks were written.
	boom := errors.New("boom")
	_, err := m.WriteFile(ctx, "keep.bin", &failingReader{n: 5 << 20, err: boom}, 0)
	if !errors.Is(err, boom) {
		t.Errorf("a failing reader: %v; want its error", err)
	}
	intact("after a reader error")

	// The call is cancelled midway.
	cctx, cancel := context.WithCancel(ctx)
	began := time.Now()
	_, err = m.WriteFile(cctx, "keep.bin", &failingReader{n: 5 << 20, cancel: cancel}, 0)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled upload: %v; want context.Canceled", err)
	}
	if d := time.Since(began); d > 20*time.Second {
		t.Errorf("a cancelled upload took %v to return", d)
	}
	intact("after a cancel")

	// A size known in advance that cannot fit is refused before anything
	// is sent.
	_, err = m.WriteFile(ctx, "keep.bin", hugeReader{strings.NewReader("x")}, 0)
	if err == nil || !strings.Contains(err.Error(), "does not fit") || !strings.Contains(err.Error(), "old file is unchanged") {
		t.Errorf("a file larger than the disk: %v", err)
	}
	intact("after a file larger than the disk")

	// The disk fills up midway (here: the interpreter may write no file
	// larger than 4 MiB, which fails writes as a full disk does).
	python(t, m, "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))")
	_, err = m.WriteFile(ctx, "keep.bin", io.MultiReader(bytes.NewReader(randomBytes(6<<20))), 0)
	var he *HelperError
	if !errors.As(err, &he) || he.Kind != "nospace" || !strings.Contains(err.Error(), "too large") || !strings.Contains(err.Error(), "old file is unchanged") {
		t.Errorf("a full disk: %v", err)
	}
	python(t, m, "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (resource.getrlimit(resource.RLIMIT_FSIZE)[1],) * 2); del resource")
	intact("after a full disk")
	user.check(t, m)
}

// TestUploadPastTheDiskQuota: the emulator's disk quota stops an upload
// that outgrows it; the old file stays.
func TestUploadPastTheDiskQuota(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{Limits: localLimits(24 << 20)})
	m := e.machine(t)
	ctx := testCtx(t, 5*time.Minute)
	old := randomBytes(1 << 20)
	if _, err := m.WriteFile(ctx, "keep.bin", bytes.NewReader(old), 0); err != nil {
		t.Fatal(err)
	}
	_, err := m.WriteFile(ctx, "keep.bin", io.MultiReader(bytes.NewReader(randomBytes(48<<20))), 0)
	if err == nil {
		t.Fatal("an upload twice the disk quota succeeded")
	}
	t.Logf("an upload past the quota: %v", err)
	var got bytes.Buffer
	if _, err := m.ReadFile(ctx, "keep.bin", &got); err != nil || !bytes.Equal(got.Bytes(), old) {
		t.Errorf("the old file is not intact (%d bytes, %v)", got.Len(), err)
	}
	noLeftovers(t, m)
}

func TestPathsOutsideTheHome(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 2*time.Minute)
	h := home(t, m)
	run(t, m, "mkdir -p sub && echo inner > sub/f && ln -s /etc etc-link && ln -s ../.. up-link && ln -s sub in-link && ln -s "+h+"/sub abs-in-link")
	for _, p := range []string{"../x", "/etc/passwd", "a/../../x", "/tmp/x", h + "/../x", "etc-link/passwd", "up-link/etc/passwd", "sub/../../x"} {
		_, err := m.WriteFile(ctx, p, strings.NewReader("x"), 0)
		if err == nil || !strings.Contains(err.Error(), "outside") || !strings.Contains(err.Error(), "home") {
			t.Errorf("write %s: %v; want an error saying it is outside the home", p, err)
		}
		_, err = m.ReadFile(ctx, p, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "outside") {
			t.Errorf("read %s: %v; want an error saying it is outside the home", p, err)
		}
		if _, err = m.Stat(ctx, p); err == nil || !strings.Contains(err.Error(), "outside") {
			t.Errorf("stat %s: %v; want an error saying it is outside the home", p, err)
		}
	}
	if err := m.CopyIn(ctx, "/tmp/dest", tarOf(t, tarEntry{name: "f", body: "x"})); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("copy into /tmp/dest: %v", err)
	}
	if err := m.CopyOut(ctx, "/etc", io.Discard); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("copy out /etc: %v", err)
	}
	// Links that stay inside are followed; a link itself is replaced, never
	// written through.
	for _, p := range []string{"in-link/f", "abs-in-link/f", h + "/in-link/../sub/f"} {
		var got bytes.Buffer
		if _, err := m.ReadFile(ctx, p, &got); err != nil || got.String() != "inner\n" {
			t.Errorf("read %s: %q, %v", p, got.String(), err)
		}
	}
	if _, err := m.WriteFile(ctx, "etc-link", strings.NewReader("now a file"), 0); err != nil {
		t.Errorf("replace the link etc-link by a file: %v", err)
	}
	if out := run(t, m, "test -f etc-link && ! test -L etc-link && cat etc-link"); out != "now a file" {
		t.Errorf("etc-link: %q", out)
	}
	// Not found, and not a file.
	if _, err := m.ReadFile(ctx, "nope/nothing", io.Discard); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read a missing file: %v; want fs.ErrNotExist", err)
	}
	if _, err := m.ReadFile(ctx, "sub", io.Discard); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("read a directory: %v", err)
	}
	if _, err := m.WriteFile(ctx, "sub", strings.NewReader("x"), 0); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("write over a directory: %v", err)
	}
	if _, err := m.WriteFile(ctx, "sub/f/x", strings.NewReader("x"), 0); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("write below a file: %v", err)
	}
	for _, p := range []string{"", "a\x00b", strings.Repeat("d/", 300) + "f"} {
		if _, err := m.WriteFile(ctx, p, strings.NewReader("x"), 0); err == nil {
			t.Errorf("write %.20q: no error", p)
		}
	}
	user.check(t, m)
}

func TestStat(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	ctx := testCtx(t, time.Minute)
	h := home(t, m)
	if _, err := m.WriteFile(ctx, "d/f.txt", strings.NewReader("hello"), 0o640); err != nil {
		t.Fatal(err)
	}
	run(t, m, "ln -s f.txt d/l")
	for _, tc := range []struct {
		p, path string
		size    int64
		mode    fs.FileMode
	}{
		{"d/f.txt", h + "/d/f.txt", 5, 0o640},
		{h + "/d/./f.txt", h + "/d/f.txt", 5, 0o640},
		{"d", h + "/d", -1, fs.ModeDir | 0o755},
		{"d/l", h + "/d/l", 5, fs.ModeSymlink | 0o777},
		{".", h, -1, fs.ModeDir},
	} {
		fi, err := m.Stat(ctx, tc.p)
		if err != nil {
			t.Errorf("stat %s: %v", tc.p, err)
			continue
		}
		if fi.Path != tc.path || tc.size >= 0 && fi.Size != tc.size || fi.Mode.Type() != tc.mode.Type() ||
			tc.mode.Perm() != 0 && fi.Mode.Perm() != tc.mode.Perm() || fi.IsDir != tc.mode.IsDir() || time.Since(fi.ModTime) > time.Hour {
			t.Errorf("stat %s: %+v; want %s, size %d, mode %v", tc.p, fi, tc.path, tc.size, tc.mode)
		}
	}
	if _, err := m.Stat(ctx, "d/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat a missing file: %v", err)
	}
}

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarOf(t testing.TB, entries ...tarEntry) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: e.typ, Linkname: e.link, ModTime: time.Now()}
		if e.mode != 0 {
			hdr.Mode = e.mode
		}
		if e.typ == 0 {
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(e.body))
		}
		if e.typ == tar.TypeDir {
			hdr.Mode = 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return &buf
}

// readTar lists a tar stream: file bodies by name, "-> target" for links,
// "/" for directories.
func readTar(t testing.TB, r io.Reader) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			out[hdr.Name] = "/"
		case tar.TypeSymlink:
			out[hdr.Name] = "-> " + hdr.Linkname
		default:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[hdr.Name] = string(b)
		}
	}
}

func TestCopyInAndOut(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 2*time.Minute)
	big := string(randomBytes(5<<20 + 11))
	in := []tarEntry{
		{name: "a/", typ: tar.TypeDir},
		{name: "a/b/c/deep.txt", body: "deep"},
		{name: "a/empty/", typ: tar.TypeDir},
		{name: "a/big.bin", body: big},
		{name: "a/run.sh", body: "#!/bin/sh\necho ran\n", mode: 0o755},
		{name: "a/link", typ: tar.TypeSymlink, link: "b/c/deep.txt"},
		{name: "a/" + strings.Repeat("long-name-", 12) + ".txt", body: "long"},
	}
	if err := m.CopyIn(ctx, "dest/sub", tarOf(t, in...)); err != nil {
		t.Fatal(err)
	}
	if out := run(t, m, "cat dest/sub/a/link; dest/sub/a/run.sh; sha256sum < dest/sub/a/big.bin; test -d dest/sub/a/empty && echo empty"); out != "deep"+"ran\n"+sha([]byte(big))+"  -\nempty\n" {
		t.Errorf("after CopyIn: %q", out)
	}
	// CopyOut names entries from the path's parent.
	var tarBuf bytes.Buffer
	if err := m.CopyOut(ctx, "dest/sub/a", &tarBuf); err != nil {
		t.Fatal(err)
	}
	got := readTar(t, &tarBuf)
	want := map[string]string{
		"a/": "/", "a/b/": "/", "a/b/c/": "/", "a/b/c/deep.txt": "deep", "a/empty/": "/", "a/big.bin": big,
		"a/run.sh": "#!/bin/sh\necho ran\n", "a/link": "-> b/c/deep.txt", "a/" + strings.Repeat("long-name-", 12) + ".txt": "long",
	}
	if len(got) != len(want) {
		t.Errorf("CopyOut gave %d entries, want %d: %v", len(got), len(want), keys(got))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("CopyOut entry %s: %.40q, want %.40q", k, got[k], v)
		}
	}
	// A file alone; then the round trip back in elsewhere.
	tarBuf.Reset()
	if err := m.CopyOut(ctx, "dest/sub/a/b/c/deep.txt", &tarBuf); err != nil {
		t.Fatal(err)
	}
	if got := readTar(t, &tarBuf); len(got) != 1 || got["deep.txt"] != "deep" {
		t.Errorf("CopyOut of a file: %v", got)
	}
	tarBuf.Reset()
	if err := m.CopyOut(ctx, "dest", &tarBuf); err != nil {
		t.Fatal(err)
	}
	if err := m.CopyIn(ctx, "copy", &tarBuf); err != nil {
		t.Fatal(err)
	}
	if out := run(t, m, "diff -r dest copy/dest && echo same"); out != "same\n" {
		t.Errorf("round trip: %q", out)
	}
	if err := m.CopyOut(ctx, "nothing-here", io.Discard); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CopyOut of a missing path: %v", err)
	}
	user.check(t, m)
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestCopyInRefusesEscapes(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	ctx := testCtx(t, 2*time.Minute)
	run(t, m, "mkdir -p pre && ln -s /tmp pre/out")
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		refused bool
	}{
		{"dotdot", []tarEntry{{name: "ok.txt", body: "ok"}, {name: "../escaped.txt", body: "bad"}}, true},
		{"deep-dotdot", []tarEntry{{name: "a/../../escaped.txt", body: "bad"}}, true},
		{"absolute link", []tarEntry{{name: "etc", typ: tar.TypeSymlink, link: "/etc"}, {name: "etc/escaped", body: "bad"}}, true},
		{"climbing link", []tarEntry{{name: "up", typ: tar.TypeSymlink, link: "../.."}, {name: "up/escaped.txt", body: "bad"}}, true},
		{"hard link out", []tarEntry{{name: "hl", typ: tar.TypeLink, link: "../keep.txt"}}, true},
		{"device", []tarEntry{{name: "null", typ: tar.TypeChar}}, true},
		{"through an existing link", []tarEntry{{name: "out/escaped.txt", body: "bad"}}, true},
		{"absolute name", []tarEntry{{name: "/abs.txt", body: "neutralised"}}, false},
	} {
		dir := "pre"
		if tc.name != "through an existing link" {
			dir = "t/" + strings.ReplaceAll(tc.name, " ", "-")
		}
		err := m.CopyIn(ctx, dir, tarOf(t, tc.entries...))
		if tc.refused && (err == nil || !strings.Contains(err.Error(), "refused")) {
			t.Errorf("%s: %v; want the entry refused", tc.name, err)
		}
		if !tc.refused && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// Nothing landed outside; the absolute name landed inside.
	if out := run(t, m, "find / -name escaped.txt -o -name escaped -o -name abs.txt 2>/dev/null | sort"); out != "" && out != "/workspace/t/absolute-name/abs.txt\n" {
		t.Errorf("files of the tars found: %q", out)
	}
	if out := run(t, m, "cat t/absolute-name/abs.txt; cat t/dotdot/ok.txt"); out != "neutralisedok" {
		t.Errorf("extracted: %q", out)
	}
}

func TestConcurrentOperations(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	user := setUserState(t, m)
	ctx := testCtx(t, 5*time.Minute)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randomBytes(3<<20 + i)
			p := fmt.Sprintf("c/%d.bin", i)
			for range 2 {
				if _, err := m.WriteFile(ctx, p, bytes.NewReader(data), 0); err != nil {
					t.Error(err)
					return
				}
				var got bytes.Buffer
				if _, err := m.ReadFile(ctx, p, &got); err != nil || !bytes.Equal(got.Bytes(), data) {
					t.Errorf("%s: read back %d bytes, %v", p, got.Len(), err)
				}
			}
		}()
	}
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stdin := randomBytes(3 << 20)
			res, err := m.Run(ctx, backend.Command{Shell: fmt.Sprintf("sha256sum; echo %d >&2", i), Stdin: bytes.NewReader(stdin)})
			if err != nil || res.Stdout != sha(stdin)+"  -\n" || res.Stderr != fmt.Sprintf("%d\n", i) {
				t.Errorf("command %d: %+v, %v", i, res, err)
			}
		}()
	}
	wg.Wait()
	noLeftovers(t, m)
	user.check(t, m)
}

func TestCancelledDownload(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	ctx := testCtx(t, 2*time.Minute)
	data := randomBytes(16 << 20)
	if _, err := m.WriteFile(ctx, "big.bin", bytes.NewReader(data), 0); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	w := &cancellingWriter{after: 5 << 20, cancel: cancel}
	_, err := m.ReadFile(cctx, "big.bin", w)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled download: %v", err)
	}
	if w.n >= int64(len(data)) {
		t.Errorf("the cancelled download went on to the end")
	}
	// Nothing of it stays open in the machine.
	if got := python(t, m, "len(__import__('sys').modules["+pyQuote(helperModule)+"]._ops)"); got != "0" {
		t.Errorf("%s operations left in the helper", got)
	}
	// A writer that fails stops the download with its error.
	boom := errors.New("disk on fire")
	if _, err := m.ReadFile(ctx, "big.bin", errWriter{boom}); !errors.Is(err, boom) {
		t.Errorf("a failing writer: %v", err)
	}
}

func pyQuote(s string) string { return "'" + s + "'" }

type cancellingWriter struct {
	n      int64
	after  int64
	cancel context.CancelFunc
}

func (w *cancellingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	if w.n >= w.after && w.cancel != nil {
		w.cancel()
		w.cancel = nil
	}
	return len(p), nil
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

// TestHelperSurvivesARestart: when the machine's interpreter restarts (the
// helper with it), the next operation installs the helper again.
func TestHelperSurvivesARestart(t *testing.T) {
	t.Parallel()
	e := startEmulator(t, emulatorOptions{})
	m := e.machine(t)
	ctx := testCtx(t, time.Minute)
	if _, err := m.WriteFile(ctx, "before.txt", strings.NewReader("before"), 0); err != nil {
		t.Fatal(err)
	}
	res, err := m.RunPython(ctx, "import os; os._exit(0)", backend.PythonOptions{})
	t.Logf("the interpreter exits: %+v, %v", res, err)
	if _, err := m.WriteFile(ctx, "after.txt", strings.NewReader("after"), 0); err != nil {
		t.Fatalf("write after a restart: %v", err)
	}
	if out := run(t, m, "cat before.txt after.txt"); out != "beforeafter" {
		t.Errorf("files: %q", out)
	}
	if got := python(t, m, "sorted(k for k in globals() if not k.startswith('__'))"); got != "[]" {
		t.Errorf("the helper left names in the user's globals: %s", got)
	}
}

func localLimits(disk int64) local.Limits { return local.Limits{DiskBytes: disk} }
