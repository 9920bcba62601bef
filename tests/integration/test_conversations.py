"""
Integration tests of protocol 1.1's room events: edit, delete and react,
against real chatd processes and a real Redis (a Redis Cluster with
CHATD_IT_REDIS=cluster).

Every rule of "Room events" and "Messages with their state" is checked
from the outside: who may do what (forbidden, not_found), the shared seq,
acks and deduplication, broadcasts, history with the state folded in,
recovery replay of the events themselves (a client that reconnects with
since ends in the state of one that stayed, also under concurrent events
from several connections), and delete-means-gone read directly in Redis.

Run: /usr/bin/python3 tests/integration/run.py test_conversations
"""

import asyncio
import json
import os

import harness
from harness import Chatd, make_redis, make_jwt
from chatclient import connect, fold_room as fold, itest, room_event_writers

REDIS = None
SRV = None          # --workers 2
JWT_SRV = None      # --jwt-secret, for the admin claim
TAG = os.urandom(3).hex()
FAST = ["--rate", "100000", "--burst", "100000"]
SECRET = "conversations-secret-" + TAG


def setup_module():
    global REDIS, SRV, JWT_SRV
    REDIS = make_redis("redis-conv")
    SRV = Chatd(REDIS, workers=2, args=FAST, name="conv").start()
    JWT_SRV = Chatd(REDIS, workers=1, args=FAST + ["--jwt-secret", SECRET], name="conv-jwt").start()


def teardown_module():
    for srv in list(_EXTRA.values()) + [JWT_SRV, SRV]:
        if srv is not None:
            srv.stop()
    if REDIS is not None:
        REDIS.stop()


def R(name):
    return f"{name}-{TAG}"


def rcmd(*args):
    """A command on the node that holds the keys of its first key's room."""
    return REDIS.command(*args)


async def token_client(user, admin=False):
    claims = {"sub": user, "exp": 4102444800}
    if admin:
        claims["admin"] = True
    tok = make_jwt(claims, SECRET)
    from chatclient import ChatClient, track
    return track(await ChatClient.open(JWT_SRV.port, user, path=f"/ws?token={tok}"))


async def history(c, room, **kw):
    p = {"room": room, "limit": 100}
    p.update(kw)
    return await c.expect("history", p, want="history")


def by_seq(msgs):
    return {m["seq"]: m for m in msgs}


# --------------------------------------------------------------------------
# a client-side model of a room: what a client that applies every event
# it receives ends up showing


def shape(history_msgs):
    """History messages in fold()'s shape."""
    out = {}
    for h in history_msgs:
        m = {k: h[k] for k in ("seq", "sender", "content", "attachments")}
        m["deleted"] = bool(h.get("deleted"))
        if "edited" in h:
            m["edited"] = h["edited"]
        m["reactions"] = {r["emoji"]: sorted(r["users"]) for r in h.get("reactions", [])}
        out[h["seq"]] = m
    return out


# --------------------------------------------------------------------------
# edit


@itest(30)
async def test_edit_broadcast_ack_and_history():
    room = R("edit")
    a = await connect(SRV, "ed-alice")
    b = await connect(SRV, "ed-bob")
    await a.join(room)
    await b.join(room)
    ack = await a.chat(room, "helo wrld", id="m1")
    e = await a.expect("edit", {"room": room, "target": ack["seq"], "content": "hello world",
                                "attachments": [{"type": "link", "url": "https://example.org/x"}]},
                       id="e1", want="ack")
    assert e["seq"] == ack["seq"] + 1 and e["duplicate"] is False and e["room"] == room, e
    _, f = await b.wait(lambda f: f.get("type") == "edit", what="the edit broadcast")
    p = f["payload"]
    assert p == {"room": room, "seq": e["seq"], "ts": e["ts"], "sender": "ed-alice",
                 "target": ack["seq"], "content": "hello world",
                 "attachments": [{"type": "link", "url": "https://example.org/x"}], "cid": "e1"}, p
    h = await history(b, room)
    assert [m["seq"] for m in h["messages"]] == [ack["seq"]], h    # messages only, never events
    m = h["messages"][0]
    assert m["content"] == "hello world" and m["edited"] == e["ts"] and m["reactions"] == [] \
        and "deleted" not in m and m["attachments"][0]["url"] == "https://example.org/x", m
    # the next chat takes the seq after the edit: events share the numbering
    ack2 = await b.chat(room, "next")
    assert ack2["seq"] == e["seq"] + 1


