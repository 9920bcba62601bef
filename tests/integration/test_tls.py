"""
Integration tests of native TLS (--tls-cert, --tls-key, --tls-port): wss://
chat across workers and beside plain ws://, https for /healthz and files
(a 3 MB body streamed both ways, checked byte for byte), certificate
reload on HUP (swapped in place: old connections stay, worker pids stay;
bad files rejected; other changes replace the workers as before), what
the TLS port does with plain HTTP, garbage, a truncated ClientHello and a
client that never finishes its handshake, protocol versions (1.2 and 1.3
only) and ALPN, the handshake counters of /metrics, a chain file, a
TLS-only --port, and --check-config with bad files. Then the TLS layer
under stress: records cut at any byte (handshake, upgrade, a 2 MB upload),
a first request in the same TCP segment as the client's Finished, a slow
wss consumer (1013 / dropped), a stalled https download (cut off), wss
with permessage-deflate, a TTIN worker and a USR2 upgrade serving TLS, and
last a HUP with nothing changed (replaces SRV's workers, as before TLS).

Certificates are made with the openssl CLI (harness.make_cert): ECDSA
P-256, self-signed, CN=localhost, SAN IP:127.0.0.1 and DNS:localhost.

Run: /usr/bin/python3 tests/integration/run.py test_tls
"""

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import warnings

import harness
from harness import (log_events, metrics, Chatd, cert_der, fingerprint, http_get, https_request, make_cert,
                     make_redis, peer_cert_der, timeout, tls_connect, tls_context, wait_for)
from chatclient import ChatClient, clients_on_distinct_workers, close_all, itest, track, worker_of

REDIS = None
SRV = None          # TLS on SRV.tls_port beside plain on SRV.port, 2 workers
_EXTRA = {}         # other servers, started on first use
TAG = os.urandom(3).hex()
FAST = ["--rate", "100000", "--burst", "100000"]
HANDSHAKE_TIMEOUT = 2


def setup_module():
    global REDIS, SRV
    if shutil.which(harness.OPENSSL) is None:
        raise AssertionError("the openssl CLI is missing (Debian package openssl; scripts/setup --test)")
    REDIS = make_redis("redis-tls")
    SRV = Chatd(REDIS, workers=2, tls=True, name="tls",
                args=FAST + ["--handshake-timeout", str(HANDSHAKE_TIMEOUT)]).start()
    assert SRV.tls_port and SRV.tls_port != SRV.port, \
        f"ready line: port={SRV.port} tls_port={SRV.tls_port}"


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


def R(name):
    return f"{name}-{TAG}"


def ctx():
    """A client context trusting SRV's certificate (hostname checked)."""
    return SRV.client_context()


async def wss(srv, user, context=None, **kw):
    """A tracked wss:// client of srv's TLS port."""
    return track(await ChatClient.open(srv.tls_port, user, tls=context or srv.client_context(), **kw))


async def ws_plain(srv, user):
    return track(await ChatClient.open(srv.port, user, tls=False))


def tail(text, n=25):
    return "\n".join(text.splitlines()[-n:])


def log_size(srv):
    try:
        return os.path.getsize(srv.log_path)
    except OSError:
        return 0


def replace_file(path, data):
    """Writes path atomically (a reader never sees half a file)."""
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def read_until_closed(s, limit):
    """(bytes received, True) once the peer closed (EOF or reset) within
    limit seconds, else (bytes, False)."""
    s.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def client_hello(context=None, server_hostname="localhost"):
    """The bytes of a real ClientHello (TLS records) as `context` makes it."""
    context = context or tls_context(verify=False)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    so = context.wrap_bio(inc, out, server_hostname=server_hostname)
    try:
        so.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert data[:1] == b"\x16" and len(data) > 60, data[:16]
    return data


def serves_tls(srv, what):
    """srv still completes TLS handshakes and answers /healthz over https."""
    r = https_request(srv.tls_port, "/healthz", ctx=srv.client_context(), timeout=5)
    assert r.status == 200, f"{what}: https /healthz answered {r.status} {r.body[:100]!r}"


def extra(name, **kw):
    """A server with other settings on the shared Redis, started on first use."""
    srv = _EXTRA.get(name)
    if srv is None or not srv.running():
        srv = Chatd(REDIS, name=name, **kw).start()
        _EXTRA[name] = srv
    return srv


async def chat_both_ways(a, b, room, what):
    """a and b (joined to room) each send a chat the other receives."""
    for x, y in ((a, b), (b, a)):
        content = f"{what}: {x.user} to {y.user} {os.urandom(3).hex()}"
        ack = await x.chat(room, content)
        _, f = await y.wait(lambda f: f.get("type") == "chat" and f["payload"].get("room") == room
                            and f["payload"].get("seq") == ack["seq"], 5,
                            what=f"{what}: chat seq {ack['seq']} from {x.user}")
        assert f["payload"]["content"] == content and f["payload"]["sender"] == x.user, f


# --------------------------------------------------------------------------
# 1. wss:// chat


@itest(30)
async def test_wss_round_trip_between_workers():
    want = cert_der(SRV.cert_path)
    pairs = await clients_on_distinct_workers(SRV, f"tw{TAG}-", 2, tls=ctx())
    (a, wa), (b, wb) = pairs
    for c, _ in pairs:
        track(c)
        so = c.ssl_object()
        assert so is not None, f"{c.user}: not a TLS connection ({c.url})"
        assert so.version() in ("TLSv1.2", "TLSv1.3"), so.version()
        assert c.peer_cert() == want, f"{c.user}: shown {fingerprint(c.peer_cert())[:16]}, " \
                                      f"want {fingerprint(want)[:16]}"
        assert c.welcome["type"] == "welcome", c.welcome
    assert wa != wb
    room = R("wss")
    await a.join(room)
    await b.join(room)
    await chat_both_ways(a, b, room, "wss across workers")
    # a burst, in order on both ends (several records per write)
    acks = [await a.chat(room, f"burst {i} " + "x" * 3000) for i in range(30)]
    last = acks[-1]["seq"]
    await b.wait_seq(room, last, 10)
    got = [p["content"].split(" ")[1] for p in b.chats(room) if p["seq"] >= acks[0]["seq"]]
    assert got == [str(i) for i in range(30)], got
    assert all(len(p["content"]) == len(f"burst {i} ") + 3000
               for i, p in enumerate(x for x in b.chats(room) if x["seq"] >= acks[0]["seq"]))
    print(f"    wss: workers {wa} and {wb}, {a.ssl_object().version()} "
          f"{a.ssl_object().cipher()[0]}")


