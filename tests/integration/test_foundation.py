"""
Foundation tests of chatd: options, process model, the WebSocket upgrade,
authentication, frame and envelope validation, heartbeat and /healthz.

One Redis and one chatd (--workers 4, development mode) are shared by most
tests; servers with other settings (JWT secret, heartbeat 1, small
max-message) are started on first use and shared too. Tests that kill or
stop servers start their own.

Run: /usr/bin/python3 tests/integration/run.py test_foundation
"""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

import harness
from harness import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                     Chatd, RawWS, Redis, http_get, make_jwt, timeout, wait_for,
                     ws_accept)

REDIS = None
SRV = None              # shared: --workers 4, dev mode, defaults
INITIAL_WORKERS = None
_EXTRA = {}             # name -> Chatd started on first use
_EXTRA_WORKERS = {}     # name -> worker pids when started

JWT_SECRET = "it-secret-8f2c1e"
DEFAULT_LIMITS = {"maxMessage": 65536, "maxContent": 16384, "rate": 20, "burst": 40, "maxFile": 10485760}


def setup_module():
    global REDIS, SRV, INITIAL_WORKERS
    REDIS = Redis(name="redis-shared").start()
    SRV = Chatd(REDIS, workers=4, name="shared").start()
    INITIAL_WORKERS = SRV.worker_pids()


def teardown_module():
    errors = []
    for srv in list(_EXTRA.values()) + [SRV]:
        if srv is not None:
            try:
                srv.stop()
            except AssertionError as e:
                errors.append(str(e))
    if REDIS is not None:
        REDIS.stop()
    if errors:
        raise AssertionError("\n".join(errors))


def extra(name, workers=1, args=()):
    """A shared chatd with other settings, started on first use."""
    srv = _EXTRA.get(name)
    if srv is None or not srv.running():
        srv = Chatd(REDIS, workers=workers, args=args, name=name).start()
        _EXTRA[name] = srv
        _EXTRA_WORKERS[name] = srv.worker_pids()
    return srv


def jwt_server():
    return extra("jwt", args=["--jwt-secret", JWT_SECRET])


def hb_server():
    return extra("heartbeat", args=["--heartbeat", "1"])


def small_server():
    # max-content may not exceed max-message, so it is lowered too
    return extra("small", args=["--max-message", "1024", "--max-content", "512"])


# ---------------------------------------------------------------- helpers


def expect_bad_request(text, echoed_id=None, user="bad"):
    """Sends one text frame; expects an error bad_request (echoing
    echoed_id, or no id) and the connection still usable."""
    with RawWS.open(SRV.port, user=user) as ws:
        ws.send_text(text)
        r = ws.recv_json()
        assert r.get("type") == "error", f"expected an error for {text[:80]!r}, got {r!r}"
        if echoed_id is None:
            assert r.get("id") is None, f"error should carry no id, got {r!r}"
        else:
            assert r.get("id") == echoed_id, f"error should echo id {echoed_id!r}, got {r!r}"
        p = r.get("payload")
        assert isinstance(p, dict), f"error payload should be an object: {r!r}"
        assert p.get("code") == "bad_request", f"expected code bad_request: {r!r}"
        assert isinstance(p.get("message"), str) and p["message"], f"expected a message: {r!r}"
        ws.ping("after-error")          # connection stays open


def expect_ws_close(ws, code, timeout=5.0):
    """Expects a close frame with status code, then the TCP close."""
    got = ws.expect_close(timeout)
    assert got == code, f"expected close status {code}, got {got} (before it: {ws.skipped!r})"
    assert ws.wait_eof(3.0), "server did not close the TCP connection after the close handshake"


def expect_http_error(resp, ws, status):
    assert resp.status == status, f"expected HTTP {status}, got {resp!r}"
    assert "sec-websocket-accept" not in resp.headers, f"error response looks like an upgrade: {resp!r}"
    assert ws.wait_eof(3.0), f"connection not closed after HTTP {status}"


def upgrade(path="/ws?user=alice", srv=None, **kw):
    """Handshake on a fresh connection; returns (response, ws)."""
    ws = RawWS((srv or SRV).port)
    return ws.handshake(path, **kw), ws


def expect_401(path, srv=None):
    resp, ws = upgrade(path, srv)
    with ws:
        expect_http_error(resp, ws, 401)
        body = resp.body
        assert 0 < len(body) <= 512, f"expected a short body, got {body!r}"
        body.decode("utf-8")
        ctype = resp.headers.get("content-type", "text/plain")
        assert ctype.startswith("text/"), f"expected a text body, got Content-Type {ctype!r}"


