"""The MongoDB archive, against a real MongoDB-wire server (CongoDB, see
tests/congodb/) read back through the official MongoDB Node.js driver.

Every test checks stored documents, not just chatd's answers: each acked
message must be in the archive exactly once, with its fields, whatever was
stopped or killed on the way."""
import asyncio
import functools
import json
import os
import signal
import time

import harness
from chatclient import ChatClient, fold_room, room_event_writers
from harness import Chatd, Congo, Redis, is_cluster, make_redis, wait_for  # noqa: F401

TAG = str(int(time.time()) % 100000)

REDIS = None
MONGO = None
SRV = None


def setup_module():
    global REDIS, MONGO, SRV
    Congo.setup()
    REDIS = make_redis("redis-archive")
    MONGO = Congo().start()
    SRV = Chatd(REDIS, workers=2, name="archive",
                args=["--mongo-uri", MONGO.uri, "--recovery-window", "10",
                      "--rate", "100000", "--burst", "100000"]).start()


def teardown_module():
    if SRV is not None:
        SRV.stop()
    if MONGO is not None:
        MONGO.stop()
    if REDIS is not None:
        REDIS.stop()


def R(name):
    return f"arch-{TAG}-{name}"


def atest(seconds):
    def deco(fn):
        @functools.wraps(fn)
        def wrapper():
            return asyncio.run(fn())
        wrapper.timeout_seconds = seconds
        return wrapper
    return deco


def metric(srv, name):
    st, _, body = harness.http_get(srv.port, "/metrics")
    assert st == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_archived(room, acks, timeout=30):
    """Waits until the archive holds exactly the acked messages of room."""
    want = sorted(a["seq"] for a in acks)
    docs = []

    def done():
        nonlocal docs
        docs = MONGO.docs(room)
        return sorted(d["seq"] for d in docs) == want
    try:
        wait_for(done, timeout, interval=0.5, what=f"archive of {room}")
    except AssertionError:
        seqs = [d["seq"] for d in docs]
        dups = sorted({s for s in seqs if seqs.count(s) > 1})
        raise AssertionError(f"{room}: archive has {len(seqs)} docs (dups {dups[:10]}), "
                             f"want {len(want)}; missing {sorted(set(want) - set(seqs))[:10]}")
    return docs


async def send_all(c, room, n, prefix, retry_unavailable=False):
    """Sends n chats with ids; returns the ack payloads. With retry, a chat
    answered unavailable is resent with the same id, as a client would."""
    acks = []
    for i in range(n):
        mid = f"{prefix}-{i}"
        while True:
            f = await c.request("chat", {"room": room, "content": f"{prefix} {i}",
                                         "attachments": [{"type": "link", "url": f"https://e.x/{i}"}]},
                                id=mid, timeout=15)
            if f["type"] == "ack":
                acks.append(f["payload"])
                break
            assert retry_unavailable and f["payload"]["code"] == "unavailable", f
            await asyncio.sleep(0.3)
    return acks


@atest(90)
async def test_archive_round_trip_fields():
    room = R("rt")
    c = await ChatClient.open(SRV.port, "alice")
    try:
        await c.join(room)
        acks = await send_all(c, room, 25, "rt")
    finally:
        await c.close()
    assert [a["seq"] for a in acks] == list(range(1, 26))
    docs = wait_archived(room, acks)
    by_seq = {d["seq"]: d for d in docs}
    for i, a in enumerate(acks):
        d = by_seq[a["seq"]]
        assert d["sender"] == "alice" and d["content"] == f"rt {i}", d
        assert d["cid"] == f"rt-{i}" and d["ts"] == a["ts"] and d["timestamp"] == a["ts"], (d, a)
        assert d["attachments"] == [{"type": "link", "url": f"https://e.x/{i}"}], d
    wait_for(lambda: metric(SRV, "chatd_queue_depth") == 0, 15, what="queue depth 0")
    assert metric(SRV, "chatd_mongo_up") == 1


