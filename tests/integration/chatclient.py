"""
A small asyncio chat client for chatd's integration tests, built on the
`websockets` package (Debian's python3-websockets 10.x, asyncio API).

    c = await ChatClient.open(srv.port, "alice")     # connected, welcome read
    j = await c.join("room1")                        # joined payload (asserted)
    r = await c.request("chat", {"room": "room1", "content": "hi"}, id="c1")
    f = await c.recv_until(lambda f: f["type"] == "chat", timeout=5)
    c.chats("room1")                                 # chat payloads received so far
    await c.close()

Over TLS: `ChatClient.open(srv.tls_port, "alice", tls=ctx)` connects with
wss:// (ctx an ssl.SSLContext, e.g. srv.client_context()); `peer_cert()`
is the certificate the server showed. With tls=None (the default) a port
whose server got TLS from CHATD_IT_TLS=1 is reached over wss:// on its TLS
port (harness.tls_port_of); tls=False always connects plain.

A background task reads every frame into `frames` (in arrival order), so a
client never blocks the server while the test is busy elsewhere; `pause()`
stops that reading (for slow-consumer tests). Also: which chatd worker
holds a connection (`worker_of`), from /proc.
"""

import asyncio
import functools
import itertools
import random
import json
import time

import websockets

import harness

RESPONSE_TYPES = ("joined", "left", "ack", "history", "presence", "pong", "error", "ok", "rooms", "results",
                  "keys", "roomkeys")


class Closed(AssertionError):
    """The connection closed while a frame was awaited."""