def run_chatd(*args, timeout=10):
    return subprocess.run([harness.chatd_bin(), *args], capture_output=True, text=True,
                          timeout=timeout, env=harness._child_env())


# ---------------------------------------------------------------- options


def test_help_exits_0_with_usage():
    r = run_chatd("--help")
    assert r.returncode == 0, f"--help exited {r.returncode}: {r.stderr!r}"
    assert "usage" in r.stdout.lower(), f"no usage text on stdout: {r.stdout!r}"
    for opt in ("--port", "--workers", "--redis-url", "--jwt-secret", "--heartbeat",
                "--max-message", "--max-content", "--config", "--pidfile", "--log-level"):
        assert opt in r.stdout, f"--help does not mention {opt}"


def test_version():
    r = run_chatd("--version")
    assert r.returncode == 0, f"--version exited {r.returncode}: {r.stderr!r}"
    assert re.fullmatch(r"chatd \S+", r.stdout.strip()), f"expected 'chatd <version>', got {r.stdout!r}"


def test_unknown_option_fails():
    r = run_chatd("--bogus-option", "1")
    assert r.returncode != 0, "unknown option should exit non-zero"
    msg = r.stderr + r.stdout
    assert "bogus-option" in msg, f"expected a message naming the option, got {msg!r}"


def test_options_from_environment():
    port = harness.free_port()
    env = {"CHATD_PORT": port, "CHATD_BIND": "127.0.0.1", "CHATD_WORKERS": 2,
           "CHATD_REDIS_URL": REDIS.url, "CHATD_HEARTBEAT": 7, "CHATD_MAX_CONTENT": 1000}
    with Chatd(default_args=False, env=env, name="env") as srv:
        assert srv.port == port, f"ready line says port {srv.port}, expected {port}"
        assert srv.ready_workers == 2
        wait_for(lambda: len(srv.worker_pids()) == 2, 5, what="2 workers")
        with RawWS.open(port, user="envuser") as ws:
            p = ws.welcome["payload"]
            assert p["heartbeat"] == 7, ws.welcome
            assert p["limits"]["maxContent"] == 1000, ws.welcome


def test_config_file():
    port = harness.free_port()
    d = tempfile.mkdtemp(dir=harness.artifacts_dir())
    path = os.path.join(d, "chatd.conf")
    with open(path, "w") as f:
        f.write(f"# test config\nport = {port}\nbind = 127.0.0.1\nworkers = 1\n"
                f"redis-url = {REDIS.url}\nheartbeat = 9\nmax-message = 2048\nmax-content = 1500\n")
    with Chatd(default_args=False, args=["--config", path], name="config") as srv:
        assert srv.port == port and srv.ready_workers == 1
        with RawWS.open(port, user="cfg") as ws:
            p = ws.welcome["payload"]
            assert p["heartbeat"] == 9, ws.welcome
            assert p["limits"]["maxMessage"] == 2048 and p["limits"]["maxContent"] == 1500, ws.welcome


def test_ready_line_and_prefork():
    assert SRV.ready_workers == 4, f"ready line says workers={SRV.ready_workers}"
    assert len(INITIAL_WORKERS) == 4, f"expected 4 worker children, got {INITIAL_WORKERS}"
    assert SRV.pid not in INITIAL_WORKERS


# ---------------------------------------------------------------- upgrade


def test_upgrade_ok_and_accept_header():
    resp, ws = upgrade("/ws?user=alice")
    with ws:
        assert resp.status == 101, resp
        assert resp.headers.get("upgrade", "").lower() == "websocket", resp
        assert "upgrade" in resp.headers.get("connection", "").lower(), resp
        assert resp.headers.get("sec-websocket-accept") == ws_accept(ws.key), \
            f"Sec-WebSocket-Accept {resp.headers.get('sec-websocket-accept')!r} != {ws_accept(ws.key)!r}"