@itest(30)
async def test_edit_keeps_attachments_unless_it_names_them():
    room = R("editatt")
    a = await connect(SRV, "ea-alice")
    await a.join(room)
    pic = [{"type": "image", "url": "https://example.org/p.png"}]
    m = await a.chat(room, "look", attachments=pic)
    e1 = await a.expect("edit", {"room": room, "target": m["seq"], "content": "look!"}, want="ack")
    _, f = await a.wait(lambda f: f.get("type") == "edit" and f["payload"]["seq"] == e1["seq"], what="edit 1")
    assert f["payload"]["attachments"] == pic, f
    h = by_seq((await history(a, room))["messages"])[m["seq"]]
    assert h["attachments"] == pic and h["content"] == "look!", h
    e2 = await a.expect("edit", {"room": room, "target": m["seq"], "content": "no picture", "attachments": []},
                        want="ack")
    _, f = await a.wait(lambda f: f.get("type") == "edit" and f["payload"]["seq"] == e2["seq"], what="edit 2")
    assert f["payload"]["attachments"] == [], f
    e3 = await a.expect("edit", {"room": room, "target": m["seq"], "content": "still none"}, want="ack")
    _, f = await a.wait(lambda f: f.get("type") == "edit" and f["payload"]["seq"] == e3["seq"], what="edit 3")
    assert f["payload"]["attachments"] == [], f
    h = by_seq((await history(a, room))["messages"])[m["seq"]]
    assert h["attachments"] == [] and h["content"] == "still none", h


@itest(30)
async def test_edit_rules():
    room = R("editrules")
    a = await connect(SRV, "er-alice")
    b = await connect(SRV, "er-bob")
    await a.join(room)
    await b.join(room)
    ack = await a.chat(room, "mine")
    await b.expect("edit", {"room": room, "target": ack["seq"], "content": "yours?"}, want="error:forbidden")
    await a.expect("edit", {"room": room, "target": ack["seq"] + 50, "content": "x"}, want="error:not_found")
    ed = await a.expect("edit", {"room": room, "target": ack["seq"], "content": "v2"}, want="ack")
    # an event is not a message
    await a.expect("edit", {"room": room, "target": ed["seq"], "content": "x"}, want="error:not_found")
    await a.expect("edit", {"room": room, "target": ack["seq"], "content": ""}, want="error:bad_request")
    await a.expect("edit", {"room": room, "target": ack["seq"], "content": "x" * 16385}, want="error:too_large")
    await a.expect("edit", {"room": room, "target": "1", "content": "x"}, want="error:bad_request")
    await a.expect("edit", {"room": room, "target": 0, "content": "x"}, want="error:bad_request")
    await a.expect("edit", {"room": room, "target": ack["seq"], "content": "x",
                            "attachments": [{"type": "f", "url": "javascript:alert(1)"}]}, want="error:bad_request")
    other = await connect(SRV, "er-carol")
    await other.expect("edit", {"room": room, "target": ack["seq"], "content": "x"}, want="error:not_joined")
    # dedup: the same id answers the first ack and is not broadcast again
    d1 = await a.expect("edit", {"room": room, "target": ack["seq"], "content": "v3"}, id="same", want="ack")
    d2 = await a.expect("edit", {"room": room, "target": ack["seq"], "content": "v4"}, id="same", want="ack")
    assert d2["seq"] == d1["seq"] and d2["duplicate"] is True and d1["duplicate"] is False
    await asyncio.sleep(0.3)
    assert [p["content"] for p in b.of_type("edit", room)] == ["v2", "v3"], b.of_type("edit", room)
    h = await history(a, room)
    assert h["messages"][-1]["content"] == "v3"


