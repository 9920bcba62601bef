"""
Integration tests of protocol 1.1's files (POST /files, GET /files/<id>)
against real chatd processes, with both stores: a directory (--files-dir)
and GridFS on a real MongoDB-wire server (CongoDB), checked directly on
disk and in the fs.files / fs.chunks collections.

Run: /usr/bin/python3 tests/integration/run.py test_files
"""

import json
import os
import socket
import stat
import tempfile
import time
import urllib.parse

import harness
from chatclient import connect, itest
from harness import Chatd, Congo, http_request, make_jwt, make_redis, timeout, wait_for

MAX = 1 << 20
SECRET = "files-secret"
GRID_CHUNK = 261120             # mongo-c-driver's default GridFS chunk size

REDIS = None
MONGO = None
DIR = None
SRV = None          # directory store
GRID = None         # GridFS store
JWT = None          # tokens, default --max-file


def setup_module():
    global REDIS, MONGO, DIR, SRV, GRID, JWT
    Congo.setup()
    REDIS = make_redis("redis-files")
    DIR = os.path.join(tempfile.mkdtemp(prefix="files-", dir=harness.artifacts_dir()), "store", "files")
    common = ["--max-file", str(MAX), "--handshake-timeout", "2"]
    SRV = Chatd(REDIS, workers=2, name="files-dir", args=common + ["--files-dir", DIR]).start()
    MONGO = Congo().start()
    GRID = Chatd(REDIS, workers=2, name="files-grid", args=common + ["--mongo-uri", MONGO.uri]).start()
    JWT = Chatd(REDIS, workers=1, name="files-jwt",
                args=["--jwt-secret", SECRET, "--files-dir", DIR + "-jwt"]).start()


def teardown_module():
    for s in (SRV, GRID, JWT, MONGO, REDIS):
        if s is not None:
            s.stop()


def q(**params):
    return "?" + urllib.parse.urlencode(params)


def upload(srv, body, room="lobby", user="alice", name=None, ctype="application/octet-stream",
           headers=None):
    p = {"room": room, "user": user}
    if name is not None:
        p["name"] = name
    h = {"Content-Type": ctype, "Content-Length": str(len(body))}
    h.update(headers or {})
    return http_request(srv.port, "/files" + q(**p), "POST", h, body=body, timeout=10)


def download(srv, url, user="bob", headers=None, method="GET"):
    sep = "&" if "?" in url else "?"
    return http_request(srv.port, f"{url}{sep}user={user}", method, headers, timeout=10)


def stored(srv, body, **kw):
    r = upload(srv, body, **kw)
    assert r.status == 201, r
    meta = json.loads(r.body)
    assert meta["url"] == f"/files/{meta['id']}" and meta["size"] == len(body), meta
    return meta


def leftovers():
    """Whatever the directory store holds besides whole files."""
    return [n for n in os.listdir(DIR) if n.startswith(".part-")]


def grid_counts():
    return MONGO.count("fs.files", {}), MONGO.count("fs.chunks", {})


def raw_socket(srv):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    return s


def read_until_closed(s, limit):
    """Everything the server sends until it closes; None if it did not
    within limit seconds."""
    s.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return None


# ---------------------------------------------------------------------------


@timeout(60)
def test_round_trip_both_stores():
    body = os.urandom(300_000) + b"\0" * 5000 + b"end\0"      # several GridFS chunks, NULs
    for srv in (SRV, GRID):
        meta = stored(srv, body, name="report \u00e9t\u00e9.bin")
        assert meta["name"] == "report \u00e9t\u00e9.bin" and meta["type"] == "application/octet-stream"
        r = download(srv, meta["url"])
        assert r.status == 200 and r.body == body, (srv.name, r)
        h = r.headers
        assert h["content-type"] == "application/octet-stream", h
        assert h["content-disposition"].startswith("attachment;"), h
        assert "filename*=UTF-8''report%20%C3%A9t%C3%A9.bin" in h["content-disposition"], h
        assert h["x-content-type-options"] == "nosniff" and h["content-security-policy"] == "sandbox", h
        assert h["content-length"] == str(len(body)) and h["accept-ranges"] == "bytes", h
    assert leftovers() == []
    # /metrics counts both directions over every worker.
    m = {}
    for line in http_request(SRV.port, "/metrics", "GET").body.decode().splitlines():
        if line.startswith("chatd_file"):
            k, v = line.split()
            m[k] = int(float(v))
    assert m["chatd_files_uploaded_total"] >= 1 and m["chatd_file_upload_bytes_total"] >= len(body), m
    assert m["chatd_files_downloaded_total"] >= 1 and m["chatd_file_download_bytes_total"] >= len(body), m
    assert m["chatd_file_transfers"] == 0, m


