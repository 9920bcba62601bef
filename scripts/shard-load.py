#!/usr/bin/python3
"""
shard-load: how many messages one Redis (a cluster master, or a single
Redis) can take, and its CPU per message, with chatd's own send script but
without chatd or the load tool in the way: on a 2-core machine those take
the cores a shard would need, so a chatd run cannot show a shard's limit.

It sends the commands chatd's workers send for M chat messages to R rooms
(rooms whose slot the node owns, each message with an id, so the dedup
entry is made too) from C client processes, each in batches of B sent at
once and then waited for, as a busy worker does in one loop iteration.
With --ack-replicas N it sends what chatd sends in that mode: the send
script without publish, one WAIT N after each batch, then one commit
script per room of the batch (which publishes).
K subscriber connections (redis-cli SSUBSCRIBE/SUBSCRIBE to every room's
channel) stand for chatd's workers, so publishes cost what they cost.

Prints one JSON object: messages, wall seconds, messages/s, CPU seconds and
µs per message of the node and (if any) its replicas.

Usage: shard-load.py --port P [--host H] [--rooms 5000] [--messages 200000]
       [--ack-replicas 0] [--clients 2] [--batch 32] [--subscribers 2] [--size 64]
Standard library only. The node's data is flushed first (FLUSHALL): point
it at a benchmark Redis only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from redisproto import Redis, RedisError, encode as resp, keyslot  # noqa: E402

STORE_C = os.path.join(HERE, "..", "worker", "data", "store.c")


def lua_script(name):
    """The text of one of store.c's scripts, as chatd sends it."""
    src = open(STORE_C).read()
    m = re.search(r"static const char %s\[\] =\n(.*?);\n" % re.escape(name), src, re.S)
    if m is None:
        sys.exit(f"shard-load: {name} not found in {STORE_C}")
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
    return "".join(bytes(p, "utf-8").decode("unicode_escape") for p in parts)


def command(host, port, *args):
    """One command over a fresh connection; raises RedisError on an error."""
    r = Redis(port, host=host, timeout=10)
    try:
        return r.call(*args)
    finally:
        r.close()


