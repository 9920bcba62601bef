#!/usr/bin/env python3
"""
What permessage-deflate costs and saves (a documented manual command, not a
test): one chatd worker with --deflate, a real Redis (AOF on tmpfs), one
room of R receivers and one sender of M chat messages shaped like real
chat (a sentence or two of text in the contract's JSON). Run once with
receivers that negotiate the extension and once with receivers that do
not, and report the worker's CPU time and the bytes it wrote (from
/proc/<pid>/stat and /proc/<pid>/io), then the worker's memory per idle
connection with and without the extension.

Usage: /usr/bin/python3 scripts/bench-deflate.py [--receivers 100] [--messages 1000] [--idle 2000]
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
import websockets  # noqa: E402

WORDS = ("the meeting moved to three tomorrow please bring the notes from last week and the budget "
         "draft we still need numbers for the second quarter thanks everyone great work on the launch "
         "can someone review my pull request before lunch I think the deploy is blocked on tests").split()


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))).capitalize() + "."


def proc_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_wchar(pid):
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run_phase(port, pid, receivers, messages, compress, tag):
    url = f"ws://127.0.0.1:{port}/ws?user="
    room = f"bench-{tag}"
    clients = []
    for i in range(receivers):
        ws = await websockets.connect(url + f"r{i}", compression="deflate" if compress else None,
                                      max_size=None, ping_interval=None)
        await ws.send(json.dumps({"type": "join", "id": "j", "payload": {"room": room}}))
        clients.append(ws)
    sender = await websockets.connect(url + "sender", compression=None, max_size=None, ping_interval=None)
    await sender.send(json.dumps({"type": "join", "id": "j", "payload": {"room": room}}))
    await asyncio.sleep(1.0)
    counts = [0] * receivers

    async def drain(i, ws):
        while counts[i] < messages:
            f = json.loads(await ws.recv())
            if f["type"] == "chat":
                counts[i] += 1
    tasks = [asyncio.ensure_future(drain(i, ws)) for i, ws in enumerate(clients)]
    rng = random.Random(7)
    cpu0, w0, t0 = proc_cpu(pid), proc_wchar(pid), time.monotonic()
    for k in range(messages):
        await sender.send(json.dumps({"type": "chat", "id": f"m{k}",
                                      "payload": {"room": room, "content": sentence(rng)}}))
        if k % 50 == 49:
            await asyncio.sleep(0.05)      # stay under the rate limit and let receivers keep up
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    cpu, wrote, secs = proc_cpu(pid) - cpu0, proc_wchar(pid) - w0, time.monotonic() - t0
    for ws in clients + [sender]:
        await ws.close()
    return {"cpu_s": round(cpu, 3), "bytes_written": wrote, "seconds": round(secs, 2),
            "bytes_per_delivery": round(wrote / (receivers * messages), 1)}


def idle_memory(port, pid, n, compress):
    socks = []
    before = rss_kb(pid)
    headers = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"} if compress else {}
    for i in range(n):
        ws = harness.RawWS(port)
        resp = ws.handshake(f"/ws?user=idle{i}", headers=headers)
        assert resp.status == 101
        assert ("sec-websocket-extensions" in resp.headers) == compress
        socks.append(ws)
    time.sleep(3)                            # the worker releases idle state on its tick
    after = rss_kb(pid)
    for ws in socks:
        ws.close_socket()
    time.sleep(2)
    return round((after - before) * 1024 / n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--receivers", type=int, default=100)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--idle", type=int, default=2000)
    a = ap.parse_args()
    harness._raise_nofile()
    import tempfile
    shm = tempfile.mkdtemp(prefix="chatd-bench-", dir="/dev/shm")     # the AOF on tmpfs
    redis = harness.Redis(name="bench-deflate", extra_args=["--dir", shm]).start()
    srv = harness.Chatd(redis, workers=1, name="bench-deflate",
                        args=["--deflate", "--rate", "100000", "--burst", "100000"]).start()
    pid = srv.worker_pids()[0]
    try:
        out = {"receivers": a.receivers, "messages": a.messages}
        out["plain"] = asyncio.run(run_phase(srv.port, pid, a.receivers, a.messages, False, "plain"))
        out["deflate"] = asyncio.run(run_phase(srv.port, pid, a.receivers, a.messages, True, "deflate"))
        out["idle_bytes_per_conn_plain"] = idle_memory(srv.port, pid, a.idle, False)
        out["idle_bytes_per_conn_deflate"] = idle_memory(srv.port, pid, a.idle, True)
        p, d = out["plain"], out["deflate"]
        out["bytes_saved_pct"] = round(100 * (1 - d["bytes_written"] / p["bytes_written"]), 1)
        out["cpu_delta_pct"] = round(100 * (d["cpu_s"] / p["cpu_s"] - 1), 1) if p["cpu_s"] else None
        print(json.dumps(out, indent=2))
    finally:
        srv.stop()
        redis.stop()
        harness.cleanup_all()
        import shutil
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
