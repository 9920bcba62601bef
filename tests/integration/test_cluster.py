"""
Integration tests of chatd on Redis Cluster (--redis-cluster): failover of
a master under load with --ack-replicas, slot migration under traffic,
how commands spread over the masters, /healthz and /metrics per node, and
shard subscriptions following a slot that moved.

One cluster of 3 masters with 1 replica each (node timeout 2 s) is started
for the module; every test starts its own chatd on it and stops it
afterwards. A test that kills a node restarts it (it rejoins as a replica)
and every test starts by waiting for a healthy cluster (every node
running, cluster_state ok, every replica linked), so a failed test leaves
the next one a usable cluster. Rooms are picked by key slot so that every
master owns some; names carry a per-run tag.

Clients behave as the wire contract asks: a sender resends a chat with the
same id until it gets an ack (after `unavailable`, a timeout or a dropped
connection); a receiver that lost its connection rejoins every room with
`since` = the last seq it saw. One receiver also drops its connection on
purpose every few seconds, so the `since` path runs across the failover and
the migrations too. After traffic, every room's history (paged with
`before`) must hold seqs 1..N, every acked id exactly once at its acked seq
and nothing else; every receiver must have seen 1..N of every room, in
order, each once; no seq may ever be seen with two different ids.

Clients of the load tests run on an asyncio loop in a thread of their own;
the chaos (kill -9, restart, failover waits, migrations) comes from the
test's thread, because the harness ties each server's life to the thread
that started it.

Run: /usr/bin/python3 tests/integration/run.py test_cluster
     /usr/bin/python3 tests/integration/run.py test_cluster -k failover
"""

import asyncio
import json
import os
import random
import re
import threading
import time

import websockets

import harness
from chatclient import RESPONSE_TYPES
from harness import (Chatd, RedisCluster, RedisError, http_get, keyslot, timeout,
                     wait_for)

CLUSTER = None
TAG = os.urandom(3).hex()
FAST = ["--rate", "100000", "--burst", "100000"]
NODE_TIMEOUT_MS = 2000


def setup_module():
    global CLUSTER
    CLUSTER = RedisCluster(masters=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS,
                           name="cl").start()


def teardown_module():
    if CLUSTER is not None:
        CLUSTER.stop()


# --------------------------------------------------------------------------
# servers and the cluster


def start_chatd(name, workers=2, args=()):
    """A chatd on the module's cluster. If bin/chatd is briefly missing (a
    rebuild), waits for it."""
    deadline = time.monotonic() + 60
    while not os.access(harness.chatd_bin(), os.X_OK):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{harness.chatd_bin()} missing for 60 s")
        time.sleep(1)
    srv = Chatd(CLUSTER, workers=workers, args=FAST + list(args), name=name).start()
    # "ready" means the workers listen; their links to the masters come up
    # just after (the slot map first, then a link per master). Tests start
    # from a server whose /healthz says ok on several polls in a row, which
    # reach both workers.
    ok = [0]

    def settled():
        ok[0] = ok[0] + 1 if http_get(srv.port, "/healthz", timeout=3).status == 200 else 0
        return ok[0] >= 6
    wait_for(settled, 15, interval=0.05, what=f"{name}: /healthz 200 on six polls in a row")
    return srv


def healthy_cluster(timeout=45):
    """Restarts any node that is down and waits until the cluster is ok with
    3 masters, each with a running replica whose link is up."""
    for n in CLUSTER.nodes:
        if not n.running():
            n.restart()
    CLUSTER.wait_ok(timeout, replicas_linked=True)
    masters = CLUSTER.masters()
    assert len(masters) == 3, f"expected 3 masters, the cluster has {masters!r}"
    for m in masters:
        r = CLUSTER.replica_of(m)
        assert r is not None and r.running(), f"master {m!r} has no running replica"
    return masters


def room_key(room):
    """The hash-tagged prefix of a room's keys and its shard channel."""
    return f"chatd:{{{room}}}"


def slot_of(room):
    return keyslot(room_key(room))


def rooms_per_master(prefix, per_master):
    """{master port: [room, ...]}: per_master fresh room names for every
    master, picked by key slot."""
    owners = CLUSTER.slot_owners()
    out = {m.port: [] for m in CLUSTER.masters()}
    i = 0
    while any(len(v) < per_master for v in out.values()):
        name = f"{prefix}-{TAG}-{i}"
        i += 1
        p = owners[slot_of(name)]
        if p in out and len(out[p]) < per_master:
            out[p].append(name)
    return out


def cmdstats(node):
    """{command: calls} from INFO commandstats of node."""
    out = {}
    for k, v in node.info("commandstats").items():
        if k.startswith("cmdstat_"):
            m = re.search(r"calls=(\d+)", v)
            if m:
                out[k[len("cmdstat_"):]] = int(m.group(1))
    return out


# The test's own and the cluster's housekeeping, left out of "data commands".
ADMIN_PREFIXES = ("info", "ping", "cluster", "replconf", "command", "client", "config",
                  "hello", "auth", "select", "readonly", "readwrite", "psync", "sync",
                  "debug", "script", "wait", "memory", "slowlog", "latency")


def metric_values(port, name):
    """{label text: value} of one metric of /metrics."""
    r = http_get(port, "/metrics", timeout=3)
    assert r.status == 200, r
    out = {}
    for line in r.body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            k, _, v = line.rpartition(" ")
            out[k[len(name):]] = float(v)
    return out


def node_metric(port, name):
    """{"host:port": value} of a chatd_redis_node_* metric."""
    out = {}
    for labels, v in metric_values(port, name).items():
        m = re.search(r'node="([^"]+)"', labels)
        if m:
            out[m.group(1)] = v
    return out


HEALTH_LINE = re.compile(r"^redis (\S+):(\d+) cmd=(\w+) sub=(\w+) slots=(\d+)$")