class ChatClient:
    _ids = itertools.count(1)

    def __init__(self, port, user, host="127.0.0.1", path=None, tls=None):
        self.port = port
        self.user = user
        self.host = host
        self.path = path or f"/ws?user={user}"
        self.tls = tls
        self.ssl = None             # the SSLContext of the current connection
        self.url = f"ws://{host}:{port}" + self.path
        self.ws = None
        self.frames = []            # every JSON frame received, in order
        self.pos = 0                # recv_until's cursor into frames
        self.welcome = None
        self.closed = False
        self.close_code = None
        self._event = asyncio.Event()
        self._reader = None

    # -- lifecycle

    @classmethod
    async def open(cls, port, user, timeout=5.0, **kw):
        c = cls(port, user, **kw)
        await c.connect(timeout)
        return c

    def _target(self):
        """(url, SSLContext or None) to connect to now."""
        if self.tls is False:
            return f"ws://{self.host}:{self.port}{self.path}", None
        if self.tls is None:
            mapped = harness.tls_port_of(self.port)
            if mapped is None:
                return f"ws://{self.host}:{self.port}{self.path}", None
            tls_port, ctx = mapped
            return f"wss://{self.host}:{tls_port}{self.path}", ctx
        ctx = self.tls if self.tls is not True else harness.tls_context(verify=False)
        return f"wss://{self.host}:{self.port}{self.path}", ctx

    async def connect(self, timeout=5.0):
        self.url, self.ssl = self._target()
        kw = {"ssl": self.ssl} if self.ssl is not None else {}
        self.ws = await asyncio.wait_for(
            websockets.connect(self.url, open_timeout=timeout, close_timeout=1,
                               max_size=None, ping_interval=None, max_queue=None, **kw),
            timeout)
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        self.welcome = await self.recv_until(lambda f: f.get("type") == "welcome", timeout)
        return self

    async def _read_loop(self):
        try:
            async for raw in self.ws:
                try:
                    f = json.loads(raw)
                except (TypeError, ValueError):
                    f = {"type": "_invalid", "raw": raw}
                self.frames.append(f)
                self._wake()
        except websockets.ConnectionClosed:
            pass
        except Exception as e:      # noqa: BLE001 - recorded for the test to see
            self.frames.append({"type": "_reader_error", "error": repr(e)})
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            self._wake()

    def _wake(self):
        ev, self._event = self._event, asyncio.Event()
        ev.set()

    async def close(self):
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except Exception:       # noqa: BLE001
                pass
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 3)
            except Exception:       # noqa: BLE001
                self._reader.cancel()

    def drop(self):
        """Ends the TCP connection abruptly (no close handshake)."""
        self.ws.transport.abort()

    async def wait_closed(self, timeout):
        """True when the connection ended within timeout."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            ev = self._event
            rem = deadline - time.monotonic()
            if rem <= 0:
                return False
            try:
                await asyncio.wait_for(ev.wait(), rem)
            except asyncio.TimeoutError:
                return self.closed
        return True

    def local_port(self):
        return self.ws.transport.get_extra_info("sockname")[1]

    def ssl_object(self):
        """The connection's ssl.SSLObject (None over plain ws)."""
        return self.ws.transport.get_extra_info("ssl_object")

    def peer_cert(self):
        """DER of the certificate the server showed this connection."""
        so = self.ssl_object()
        return so.getpeercert(binary_form=True) if so is not None else None

    # -- sending

    def next_id(self, prefix="r"):
        return f"{prefix}{next(ChatClient._ids)}"

    async def send(self, type, payload=None, id=None):
        msg = {"type": type}
        if id is not None:
            msg["id"] = id
        if payload is not None:
            msg["payload"] = payload
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, text):
        await self.ws.send(text)

    # -- receiving

    async def wait(self, pred, timeout=5.0, start=0, what=None):
        """(index, frame) of the first frame at index >= start matching pred,
        waiting up to timeout. Does not move the cursor."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            ev = self._event
            while i < len(self.frames):
                if pred(self.frames[i]):
                    return i, self.frames[i]
                i += 1
            if self.closed:
                raise Closed(f"{self.user}: connection closed (code {self.close_code}) while "
                             f"waiting for {what or 'a frame'}; last frames: {self.frames[-5:]!r}")
            rem = deadline - time.monotonic()
            if rem <= 0:
                raise AssertionError(f"{self.user}: no {what or 'matching frame'} within "
                                     f"{timeout}s; last frames: {self.frames[-5:]!r}")
            try:
                await asyncio.wait_for(ev.wait(), rem)
            except asyncio.TimeoutError:
                pass

    async def recv_until(self, pred, timeout=5.0, what=None):
        """The next frame after the cursor matching pred; the cursor moves
        past it (frames skipped stay in `frames`)."""
        i, f = await self.wait(pred, timeout, self.pos, what)
        self.pos = i + 1
        return f

    async def request(self, type, payload=None, id=None, timeout=5.0):
        """Sends a request and returns the direct answer (the frame echoing
        its id)."""
        if id is None:
            id = self.next_id(type[:1])
        start = len(self.frames)
        await self.send(type, payload, id)
        _, f = await self.wait(lambda f: f.get("id") == id and f.get("type") in RESPONSE_TYPES,
                               timeout, start, what=f"answer to {type} id={id}")
        return f

    async def expect(self, type, payload=None, id=None, want="ok", timeout=5.0):
        """request() asserting the answer's type (want) - or, for want
        'error:CODE', an error with that code. Returns the answer's payload."""
        f = await self.request(type, payload, id, timeout)
        if want.startswith("error:"):
            code = want[6:]
            assert f["type"] == "error" and f.get("payload", {}).get("code") == code, \
                f"{self.user}: {type} {payload!r}: expected error {code}, got {f!r}"
        else:
            assert f["type"] == want, f"{self.user}: {type} {payload!r}: expected {want}, got {f!r}"
        return f.get("payload", {})

    async def join(self, room, since=None, timeout=5.0):
        p = {"room": room}
        if since is not None:
            p["since"] = since
        return await self.expect("join", p, want="joined", timeout=timeout)

    async def leave(self, room, timeout=5.0):
        return await self.expect("leave", {"room": room}, want="left", timeout=timeout)

    async def chat(self, room, content, id=None, attachments=None, timeout=5.0):
        """Sends a chat and returns its ack payload (asserted)."""
        p = {"room": room, "content": content}
        if attachments is not None:
            p["attachments"] = attachments
        return await self.expect("chat", p, id=id, want="ack", timeout=timeout)

    # -- views

    def of_type(self, type, room=None, start=0):
        return [f.get("payload", {}) for f in self.frames[start:]
                if f.get("type") == type and (room is None or f.get("payload", {}).get("room") == room)]

    def chats(self, room=None, start=0):
        return self.of_type("chat", room, start)

    def seqs(self, room, start=0):
        return [p["seq"] for p in self.chats(room, start)]

    def max_seq(self, room):
        s = self.seqs(room)
        return max(s) if s else 0

    async def wait_seq(self, room, seq, timeout=10.0, start=0):
        """Waits until a chat of room with seq >= seq arrived."""
        return await self.wait(lambda f: f.get("type") == "chat" and f["payload"].get("room") == room
                               and f["payload"].get("seq", -1) >= seq,
                               timeout, start, what=f"chat {room} seq>={seq}")


