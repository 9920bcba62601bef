"""
Integration tests of protocol 1.1's end-to-end encrypted rooms (the key
directory, the room-key mailbox, the e2e: rule) and call signalling,
against real chatd processes on a real Redis (a Redis Cluster with
CHATD_IT_REDIS=cluster): relays reach every connection of a user on
every worker and on another chatd instance (another host), and Redis
holds nothing of an e2e: room but what clients sent as ciphertext.

Run: /usr/bin/python3 tests/integration/run.py test_keys_calls
"""

import json
import os
import subprocess

from harness import Chatd, make_redis, room_dump
from chatclient import connect, itest, worker_of_async

REDIS = None
SRV = None
SRV2 = None         # a second instance on the same Redis: another host
TAG = os.urandom(3).hex()
ICE = [{"urls": "stun:stun.example.test:3478"},
       {"urls": ["turn:turn.example.test:3478"], "username": "u", "credential": "c"}]


def setup_module():
    global REDIS, SRV, SRV2
    REDIS = make_redis("redis-keys")
    SRV = Chatd(REDIS, workers=2, name="keys", args=["--ice-servers", json.dumps(ICE)]).start()
    SRV2 = Chatd(REDIS, workers=1, name="keys-2").start()


def teardown_module():
    for s in (SRV2, SRV, REDIS):
        if s is not None:
            s.stop()


def R(name):
    return f"{name}-{TAG}"


def U(name):
    return f"{name}{TAG}"


async def on_two_workers(user):
    """Two connections of user held by the two different workers of SRV."""
    seen = {}
    for _ in range(16):
        c = await connect(SRV, user)
        w = await worker_of_async(SRV, c)
        if w not in seen:
            seen[w] = c
        if len(seen) == 2:
            return list(seen.values())
    raise AssertionError("16 connections all on one worker")


def frames_of(c, type):
    return [f["payload"] for f in c.frames if f.get("type") == type]


@itest(30)
async def test_welcome_ice_servers():
    a = await connect(SRV, U("ice"))
    assert a.welcome["payload"]["iceServers"] == ICE
    b = await connect(SRV2, U("ice"))
    assert b.welcome["payload"]["iceServers"] == []


