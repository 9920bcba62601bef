"""
Integration tests of chatd's rooms and messaging: join/leave, chat and ack,
ordering across workers and instances, deduplication, recovery with since,
history, typing, member events, presence, durability across Redis crashes,
rate limits, slow consumers and pub/sub subscriptions.

One Redis and two chatd instances sharing it are started for the module
(SRV: --workers 3, SRV_B: --workers 2, both with a rate limit high enough
not to matter). Servers with other settings are started on first use on the
same Redis; tests that crash Redis start their own. Every test uses its own
room names (suffixed by a per-run tag).

With CHATD_IT_REDIS=cluster every Redis is a 3-master, 3-replica Redis
Cluster instead (harness.make_redis): pub/sub checks look at the shard
channels of every node, SCRIPT FLUSH goes to every node, and "Redis goes
down" means every master goes down (harness.store_down / store_up).

Run: /usr/bin/python3 tests/integration/run.py test_rooms
     CHATD_IT_REDIS=cluster /usr/bin/python3 tests/integration/run.py test_rooms
"""

import asyncio
import os
import signal
import socket
import time

import harness
from harness import Chatd, RawWS, http_get, make_redis
from chatclient import (answers, clients_on_distinct_workers,
                        close_all, connect, itest, track,
                        server_side_row, worker_of_async)

REDIS = None
SRV = None          # --workers 3
SRV_B = None        # second instance on the same Redis, --workers 2
_EXTRA = {}
TAG = os.urandom(3).hex()
FAST = ["--rate", "100000", "--burst", "100000"]



def setup_module():
    global REDIS, SRV, SRV_B
    REDIS = make_redis("redis-rooms")
    SRV = Chatd(REDIS, workers=3, args=FAST, name="rooms-a").start()
    SRV_B = Chatd(REDIS, workers=2, args=FAST, name="rooms-b").start()


def teardown_module():
    errors = []
    for srv in list(_EXTRA.values()) + [SRV_B, SRV]:
        if srv is not None:
            try:
                srv.stop()
            except AssertionError as e:
                errors.append(str(e))
    if REDIS is not None:
        REDIS.stop()
    if errors:
        raise AssertionError("\n".join(errors))


def extra(name, workers=1, args=(), redis=None):
    """A chatd with other settings on the shared Redis, started on first use."""
    srv = _EXTRA.get(name)
    if srv is None or not srv.running():
        srv = Chatd(redis or REDIS, workers=workers, args=list(args), name=name).start()
        _EXTRA[name] = srv
    return srv


def R(name):
    return f"{name}-{TAG}"





async def send_many(c, room, ids, content=lambda i: f"msg {i}", timeout=30.0):
    """Pipelines one chat per id, then waits for every answer. Returns
    [ack payload] in send order (asserting every answer is an ack)."""
    start = len(c.frames)
    for k, id in enumerate(ids):
        await c.send("chat", {"room": room, "content": content(k)}, id=id)
    got = await answers(c, ids, timeout, start)
    bad = [got[i] for i in ids if got[i]["type"] != "ack"]
    assert not bad, f"{c.user}: {len(bad)} chats not acked, e.g. {bad[:3]!r}"
    return [got[i]["payload"] for i in ids]


async def barrier(room, sender, clients, timeout=5.0):
    """A chat from sender that every client must receive; returns its seq.
    Then a short pause, so frames that should not arrive had the chance to."""
    ack = await sender.chat(room, "barrier", id=sender.next_id("bar"))
    for c in clients:
        await c.wait_seq(room, ack["seq"], timeout)
    await asyncio.sleep(0.3)
    return ack["seq"]


def chat_frames(c, room):
    return [p for p in c.chats(room)]


def assert_error(f, code, what=""):
    assert f["type"] == "error" and f.get("payload", {}).get("code") == code, \
        f"{what}: expected error {code}, got {f!r}"


async def healthz(port):
    try:
        r = await asyncio.to_thread(http_get, port, "/healthz", None, 2.0)
        return r.status
    except Exception:       # noqa: BLE001
        return None