def test_welcome():
    resp, ws = upgrade("/ws?user=alice")
    with ws:
        assert resp.status == 101, resp
        f = ws.recv_frame()
        assert f.opcode == OP_TEXT and f.fin and not f.masked, f"first frame should be a text frame: {f!r}"
        w = json.loads(f.payload)
        assert w.get("type") == "welcome", w
        p = w.get("payload")
        assert isinstance(p, dict), w
        assert p.get("user") == "alice", w
        assert isinstance(p.get("session"), str) and p["session"], w
        assert p.get("heartbeat") == 25, w
        assert p.get("limits") == DEFAULT_LIMITS, w
        with RawWS.open(SRV.port, user="alice") as ws2:
            assert ws2.welcome["payload"]["session"] != p["session"], "two connections share a session"


def test_ping_pong():
    with RawWS.open(SRV.port, user="pinger") as ws:
        ws.send_json({"type": "ping", "id": "p1"})
        r = ws.recv_json()
        assert r.get("type") == "pong" and r.get("id") == "p1", r
        assert r.get("payload", {}) == {}, r
        assert set(r) <= {"type", "id", "payload"}, r


def test_ping_with_empty_payload():
    with RawWS.open(SRV.port, user="pinger") as ws:
        ws.send_text('{"type":"ping","id":"p2","payload":{}}')
        r = ws.recv_json()
        assert r.get("type") == "pong" and r.get("id") == "p2", r


def test_ping_id_of_64_chars_is_valid():
    with RawWS.open(SRV.port, user="pinger") as ws:
        ws.ping("i" * 64)


async def test_websockets_library_client():
    import websockets
    async with websockets.connect(SRV.url("/ws?user=libclient"), open_timeout=5,
                                  close_timeout=2) as ws:
        w = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert w["type"] == "welcome" and w["payload"]["user"] == "libclient", w
        await ws.send(json.dumps({"type": "ping", "id": "lib"}))
        r = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert r["type"] == "pong" and r["id"] == "lib", r
        await asyncio.wait_for(await ws.ping(b"x"), 5)     # WebSocket-level ping


def test_upgrade_header_tokens_case_insensitive():
    """RFC 6455 4.2.1: Connection is a token list, values case-insensitive
    (Firefox sends 'keep-alive, Upgrade')."""
    resp, ws = upgrade("/ws?user=fox", headers={"Upgrade": "WebSocket",
                                                "Connection": "keep-alive, Upgrade"})
    with ws:
        assert resp.status == 101, resp
        assert ws.recv_json()["type"] == "welcome"


def test_upgrade_missing_key_400():
    resp, ws = upgrade(headers={"Sec-WebSocket-Key": None})
    with ws:
        expect_http_error(resp, ws, 400)


def test_upgrade_key_not_base64_400():
    resp, ws = upgrade(key="not base64 at all!!")
    with ws:
        expect_http_error(resp, ws, 400)


def test_upgrade_key_wrong_length_400():
    import base64
    resp, ws = upgrade(key=base64.b64encode(b"fifteen bytes!!").decode())
    with ws:
        expect_http_error(resp, ws, 400)


def test_upgrade_wrong_version_400():
    resp, ws = upgrade(version="8")
    with ws:
        expect_http_error(resp, ws, 400)


def test_upgrade_missing_version_400():
    resp, ws = upgrade(headers={"Sec-WebSocket-Version": None})
    with ws:
        expect_http_error(resp, ws, 400)


def test_upgrade_missing_upgrade_header_400():
    resp, ws = upgrade(headers={"Upgrade": None})
    with ws:
        expect_http_error(resp, ws, 400)


def test_upgrade_missing_connection_header_400():
    resp, ws = upgrade(headers={"Connection": None})
    with ws:
        expect_http_error(resp, ws, 400)


def test_upgrade_post_400():
    resp, ws = upgrade(method="POST")
    with ws:
        expect_http_error(resp, ws, 400)