@timeout(60)
def test_images_inline_everything_else_attachment():
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(100)
    for srv in (SRV, GRID):
        for ctype, inline in (("image/png", True), ("image/webp", True), ("image/jpeg", True),
                              ("image/gif", True), ("image/svg+xml", False), ("text/html", False)):
            meta = stored(srv, png, ctype=ctype, name="x")
            assert meta["type"] == ctype
            r = download(srv, meta["url"])
            assert r.status == 200 and r.body == png
            want = ctype if inline else "application/octet-stream"
            assert r.headers["content-type"] == want, (ctype, r.headers)
            assert r.headers["content-disposition"].startswith("inline;" if inline else "attachment;")
            assert r.headers["content-security-policy"] == "sandbox"


@timeout(60)
def test_empty_exact_max_and_over():
    for srv in (SRV, GRID):
        meta = stored(srv, b"")
        r = download(srv, meta["url"])
        assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0", r
        body = os.urandom(MAX)
        meta = stored(srv, body)
        assert download(srv, meta["url"]).body == body
        # One byte over, said by Content-Length: answered before any body byte is sent.
        s = raw_socket(srv)
        s.sendall((f"POST /files?room=lobby&user=alice HTTP/1.1\r\nHost: x\r\n"
                   f"Content-Length: {MAX + 1}\r\n\r\n").encode())
        got = read_until_closed(s, 5)
        s.close()
        assert got is not None and got.startswith(b"HTTP/1.1 413 "), got


