"""
Integration-test harness for chatd: real redis-server and chatd processes,
a raw WebSocket client for bad-input tests and small HTTP/RESP helpers.

Standard library only (the optional `websockets` package is used by tests
directly). Run with Debian's /usr/bin/python3 (3.11).

Every process started here is registered; cleanup_all() (called by run.py
after each module and at exit) kills whatever is still running, so a failing
or timed-out test never leaves servers behind. Processes are started in their
own session (process group) with PR_SET_PDEATHSIG=SIGTERM, so even if the
test runner itself is killed the servers are told to stop.
"""

import atexit
import base64
import ctypes
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Lines in a chatd log that fail the test (ASan / UBSan reports).
SANITIZER_PATTERNS = ["ERROR: AddressSanitizer", "runtime error:"]
if os.environ.get("CHATD_IT_FAIL_ON_LEAKS"):
    SANITIZER_PATTERNS.append("ERROR: LeakSanitizer")

READY_RE = re.compile(r"chatd ready port=(\d+) workers=(\d+)")


def chatd_bin():
    return os.environ.get("CHATD_BIN") or os.path.join(REPO, "bin", "chatd")


# --------------------------------------------------------------------------
# Session-wide temp dir and process registry


def _raise_nofile():
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        want = min(want, 65536)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


_raise_nofile()

_artifacts = None
_registry = []          # live Redis / Chatd objects
_registry_lock = threading.Lock()


def artifacts_dir():
    """Session temp dir holding every server's dir and log."""
    global _artifacts
    if _artifacts is None:
        _artifacts = tempfile.mkdtemp(prefix="chatd-it-")
    return _artifacts


def cleanup_artifacts(keep=False):
    """Removes the session temp dir unless keep (or CHATD_IT_KEEP is set).
    Returns the path when it was kept, else None."""
    global _artifacts
    if _artifacts is None:
        return None
    if keep or os.environ.get("CHATD_IT_KEEP"):
        return _artifacts
    shutil.rmtree(_artifacts, ignore_errors=True)
    _artifacts = None
    return None


def _register(obj):
    with _registry_lock:
        if obj not in _registry:
            _registry.append(obj)


def _unregister(obj):
    with _registry_lock:
        if obj in _registry:
            _registry.remove(obj)


def live_processes():
    with _registry_lock:
        return list(_registry)


def cleanup_all():
    """Kills every process still registered (never raises)."""
    for obj in reversed(live_processes()):
        try:
            obj.kill_all()
        except Exception:
            pass
        _unregister(obj)


def check_sanitizers():
    """Raises AssertionError when a live chatd logged sanitizer reports since
    the last check. run.py calls this after every test."""
    errors = []
    for obj in live_processes():
        if isinstance(obj, Chatd):
            msg = obj.new_sanitizer_reports()
            if msg:
                errors.append(msg)
    if errors:
        raise AssertionError("\n".join(errors))


atexit.register(cleanup_all)

_libc = None


def _preexec():
    """In the child before exec: own session, and SIGTERM when we die."""
    os.setsid()
    try:
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)     # PR_SET_PDEATHSIG
    except Exception:
        pass


