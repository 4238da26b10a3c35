# vmcp's helper for ForeverVM machines: files and commands built on the REPL.
#
# The Go backend (helper.go) installs this source once per interpreter as a
# module in sys.modules, never as names in the user's globals, under a name
# that carries a hash of this source. Every instruction is then one
# expression that evaluates to None (so the REPL echoes nothing and `_`
# keeps its value):
#
#     __import__('sys').modules['_vmcp_<hash>'].call(TOKEN, OP, ARGS, DATA)
#
# ARGS is a JSON object and DATA base64. Replies are stdout lines
# "TOKEN KIND PAYLOAD", TOKEN being fresh for each instruction, so that the
# lines that user threads print meanwhile are told apart and ignored:
#
#     r JSON               the result (last line)
#     x JSON               a failure: {"error": text, "kind": word}
#     d OFFSET B64         file or tar bytes at OFFSET of the stream
#     o STREAM OFFSET B64  command output (STREAM 1 or 2) at OFFSET
#
# Lines stay well under 64 KiB (48 KiB of base64): the service's frames are
# bounded. Operations that take several instructions (an upload in chunks,
# a download, a command fed with stdin) keep their state here, keyed by an
# id chosen by the caller, so that concurrent operations cannot mix.
# Whatever ends an instruction (an error, an interrupt, its timeout), the
# operation is undone in `finally`: a temporary file is removed, a command's
# processes are killed.

import base64
import binascii
import errno
import hashlib
import itertools
import json
import linecache
import os
import posixpath
import select
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time

LINE = 36 * 1024  # raw bytes per output line: 48 KiB of base64
IDLE = 600.0  # seconds after which an operation nobody continues is undone
GRACE = 0.25  # seconds a command's output is still read after it exited
MAX_LINKS = 40  # symbolic links followed in one path
MARKER = "VMCP_COMMAND"  # environment variable that tags a command's processes

# The machine's home: relative paths start there and no file operation
# leaves it.
HOME = os.path.abspath(os.path.expanduser("~"))
if not os.path.isdir(HOME):
    HOME = os.getcwd()
REAL_HOME = os.path.realpath(HOME)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | _O_CLOEXEC
_NOSPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

_ops = {}  # operation id -> _Upload, _Reader, _Extract or _Command
_lock = threading.Lock()


class Fail(Exception):
    """A failure reported to the caller with its text and a kind word."""

    def __init__(self, text, kind="error"):
        Exception.__init__(self, text)
        self.kind = kind


# ---- the instruction entry point ----


def call(token, name, args, data=b""):
    """Runs operation name; replies on stdout, returns None."""
    _forget_source()
    out = _Out(token)
    try:
        fn = _OPS.get(name)
        if fn is None:
            raise Fail("unknown helper operation %r" % (name,))
        res = fn(out, json.loads(args), _b64(data))
        out.emit("r", json.dumps(res))
    except Fail as e:
        out.emit("x", json.dumps({"error": str(e), "kind": e.kind}))
    except OSError as e:
        out.emit("x", json.dumps({"error": _os_text(e), "kind": _os_kind(e)}))
    except Exception as e:  # noqa: BLE001 - reported to the caller, not raised into the REPL
        out.emit("x", json.dumps({"error": "vmcp's helper failed: %s: %s" % (type(e).__name__, e), "kind": "error"}))
    finally:
        try:
            _expire()
        except Exception:  # noqa: BLE001 - a stale operation that cannot be undone is dropped
            pass
    return None


class _Out:
    """Writes reply lines tagged with the instruction's token."""

    def __init__(self, token):
        self.token = token
        self.sent = 0  # bytes of data lines this instruction

    def emit(self, kind, payload):
        w = sys.stdout
        w.write("%s %s %s\n" % (self.token, kind, payload))
        w.flush()

    def data(self, prefix, offset, b):
        self.sent += len(b)
        self.emit(prefix, "%d %s" % (offset, base64.b64encode(b).decode("ascii")))


def _b64(s):
    if not s:
        return b""
    try:
        # Not validated: the sha256 of the whole is checked at the end.
        return binascii.a2b_base64(s)
    except binascii.Error as e:
        raise Fail("corrupt data in the instruction: %s" % e)


_PREFIXES = ("__import__('sys').modules['_vmcp_", "exec(__import__('base64').b64decode(")


