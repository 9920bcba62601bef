#!/usr/bin/python3
"""Helper of scripts/bench-cluster (standard library only): the measuring
around each chat-load run and the report math.

  ports N                 N free loopback ports whose port + 10000 (the
                          cluster bus) is free too
  run --nodes PORT:PID,... [--cluster] --rooms R --duration D --meta JSON
      --out FILE --log FILE --pidfile FILE -- CHAT-LOAD ARGS...
                          runs chat-load and samples every Redis process
                          around it: before, at its t=1s and t=Ds progress
                          lines (the send phase) and after it
  verdict FILE            dm-max: exit 1 (and say why) when the run in FILE
                          is past the machine: acked/s < 90 % of offered or
                          ack p99 > 500 ms
  report --work DIR --out DIR --date D --label L --header JSON [--before FILE]
                          docs/bench/<date>-cluster-<label>.json and .md

Per Redis process it records CPU (utime + stime from /proc/PID/stat: the
whole process, AOF and replication threads included), the commands it ran
(the sum of `calls` over INFO commandstats; Redis 7 counts the commands Lua
scripts run there too), the script calls among them (EVAL, EVALSHA, FCALL
and their _RO forms: one per client request that runs a script), the
socket reads it processed (total_reads_processed: about one per batch a
client sent) and, on masters, the messages stored:
the sum over the rooms of GET chatd:{load-i}:seq (every run starts from a
FLUSHALL, so the seq is the count of messages the room got), each room
counted on the master owning keyslot("load-i") in CLUSTER SLOTS. That is
exact, with no assumption that every room got the same rate. This helper's
own commands (INFO, the GETs) are left out of the counts.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from redisproto import Redis, RedisError, keyslot  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def room_key(i):
    return f"chatd:{{load-{i}}}:seq"


# ---- topology ----------------------------------------------------------------

def topology(nodes, cluster, rooms):
    """Names, roles, the rooms each master owns. nodes: [(port, pid)]."""
    conns = {port: Redis(port) for port, _ in nodes}
    pids = dict(nodes)
    if not cluster:
        port = nodes[0][0]
        return conns, [{"name": "redis", "role": "master", "port": port, "pid": pids[port],
                        "master": None, "slots": 16384, "rooms": list(range(rooms))}]
    first = conns[nodes[0][0]]
    owner = [None] * 16384
    for r in first.call("CLUSTER", "SLOTS"):
        port = int(r[2][1])
        for s in range(int(r[0]), int(r[1]) + 1):
            owner[s] = port
    ids, lines = {}, []
    for line in first.call("CLUSTER", "NODES").decode().splitlines():
        f = line.split()
        port = int(f[1].split("@")[0].rsplit(":", 1)[1])
        ids[f[0]] = port
        lines.append((port, "master" in f[2].split(","), f[3]))
    masters = sorted((p for p, is_master, _ in lines if is_master and p in owner),
                     key=lambda p: owner.index(p))
    out, names = [], {}
    for k, port in enumerate(masters, 1):
        names[port] = f"m{k}"
        out.append({"name": f"m{k}", "role": "master", "port": port, "pid": pids.get(port),
                    "master": None, "slots": owner.count(port),
                    "rooms": [i for i in range(rooms) if owner[keyslot(f"load-{i}")] == port]})
    for port, is_master, mid in sorted(lines):
        if is_master:
            continue
        m = ids.get(mid)
        base = "r" + names.get(m, "?")[1:]
        name = base
        while name in names.values():
            name += "'"
        names[port] = name
        out.append({"name": name, "role": "replica", "port": port, "pid": pids.get(port),
                    "master": names.get(m), "slots": 0, "rooms": []})
    return conns, out


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])     # utime + stime (fields 14 and 15)


def machine_busy():
    """Busy CPU ticks of the whole machine, all cores (/proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return f[0] + f[1] + f[2] + f[5] + f[6] + f[7]     # user nice system irq softirq steal


def snapshot(conns, topo, with_seq):
    """One sample of every node: CPU, then the command counters, then (on
    masters, when with_seq) the rooms' seqs."""
    snap = {}
    for n in topo:
        c = conns[n["port"]]
        s = {"t": time.monotonic(), "ticks": proc_ticks(n["pid"]), "own": dict(c.sent),
             "own_batches": c.batches}
        info = c.call("INFO", "stats", "commandstats").decode()
        s["cmds"] = {k: int(v) for k, v in re.findall(r"^cmdstat_([^:]+):calls=(\d+)", info, re.M)}
        m = re.search(r"^total_reads_processed:(\d+)", info, re.M)
        s["reads"] = int(m.group(1)) if m else 0
        if with_seq and n["role"] == "master" and n["rooms"]:
            vals = c.pipeline([("GET", room_key(i)) for i in n["rooms"]])
            bad = [v for v in vals if isinstance(v, RedisError)]
            if bad:
                raise bad[0]
            s["seq"] = sum(int(v) for v in vals if v is not None)
        elif with_seq:
            s["seq"] = 0
        snap[n["name"]] = s
    return snap


SCRIPTS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}