def parse_healthz(body):
    """(first line, [(addr, cmd, sub, slots)]) of a /healthz body."""
    lines = body.decode(errors="replace").splitlines()
    nodes = []
    for line in lines[1:]:
        m = HEALTH_LINE.match(line.strip())
        assert m, f"unexpected /healthz line {line!r} in {lines!r}"
        nodes.append((f"{m.group(1)}:{m.group(2)}", m.group(3), m.group(4), int(m.group(5))))
    return (lines[0] if lines else ""), nodes


# --------------------------------------------------------------------------
# clients


class Conn:
    """One WebSocket connection: direct answers are matched to requests by
    id; every frame (answers included) is also handed to on_frame, in
    arrival order."""

    def __init__(self, port, user, on_frame=None):
        self.url = f"ws://127.0.0.1:{port}/ws?user={user}"
        self.user = user
        self.on_frame = on_frame
        self.ws = None
        self.pending = {}
        self.closed = False
        self.reader = None

    async def open(self, timeout=5.0):
        self.ws = await asyncio.wait_for(
            websockets.connect(self.url, open_timeout=timeout, close_timeout=1, ping_interval=None,
                               max_size=None, max_queue=None), timeout)
        f = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if f.get("type") != "welcome":
            raise AssertionError(f"{self.user}: expected welcome, got {f!r}")
        self.reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self):
        try:
            async for raw in self.ws:
                f = json.loads(raw)
                rid = f.get("id")
                if rid is not None and f.get("type") in RESPONSE_TYPES:
                    fut = self.pending.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(f)
                if self.on_frame is not None:
                    self.on_frame(f)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{self.user}: connection closed"))
            self.pending.clear()

    async def request(self, type, payload, id, timeout=5.0):
        if self.closed:
            raise ConnectionError(f"{self.user}: connection closed")
        fut = asyncio.get_running_loop().create_future()
        self.pending[id] = fut
        try:
            await self.ws.send(json.dumps({"type": type, "id": id, "payload": payload}))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(id, None)

    def abort(self):
        if self.ws is not None:
            self.ws.transport.abort()

    async def close(self):
        self.abort()
        if self.reader is not None:
            try:
                await asyncio.wait_for(self.reader, 3)
            except BaseException:       # noqa: BLE001
                pass


NET_ERRORS = (ConnectionError, OSError, asyncio.TimeoutError, websockets.WebSocketException)


async def join_retrying(conn, room, since=None, deadline=20.0):
    """join, retried while the answer is `unavailable`. Returns the joined
    payload."""
    end = time.monotonic() + deadline
    k = 0
    while True:
        p = {"room": room}
        if since is not None:
            p["since"] = since
        k += 1
        f = await conn.request("join", p, f"j-{room}-{k}", 10)
        if f["type"] == "joined":
            return f["payload"]
        if f["type"] != "error" or f["payload"].get("code") != "unavailable" \
                or time.monotonic() > end:
            raise AssertionError(f"{conn.user}: join {room}: {f!r}")
        await asyncio.sleep(0.2)


class Sender:
    """Sends to one room with unique ids, one at a time; resends the same id
    until it is acked. Records acks, outages (first failed attempt to the
    ack that ended it) and any chat broadcast it sees (seq -> id)."""

    def __init__(self, port, name, room, pace=0.02):
        self.port, self.name, self.room, self.pace = port, name, room, pace
        self.acked = {}             # id -> seq
        self.ack_times = []         # (monotonic time, seq)
        self.dup_acks = 0
        self.unavailable = 0        # `unavailable` answers
        self.timeouts = 0
        self.reconnects = 0
        self.outages = []           # (start, end) monotonic
        self.errors = []            # unexpected answers
        self.obs = {}               # seq -> cid, from broadcasts
        self.conflicts = []
        self.unfinished = None
        self.stop = threading.Event()
        self.done = False

    def on_frame(self, f):
        if f.get("type") == "chat":
            p = f["payload"]
            if p.get("room") == self.room:
                prev = self.obs.setdefault(p["seq"], p.get("cid"))
                if prev != p.get("cid"):
                    self.conflicts.append(f"seq {p['seq']} seen as {prev!r} and {p.get('cid')!r}")

    async def run(self, finish_within=30.0):
        n, conn, down_since, inflight = 0, None, None, False
        stop_at = None
        try:
            while True:
                if self.stop.is_set():
                    if not inflight:
                        break
                    stop_at = stop_at or time.monotonic()
                    if time.monotonic() - stop_at > finish_within:
                        self.unfinished = f"{self.name}-{n}"
                        break
                mid = f"{self.name}-{n}"
                t_try = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        if conn is not None:
                            self.reconnects += 1
                        conn = Conn(self.port, self.name, self.on_frame)
                        await conn.open()
                        await join_retrying(conn, self.room, deadline=5)
                    inflight = True
                    f = await conn.request("chat", {"room": self.room, "content": f"m {mid}"}, mid, 5)
                    if f["type"] == "ack":
                        p = f["payload"]
                        now = time.monotonic()
                        if p.get("room") != self.room:
                            self.errors.append(f"ack of {mid} names room {p.get('room')!r}")
                        self.acked[mid] = p["seq"]
                        self.ack_times.append((now, p["seq"]))
                        self.dup_acks += bool(p.get("duplicate"))
                        if down_since is not None:
                            self.outages.append((down_since, now))
                            down_since = None
                        inflight = False
                        n += 1
                        if self.pace:
                            await asyncio.sleep(self.pace)
                        continue
                    if f["type"] == "error" and f["payload"].get("code") == "unavailable":
                        self.unavailable += 1
                    else:
                        self.errors.append(f"{mid}: {f!r}")
                    down_since = down_since or t_try
                    await asyncio.sleep(0.1)
                except (AssertionError, *NET_ERRORS) as e:
                    down_since = down_since or t_try
                    if isinstance(e, asyncio.TimeoutError):
                        self.timeouts += 1
                    if conn is not None:
                        await conn.close()
                        conn = None
                        self.reconnects += 1
                    await asyncio.sleep(0.2 + random.random() * 0.2)
        finally:
            if conn is not None:
                await conn.close()
            self.done = True