def _forget_source():
    # A REPL may keep every instruction's source for its tracebacks
    # (linecache); ours carry file data, which must not pile up.
    c = linecache.cache
    try:
        keys = list(itertools.islice(reversed(c.keys()), 6))
    except (TypeError, RuntimeError):
        return
    for k in keys:
        try:
            first = c[k][2][0]
        except Exception:
            continue
        if isinstance(first, str) and first.startswith(_PREFIXES) and "_vmcp" in first:
            c.pop(k, None)


def _expire():
    now = time.monotonic()
    with _lock:
        stale = [k for k, op in _ops.items() if not op.busy and now - op.touched > IDLE]
    for k in stale:
        op = _take(k)
        if op is not None:
            op.abort()


def _take(opid):
    with _lock:
        return _ops.pop(opid, None)


def _get(opid, cls):
    with _lock:
        op = _ops.get(opid)
    if not isinstance(op, cls):
        raise Fail(
            "operation %s is not known to the machine: its interpreter restarted (or the operation "
            "was abandoned) since it began; start it again" % opid,
            "lost",
        )
    return op


def _put(opid, op):
    with _lock:
        if opid in _ops:
            raise Fail("operation %s exists already" % opid)
        _ops[opid] = op


class _Op:
    busy = False  # an instruction is working on it

    def __init__(self, opid):
        self.opid = opid
        self.touched = time.monotonic()

    def abort(self):
        pass