async def until(cond, timeout, what, interval=0.05):
    """Polls an async or sync condition; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------
# 1. join / leave / not_joined / bad room names


@itest(30)
async def test_join_leave_and_not_joined():
    room = R("t1")
    c = await connect(SRV, "t1user")
    # every room operation before join
    for typ, p in [("chat", {"room": room, "content": "x"}),
                   ("typing", {"room": room, "active": True}),
                   ("history", {"room": room}),
                   ("presence", {"room": room}),
                   ("leave", {"room": room})]:
        f = await c.request(typ, p, id=f"pre-{typ}")
        assert_error(f, "not_joined", f"{typ} before join")
        assert f["id"] == f"pre-{typ}", f

    j = await c.join(room)
    assert j["room"] == room and j["seq"] == 0 and j["recovered"] is False, j
    f = await c.request("leave", {"room": room}, id="lv1")
    assert f["type"] == "left" and f["id"] == "lv1" and f["payload"]["room"] == room, f
    f = await c.request("leave", {"room": room}, id="lv2")
    assert_error(f, "not_joined", "second leave")
    f = await c.request("chat", {"room": room, "content": "after leave"}, id="al")
    assert_error(f, "not_joined", "chat after leave")

    # joined.seq is the room's latest seq; recovered false without since
    await c.join(room)
    acks = await send_many(c, room, ["a1", "a2", "a3"])
    assert [a["seq"] for a in acks] == [1, 2, 3], acks
    other = await connect(SRV_B, "t1other")
    j = await other.join(room)
    assert j["seq"] == 3 and j["recovered"] is False, j

    # room names: [A-Za-z0-9_.:-]{1,128}
    for bad in ["", "has space", "x" * 129, "slash/room", "caf\u00e9", "star*", 5, None, ["r"]]:
        f = await c.request("join", {"room": bad})
        assert_error(f, "bad_request", f"join {bad!r}")
    f = await c.request("join", {})
    assert_error(f, "bad_request", "join without room")
    for typ in ("chat", "history", "presence", "leave"):
        f = await c.request(typ, {"room": "bad room", "content": "x"})
        assert_error(f, "bad_request", f"{typ} with bad room name")
    good = ("Az09_.:-" * 16)[:120] + TAG
    j = await c.join(good)
    assert j["room"] == good and j["seq"] == 0, j
    f = await c.request("ping")
    assert f["type"] == "pong", f


# --------------------------------------------------------------------------
# 2. chat, ack, broadcast, attachments, limits


@itest(30)
async def test_chat_ack_broadcast_and_validation():
    room = R("t2")
    s = await connect(SRV, "t2sender")
    r = await connect(SRV_B, "t2recv")
    await s.join(room)
    await r.join(room)

    t0 = int(time.time() * 1000)
    f = await s.request("chat", {"room": room, "content": "hello \u00e9\U0001F600"}, id="c-1")
    assert f["type"] == "ack" and f["id"] == "c-1", f
    ack = f["payload"]
    assert ack["room"] == room and ack["seq"] == 1 and ack["duplicate"] is False, ack
    assert isinstance(ack["ts"], int) and abs(ack["ts"] - t0) < 60000, ack
    for c in (s, r):
        _, cf = await c.wait(lambda f: f["type"] == "chat" and f["payload"].get("cid") == "c-1",
                             5, what="chat c-1")
        p = cf["payload"]
        want = {"room": room, "seq": 1, "sender": "t2sender", "content": "hello \u00e9\U0001F600",
                "attachments": [], "cid": "c-1"}
        assert {k: p.get(k) for k in want} == want, f"{c.user} got {p!r}"
        assert isinstance(p["ts"], int) and abs(p["ts"] - t0) < 60000, p
        assert p["ts"] == ack["ts"], f"chat ts {p['ts']} differs from ack ts {ack['ts']}"

    atts = [{"type": "image", "url": "https://example.com/a.png"},
            {"type": "link", "url": "http://example.org/x?y=1#z"}]
    ack2 = await s.chat(room, "with attachments", id="c-2", attachments=atts)
    assert ack2["seq"] == 2, ack2
    for c in (s, r):
        _, cf = await c.wait(lambda f: f["type"] == "chat" and f["payload"].get("cid") == "c-2",
                             5, what="chat c-2")
        assert cf["payload"]["attachments"] == atts, cf

    # a chat without id is acked (no id to echo) and broadcast without cid
    start = len(r.frames)
    await s.send("chat", {"room": room, "content": "no id"})
    _, af = await s.wait(lambda f: f["type"] in ("ack", "error") and "id" not in f, 5,
                         what="ack of a chat without id")
    assert af["type"] == "ack" and af["payload"]["seq"] == 3, af
    _, cf = await r.wait(lambda f: f["type"] == "chat" and f["payload"]["seq"] == 3, 5, start)
    assert cf["payload"].get("cid") is None and cf["payload"]["content"] == "no id", cf

    # boundaries: 16384 bytes of UTF-8 content is fine, one more is too_large
    ack = await s.chat(room, "\u00e9" * 8192, id="max")
    assert ack["seq"] == 4, ack
    f = await s.request("chat", {"room": room, "content": "\u00e9" * 8192 + "a"}, id="over")
    assert_error(f, "too_large", "content of 16385 bytes")
    ten = [{"type": "file", "url": f"https://h.example/{i}"} for i in range(10)]
    ack = await s.chat(room, "ten", id="ten", attachments=ten)
    assert ack["seq"] == 5, ack
    f = await s.request("chat", {"room": room, "content": "eleven",
                                 "attachments": ten + [{"type": "file", "url": "https://h/x"}]},
                        id="eleven")
    assert_error(f, "too_large", "11 attachments")
    for url in ("javascript:alert(1)", "ftp://example.com/f", "data:text/html,hi", "example.com"):
        f = await s.request("chat", {"room": room, "content": "bad url",
                                     "attachments": [{"type": "link", "url": url}]})
        assert_error(f, "bad_request", f"attachment url {url!r}")
    f = await s.request("chat", {"room": room, "content": ""}, id="empty")
    assert f["type"] == "error", f"empty content accepted: {f!r}"
    f = await s.request("chat", {"room": room}, id="nocontent")
    assert_error(f, "bad_request", "chat without content")

    # nothing rejected was broadcast or took a seq
    seq = await barrier(room, s, [s, r])
    assert seq == 6, f"rejected chats consumed seqs: barrier got seq {seq}"
    for c in (s, r):
        assert c.seqs(room) == [1, 2, 3, 4, 5, 6], (c.user, c.seqs(room))


# --------------------------------------------------------------------------
# 3 + 4. ordering under concurrent senders


async def ordering_run(room, senders, receivers, per_sender=200):
    for c in senders + receivers:
        await c.join(room)
    total = per_sender * len(senders)

    async def blast(i, s):
        ids = [f"o{i}-{k}" for k in range(per_sender)]
        acks = await send_many(s, room, ids, content=lambda k: f"sender {i} #{k}", timeout=60)
        return ids, acks

    results = await asyncio.gather(*(blast(i, s) for i, s in enumerate(senders)))
    all_seqs = []
    id_of_seq = {}
    for (ids, acks), s in zip(results, senders):
        seqs = [a["seq"] for a in acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), \
            f"{s.user}: acks not increasing in send order: {seqs[:20]}..."
        assert all(a["duplicate"] is False for a in acks)
        all_seqs += seqs
        id_of_seq.update(zip(seqs, ((s.user, i) for i in ids)))
    assert sorted(all_seqs) == list(range(1, total + 1)), "acked seqs are not exactly 1..N"

    reference = None
    for c in receivers + senders:
        await c.wait_seq(room, total, 30)
        got = [(p["seq"], p["sender"], p.get("cid")) for p in c.chats(room)]
        seqs = [g[0] for g in got]
        if seqs != list(range(1, total + 1)):
            dup = len(seqs) - len(set(seqs))
            missing = sorted(set(range(1, total + 1)) - set(seqs))
            disorder = next((k for k in range(1, len(seqs)) if seqs[k] <= seqs[k - 1]), None)
            raise AssertionError(f"{c.user}: got {len(seqs)} chats, {dup} duplicates, "
                                 f"missing {missing[:10]}, first disorder at index {disorder}")
        for seq, sender, cid in got:
            assert id_of_seq[seq] == (sender, cid), f"{c.user}: seq {seq} is {sender}/{cid}, " \
                                                    f"acked as {id_of_seq[seq]}"
        if reference is None:
            reference = got
        assert got == reference, f"{c.user} saw a different sequence"
    # each sender's own messages in the order it sent them
    for (ids, _), s in zip(results, senders):
        cids = [cid for _, sender, cid in reference if sender == s.user]
        assert cids == ids, f"{s.user}: own messages out of send order"


@itest(90)
async def test_ordering_five_senders_three_workers():
    room = R("t3")
    picked = await clients_on_distinct_workers(SRV, "t3recv", 3)
    for c, _ in picked:
        track(c)
    receivers = [c for c, _ in picked]
    assert len({pid for _, pid in picked}) == 3
    senders = [await connect(SRV, f"t3send{i}") for i in range(5)]
    await ordering_run(room, senders, receivers)


@itest(90)
async def test_ordering_across_two_instances():
    room = R("t4")
    senders = [await connect(SRV if i < 3 else SRV_B, f"t4send{i}") for i in range(5)]
    receivers = [await connect(srv, f"t4recv{i}") for i, srv in enumerate([SRV, SRV, SRV_B, SRV_B])]
    await ordering_run(room, senders, receivers)


# --------------------------------------------------------------------------
# 5. deduplication


@itest(40)
async def test_dedup_same_id():
    room, room2 = R("t5"), R("t5b")
    pair = await clients_on_distinct_workers(SRV, "t5", 2, same_user="t5user")
    (u1, w1), (u1_other, w2) = pair
    track(u1), track(u1_other)
    assert w1 != w2
    rcv = await connect(SRV_B, "t5recv")
    u2 = await connect(SRV, "t5other")
    for c in (u1, rcv, u2):
        await c.join(room)

    a = await u1.chat(room, "original", id="dup-1")
    assert a["duplicate"] is False
    seq = a["seq"]
    b = await u1.chat(room, "original", id="dup-1")
    assert b["seq"] == seq and b["duplicate"] is True, f"resend: expected seq {seq} duplicate, got {b!r}"
    c2 = await u1.chat(room, "different content, same id", id="dup-1")
    assert c2["seq"] == seq and c2["duplicate"] is True, c2

    # the same id from another user, or in another room, is a new message
    o = await u2.chat(room, "other user", id="dup-1")
    assert o["duplicate"] is False and o["seq"] == seq + 1, o
    await u1.join(room2)
    o2 = await u1.chat(room2, "other room", id="dup-1")
    assert o2["duplicate"] is False and o2["seq"] == 1, o2

    # from a connection of the same user on another worker, and on the other instance
    await u1_other.join(room)
    d = await u1_other.chat(room, "original", id="dup-1")
    assert d["seq"] == seq and d["duplicate"] is True, f"other worker: {d!r}"
    u1_b = await connect(SRV_B, "t5user")
    await u1_b.join(room)
    d = await u1_b.chat(room, "original", id="dup-1")
    assert d["seq"] == seq and d["duplicate"] is True, f"other instance: {d!r}"

    # across a reconnect
    await u1.close()
    u1 = await connect(SRV, "t5user")
    await u1.join(room)
    d = await u1.chat(room, "original", id="dup-1")
    assert d["seq"] == seq and d["duplicate"] is True, f"after reconnect: {d!r}"

    last = await barrier(room, u2, [rcv, u2])
    assert last == seq + 2, f"duplicates consumed seqs (barrier seq {last})"
    for c in (rcv, u2):
        mine = [p for p in c.chats(room) if p.get("cid") == "dup-1"]
        assert [(p["sender"], p["seq"]) for p in mine] == [("t5user", seq), ("t5other", seq + 1)], \
            f"{c.user} saw {mine!r}"
        assert c.seqs(room) == list(range(1, last + 1)), c.seqs(room)


# --------------------------------------------------------------------------
# 6. recovery with since while someone keeps sending


class BackgroundSender:
    """Sends one chat at a time (waiting for its ack) until stopped."""

    def __init__(self, client, room, prefix, pause=0.004):
        self.c, self.room, self.prefix, self.pause = client, room, prefix, pause
        self.acks = []          # (seq, id)
        self._stop = False
        self.task = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self):
        i = 0
        while not self._stop:
            id = f"{self.prefix}{i}"
            a = await self.c.chat(self.room, f"bg {i}", id=id)
            self.acks.append((a["seq"], id))
            i += 1
            await asyncio.sleep(self.pause)

    async def stop(self):
        self._stop = True
        await asyncio.wait_for(self.task, 10)
        return self.acks


@itest(40)
async def test_recovery_with_since_during_traffic():
    room = R("t6")
    s = await connect(SRV, "t6send")
    await s.join(room)
    bg = BackgroundSender(s, room, "bg").start()
    c = await connect(SRV_B, "t6user")
    await c.join(room)
    await c.wait(lambda f: len(c.chats(room)) >= 20, 10, what="20 live chats")
    n = c.max_seq(room)
    seen_first = c.seqs(room)
    assert seen_first == list(range(seen_first[0], seen_first[-1] + 1)), "gap in live traffic"
    await c.close()
    await asyncio.sleep(0.4)

    c2 = await connect(SRV if n % 2 else SRV_B, "t6user")
    j = await c2.join(room, since=n)
    assert j["recovered"] is True, j
    assert j["seq"] >= n, j
    await asyncio.sleep(0.6)                    # live traffic after the replay
    acks = await bg.stop()
    last = acks[-1][0]
    assert last > j["seq"] + 5, f"sender did not keep sending (last {last}, joined at {j['seq']})"
    await c2.wait_seq(room, last, 10)
    jidx = next(i for i, f in enumerate(c2.frames) if f["type"] == "joined")
    first_chat = next(i for i, f in enumerate(c2.frames) if f["type"] == "chat")
    assert jidx < first_chat, "a chat arrived before joined"
    got = [(p["seq"], p.get("cid")) for p in c2.chats(room)]
    seqs = [g[0] for g in got]
    want = list(range(n + 1, last + 1))
    if seqs != want:
        missing = sorted(set(want) - set(seqs))
        dups = sorted({x for x in seqs if seqs.count(x) > 1})
        raise AssertionError(f"after join since={n} (joined.seq {j['seq']}): got {len(seqs)} "
                             f"chats, want {len(want)}; missing {missing[:10]}, duplicates "
                             f"{dups[:10]}, first seqs {seqs[:8]}")
    by_seq = dict(acks)
    for seq, cid in got:
        assert by_seq.get(seq) == cid, f"seq {seq}: got cid {cid}, sender's ack says {by_seq.get(seq)}"


# --------------------------------------------------------------------------
# 7. recovered false past the window, since beyond the room's seq


@itest(40)
async def test_recovery_window_and_since_too_large():
    srv = extra("window", workers=1, args=["--recovery-window", "10"] + FAST)
    room = R("t7")
    s = await connect(srv, "t7send")
    await s.join(room)
    c = await connect(srv, "t7user")
    await c.join(room)
    await send_many(s, room, [f"a{i}" for i in range(5)])
    await c.wait_seq(room, 5)
    await c.close()
    await send_many(s, room, [f"b{i}" for i in range(50)])      # seq 55

    c2 = await connect(srv, "t7user")
    j = await c2.join(room, since=5)
    assert j["recovered"] is False and j["seq"] == 55, f"50 missed with window 10: {j!r}"
    await asyncio.sleep(0.5)
    await s.chat(room, "live", id="live1")                        # seq 56
    await c2.wait_seq(room, 56)
    assert c2.seqs(room) == [56], f"replayed past the window: {c2.seqs(room)}"

    # exactly the window missed (since = seq - 10): recovered
    c3 = await connect(srv, "t7c3")
    j = await c3.join(room, since=46)
    assert j["recovered"] is True, f"10 missed with window 10: {j!r}"
    await c3.wait_seq(room, 56)
    assert c3.seqs(room) == list(range(47, 57)), c3.seqs(room)

    # since beyond the room's seq: treated as the room's seq
    c4 = await connect(srv, "t7c4")
    j = await c4.join(room, since=10 ** 6)
    assert j["recovered"] is True and j["seq"] == 56, j
    await asyncio.sleep(0.3)
    await s.chat(room, "live2", id="live2")                       # seq 57
    await c4.wait_seq(room, 57)
    assert c4.seqs(room) == [57], f"since too large replayed {c4.seqs(room)}"
    await c3.wait_seq(room, 57)
    assert c3.seqs(room) == list(range(47, 58)), c3.seqs(room)


# --------------------------------------------------------------------------
# 8. history


@itest(40)
async def test_history_paging():
    room = R("t8")
    s = await connect(SRV, "t8send")
    await s.join(room)
    atts = [{"type": "image", "url": "https://example.com/i.png"}]
    ids = [f"h{i}" for i in range(120)]
    start = len(s.frames)
    for k, id in enumerate(ids):
        p = {"room": room, "content": f"hist {k + 1}"}
        if k == 6:
            p["attachments"] = atts
        await s.send("chat", p, id=id)
    got = await answers(s, ids, 30, start)
    assert [got[i]["payload"]["seq"] for i in ids] == list(range(1, 121))
    acks = {got[i]["payload"]["seq"]: got[i]["payload"] for i in ids}

    reader = await connect(SRV_B, "t8reader")
    await reader.join(room)

    async def hist(want_seqs, want_more, **kw):
        p = {"room": room}
        p.update(kw)
        f = await reader.request("history", p, id="hq")
        assert f["type"] == "history" and f["id"] == "hq", f"history {kw}: {f!r}"
        h = f["payload"]
        assert h["room"] == room, h
        seqs = [m["seq"] for m in h["messages"]]
        assert seqs == list(want_seqs), f"history {kw}: seqs {seqs[:5]}..{seqs[-5:]} " \
                                        f"(n={len(seqs)}), want {list(want_seqs)[:3]}.."
        assert h["more"] is want_more, f"history {kw}: more={h['more']}, want {want_more}"
        return h["messages"]

    msgs = await hist(range(71, 121), True)                 # default limit 50, newest
    await hist(range(21, 121), True, limit=100)
    await hist([120], True, limit=1)
    await hist(range(1, 71), False, before=71, limit=100)
    await hist(range(6, 11), True, before=11, limit=5)
    await hist(range(1, 6), False, before=6, limit=5)
    await hist([], False, before=1)
    await hist(range(1, 51), False, before=51)
    first = await hist(range(1, 11), False, before=11, limit=20)

    for m in msgs + first:
        seq = m["seq"]
        want = {"room": room, "seq": seq, "sender": "t8send", "content": f"hist {seq}",
                "cid": f"h{seq - 1}", "ts": acks[seq]["ts"],
                "attachments": atts if seq == 7 else []}
        assert {k: m.get(k) for k in want} == want, f"history message {m!r}, want {want!r}"

    for bad in (101, 0, -1, "5"):
        f = await reader.request("history", {"room": room, "limit": bad})
        assert_error(f, "bad_request", f"history limit {bad!r}")


# --------------------------------------------------------------------------
# 9. typing, member events, presence


def member_events(c, room, user, event):
    return [p for p in c.of_type("member", room) if p.get("user") == user and p.get("event") == event]


def typing_of(c, room, user):
    return [p for p in c.of_type("typing", room) if p.get("user") == user]


async def presence(c, room):
    f = await c.request("presence", {"room": room})
    assert f["type"] == "presence", f
    users = f["payload"]["users"]
    assert len(users) == len(set(users)), f"{c.user}: presence lists a user twice: {users}"
    return sorted(users)


@itest(40)
async def test_typing_member_events_presence():
    room = R("t9")
    bob = await connect(SRV, "t9bob")
    carol = await connect(SRV_B, "t9carol")
    a1 = await connect(SRV, "t9alice")
    a2 = await connect(SRV_B, "t9alice")
    await bob.join(room)
    await carol.join(room)
    await bob.wait(lambda f: member_events(bob, room, "t9carol", "join"), 5,
                   what="member join of carol")
    await a1.join(room)
    for c in (bob, carol):
        await c.wait(lambda f, c=c: member_events(c, room, "t9alice", "join"), 5,
                     what="member join of alice")
    await a2.join(room)
    await asyncio.sleep(0.2)
    await barrier(room, bob, [bob, carol, a1, a2])
    for c in (bob, carol):
        n = len(member_events(c, room, "t9alice", "join"))
        assert n == 1, f"{c.user} got {n} member join events for alice (two connections)"
    for c in (a1, a2):
        own = member_events(c, room, "t9alice", "join")
        assert not own, f"alice's connection {c.local_port()} got its own member join: {own}"
    assert not member_events(carol, room, "t9carol", "join"), "carol got her own member join"

    # presence: each user once, from every connection, across workers and instances
    for c in (bob, carol, a1, a2):
        users = await presence(c, room)
        assert users == ["t9alice", "t9bob", "t9carol"], f"presence via {c.user}: {users}"

    # typing goes to the others, never to the typer's own connections
    await a1.send("typing", {"room": room, "active": True})
    for c in (bob, carol):
        _, f = await c.wait(lambda f: f["type"] == "typing" and f["payload"].get("user") == "t9alice",
                            5, what="typing of alice")
        assert f["payload"] == {"room": room, "user": "t9alice", "active": True}, f
    await bob.send("typing", {"room": room, "active": False})
    for c in (a1, a2, carol):
        _, f = await c.wait(lambda f: f["type"] == "typing" and f["payload"].get("user") == "t9bob",
                            5, what="typing of bob")
        assert f["payload"]["active"] is False, f
    await barrier(room, carol, [bob, carol, a1, a2])
    for c in (a1, a2):
        assert not typing_of(c, room, "t9alice"), f"alice's own connection got her typing"
    assert not typing_of(bob, room, "t9bob"), "bob got his own typing"
    for c in (bob, carol):
        assert len(typing_of(c, room, "t9alice")) == 1, typing_of(c, room, "t9alice")

    # leave of one of alice's connections: no event; drop of the last: one leave
    await a1.leave(room)
    await barrier(room, bob, [bob, carol, a2])
    for c in (bob, carol):
        assert not member_events(c, room, "t9alice", "leave"), \
            f"{c.user} got member leave for alice while she still has a connection"
    assert await presence(bob, room) == ["t9alice", "t9bob", "t9carol"]
    a2.drop()
    for c in (bob, carol):
        await c.wait(lambda f, c=c: member_events(c, room, "t9alice", "leave"), 5,
                     what="member leave of alice after her last connection dropped")
    await barrier(room, bob, [bob, carol])
    for c in (bob, carol):
        n = len(member_events(c, room, "t9alice", "leave"))
        assert n == 1, f"{c.user} got {n} member leave events for alice"
    assert await presence(carol, room) == ["t9bob", "t9carol"]
    assert await presence(bob, room) == ["t9bob", "t9carol"]

    # explicit leave of carol
    await carol.leave(room)
    await bob.wait(lambda f: member_events(bob, room, "t9carol", "leave"), 5,
                   what="member leave of carol")
    assert await presence(bob, room) == ["t9bob"]
    # alice rejoins with a new connection: one new join event
    a3 = await connect(SRV, "t9alice")
    await a3.join(room)
    await bob.wait(lambda f: len(member_events(bob, room, "t9alice", "join")) == 2, 5,
                   what="second member join of alice")


# --------------------------------------------------------------------------
# 10. presence after kill -9 of a worker


@itest(60)
async def test_presence_after_worker_kill9():
    srv = Chatd(REDIS, workers=2, args=FAST, name="killw").start()
    try:
        room = R("t10")
        obs = await connect(SRV, "t10obs")
        await obs.join(room)
        by_worker = {}
        clients = []
        for i in range(12):
            c = await connect(srv, f"t10u{i}")
            pid = await worker_of_async(srv, c)
            by_worker.setdefault(pid, []).append(c)
            clients.append(c)
            if i >= 3 and len(by_worker) == 2:
                break
        assert len(by_worker) == 2, f"all connections landed on one worker: {by_worker}"
        for c in clients:
            await c.join(room)
        for c in clients:
            await obs.wait(lambda f, c=c: member_events(obs, room, c.user, "join"), 5,
                           what=f"member join of {c.user}")
        everyone = sorted([obs.user] + [c.user for c in clients])
        assert await presence(obs, room) == everyone

        victim = sorted(by_worker)[0]
        gone = sorted(c.user for c in by_worker[victim])
        stay = sorted(c.user for pid, cs in by_worker.items() if pid != victim for c in cs)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        for u in gone:
            await obs.wait(lambda f, u=u: member_events(obs, room, u, "leave"), 20,
                           what=f"member leave of {u} (on the killed worker)")
        t_events = time.monotonic() - t0
        want = sorted([obs.user] + stay)
        await until(lambda: _presence_is(obs, room, want), 20,
                    f"presence == {want}")
        t_presence = time.monotonic() - t0
        print(f"    worker kill: leave events after {t_events:.1f}s, presence after {t_presence:.1f}s")
        await asyncio.sleep(0.5)
        for u in stay:
            assert not member_events(obs, room, u, "leave"), f"leave event for {u} (survivor)"
        for u in gone:
            assert len(member_events(obs, room, u, "leave")) == 1, member_events(obs, room, u, "leave")
        # the survivors stay connected and saw the leaves too
        survivor = next(c for pid, cs in by_worker.items() if pid != victim for c in cs)
        assert not survivor.closed
        for u in gone:
            await survivor.wait(lambda f, u=u: member_events(survivor, room, u, "leave"), 5,
                                what=f"member leave of {u} at a survivor")
    finally:
        await close_all()
        srv.stop()


async def _presence_is(c, room, want):
    return await presence(c, room) == want


# --------------------------------------------------------------------------
# 11. durability across kill -9 of Redis


async def retry_join(c_factory, room, since=None, timeout=15.0):
    """Connects and joins, retrying while the server answers unavailable."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        c = await c_factory()
        p = {"room": room}
        if since is not None:
            p["since"] = since
        try:
            f = await c.request("join", p, timeout=5)
        except AssertionError as e:
            last = e
            await asyncio.sleep(0.2)
            continue
        if f["type"] == "joined":
            return c, f["payload"]
        last = f
        await c.close()
        await asyncio.sleep(0.2)
    raise AssertionError(f"could not join {room} within {timeout}s: {last!r}")


