# vmcp Python REPL driver. The agent starts it inside the sandbox as
#   python3 -I -c <this file>
# and talks to it over fd 3 (requests in) and fd 4 (results out), one JSON
# object per line. sys.stdout and sys.stderr send what the code writes to fd
# 5 as records, so the two streams keep their order; output that bypasses
# them (subprocesses, C code) goes to fd 1 and 2, which the agent reads too,
# byte for byte. After each instruction the driver writes an end marker to
# all three, so the agent knows that all output came before the result.
#
# A record on fd 5 is a tag byte, data without a newline, and a newline:
#   "1" / "2"  stdout / stderr bytes that end a line: the newline is theirs;
#   "3" / "4"  stdout / stderr bytes that do not: the newline only ends the
#              record (a piece of a long line, or a partial line flushed);
#   "\x00"     the end marker, "\x00vmcp-end-<call>".
# Every byte the code writes arrives, in order: a line is cut into records
# of at most PIECE bytes, and bytes written to sys.stdout.buffer are sent as
# they are. A record always ends with its newline, so garbage that user
# code writes to fd 5 spoils at most its own records.
#
# User code runs in this process and can write to fd 4 or forge a marker; it
# cannot make a result or an end land on another instruction: every request
# carries a fresh random "call" that its result and markers repeat, and the
# agent ignores whatever does not carry the current one. Fds 3-5 are closed
# to the processes user code starts, and the interpreter is not dumpable, so
# no other process of the machine can reach them through /proc.
import _thread
import ast
import base64
import io
import json
import linecache
import os
import select
import signal
import sys
import time
import traceback
import warnings

DRIVER_FILENAME = sys._getframe().f_code.co_filename  # "<string>" under -c


def _user_site():
    # -I leaves out the user's site directory, where pip installs in a
    # machine (the system's is read-only): put it back where site would,
    # before the system's packages, made now so that what pip installs
    # later is found without a restart.
    import site
    try:
        path = site.getusersitepackages()
        os.makedirs(path, exist_ok=True)
    except OSError:
        return
    if path not in sys.path:
        at = next((i for i, p in enumerate(sys.path) if p.endswith(("dist-packages", "site-packages"))), len(sys.path))
        sys.path.insert(at, path)
    site.addsitedir(path)  # its .pth files


_user_site()
MARKER = "\x00vmcp-end-%s\n"  # also a record of fd 5: its tag is the NUL

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
PIECE = 32 * 1024  # most data bytes in one record
PUSH = 256 * 1024  # records gathered in one write before they go out
MAIN = _thread.get_ident()
os.set_blocking(CHUNKS, False)
running = False


class Channel:
    """The records to the agent on fd 5, shared by stdout and stderr.

    Writes come from any thread, and from signal handlers that run in the
    middle of a write: one lock orders them, and a handler's write waits for
    the one it interrupted. The fd is non-blocking so that the wait for room
    in the pipe is the only place where SIGINT raises KeyboardInterrupt in
    a write: anywhere else it would cut a record or lose the count of bytes
    written, so it is deferred to the end of the write."""

    def __init__(self):
        self.lock = _thread.RLock()
        self.pending = bytearray()  # records not yet written
        self.owner = None  # the thread inside a write
        self.waiting = False  # the owner waits for room in the pipe
        self.deferred = False  # a SIGINT came while the main thread wrote
        self.nested = []  # writes of signal handlers, to do after the current one
        self.poller = select.poll()
        self.poller.register(CHUNKS, select.POLLOUT)

    def write(self, fn, *args):
        """Runs fn(*args), which adds records to pending, and sends them."""
        me = _thread.get_ident()
        with self.lock:  # an interrupt in the wait for it changes nothing
            if self.owner == me:
                self.nested.append((fn, args))
                return
            self.owner = me
            try:
                fn(*args)
                while self.nested:
                    nested_fn, nested_args = self.nested.pop(0)
                    nested_fn(*nested_args)
                self.push()
            finally:
                self.waiting = False
                self.owner = None
        if self.deferred and me == MAIN:
            self.deferred = False
            if running:
                raise KeyboardInterrupt

    def push(self):
        """Writes the pending records out (the owner only)."""
        while self.pending:
            try:
                n = os.write(CHUNKS, self.pending)
            except BlockingIOError:
                n = 0
            del self.pending[:n]
            if n == 0:
                self.waiting = True
                self.poller.poll()
                self.waiting = False

    def add_record(self, record):
        self.pending += record

    def after_fork(self):
        # A child forked by user code starts with a free channel; what was
        # pending, and the partial lines, are the parent's to send.
        self.lock = _thread.RLock()
        self.pending = bytearray()
        self.owner, self.waiting, self.deferred, self.nested = None, False, False, []
        for w in (STDOUT, STDERR):
            w.partial = bytearray()


