"""
Integration tests of protocol 1.1's search against real chatd processes and
a real Redis (a Redis Cluster with CHATD_IT_REDIS=cluster), without the
archive: the recent log is what is searched. test_archive searches through
MongoDB.

Run: /usr/bin/python3 tests/integration/run.py test_search
"""

import os

from harness import Chatd, make_redis
from chatclient import connect, itest

REDIS = None
SRV = None
TAG = os.urandom(3).hex()
FAST = ["--rate", "100000", "--burst", "100000"]


def setup_module():
    global REDIS, SRV
    REDIS = make_redis("redis-search")
    SRV = Chatd(REDIS, workers=2, args=FAST, name="search").start()


def teardown_module():
    if SRV is not None:
        SRV.stop()
    if REDIS is not None:
        REDIS.stop()


def R(name):
    return f"{name}-{TAG}"


async def search(c, room, q, **kw):
    p = {"room": room, "q": q}
    p.update(kw)
    return await c.expect("search", p, want="results")


def seqs(res):
    return [m["seq"] for m in res["messages"]]


@itest(30)
async def test_search_rules():
    room = R("rules")
    a = await connect(SRV, "se-alice")
    await a.join(room)
    texts = ["Deploy the Café release tomorrow",       # 1
             "the deployment failed",                  # 2
             "Привет мир, deploy",                     # 3
             "東京 meeting at 10",                     # 4
             "nothing to see",                         # 5
             "STRASSE und Straße"]                     # 6
    acks = [await a.chat(room, t) for t in texts]
    s = [x["seq"] for x in acks]
    res = await search(a, room, "deploy")
    assert res["room"] == room and res["q"] == "deploy" and res["more"] is False, res
    # newest first; "deploy" is the last word (>= 2 characters): a prefix of "deployment" too
    assert seqs(res) == [s[2], s[1], s[0]], res
    # every word but the last is exact: "deploy" is not "deployment"
    assert seqs(await search(a, room, "deploy the")) == [s[0]]
    assert seqs(await search(a, room, "the deploy")) == [s[1], s[0]]
    assert seqs(await search(a, room, "CAFE")) == [s[0]]                  # case and accents
    assert seqs(await search(a, room, "café")) == [s[0]]
    assert seqs(await search(a, room, "мир")) == [s[2]]                   # any script
    assert seqs(await search(a, room, "東京")) == [s[3]]
    assert seqs(await search(a, room, "strasse")) == [s[5]]
    assert seqs(await search(a, room, "10 meeting")) == [s[3]]
    assert seqs(await search(a, room, "t")) == []                         # one character: exact only
    m = (await search(a, room, "nothing"))["messages"][0]
    assert m["content"] == "nothing to see" and m["sender"] == "se-alice" and m["reactions"] == [], m


@itest(30)
async def test_search_follows_edits_and_deletes():
    room = R("edits")
    a = await connect(SRV, "se-bob")
    await a.join(room)
    m1 = await a.chat(room, "old wording here")
    m2 = await a.chat(room, "to be removed secretword")
    await a.expect("edit", {"room": room, "target": m1["seq"], "content": "brand new phrasing"}, want="ack")
    assert seqs(await search(a, room, "wording")) == []
    hit = (await search(a, room, "phrasing"))["messages"]
    assert [m["seq"] for m in hit] == [m1["seq"]] and "edited" in hit[0], hit
    assert seqs(await search(a, room, "secretword")) == [m2["seq"]]
    await a.expect("delete", {"room": room, "target": m2["seq"]}, want="ack")
    assert seqs(await search(a, room, "secretword")) == []


@itest(60)
async def test_search_pages_with_before_and_limit():
    room = R("pages")
    a = await connect(SRV, "se-cy")
    await a.join(room)
    hits = []
    for i in range(60):
        ack = await a.chat(room, f"needle {i}" if i % 2 == 0 else f"hay {i}")
        if i % 2 == 0:
            hits.append(ack["seq"])
    first = await search(a, room, "needle", limit=10)
    assert seqs(first) == hits[::-1][:10] and first["more"] is True, first
    got = seqs(first)
    while True:
        page = await search(a, room, "needle", limit=10, before=got[-1])
        got += seqs(page)
        if not page["more"]:
            break
    assert got == hits[::-1], got
    assert seqs(await search(a, room, "needle")) == hits[::-1][:20]      # default limit 20


@itest(30)
async def test_search_bad_input():
    room = R("bad")
    a = await connect(SRV, "se-dee")
    await a.join(room)
    await a.expect("search", {"room": room}, want="error:bad_request")
    await a.expect("search", {"room": room, "q": ""}, want="error:bad_request")
    await a.expect("search", {"room": room, "q": "?!, ..."}, want="error:bad_request")
    await a.expect("search", {"room": room, "q": 5}, want="error:bad_request")
    await a.expect("search", {"room": room, "q": "x" * 257}, want="error:too_large")
    await a.expect("search", {"room": room, "q": " ".join("abcdefghijk")}, want="error:too_large")
    assert (await search(a, room, " ".join("abcdefghij")))["messages"] == []     # 10 words are fine
    await a.expect("search", {"room": room, "q": "x", "limit": 51}, want="error:bad_request")
    await a.expect("search", {"room": room, "q": "x", "limit": 0}, want="error:bad_request")
    await a.expect("search", {"room": room, "q": "x", "before": -1}, want="error:bad_request")
    other = await connect(SRV, "se-eve")
    await other.expect("search", {"room": room, "q": "x"}, want="error:not_joined")


@itest(30)
async def test_encrypted_rooms_never_match():
    room = "e2e:" + R("secret")
    a = await connect(SRV, "se-fay")
    await a.join(room)
    await a.send("chat", {"room": room, "content": "ciphertext-looking words",
                          "e2e": {"keyId": "k1", "iv": "aaaa"}}, id="e2e-1")
    await a.wait(lambda f: f.get("id") == "e2e-1", what="an answer to the encrypted chat")
    res = await search(a, room, "ciphertext")
    assert res["messages"] == [] and res["more"] is False, res