@itest(60)
async def test_durability_redis_kill9():
    rd = make_redis("redis-dur")
    srv = Chatd(rd, workers=2, args=FAST, name="dur").start()
    try:
        room = R("t11")
        s = await connect(srv, "t11send")
        await s.join(room)
        ids = [f"d{i}" for i in range(40)]
        acks = await send_many(s, room, ids, content=lambda k: f"durable {k}")
        # right after the acks: kill -9 of the Redis (of every master of a cluster)
        down = harness.store_down(rd, kill=True)
        await asyncio.to_thread(harness.store_up, rd, down)
        await until(lambda: healthz(srv.port), 15, "healthz answering")
        await until(lambda: _all_200(srv.port), 15, "/healthz 200 after Redis came back")
        c, j = await retry_join(lambda: connect(srv, "t11reader"), room, since=0)
        assert j["recovered"] is True and j["seq"] >= 40, j
        await c.wait_seq(room, 40, 10)
        got = [(p["seq"], p.get("cid"), p["content"]) for p in c.chats(room)]
        want = [(a["seq"], id, f"durable {k}") for k, (a, id) in enumerate(zip(acks, ids))]
        assert got == want, f"recovered after Redis kill -9: {[g for g in got if g not in want]} extra, {[w for w in want if w not in got]} missing, {len(got)} got"
        f = await c.request("history", {"room": room, "limit": 100})
        assert f["type"] == "history", f
        hs = [(m["seq"], m.get("cid"), m["content"]) for m in f["payload"]["messages"]]
        assert hs == want, f"history after Redis kill -9: {hs[:5]}... want {want[:5]}..."
    finally:
        await close_all()
        srv.stop()
        rd.stop()


