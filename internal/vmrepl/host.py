# vmcp REPL host (internal/vmrepl). It gives a machine that vmcp reaches only
# through exec a stateful Python REPL, with the local engine's semantics.
#
# Two modes, the first argument:
#
#   ensure DIR VERSION DRIVER_SOURCE TOKEN ping
#       Run by vmcp as `python3 -I -c BOOT HOST_SOURCE ensure ...`: makes sure
#       that one host of this VERSION serves DIR (starting it if needed,
#       detached) and answers, and prints "E" + JSON: how to reach it.
#   serve DIR VERSION [REASON]
#       The host itself, started by ensure with its stdio on DIR/host.log.
#
# The host keeps one interpreter: the local engine's driver.py, with its fd
# protocol (3 requests, 4 results, 5 output records, 1 and 2 raw output,
# call tokens, end markers). It does what the local agent (local/agent.go)
# does for it: relays output byte for byte, enforces timeouts (SIGINT,
# repeated, then SIGKILL after a grace), notices its death and starts a new
# one. A call's output is capped at its max_output (the head, then the
# tail at the end), except the streams its request asks "whole", which go
# out entire: then the interpreter's output waits while the client has more
# than HIGH_WATER bytes to take, so that the host's memory stays bounded.
#
# A call is one exec of `sh -c` running shell builtins only (no Python
# process per call: starting one costs more than the whole call):
#   1. the client copies its stdout to fd 3, opens the host's life pipe for
#      reading and its request pipe for writing, through /proc/HOSTPID/fd/N
#      (it checks first that the pid's start time is the host's, as its
#      record gives it, and that both are pipes: a dead host's pid may be
#      another process's now), writes "TOKEN PID d 3" (a line
#      shorter than PIPE_BUF: atomic) and blocks reading the life pipe;
#   2. the host reads the request from the client's argv
#      (/proc/PID/cmdline, where the token must appear), or from DIR/q.TOKEN
#      when the argument is "-" (large code, written there by the client);
#   3. it writes the call's events straight into the client's stdout pipe,
#      which it opens as /proc/PID/fd/3, so that nothing relays them byte by
#      byte (fd 1 is no good: the shell points it at our request pipe while
#      it writes the request line); then it closes it and sends SIGUSR1, on
#      which the client exits 0;
#   4. if the host dies, the life pipe has no writer left and the client's
#      read ends: it exits 113, and vmcp knows that the state is gone.
# When the client's stdout is not a pipe (an exec that gives a socket or a
# terminal) the host answers SIGUSR2 and vmcp uses relay mode instead: the
# client writes the request to DIR/q.TOKEN, makes a FIFO DIR/o.TOKEN, sends
# "TOKEN PID r 0" and `exec cat`s the FIFO, which the host writes.
#
# Other request lines: "int TOKEN" interrupts that call (or keeps it from
# starting), "quit" ends the host (ensure, to replace an older version).
#
# The host writes DIR/used when it first runs user code, with the boot id:
# a new host that finds it reports that the earlier state is gone, and
# whether the machine restarted (or was restored from a snapshot) meanwhile.
#
# Events, one per line, a tag byte then the payload:
#   o DATA / e DATA  stdout / stderr bytes (at most PIECE), then a newline
#   O DATA / E DATA  stdout / stderr bytes (at most PIECE), no newline: a
#                    piece of a long line, or a line not ended yet
#   v B64 / x B64    a piece of the value's repr / of the error text (UTF-8)
#   s                the code starts (written before it goes to the interpreter)
#   p B64, then P    pieces of a PNG figure, then its end
#   r JSON           the result; always last
import base64
import collections
import errno
import fcntl
import json
import os
import re
import secrets
import selectors
import signal
import stat
import sys
import time
import traceback

INTERRUPT_RETRY = 0.05  # the driver ignores SIGINT outside user code: repeat it
INTERRUPT_GRACE = 3.0  # then the interpreter is killed, and its state lost
PIPE_GRACE = 0.25  # output still read after the interpreter died
MARKER_WAIT = 2.0  # user code may have closed fd 1 or 2: no end marker comes
FLOOD_AFTER_RESULT = 4 << 20  # bytes of an output after the result that end the wait for its marker
CLIENT_STALL = 10.0  # a client that takes no output for this long is dropped
RELAY_OPEN_WAIT = 10.0
PIECE = 32 * 1024  # most payload bytes in one event line
TAIL_BYTES = 64 * 1024  # output kept after the cap, shown at the end
HIGH_WATER = 1 << 20  # a client's unsent bytes past which the interpreter's output waits
MAX_TEXT = 16 << 20  # characters kept of a value or an error (head and tail), as the driver
MAX_IMAGES = 64
MAX_IMAGE_CHARS = 48 << 20  # base64 characters of all figures of one call
MAX_REQUEST = 64 << 20
MAX_RESULT_LINE = 256 << 20
MAX_QUEUE = 16
END = b"\x00vmcp-end-"
MARKER = re.compile(rb"\x00vmcp-end-([0-9a-f]{32})\n")  # END, the driver's call token, a newline
MARKER_LEN = len(END) + 33
HEX = frozenset(b"0123456789abcdef")
TOKEN = re.compile(rb"[0-9a-f]{16,64}\Z")
DEFAULT_TIMEOUT = 15.0
DEFAULT_MAX_OUTPUT = 1 << 20


def now():
    return time.monotonic()


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def write_atomic(path, data, mode=0o600):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_small(path, limit):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, size = [], 0
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                return b"".join(chunks)
            size += len(b)
            if size > limit:
                raise OSError(errno.EFBIG, "over %d bytes" % limit)
            chunks.append(b)
    finally:
        os.close(fd)