def test_garbage_instead_of_http_400():
    with RawWS(SRV.port) as ws:
        ws.send_raw(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\x00\xff\r\n\r\n")
        resp = ws.read_http_response()
        expect_http_error(resp, ws, 400)


def test_unknown_path_404():
    resp, ws = upgrade("/nope?user=alice")
    with ws:
        expect_http_error(resp, ws, 404)
    r = http_get(SRV.port, "/nope")
    assert r.status == 404, r


# ---------------------------------------------------------------- dev auth


def test_dev_missing_user_401():
    expect_401("/ws")


def test_dev_empty_user_401():
    expect_401("/ws?user=")


def test_dev_user_with_space_401():
    expect_401("/ws?user=a%20b")


def test_dev_user_65_chars_401():
    expect_401("/ws?user=" + "u" * 65)


def test_dev_user_encoded_slash_401():
    expect_401("/ws?user=x%2Fy")


def test_dev_user_64_chars_and_punctuation_ok():
    for user in ("u" * 64, "A.b_c-9"):
        with RawWS.open(SRV.port, user=user) as ws:
            assert ws.welcome["payload"]["user"] == user, ws.welcome


# ---------------------------------------------------------------- JWT auth


def _token(**claims):
    c = {"sub": "carol", "exp": int(time.time()) + 300}
    c.update(claims)
    return make_jwt({k: v for k, v in c.items() if v is not None}, JWT_SECRET)


def test_jwt_valid_token_welcome():
    srv = jwt_server()
    with RawWS.open(srv.port, path="/ws?token=" + _token()) as ws:
        assert ws.welcome["payload"]["user"] == "carol", ws.welcome


def test_jwt_expired_401():
    expect_401("/ws?token=" + _token(exp=int(time.time()) - 120), jwt_server())


def test_jwt_wrong_signature_401():
    bad = make_jwt({"sub": "carol", "exp": int(time.time()) + 300}, JWT_SECRET + "x")
    expect_401("/ws?token=" + bad, jwt_server())


def test_jwt_alg_none_401():
    unsigned = make_jwt({"sub": "carol", "exp": int(time.time()) + 300}, "", alg="none")
    expect_401("/ws?token=" + unsigned, jwt_server())


def test_jwt_malformed_401():
    srv = jwt_server()
    for tok in ("not-a-jwt", "abc.def", "a.b.c", "..", _token()[:-5]):
        expect_401("/ws?token=" + tok, srv)


def test_jwt_missing_token_401():
    expect_401("/ws", jwt_server())


def test_jwt_user_param_rejected_401():
    expect_401("/ws?user=bob", jwt_server())


def test_jwt_missing_sub_401():
    expect_401("/ws?token=" + _token(sub=None), jwt_server())


# ---------------------------------------------------------------- frames


def test_binary_frame_closes_1003():
    with RawWS.open(SRV.port, user="bin") as ws:
        ws.send_binary(b'{"type":"ping","id":"b"}')
        expect_ws_close(ws, 1003)


def test_invalid_utf8_closes_1007():
    with RawWS.open(SRV.port, user="utf") as ws:
        ws.send_text(b'{"type":"ping","id":"\xff\xfe"}')
        expect_ws_close(ws, 1007)


def test_utf8_surrogate_closes_1007():
    with RawWS.open(SRV.port, user="utf") as ws:
        ws.send_text(b'{"type":"ping","id":"\xed\xa0\x80"}')    # U+D800 encoded
        expect_ws_close(ws, 1007)


def _padded_ping(total, id="big"):
    head, tail = '{"type":"ping","id":"%s"' % id, "}"
    return (head + " " * (total - len(head) - len(tail)) + tail).encode()


def test_message_at_default_max_is_accepted():
    msg = _padded_ping(65536)
    assert len(msg) == 65536
    with RawWS.open(SRV.port, user="big") as ws:
        ws.send_text(msg)
        r = ws.recv_json()
        assert r.get("type") == "pong" and r.get("id") == "big", r


def test_message_over_default_max_closes_1009():
    with RawWS.open(SRV.port, user="big") as ws:
        try:
            ws.send_text(_padded_ping(65537))
        except (BrokenPipeError, ConnectionResetError):
            pass
        expect_ws_close(ws, 1009)


def test_declared_huge_length_closes_1009():
    """A frame declaring 2^40 bytes is refused after its first few payload
    bytes, without waiting for (or allocating) the rest."""
    with RawWS.open(SRV.port, user="big") as ws:
        key = b"\x01\x02\x03\x04"
        head = harness.encode_frame(OP_TEXT, b"", length=1 << 40, mask_key=key)
        ws.send_raw(head + harness.mask_bytes(b" " * 16, key))
        expect_ws_close(ws, 1009, timeout=3.0)


def test_small_max_message_closes_1009():
    srv = small_server()
    with RawWS.open(srv.port, user="small") as ws:
        assert ws.welcome["payload"]["limits"]["maxMessage"] == 1024, ws.welcome
        ws.ping("fits")
        try:
            ws.send_text(_padded_ping(1025))
        except (BrokenPipeError, ConnectionResetError):
            pass
        expect_ws_close(ws, 1009)


def test_small_max_fragmented_total_closes_1009():
    """Two 600-byte fragments: each fits, the message (1200) does not."""
    srv = small_server()
    msg = _padded_ping(1200)
    with RawWS.open(srv.port, user="small") as ws:
        try:
            ws.send_frame(OP_TEXT, msg[:600], fin=False)
            ws.send_frame(OP_CONT, msg[600:], fin=True)
        except (BrokenPipeError, ConnectionResetError):
            pass
        expect_ws_close(ws, 1009)


def test_unmasked_frame_closes_1002():
    with RawWS.open(SRV.port, user="unmasked") as ws:
        ws.send_frame(OP_TEXT, b'{"type":"ping","id":"u"}', mask=False)
        expect_ws_close(ws, 1002)


def test_fragmented_text_message_accepted():
    msg = b'{"type":"ping","id":"frag"}'
    with RawWS.open(SRV.port, user="frag") as ws:
        ws.send_frame(OP_TEXT, msg[:10], fin=False)
        ws.send_frame(OP_CONT, msg[10:], fin=True)
        r = ws.recv_json()
        assert r.get("type") == "pong" and r.get("id") == "frag", r


def test_fragmented_message_with_interleaved_ping_frame():
    """RFC 6455 5.4: control frames may be injected between fragments."""
    msg = b'{"type":"ping","id":"frag2"}'
    with RawWS.open(SRV.port, user="frag") as ws:
        ws.send_frame(OP_TEXT, msg[:10], fin=False)
        ws.send_frame(OP_PING, b"mid")
        ws.send_frame(OP_CONT, msg[10:], fin=True)
        seen_pong, got = False, None
        deadline = time.monotonic() + 5
        while got is None:
            f = ws.recv_frame(max(0.1, deadline - time.monotonic()))
            if f.opcode == OP_PONG:
                assert f.payload == b"mid", f
                seen_pong = True
            elif f.opcode == OP_TEXT:
                got = json.loads(f.payload)
            else:
                raise AssertionError(f"unexpected frame {f!r}")
        assert got.get("type") == "pong" and got.get("id") == "frag2", got
        assert seen_pong, "no pong frame for the interleaved ping"


def test_ws_ping_frame_gets_pong_frame():
    """RFC 6455 5.5.2: a ping is answered by a pong with the same data."""
    with RawWS.open(SRV.port, user="wsping") as ws:
        ws.send_ping(b"hello")
        f = ws.recv_frame()
        assert f.opcode == OP_PONG and f.payload == b"hello", f


def test_rsv_bits_close_1002():
    """RFC 6455 5.2: RSV bits without a negotiated extension fail the connection."""
    with RawWS.open(SRV.port, user="rsv") as ws:
        ws.send_frame(OP_TEXT, b'{"type":"ping","id":"r"}', rsv=4)
        expect_ws_close(ws, 1002)


def test_reserved_opcode_closes_1002():
    with RawWS.open(SRV.port, user="opcode") as ws:
        ws.send_frame(0x3, b"x")
        expect_ws_close(ws, 1002)


def test_continuation_without_start_closes_1002():
    with RawWS.open(SRV.port, user="cont") as ws:
        ws.send_frame(OP_CONT, b'{"type":"ping","id":"c"}', fin=True)
        expect_ws_close(ws, 1002)


def test_client_close_is_echoed():
    with RawWS.open(SRV.port, user="closer") as ws:
        ws.send_close(1000, b"bye")
        code = ws.expect_close(3.0)
        assert code == 1000, f"expected the close status echoed (1000), got {code}"
        assert ws.wait_eof(3.0), "server did not close TCP after the close handshake"


# ---------------------------------------------------------------- envelope


def test_bad_json_malformed():
    expect_bad_request('{"type":"ping","id":"x"')


def test_bad_json_empty_message():
    expect_bad_request("")


def test_bad_json_trailing_data():
    expect_bad_request('{"type":"ping","id":"t"} {"type":"ping"}')


def test_bad_json_array():
    expect_bad_request("[]")


def test_bad_json_string():
    expect_bad_request('"x"')


def test_bad_json_number():
    expect_bad_request("3")


def test_bad_json_null():
    expect_bad_request("null")


def test_bad_type_missing():
    expect_bad_request('{"id":"m1","payload":{}}', echoed_id="m1")


def test_bad_type_not_string():
    expect_bad_request('{"type":5,"id":"t1"}', echoed_id="t1")


def test_bad_type_unknown():
    expect_bad_request('{"type":"dance","id":"u1"}', echoed_id="u1")


def test_bad_id_number():
    expect_bad_request('{"type":"ping","id":5}')


def test_bad_id_too_long():
    expect_bad_request('{"type":"ping","id":"%s"}' % ("i" * 65))


def test_bad_id_empty():
    expect_bad_request('{"type":"ping","id":""}')


def test_bad_payload_array():
    expect_bad_request('{"type":"ping","id":"pa1","payload":[]}', echoed_id="pa1")


def test_bad_payload_string():
    expect_bad_request('{"type":"ping","id":"pa2","payload":"x"}', echoed_id="pa2")


# ---------------------------------------------------------------- heartbeat


def test_heartbeat_silent_client_is_closed():
    srv = hb_server()
    with RawWS.open(srv.port, user="silent") as ws:
        assert ws.welcome["payload"]["heartbeat"] == 1, ws.welcome
        ws.answer_pings = False
        t0 = time.monotonic()
        res = ws.wait_closed(8.0)
        elapsed = time.monotonic() - t0
        assert res is not None, "a client that never answers pings is still connected after 8s"
        assert ws.pings_received >= 1, f"closed ({res}) after {elapsed:.1f}s without any ping first"
        assert 1.0 <= elapsed <= 5.0, f"closed after {elapsed:.1f}s, expected about 2-4s"


def test_heartbeat_answering_client_stays():
    srv = hb_server()
    with RawWS.open(srv.port, user="lively") as ws:
        assert ws.wait_closed(5.5) is None, f"closed although it answered pings (close {ws.close_code})"
        n = ws.pings_received
        assert n >= 3, f"only {n} pings in 5.5s with --heartbeat 1"
        gaps = [b - a for a, b in zip(ws.ping_times, ws.ping_times[1:])]
        assert 0.5 <= sum(gaps) / len(gaps) <= 2.0, f"ping intervals {gaps}"
        ws.ping("still-here")


def test_heartbeat_pongs_of_an_idle_connection_keep_it_open():
    """With --heartbeat 3 the connection goes idle between pings (its wslay
    state is released after 1 s), so its pongs take the path that needs no
    wslay state: they still count as liveness, an unsolicited pong with a
    payload is fine too, and the next request works."""
    srv = extra("heartbeat3", args=["--heartbeat", "3"])
    with RawWS.open(srv.port, user="idlepong") as ws:
        ws.send_frame(OP_PONG, b"unsolicited")
        assert ws.wait_closed(7.5) is None, f"closed although it answered pings (close {ws.close_code})"
        assert ws.pings_received >= 2, f"only {ws.pings_received} pings in 7.5s with --heartbeat 3"
        ws.ping("after-idle-pongs")


def test_heartbeat_json_ping_counts_as_liveness():
    srv = hb_server()
    with RawWS.open(srv.port, user="jsonlive") as ws:
        ws.answer_pings = False
        end = time.monotonic() + 5.5
        n = 0
        while time.monotonic() < end:
            n += 1
            ws.send_json({"type": "ping", "id": f"hb{n}"})
            r = ws.recv_json(timeout=3)
            assert r.get("type") == "pong" and r.get("id") == f"hb{n}", r
            time.sleep(0.4)     # client pacing, not a wait for the server


# ---------------------------------------------------------------- healthz


@timeout(60)
def test_healthz_follows_redis():
    redis = Redis(name="redis-health").start()
    try:
        with Chatd(redis, workers=2, name="health") as srv:
            def status():
                return http_get(srv.port, "/healthz", timeout=3)

            r = wait_for(lambda: (lambda r: r if r.status == 200 else None)(status()), 5,
                         what="/healthz 200 with Redis up")
            # first line the verdict, then one line per Redis node
            lines = r.body.decode().splitlines()
            assert lines[0] == "ok", r
            assert lines[1:] == [f"redis 127.0.0.1:{redis.port} cmd=up sub=up slots=16384"], r
            redis.stop()
            wait_for(lambda: status().status == 503, 10, interval=0.1,
                     what="/healthz 503 after Redis stopped")
            r = status()
            assert r.body.decode().splitlines()[0] == "redis unavailable", r
            assert f"redis 127.0.0.1:{redis.port} cmd=down sub=down" in r.body.decode(), r
            # a real outage: Redis stays down for a second (so chatd's
            # reconnect attempts meet a dead Redis), /healthz 503 throughout
            outage_end = time.monotonic() + 1.0
            while time.monotonic() < outage_end:
                r = status()
                assert r.status == 503, f"/healthz during the Redis outage: {r!r}"
                time.sleep(0.1)
            redis.restart()
            wait_for(lambda: status().status == 200, 10, interval=0.1,
                     what="/healthz 200 after Redis restarted")
    finally:
        redis.stop()


# ---------------------------------------------------------------- processes


def _open_many(port, n, batch=50, prefix="u"):
    """n upgraded connections, opened in concurrent batches."""
    conns = []
    try:
        for start in range(0, n, batch):
            group = [RawWS(port, timeout=10) for _ in range(min(batch, n - start))]
            conns += group
            for i, ws in enumerate(group):
                ws.send_raw(ws.build_request(f"/ws?user={prefix}{start + i}"))
            for ws in group:
                r = ws.read_http_response()
                assert r.status == 101, r
                assert ws.recv_json()["type"] == "welcome"
        return conns
    except BaseException:
        for ws in conns:
            ws.close_socket()
        raise


def _connections_per_worker(srv, conns, workers):
    ports = {ws.sock.getsockname()[1] for ws in conns}
    inodes = {inode for lport, rport, st, inode in harness.tcp_connections()
              if lport == srv.port and rport in ports and st == harness.TCP_ESTABLISHED and inode}
    counts = {pid: len(harness.socket_inodes(pid) & inodes) for pid in workers}
    return counts, len(inodes)


def test_connections_spread_evenly():
    workers = SRV.worker_pids()
    assert len(workers) == 4, workers
    conns = _open_many(SRV.port, 400)
    try:
        counts, found = _connections_per_worker(SRV, conns, workers)
        assert found == 400, f"found {found} server-side sockets for 400 connections"
        assert sum(counts.values()) == 400, f"workers hold {counts}, total != 400"
        assert all(60 <= c <= 140 for c in counts.values()), f"uneven spread: {counts}"
    finally:
        for ws in conns:
            ws.close_socket()


def test_worker_respawn_after_kill9():
    with Chatd(REDIS, workers=2, name="respawn") as srv:
        before = srv.worker_pids()
        assert len(before) == 2, before
        victim, survivor = before
        os.kill(victim, signal.SIGKILL)
        after = wait_for(lambda: (lambda p: p if len(p) == 2 and victim not in p else None)(
            srv.worker_pids()), 10, what="a replacement worker")
        assert survivor in after, f"the other worker was replaced too: {before} -> {after}"
        assert srv.running(), "master died"
        new = [p for p in after if p != survivor][0]
        conns = _open_many(srv.port, 20, batch=20, prefix="r")
        try:
            counts, found = _connections_per_worker(srv, conns, after)
            assert found == 20
            assert counts[new] > 0, f"the new worker {new} took no connections: {counts}"
            conns[0].ping("after-respawn")
        finally:
            for ws in conns:
                ws.close_socket()


def test_sigterm_stops_everything_and_pidfile():
    srv = Chatd(REDIS, workers=2, name="sigterm")
    pidfile = os.path.join(srv.dir, "chatd.pid")
    srv.extra_args += ["--pidfile", pidfile]
    with srv:
        with open(pidfile) as f:
            assert int(f.read().strip()) == srv.pid, "pidfile does not hold the master pid"
        workers = srv.worker_pids()
        assert len(workers) == 2
        ws = RawWS.open(srv.port, user="term")
        result = {}
        reader = threading.Thread(target=lambda: result.update(r=ws.wait_closed(15)), daemon=True)
        reader.start()
        try:
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGTERM)
            try:
                srv.proc.wait(5)
            except subprocess.TimeoutExpired:
                raise AssertionError("master still running 5s after SIGTERM")
            wait_for(lambda: not any(harness.pid_alive(p) for p in workers), 5,
                     what="workers to exit after SIGTERM")
            took = time.monotonic() - t0
            s = socket.socket()
            try:
                s.settimeout(2)
                try:
                    s.connect(("127.0.0.1", srv.port))
                    raise AssertionError("port still accepts connections after SIGTERM")
                except ConnectionRefusedError:
                    pass
            finally:
                s.close()
            s = socket.socket()
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", srv.port))
                s.listen()
            finally:
                s.close()
            assert took < 5, took
            reader.join(5)
            assert result.get("r") is not None, "client connection still open after shutdown"
        finally:
            ws.close_socket()