# --------------------------------------------------------------------------
# delete


@itest(30)
async def test_delete_rules_and_history():
    room = R("del")
    a = await connect(SRV, "dl-alice")
    b = await connect(SRV, "dl-bob")
    await a.join(room)
    await b.join(room)
    m1 = await a.chat(room, "secret one", attachments=[{"type": "img", "url": "https://example.org/1.png"}])
    m2 = await a.chat(room, "keep")
    await b.expect("delete", {"room": room, "target": m1["seq"]}, want="error:forbidden")
    d = await a.expect("delete", {"room": room, "target": m1["seq"]}, id="d1", want="ack")
    _, f = await b.wait(lambda f: f.get("type") == "delete", what="the delete broadcast")
    assert f["payload"] == {"room": room, "seq": d["seq"], "ts": d["ts"], "sender": "dl-alice",
                            "target": m1["seq"], "cid": "d1"}, f
    # a deleted message is not_found for every further event
    await a.expect("delete", {"room": room, "target": m1["seq"]}, want="error:not_found")
    await a.expect("edit", {"room": room, "target": m1["seq"], "content": "back"}, want="error:not_found")
    await b.expect("react", {"room": room, "target": m1["seq"], "emoji": "👍", "on": True},
                   want="error:not_found")
    # ...but a resend of the delete with its id is its duplicate
    again = await a.expect("delete", {"room": room, "target": m1["seq"]}, id="d1", want="ack")
    assert again["seq"] == d["seq"] and again["duplicate"] is True
    h = await history(b, room)
    got = by_seq(h["messages"])
    assert sorted(got) == [m1["seq"], m2["seq"]], h
    gone = got[m1["seq"]]
    assert gone["deleted"] is True and gone["content"] == "" and gone["attachments"] == [] \
        and gone["sender"] == "dl-alice", gone
    assert got[m2["seq"]]["content"] == "keep" and "deleted" not in got[m2["seq"]]


@itest(30)
async def test_admin_deletes_anyone_others_may_not():
    room = R("admin")
    alice = await token_client("ad-alice")
    bob = await token_client("ad-bob")
    boss = await token_client("ad-boss", admin=True)
    for c in (alice, bob, boss):
        await c.join(room)
    m = await alice.chat(room, "spam")
    await bob.expect("delete", {"room": room, "target": m["seq"]}, want="error:forbidden")
    # the admin claim allows delete, not edit
    await boss.expect("edit", {"room": room, "target": m["seq"], "content": "x"}, want="error:forbidden")
    d = await boss.expect("delete", {"room": room, "target": m["seq"]}, want="ack")
    _, f = await alice.wait(lambda f: f.get("type") == "delete", what="the delete broadcast")
    assert f["payload"]["sender"] == "ad-boss" and f["payload"]["seq"] == d["seq"]


@itest(30)
async def test_delete_means_gone_in_redis_and_replay():
    room = R("gone")
    a = await connect(SRV, "gn-alice")
    await a.join(room)
    secret = "TOPSECRET-" + TAG
    m = await a.chat(room, secret + " first", attachments=[{"type": "doc", "url": "https://example.org/" + secret}])
    await a.expect("edit", {"room": room, "target": m["seq"], "content": secret + " edited"}, want="ack")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "🎉", "on": True}, want="ack")
    keep = await a.chat(room, "unrelated")
    before = json.dumps(harness_dump(room))
    assert secret in before, "the test's secret should be in Redis before the delete"
    d = await a.expect("delete", {"room": room, "target": m["seq"]}, want="ack")
    dump = harness_dump(room)
    assert secret not in json.dumps(dump), f"content still in Redis after the delete: {dump}"
    # a client that replays from the start sees the events, scrubbed
    late = await connect(SRV, "gn-late")
    j = await late.join(room, since=0)
    assert j["recovered"] is True and j["seq"] == d["seq"], j
    await late.wait(lambda f: f.get("type") == "delete", what="the replayed delete")
    evs = [f for f in late.frames if f.get("type") in ("chat", "edit", "delete", "reaction")]
    assert [f["payload"]["seq"] for f in evs] == list(range(1, d["seq"] + 1)), evs
    assert secret not in json.dumps(evs), evs
    first = evs[0]["payload"]
    assert evs[0]["type"] == "chat" and first["deleted"] is True and first["content"] == "" \
        and first["attachments"] == [], first
    assert [f["type"] for f in evs] == ["chat", "edit", "reaction", "chat", "delete"], evs
    h = await history(late, room)
    assert secret not in json.dumps(h)
    assert by_seq(h["messages"])[keep["seq"]]["content"] == "unrelated"


