"""
Several hosts on one Redis Cluster: three chatd instances, each in its own
network namespace, against a 3-master, 3-replica Redis Cluster in a fourth.

Topology (everything created by setup_module and removed by teardown_module,
or at exit if the run dies; nothing is added to the root namespace):

    chatdh-<pid>-sw   a bridge br0 with one veth port per host
    chatdh-<pid>-r    the cluster, six redis-servers on 10.213.X.10:7001-7006
    chatdh-<pid>-a    chatd (2 workers) on 10.213.X.11:8080
    chatdh-<pid>-b    chatd (2 workers) on 10.213.X.12:8080
    chatdh-<pid>-c    chatd (2 workers) on 10.213.X.13:8080

(X is taken from the pid.) Every server runs under `ip netns exec NS`,
which execs it, so the registered process is the server itself, in its
own process group with PDEATHSIG like every harness server. The test
process stays in the root namespace: it reaches the namespaces through
small thread pools whose threads setns(2) into one namespace each (the
network namespace is per thread). Client sockets are made and connected in
such a thread and then handed to the `websockets` client of the test's
event loop (a socket keeps the namespace it was made in); Redis
inspections run in the pool of namespace r.

Tests:
  1. rooms shared across hosts: users on a, b and c join the same rooms
     and all send at once; every member on every host gets every message,
     in the same seq order, 1..N without gap; presence lists every host's
     users; member join events cross hosts.
  2. host death: host b's whole process tree (master and workers) gets
     SIGKILL while a and c keep chatting; a and c keep serving, b's users
     get member leave events and leave presence within the reap time, and
     Redis keeps no holder set, room index or registry entry of b's
     workers. Must run last (it kills b).

Run: /usr/bin/python3 tests/integration/run.py test_hosts
"""

import asyncio
import atexit
import concurrent.futures
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time

import websockets

import harness
from harness import Chatd, Skip
from chatclient import ChatClient, answers, itest, track

PID = os.getpid()
PREFIX = f"chatdh-{PID}"
SUBNET = f"10.213.{PID % 250 + 1}"
HOST_NUM = {"r": 10, "a": 11, "b": 12, "c": 13}
REDIS_PORTS = list(range(7001, 7007))
CHATD_PORT = 8080
TAG = os.urandom(3).hex()
CLONE_NEWNET = 0x40000000
DEAD_AFTER = 15.0           # chatd: a worker is dead after 15 s without heartbeat
REAP_LIMIT = 30.0           # ... reaped on a 5 s cycle; what the test allows

NET = None
CLUSTER = None
HOSTS = {}                  # "a" / "b" / "c" -> NsChatd


def log(msg):
    print(f"    {msg}", flush=True)


# --------------------------------------------------------------------------
# network namespaces


_libc = ctypes.CDLL(None, use_errno=True)
_tls = threading.local()