async def _all_200(port):
    for _ in range(4):
        if await healthz(port) != 200:
            return False
    return True


# --------------------------------------------------------------------------
# 12. Redis restart mid-traffic


@itest(90)
async def test_redis_restart_mid_traffic():
    rd = make_redis("redis-restart")
    srv = Chatd(rd, workers=2, args=FAST, name="restart").start()
    try:
        room = R("t12")
        stats = {"unavailable": 0, "timeouts": 0, "reconnects": 0, "rx_reconnects": 0}
        acks = {}
        order = []
        stop = asyncio.Event()
        sender = [await connect(srv, "t12send")]
        await sender[0].join(room)
        incarnations = [await connect(srv, "t12recv")]
        await incarnations[0].join(room)

        async def send_loop():
            i = 0
            while not stop.is_set():
                id = f"m{i}"
                while True:
                    c = sender[0]
                    if c.closed:
                        stats["reconnects"] += 1
                        c, _ = await retry_join(lambda: connect(srv, "t12send"), room, timeout=30)
                        sender[0] = c
                    try:
                        f = await c.request("chat", {"room": room, "content": f"x {i}"}, id=id,
                                            timeout=6)
                    except AssertionError:
                        stats["timeouts"] += 1
                        await asyncio.sleep(0.1)
                        continue
                    if f["type"] == "ack":
                        acks[id] = f["payload"]
                        order.append(id)
                        break
                    assert_error(f, "unavailable", f"chat {id}")
                    stats["unavailable"] += 1
                    await asyncio.sleep(0.1)
                i += 1
                await asyncio.sleep(0.01)

        task = asyncio.get_running_loop().create_task(send_loop())
        await asyncio.sleep(1.0)
        n_before = len(acks)
        assert n_before > 10, f"only {n_before} acks before the outage"
        down = harness.store_down(rd)          # the Redis, or every master of a cluster
        t_down = time.monotonic()
        await until(lambda: _is_503(srv.port), 8, "/healthz 503 while Redis is down")
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - t_down)))
        assert not task.done(), task
        n_during = len(acks) - n_before
        await asyncio.to_thread(harness.store_up, rd, down)
        t_up = time.monotonic()
        try:
            await until(lambda: _all_200(srv.port), 15, "/healthz 200 after Redis came back")
        except AssertionError as e:
            lines = [l for l in srv.log_text().splitlines() if "redis_" in l]
            raise AssertionError(f"{e}; chatd's Redis log lines:\n" + "\n".join(lines[-12:]))
        t_healthy = time.monotonic() - t_up
        n_at_up = len(acks)
        await until(lambda: len(acks) >= n_at_up + 30, 20, "30 acks after Redis came back")
        stop.set()
        await asyncio.wait_for(task, 30)
        print(f"    redis restart: {len(acks)} acked ({n_during} during the outage), "
              f"healthy {t_healthy:.1f}s after restart, {stats}")

        last = max(a["seq"] for a in acks.values())
        rx = incarnations[-1]
        if rx.closed:
            stats["rx_reconnects"] += 1
            since = max([0] + [p["seq"] for c in incarnations for p in c.chats(room)])
            rx, _ = await retry_join(lambda: connect(srv, "t12recv"), room, since=since)
            incarnations.append(rx)
        await rx.wait_seq(room, last, 20)
        got = [(p["seq"], p.get("cid")) for c in incarnations for p in c.chats(room)]
        seqs = [g[0] for g in got]
        if seqs != list(range(1, last + 1)):
            missing = sorted(set(range(1, last + 1)) - set(seqs))
            dups = sorted({x for x in seqs if seqs.count(x) > 1})
            raise AssertionError(f"receiver saw {len(seqs)} chats for seqs 1..{last}: missing "
                                 f"{missing[:15]} ({len(missing)}), duplicates {dups[:10]}, "
                                 f"receiver closed: {[c.closed for c in incarnations]}")
        cid_of = dict(got)
        for id, a in acks.items():
            assert cid_of.get(a["seq"]) == id, f"ack {id} seq {a['seq']}: receiver has cid {cid_of.get(a['seq'])}"
        assert len({g[1] for g in got}) == len(got), "an id was stored twice"
        seqs_in_order = [acks[i]["seq"] for i in order]
        assert seqs_in_order == sorted(seqs_in_order), "acks not increasing in send order"
        assert stats["unavailable"] + stats["timeouts"] > 0, \
            f"no chat failed during a {3}s Redis outage: {stats}"
    finally:
        await close_all()
        srv.stop()
        rd.stop()