def server_side_row(server_port, client_port):
    """(state, inode) of the server's end of a loopback TCP connection, or None.
    server_port may be a tuple of ports (plain and TLS)."""
    ports = server_port if isinstance(server_port, (tuple, list, set)) else (server_port,)
    for lport, rport, state, inode in harness.tcp_connections():
        if lport in ports and rport == client_port:
            return state, inode
    return None


def server_ports(srv):
    """The ports srv listens on: plain, and TLS when it has a port of its own."""
    tp = getattr(srv, "tls_port", None)
    return (srv.port, tp) if tp and tp != srv.port else (srv.port,)


def worker_of(srv, client_port):
    """The pid of srv's worker holding the connection from client_port (on
    its plain or its TLS port), or None."""
    row = server_side_row(server_ports(srv), client_port)
    if row is None:
        return None
    inode = row[1]
    for pid in srv.worker_pids():
        if inode in harness.socket_inodes(pid):
            return pid
    return None


async def worker_of_async(srv, client, timeout=3.0):
    """worker_of for a ChatClient, polling briefly (the accept may lag)."""
    deadline = time.monotonic() + timeout
    while True:
        pid = worker_of(srv, client.local_port())
        if pid is not None:
            return pid
        assert time.monotonic() < deadline, \
            f"no worker of {srv.port} holds the connection from port {client.local_port()}"
        await asyncio.sleep(0.02)


async def clients_on_distinct_workers(srv, prefix, n, max_tries=40, same_user=None, tls=None):
    """n connected clients to srv, each on a different worker (others are
    closed). Returns [(client, worker_pid)]. tls: an SSLContext to connect
    to srv.tls_port with wss:// (else srv.port, as ChatClient decides)."""
    chosen, spare = {}, []
    for i in range(max_tries):
        if tls is not None and tls is not False:
            c = await ChatClient.open(srv.tls_port, same_user or f"{prefix}{i}", tls=tls)
        else:
            c = await ChatClient.open(srv.port, same_user or f"{prefix}{i}", tls=tls)
        pid = await worker_of_async(srv, c)
        if pid not in chosen:
            chosen[pid] = c
            if len(chosen) == n:
                break
        else:
            spare.append(c)
    for c in spare:
        await c.close()
    assert len(chosen) == n, f"only {len(chosen)} distinct workers after {max_tries} connections"
    return [(c, pid) for pid, c in chosen.items()]


# --------------------------------------------------------------------------
# Clients of the running test: opened through connect() (or track()), all
# dropped when the test ends (itest), whatever happened.

_tracked = []


def itest(seconds):
    """An async test with its own timeout; every client it opened through
    connect() is dropped afterwards."""
    def deco(fn):
        @functools.wraps(fn)
        async def wrapper():
            try:
                return await fn()
            finally:
                await close_all()
        wrapper.timeout_seconds = seconds
        return wrapper
    return deco