def _enter_netns(key, path):
    """Thread-pool initializer: this thread joins the namespace at path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)
    _tls.ns = key


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=15)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def _netns_list():
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def remove_stale_namespaces():
    """Namespaces of this module left by an earlier run that was killed
    (its pid is gone)."""
    for name in _netns_list():
        m = re.fullmatch(r"chatdh-(\d+)-(sw|r|a|b|c)", name)
        if m and int(m.group(1)) != PID and not os.path.exists(f"/proc/{m.group(1)}"):
            _ip("netns", "del", name, check=False)


class Net:
    """The namespaces, the bridge and the veth links; per namespace a
    thread pool whose threads live in it."""

    KEYS = ("sw", "r", "a", "b", "c")

    def __init__(self):
        self.names = {k: f"{PREFIX}-{k}" for k in self.KEYS}
        self.addrs = {k: f"{SUBNET}.{n}" for k, n in HOST_NUM.items()}
        self.created = []
        self._pools = {}
        self._lock = threading.Lock()

    def up(self):
        try:
            _ip("netns", "add", self.names["sw"])
        except FileNotFoundError:
            raise Skip("no `ip` command")
        except RuntimeError as e:
            if re.search(r"permitted|permission|denied", str(e), re.I):
                raise Skip(f"cannot create network namespaces: {e}")
            raise
        self.created.append(self.names["sw"])
        for k in ("r", "a", "b", "c"):
            _ip("netns", "add", self.names[k])
            self.created.append(self.names[k])
        sw = self.names["sw"]
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for k in ("r", "a", "b", "c"):
            ns = self.names[k]
            # made inside the switch namespace with its peer born in the
            # host's: no interface ever appears in the root namespace
            _ip("-n", sw, "link", "add", f"p-{k}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", sw, "link", "set", f"p-{k}", "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addrs[k]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def down(self):
        """Stops the pools (their threads hold the namespaces) and deletes
        every namespace made here; never raises."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for p in pools:
            p.shutdown(wait=True, cancel_futures=True)
        for name in reversed(self.created):
            try:
                _ip("netns", "del", name, check=False)
            except Exception:       # noqa: BLE001
                pass
        self.created = []

    def exec_prefix(self, k):
        return ["ip", "netns", "exec", self.names[k]]

    def pool(self, k):
        with self._lock:
            p = self._pools.get(k)
            if p is None:
                p = concurrent.futures.ThreadPoolExecutor(
                    max_workers=8, thread_name_prefix=f"netns-{k}", initializer=_enter_netns,
                    initargs=(k, f"/var/run/netns/{self.names[k]}"))
                self._pools[k] = p
            return p

    def run(self, k, fn, *args, **kw):
        """fn(*args, **kw) in a thread inside namespace k (waits at most 30 s)."""
        if getattr(_tls, "ns", None) == k:
            return fn(*args, **kw)
        return self.pool(k).submit(fn, *args, **kw).result(30.0)

    async def arun(self, k, fn, *args, **kw):
        return await asyncio.wrap_future(self.pool(k).submit(fn, *args, **kw))


# --------------------------------------------------------------------------
# the Redis Cluster in namespace r


class NsRedisNode(harness.Redis):
    """A cluster-mode redis-server in namespace r, bound to its address."""

    def __init__(self, net, port, i):
        self.net = net
        self.host = net.addrs["r"]
        super().__init__(port=port, name=f"hosts-redis-{i}")

    @property
    def addr(self):
        return f"{self.host}:{self.port}"

    @property
    def url(self):
        return f"redis://{self.addr}"

    def start(self, timeout=10.0):
        if self.running():
            return self
        args = self.net.exec_prefix("r") + [
            harness.REDIS_SERVER, "--save", "", "--appendonly", "yes",
            "--appendfsync", self.appendfsync, "--dir", self.dir,
            "--port", str(self.port), "--bind", self.host, "--daemonize", "no", "--logfile", "",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000", "--cluster-announce-ip", self.host,
            "--repl-diskless-sync-delay", "0",
            # reachable only inside this module's namespaces, but not over
            # loopback, which protected mode would insist on
            "--protected-mode", "no"]
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=self.dir,
                                         preexec_fn=harness._preexec, env=harness._child_env())
        finally:
            logf.close()
        harness._register(self)
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server {self.addr} exited with "
                                   f"{self.proc.returncode}:\n{self.log_text()[-2000:]}")
            try:
                if self.command("PING", timeout=0.5) == "PONG":
                    return self
            except (OSError, harness.RedisError, concurrent.futures.TimeoutError) as e:
                last = e
            if time.monotonic() >= deadline:
                self.kill9()
                raise RuntimeError(f"redis-server {self.addr} did not answer PING ({last!r}):\n"
                                   + self.log_text()[-2000:])
            time.sleep(0.05)

    def command(self, *args, timeout=2.0):
        return self.net.run("r", harness.redis_command, self.port, *args, host=self.host,
                            timeout=timeout)

    def info(self, section):
        return harness._parse_info(self.command("INFO", section))

    def role(self):
        return harness._arg_str(self.command("ROLE")[0])