@atest(120)
async def test_history_pages_from_redis_into_mongo():
    room = R("hist")
    c = await ChatClient.open(SRV.port, "bob")
    try:
        await c.join(room)
        acks = await send_all(c, room, 30, "h1")
        wait_archived(room, acks)
        # Sends after the archive caught up let the recent log be trimmed
        # below what MongoDB holds (it keeps at least the window of 10).
        acks += await send_all(c, room, 15, "h2")
        wait_archived(room, acks)
        log_len = REDIS.command("XLEN", f"chatd:{{{room}}}:log")
        assert log_len < 45, f"the recent log was never trimmed ({log_len} entries)"

        seen, before, pages = [], None, 0
        while True:
            p = {"room": room, "limit": 7}
            if before is not None:
                p["before"] = before
            h = await c.expect("history", p, want="history")
            seqs = [m["seq"] for m in h["messages"]]
            assert seqs == sorted(seqs), f"page not ascending: {seqs}"
            seen = seqs + seen
            pages += 1
            if not h["more"]:
                break
            assert seqs, f"more=true with an empty page: {h}"
            before = seqs[0]
            assert pages < 20
        assert seen == list(range(1, 46)), f"history pages gave {seen}"
        old = (await c.expect("history", {"room": room, "before": 3, "limit": 5}, want="history"))
        assert [m["seq"] for m in old["messages"]] == [1, 2] and old["more"] is False, old
        m1 = old["messages"][0]
        assert m1["sender"] == "bob" and m1["content"] == "h1 0" and m1["cid"] == "h1-0", m1
        assert m1["attachments"] == [{"type": "link", "url": "https://e.x/0"}], m1
        assert m1["ts"] == acks[0]["ts"], (m1, acks[0])

        # A join with since older than the Redis window is not recovered.
        d = await ChatClient.open(SRV.port, "carol")
        try:
            j = await d.join(room, since=2)
            assert j["recovered"] is False and j["seq"] == 45, j
        finally:
            await d.close()
    finally:
        await c.close()


@atest(180)
async def test_mongo_down_chat_continues_backlog_drains():
    room = R("down")
    c = await ChatClient.open(SRV.port, "dave")
    try:
        await c.join(room)
        acks = await send_all(c, room, 5, "pre")
        wait_archived(room, acks)
        MONGO.stop()
        try:
            acks += await send_all(c, room, 40, "during")
            assert [a["seq"] for a in acks] == list(range(1, 46))
            wait_for(lambda: (metric(SRV, "chatd_queue_depth") or 0) >= 40, 20,
                     what="backlog visible in /metrics")
            wait_for(lambda: metric(SRV, "chatd_mongo_up") == 0, 20, what="mongo_up 0")
        finally:
            MONGO.start()
        docs = wait_archived(room, acks, timeout=60)
        assert len(docs) == 45
        wait_for(lambda: metric(SRV, "chatd_queue_depth") == 0, 30, what="backlog drained")
    finally:
        await c.close()


@atest(180)
async def test_worker_kill9_mid_batch_no_loss_no_duplicate():
    room = R("kill")
    c = await ChatClient.open(SRV.port, "erin")
    try:
        await c.join(room)
        # With MongoDB away, every worker holds a batch it cannot finish.
        MONGO.stop()
        try:
            acks = await send_all(c, room, 30, "k")
            wait_for(lambda: (metric(SRV, "chatd_queue_depth") or 0) >= 30, 20, what="backlog")
        finally:
            await c.close()
        for pid in SRV.worker_pids():
            os.kill(pid, signal.SIGKILL)
        MONGO.start()
        # The respawned workers claim the dead ones' pending batches.
        docs = wait_archived(room, acks, timeout=90)
        assert len(docs) == 30
    finally:
        if MONGO.proc is None:
            MONGO.start()


@atest(120)
async def test_redis_flushed_seq_continues_from_mongo():
    room = R("flush")
    c = await ChatClient.open(SRV.port, "fred")
    try:
        await c.join(room)
        acks = await send_all(c, room, 12, "f")
        wait_archived(room, acks)
    finally:
        await c.close()
    # FLUSHALL on every master in a cluster: the room's keys are gone
    for node in (REDIS.masters() if is_cluster(REDIS) else [REDIS]):
        node.command("FLUSHALL")
    c = await ChatClient.open(SRV.port, "fred")
    try:
        j = await c.join(room)
        assert j["seq"] == 12, f"join after the flush: {j}"
        more = await send_all(c, room, 3, "g")
        assert [a["seq"] for a in more] == [13, 14, 15], more
        docs = wait_archived(room, acks + more)
        assert len(docs) == 15
    finally:
        await c.close()


