"""
redisproto: the little of Redis's protocol the benchmark scripts need
(scripts/bench-cluster.py, scripts/shard-load.py): Redis Cluster's key
slot, and a blocking RESP client that pipelines. Standard library only.
The test suite has its own (tests/integration/harness.py), so that the
tests never depend on the benchmarks.
"""

import socket


def _crc16_table():
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        table.append(c & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def keyslot(key):
    """CRC16-XMODEM mod 16384 of the key, or of its hash tag."""
    if isinstance(key, str):
        key = key.encode()
    i = key.find(b"{")
    if i >= 0:
        j = key.find(b"}", i + 1)
        if j > i + 1:
            key = key[i + 1:j]
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc % 16384


def encode(*args):
    """One command in RESP."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(a)}\r\n".encode() + a + b"\r\n")
    return b"".join(out)


class RedisError(Exception):
    pass


class Redis:
    """One connection. Error replies come back as RedisError objects from
    pipeline()/send_raw(), and are raised by call()."""

    def __init__(self, port, host="127.0.0.1", timeout=30):
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.sent = {}      # commands sent, by name: they show up in this node's stats
        self.batches = 0    # writes of ours: about one read each for the server

    def close(self):
        self.sock.close()

    def pipeline(self, cmds):
        self.sock.sendall(b"".join(encode(*c) for c in cmds))
        self.batches += 1
        for c in cmds:
            name = (c[0] if isinstance(c[0], str) else c[0].decode()).lower()
            if name == "cluster":
                name += "|" + str(c[1]).lower()
            self.sent[name] = self.sent.get(name, 0) + 1
        return [self._reply() for _ in cmds]

    def send_raw(self, data, n):
        """Sends already encoded commands; returns their n replies."""
        self.sock.sendall(data)
        self.batches += 1
        return [self._reply() for _ in range(n)]

    def call(self, *args):
        r = self.pipeline([args])[0]
        if isinstance(r, RedisError):
            raise r
        return r

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"redis {self.port} closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"redis {self.port} closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RedisError(f"unexpected reply {line[:40]!r}")