def delta(topo, a, b):
    """Per node: CPU, commands and messages between snapshots a and b, less
    this helper's own commands (INFO, GET, CLUSTER ...)."""
    out = {}
    for n in topo:
        x, y = a[n["name"]], b[n["name"]]
        by = {}
        for k in set(x["cmds"]) | set(y["cmds"]):
            v = y["cmds"].get(k, 0) - x["cmds"].get(k, 0) - (y["own"].get(k, 0) - x["own"].get(k, 0))
            if v:
                by[k] = v
        d = {"seconds": round(y["t"] - x["t"], 3),
             "cpu_s": round((y["ticks"] - x["ticks"]) / CLK_TCK, 3),
             "commands": sum(by.values()),
             "scripts": sum(v for k, v in by.items() if k in SCRIPTS),
             "reads": y["reads"] - x["reads"] - (y["own_batches"] - x["own_batches"]),
             "by_command": dict(sorted(by.items(), key=lambda kv: -kv[1]))}
        if n["role"] == "master":
            d["messages"] = (y.get("seq") or 0) - (x.get("seq") or 0)
        out[n["name"]] = d
    return out


def figures(topo, per_node, seconds):
    """Shards (master + replicas) and totals from the per-node deltas."""
    def us(cpu, msgs):
        return round(cpu / msgs * 1e6, 2) if msgs else None

    def ratio(a, b):
        return round(a / b, 2) if b else None
    shards = []
    for m in (n for n in topo if n["role"] == "master"):
        d = per_node[m["name"]]
        reps = [n for n in topo if n["master"] == m["name"]]
        rcpu = sum(per_node[r["name"]]["cpu_s"] for r in reps)
        msgs = d["messages"]
        shards.append({
            "shard": m["name"], "port": m["port"], "replicas": [r["name"] for r in reps],
            "slots": m["slots"], "rooms": len(m["rooms"]), "messages": msgs,
            "msgs_per_s": round(msgs / seconds, 1) if seconds else None,
            "master_cpu_s": d["cpu_s"], "master_cpu_pct": round(d["cpu_s"] / d["seconds"] * 100, 1),
            "master_us_per_msg": us(d["cpu_s"], msgs),
            "replica_cpu_s": round(rcpu, 3) if reps else None,
            "replica_cpu_pct": round(rcpu / d["seconds"] * 100, 1) if reps else None,
            "replica_us_per_msg": us(rcpu, msgs) if reps else None,
            "shard_us_per_msg": us(d["cpu_s"] + rcpu, msgs),
            "master_commands_per_msg": ratio(d["commands"], msgs),
            "master_scripts_per_msg": ratio(d["scripts"], msgs),
            "master_reads_per_msg": ratio(d["reads"], msgs),
        })
    msgs = sum(s["messages"] for s in shards)
    mcpu = sum(per_node[n["name"]]["cpu_s"] for n in topo if n["role"] == "master")
    acpu = sum(per_node[n["name"]]["cpu_s"] for n in topo)
    def msum(k):
        return sum(per_node[n["name"]][k] for n in topo if n["role"] == "master")
    span = max(d["seconds"] for d in per_node.values())
    return {"seconds": seconds, "nodes": per_node, "shards": shards, "totals": {
        "messages": msgs, "msgs_per_s": round(msgs / seconds, 1) if seconds else None,
        "masters_cpu_s": round(mcpu, 3), "all_cpu_s": round(acpu, 3),
        "masters_us_per_msg": us(mcpu, msgs), "all_us_per_msg": us(acpu, msgs),
        "busiest_cpu_pct": round(max(d["cpu_s"] for d in per_node.values()) / span * 100, 1),
        "master_commands_per_msg": ratio(msum("commands"), msgs),
        "master_scripts_per_msg": ratio(msum("scripts"), msgs),
        "master_reads_per_msg": ratio(msum("reads"), msgs)}}