# ---------------------------------------------------------------- static client


# A client of ES modules: main imports a (which re-exports b), c and d
# import each other, lazy is a dynamic import; the other strings only look
# like specifiers and must stay as they are.
_WEB_FILES = {
    "index.html": '<script type="module" src="/main.js"></script>\n'
                  '<link rel="stylesheet" href="/style.css">\n',
    "main.js": "import { a } from './a.js';\nimport \"./c.js\";\n"
               "const s = './a.js', t = \"from './nope.js'\";\n"
               "export function later() { return import ( './lazy.js' ); }\n",
    "a.js": 'export * from"/b.js";\nexport const a = 1;\n',
    "b.js": "export const b = 1;\n",
    "c.js": "import { d } from './d.js';\nexport const c = 1;\n",
    "d.js": "import { c } from './c.js';\nexport const d = 1;\n",
    "lazy.js": "export const lazy = 1;\n",
    "style.css": "body { margin: 0; }\n",
}
_STAMP = r"\?v=([0-9a-f]{8})"


def _web_stamps(web_dir):
    """Serves web_dir with a fresh one-worker chatd; returns the stamp each
    file is referred to with (every reference to a file must agree) and
    the served bodies."""
    with Chatd(REDIS, workers=1, env={"CHATD_WEB_DIR": web_dir}, name="webdir") as srv:
        bodies = {name: http_get(srv.port, "/" + name) for name in _WEB_FILES}
    for name, r in bodies.items():
        assert r.status == 200, (name, r)
        want = "no-cache" if name == "index.html" else "immutable"
        assert want in r.headers.get("cache-control", ""), (name, r.headers)
    stamps = {}
    for name, r in bodies.items():
        for target, stamp in re.findall(r"[\"'](?:\.)?/([a-z]+\.(?:js|css))" + _STAMP, r.body.decode()):
            assert stamps.setdefault(target, stamp) == stamp, \
                f"{target} is named with two stamps: {stamps[target]} and {stamp}"
    return stamps, {name: r.body.decode() for name, r in bodies.items()}