class NsCluster:
    """Six NsRedisNodes made into a cluster by redis-cli --cluster create."""

    def __init__(self, net):
        self.net = net
        self.nodes = [NsRedisNode(net, p, i) for i, p in enumerate(REDIS_PORTS)]

    @property
    def seeds(self):
        return ",".join(n.addr for n in self.nodes)

    def start(self, timeout=60.0):
        harness._register(self)
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            n.start()
        r = subprocess.run(self.net.exec_prefix("r") + [
            "redis-cli", "--cluster", "create", *[n.addr for n in self.nodes],
            "--cluster-replicas", "1", "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=max(5.0, deadline - time.monotonic()))
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({r.returncode}):\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        harness.wait_for(self._ok, max(1.0, deadline - time.monotonic()), interval=0.1,
                         what="the cluster in namespace r to be ok with replicas linked")
        return self

    def _ok(self):
        roles = {}
        for n in self.nodes:
            if harness._parse_info(n.command("CLUSTER", "INFO")).get("cluster_state") != "ok":
                return False
            roles[n.port] = n.role()
            if roles[n.port] == "slave" and \
                    n.info("replication").get("master_link_status") != "up":
                return False
        return sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3

    def kill_all(self):
        for n in self.nodes:
            try:
                n.kill9()
            except Exception:       # noqa: BLE001
                pass
        harness._unregister(self)

    def stop(self):
        for n in self.nodes:
            try:
                n.stop()
            except Exception:       # noqa: BLE001
                pass
        harness._unregister(self)

    def masters(self):
        return [n for n in self.nodes if n.running() and n.role() == "master"]

    def node_by_port(self, port):
        return next(n for n in self.nodes if n.port == port)

    def command(self, *args):
        """One command, to the node serving its key (follows MOVED)."""
        node = self.masters()[0]
        for _ in range(5):
            try:
                return node.command(*args)
            except harness.RedisError as e:
                if not str(e).startswith("MOVED "):
                    raise
                node = self.node_by_port(int(str(e).split()[2].rpartition(":")[2]))
        raise harness.RedisError(f"too many redirections for {args!r}")

    def keys(self, pattern):
        """KEYS pattern on every master, as str."""
        return sorted(harness._arg_str(k) for m in self.masters()
                      for k in m.command("KEYS", pattern))

    def workers(self):
        """The chatd worker registry (wids, str)."""
        return [harness._arg_str(w) for w in self.command("ZRANGE", "chatd:workers", 0, -1)]

    def owner_of(self, key):
        slot = harness.keyslot(key)
        for entry in self.masters()[0].command("CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                return f"{harness._arg_str(entry[2][0])}:{entry[2][1]}"
        return None


# --------------------------------------------------------------------------
# chatd in a namespace, and clients


class NsChatd(Chatd):
    """A chatd master (--workers N) in namespace key, bound to its address."""

    def __init__(self, net, key, seeds, workers=2, args=()):
        self.net, self.key = net, key
        self.host = net.addrs[key]
        super().__init__(None, workers=workers, default_args=False, port=CHATD_PORT,
                         name=f"hosts-{key}", args=[
                             "--port", str(CHATD_PORT), "--bind", self.host,
                             "--workers", str(workers), "--redis-cluster", seeds] + list(args))

    def argv(self):
        return self.net.exec_prefix(self.key) + super().argv()

    def url(self, path="/ws", scheme="ws"):
        return f"{scheme}://{self.host}:{self.port}{path}"

    def healthz(self):
        return self.net.run(self.key, harness.http_request, self.port, "/healthz",
                            timeout=3.0, host=self.host).status

    def wids_logged(self):
        return re.findall(r"event=worker_started slot=\d+ wid=(\S+)", self.log_text())


def _tcp_connect(host, port, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return s


class NsClient(ChatClient):
    """A ChatClient whose socket is made inside the server's namespace."""

    def __init__(self, srv, user):
        super().__init__(srv.port, user, host=srv.host)
        self.srv = srv

    async def connect(self, timeout=5.0):
        sock = await self.srv.net.arun(self.srv.key, _tcp_connect, self.srv.host,
                                       self.port, timeout)
        try:
            self.ws = await asyncio.wait_for(
                websockets.connect(self.url, sock=sock, open_timeout=timeout, close_timeout=1,
                                   max_size=None, ping_interval=None, max_queue=None),
                timeout)
        except BaseException:
            sock.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        self.welcome = await self.recv_until(lambda f: f.get("type") == "welcome", timeout)
        return self


async def connect_on(key, user):
    c = NsClient(HOSTS[key], user)
    track(c)
    await c.connect()
    return c


# --------------------------------------------------------------------------
# module fixtures


def _atexit_cleanup():
    harness.cleanup_all()
    if NET is not None:
        NET.down()


atexit.register(_atexit_cleanup)


def setup_module():
    global NET, CLUSTER
    remove_stale_namespaces()
    t0 = time.monotonic()
    NET = Net()
    try:
        NET.up()
    except Skip:
        NET.down()
        raise
    t1 = time.monotonic()
    CLUSTER = NsCluster(NET).start()
    t2 = time.monotonic()
    for k in ("a", "b", "c"):
        HOSTS[k] = NsChatd(NET, k, CLUSTER.seeds, workers=2).start()
    for k, srv in HOSTS.items():
        harness.wait_for(lambda: srv.healthz() == 200, 15, interval=0.1,
                         what=f"/healthz 200 on host {k}")
    # every worker heartbeats into chatd:workers once a second
    want = sorted(w for srv in HOSTS.values() for w in srv.wids_logged())
    assert len(want) == 6, f"worker_started lines: {want}"
    harness.wait_for(lambda: sorted(CLUSTER.workers()) == want, 10, interval=0.1,
                     what=f"chatd:workers to hold the 6 workers {want}")
    log(f"namespaces {PREFIX}-*, subnet {SUBNET}.0/24: {t1 - t0:.1f}s; cluster "
        f"{CLUSTER.seeds}: {t2 - t1:.1f}s; chatd a/b/c masters "
        f"{[HOSTS[k].pid for k in 'abc']}: {time.monotonic() - t2:.1f}s")


def teardown_module():
    errors = []
    try:
        for srv in HOSTS.values():
            try:
                srv.stop()
            except AssertionError as e:
                errors.append(str(e))
        if CLUSTER is not None:
            CLUSTER.kill_all()
    finally:
        harness.cleanup_all()
        if NET is not None:
            NET.down()
            left = [n for n in _netns_list() if n.startswith(PREFIX + "-")]
            if left:
                errors.append(f"namespaces left after teardown: {left}")
    if errors:
        raise AssertionError("\n".join(errors))


# --------------------------------------------------------------------------
# helpers



async def presence(c, room):
    p = await c.expect("presence", {"room": room}, want="presence")
    return p["users"]


def member_events(c, room, event, start=0):
    return [p["user"] for p in c.of_type("member", room, start) if p.get("event") == event]


def chat_view(c, room):
    """What c received in room: [(seq, sender, cid, content)]."""
    return [(p["seq"], p["sender"], p.get("cid"), p["content"]) for p in c.chats(room)]


# --------------------------------------------------------------------------
# 1. rooms shared across hosts


@itest(45)
async def test_rooms_shared_across_hosts():
    rooms = [f"shared-{TAG}-{i}" for i in range(3)]
    log("rooms on cluster masters: " + ", ".join(
        f"{r} -> {CLUSTER.owner_of('chatd:{' + r + '}:seq')}" for r in rooms))
    per_host, per_room = 2, 8
    clients = []
    for i in range(per_host):
        for k in ("a", "b", "c"):
            clients.append(await connect_on(k, f"{k}{i}-{TAG}"))
    users = [c.user for c in clients]
    first = clients[0]
    for c in clients:               # one after the other: member join events follow
        for r in rooms:
            await c.join(r)

    # member join events cross hosts: the first joiner (on a) hears of all
    # the others, b's and c's included
    others = set(users) - {first.user}
    for r in rooms:
        await first.wait(lambda f, r=r: f.get("type") == "member"
                         and f["payload"].get("room") == r
                         and set(member_events(first, r, "join")) >= others,
                         10, what=f"member joins in {r}")
        got = member_events(first, r, "join")
        assert sorted(got) == sorted(others), \
            f"{first.user} in {r}: member join events {sorted(got)}, want each of {sorted(others)} once"

    # everybody sends to every room at once
    async def send_all(c):
        start = len(c.frames)
        ids = []
        for n in range(per_room):
            for ri, r in enumerate(rooms):
                id = f"{c.user}-{ri}-{n}"
                ids.append(id)
                await c.send("chat", {"room": r, "content": f"{c.user} #{n} in {ri}"}, id=id)
        got = await answers(c, ids, 20, start)
        bad = [got[i] for i in ids if got[i]["type"] != "ack"]
        assert not bad, f"{c.user}: {len(bad)} chats not acked, e.g. {bad[:3]!r}"
        return {i: got[i]["payload"] for i in ids}

    t0 = time.monotonic()
    acks = await asyncio.gather(*[send_all(c) for c in clients])
    t_acked = time.monotonic() - t0

    total = len(clients) * per_room
    expected = {}
    for r_i, r in enumerate(rooms):
        sent = []
        for c, a in zip(clients, acks):
            mine = [(a[f"{c.user}-{r_i}-{n}"]["seq"], c.user, f"{c.user}-{r_i}-{n}",
                     f"{c.user} #{n} in {r_i}") for n in range(per_room)]
            assert all(x[0] < y[0] for x, y in zip(mine, mine[1:])), \
                f"{c.user} in {r}: seqs not in send order: {[m[0] for m in mine]}"
            assert not any(a[m[2]]["duplicate"] for m in mine), f"{c.user}: duplicate ack"
            sent += mine
        sent.sort()
        assert [s[0] for s in sent] == list(range(1, total + 1)), \
            f"{r}: acked seqs are not 1..{total}: {[s[0] for s in sent]}"
        expected[r] = sent

    for c in clients:
        for r in rooms:
            await c.wait_seq(r, total, 15)
    await asyncio.sleep(0.3)        # anything extra would show up now
    t_delivered = time.monotonic() - t0
    deliveries = 0
    for c in clients:
        for r in rooms:
            view = chat_view(c, r)
            deliveries += len(view)
            assert view == expected[r], \
                (f"{c.user} (host {c.srv.key}) in {r}: got {len(view)} chats, seqs "
                 f"{[v[0] for v in view]}; want the {total} acked ones in seq order")

    per_host_count = {k: sum(len(c.chats(r)) for c in clients if c.srv.key == k for r in rooms)
                      for k in "abc"}
    log(f"{len(clients)} users on 3 hosts, {len(rooms)} rooms, {total} chats per room: "
        f"all acked in {t_acked:.2f}s, {deliveries} deliveries (per host {per_host_count}) "
        f"identical and in order everywhere after {t_delivered:.2f}s")

    # presence on every host lists the users of all three hosts, each once
    for c in clients[:3]:
        for r in rooms:
            got = await presence(c, r)
            assert sorted(got) == sorted(users), \
                f"presence of {r} asked on host {c.srv.key}: {sorted(got)}, want {sorted(users)}"
    log(f"presence from hosts a, b, c lists all {len(users)} users of the 3 hosts")


# --------------------------------------------------------------------------
# 2. one host dies


def b_wids_in_registry():
    b = HOSTS["b"]
    return [w for w in CLUSTER.workers() if w.rsplit(":", 2)[1] == str(b.pid)]


def holder_keys_of(wids):
    return [k for k in CLUSTER.keys("chatd:*:h:*") if any(k.endswith(":h:" + w) for w in wids)]


def index_keys_of(wids):
    want = {f"chatd:w:{{{w}}}" for w in wids}
    return [k for k in CLUSTER.keys("chatd:w:*") if k in want]


@itest(80)
async def test_host_death_others_serve_and_presence_is_reaped():
    a, b, c = HOSTS["a"], HOSTS["b"], HOSTS["c"]
    flow, other = f"flow-{TAG}", f"quiet-{TAG}"
    rooms = [flow, other]

    b_pids = b.worker_pids()
    assert len(b_pids) == 2, f"host b has workers {b_pids}, want 2"
    b_wids = sorted(await asyncio.to_thread(b_wids_in_registry))
    assert sorted(int(w.rsplit(":", 1)[1]) for w in b_wids) == b_pids, \
        f"chatd:workers holds b wids {b_wids}; b's workers are {b_pids}"
    assert sorted(b.wids_logged()) == b_wids, (b.wids_logged(), b_wids)

    ka = await connect_on("a", f"ka-{TAG}")
    kc = await connect_on("c", f"kc-{TAG}")
    for x in (ka, kc):
        for r in rooms:
            await x.join(r)

    # users on b until both of b's workers hold someone in both rooms
    kb = []
    for i in range(16):
        x = await connect_on("b", f"kb{i}-{TAG}")
        kb.append(x)
        for r in rooms:
            await x.join(r)
        held = await asyncio.to_thread(holder_keys_of, b_wids)
        if len(held) == 2 * len(rooms):
            break
    held = sorted(held)
    want_held = sorted(f"chatd:{{{r}}}:h:{w}" for r in rooms for w in b_wids)
    assert held == want_held, f"holder sets of b's workers {held}, want {want_held}"
    assert sorted(await asyncio.to_thread(index_keys_of, b_wids)) == \
        sorted(f"chatd:w:{{{w}}}" for w in b_wids)
    b_users = {x.user for x in kb}
    everyone = b_users | {ka.user, kc.user}
    for x in (ka, kc):
        for r in rooms:
            await x.wait(lambda f, r=r, x=x: set(member_events(x, r, "join")) >= b_users,
                         10, what=f"member joins of b's users in {r}")
            got = await presence(x, r)
            assert sorted(got) == sorted(everyone), (x.user, r, got)
    log(f"before the kill: {len(kb)} users on b spread over both of its workers "
        f"{b_wids}; presence and holder sets complete")

    # chat flows between a and c the whole time: alternately every 0.2 s
    flow_acks, stop = [], asyncio.Event()

    async def chatter():
        n = 0
        while not stop.is_set():
            sender = (ka, kc)[n % 2]
            ack = await sender.chat(flow, f"flow {n}", id=f"flow-{n}", timeout=10)
            flow_acks.append((ack["seq"], sender.user, f"flow-{n}", time.monotonic()))
            n += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass

    chat_task = asyncio.get_running_loop().create_task(chatter())
    try:
        await asyncio.sleep(1.0)
        mark = {x.user: len(x.frames) for x in (ka, kc)}

        # kill b's whole process tree
        tree = [b.pid] + b.worker_pids()
        t_kill = time.monotonic()
        os.killpg(b.pid, signal.SIGKILL)
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await asyncio.to_thread(harness.wait_for, lambda: not any(harness.pid_alive(p) for p in tree),
                                5, 0.02, f"b's processes {tree} to be gone")
        b.kill_all()                # reaps and unregisters
        log(f"killed host b's process tree {tree}")
        for x in kb:
            assert await x.wait_closed(5), f"{x.user}'s connection to b still open after the kill"

        # a and c still serve: a chat each way right after the kill
        for s, rcv in ((ka, kc), (kc, ka)):
            t = time.monotonic()
            ack = await s.chat(other, f"after kill from {s.user}", id=f"ak-{s.user}")
            await rcv.wait_seq(other, ack["seq"], 5)
            log(f"{s.user} -> {rcv.user} right after the kill: seq {ack['seq']} delivered in "
                f"{(time.monotonic() - t) * 1000:.0f} ms")
        for k in ("a", "c"):
            assert HOSTS[k].running() and len(HOSTS[k].worker_pids()) == 2, \
                f"host {k}: master running {HOSTS[k].running()}, workers {HOSTS[k].worker_pids()}"
            assert await asyncio.to_thread(HOSTS[k].healthz) == 200, f"host {k} /healthz"

        # the reap: member leave events, presence, Redis
        done = {}

        async def check():
            now = time.monotonic() - t_kill
            for x in (ka, kc):
                for r in rooms:
                    key = f"leave events {x.user} {r}"
                    if key not in done and set(member_events(x, r, "leave", mark[x.user])) >= b_users:
                        done[key] = now
                    key = f"presence {x.user} {r}"
                    if key not in done and sorted(await presence(x, r)) == sorted({ka.user, kc.user}):
                        done[key] = now
            if "redis" not in done:
                reg = await asyncio.to_thread(b_wids_in_registry)
                hk = await asyncio.to_thread(holder_keys_of, b_wids)
                ik = await asyncio.to_thread(index_keys_of, b_wids)
                if not reg and not hk and not ik:
                    done["redis"] = now
            return len(done) == 2 * 2 * 2 + 1

        while not await check():
            if time.monotonic() - t_kill > REAP_LIMIT:
                break
            await asyncio.sleep(0.2)
        waited = time.monotonic() - t_kill
        log("reap after the kill: " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(done.items())))
        assert len(done) == 9, (
            f"not reaped {REAP_LIMIT:.0f}s after the kill (waited {waited:.1f}s); done: {done}; "
            f"registry b wids {b_wids_in_registry()}, holder keys {holder_keys_of(b_wids)}, "
            f"index keys {index_keys_of(b_wids)}, presence "
            f"{ {r: await presence(ka, r) for r in rooms} }, leave events at a "
            f"{ {r: member_events(ka, r, 'leave', mark[ka.user]) for r in rooms} }")
        earliest = min(done.values())
        assert earliest >= DEAD_AFTER - 3, \
            f"b's entries reaped {earliest:.1f}s after the kill, before its workers could count as dead"
        await asyncio.sleep(0.5)    # duplicates would show up now
        for x in (ka, kc):
            for r in rooms:
                leaves = member_events(x, r, "leave", mark[x.user])
                assert sorted(leaves) == sorted(b_users), \
                    f"{x.user} in {r}: leave events {sorted(leaves)}, want each of b's users once"
                joins = member_events(x, r, "join", mark[x.user])
                assert not joins, f"{x.user} in {r}: join events after the kill: {joins}"
    finally:
        stop.set()
        await asyncio.wait_for(chat_task, 15)

    # every chat a and c sent during all this reached both, in order
    assert flow_acks, "no chat between a and c was acked"
    last = flow_acks[-1][0]
    for x in (ka, kc):
        await x.wait_seq(flow, last, 5)
    want = sorted((s, u, i) for s, u, i, _ in flow_acks)
    assert [w[0] for w in want] == list(range(1, len(want) + 1)), [w[0] for w in want]
    for x in (ka, kc):
        got = [(p["seq"], p["sender"], p.get("cid")) for p in x.chats(flow)]
        assert got == want, f"{x.user}: flow seqs {[g[0] for g in got]}, want 1..{len(want)}"
    after = sum(1 for *_, t in flow_acks if t > t_kill)
    log(f"a<->c flow: {len(flow_acks)} chats acked and delivered to both in order, "
        f"{after} of them after the kill")

    # new users still get in on a and c; b's users are really gone from presence
    present = {ka.user, kc.user}
    for k in ("a", "c"):
        x = await connect_on(k, f"late-{k}-{TAG}")
        await x.join(flow)
        present.add(x.user)
        got = await presence(x, flow)
        assert sorted(got) == sorted(present), \
            f"presence via a new user on {k}: {sorted(got)}, want {sorted(present)}"
    live_wids = await asyncio.to_thread(CLUSTER.workers)
    assert not any(w.rsplit(":", 2)[1] == str(b.pid) for w in live_wids), live_wids
    for k in ("a", "c"):
        pid = str(HOSTS[k].pid)
        mine = sorted(int(w.rsplit(":", 1)[1]) for w in live_wids if w.rsplit(":", 2)[1] == pid)
        assert mine == HOSTS[k].worker_pids(), \
            f"registry of host {k}: {mine}, its workers {HOSTS[k].worker_pids()}"