def harness_dump(room):
    """Every value Redis holds under the room's keys, as text."""
    return harness.room_dump(REDIS, room)



# --------------------------------------------------------------------------
# reactions


@itest(30)
async def test_reactions_toggle_duplicates_and_history():
    room = R("react")
    a = await connect(SRV, "rx-alice")
    b = await connect(SRV, "rx-bob")
    await a.join(room)
    await b.join(room)
    m = await a.chat(room, "react to me")
    on = await b.expect("react", {"room": room, "target": m["seq"], "emoji": "👍", "on": True}, want="ack")
    assert on["duplicate"] is False
    _, f = await a.wait(lambda f: f.get("type") == "reaction", what="the reaction broadcast")
    assert f["payload"] == {"room": room, "seq": on["seq"], "ts": on["ts"], "sender": "rx-bob",
                            "target": m["seq"], "emoji": "👍", "on": True, "cid": f["payload"]["cid"]}, f
    # already on: duplicate with the seq that set it, not broadcast
    again = await b.expect("react", {"room": room, "target": m["seq"], "emoji": "👍", "on": True}, want="ack")
    assert again["duplicate"] is True and again["seq"] == on["seq"] and again["ts"] == on["ts"], again
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "👍", "on": True}, want="ack")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "❤️", "on": True}, want="ack")
    h = by_seq((await history(a, room))["messages"])[m["seq"]]
    assert h["reactions"] == [{"emoji": "👍", "count": 2, "users": ["rx-bob", "rx-alice"]},
                              {"emoji": "❤️", "count": 1, "users": ["rx-alice"]}], h
    off = await b.expect("react", {"room": room, "target": m["seq"], "emoji": "👍", "on": False}, want="ack")
    assert off["duplicate"] is False and off["seq"] > on["seq"]
    off2 = await b.expect("react", {"room": room, "target": m["seq"], "emoji": "👍", "on": False}, want="ack")
    assert off2["duplicate"] is True and off2["seq"] == off["seq"], off2
    # never reacted: the message's own seq set the state
    never = await b.expect("react", {"room": room, "target": m["seq"], "emoji": "🎉", "on": False}, want="ack")
    assert never["duplicate"] is True and never["seq"] == m["seq"], never
    await asyncio.sleep(0.3)
    assert len(a.of_type("reaction", room)) == 4, a.of_type("reaction", room)
    h = by_seq((await history(a, room))["messages"])[m["seq"]]
    assert h["reactions"] == [{"emoji": "👍", "count": 1, "users": ["rx-alice"]},
                              {"emoji": "❤️", "count": 1, "users": ["rx-alice"]}], h


