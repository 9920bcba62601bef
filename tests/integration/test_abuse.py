"""
Abuse and flood tests of chatd: half-open and never-finished upgrades,
slowloris, one byte at a time, huge declared frame lengths, ping floods,
join floods, message floods, receivers that never read, fd exhaustion.

Each test starts its own chatd (on one Redis shared by the module) with the
settings it needs, measures the workers' peak RSS (VmRSS summed over
srv.worker_pids(), sampled every 20 ms) and, where relevant, the round-trip
latency a well-behaved client sees meanwhile (JSON ping -> pong and
chat -> ack, from a thread). Figures are printed on lines starting with
`FIGURE ` so they can be collected.

Run: /usr/bin/python3 tests/integration/run.py test_abuse
"""

import json
import os
import select
import socket
import struct
import threading
import time

import harness
from harness import (OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Chatd, ConnectionClosed, RawWS,
                     Redis, encode_frame, http_get, mask_bytes, timeout, wait_for)
from chatclient import server_side_row

# Under AddressSanitizer freed memory sits in a quarantine instead of being
# reused, so RSS says nothing about leaks there; LeakSanitizer does.
ASAN = "asan" in os.path.basename(harness.chatd_bin())

REDIS = None
TAG = os.urandom(3).hex()
FAST = ["--rate", "100000", "--burst", "100000"]


def setup_module():
    global REDIS
    REDIS = Redis(name="redis-abuse").start()


def teardown_module():
    if REDIS is not None:
        REDIS.stop()


def R(name):
    return f"{name}-{TAG}"


def figure(name, **kv):
    parts = " ".join(f"{k}={v}" for k, v in kv.items())
    print(f"FIGURE {name} {parts}", flush=True)


def pct(values, p):
    """The p-th percentile (nearest rank) of values, None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def ms(x):
    return "na" if x is None else f"{x * 1000:.1f}"


# --------------------------------------------------------------------------
# measurement helpers


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def workers_rss(srv):
    return sum(rss_kib(p) for p in srv.worker_pids())


class RssSampler:
    """Samples the summed VmRSS of srv's workers every interval seconds."""

    def __init__(self, srv, interval=0.02):
        self.srv = srv
        self.pids = srv.worker_pids()
        self.interval = interval
        self.baseline = sum(rss_kib(p) for p in self.pids)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            total = sum(rss_kib(p) for p in self.pids)
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return self.peak

    def now(self):
        return sum(rss_kib(p) for p in self.pids)


class WellBehaved:
    """A well-behaved client in its own thread: every `interval` a JSON
    ping -> pong round trip, and every `chat_every` seconds a chat -> ack
    round trip in `room` (below any rate limit used here). Records latencies
    and any error (an answer later than `patience` is an error)."""

    def __init__(self, port, user, room, interval=0.02, chat_every=0.1, patience=5.0):
        self.port, self.user, self.room = port, user, room
        self.interval, self.chat_every, self.patience = interval, chat_every, patience
        self.ping_lat, self.chat_lat = [], []
        self.errors = []
        self.chats_by_sender = {}
        self.member_events = []
        self._stop = threading.Event()
        self._t = None
        self.ws = None

    def start(self):
        self.ws = RawWS.open(self.port, user=self.user, timeout=self.patience)
        self._request({"type": "join", "id": "wbj", "payload": {"room": self.room}}, "joined")
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _request(self, msg, want):
        t0 = time.monotonic()
        self.ws.send_json(msg)
        deadline = t0 + self.patience
        while True:
            f = self.ws.recv_json(max(0.001, deadline - time.monotonic()))
            t = f.get("type")
            if t == "chat":
                s = f.get("payload", {}).get("sender")
                self.chats_by_sender[s] = self.chats_by_sender.get(s, 0) + 1
            elif t == "member":
                self.member_events.append(f.get("payload"))
            if f.get("id") == msg["id"]:
                if t != want:
                    raise AssertionError(f"{self.user}: expected {want} for {msg}, got {f}")
                return time.monotonic() - t0

    def _run(self):
        k = 0
        next_chat = time.monotonic()
        try:
            while not self._stop.is_set():
                k += 1
                self.ping_lat.append(self._request({"type": "ping", "id": f"wp{k}"}, "pong"))
                if self.chat_every and time.monotonic() >= next_chat:
                    next_chat = time.monotonic() + self.chat_every
                    self.chat_lat.append(self._request(
                        {"type": "chat", "id": f"wc{k}",
                         "payload": {"room": self.room, "content": f"wb {k}"}}, "ack"))
                self._stop.wait(self.interval)
        except BaseException as e:      # noqa: B902 - reported by stop()
            self.errors.append(f"{type(e).__name__}: {e}")

    def stop(self):
        self._stop.set()
        if self._t is not None:
            self._t.join(self.patience + 2)
        if self.ws is not None:
            self.ws.close_socket()
        return self

    def check(self, p99_limit=0.2):
        assert not self.errors, f"well-behaved client {self.user} failed: {self.errors}"
        assert len(self.ping_lat) >= 5, f"well-behaved client made only {len(self.ping_lat)} pings"
        # chat -> ack waits for Redis's fsync (appendfsync always) too: more room
        for kind, lat, limit in (("ping -> pong", self.ping_lat, p99_limit),
                                 ("chat -> ack", self.chat_lat, p99_limit + 0.2)):
            p99 = pct(lat, 99)
            assert p99 is None or p99 <= limit, \
                f"well-behaved client {self.user}: {kind} p99 {p99 * 1000:.1f} ms > " \
                f"{limit * 1000:.0f} ms (max {ms(max(lat))} ms over {len(lat)} round trips)"

    def figures(self):
        return {"wellbehaved_p99_ms": ms(pct(self.ping_lat + self.chat_lat, 99)),
                "wellbehaved_ping_p99_ms": ms(pct(self.ping_lat, 99)),
                "wellbehaved_chat_p99_ms": ms(pct(self.chat_lat, 99)),
                "wellbehaved_roundtrips": len(self.ping_lat) + len(self.chat_lat)}


