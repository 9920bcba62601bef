#!/usr/bin/python3
"""Helper of scripts/bench-search (standard library + websockets, and
tests/integration/chatclient.py): the WebSocket side and the report.

  send --port P --room R --file F --first SEQ --out FILE
                          sends every message of F (a JSON list of
                          {content, attachments}) to room R as chat
                          requests on one connection, up to 200 in flight,
                          and checks that they took seqs FIRST, FIRST+1, ...
                          in order (the queries' expected answers rely on
                          it); writes {seconds, messages} to FILE
  events --port P --room R --out FILE
                          an edit of seq 1, a delete of seq 2, a reaction
                          on seq 3, an edit and a reaction on seq 4 (all
                          sent by user01, the sender of `send`): documents
                          chatd's archive writes for events, for the shape
                          check; writes the last seq to FILE
  query --port P --room R --file QUERIES --out FILE [--pids NAME=PID,...]
                          runs the queries one at a time on one connection
                          (3 warm-up searches first, not counted): each is
                          timed from the moment the request is written to
                          the moment its results frame has been read, and
                          its answer is compared with the expected one (the
                          seqs, newest first, and `more`). Per query, the
                          CPU time each named process spent during it
                          (/proc/PID/stat, with its children: chatd's
                          workers)
  report --work DIR --out DIR --date D --header JSON
                          docs/bench/<date>-search.json and .md
"""
import argparse
import asyncio
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))
from chatclient import ChatClient  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """utime + stime of pid and of its children that are alive (chatd's
    workers are the master's children; the master itself is idle)."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            pids += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total


# ---- send ------------------------------------------------------------------

async def send(args):
    msgs = json.load(open(args.file))
    c = await ChatClient.open(args.port, args.user)
    await c.join(args.room)
    t0 = time.monotonic()
    window = 200
    ids = []
    start = pos = len(c.frames)
    for i, m in enumerate(msgs):
        p = {"room": args.room, "content": m["content"]}
        if m.get("attachments"):
            p["attachments"] = m["attachments"]
        rid = f"s{i}"
        ids.append(rid)
        await c.send("chat", p, id=rid)
        if i >= window:
            # Acks come in order: each wait starts where the last ended.
            pos, _ = await c.wait(lambda f, r=ids[i - window]: f.get("id") == r and f.get("type") in ("ack", "error"),
                                  30, pos, what=f"ack of {ids[i - window]}")
    acks = {}
    for f in c.frames[start:]:
        if f.get("type") in ("ack", "error") and "id" in f:
            acks[f["id"]] = f
    for rid in ids:
        if rid not in acks:
            _, f = await c.wait(lambda f, r=rid: f.get("id") == r and f.get("type") in ("ack", "error"),
                                30, start, what=f"ack of {rid}")
            acks[rid] = f
    seconds = time.monotonic() - t0
    await c.close()
    for i, rid in enumerate(ids):
        f = acks[rid]
        if f["type"] != "ack" or f["payload"]["seq"] != args.first + i:
            print(f"bench-search: message {i} got {f!r}, expected seq {args.first + i}", file=sys.stderr)
            return 1
    json.dump({"messages": len(ids), "seconds": seconds}, open(args.out, "w"))
    print(f"bench-search: sent {len(ids)} messages in {seconds:.1f} s", file=sys.stderr)
    return 0


async def events(args):
    c = await ChatClient.open(args.port, args.user)
    await c.join(args.room)
    last = 0
    for type, p in (("edit", {"target": 1, "content": "Edited: ÉDITION naïve"}),
                    ("delete", {"target": 2}),
                    ("react", {"target": 3, "emoji": "👍", "on": True}),
                    ("edit", {"target": 4, "content": "Straße edited"}),
                    ("react", {"target": 4, "emoji": "🎉", "on": True})):
        a = await c.expect(type, {"room": args.room, **p}, want="ack")
        last = a["seq"]
    await c.close()
    json.dump({"last": last}, open(args.out, "w"))
    return 0


# ---- query -----------------------------------------------------------------

async def query(args):
    queries = json.load(open(args.file))
    pids = {}
    for kv in filter(None, (args.pids or "").split(",")):
        name, pid = kv.split("=")
        pids[name] = int(pid)
    c = await ChatClient.open(args.port, "searcher")
    await c.join(args.room)
    for q in ("warm", "up", "zz"):
        await c.request("search", {"room": args.room, "q": q}, timeout=args.timeout)
    rows = []
    for i, q in enumerate(queries):
        p = {"room": args.room, "q": q["q"], "limit": q["limit"]}
        if q.get("before") is not None:
            p["before"] = q["before"]
        rid = f"q{i}"
        start = len(c.frames)
        ticks0 = {n: cpu_ticks(pid) for n, pid in pids.items()}
        t0 = time.perf_counter()
        await c.send("search", p, id=rid)
        _, f = await c.wait(lambda f: f.get("id") == rid and f.get("type") in ("results", "error"),
                            args.timeout, start, what=f"results of {rid}")
        ms = (time.perf_counter() - t0) * 1000
        ticks1 = {n: cpu_ticks(pid) for n, pid in pids.items()}
        row = {k: q[k] for k in ("kind", "q", "words", "matches", "matchesInLog", "logHits") if k in q}
        row["before"] = q.get("before")
        row["ms"] = round(ms, 3)
        row["cpu_ms"] = {n: (ticks1[n] - ticks0[n]) * 1000 // CLK_TCK for n in pids}
        if f["type"] != "results":
            row["ok"] = False
            row["error"] = f.get("payload")
        else:
            got = [m["seq"] for m in f["payload"]["messages"]]
            more = f["payload"]["more"]
            row["results"] = len(got)
            row["ok"] = got == q["expect"] and more == q["more"]
            if not row["ok"]:
                row["got"] = got
                row["got_more"] = more
                row["expect"] = q["expect"]
                row["expect_more"] = q["more"]
        row["archive"] = q.get("logHits", 0) < q["limit"] + 1 and args.archive
        rows.append(row)
        flag = "" if row["ok"] else "  MISMATCH"
        print(f"bench-search: {i + 1:3d}/{len(queries)} {q['kind']:<11} {q['q']!r:<24} "
              f"{ms:9.1f} ms  {row.get('results', 0):2d} results of {q['matches']}{flag}", file=sys.stderr)
    await c.close()
    json.dump(rows, open(args.out, "w"))
    return 0


# ---- report ----------------------------------------------------------------

def pct(values, p):
    """The p-th percentile, nearest rank (p99 of 100 values is the 99th)."""
    v = sorted(values)
    if not v:
        return None
    k = max(1, -(-len(v) * p // 100))
    return v[int(k) - 1]


def summary(rows):
    ms = [r["ms"] for r in rows]
    return {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99), "max": max(ms),
            "mean": round(statistics.mean(ms), 3), "min": min(ms)}


def fmt(x):
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def report(args):
    header = json.loads(args.header)
    phases = {}
    for name in ("archive", "redis"):
        path = os.path.join(args.work, name, "results.json")
        if not os.path.exists(path):
            continue
        rows = json.load(open(path))
        meta = json.load(open(os.path.join(args.work, name, "meta.json")))
        sent = json.load(open(os.path.join(args.work, name, "sent.json")))
        kinds = {}
        for r in rows:
            kinds.setdefault(r["kind"], []).append(r)
        by_path = {}
        for r in rows:
            by_path.setdefault("archive reached" if r["archive"] else "Redis log only", []).append(r)
        cpu = {}
        for r in rows:
            for n, v in r["cpu_ms"].items():
                cpu[n] = cpu.get(n, 0) + v
        phases[name] = {
            "meta": meta, "sent": sent, "all": summary(rows),
            "kinds": {k: summary(v) | {"matches_median": statistics.median(x["matches"] for x in v),
                                       "archive": sum(1 for x in v if x["archive"])}
                      for k, v in kinds.items()},
            "paths": {k: summary(v) for k, v in by_path.items()},
            "cpu_ms_total": cpu,
            "correct": sum(1 for r in rows if r["ok"]), "queries": len(rows),
            "mismatches": [r for r in rows if not r["ok"]],
            "rows": rows,
        }
        extra = os.path.join(args.work, name, "check.json")
        if os.path.exists(extra):
            phases[name]["check"] = json.load(open(extra))
    doc = header | {"phases": phases}
    base = os.path.join(args.out, f"{args.date}-search")
    json.dump(doc, open(base + ".json", "w"), indent=1, ensure_ascii=False)
    open(base + ".md", "w").write(markdown(doc))
    for name, ph in phases.items():
        a = ph["all"]
        print(f"bench-search: {name}: {ph['queries']} queries, {ph['correct']} correct; "
              f"p50 {fmt(a['p50'])} ms, p90 {fmt(a['p90'])} ms, p99 {fmt(a['p99'])} ms, max {fmt(a['max'])} ms")
        for k, s in ph["kinds"].items():
            print(f"bench-search:   {k:<12} n={s['n']:3d} p50 {fmt(s['p50']):>8} ms  p99 {fmt(s['p99']):>8} ms"
                  f"  max {fmt(s['max']):>8} ms  (archive reached by {s['archive']})")
    print(f"bench-search: wrote {base}.json and {base}.md")
    return 0 if all(ph["correct"] == ph["queries"] for ph in phases.values()) else 1


KIND_TEXT = {
    "common": "one of the 15 most frequent words, newest page",
    "common-deep": "the same, paging: `before` a random seq of the room",
    "rare": "a planted word in 1 to 12 messages of the room",
    "two-words": "two words of ranks 20–600 (the second also as a prefix)",
    "prefix": "2–4 letters of a word, alone or after a frequent word",
    "accents": "an accented word typed without accents or in capitals (`ZURICH`, `Cafe`)",
}


def table(ph):
    out = ["| queries | n | p50 ms | p90 ms | p99 ms | max ms | reached the archive | median matches in the room |",
           "|---|---|---|---|---|---|---|---|"]
    a = ph["all"]
    out.append(f"| **all** | {a['n']} | **{fmt(a['p50'])}** | {fmt(a['p90'])} | **{fmt(a['p99'])}** | "
               f"{fmt(a['max'])} | {sum(s['archive'] for s in ph['kinds'].values())} | |")
    for k, s in ph["kinds"].items():
        out.append(f"| {k}: {KIND_TEXT.get(k, '')} | {s['n']} | {fmt(s['p50'])} | {fmt(s['p90'])} | "
                   f"{fmt(s['p99'])} | {fmt(s['max'])} | {s['archive']} | {s['matches_median']:,.0f} |")
    for k, s in ph["paths"].items():
        out.append(f"| *{k}* | {s['n']} | {fmt(s['p50'])} | {fmt(s['p90'])} | {fmt(s['p99'])} | "
                   f"{fmt(s['max'])} | | |")
    return "\n".join(out)


def markdown(doc):
    h = doc["header"]
    ph = doc["phases"]
    lines = [f"# Search latency, {doc['date']}", "",
             f"`scripts/bench-search` on a {h['machine']}, chatd {h['commit']}, Redis {h['redis']}, "
             f"Node {h['node']}. Raw numbers, every query: [{doc['date']}-search.json]({doc['date']}-search.json).",
             "", "**The archive figures measure CongoDB, not MongoDB.** CongoDB (tests/congodb, the only "
             "MongoDB-wire server available here) answers every `find` by testing each document of the "
             "collection in JavaScript (mingo), then sorting what matched: the `{roomId, words}` index chatd "
             "creates is accepted and never used. A search that reaches the archive therefore costs a scan "
             "of the whole collection, whatever it looks for. With MongoDB the same query is a range of the "
             "index; it was not measured (no MongoDB server on this machine).", "",
             "## Method", "",
             "* Everything runs on the same 2 cores, on loopback: Redis (`appendfsync always`, its AOF on "
             "tmpfs), CongoDB (one Node.js process, in memory, persistence off), chatd (2 workers) and the "
             "client (Python, `websockets`, tests/integration's chatclient).",
             "* Queries run one at a time over one WebSocket, each timed from writing the request to "
             "reading its `results` frame (limit 20, so chatd looks for 21 matches to set `more`). Three "
             "warm-up searches first (`warm`, `up`, `zz`), not counted. Each answer (the seqs, newest first, and `more`) is "
             "compared with a brute-force answer computed by the script: every message's words matched "
             "against the query's one by one, as `words_match` does.",
             "* Query kinds, 20 of each, taken in turn: **common**, one of the 15 most frequent words; "
             "**rare**, a needle word planted in 1 to 12 messages of the room; **two-words**, two words "
             "of ranks 20–600; **prefix**, 2 to 4 letters of a word, alone or after a frequent word; "
             "**accents**, an accented word typed without its accents or in capitals (`ZURICH`, `Cafe`, "
             "`SENOR`). Every query's last word of 2 characters or more also matches as a prefix "
             "(the protocol's rule), so a one-word query is a prefix query too.",
             "* \"Reached the archive\": the Redis log held fewer than 21 matches, so chatd went on "
             "into MongoDB (computed from the brute-force answer)."]
    if "archive" in ph:
        a = ph["archive"]
        m = a["meta"]
        lines += ["", f"## One room of {m['messages']:,} messages, with the archive (CongoDB)", "",
                  f"{m['archivedDocuments']:,} documents generated and inserted into CongoDB in "
                  f"{m['insertSeconds']:.0f} s, in batches of 10,000 (`insertMany`, Node driver), shaped as "
                  f"`archive_doc` writes them (same `_id` derivation, field order, `words`), with "
                  f"{m['events']['edit']:,} edits, {m['events']['delete']:,} deletes and "
                  f"{m['events']['reaction']:,} reactions among them as chatd stores them (`edited`, "
                  f"`deleted`, `reactions`, `v`; each event took a seq). Redis got the room's counter and "
                  f"archived cursor ({m['lastArchivedSeq']:,}); then {a['sent']['messages']:,} messages "
                  f"were sent through chatd (in {a['sent']['seconds']:.1f} s), which archived them and kept "
                  f"them in its Redis log, trimmed to {h['log_len']:,} entries by `--recovery-window` 1000, "
                  f"as in a room that lived that long. Vocabulary: {m['vocabulary']:,} words with Zipf "
                  f"frequencies (exponent 1; accented Latin words, some Greek, Cyrillic and Han) and "
                  f"{m['needles']} needles; {m['wordsPerMessage']:.1f} distinct words per message.", "",
                  f"**{a['correct']} of {a['queries']} answers equal the brute-force answer.**", "",
                  table(a), ""]
        lines += cpu_line(a)
        if "check" in a:
            c = a["check"]
            lines += [f"Shape check (`scripts/bench-search-data.mjs check`): a document chatd's archive "
                      f"wrote and a generated one have the same fields, in the same order, of the same "
                      f"types as read back (`{' '.join(c['chatdFields'])}`; CongoDB keeps int64 as a "
                      f"number), and so do chatd's documents of an edited, a deleted, a reacted and an edited and "
                      f"reacted message and generated ones in the same states; chatd's `_id` equals the "
                      f"derived one; the words chatd stored for its "
                      f"{c['wordsCompared']:,} messages and for the {c['vocabularyWords']:,} words of a "
                      f"room holding the whole vocabulary as written and in capitals equal the script's: "
                      f"{'yes' if c['ok'] else 'NO: ' + '; '.join(c['problems'])}.", ""]
    if "redis" in ph:
        r = ph["redis"]
        lines += ["", f"## Without the archive: one room of {r['meta']['messages']:,} messages in Redis", "",
                  f"chatd without `--mongo-uri`, `--recovery-window {r['meta']['messages']}` so that the "
                  f"log keeps them all; the messages were sent through chatd (in "
                  f"{r['sent']['seconds']:.1f} s), same generator and query kinds. Search reads the log "
                  f"100 messages per Redis call, folds each message's state in and takes its words, "
                  f"10,000 messages at most.", "",
                  f"**{r['correct']} of {r['queries']} answers equal the brute-force answer.**", "",
                  table(r), ""]
        lines += cpu_line(r)
    lines += findings(ph)
    lines += ["## Caveats", "",
              "* CongoDB is not MongoDB: no index is used, every archive query scans the million "
              "documents in one JavaScript thread (about 4 µs per document for an exact word and 8–13 µs "
              "for the prefix range, `$elemMatch` with `$gte`/`$lt`, which is what every query whose last "
              "word has 2+ characters sends), then sorts the matches by seq. The figures say what chatd "
              "costs around that, and how often the archive is reached, not what MongoDB would take.",
              "* CongoDB compares strings as JavaScript does (UTF-16 code units), MongoDB by UTF-8 bytes. "
              "chatd's prefix range ends at the prefix followed by U+10FFFF, which is right bytewise; on "
              "CongoDB a word whose character after the prefix lies in U+E000–U+FFFF (fullwidth Latin "
              "`ｃ`, halfwidth katakana) sorts above that bound and is missed in the archive, while the "
              "Redis log's matching finds it. No such word is in this data set.",
              "* CongoDB has no text search: `createIndex({content: \"text\"})` is accepted (stored as an "
              "ordinary index spec) but a `$text` query fails with `unknown top level operator: $text` "
              "(mingo has no `$text`). The comparison of the words index with MongoDB's text index could "
              "not be made here.",
              f"* chatd's archive timeouts (socket 10 s, connect and server check 2 s, set in "
              f"`archive_new` unless the URI names them) are shorter than CongoDB's scans, so the URI "
              f"given to chatd raises them: `{h['mongo_uri'].split('?')[1]}`. With the defaults, a search "
              f"reaching this archive fails after 10 s (`unavailable`, or only what Redis had, with `more`).",
              f"* The machine is shared: other processes (other work on this VM) may have run during the "
              f"measurement (load average at the start / at the end: {h.get('loadavg', '?')}); the per-query "
              f"CPU figures in the JSON say where the time went.",
              "* 100 queries per room: p99 is the 99th value, i.e. nearly the maximum."]
    for name, p in ph.items():
        if p["mismatches"]:
            lines += ["", f"## Mismatches ({name})", ""]
            for x in p["mismatches"][:10]:
                lines.append(f"* `{x['q']}` before {x.get('before')}: got {x.get('got')} more "
                             f"{x.get('got_more')}, expected {x.get('expect')} more {x.get('expect_more')}"
                             f"{' error ' + json.dumps(x['error']) if 'error' in x else ''}")
    return "\n".join(lines) + "\n"


def findings(ph):
    """What the figures say, from the rows."""
    out = ["## What the figures say", ""]
    if "archive" in ph:
        rows = ph["archive"]["rows"]
        log = [r for r in rows if not r["archive"]]
        arc = [r for r in rows if r["archive"]]
        if log:
            out.append(f"* {len(log)} of {len(rows)} queries found their 21 matches in the Redis log (the last "
                       f"1,000 messages): p50 {fmt(pct([r['ms'] for r in log], 50))} ms, max "
                       f"{fmt(max(r['ms'] for r in log))} ms, whatever the room's size. Every frequent word is "
                       f"among them.")
        if arc:
            cong = [r["cpu_ms"].get("congodb", 0) for r in arc]
            chat = [r["cpu_ms"].get("chatd", 0) for r in arc]
            out.append(f"* The {len(arc)} others went on into the archive: p50 {fmt(pct([r['ms'] for r in arc], 50))} "
                       f"ms, max {fmt(max(r['ms'] for r in arc))} ms. Nearly all of it is CongoDB: its CPU time "
                       f"per such query has a median of {fmt(statistics.median(cong))} ms (chatd's: "
                       f"{fmt(statistics.median(chat))} ms). Whatever has fewer than 21 matches among the last "
                       f"1,000 messages goes there: needles, pairs of words, words of middling frequency (the "
                       f"accented ones here) and prefixes of uncommon words; a needle costs as much as "
                       f"anything, since the scan does not depend on what matches.")
    if "redis" in ph:
        rows = ph["redis"]["rows"]
        n = ph["redis"]["meta"]["messages"]
        full = [r for r in rows if r["matches"] < r.get("limit", 20) + 1 and n <= 10000]
        if full:
            c = statistics.median(r["cpu_ms"].get("chatd", 0) for r in full)
            rd = statistics.median(r["cpu_ms"].get("redis", 0) for r in full)
            out.append(f"* Without the archive, the {len(full)} queries with fewer than 21 matches read the "
                       f"whole log ({n:,} messages, {n // 100} Redis calls): p50 "
                       f"{fmt(pct([r['ms'] for r in full], 50))} ms, of which chatd spends a median "
                       f"{fmt(c)} ms of CPU (parsing, folding the state in, the words of every message: "
                       f"{c * 1000 / n:.0f} µs per message) and Redis {fmt(rd)} ms (the read script: "
                       f"{rd * 1000 / n:.0f} µs per message).")
            if rd > 0:
                out.append(f"* `search` spends no token of the connection's rate bucket (`rooms`, up to 500 "
                           f"reads, does): nothing bounds how often one connection makes chatd and Redis read "
                           f"{n:,} messages, at about {fmt(rd)} ms of Redis CPU and {fmt(c)} ms of a worker's "
                           f"each.")
    out.append("")
    return out


def cpu_line(ph):
    cpu = ph["cpu_ms_total"]
    total = sum(r["ms"] for r in ph["rows"])
    if not cpu:
        return []
    return [f"CPU time of each process during the {ph['queries']} queries (their latencies add up to "
            f"{total / 1000:.1f} s): " + ", ".join(f"{n} {v / 1000:.1f} s" for n, v in cpu.items()) + ".", ""]


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--room", required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--first", type=int, required=True)
    s.add_argument("--user", default="user01")
    s.add_argument("--out", required=True)
    e = sub.add_parser("events")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--room", required=True)
    e.add_argument("--user", default="user01")
    e.add_argument("--out", required=True)
    q = sub.add_parser("query")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--room", required=True)
    q.add_argument("--file", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--pids")
    q.add_argument("--archive", type=int, default=1)
    q.add_argument("--timeout", type=float, default=120)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--date", required=True)
    r.add_argument("--header", required=True)
    args = ap.parse_args()
    if args.cmd == "send":
        return asyncio.run(send(args))
    if args.cmd == "events":
        return asyncio.run(events(args))
    if args.cmd == "query":
        return asyncio.run(query(args))
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
