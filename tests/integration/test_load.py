"""Smoke runs of bin/chat-load against a real chatd, so the tool never rots.

Small and short on purpose: figures belong to scripts/bench, not to tests.
What is checked here is that the tool works and that its bookkeeping is
consistent: every sent message acked, every acked message delivered to
every member exactly once, in order."""
import json
import os
import subprocess
import tempfile

import harness
from harness import Chatd, Redis, timeout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOAD = os.path.join(REPO, "bin", "chat-load")

REDIS = None
SRV = None


def setup_module():
    global REDIS, SRV
    assert os.access(LOAD, os.X_OK), f"{LOAD} is missing: run make"
    REDIS = Redis(name="redis-load").start()
    SRV = Chatd(REDIS, workers=2, args=["--rate", "1000", "--burst", "1000"], name="load").start()


def teardown_module():
    if SRV is not None:
        SRV.stop()
    if REDIS is not None:
        REDIS.stop()


def run_load(*args, limit=60):
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False, dir=harness.artifacts_dir())
    out.close()
    cmd = [LOAD, "--url", f"ws://127.0.0.1:{SRV.port}/ws", "--json", out.name,
           "--server-pid", str(SRV.pid), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    with open(out.name) as f:
        text = f.read()
    assert text, f"no report; stderr:\n{p.stderr}"
    return p, json.loads(text)


@timeout(90)
def test_fanout_smoke_is_lossless():
    p, r = run_load("--scenario", "fanout", "--conns", "300", "--rooms", "6", "--senders", "6",
                    "--rate", "20", "--duration", "3", "--procs", "2")
    c, m = r["connections"], r["messages"]
    assert c["established"] == 300 and c["failed"] == 0, c
    assert m["sent"] > 300 and m["acked"] == m["sent"], m
    assert m["errors"] == 0, m
    # 300 connections over 6 rooms: each acked message is owed to 50 members.
    assert m["expected_deliveries"] == m["acked"] * 50, m
    assert m["received"] == m["expected_deliveries"], m
    assert m["lost"] == 0 and m["duplicates"] == 0 and m["out_of_order"] == 0, m
    d = r["delivery_ms"]
    assert d["count"] == m["received"] and 0 < d["p50"] <= d["p99"] <= d["max"], d
    assert r["server"]["rss_peak_bytes"] > 0 and r["tool"]["cpu_s"] > 0, r
    assert p.returncode == 0, p.stderr
    assert "t=1s" in p.stderr, "expected a progress line every second"


@timeout(90)
def test_churn_smoke_recovers_exactly():
    p, r = run_load("--scenario", "churn", "--conns", "200", "--rooms", "4", "--senders", "4",
                    "--rate", "20", "--churn-rate", "40", "--duration", "3")
    m = r["messages"]
    assert m["reconnects"] > 50, m
    assert m["not_recovered"] == 0, m
    assert m["acked"] == m["sent"] > 0 and m["received"] == m["expected_deliveries"], m
    assert m["lost"] == 0 and m["duplicates"] == 0 and m["out_of_order"] == 0, m
    assert p.returncode == 0, p.stderr


@timeout(60)
def test_idle_smoke_reports_memory():
    p, r = run_load("--scenario", "idle", "--conns", "200", "--rooms", "4", "--duration", "2")
    assert r["connections"]["established"] == 200, r
    assert r["messages"]["sent"] == 0, r
    s = r["server"]
    # The server is shared with the runs before, whose memory it may have
    # returned since: only that the figures were taken is checked.
    assert s["rss_base_bytes"] > 0 and s["rss_peak_bytes"] >= s["rss_end_bytes"] > 0, s
    assert p.returncode == 0, p.stderr


@timeout(20)
def test_refuses_non_loopback_target():
    p = subprocess.run([LOAD, "--url", "ws://192.0.2.1:8080/ws", "--duration", "1"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "not loopback" in p.stderr, p.stderr