class _Shield:
    """Holds off SIGINT (interrupts, timeouts) while an operation undoes
    itself, so that a repeated interrupt cannot leave it half undone."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            try:
                self.old = signal.signal(signal.SIGINT, lambda *a: None)
            except (ValueError, OSError, TypeError):
                self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def _undo(opid):
    with _Shield():
        op = _take(opid)
        if op is not None:
            op.abort()


# ---- paths ----


def _q(p):
    return json.dumps(p)


def _outside(p):
    return Fail(
        "path %s is outside the machine's home %s; use a path inside it (relative paths start there)" % (_q(p), HOME),
        "outside",
    )


def _parts(p):
    """The names of machine path p from home, lexically; refuses paths that leave it."""
    if not isinstance(p, str) or p == "":
        raise Fail("empty path: give a path inside the machine's home %s" % HOME, "path")
    if "\x00" in p:
        raise Fail("path %s contains a NUL byte" % _q(p), "path")
    rel = _home_relative(p)
    if rel is None:
        raise _outside(p)
    return rel


def _home_relative(p):
    n = posixpath.normpath(p)
    if n.startswith("/"):
        n = "/" + n.lstrip("/")
        for h in (HOME, REAL_HOME):
            if n == h:
                return []
            base = h.rstrip("/") + "/"
            if n.startswith(base):
                return [x for x in n[len(base):].split("/") if x]
        return None
    if n == ".":
        return []
    if n == ".." or n.startswith("../"):
        return None
    return [x for x in n.split("/") if x]


def _shown(parts):
    return posixpath.join(HOME, *parts) if parts else HOME


def _home_fd():
    return os.open(HOME, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)


def _canon(p, parts, follow_last):
    """Resolves the symbolic links on the way to parts (and in the last one
    with follow_last), refusing those that lead out of home. The result names
    real directories from home; names after a missing one stay as given."""
    todo = list(reversed(parts))
    out = []
    hops = 0
    missing = False
    home = _home_fd()
    try:
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if not out:
                    raise Fail("path %s goes through a symbolic link that leads outside the machine's home %s; refused" % (_q(p), HOME), "outside")
                out.pop()
                continue
            if missing or (not todo and not follow_last):
                out.append(name)
                continue
            rel = "/".join(out + [name])
            try:
                st = os.stat(rel, dir_fd=home, follow_symlinks=False)
            except FileNotFoundError:
                missing = True
                out.append(name)
                continue
            if not stat.S_ISLNK(st.st_mode):
                out.append(name)
                continue
            hops += 1
            if hops > MAX_LINKS:
                raise Fail("path %s: too many levels of symbolic links" % _q(p), "path")
            target = os.readlink(rel, dir_fd=home)
            if target.startswith("/"):
                t = _home_relative(target)
                if t is None:
                    raise Fail("path %s goes through a symbolic link that leads outside the machine's home %s; refused" % (_q(p), HOME), "outside")
                out = []
                todo.extend(reversed(t))
            else:
                todo.extend(reversed(target.split("/")))
    finally:
        os.close(home)
    return out


def _open_dir(p, names, create):
    """Opens the directory names (real names from home, see _canon) without
    following links, making the missing ones with create."""
    fd = _home_fd()
    try:
        for name in names:
            try:
                nfd = os.open(name, _O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise Fail("path %s: no such file or directory" % _q(p), "notfound")
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(name, _O_DIR, dir_fd=fd)
            except NotADirectoryError:
                raise Fail("path %s: %s is a file, not a directory" % (_q(p), name), "path")
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise Fail("path %s changed while it was being used (%s became a symbolic link); refused" % (_q(p), name), "path")
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _free(fd):
    try:
        st = os.fstatvfs(fd)
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1


def _mib(n):
    return "%d MiB" % (n >> 20) if n >= 1 << 20 else "%d bytes" % n


# ---- WriteFile: an upload in chunks ----


class _Upload(_Op):
    """A file written under a temporary name in its directory, renamed over
    the target once whole and checked: it appears whole or not at all."""

    def __init__(self, opid, p, names, shown, mode, size):
        _Op.__init__(self, opid)
        self.p, self.shown, self.mode = p, shown, mode
        self.name = names[-1]
        self.tmp = ".vmcp-upload-" + opid
        self.fd = -1
        self.dir = _open_dir(p, names[:-1], True)
        try:
            try:
                st = os.stat(self.name, dir_fd=self.dir, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise Fail("path %s is a directory; give a file path" % _q(p), "path")
            except FileNotFoundError:
                pass
            free = _free(self.dir)
            if size >= 0 and free >= 0 and size > free:
                raise Fail(
                    "%s does not fit: it is %s and the machine has %s free there; delete files in the machine to make room (the old file is unchanged)"
                    % (shown, _mib(size), _mib(free)),
                    "nospace",
                )
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, 0o600, dir_fd=self.dir)
        except BaseException:
            os.close(self.dir)
            raise
        self.h = hashlib.sha256()
        self.n = 0  # bytes written
        self.hashed = 0  # bytes hashed: those before the first gap
        self.later = {}  # chunks written after a gap, by offset, to hash

    def write(self, offset, b):
        # Chunks may come out of order (the caller sends the next one before
        # the last one's answer); each goes to its place, and the hash takes
        # them in order.
        mv = memoryview(b)
        at = offset
        try:
            while mv:
                k = os.pwrite(self.fd, mv, at)
                mv, at = mv[k:], at + k
        except OSError as e:
            if e.errno == errno.EFBIG:
                raise Fail(
                    "the machine refuses a file this large: %s stopped after %s (%s: its limit on file size or disk quota); "
                    "the old file is unchanged; delete files in the machine to make room, or upload less" % (self.shown, _mib(at), os.strerror(e.errno)),
                    "nospace",
                )
            if e.errno in _NOSPACE:
                raise Fail(
                    "the machine's disk is full: %s stopped after %s (%s free there, %s); the old file is unchanged; delete files in the machine to make room"
                    % (self.shown, _mib(at), _mib(max(_free(self.dir), 0)), os.strerror(e.errno)),
                    "nospace",
                )
            raise
        self.n += len(b)
        if offset != self.hashed:
            self.later[offset] = b
            return
        self.h.update(b)
        self.hashed += len(b)
        while self.hashed in self.later:
            c = self.later.pop(self.hashed)
            self.h.update(c)
            self.hashed += len(c)

    def commit(self, sha, n):
        if self.later or n != self.n or self.hashed != n or sha != self.h.hexdigest():
            raise Fail(
                "upload of %s arrived damaged (%d bytes, sha256 %s; sent %d bytes, sha256 %s); nothing was written"
                % (self.shown, self.n, self.h.hexdigest(), n, sha),
                "damaged",
            )
        os.fchmod(self.fd, self.mode)
        fd, self.fd = self.fd, -1
        os.close(fd)
        os.rename(self.tmp, self.name, src_dir_fd=self.dir, dst_dir_fd=self.dir)
        os.close(self.dir)
        self.dir = -1

    def abort(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dir >= 0:
            try:
                os.unlink(self.tmp, dir_fd=self.dir)
            except OSError:
                pass
            os.close(self.dir)
            self.dir = -1


def op_put_begin(out, a, data):
    p = a["path"]
    parts = _parts(p)
    if not parts:
        raise Fail("path %s is the machine's home directory itself; give a file path" % _q(p), "path")
    names = _canon(p, parts, False)
    if not names:
        raise Fail("path %s is the machine's home directory itself; give a file path" % _q(p), "path")
    up = _Upload(a["op"], p, names, _shown(parts), a.get("mode", 0o644), a.get("size", -1))
    _put(a["op"], up)
    return _put_more(up, a, data)


def op_put(out, a, data):
    return _put_more(_get(a["op"], _Upload), a, data)


def _put_more(up, a, data):
    up.busy = True
    ok = False
    try:
        if data:
            up.write(a.get("offset", 0), data)
        res = {"path": up.shown, "bytes": up.n}
        if a.get("final"):
            up.commit(a["sha256"], a["bytes"])
            _take(up.opid)
            res["sha256"] = up.h.hexdigest()
        ok = True
        return res
    finally:
        up.busy = False
        up.touched = time.monotonic()
        if not ok:
            _undo(up.opid)


def op_abort(out, a, data):
    """Undoes an operation; for an upload whose state is gone (the
    interpreter restarted), removes its temporary file by name."""
    opid = a["op"]
    op = _take(opid)
    if op is not None:
        with _Shield():
            op.abort()
        return {"aborted": True}
    p = a.get("path")
    if p:
        try:
            names = _canon(p, _parts(p), False)
            if names:
                fd = _open_dir(p, names[:-1], False)
                try:
                    os.unlink(".vmcp-upload-" + opid, dir_fd=fd)
                finally:
                    os.close(fd)
        except (Fail, OSError):
            pass
    return {"aborted": False}


# ---- ReadFile and CopyOut: streams sent in instructions of bounded size ----


class _Reader(_Op):
    """A byte stream (a file, or a tar of a tree) sent out a budget of bytes
    per instruction."""

    def __init__(self, opid, gen):
        _Op.__init__(self, opid)
        self.gen = gen
        self.buf = bytearray()
        self.h = hashlib.sha256()
        self.n = 0
        self.eof = False

    def pump(self, out, budget):
        self.busy = True
        ok = False
        try:
            start = self.n
            while self.n - start < budget:
                while len(self.buf) < LINE and not self.eof:
                    try:
                        self.buf += next(self.gen)
                    except StopIteration:
                        self.eof = True
                if not self.buf:
                    break
                b = bytes(self.buf[:LINE])
                del self.buf[:LINE]
                out.data("d", self.n, b)
                self.h.update(b)
                self.n += len(b)
            res = {"bytes": self.n, "eof": self.eof and not self.buf}
            if res["eof"]:
                res["sha256"] = self.h.hexdigest()
                _take(self.opid)
                self.gen.close()
            ok = True
            return res
        finally:
            self.busy = False
            self.touched = time.monotonic()
            if not ok:
                _undo(self.opid)

    def abort(self):
        try:
            self.gen.close()
        except Exception:
            pass


def _file_chunks(fd):
    try:
        while True:
            b = os.read(fd, LINE)
            if not b:
                return
            yield b
    finally:
        os.close(fd)


def op_get_begin(out, a, data):
    p = a["path"]
    parts = _parts(p)
    names = _canon(p, parts, True)
    if not names:
        raise Fail("path %s is a directory, not a regular file (use CopyOut for directories)" % _q(p), "path")
    d = _open_dir(p, names[:-1], False)
    try:
        try:
            fd = os.open(names[-1], _O_READ, dir_fd=d)
        except FileNotFoundError:
            raise Fail("path %s: no such file or directory" % _q(p), "notfound")
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Fail("path %s changed while it was being used; refused" % _q(p), "path")
            raise
    finally:
        os.close(d)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Fail("path %s is not a regular file (use CopyOut for directories)" % _q(p), "path")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    r = _Reader(a["op"], _file_chunks(fd))
    _put(a["op"], r)
    res = r.pump(out, a["budget"])
    res["path"] = _shown(parts)
    res["size"] = st.st_size
    return res


def op_get(out, a, data):
    return _get(a["op"], _Reader).pump(out, a["budget"])


def op_stat(out, a, data):
    p = a["path"]
    parts = _parts(p)
    names = _canon(p, parts, False)
    if not names:
        fd = _home_fd()
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    else:
        d = _open_dir(p, names[:-1], False)
        try:
            st = os.stat(names[-1], dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            raise Fail("path %s: no such file or directory" % _q(p), "notfound")
        finally:
            os.close(d)
    return {"path": _shown(parts), "size": st.st_size, "mode": st.st_mode, "mtime_ns": st.st_mtime_ns}


def _tar_header(ti):
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _tar_entry(p, d, name, arc):
    st = os.stat(name, dir_fd=d, follow_symlinks=False)
    m = st.st_mode
    ti = tarfile.TarInfo(arc)
    ti.mtime = int(st.st_mtime)
    ti.mode = stat.S_IMODE(m)
    if stat.S_ISDIR(m):
        ti.type = tarfile.DIRTYPE
        yield _tar_header(ti)
        sub = os.open(name, _O_DIR, dir_fd=d)
        try:
            for child in sorted(os.listdir(sub)):
                yield from _tar_entry(p, sub, child, arc + "/" + child)
        finally:
            os.close(sub)
    elif stat.S_ISLNK(m):
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.readlink(name, dir_fd=d)
        yield _tar_header(ti)
    elif stat.S_ISREG(m):
        # Opened without blocking and checked on the descriptor: it may have
        # been swapped for a FIFO since it was listed.
        fd = os.open(name, _O_READ, dir_fd=d)
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                raise Fail("%s changed into something other than a regular file while it was being read; refused" % arc, "path")
            os.set_blocking(fd, True)
            ti.type = tarfile.REGTYPE
            ti.size = fst.st_size
            yield _tar_header(ti)
            left = ti.size
            while left:
                b = os.read(fd, min(LINE, left))
                if not b:
                    raise Fail("%s shrank while it was being read" % arc, "path")
                left -= len(b)
                yield b
            if ti.size % 512:
                yield bytes(512 - ti.size % 512)
        finally:
            os.close(fd)
    # FIFOs, sockets and devices are not data: left out.


def _tar_stream(p, d, name, arc):
    try:
        yield from _tar_entry(p, d, name, arc)
        yield bytes(1024)
    finally:
        os.close(d)


def op_tar_begin(out, a, data):
    p = a["path"]
    parts = _parts(p)
    names = _canon(p, parts, False)
    if names:
        d = _open_dir(p, names[:-1], False)
        name, arc = names[-1], parts[-1]
    else:
        if REAL_HOME == "/":
            raise Fail("the machine's home is /: give a directory inside it", "path")
        d = os.open(posixpath.dirname(REAL_HOME), os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        name, arc = posixpath.basename(REAL_HOME), posixpath.basename(HOME)
    try:
        os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        os.close(d)
        raise Fail("path %s: no such file or directory" % _q(p), "notfound")
    except BaseException:
        os.close(d)
        raise
    r = _Reader(a["op"], _tar_stream(p, d, name, arc))
    _put(a["op"], r)
    return r.pump(out, a["budget"])


# ---- CopyIn: a tar stream extracted by a thread, fed by instructions ----


class _Aborted(Exception):
    pass


class _Extract(_Op):
    """tarfile reads from a thread; each instruction hands it one chunk and
    waits until it is consumed, so one chunk at most is held here."""

    def __init__(self, opid, p, dest, shown):
        _Op.__init__(self, opid)
        self.p, self.dest, self.shown = p, dest, shown
        self.cv = threading.Condition()
        self.buf = b""
        self.pos = 0
        self.eof = False
        self.stop = False
        self.done = False
        self.error = None
        self.t = threading.Thread(target=self._run, name="vmcp-copyin-" + opid, daemon=True)
        self.t.start()

    # tarfile's side.
    def read(self, n=-1):
        with self.cv:
            while self.pos >= len(self.buf) and not self.eof and not self.stop:
                if not self.cv.wait(IDLE):
                    self.stop = True
            if self.stop:
                raise _Aborted()
            if self.pos >= len(self.buf):
                return b""
            end = len(self.buf) if n is None or n < 0 else min(len(self.buf), self.pos + n)
            b = self.buf[self.pos:end]
            self.pos = end
            if self.pos >= len(self.buf):
                self.buf, self.pos = b"", 0
                self.cv.notify_all()
            return b

    def _run(self):
        try:
            with tarfile.open(fileobj=self, mode="r|*") as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(self.dest, filter=_data_filter)
                else:
                    tf.extractall(self.dest, members=_checked(tf, self.dest))
            with self.cv:
                # What follows the end of the archive is not wanted.
                self.buf, self.pos = b"", 0
        except BaseException as e:  # reported by the instruction that waits
            self.error = e
        finally:
            with self.cv:
                self.done = True
                self.cv.notify_all()

    # The instructions' side.
    def feed(self, data, eof):
        with self.cv:
            self.buf, self.pos = data, 0
            self.eof = eof
            self.cv.notify_all()
            while not self.done and (self.pos < len(self.buf) or (eof and not self.done)):
                self.cv.wait(0.2)
        if self.error is not None:
            raise self._failure()

    def _failure(self):
        e = self.error
        if isinstance(e, tarfile.FilterError):
            return Fail("tar entry refused, nothing more was extracted into %s: %s" % (self.shown, e), "unsafe")
        if isinstance(e, OSError) and e.errno in _NOSPACE:
            return Fail("the machine's disk is full while extracting into %s (%s); delete files in the machine to make room" % (self.shown, os.strerror(e.errno)), "nospace")
        if isinstance(e, OSError):
            return Fail("extract into %s: %s" % (self.shown, _os_text(e)), _os_kind(e))
        if isinstance(e, tarfile.TarError):
            return Fail("read the tar stream for %s: %s" % (self.shown, e), "error")
        return Fail("extract into %s: %s: %s" % (self.shown, type(e).__name__, e), "error")

    def abort(self):
        with self.cv:
            self.stop = True
            self.cv.notify_all()
        self.t.join(1.0)


def _data_filter(member, dest):
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        raise
    except Exception as e:  # noqa: BLE001 - an odd entry is refused, with its name
        raise tarfile.FilterError("%r: %s" % (member.name, e))


class _Refused(tarfile.TarError):
    pass


if not hasattr(tarfile, "FilterError"):
    tarfile.FilterError = _Refused


def _checked(tf, dest):
    """The checks of tarfile's "data" filter, for Pythons without it."""
    dest = os.path.realpath(dest)
    for m in tf:
        name = m.name.lstrip("/")
        target = os.path.realpath(os.path.join(dest, name))
        if os.path.commonpath([target, dest]) != dest:
            raise tarfile.FilterError("%r would be extracted to %r, which is outside the destination" % (m.name, target))
        if m.issym() or m.islnk():
            if os.path.isabs(m.linkname):
                raise tarfile.FilterError("%r is a link to an absolute path" % m.name)
            base = os.path.dirname(target) if m.issym() else dest
            lt = os.path.realpath(os.path.join(base, m.linkname))
            if os.path.commonpath([lt, dest]) != dest:
                raise tarfile.FilterError("%r would link to %r, which is outside the destination" % (m.name, lt))
        elif not (m.isreg() or m.isdir()):
            raise tarfile.FilterError("%r is a special file" % m.name)
        m.name = name
        m.mode = (m.mode & 0o755) | (0o600 if m.isreg() else 0o700)
        m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
        yield m


