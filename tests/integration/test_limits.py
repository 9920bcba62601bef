"""Per-address connection cap (--max-conns-per-ip), counted per worker."""
import socket

from harness import Chatd, Redis, RawWS, wait_for, timeout

REDIS = None
SRV = None


def setup_module():
    global REDIS, SRV
    REDIS = Redis(name="redis-limits").start()
    SRV = Chatd(REDIS, workers=1, args=["--max-conns-per-ip", "3"], name="limits").start()


def teardown_module():
    if SRV is not None:
        SRV.stop()
    if REDIS is not None:
        REDIS.stop()


def try_open(user):
    try:
        return RawWS.open(SRV.port, user=user)
    except Exception as e:          # the refusal surfaces as a failed upgrade
        return e


@timeout(30)
def test_fourth_connection_from_one_address_is_refused_with_429():
    held = [RawWS.open(SRV.port, user=f"cap{i}") for i in range(3)]
    try:
        refused = try_open("cap3")
        assert not isinstance(refused, RawWS), "a 4th connection from one address was accepted"
        assert "429" in str(refused), f"expected HTTP 429, got {refused!r}"
        # The others are untouched.
        for ws in held:
            ws.ping("still-here")
        # A slot frees when a connection closes.
        held.pop().close_socket()
        def reopened():
            ws = try_open("cap-again")
            if isinstance(ws, RawWS):
                held.append(ws)
                return True
            return False
        wait_for(reopened, 5, interval=0.1, what="a slot after a close")
    finally:
        for ws in held:
            ws.close_socket()


def open_when_free(user):
    """Opens once the server has released earlier tests' connections
    (it counts them down when it sees their close)."""
    got = []
    wait_for(lambda: isinstance(ws := try_open(user), RawWS) and not got.append(ws), 5,
             interval=0.1, what=f"a free slot for {user}")
    return got[0]


@timeout(30)
def test_other_addresses_are_not_affected():
    held = [open_when_free(f"a{i}") for i in range(3)]
    try:
        # The same upgrade from another loopback source address.
        s = socket.socket()
        s.settimeout(5)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", SRV.port))
        s.sendall(b"GET /ws?user=b0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = s.recv(4096)
        s.close()
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
    finally:
        for ws in held:
            ws.close_socket()