def test_bad_ice_servers_refused_at_start():
    p = subprocess.run([SRV.binary, "--ice-servers", '{"urls": "stun:x"}', "--port", "0"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "ice-servers" in p.stderr, p


@itest(30)
async def test_key_directory():
    alice, bob = U("ka"), U("kb")
    a = await connect(SRV, alice)
    await a.expect("setkey", {"key": "pk-alice-1"})
    await a.expect("setkey", {"key": "pk-alice-2"})           # a new device's key replaces it
    b = await connect(SRV2, bob)
    k = await b.expect("getkeys", {"users": [alice, bob, U("nobody")]}, want="keys")
    assert k["keys"] == {alice: "pk-alice-2", bob: None, U("nobody"): None}, k
    await b.expect("setkey", {"key": "x" * 2048})
    await b.expect("setkey", {"key": "x" * 2049}, want="error:too_large")
    await b.expect("setkey", {"key": ""}, want="error:bad_request")
    await b.expect("setkey", {"key": 5}, want="error:bad_request")
    await b.expect("getkeys", {"users": []}, want="error:bad_request")
    await b.expect("getkeys", {"users": ["bad name"]}, want="error:bad_request")
    await b.expect("getkeys", {"users": [f"u{i}" for i in range(101)]}, want="error:too_large")
    many = await b.expect("getkeys", {"users": [f"u{i}{TAG}" for i in range(100)] + []}, want="keys")
    assert len(many["keys"]) == 100 and set(many["keys"].values()) == {None}


@itest(40)
async def test_room_key_mailbox_and_relay():
    room = "e2e:" + R("mail")
    alice, bob = U("ma"), U("mb")
    a = await connect(SRV, alice)
    b1, b2 = await on_two_workers(bob)
    b3 = await connect(SRV2, bob)                              # another host
    await a.join(room)
    await a.expect("roomkey", {"room": room, "to": bob, "keyId": "k1", "wrapped": "W1"})
    for c in (b1, b2, b3):       # not joined: a room key still reaches every connection
        f = await c.recv_until(lambda f: f.get("type") == "roomkey")
        assert f["payload"] == {"room": room, "from": alice, "keyId": "k1", "wrapped": "W1"}, f
    # Kept for later: the receiver reads its mailbox once it joins.
    await a.expect("roomkey", {"room": room, "to": bob, "keyId": "k2", "wrapped": "W2"})
    await a.expect("roomkey", {"room": room, "to": bob, "keyId": "k1", "wrapped": "W1"})   # again: moves last
    b4 = await connect(SRV, bob)
    await b4.expect("getroomkeys", {"room": room}, want="error:not_joined")
    await b4.join(room)
    got = await b4.expect("getroomkeys", {"room": room}, want="roomkeys")
    assert got == {"room": room, "keys": [{"from": alice, "keyId": "k2", "wrapped": "W2"},
                                          {"from": alice, "keyId": "k1", "wrapped": "W1"}]}, got
    # Only what was sent to this user.
    got = await a.expect("getroomkeys", {"room": room}, want="roomkeys")
    assert got == {"room": room, "keys": []}
    # Rules.
    outsider = await connect(SRV, U("mc"))
    await outsider.expect("roomkey", {"room": room, "to": bob, "keyId": "k", "wrapped": "w"},
                          want="error:not_joined")
    dm = f"dm:{alice}:{bob}"
    await a.join(dm)
    await a.expect("roomkey", {"room": dm, "to": U("mc"), "keyId": "k", "wrapped": "w"}, want="error:forbidden")
    await a.expect("roomkey", {"room": room, "to": bob, "keyId": "k" * 65, "wrapped": "w"},
                   want="error:too_large")
    await a.expect("roomkey", {"room": room, "to": bob, "keyId": "k", "wrapped": "w" * 4097},
                   want="error:too_large")
    await a.expect("roomkey", {"room": room, "to": "bad name", "keyId": "k", "wrapped": "w"},
                   want="error:bad_request")


@itest(40)
async def test_e2e_room_takes_only_ciphertext():
    room = "e2e:" + R("cipher")
    alice, bob = U("ca"), U("cb")
    a = await connect(SRV, alice)
    b = await connect(SRV2, bob)
    await a.join(room)
    await b.join(room)
    await a.expect("chat", {"room": room, "content": "plaintext!"}, want="error:bad_request")
    e2e = {"keyId": "k1", "iv": "aXYx"}
    ack = await a.expect("chat", {"room": room, "content": "Q0lQSEVSVEVYVA==", "e2e": e2e}, want="ack")
    f = await b.recv_until(lambda f: f.get("type") == "chat")
    assert f["payload"]["content"] == "Q0lQSEVSVEVYVA==" and f["payload"]["e2e"] == e2e, f
    await a.expect("edit", {"room": room, "target": ack["seq"], "content": "plain edit"}, want="error:bad_request")
    e2 = {"keyId": "k2", "iv": "aXYy"}
    await a.expect("edit", {"room": room, "target": ack["seq"], "content": "RURJVEVE", "e2e": e2}, want="ack")
    f = await b.recv_until(lambda f: f.get("type") == "edit")
    assert f["payload"]["e2e"] == e2 and f["payload"]["content"] == "RURJVEVE", f
    h = await b.expect("history", {"room": room}, want="history")
    m = h["messages"][-1]
    assert m["content"] == "RURJVEVE" and m["e2e"] == e2 and "edited" in m, m
    await a.expect("chat", {"room": room, "content": "x", "e2e": {"keyId": "k"}}, want="error:bad_request")
    await a.expect("chat", {"room": room, "content": "x", "e2e": {"keyId": "k" * 129, "iv": "i"}},
                   want="error:too_large")
    # e2e belongs only in e2e: rooms; search never matches there.
    await a.join(R("plain"))
    await a.expect("chat", {"room": R("plain"), "content": "x", "e2e": e2}, want="error:bad_request")
    res = await a.expect("search", {"room": room, "q": "RURJVEVE"}, want="results")
    assert res["messages"] == []
    # Redis holds what the clients sent and nothing else: no plaintext.
    dump = json.dumps(room_dump(REDIS, room))
    assert "Q0lQSEVSVEVYVA==" in dump and "RURJVEVE" in dump and "plain" not in dump, dump[:800]


@itest(40)
async def test_signals_reach_every_connection_anywhere():
    room = R("call")
    alice, bob = U("sa"), U("sb")
    a = await connect(SRV, alice)
    b1, b2 = await on_two_workers(bob)
    b3 = await connect(SRV2, bob)
    await a.join(room)
    offer = "v=0\r\n" + "o" * 8000
    await a.expect("signal", {"to": bob, "room": room, "callId": "c1", "kind": "offer", "data": offer})
    for c in (b1, b2, b3):
        f = await c.recv_until(lambda f: f.get("type") == "signal")
        assert f["payload"] == {"from": alice, "room": room, "callId": "c1", "kind": "offer", "data": offer}, f
    assert frames_of(a, "signal") == []
    # The callee answers from one device.
    await b3.join(room)
    await b3.expect("signal", {"to": alice, "room": room, "callId": "c1", "kind": "answer", "data": "sdp"})
    f = await a.recv_until(lambda f: f.get("type") == "signal")
    assert f["payload"]["kind"] == "answer" and f["payload"]["from"] == bob
    for kind in ("ice", "hangup", "reject", "busy"):
        await a.expect("signal", {"to": bob, "room": room, "callId": "c1", "kind": kind, "data": ""})
    # Nobody there: not_found. Not joined: not_joined. Bad input.
    await a.expect("signal", {"to": U("ghost"), "room": room, "callId": "c2", "kind": "offer", "data": "x"},
                   want="error:not_found")
    await b1.expect("signal", {"to": alice, "room": room, "callId": "c3", "kind": "offer", "data": "x"},
                    want="error:not_joined")
    await a.expect("signal", {"to": bob, "room": room, "callId": "c1", "kind": "dance", "data": ""},
                   want="error:bad_request")
    await a.expect("signal", {"to": bob, "room": room, "callId": "c" * 65, "kind": "ice", "data": ""},
                   want="error:too_large")
    await a.expect("signal", {"to": bob, "room": room, "callId": "c1", "kind": "ice", "data": "d" * 16385},
                   want="error:too_large")
    dm = f"dm:{alice}:{bob}"
    await a.join(dm)
    await a.expect("signal", {"to": U("sc"), "room": dm, "callId": "c1", "kind": "offer", "data": ""},
                   want="error:forbidden")


@itest(40)
async def test_signal_rate_limit():
    room = R("rate")
    alice, bob = U("ra"), U("rb")
    a = await connect(SRV, alice)
    b = await connect(SRV, bob)
    await a.join(room)
    ids = [a.next_id("s") for _ in range(130)]
    for i in ids:
        await a.send("signal", {"to": bob, "room": room, "callId": "c", "kind": "ice", "data": "x"}, id=i)
    answers = {}
    for i in ids:
        _, f = await a.wait(lambda f, i=i: f.get("id") == i, 10)
        answers[i] = f["type"] if f["type"] != "error" else f["payload"]["code"]
    oks = sum(1 for v in answers.values() if v == "ok")
    limited = sum(1 for v in answers.values() if v == "rate_limited")
    assert oks + limited == 130 and 100 <= oks <= 110 and limited >= 20, answers
    # The chat bucket is a separate one: chat still goes through.
    await a.expect("chat", {"room": room, "content": "still here"}, want="ack")
    got = len([f for f in b.frames if f.get("type") == "signal"])
    assert got == oks, (got, oks)
