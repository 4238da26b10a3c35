//go:build linux

package forevervm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// helperChecks exercises parts of helper.py on the host's Python, outside
// any REPL: the path rules, the instruction protocol, and the tar checks
// used where tarfile has no "data" filter (older Pythons than the
// emulator's).
const helperChecks = `
import io, json, os, sys, tarfile, tempfile
sys.path.insert(0, sys.argv[1])
os.environ["HOME"] = tempfile.mkdtemp()
import helper as h

assert h._home_relative("a/./b/../c") == ["a", "c"]
assert h._home_relative(h.HOME + "/x/y") == ["x", "y"]
assert h._home_relative(h.HOME) == []
for p in ("..", "../x", "a/../../x", "/etc", h.HOME + "/../x", h.HOME + "x"):
    assert h._home_relative(p) is None, p

# One instruction: replies on stdout, tagged; nothing returned.
buf = io.StringIO()
sys.stdout, real = buf, sys.stdout
assert h.call("T0K", "put_begin", json.dumps({"op": "o1", "path": "d/f", "final": True, "bytes": 2, "sha256": "x"}), b"aGk=") is None
assert h.call("T0K", "stat", json.dumps({"path": "../x"})) is None
assert h.call("T0K", "nope", "{}") is None
sys.stdout = real
lines = buf.getvalue().splitlines()
assert [l.split(" ")[:2] for l in lines] == [["T0K", "x"]] * 3, lines
assert json.loads(lines[0].split(" ", 2)[2])["kind"] == "damaged", lines[0]
assert "outside the machine's home" in lines[1], lines[1]
assert not os.path.exists(os.path.join(h.HOME, "d", "f")) and os.listdir(os.path.join(h.HOME, "d")) == [], "a damaged upload left files"
assert h._ops == {}

# The fallback tar checks.
def tar(*members):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as tf:
        for name, kind, link in members:
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = kind, link
            data = b"data" if kind == tarfile.REGTYPE else b""
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    b.seek(0)
    return b

dest = tempfile.mkdtemp()
R, S, L, C = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE
for bad in ([("../x", R, "")], [("a/../../x", R, "")], [("l", S, "/etc")], [("l", S, "../..")],
            [("h", L, "../outside")], [("dev", C, "")], [("ok", S, "."), ("ok/../../x", R, "")]):
    with tarfile.open(fileobj=tar(*bad), mode="r|") as tf:
        try:
            tf.extractall(dest, members=h._checked(tf, dest))
        except tarfile.FilterError:
            pass
        else:
            raise AssertionError("not refused: %r" % (bad,))
assert not os.path.exists(os.path.join(os.path.dirname(dest), "x"))
with tarfile.open(fileobj=tar(("/abs", R, ""), ("d/f", R, ""), ("d/l", S, "f")), mode="r|") as tf:
    tf.extractall(dest, members=h._checked(tf, dest))
assert open(os.path.join(dest, "abs"), "rb").read() == b"data"
assert open(os.path.join(dest, "d", "l"), "rb").read() == b"data"

# An instruction as the Go side writes it, with an awkward path.
sys.modules[sys.argv[3]] = h
buf = io.StringIO()
sys.stdout = buf
assert eval(open(sys.argv[2]).read()) is None
sys.stdout = real
reply = buf.getvalue().split(" ", 2)
assert reply[1] == "r", reply
name = "d/\u00fc \"q\"\n\u2603"
assert json.loads(reply[2])["path"] == h.HOME + "/" + name, reply
assert open(os.path.join(h.HOME, name), "rb").read() == b"hi"
print("ok")
`

func TestHelperOnTheHost(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on this host")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "helper.py"), []byte(helperSource), 0o644); err != nil {
		t.Fatal(err)
	}
	// sha256("hi")
	args := `{"op":"o2","path":"d/\u00fc \"q\"\n☃","final":true,"bytes":2,"sha256":"8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"}`
	code := filepath.Join(dir, "code")
	if err := os.WriteFile(code, []byte(instruction("put_begin", []byte(args), []byte("hi"))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "-W", "ignore", "-c", helperChecks, dir, code, helperModule).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestInstructionShape: every step is one expression that evaluates to
// None, binds no name, and carries its data as a bytes literal.
func TestInstructionShape(t *testing.T) {
	code := instruction("put", []byte(`{"path":"ü/\"q\"\n"}`), []byte("hi"))
	want := "__import__('sys').modules['" + helperModule + "'].call('"
	if !strings.HasPrefix(code, want) || !strings.HasSuffix(code, `, b'aGk=')`) || strings.Contains(code, "\n") {
		t.Errorf("instruction: %s", code)
	}
	if tok := tokenOf(code); len(tok) != 16 || !strings.Contains(code, "'"+tok+"', 'put', ") {
		t.Errorf("token %q of %s", tok, code)
	}
	if !strings.HasPrefix(installCode, "exec(__import__('base64').b64decode(") || strings.Contains(installCode, "\n") {
		t.Errorf("install code: %.100s…", installCode)
	}
}