@timeout(60)
def test_chunked_bodies():
    def chunked(parts, extra=b""):
        out = b""
        for p in parts:
            out += f"{len(p):x}\r\n".encode() + p + b"\r\n"
        return out + b"0\r\n\r\n" + extra

    for srv in (SRV, GRID):
        parts = [os.urandom(70_000) for _ in range(5)] + [b"\0\0\0"]
        s = raw_socket(srv)
        s.sendall(b"POST /files?room=lobby&user=alice&name=c.bin HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\nContent-Type: application/x-test\r\n\r\n" + chunked(parts))
        got = read_until_closed(s, 10)
        s.close()
        assert got is not None and got.startswith(b"HTTP/1.1 201 "), got
        meta = json.loads(got.split(b"\r\n\r\n", 1)[1])
        assert meta["size"] == sum(map(len, parts)) and meta["type"] == "application/x-test"
        assert download(srv, meta["url"]).body == b"".join(parts)
        # Chunked past maxFile: refused while streaming, nothing kept.
        before = grid_counts() if srv is GRID else None
        s = raw_socket(srv)
        s.sendall(b"POST /files?room=lobby&user=alice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(MAX // 65536 + 2):
                s.sendall(chunked([os.urandom(65536)])[:-5])
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = read_until_closed(s, 10)
        s.close()
        assert got is not None and got.startswith(b"HTTP/1.1 413 "), got
        # A malformed chunk size: 400.
        s = raw_socket(srv)
        s.sendall(b"POST /files?room=lobby&user=alice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\nhello\r\n0\r\n\r\n")
        got = read_until_closed(s, 5)
        s.close()
        assert got is not None and got.startswith(b"HTTP/1.1 400 "), got
        if srv is GRID:
            wait_for(lambda: grid_counts() == before, 10, what="no GridFS leftovers")
    wait_for(lambda: leftovers() == [], 10, what="no parts left")


@timeout(60)
def test_interrupted_and_stalled_uploads_leave_nothing():
    for srv in (SRV, GRID):
        files_before = sorted(os.listdir(DIR))
        grid_before = grid_counts()
        # The client goes away half way.
        s = raw_socket(srv)
        s.sendall(b"POST /files?room=lobby&user=alice HTTP/1.1\r\nHost: x\r\nContent-Length: 800000\r\n\r\n" +
                  os.urandom(600_000))
        time.sleep(0.5)
        s.close()
        # The client stops sending: the stall timeout (--handshake-timeout 2) ends it.
        s = raw_socket(srv)
        s.sendall(b"POST /files?room=lobby&user=alice HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" +
                  b"x" * 1000)
        t0 = time.monotonic()
        got = read_until_closed(s, 8)
        s.close()
        assert got is not None and b"201" not in got, got
        assert 1.5 < time.monotonic() - t0 < 6
        if srv is SRV:
            wait_for(lambda: leftovers() == [] and sorted(os.listdir(DIR)) == files_before, 10,
                     what="no trace of the interrupted uploads")
        else:
            wait_for(lambda: grid_counts() == grid_before, 10, what="no GridFS chunks left")


@timeout(60)
def test_ranges():
    body = bytes(range(256)) * 2400            # 614,400 bytes: three GridFS chunks
    for srv in (SRV, GRID):
        meta = stored(srv, body, ctype="image/png")
        url = meta["url"]
        cases = [("bytes=0-99", 0, 99), ("bytes=1000-", 1000, len(body) - 1),
                 ("bytes=-500", len(body) - 500, len(body) - 1),
                 (f"bytes={GRID_CHUNK - 10}-{GRID_CHUNK + 10}", GRID_CHUNK - 10, GRID_CHUNK + 10),
                 (f"bytes=600000-{10 ** 9}", 600000, len(body) - 1),
                 ("bytes=-999999999", 0, len(body) - 1)]
        for rng, a, b in cases:
            r = download(srv, url, headers={"Range": rng})
            assert r.status == 206, (rng, r)
            assert r.body == body[a:b + 1], rng
            assert r.headers["content-range"] == f"bytes {a}-{b}/{len(body)}", r.headers
            assert r.headers["content-length"] == str(b - a + 1)
        r = download(srv, url, headers={"Range": f"bytes={len(body)}-"})
        assert r.status == 416 and r.headers["content-range"] == f"bytes */{len(body)}", r
        # Several ranges, or a unit chatd does not know: the whole file.
        for rng in ("bytes=0-1,5-6", "items=0-1", "bytes=9-3"):
            r = download(srv, url, headers={"Range": rng})
            assert r.status == 200 and r.body == body, rng
        # HEAD: the same head, no body.
        s = raw_socket(srv)
        s.sendall(f"HEAD {url}?user=bob HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = read_until_closed(s, 5)
        s.close()
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and rest == b"", got
        assert f"Content-Length: {len(body)}".encode() in head, head


@timeout(60)
def test_identity_and_rights():
    meta = stored(SRV, b"secret plans", room="team-a")
    url = meta["url"]
    assert download(SRV, url, user="bob").status == 200          # development: every room
    r = http_request(SRV.port, url, "GET", timeout=5)
    assert r.status == 401, r
    assert download(SRV, "/files/0123456789abcdef01234567").status == 404
    assert download(SRV, "/files/not-an-id").status == 404
    assert upload(SRV, b"x", room="").status == 400
    r = http_request(SRV.port, "/files?user=alice", "POST", {"Content-Length": "1"}, body=b"x")
    assert r.status == 400, r
    assert upload(SRV, b"x", room="bad room!").status == 400
    assert upload(SRV, b"x", name="a\nb").status == 400
    # Direct conversations belong to their two users.
    dm = stored(SRV, b"between us", room="dm:alice:bob")
    assert download(SRV, dm["url"], user="bob").status == 200
    assert download(SRV, dm["url"], user="carol").status == 403
    assert upload(SRV, b"x", room="dm:alice:bob", user="carol").status == 403
    # Methods
    assert http_request(SRV.port, "/files?user=a&room=r", "GET").status == 405
    assert http_request(SRV.port, url + "?user=a", "DELETE").status == 405

    # Tokens: the rooms claim decides, the query or a Bearer header carries it.
    exp = int(time.time()) + 600
    tok_a = make_jwt({"sub": "alice", "exp": exp, "rooms": ["team-*"]}, SECRET)
    tok_c = make_jwt({"sub": "carol", "exp": exp, "rooms": ["other"]}, SECRET)
    body = b"\0team file\0"
    r = http_request(JWT.port, "/files?room=team-x&token=" + tok_a, "POST",
                     {"Content-Length": str(len(body))}, body=body)
    assert r.status == 201, r
    url = json.loads(r.body)["url"]
    r = http_request(JWT.port, "/files?room=team-x", "POST",
                     {"Authorization": "Bearer " + tok_a, "Content-Length": "3"}, body=b"abc")
    assert r.status == 201, r
    assert http_request(JWT.port, "/files?room=general&token=" + tok_a, "POST",
                        {"Content-Length": "3"}, body=b"abc").status == 403
    assert http_request(JWT.port, "/files?room=team-x&user=alice", "POST",
                        {"Content-Length": "3"}, body=b"abc").status == 401
    assert http_request(JWT.port, "/files?room=team-x&token=garbage", "POST",
                        {"Content-Length": "3"}, body=b"abc").status == 401
    expired = make_jwt({"sub": "alice", "exp": int(time.time()) - 10}, SECRET)
    assert http_request(JWT.port, f"{url}?token={expired}", "GET").status == 401
    r = http_request(JWT.port, url, "GET", {"Authorization": "Bearer " + tok_a})
    assert r.status == 200 and r.body == body, r
    assert http_request(JWT.port, f"{url}?token={tok_c}", "GET").status == 403
    assert http_request(JWT.port, url, "GET", {"Authorization": "Basic YTpi"}).status == 401


@timeout(30)
def test_store_permissions_and_ids():
    meta = stored(SRV, b"perm")
    assert stat.S_IMODE(os.stat(DIR).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(DIR, meta["id"])).st_mode) == 0o600
    ids = {stored(SRV, b"x", name="../../etc/passwd")["id"] for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert not os.path.exists(os.path.join(os.path.dirname(DIR), "etc"))


@itest(30)
async def test_file_attachments_in_chat():
    meta = stored(SRV, b"\x89PNG....", ctype="image/png", name="cat.png")
    a = await connect(SRV, "fa-alice")
    b = await connect(SRV, "fa-bob")
    assert a.welcome["payload"]["limits"]["maxFile"] == MAX
    room = "files-chat-" + os.urandom(3).hex()
    await a.join(room)
    await b.join(room)
    att = {"type": "file", "url": meta["url"], "name": "cat.png", "size": meta["size"], "mime": "image/png"}
    await a.chat(room, "look", attachments=[att])
    got = await b.recv_until(lambda f: f.get("type") == "chat" and f["payload"]["room"] == room)
    assert got["payload"]["attachments"] == [att], got
    h = await b.expect("history", {"room": room}, want="history")
    assert h["messages"][-1]["attachments"] == [att], h
    # The archive keeps a file attachment's fields.
    g = await connect(GRID, "fa-grid")
    await g.join(room)
    await g.chat(room, "archived", attachments=[att])
    wait_for(lambda: any(d["content"] == "archived" for d in MONGO.docs(room)), 20, what="archived")
    assert [d["attachments"] for d in MONGO.docs(room) if d["content"] == "archived"] == [[att]]
    for bad in ({"type": "file", "url": "/files/../../etc"}, {"type": "file", "url": "https://x.test/a"},
                {"type": "file", "url": meta["url"], "size": -1}, {"type": "file", "url": meta["url"], "name": 5},
                {"type": "image", "url": meta["url"]}):
        await a.expect("chat", {"room": room, "content": "x", "attachments": [bad]}, want="error:bad_request")


@itest(30)
async def test_default_limit_in_welcome():
    from chatclient import ChatClient
    tok = make_jwt({"sub": "dl", "exp": int(time.time()) + 600}, SECRET)
    c = await ChatClient.open(JWT.port, "dl", timeout=5, path="/ws?token=" + tok)
    try:
        assert c.welcome["payload"]["limits"]["maxFile"] == 10 * 1024 * 1024
    finally:
        await c.close()