def assert_no_crash(srv, master_pid, workers):
    assert srv.running(), f"chatd master {master_pid} died:\n{srv.log_text()[-2000:]}"
    assert srv.pid == master_pid
    now = srv.worker_pids()
    assert now == workers, f"workers changed {workers} -> {now} (a worker died?):\n" \
                           f"{srv.log_text()[-2000:]}"
    bad = [l for l in srv.log_text().splitlines()
           if "worker_died" in l or "worker_crash_loop" in l or "AddressSanitizer" in l
           or "runtime error:" in l]
    assert not bad, "crash lines in the chatd log:\n" + "\n".join(bad[:20])


def wait_socket_closed(sock, timeout):
    """True when the peer closed (EOF or reset) within timeout; data read
    meanwhile is discarded."""
    deadline = time.monotonic() + timeout
    while True:
        rem = deadline - time.monotonic()
        if rem <= 0:
            return False
        sock.settimeout(rem)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except OSError:
            return True


def watch_closes(socks, opened_at, deadline):
    """Polls every socket until the server closes it (EOF / reset) or the
    deadline (monotonic). Returns {index: seconds from opened_at[index] to
    the close}; indices missing were still open."""
    poller = select.poll()
    fdmap = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        poller.register(s.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        fdmap[s.fileno()] = i
    closed = {}
    while len(closed) < len(socks):
        rem = deadline - time.monotonic()
        if rem <= 0:
            break
        for fd, ev in poller.poll(min(rem, 0.05) * 1000):
            i = fdmap.get(fd)
            if i is None or i in closed:
                continue
            try:
                data = socks[i].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed[i] = time.monotonic() - opened_at[i]
                poller.unregister(fd)
    return closed


def raw_request(port, path, extra_headers=""):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {harness.new_ws_key()}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n").encode("latin-1")


def metric(port, name):
    r = http_get(port, "/metrics")
    assert r.status == 200, r
    for line in r.body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


# --------------------------------------------------------------------------
# 1. half-open / never-finished upgrades


def accepted_by_workers(srv):
    """Server-side ESTABLISHED connections of srv that a worker has accepted
    (its socket is among the workers' fds; the backlog's are not)."""
    inodes = set()
    for pid in srv.worker_pids():
        inodes |= harness.socket_inodes(pid)
    return sum(1 for lport, rport, st, ino in harness.tcp_connections()
               if lport == srv.port and st == harness.TCP_ESTABLISHED and ino in inodes)


def half_open_round(srv):
    """300 idle connections and 300 with a partial request line; returns
    ({index: seconds to the server's close}, how many the workers held)."""
    port = srv.port
    socks, opened = [], []
    try:
        for i in range(600):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            opened.append(time.monotonic())
            if i >= 300:        # a partial request line
                s.sendall(b"GET /ws?user=half" + str(i).encode())
            socks.append(s)
        # the workers really hold them (accepted, not merely in the backlog)
        held = 0
        t_end = time.monotonic() + 1.0
        while held < 600 and time.monotonic() < t_end:
            held = accepted_by_workers(srv)
        return watch_closes(socks, opened, time.monotonic() + 8.0), held
    finally:
        for s in socks:
            s.close()


def check_half_open_round(closed, label):
    still_open = [i for i in range(600) if i not in closed]
    assert not still_open, \
        f"{label}: {len(still_open)} of 600 never-finished upgrades still open 8 s after the " \
        f"last connect with --handshake-timeout 2 (idle {sum(i < 300 for i in still_open)}, " \
        f"partial request line {sum(i >= 300 for i in still_open)})"
    t = sorted(closed.values())
    assert t[-1] <= 4.0, f"{label}: a never-finished upgrade was closed only after " \
                         f"{t[-1]:.2f}s (--handshake-timeout 2)"
    assert t[0] >= 1.5, f"{label}: a connection was dropped after {t[0]:.2f}s, before the " \
                        f"2 s handshake timeout"


@timeout(60)
def test_half_open_and_partial_upgrades_dropped_at_handshake_timeout():
    with Chatd(REDIS, workers=2, args=["--handshake-timeout", "2"], name="halfopen") as srv:
        master, workers = srv.pid, srv.worker_pids()
        wb = WellBehaved(srv.port, "wb1", R("t1")).start()
        time.sleep(0.3)
        rss = RssSampler(srv).start()
        try:
            closed1, held = half_open_round(srv)
            time.sleep(1.0)
            rss_after1 = rss.now()
            # a second round: memory kept by the first is reused, not added to
            closed2, _ = half_open_round(srv)
            time.sleep(1.0)
            rss_after2 = rss.now()
            wb.stop()
            peak = rss.stop()
        finally:
            wb.stop()
        t1, t2 = sorted(closed1.values()), sorted(closed2.values())
        figure("halfopen", conns=600, rounds=2, held_established=held,
               first_close_s=f"{t1[0]:.2f}" if t1 else "na",
               last_close_s=f"{max(t1[-1:] + t2[-1:]):.2f}" if t1 or t2 else "na",
               baseline_rss_kib=rss.baseline, peak_rss_kib=peak,
               after_round1_rss_kib=rss_after1, after_round2_rss_kib=rss_after2,
               **wb.figures())
        assert held >= 600, f"the workers held only {held} of the 600 connections"
        check_half_open_round(closed1, "round 1")
        check_half_open_round(closed2, "round 2")
        wb.check(0.2)
        assert ASAN or rss_after1 <= rss.baseline + 8192, \
            f"worker RSS did not return near its baseline: {rss.baseline} KiB before, " \
            f"{peak} KiB peak, {rss_after1} KiB 1 s after all 600 were dropped"
        assert ASAN or rss_after2 <= rss_after1 + 1024, \
            f"worker RSS grows with every round of 600 dropped upgrades (a leak?): " \
            f"{rss.baseline} KiB -> {rss_after1} KiB -> {rss_after2} KiB"
        assert_no_crash(srv, master, workers)
        # a fresh client is fine
        with RawWS.open(srv.port, user="after1") as ws:
            ws.ping("after")


# --------------------------------------------------------------------------
# 2. slowloris and oversized headers


@timeout(60)
def test_slowloris_dropped_at_handshake_timeout():
    with Chatd(REDIS, workers=2, args=["--handshake-timeout", "2"], name="slowloris") as srv:
        master, workers = srv.pid, srv.worker_pids()
        wb = WellBehaved(srv.port, "wb2", R("t2")).start()
        time.sleep(0.3)
        rss = RssSampler(srv).start()
        socks, opened = [], []
        closed = {}
        sent_bytes = [0] * 50
        try:
            for i in range(50):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(f"GET /ws?user=loris{i} HTTP/1.1\r\nHost: x\r\n".encode())
                opened.append(time.monotonic())
                s.setblocking(False)
                socks.append(s)
            start = time.monotonic()
            header = b"X-Slowloris: " + b"a" * 10000
            k = 0
            while len(closed) < 50 and time.monotonic() - start < 8.0:
                for i, s in enumerate(socks):
                    if i in closed:
                        continue
                    # EOF / reset seen?
                    try:
                        data = s.recv(4096)
                        if not data:
                            closed[i] = time.monotonic() - opened[i]
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[i] = time.monotonic() - opened[i]
                        continue
                    try:
                        s.send(header[k:k + 1])
                        sent_bytes[i] += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[i] = time.monotonic() - opened[i]
                k += 1
                time.sleep(0.2)
            wb.stop()
            peak = rss.stop()
        finally:
            for s in socks:
                s.close()
            wb.stop()
        t = sorted(closed.values())
        figure("slowloris", conns=50, first_close_s=f"{t[0]:.2f}" if t else "na",
               last_close_s=f"{t[-1]:.2f}" if t else "na", max_bytes_trickled=max(sent_bytes),
               baseline_rss_kib=rss.baseline, peak_rss_kib=peak, **wb.figures())
        assert len(closed) == 50, \
            f"{50 - len(closed)} of 50 slowloris connections (1 header byte / 200 ms) still " \
            f"open after 8 s with --handshake-timeout 2"
        assert t[-1] <= 4.0, f"a slowloris connection lasted {t[-1]:.2f}s (handshake timeout 2 s: " \
                             f"trickling bytes must not extend it)"
        assert t[0] >= 1.5, f"a slowloris connection was dropped after {t[0]:.2f}s, before the " \
                            f"2 s handshake timeout"
        wb.check(0.2)
        assert_no_crash(srv, master, workers)


@timeout(30)
def test_request_headers_over_8k_get_431():
    with Chatd(REDIS, workers=1, name="bigheaders") as srv:
        # control: a 7 KiB header is within the limit
        with RawWS(srv.port) as ws:
            r = ws.handshake("/ws?user=big7k", headers={"X-Pad": "a" * 7000})
            assert r.status == 101, f"a 7 KiB header was refused: {r!r}"
        for size in (9000, 64 * 1024):
            with RawWS(srv.port) as ws:
                try:
                    r = ws.handshake("/ws?user=big", headers={"X-Pad": "a" * size})
                except (ConnectionClosed, BrokenPipeError, ConnectionResetError) as e:
                    raise AssertionError(f"{size}-byte header: connection dropped without "
                                         f"an answer ({e!r}), expected 431")
                assert r.status == 431, f"{size}-byte header: expected 431, got {r!r}"
                assert "sec-websocket-accept" not in r.headers, r
                assert ws.wait_eof(3.0), f"{size}-byte header: connection kept open after 431"
        # many small headers adding up to over 8 KiB
        with RawWS(srv.port) as ws:
            many = {f"X-H{i}": "b" * 90 for i in range(100)}
            r = ws.handshake("/ws?user=many", headers=many)
            assert r.status == 431, f"100 x 100-byte headers: expected 431, got {r!r}"
        with RawWS.open(srv.port, user="after431") as ws:
            ws.ping("ok")


# --------------------------------------------------------------------------
# 3. one byte at a time


@timeout(60)
def test_one_byte_at_a_time_is_reassembled():
    with Chatd(REDIS, workers=1, name="bytewise") as srv:
        master, workers = srv.pid, srv.worker_pids()
        rss = RssSampler(srv).start()
        ws = RawWS(srv.port, timeout=10)
        try:
            # the upgrade request itself, one byte per write
            req = ws.build_request("/ws?user=bytewise")
            t0 = time.monotonic()
            for b in req:
                ws.send_raw(bytes([b]))
                time.sleep(0.002)
            r = ws.read_http_response(5)
            assert r.status == 101, f"upgrade sent byte by byte: {r!r}"
            w = ws.recv_json(5)
            assert w.get("type") == "welcome", w
            upgrade_s = time.monotonic() - t0

            # a masked text frame, one byte per write
            frame = encode_frame(OP_TEXT, b'{"type":"ping","id":"slow"}')
            t0 = time.monotonic()
            for b in frame:
                ws.send_raw(bytes([b]))
                time.sleep(0.01)
            got = ws.recv_json(5)
            assert got.get("type") == "pong" and got.get("id") == "slow", \
                f"frame sent one byte per write: expected pong 'slow', got {got!r}"
            slow_frame_s = time.monotonic() - t0

            # ~60 KiB in 7-byte chunks (126-length header split too)
            body = json.dumps({"type": "ping", "id": "big",
                               "payload": {"pad": "x" * (60 * 1024)}},
                              separators=(",", ":")).encode()
            assert 60 * 1024 < len(body) < 65536
            frame = encode_frame(OP_TEXT, body)
            t0 = time.monotonic()
            for i in range(0, len(frame), 7):
                ws.send_raw(frame[i:i + 7])
                if (i // 7) % 16 == 15:
                    time.sleep(0.001)
            got = ws.recv_json(10)
            big_s = time.monotonic() - t0
            assert got.get("type") == "pong" and got.get("id") == "big", \
                f"60 KiB message in 7-byte chunks: expected pong 'big', got {got!r}"
            # two frames in one write, then split across writes mid-header
            f1 = encode_frame(OP_TEXT, b'{"type":"ping","id":"a"}')
            f2 = encode_frame(OP_TEXT, b'{"type":"ping","id":"b"}')
            both = f1 + f2
            ws.send_raw(both[:len(f1) + 1])
            time.sleep(0.05)
            ws.send_raw(both[len(f1) + 1:])
            ids = [ws.recv_json(5).get("id"), ws.recv_json(5).get("id")]
            assert ids == ["a", "b"], f"two frames split mid-header: got answers {ids}"
            ws.ping("after")
        finally:
            ws.close_socket()
        peak = rss.stop()
        figure("bytewise", upgrade_bytewise_s=f"{upgrade_s:.2f}",
               frame_bytewise_s=f"{slow_frame_s:.2f}", big_7byte_chunks=len(frame) // 7 + 1,
               big_s=f"{big_s:.2f}", baseline_rss_kib=rss.baseline, peak_rss_kib=peak)
        assert_no_crash(srv, master, workers)


# --------------------------------------------------------------------------
# 4. huge declared lengths


def huge_header(length, opcode=OP_TEXT):
    """A masked frame header (with its mask key) declaring length bytes,
    with no payload."""
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", length) + os.urandom(4)


@timeout(60)
def test_huge_declared_lengths_close_1009_at_once():
    with Chatd(REDIS, workers=1, name="hugelen") as srv:
        master, workers = srv.pid, srv.worker_pids()
        time.sleep(0.2)
        rss = RssSampler(srv).start()
        lat = {}
        for name, length in (("2^63-1", (1 << 63) - 1), ("2^40", 1 << 40),
                             ("65537", 65537)):
            with RawWS.open(srv.port, user="huge") as ws:
                t0 = time.monotonic()
                ws.send_raw(huge_header(length))
                res = ws.wait_closed(3.0)
                lat[name] = time.monotonic() - t0
                assert res is not None, \
                    f"frame header declaring {name} bytes (no payload sent): still open after 3 s"
                assert res == ("close", 1009), \
                    f"frame header declaring {name} bytes: expected close 1009, got {res}"
                assert lat[name] < 1.0, f"declared {name}: closed only after {lat[name]:.2f}s"
        # 2^64-1 has the most significant bit set, which RFC 6455 forbids
        with RawWS.open(srv.port, user="huge") as ws:
            ws.send_raw(huge_header((1 << 64) - 1))
            res = ws.wait_closed(3.0)
            assert res in (("close", 1009), ("close", 1002)), \
                f"declared 2^64-1 bytes: expected close 1002 or 1009, got {res}"
        # 200 connections at once declaring 2^40, 1 KiB of payload each: no growth
        conns = [RawWS.open(srv.port, user=f"huge{i}") for i in range(200)]
        time.sleep(0.2)
        rss_open = RssSampler(srv).start()      # baseline: the 200 open and idle
        try:
            key = b"\x01\x02\x03\x04"
            for ws in conns:
                ws.send_raw(huge_header(1 << 40)[:-4] + key + mask_bytes(b" " * 1024, key))
            codes = [ws.wait_closed(3.0) for ws in conns]
        finally:
            for ws in conns:
                ws.close_socket()
        time.sleep(0.3)
        peak = rss.stop()
        peak_send = rss_open.stop()
        bad = [c for c in codes if c != ("close", 1009)]
        figure("hugelen", close_2e63_ms=ms(lat["2^63-1"]), close_2e40_ms=ms(lat["2^40"]),
               close_65537_ms=ms(lat["65537"]), baseline_rss_kib=rss.baseline,
               peak_rss_kib=peak, rss_200_open_kib=rss_open.baseline,
               growth_on_2e40_kib=peak_send - rss_open.baseline)
        assert not bad, f"{len(bad)} of 200 connections declaring 2^40 bytes were not closed " \
                        f"with 1009: {bad[:5]}"
        assert ASAN or peak_send - rss_open.baseline < 2048, \
            f"worker RSS grew by {peak_send - rss_open.baseline} KiB when 200 connections " \
            f"declared 2^40-byte frames"
        assert_no_crash(srv, master, workers)


# --------------------------------------------------------------------------
# 5. ping flood


@timeout(90)
def test_ping_flood_does_not_starve_others():
    with Chatd(REDIS, workers=1, name="pingflood") as srv:
        master, workers = srv.pid, srv.worker_pids()
        wb = WellBehaved(srv.port, "wb5", R("t5")).start()
        time.sleep(0.3)
        rss = RssSampler(srv).start()
        fl = RawWS.open(srv.port, user="pingflooder", timeout=10)
        N = 20000
        state = {"pongs": 0, "end": None, "other": 0}

        def reader():
            try:
                while state["pongs"] < N:
                    f = fl.recv_frame(10)
                    if f.opcode == OP_PONG:
                        state["pongs"] += 1
                    elif f.opcode == OP_CLOSE:
                        code = struct.unpack("!H", f.payload[:2])[0] if len(f.payload) >= 2 else None
                        state["end"] = ("close", code)
                        return
                    else:
                        state["other"] += 1
            except ConnectionClosed:
                state["end"] = ("eof", None)
            except socket.timeout:
                state["end"] = ("timeout", None)
            except OSError as e:
                state["end"] = ("eof", repr(e))

        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        t0 = time.monotonic()
        sent = 0
        try:
            batch = 250
            while sent < N and state["end"] is None:
                fl.send_raw(b"".join(encode_frame(OP_PING, b"f%d" % (sent + j))
                                     for j in range(batch)))
                sent += batch
        except OSError as e:
            state.setdefault("send_error", repr(e))
        send_s = time.monotonic() - t0
        rt.join(30)
        flood_s = time.monotonic() - t0
        time.sleep(0.5)
        wb.stop()
        peak = rss.stop()
        served = state["end"] is None and state["pongs"] == N
        if served:
            fl.ping("after-flood")      # still a working connection
        fl.close_socket()
        figure("pingflood", pings_sent=sent, pongs=state["pongs"], end=state["end"],
               send_s=f"{send_s:.2f}", flood_s=f"{flood_s:.2f}",
               baseline_rss_kib=rss.baseline, peak_rss_kib=peak, **wb.figures())
        assert not rt.is_alive(), f"flooder neither served nor closed: {state}"
        assert served or (state["end"] and state["end"][0] in ("close", "eof")), \
            f"ping flooder: got {state['pongs']} pongs of {N} and then {state['end']}"
        wb.check(0.2)
        assert ASAN or peak - rss.baseline < 16384, f"worker RSS grew by {peak - rss.baseline} KiB"
        assert_no_crash(srv, master, workers)


# --------------------------------------------------------------------------
# 6. join flood


def collect(ws, ids, timeout=10.0):
    """{id: answer} for each id, reading frames in any order."""
    want, got = set(ids), {}
    deadline = time.monotonic() + timeout
    while len(got) < len(want):
        f = ws.recv_json(max(0.001, deadline - time.monotonic()))
        if f.get("id") in want:
            got[f["id"]] = f
    return got


@timeout(60)
def test_join_flood_over_max_rooms_forbidden():
    with Chatd(REDIS, workers=1, args=["--max-rooms", "100"], name="joinflood") as srv:
        master, workers = srv.pid, srv.worker_pids()
        wb = WellBehaved(srv.port, "wb6", R("t6")).start()
        time.sleep(0.3)
        rss = RssSampler(srv).start()
        with RawWS.open(srv.port, user="joiner", timeout=10) as ws:
            ids = [f"j{i}" for i in range(150)]
            t0 = time.monotonic()
            ws.send_raw(b"".join(encode_frame(OP_TEXT, json.dumps(
                {"type": "join", "id": f"j{i}", "payload": {"room": R(f"t6r{i}")}}))
                for i in range(150)))
            got = collect(ws, ids, 15)
            join_s = time.monotonic() - t0
            kinds = [got[i]["type"] if got[i]["type"] != "error"
                     else "error:" + got[i].get("payload", {}).get("code", "?") for i in ids]
            n_joined = kinds.count("joined")
            assert kinds[:100] == ["joined"] * 100, \
                f"first 100 pipelined joins: {[(i, k) for i, k in enumerate(kinds[:100]) if k != 'joined'][:5]}"
            assert kinds[100:] == ["error:forbidden"] * 50, \
                f"joins 101..150 with --max-rooms 100: {sorted(set(kinds[100:]))} " \
                f"({n_joined} joined in all)"
            # the connection stays usable; leaving frees a slot
            ws.send_json({"type": "chat", "id": "c1", "payload": {"room": R("t6r0"),
                                                                 "content": "still here"}})
            assert collect(ws, ["c1"])["c1"]["type"] == "ack"
            ws.send_json({"type": "leave", "id": "l1", "payload": {"room": R("t6r0")}})
            assert collect(ws, ["l1"])["l1"]["type"] == "left"
            ws.send_json({"type": "join", "id": "j-new", "payload": {"room": R("t6new")}})
            assert collect(ws, ["j-new"])["j-new"]["type"] == "joined", "slot not freed by leave"
            ws.send_json({"type": "join", "id": "j-over", "payload": {"room": R("t6over")}})
            f = collect(ws, ["j-over"])["j-over"]
            assert f["type"] == "error" and f["payload"]["code"] == "forbidden", f
            ws.ping("after")
        time.sleep(0.3)
        wb.stop()
        peak = rss.stop()
        figure("joinflood", joins=150, joined=n_joined, forbidden=kinds.count("error:forbidden"),
               join_s=f"{join_s:.2f}", baseline_rss_kib=rss.baseline, peak_rss_kib=peak,
               **wb.figures())
        wb.check(0.2)
        assert_no_crash(srv, master, workers)


# --------------------------------------------------------------------------
# 7. message flood


@timeout(60)
def test_message_flood_rate_limited_and_closed_1008():
    with Chatd(REDIS, workers=1, args=["--rate", "20", "--burst", "40"], name="msgflood") as srv:
        master, workers = srv.pid, srv.worker_pids()
        room = R("t7")
        wb = WellBehaved(srv.port, "wb7", room, chat_every=0.1).start()
        time.sleep(0.3)
        rss = RssSampler(srv).start()
        with RawWS.open(srv.port, user="flooder", timeout=10) as fl:
            fl.send_json({"type": "join", "id": "j", "payload": {"room": room}})
            assert collect(fl, ["j"])["j"]["type"] == "joined"
            frames = b"".join(encode_frame(OP_TEXT, json.dumps(
                {"type": "chat", "id": f"f{i}", "payload": {"room": room, "content": f"flood {i}"}}))
                for i in range(1000))
            t0 = time.monotonic()
            try:
                fl.send_raw(frames)
            except OSError:
                pass
            acks = limited = other = 0
            end = None
            while True:
                try:
                    m = fl.recv_message(max(0.001, t0 + 5 - time.monotonic()))
                except ConnectionClosed:
                    end = ("eof", None)
                    break
                except socket.timeout:
                    end = ("timeout", None)
                    break
                if m.opcode == OP_CLOSE:
                    end = ("close", m.code)
                    break
                f = json.loads(m.text)
                if f.get("type") == "ack":
                    acks += 1
                elif f.get("type") == "error" and f["payload"].get("code") == "rate_limited":
                    limited += 1
                elif f.get("type") != "chat":
                    other += 1
            closed_s = time.monotonic() - t0
        time.sleep(0.5)
        wb.stop()
        peak = rss.stop()
        delivered = wb.chats_by_sender.get("flooder", 0)
        figure("msgflood", sent=1000, acks=acks, rate_limited=limited, end=end,
               closed_s=f"{closed_s:.2f}", delivered_to_others=delivered,
               baseline_rss_kib=rss.baseline, peak_rss_kib=peak, **wb.figures())
        assert end == ("close", 1008), f"flooder: expected close 1008, got {end} after " \
                                       f"{closed_s:.2f}s ({acks} acks, {limited} rate_limited)"
        assert closed_s <= 2.5, f"flooder closed only after {closed_s:.2f}s"
        assert 1 <= delivered <= 40 + 20 * 3, \
            f"{delivered} of the 1000 flood messages reached another member " \
            f"(--rate 20 --burst 40)"
        assert acks <= delivered, f"{acks} acks but only {delivered} delivered"
        wb.check(0.2)
        assert_no_crash(srv, master, workers)
        # The contract: excess requests get error rate_limited. The flooder
        # must see them (before the close frame), not just a bare 1008.
        assert limited >= 1, \
            f"the flooder got no rate_limited error for a burst of 1000 chats (acks {acks}, " \
            f"{delivered} accepted and broadcast, then {end} after {closed_s:.2f}s): the " \
            f"error frames queued before the close were not sent"


# --------------------------------------------------------------------------
# 8. receiver that never reads


def open_non_reader(port, user, room):
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
    assert collect(ws, ["j"])["j"]["type"] == "joined"
    return ws


@timeout(90)
def test_never_reading_member_closed_sender_unaffected():
    """2 MiB of 8 KiB messages go to a room with a member that never reads
    (tiny receive buffer): with --outbound-limit 65536 it must be dropped
    by the end of those 2 MiB (a 2 s grace). For the report, sending then
    goes on (up to 10 MiB in all) to see where it is dropped, if at all."""
    args = ["--outbound-limit", "65536"] + FAST
    with Chatd(REDIS, workers=1, args=args, name="nonreader") as srv:
        master, workers = srv.pid, srv.worker_pids()
        room = R("t8")
        wb = WellBehaved(srv.port, "wb8", room, chat_every=0.2).start()
        nr = open_non_reader(srv.port, "t8nonreader", room)
        nr_port = nr.sock.getsockname()[1]
        sender = RawWS.open(srv.port, user="t8sender", timeout=10)
        sender.send_json({"type": "join", "id": "j", "payload": {"room": room}})
        assert collect(sender, ["j"])["j"]["type"] == "joined"
        time.sleep(0.3)

        def roundtrip(i, content):
            t0 = time.monotonic()
            sender.send_json({"type": "chat", "id": f"s{i}",
                              "payload": {"room": room, "content": content}})
            while True:
                f = sender.recv_json(5)
                if f.get("id") == f"s{i}":
                    assert f["type"] == "ack", f
                    return time.monotonic() - t0

        def dropped():
            if any(e.get("user") == "t8nonreader" and e.get("event") == "leave"
                   for e in list(wb.member_events)):
                return True
            row = server_side_row(srv.port, nr_port)
            return row is None or row[0] != harness.TCP_ESTABLISHED

        def send_queue():
            row = [l for l in open("/proc/net/tcp").read().splitlines()[1:]
                   if int(l.split()[1].rsplit(":", 1)[1], 16) == srv.port
                   and int(l.split()[2].rsplit(":", 1)[1], 16) == nr_port]
            return int(row[0].split()[4].split(":")[0], 16) if row else None

        base_lat = [roundtrip(f"base{i}", "small") for i in range(20)]
        rss = RssSampler(srv).start()
        big = "z" * 8192
        lat = []
        dropped_at_kib = None
        kernel_queue_at_2mib = None
        try:
            i = 0
            while i < 1280 and dropped_at_kib is None:      # up to 10 MiB
                lat.append(roundtrip(i, big))
                i += 1
                if i % 8 == 0 and dropped():
                    dropped_at_kib = i * 8
                if i == 256:
                    kernel_queue_at_2mib = send_queue()
                    try:
                        wait_for(dropped, 2.0, interval=0.05)
                        dropped_at_kib = i * 8
                    except AssertionError:
                        pass
            lat_2mib = lat[:256]
            time.sleep(0.3)
            wb.stop()
            peak = rss.stop()
            res = nr.wait_closed(10) if dropped_at_kib is not None else None
        finally:
            nr.close_socket()
            sender.close_socket()
            wb.stop()
        p99 = pct(lat_2mib, 99)
        figure("nonreader", sent_kib=len(lat) * 8, dropped_after_kib=dropped_at_kib,
               server_kernel_sendq_at_2mib=kernel_queue_at_2mib, nonreader_saw=res,
               sender_ack_p50_ms=ms(pct(lat_2mib, 50)), sender_ack_p99_ms=ms(p99),
               sender_ack_max_ms=ms(max(lat)), sender_ack_base_p99_ms=ms(pct(base_lat, 99)),
               baseline_rss_kib=rss.baseline, peak_rss_kib=peak,
               growth_kib=peak - rss.baseline, **wb.figures())
        assert p99 <= 0.25, f"sender's ack p99 {p99 * 1000:.1f} ms while a member never reads"
        assert ASAN or peak - rss.baseline < 8192, \
            f"worker RSS grew by {peak - rss.baseline} KiB (peak {peak} KiB)"
        assert wb.chats_by_sender.get("t8sender", 0) >= 1
        wb.check(0.25)
        assert_no_crash(srv, master, workers)
        assert dropped_at_kib is not None, \
            f"the member that never reads was never dropped, even after {len(lat) * 8} KiB " \
            f"were sent to its room with --outbound-limit 65536"
        assert res is not None, "the non-reader's socket did not end after it was dropped"
        if res[0] == "close":
            assert res[1] == 1013, f"non-reader closed with {res[1]}, want 1013"
        assert dropped_at_kib <= 2048, \
            f"with --outbound-limit 65536 the member that never reads was still connected " \
            f"after 2 MiB had been sent to its room (2 s grace): the server's kernel send " \
            f"queue held {kernel_queue_at_2mib} bytes for it; it was dropped only after " \
            f"{dropped_at_kib} KiB"


# --------------------------------------------------------------------------
# 9. file descriptor exhaustion


class LimitedChatd(Chatd):
    """A chatd whose processes may open at most `nofile` files."""

    def __init__(self, *a, nofile=64, **kw):
        super().__init__(*a, **kw)
        self.nofile = nofile

    def argv(self):
        return ["/usr/bin/prlimit", f"--nofile={self.nofile}:{self.nofile}", "--"] + super().argv()


def nofile_of(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


@timeout(90)
def test_fd_exhaustion_survived():
    with LimitedChatd(REDIS, workers=1, nofile=64, name="fdlimit") as srv:
        master, workers = srv.pid, srv.worker_pids()
        assert nofile_of(workers[0]) == 64, "prlimit did not apply to the worker"
        fds_idle = len(os.listdir(f"/proc/{workers[0]}/fd"))
        room = R("t9")
        wb = WellBehaved(srv.port, "wb9", room, chat_every=0.2).start()
        time.sleep(0.3)
        rss = RssSampler(srv).start()
        socks = []
        state = {}
        try:
            for i in range(100):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(raw_request(srv.port, f"/ws?user=fd{i}"))
                s.setblocking(False)
                socks.append(s)
                state[i] = b""
            # classify every connection: upgraded, refused/closed, or pending
            upgraded, refused = set(), {}
            deadline = time.monotonic() + 8.0
            poller = select.poll()
            fdmap = {}
            for i, s in enumerate(socks):
                poller.register(s.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
                fdmap[s.fileno()] = i
            while len(upgraded) + len(refused) < 100 and time.monotonic() < deadline:
                for fd, ev in poller.poll(50):
                    i = fdmap[fd]
                    try:
                        data = socks[i].recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = None
                    if not data:
                        head = state[i].split(b"\r\n", 1)[0]
                        refused[i] = head.decode("latin-1") if head else \
                            ("reset" if data is None else "eof")
                        poller.unregister(fd)
                        upgraded.discard(i)
                        continue
                    state[i] += data
                    if state[i].startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in state[i]:
                        upgraded.add(i)
            pending = [i for i in range(100) if i not in upgraded and i not in refused]
            fds_peak = len(os.listdir(f"/proc/{workers[0]}/fd"))
            # the upgraded ones are real connections
            alive = 0
            for i in sorted(upgraded)[:5]:
                s = socks[i]
                s.setblocking(True)
                s.settimeout(5)
                s.sendall(encode_frame(OP_TEXT, b'{"type":"ping","id":"fd"}'))
                buf = b""
                t_end = time.monotonic() + 5
                while b'"pong"' not in buf and time.monotonic() < t_end:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                alive += b'"pong"' in buf
        finally:
            for s in socks:
                s.close()
        # after closing them, a new client connects and chats normally
        t_close = time.monotonic()

        def fresh_client():
            with RawWS.open(srv.port, user="fdafter", timeout=3) as ws:
                ws.send_json({"type": "join", "id": "j", "payload": {"room": room}})
                assert collect(ws, ["j"], 3)["j"]["type"] == "joined"
                ws.send_json({"type": "chat", "id": "c", "payload": {"room": room,
                                                                    "content": "after"}})
                assert collect(ws, ["c"], 3)["c"]["type"] == "ack"
                return True
        wait_for(fresh_client, 10, interval=0.2, what="a fresh client after fd exhaustion")
        recover_s = time.monotonic() - t_close
        # every closed connection was released: only the well-behaved one is left
        wait_for(lambda: metric(srv.port, "chatd_connections") == 1, 5, interval=0.1,
                 what="chatd_connections back to 1 after the 100 were closed")
        wb.stop()
        peak = rss.stop()
        log = srv.log_text()
        accept_failed = log.count("accept_failed")
        reasons = {}
        for r in refused.values():
            reasons[r] = reasons.get(r, 0) + 1
        figure("fdlimit", nofile=64, fds_idle=fds_idle, fds_peak=fds_peak, conns=100,
               upgraded=len(upgraded), refused=len(refused), pending=len(pending),
               refusal_kinds="|".join(f"{k.replace(' ', '_')}:{v}" for k, v in reasons.items()),
               accept_failed_log_lines=accept_failed, recover_s=f"{recover_s:.2f}",
               baseline_rss_kib=rss.baseline, peak_rss_kib=peak, **wb.figures())
        assert_no_crash(srv, master, workers)
        assert len(upgraded) >= 10, f"only {len(upgraded)} of 100 connections upgraded " \
                                    f"with 64 fds ({fds_idle} used idle)"
        assert len(upgraded) < 64, f"{len(upgraded)} upgraded with a 64-fd limit?"
        assert alive == min(5, len(upgraded)), "upgraded connections did not answer a ping"
        assert not pending, \
            f"{len(pending)} of 100 connections neither upgraded nor refused/closed within 8 s " \
            f"at the fd limit (upgraded {len(upgraded)}, refused {len(refused)}: {reasons})"
        wb.check(0.25)