channel = Channel()
os.register_at_fork(after_in_child=channel.after_fork)


class LineWriter(io.TextIOBase):
    """sys.stdout or sys.stderr: what is written goes to the agent, as
    records, each complete line at once."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, fd, line_tag, piece_tag):
        self.fd, self.line_tag, self.piece_tag = fd, line_tag, piece_tag
        self.partial = bytearray()  # the start of a line, sent with its end
        self.buffer = BinaryWriter(self)

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self.fd

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        channel.write(self._add, s.encode("utf-8", "backslashreplace"))
        return len(s)

    def write_bytes(self, b):
        channel.write(self._add, b)

    def flush(self):
        # A partial line goes out now (print(x, end="", flush=True)).
        channel.write(self._flush)

    def _flush(self):
        if self.partial:
            channel.pending += self.piece_tag + self.partial + b"\n"
            self.partial.clear()

    def _add(self, b):
        # Every step handles at most PIECE bytes: a long line costs no more
        # than short ones, and no record is longer.
        pending, partial = channel.pending, self.partial
        n, pos = len(b), 0
        while pos < n:
            end = min(n, pos + PIECE - len(partial))
            i = b.find(b"\n", pos, end)
            if i >= 0:
                pending += self.line_tag + partial + b[pos:i] + b"\n"
                partial.clear()
                pos = i + 1
            else:
                partial += b[pos:end]
                pos = end
                if len(partial) >= PIECE:
                    pending += self.piece_tag + partial + b"\n"
                    partial.clear()
            if len(pending) >= PUSH:
                channel.push()


class BinaryWriter(io.RawIOBase):
    """sys.stdout.buffer: bytes go out as they are."""

    def __init__(self, text):
        self.text = text

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self.text.fd

    def write(self, b):
        data = b if isinstance(b, bytes) else memoryview(b).tobytes()
        self.text.write_bytes(data)
        return len(data)

    def flush(self):
        self.text.flush()


def write_fd(fd, data):
    """Writes data to fd 1 or 2, which user code may have closed or made
    non-blocking: then the agent waits for the marker a short while."""
    deadline = time.monotonic() + 5
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            select.select([], [fd], [], 1)
        except OSError:
            return


STDOUT = LineWriter(1, b"1", b"3")
STDERR = LineWriter(2, b"2", b"4")
sys.stdin = open(os.devnull)
sys.stdout = sys.__stdout__ = STDOUT
sys.stderr = sys.__stderr__ = STDERR
sys.argv = [""]
sys.path.insert(0, "")

# Plots are collected after each instruction; show() has nothing to show.
warnings.filterwarnings("ignore", message=".*non-GUI backend.*")


def on_sigint(signum, frame):
    # The agent sends SIGINT to interrupt or time out an instruction; between
    # instructions it must not break the driver loop. It repeats it until the
    # instruction ends, so a deferred one is not lost.
    if not running:
        return
    if channel.owner == _thread.get_ident():
        if not channel.waiting:
            channel.deferred = True
            return
        channel.waiting = False
    channel.deferred = False
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
            return clip(repr(value))
    return None


def preload(names):
    """Imports modules ahead of use, into sys.modules only: the user's
    globals and cell numbers stay as a fresh interpreter's. Returns the
    failures, one per line, or None."""
    import importlib

    # Caches that imports build through subprocesses (matplotlib runs
    # fc-list, which writes ~/.cache/fontconfig) go to /tmp: the workspace
    # stays as empty as a fresh machine's.
    cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = "/tmp/.cache"
    failed = []
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - a missing library is reported, not fatal
                failed.append("%s: %s" % (name, exc))
    finally:
        if cache is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = cache
    # The paths of an instruction, taken once outside the user's globals,
    # so that the first one is as quick as the next.
    scratch = {"__builtins__": __builtins__}
    tree = ast.parse("x = 0\nx", "<warm>", "exec")
    last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<warm>", "exec"), scratch)
    repr(eval(compile(last, "<warm>", "eval"), scratch))
    figures()
    return "\n".join(failed) or None


# A checkpoint of the user's globals lives in the machine's home, so that
# it counts in the machine's disk quota, goes into its snapshots, and is
# never read outside the sandbox. Only this interpreter writes and reads it.
CHECKPOINT = os.path.join(os.path.expanduser("~"), ".vmcp", "python-state.dill")


def unsaveable(value):
    """Why a value cannot outlive its interpreter, or None."""
    import socket
    import threading
    import types

    if isinstance(value, io.IOBase):
        return "an open file: open it again"
    if isinstance(value, socket.socket):
        return "a socket: connect again"
    if isinstance(value, threading.Thread):
        return "a thread: start it again"
    if isinstance(value, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
        return "a generator or coroutine: its progress cannot be saved"
    if isinstance(value, types.FrameType):
        return "a stack frame"
    return None


def approx_size(value):
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)
    if callable(usage):
        try:
            total = usage(deep=True)
            return int(getattr(total, "sum", lambda: total)())
        except Exception:  # noqa: BLE001 - an estimate only
            pass
    return sys.getsizeof(value)


CHECKPOINT_MAGIC = b"vmcp-python-state-1\n"


def save_checkpoint(limit):
    """Saves the user's globals to CHECKPOINT; returns a JSON summary: the
    names saved, those left out with the reason, the size.

    Each variable is pickled on its own: with the standard pickle (fast, C)
    where it can, else with dill, which saves functions, classes and
    lambdas defined in the REPL by value and modules by name. Variables
    that share an object get a copy each."""
    import pickle
    import types

    try:
        import dill
    except ImportError:  # only what the standard pickle takes, then
        dill = None
    skipped = {}
    names = []
    sizes = {}
    os.makedirs(os.path.dirname(CHECKPOINT), exist_ok=True)
    tmp = CHECKPOINT + ".tmp"
    # The machine's own processes may have put anything at these names (a
    # FIFO, a link): the file is made anew, never opened through one.
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(CHECKPOINT_MAGIC)
        for name, value in list(user_globals.items()):
            if name.startswith("__") and name.endswith("__"):
                continue
            why = unsaveable(value)
            if why:
                skipped[name] = why
                continue
            start = f.tell()
            saved = False
            ways = [(b"p", lambda v: pickle.dump(v, f, protocol=5))]
            if isinstance(value, types.ModuleType):
                ways = [(b"m", lambda v: pickle.dump(v.__name__, f))]  # imported again by name
            elif dill is not None:
                ways.append((b"d", lambda v: dill.dump(v, f, recurse=True)))
            why = "cannot be saved"
            for kind, dump in ways:
                f.seek(start)
                f.truncate()
                try:
                    pickle.dump(name, f)
                    f.write(kind)
                    dump(value)
                    saved = True
                    break
                except Exception as exc:  # noqa: BLE001 - the next way, or the reason
                    why = "cannot be saved (%s: %s)" % (type(exc).__name__, str(exc)[:200])
            if not saved:
                f.seek(start)
                f.truncate()
                if dill is None:
                    why += "; functions and classes defined here need dill (pip install dill)"
                skipped[name] = why
                continue
            names.append(name)
            sizes[name] = f.tell() - start
            if limit and f.tell() > limit:
                break
        size = f.tell()
    if limit and size > limit:
        os.remove(tmp)
        largest = sorted(sizes, key=sizes.get, reverse=True)[:5]
        raise MemoryError(
            "the variables take more than this machine may keep saved (%d MiB); the largest: %s"
            % (limit >> 20, ", ".join("%s (about %d MiB)" % (n, max(sizes[n], approx_size(user_globals.get(n))) >> 20) for n in largest))
        )
    os.replace(tmp, CHECKPOINT)
    return json.dumps({"names": sorted(names), "skipped": skipped, "bytes": size})


def rebind(value):
    """A function or class that dill saved by value got globals of its
    own: it gets the user's again, so that it sees their later changes."""
    import types

    def rebound(fn):
        if not isinstance(fn, types.FunctionType) or fn.__module__ != "__main__" or fn.__globals__ is user_globals:
            return fn
        new = types.FunctionType(fn.__code__, user_globals, fn.__name__, fn.__defaults__, fn.__closure__)
        new.__kwdefaults__, new.__qualname__, new.__doc__ = fn.__kwdefaults__, fn.__qualname__, fn.__doc__
        new.__annotations__, new.__module__ = fn.__annotations__, fn.__module__
        new.__dict__.update(fn.__dict__)
        return new

    if isinstance(value, type) and value.__module__ == "__main__":
        for attr, member in list(vars(value).items()):
            if isinstance(member, types.FunctionType):
                setattr(value, attr, rebound(member))
        return value
    return rebound(value)