class Receiver:
    """One connection joined to every room; checks each room's seqs arrive
    as last+1 and records seq -> id. After a lost connection (or, with
    drop_every, on purpose) it reconnects and rejoins every room with
    since = the last seq it saw."""

    def __init__(self, port, name, rooms, drop_every=None):
        self.port, self.name, self.rooms = port, name, list(rooms)
        self.drop_every = drop_every
        self.last = {r: None for r in rooms}
        self.obs = {r: {} for r in rooms}
        self.since_asked = {}
        self.joined = set()
        self.problems = []
        self.reconnects = 0
        self.drops = 0
        self.join_retries = 0
        self.ready = False
        self.stop = threading.Event()
        self.no_more_drops = threading.Event()
        self.gen = 0

    def on_frame(self, f, gen):
        if gen != self.gen:
            return
        t, p = f.get("type"), f.get("payload") or {}
        if t == "joined":
            room = p.get("room")
            if room not in self.last:
                self.problems.append(f"joined a room it did not ask for: {f!r}")
                return
            since = self.since_asked.get(room)
            if since is None:
                if self.last[room] is None:
                    if p.get("seq") != 0:
                        self.problems.append(f"{room}: first join saw seq {p.get('seq')}, not a new room")
                    self.last[room] = p.get("seq")
            elif p.get("recovered") is not True:
                self.problems.append(f"{room}: rejoin with since={since} not recovered: {p!r}")
            self.joined.add(room)
        elif t == "chat":
            room, seq, cid = p.get("room"), p.get("seq"), p.get("cid")
            if room not in self.last:
                self.problems.append(f"chat of a room it is not in: {p!r}")
                return
            if room not in self.joined:
                self.problems.append(f"{room}: chat seq {seq} before joined on this connection")
            prev = self.obs[room].get(seq)
            if prev is not None and prev != cid:
                self.problems.append(f"{room}: seq {seq} seen as {prev!r} and as {cid!r}")
            last = self.last[room]
            if last is None:
                self.problems.append(f"{room}: chat seq {seq} before any join")
                self.last[room] = seq
            elif seq == last + 1:
                self.last[room] = seq
            elif seq <= last:
                self.problems.append(f"{room}: duplicate: seq {seq} after {last}")
            else:
                self.problems.append(f"{room}: gap: seq {seq} after {last}")
                self.last[room] = seq
            self.obs[room].setdefault(seq, cid)

    async def run(self):
        conn = None
        try:
            while not self.stop.is_set():
                self.gen += 1
                gen = self.gen
                self.joined = set()
                conn = Conn(self.port, self.name, lambda f, g=gen: self.on_frame(f, g))
                try:
                    await conn.open()
                    pending = list(self.rooms)
                    while pending and not self.stop.is_set():
                        for room in list(pending):
                            since = self.last[room]
                            self.since_asked[room] = since
                            p = {"room": room}
                            if since is not None:
                                p["since"] = since
                            f = await conn.request("join", p, f"j{gen}-{room}", 5)
                            if f["type"] == "joined":
                                pending.remove(room)
                            elif f["type"] == "error" and f["payload"].get("code") == "unavailable":
                                self.join_retries += 1
                            else:
                                self.problems.append(f"join {room}: {f!r}")
                                pending.remove(room)
                        if pending:
                            await asyncio.sleep(0.2)
                    self.ready = True
                    until = (time.monotonic() + self.drop_every) if self.drop_every else None
                    while not self.stop.is_set() and not conn.closed:
                        if until is not None and time.monotonic() >= until \
                                and not self.no_more_drops.is_set():
                            self.drops += 1
                            break
                        await asyncio.sleep(0.05)
                    if not self.stop.is_set() and conn.closed:
                        self.reconnects += 1
                except NET_ERRORS:
                    self.reconnects += 1
                    await asyncio.sleep(0.2 + random.random() * 0.2)
                finally:
                    await conn.close()
        finally:
            if conn is not None:
                await conn.close()