# ---- run ---------------------------------------------------------------------

def kill_tree(pid):
    """chat-load's children do not die with it: kill them by pid, then it."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(k) for k in fh.read().split()]
    except OSError:
        kids = []
    for p in kids + [pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def cmd_run(argv):
    i = argv.index("--")
    opts, load = argv[:i], argv[i + 1:]
    o = dict(cluster=False)
    k = 0
    while k < len(opts):
        if opts[k] == "--cluster":
            o["cluster"] = True
            k += 1
        else:
            o[opts[k][2:]] = opts[k + 1]
            k += 2
    nodes = [tuple(int(x) for x in s.split(":")) for s in o["nodes"].split(",")]
    rooms, duration = int(o["rooms"]), int(o["duration"])
    conns, topo = topology(nodes, o["cluster"], rooms)

    m0, me0 = machine_busy(), os.times()
    pre = snapshot(conns, topo, with_seq=False)
    log = open(o["log"], "w")
    proc = subprocess.Popen(load, stdout=log, stderr=log)
    with open(o["pidfile"], "w") as fh:
        fh.write(f"{proc.pid}\n")

    def stop(signum, _frame):
        kill_tree(proc.pid)
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # The send phase: from the first progress line (senders started a second
    # ago, at random phases) to the last one (they stop right after it).
    first, last = "t=1s ", f"t={duration}s "
    w0 = w1 = None
    carry = ""
    with open(o["log"]) as rd:
        while True:
            done = proc.poll() is not None
            carry += rd.read()
            *lines, carry = carry.split("\n")     # whole lines only
            for line in lines:
                if w0 is None and line.startswith(first):
                    w0 = snapshot(conns, topo, with_seq=True)
                elif w0 is not None and w1 is None and line.startswith(last):
                    w1 = snapshot(conns, topo, with_seq=True)
            if done:
                break
            time.sleep(0.02)
    post = snapshot(conns, topo, with_seq=True)
    m1, me1 = machine_busy(), os.times()
    os.unlink(o["pidfile"])

    meta = json.loads(o["meta"])
    try:
        with open(o["load-json"]) as fh:
            report = json.load(fh)
    except (OSError, ValueError) as e:
        report = None
        meta["error"] = f"no chat-load report: {e}"
    whole = figures(topo, delta(topo, pre, post), duration)
    window = figures(topo, delta(topo, w0, w1), round(w1[topo[0]["name"]]["t"] - w0[topo[0]["name"]]["t"], 3)) \
        if w0 and w1 else None
    run = dict(meta)
    run.update({
        "chat_load_rc": proc.returncode, "load": report,
        "redis_nodes": [{k: v for k, v in n.items() if k != "rooms"} | {"rooms": len(n["rooms"])} for n in topo],
        "redis_run": whole, "redis_send_phase": window})
    if report:
        m, dur = report["messages"], duration
        run["acked_per_s"] = round(m["acked"] / dur, 1)
        run["chatd"] = {"cpu_s": report["server"]["cpu_s"],
                        "us_per_msg": round(report["server"]["cpu_s"] / m["acked"] * 1e6, 2) if m["acked"] else None}
        run["tool_cpu_s"] = report["tool"]["cpu_s"]
        # What the machine's cores did besides this run's Redis, chatd,
        # chat-load and this helper: the other (idle) Redis of this script,
        # and anything else running on the machine, which skews the figures.
        span = post[topo[0]["name"]]["t"] - pre[topo[0]["name"]]["t"]
        busy = (m1 - m0) / CLK_TCK
        mine = whole["totals"]["all_cpu_s"] + report["server"]["cpu_s"] + report["tool"]["cpu_s"] + \
            (me1.user + me1.system - me0.user - me0.system)
        run["machine"] = {"seconds": round(span, 2), "busy_cpu_s": round(busy, 2),
                          "busy_cores": round(busy / span, 2),
                          "other_cpu_s": round(busy - mine, 2), "other_cores": round((busy - mine) / span, 2)}
    with open(o["out"], "w") as fh:
        json.dump(run, fh, indent=1)
    t = whole["totals"]
    acked = report["messages"]["acked"] if report else 0
    print(f"bench-cluster: {meta['name']}: acked {acked} ({run.get('acked_per_s', 0):,.0f}/s of "
          f"{meta['offered_msgs_per_s']:,.0f} offered), Redis stored {t['messages']}, "
          f"ack p99 {report['ack_ms']['p99'] if report else '-'} ms, "
          f"Redis CPU {t['all_us_per_msg']} µs/msg (masters {t['masters_us_per_msg']}), "
          f"busiest Redis {(window or whole)['totals']['busiest_cpu_pct']} % of a core",
          file=sys.stderr)
    other = run.get("machine", {}).get("other_cores", 0)
    if other > 0.15:
        print(f"bench-cluster: {meta['name']}: warning: {other:.2f} cores went to processes outside this run "
              f"(another job on the machine?): its figures are skewed", file=sys.stderr)


# ---- verdict -----------------------------------------------------------------

def cmd_verdict(argv):
    with open(argv[0]) as fh:
        run = json.load(fh)
    if not run.get("load"):
        print("no chat-load report")
        sys.exit(1)
    offered, acked = run["offered_msgs_per_s"], run["acked_per_s"]
    p99 = run["load"]["ack_ms"]["p99"]
    why = []
    if acked < 0.9 * offered:
        why.append(f"acked {acked:,.0f}/s < 90 % of the {offered:,.0f}/s offered")
    if p99 > 500:
        why.append(f"ack p99 {p99:.0f} ms > 500 ms")
    if why:
        print("; ".join(why))
        sys.exit(1)


# ---- ports -------------------------------------------------------------------

def cmd_ports(argv):
    """Ports from 20000-45000 (so port + 10000 stays a valid port) that are
    free, with port + 10000 free as well."""
    import random
    want, got, held = int(argv[0]), [], []
    rnd = random.Random()
    while len(got) < want:
        p = rnd.randrange(20000, 45000)
        if p in got or p + 10000 in got or p - 10000 in got:
            continue
        socks = []
        try:
            for q in (p, p + 10000):
                s = socket.socket()
                s.bind(("127.0.0.1", q))
                socks.append(s)
        except OSError:
            for s in socks:
                s.close()
            continue
        held += socks
        got.append(p)
    for s in held:
        s.close()
    print(" ".join(map(str, got)))


# ---- report ------------------------------------------------------------------

def fmt(v, nd=2):
    if v is None:
        return "—"
    if isinstance(v, (int, float)) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def joined(shards, key, nd=1):
    return " / ".join(fmt(s[key], nd) if s[key] is not None else "—" for s in shards) or "—"


def table_head(head):
    return [head, "|" + "---|" * (head.count("|") - 1)]


def cmd_report(argv):
    o = {}
    for k in range(0, len(argv), 2):
        o[argv[k][2:]] = argv[k + 1]
    header = json.loads(o["header"])
    runs = []
    d = os.path.join(o["work"], "runs")
    for f in sorted(os.listdir(d)):
        if f.endswith(".run.json"):
            with open(os.path.join(d, f)) as fh:
                runs.append(json.load(fh))
    runs.sort(key=lambda r: r["order"])
    out_json = os.path.join(o["out"], f"{o['date']}-cluster-{o['label']}.json")
    out_md = os.path.join(o["out"], f"{o['date']}-cluster-{o['label']}.md")

    before = None
    bpath = o.get("before") or os.path.join(o["out"], f"{o['date']}-cluster-before.json")
    if o["label"] != "before" and os.path.exists(bpath):
        with open(bpath) as fh:
            before = json.load(fh)

    h = header
    md = [f"# chatd on Redis Cluster: messages per shard and Redis CPU per message ({o['label']}, {o['date']})", "",
          f"{h['cpus']} cores ({h['cpu']}), kernel {h['kernel']}. Everything shares these {h['cpus']} cores: "
          f"chatd ({h['workers']} workers), chat-load and every Redis (the single one and the cluster's "
          f"{h['masters']} masters + {h['replicas']} replicas run side by side; only one of them is under load "
          f"at a time). Redis {h['redis_version']}, appendonly yes, appendfsync always, the AOF on tmpfs (a "
          f"fresh directory under /dev/shm), so fsync costs next to nothing and the runs measure Redis and "
          f"chatd, not the disk; cluster node timeout {h['node_timeout_ms']} ms.", "",
          f"chatd: `{h['chatd']}` ({h['chatd_version']}, sha256 {h['chatd_sha256'][:12]}), started afresh "
          f"for each run with `{h['chatd_args']}`; every Redis master is FLUSHALLed before each run. "
          f"Repository at {h['git']}.", "",
          f"Scenario **dm** (direct-message-like): {h['dm']['conns']:,} connections in {h['dm']['rooms']:,} "
          f"rooms of two, {h['dm']['senders']:,} senders at {h['dm']['rate']} msg/s each = "
          f"{h['dm']['offered']:,.0f} messages/s, {2 * h['dm']['offered']:,.0f} deliveries/s, "
          f"{h['dm']['duration']} s; against the single Redis, the cluster, and the cluster with "
          f"--ack-replicas 1. **dm-max**: the same rooms on the cluster, the per-sender rate raised "
          f"run by run ({', '.join(fmt(x, 1) for x in h['dm_max_rates'])} msg/s per sender) until "
          f"acked/s falls below 90 % of offered or the ack p99 passes 500 ms.", ""]
    for n in h.get("notes", []):
        md += [f"**Note:** {n}", ""]
    md += ["How to read: *messages* are the messages Redis stored (the sum of the rooms' seqs, grouped by the "
           "master owning the room's slot); *CPU* is user + system time of the whole redis-server process "
           "from /proc/PID/stat; *run* figures cover the whole chat-load run (connecting and joining "
           "included), *send phase* figures only the steady sending (chat-load's t=1s to t=Ns lines). "
           "Per-shard cells are m1 / m2 / m3 (replica rN follows mN). Per message stored, on the masters: "
           "*cmds* = every command run (INFO commandstats; Redis 7 counts those inside Lua scripts too), "
           "*scripts* = EVAL/EVALSHA/FCALL calls (one per script request), *reads* = socket reads the "
           "masters processed (total_reads_processed; about one per batch a client sent). *machine busy / "
           "other*: cores the whole machine used during the run, and how much of that went to anything "
           "besides this run's Redis, chatd, chat-load and the measuring (the idle Redis of the other "
           "target, and other jobs on the machine: above ~0.1 the run's figures are skewed).", ""]

    scen_order = []
    for r in runs:
        if r["scenario"] not in scen_order:
            scen_order.append(r["scenario"])
    for sc in scen_order:
        rs = [r for r in runs if r["scenario"] == sc]
        md += [f"## {sc}", ""]
        md += table_head(
               "| run | offered msg/s | acked msg/s | ack p50 / p99 (ms) | delivery p99 (ms) | errors | "
               "lost / dup / ooo | msgs/s per shard | master CPU µs/msg per shard | replica CPU µs/msg per shard | "
               "all Redis CPU µs/msg (run) | all Redis CPU µs/msg (send phase) | busiest Redis, % of a core "
               "(send phase) | cmds / scripts / reads per msg | chatd CPU µs/msg | tool CPU s | "
               "machine busy / other (cores) |")
        for r in rs:
            L = r.get("load")
            w, sp = r["redis_run"], r.get("redis_send_phase")
            sh = w["shards"]
            if not L:
                md.append(f"| {r['name']} | {fmt(r['offered_msgs_per_s'])} | no chat-load report |" + " |" * 14)
                continue
            m = L["messages"]
            md.append(
                f"| {r['name']} | {fmt(r['offered_msgs_per_s'])} | {fmt(r['acked_per_s'])} | "
                f"{L['ack_ms']['p50']:.2f} / {L['ack_ms']['p99']:.2f} | {L['delivery_ms']['p99']:.2f} | "
                f"{m['errors']} | {m['lost']} / {m['duplicates']} / {m['out_of_order']} | "
                f"{joined(sh, 'msgs_per_s', 0)} | {joined(sh, 'master_us_per_msg')} | "
                f"{joined(sh, 'replica_us_per_msg')} | {fmt(w['totals']['all_us_per_msg'])} | "
                f"{fmt(sp['totals']['all_us_per_msg']) if sp else '—'} | "
                f"{fmt(sp['totals']['busiest_cpu_pct'], 1) if sp else '—'} | "
                f"{fmt(w['totals']['master_commands_per_msg'])} / {fmt(w['totals']['master_scripts_per_msg'])} / "
                f"{fmt(w['totals']['master_reads_per_msg'])} | "
                f"{fmt(r['chatd']['us_per_msg'])} | {L['tool']['cpu_s']:.1f} | "
                f"{fmt(r['machine']['busy_cores'])} / {fmt(r['machine']['other_cores'])} |")
        md.append("")

    md += ["## Per Redis process", "",
           "Send phase: CPU as % of a core and per message, messages/s of the shard; run: the whole chat-load run.", ""]
    md += table_head(
           "| run | node | role | port | slots | rooms | messages (run) | msgs/s (send phase) | CPU s (run) | "
           "% of a core (send phase) | CPU µs/msg (run) | CPU µs/msg (send phase) | cmds/msg (run) | "
           "scripts/msg (run) | reads/msg (run) |")
    for r in runs:
        w, sp = r["redis_run"], r.get("redis_send_phase")
        shard_of = {}
        for s in w["shards"]:
            shard_of[s["shard"]] = s["shard"]
            for rep in s["replicas"]:
                shard_of[rep] = s["shard"]
        for n in r["redis_nodes"]:
            a = w["nodes"][n["name"]]
            b = sp["nodes"][n["name"]] if sp else None
            sm = next(s for s in w["shards"] if s["shard"] == shard_of.get(n["name"], n["name"]))
            msgs = sm["messages"]
            smsgs = (sp["nodes"][sm["shard"]]["messages"] if sp else None)
            md.append(
                f"| {r['name']} | {n['name']} | {n['role']} | {n['port']} | "
                f"{n['slots'] if n['role'] == 'master' else '—'} | {n['rooms'] if n['role'] == 'master' else '—'} | "
                f"{fmt(msgs)} | {fmt(smsgs / b['seconds'], 0) if b and b['seconds'] else '—'} | {a['cpu_s']:.2f} | "
                f"{fmt(b['cpu_s'] / b['seconds'] * 100, 1) if b and b['seconds'] else '—'} | "
                f"{fmt(a['cpu_s'] / msgs * 1e6) if msgs else '—'} | "
                f"{fmt(b['cpu_s'] / smsgs * 1e6) if b and smsgs else '—'} | "
                f"{fmt(a['commands'] / msgs) if msgs else '—'} | {fmt(a['scripts'] / msgs) if msgs else '—'} | "
                f"{fmt(a['reads'] / msgs) if msgs else '—'} |")
    md.append("")

    comparison = None
    if before is not None:
        comparison = {}
        brun = {r["name"]: r for r in before.get("runs", [])}
        md += ["## Before / after", "",
               f"Before: `{os.path.relpath(bpath, os.path.dirname(out_md))}` (chatd sha256 "
               f"{before.get('header', {}).get('chatd_sha256', '?')[:12]}, `{before.get('header', {}).get('chatd_args')}`); "
               f"after: this run (chatd sha256 {header['chatd_sha256'][:12]}, `{header['chatd_args']}`). Redis CPU per "
               "message stored, all Redis processes (masters + replicas) and masters only; ratio = after / before "
               "(below 1: less Redis CPU per message).", ""]
        md += table_head(
               "| scenario | run | offered msg/s | acked msg/s before / after | all Redis µs/msg (run) before / after "
               "| ratio | masters µs/msg (run) before / after | ratio | all Redis µs/msg (send phase) before / after "
               "| ratio | cmds / scripts / reads per msg before | after |")

        def get(r, part, key):
            p = r.get(part) if r else None
            return p["totals"][key] if p else None

        def rat(a, b):
            return round(b / a, 3) if a and b is not None else None
        for r in runs:
            b = brun.get(r["name"])
            row = {}
            for part, key in (("redis_run", "all_us_per_msg"), ("redis_run", "masters_us_per_msg"),
                              ("redis_send_phase", "all_us_per_msg"), ("redis_run", "master_commands_per_msg"),
                              ("redis_run", "master_scripts_per_msg"), ("redis_run", "master_reads_per_msg")):
                x, y = get(b, part, key), get(r, part, key)
                row[f"{part}.{key}"] = {"before": x, "after": y, "ratio": rat(x, y)}
            comparison[r["name"]] = row
            c = list(row.values())
            md.append(
                f"| {r['scenario']} | {r['name']} | {fmt(r['offered_msgs_per_s'])} | "
                f"{fmt(b.get('acked_per_s') if b else None)} / {fmt(r.get('acked_per_s'))} | "
                f"{fmt(c[0]['before'])} / {fmt(c[0]['after'])} | {fmt(c[0]['ratio'], 3)} | "
                f"{fmt(c[1]['before'])} / {fmt(c[1]['after'])} | {fmt(c[1]['ratio'], 3)} | "
                f"{fmt(c[2]['before'])} / {fmt(c[2]['after'])} | {fmt(c[2]['ratio'], 3)} | "
                f"{fmt(c[3]['before'])} / {fmt(c[4]['before'])} / {fmt(c[5]['before'])} | "
                f"{fmt(c[3]['after'])} / {fmt(c[4]['after'])} / {fmt(c[5]['after'])} |")
        bh = before.get("header", {})
        if bh.get("dm") != header.get("dm") or bh.get("quick") != header.get("quick"):
            md += ["", f"**Note:** the before file ran other sizes ({json.dumps(bh.get('dm'))}"
                       f"{', --quick' if bh.get('quick') else ''}) than this one "
                       f"({json.dumps(header.get('dm'))}{', --quick' if header.get('quick') else ''}): "
                       "the rows do not compare."]
        missing = [n for n in brun if n not in {r["name"] for r in runs}]
        if missing:
            md += ["", f"Runs only in the before file (dm-max stops at a different step): {', '.join(missing)}."]
        md.append("")

    doc = {"date": o["date"], "label": o["label"], "header": header, "runs": runs}
    if comparison is not None:
        doc["before_file"] = bpath
        doc["comparison"] = comparison
    with open(out_json, "w") as fh:
        json.dump(doc, fh, indent=1)
    with open(out_md, "w") as fh:
        fh.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    cmds = {"run": cmd_run, "verdict": cmd_verdict, "ports": cmd_ports, "report": cmd_report}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]](sys.argv[2:])