async def _is_503(port):
    return await healthz(port) == 503


# --------------------------------------------------------------------------
# 13. rate limit


@itest(30)
async def test_rate_limit():
    srv = extra("ratelimit", workers=1, args=["--rate", "5", "--burst", "5"])
    room = R("t13")
    c = await connect(srv, "t13burst")
    assert c.welcome["payload"]["limits"]["rate"] == 5
    await c.join(room)
    ids = [f"b{i}" for i in range(20)]
    start = len(c.frames)
    for id in ids:
        await c.send("chat", {"room": room, "content": id}, id=id)
    got = await answers(c, ids, 10, start)
    kinds = [got[i]["type"] if got[i]["type"] == "ack" else got[i]["payload"]["code"] for i in ids]
    assert set(kinds) <= {"ack", "rate_limited"}, kinds
    n_ack = kinds.count("ack")
    assert 5 <= n_ack <= 8 and kinds[:5] == ["ack"] * 5, f"burst of 20 at burst 5: {kinds}"
    f = await c.request("ping")
    assert f["type"] == "pong" and not c.closed

    # a little above the rate (4x) is limited but not disconnected
    m = await connect(srv, "t13steady")
    await m.join(room)
    t_end = time.monotonic() + 1.5
    k = 0
    while time.monotonic() < t_end:
        await m.send("chat", {"room": room, "content": "s"}, id=f"s{k}")
        k += 1
        await asyncio.sleep(0.05)
    f = await m.request("ping")
    assert f["type"] == "pong" and not m.closed, "a client at 4x the rate was disconnected"
    assert any(p.get("code") == "rate_limited" for p in m.of_type("error")), \
        "no rate_limited at 4x the rate"

    # far above the rate for over a second: closed with 1008
    fl = await connect(srv, "t13flood")
    await fl.join(room)
    t0 = time.monotonic()
    k = 0
    while not fl.closed and time.monotonic() - t0 < 4:
        try:
            await fl.send("chat", {"room": room, "content": "f"}, id=f"f{k}")
        except Exception:       # noqa: BLE001 - closed meanwhile
            break
        k += 1
        await asyncio.sleep(0.01)
    assert await fl.wait_closed(3), f"flooding at ~100/s (rate 5) for {time.monotonic() - t0:.1f}s: " \
                                    f"still open after {k} chats"
    assert fl.close_code == 1008, f"flood close code {fl.close_code}"
    assert not c.closed and not m.closed


