"""
Integration-test harness for chatd: real redis-server and chatd processes,
a raw WebSocket client for bad-input tests and small HTTP/RESP helpers.
RedisCluster runs a real Redis Cluster; make_redis() gives a Redis or, with
CHATD_IT_REDIS=cluster, a cluster, and the helpers after it (pubsub_*,
script_flush, store_down/store_up) hide the difference from a test.

Standard library only (the optional `websockets` package is used by tests
directly). Run with Debian's /usr/bin/python3 (3.11).

TLS: make_cert() makes a self-signed test certificate with the `openssl`
CLI; Chatd(redis, tls=True) serves TLS on a second port (srv.tls_port) beside
the plain one, tls="only" serves TLS on --port itself; tls_context() and
https_request() are the client side. With CHATD_IT_TLS=1 every Chatd started
with default arguments gets TLS on a second port, and chatclient.ChatClient
connects with wss:// to the TLS port belonging to the plain port it is given
(tls_port_of()); raw sockets (RawWS, http_request) stay plain.

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
import ssl
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

# The master's ready line; " tls_port=T" is appended when TLS is on.
READY_RE = re.compile(r"chatd ready port=(\d+) workers=(\d+)(?: tls_port=(\d+))?")


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
    """A private redis-server on a free loopback port. extra_args are added
    to its command line (a cluster node's settings, for instance);
    appendfsync is the AOF fsync policy ("always" is chatd's promise)."""

    def __init__(self, port=None, name="redis", extra_args=(), appendfsync="always"):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=artifacts_dir())
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None
        self.extra_args = [str(a) for a in extra_args]
        self.appendfsync = appendfsync

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=10.0):
        if self.proc is not None and self.proc.poll() is None:
            return self
        args = [REDIS_SERVER, "--save", "", "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--dir", self.dir,
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--daemonize", "no", "--logfile", ""] + self.extra_args
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
# Redis Cluster


def _crc16_table():
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        table.append(c & 0xFFFF)
    return table


_CRC16 = _crc16_table()
CLUSTER_SLOTS = 16384


def keyslot(key):
    """The cluster slot of key (str or bytes): CRC16-XMODEM mod 16384 of the
    key, or of its hash tag, the part between the first '{' and the next
    '}' when that part is not empty."""
    if isinstance(key, str):
        key = key.encode()
    elif isinstance(key, int):
        key = str(key).encode()
    i = key.find(b"{")
    if i >= 0:
        j = key.find(b"}", i + 1)
        if j > i + 1:
            key = key[i + 1:j]
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc % CLUSTER_SLOTS


# Commands without a key (or whose keys are not the first argument and that
# a test would send to one node anyway): sent to any live master.
_KEYLESS = {
    "ACL", "ASKING", "AUTH", "BGREWRITEAOF", "BGSAVE", "CLIENT", "CLUSTER", "COMMAND",
    "CONFIG", "DBSIZE", "DEBUG", "DISCARD", "ECHO", "EXEC", "FAILOVER", "FLUSHALL",
    "FLUSHDB", "FUNCTION", "HELLO", "INFO", "KEYS", "LASTSAVE", "LATENCY", "LOLWUT",
    "MODULE", "MONITOR", "MULTI", "PING", "PUBLISH", "PUBSUB", "RANDOMKEY", "READONLY",
    "READWRITE", "REPLICAOF", "ROLE", "SAVE", "SCAN", "SCRIPT", "SELECT", "SHUTDOWN",
    "SLAVEOF", "SLOWLOG", "SWAPDB", "TIME", "UNWATCH", "WAIT",
}


def _arg_str(a):
    return a.decode() if isinstance(a, bytes) else str(a)


def command_key(args):
    """The key that decides where a command goes in a cluster, or None.
    EVAL/EVALSHA/FCALL: the first key after numkeys; SPUBLISH: the channel;
    XREAD(GROUP): the first stream; OBJECT/MEMORY/XINFO: the key after the
    subcommand; commands in _KEYLESS: None; anything else: args[1]."""
    name = _arg_str(args[0]).upper()
    if name in ("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"):
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    if name in ("XREAD", "XREADGROUP"):
        up = [_arg_str(a).upper() for a in args]
        return args[up.index("STREAMS") + 1] if "STREAMS" in up[:-1] else None
    if name in ("OBJECT", "MEMORY", "XINFO"):
        return args[2] if len(args) > 2 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return args[1]


def _call(port, args_list, timeout=2.0):
    """Sends several commands on one fresh connection (ASKING must share the
    connection of the command it is for); returns the last reply. Errors of
    earlier commands are raised too."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(_resp_encode(a) for a in args_list))
        r = _Reader(s)
        for _ in args_list[:-1]:
            _resp_read(r)
        return _resp_read(r)


def _parse_info(text):
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and not line.startswith("#"):
            out[k.strip()] = v.strip()
    return out


def parse_cluster_nodes(text):
    """CLUSTER NODES as a list of dicts: id, host, port, bus_port, flags (a
    set: myself, master, slave, fail?, fail, handshake, noaddr, nofailover),
    master_id (None for a master), link, slots (a list of (first, last)
    ranges; slots being migrated or imported are left out)."""
    if isinstance(text, bytes):
        text = text.decode()
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        addr = f[1].split(",")[0]
        hostport, _, bus = addr.partition("@")
        host, _, port = hostport.rpartition(":")
        slots = []
        for s in f[8:]:
            if s.startswith("["):
                continue
            a, _, b = s.partition("-")
            slots.append((int(a), int(b or a)))
        out.append({"id": f[0], "host": host, "port": int(port) if port else 0,
                    "bus_port": int(bus) if bus else 0, "flags": set(f[2].split(",")),
                    "master_id": None if f[3] == "-" else f[3], "link": f[7],
                    "slots": slots})
    return out


class RedisClusterNode(Redis):
    """One node of a RedisCluster: a Redis with cluster mode on, its own
    cluster bus port (cluster-port, so no port + 10000 is needed) and
    nodes.conf in its dir, so that restart() rejoins with the same id."""

    def __init__(self, name="cluster-node", node_timeout_ms=2000, appendfsync="always",
                 avoid=()):
        port = free_port()
        while port in avoid:
            port = free_port()
        bus = free_port()
        while bus == port or bus in avoid:
            bus = free_port()
        self.bus_port = bus
        self.node_id = None             # known after the cluster is made
        super().__init__(port=port, name=name, appendfsync=appendfsync, extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(bus),
            "--cluster-announce-ip", "127.0.0.1",
            # While one master fails over, the other shards keep serving (by
            # default the whole cluster refuses commands).
            "--cluster-require-full-coverage", "no",
            # Redis 7 waits 5 s for more replicas before a diskless full sync.
            "--repl-diskless-sync-delay", "0"])

    host = "127.0.0.1"

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def info(self, section=None, timeout=2.0):
        args = ["INFO"] + ([section] if section else [])
        return _parse_info(self.command(*args, timeout=timeout))

    def cluster_info(self, timeout=2.0):
        return _parse_info(self.command("CLUSTER", "INFO", timeout=timeout))

    def cluster_nodes(self, timeout=2.0):
        return parse_cluster_nodes(self.command("CLUSTER", "NODES", timeout=timeout))

    def role(self, timeout=2.0):
        """'master' or 'slave' by the node's own account."""
        return _arg_str(self.command("ROLE", timeout=timeout)[0])

    def myid(self):
        return _arg_str(self.command("CLUSTER", "MYID"))

    def __repr__(self):
        state = "running" if self.running() else "down"
        return f"<node {self.port} {(self.node_id or '?')[:8]} {state}>"


class RedisCluster:
    """A Redis Cluster of real redis-server processes on free loopback
    ports: `masters` masters with `replicas` replicas each.

        rc = RedisCluster(masters=3, replicas=1).start()
        Chatd(rc, ...)                 # gets --redis-cluster rc.seeds
        rc.command("GET", "chatd:{room}:seq")      # routed, follows MOVED/ASK
        m = rc.master_of("chatd:{room}:seq"); m.kill9(); rc.failover_wait(m)
        rc.migrate_slot(keyslot("chatd:{room}"), other_master)

    nodes: every node (RedisClusterNode, a Redis: port, proc, command,
    kill9, stop, restart, running, log_text). Roles change (failover), so
    masters() / replicas() ask the cluster each time."""

    def __init__(self, masters=3, replicas=1, name="cluster", node_timeout_ms=2000,
                 appendfsync="always"):
        self.n_masters = masters
        self.n_replicas = replicas
        self.name = name
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.nodes = []
        self._slot_cache = None         # [port or None] * 16384, for routing
        self._owned = {}                # node id -> slots, last seen healthy
        self._created = False

    def _new_node(self, i):
        return RedisClusterNode(name=f"{self.name}-{i}", node_timeout_ms=self.node_timeout_ms,
                                appendfsync=self.appendfsync,
                                avoid={p for n in self.nodes if n is not None
                                       for p in (n.port, n.bus_port)})

    # -- addresses

    @property
    def seeds(self):
        return ",".join(n.addr for n in self.nodes)

    @property
    def url(self):
        return self.seeds

    def chatd_args(self):
        return ["--redis-cluster", self.seeds]

    def node_by_port(self, port):
        return next((n for n in self.nodes if n.port == port), None)

    def node_by_id(self, node_id):
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def __repr__(self):
        return f"<RedisCluster {self.name} {self.seeds}>"

    # -- lifecycle

    def start(self, timeout=30):
        """Starts the nodes, makes the cluster (slots in equal ranges, MEET,
        REPLICATE) and waits until every node says cluster_state:ok, all
        slots are served by running masters and every replica's link to its
        master is up. After stop() it starts the same nodes again (they
        rejoin from nodes.conf)."""
        deadline = time.monotonic() + timeout
        _register(self)
        try:
            if not self.nodes:
                total = self.n_masters * (1 + self.n_replicas)
                self.nodes = [None] * total
                for i in range(total):
                    for attempt in range(3):        # a free port taken meanwhile
                        node = self._new_node(i)
                        self.nodes[i] = node
                        try:
                            node.start()
                            break
                        except RuntimeError:
                            node.kill9()
                            if attempt == 2:
                                raise
            else:
                for n in self.nodes:
                    if not n.running():
                        n.restart()
            if not self._created:
                self._create(deadline)
                self._created = True
            self.wait_ok(max(1.0, deadline - time.monotonic()), replicas_linked=True)
        except BaseException:
            self.kill_all()
            raise
        return self

    def _create(self, deadline):
        masters = self.nodes[:self.n_masters]
        replicas = self.nodes[self.n_masters:]
        for n in self.nodes:
            n.node_id = n.myid()
        for i, n in enumerate(self.nodes):
            # distinct epochs up front, as redis-cli does: no epoch collisions
            n.command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for i, m in enumerate(masters):
            first = i * CLUSTER_SLOTS // len(masters)
            last = (i + 1) * CLUSTER_SLOTS // len(masters) - 1
            m.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for n in self.nodes[1:]:
            self.nodes[0].command("CLUSTER", "MEET", "127.0.0.1", n.port, n.bus_port)

        def all_met():
            for n in self.nodes:
                view = n.cluster_nodes()
                if len(view) != len(self.nodes) or any(
                        e["flags"] & {"handshake", "noaddr"} for e in view):
                    return False
            return True
        wait_for(all_met, max(1.0, deadline - time.monotonic()), interval=0.05,
                 what=f"the {len(self.nodes)} cluster nodes to know each other")
        for j, r in enumerate(replicas):
            r.command("CLUSTER", "REPLICATE", masters[j % len(masters)].node_id)

    def _live(self):
        return [n for n in self.nodes if n.running()]

    def stop(self):
        """Clean shutdown (SIGTERM) of every node."""
        for n in self.nodes:
            if n is None:
                continue
            try:
                n.stop()
            except Exception:       # noqa: BLE001 - stop the others anyway
                pass
        self._slot_cache = None
        _unregister(self)

    def kill_all(self):
        for n in self.nodes:
            if n is not None:
                try:
                    n.kill9()
                except Exception:       # noqa: BLE001
                    pass
        self._slot_cache = None
        _unregister(self)

    kill9 = kill_all

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self):
        return "\n".join(f"==> node {n.port} <==\n{n.log_text()}" for n in self.nodes)

    # -- the cluster's view

    def _view(self):
        """CLUSTER NODES of the first running node that answers."""
        last = None
        for n in self._live():
            try:
                return n.cluster_nodes()
            except (OSError, RedisError) as e:
                last = e
        raise RedisError(f"no cluster node answers CLUSTER NODES (last error: {last!r})")

    def _role_nodes(self, role):
        out = []
        for e in self._view():
            if role in e["flags"] and not e["flags"] & {"fail", "fail?", "handshake", "noaddr"}:
                n = self.node_by_port(e["port"])
                if n is not None and n.running():
                    out.append(n)
        return out

    def masters(self):
        """Running nodes that are masters now (from CLUSTER NODES of a live node)."""
        return self._role_nodes("master")

    def replicas(self):
        """Running nodes that are replicas now."""
        return self._role_nodes("slave")

    def replica_of(self, master_node):
        """One replica (a running one if there is) of master_node, or None."""
        mid = master_node.node_id or master_node.myid()
        found = [self.node_by_port(e["port"]) for e in self._view()
                 if "slave" in e["flags"] and e["master_id"] == mid]
        found = [n for n in found if n is not None]
        running = [n for n in found if n.running()]
        return (running or found or [None])[0]

    def _slot_map(self, node, timeout=2.0):
        """[port of the master serving each slot, or None] per node's CLUSTER SLOTS."""
        m = [None] * CLUSTER_SLOTS
        for entry in node.command("CLUSTER", "SLOTS", timeout=timeout):
            first, last, master = entry[0], entry[1], entry[2]
            port = int(master[1])
            for s in range(first, last + 1):
                m[s] = port
        return m

    def slot_owners(self):
        """A fresh slot map from the first running node that answers, a
        master first: a slot's new owner is set on the masters directly and
        reaches the replicas only by gossip."""
        last = None
        try:
            first = self.masters()
        except (OSError, RedisError):
            first = []
        for n in first + [n for n in self._live() if n not in first]:
            try:
                return self._slot_map(n)
            except (OSError, RedisError) as e:
                last = e
        raise RedisError(f"no cluster node answers CLUSTER SLOTS (last error: {last!r})")

    def master_of(self, key_or_slot):
        """The node serving key_or_slot's slot now (an int is a slot)."""
        slot = key_or_slot if isinstance(key_or_slot, int) else keyslot(key_or_slot)
        port = self.slot_owners()[slot]
        return self.node_by_port(port) if port is not None else None

    def slots_of(self, node):
        """The slots node serves now, in order."""
        return [s for s, p in enumerate(self.slot_owners()) if p == node.port]

    # -- commands

    def _route(self, slot):
        if self._slot_cache is None:
            self._slot_cache = self.slot_owners()
        return self._slot_cache[slot]

    def command(self, *args, timeout=2.0):
        """One command, to the master of its key's slot (see command_key);
        keyless ones to any live master. Follows -MOVED and -ASK (ASKING
        first) and waits out -TRYAGAIN, up to 5 times."""
        key = command_key(args)
        if key is None:
            return self._keyless(args, timeout)
        slot = keyslot(key)
        port = self._route(slot)
        asking = False
        refreshed = False
        for _ in range(6):
            if port is None:
                raise RedisError(f"CLUSTERDOWN slot {slot} is not served (by the cached map)")
            try:
                if asking:
                    return _call(port, [["ASKING"], list(args)], timeout)
                return _call(port, [list(args)], timeout)
            except RedisError as e:
                msg = str(e)
                if msg.startswith(("MOVED ", "ASK ")):
                    kind, s, addr = msg.split()[:3]
                    port = int(addr.rpartition(":")[2])
                    asking = kind == "ASK"
                    if not asking and self._slot_cache is not None:
                        self._slot_cache[int(s)] = port
                    continue
                if msg.startswith("TRYAGAIN"):
                    time.sleep(0.05)
                    continue
                raise
            except OSError:
                # the node is gone: once, ask the cluster who serves it now
                self._slot_cache = None
                if refreshed:
                    raise
                refreshed = True
                asking = False
                new = self._route(slot)
                if new == port:
                    raise
                port = new
        raise RedisError(f"too many redirections for {_arg_str(args[0])} (slot {slot})")

    def _keyless(self, args, timeout):
        last = None
        for m in self.masters() or self._live():
            try:
                return m.command(*args, timeout=timeout)
            except OSError as e:
                last = e
        raise last or OSError("no live cluster node")

    def each_master(self, *args, timeout=2.0):
        """args sent to every live master: the list of replies."""
        return [m.command(*args, timeout=timeout) for m in self.masters()]

    def each_node(self, *args, timeout=2.0):
        """args sent to every running node (masters and replicas)."""
        return [n.command(*args, timeout=timeout) for n in self._live()]

    # -- waiting for the cluster

    def _problem(self, replicas_linked=False):
        """What keeps the cluster from being ok, or None."""
        live = self._live()
        if not live:
            return "no node is running"
        maps, roles = {}, {}
        for n in live:
            try:
                state = n.cluster_info().get("cluster_state")
                if state != "ok":
                    return f"node {n.port}: cluster_state:{state}"
                maps[n.port] = self._slot_map(n)
                roles[n.port] = n.role()
                if replicas_linked and roles[n.port] == "slave" and \
                        n.info("replication").get("master_link_status") != "up":
                    return f"replica {n.port}: link to its master not up"
            except (OSError, RedisError) as e:
                return f"node {n.port}: {e!r}"
        ref_port, ref = next(iter(maps.items()))
        if None in ref:
            return f"node {ref_port}: {ref.count(None)} slots not served"
        for p, m in maps.items():
            if m != ref:
                diff = sum(1 for a, b in zip(m, ref) if a != b)
                return f"nodes {ref_port} and {p} disagree about {diff} slots"
        for p in set(ref):
            if p not in roles:
                return f"slots served by {p}, which is not running"
            if roles[p] != "master":
                return f"slots served by {p}, which says it is a {roles[p]}"
        # every node sees the others' roles as they see themselves
        for e in live[0].cluster_nodes():
            n = self.node_by_port(e["port"])
            if n is None or not n.running() or n.port not in roles:
                continue
            seen = "master" if "master" in e["flags"] else "slave"
            if seen != roles[n.port]:
                return f"node {live[0].port} sees {n.port} as {seen}, it says {roles[n.port]}"
        owned = {}
        for s, p in enumerate(ref):
            owned.setdefault(self.node_by_port(p).node_id, []).append(s)
        self._owned = owned
        self._slot_cache = ref
        return None

    def wait_ok(self, timeout=30, replicas_linked=False):
        """Waits until every running node says cluster_state:ok, they agree
        on who serves each slot, and every slot is served by a running
        master (with replicas_linked, every replica's master link is up).
        Returns self."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._problem(replicas_linked)
            if problem is None:
                return self
            if time.monotonic() >= deadline:
                raise AssertionError(f"cluster {self.name} not ok after {timeout}s: {problem}")
            time.sleep(0.05)

    def failover_wait(self, old_master, timeout=30):
        """After old_master was killed (or stopped): waits until its slots
        are served by another running master (a promoted replica) and the
        cluster is ok. Returns the node that took its slots over. Call it
        before old_master is restarted."""
        old_id = old_master.node_id
        old_slots = self._owned.get(old_id, [])
        deadline = time.monotonic() + timeout
        while True:
            problem = self._problem()
            if problem is None:
                owners = {self._slot_cache[s] for s in old_slots}
                if old_master.port not in owners:
                    if not old_slots:
                        return None
                    return self.node_by_port(self._slot_cache[old_slots[0]])
                problem = f"slots of {old_master.port} still served by it"
            if time.monotonic() >= deadline:
                raise AssertionError(f"no failover of {old_master!r} after {timeout}s: {problem}")
            time.sleep(0.05)

    # -- resharding

    def migrate_slot(self, slot, dst_node, batch=100, timeout_ms=5000):
        """Moves one slot, with its keys, to dst_node while clients keep
        working (the manual resharding procedure): SETSLOT IMPORTING on the
        destination, MIGRATING on the source, MIGRATE the keys in batches
        (GETKEYSINSLOT), then SETSLOT NODE on the destination, the source
        and every other master. Returns the number of keys moved."""
        src = self.master_of(slot)
        if src is None:
            raise RedisError(f"slot {slot} is not served")
        if src is dst_node:
            return 0
        src_id, dst_id = src.node_id or src.myid(), dst_node.node_id or dst_node.myid()
        dst_node.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while True:
            keys = src.command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            src.command("MIGRATE", "127.0.0.1", dst_node.port, "", 0, timeout_ms, "KEYS", *keys,
                        timeout=timeout_ms / 1000 + 2)
            moved += len(keys)
        others = [m for m in self.masters() if m is not src and m is not dst_node]
        for n in [dst_node, src] + others:
            n.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self._slot_cache = None
        for ident in list(self._owned):
            if slot in self._owned[ident]:
                self._owned[ident].remove(slot)
        self._owned.setdefault(dst_id, []).append(slot)
        return moved

    def reshard(self, count, src_node, dst_node):
        """Moves count of src_node's slots (its lowest) to dst_node with
        migrate_slot. Returns the slots moved."""
        slots = self.slots_of(src_node)[:count]
        if len(slots) < count:
            raise RedisError(f"{src_node!r} serves {len(slots)} slots, fewer than {count}")
        for s in slots:
            self.migrate_slot(s, dst_node)
        return slots


# --------------------------------------------------------------------------
# Redis or cluster, as the run asks (CHATD_IT_REDIS=cluster)


class Skip(Exception):
    """raise harness.Skip("why"): run.py reports the test as skipped."""


def in_cluster():
    """True when the integration run is against Redis Cluster."""
    return os.environ.get("CHATD_IT_REDIS", "").lower() == "cluster"


def make_redis(name="redis"):
    """A started Redis, or RedisCluster when CHATD_IT_REDIS=cluster."""
    if in_cluster():
        return RedisCluster(name=name).start()
    return Redis(name=name).start()


def is_cluster(r):
    return isinstance(r, RedisCluster)


def redis_config_line(r):
    """The chatd config file line that points at r."""
    return f"redis-cluster = {r.seeds}" if is_cluster(r) else f"redis-url = {r.url}"


def pubsub_channels(r, pattern="*"):
    """Names (str) of the channels with subscribers matching pattern: PUBSUB
    CHANNELS on a Redis; on a cluster the shard channels (PUBSUB
    SHARDCHANNELS) of every running node, masters and replicas."""
    if is_cluster(r):
        return {_arg_str(x) for reply in r.each_node("PUBSUB", "SHARDCHANNELS", pattern)
                for x in reply}
    return {_arg_str(x) for x in r.command("PUBSUB", "CHANNELS", pattern)}


def pubsub_numsub(r, channel):
    """Subscriptions to channel: PUBSUB NUMSUB on a Redis; on a cluster
    PUBSUB SHARDNUMSUB summed over every running node."""
    if is_cluster(r):
        return sum(reply[1] for reply in r.each_node("PUBSUB", "SHARDNUMSUB", channel))
    return r.command("PUBSUB", "NUMSUB", channel)[1]


def script_flush(r):
    """SCRIPT FLUSH on the Redis, or on every running node of a cluster."""
    if is_cluster(r):
        r.each_node("SCRIPT", "FLUSH")
    else:
        r.command("SCRIPT", "FLUSH")


def store_down(r, kill=False):
    """Takes the store of record down: the Redis, or every master of a
    cluster (the replicas stay up; with every master down no replica can win
    a failover vote). kill: SIGKILL, else a clean stop. Returns the nodes to
    give to store_up()."""
    nodes = r.masters() if is_cluster(r) else [r]
    for n in nodes:
        if kill:
            n.kill9()
        else:
            n.stop()
    return nodes


def store_up(r, nodes, timeout=30.0):
    """Restarts what store_down() took down; for a cluster, waits until it
    is ok again."""
    for n in nodes:
        n.restart()
    if is_cluster(r):
        r.wait_ok(timeout)


# --------------------------------------------------------------------------
# TLS: test certificates (openssl CLI) and client contexts

OPENSSL = os.environ.get("OPENSSL", "openssl")


def tls_env():
    """True when CHATD_IT_TLS=1: servers started with default arguments
    also serve TLS, and ChatClient connects to it (wss://)."""
    return os.environ.get("CHATD_IT_TLS", "") not in ("", "0")


def _openssl(*args, timeout=30):
    r = subprocess.run([OPENSSL, *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout


def make_cert(directory=None, cn="localhost", name=None, days=2, ca=None, ca_ext=False):
    """A fresh ECDSA P-256 certificate and key in PEM files under directory
    (default: a new dir in the session's artifacts). Self-signed, unless
    ca=(ca_cert_path, ca_key_path) signs it. Subject CN=cn, subjectAltName
    IP:127.0.0.1 and DNS:localhost, a random serial. ca_ext: a CA
    certificate (basicConstraints CA:TRUE). Returns (cert_path, key_path)."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="tls-", dir=artifacts_dir())
    os.makedirs(directory, exist_ok=True)
    name = name or (re.sub(r"[^A-Za-z0-9.-]", "_", cn) + f"-{os.urandom(3).hex()}")
    cert = os.path.join(directory, f"{name}.crt")
    key = os.path.join(directory, f"{name}.key")
    serial = "0x" + os.urandom(12).hex()
    san = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    if ca is None and not ca_ext:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", str(days), "-subj", f"/CN={cn}", "-addext", san,
                 "-set_serial", serial, "-keyout", key, "-out", cert)
    elif ca is None:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", str(days), "-subj", f"/CN={cn}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-set_serial", serial, "-keyout", key, "-out", cert)
    else:
        csr = os.path.join(directory, f"{name}.csr")
        ext = os.path.join(directory, f"{name}.ext")
        with open(ext, "w") as f:
            if ca_ext:
                f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
            else:
                f.write(san + "\nbasicConstraints=CA:FALSE\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-subj", f"/CN={cn}", "-keyout", key, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", serial,
                 "-days", str(days), "-extfile", ext, "-out", cert)
    os.chmod(key, 0o600)
    return cert, key


def cert_der(cert_path):
    """The DER bytes of the first certificate in a PEM file."""
    with open(cert_path) as f:
        pem = f.read()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(pem[start:end])


def fingerprint(der):
    """SHA-256 of a DER certificate, hex (short form for messages)."""
    return hashlib.sha256(der).hexdigest()


def tls_context(cafile=None, verify=True, alpn=None, minimum=None, maximum=None):
    """A client SSLContext: trusting cafile (a test certificate or CA, one
    path or several), or verifying nothing with verify=False; alpn: the
    protocols to offer; minimum/maximum: ssl.TLSVersion bounds."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        for f in ([cafile] if isinstance(cafile, str) else (cafile or [])):
            ctx.load_verify_locations(cafile=f)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def tls_connect(port, ctx=None, host="127.0.0.1", timeout=5.0, server_hostname=None):
    """A TCP connection to port with the TLS handshake done (ssl.SSLSocket).
    ctx defaults to one verifying nothing."""
    ctx = ctx or tls_context(verify=False)
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname or host)
    except BaseException:
        raw.close()
        raise


def peer_cert_der(port, ctx=None, timeout=5.0):
    """The DER certificate a fresh TLS connection to port is shown."""
    with tls_connect(port, ctx, timeout=timeout) as s:
        return s.getpeercert(binary_form=True)


def https_request(port, path="/", method="GET", headers=None, body=None, ctx=None,
                  timeout=10.0, host="127.0.0.1"):
    """One request over a fresh https connection (http.client). Returns
    HTTPResponse (status, headers with lower-case names, body); the TLS
    details are in .tls (version, cipher, alpn, peer DER)."""
    import http.client
    ctx = ctx or tls_context(verify=False)
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    try:
        conn.connect()
        sock = conn.sock
        info = {"version": sock.version(), "cipher": sock.cipher(),
                "alpn": sock.selected_alpn_protocol(),
                "peer": sock.getpeercert(binary_form=True)}
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        resp = HTTPResponse(r.status, r.reason, hdrs, data, b"")
        resp.tls = info
        return resp
    finally:
        conn.close()


_session_cert = None


def session_cert():
    """(cert, key) shared by every server of the run that gets TLS without
    files of its own (CHATD_IT_TLS=1); made on first use."""
    global _session_cert
    if _session_cert is None or not os.path.exists(_session_cert[0]):
        _session_cert = make_cert(name="session")
    return _session_cert


# plain port -> the Chatd serving TLS beside it (CHATD_IT_TLS=1 servers only)
_tls_by_port = {}


def tls_port_of(port):
    """(tls_port, client SSLContext) for a plain port whose server got TLS
    from CHATD_IT_TLS=1, else None."""
    srv = _tls_by_port.get(port)
    if srv is None or not srv.tls_port:
        return None
    return srv.tls_port, srv.client_context()


# --------------------------------------------------------------------------
# chatd


class Chatd:
    """One chatd master (and its workers) with stderr captured to a log.

    Chatd(redis, workers=2, args=[...]) builds
        --port P --bind 127.0.0.1 --workers N --redis-url <redis.url> args...
    (with a RedisCluster, redis.chatd_args(): --redis-cluster <seeds>).
    With default_args=False only `args` (and `env`) are given and the port
    is taken from the ready line.

    TLS: tls=True adds --tls-cert/--tls-key (a fresh self-signed pair, or
    cert=(cert_path, key_path)) and --tls-port (0 = any free port, or
    tls_port): TLS on srv.tls_port beside plain on srv.port. tls="only":
    no --tls-port, TLS on --port itself (srv.tls_port == srv.port).
    tls=None (default): on when CHATD_IT_TLS=1 for a server with default
    arguments and no --tls-* argument of its own; ChatClient then connects
    to its TLS port when given its plain port (tls_port_of).
    srv.cert_path, srv.key_path: the files given (rewrite them and HUP to
    reload); srv.client_context(): an SSLContext trusting the certificate
    the server started with.
    """

    def __init__(self, redis=None, workers=2, args=(), env=None, port=None,
                 default_args=True, name="chatd", binary=None, tls=None, cert=None,
                 tls_port=None):
        self.auto_tls = False
        if tls is None:
            tls = bool(tls_env() and default_args and cert is None
                       and not any(str(a).startswith("--tls") for a in args))
            self.auto_tls = tls
        self.tls = tls
        self.cert_path = self.key_path = None
        if tls:
            if cert is None:
                cert = session_cert() if self.auto_tls else \
                    make_cert(os.path.join(artifacts_dir(), f"{name}-tls-{os.urandom(3).hex()}"),
                              name="server")
            self.cert_path, self.key_path = cert
        self.want_tls_port = tls_port
        self.tls_port = None
        self._client_ctx = None
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
                if hasattr(self.redis, "chatd_args"):     # RedisCluster
                    a += self.redis.chatd_args()
                else:
                    a += ["--redis-url", self.redis.url]
            # Uploads go under the run's artifacts, not the caller's var/files.
            if "--files-dir" not in self.extra_args:
                a += ["--files-dir", os.path.join(artifacts_dir(), "files")]
        if self.tls:
            a += ["--tls-cert", self.cert_path, "--tls-key", self.key_path]
            if self.tls != "only":
                a += ["--tls-port", str(self.want_tls_port or 0)]
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
        if self.tls and os.path.exists(self.cert_path):
            shutil.copyfile(self.cert_path, os.path.join(self.dir, "start-cert.pem"))
            self._client_ctx = None
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
                self.tls_port = int(m.group(3)) if m.group(3) else None
                if self.tls and self.tls_port is None:
                    self.kill_all()
                    raise RuntimeError(f"chatd started with TLS but its ready line has no tls_port: "
                                       f"{m.group(0)!r}; argv={self.argv()}")
                if self.auto_tls and self.tls_port != self.port:
                    _tls_by_port[self.port] = self
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
        if _tls_by_port.get(self.port) is self:
            del _tls_by_port[self.port]
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
        port = self.tls_port if scheme in ("wss", "https") else self.port
        return f"{scheme}://127.0.0.1:{port}{path}"

    def client_context(self, **kw):
        """An SSLContext trusting the certificate this server started with
        (kw as tls_context: alpn, minimum, maximum). Without kw, one
        context is made and kept."""
        if self.cert_path is None:
            raise RuntimeError("this chatd has no TLS")
        if kw:
            return tls_context(self._start_cert_copy(), **kw)
        if self._client_ctx is None:
            self._client_ctx = tls_context(self._start_cert_copy())
        return self._client_ctx

    def _start_cert_copy(self):
        """The copy of the certificate file taken at the last start (tests
        rewrite cert_path to reload)."""
        copy = os.path.join(self.dir, "start-cert.pem")
        if not os.path.exists(copy):
            shutil.copyfile(self.cert_path, copy)
        return copy

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
    tls: an SSLContext to speak TLS (wss://, https://) to a TLS port;
    rcvbuf: SO_RCVBUF set before connecting (a slow reader).
    """

    def __init__(self, port, host="127.0.0.1", timeout=5.0, connect=True, tls=None, rcvbuf=None):
        self.host, self.port, self.timeout = host, port, timeout
        self.tls, self.rcvbuf = tls, rcvbuf
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
        if self.rcvbuf:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            s.settimeout(self.timeout)
            try:
                s.connect((self.host, self.port))
            except BaseException:
                s.close()
                raise
        else:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                s = self.tls.wrap_socket(s, server_hostname=self.host)
            except BaseException:
                s.close()
                raise
        self.sock = s
        return self

    @classmethod
    def open(cls, port, user="alice", path=None, read_welcome=True, timeout=5.0, **kw):
        """Connects, upgrades (asserting 101) and reads the welcome."""
        ws = cls(port, timeout=timeout, tls=kw.pop("tls", None), rcvbuf=kw.pop("rcvbuf", None))
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


def log_events(text, event, pid=None):
    """Log lines of text with event=event (and pid=pid)."""
    return [line for line in text.splitlines()
            if re.search(rf"\bevent={re.escape(event)}(\s|$)", line)
            and (pid is None or re.search(rf"\bpid={pid}\b", line))]


def metrics(port):
    """/metrics of the server on port as {name or name{labels}: float}."""
    r = http_get(port, "/metrics", timeout=5.0)
    assert r.status == 200, f"/metrics answered {r!r}"
    out = {}
    for line in r.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


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


# --------------------------------------------------------------------------
# A MongoDB-wire server for the archive and the file store

CONGO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "congodb")


class Congo:
    """A CongoDB server on a free loopback port with file storage, so a
    stop and start keeps what it had stored."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="congo-", dir=artifacts_dir())
        self.log_path = os.path.join(self.dir, "congo.log")
        self.proc = None

    @property
    def uri(self):
        return f"mongodb://127.0.0.1:{self.port}/chatd"

    def start(self, timeout=30):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(["node", os.path.join(CONGO_DIR, "run.mjs"), str(self.port),
                                      os.path.join(self.dir, "data")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: "congodb ready" in open(self.log_path).read() or self.proc.poll() is not None,
                 timeout, what="congodb ready")
        assert self.proc.poll() is None, open(self.log_path).read()
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def docs(self, room):
        p = subprocess.run(["node", os.path.join(CONGO_DIR, "query.mjs"), self.uri, room],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def count(self, collection, filter_ejson):
        """Documents of collection matching a filter given as extended JSON
        (e.g. {"files_id": {"$oid": "..."}})."""
        p = subprocess.run(["node", os.path.join(CONGO_DIR, "count.mjs"), self.uri, collection,
                            json.dumps(filter_ejson)], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return int(p.stdout)

    def update(self, collection, filter_ejson, update_ejson):
        """updateMany with a filter and an update given as extended JSON;
        returns how many documents it modified."""
        p = subprocess.run(["node", os.path.join(CONGO_DIR, "update.mjs"), self.uri, collection,
                            json.dumps(filter_ejson), json.dumps(update_ejson)],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return int(p.stdout)

    @staticmethod
    def setup():
        """Installs CongoDB (npm) when missing."""
        subprocess.run(["bash", os.path.join(CONGO_DIR, "setup")], check=True, timeout=300)


# --------------------------------------------------------------------------
# What Redis holds of a room


def room_dump(redis, room):
    """Every value Redis holds under the room's keys, as text."""
    out = {}
    pattern = f"chatd:{{{room}}}*"
    node = redis.master_of(f"chatd:{{{room}}}") if is_cluster(redis) else redis
    keys = node.command("KEYS", pattern)
    assert keys, f"no keys match {pattern}"
    for key in keys:
        k = key.decode() if isinstance(key, bytes) else key
        t = redis.command("TYPE", k)
        t = t.decode() if isinstance(t, bytes) else t
        if t == "stream":
            v = redis.command("XRANGE", k, "-", "+")
        elif t == "hash":
            v = redis.command("HGETALL", k)
        elif t == "zset":
            v = redis.command("ZRANGE", k, 0, -1)
        elif t == "set":
            v = redis.command("SMEMBERS", k)
        else:
            v = redis.command("GET", k)
        out[k] = _text(v)
    return out


def _text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_text(x) for x in v]
    if isinstance(v, dict):
        return {_text(k): _text(x) for k, x in v.items()}
    return v