@itest(60)
async def test_reaction_limits():
    room = R("rxlim")
    a = await connect(SRV, "rl-alice")
    await a.join(room)
    m = await a.chat(room, "many emoji")
    for i in range(20):
        await a.expect("react", {"room": room, "target": m["seq"], "emoji": f"e{i}", "on": True}, want="ack")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "e20", "on": True}, want="error:too_large")
    # an emoji already there still takes more users
    b = await connect(SRV, "rl-bob")
    await b.join(room)
    await b.expect("react", {"room": room, "target": m["seq"], "emoji": "e0", "on": True}, want="ack")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "x" * 33, "on": True}, want="error:too_large")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "", "on": True}, want="error:bad_request")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "a\nb", "on": True}, want="error:bad_request")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": "👍", "on": "yes"}, want="error:bad_request")
    await a.expect("react", {"room": room, "target": m["seq"], "emoji": 5, "on": True}, want="error:bad_request")
    # at most 20 names per emoji, the count stays exact
    m2 = await a.chat(room, "popular")
    users = [await connect(SRV, f"rl-u{i:02d}") for i in range(25)]
    for u in users:
        await u.join(room)
        await u.expect("react", {"room": room, "target": m2["seq"], "emoji": "🔥", "on": True}, want="ack")
    h = by_seq((await history(a, room))["messages"])[m2["seq"]]
    r = h["reactions"]
    assert len(r) == 1 and r[0]["count"] == 25 and len(r[0]["users"]) == 20, r
    assert r[0]["users"] == [f"rl-u{i:02d}" for i in range(20)], r


# --------------------------------------------------------------------------
# recovery converges


@itest(90)
async def test_recovery_converges_under_concurrent_events():
    """Three writers edit, delete and react concurrently; a steady client,
    one that drops and rejoins with since, and history all end in the same
    state."""
    room = R("conv")
    writers = [await connect(SRV, f"cv-w{i}") for i in range(3)]
    steady = await connect(SRV, "cv-steady")
    for c in writers + [steady]:
        await c.join(room)
    dropper = await connect(SRV, "cv-drop")
    await dropper.join(room)
    frames_seen = []
    task = asyncio.ensure_future(room_event_writers(writers, room, 60, seed=7, emojis=["👍", "❤️", "😂"]))
    for _ in range(4):
        await asyncio.sleep(0.15)
        last = max([f["payload"]["seq"] for f in dropper.frames
                    if f.get("type") in ("chat", "edit", "delete", "reaction")] + [0])
        frames_seen += dropper.frames
        await dropper.close()
        dropper = await connect(SRV, "cv-drop")
        j = await dropper.join(room, since=last)
        assert j["recovered"] is True, j
    await task
    top = (await steady.chat(room, "the end"))["seq"]
    await steady.wait(lambda f: f.get("type") == "chat" and f["payload"]["seq"] == top, what="the end")
    await dropper.wait(lambda f: f.get("type") == "chat" and f["payload"].get("seq") == top, what="the end")
    frames_seen += dropper.frames
    want = fold(steady.frames, room)
    got = fold(frames_seen, room)
    assert got == want, f"rejoining client differs: {diff(got, want)}"
    h = shape((await history(steady, room))["messages"])
    assert h == want, f"history differs from the live state: {diff(h, want)}"
    late = await connect(SRV, "cv-late")
    await late.join(room, since=0)
    await late.wait(lambda f: f.get("type") == "chat" and f["payload"].get("seq") == top, what="the end")
    assert fold(late.frames, room) == want, "a full replay differs from the live state"
    n_ev = len([f for f in steady.frames if f.get("type") in ("edit", "delete", "reaction")])
    print(f"    converge: {top} seqs, {n_ev} edit/delete/reaction events, {len(want)} messages")