async def connect(srv_or_port, user, timeout=5.0, **kw):
    port = srv_or_port if isinstance(srv_or_port, int) else srv_or_port.port
    return track(await ChatClient.open(port, user, timeout=timeout, **kw))


def track(c):
    _tracked.append(c)
    return c


async def close_all():
    cs = list(_tracked)
    _tracked.clear()
    for c in cs:
        try:
            if c.ws is not None:
                c.ws.transport.abort()
        except Exception:       # noqa: BLE001
            pass
        if c._reader is not None:
            c._reader.cancel()
    await asyncio.sleep(0)


async def answers(c, ids, timeout, start=0):
    """{id: answer frame} for every id (answers may come in any order)."""
    want, got = set(ids), {}
    deadline = time.monotonic() + timeout
    i = start
    while len(got) < len(want):
        i, f = await c.wait(lambda f: f.get("type") in RESPONSE_TYPES and f.get("id") in want
                            and f.get("id") not in got,
                            max(0.0, deadline - time.monotonic()), i,
                            what=f"answers ({len(got)}/{len(want)} so far)")
        got[f["id"]] = f
        i += 1
    return got


# --------------------------------------------------------------------------
# Room events (protocol 1.1): concurrent writers, and what a client shows


async def room_event_writers(writers, room, rounds, seed, emojis=("a", "b")):
    """Each client of writers sends rounds random requests to room (joined):
    chats, edits and deletes of its own messages, reactions on anyone's,
    all concurrently. Deterministic for a seed, up to the interleaving."""
    rng = random.Random(seed)
    mine = {i: [] for i in range(len(writers))}

    async def writer(i):
        c = writers[i]
        for k in range(rounds):
            roll = rng.random()
            if roll < 0.35 or not mine[i]:
                mine[i].append((await c.chat(room, f"w{i}-{k}"))["seq"])
            elif roll < 0.55:
                await c.request("edit", {"room": room, "target": rng.choice(mine[i]), "content": f"w{i}-{k} edited"})
            elif roll < 0.65:
                t = rng.choice(mine[i])
                mine[i].remove(t)
                await c.request("delete", {"room": room, "target": t})
            else:
                owner = rng.randrange(len(writers))
                if mine[owner]:
                    await c.request("react", {"room": room, "target": rng.choice(mine[owner]),
                                              "emoji": rng.choice(list(emojis)), "on": rng.random() < 0.7})
    await asyncio.gather(*(writer(i) for i in range(len(writers))))


def fold_room(frames, room):
    """{seq: message} from the chat/edit/delete/reaction frames of room,
    applied in seq order the way the contract says a client should: each
    message {seq, sender, content, attachments, deleted, edited (when
    edited), reactions {emoji: sorted users}}."""
    msgs, reacts = {}, {}
    evs = sorted(((f["type"], f["payload"]) for f in frames
                  if f.get("type") in ("chat", "edit", "delete", "reaction")
                  and f["payload"].get("room") == room), key=lambda x: x[1]["seq"])
    for t, p in evs:
        if t == "chat":
            m = {k: p[k] for k in ("seq", "sender", "content", "attachments")}
            m["deleted"] = bool(p.get("deleted"))
            msgs[p["seq"]] = m
            reacts[p["seq"]] = {}
        elif p["target"] in msgs:
            m = msgs[p["target"]]
            if t == "edit":
                m["content"], m["attachments"], m["edited"] = p["content"], p["attachments"], p["ts"]
            elif t == "delete":
                m.update(content="", attachments=[], deleted=True)
                m.pop("edited", None)
                reacts[p["target"]] = {}
            else:
                users = reacts[p["target"]].setdefault(p["emoji"], [])
                if p["on"] and p["sender"] not in users:
                    users.append(p["sender"])
                elif not p["on"] and p["sender"] in users:
                    users.remove(p["sender"])
    for seq, m in msgs.items():
        m["reactions"] = {e: sorted(u) for e, u in reacts[seq].items() if u}
    return msgs