@itest(30)
async def test_wss_and_plain_ws_in_one_room():
    room = R("mixed")
    t = await wss(SRV, f"mixT{TAG}")
    p = await ws_plain(SRV, f"mixP{TAG}")
    assert t.url.startswith("wss://") and f":{SRV.tls_port}/" in t.url, t.url
    assert p.url.startswith("ws://") and f":{SRV.port}/" in p.url, p.url
    assert p.ssl_object() is None
    await t.join(room)
    await p.join(room)
    await chat_both_ways(t, p, room, "wss and ws side by side")
    # both ends see one order
    for i in range(10):
        await (t if i % 2 else p).chat(room, f"alt {i}")
    last = max(t.max_seq(room), p.max_seq(room))
    await t.wait_seq(room, last, 5)
    await p.wait_seq(room, last, 5)
    assert t.seqs(room) == p.seqs(room), (t.seqs(room), p.seqs(room))
    assert [x["content"] for x in t.chats(room)] == [x["content"] for x in p.chats(room)]


# --------------------------------------------------------------------------
# 2. https: /healthz, /metrics, the web client, files


@timeout(45)
def test_https_healthz_and_file_round_trip():
    c = ctx()
    r = https_request(SRV.tls_port, "/healthz", ctx=c)
    assert r.status == 200, r
    assert r.tls["version"] in ("TLSv1.2", "TLSv1.3"), r.tls
    r = https_request(SRV.tls_port, "/", ctx=c)
    assert r.status == 200 and b"<html" in r.body.lower(), (r.status, r.body[:200])
    r = https_request(SRV.tls_port, "/metrics", ctx=c)
    assert r.status == 200 and b"chatd_tls_handshakes_total" in r.body, (r.status, r.body[:300])

    room = R("files")
    body = os.urandom(3 * 1024 * 1024 + 4321) + b"\0" * 1000 + b"the end"
    q = urllib.parse.urlencode({"room": room, "user": "alice", "name": "big.bin"})
    t0 = time.monotonic()
    r = https_request(SRV.tls_port, f"/files?{q}", "POST",
                      {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))},
                      body=body, ctx=c, timeout=30)
    assert r.status == 201, (r.status, r.body[:300])
    meta = json.loads(r.body)
    assert meta["size"] == len(body) and meta["url"] == f"/files/{meta['id']}", meta
    up = time.monotonic() - t0
    r = https_request(SRV.tls_port, meta["url"] + "?user=bob", ctx=c, timeout=30)
    assert r.status == 200, (r.status, r.body[:300])
    assert len(r.body) == len(body), f"downloaded {len(r.body)} bytes of {len(body)}"
    assert hashlib.sha256(r.body).digest() == hashlib.sha256(body).digest(), \
        f"download differs from upload (first difference at byte " \
        f"{next(i for i, (x, y) in enumerate(zip(r.body, body)) if x != y)})"
    # the same file over plain http, and a range over https
    r2 = harness.http_request(SRV.port, meta["url"] + "?user=carol", timeout=30)
    assert r2.status == 200 and r2.body == body, (r2.status, len(r2.body))
    r3 = https_request(SRV.tls_port, meta["url"] + "?user=bob", headers={"Range": "bytes=1000000-1999999"},
                       ctx=c, timeout=30)
    assert r3.status == 206 and r3.body == body[1000000:2000000], (r3.status, len(r3.body))

    # keep-alive: several requests on one TLS connection
    import http.client
    conn = http.client.HTTPSConnection("127.0.0.1", SRV.tls_port, timeout=10, context=c)
    try:
        for path in ("/healthz", "/metrics", meta["url"] + "?user=dave", "/healthz"):
            conn.request("GET", path)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, (path, resp.status, data[:200])
            if path.startswith("/files/"):
                assert data == body, f"keep-alive download: {len(data)} bytes"
    finally:
        conn.close()

    # a chunked upload (no Content-Length) streamed over TLS
    chunks = [os.urandom(50_000 + i) for i in range(25)]
    q = urllib.parse.urlencode({"room": room, "user": "alice", "name": "chunked.bin"})
    r = https_request(SRV.tls_port, f"/files?{q}", "POST", {"Content-Type": "application/octet-stream"},
                      body=iter(chunks), ctx=c, timeout=30)
    assert r.status == 201, (r.status, r.body[:300])
    meta2 = json.loads(r.body)
    whole = b"".join(chunks)
    assert meta2["size"] == len(whole), meta2
    r = https_request(SRV.tls_port, meta2["url"] + "?user=bob", ctx=c, timeout=30)
    assert r.status == 200 and r.body == whole, (r.status, len(r.body))
    print(f"    https: {len(body)} bytes up in {up:.2f}s and back, identical; chunked {len(whole)} too")


# --------------------------------------------------------------------------
# 3. versions and ALPN