def set_nonblocking(fd):
    os.set_blocking(fd, False)


def b64_events(tag, data):
    # Pieces of a multiple of 3 bytes decode on their own.
    step = PIECE // 4 * 3
    return [tag + base64.b64encode(data[i:i + step]) + b"\n" for i in range(0, len(data), step)]


def clip(s):
    if len(s) <= MAX_TEXT:
        return s
    half = MAX_TEXT // 2
    return "%s\n[... %d characters omitted ...]\n%s" % (s[:half], len(s) - 2 * half, s[-half:])


def describe_exit(status):
    if status is None:
        return "stopped"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:
            return "was killed (SIGKILL, most often the machine's memory limit)"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "was killed by signal " + name
    return "exited with status %d" % os.WEXITSTATUS(status)


try:
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)

    def die_with_parent():
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

except Exception:  # noqa: BLE001 - no ctypes: the driver ends when its request pipe does

    def die_with_parent():
        pass


# ---- the interpreter ----


class Driver:
    """One interpreter process running driver.py."""

    def __init__(self, host, number):
        self.host, self.number = host, number
        self.used = False
        self.status = None  # wait status once it exited
        self.exited_at = None
        self.retired = False
        self.pending = bytearray()  # request bytes not yet written
        self.held = {}  # fd 1 or 2 -> bytes that may begin an end marker
        self.record = bytearray()  # fd 5: the start of an end marker record
        self.tag = None  # fd 5: the tag of the record being read (-1: skipped)
        self.last_read = {}  # fd -> when it was last read from
        self.read_bytes = {}  # fd -> bytes read from it
        self.paused = False  # its outputs are not read: the client is behind
        self.resumed_at = 0.0
        self.results = bytearray()
        self.skipping = False  # discarding an overlong result line
        req_r, self.req = os.pipe()
        self.res, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        chunk_r, chunk_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        child = [devnull, out_w, err_w, req_r, res_w, chunk_w]
        pid = os.fork()
        if pid == 0:
            self._exec(child, host.python, host.driver_source, host.home, os.getppid())
        self.pid = pid
        for fd in child:
            os.close(fd)
        self.outputs = {out_r: "o", err_r: "e", chunk_r: ""}
        for fd in [self.req, self.res] + list(self.outputs):
            set_nonblocking(fd)
        for fd, stream in self.outputs.items():
            host.sel.register(fd, selectors.EVENT_READ, (self.on_output, fd, stream))
        host.sel.register(self.res, selectors.EVENT_READ, (self.on_results,))

    @staticmethod
    def _exec(child, python, source, home, parent):
        try:
            os.setsid()  # its own process group, killed as one
            die_with_parent()
            if os.getppid() != parent:
                os._exit(1)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in child]
            for target, fd in enumerate(high):
                os.dup2(fd, target)
            for name in os.listdir("/proc/self/fd"):  # not closerange: the limit may be huge
                if int(name) > 5:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            try:
                os.chdir(home)
            except OSError:
                pass
            os.execv(python, [python, "-I", "-c", source])
        except BaseException:  # noqa: B902 - nothing may return into the host's loop
            pass
        os._exit(127)

    @property
    def exited(self):
        return self.status is not None

    def send(self, data):
        self.pending += data
        self.flush()

    def flush(self, mask=None):
        if self.req is None:
            self.pending.clear()
            return
        while self.pending:
            try:
                n = os.write(self.req, self.pending)
            except BlockingIOError:
                break
            except OSError:  # it exited: its death is reported from its exit status
                self.pending.clear()
                break
            del self.pending[:n]
        self.host.watch(self.req, bool(self.pending), self.flush)

    def on_results(self, mask=None):
        while True:
            try:
                data = os.read(self.res, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                # Closed: the process ended, or user code closed fd 4; an
                # instruction then ends by its timeout.
                self.host.sel.unregister(self.res)
                os.close(self.res)
                self.res = None
                return
            while data:
                i = data.find(b"\n")
                if i < 0:
                    if not self.skipping:
                        self.results += data
                        if len(self.results) > MAX_RESULT_LINE:
                            self.results.clear()
                            self.skipping = True
                    break
                if not self.skipping:
                    self.results += data[:i]
                    self.host.on_result(self, bytes(self.results))
                self.results.clear()
                self.skipping = False
                data = data[i + 1:]

    def on_output(self, mask, fd, stream):
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            if stream:
                self.raw(fd, stream, b"", True)
            self.close_output(fd)
            return False
        self.last_read[fd] = now()
        self.read_bytes[fd] = self.read_bytes.get(fd, 0) + len(data)
        if stream:
            self.raw(fd, stream, data, False)
        else:
            self.records(fd, data)
        return True

    def raw(self, fd, stream, data, final):
        """Passes fd 1 or 2 on byte for byte, less the end markers (the
        current call's ends its output; others, late or forged, are
        dropped). Bytes that may begin a marker wait for the next read."""
        buf = self.held.pop(fd, b"") + data
        i = start = 0
        while True:
            j = buf.find(END, i)
            if j < 0:
                break
            m = MARKER.match(buf, j)
            if m:
                self.host.on_data(self, stream, buf[start:j])
                self.host.on_marker(self, fd, m.group(1))
                i = start = m.end()
            elif not final and len(buf) - j < MARKER_LEN and all(c in HEX for c in buf[j + len(END):]):
                self.host.on_data(self, stream, buf[start:j])
                self.held[fd] = buf[j:]
                return
            else:
                i = j + 1
        if not final:
            for j in range(max(i, len(buf) - len(END) + 1), len(buf)):
                if buf[j] == 0 and END.startswith(buf[j:]):
                    self.host.on_data(self, stream, buf[start:j])
                    self.held[fd] = buf[j:]
                    return
        self.host.on_data(self, stream, buf[start:])

    def records(self, fd, data):
        """Passes on the driver's records (see driver.py): the data of
        stdout and stderr records byte for byte as it comes, the current
        call's end marker; a record with another tag is dropped."""
        buf = self.record + data if self.record else data
        self.record = bytearray()
        n, pos = len(buf), 0
        while pos < n:
            if self.tag is None:
                self.tag = buf[pos]
                pos += 1
                continue
            i = buf.find(b"\n", pos)
            tag = self.tag
            if tag in (49, 50, 51, 52):  # "1" to "4"
                stream = "o" if tag in (49, 51) else "e"
                if i < 0:
                    self.host.on_data(self, stream, buf[pos:])
                    return
                self.host.on_data(self, stream, buf[pos:i + 1 if tag < 51 else i])
            elif tag == 0:
                if i < 0:
                    if n - pos < MARKER_LEN:
                        self.record = bytearray(buf[pos:])
                    else:
                        self.tag = -1
                    return
                m = MARKER.match(b"\x00" + buf[pos:i + 1])
                if m:
                    self.host.on_marker(self, fd, m.group(1))
            elif i < 0:
                return
            self.tag = None
            pos = i + 1

    def drain(self):
        """Reads what the interpreter wrote so far, on every output, while
        the client keeps up."""
        for fd in list(self.outputs):
            for _ in range(64):
                if self.paused or fd not in self.outputs or not self.on_output(None, fd, self.outputs[fd]):
                    break
                self.host.throttle()

    def pause(self, paused):
        """Stops (or starts again) reading the outputs."""
        if paused == self.paused:
            return
        self.paused = paused
        for fd, stream in self.outputs.items():
            if paused:
                self.host.sel.unregister(fd)
            else:
                self.host.sel.register(fd, selectors.EVENT_READ, (self.on_output, fd, stream))
        if not paused:
            self.resumed_at = now()

    def close_output(self, fd):
        if fd in self.outputs:
            del self.outputs[fd]
            if not self.paused:
                self.host.sel.unregister(fd)
            os.close(fd)

    def retire(self):
        """Closes what is left of the process's pipes."""
        self.retired = True
        for fd in list(self.outputs):
            self.close_output(fd)
        if self.res is not None:
            self.host.sel.unregister(self.res)
            os.close(self.res)
            self.res = None
        if self.req is not None:
            self.host.watch(self.req, False, None)
            os.close(self.req)
            self.req = None

    def kill(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass


# ---- one client's call ----


class Call:
    """A request, from its arrival to the last byte written to its client."""

    def __init__(self, host, token, pid, mode):
        self.host, self.token, self.pid, self.mode = host, token, pid, mode
        self.out = None  # the client's stdout pipe, or its FIFO (relay)
        self.pidfd = None
        self.buf = bytearray()
        self.dead = False  # the client went away: its output is dropped
        self.closing = False
        self.progress = now()
        self.relay_path = None
        self.relay_deadline = None
        self.request = None
        self.driver = None
        self.driver_call = None
        self.started = None
        self.deadline = None
        self.reason = None
        self.next_signal = None
        self.kill_at = None
        self.result = None
        self.marked = set()  # the outputs whose end marker came
        self.read_at_result = {}  # the driver's read_bytes when the result came
        self.marker_deadline = None
        self.reset = None
        self.whole = (False, False)  # streams sent entire, not capped
        self.checkpoint = None  # "save" or "restore": the driver's checkpoint requests, no code
        self.state_max = 0
        self.max_output = DEFAULT_MAX_OUTPUT
        self.sent = [0, 0]
        self.tail = [bytearray(), bytearray()]
        self.dropped = [0, 0]
        self.capped = [False, False]
        self.ended_line = [True, True]  # the last byte sent of the stream was a newline

    # -- reaching the client --

    def connect_direct(self, fd):
        """Opens the client's stdout (its fd number fd); reads its request
        from its argv.

        A shell client gives a copy of its stdout (fd 3): it writes the
        request line with a redirection, during which its fd 1 is our
        request pipe."""
        pid = self.pid
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(pid)
            except OSError:
                return False
        try:
            self.out = os.open("/proc/%d/fd/%d" % (pid, fd), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError:
            self.out = None
        # Read after the open: if the pid is still the client's now, the
        # stdout opened above was its too.
        args = self.cmdline()
        if args is None or self.token not in args:
            self.close()
            return False
        i = args.index(self.token)
        self.request = args[i + 1] if i + 1 < len(args) else b""
        if self.out is not None and not stat.S_ISFIFO(os.fstat(self.out).st_mode):
            os.close(self.out)
            self.out = None
        if self.out is None:
            self.signal(signal.SIGUSR2)  # not a pipe: the client retries in relay mode
            self.close()
            return False
        return True

    def cmdline(self):
        # Small reads: a large one costs a large allocation (0.1 ms for 1 MiB).
        try:
            fd = os.open("/proc/%d/cmdline" % self.pid, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks, size = [], 0
            while size < MAX_REQUEST:
                b = os.read(fd, 16384)
                if not b:
                    break
                chunks.append(b)
                size += len(b)
            return b"".join(chunks).split(b"\0")
        except OSError:
            return None
        finally:
            os.close(fd)

    def alive(self):
        if self.mode == "r":
            return True
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, 0)
            else:
                os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def signal(self, sig):
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                args = self.cmdline()
                if args is not None and self.token in args:
                    os.kill(self.pid, sig)
        except OSError:
            pass

    def open_relay(self):
        try:
            st = os.lstat(self.relay_path)
            if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.getuid():
                raise OSError(errno.EINVAL, "not our FIFO")
            self.out = os.open(self.relay_path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ENXIO and now() < self.relay_deadline:
                return  # its reader (cat) has not opened it yet
            self.dead = True
        try:
            os.unlink(self.relay_path)
        except OSError:
            pass
        self.relay_path = None

    # -- output --

    def write(self, data):
        if not self.dead:
            if not self.buf:
                self.progress = now()  # the client is behind from now on, if it is
            self.buf += data
            self.host.dirty.add(self)

    def flush(self, mask=None):
        if self.relay_path is not None:
            self.open_relay()
        if self.out is not None and not self.dead:
            while self.buf:
                try:
                    n = os.write(self.out, self.buf)
                except BlockingIOError:
                    break
                except OSError:  # its reader is gone
                    self.dead = True
                    break
                del self.buf[:n]
                self.progress = now()
        if self.dead:
            self.buf.clear()
        if self.out is not None:
            self.host.watch(self.out, bool(self.buf) and not self.dead, self.flush)
        if self.closing and (not self.buf or self.dead) and self.relay_path is None:
            self.close(done=True)

    def check(self, t):
        if self.relay_path is not None:
            self.flush()
        elif self.buf and t - self.progress > CLIENT_STALL:
            self.dead = True
            self.flush()

    def finish(self, lines):
        """Queues the last lines; the client is told when they are out."""
        for line in lines:
            self.write(line)
        self.closing = True
        self.host.closing.add(self)
        self.flush()

    def close(self, done=False):
        if self.out is not None:
            self.host.watch(self.out, False, None)
            os.close(self.out)
            self.out = None
        if done and self.mode == "d":
            self.signal(signal.SIGUSR1)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.relay_path is not None:
            try:
                os.unlink(self.relay_path)
            except OSError:
                pass
            self.relay_path = None
        self.host.closing.discard(self)
        self.host.dirty.discard(self)

    # -- the call's output: the streams asked whole go out entire; of the
    # others the first max_output bytes go out as they come, then a tail
    # is kept for the end --

    def emit(self, i, data):
        if not data:
            return
        if not self.whole[i]:
            room = self.max_output - self.sent[i]
            if self.capped[i] or room <= 0:
                self.keep_tail(i, data)
                return
            if len(data) > room:
                self.keep_tail(i, data[room:])
                data = data[:room]
            self.sent[i] += len(data)
        for event in self.events(i, data):
            self.write(event)
        self.ended_line[i] = data[-1:] == b"\n"

    def keep_tail(self, i, data):
        self.capped[i] = True
        tail = self.tail[i]
        tail += data
        if len(tail) > 2 * TAIL_BYTES:
            cut = len(tail) - TAIL_BYTES
            del tail[:cut]
            self.dropped[i] += cut

    @staticmethod
    def events(i, data):
        """The events that carry data: a line event for each newline, piece
        events for the bytes between that do not fit in one."""
        line_tag, piece_tag = (b"o", b"O") if i == 0 else (b"e", b"E")
        out, n, pos = [], len(data), 0
        while pos < n:
            j = data.find(b"\n", pos, min(n, pos + PIECE + 1))
            if j >= 0:
                out.append(line_tag + data[pos:j] + b"\n")
                pos = j + 1
            else:
                end = min(n, pos + PIECE)
                out.append(piece_tag + data[pos:end] + b"\n")
                pos = end
        return out

    def tail_lines(self):
        lines = []
        for i, name in enumerate(("stdout", "stderr")):
            tail = self.tail[i]
            if len(tail) > TAIL_BYTES:
                self.dropped[i] += len(tail) - TAIL_BYTES
                del tail[:len(tail) - TAIL_BYTES]
            if self.dropped[i]:
                tag = b"oe"[i:i + 1]
                if not self.ended_line[i]:
                    lines.append(tag + b"\n")
                note = "[vmcp: %d bytes of %s left out here; shown are the first %d and the last %d]" % (
                    self.dropped[i], name, self.sent[i], len(tail))
                lines.append(tag + note.encode() + b"\n")
            lines += self.events(i, bytes(tail))
        return lines


# ---- the host ----


class Host:
    def __init__(self, directory, version, reason):
        self.dir, self.version = directory, version
        self.lock = os.open(os.path.join(directory, "host.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        # ensure tests the lock by taking it for a moment: that is no host.
        deadline = now() + 2
        while True:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if now() > deadline:
                    sys.stderr.write("vmrepl host: another host serves %s\n" % directory)
                    sys.exit(3)
                time.sleep(0.01)
        self.id = secrets.token_hex(8)
        self.boot = boot_id()
        self.python = sys.executable or "/usr/bin/python3"
        with open(os.path.join(directory, "driver.py"), encoding="utf-8") as f:
            self.driver_source = f.read()
        self.home = os.environ.get("HOME") or "/"
        if not os.path.isdir(self.home):
            self.home = "/"
        for name in os.listdir(directory):
            if name.startswith(("q.", "o.")) or name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass
        self.pending_reset = reason or self.earlier_state()
        self.marked = False
        self.sel = selectors.DefaultSelector()
        self.watched = {}  # fd -> write callback
        self.driver = None
        self.count = 0
        self.current = None
        self.queue = collections.deque()
        self.interrupted = collections.OrderedDict()  # tokens interrupted before their request came
        self.closing = set()  # calls whose last lines are on their way
        self.dirty = set()  # calls with output to write
        wake_r, wake_w = os.pipe()
        set_nonblocking(wake_r)
        set_nonblocking(wake_w)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGTERM, lambda s, f: self.quit())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.sel.register(wake_r, selectors.EVENT_READ, (self.on_wake, wake_r))
        self.req_r, self.req_w = os.pipe()  # req_w keeps the pipe from ending
        set_nonblocking(self.req_r)
        self.req_partial = bytearray()
        self.sel.register(self.req_r, selectors.EVENT_READ, (self.on_requests,))
        life_r, self.life = os.pipe()  # clients wait on it: its end is the host's
        os.close(life_r)
        self.driver = self.start_driver()
        info = {"pid": os.getpid(), "start": process_start(os.getpid()), "id": self.id, "version": version, "life": self.life,
                "req": self.req_r, "boot": self.boot}
        write_atomic(os.path.join(directory, "host.json"), json.dumps(info).encode())

    def earlier_state(self):
        """Why the state of an earlier host is gone, if one ran user code."""
        try:
            used = json.loads(read_small(os.path.join(self.dir, "used"), 4096))
        except (OSError, ValueError):
            return None
        if not isinstance(used, dict):
            return None
        if used.get("boot") != self.boot:
            return "the machine was restarted or restored from a snapshot since Python last ran in it"
        return "the Python process of the machine ended since the last call (it was killed, or crashed)"

    def mark_used(self):
        if not self.marked:
            self.marked = True
            try:
                write_atomic(os.path.join(self.dir, "used"), json.dumps({"boot": self.boot, "host": self.id}).encode())
            except OSError as e:
                sys.stderr.write("vmrepl host: %s\n" % e)

    def watch(self, fd, want, callback):
        """Asks for (or stops asking for) fd's writability."""
        if want and fd not in self.watched:
            self.watched[fd] = callback
            self.sel.register(fd, selectors.EVENT_WRITE, (callback,))
        elif not want and fd in self.watched:
            del self.watched[fd]
            self.sel.unregister(fd)

    def start_driver(self):
        self.count += 1
        return Driver(self, self.count)

    def quit(self):
        if self.driver is not None:
            self.driver.kill()
        os._exit(0)

    # -- the loop --

    def serve(self):
        while True:
            self.step()
            for key, mask in self.sel.select(self.wait()):
                callback, *args = key.data
                try:
                    callback(mask, *args)
                except Exception:  # noqa: BLE001 - a bug must not end the host, and the state with it
                    traceback.print_exc()
                    sys.stderr.flush()
            for c in list(self.dirty):
                c.flush()
            self.dirty.clear()
            self.throttle()

    def wait(self):
        t = now()
        times = []
        c = self.current
        if c is not None:
            if c.result is None:
                if c.reason is None:
                    times.append(c.deadline)
                times += [x for x in (c.next_signal, c.kill_at) if x is not None]
            elif self.marker_expiry(c) != float("inf"):
                times.append(self.marker_expiry(c))
            if c.buf and not c.dead:
                times.append(c.progress + CLIENT_STALL)
        d = self.driver
        if d is not None and d.exited and not d.retired and not d.paused:
            times.append(max(d.exited_at, d.resumed_at) + PIPE_GRACE)
        for call in self.closing:
            times.append(t + INTERRUPT_RETRY if call.relay_path is not None else call.progress + CLIENT_STALL)
        if not times:
            return None
        return max(0.0, min(times) - t)

    def step(self):
        t = now()
        c = self.current
        d = self.driver
        if c is not None and c.result is None:
            if c.reason is None and t >= c.deadline:
                self.interrupt(c, "timeout")
            if c.next_signal is not None and t >= c.next_signal and not c.driver.exited:
                self.sigint(c)
            if c.kill_at is not None and t >= c.kill_at:
                c.kill_at = None
                c.driver.kill()
        if c is not None and c.buf and not c.dead and t - c.progress > CLIENT_STALL:
            c.dead = True  # it takes no output: drop it, and let the interpreter go on
            c.flush()
            self.throttle()
        if c is not None and c.result is not None and self.markers_in(c, t):
            self.finish(c)
        elif c is not None and c.result is None and c.driver.exited and not c.driver.paused:
            if not c.driver.outputs or t >= max(c.driver.exited_at, c.driver.resumed_at) + PIPE_GRACE:
                c.driver.retire()
                self.finish_died(c)
        if d is not None and d.exited and self.current is None and not d.retired and not d.paused:
            if not d.outputs or t >= max(d.exited_at, d.resumed_at) + PIPE_GRACE:
                d.retire()
        if d is not None and d.retired and self.current is None:
            if d.used and self.pending_reset is None:
                self.pending_reset = "the previous interpreter exited"
            # A used interpreter is replaced now, so that the next call does
            # not wait for Python to start; an unused one that died is not
            # (it would die again).
            self.driver = self.start_driver() if d.used else None
        while self.current is None and self.queue:
            call = self.queue.popleft()
            if call.alive():
                self.run(call)
            else:
                call.close()
        for call in list(self.closing):
            call.check(t)

    def on_wake(self, mask, fd):
        try:
            while os.read(fd, 512):
                pass
        except OSError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            d = self.driver
            if d is not None and pid == d.pid:
                d.status, d.exited_at = status, now()

    # -- requests --

    def on_requests(self, mask):
        try:
            data = os.read(self.req_r, 4096)
        except OSError:
            return
        self.req_partial += data
        lines = self.req_partial.split(b"\n")
        rest = lines.pop()
        self.req_partial = bytearray(rest) if len(rest) <= 512 else bytearray()
        for line in lines:
            if len(line) <= 512:
                self.request_line([bytes(w) for w in line.split()])

    def request_line(self, words):
        if len(words) == 2 and words[0] == b"int" and TOKEN.match(words[1]):
            self.interrupt_token(words[1])
        elif len(words) == 1 and words[0] == b"quit":
            self.quit()
        elif len(words) == 4 and TOKEN.match(words[0]) and words[1].isdigit() and words[2] in (b"d", b"r") \
                and words[3].isdigit() and len(words[3]) <= 4:
            self.accept(words[0], int(words[1]), words[2].decode(), int(words[3]))

    def accept(self, token, pid, mode, fd):
        c = Call(self, token, pid, mode)
        if mode == "d":
            if not c.connect_direct(fd):
                return
        else:
            c.relay_path = os.path.join(self.dir, "o." + token.decode())
            c.relay_deadline = now() + RELAY_OPEN_WAIT
            c.request = b"-"
        if c.request == b"ping":
            return self.accept_ping(c)
        try:
            if c.request == b"-":
                path = os.path.join(self.dir, "q." + token.decode())
                try:
                    c.request = read_small(path, MAX_REQUEST)
                finally:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                if c.request == b"ping":
                    return self.accept_ping(c)
            req = json.loads(c.request)
            c.code = req["code"]
            if not isinstance(c.code, str):
                raise ValueError("code is not a string")
            c.timeout = float(req.get("timeout_ms") or DEFAULT_TIMEOUT * 1000) / 1000
            c.max_output = int(req.get("max_output") or DEFAULT_MAX_OUTPUT)
            whole = req.get("whole") or []
            c.whole = (len(whole) > 0 and whole[0] is True, len(whole) > 1 and whole[1] is True)
            c.checkpoint = req.get("checkpoint") or None
            if c.checkpoint not in (None, "save", "restore"):
                raise ValueError("unknown checkpoint request")
            c.state_max = int(req.get("state_max") or 0)
        except (OSError, ValueError, KeyError, TypeError) as e:
            c.finish(self.result_lines(c, {"error": "vmcp could not read this request: %s" % e}))
            return
        c.request = None
        if self.interrupted.pop(token, False):
            c.finish(self.result_lines(c, {"error": "Interrupted", "interrupted": True}))
            return
        if len(self.queue) >= MAX_QUEUE:
            c.finish(self.result_lines(c, {"error": "too many Python calls are waiting for this machine; try again when the running ones end"}))
            return
        self.queue.append(c)

    def accept_ping(self, c):
        c.finish([b"r" + json.dumps({"call": c.token.decode(), "pong": True, "host": self.id, "pid": os.getpid(), "version": self.version}).encode() + b"\n"])

    def interrupt_token(self, token):
        c = self.current
        if c is not None and c.token == token:
            self.interrupt(c, "interrupt")
            return
        for q in list(self.queue):
            if q.token == token:
                # Stopped before it started: nothing ran.
                self.queue.remove(q)
                q.finish(self.result_lines(q, {"error": "Interrupted", "interrupted": True}))
                return
        # Its request may still be on its way: it will not run.
        self.interrupted[token] = True
        while len(self.interrupted) > 64:
            self.interrupted.popitem(last=False)

    # -- running --

    def run(self, c):
        d = self.driver
        if d is None or d.exited:
            if d is not None:
                d.retire()
                if d.used and self.pending_reset is None:
                    self.pending_reset = "the previous interpreter exited"
            d = self.driver = self.start_driver()
        if not d.used:
            c.reset, self.pending_reset = self.pending_reset, None
        d.used = True
        self.mark_used()
        self.current = c
        c.driver = d
        c.driver_call = secrets.token_hex(16)
        c.started = now()
        c.deadline = c.started + c.timeout
        # Before the code goes out: a client that sees the host end without
        # this line knows that its code did not run, and may send it again.
        c.write(b"s\n")
        c.flush()
        msg = {"code": c.code, "call": c.driver_call}
        if c.checkpoint:
            msg.update(checkpoint=c.checkpoint, state_max=c.state_max)
        d.send(json.dumps(msg).encode("ascii") + b"\n")
        c.code = None

    def interrupt(self, c, reason):
        if c.result is not None:
            return
        if c.reason is None:
            c.reason = reason
        if c.next_signal is None:
            c.kill_at = now() + INTERRUPT_GRACE
            self.sigint(c)

    def sigint(self, c):
        c.next_signal = now() + INTERRUPT_RETRY
        try:
            os.kill(c.driver.pid, signal.SIGINT)
        except OSError:
            pass

    def on_data(self, d, stream, data):
        # Output between calls, or of an interpreter that is not the
        # current call's, belongs to no one.
        c = self.current
        if data and c is not None and c.driver is d:
            c.emit(0 if stream == "o" else 1, data)

    def on_marker(self, d, fd, token):
        c = self.current
        if c is not None and c.driver is d and token == c.driver_call.encode():
            c.marked.add(fd)

    def markers_in(self, c, t):
        """Whether the call's output is all in: every open output gave its
        end marker, or has been idle for MARKER_WAIT since the result (user
        code may have closed fd 1 or 2). Never while the output waits for
        the client."""
        return self.marker_expiry(c) <= t

    def marker_expiry(self, c):
        """When the wait for the missing end markers ends: MARKER_WAIT after
        the result, and after the last read of each output that lacks its
        marker, unless FLOOD_AFTER_RESULT bytes came from it since the
        result (what the code wrote before is far less: more is a process
        of its that writes on)."""
        d = c.driver
        if d.paused:
            return float("inf")
        expiry = 0.0
        for fd in d.outputs:
            if fd not in c.marked and d.read_bytes.get(fd, 0) - c.read_at_result.get(fd, 0) <= FLOOD_AFTER_RESULT:
                expiry = max(expiry, c.marker_deadline, d.last_read.get(fd, 0) + MARKER_WAIT, d.resumed_at + MARKER_WAIT)
        return expiry

    def throttle(self):
        """Stops reading the interpreter's output while the current call's
        client is more than HIGH_WATER bytes behind."""
        c, d = self.current, self.driver
        if d is None:
            return
        d.pause(c is not None and c.driver is d and not c.dead and len(c.buf) > HIGH_WATER)

    def on_result(self, d, line):
        c = self.current
        if c is None or c.driver is not d or c.result is not None:
            return
        try:
            res = json.loads(line)
        except ValueError:
            return
        if not isinstance(res, dict) or res.get("call") != c.driver_call:
            return
        c.result = res
        c.next_signal = c.kill_at = None
        c.marker_deadline = now() + MARKER_WAIT
        c.read_at_result = dict(d.read_bytes)
        d.drain()  # the markers were written before the result

    def finish(self, c):
        res = c.result
        out = {"runtime_ms": res.get("runtime_ms") if isinstance(res.get("runtime_ms"), int) else 0}
        if res.get("interrupted") and c.reason == "timeout":
            out.update(error="Timed out", timed_out=True)
        elif res.get("interrupted"):
            out.update(error="Interrupted", interrupted=True)
        elif res.get("error") is not None:
            out["error"] = str(res["error"])
        elif isinstance(res.get("value"), str):
            out["value"] = res["value"]
        png = res.get("png") if isinstance(res.get("png"), list) else []
        self.current = None
        c.finish(self.result_lines(c, out, png))

    def finish_died(self, c):
        d = c.driver
        out = {"died": True, "runtime_ms": int((now() - c.started) * 1000)}
        if c.reason == "timeout":
            out.update(timed_out=True, error="Timed out (the interpreter did not stop when interrupted and was killed; its state was lost)")
        elif c.reason == "interrupt":
            out.update(interrupted=True, error="Interrupted (the interpreter did not stop when interrupted and was killed; its state was lost)")
        else:
            out["error"] = ("The Python interpreter " + describe_exit(d.status) + " while running this code; its state "
                            "(variables, imports) was lost. The next call starts a fresh interpreter.")
        self.pending_reset = "the interpreter ended during an earlier call"
        self.current = None
        c.finish(self.result_lines(c, out))

    def result_lines(self, c, out, png=()):
        lines = c.tail_lines() if c.driver is not None else []
        value, error = out.pop("value", None), out.pop("error", None)
        if value is not None:
            lines += b64_events(b"v", clip(value).encode("utf-8", "backslashreplace")) or [b"v\n"]
            out["value"] = True
        if error is not None:
            lines += b64_events(b"x", clip(error).encode("utf-8", "backslashreplace")) or [b"x\n"]
            out["error"] = True
        chars, shown = 0, 0
        for image in png:
            if not isinstance(image, str):
                continue
            if shown >= MAX_IMAGES or chars + len(image) > MAX_IMAGE_CHARS:
                lines.append(b"e[vmcp: a figure was left out: a call returns at most %d figures, %d MiB in all]\n" % (MAX_IMAGES, MAX_IMAGE_CHARS * 3 // 4 >> 20))
                continue
            chars += len(image)
            shown += 1
            data = image.encode("ascii", "replace")
            lines += [b"p" + data[i:i + PIECE] + b"\n" for i in range(0, len(data), PIECE)]
            lines.append(b"P\n")
        out.update(call=c.token.decode(), host=self.id, interp=c.driver.number if c.driver else 0)
        if c.reset:
            out["reset"] = c.reset
        lines.append(b"r" + json.dumps(out).encode() + b"\n")
        return lines


# ---- ensure ----


class Failure(Exception):
    pass


def private_dir(arg):
    if arg:
        directory = arg
    else:
        home = os.environ.get("HOME", "")
        if home and os.path.isdir(home) and os.access(home, os.W_OK):
            directory = os.path.join(home, ".vmcp", "repl")
        else:  # /var/tmp survives a restart, for the marker of earlier state
            base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else "/tmp"
            directory = "%s/vmcp-repl-%d" % (base, os.getuid())
    directory = os.path.abspath(directory)
    try:
        os.makedirs(directory, 0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError as e:
        raise Failure("cannot create the directory %s for the REPL's files: %s" % (directory, e))
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise Failure("%s is not a directory of this user; remove it, and the REPL will make its own" % directory)
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


def host_info(directory):
    """The running host's record, or None when no host holds the lock."""
    fd = os.open(os.path.join(directory, "host.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # nobody holds it: no host
        except OSError:
            pass
    finally:
        os.close(fd)
    deadline = now() + 5
    while True:  # a host that is starting writes its record in a moment
        try:
            info = json.loads(read_small(os.path.join(directory, "host.json"), 4096))
            if reachable(info):
                return info
        except (OSError, ValueError, TypeError, KeyError):
            pass
        if now() > deadline:
            return {"pid": 0}
        time.sleep(0.02)


def process_start(pid):
    """When the process started, in clock ticks since boot; None if gone."""
    try:
        data = read_small("/proc/%d/stat" % pid, 4096)
    except OSError:
        return None
    fields = data[data.rfind(b")") + 1:].split()
    return fields[19].decode() if len(fields) > 19 else None


def reachable(info):
    pid = int(info["pid"])
    # A record left by the host of an earlier start of the machine names a
    # pid that this start may have given to another process (the driver of
    # the host starting now, which holds copies of its pipes for a moment).
    if info.get("start") and process_start(pid) != info["start"]:
        return False
    return stat.S_ISFIFO(os.stat("/proc/%d/fd/%d" % (pid, int(info["life"])) ).st_mode) and \
        stat.S_ISFIFO(os.stat("/proc/%d/fd/%d" % (pid, int(info["req"]))).st_mode)


def stop_host(directory, info):
    pid = int(info.get("pid") or 0)
    if pid > 1:
        try:
            with open("/proc/%d/fd/%d" % (pid, int(info["req"])), "wb", buffering=0) as f:
                f.write(b"quit\n")
        except (OSError, KeyError, ValueError, TypeError):
            pass
    deadline = now() + 3
    while host_info_quick(directory) and now() < deadline:
        time.sleep(0.02)
    if host_info_quick(directory) and pid > 1:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                ours = b"host.py\0serve\0" in f.read()
            if ours:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        deadline = now() + 3
        while host_info_quick(directory) and now() < deadline:
            time.sleep(0.02)


def host_info_quick(directory):
    fd = os.open(os.path.join(directory, "host.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def start_host(directory, version, source, driver_source, reason):
    import subprocess

    write_atomic(os.path.join(directory, "host.py"), source.encode("utf-8"))
    write_atomic(os.path.join(directory, "driver.py"), driver_source.encode("utf-8"))
    log = os.open(os.path.join(directory, "host.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", os.path.join(directory, "host.py"), "serve", directory, version] + ([reason] if reason else []),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            cwd=os.environ.get("HOME") if os.path.isdir(os.environ.get("HOME", "")) else "/")
    finally:
        os.close(log)
    deadline = now() + 20
    while now() < deadline:
        if host_info_quick(directory):
            info = host_info(directory)
            if info.get("pid"):
                return info
        if proc.poll() is not None and not host_info_quick(directory):
            break
        time.sleep(0.01)
    try:
        log_tail = read_small(os.path.join(directory, "host.log"), 1 << 20)[-2000:].decode("utf-8", "replace")
    except OSError:
        log_tail = ""
    raise Failure("the REPL host process did not start (%s)%s" % (
        "it exited with status %s" % proc.returncode if proc.poll() is not None else "no answer in 20 s",
        ": " + log_tail.strip() if log_tail.strip() else ""))


def ping(directory, info, token):
    """Pings the host: "direct", "relay", or None when it does not answer."""
    pid = int(info["pid"])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    try:
        with open("/proc/%d/fd/%d" % (pid, int(info["req"])), "wb", buffering=0) as f:
            f.write(b"%s %d d 1\n" % (token.encode(), os.getpid()))
    except OSError:
        return None
    got = signal.sigtimedwait({signal.SIGUSR1, signal.SIGUSR2}, 5)
    if got is None or got.si_pid != pid:
        return None  # no answer, or not from the host the record names
    if got.si_signo == signal.SIGUSR1:
        return "direct"
    # Our stdout is no pipe: ask for the answer through a FIFO.
    tok = secrets.token_hex(16)
    fifo = os.path.join(directory, "o." + tok)
    write_atomic(os.path.join(directory, "q." + tok), b"ping")
    os.mkfifo(fifo, 0o600)
    try:
        r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        with open("/proc/%d/fd/%d" % (pid, int(info["req"])), "wb", buffering=0) as f:
            f.write(b"%s %d r 0\n" % (tok.encode(), os.getpid()))
        deadline, data, opened = now() + 5, b"", False
        import select

        while now() < deadline:
            ready, _, _ = select.select([r], [], [], 0.05)
            if ready:
                b = os.read(r, 1 << 16)
                if b:
                    data, opened = data + b, True
                elif opened:
                    break
                else:
                    time.sleep(0.02)  # no writer yet
        os.close(r)
    finally:
        try:
            os.unlink(fifo)
        except OSError:
            pass
    if b'"pong": true' not in data:
        return None
    sys.stdout.buffer.write(data)
    return "relay"


def ensure(source, args):
    directory_arg, version, driver_source, token = args[:4]
    started, reason = False, None
    try:
        directory = private_dir(directory_arg)
        for _ in range(3):
            info = host_info(directory)
            if info is not None and info.get("version") != version:
                stop_host(directory, info)
                reason = reason or "vmcp was updated, which restarted the Python process of the machine"
                continue
            if info is None:
                info = start_host(directory, version, source, driver_source, reason)
                started = True
            mode = ping(directory, info, token)
            if mode is not None:
                out = {"ok": True, "dir": directory, "pid": int(info["pid"]), "life": int(info["life"]),
                       "req": int(info["req"]), "mode": mode, "version": info.get("version"), "started": started,
                       "start": info.get("start") or ""}
                sys.stdout.write("E" + json.dumps(out) + "\n")
                return 0
            stop_host(directory, info)
            reason = "the Python process of the machine stopped answering and was restarted"
        raise Failure("the REPL host process does not answer; its log is %s/host.log" % directory)
    except Failure as e:
        sys.stdout.write("E" + json.dumps({"ok": False, "error": str(e)}) + "\n")
        return 1


def main():
    if sys.argv[0] == "-c":
        source, args = sys.argv[1], sys.argv[2:]
    else:
        source, args = None, sys.argv[1:]
    if args and args[0] == "ensure" and source is not None and len(args) >= 5:
        sys.exit(ensure(source, args[1:]))
    if args and args[0] == "serve" and len(args) >= 3:
        Host(args[1], args[2], args[3] if len(args) > 3 else None).serve()
    sys.stderr.write("usage: host.py serve DIR VERSION [REASON] | python3 -c BOOT SOURCE ensure DIR VERSION DRIVER TOKEN ping\n")
    sys.exit(2)


if __name__ == "__main__":
    main()