# --------------------------------------------------------------------------
# 14. slow consumer


def open_slow_socket(port, user, room):
    """A raw WebSocket with a tiny receive buffer that joins room and then
    is never read."""
    ws = RawWS(port, connect=False)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    ws.sock = s
    r = ws.handshake(f"/ws?user={user}")
    assert r.status == 101, r
    assert ws.recv_json()["type"] == "welcome"
    ws.send_json({"type": "join", "id": "j", "payload": {"room": room}})
    while True:
        f = ws.recv_json()
        if f.get("id") == "j":
            assert f["type"] == "joined", f
            return ws


@itest(60)
async def test_slow_consumer_closed_others_unaffected():
    srv = extra("slow", workers=2, args=["--outbound-limit", "65536"] + FAST)
    room = R("t14")
    s = await connect(srv, "t14send")
    n = await connect(srv, "t14normal")
    await s.join(room)
    await n.join(room)
    slow = await asyncio.to_thread(open_slow_socket, srv.port, "t14slow", room)
    try:
        slow_port = slow.sock.getsockname()[1]
        big = "z" * 8000
        sent = 0
        t0 = time.monotonic()
        left_at = closed_at = None
        # Send 8 KB messages until the server has dropped the slow member
        # (member leave to the others) and its TCP connection (not
        # ESTABLISHED any more on the server side: a close may linger a
        # couple of seconds on unsent data). At most 1600 (12.8 MB).
        while time.monotonic() - t0 < 20 and (left_at is None or closed_at is None):
            if sent < 1600 and left_at is None:
                ids = [f"b{sent + k}" for k in range(25)]
                await send_many(s, room, ids, content=lambda k: big)
                sent += len(ids)
            else:
                await asyncio.sleep(0.1)
            if left_at is None and member_events(n, room, "t14slow", "leave"):
                left_at = time.monotonic() - t0
            row = server_side_row(srv.port, slow_port)
            if closed_at is None and (row is None or row[0] != harness.TCP_ESTABLISHED):
                closed_at = time.monotonic() - t0
        assert left_at is not None, \
            f"no member leave for the non-reading member after {sent} x 8 KB messages"
        assert closed_at is not None, \
            f"server kept the TCP connection of the slow consumer (dropped from the room at " \
            f"{left_at:.1f}s) established for {time.monotonic() - t0:.1f}s"
        assert "t14slow" not in await presence(n, room)
        # the others keep receiving normally, and more traffic flows
        extra_ids = [f"after{k}" for k in range(20)]
        await send_many(s, room, extra_ids, content=lambda k: "small")
        total = sent + len(extra_ids)
        await n.wait_seq(room, total, 30)
        assert n.seqs(room) == list(range(1, total + 1)), "normal member missed messages"
        assert not n.closed and not s.closed
        res = await asyncio.to_thread(slow.wait_closed, 10)
        assert res is not None, "slow connection still open after draining it"
        if res[0] == "close":
            assert res[1] == 1013, f"slow consumer closed with {res[1]}, want 1013"
        print(f"    slow consumer: {sent} x 8 KB sent, left the room at {left_at:.1f}s, "
              f"TCP closed at {closed_at:.1f}s, client saw {res}")
    finally:
        slow.close_socket()


