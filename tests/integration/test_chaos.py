"""Chaos under load: while senders and receivers keep chatting, workers are
killed with -9, Redis is killed and restarted, MongoDB is stopped and
started, and the master is told to reload. Afterwards every acked message
must be stored exactly once (history through Redis and MongoDB, and the
MongoDB documents themselves), and every receiver that resumed with
`since` must have seen a gap-free, duplicate-free sequence.

Clients behave as the contract asks of them: a sender resends with the same
id until it gets an ack; a receiver reconnects and joins with since = the
last seq it saw."""
import asyncio
import json
import os
import random
import signal
import threading
import time

import websockets

from harness import Chatd, Redis, wait_for, timeout

from harness import Congo

TAG = str(int(time.time()) % 100000)
ROOM = f"chaos-{TAG}"


class Sender:
    def __init__(self, port, name):
        self.port, self.name = port, name
        self.acked = {}             # id -> seq
        self.reconnects = 0

    async def run(self, stop):
        n = 0
        ws = None
        while not stop.is_set():
            mid = f"{self.name}-{n}"
            try:
                if ws is None:
                    ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/ws?user={self.name}",
                                                  open_timeout=3, ping_interval=None)
                    await asyncio.wait_for(ws.recv(), 3)                # welcome
                    await ws.send(json.dumps({"type": "join", "id": "j", "payload": {"room": ROOM}}))
                    if (await self._answer(ws, "j"))["type"] != "joined":
                        raise OSError("join refused (storage unavailable): retry")
                await ws.send(json.dumps({"type": "chat", "id": mid,
                                          "payload": {"room": ROOM, "content": mid}}))
                f = await self._answer(ws, mid)
                if f["type"] == "ack":
                    seq = f["payload"]["seq"]
                    prev = self.acked.setdefault(mid, seq)
                    assert prev == seq, f"{mid} acked as {prev} and {seq}"
                    n += 1
                    await asyncio.sleep(0.02)
                else:
                    await asyncio.sleep(0.2)    # unavailable: resend the same id
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
                self.reconnects += 1
                if ws is not None:
                    ws.transport.abort()
                ws = None
                await asyncio.sleep(0.2 + random.random() * 0.3)
        if ws is not None:
            await ws.close()

    @staticmethod
    async def _answer(ws, rid):
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), 12))
            if f.get("id") == rid:
                if f["type"] == "error" and f["payload"]["code"] not in ("unavailable", "internal"):
                    raise AssertionError(f"unexpected error for {rid}: {f}")
                return f


class Receiver:
    def __init__(self, port, name):
        self.port, self.name = port, name
        self.last = None
        self.seen = []
        self.problems = []
        self.reconnects = 0

    async def run(self, stop):
        while not stop.is_set():
            ws = None
            try:
                ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/ws?user={self.name}",
                                              open_timeout=3, ping_interval=None)
                await asyncio.wait_for(ws.recv(), 3)
                p = {"room": ROOM}
                if self.last is not None:
                    p["since"] = self.last
                await ws.send(json.dumps({"type": "join", "id": "j", "payload": p}))
                while not stop.is_set():
                    try:
                        f = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except asyncio.TimeoutError:
                        continue
                    if f["type"] == "error" and f.get("id") == "j":
                        raise OSError("join refused (storage unavailable): retry")
                    if f["type"] == "joined":
                        if self.last is None:
                            self.last = f["payload"]["seq"]
                        elif not f["payload"]["recovered"]:
                            self.problems.append(f"not recovered at since={self.last}: {f}")
                    elif f["type"] == "chat":
                        seq = f["payload"]["seq"]
                        if self.last is not None and seq != self.last + 1:
                            self.problems.append(f"after {self.last} got {seq}")
                        self.last = seq
                        self.seen.append(seq)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
                self.reconnects += 1
                await asyncio.sleep(0.2 + random.random() * 0.3)
            finally:
                if ws is not None:
                    ws.transport.abort()


