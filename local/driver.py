# vmcp Python REPL driver. The agent starts it inside the sandbox as
#   python3 -I -c <this file>
# and talks to it over fd 3 (requests in) and fd 4 (results out), one JSON
# object per line. sys.stdout and sys.stderr write whole lines, tagged "1" or
# "2", to fd 5, so the two streams keep their order. Output that bypasses them
# (subprocesses, C code) goes to fd 1 and 2, which the agent reads too. After
# each instruction the driver writes an end marker to all three, so the agent
# knows that all output came before the result.
#
# User code runs in this process and can write to fd 4 or forge a marker; it
# cannot make a result or an end land on another instruction: every request
# carries a fresh random "call" that its result and markers repeat, and the
# agent ignores whatever does not carry the current one. Fds 3-5 are closed
# to the processes user code starts, and the interpreter is not dumpable, so
# no other process of the machine can reach them through /proc.
import ast
import base64
import io
import json
import linecache
import os
import signal
import sys
import time
import traceback
import warnings

DRIVER_FILENAME = sys._getframe().f_code.co_filename  # "<string>" under -c
MARKER = "\x00vmcp-end-%s\n"

for fd in (3, 4, 5):
    os.set_inheritable(fd, False)
try:
    import ctypes

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE: 0
    del ctypes
except Exception:  # noqa: BLE001 - a libc without prctl: the fds stay unreachable by inheritance
    pass

requests = os.fdopen(3, "r", encoding="utf-8", newline="\n")
results = os.fdopen(4, "w", encoding="utf-8")
CHUNKS = 5
MAX_LINE = 64 * 1024


class LineWriter(io.TextIOBase):
    """A text stream that sends each complete line to the agent at once."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, tag, fd):
        self.tag, self.fd, self.partial = tag, fd, ""
        self.buffer = BinaryLineWriter(self)

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self.fd

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        *lines, self.partial = (self.partial + s).split("\n")
        for line in lines:
            self.emit(line)
        if len(self.partial) >= MAX_LINE:
            self.emit(self.partial)
            self.partial = ""
        return len(s)

    def finish(self):
        # A partial line (print(x, end="")) goes out when the instruction ends.
        if self.partial:
            self.emit(self.partial)
            self.partial = ""

    def emit(self, line):
        os.write(CHUNKS, (self.tag + line + "\n").encode("utf-8", "backslashreplace"))


class BinaryLineWriter(io.RawIOBase):
    """sys.stdout.buffer: bytes written are decoded and sent as text."""

    def __init__(self, text):
        self.text = text

    def writable(self):
        return True

    def write(self, b):
        self.text.write(bytes(b).decode("utf-8", "backslashreplace"))
        return len(b)


sys.stdin = open(os.devnull)
sys.stdout = sys.__stdout__ = LineWriter("1", 1)
sys.stderr = sys.__stderr__ = LineWriter("2", 2)
sys.argv = [""]
sys.path.insert(0, "")

# Plots are collected after each instruction; show() has nothing to show.
warnings.filterwarnings("ignore", message=".*non-GUI backend.*")

running = False


def on_sigint(signum, frame):
    # The agent sends SIGINT to interrupt or time out an instruction; between
    # instructions it must not break the driver loop.
    if running:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_sigint)

user_globals = {"__name__": "__main__", "__builtins__": __builtins__}
cell = 0


def run(code):
    """Runs code in user_globals; returns the repr of the last expression or None."""
    global cell
    cell += 1
    filename = "<cell-%d>" % cell
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), user_globals)
    if last is not None:
        value = eval(compile(last, filename, "eval"), user_globals)
        if value is not None:
            user_globals["_"] = value
            return repr(value)
    return None


def format_error(exc):
    # Drop the driver's own frames: the traceback starts in user code.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == DRIVER_FILENAME:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        tb = None
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n")


def figures():
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    images = []
    try:
        for num in pyplot.get_fignums():
            buf = io.BytesIO()
            pyplot.figure(num).savefig(buf, format="png", bbox_inches="tight")
            images.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    finally:
        pyplot.close("all")
    return images


for line in requests:
    request = json.loads(line)
    result = {"call": request["call"]}
    start = time.monotonic()
    running = True
    try:
        value = run(request["code"])
        running = False
        if value is not None:
            result["value"] = value
    except BaseException as exc:  # noqa: B902 - everything user code raises is reported
        running = False
        if isinstance(exc, KeyboardInterrupt):
            result["error"] = "KeyboardInterrupt"
            result["interrupted"] = True
        elif isinstance(exc, SystemExit):
            result["error"] = "SystemExit: %s (the interpreter keeps running; use os._exit to stop it)" % (exc.code,)
        else:
            result["error"] = format_error(exc)
    running = False
    try:
        images = figures()
    except Exception as exc:  # a broken figure must not lose the result
        images = []
        result.setdefault("error", "could not render a matplotlib figure: %r" % (exc,))
    if images:
        result["png"] = images
    result["runtime_ms"] = int((time.monotonic() - start) * 1000)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            if isinstance(stream, LineWriter):
                stream.finish()
        except Exception:
            pass
    marker = (MARKER % request["call"]).encode()
    for fd in (1, 2, CHUNKS):
        os.write(fd, marker)
    results.write(json.dumps(result) + "\n")
    results.flush()