# --------------------------------------------------------------------------
# 15. subscriptions only for rooms with local members


def pubsub_channels():
    """Channels with subscribers (shard channels on every node of a cluster)."""
    return harness.pubsub_channels(REDIS, "chatd:*")


def pubsub_numsub(chan):
    return harness.pubsub_numsub(REDIS, chan)


@itest(30)
async def test_unsubscribe_after_last_member_leaves():
    room = R("t15")
    chan = f"chatd:{{{room}}}"
    assert chan not in pubsub_channels()
    pair = await clients_on_distinct_workers(SRV, "t15u", 2)
    for c, _ in pair:
        track(c)
    (c1, _), (c2, _) = pair
    b = await connect(SRV_B, "t15b")
    for c in (c1, c2, b):
        await c.join(room)
    await until(lambda: chan in pubsub_channels(), 3, f"{chan} subscribed")
    # numsub counts one subscription per worker with members
    nsub = pubsub_numsub(chan)
    assert nsub == 3, f"PUBSUB NUMSUB {chan} = {nsub}, want 3 (two workers of A, one of B)"
    await c1.leave(room)
    await until(lambda: pubsub_numsub(chan) == 2, 3,
                "the worker of the member that left to unsubscribe")
    c2.drop()
    await b.leave(room)
    t0 = time.monotonic()
    await until(lambda: chan not in pubsub_channels(), 3,
                f"{chan} to disappear from PUBSUB CHANNELS after every member left")
    print(f"    unsubscribed {time.monotonic() - t0:.2f}s after the last leave")


# --------------------------------------------------------------------------
# The send path: a broadcast framed once and shared, coalesced writes