def diff(a, b):
    keys = sorted(set(a) | set(b))
    out = [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
    return out[:3]


@itest(90)
async def test_events_with_ack_replicas():
    """With --ack-replicas 1 an event is acked once a replica holds it and
    broadcast by the commit: members get each event with its type, a
    replay sends them again, history folds them."""
    pair = None
    if harness.is_cluster(REDIS):
        store = REDIS
    else:
        primary = harness.Redis(name="redis-conv-primary").start()
        replica = harness.Redis(name="redis-conv-replica",
                                extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        pair = (primary, replica)
        store = primary
        harness.wait_for(lambda: "master_link_status:up" in replica.command("INFO", "replication").decode(),
                         10, what="the replica linked")
    srv = Chatd(store, workers=2, name="conv-acks", args=FAST + ["--ack-replicas", "1"]).start()
    try:
        room = R("acks")
        a = await connect(srv, "ak-alice")
        b = await connect(srv, "ak-bob")
        await a.join(room)
        await b.join(room)
        m = await a.chat(room, "durable")
        e = await a.expect("edit", {"room": room, "target": m["seq"], "content": "durable, edited"}, want="ack")
        r = await b.expect("react", {"room": room, "target": m["seq"], "emoji": "👍", "on": True}, want="ack")
        m2 = await b.chat(room, "to delete")
        d = await b.expect("delete", {"room": room, "target": m2["seq"]}, want="ack")
        assert [m["seq"], e["seq"], r["seq"], m2["seq"], d["seq"]] == list(range(1, 6))
        await a.wait(lambda f: f.get("type") == "delete", what="the delete broadcast")
        assert [f["type"] for f in a.frames if f.get("type") in ("chat", "edit", "reaction", "delete")] == \
            ["chat", "edit", "reaction", "chat", "delete"]
        c = await connect(srv, "ak-carol")
        await c.join(room, since=0)
        await c.wait(lambda f: f.get("type") == "delete", what="the replayed delete")
        assert fold(c.frames, room) == fold(a.frames, room)
        h = by_seq((await history(c, room))["messages"])
        assert h[m["seq"]]["content"] == "durable, edited" and h[m["seq"]]["reactions"][0]["count"] == 1
        assert h[m2["seq"]]["deleted"] is True
    finally:
        srv.stop()
        if pair is not None:
            for x in pair:
                x.stop()


# --------------------------------------------------------------------------
# read receipts and unread counts


@itest(30)
async def test_read_cursor_receipts_and_unread():
    room = R("read")
    a = await connect(SRV, "rd-alice")
    b = await connect(SRV, "rd-bob")
    b2 = await connect(SRV, "rd-bob")          # bob's other device, not in the room
    await a.join(room)
    j = await b.join(room)
    assert j["readSeq"] == 0 and j["unread"] == 0, j
    acks = [await a.chat(room, f"m{i}") for i in range(3)]
    own = await b.chat(room, "mine")            # never unread for bob
    r = await b.expect("read", {"room": room, "seq": acks[1]["seq"]}, want="ok")
    assert r == {} or r.get("room") is None, r
    _, f = await b2.wait(lambda f: f.get("type") == "receipt", what="the receipt on bob's other device")
    assert f["payload"] == {"room": room, "user": "rd-bob", "seq": acks[1]["seq"]}, f
    _, f = await a.wait(lambda f: f.get("type") == "receipt", what="the receipt in the room")
    assert f["payload"]["user"] == "rd-bob"
    await asyncio.sleep(0.2)
    assert not b.of_type("receipt"), "the reading connection itself gets no receipt"
    # never backwards: no change, no receipt
    await b.expect("read", {"room": room, "seq": 1}, want="ok")
    await asyncio.sleep(0.3)
    assert len(b2.of_type("receipt")) == 1, b2.of_type("receipt")
    b3 = await connect(SRV, "rd-bob")
    j = await b3.join(room)
    assert j["readSeq"] == acks[1]["seq"] and j["unread"] == 1, j      # m2; bob's own is not counted
    # events take seqs but are not messages; a deleted message is not unread
    await a.expect("react", {"room": room, "target": acks[0]["seq"], "emoji": "x", "on": True}, want="ack")
    await a.expect("delete", {"room": room, "target": acks[2]["seq"]}, want="ack")
    b4 = await connect(SRV, "rd-bob")
    j = await b4.join(room)
    assert j["readSeq"] == acks[1]["seq"] and j["unread"] == 0, j
    # a cursor past the room's seq stops at it
    top = j["seq"]
    await b4.expect("read", {"room": room, "seq": top + 1000}, want="ok")
    j = await (await connect(SRV, "rd-bob")).join(room)
    assert j["readSeq"] == top, j
    await b.expect("read", {"room": room, "seq": -1}, want="error:bad_request")
    await b.expect("read", {"room": room}, want="error:bad_request")
    await b2.expect("read", {"room": room, "seq": 1}, want="error:not_joined")
    assert own["seq"] < top


@itest(60)
async def test_unread_counts_to_100():
    room = R("many")
    a = await connect(SRV, "mn-alice")
    await a.join(room)
    for i in range(120):
        await a.send("chat", {"room": room, "content": f"n{i}"}, id=f"n{i}")
    await a.wait(lambda f: f.get("type") == "ack" and f.get("id") == "n119", 20, what="the last ack")
    b = await connect(SRV, "mn-bob")
    j = await b.join(room)
    assert j["unread"] == 100 and j["readSeq"] == 0, j
    await b.expect("read", {"room": room, "seq": 30}, want="ok")
    j = await (await connect(SRV, "mn-bob")).join(room)
    assert j["unread"] == 90, j


@itest(30)
async def test_receipts_in_a_big_room_reach_only_the_reader():
    """Over memberEvents users a room hears no receipts; the reader's own
    other connections still do."""
    srv = _extra_server("small-member-events", ["--member-events", "2"])
    room = R("bigroom")
    users = [await connect(srv, f"br-u{i}") for i in range(3)]
    for u in users:
        await u.join(room)
    mine = await connect(srv, "br-u0")
    m = await users[1].chat(room, "hello")
    await users[0].expect("read", {"room": room, "seq": m["seq"]}, want="ok")
    await mine.wait(lambda f: f.get("type") == "receipt", what="the receipt on the reader's other connection")
    await asyncio.sleep(0.3)
    assert not users[1].of_type("receipt") and not users[2].of_type("receipt")


_EXTRA = {}


def _extra_server(name, args):
    if name not in _EXTRA:
        _EXTRA[name] = Chatd(REDIS, workers=2, args=FAST + args, name=f"conv-{name}").start()
    return _EXTRA[name]


@itest(30)
async def test_rooms_lists_rooms_newest_activity_first():
    rooms = [R(f"list{i}") for i in range(3)]
    u = await connect(SRV, "ls-user")
    other = await connect(SRV, "ls-other")
    for r in rooms:
        await u.join(r)
        await other.join(r)
    await other.chat(rooms[0], "a")
    await asyncio.sleep(0.01)
    await other.chat(rooms[2], "b")
    await other.chat(rooms[2], "c")
    await asyncio.sleep(0.01)
    await other.chat(rooms[1], "d")
    await u.expect("read", {"room": rooms[2], "seq": 1}, want="ok")
    got = (await u.expect("rooms", want="rooms"))["rooms"]
    mine = [x for x in got if x["room"] in rooms]
    assert [x["room"] for x in mine] == [rooms[1], rooms[2], rooms[0]], got
    assert mine[1] == {"room": rooms[2], "seq": 2, "readSeq": 1, "unread": 1}, mine
    assert mine[0]["unread"] == 1 and mine[2]["unread"] == 1
    # a user who never joined a room has none of it
    nobody = await connect(SRV, "ls-nobody")
    assert (await nobody.expect("rooms", want="rooms"))["rooms"] == []


# --------------------------------------------------------------------------
# direct messages


def dm(a, b):
    x, y = sorted([a, b])
    return f"dm:{x}:{y}"


@itest(30)
async def test_dm_rooms_belong_to_their_two_users():
    a = await connect(SRV, "dm-ann")
    b = await connect(SRV, "dm-ben")
    c = await connect(SRV, "dm-cat")
    room = dm("dm-ann", "dm-ben")
    await a.join(room)
    await b.join(room)
    await c.expect("join", {"room": room}, want="error:forbidden")
    await a.expect("join", {"room": "dm:dm-ben:dm-ann"}, want="error:forbidden")    # not sorted
    await a.expect("join", {"room": "dm:dm-ann:dm-ann"}, want="error:forbidden")    # not two users
    await a.expect("join", {"room": "dm:dm-ann"}, want="error:forbidden")
    await a.expect("join", {"room": "dm:dm-ann:bad name"}, want="error:bad_request")
    # names of 64 characters make a 132-character room
    long_a, long_b = "a" * 64, "b" * 64
    la = await connect(SRV, long_a)
    j = await la.join(f"dm:{long_a}:{long_b}")
    assert j["seq"] == 0
    await la.expect("join", {"room": "x" * 129}, want="error:bad_request")
    # a token's rooms claim does not apply to the user's own direct conversations
    tok = make_jwt({"sub": "dm-tok", "exp": 4102444800, "rooms": ["only-this"]}, SECRET)
    from chatclient import ChatClient, track
    t = track(await ChatClient.open(JWT_SRV.port, "dm-tok", path=f"/ws?token={tok}"))
    await t.join(dm("dm-tok", "dm-zed"))
    await t.expect("join", {"room": "elsewhere"}, want="error:forbidden")


@itest(40)
async def test_dm_notify_reaches_the_other_user_anywhere():
    room = dm("nt-ann", "nt-ben")
    a = await connect(SRV, "nt-ann")
    await a.join(room)
    # ben on both workers of this server and on another server, in no room
    bens = [await connect(SRV, "nt-ben") for _ in range(4)]
    far = await connect(_extra_server("far", []), "nt-ben")
    joined = await connect(SRV, "nt-ben")
    await joined.join(room)
    await asyncio.sleep(0.3)      # their user channels subscribed
    m = await a.chat(room, "psst")
    for c in bens + [far]:
        _, f = await c.wait(lambda f: f.get("type") == "notify", what=f"notify on {c.user}")
        assert f["payload"] == {"room": room, "from": "nt-ann", "seq": m["seq"]}, f
    await joined.wait(lambda f: f.get("type") == "chat", what="the chat in the joined connection")
    await asyncio.sleep(0.3)
    assert not joined.of_type("notify"), "a connection in the room gets the chat, not a notify"
    assert not a.of_type("notify"), "the sender is not notified"
    # the conversation is in ben's rooms though he never joined it... on this connection
    fresh = await connect(SRV, "nt-cy")
    room2 = dm("nt-ann", "nt-cy")
    await a.join(room2)
    await a.chat(room2, "hi cy")
    # The receiver's index is written beside the ack, on the receiver's own
    # slot (another shard in a cluster), and read here through another
    # worker's link: it shows within moments, not necessarily before the ack.
    for _ in range(40):
        got = (await fresh.expect("rooms", want="rooms"))["rooms"]
        if got:
            break
        await asyncio.sleep(0.05)
    assert got == [{"room": room2, "seq": 1, "readSeq": 0, "unread": 1}], got


@itest(30)
async def test_deleted_head_of_the_log_still_replays():
    """A deleted first message leaves a hole at the head of the log, not
    its end: the periodic clean-up (every 64 messages) keeps its
    content-free copy while it is inside the recovery window, so a full
    replay still recovers and shows it deleted."""
    room = R("head")
    a = await connect(SRV, "hd-alice")
    await a.join(room)
    first = await a.chat(room, "soon gone")
    await a.expect("delete", {"room": room, "target": first["seq"]}, want="ack")
    for i in range(70):
        await a.send("chat", {"room": room, "content": f"h{i}"}, id=f"h{i}")
    await a.wait(lambda f: f.get("type") == "ack" and f.get("id") == "h69", 10, what="the last ack")
    late = await connect(SRV, "hd-late")
    j = await late.join(room, since=0)
    assert j["recovered"] is True and j["seq"] == 72, j
    _, f = await late.wait(lambda f: f.get("type") == "chat", what="the first replayed message")
    assert f["payload"]["seq"] == 1 and f["payload"]["deleted"] is True, f


@itest(30)
async def test_rooms_requests_spend_rate_tokens():
    """A rooms request reads up to 500 rooms in Redis: it takes a token of
    the connection's bucket, so a client cannot turn it into a flood."""
    srv = _extra_server("slow-rate", ["--rate", "1", "--burst", "3"])
    c = await connect(srv, "rt-user")
    answers = [await c.request("rooms", id=f"rs{i}") for i in range(5)]
    kinds = [a["type"] if a["type"] != "error" else a["payload"]["code"] for a in answers]
    assert kinds[:3] == ["rooms"] * 3 and "rate_limited" in kinds[3:], kinds