@timeout(20)
def test_versions_and_alpn():
    for v, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        c = SRV.client_context(minimum=v, maximum=v)
        with tls_connect(SRV.tls_port, c) as s:
            assert s.version() == name, (name, s.version())
        r = https_request(SRV.tls_port, "/healthz", ctx=c)
        assert r.status == 200 and r.tls["version"] == name, (name, r.status, r.tls)

    c = SRV.client_context(alpn=["h2", "http/1.1"])
    with tls_connect(SRV.tls_port, c) as s:
        assert s.selected_alpn_protocol() == "http/1.1", s.selected_alpn_protocol()
    c = SRV.client_context(alpn=["http/1.1"])
    r = https_request(SRV.tls_port, "/healthz", ctx=c)
    assert r.status == 200 and r.tls["alpn"] == "http/1.1", r.tls

    for v, name in ((ssl.TLSVersion.TLSv1_1, "TLSv1.1"), (ssl.TLSVersion.TLSv1, "TLSv1.0")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old = tls_context(verify=False)
            try:
                old.minimum_version = v
                old.maximum_version = v
                old.set_ciphers("ALL:@SECLEVEL=0")
                hello = client_hello(old)
            except (ssl.SSLError, ValueError, AssertionError) as e:
                print(f"    note: this Python/OpenSSL cannot offer {name} ({e}); not tried")
                continue
        assert hello[9:11] in (b"\x03\x01", b"\x03\x02"), hello[:11].hex()
        try:
            with tls_connect(SRV.tls_port, old) as s:
                got = s.version()
        except (ssl.SSLError, ConnectionError, OSError) as e:
            print(f"    {name} refused: {type(e).__name__}: {str(e)[:90]}")
        else:
            raise AssertionError(f"a {name}-only client completed a handshake ({got})")
    serves_tls(SRV, "after refusing old versions")


# --------------------------------------------------------------------------
# 4. what is not TLS on the TLS port


def healthz_over(sock):
    """GET /healthz on an open TLS socket; returns the status line."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = b""
    while True:
        try:
            d = sock.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
        if not d:
            break
        got += d
    return got.split(b"\r\n", 1)[0]


@timeout(40)
def test_session_resumes_on_every_worker():
    """A ticket issued by one worker resumes on the others: the master makes
    the ticket keys and every worker inherits them (the kernel spreads one
    client's connections over the workers, so per-worker keys would make
    most resumptions full handshakes)."""
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        c = SRV.client_context(minimum=version, maximum=version)
        first = c.wrap_socket(socket.create_connection(("127.0.0.1", SRV.tls_port), timeout=5),
                              server_hostname="127.0.0.1")
        assert healthz_over(first).startswith(b"HTTP/1.1 200"), version
        session = first.session
        first.close()
        assert session is not None and session.has_ticket, f"{version.name}: no ticket issued"
        workers, refused = set(), []
        for i in range(40):
            s = c.wrap_socket(socket.create_connection(("127.0.0.1", SRV.tls_port), timeout=5),
                              server_hostname="127.0.0.1", session=session)
            try:
                w = worker_of(SRV, s.getsockname()[1])
                if not s.session_reused:
                    refused.append(w)
                workers.add(w)
                assert healthz_over(s).startswith(b"HTTP/1.1 200")
            finally:
                s.close()
            if len(workers - {None}) >= 2 and i >= 7:
                break
        assert not refused, f"{version.name}: the ticket did not resume on workers {refused} " \
            f"(seen {sorted(w for w in workers if w)})"
        assert len(workers - {None}) >= 2, f"{version.name}: every connection landed on {workers}"
        print(f"    {version.name}: resumed on workers {sorted(workers - {None})}")


@timeout(30)
def test_plain_http_on_tls_port_gets_400():
    requests = {
        "GET /healthz": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "ws upgrade": (b"GET /ws?user=plain HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: " + harness.new_ws_key().encode() +
                       b"\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        "POST /files": b"POST /files?room=r&user=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    }
    for what, req in requests.items():
        with socket.create_connection(("127.0.0.1", SRV.tls_port), timeout=5) as s:
            s.sendall(req)
            data, closed = read_until_closed(s, 5)
        assert closed, f"{what}: the TLS port kept a plain HTTP connection open 5s (got {data[:200]!r})"
        assert data.startswith(b"HTTP/1.1 400"), f"{what}: answered {data[:200]!r}"
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"tls" in body.lower() or b"https" in body.lower(), \
            f"{what}: 400 body does not mention TLS: {data[:300]!r}"
    serves_tls(SRV, "after plain HTTP on the TLS port")


@timeout(40)
def test_garbage_and_truncated_client_hello_are_closed():
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    hello = client_hello(tls_context(verify=False))
    rec_len = int.from_bytes(hello[3:5], "big")
    body = hello[5:5 + rec_len]
    # a ClientHello cut short inside, its lengths made to agree with the cut
    cut = body[:4 + 40]
    inner = bytes([cut[0]]) + (len(cut) - 4).to_bytes(3, "big") + cut[4:]
    malformed = hello[:3] + len(inner).to_bytes(2, "big") + inner
    cases = [
        ("random 4 KiB", bytes(rng.randrange(256) for _ in range(4096)), False),
        ("random 4 KiB after a handshake record header", b"\x16\x03\x01\x10\x00" +
         bytes(rng.randrange(256) for _ in range(4096)), False),
        ("half a ClientHello, then EOF", hello[:len(hello) // 2], True),
        ("half a ClientHello, then silence", hello[:len(hello) // 2], False),
        ("a ClientHello truncated inside", malformed, False),
        ("a record of zeros", b"\x16\x03\x01\x00\x05" + b"\0" * 5, False),
    ]
    for what, data, half_close in cases:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", SRV.tls_port), timeout=5) as s:
            try:
                s.sendall(data)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            got, closed = read_until_closed(s, HANDSHAKE_TIMEOUT + 5)
        took = time.monotonic() - t0
        assert closed, f"{what} (seed {seed}): still open {took:.1f}s later"
        if got:
            # a TLS alert record (21), or the plain-text 400 of a request that looked like HTTP
            assert got[:1] == b"\x15" or got.startswith(b"HTTP/1.1 400"), \
                f"{what} (seed {seed}): answered {got[:60]!r}"
        print(f"    {what}: closed after {took:.2f}s" + (f", {got[:1].hex()} record first" if got else ""))
        serves_tls(SRV, f"after {what}")
    assert SRV.running() and len(SRV.worker_pids()) == 2, SRV.worker_pids()


@timeout(25)
def test_silent_client_closed_after_handshake_timeout():
    socks = []
    t0 = time.monotonic()
    try:
        for _ in range(3):
            socks.append(socket.create_connection(("127.0.0.1", SRV.tls_port), timeout=5))
        # meanwhile others are served
        serves_tls(SRV, "while silent clients wait")
        times = []
        for s in socks:
            _, closed = read_until_closed(s, HANDSHAKE_TIMEOUT + 6 - (time.monotonic() - t0))
            times.append(time.monotonic() - t0)
            assert closed, f"a silent client still open after {times[-1]:.1f}s " \
                           f"(--handshake-timeout {HANDSHAKE_TIMEOUT})"
    finally:
        for s in socks:
            s.close()
    assert min(times) >= HANDSHAKE_TIMEOUT - 0.6, \
        f"a silent client was closed after {min(times):.2f}s, before --handshake-timeout {HANDSHAKE_TIMEOUT}"
    print(f"    silent clients closed after {', '.join(f'{t:.2f}s' for t in times)}")


# --------------------------------------------------------------------------
# 5. /metrics counts handshakes


@timeout(30)
def test_metrics_count_handshakes_and_failures():
    m0 = metrics(SRV.port)
    for name in ("chatd_tls_handshakes_total", "chatd_tls_handshake_failures_total"):
        assert name in m0, f"/metrics has no {name}: {sorted(k for k in m0 if 'tls' in k)}"
    h0, f0 = m0["chatd_tls_handshakes_total"], m0["chatd_tls_handshake_failures_total"]
    for _ in range(4):
        peer_cert_der(SRV.tls_port, ctx())
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", SRV.tls_port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x00\x05" + b"\0" * 5)
            read_until_closed(s, 5)
    wait_for(lambda: metrics(SRV.port)["chatd_tls_handshakes_total"] >= h0 + 4, 5,
             what=f"chatd_tls_handshakes_total to grow by 4 from {h0}")
    wait_for(lambda: metrics(SRV.port)["chatd_tls_handshake_failures_total"] >= f0 + 3, 5,
             what=f"chatd_tls_handshake_failures_total to grow by 3 from {f0}")
    m1 = metrics(SRV.port)
    # plain connections are not TLS handshakes
    for _ in range(5):
        assert http_get(SRV.port, "/healthz").status == 200
    time.sleep(0.3)
    m2 = metrics(SRV.port)
    assert m2["chatd_tls_handshakes_total"] == m1["chatd_tls_handshakes_total"], (m1, m2)
    print(f"    handshakes {h0:.0f} -> {m1['chatd_tls_handshakes_total']:.0f}, "
          f"failures {f0:.0f} -> {m1['chatd_tls_handshake_failures_total']:.0f}")


# --------------------------------------------------------------------------
# 6. certificate reload on HUP


def reload_srv():
    """A server of its own whose certificate files the HUP tests rewrite."""
    return extra("tls-reload", workers=2, tls=True, args=FAST)


async def wait_tls_reloaded(srv, off, workers, timeout=8):
    """Waits for event=tls_reloaded from the master and from every worker."""
    def done():
        text = srv._read_log(off)
        if not log_events(text, "tls_reloaded", srv.pid):
            return False
        return all(log_events(text, "tls_reloaded", w) for w in workers)
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            text = srv._read_log(off)
            raise AssertionError(f"no event=tls_reloaded from the master ({srv.pid}) and every worker "
                                 f"{workers} within {timeout}s:\n{tail(text)}")
        await asyncio.sleep(0.05)


def certs_by_worker(srv, min_conns=6, tries=40):
    """{worker pid: fingerprints it showed} from fresh TLS connections, at
    least min_conns and until every worker was seen (up to tries)."""
    from chatclient import server_side_row
    workers = srv.worker_pids()
    seen = {}
    for i in range(tries):
        with tls_connect(srv.tls_port) as s:
            der = s.getpeercert(binary_form=True)
            lport = s.getsockname()[1]
            pid = None
            deadline = time.monotonic() + 2
            while pid is None and time.monotonic() < deadline:
                row = server_side_row(srv.tls_port, lport)
                if row is not None:
                    pid = next((w for w in workers if row[1] in harness.socket_inodes(w)), None)
                if pid is None:
                    time.sleep(0.01)
        seen.setdefault(pid, set()).add(fingerprint(der))
        if i + 1 >= min_conns and all(w in seen for w in workers):
            break
    return seen


async def certs_shown(srv, n=8):
    """Fingerprints shown to fresh connections (at least n), after asserting
    that every worker was among those that answered."""
    seen = await asyncio.to_thread(certs_by_worker, srv, n)
    workers = srv.worker_pids()
    assert all(w in seen for w in workers), \
        f"fresh connections reached only {sorted(k for k in seen if k)} of workers {workers}"
    return set().union(*seen.values())


@itest(45)
async def test_hup_swaps_certificate_in_place():
    srv = reload_srv()
    old_der = cert_der(srv.cert_path)
    old_ctx = tls_context(srv._start_cert_copy())
    room = R("swap")
    pairs = await clients_on_distinct_workers(srv, f"sw{TAG}-", 2, tls=old_ctx)
    (a, _), (b, _) = pairs
    track(a), track(b)
    plain = await ws_plain(srv, f"swp{TAG}")
    for c in (a, b, plain):
        await c.join(room)
    assert a.peer_cert() == old_der and b.peer_cert() == old_der
    workers = srv.worker_pids()
    assert len(workers) == 2, workers

    new_cert, new_key = make_cert(cn="reloaded.test")
    new_der = cert_der(new_cert)
    assert new_der != old_der
    replace_file(srv.key_path, read_bytes(new_key))
    replace_file(srv.cert_path, read_bytes(new_cert))
    off = log_size(srv)
    t0 = time.monotonic()
    os.kill(srv.pid, signal.SIGHUP)
    await wait_tls_reloaded(srv, off, workers)
    took = time.monotonic() - t0

    shown = await certs_shown(srv)
    assert shown == {fingerprint(new_der)}, \
        f"after the reload new connections were shown {sorted(s[:16] for s in shown)}, " \
        f"want only the new {fingerprint(new_der)[:16]} (old {fingerprint(old_der)[:16]})"
    # a client trusting only the new certificate verifies it
    n = await wss(srv, f"swn{TAG}", context=tls_context(new_cert))
    assert n.peer_cert() == new_der
    await n.join(room)
    # the old connections were not touched and keep chatting, with everybody
    await asyncio.sleep(0.5)
    for c in (a, b, plain):
        assert not c.closed, f"{c.user}: closed by the certificate reload (code {c.close_code})"
    await chat_both_ways(a, b, room, "old wss connections after the reload")
    await chat_both_ways(a, n, room, "old and new wss connections")
    await chat_both_ways(b, plain, room, "old wss and plain ws")
    assert srv.worker_pids() == workers, f"workers {workers} replaced by {srv.worker_pids()}"
    text = srv._read_log(off)
    assert not log_events(text, "tls_reload_rejected"), tail(text)
    print(f"    reloaded in {took:.2f}s: new connections see {fingerprint(new_der)[:16]}, "
          f"old ones kept {fingerprint(old_der)[:16]}; workers {workers} unchanged")


@itest(60)
async def test_hup_with_bad_files_keeps_the_old_certificate():
    srv = reload_srv()
    good_cert, good_key = read_bytes(srv.cert_path), read_bytes(srv.key_path)
    cur_der = cert_der(srv.cert_path)
    cur_ctx = tls_context(srv.cert_path)        # what the server shows now (new if the swap test ran)
    assert await certs_shown(srv, 4) == {fingerprint(cur_der)}, "the server does not show its current files"
    room = R("badreload")
    pairs = await clients_on_distinct_workers(srv, f"br{TAG}-", 2, tls=cur_ctx)
    (a, _), (b, _) = pairs
    track(a), track(b)
    await a.join(room)
    await b.join(room)
    workers = srv.worker_pids()

    other_cert, other_key = make_cert(cn="other.test")
    cases = [
        ("a key that does not match the certificate", lambda: replace_file(srv.key_path, read_bytes(other_key))),
        ("a garbage certificate file", lambda: replace_file(srv.cert_path, os.urandom(700))),
        ("a truncated certificate PEM", lambda: replace_file(srv.cert_path, good_cert[:len(good_cert) // 2])),
        ("a missing key file", lambda: os.remove(srv.key_path)),
        ("a new certificate with the old key", lambda: replace_file(srv.cert_path, read_bytes(other_cert))),
    ]
    try:
        for what, spoil in cases:
            spoil()
            off = log_size(srv)
            os.kill(srv.pid, signal.SIGHUP)
            deadline = time.monotonic() + 6
            while not log_events(srv._read_log(off), "tls_reload_rejected", srv.pid):
                assert time.monotonic() < deadline, \
                    f"{what}: no event=tls_reload_rejected from the master after HUP:\n{tail(srv._read_log(off))}"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.8)        # had workers been replaced or reloaded, it would show by now
            text = srv._read_log(off)
            assert srv.running(), f"{what}: master exited:\n{tail(text)}"
            assert srv.worker_pids() == workers, f"{what}: workers {workers} became {srv.worker_pids()}"
            assert not log_events(text, "tls_reloaded"), f"{what}: something reloaded:\n{tail(text)}"
            shown = await certs_shown(srv, 6)
            assert shown == {fingerprint(cur_der)}, f"{what}: new connections shown {shown}"
            for c in (a, b):
                assert not c.closed, f"{what}: {c.user} closed (code {c.close_code})"
            await chat_both_ways(a, b, room, f"after a rejected reload ({what})")
            line = log_events(text, "tls_reload_rejected", srv.pid)[0]
            print(f"    rejected ({what}): {line.split('event=', 1)[1][:140]}")
            replace_file(srv.cert_path, good_cert)
            replace_file(srv.key_path, good_key)
    finally:
        replace_file(srv.cert_path, good_cert)
        replace_file(srv.key_path, good_key)


def write_config(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


@itest(45)
async def test_hup_with_other_changes_replaces_workers_with_new_certificate():
    d = os.path.join(harness.artifacts_dir(), f"tlscfg-{os.urandom(3).hex()}")
    os.makedirs(d)
    cfg = os.path.join(d, "chatd.conf")
    base = f"# tls test config\n{harness.redis_config_line(REDIS)}\nburst = 1000\n"
    write_config(cfg, base + "rate = 1000\n")
    cert, key = make_cert(d, name="server")
    srv = Chatd(default_args=False, name="tls-cfg", tls=True, cert=(cert, key),
                args=["--port", str(harness.free_port()), "--bind", "127.0.0.1", "--workers", "2", "--config", cfg,
                      "--files-dir", os.path.join(harness.artifacts_dir(), "files")])
    srv.start()
    try:
        assert srv.tls_port and srv.tls_port != srv.port, (srv.port, srv.tls_port)
        old_der = cert_der(cert)
        room = R("cfgreload")
        old = await wss(srv, f"cfo{TAG}", context=tls_context(srv._start_cert_copy()))
        await old.join(room)
        workers = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(srv.worker_pids()), 5,
                           what="2 workers")
        new_cert, new_key = make_cert(cn="changed.test")
        replace_file(key, read_bytes(new_key))
        replace_file(cert, read_bytes(new_cert))
        write_config(cfg, base + "rate = 2000\n")
        off = log_size(srv)
        os.kill(srv.pid, signal.SIGHUP)
        assert await old.wait_closed(10), "the old wss client is still open 10s after a HUP that changed settings"
        assert old.close_code == 1001, f"closed with {old.close_code}, want 1001"
        fresh = wait_for(lambda: (lambda w: w if len(w) == 2 and not set(w) & set(workers) else None)(
            srv.worker_pids()), 10, what=f"2 fresh workers replacing {workers}")
        text = srv._read_log(off)
        assert log_events(text, "reload"), "no event=reload line:\n" + tail(text)
        shown = await certs_shown(srv, 6)
        assert shown == {fingerprint(cert_der(new_cert))}, \
            f"fresh workers show {shown}, want the new certificate (old was {fingerprint(old_der)[:16]})"
        n1 = await wss(srv, f"cfn1{TAG}", context=tls_context(new_cert))
        n2 = await ws_plain(srv, f"cfn2{TAG}")
        await n1.join(room)
        await n2.join(room)
        await chat_both_ways(n1, n2, room, "after the replacing reload")
        print(f"    workers {workers} -> {fresh}; old client closed 1001; new certificate served")
    finally:
        await close_all()
        srv.stop()


# --------------------------------------------------------------------------
# 7. other layouts: TLS on --port only, a chain file


@itest(30)
async def test_tls_only_port():
    srv = extra("tls-only", workers=1, tls="only", args=FAST)
    assert srv.tls_port == srv.port, f"ready line: port={srv.port} tls_port={srv.tls_port}"
    c = await wss(srv, f"only{TAG}")
    room = R("only")
    await c.join(room)
    ack = await c.chat(room, "over TLS only")
    assert ack["seq"] >= 1
    r = await asyncio.to_thread(https_request, srv.port, "/healthz", ctx=srv.client_context())
    assert r.status == 200, r
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = await asyncio.to_thread(read_until_closed, s, 5)
    assert closed and data.startswith(b"HTTP/1.1 400"), (closed, data[:200])


@itest(30)
async def test_certificate_chain_file():
    d = os.path.join(harness.artifacts_dir(), f"chain-{os.urandom(3).hex()}")
    root = make_cert(d, cn="chatd test root", name="root", ca_ext=True)
    inter = make_cert(d, cn="chatd test intermediate", name="inter", ca=root, ca_ext=True)
    leaf = make_cert(d, cn="localhost", name="leaf", ca=inter)
    chain = os.path.join(d, "chain.pem")
    with open(chain, "wb") as f:
        f.write(read_bytes(leaf[0]) + read_bytes(inter[0]))
    srv = extra("tls-chain", workers=1, tls=True, cert=(chain, leaf[1]), args=FAST)
    # a client trusting only the root verifies: the server sent the intermediate
    c = await wss(srv, f"chain{TAG}", context=tls_context(root[0]))
    assert c.peer_cert() == cert_der(leaf[0])
    await c.join(R("chain"))


# --------------------------------------------------------------------------
# 8. --check-config


@timeout(30)
def test_check_config_with_bad_files():
    d = os.path.join(harness.artifacts_dir(), f"check-{os.urandom(3).hex()}")
    cert, key = make_cert(d, name="good")
    other_cert, other_key = make_cert(d, name="other")
    garbage = os.path.join(d, "garbage.pem")
    with open(garbage, "wb") as f:
        f.write(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    missing = os.path.join(d, "missing.key")

    def check(*args):
        r = subprocess.run([harness.chatd_bin(), "--check-config", "--redis-url", REDIS.url, *args],
                           capture_output=True, text=True, timeout=15, env=harness._child_env(), cwd=d)
        return r.returncode, r.stdout + r.stderr

    rc, out = check("--tls-cert", cert, "--tls-key", key)
    assert rc == 0 and "configuration ok" in out, (rc, out)
    rc, out = check("--tls-cert", cert, "--tls-key", key, "--tls-port", "0")
    assert rc == 0 and "configuration ok" in out, (rc, out)
    bad = {
        "a missing key file": ("--tls-cert", cert, "--tls-key", missing),
        "a missing certificate file": ("--tls-cert", os.path.join(d, "missing.crt"), "--tls-key", key),
        "a garbage certificate": ("--tls-cert", garbage, "--tls-key", key),
        "a key that does not match": ("--tls-cert", cert, "--tls-key", other_key),
        "a certificate without a key": ("--tls-cert", cert),
        "a key without a certificate": ("--tls-key", key),
    }
    for what, args in bad.items():
        rc, out = check(*args)
        assert rc == 2, f"--check-config with {what}: exit {rc}, want 2; output:\n{out}"
        assert out.strip() and "configuration ok" not in out, f"{what}: output {out!r}"
        print(f"    {what}: exit 2, {out.strip().splitlines()[-1][:120]}")


# --------------------------------------------------------------------------
# 9. the TLS layer under stress: records cut anywhere, slow readers


class Dribble:
    """A TLS client over a raw socket (ssl.SSLObject on memory BIOs) that
    sends its ciphertext in random pieces of 1..max_piece bytes, so the
    server reads records cut at any byte, across many reads. Has the
    socket methods RawWS uses (sendall, recv, settimeout, close)."""

    def __init__(self, port, context, rng, max_piece, pause=0.0, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.inc, self.out, server_hostname="127.0.0.1")
        self.rng, self.max_piece, self.pause = rng, max_piece, pause
        self.pieces = 0

    def _flush(self):
        data = self.out.read()
        i = 0
        while i < len(data):
            n = self.rng.randint(1, self.max_piece)
            self.sock.sendall(data[i:i + n])
            self.pieces += 1
            i += n
            if self.pause:
                time.sleep(self.pause)

    def _feed(self):
        d = self.sock.recv(65536)
        if not d:
            self.inc.write_eof()
        else:
            self.inc.write(d)
        return d

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return self
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed():
                    raise ConnectionError("closed during the handshake")

    def sendall(self, data):
        view = memoryview(data)
        while view:
            n = self.obj.write(view[:65536])
            view = view[n:]
            self._flush()

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                if not self._feed():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def settimeout(self, t):
        self.sock.settimeout(t)

    def setsockopt(self, *a):
        self.sock.setsockopt(*a)

    def close(self):
        self.sock.close()


@timeout(40)
def test_records_cut_at_any_byte():
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # the handshake and an upgrade a few bytes at a time, with pauses
    d = Dribble(SRV.tls_port, ctx(), rng, 7, pause=0.0005).handshake()
    ws = harness.RawWS(SRV.tls_port, connect=False)
    ws.sock = d
    r = ws.handshake(f"/ws?user=dribble{TAG}")
    assert r.status == 101, f"seed {seed}: {r!r}"
    assert ws.recv_json()["type"] == "welcome"
    room = R("dribble")
    ws.send_json({"type": "join", "id": "j1", "payload": {"room": room}})
    f = ws.recv_json()
    while f.get("id") != "j1":
        f = ws.recv_json()
    assert f["type"] == "joined", f
    ws.send_json({"type": "chat", "id": "c1", "payload": {"room": room, "content": "y" * 10000}})
    got = [ws.recv_json() for _ in range(2)]
    assert {g["type"] for g in got} == {"ack", "chat"}, got
    d.close()

    # a 2 MB upload whose records arrive cut into pieces of up to 20000 bytes
    body = os.urandom(2 * 1024 * 1024 + 77)
    d = Dribble(SRV.tls_port, ctx(), rng, 20000).handshake()
    q = urllib.parse.urlencode({"room": room, "user": "alice", "name": "cut.bin"})
    d.sendall(f"POST /files?{q} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
              f"Connection: close\r\n\r\n".encode() + body)
    resp = b""
    while True:
        chunk = d.recv(65536)
        if not chunk:
            break
        resp += chunk
    d.close()
    head, _, rbody = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), f"seed {seed}: upload answered {resp[:300]!r}"
    meta = json.loads(rbody)
    r = harness.http_request(SRV.port, meta["url"] + "?user=bob", timeout=20)     # checked over plain
    assert r.status == 200 and r.body == body, (seed, r.status, len(r.body))
    print(f"    seed {seed}: upgrade and chat in pieces of <= 7 bytes, a 2 MB upload in "
          f"{d.pieces} pieces, intact")


def request_with_finished(port, context, request, timeout=5.0):
    """Completes a TLS handshake on memory BIOs, then sends the client's
    last handshake flight (TLS 1.3: its Finished) and `request` in one TCP
    write, as a client with TCP_NODELAY may. Returns what came back: the
    response head, plus "<close_notify>", "<eof>" or "<timeout>"."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(inc, out, server_hostname="127.0.0.1")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out.pending:
                    sock.sendall(out.read())
                d = sock.recv(65536)
                if not d:
                    return b"<eof during the handshake>"
                inc.write(d)
        obj.write(request)
        sock.sendall(out.read())
        got = b""
        while b"\r\n\r\n" not in got:
            try:
                chunk = obj.read(65536)
                if not chunk:
                    return got + b"<close_notify>"
                got += chunk
            except ssl.SSLWantReadError:
                try:
                    d = sock.recv(65536)
                except socket.timeout:
                    return got + b"<timeout>"
                if not d:
                    return got + b"<eof>"
                inc.write(d)
            except ssl.SSLZeroReturnError:
                return got + b"<close_notify>"
        return got
    finally:
        sock.close()


@timeout(30)
def test_request_in_the_finished_segment():
    """The first request may arrive in the same read as the handshake's end
    (TLS 1.3: the client's Finished), whatever the request is."""
    body = os.urandom(5000)
    q = urllib.parse.urlencode({"room": R("finished"), "user": "alice"})
    r = https_request(SRV.tls_port, f"/files?{q}", "POST", {"Content-Length": str(len(body))},
                      body=body, ctx=ctx())
    assert r.status == 201, r
    url = json.loads(r.body)["url"]
    requests = {
        "GET /healthz": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200"),
        "GET /files/<id>": (f"GET {url}?user=bob HTTP/1.1\r\nHost: x\r\n\r\n".encode(), b"HTTP/1.1 200"),
        "HEAD /files/<id>": (f"HEAD {url}?user=bob HTTP/1.1\r\nHost: x\r\n\r\n".encode(), b"HTTP/1.1 200"),
        "POST /files": (f"POST /files?{q} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode(),
                        b"HTTP/1.1 201"),
        "GET /ws (upgrade)": (f"GET /ws?user=fin{TAG} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {harness.new_ws_key()}\r\n"
                              f"Sec-WebSocket-Version: 13\r\n\r\n".encode(), b"HTTP/1.1 101"),
    }
    failures = []
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        c = SRV.client_context(minimum=version, maximum=version)
        for what, (req, want) in requests.items():
            for _ in range(3):
                got = request_with_finished(SRV.tls_port, c, req)
                if not got.startswith(want):
                    failures.append(f"{version.name} {what}: {got[:60]!r}")
                    break
    assert not failures, "requests sent with the handshake's last flight, answered wrong: " + \
        "; ".join(failures)


@itest(40)
async def test_slow_wss_consumer_closed_others_unaffected():
    srv = extra("tls-slow", workers=1, tls=True, args=["--outbound-limit", "262144"] + FAST)
    room = R("slow")
    s = await wss(srv, f"slS{TAG}")
    n = await wss(srv, f"slN{TAG}")
    await s.join(room)
    await n.join(room)
    slow_user = f"slX{TAG}"

    def open_slow():
        ws = harness.RawWS.open(srv.tls_port, user=slow_user, tls=srv.client_context(), rcvbuf=4096)
        ws.send_json({"type": "join", "id": "j", "payload": {"room": room}})
        while True:
            f = ws.recv_json()
            if f.get("id") == "j":
                assert f["type"] == "joined", f
                return ws
    slow = await asyncio.to_thread(open_slow)
    try:
        slow_port = slow.sock.getsockname()[1]
        big = "z" * 8000
        sent = 0
        t0 = time.monotonic()
        left_at = closed_at = None
        while time.monotonic() - t0 < 20 and (left_at is None or closed_at is None):
            if sent < 1600 and left_at is None:
                for k in range(25):
                    await s.send("chat", {"room": room, "content": big}, id=f"b{sent + k}")
                await s.wait(lambda f: f.get("id") == f"b{sent + 24}", 10, what="the batch's last ack")
                sent += 25
            else:
                await asyncio.sleep(0.1)
            if left_at is None and [p for p in n.of_type("member", room)
                                    if p.get("user") == slow_user and p.get("event") == "leave"]:
                left_at = time.monotonic() - t0
            row = chatclient_row(srv.tls_port, slow_port)
            if closed_at is None and (row is None or row[0] != harness.TCP_ESTABLISHED):
                closed_at = time.monotonic() - t0
        assert left_at is not None, f"no member leave for a non-reading wss member after {sent} x 8 KB"
        assert closed_at is not None, \
            f"the slow wss consumer's TCP connection still established {time.monotonic() - t0:.1f}s on"
        await s.chat(room, "after")
        total = sent + 1
        await n.wait_seq(room, total, 20)
        assert n.seqs(room) == list(range(1, total + 1)), "the normal wss member missed messages"
        assert not n.closed and not s.closed
        print(f"    slow wss consumer: {sent} x 8 KB sent, left the room at {left_at:.1f}s, "
              f"TCP closed at {closed_at:.1f}s")
    finally:
        slow.close_socket()


def chatclient_row(server_port, client_port):
    from chatclient import server_side_row
    return server_side_row(server_port, client_port)


@timeout(30)
def test_slow_https_download_cut_off_and_fast_one_whole():
    """A download over TLS whose reader stops is cut off after
    --handshake-timeout; the server keeps serving everyone."""
    room = R("slowdl")
    body = os.urandom(4 * 1024 * 1024)
    q = urllib.parse.urlencode({"room": room, "user": "alice"})
    r = https_request(SRV.tls_port, f"/files?{q}", "POST", {"Content-Length": str(len(body))},
                      body=body, ctx=ctx(), timeout=20)
    assert r.status == 201, r
    url = json.loads(r.body)["url"]
    ws = harness.RawWS(SRV.tls_port, tls=ctx(), rcvbuf=4096)
    try:
        time.sleep(0.1)     # the request apart from the handshake (see test_request_in_the_finished_segment)
        ws.send_raw(f"GET {url}?user=bob HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        ws.sock.settimeout(1)
        first = ws.sock.recv(1000)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        # stop reading; meanwhile others are served whole
        r2 = https_request(SRV.tls_port, url + "?user=carol", ctx=ctx(), timeout=20)
        assert r2.status == 200 and r2.body == body, (r2.status, len(r2.body))
        t0 = time.monotonic()
        row = None
        port = ws.sock.getsockname()[1]
        while time.monotonic() - t0 < HANDSHAKE_TIMEOUT + 8:
            row = chatclient_row(SRV.tls_port, port)
            if row is None or row[0] != harness.TCP_ESTABLISHED:
                break
            time.sleep(0.1)
        assert row is None or row[0] != harness.TCP_ESTABLISHED, \
            f"a stalled https download still established {time.monotonic() - t0:.1f}s after it stalled"
        print(f"    stalled download cut off after ~{time.monotonic() - t0 + 0.3:.1f}s")
    finally:
        ws.close_socket()
    serves_tls(SRV, "after a stalled download")


@itest(30)
async def test_wss_with_permessage_deflate():
    import websockets
    srv = extra("tls-deflate", workers=1, tls=True, args=["--deflate"] + FAST)
    room = R("deflate")
    conn = await websockets.connect(f"wss://127.0.0.1:{srv.tls_port}/ws?user=defl{TAG}",
                                    ssl=srv.client_context(), compression="deflate",
                                    ping_interval=None, max_size=None, close_timeout=1)
    try:
        ext = conn.response_headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in ext, ext
        assert json.loads(await conn.recv())["type"] == "welcome"
        await conn.send(json.dumps({"type": "join", "id": "j", "payload": {"room": room}}))
        while True:         # the chat after the join's answer, or it may come before the join
            f = json.loads(await asyncio.wait_for(conn.recv(), 5))
            if f.get("id") == "j":
                assert f["type"] == "joined", f
                break
        content = ("compressible " * 1000)[:12000]
        await conn.send(json.dumps({"type": "chat", "id": "c", "payload": {"room": room, "content": content}}))
        seen = {}
        while not {"ack", "chat"} <= set(seen):
            f = json.loads(await asyncio.wait_for(conn.recv(), 5))
            seen[f["type"]] = f
        assert seen["chat"]["payload"]["content"] == content
    finally:
        await conn.close()


@itest(45)
async def test_ttin_worker_serves_tls_and_usr2_hands_over_tls_sockets():
    srv = Chatd(REDIS, workers=1, tls=True, name="tls-scale", args=FAST)
    srv.pidfile = os.path.join(srv.dir, "chatd.pid")
    srv.extra_args += ["--pidfile", srv.pidfile]
    srv.start()
    try:
        first = srv.worker_pids()
        os.kill(srv.pid, signal.SIGTTIN)
        both = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(srv.worker_pids()), 10,
                        what="a second worker after TTIN")
        added = (set(both) - set(first)).pop()
        on_new = None
        for i in range(40):
            c = await wss(srv, f"ttin{i}{TAG}")
            pid = await worker_of_tls(srv, c)
            if pid == added:
                on_new = c
                break
        assert on_new is not None, f"no wss connection landed on the worker added by TTIN ({added})"
        room = R("ttin")
        other = await ws_plain(srv, f"ttinp{TAG}")
        await on_new.join(room)
        await other.join(room)
        await chat_both_ways(on_new, other, room, "the TTIN worker over TLS")
        await close_all()

        # USR2: a new master (a new binary) takes over the TLS sockets too
        old = srv.pid
        old_workers = srv.worker_pids()
        off = log_size(srv)
        os.kill(old, signal.SIGUSR2)

        def new_master():
            try:
                with open(srv.pidfile) as f:
                    p = int(f.read().strip() or 0)
            except (OSError, ValueError):
                return None
            return p if p and p != old and harness.pid_alive(p) else None
        new = wait_for(new_master, 10, what="the new master to write the pidfile")
        srv._known_workers[new] = harness.proc_starttime(new)
        wait_for(lambda: log_events(srv._read_log(off), "ready", new), 15,
                 what=f"event=ready from the new master {new}")
        # the new master runs the configured count (1), not the old one's TTIN count
        new_workers = wait_for(lambda: harness.children_of(new), 10, what="workers of the new master")
        for p in new_workers:
            srv._known_workers[p] = harness.proc_starttime(p)
        os.kill(old, signal.SIGQUIT)
        wait_for(lambda: not harness.pid_alive(old) and not any(harness.pid_alive(p) for p in old_workers),
                 15, what="the old master and its workers to exit")
        for i in range(4):
            c = await wss(srv, f"usr2{i}{TAG}")
            assert c.peer_cert() == cert_der(srv.cert_path)
            pid = await worker_of_tls(srv, c, candidates=new_workers)
            assert pid in new_workers, f"wss connection on {pid}, not a new worker {new_workers}"
        r = await asyncio.to_thread(https_request, srv.tls_port, "/healthz", ctx=srv.client_context())
        assert r.status == 200, r
        assert http_get(srv.port, "/healthz").status == 200
        print(f"    TTIN worker {added} served wss; USR2 {old} -> {new}, workers {new_workers} serve TLS")
    finally:
        await close_all()
        srv.stop()


async def worker_of_tls(srv, c, candidates=None, timeout=3.0):
    """The worker (of srv, or among candidates) holding c's connection."""
    from chatclient import server_side_row
    deadline = time.monotonic() + timeout
    while True:
        row = server_side_row((srv.port, srv.tls_port), c.local_port())
        if row is not None:
            for pid in (candidates or srv.worker_pids()):
                if row[1] in harness.socket_inodes(pid):
                    return pid
        assert time.monotonic() < deadline, f"no worker holds the connection from {c.local_port()}"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------
# 9. last (it replaces SRV's workers): a HUP with nothing changed


@itest(30)
async def test_hup_without_changes_still_replaces_workers():
    room = R("samehup")
    c = await wss(SRV, f"same{TAG}")
    await c.join(room)
    workers = SRV.worker_pids()
    der = cert_der(SRV.cert_path)
    off = log_size(SRV)
    os.kill(SRV.pid, signal.SIGHUP)
    assert await c.wait_closed(10), "a wss client still open 10s after a HUP (nothing changed)"
    assert c.close_code == 1001, f"closed with {c.close_code}, want 1001"
    fresh = wait_for(lambda: (lambda w: w if len(w) == 2 and not set(w) & set(workers) else None)(
        SRV.worker_pids()), 10, what=f"2 fresh workers replacing {workers}")
    text = SRV._read_log(off)
    assert log_events(text, "reload"), "no event=reload line:\n" + tail(text)
    assert not log_events(text, "tls_reload_rejected"), tail(text)
    assert await certs_shown(SRV, 4) == {fingerprint(der)}
    c2 = await wss(SRV, f"same2{TAG}")
    p = await ws_plain(SRV, f"same3{TAG}")
    await c2.join(room)
    await p.join(room)
    await chat_both_ways(c2, p, room, "after a HUP with nothing changed")
    print(f"    workers {workers} -> {fresh}")