async def history_all(port):
    """Every message of ROOM through history paging (Redis, then MongoDB)."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws?user=auditor") as ws:
        await ws.recv()
        for attempt in range(50):
            await ws.send(json.dumps({"type": "join", "id": f"j{attempt}", "payload": {"room": ROOM}}))
            f = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if f["type"] == "joined":
                break
            await asyncio.sleep(0.2)    # a worker still reconnecting to Redis
        assert f["type"] == "joined", f
        out, before = [], None
        for page in range(200):
            p = {"room": ROOM, "limit": 100}
            if before is not None:
                p["before"] = before
            for attempt in range(60):
                rid = f"h{page}-{attempt}"
                await ws.send(json.dumps({"type": "history", "id": rid, "payload": p}))
                while True:
                    f = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if f.get("id") == rid:
                        break
                if f["type"] == "history":
                    break
                # The archive may still be coming back: retry, as a client would.
                assert f["payload"]["code"] == "unavailable", f
                await asyncio.sleep(0.5)
            assert f["type"] == "history", f
            msgs = f["payload"]["messages"]
            out = msgs + out
            if not f["payload"]["more"] or not msgs:
                return out
            before = msgs[0]["seq"]
        raise AssertionError("history did not end")


@timeout(240)
def test_chaos_nothing_acked_is_lost_or_doubled():
    Congo.setup()
    redis = Redis(name="redis-chaos").start()
    mongo = Congo().start()
    srv = Chatd(redis, workers=3, name="chaos",
                args=["--mongo-uri", mongo.uri, "--rate", "1000", "--burst", "1000",
                      "--recovery-window", "5000"]).start()
    events = []
    try:
        senders = [Sender(srv.port, f"snd{i}") for i in range(4)]
        receivers = [Receiver(srv.port, f"rcv{i}") for i in range(4)]

        # The clients run on an event loop in a thread of their own; the
        # chaos comes from this (the test's) thread, because the harness
        # ties each server's life to the thread that started it.
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        async def clients():
            tasks = [asyncio.create_task(c.run(stop)) for c in receivers]
            await asyncio.sleep(1.0)
            tasks += [asyncio.create_task(c.run(stop)) for c in senders]
            await asyncio.gather(*tasks)

        runner = threading.Thread(target=loop.run_until_complete, args=(clients(),), daemon=True)
        runner.start()

        def kill_worker():
            os.kill(random.choice(srv.worker_pids()), signal.SIGKILL)

        def restart_redis():
            redis.kill9()
            time.sleep(1.0)
            redis.restart()

        script = [
            (3, "kill -9 a worker", kill_worker),
            (3, "kill -9 redis, restart", restart_redis),
            (3, "stop mongodb", mongo.stop),
            (3, "HUP the master", lambda: os.kill(srv.pid, signal.SIGHUP)),
            (3, "start mongodb", mongo.start),
            (3, "kill -9 a worker", kill_worker),
            (3, "kill -9 redis, restart", restart_redis),
        ]
        for pause, what, fn in script:
            time.sleep(pause)
            events.append(what)
            fn()
        time.sleep(4)
        loop.call_soon_threadsafe(stop.set)
        runner.join(40)
        assert not runner.is_alive(), "clients did not stop"
        loop.close()

        acked = {}
        for s in senders:
            acked.update(s.acked)
        assert len(acked) > 200, f"too little traffic to judge: {len(acked)} acked"
        seqs = sorted(acked.values())
        assert len(set(seqs)) == len(seqs), "two ids were acked with the same seq"

        # History (Redis log, then MongoDB) holds every acked message once.
        hist = asyncio.run(history_all(srv.port))
        hseqs = [m["seq"] for m in hist]
        assert len(set(hseqs)) == len(hseqs), "history repeats a seq"
        by_seq = {m["seq"]: m for m in hist}
        missing = [s for s in seqs if s not in by_seq]
        assert not missing, f"acked but not in history: {missing[:20]}"
        for mid, seq in acked.items():
            assert by_seq[seq]["cid"] == mid, f"seq {seq}: {by_seq[seq]} is not {mid}"
        assert hseqs == list(range(1, len(hseqs) + 1)), "history has gaps"

        # MongoDB itself: every acked message stored exactly once.
        def archived():
            docs = mongo.docs(ROOM)
            got = [d["seq"] for d in docs]
            return len(got) == len(set(got)) and set(seqs) <= set(got)
        try:
            wait_for(archived, 90, interval=1.0, what="archive caught up")
        except AssertionError:
            got = [d["seq"] for d in mongo.docs(ROOM)]
            raise AssertionError(
                f"archive: {len(got)} docs, dups {sorted({x for x in got if got.count(x) > 1})[:10]}, "
                f"missing {sorted(set(seqs) - set(got))[:10]} of {len(seqs)} acked; "
                f"stream len {redis.command('XLEN', 'chatd:archive')}, "
                f"pending {redis.command('XPENDING', 'chatd:archive', 'archivers')}")
        docs = mongo.docs(ROOM)
        dseqs = [d["seq"] for d in docs]
        assert len(dseqs) == len(set(dseqs)), "a message is stored twice in MongoDB"

        for r in receivers:
            assert not r.problems, f"{r.name}: {r.problems[:5]}"
            assert len(r.seen) == len(set(r.seen)), f"{r.name} saw duplicates"
            assert r.seen, f"{r.name} saw nothing"
        print(f"FIGURE chaos acked={len(acked)} history={len(hist)} "
              f"sender_reconnects={sum(s.reconnects for s in senders)} "
              f"receiver_reconnects={sum(r.reconnects for r in receivers)} events={len(events)}")
    finally:
        srv.stop(check=False)
        mongo.stop()
        redis.stop()
