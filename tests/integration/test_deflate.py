"""
Integration tests of permessage-deflate (RFC 7692, --deflate): the offers
chatd accepts and declines, broadcasts that a compressing client and a
plain one decode identically, compressed client messages, the limit on the
inflated size (a decompression bomb closes with 1009), and what /metrics
counts. Clients: raw sockets (harness.RawWS) and the websockets library,
which negotiates the extension by itself.

Run: /usr/bin/python3 tests/integration/run.py test_deflate
"""
import asyncio
import json
import os
import zlib

import websockets

from harness import Chatd, RawWS, http_get, make_redis, timeout, wait_for
from chatclient import ChatClient, itest, track

REDIS = None
SRV = None          # --deflate
PLAIN = None        # without it
TAG = os.urandom(3).hex()
ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def setup_module():
    global REDIS, SRV, PLAIN
    REDIS = make_redis("redis-deflate")
    SRV = Chatd(REDIS, workers=2, name="deflate", args=["--deflate", "--rate", "1000", "--burst", "1000"]).start()
    PLAIN = Chatd(REDIS, workers=1, name="deflate-off").start()


def teardown_module():
    for s in (SRV, PLAIN, REDIS):
        if s is not None:
            s.stop()


def offer(srv, value):
    ws = RawWS(srv.port)
    headers = {} if value is None else {"Sec-WebSocket-Extensions": value}
    resp = ws.handshake(f"/ws?user=neg{TAG}", headers=headers)
    assert resp.status == 101, resp
    return ws, resp.headers.get("sec-websocket-extensions")


def inflate(payload):
    d = zlib.decompressobj(-15)
    return d.decompress(payload + b"\x00\x00\xff\xff")


def deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


@timeout(30)
def test_negotiation_matrix():
    cases = [
        ("permessage-deflate", ACCEPTED),
        ("permessage-deflate; client_max_window_bits", ACCEPTED),           # what browsers send
        ("permessage-deflate; server_no_context_takeover; client_max_window_bits=10", ACCEPTED),
        ("permessage-deflate; server_max_window_bits=15", ACCEPTED),
        ("permessage-deflate; server_max_window_bits=10, permessage-deflate", ACCEPTED),   # the second offer
        ("permessage-deflate; server_max_window_bits=10", None),           # declined: the connection goes on plain
        ("permessage-deflate; unknown_param", None),
        ("permessage-deflate; client_max_window_bits=20", None),
        ("x-webkit-deflate-frame", None),
        (None, None),
    ]
    for value, want in cases:
        ws, got = offer(SRV, value)
        try:
            assert got == want, (value, got)
            f = ws.recv_frame()                             # welcome, compressed only when accepted
            assert (f.rsv == 4) == (want is not None), (value, f)
            assert json.loads(inflate(f.payload) if f.rsv == 4 else f.payload)["type"] == "welcome"
        finally:
            ws.close_socket()
    ws, got = offer(PLAIN, "permessage-deflate")            # off unless --deflate
    ws.close_socket()
    assert got is None


@timeout(30)
def test_compressed_frames_and_limits():
    ws, got = offer(SRV, "permessage-deflate")
    try:
        assert got == ACCEPTED
        f = ws.recv_frame()                                 # welcome: long enough to compress
        assert f.rsv == 4 and json.loads(inflate(f.payload))["type"] == "welcome", f
        # A compressed request is understood; a short answer may come plain.
        ws.send_frame(0x1, deflate(json.dumps({"type": "ping", "id": "z1"}).encode()), rsv=4)
        f = ws.recv_frame()
        body = inflate(f.payload) if f.rsv == 4 else f.payload
        assert json.loads(body) == {"type": "pong", "id": "z1", "payload": {}} or json.loads(body)["id"] == "z1"
        # Uncompressed messages stay allowed on a deflate connection.
        ws.send_json({"type": "ping", "id": "z2"})
        f = ws.recv_frame()
        assert json.loads(inflate(f.payload) if f.rsv == 4 else f.payload)["id"] == "z2"
        # A bomb: 1 MiB of zeros in about a kilobyte, over --max-message (64 KiB) once inflated.
        ws.send_frame(0x1, deflate(b"0" * (1 << 20)), rsv=4)
        assert ws.expect_close() == 1009
    finally:
        ws.close_socket()
    # RSV1 where nothing was negotiated is a protocol error.
    ws = RawWS.open(PLAIN.port, user=f"rsv{TAG}")
    try:
        ws.send_frame(0x1, deflate(b'{"type":"ping"}'), rsv=4)
        assert ws.expect_close() == 1002
    finally:
        ws.close_socket()


@itest(60)
async def test_broadcasts_decode_identically():
    room = f"deflate-{TAG}"
    url = f"ws://127.0.0.1:{SRV.port}/ws?user="
    zipped = await websockets.connect(url + "zip", compression="deflate", max_size=None, ping_interval=None)
    plain = await websockets.connect(url + "plain", compression=None, max_size=None, ping_interval=None)
    try:
        assert "permessage-deflate" in zipped.response_headers.get("Sec-WebSocket-Extensions", "")
        assert "Sec-WebSocket-Extensions" not in plain.response_headers
        for ws, name in ((zipped, "z"), (plain, "p")):
            await ws.send(json.dumps({"type": "join", "id": name, "payload": {"room": room}}))
        sender = track(await ChatClient.open(SRV.port, "sender"))
        await sender.join(room)

        async def collect(ws, n):
            got = []
            while len(got) < n:
                f = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if f["type"] == "chat":
                    got.append(f)
            return got
        n = 120
        texts = [("ünïcödé " * (i % 7)) + json.dumps({"i": i, "pad": "x" * (i * 13 % 900)}) for i in range(n)]
        task_z = asyncio.ensure_future(collect(zipped, n))
        task_p = asyncio.ensure_future(collect(plain, n))
        for t in texts:
            await sender.chat(room, t)
        got_z, got_p = await task_z, await task_p
        assert got_z == got_p and [f["payload"]["content"] for f in got_z] == texts
    finally:
        await zipped.close()
        await plain.close()
    def metrics():
        m = {}
        for line in http_get(SRV.port, "/metrics").body.decode().splitlines():
            if line.startswith("chatd_deflate"):
                k, v = line.split()
                m[k] = int(float(v))
        return m
    # Counted once a second, per worker.
    wait_for(lambda: metrics()["chatd_deflate_in_bytes_total"] >= sum(map(len, texts)), 5, what="counted")
    m = metrics()
    assert m["chatd_deflate_out_bytes_total"] < m["chatd_deflate_in_bytes_total"] / 2, m