def info(host, port, section):
    text = command(host, port, "INFO", section).decode()
    return dict(l.split(":", 1) for l in text.splitlines() if ":" in l)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rooms", type=int, default=5000)
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--ack-replicas", type=int, default=0)
    ap.add_argument("--clients", type=int, default=2, help="connections, like chatd's workers")
    ap.add_argument("--batch", type=int, default=32,
                    help="messages a client sends before it waits for the replies (and, with acks, one WAIT)")
    ap.add_argument("--subscribers", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="content bytes")
    o = ap.parse_args()

    srv = info(o.host, o.port, "server")
    cluster = info(o.host, o.port, "cluster").get("cluster_enabled") == "1"
    pid = int(srv["process_id"])
    # The rooms: names whose slot this node serves.
    owned = None
    if cluster:
        owned = set()
        myid = command(o.host, o.port, "CLUSTER", "MYID").decode()
        for lo, hi, master, *_ in command(o.host, o.port, "CLUSTER", "SLOTS"):
            if master[2].decode() == myid:
                owned.update(range(lo, hi + 1))
    rooms, i = [], 0
    while len(rooms) < o.rooms:
        name = f"sl-{i}"
        if owned is None or keyslot(f"chatd:{{{name}}}") in owned:
            rooms.append(name)
        i += 1
    # The replicas' pids (same machine), for their CPU.
    repl = info(o.host, o.port, "replication")
    replicas = []
    for k, v in repl.items():
        if re.fullmatch(r"slave\d+", k):
            f = dict(x.split("=", 1) for x in v.split(","))
            replicas.append(int(info(f["ip"], int(f["port"]), "server")["process_id"]))

    command(o.host, o.port, "FLUSHALL")
    send_lua = lua_script("store_send_lua")
    commit_lua = lua_script("store_commit_lua")
    send_sha = command(o.host, o.port, "SCRIPT", "LOAD", send_lua).decode()
    commit_sha = command(o.host, o.port, "SCRIPT", "LOAD", commit_lua).decode()
    verb = "SPUBLISH" if cluster else "PUBLISH"
    waits = "1" if o.ack_replicas > 0 else "0"

    # Each client owns the rooms i with i % clients == its index, like a
    # worker owns its rooms' senders, and keeps their seqs for the commits.
    content = "x" * o.size
    batches = []
    for k in range(o.clients):
        mine = rooms[k::o.clients]
        seqs, per_client, pending, cmds = {}, [], {}, []
        nmsg = o.messages // o.clients
        for n in range(nmsg):
            room = mine[n % len(mine)]
            sender = f"u{n % 997}"
            mid = f"m{k}-{n}"
            tail = (f'"sender":"{sender}","content":"{content}","attachments":[],"cid":"{mid}"}}')
            cmds.append(resp("EVALSHA", send_sha, 5, f"chatd:{{{room}}}:seq", f"chatd:{{{room}}}:log",
                             f"chatd:{{{room}}}:d:{len(sender)}:{sender}:{mid}", f"chatd:{{{room}}}:aq",
                             f"chatd:{{{room}}}:archived", f'{{"room":"{room}","seq":', tail,
                             86400, 1000, f"chatd:{{{room}}}", 1, 0, room, verb, waits))
            seqs[room] = seqs.get(room, 0) + 1
            pending[room] = seqs[room]
            if len(cmds) >= o.batch or n == nmsg - 1:
                nreplies = len(cmds)
                if o.ack_replicas > 0:
                    # What one worker iteration sends: the scripts, one WAIT,
                    # and (once it answers) the commits.
                    cmds.append(resp("WAIT", o.ack_replicas, 1000))
                    commits = [resp("EVALSHA", commit_sha, 3, f"chatd:{{{r}}}:durable",
                                    f"chatd:{{{r}}}:log", f"chatd:{{{r}}}:aq", sq, f"chatd:{{{r}}}",
                                    verb, 0, r)
                               for r, sq in pending.items()]
                    per_client.append((b"".join(cmds), nreplies + 1))
                    per_client.append((b"".join(commits), len(commits)))
                else:
                    per_client.append((b"".join(cmds), nreplies))
                cmds, pending = [], {}
        batches.append(per_client)

    subs = []
    try:
        chans = [f"chatd:{{{r}}}" for r in rooms]
        for _ in range(o.subscribers):
            subs.append(subprocess.Popen(
                ["redis-cli", "-h", o.host, "-p", str(o.port), "SSUBSCRIBE" if cluster else "SUBSCRIBE"] + chans,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            num = command(o.host, o.port, "PUBSUB", "SHARDNUMSUB" if cluster else "NUMSUB", chans[-1])[1]
            if num >= o.subscribers:
                break
            time.sleep(0.05)
        c0, r0 = cpu_seconds(pid), [cpu_seconds(p) for p in replicas]
        t0 = time.monotonic()
        kids = []
        for k in range(o.clients):
            child = os.fork()
            if child == 0:
                os._exit(run_client(o.host, o.port, batches[k]))
            kids.append(child)
        errors = 0
        for child in kids:
            _, status = os.waitpid(child, 0)
            errors += os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        c1, r1 = cpu_seconds(pid), [cpu_seconds(p) for p in replicas]
    finally:
        for sp in subs:
            sp.kill()
            sp.wait()
    total = (o.messages // o.clients) * o.clients
    stored = sum(int(command(o.host, o.port, "GET", f"chatd:{{{r}}}:seq") or 0) for r in rooms)
    cpu = c1 - c0
    rcpu = [b - a for a, b in zip(r0, r1)]
    print(json.dumps({
        "port": o.port, "cluster": cluster, "rooms": len(rooms), "messages": total,
        "stored": stored, "ack_replicas": o.ack_replicas, "clients": o.clients, "batch": o.batch,
        "subscribers": o.subscribers, "client_errors": errors,
        "wall_s": round(wall, 3), "msgs_per_s": round(total / wall),
        "cpu_s": round(cpu, 3), "cpu_us_per_msg": round(cpu / total * 1e6, 2),
        "cpu_share": round(cpu / wall, 3),
        "replica_cpu_s": [round(x, 3) for x in rcpu],
        "replica_cpu_us_per_msg": [round(x / total * 1e6, 2) for x in rcpu],
    }))
    return 0 if errors == 0 and stored == total else 1


def run_client(host, port, batches):
    """Sends each batch, reads all its replies, then the next: a closed
    loop, as a worker waits for its Redis replies. Returns the number of
    error replies (capped at 255)."""
    errors = 0
    r = Redis(port, host=host, timeout=60)
    for data, n in batches:
        errors += sum(isinstance(x, RedisError) for x in r.send_raw(data, n))
    r.close()
    return min(errors, 255)


if __name__ == "__main__":
    sys.exit(main())