def op_tar_in_begin(out, a, data):
    p = a["dir"]
    parts = _parts(p)
    names = _canon(p, parts, True)
    fd = _open_dir(p, names, True)
    os.close(fd)
    dest = posixpath.join(REAL_HOME, *names) if names else REAL_HOME
    x = _Extract(a["op"], p, dest, _shown(parts))
    _put(a["op"], x)
    return _tar_in_more(x, a, data)


def op_tar_in(out, a, data):
    return _tar_in_more(_get(a["op"], _Extract), a, data)


def _tar_in_more(x, a, data):
    x.busy = True
    ok = False
    try:
        x.feed(data, bool(a.get("final")))
        done = x.done
        if done:
            x.t.join(5.0)
            _take(x.opid)
        ok = True
        return {"done": done}
    finally:
        x.busy = False
        x.touched = time.monotonic()
        if not ok:
            _undo(x.opid)


# ---- commands ----


def _procs():
    """pid -> (state, ppid, pgrp) of the machine's processes, from /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                s = f.read()
        except OSError:
            continue
        i = s.rfind(b")")
        f = s[i + 2:].split()
        if len(f) > 2:
            out[int(name)] = (f[0], int(f[1]), int(f[2]))
    return out


def _marked(marker, pids):
    m = marker.encode()
    found = []
    for pid in pids:
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if env.startswith(m + b"\0") or (b"\0" + m + b"\0") in env or env.endswith(b"\0" + m):
            found.append(pid)
    return found


def _kill_tree(pid, marker):
    """Kills pid's process group, every descendant of pid (those that left
    the group too) and every process tagged with marker (those that left the
    tree), over and over until none is left."""
    me = os.getpid()
    for _ in range(200):
        procs = _procs()
        children = {}
        for p, (_, ppid, _) in procs.items():
            children.setdefault(ppid, []).append(p)
        victims = set(p for p, (_, _, pgrp) in procs.items() if pgrp == pid)
        stack = [pid]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in victims:
                    victims.add(c)
                    stack.append(c)
        victims.update(_marked(marker, [p for p in procs if p != me]))
        victims = [p for p in victims if p != me and p in procs and procs[p][0] != b"Z"]
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if not victims:
            return
        time.sleep(0.001)


class _Command(_Op):
    """A process tree started with subprocess in its own session (and so its
    own process group). Its output is read only while an instruction runs:
    in between, full pipes hold it back."""

    def __init__(self, opid, a):
        _Op.__init__(self, opid)
        env = dict(os.environ)
        env.update(a.get("env") or {})
        self.marker = "%s=%s" % (MARKER, opid)
        env[MARKER] = opid
        argv = a.get("argv") or []
        if not argv:
            sh = shutil.which("bash", path=env.get("PATH")) or "/bin/sh"
            argv = [sh, "-c", a["shell"]]
        exe = argv[0]
        if "/" not in exe:
            exe = shutil.which(exe, path=env.get("PATH", os.defpath))
            if exe is None:
                raise Fail("%s: command not found (PATH is %s)" % (argv[0], env.get("PATH", "")), "notfound")
        wd = a.get("workdir") or ""
        cwd = posixpath.join(HOME, wd) if wd else HOME
        if not os.path.isdir(cwd):
            raise Fail("workdir %s: no such directory in the machine" % _q(wd), "notfound")
        self.lock = threading.Lock()  # held through a kill and a reap
        self.killed = ""
        self.finished = False
        self.start = time.monotonic()
        self.p = subprocess.Popen(
            argv,
            executable=exe,
            stdin=subprocess.PIPE if a.get("stdin") else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        self.ended = None  # when the process was seen to exit
        self.rc = None
        # The pipes' descriptors are ours alone: the Popen's file objects
        # would close the same numbers again when collected, by then
        # another command's.
        out, err = os.dup(self.p.stdout.fileno()), os.dup(self.p.stderr.fileno())
        self.p.stdout.close()
        self.p.stderr.close()
        self.fds = {out: 1, err: 2}
        for fd in self.fds:
            os.set_blocking(fd, False)
        self.stdin = self.p.stdin.fileno() if self.p.stdin else -1
        if self.stdin >= 0:
            os.set_blocking(self.stdin, False)
        self.pending = b""
        self.offsets = {1: 0, 2: 0}
        self.keep = a.get("relay_limit", -1)  # bytes of each stream sent; -1: all
        t = a.get("timeout_ms", 0)
        self.deadline = self.start + t / 1000.0 if t > 0 else None
        self.wake = threading.Event()
        threading.Thread(target=self._watch, name="vmcp-cmd-" + opid, daemon=True).start()

    def _watch(self):
        while True:
            with self.lock:
                if self.finished:
                    return
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                self.kill("timeout")
                return
            if not self.busy and now - self.touched > IDLE:
                # Nobody continues it: the caller is gone.
                self.kill("abandoned")
                _take(self.opid)
                self.close()
                return
            wait = IDLE
            if self.deadline is not None:
                wait = min(wait, self.deadline - now)
            self.wake.wait(max(wait, 0.001))

    def kill(self, reason):
        with self.lock:
            if self.rc is not None:
                return  # reaped: its pid may belong to another process now
            if not self.killed:
                self.killed = reason
            _kill_tree(self.p.pid, self.marker)

    def poll(self):
        with self.lock:
            if self.rc is None:
                self.rc = self.p.poll()
                if self.rc is not None:
                    self.ended = time.monotonic()
            return self.rc

    def pump(self, out, budget, until, slice_s):
        """Relays output and writes pending stdin until until() holds, the
        process ended (and its pipes are drained, or GRACE passed), budget
        bytes were sent or slice_s seconds passed; returns whether it ended."""
        limit = time.monotonic() + slice_s
        sent0 = out.sent
        poller = select.poll()
        for fd in self.fds:
            poller.register(fd, select.POLLIN)
        if self.stdin >= 0:
            poller.register(self.stdin, 0)
        while True:
            if not self.pending and self.stdin >= 0 and self.close_stdin:
                poller.unregister(self.stdin)
                self._close_stdin()
            rc = self.poll()
            now = time.monotonic()
            if rc is not None and (not self.fds or now - self.ended >= GRACE):
                # What the pipes hold is the command's too: a loaded
                # machine may not have run this loop within GRACE.
                return self._drain(out, budget, sent0)
            if until() or now >= limit or out.sent - sent0 >= budget:
                return False
            if self.stdin >= 0:
                poller.modify(self.stdin, select.POLLOUT if self.pending else 0)
            wait = 0.05 if rc is None else max(GRACE - (now - self.ended), 0.001)
            if not self.fds and (self.stdin < 0 or not self.pending):
                time.sleep(min(wait, 0.02))
                continue
            for fd, ev in poller.poll(min(wait, max(limit - now, 0.001)) * 1000):
                if fd == self.stdin:
                    self._write_stdin(poller)
                    continue
                if fd not in self.fds:
                    continue
                try:
                    b = os.read(fd, LINE)
                except BlockingIOError:
                    continue
                if not b:
                    poller.unregister(fd)
                    del self.fds[fd]
                    os.close(fd)
                    continue
                s = self.fds[fd]
                off = self.offsets[s]
                self.offsets[s] = off + len(b)
                if self.keep >= 0:
                    b = b[: max(self.keep - off, 0)]
                if b:
                    out.data("o %d" % s, off, b)

    def _drain(self, out, budget, sent0):
        """Relays what the pipes hold now, once the process has ended;
        False when the budget ran out first (the next step goes on)."""
        for fd in list(self.fds):
            s = self.fds[fd]
            while True:
                if out.sent - sent0 >= budget:
                    return False
                try:
                    b = os.read(fd, LINE)
                except BlockingIOError:
                    break
                except OSError:
                    b = b""  # closed under us (the command was undone): its end
                if not b:
                    if self.fds.pop(fd, None) is not None:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                    break
                off = self.offsets[s]
                self.offsets[s] = off + len(b)
                if self.keep >= 0:
                    b = b[: max(self.keep - off, 0)]
                if b:
                    out.data("o %d" % s, off, b)
        return True

    close_stdin = False

    def _write_stdin(self, poller):
        try:
            k = os.write(self.stdin, self.pending[:65536])
            self.pending = self.pending[k:]
        except BlockingIOError:
            pass
        except OSError:
            # The command stopped reading: the rest of its input is dropped.
            self.pending = b""
            poller.unregister(self.stdin)
            self._close_stdin()

    def _close_stdin(self):
        if self.stdin >= 0:
            try:
                self.p.stdin.close()
            except OSError:
                pass
            self.stdin = -1

    def result(self):
        rc = self.rc
        res = {
            "done": True,
            "exit_code": rc,
            "signal": "",
            "timed_out": self.killed == "timeout",
            "duration_ms": int((self.ended - self.start) * 1000),
            "stdout_bytes": self.offsets[1],
            "stderr_bytes": self.offsets[2],
        }
        if rc < 0:
            res["exit_code"] = 128 - rc
            try:
                res["signal"] = signal.Signals(-rc).name
            except ValueError:
                res["signal"] = "SIG%d" % -rc
        return res

    def close(self):
        with self.lock:
            self.finished = True
        self.wake.set()
        self._close_stdin()
        for fd in list(self.fds):
            os.close(fd)
        self.fds = {}

    def abort(self):
        self.kill("abort")
        self.poll()
        self.close()


def _cmd_step(c, out, a, data, eof):
    c.busy = True
    ok = False
    try:
        if data:
            c.pending += data
        if eof:
            c.close_stdin = True
        budget, slice_s = a["budget"], a["slice_ms"] / 1000.0
        if a.get("wait"):
            ended = c.pump(out, budget, lambda: False, slice_s)
        else:
            ended = c.pump(out, budget, lambda: not c.pending and (c.stdin < 0 or not c.close_stdin), slice_s)
        if ended:
            res = c.result()
            _take(c.opid)
            c.close()
        else:
            res = {"done": False, "pending": len(c.pending), "exited": c.rc is not None}
        ok = True
        return res
    finally:
        c.busy = False
        c.touched = time.monotonic()
        if not ok:
            _undo(c.opid)


def op_cmd_start(out, a, data):
    c = _Command(a["op"], a)
    _put(a["op"], c)
    return _cmd_step(c, out, a, data, bool(a.get("final")))


def op_cmd(out, a, data):
    return _cmd_step(_get(a["op"], _Command), out, a, data, bool(a.get("final")))


# ---- errors ----


def _os_kind(e):
    if isinstance(e, FileNotFoundError):
        return "notfound"
    if e.errno in _NOSPACE:
        return "nospace"
    return "os"


def _os_text(e):
    where = e.filename if e.filename is not None else ""
    text = e.strerror or str(e)
    if e.errno in _NOSPACE:
        text += " (the machine's disk is full: delete files in it to make room)"
    return "%s: %s" % (where, text) if where else text


def op_ping(out, a, data):
    return {"home": HOME}


_OPS = {
    "ping": op_ping,
    "put_begin": op_put_begin,
    "put": op_put,
    "abort": op_abort,
    "get_begin": op_get_begin,
    "get": op_get,
    "stat": op_stat,
    "tar_begin": op_tar_begin,
    "tar_in_begin": op_tar_in_begin,
    "tar_in": op_tar_in,
    "cmd_start": op_cmd_start,
    "cmd": op_cmd,
}