def restore_checkpoint():
    """Loads CHECKPOINT into the user's globals and removes it; returns the
    names restored, as JSON."""
    import importlib
    import pickle

    restored = []
    import stat

    fd = os.open(CHECKPOINT, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("%s is not a regular file" % CHECKPOINT)
    os.set_blocking(fd, True)
    with open(fd, "rb") as f:
        if f.read(len(CHECKPOINT_MAGIC)) != CHECKPOINT_MAGIC:
            raise ValueError("%s is not a checkpoint of this version" % CHECKPOINT)
        while True:
            try:
                name = pickle.load(f)
            except EOFError:
                break
            kind = f.read(1)
            if kind == b"p":
                value = pickle.load(f)
            elif kind == b"m":
                value = importlib.import_module(pickle.load(f))
            else:
                import dill

                value = rebind(dill.load(f))
            user_globals[name] = value
            restored.append(name)
    os.remove(CHECKPOINT)
    return json.dumps(restored)


# MAX_TEXT bounds a value or an error: it crosses to the host whole.
MAX_TEXT = 16 << 20


def clip(s):
    if len(s) <= MAX_TEXT:
        return s
    half = MAX_TEXT // 2
    return "%s\n[... %d characters omitted ...]\n%s" % (s[:half], len(s) - 2 * half, s[-half:])


def format_error(exc):
    # Drop the driver's own frames: the traceback starts in user code.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == DRIVER_FILENAME:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        tb = None
    return clip("".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n"))


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
    channel.deferred = False
    running = True
    try:
        if request.get("warm"):
            value = preload(request.get("imports") or [])
        elif request.get("checkpoint") == "save":
            value = save_checkpoint(request.get("state_max") or 0)
        elif request.get("checkpoint") == "restore":
            value = restore_checkpoint()
        elif request.get("checkpoint") == "discard":
            if os.path.exists(CHECKPOINT):
                os.remove(CHECKPOINT)
            value = None
        else:
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
    # Streams the code put in their place (wrappers of ours, perhaps) first,
    # then ours: a partial line goes out before the marker.
    for stream in (sys.stdout, sys.stderr, STDOUT, STDERR):
        try:
            stream.flush()
        except Exception:
            pass
    marker = (MARKER % request["call"]).encode()
    write_fd(1, marker)
    write_fd(2, marker)
    try:
        channel.write(channel.add_record, marker)
    except OSError:  # user code closed fd 5
        pass
    results.write(json.dumps(result) + "\n")
    results.flush()