@itest(60)
async def test_burst_to_many_members_arrives_whole_and_in_order():
    """Frames queued by reference and written many per writev: a burst to
    many members on two workers arrives complete, in seq order, once."""
    room = R("burst")
    members = [await connect(SRV, f"burst{i}") for i in range(12)]
    for m in members:
        await m.join(room)
    sender = await connect(SRV_B, "burstsender")
    await sender.join(room)
    ids = [f"b{i}" for i in range(300)]
    # Sizes across the 7-bit and 16-bit frame length classes.
    sizes = [1, 125, 126, 4000, 70000 // 8]
    acks = await send_many(sender, room, ids, content=lambda i: "x" * sizes[i % len(sizes)])
    last = acks[-1]["seq"]
    for m in members:
        await m.wait_seq(room, last, 20)
        got = [p for p in m.chats(room)]
        assert [p["seq"] for p in got] == list(range(acks[0]["seq"], last + 1)), m.user
        assert [len(p["content"]) for p in got] == [sizes[i % len(sizes)] for i in range(300)], m.user


@itest(60)
async def test_write_delay_coalesces_without_loss_or_reorder():
    """--write-delay holds output up to that many ms so it leaves in fewer
    writes: everything still arrives, in order, and no later than the delay
    allows."""
    srv = extra("wdelay", workers=2, args=FAST + ["--write-delay", "20"])
    room = R("wdelay")
    rx = [await connect(srv, f"wd{i}") for i in range(4)]
    for c in rx:
        await c.join(room)
    tx = await connect(srv, "wdsender")
    await tx.join(room)
    acks = await send_many(tx, room, [f"w{i}" for i in range(200)])
    for c in rx:
        await c.wait_seq(room, acks[-1]["seq"], 10)
        assert [p["seq"] for p in c.chats(room)] == [a["seq"] for a in acks], c.user
    # One message alone: the delay holds it at most ~20 ms, not forever.
    t0 = time.monotonic()
    a = await tx.chat(room, "alone", id="alone")
    await rx[0].wait_seq(room, a["seq"], 5)
    assert time.monotonic() - t0 < 1.0


@itest(30)
async def test_scripts_reloaded_after_script_flush():
    """Scripts run by EVALSHA; a Redis that forgot them (restart, SCRIPT
    FLUSH) answers NOSCRIPT and chatd sends the call again as EVAL: the
    message is stored once and acked, and joins keep working."""
    room = R("noscript")
    s = await connect(SRV, "nsender")
    r = await connect(SRV_B, "nrecv")
    await s.join(room)
    await r.join(room)
    first = await s.chat(room, "before", id="ns1")
    harness.script_flush(REDIS)         # every node of a cluster
    acks = await send_many(s, room, ["ns2", "ns3", "ns4"])
    # Calls in flight at the flush may be stored in another order than sent
    # (each is resent as EVAL when its NOSCRIPT comes back): each is stored
    # once, with the next seqs.
    assert sorted(a["seq"] for a in acks) == [first["seq"] + 1, first["seq"] + 2, first["seq"] + 3], acks
    last = max(a["seq"] for a in acks)
    await r.wait_seq(room, last, 5)
    assert [p["seq"] for p in r.chats(room)] == list(range(first["seq"], last + 1))
    # A resend with the same id after the flush is still a duplicate.
    again = await s.chat(room, "before", id="ns1")
    assert again["seq"] == first["seq"] and again.get("duplicate") is True, again
    harness.script_flush(REDIS)         # every node of a cluster
    late = await connect(SRV, "nlate")
    j = await late.join(room)
    assert j["seq"] == last, j


@itest(60)
async def test_dead_worker_of_the_old_layout_is_reaped():
    """chatd before Redis Cluster support kept a worker's presence as
    "room\\nuser" entries in chatd:w:<wid>. Such a worker that dies while
    old and new run side by side (a USR2 upgrade) is reaped by the new ones:
    its users leave, and its set and registry entry go."""
    if harness.is_cluster(REDIS):
        raise harness.Skip("the old layout only ever ran on one Redis")
    room = R("legacy")
    wid = f"oldhost:{os.getpid()}:1"
    REDIS.command("SADD", f"chatd:w:{wid}", f"{room}\nghost")
    REDIS.command("HINCRBY", f"chatd:{{{room}}}:u", "ghost", 1)
    REDIS.command("ZADD", "chatd:workers", 1, wid)      # its last heartbeat: long ago
    obs = await connect(SRV, "legacyobs")
    try:
        await obs.join(room)
        await obs.wait(lambda f: member_events(obs, room, "ghost", "leave"), 20,
                       what="the old worker's user to leave")
        assert await presence(obs, room) == ["legacyobs"]
        assert REDIS.command("EXISTS", f"chatd:w:{wid}") == 0
        assert REDIS.command("ZSCORE", "chatd:workers", wid) is None
    finally:
        await obs.close()


@itest(60)
async def test_join_of_an_unreadable_room_is_answered_then_heals():
    """With --ack-replicas 1 and no replica, a room whose counter is above
    its durable mark cannot be read (the read's heal waits for a replica in
    vain). A join of it on a worker that has to learn the room afresh is
    answered `unavailable` within seconds instead of never, and once a
    replica holds the data the same join succeeds and sees the message."""
    if harness.is_cluster(REDIS):
        raise harness.Skip("needs a Redis of its own without a replica")
    room = R("unreadable")
    primary = harness.Redis(name="redis-noreplica").start()
    replica = None
    srv = Chatd(primary, workers=1, name="rooms-noreplica",
                args=FAST + ["--ack-replicas", "1", "--ack-timeout", "200"]).start()
    a = b = None
    try:
        a = await connect(srv, "stuckA")
        await a.join(room)
        f = await a.request("chat", {"room": room, "content": "not durable"}, id="nd-1")
        assert f["type"] == "error" and f["payload"]["code"] == "unavailable", f
        await a.close()
        a = None
        # The worker lets the room go once its last member has left.
        deadline = time.monotonic() + 10
        while primary.command("PUBSUB", "NUMSUB", f"chatd:{{{room}}}")[1] != 0:
            assert time.monotonic() < deadline, "the room's channel was never unsubscribed"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)       # and its entry is freed on a later tick
        b = await connect(srv, "stuckB")
        t0 = time.monotonic()
        f = await b.request("join", {"room": room}, id="j-stuck", timeout=15)
        waited = time.monotonic() - t0
        assert f["type"] == "error" and f["payload"]["code"] == "unavailable", f
        assert waited < 8, f"join answered after {waited:.1f}s"
        replica = harness.Redis(name="redis-latereplica",
                                extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        harness.wait_for(lambda: "master_link_status:up" in
                         replica.command("INFO", "replication").decode(), 10, what="the replica linked")
        f = await b.request("join", {"room": room}, id="j-healed", timeout=10)
        assert f["type"] == "joined" and f["payload"]["seq"] == 1, f
        print(f"    unreadable room: join answered unavailable after {waited:.1f}s; "
              f"joined at seq 1 once a replica linked")
    finally:
        for x in (a, b):
            if x is not None:
                await x.close()
        srv.stop()
        for r in (replica, primary):
            if r is not None:
                r.stop()