def test_module_imports_carry_versions_covering_what_they_import():
    web_dir = tempfile.mkdtemp(prefix="web-", dir=harness.artifacts_dir())
    for name, text in _WEB_FILES.items():
        with open(os.path.join(web_dir, name), "w") as f:
            f.write(text)
    v1, body = _web_stamps(web_dir)
    assert sorted(v1) == ["a.js", "b.js", "c.js", "d.js", "lazy.js", "main.js", "style.css"], v1
    assert "import { a } from './a.js?v=" in body["main.js"], body["main.js"]
    assert "import ( './lazy.js?v=" in body["main.js"], body["main.js"]
    assert "const s = './a.js', t = \"from './nope.js'\";" in body["main.js"], \
        "a string that is not a specifier was rewritten"
    assert 'export * from"/b.js?v=' in body["a.js"], body["a.js"]
    assert body["b.js"] == _WEB_FILES["b.js"]

    # A change deep down changes the URL of everything that reaches it, and
    # nothing else.
    with open(os.path.join(web_dir, "b.js"), "a") as f:
        f.write("export const b2 = 2;\n")
    v2, _ = _web_stamps(web_dir)
    changed = sorted(n for n in v1 if v1[n] != v2[n])
    assert changed == ["a.js", "b.js", "main.js"], (v1, v2)

    # In an import cycle each module reaches the other.
    with open(os.path.join(web_dir, "d.js"), "a") as f:
        f.write("export const d2 = 2;\n")
    v3, _ = _web_stamps(web_dir)
    changed = sorted(n for n in v2 if v2[n] != v3[n])
    assert changed == ["c.js", "d.js", "main.js"], (v2, v3)


# ---------------------------------------------------------------- last


def test_bad_input_did_not_crash_workers():
    """Runs last: no worker of the shared servers was replaced."""
    now = SRV.worker_pids()
    assert now == INITIAL_WORKERS, f"shared server workers changed: {INITIAL_WORKERS} -> {now}"
    for name, srv in _EXTRA.items():
        assert srv.running(), f"server {name} died"
        assert srv.worker_pids() == _EXTRA_WORKERS[name], \
            f"server {name} workers changed: {_EXTRA_WORKERS[name]} -> {srv.worker_pids()}"
    with RawWS.open(SRV.port, user="fresh") as ws:
        assert ws.welcome["payload"]["user"] == "fresh"
        ws.ping("fresh")