class ClientLoop:
    """An asyncio loop in a thread of its own, for clients that must keep
    running while the test's thread kills and restarts servers."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="clients", daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro, timeout):
        return self.submit(coro).result(timeout)

    def close(self):
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.call(cancel_all(), 10)
        except Exception:       # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


async def read_history(port, room, user="auditor"):
    """Every message of room, paging history with before (oldest first)."""
    conn = Conn(port, user)
    await conn.open()
    try:
        await join_retrying(conn, room)
        out, before, k = [], None, 0
        while True:
            p = {"room": room, "limit": 100}
            if before is not None:
                p["before"] = before
            end = time.monotonic() + 20
            while True:
                k += 1
                f = await conn.request("history", p, f"h{k}", 10)
                if f["type"] == "history":
                    break
                assert f["type"] == "error" and f["payload"].get("code") == "unavailable" \
                    and time.monotonic() < end, f"history {room} {p}: {f!r}"
                await asyncio.sleep(0.2)
            msgs = f["payload"]["messages"]
            seqs = [m["seq"] for m in msgs]
            assert seqs == sorted(seqs), f"history page of {room} not ascending: {seqs}"
            assert before is None or not seqs or seqs[-1] < before, \
                f"history {room} before={before} returned seqs up to {seqs[-1]}"
            out = msgs + out
            if not f["payload"]["more"] or not msgs:
                return out
            before = msgs[0]["seq"]
            assert k < 5000, f"history of {room} does not end"
    finally:
        await conn.close()


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def audit(rooms, senders, receivers, hist):
    """Every problem found (strings): history vs acks vs what clients saw."""
    problems = []
    for room in rooms:
        h = hist[room]
        seqs = [m["seq"] for m in h]
        n = len(h)
        want = list(range(1, n + 1))
        if seqs != want:
            i = first_diff(seqs, want)
            problems.append(f"{room}: history seqs are not 1..{n}: at index {i} got "
                            f"{seqs[max(0, i - 2):i + 3]}, want {want[max(0, i - 2):i + 3]} "
                            f"({len(set(seqs))} distinct)")
        by_seq = {}
        for m in h:
            by_seq.setdefault(m["seq"], m)
        cids = {}
        for m in h:
            cids.setdefault(m.get("cid"), []).append(m["seq"])
        twice = {c: s for c, s in cids.items() if len(s) > 1}
        if twice:
            problems.append(f"{room}: {len(twice)} ids appear more than once in history, e.g. "
                            + ", ".join(f"{c} at seqs {s}" for c, s in list(twice.items())[:5]))
        acked = {}
        for s in senders:
            if s.room == room:
                acked.update(s.acked)
        wrong = [(mid, seq, by_seq.get(seq, {}).get("cid")) for mid, seq in acked.items()
                 if by_seq.get(seq, {}).get("cid") != mid]
        if wrong:
            wrong.sort(key=lambda x: x[1])
            problems.append(f"{room}: {len(wrong)} of {len(acked)} acked messages are not in history "
                            f"at their acked seq, first: "
                            + ", ".join(f"{mid}@{seq} (history: {c!r})" for mid, seq, c in wrong[:5]))
        extra = sorted(set(cids) - set(acked), key=str)
        if extra:
            problems.append(f"{room}: {len(extra)} ids in history without an ack, e.g. "
                            + ", ".join(f"{c} at {cids[c]}" for c in extra[:5]))
        acked_seqs = sorted(acked.values())
        if len(set(acked_seqs)) != len(acked_seqs):
            problems.append(f"{room}: two ids were acked with the same seq")
        for r in receivers:
            obs = r.obs[room]
            got = sorted(obs)
            if got != want:
                problems.append(f"{r.name} {room}: saw {len(got)} seqs, want 1..{n}; missing "
                                f"{sorted(set(want) - set(got))[:10]}, beyond history "
                                f"{sorted(set(got) - set(want))[:10]}")
            diff = [(s, obs[s], by_seq[s].get("cid")) for s in got
                    if s in by_seq and obs[s] != by_seq[s].get("cid")]
            if diff:
                problems.append(f"{r.name} {room}: {len(diff)} seqs seen with another id than "
                                f"history's, first (seq, seen, history): {diff[:5]}")
        for s in senders:
            if s.room != room:
                continue
            diff = [(q, c, by_seq[q].get("cid")) for q, c in sorted(s.obs.items())
                    if q in by_seq and c != by_seq[q].get("cid")]
            beyond = [q for q in s.obs if q not in by_seq]
            if diff or beyond:
                problems.append(f"{s.name}: broadcasts differ from history: {diff[:5]}, "
                                f"seqs not in history {sorted(beyond)[:5]}")
    for r in receivers:
        if r.problems:
            problems.append(f"{r.name}: {len(r.problems)} delivery problems, first: {r.problems[:8]}")
    for s in senders:
        if s.errors:
            problems.append(f"{s.name}: {len(s.errors)} unexpected answers, first: {s.errors[:3]}")
        if s.conflicts:
            problems.append(f"{s.name}: {s.conflicts[:5]}")
        if s.unfinished:
            problems.append(f"{s.name}: {s.unfinished} still not acked 30 s after the senders "
                            "were told to stop")
    return problems


class Traffic:
    """Senders (per_room per room) and receivers (one steady, one dropping
    its connection every drop_every seconds) on a ClientLoop."""

    def __init__(self, srv, rooms, per_room=2, pace=0.02, drop_every=2.5):
        self.srv, self.rooms = srv, list(rooms)
        self.loop = ClientLoop()
        self.receivers = [Receiver(srv.port, f"rcv-steady-{TAG}", rooms),
                          Receiver(srv.port, f"rcv-drops-{TAG}", rooms, drop_every=drop_every)]
        self.senders = [Sender(srv.port, f"snd{k}-{i}-{TAG}", room, pace)
                        for i, room in enumerate(rooms) for k in range(per_room)]
        self.futs = []
        self.hist = None

    def start(self):
        self.futs += [self.loop.submit(r.run()) for r in self.receivers]
        wait_for(lambda: all(r.ready and r.joined == set(self.rooms) for r in self.receivers),
                 15, what="receivers joined to every room")
        self.futs += [self.loop.submit(s.run()) for s in self.senders]
        wait_for(lambda: all(s.acked for s in self.senders), 15, what="every sender's first ack")
        self.t_start = time.monotonic()

    def stop_senders(self):
        for s in self.senders:
            s.stop.set()
        for r in self.receivers:
            r.no_more_drops.set()
        wait_for(lambda: all(s.done for s in self.senders), 45, interval=0.1,
                 what="senders to finish their last message")
        self.t_stop = time.monotonic()

    def finish(self):
        """History of every room, then waits until every receiver has seen
        each room's last seq (or 20 s), then stops the receivers. Returns
        audit problems."""
        async def all_history():
            return {room: await read_history(self.srv.port, room, f"aud-{TAG}") for room in self.rooms}
        self.hist = self.loop.call(all_history(), 120)
        tops = {room: len(h) for room, h in self.hist.items()}

        def caught_up():
            return all((r.last[room] or 0) >= tops[room] for r in self.receivers for room in self.rooms)
        try:
            wait_for(caught_up, 20, interval=0.1, what="receivers to reach every room's last seq")
        except AssertionError:
            pass        # reported by audit() with the details
        for r in self.receivers:
            r.stop.set()
        time.sleep(0.2)
        return audit(self.rooms, self.senders, self.receivers, self.hist)

    def close(self):
        for s in self.senders:
            s.stop.set()
        for r in self.receivers:
            r.stop.set()
        self.loop.close()

    # -- figures

    def acked(self, rooms=None):
        return sum(len(s.acked) for s in self.senders if rooms is None or s.room in rooms)

    def max_outage(self, rooms):
        d = [e - b for s in self.senders if s.room in rooms for b, e in s.outages]
        return max(d) if d else 0.0

    def outage_windows(self, rooms):
        return [(b, e) for s in self.senders if s.room in rooms for b, e in s.outages]

    def acks_after(self, t, room):
        return sum(1 for s in self.senders if s.room == room for at, _ in s.ack_times if at > t)

    def summary(self):
        return (f"acked={self.acked()} dup_acks={sum(s.dup_acks for s in self.senders)} "
                f"unavailable={sum(s.unavailable for s in self.senders)} "
                f"timeouts={sum(s.timeouts for s in self.senders)} "
                f"sender_reconnects={sum(s.reconnects for s in self.senders)} "
                f"receiver_reconnects={sum(r.reconnects for r in self.receivers)} "
                f"receiver_drops={sum(r.drops for r in self.receivers)} "
                f"join_retries={sum(r.join_retries for r in self.receivers)}")


def fmt_problems(problems, what):
    return f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(p[:600] for p in problems[:25])


# --------------------------------------------------------------------------
# 1. failover under load


@timeout(150)
def test_failover_under_load_loses_no_acked_message():
    healthy_cluster()
    by_master = rooms_per_master("fo", 2)
    rooms = [r for rs in by_master.values() for r in rs]
    srv = start_chatd("cl-failover", workers=2,
                      args=["--ack-replicas", "1", "--recovery-window", "50000"])
    traffic = Traffic(srv, rooms)
    try:
        traffic.start()
        time.sleep(3)
        victim = CLUSTER.master_of(slot_of(rooms[0]))
        hit = by_master[victim.port]
        spared = [r for r in rooms if r not in hit]
        replica = CLUSTER.replica_of(victim)
        acked_before = traffic.acked()
        t_kill = time.monotonic()
        victim.kill9()
        promoted = CLUSTER.failover_wait(victim, 30)
        t_fo = time.monotonic()
        assert promoted is not None and promoted.port != victim.port, \
            f"failover of {victim!r} gave {promoted!r}"
        # Left without a replica for a while: WAIT 1 cannot succeed on the
        # promoted master, so its sends are stored but answered unavailable
        # until the old master is back as its replica.
        time.sleep(2.5)
        victim.restart()
        t_restart = time.monotonic()
        CLUSTER.wait_ok(40, replicas_linked=True)
        assert victim.role() == "slave", f"{victim!r} came back as {victim.role()}, not a replica"
        t_linked = time.monotonic()
        time.sleep(4)
        traffic.stop_senders()

        # Sends to the failed shard resumed once it had a replica again.
        for room in hit:
            n = traffic.acks_after(t_linked, room)
            assert n > 0, (f"{room} (shard of {victim.port}) got no ack in the "
                           f"{traffic.t_stop - t_linked:.1f}s after the restarted node rejoined "
                           f"as replica; senders: "
                           + "; ".join(f"{s.name} unavailable={s.unavailable} timeouts={s.timeouts} "
                                       f"reconnects={s.reconnects}"
                                       for s in traffic.senders if s.room == room))
        problems = traffic.finish()
        total_hist = sum(len(h) for h in traffic.hist.values())
        out_hit = traffic.max_outage(hit)
        out_spared = traffic.max_outage(spared)
        print(f"    failover: killed {victim.port} (rooms {len(hit)}/{len(rooms)}), promoted "
              f"{promoted.port} after {t_fo - t_kill:.1f}s, restarted at +{t_restart - t_kill:.1f}s, "
              f"replica linked at +{t_linked - t_kill:.1f}s")
        print(f"    failover: {traffic.summary()} history={total_hist} "
              f"(acked before the kill {acked_before})")
        print(f"    failover: duplicate acks (stored before, acked on a resend) "
              f"{sum(s.dup_acks for s in traffic.senders if s.room in hit)} on the failed shard")
        print(f"    failover: sends unavailable up to {out_hit:.1f}s on the failed shard "
              f"({len(traffic.outage_windows(hit))} outages), up to {out_spared:.1f}s elsewhere "
              f"({len(traffic.outage_windows(spared))} outages)")
        assert traffic.acked() > 500, f"too little traffic to judge: {traffic.summary()}"
        assert not problems, fmt_problems(problems, "failover under load")
        assert replica is None or promoted.port == replica.port, \
            f"slots of {victim.port} went to {promoted.port}, not its replica {replica.port}"
    finally:
        traffic.close()
        srv.stop()


# --------------------------------------------------------------------------
# 2. slot migration under traffic


@timeout(120)
def test_slot_migration_under_traffic():
    # --ack-replicas 1: every chat then takes three steps that can each be
    # redirected on its own (the send script, WAIT on the node that ran it,
    # the commit script that publishes), the most the migration can break.
    healthy_cluster()
    by_master = rooms_per_master("mig", 2)
    masters = {m.port: m for m in CLUSTER.masters()}
    ports = sorted(by_master)
    rooms = [r for p in ports for r in by_master[p]]
    srv = start_chatd("cl-migrate", workers=2,
                      args=["--ack-replicas", "1", "--recovery-window", "50000"])
    traffic = Traffic(srv, rooms)
    try:
        redirects_before = sum(node_metric(srv.port, "chatd_redis_node_redirects_total").values())
        traffic.start()
        time.sleep(2)
        # the first room of every master moves to the next master; then the
        # first of them moves on once more (to the third master)
        plan = [(by_master[p][0], masters[ports[(i + 1) % 3]]) for i, p in enumerate(ports)]
        plan.append((by_master[ports[0]][0], masters[ports[2]]))
        moves = []
        for room, dst in plan:
            src = CLUSTER.master_of(slot_of(room))
            t0 = time.monotonic()
            keys = CLUSTER.migrate_slot(slot_of(room), dst, batch=10)
            moves.append((room, src.port, dst.port, keys, time.monotonic() - t0))
            assert CLUSTER.master_of(slot_of(room)).port == dst.port, \
                f"slot {slot_of(room)} of {room} not served by {dst.port} after the migration"
            time.sleep(1.0)
        t_moved = time.monotonic()
        time.sleep(3)
        traffic.stop_senders()
        for room, _, _, _, _ in moves:
            n = traffic.acks_after(t_moved, room)
            assert n > 0, f"{room}: no ack after its slot moved ({traffic.summary()})"
        problems = traffic.finish()
        redirects_after = sum(node_metric(srv.port, "chatd_redis_node_redirects_total").values())
        total_hist = sum(len(h) for h in traffic.hist.values())
        moved_rooms = {m[0] for m in moves}
        for room, a, b, keys, secs in moves:
            print(f"    migration: {room} slot {slot_of(room)} {a} -> {b}: {keys} keys in {secs:.2f}s")
        print(f"    migration: {traffic.summary()} history={total_hist} "
              f"redirects {redirects_before:.0f} -> {redirects_after:.0f}; sends unavailable up to "
              f"{traffic.max_outage(moved_rooms):.2f}s in moved rooms, "
              f"{traffic.max_outage(set(rooms) - moved_rooms):.2f}s in the others")
        assert traffic.acked() > 500, f"too little traffic to judge: {traffic.summary()}"
        assert all(keys > 0 for _, _, _, keys, _ in moves), f"a migration moved no keys: {moves}"
        assert not problems, fmt_problems(problems, "slot migration under traffic")
        assert redirects_after > redirects_before, \
            (f"chatd_redis_node_redirects_total did not go up ({redirects_before} -> "
             f"{redirects_after}) although {len(moves)} slots with live rooms moved")
    finally:
        traffic.close()
        srv.stop()


# --------------------------------------------------------------------------
# 3. commands spread over the masters


@timeout(120)
def test_command_spread_across_masters():
    # Joins also touch keys of the worker (the rooms it holds, in that
    # worker's own slot) and of the user (the user's rooms index, in the
    # user's slot: six users here), so commands, EVALSHA included (every
    # send runs one script on the room's node), are compared over the send
    # phase only.
    masters = healthy_cluster()
    n_rooms, per_room = 1000, 3
    rooms = [f"sp-{TAG}-{i}" for i in range(n_rooms)]
    owners = CLUSTER.slot_owners()
    rooms_of = {m.port: sum(1 for r in rooms if owners[slot_of(r)] == m.port) for m in masters}
    srv = start_chatd("cl-spread", workers=2, args=["--max-rooms", str(n_rooms)])
    snaps = []

    def snapshot():
        snaps.append({m.port: cmdstats(m) for m in masters})

    try:
        async def scenario():
            got = {}        # receiver -> {room: [(seq, cid)]}

            def recorder(name):
                got[name] = {}

                def on_frame(f):
                    if f.get("type") == "chat":
                        p = f["payload"]
                        got[name].setdefault(p["room"], []).append((p["seq"], p.get("cid")))
                return on_frame
            window = asyncio.Semaphore(200)

            async def req(conn, type, payload, id):
                async with window:
                    return await conn.request(type, payload, id, 30)

            async def join_all(conn, rs):
                answers = await asyncio.gather(*(req(conn, "join", {"room": r}, f"j-{r}") for r in rs))
                bad = [a for a in answers if a["type"] != "joined"]
                assert not bad, f"{conn.user}: {len(bad)} joins refused, e.g. {bad[:3]}"

            receivers = [await Conn(srv.port, f"sprcv{k}-{TAG}", recorder(k)).open() for k in range(2)]
            senders = [await Conn(srv.port, f"spsnd{k}-{TAG}").open() for k in range(4)]
            try:
                snapshot()
                t0 = time.monotonic()
                await asyncio.gather(*(join_all(c, rooms) for c in receivers))
                share = [rooms[k::4] for k in range(4)]
                await asyncio.gather(*(join_all(c, rs) for c, rs in zip(senders, share)))
                t_joined = time.monotonic()
                snapshot()

                async def send_all(conn, rs):
                    ids = [(r, f"{conn.user}-{r}-{i}") for i in range(per_room) for r in rs]
                    answers = await asyncio.gather(*(req(conn, "chat", {"room": r, "content": mid}, mid)
                                                     for r, mid in ids))
                    bad = [a for a in answers if a["type"] != "ack"]
                    assert not bad, f"{conn.user}: {len(bad)} chats not acked, e.g. {bad[:3]}"
                await asyncio.gather(*(send_all(c, rs) for c, rs in zip(senders, share)))
                t_sent = time.monotonic()
                want = n_rooms * per_room
                end = time.monotonic() + 30
                while any(sum(len(v) for v in g.values()) < want for g in got.values()) \
                        and time.monotonic() < end:
                    await asyncio.sleep(0.1)
                snapshot()
                for k, g in got.items():
                    bad = [(r, g.get(r)) for r in rooms
                           if [s for s, _ in g.get(r, [])] != list(range(1, per_room + 1))]
                    assert not bad, (f"receiver {k}: {len(bad)} rooms without seqs 1..{per_room} "
                                     f"in order, e.g. {bad[:3]}")
                return t_joined - t0, t_sent - t_joined
            finally:
                for c in receivers + senders:
                    await c.close()
        t_join, t_send = asyncio.run(scenario())
        s0, s1, s2 = snaps

        def delta(a, b, port):
            return {k: a[port].get(k, 0) - b[port].get(k, 0) for k in a[port]}

        def data(d):
            return sum(v for k, v in d.items() if not k.startswith(ADMIN_PREFIXES))
        rows = []
        for m in masters:
            dj, ds = delta(s1, s0, m.port), delta(s2, s1, m.port)
            rows.append({"port": m.port, "slots": len(CLUSTER.slots_of(m)), "rooms": rooms_of[m.port],
                         "evalsha": ds.get("evalsha", 0),
                         "join_data": data(dj), "send_data": data(ds), "dj": dj, "ds": ds})
        print(f"    spread: {n_rooms} rooms, {n_rooms * per_room} chats, 2x{n_rooms} + {n_rooms} joins "
              f"in {t_join:.1f}s, sends in {t_send:.1f}s")
        for r in rows:
            top = sorted(((v, k) for k, v in r["ds"].items() if v), reverse=True)[:5]
            print(f"    spread: master {r['port']}: slots={r['slots']} rooms={r['rooms']} "
                  f"evalsha={r['evalsha']} join-phase commands={r['join_data']} "
                  f"send-phase commands={r['send_data']} ({', '.join(f'{k}={v}' for v, k in top)})")
        for what, col in (("evalsha calls in the send phase", "evalsha"),
                          ("data commands in the send phase", "send_data")):
            vals = [r[col] for r in rows]
            mean = sum(vals) / len(vals)
            assert mean > n_rooms / 2, f"{what}: too few calls to judge: {vals}"
            off = [(r["port"], r[col], f"{(r[col] - mean) / mean:+.0%}") for r in rows
                   if abs(r[col] - mean) > 0.25 * mean]
            assert not off, (f"{what} per master not within 25% of the mean {mean:.0f}: {off} "
                             f"(all as (port, calls, rooms): "
                             f"{[(r['port'], r[col], r['rooms']) for r in rows]})")
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# 4. /healthz and /metrics per node


class Poller:
    """GET /healthz every 50 ms in a thread: [(monotonic time, status,
    body)]; also when `watch` (a replica) first says it is a master."""

    def __init__(self, port, watch):
        self.port, self.watch = port, watch
        self.samples = []
        self.promoted_at = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                r = http_get(self.port, "/healthz", timeout=2)
                self.samples.append((t, r.status, r.body))
            except Exception as e:      # noqa: BLE001
                self.samples.append((t, None, repr(e).encode()))
            if self.promoted_at is None:
                try:
                    if self.watch.role(timeout=0.5) == "master":
                        self.promoted_at = time.monotonic()
                except (OSError, RedisError):
                    pass
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def healthz(port):
    r = http_get(port, "/healthz", timeout=3)
    return r.status, r.body


def check_health_lines(body, masters):
    first, nodes = parse_healthz(body)
    addrs = sorted(a for a, _, _, _ in nodes)
    want = sorted(m.addr for m in masters)
    assert first == "ok", f"/healthz first line {first!r}: {body!r}"
    assert addrs == want, f"/healthz lists {addrs}, the masters are {want}: {body!r}"
    assert all(c == "up" and s == "up" for _, c, s, _ in nodes), f"a node is not up: {body!r}"
    assert sum(n for _, _, _, n in nodes) == harness.CLUSTER_SLOTS, \
        f"slots in /healthz sum to {sum(n for _, _, _, n in nodes)}: {body!r}"
    for m in masters:
        n = next(n for a, _, _, n in nodes if a == m.addr)
        assert n == len(CLUSTER.slots_of(m)), \
            f"/healthz says {m.addr} serves {n} slots, the cluster says {len(CLUSTER.slots_of(m))}"
    return nodes


@timeout(120)
def test_healthz_and_metrics_list_every_node():
    masters = healthy_cluster()
    workers = 2
    srv = start_chatd("cl-health", workers=workers)
    try:
        # Every poll (each may reach either worker) says ok with 3 node lines.
        for _ in range(6):
            st, body = healthz(srv.port)
            assert st == 200, f"/healthz {st} on a healthy cluster: {body!r}"
            check_health_lines(body, masters)
        up = node_metric(srv.port, "chatd_redis_node_up")
        missing = [n.addr for n in CLUSTER.nodes if n.addr not in up]
        assert not missing, f"chatd_redis_node_up has no series for {missing}: {up}"
        for m in masters:
            assert up[m.addr] == workers, f"chatd_redis_node_up{{node={m.addr!r}}} = {up[m.addr]}, " \
                                          f"want {workers} (every worker): {up}"

        victim = masters[0]
        replica = CLUSTER.replica_of(victim)
        assert replica is not None, f"{victim!r} has no replica"
        with Poller(srv.port, replica) as poll:
            time.sleep(0.3)
            t_kill = time.monotonic()
            victim.kill9()
            promoted = CLUSTER.failover_wait(victim, 30)
            t_fo = time.monotonic()
            wait_for(lambda: poll.samples and poll.samples[-1][0] > t_fo and all(
                s == 200 for _, s, _ in poll.samples[-5:]), 15, what="/healthz 200 again after the failover")
        t_promoted = poll.promoted_at or t_fo
        samples = poll.samples
        before = [s for s in samples if s[0] < t_kill]
        assert before and all(s == 200 for _, s, _ in before), \
            f"/healthz not 200 before the kill: {[(round(t - t_kill, 2), s) for t, s, _ in before]}"
        # The kill is seen within half a second; from then until the replica
        # is promoted every answer is 503.
        down = [(t, s, b) for t, s, b in samples if t_kill + 0.5 <= t < t_promoted]
        assert down, f"no /healthz sample between the kill and the promotion " \
                     f"({t_promoted - t_kill:.2f}s)"
        wrong = [(round(t - t_kill, 2), s, b[:200]) for t, s, b in down if s != 503]
        assert not wrong, f"/healthz not 503 between the kill and the failover: {wrong[:5]}"
        first_503 = next((t for t, s, _ in samples if t >= t_kill and s == 503), None)
        assert first_503 is not None and first_503 - t_kill < 1.0, \
            f"/healthz did not turn 503 within 1 s of the kill (first 503 at {first_503})"
        # Its body names the dead node as down.
        down_body = next(b for t, s, b in samples if t >= first_503 and s == 503)
        _, nodes = parse_healthz(down_body)
        dead = [n for n in nodes if n[0] == victim.addr]
        assert dead and (dead[0][1] == "down" or dead[0][2] == "down"), \
            f"503 body does not show {victim.addr} down: {down_body!r}"
        back = next(t for t, s, _ in samples if t >= t_promoted and s == 200)
        print(f"    healthz: 503 {first_503 - t_kill:.2f}s after the kill, replica {replica.port} "
              f"promoted at +{t_promoted - t_kill:.2f}s (failover_wait +{t_fo - t_kill:.2f}s), "
              f"200 again at +{back - t_kill:.2f}s ({back - t_promoted:.2f}s after the promotion); "
              f"{len(samples)} polls")
        assert back - t_promoted < 10, f"/healthz took {back - t_promoted:.1f}s after the promotion"

        now_masters = CLUSTER.masters()
        assert promoted in now_masters and victim not in now_masters, (promoted, now_masters)
        for _ in range(6):
            st, body = healthz(srv.port)
            assert st == 200, f"/healthz {st} after the failover: {body!r}"
            nodes = check_health_lines(body, now_masters)
            assert promoted.addr in [a for a, _, _, _ in nodes], body
        up = node_metric(srv.port, "chatd_redis_node_up")
        for m in now_masters:
            assert up.get(m.addr) == workers, \
                f"after the failover chatd_redis_node_up{{node={m.addr!r}}} = {up.get(m.addr)}: {up}"

        # The old master comes back as a replica: still healthy, same masters.
        victim.restart()
        CLUSTER.wait_ok(40, replicas_linked=True)
        assert victim.role() == "slave", f"{victim!r} came back as {victim.role()}"
        time.sleep(1.5)
        for _ in range(6):
            st, body = healthz(srv.port)
            assert st == 200, f"/healthz {st} after the old master rejoined: {body!r}"
            check_health_lines(body, CLUSTER.masters())
        up = node_metric(srv.port, "chatd_redis_node_up")
        for m in CLUSTER.masters():
            assert up.get(m.addr) == workers, \
                f"after the rejoin chatd_redis_node_up{{node={m.addr!r}}} = {up.get(m.addr)}: {up}"
        assert up.get(victim.addr, 0) == 0, \
            f"chatd_redis_node_up of {victim.addr}, now a replica chatd does not use, is " \
            f"{up.get(victim.addr)}: {up}"
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# 5. subscriptions follow a moved slot


@timeout(60)
def test_subscriptions_follow_a_moved_slot():
    healthy_cluster()
    from chatclient import ChatClient, clients_on_distinct_workers
    srv = start_chatd("cl-subs", workers=2)
    room = f"subs-{TAG}"
    chan = room_key(room)
    slot = slot_of(room)

    def numsub(node):
        reply = node.command("PUBSUB", "SHARDNUMSUB", chan)
        return int(reply[1])

    async def scenario():
        pairs = await clients_on_distinct_workers(srv, f"sub{TAG}-", 2)
        members = [c for c, _ in pairs]
        members.append(await ChatClient.open(srv.port, f"sub{TAG}-extra"))
        worker = {c.user: pid for c, pid in pairs}
        try:
            for c in members:
                await c.join(room)
            sender = members[0]
            seq = 0
            results = []

            async def deliver(label):
                nonlocal seq
                ack = await sender.chat(room, label, id=f"{label}-{TAG}", timeout=10)
                seq += 1
                assert ack["seq"] == seq, f"{label}: acked as seq {ack['seq']}, want {seq}"
                t0 = time.monotonic()
                for c in members:
                    try:
                        await c.wait_seq(room, seq, timeout=5)
                    except AssertionError as e:
                        raise AssertionError(f"{label} (seq {seq}) did not reach {c.user} "
                                             f"(worker {worker.get(c.user, '?')}): {e}") from None
                return time.monotonic() - t0

            await deliver("before")
            src = CLUSTER.master_of(slot)
            await until_sync(lambda: numsub(src) == 2, 5, f"2 subscriptions (one per worker) on {src.port}")
            others = [m for m in CLUSTER.masters() if m.port != src.port]
            hops = [others[0], others[1], src]
            for dst in hops:
                old = CLUSTER.master_of(slot)
                keys = await asyncio.to_thread(CLUSTER.migrate_slot, slot, dst)
                t_moved = time.monotonic()
                took = await deliver(f"after-{dst.port}")
                await until_sync(lambda: numsub(dst) == 2 and numsub(old) == 0, 5,
                                 lambda: f"chatd's 2 shard subscriptions to move from {old.port} to "
                                         f"{dst.port} (now {numsub(old)} there, {numsub(dst)} here)")
                results.append((old.port, dst.port, keys, took, time.monotonic() - t_moved))
            for c in members:
                seqs = c.seqs(room)
                assert seqs == list(range(1, seq + 1)), f"{c.user} saw seqs {seqs}, want 1..{seq}"
            return results
        finally:
            for c in members:
                await c.close()
    try:
        results = asyncio.run(scenario())
        for a, b, keys, took, subs in results:
            print(f"    subscriptions: slot {slot} {a} -> {b} ({keys} keys): message delivered to "
                  f"every member in {took:.2f}s, subscriptions on the new owner after {subs:.2f}s")
    finally:
        srv.stop()


async def until_sync(cond, timeout, what):
    """Polls a blocking condition (in a thread) until true."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            if await asyncio.to_thread(cond):
                return
        except (OSError, RedisError) as e:
            last = e
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {text}"
                                 + (f" (last error {last!r})" if last else ""))
        await asyncio.sleep(0.05)
