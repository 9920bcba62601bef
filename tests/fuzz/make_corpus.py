#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

The seeds are real traffic: client messages of every type of the protocol
(/work/shared/protocol.md), HTTP upgrade requests, query strings with HS256
tokens signed with the fuzz targets' secret "fuzz-secret", masked client
WebSocket frames, and TLS client bytes and sessions (fuzz_tls). The output is
deterministic (fixed masks, fixed times, ClientHellos captured once), so
running this again rewrites the same files; they are committed.

    python3 tests/fuzz/make_corpus.py
"""
import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
SECRET = b"fuzz-secret"
EXP_FUTURE = 4102444800     # 2100-01-01; the target's clock is 1700000000
EXP_PAST = 1600000000


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def j(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---- client messages (fuzz_proto, and the payloads of fuzz_ws frames) ----

MESSAGES = {
    "setkey": {"type": "setkey", "id": "k1", "payload": {"key": "BASE64PUBLICKEY=="}},
    "getkeys": {"type": "getkeys", "id": "k2", "payload": {"users": ["alice", "bob", "alice"]}},
    "roomkey": {"type": "roomkey", "id": "k3", "payload": {"room": "e2e:team", "to": "bob", "keyId": "k-1",
                                                             "wrapped": "d3JhcHBlZA=="}},
    "getroomkeys": {"type": "getroomkeys", "payload": {"room": "e2e:team"}},
    "signal": {"type": "signal", "id": "s1", "payload": {"to": "bob", "room": "dm:alice:bob", "callId": "c1",
                                                           "kind": "offer", "data": "v=0\r\no=- 1 2 IN IP4 0.0.0.0"}},
    "chat-e2e": {"type": "chat", "id": "c-e2e", "payload": {"room": "e2e:team", "content": "Q0lQSEVS",
                                                             "e2e": {"keyId": "k-1", "iv": "aXY="}}},
    "chat-file": {"type": "chat", "id": "c-file", "payload": {"room": "general", "content": "a file",
        "attachments": [{"type": "file", "url": "/files/0123456789abcdef01234567", "name": "a.png",
                         "size": 12, "mime": "image/png"}]}},
    "join": {"type": "join", "id": "j1", "payload": {"room": "general"}},
    "join-since": {"type": "join", "id": "j2", "payload": {"room": "team:eng", "since": 42}},
    "join-since-null": {"type": "join", "payload": {"room": "a.b-c_d", "since": None}},
    "leave": {"type": "leave", "id": "l1", "payload": {"room": "general"}},
    "chat": {"type": "chat", "id": "c-17", "payload": {"room": "general", "content": "hello"}},
    "chat-attachments": {"type": "chat", "id": "c-18", "payload": {
        "room": "general", "content": "see these",
        "attachments": [{"type": "image", "url": "https://example.com/a.png"},
                        {"type": "link", "url": "http://example.org/x?y=1"}]}},
    "chat-unicode": {"type": "chat", "id": "ü-1", "payload": {
        "room": "general", "content": "grüße \u2603 \U0001F600 \\ \" \n"}},
    "typing-on": {"type": "typing", "payload": {"room": "general", "active": True}},
    "typing-off": {"type": "typing", "id": "t2", "payload": {"room": "general", "active": False}},
    "history": {"type": "history", "id": "h1", "payload": {"room": "general"}},
    "history-page": {"type": "history", "id": "h2",
                     "payload": {"room": "general", "before": 120, "limit": 100}},
    "presence": {"type": "presence", "id": "p1", "payload": {"room": "general"}},
    "ping": {"type": "ping", "id": "p1"},
    "ping-bare": {"type": "ping"},
    "edit": {"type": "edit", "id": "e1", "payload": {"room": "general", "target": 3, "content": "fixed",
                                                    "attachments": [{"type": "link", "url": "https://a.org"}]}},
    "delete": {"type": "delete", "id": "d1", "payload": {"room": "general", "target": 3}},
    "react-on": {"type": "react", "id": "x1", "payload": {"room": "general", "target": 3,
                                                         "emoji": "\U0001F44D", "on": True}},
    "react-off": {"type": "react", "payload": {"room": "general", "target": 9, "emoji": "ok", "on": False}},
    "search": {"type": "search", "id": "s1", "payload": {"room": "general", "q": "Café deplo", "limit": 5}},
    "search-scripts": {"type": "search", "payload": {"room": "general", "q": "Привет 東京 한국 हिंदी Straße",
                                                     "before": 99}},
    "read": {"type": "read", "id": "r1", "payload": {"room": "general", "seq": 17}},
    "rooms": {"type": "rooms", "id": "rs1"},
    "join-dm": {"type": "join", "id": "j3", "payload": {"room": "dm:alice:bob"}},
    "join-dm-long": {"type": "join", "payload": {"room": "dm:" + "a" * 64 + ":" + "b" * 64}},
    "join-dm-unsorted": {"type": "join", "payload": {"room": "dm:bob:alice"}},
    "bad-target": {"type": "edit", "payload": {"room": "r", "target": 0, "content": "x"}},
    "bad-emoji": {"type": "react", "payload": {"room": "r", "target": 1, "emoji": "a\nb", "on": True}},
    "state-record": {"c": "new", "a": [], "e": 9, "d": False,
                     "r": [{"e": "x", "u": [["b", 4, 6], ["c", 5, 7]]}], "v": [4, 5]},
    # Malformed on purpose: each should get an error.
    "bad-type": {"type": "shout", "id": "x1"},
    "bad-room": {"type": "join", "id": "x2", "payload": {"room": "no spaces"}},
    "bad-limit": {"type": "history", "payload": {"room": "r", "limit": 1000}},
    "bad-url": {"type": "chat", "payload": {"room": "r", "content": "x",
                                            "attachments": [{"type": "i", "url": "ftp://a"}]}},
    "bad-since": {"type": "join", "payload": {"room": "r", "since": -1.5}},
    "bad-id": {"type": "ping", "id": ""},
    "too-many-attachments": {"type": "chat", "payload": {
        "room": "r", "content": "x",
        "attachments": [{"type": "i", "url": "https://a/%d" % i} for i in range(11)]}},
}

RAW_MESSAGES = {
    "escaped-nul": '{"type":"chat","payload":{"room":"r","content":"a\\u0000b"}}',
    # A raw NUL byte inside a string: cJSON ends the string there (see the
    # report in tests/fuzz/run's header).
    "raw-nul-in-string": '{"type":"chat","payload":{"room":"general\x00x","content":"hi"}}',
    "two-values": '{"type":"ping"} {"type":"ping"}',
    "not-object": '["type","ping"]',
    "trailing-space": '{"type":"ping"} \r\n',
    "long-content": j({"type": "chat", "payload": {"room": "r", "content": "x" * 100}}),
    "payload-not-object": '{"type":"join","id":"j9","payload":["room"]}',
    "long-url": j({"type": "chat", "payload": {"room": "r", "content": "x", "attachments": [
        {"type": "link", "url": "https://example.com/" + "p" * 2040}]}}),
    "big-numbers": '{"type":"history","payload":{"room":"r","before":9007199254740993,"limit":1e2}}',
}


def proto_corpus():
    for name, msg in MESSAGES.items():
        write("fuzz_proto", name, j(msg))
    for name, text in RAW_MESSAGES.items():
        write("fuzz_proto", name, text)
    write("fuzz_proto", "bad-utf8", b'{"type":"chat","payload":{"room":"r","content":"\xc3\x28"}}')
    write("fuzz_proto", "surrogate", b'{"type":"ping","id":"\xed\xa0\x80"}')
    write("fuzz_proto", "overlong", b'{"type":"ping","id":"\xc0\xaf"}')
    write("fuzz_proto", "max-4byte", b'{"type":"ping","id":"\xf4\x8f\xbf\xbf"}')


# ---- HTTP upgrade requests (fuzz_http: 4 chunking bytes, then the request) ----

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(target, extra="", method="GET", version="13", key=KEY):
    return (f"{method} {target} HTTP/1.1\r\n"
            "Host: 127.0.0.1:8080\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: {version}\r\n"
            f"{extra}\r\n")


def http_corpus(token):
    ping_frame = frame(1, j(MESSAGES["ping"]).encode(), mask=b"\x01\x02\x03\x04")
    reqs = {
        "upgrade-user": upgrade("/ws?user=alice"),
        "upgrade-token": upgrade("/ws?token=" + token),
        "upgrade-then-frame": upgrade("/ws?user=alice").encode() + ping_frame,
        "upgrade-browser": upgrade("/ws?user=bob&x=%41+b",
                                   "Origin: http://127.0.0.1:8080\r\n"
                                   "Connection: keep-alive\r\n"
                                   "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                                   "User-Agent: Mozilla/5.0\r\n"),
        "upgrade-lists": ("GET /ws?user=c HTTP/1.1\r\nHost: h\r\n"
                          "Upgrade: h2c, WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
                          f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        "bad-version": upgrade("/ws?user=alice", version="8"),
        "bad-key": upgrade("/ws?user=alice", key="short"),
        "dup-key": upgrade("/ws?user=alice", f"Sec-WebSocket-Key: {KEY}\r\n"),
        "post": upgrade("/ws", method="POST"),
        "healthz": "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "metrics": "GET /metrics HTTP/1.0\r\n\r\n",
        "head-root": "HEAD / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"abc\"\r\n\r\n",
        "chunked-body": "POST /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "malformed-line": "GET /ws\r\n\r\n",
        "malformed-header": "GET /ws HTTP/1.1\r\nUpgrade websocket\r\n\r\n",
        "bare-lf": "GET /ws?user=a HTTP/1.1\nUpgrade: websocket\nConnection: Upgrade\n\n",
        "long-header": "GET /ws HTTP/1.1\r\nX-Long: " + "a" * 300 + "\r\n\r\n",
        "long-upgrade": "GET /ws HTTP/1.1\r\nUpgrade: " + "websocket," * 30 + "\r\n\r\n",
        "long-url": "GET /ws?user=" + "u" * 4200 + " HTTP/1.1\r\n\r\n",
        "headers-over-8k": "GET /ws?user=a HTTP/1.1\r\n" + "X-Pad: " + "p" * 200 + "\r\n" * 1
                           + "".join("X-H%d: %s\r\n" % (i, "v" * 180) for i in range(45)) + "\r\n",
        "pct-nul": "GET /ws?user=a%00b&token=x%2 HTTP/1.1\r\n\r\n",
        "pct-query": "GET /ws?user=%61lice&token=%zz&user=x HTTP/1.1\r\n\r\n",
        "post-chunked": b"POST /files?room=r&user=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                        b"Content-Type: image/png\r\n\r\n3\r\nab\0\r\n2;x=y\r\nyz\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "post-length": "POST /files?room=r HTTP/1.1\r\nContent-Length: 12\r\nExpect: 100-continue\r\n"
                       "Authorization: Bearer a.b.c\r\nRange: bytes=0-1\r\n\r\nhello world!trailing",
    }
    chunkings = [b"\x00\x00\x00\x00", b"\x03\x85\x01\x10", b"\xff\xff\xff\xff", b"\x1f\x01\x82\x07"]
    for i, (name, req) in enumerate(reqs.items()):
        if isinstance(req, str):
            req = req.encode()
        write("fuzz_http", name, chunkings[i % len(chunkings)] + req)


# ---- JWT query strings (fuzz_auth) ----

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=SECRET, alg="HS256"):
    header = {"alg": alg, "typ": "JWT"}
    signing = b64url(j(header).encode()) + "." + b64url(j(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(secret, signing.encode(), digest).digest()
    return signing + "." + b64url(sig)


def auth_corpus():
    good = jwt({"sub": "alice", "exp": EXP_FUTURE})
    tokens = {
        "token": good,
        "token-rooms": jwt({"sub": "bob", "exp": EXP_FUTURE, "rooms": ["general", "team:*", ""]}),
        "token-no-exp": jwt({"sub": "carol"}),
        "token-fraction-exp": jwt({"sub": "dave", "exp": EXP_FUTURE + 0.5}),
        "token-expired": jwt({"sub": "alice", "exp": EXP_PAST}),
        "token-wrong-secret": jwt({"sub": "alice", "exp": EXP_FUTURE}, secret=b"other"),
        "token-hs512": jwt({"sub": "alice"}, alg="HS512"),
        "token-alg-none": b64url(b'{"alg":"none"}') + "." + b64url(b'{"sub":"eve"}') + ".",
        "token-bad-sub": jwt({"sub": "a\u0001b", "exp": EXP_FUTURE}),
        "token-unicode-sub": jwt({"sub": "Jürgen 🎉", "exp": EXP_FUTURE}),
        "token-rooms-not-array": jwt({"sub": "x", "rooms": "general"}),
        "token-rooms-mixed": jwt({"sub": "x", "rooms": ["a", 1, None]}),
        "token-exp-string": jwt({"sub": "x", "exp": "soon"}),
    }
    for name, t in tokens.items():
        write("fuzz_auth", name, "token=" + t)
    write("fuzz_auth", "user", "user=alice")
    write("fuzz_auth", "user-and-token", "user=alice&token=" + good)
    write("fuzz_auth", "user-encoded", "x=1&user=al%69ce+x&y")
    write("fuzz_auth", "user-bad", "user=%00&user=ok")
    write("fuzz_auth", "user-long", "user=" + "u" * 70)
    # Claims alone: the target signs them itself (its third use of input).
    write("fuzz_auth", "claims", j({"sub": "alice", "exp": EXP_FUTURE, "rooms": ["general", "dm:*"]}))
    write("fuzz_auth", "claims-nested", '{"sub":"z","rooms":[["a"]],"exp":1e300}')
    return good


# ---- client WebSocket frames (fuzz_ws) ----

def frame(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d", rsv=0, len_form=None):
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    form = len_form or (7 if n < 126 else 16 if n < 65536 else 64)
    if form == 7:
        head = bytes([b0, 0x80 | n])
    elif form == 16:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked


def ws_corpus():
    ping_msg = j({"type": "ping", "id": "p1"}).encode()
    join_msg = j(MESSAGES["join"]).encode()
    chat_msg = j(MESSAGES["chat-attachments"]).encode()
    frames = {
        "text-ping": frame(1, ping_msg),
        "text-join-chat": frame(1, join_msg) + frame(1, j(MESSAGES["chat"]).encode()),
        "fragmented": frame(1, chat_msg[:20], fin=False) + frame(0, chat_msg[20:50], fin=False)
                      + frame(0, chat_msg[50:]),
        "fragmented-with-ping": frame(1, ping_msg[:5], fin=False) + frame(9, b"hb")
                                + frame(0, ping_msg[5:]),
        "ping": frame(9, b"are you there"),
        "pong": frame(10, b""),
        "close-1000": frame(8, struct.pack(">H", 1000) + b"bye"),
        "close-empty": frame(8, b""),
        "binary": frame(2, b"\x00\x01\x02\x03"),
        "len126": frame(1, j({"type": "chat", "id": "c1", "payload": {
            "room": "general", "content": "y" * 150}}).encode()),
        "len127-huge": bytes([0x81, 0xff]) + struct.pack(">Q", 1 << 40) + b"\x00\x00\x00\x00",
        "len126-over-limit": frame(1, b" " * 600),
        "unmasked": bytes([0x81, len(ping_msg)]) + ping_msg,
        "bad-utf8": frame(1, b'{"type":"ping","id":"\xff"}'),
        "rsv-bits": frame(1, ping_msg, rsv=4),
        "ping-too-long": frame(9, b"p" * 126),
        "fragmented-control": frame(9, b"x", fin=False),
        "stray-continuation": frame(0, ping_msg),
        "text-then-close": frame(1, ping_msg) + frame(8, struct.pack(">H", 1001)),
        "many-pings": b"".join(frame(1, ping_msg, mask=bytes([i, i + 1, i + 2, i + 3]))
                               for i in range(8)),
        "text-64bit-len": frame(1, ping_msg, len_form=64),
    }
    for name, data in frames.items():
        write("fuzz_ws", name, data)


# ---- TLS (fuzz_tls: a mode byte, then raw client bytes or session operations) ----

# ClientHellos captured once from an in-memory client (Python's ssl module
# over a MemoryBIO, OpenSSL 3.0, ALPN h2 + http/1.1, SNI localhost); kept
# here as bytes because a new capture differs every time (randoms, key
# share).
CLIENT_HELLO_13 = bytes.fromhex(
    "1603010200010001fc0303eeca277415913d302f4bfff85227113c4a36bc8f0de0e8a4a55e8ea1a9d70bcf20ffb17043"
    "68ef1a1540d2a56c2c6ced0acbfa16cbefe648137b9783b41ac007a6000813021303130100ff010001ab0000000e000c"
    "0000096c6f63616c686f7374000b000403000102000a00160014001d0017001e00190018010001010102010301040023"
    "00000010000e000c02683208687474702f312e310016000000170000000d001e001c040305030603080708080809080a"
    "080b080408050806040105010601002b0003020304002d00020101003300260024001d00206541857fcb052c7f1a57ce"
    "2af67348a9bf9264030adda055186cdc2ad2b1ba54001500fc") + bytes(252)    # the padding extension's zeros
CLIENT_HELLO_12 = bytes.fromhex(
    "16030100c1010000bd030316857f065b1ca0d5e640274352fe12df36a6122552dc90cc94c573302aae94f400001ec02c"
    "c030c02bc02fcca9cca8c024c028c023c027009f009e006b006700ff010000760000000e000c0000096c6f63616c686f"
    "7374000b000403000102000a000c000a001d0017001e00190018002300000010000e000c02683208687474702f312e31"
    "0016000000170000000d002a0028040305030603080708080809080a080b080408050806040105010601030303010302"
    "040205020602")


def tls_record(ctype, body, version=b"\x03\x01"):
    return bytes([ctype]) + version + struct.pack(">H", len(body)) + body


def tls_op_msg(payload):
    """fuzz_tls operation 0: the client writes a message of up to 255 bytes."""
    assert len(payload) < 256
    return bytes([0, len(payload)]) + payload


def tls_corpus():
    raw = b"\x00"              # mode byte: raw client bytes
    hs13 = CLIENT_HELLO_13[5:]  # the handshake message without its record header
    sslv2 = (b"\x01\x03\x03\x00\x09\x00\x00\x00\x10" + b"\x00\xc0\x2f\x00\xc0\x2b\x00\x00\x9c"
             + bytes(range(16)))
    raws = {
        "clienthello-tls13": CLIENT_HELLO_13,
        "clienthello-tls12": CLIENT_HELLO_12,
        "clienthello-truncated": CLIENT_HELLO_13[:100],
        "clienthello-two-records": tls_record(22, hs13[:90]) + tls_record(22, hs13[90:]),
        "clienthello-then-garbage": CLIENT_HELLO_12 + tls_record(20, b"\x01", b"\x03\x03")
                                    + tls_record(22, hashlib.sha256(b"finished").digest() * 2, b"\x03\x03"),
        "clienthello-bad-version": CLIENT_HELLO_12[:9] + b"\x03\x01" + CLIENT_HELLO_12[11:],
        "sslv2-clienthello": bytes([0x80, len(sslv2)]) + sslv2,
        "alert-before-hello": tls_record(21, b"\x01\x00"),
        "http-get": upgrade("/ws?user=alice"),
        "http-post": "POST /files?room=r HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        "http-connect": "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "random": b"".join(hashlib.sha256(b"fuzz_tls %d" % i).digest() for i in range(16)),
    }
    for name, data in raws.items():
        if isinstance(data, str):
            data = data.encode()
        write("fuzz_tls", name, raw + data)

    # Sessions: the mode byte's bits, then operations (see fuzz_tls.c).
    up = upgrade("/ws?user=alice").encode()
    ping = frame(1, j(MESSAGES["ping"]).encode())
    chat = (tls_op_msg(up[:100]) + tls_op_msg(up[100:]) + tls_op_msg(ping)
            + bytes([4, 40]) + tls_op_msg(frame(1, j(MESSAGES["chat"]).encode())))
    big = bytes([0x80, 130, 0x81, 7, 0x84, 140])        # 16.75 KiB, 1 KiB, a 17.6 KiB reply
    many = b"".join(bytes([0x80 | (i % 4), 20 + i]) for i in range(12))
    sessions = {
        "session-tls13-chat": (0x07, chat + bytes([6])),
        "session-tls12-chat": (0x05, chat + bytes([7])),
        "session-tls13-no-alpn": (0x03, tls_op_msg(ping) + bytes([7])),
        "session-tls12-h2-only": (0x0d, tls_op_msg(ping) + bytes([4, 3])),
        "session-tls13-h2": (0x0b, tls_op_msg(ping)),
        "session-tls13-resume": (0x17, chat),
        "session-tls12-resume": (0x15, chat),
        "session-big-records": (0x07, big + tls_op_msg(ping) + bytes([7])),
        "session-keyupdate": (0x07, tls_op_msg(ping) + bytes([5, 0x15]) + tls_op_msg(ping)
                              + bytes([4, 9, 5]) + tls_op_msg(ping)),
        "session-renegotiate": (0x05, tls_op_msg(ping) + bytes([5]) + tls_op_msg(ping)),
        "session-swap": (0x17, tls_op_msg(ping) + bytes([0x87]) + tls_op_msg(ping) + bytes([4, 5])),
        "session-write-fails": (0x07, tls_op_msg(ping) + bytes([0x74, 20]) + tls_op_msg(ping)),
        "session-server-shuts-first": (0x07, bytes([6]) + tls_op_msg(ping) + bytes([4, 2, 7])),
        "session-flip": (0x27, many + bytes([7])),
        "session-truncate": (0x45, many + bytes([7])),
        "session-duplicate": (0x67, many + bytes([7])),
    }
    for name, (mode, ops) in sessions.items():
        write("fuzz_tls", name, bytes([mode]) + ops)

def main():
    proto_corpus()
    good = auth_corpus()
    http_corpus(good)
    ws_corpus()
    tls_corpus()


if __name__ == "__main__":
    main()