def become_subreaper():
    """Makes this process the reaper of orphaned descendants (workers whose
    master died), so they are reaped here instead of lingering as zombies
    under a PID 1 that may not reap. Harmless if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)      # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _child_env(extra=None):
    """The environment for a server: ours without CHATD_* settings (so a
    stray CHATD_JWT_SECRET can't change a test), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


# --------------------------------------------------------------------------
# small utilities


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_for(cond, timeout=10.0, interval=0.02, what="condition"):
    """Polls cond() until it returns a truthy value (which is returned).
    Raises AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:     # keep polling; report the last error
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def timeout(seconds):
    """Decorator: this test's timeout for run.py (default 60 s)."""
    def deco(fn):
        fn.timeout_seconds = seconds
        return fn
    return deco


def proc_starttime(pid):
    """Field 22 of /proc/pid/stat (start time in clock ticks), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def pid_alive(pid):
    """True when pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat[stat.rindex(")") + 2:].split()[0]
    return state not in ("Z", "X")


def children_of(pid):
    """Live (non-zombie) child pids of pid, sorted."""
    kids = set()
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except FileNotFoundError:
        return []
    found_file = False
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                found_file = True
                kids.update(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    if not found_file:          # kernel without CONFIG_PROC_CHILDREN
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid:
                kids.add(int(d))
    return sorted(k for k in kids if pid_alive(k))


def socket_inodes(pid):
    """Inodes of the sockets pid has open."""
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except (FileNotFoundError, PermissionError):
        return out
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def tcp_connections():
    """Rows of /proc/net/tcp{,6}: (local_port, remote_port, state, inode)."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            p = line.split()
            if len(p) < 10:
                continue
            lport = int(p[1].rsplit(":", 1)[1], 16)
            rport = int(p[2].rsplit(":", 1)[1], 16)
            rows.append((lport, rport, int(p[3], 16), int(p[9])))
    return rows


TCP_ESTABLISHED = 1


# --------------------------------------------------------------------------
# Redis


class RedisError(Exception):
    pass


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Reader:
    """Buffered reads from a socket with a deadline."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by peer")
        self.buf += chunk

    def readline(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill()

    def readexact(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def _resp_read(r):
    line = r.readline()
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = r.readexact(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_resp_read(r) for _ in range(n)]
    raise RedisError(f"bad RESP reply {line!r}")


def redis_command(port, *args, host="127.0.0.1", timeout=2.0):
    """Sends one command over a fresh connection and returns the reply
    (str for status, bytes for bulk, int, list, None). Raises RedisError
    on an error reply, OSError when unreachable."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_resp_encode(args))
        return _resp_read(_Reader(s))


class Redis:
    """A private redis-server on a free loopback port."""

    def __init__(self, port=None, name="redis"):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=artifacts_dir())
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=10.0):
        if self.proc is not None and self.proc.poll() is None:
            return self
        args = [REDIS_SERVER, "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--dir", self.dir,
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--daemonize", "no", "--logfile", ""]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.dir,
                                         preexec_fn=_preexec, env=_child_env())
        finally:
            log.close()
        _register(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n"
                                   + self.log_text()[-2000:])
            try:
                if self.command("PING", timeout=0.5) == "PONG":
                    return self
            except (OSError, RedisError):
                pass
            if time.monotonic() >= deadline:
                self.kill_all()
                raise RuntimeError("redis-server did not answer PING:\n" + self.log_text()[-2000:])
            time.sleep(0.02)

    def command(self, *args, timeout=2.0):
        return redis_command(self.port, *args, timeout=timeout)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM, wait, then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        _kill_group(self.proc.pid, signal.SIGKILL)
        _unregister(self)

    def kill9(self):
        if self.proc is None:
            return
        _kill_group(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        _unregister(self)

    kill_all = kill9

    def restart(self, timeout=10.0):
        """Starts again on the same port and dir (after stop() or kill9())."""
        if self.running():
            self.stop()
        deadline = time.monotonic() + timeout
        while True:     # the old listener may take a moment to go
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------
# chatd


class Chatd:
    """One chatd master (and its workers) with stderr captured to a log.

    Chatd(redis, workers=2, args=[...]) builds
        --port P --bind 127.0.0.1 --workers N --redis-url <redis.url> args...
    With default_args=False only `args` (and `env`) are given and the port
    is taken from the ready line.
    """

    def __init__(self, redis=None, workers=2, args=(), env=None, port=None,
                 default_args=True, name="chatd", binary=None):
        self.redis = redis
        self.workers = workers
        self.extra_args = list(args)
        self.extra_env = dict(env or {})
        self.default_args = default_args
        self.want_port = port
        self.port = port
        self.binary = binary or chatd_bin()
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=artifacts_dir())
        self.log_path = os.path.join(self.dir, "chatd.log")
        self.proc = None
        self.ready_workers = None
        self._san_offset = 0
        self._reported_san = False
        self._known_workers = {}     # pid -> start time (to never kill a reused pid)

    # -- lifecycle

    def argv(self):
        a = [self.binary]
        if self.default_args:
            a += ["--port", str(self.port), "--bind", "127.0.0.1",
                  "--workers", str(self.workers)]
            if self.redis is not None:
                a += ["--redis-url", self.redis.url]
        return a + self.extra_args

    def start(self, timeout=None):
        if timeout is None:
            timeout = float(os.environ.get("CHATD_IT_START_TIMEOUT", "20"))
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"chatd binary not found or not executable: {self.binary} "
                               "(build with `make` or set CHATD_BIN)")
        attempts = 1 if (self.want_port or not self.default_args) else 3
        for attempt in range(attempts):
            if self.default_args and not self.want_port:
                self.port = free_port()
            try:
                self._start_once(timeout)
                return self
            except _PortInUse:
                if attempt == attempts - 1:
                    raise RuntimeError("chatd could not bind (address in use):\n"
                                       + self.log_text()[-3000:])

    def _start_once(self, timeout):
        log = open(self.log_path, "ab")
        self._log_start = log.tell()
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=self.dir, preexec_fn=_preexec,
                                         env=_child_env(self.extra_env))
        finally:
            log.close()
        _register(self)
        deadline = time.monotonic() + timeout
        while True:
            text = self._read_log(self._log_start)
            m = READY_RE.search(text)
            if m:
                self.port = int(m.group(1))
                self.ready_workers = int(m.group(2))
                self.worker_pids()
                return
            if self.proc.poll() is not None:
                if re.search(r"in use|EADDRINUSE", text, re.I):
                    self._unreg_dead()
                    raise _PortInUse()
                self._unreg_dead()
                raise RuntimeError(f"chatd exited with status {self.proc.returncode} before "
                                   f"ready; argv={self.argv()}\nlog:\n{text[-3000:]}")
            if time.monotonic() >= deadline:
                self.kill_all()
                raise RuntimeError(f"chatd not ready after {timeout}s (no 'chatd ready' line); "
                                   f"argv={self.argv()}\nlog:\n{text[-3000:]}")
            time.sleep(0.02)

    def _unreg_dead(self):
        _kill_group(self.proc.pid, signal.SIGKILL)
        _unregister(self)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self):
        """Live children of the master, sorted."""
        if not self.running():
            return []
        pids = children_of(self.proc.pid)
        for p in pids:
            if p not in self._known_workers:
                self._known_workers[p] = proc_starttime(p)
        return pids

    def stop(self, timeout=10.0, check=True):
        """SIGTERM the master, wait, then SIGKILL the whole group. With check,
        raises AssertionError if the log has sanitizer reports."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.worker_pids()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
                # give workers the same grace before the group kill
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline and any(pid_alive(p) for p in self._known_workers):
                    time.sleep(0.02)
        finally:
            self.kill_all()
        if check:
            self.assert_no_sanitizer_reports()

    def kill_all(self):
        if self.proc is None:
            return
        _kill_group(self.proc.pid, signal.SIGKILL)
        for p, start in list(self._known_workers.items()):   # in case a worker changed group
            if start is not None and pid_alive(p) and proc_starttime(p) == start:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 2.0
        for p in list(self._known_workers):     # orphans reparented to us (subreaper)
            while True:
                try:
                    done, _ = os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    break
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        _unregister(self)

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop(check=exc_type is None)
        if exc_type is not None:
            # don't mask the test's own failure, but still report sanitizers
            msg = self.sanitizer_reports()
            if msg:
                raise AssertionError(msg) from exc

    # -- addresses

    def url(self, path="/ws", scheme="ws"):
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def http_url(self, path="/"):
        return self.url(path, "http")

    # -- log

    def _read_log(self, offset=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_text(self):
        return self._read_log(0)

    def _sanitizer_lines(self, text):
        lines = text.splitlines()
        hits = [i for i, l in enumerate(lines) if any(p in l for p in SANITIZER_PATTERNS)]
        if not hits:
            return None
        first = hits[0]
        excerpt = "\n".join(lines[max(0, first - 2):first + 40])
        return (f"sanitizer report: {lines[first].strip()} ({len(hits)} line(s) in "
                f"{self.log_path}):\n{excerpt}")

    def sanitizer_reports(self):
        return self._sanitizer_lines(self.log_text())

    def new_sanitizer_reports(self):
        """Reports logged since the previous call (for per-test checks)."""
        try:
            size = os.path.getsize(self.log_path)
        except OSError:
            return None
        text = self._read_log(self._san_offset)
        self._san_offset = size
        msg = self._sanitizer_lines(text)
        if msg:
            self._reported_san = True
        return msg

    def assert_no_sanitizer_reports(self):
        msg = self.sanitizer_reports()
        if msg:
            raise AssertionError(msg)


class _PortInUse(Exception):
    pass


# --------------------------------------------------------------------------
# HTTP and raw WebSocket


class ConnectionClosed(Exception):
    """The peer closed the TCP connection."""


class HTTPResponse:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers          # lower-case name -> value
        self.body = body
        self.raw_head = raw_head

    def __iter__(self):                 # status, headers, body = resp
        return iter((self.status, self.headers, self.body))

    def __repr__(self):
        return f"<HTTP {self.status} {self.reason} headers={self.headers} body={self.body[:200]!r}>"


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Frame:
    def __init__(self, fin, rsv, opcode, payload, masked):
        self.fin, self.rsv, self.opcode, self.payload, self.masked = fin, rsv, opcode, payload, masked

    def __repr__(self):
        return (f"<Frame op={self.opcode:#x} fin={self.fin} rsv={self.rsv} "
                f"masked={self.masked} len={len(self.payload)} {self.payload[:120]!r}>")


class Message:
    """A whole message: opcode TEXT/BINARY with payload, or CLOSE with
    code (None when the close frame had no body) and reason."""

    def __init__(self, opcode, payload=b"", code=None, reason=""):
        self.opcode, self.payload, self.code, self.reason = opcode, payload, code, reason

    @property
    def text(self):
        return self.payload.decode("utf-8")

    def __repr__(self):
        if self.opcode == OP_CLOSE:
            return f"<Close code={self.code} reason={self.reason!r}>"
        return f"<Message op={self.opcode:#x} {self.payload[:200]!r}>"


def mask_bytes(data, key):
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None, mask_key=None):
    """One frame as a client would send it. length overrides the declared
    payload length (the payload bytes sent are still `payload`)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 65536:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = mask_key if mask_key is not None else os.urandom(4)
        return head + key + mask_bytes(payload, key)
    return head + payload


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def new_ws_key():
    return base64.b64encode(os.urandom(16)).decode()


class RawWS:
    """A WebSocket (or plain HTTP) client over a plain blocking socket.

        ws = RawWS.open(port, user="alice")       # handshake + welcome
        ws.send_json({"type": "ping", "id": "p1"})
        ws.recv_json()  -> {"type": "pong", ...}

    answer_pings: when True (default) recv_message() replies to pings.
    """

    def __init__(self, port, host="127.0.0.1", timeout=5.0, connect=True):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = None
        self.buf = bytearray()
        self.answer_pings = True
        self.pings_received = 0
        self.ping_times = []
        self.close_code = None
        self.close_received = False
        self.close_sent = False
        self.key = None
        self.response = None
        self.welcome = None
        if connect:
            self.connect()

    def connect(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    @classmethod
    def open(cls, port, user="alice", path=None, read_welcome=True, timeout=5.0, **kw):
        """Connects, upgrades (asserting 101) and reads the welcome."""
        ws = cls(port, timeout=timeout)
        try:
            if path is None:
                path = f"/ws?user={user}"
            r = ws.handshake(path, **kw)
            if r.status != 101:
                raise AssertionError(f"expected 101 for {path}, got {r!r}")
            if read_welcome:
                ws.welcome = ws.recv_json()
                if ws.welcome.get("type") != "welcome":
                    raise AssertionError(f"expected welcome, got {ws.welcome!r}")
            return ws
        except BaseException:
            ws.close_socket()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_socket()

    def close_socket(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    # -- raw bytes

    def send_raw(self, data):
        self.sock.sendall(data)

    def _recv_some(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConnectionClosed("connection closed by server")
        self.buf += chunk

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._recv_some(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def wait_eof(self, timeout=3.0):
        """True when the server closes the TCP connection within timeout
        (data received meanwhile is discarded)."""
        deadline = time.monotonic() + timeout
        self.buf.clear()
        while True:
            try:
                self._recv_some(deadline)
                self.buf.clear()
            except ConnectionClosed:
                return True
            except socket.timeout:
                return False
            except OSError:
                return True

    # -- HTTP

    def build_request(self, path="/ws", method="GET", headers=None, key=None, version="13",
                      upgrade=True, body=b""):
        """An HTTP request. With upgrade, the WebSocket headers are added;
        headers overrides them (a value of None removes a header)."""
        h = {"Host": f"{self.host}:{self.port}"}
        if upgrade:
            self.key = key if key is not None else new_ws_key()
            h.update({"Upgrade": "websocket", "Connection": "Upgrade",
                      "Sec-WebSocket-Key": self.key, "Sec-WebSocket-Version": version})
        for k, v in (headers or {}).items():
            for existing in [e for e in h if e.lower() == k.lower()]:
                del h[existing]
            if v is not None:
                h[k] = v
        if body:
            h["Content-Length"] = str(len(body))
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def read_http_response(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise AssertionError("HTTP response head too large")
            self._recv_some(deadline)
        i = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:i]).decode("latin-1")
        del self.buf[:i + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise AssertionError(f"bad HTTP status line {lines[0]!r}")
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = b""
        if status != 101:
            if "content-length" in headers:
                n = int(headers["content-length"])
                body = self._read_exact(n, deadline)
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                body = self._read_chunked(deadline)
            else:
                try:
                    while True:
                        self._recv_some(deadline)
                except ConnectionClosed:
                    pass
                body = bytes(self.buf)
                self.buf.clear()
        self.response = HTTPResponse(status, reason, headers, body, head)
        return self.response

    def _read_chunked(self, deadline):
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._recv_some(deadline)
            i = self.buf.index(b"\r\n")
            n = int(bytes(self.buf[:i]).split(b";")[0], 16)
            del self.buf[:i + 2]
            out += self._read_exact(n + 2, deadline)[:n]
            if n == 0:
                return out

    def handshake(self, path="/ws?user=alice", method="GET", headers=None, key=None,
                  version="13", timeout=None):
        """Sends the upgrade request and reads the response. On 101 the
        frames that follow stay buffered."""
        self.send_raw(self.build_request(path, method, headers, key, version))
        return self.read_http_response(timeout)

    # -- frames

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
        self.send_raw(encode_frame(opcode, payload, fin, rsv, mask, length))

    def send_text(self, text, **kw):
        self.send_frame(OP_TEXT, text.encode("utf-8") if isinstance(text, str) else text, **kw)

    def send_json(self, obj):
        self.send_text(json.dumps(obj, separators=(",", ":")))

    def send_binary(self, data):
        self.send_frame(OP_BINARY, data)

    def send_ping(self, data=b""):
        self.send_frame(OP_PING, data)

    def send_close(self, code=1000, reason=b""):
        body = b"" if code is None else struct.pack("!H", code) + reason
        self.send_frame(OP_CLOSE, body)
        self.close_sent = True

    def recv_frame(self, timeout=None):
        """The next frame, control frames included (no automatic replies).
        Raises ConnectionClosed on EOF, socket.timeout on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        b0, b1 = self._read_exact(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8, deadline))[0]
        masked = bool(b1 & 0x80)
        key = self._read_exact(4, deadline) if masked else None
        payload = self._read_exact(n, deadline)
        if masked:
            payload = mask_bytes(payload, key)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload, masked)

    def recv_message(self, timeout=None):
        """The next data message or close (pings are answered when
        answer_pings, pongs skipped). A close frame is echoed once.
        Raises ConnectionClosed on EOF, socket.timeout on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        parts, first_op = [], None
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                self.pings_received += 1
                self.ping_times.append(time.monotonic())
                if self.answer_pings and not self.close_sent:
                    self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                continue
            if f.opcode == OP_CLOSE:
                code, reason = None, ""
                if len(f.payload) >= 2:
                    code = struct.unpack("!H", f.payload[:2])[0]
                    reason = f.payload[2:].decode("utf-8", "replace")
                self.close_received = True
                self.close_code = code
                if not self.close_sent:
                    try:
                        self.send_close(code if code is not None else None)
                    except OSError:
                        pass
                return Message(OP_CLOSE, f.payload, code, reason)
            if f.opcode in (OP_TEXT, OP_BINARY):
                if first_op is not None:
                    raise AssertionError(f"server started a new message inside a fragmented one: {f!r}")
                first_op = f.opcode
            elif f.opcode == OP_CONT:
                if first_op is None:
                    raise AssertionError("server sent a continuation frame with no message")
            else:
                raise AssertionError(f"server sent a frame with reserved opcode: {f!r}")
            if f.masked:
                raise AssertionError(f"server sent a masked frame: {f!r}")
            parts.append(f.payload)
            if f.fin:
                return Message(first_op, b"".join(parts))

    def recv_json(self, timeout=None):
        """The next message, which must be a text frame holding JSON."""
        m = self.recv_message(timeout)
        if m.opcode != OP_TEXT:
            raise AssertionError(f"expected a JSON text message, got {m!r}")
        return json.loads(m.text)

    def expect_close(self, timeout=5.0):
        """Reads until the server closes. Returns the close status code,
        None for a close frame without a code; raises AssertionError if the
        TCP connection ends without a close frame or nothing happens in
        timeout. Data messages received before the close are kept in
        self.skipped."""
        deadline = time.monotonic() + timeout
        self.skipped = []
        while True:
            try:
                m = self.recv_message(max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                raise AssertionError("server closed the TCP connection without a close frame"
                                     + (f" (after {self.skipped!r})" if self.skipped else ""))
            except socket.timeout:
                raise AssertionError(f"server did not close the connection within {timeout}s"
                                     + (f" (got {self.skipped!r})" if self.skipped else ""))
            if m.opcode == OP_CLOSE:
                return m.code
            self.skipped.append(m)

    def wait_closed(self, timeout=5.0):
        """Reads until a close frame or TCP EOF. Returns ('close', code),
        ('eof', None), or None when still open after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = self.recv_message(max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                return ("eof", None)
            except socket.timeout:
                return None
            except OSError:
                return ("eof", None)
            if m.opcode == OP_CLOSE:
                return ("close", m.code)

    def ping(self, id="p1", timeout=None):
        """JSON ping; asserts the pong echoes id and returns it."""
        self.send_json({"type": "ping", "id": id})
        r = self.recv_json(timeout)
        if r.get("type") != "pong" or r.get("id") != id:
            raise AssertionError(f"expected pong with id {id!r}, got {r!r}")
        return r


def http_request(port, path="/", method="GET", headers=None, body=b"", timeout=5.0,
                 host="127.0.0.1"):
    """A plain HTTP request (Connection: close). Returns HTTPResponse,
    which unpacks as (status, headers, body)."""
    ws = RawWS(port, host=host, timeout=timeout)
    try:
        h = {"Connection": "close"}
        h.update(headers or {})
        ws.send_raw(ws.build_request(path, method, h, upgrade=False, body=body))
        return ws.read_http_response(timeout)
    finally:
        ws.close_socket()


def http_get(port, path="/", headers=None, timeout=5.0):
    return http_request(port, path, "GET", headers, timeout=timeout)


# --------------------------------------------------------------------------
# JWT (HS256) for tests


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims, secret, alg="HS256", header=None, sign=True):
    """A compact JWT. alg HS256 signs with secret; with sign=False (or alg
    'none') the signature part is empty."""
    import hmac
    hdr = header if header is not None else {"alg": alg, "typ": "JWT"}
    h = b64url(json.dumps(hdr, separators=(",", ":")))
    p = b64url(json.dumps(claims, separators=(",", ":")))
    signing_input = f"{h}.{p}".encode()
    if not sign or alg == "none":
        return f"{h}.{p}."
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(secret.encode() if isinstance(secret, str) else secret,
                   signing_input, digest).digest()
    return f"{h}.{p}.{b64url(sig)}"