@atest(150)
async def test_ack_replicas_archive_gets_only_what_the_replicas_hold():
    """With --ack-replicas 1, a message the replicas do not hold yet is
    neither acked nor archived; once they hold it, a resend with the same id
    is answered as a duplicate and the message reaches MongoDB exactly once."""
    room = R("acks")
    pair = None
    if is_cluster(REDIS):
        store = REDIS
        replica = REDIS.replica_of(REDIS.master_of(f"chatd:{{{room}}}"))
    else:
        # One Redis and a replica of it, for this server alone.
        primary = Redis(name="redis-ackprimary").start()
        replica = Redis(name="redis-ackreplica",
                        extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        pair = (primary, replica)
        store = primary
        wait_for(lambda: "master_link_status:up" in replica.command("INFO", "replication").decode(),
                 10, what="the replica linked")
    srv = Chatd(store, workers=1, name="archive-acks",
                args=["--mongo-uri", MONGO.uri, "--ack-replicas", "1", "--ack-timeout", "300",
                      "--rate", "100000", "--burst", "100000"]).start()
    c = None
    try:
        c = await ChatClient.open(srv.port, "ada")
        await c.join(room)
        held = await send_all(c, room, 5, "held")
        wait_archived(room, held)

        replica.stop()
        unheld = []
        for i in range(3):
            f = await c.request("chat", {"room": room, "content": f"unheld {i}"}, id=f"unheld-{i}", timeout=15)
            assert f["type"] == "error" and f["payload"]["code"] == "unavailable", f
            unheld.append(f"unheld-{i}")
        # stored on the master, but not durable: MongoDB must not get them
        time.sleep(4)
        docs = MONGO.docs(room)
        assert sorted(d["seq"] for d in docs) == [1, 2, 3, 4, 5], \
            f"archived while no replica held them: {[(d['seq'], d.get('content')) for d in docs]}"

        replica.restart()
        wait_for(lambda: "master_link_status:up" in replica.command("INFO", "replication").decode(),
                 30, what="the replica back and linked")
        acks = []
        for mid in unheld:
            f = await c.request("chat", {"room": room, "content": "again"}, id=mid, timeout=15)
            assert f["type"] == "ack", f
            acks.append(f["payload"])
        assert [a["seq"] for a in acks] == [6, 7, 8] and all(a.get("duplicate") for a in acks), acks
        docs = wait_archived(room, held + acks)
        assert [d["content"] for d in sorted(docs, key=lambda d: d["seq"])][5:] == \
            ["unheld 0", "unheld 1", "unheld 2"], docs
    finally:
        if c is not None:
            await c.close()
        srv.stop()
        if not replica.running():
            replica.restart()
        if pair is not None:
            for r in pair:
                r.stop()


# --------------------------------------------------------------------------
# room events (protocol 1.1): the archive holds each message's current state


def wait_doc(room, seq, pred, what, timeout=30):
    """The archived document of (room, seq) once pred(doc) holds."""
    last = None

    def ok():
        nonlocal last
        last = next((d for d in MONGO.docs(room) if d["seq"] == seq), None)
        return last is not None and pred(last)
    try:
        wait_for(ok, timeout, interval=0.3, what=what)
    except AssertionError:
        raise AssertionError(f"{room} seq {seq}: {what}; document now: {last}") from None
    return last


@atest(90)
async def test_events_reach_the_archive_as_state():
    """Edits, reactions and deletes rewrite the archived document: the
    current content with `edited`, every reacting user, and for a delete
    neither content nor attachments, anywhere in the archive."""
    room = R("events")
    secret = "ARCHSECRET-" + TAG
    a = await ChatClient.open(SRV.port, "evan")
    b = await ChatClient.open(SRV.port, "bea")
    try:
        await a.join(room)
        await b.join(room)
        m1 = await a.chat(room, "first draft")
        m2 = await a.chat(room, secret, attachments=[{"type": "doc", "url": "https://example.org/" + secret}])
        e = await a.expect("edit", {"room": room, "target": m1["seq"], "content": "final text"}, want="ack")
        r1 = await b.expect("react", {"room": room, "target": m1["seq"], "emoji": "👍", "on": True}, want="ack")
        await a.expect("react", {"room": room, "target": m1["seq"], "emoji": "👍", "on": True}, want="ack")
        await a.expect("react", {"room": room, "target": m1["seq"], "emoji": "🎉", "on": True}, want="ack")
        last = await a.expect("react", {"room": room, "target": m1["seq"], "emoji": "🎉", "on": False}, want="ack")
        wait_doc(room, m2["seq"], lambda d: d["content"] == secret, "the secret message archived")
        d = await a.expect("delete", {"room": room, "target": m2["seq"]}, want="ack")
        doc1 = wait_doc(room, m1["seq"], lambda d: d["v"] == last["seq"], "the last reaction applied")
        assert doc1["content"] == "final text" and doc1["edited"] == e["ts"], doc1
        assert doc1["reactions"] == [{"emoji": "👍", "count": 2, "users": ["bea", "evan"]}], doc1
        doc2 = wait_doc(room, m2["seq"], lambda d: d["deleted"] is True, "the delete applied")
        assert "content" not in doc2["fields"] and "attachments" not in doc2["fields"], doc2
        assert doc2["v"] == d["seq"], doc2
        docs = MONGO.docs(room)
        assert secret not in json.dumps(docs), docs
        assert sorted(x["seq"] for x in docs) == [m1["seq"], m2["seq"]], \
            f"events must not become documents of their own: {docs}"
        assert r1["seq"] < last["seq"]
    finally:
        await a.close()
        await b.close()


@atest(90)
async def test_archived_history_is_folded():
    """Once a room's older messages live only in MongoDB (recovery window
    10 here), history pages into the archive and shows them with their
    state, the same as the recent log does."""
    room = R("foldhist")
    a = await ChatClient.open(SRV.port, "fay")
    try:
        await a.join(room)
        first = await send_all(a, room, 3, "old")
        await a.expect("edit", {"room": room, "target": first[0]["seq"], "content": "old, edited"}, want="ack")
        await a.expect("react", {"room": room, "target": first[1]["seq"], "emoji": "🔥", "on": True}, want="ack")
        await a.expect("delete", {"room": room, "target": first[2]["seq"]}, want="ack")
        recent = await send_all(a, room, 30, "new")
        wait_archived_upto(room, recent[-1]["seq"])
        # the log keeps about the recovery window: the first three are gone from Redis
        f = await a.request("history", {"room": room, "limit": 100})
        msgs = {m["seq"]: m for m in f["payload"]["messages"]}
        assert f["type"] == "history" and sorted(msgs) == [x["seq"] for x in first + recent], f
        m0, m1, m2 = (msgs[x["seq"]] for x in first)
        assert m0["content"] == "old, edited" and "edited" in m0, m0
        assert m1["reactions"] == [{"emoji": "🔥", "count": 1, "users": ["fay"]}], m1
        assert m2["deleted"] is True and m2["content"] == "" and m2["attachments"] == [], m2
        assert all(m["reactions"] == [] for m in (msgs[x["seq"]] for x in recent)), "plain messages: []"
    finally:
        await a.close()


def wait_archived_upto(room, seq, timeout=30):
    wait_for(lambda: any(d["seq"] == seq for d in MONGO.docs(room)), timeout, interval=0.3,
             what=f"{room} archived up to seq {seq}")


@atest(90)
async def test_an_older_state_never_overwrites_a_newer_one():
    """A retried or reordered batch may bring an event's entry again after
    a later one was written: the document keeps the newest state, so a
    reaction is not applied twice and deleted content does not come back."""
    if is_cluster(REDIS):
        raise harness.Skip("writes the single Redis's archive queue by hand")
    room = R("stale")
    a = await ChatClient.open(SRV.port, "gus")
    try:
        await a.join(room)
        m = await a.chat(room, "will go")
        e = await a.expect("edit", {"room": room, "target": m["seq"], "content": "edited, then deleted"}, want="ack")
        d = await a.expect("delete", {"room": room, "target": m["seq"]}, want="ack")
        wait_doc(room, m["seq"], lambda x: x["deleted"] is True, "the delete applied")
        # the edit's queue entry once more, as a retried batch would bring it
        orig = json.dumps({"room": room, "seq": m["seq"], "ts": m["ts"], "sender": "gus",
                           "content": "edited, then deleted", "attachments": []})
        state = json.dumps({"c": "edited, then deleted", "a": [], "e": e["ts"], "v": [e["seq"]]})
        ev = json.dumps({"room": room, "seq": e["seq"], "ts": e["ts"], "sender": "gus",
                         "target": m["seq"], "content": "edited, then deleted", "attachments": []})
        REDIS.command("XADD", "chatd:archive", "*", "r", room, "m", ev, "t", "edit", "o", orig, "s", state)
        marker = await a.chat(room, "after the replay")
        wait_archived_upto(room, marker["seq"])
        time.sleep(1)
        doc = next(x for x in MONGO.docs(room) if x["seq"] == m["seq"])
        assert doc["deleted"] is True and "content" not in doc["fields"] and doc["v"] == d["seq"], doc
    finally:
        await a.close()


@atest(90)
async def test_flushed_redis_continues_after_the_last_event():
    """The room's last seq may be an event's: after Redis lost everything,
    the counter continues above it, not above the last message."""
    room = R("flushev")
    c = await ChatClient.open(SRV.port, "hal")
    try:
        await c.join(room)
        m = await c.chat(room, "one")
        r = await c.expect("react", {"room": room, "target": m["seq"], "emoji": "✅", "on": True}, want="ack")
        wait_doc(room, m["seq"], lambda x: x["v"] == r["seq"], "the reaction archived")
    finally:
        await c.close()
    for node in (REDIS.masters() if is_cluster(REDIS) else [REDIS]):
        node.command("FLUSHALL")
    c = await ChatClient.open(SRV.port, "hal")
    try:
        j = await c.join(room)
        assert j["seq"] == r["seq"], f"join after the flush: {j}, last event {r['seq']}"
        n = await c.chat(room, "two")
        assert n["seq"] == r["seq"] + 1, n
    finally:
        await c.close()


@atest(120)
async def test_events_on_messages_only_the_archive_holds():
    """Messages that left the Redis log (recovery window 10 here) can still
    be edited, reacted to and deleted: chatd reads them from MongoDB once,
    and the archive's document follows. A seq that is no message is still
    not_found; the state kept in Redis for such a message goes once the
    archive holds its events."""
    room = R("oldtargets")
    a = await ChatClient.open(SRV.port, "ivy")
    b = await ChatClient.open(SRV.port, "jon")
    try:
        await a.join(room)
        await b.join(room)
        old = await send_all(a, room, 3, "old")
        await b.expect("react", {"room": room, "target": old[1]["seq"], "emoji": "👀", "on": True}, want="ack")
        # the log is trimmed a stream node (100 entries) at a time
        recent = await send_all(a, room, 150, "fill")
        wait_archived_upto(room, recent[-1]["seq"])
        await send_all(a, room, 70, "fill2")
        log = REDIS.command("XRANGE", f"chatd:{{{room}}}:log", "-", "+", "COUNT", 1)
        first = int(log[0][0].decode().split("-")[0])
        assert first > old[2]["seq"], f"the old messages should have left the log (first {first})"
        e = await a.expect("edit", {"room": room, "target": old[0]["seq"], "content": "edited long after"},
                           want="ack")
        r = await a.expect("react", {"room": room, "target": old[1]["seq"], "emoji": "👀", "on": True}, want="ack")
        assert r["duplicate"] is False
        dup = await b.expect("react", {"room": room, "target": old[1]["seq"], "emoji": "👀", "on": True},
                             want="ack")
        assert dup["duplicate"] is True, "jon's reaction came back from the archive"
        await b.expect("edit", {"room": room, "target": old[0]["seq"], "content": "x"}, want="error:forbidden")
        d = await a.expect("delete", {"room": room, "target": old[2]["seq"]}, want="ack")
        await a.expect("edit", {"room": room, "target": old[2]["seq"], "content": "x"}, want="error:not_found")
        # a seq of the archive that is an event, not a message
        await a.expect("edit", {"room": room, "target": 4, "content": "x"}, want="error:not_found")
        doc0 = wait_doc(room, old[0]["seq"], lambda x: x["v"] == e["seq"], "the edit archived")
        assert doc0["content"] == "edited long after" and doc0["edited"] == e["ts"], doc0
        doc1 = wait_doc(room, old[1]["seq"], lambda x: x["v"] == r["seq"], "the reaction archived")
        assert doc1["reactions"] == [{"emoji": "👀", "count": 2, "users": ["jon", "ivy"]}], doc1
        doc2 = wait_doc(room, old[2]["seq"], lambda x: x["deleted"] is True, "the delete archived")
        assert "content" not in doc2["fields"], doc2
        f = await a.request("history", {"room": room, "limit": 3, "before": old[2]["seq"] + 1})
        msgs = {m["seq"]: m for m in f["payload"]["messages"]}
        assert sorted(msgs) == [x["seq"] for x in old], f
        assert msgs[old[0]["seq"]]["content"] == "edited long after"
        assert msgs[old[2]["seq"]]["deleted"] is True
        # once archived, the states kept for them in Redis go with the next trims
        more = await send_all(a, room, 200, "more")
        wait_archived_upto(room, more[-1]["seq"])
        await send_all(a, room, 130, "trim")
        left = REDIS.command("HKEYS", f"chatd:{{{room}}}:st")
        assert all(int(k) > old[2]["seq"] for k in left), f"states of archived messages kept: {left}"
        assert d["seq"] > r["seq"]
    finally:
        await a.close()
        await b.close()


def archived_state(room):
    """{seq: message} of room's MongoDB documents, shaped as fold_room's."""
    out = {}
    for d in MONGO.docs(room):
        m = {"seq": d["seq"], "sender": d["sender"], "deleted": bool(d["deleted"]),
             "content": d["content"] if "content" in d["fields"] else "",
             "attachments": d["attachments"] if "attachments" in d["fields"] else [],
             "reactions": {r["emoji"]: sorted(r["users"]) for r in (d["reactions"] or [])}}
        if d["edited"] is not None:
            m["edited"] = d["edited"]
        out[d["seq"]] = m
    return out


def wait_archive_matches(room, want, limit, label):
    """Waits up to limit seconds for the room's archived documents to equal
    want (fold_room of the live frames); fails naming the first that differ."""
    got = {}

    def same():
        nonlocal got
        got = archived_state(room)
        return got == want
    try:
        wait_for(same, limit, interval=0.5, what="the archive to match the live state")
    except AssertionError:
        bad = [(s, got.get(s), want.get(s)) for s in sorted(set(got) | set(want)) if got.get(s) != want.get(s)]
        raise AssertionError(f"{label}{len(bad)} documents differ, first (seq, archive, live): {bad[:3]}") from None


@atest(120)
async def test_archive_converges_on_the_live_state():
    """Three writers edit, delete and react concurrently; both workers
    archive the queue, so entries of the room may be written out of order.
    Every archived document ends equal to what a connected client shows."""
    room = R("converge")
    writers = [await ChatClient.open(SRV.port, f"cw{i}") for i in range(3)]
    watcher = await ChatClient.open(SRV.port, "cwatch")
    try:
        for c in writers + [watcher]:
            await c.join(room)
        await room_event_writers(writers, room, 50, seed=11)
        top = (await watcher.chat(room, "end"))["seq"]
        await watcher.wait(lambda f: f.get("type") == "chat" and f["payload"]["seq"] == top, what="the end")
        want = fold_room(watcher.frames, room)

        wait_archive_matches(room, want, 40, "")
        n_ev = len([f for f in watcher.frames if f.get("type") in ("edit", "delete", "reaction")])
        print(f"    archive converge: {len(want)} messages, {n_ev} events, seqs up to {top}")
    finally:
        for c in writers + [watcher]:
            await c.close()


@atest(120)
async def test_archive_converges_while_both_workers_archive():
    """The same, in bursts a little apart, so that both workers archive
    batches of the room while events on its messages keep coming: a batch
    may be written before an earlier one, a message may leave the log
    while events on it are still on their way to MongoDB, and an event
    may land between another worker's insert and update. The archive
    still ends equal to the live state (it once kept an older state of a
    message for good)."""
    writers = [await ChatClient.open(SRV.port, f"bw{i}") for i in range(3)]
    watcher = await ChatClient.open(SRV.port, "bwatch")
    try:
        for k in range(5):
            room = R(f"bursts{k}")
            for c in writers + [watcher]:
                await c.join(room)
            for burst in range(8):
                await room_event_writers(writers, room, 10, seed=100 * k + burst)
                await asyncio.sleep(0.3)
            top = (await watcher.chat(room, "end"))["seq"]
            await watcher.wait(lambda f: f.get("type") == "chat" and f["payload"].get("room") == room
                               and f["payload"]["seq"] == top, what="the end")
            want = fold_room(watcher.frames, room)
            wait_archive_matches(room, want, 20, f"{room}: ")
    finally:
        for c in writers + [watcher]:
            await c.close()


@atest(120)
async def test_archive_latency_stays_low_after_many_rooms():
    """In a cluster each slot has its own queue, and a worker reads the
    queues it sent to. Once a queue is drained it must stop being read,
    or every slot ever used would be polled in turn and a new message
    would wait behind hundreds of empty queues. After 400 rooms, a new
    room's message still reaches MongoDB within seconds."""
    c = await ChatClient.open(SRV.port, "lat")
    try:
        rooms = [R(f"lat{i}") for i in range(400)]
        for r in rooms:
            await c.join(r)
            await c.chat(r, "x")
            await c.leave(r)        # at most --max-rooms (100) at once
        wait_for(lambda: all(MONGO.docs(r) for r in rooms[-3:]), 60, interval=0.5,
                 what="the first rooms archived")
        time.sleep(3)       # every queue read empty once since
        room = R("latnew")
        await c.join(room)
        t0 = time.monotonic()
        await c.chat(room, "late")
        wait_for(lambda: MONGO.docs(room), 20, interval=0.2, what="the new room's message archived")
        took = time.monotonic() - t0
        print(f"    archive latency after 400 rooms: {took:.1f}s")
        assert took < 5, f"a new message took {took:.1f}s to reach the archive"
    finally:
        await c.close()


@atest(120)
async def test_search_reaches_the_archive():
    """Search reads the recent log, then MongoDB's indexed words below it:
    one answer, newest first, paging across the two; edits and deletes of
    archived messages keep it true."""
    room = R("search")
    a = await ChatClient.open(SRV.port, "sol")
    try:
        await a.join(room)
        old = [await a.chat(room, t) for t in ("Ancient Ünïcode needle", "another needle, older", "plain hay")]
        fill = await send_all(a, room, 230, "fill")       # the log keeps about 100 of them
        wait_archived_upto(room, fill[-1]["seq"])
        await send_all(a, room, 20, "more")
        log = REDIS.command("XRANGE", f"chatd:{{{room}}}:log", "-", "+", "COUNT", 1)
        assert int(log[0][0].decode().split("-")[0]) > old[-1]["seq"], "the old messages should have left the log"
        new = await a.chat(room, "a fresh needle")

        async def search(q, **kw):
            p = {"room": room, "q": q}
            p.update(kw)
            f = await a.request("search", p, timeout=15)
            assert f["type"] == "results", f
            return f["payload"]
        res = await search("needle")
        assert [m["seq"] for m in res["messages"]] == [new["seq"], old[1]["seq"], old[0]["seq"]], res
        assert res["more"] is False
        assert [m["seq"] for m in (await search("unicode"))["messages"]] == [old[0]["seq"]]   # folded in MongoDB too
        assert [m["seq"] for m in (await search("ANCIENT uni"))["messages"]] == [old[0]["seq"]]
        page = await search("needle", limit=1)
        assert [m["seq"] for m in page["messages"]] == [new["seq"]] and page["more"] is True
        page = await search("needle", limit=1, before=new["seq"])
        assert [m["seq"] for m in page["messages"]] == [old[1]["seq"]] and page["more"] is True, page
        # an edit and a delete of archived messages
        await a.expect("edit", {"room": room, "target": old[2]["seq"], "content": "hay turned needle"}, want="ack")
        await a.expect("delete", {"room": room, "target": old[0]["seq"]}, want="ack")
        wait_doc(room, old[0]["seq"], lambda x: x["deleted"] is True, "the delete archived")
        wait_doc(room, old[2]["seq"], lambda x: x["content"] == "hay turned needle", "the edit archived")
        res = await search("needle")
        assert [m["seq"] for m in res["messages"]] == [new["seq"], old[2]["seq"], old[1]["seq"]], res
    finally:
        await a.close()


@atest(120)
async def test_words_backfilled_for_documents_archived_before_search():
    """An archive written before search existed has no words: the first
    worker of a (re)started server fills them in, in the background, and
    search then finds those messages."""
    room = R("backfill")
    a = await ChatClient.open(SRV.port, "bf")
    try:
        await a.join(room)
        old = [await a.chat(room, t) for t in ("forgotten lighthouse", "another lighthouse keeper")]
        fill = await send_all(a, room, 230, "fill")
        wait_archived_upto(room, fill[-1]["seq"])
        await send_all(a, room, 20, "more")
    finally:
        await a.close()
    assert MONGO.update("messages", {"roomId": room}, {"$unset": {"words": ""}}) >= 2
    a = await ChatClient.open(SRV.port, "bf")
    try:
        await a.join(room)
        f = await a.request("search", {"room": room, "q": "lighthouse"}, timeout=15)
        assert f["payload"]["messages"] == [], f
    finally:
        await a.close()
    old_workers = SRV.worker_pids()
    os.kill(SRV.pid, signal.SIGHUP)
    wait_for(lambda: len(SRV.worker_pids()) == 2 and not set(SRV.worker_pids()) & set(old_workers), 15,
             what="fresh workers after HUP")
    wait_for(lambda: MONGO.count("messages", {"roomId": room, "words": {"$exists": False}}) == 0, 30,
             what="every document of the room has its words")
    a = await ChatClient.open(SRV.port, "bf")
    try:
        await a.join(room)
        f = await a.request("search", {"room": room, "q": "lighthouse"}, timeout=15)
        assert [m["seq"] for m in f["payload"]["messages"]] == [old[1]["seq"], old[0]["seq"]], f
    finally:
        await a.close()


@atest(90)
async def test_e2e_room_archive_holds_only_ciphertext():
    """An e2e: room's documents hold the ciphertext, its key id and iv (the
    last edit's), no search words; history read back from MongoDB gives
    the same e2e as the live messages."""
    room = "e2e:" + R("cipher")
    a = await ChatClient.open(SRV.port, "eve2e")
    try:
        await a.join(room)

        async def chat(i):
            f = await a.request("chat", {"room": room, "content": f"Q0lQSEVS{i:04d}",
                                         "e2e": {"keyId": "k1", "iv": f"iv{i}"}}, id=f"e{i}", timeout=15)
            assert f["type"] == "ack", f
            return f["payload"]
        first = await chat(0)
        f = await a.request("edit", {"room": room, "target": first["seq"], "content": "RURJVA==",
                                     "e2e": {"keyId": "k2", "iv": "iv-edit"}}, timeout=15)
        assert f["type"] == "ack", f
        last = None
        for i in range(1, 231):
            last = await chat(i)
        wait_archived_upto(room, last["seq"])
        wait_doc(room, first["seq"], lambda x: x["content"] == "RURJVA==", "the edit archived")
        docs = {d["seq"]: d for d in MONGO.docs(room)}
        d0 = docs[first["seq"]]
        assert d0["e2e"] == {"keyId": "k2", "iv": "iv-edit"} and "words" not in d0["fields"], d0
        assert all("words" not in d["fields"] and d["e2e"]["keyId"] for d in docs.values())
        assert docs[last["seq"]]["e2e"] == {"keyId": "k1", "iv": "iv230"}
        for i in range(20):
            await chat(1000 + i)       # the log moves on past the first messages
        log = REDIS.command("XRANGE", f"chatd:{{{room}}}:log", "-", "+", "COUNT", 1)
        assert int(log[0][0].decode().split("-")[0]) > first["seq"] + 2, "history should come from MongoDB"
        # seq + 1 is the edit: the next message is seq + 2.
        h = await a.request("history", {"room": room, "before": first["seq"] + 3, "limit": 2}, timeout=15)
        msgs = h["payload"]["messages"]
        assert [m["seq"] for m in msgs] == [first["seq"], first["seq"] + 2], h
        assert msgs[0]["content"] == "RURJVA==" and msgs[0]["e2e"] == {"keyId": "k2", "iv": "iv-edit"}, msgs[0]
        assert msgs[1]["e2e"] == {"keyId": "k1", "iv": "iv1"}, msgs[1]
    finally:
        await a.close()
