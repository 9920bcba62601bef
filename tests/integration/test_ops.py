"""
Integration tests of chatd's operations features: the master's signals
(HUP reload, TTIN/TTOU scaling, QUIT graceful stop, USR2 binary upgrade,
USR1 log reopen, CHLD respawn with backoff), scripts/chatctl and /metrics.

One Redis is started for the module (a Redis Cluster with
CHATD_IT_REDIS=cluster, see harness.make_redis); every test starts its own
chatd (the tests change the server's process tree, so nothing is shared)
and stops it afterwards. Every test uses its own room names (suffixed by a
per-run tag).

Run: /usr/bin/python3 tests/integration/run.py test_ops
     CHATD_IT_REDIS=cluster /usr/bin/python3 tests/integration/run.py test_ops
"""

import asyncio
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

import harness
from harness import (log_events, metrics, Chatd, RawWS, children_of, http_get, make_redis, pid_alive,
                     proc_starttime, timeout, wait_for)
from chatclient import (clients_on_distinct_workers, close_all, connect, itest,
                        track, worker_of_async)

REDIS = None
TAG = os.urandom(3).hex()
FAST = ["--rate", "100000", "--burst", "100000"]
CHATCTL = os.path.join(harness.REPO, "scripts", "chatctl")



def setup_module():
    global REDIS
    REDIS = make_redis("redis-ops")


def teardown_module():
    if REDIS is not None:
        REDIS.stop()


def R(name):
    return f"{name}-{TAG}"




async def until(cond, timeout, what, interval=0.05):
    """Polls a sync or async condition; returns its value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if asyncio.iscoroutine(v):
                v = await v
            if v:
                return v
        except Exception as e:      # noqa: BLE001 - keep polling, report the last
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------
# helpers: servers, pidfiles, logs, metrics, chatctl


def new_server(workers=2, args=(), name="ops", pidfile=True, log_file=False, start=True):
    """A chatd on the module's Redis with a pidfile (srv.pidfile) and
    optionally a --log-file (srv.logfile) in its own dir."""
    srv = Chatd(REDIS, workers=workers, args=list(args), name=name)
    srv.pidfile = os.path.join(srv.dir, "chatd.pid") if pidfile else None
    srv.logfile = os.path.join(srv.dir, "chatd-file.log") if log_file else None
    if srv.pidfile:
        srv.extra_args += ["--pidfile", srv.pidfile]
    if srv.logfile:
        srv.extra_args += ["--log-file", srv.logfile]
    if start:
        srv.start()
        remember(srv, srv.worker_pids())
    return srv


def remember(srv, pids):
    """Lets the harness kill and reap these pids at cleanup (new masters of
    an upgrade and their workers are not children of srv.proc)."""
    for p in pids:
        if p not in srv._known_workers and pid_alive(p):
            srv._known_workers[p] = proc_starttime(p)


def read_pid(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def workers(master_pid, exclude=()):
    """Live children of a master, minus exclude (e.g. an upgrade's new master)."""
    return [p for p in children_of(master_pid) if p not in exclude]


def read_text(path, offset=0):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def log_size(srv):
    try:
        return os.path.getsize(srv.log_path)
    except OSError:
        return 0


def pids_in_log(text):
    return {int(m.group(1)) for m in re.finditer(r" pid=(\d+) event=", text)}


def worker_gauges(m):
    """{pid: connections} from chatd_worker_connections{worker=..,pid=..}."""
    out = {}
    for k, v in m.items():
        mm = re.fullmatch(r'chatd_worker_connections\{worker="(\d+)",pid="(\d+)"\}', k)
        if mm:
            out[int(mm.group(2))] = v
    return out


def chatctl(*args, pidfile=None, port=None, timeout=60):
    argv = [CHATCTL]
    if pidfile is not None:
        argv += ["--pidfile", pidfile]
    if port is not None:
        argv += ["--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    # Its own session: a chatctl that took pid 0 from a bad pidfile would
    # signal its whole process group, and that must not be the runner's.
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def ws_welcome(port, user="probe", timeout=5.0):
    """One connection + upgrade + welcome; closed politely. Returns the welcome."""
    ws = RawWS.open(port, user=user, timeout=timeout)
    try:
        w = ws.welcome
        try:
            ws.send_close(1000)
        except OSError:
            pass
        return w
    finally:
        ws.close_socket()


def assert_serving(port, what=""):
    r = http_get(port, "/healthz", timeout=5.0)
    assert r.status == 200, f"{what}: /healthz answered {r.status} {r.body[:100]!r}"
    for i in range(4):
        w = ws_welcome(port, user=f"probe{i}")
        assert w["type"] == "welcome", f"{what}: {w!r}"


def healthy(port):
    try:
        return http_get(port, "/healthz", timeout=2.0).status == 200
    except Exception:       # noqa: BLE001
        return False


def wait_exit(pid, timeout):
    """Waits until pid is gone or a zombie, reaping it if it is ours (a
    reparented master). True when gone in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:
            if not pid_alive(pid):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def port_listening(port):
    return any(lport == port and state == 0x0A for lport, _, state, _ in harness.tcp_connections())


def tail(text, n=25):
    return "\n".join(text.splitlines()[-n:])


class ConnectLoop:
    """A thread connecting in a tight loop (new TCP connection + upgrade +
    welcome, then a polite close), recording every failure."""

    def __init__(self, port, name="loop"):
        self.port, self.name = port, name
        self.ok = 0
        self.failures = []      # (monotonic time, repr)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        i = 0
        while not self._stop.is_set():
            try:
                w = ws_welcome(self.port, user=f"{self.name}{i % 50}", timeout=5.0)
                if w.get("type") != "welcome":
                    raise AssertionError(f"first frame {w!r}")
                self.ok += 1
            except Exception as e:      # noqa: BLE001 - recorded for the test
                self.failures.append((time.monotonic(), repr(e)))
            i += 1
            time.sleep(0.002)

    def stop(self):
        self._stop.set()
        self.thread.join(15)
        return self

    def assert_clean(self, what):
        assert self.ok > 0, f"{what}: the connect loop never succeeded"
        assert not self.failures, \
            f"{what}: {len(self.failures)} failed connection(s) of {self.ok + len(self.failures)}, " \
            f"e.g. {[f for _, f in self.failures[:5]]}"


# --------------------------------------------------------------------------
# 1. HUP with live clients: fresh workers, 1001 to the old ones' clients,
#    recovery with since loses nothing while a sender keeps sending


async def open_joined(srv, user, room, since=None, timeout=15.0):
    """Connects and joins (with since), retrying connection failures and
    errors while workers come and go. Returns (client, joined payload)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            c = await connect(srv, user)
        except Exception as e:      # noqa: BLE001
            last = e
            await asyncio.sleep(0.1)
            continue
        p = {"room": room}
        if since is not None:
            p["since"] = since
        try:
            f = await c.request("join", p, timeout=5)
        except AssertionError as e:
            last = e
            await asyncio.sleep(0.1)
            continue
        if f["type"] == "joined":
            return c, f["payload"]
        last = f
        await c.close()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{user}: could not join {room} within {timeout}s: {last!r}")


class Follower:
    """A receiver that, whenever its connection closes, reconnects and joins
    with since = the last seq it saw (across every incarnation)."""

    def __init__(self, srv, user, room, backoff=0.3):
        self.srv, self.user, self.room = srv, user, room
        self.backoff = backoff      # before reconnecting, so that traffic flows meanwhile
        self.incarnations = []
        self.close_codes = []       # close code of each ended incarnation
        self.stop_flag = False
        self.task = None

    async def start(self):
        c, _ = await open_joined(self.srv, self.user, self.room)
        self.incarnations.append(c)
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    def rejoined_at(self):
        """The joined.seq of the second incarnation (the first reconnect)."""
        c = self.incarnations[1]
        return next(f["payload"]["seq"] for f in c.frames if f.get("type") == "joined")

    def seen(self):
        return [p["seq"] for c in self.incarnations for p in c.chats(self.room)]

    def cids(self):
        return [(p["seq"], p.get("cid")) for c in self.incarnations for p in c.chats(self.room)]

    @property
    def current(self):
        return self.incarnations[-1]

    async def _run(self):
        while not self.stop_flag:
            c = self.current
            await c.wait_closed(0.2)
            if not c.closed:
                continue
            self.close_codes.append(c.close_code)
            await asyncio.sleep(self.backoff)
            since = max([0] + self.seen())
            c2, _ = await open_joined(self.srv, self.user, self.room, since=since)
            self.incarnations.append(c2)

    async def stop(self):
        self.stop_flag = True
        await asyncio.wait_for(self.task, 20)


@itest(120)
async def test_hup_replaces_workers_clients_recover_without_loss():
    srv = new_server(workers=2, args=FAST, name="hup")
    try:
        room = R("hup")
        followers = []
        for i in range(4):
            followers.append(await Follower(srv, f"hupr{i}", room, backoff=0.3 + 0.2 * i).start())
        old_workers = srv.worker_pids()
        assert len(old_workers) == 2, old_workers
        on = {await worker_of_async(srv, f.current) for f in followers}

        acks, order = {}, []
        stats = {"retries": 0, "reconnects": 0, "errors": []}
        sender = [(await open_joined(srv, "hupsend", room))[0]]
        sender_codes = []
        stop = asyncio.Event()

        async def send_loop():
            i = 0
            while not stop.is_set():
                id = f"m{i}"
                while True:         # a real client: resend with the same id until acked
                    c = sender[0]
                    if c.closed:
                        sender_codes.append(c.close_code)
                        stats["reconnects"] += 1
                        c, _ = await open_joined(srv, "hupsend", room, timeout=20)
                        sender[0] = c
                    try:
                        f = await c.request("chat", {"room": room, "content": f"hup {i}"}, id=id,
                                            timeout=5)
                    except Exception:       # noqa: BLE001 - closed, timed out: resend
                        stats["retries"] += 1
                        await asyncio.sleep(0.05)
                        continue
                    if f["type"] == "ack":
                        acks[id] = f["payload"]
                        order.append(id)
                        break
                    stats["retries"] += 1
                    stats["errors"].append(f.get("payload", {}).get("code"))
                    await asyncio.sleep(0.05)
                i += 1
                await asyncio.sleep(0.005)

        task = asyncio.get_running_loop().create_task(send_loop())
        await until(lambda: len(acks) >= 30, 10, "30 acks before HUP")
        original = [f.current for f in followers]
        orig_sender = sender[0]
        sender_worker = await worker_of_async(srv, orig_sender)

        log_off = log_size(srv)
        os.kill(srv.pid, signal.SIGHUP)
        t_hup = time.monotonic()
        new_workers = await until(
            lambda: (lambda ws: ws if len(ws) == 2 and not set(ws) & set(old_workers) else None)(
                srv.worker_pids()),
            6, f"2 fresh workers replacing {old_workers} after HUP (old ones gone)")
        t_gone = time.monotonic() - t_hup
        remember(srv, new_workers)

        # every original connection was on a retired worker: closed with 1001
        for c in original + [orig_sender]:
            assert await c.wait_closed(8), f"{c.user}: still open 8s after HUP"
        codes = {c.user: c.close_code for c in original + [orig_sender]}
        assert all(v == 1001 for v in codes.values()), \
            f"close codes after HUP (want 1001 from retired workers {sorted(on | {sender_worker})}): {codes}"

        n_at = len(acks)
        await until(lambda: len(acks) >= n_at + 40, 20, "40 more acks after the reload")
        stop.set()
        await asyncio.wait_for(task, 30)
        if task.exception():
            raise task.exception()
        for f in followers:
            await f.stop()
        for f in followers:         # traffic flowed while each one was away
            old_max = max(p["seq"] for p in f.incarnations[0].chats(room))
            assert f.rejoined_at() > old_max, \
                f"{f.user}: the room did not advance while it was disconnected (seq {old_max} at " \
                f"close, {f.rejoined_at()} at rejoin): recovery was not exercised"

        last = max(a["seq"] for a in acks.values())
        assert sorted(a["seq"] for a in acks.values()) == list(range(1, last + 1)), \
            "acked seqs are not 1..last (each once)"
        for f in followers:
            await f.current.wait_seq(room, last, 15)
            seqs = f.seen()
            want = list(range(1, last + 1))
            if seqs != want:
                missing = sorted(set(want) - set(seqs))
                dups = sorted({x for x in seqs if seqs.count(x) > 1})
                raise AssertionError(
                    f"{f.user} saw {len(seqs)} chats for acked seqs 1..{last}: missing {missing[:15]} "
                    f"({len(missing)}), duplicates {dups[:10]} ({len(dups)}); incarnations "
                    f"{len(f.incarnations)}, close codes {f.close_codes}")
            cid_of = dict(f.cids())
            for id, a in acks.items():
                assert cid_of.get(a["seq"]) == id, \
                    f"{f.user}: ack {id} has seq {a['seq']}, the receiver saw cid {cid_of.get(a['seq'])}"
            assert f.close_codes and f.close_codes[0] == 1001, f"{f.user}: {f.close_codes}"
        seqs_in_order = [acks[i]["seq"] for i in order]
        assert seqs_in_order == sorted(seqs_in_order), "acks not increasing in send order"
        assert all(not pid_alive(p) for p in old_workers), "a retired worker is still alive"
        text = srv._read_log(log_off)
        assert log_events(text, "reload"), "no event=reload log line after HUP:\n" + tail(text)
        print(f"    HUP: old workers gone after {t_gone:.1f}s; {len(acks)} acked (last seq {last}); "
              f"sender retries {stats['retries']} reconnects {stats['reconnects']} "
              f"errors {sorted(set(stats['errors']))}; follower incarnations "
              f"{[len(f.incarnations) for f in followers]}")
    finally:
        await close_all()
        srv.stop()


# --------------------------------------------------------------------------
# 2. HUP re-reads the config file; a broken one is rejected


def write_config(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


@timeout(90)
def test_hup_rereads_config_and_rejects_bad_file():
    d = os.path.join(harness.artifacts_dir(), f"hupcfg-{os.urandom(3).hex()}")
    os.makedirs(d)
    cfg = os.path.join(d, "chatd.conf")
    base = f"# ops test config\n{harness.redis_config_line(REDIS)}\nrate = 1000\nburst = 1000\n"
    write_config(cfg, base + "workers = 2\n")
    port = harness.free_port()
    srv = Chatd(default_args=False, name="hupcfg",
                args=["--port", str(port), "--bind", "127.0.0.1", "--config", cfg])
    try:
        srv.start()
        assert srv.ready_workers == 2, srv.ready_workers
        old = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(srv.worker_pids()), 5,
                       what="2 workers from the config file")

        write_config(cfg, base + "workers = 3\n")
        off = log_size(srv)
        os.kill(srv.pid, signal.SIGHUP)
        new = wait_for(lambda: (lambda w: w if len(w) == 3 and not set(w) & set(old) else None)(
            srv.worker_pids()), 10, what="3 fresh workers after HUP with workers = 3")
        remember(srv, new)
        text = srv._read_log(off)
        assert log_events(text, "reload"), "no event=reload line:\n" + tail(text)
        wait_for(lambda: metrics(srv.port).get("chatd_workers") == 3, 5, what="chatd_workers 3")
        wait_for(lambda: healthy(srv.port), 10, what="healthz 200 after reload")
        assert_serving(srv.port, "after HUP to 3 workers")

        bad_files = {
            "unknown key": base + "workers = 2\nno-such-option = 1\n",
            "bad value": base + "workers = lots\n",
            "out of range": base + "workers = 0\n",
            "not key = value": base + "workers = 2\nthis line is wrong\n",
        }
        for what, content in bad_files.items():
            write_config(cfg, content)
            before = srv.worker_pids()
            off = log_size(srv)
            os.kill(srv.pid, signal.SIGHUP)
            wait_for(lambda: log_events(srv._read_log(off), "reload_rejected"), 5,
                     what=f"event=reload_rejected after HUP with a config file with {what}")
            time.sleep(1.0)     # had the master started workers, they would show by now
            after = srv.worker_pids()
            assert after == before, f"{what}: worker pids changed from {before} to {after}"
            text = srv._read_log(off)
            assert not log_events(text, "worker_spawned"), f"{what}: workers spawned:\n{tail(text)}"
            assert srv.running(), f"{what}: master exited"
            assert metrics(srv.port).get("chatd_workers") == 3
            assert_serving(srv.port, f"after a rejected reload ({what})")
            print(f"    rejected ({what}): {log_events(text, 'reload_rejected')[0].split('event=')[1]}")

        # and a good file is accepted again afterwards
        write_config(cfg, base + "workers = 2\n")
        before = srv.worker_pids()
        os.kill(srv.pid, signal.SIGHUP)
        wait_for(lambda: (lambda w: w if len(w) == 2 and not set(w) & set(before) else None)(
            srv.worker_pids()), 10, what="2 fresh workers after fixing the file")
        wait_for(lambda: healthy(srv.port), 10, what="healthz 200")
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# 3. TTIN / TTOU and chatctl scale


def status_of(srv):
    r = chatctl("status", pidfile=srv.pidfile, port=srv.port, timeout=20)
    assert r.returncode == 0, f"chatctl status exited {r.returncode}: {r.stdout!r} {r.stderr!r}"
    m = re.search(r"^master pid=(\d+) .*workers=(\d+)", r.stdout, re.M)
    assert m, f"chatctl status output: {r.stdout!r}"
    wpids = sorted(int(x) for x in re.findall(r"^worker pid=(\d+)", r.stdout, re.M))
    return int(m.group(1)), int(m.group(2)), wpids, r.stdout


def expect_workers(srv, n, what):
    pids = wait_for(lambda: (lambda w: w if len(w) == n else None)(srv.worker_pids()), 10,
                    what=f"{n} worker(s) {what}")
    remember(srv, pids)
    master, count, listed, out = status_of(srv)
    assert master == srv.pid, f"chatctl status master pid {master}, want {srv.pid}"
    assert count == n and listed == sorted(pids), \
        f"{what}: chatctl status says workers={count} {listed}, /proc children {pids}:\n{out}"
    wait_for(lambda: metrics(srv.port).get("chatd_workers") == n, 5,
             what=f"chatd_workers {n} {what}")
    return pids


@timeout(90)
def test_ttin_ttou_and_chatctl_scale():
    srv = new_server(workers=2, name="scale")
    try:
        assert read_pid(srv.pidfile) == srv.pid
        expect_workers(srv, 2, "at start")
        os.kill(srv.pid, signal.SIGTTIN)
        expect_workers(srv, 3, "after TTIN")
        os.kill(srv.pid, signal.SIGTTOU)
        expect_workers(srv, 2, "after TTOU")
        os.kill(srv.pid, signal.SIGTTOU)
        one = expect_workers(srv, 1, "after a second TTOU")
        off = log_size(srv)
        os.kill(srv.pid, signal.SIGTTOU)
        wait_for(lambda: log_events(srv._read_log(off), "scale_refused"), 5,
                 what="event=scale_refused after TTOU at one worker")
        time.sleep(1.0)
        assert srv.worker_pids() == one, f"TTOU at 1 worker: {one} -> {srv.worker_pids()}"
        expect_workers(srv, 1, "after TTOU at one worker")
        wait_for(lambda: healthy(srv.port), 10, what="healthz")
        assert_serving(srv.port, "with one worker")

        r = chatctl("scale", "3", pidfile=srv.pidfile, port=srv.port)
        assert r.returncode == 0 and "workers=3" in r.stdout, \
            f"chatctl scale 3: rc {r.returncode} {r.stdout!r} {r.stderr!r}"
        expect_workers(srv, 3, "after chatctl scale 3")
        r = chatctl("scale", "1", pidfile=srv.pidfile, port=srv.port)
        assert r.returncode == 0 and "workers=1" in r.stdout, \
            f"chatctl scale 1: rc {r.returncode} {r.stdout!r} {r.stderr!r}"
        expect_workers(srv, 1, "after chatctl scale 1")
        r = chatctl("scale", "0", pidfile=srv.pidfile, port=srv.port)
        assert r.returncode != 0, f"chatctl scale 0 succeeded: {r.stdout!r}"
        expect_workers(srv, 1, "after chatctl scale 0 (refused)")
        wait_for(lambda: healthy(srv.port), 10, what="healthz")
        assert_serving(srv.port, "after scaling")
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# 4. QUIT: graceful stop


@itest(60)
async def test_quit_graceful_stop():
    srv = new_server(workers=2, args=FAST, name="quit")
    try:
        port, master = srv.port, srv.pid
        room = R("quit")
        cs = await clients_on_distinct_workers(srv, "quitd", 2)
        for c, _ in cs:
            track(c)
        clients = [c for c, _ in cs]
        for i in range(6):
            clients.append(await connect(srv, f"quit{i}"))
        for c in clients:
            await c.join(room)
        await clients[0].chat(room, "before quit", id="q1")
        wpids = srv.worker_pids()
        remember(srv, wpids)
        assert read_pid(srv.pidfile) == master

        off = log_size(srv)
        t0 = time.monotonic()
        os.kill(master, signal.SIGQUIT)
        for c in clients:
            assert await c.wait_closed(10), f"{c.user}: still open 10s after QUIT"
        codes = sorted({c.close_code for c in clients})
        assert codes == [1001], f"close codes after QUIT: {[(c.user, c.close_code) for c in clients]}"
        rc = await asyncio.to_thread(lambda: srv.proc.wait(15))
        t_exit = time.monotonic() - t0
        assert rc == 0, f"master exited with {rc}"
        await until(lambda: not any(pid_alive(p) for p in wpids), 5, "workers to exit")
        assert not os.path.exists(srv.pidfile), f"pidfile {srv.pidfile} left after QUIT"
        assert not port_listening(port), f"port {port} still has a listener after QUIT"
        s = socket.socket()
        try:
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
                raise AssertionError(f"port {port} still accepts connections after QUIT")
            except ConnectionRefusedError:
                pass
        finally:
            s.close()
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(1)
        finally:
            s.close()
        text = srv._read_log(off)
        assert log_events(text, "graceful_stop"), "no event=graceful_stop:\n" + tail(text)
        assert log_events(text, "stopped", master), "no event=stopped from the master:\n" + tail(text)
        print(f"    QUIT: {len(clients)} clients closed 1001, master exited after {t_exit:.1f}s")
    finally:
        await close_all()
        srv.stop()


# --------------------------------------------------------------------------
# 5. USR2 binary upgrade, then QUIT of the old master; chatctl upgrade


def upgrade_and_retire(srv, old, use_chatctl):
    """USR2 (or chatctl upgrade) to old, waits for the new master to serve,
    QUITs the old one. Returns the new master's pid."""
    old_workers = workers(old)
    off = log_size(srv)
    if use_chatctl:
        r = chatctl("upgrade", pidfile=srv.pidfile, port=srv.port)
        assert r.returncode == 0, f"chatctl upgrade: rc {r.returncode} {r.stdout!r} {r.stderr!r}"
        m = re.search(r"new master pid=(\d+)", r.stdout)
        assert m, f"chatctl upgrade output: {r.stdout!r}"
        new = int(m.group(1))
    else:
        os.kill(old, signal.SIGUSR2)
        new = wait_for(lambda: (lambda p: p if p and p != old and pid_alive(p) else None)(
            read_pid(srv.pidfile)), 10, what="the new master to write the pidfile")
    remember(srv, [new])
    assert read_pid(srv.pidfile) == new
    assert read_pid(srv.pidfile + ".oldbin") == old, \
        f"{srv.pidfile}.oldbin holds {read_pid(srv.pidfile + '.oldbin')}, want {old}"
    wait_for(lambda: log_events(srv._read_log(off), "ready", new), 15,
             what=f"event=ready from the new master {new}")
    new_workers = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(workers(new)), 10,
                           what="2 workers of the new master")
    remember(srv, new_workers)
    # both generations serve side by side until the old one is told to quit
    assert sorted(workers(old, exclude=[new])) == sorted(old_workers), \
        f"old master's workers changed during the upgrade: {old_workers} -> {workers(old)}"
    time.sleep(1.0)
    os.kill(old, signal.SIGQUIT)
    assert wait_exit(old, 15), f"old master {old} still running 15s after QUIT"
    wait_for(lambda: not any(pid_alive(p) for p in old_workers), 10,
             what=f"old workers {old_workers} to exit")
    assert read_pid(srv.pidfile) == new, \
        f"after QUIT of the old master the pidfile holds {read_pid(srv.pidfile)}, want {new}"
    assert not os.path.exists(srv.pidfile + ".oldbin"), ".oldbin left after the old master quit"
    assert pid_alive(new), "the new master died"
    assert sorted(workers(new)) == sorted(new_workers), \
        f"new master's workers {new_workers} -> {workers(new)}"
    return new


@timeout(120)
def test_usr2_upgrade_then_quit_old_no_failed_connections():
    srv = new_server(workers=2, name="upgrade")
    loop = None
    try:
        port = srv.port
        loop = ConnectLoop(port, "u2loop").start()
        wait_for(lambda: loop.ok >= 20, 10, what="the connect loop running")
        new = upgrade_and_retire(srv, srv.pid, use_chatctl=False)
        assert srv.proc.poll() is not None
        time.sleep(1.0)
        loop.stop()
        loop.assert_clean("USR2 + QUIT of the old master")
        n1 = loop.ok

        # the new master serves alone: every connection lands on its workers
        nw = workers(new)
        for i in range(6):
            ws = RawWS.open(port, user=f"alone{i}")
            try:
                row = None
                for lport, rport, st, inode in harness.tcp_connections():
                    if lport == port and rport == ws.sock.getsockname()[1]:
                        row = inode
                owner = [p for p in nw if row in harness.socket_inodes(p)]
                assert owner, f"connection {i} not held by a worker of the new master {nw}"
            finally:
                ws.close_socket()

        # chatctl upgrade: the same dance, from the new master
        loop = ConnectLoop(port, "u2ctl").start()
        wait_for(lambda: loop.ok >= 20, 10, what="the connect loop running")
        newer = upgrade_and_retire(srv, new, use_chatctl=True)
        assert newer != new
        time.sleep(1.0)
        loop.stop()
        loop.assert_clean("chatctl upgrade + QUIT of the old master")
        master, count, listed, out = status_of(srv)
        assert master == newer and count == 2, out
        assert healthy(port)
        print(f"    upgrade: {n1} + {loop.ok} loop connections, none failed; masters "
              f"{srv.pid} -> {new} -> {newer}")
    finally:
        if loop is not None:
            loop.stop()
        srv.stop()


# --------------------------------------------------------------------------
# 6. USR1 reopens the log file in the master and in the workers


@timeout(90)
def test_usr1_reopens_log_file():
    srv = new_server(workers=2, name="logs", log_file=True)
    try:
        F = srv.logfile
        master = srv.pid
        ws = srv.worker_pids()
        wait_for(lambda: all(log_events(read_text(F), "worker_started", p) for p in ws), 10,
                 what=f"worker_started lines of {ws} in {F}")

        for round, how in enumerate(("USR1", "chatctl reopen-logs")):
            moved = f"{F}.{round + 1}"
            os.rename(F, moved)
            old_workers = srv.worker_pids()
            remember(srv, old_workers)
            if how == "USR1":
                os.kill(master, signal.SIGUSR1)
            else:
                r = chatctl("reopen-logs", pidfile=srv.pidfile, port=srv.port)
                assert r.returncode == 0, f"chatctl reopen-logs: {r.returncode} {r.stderr!r}"
            wait_for(lambda: log_events(read_text(F), "log_reopened", master), 5,
                     what=f"the master's event=log_reopened in a new {F} after {how}")
            moved_size = os.path.getsize(moved)
            time.sleep(0.5)     # the workers reopen asynchronously and log nothing
            # a HUP makes every old worker log (graceful stop, exit) from its own fd
            os.kill(master, signal.SIGHUP)
            wait_for(lambda: (lambda w: w if len(w) == 2 and not set(w) & set(old_workers) else None)(
                srv.worker_pids()), 10, what="fresh workers after HUP")
            wait_for(lambda: not any(pid_alive(p) for p in old_workers), 10, what="old workers gone")
            new_text = read_text(F)
            late_in_moved = read_text(moved, moved_size)
            for p in old_workers:
                assert log_events(new_text, "worker_exit", p) or \
                    log_events(new_text, "worker_graceful_stop", p), \
                    f"{how}: old worker {p} logged nothing to the new {F}; lines it wrote to the " \
                    f"moved file afterwards:\n" + "\n".join(l for l in late_in_moved.splitlines()
                                                          if f"pid={p} " in l)
            assert not pids_in_log(late_in_moved) & set(old_workers + [master]), \
                f"{how}: lines still written to the moved file {moved}:\n{late_in_moved}"
            for p in srv.worker_pids():
                wait_for(lambda p=p: log_events(read_text(F), "worker_started", p), 10,
                         what=f"worker_started of new worker {p} in {F}")
            assert log_events(new_text, "reload", master), f"no reload line from the master in {F}"
        assert healthy(srv.port)
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# 7. /metrics


@itest(60)
async def test_metrics_move_and_sum_over_workers():
    srv = new_server(workers=3, args=FAST, name="metrics", pidfile=False)
    try:
        port = srv.port
        m0 = await asyncio.to_thread(metrics, port)
        assert m0.get("chatd_workers") == 3, f"chatd_workers {m0.get('chatd_workers')}"
        for name in ("chatd_connections", "chatd_upgrades_total", "chatd_messages_received_total",
                     "chatd_messages_delivered_total", "chatd_rooms", "chatd_redis_up",
                     "chatd_queue_depth", "chatd_delivery_latency_seconds_count",
                     'chatd_errors_total{code="not_joined"}'):
            assert name in m0, f"/metrics lacks {name}"
        assert m0["chatd_connections"] == 0, m0["chatd_connections"]

        pairs = await clients_on_distinct_workers(srv, "met", 2)
        clients = [track(c) for c, _ in pairs]
        for i in range(3):
            clients.append(await connect(srv, f"metx{i}"))
        M = len(clients)
        where = {}
        for c in clients:
            p = await worker_of_async(srv, c)
            where[p] = where.get(p, 0) + 1
        assert len(where) >= 2, where

        async def conns_are(n):
            m = await asyncio.to_thread(metrics, port)
            return m if m["chatd_connections"] == n else None
        m1 = await until(lambda: conns_are(M), 5, f"chatd_connections == {M}")
        g = worker_gauges(m1)
        assert sum(g.values()) == M, f"per-worker gauges {g} do not sum to {M}"
        assert set(g) == set(srv.worker_pids()), f"gauge pids {sorted(g)} vs workers {srv.worker_pids()}"
        for p, n in where.items():
            assert g.get(p) == n, f"worker {p} holds {n} of our clients, gauge says {g.get(p)}"
        assert m1["chatd_upgrades_total"] - m0["chatd_upgrades_total"] >= M
        assert m1["chatd_workers"] == 3

        room = R("metrics")
        for c in clients:
            await c.join(room)
        N = 12
        sender = clients[0]
        for k in range(N):
            await sender.chat(room, f"metric {k}", id=f"mm{k}")
        for c in clients:
            await c.wait_seq(room, N, 10)
        want_rx = m1["chatd_messages_received_total"] + N
        want_dl = m1["chatd_messages_delivered_total"] + N * M

        async def counted():
            m = await asyncio.to_thread(metrics, port)
            return m if (m["chatd_messages_received_total"] >= want_rx and
                         m["chatd_messages_delivered_total"] >= want_dl) else None
        await until(counted, 5, "message counters to catch up")
        await asyncio.sleep(0.3)
        m2 = await asyncio.to_thread(metrics, port)
        assert m2["chatd_messages_received_total"] - m1["chatd_messages_received_total"] == N, \
            f"received grew by {m2['chatd_messages_received_total'] - m1['chatd_messages_received_total']}, want {N}"
        assert m2["chatd_messages_delivered_total"] - m1["chatd_messages_delivered_total"] == N * M, \
            f"delivered grew by {m2['chatd_messages_delivered_total'] - m1['chatd_messages_delivered_total']}, " \
            f"want {N} chats x {M} members = {N * M}"
        # a duplicate (same id) is not counted as received again
        d = await sender.chat(room, "metric 0", id="mm0")
        assert d["duplicate"] is True
        await asyncio.sleep(0.3)
        m2b = await asyncio.to_thread(metrics, port)
        assert m2b["chatd_messages_received_total"] == m2["chatd_messages_received_total"], \
            "a duplicate chat counted as received"
        assert m2b["chatd_messages_delivered_total"] == m2["chatd_messages_delivered_total"], \
            "a duplicate chat counted as delivered"
        lat = m2["chatd_delivery_latency_seconds_count"] - m1["chatd_delivery_latency_seconds_count"]
        assert lat >= N, f"latency histogram count grew by {lat} after {N} chats"
        assert m2['chatd_delivery_latency_seconds_bucket{le="+Inf"}'] == \
            m2["chatd_delivery_latency_seconds_count"]
        buckets = [v for k, v in m2.items() if k.startswith("chatd_delivery_latency_seconds_bucket")]
        assert buckets == sorted(buckets), f"histogram buckets not cumulative: {buckets}"
        await until(lambda: metrics(port)["chatd_rooms"] >= len(where), 5,
                    f"chatd_rooms >= {len(where)} (members on {len(where)} workers)")
        assert m2["chatd_redis_up"] >= 1

        # an error: chat to a room not joined
        key = 'chatd_errors_total{code="not_joined"}'
        f = await sender.request("chat", {"room": R("metrics-nj"), "content": "x"}, id="nj1")
        assert f["type"] == "error" and f["payload"]["code"] == "not_joined", f
        m3 = await until(lambda: (lambda m: m if m[key] >= m2[key] + 1 else None)(metrics(port)),
                         5, "errors_total not_joined to grow")
        assert m3[key] - m2[key] == 1, f"{key} grew by {m3[key] - m2[key]}"
        bkey = 'chatd_errors_total{code="bad_request"}'
        await sender.send_raw('{"type": "no-such-type", "id": "bad1"}')
        await sender.wait(lambda f: f.get("id") == "bad1", 5, what="answer to a bad request")
        m4 = await until(lambda: (lambda m: m if m[bkey] >= m3[bkey] + 1 else None)(metrics(port)),
                         5, "errors_total bad_request to grow")
        assert m4[bkey] - m3[bkey] == 1, f"{bkey} grew by {m4[bkey] - m3[bkey]}"

        # closing clients lowers the gauges
        for c in clients[-2:]:
            await c.close()
        m5 = await until(lambda: conns_are(M - 2), 5, f"chatd_connections == {M - 2}")
        assert sum(worker_gauges(m5).values()) == M - 2, worker_gauges(m5)
        print(f"    metrics: {M} clients on {len(where)} workers {where}, {N} chats -> "
              f"received +{N}, delivered +{N * M}")
    finally:
        await close_all()
        srv.stop()


# --------------------------------------------------------------------------
# 8. kill -9 of a worker, three times quickly: respawn with backoff


@timeout(60)
def test_worker_kill9_respawn_with_backoff():
    srv = new_server(workers=2, name="crash", pidfile=False)
    try:
        master = srv.pid
        wait_for(lambda: healthy(srv.port), 10, what="healthz")
        off = log_size(srv)
        victim = srv.worker_pids()[0]
        other = [p for p in srv.worker_pids() if p != victim]
        delays = []
        for k in range(3):
            before = set(srv.worker_pids())
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            new = wait_for(lambda: (lambda s: s if len(s) == 1 else None)(
                set(srv.worker_pids()) - before), 10, interval=0.005,
                what=f"a respawned worker after kill -9 #{k + 1} of {victim}")
            delays.append(time.monotonic() - t0)
            victim = new.pop()
            remember(srv, [victim])
            assert srv.running(), f"master died after kill -9 #{k + 1} of a worker"
        text = srv._read_log(off)
        died = log_events(text, "worker_died", master)
        assert len(died) == 3, f"{len(died)} worker_died lines:\n{tail(text)}"
        loops = log_events(text, "worker_crash_loop", master)
        assert loops, f"no event=worker_crash_loop after three quick deaths " \
                      f"(respawn delays {[round(d, 3) for d in delays]}):\n{tail(text)}"
        assert delays[2] > delays[0] and delays[2] >= 0.3, \
            f"respawn delays did not grow: {[round(d, 3) for d in delays]}"
        assert set(other) <= set(srv.worker_pids()), "the other worker was disturbed"
        assert len(srv.worker_pids()) == 2
        wait_for(lambda: healthy(srv.port), 10, what="healthz after the respawns")
        assert_serving(srv.port, "after three worker crashes")
        print(f"    respawn delays {[round(d, 3) for d in delays]}s; {loops[-1].split('event=')[1]}")
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# 9. chatctl against a stopped server


COMMANDS = [["status"], ["reload"], ["scale", "2"], ["stop"], ["graceful-stop"],
            ["reopen-logs"], ["upgrade"]]


def expect_chatctl_fails(pidfile, port, want):
    """Checks that every command fails (non-zero) with one clear chatctl
    message matching want on stderr, and nothing else there. Returns the
    problems found."""
    problems = []
    for cmd in COMMANDS:
        what = f"chatctl {' '.join(cmd)}"
        try:
            r = chatctl(*cmd, pidfile=pidfile, port=port, timeout=30)
        except subprocess.TimeoutExpired:
            problems.append(f"{what}: still running after 30s")
            continue
        if r.returncode == 0:
            problems.append(f"{what} exited 0: {r.stdout!r} {r.stderr!r}")
            continue
        if not re.search(want, r.stderr):
            problems.append(f"{what}: stderr {r.stderr!r}, want /{want}/")
        noise = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("chatctl: ")]
        if noise:
            problems.append(f"{what}: stderr has more than chatctl's message: {r.stderr!r}")
        if "requested" in r.stdout:
            problems.append(f"{what}: claims success on stdout: {r.stdout!r}")
    return [f"[{want}] {p}" for p in problems]


@timeout(60)
def test_chatctl_against_stopped_server():
    srv = new_server(workers=1, name="ctl")
    try:
        pidfile, port = srv.pidfile, srv.port
        r = chatctl("status", pidfile=pidfile, port=port)
        assert r.returncode == 0 and f"master pid={srv.pid}" in r.stdout, r
        r = chatctl("stop", pidfile=pidfile, port=port)
        assert r.returncode == 0, r
        assert srv.proc.wait(10) == 0
        wait_for(lambda: not os.path.exists(pidfile), 5, what="the pidfile removed after stop")
        problems = expect_chatctl_fails(pidfile, port, r"chatd is not running.*no pidfile")

        # a server killed with -9 leaves a stale pidfile
        srv2 = new_server(workers=1, name="ctl9")
        try:
            remember(srv2, srv2.worker_pids())
            srv2.kill_all()
            assert os.path.exists(srv2.pidfile)
            problems += expect_chatctl_fails(srv2.pidfile, srv2.port, r"chatd is not running.*gone")
        finally:
            srv2.stop()
        # an empty pidfile
        empty = os.path.join(srv.dir, "empty.pid")
        open(empty, "w").close()
        problems += expect_chatctl_fails(empty, port, r"empty")
        assert not problems, f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# 10. chatctl finds the port by itself (no --port, no CHATD_PORT)


def status_without_port(srv):
    """chatctl status with neither --port nor CHATD_PORT: checks that it ran
    clean, found srv's port and got every count. Returns (master pid,
    {worker pid: connections}, total connections)."""
    r = chatctl("status", pidfile=srv.pidfile, timeout=20)
    what = f"chatctl status (no --port): rc {r.returncode}\nstdout {r.stdout!r}\nstderr {r.stderr!r}"
    assert r.returncode == 0, what
    assert r.stderr == "", what
    m = re.search(r"^master pid=(\d+) uptime=\d+s workers=(\d+) port=(\S+)$", r.stdout, re.M)
    assert m, what
    assert m.group(3) == str(srv.port), f"port={m.group(3)}, want {srv.port}: {what}"
    conns = {}
    for wm in re.finditer(r"^worker pid=(\d+) uptime=\d+s connections=(\S+)$", r.stdout, re.M):
        assert wm.group(2).isdigit(), f"worker {wm.group(1)} connections={wm.group(2)}: {what}"
        conns[int(wm.group(1))] = int(wm.group(2))
    assert len(conns) == int(m.group(2)), what
    tm = re.search(r"^connections=(\S+)$", r.stdout, re.M)
    assert tm and tm.group(1).isdigit(), what
    return int(m.group(1)), conns, int(tm.group(1))


@timeout(120)
def test_chatctl_status_finds_port_without_port_option():
    srv = new_server(workers=2, name="ctlport")
    ws = None
    try:
        # the bug: chatctl asked 8080 and ended silently with status 1
        assert srv.port != 8080, "the harness picked 8080: this test needs any other port"
        master, conns, total = status_without_port(srv)
        assert master == srv.pid, f"master pid {master}, want {srv.pid}"
        assert sorted(conns) == srv.worker_pids(), f"workers {conns}, /proc {srv.worker_pids()}"
        assert total == 0 and not any(conns.values()), f"idle server: {conns} total {total}"

        # one line per Redis node the server uses (each master of a
        # cluster), saying how many workers have it up
        want_nodes = sorted(f"127.0.0.1:{n.port}" for n in
                            (REDIS.masters() if harness.is_cluster(REDIS) else [REDIS]))

        def redis_lines():
            r = chatctl("status", pidfile=srv.pidfile, timeout=20)
            return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
                r"^redis node=(\S+) up=(\d+)/(\d+) commands=\d+ errors=\d+ reconnects=\d+ redirects=\d+$",
                r.stdout, re.M)}
        nodes = wait_for(lambda: (lambda n: n if sorted(n) == want_nodes and
                                  all(v == (2, 2) for v in n.values()) else None)(redis_lines()), 10,
                         what=f"chatctl status to list Redis nodes {want_nodes}, each up in both workers")
        assert len(nodes) == len(want_nodes), nodes

        # the counts are the server's: one session shows up
        ws = RawWS.open(srv.port, user="ctlport")
        assert ws.welcome["type"] == "welcome", ws.welcome
        master, conns, total = wait_for(
            lambda: (lambda s: s if s[2] == 1 else None)(status_without_port(srv)), 10,
            what="chatctl status to count the open session")
        assert sum(conns.values()) == 1, f"worker counts {conns} with one session open"
        ws.send_close(1000)
        ws.close_socket()
        ws = None

        # after an upgrade (the sockets now belong to the new master) and
        # the old master's exit, it still finds the port
        new = upgrade_and_retire(srv, srv.pid, use_chatctl=True)
        master, conns, total = status_without_port(srv)
        assert master == new, f"master pid {master}, want the new master {new}"
        assert sorted(conns) == sorted(workers(new)), f"workers {conns}, /proc {workers(new)}"

        # nothing answers on --port: status still says what it knows, with
        # '?' for the counts and a warning, and exits 0 (see chatctl's usage)
        dead = harness.free_port()
        r = chatctl("status", pidfile=srv.pidfile, port=dead, timeout=20)
        what = f"rc {r.returncode}\nstdout {r.stdout!r}\nstderr {r.stderr!r}"
        assert r.returncode == 0, what
        assert re.search(rf"^master pid={new} .* port={dead}$", r.stdout, re.M), what
        assert re.search(r"^connections=\?$", r.stdout, re.M), what
        assert all(l.endswith("connections=?") for l in r.stdout.splitlines()
                   if l.startswith("worker ")), what
        assert re.search(rf"^chatctl: warning: .*{dead}", r.stderr, re.M), what
    finally:
        if ws is not None:
            ws.close_socket()
        srv.stop()


@timeout(60)
def test_chatctl_missing_or_stale_pidfile_without_port():
    d = tempfile.mkdtemp(prefix="ctlstale-", dir=harness.artifacts_dir())
    problems = expect_chatctl_fails(os.path.join(d, "missing.pid"), None,
                                    r"chatd is not running.*no pidfile")
    # stale: the pid of a process that has exited
    p = subprocess.Popen(["true"])
    p.wait(10)
    assert not pid_alive(p.pid)
    stale = os.path.join(d, "stale.pid")
    with open(stale, "w") as f:
        f.write(f"{p.pid}\n")
    problems += expect_chatctl_fails(stale, None, r"chatd is not running.*gone")
    # not a pid at all; 0 would make kill signal chatctl's own process group
    for name, text in (("junk.pid", "chatd\n"), ("zero.pid", "0\n")):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        problems += expect_chatctl_fails(path, None, r"does not hold a pid")
    # bad usage: status 2 and a message, never silence
    for args, port, want in ((["bogus"], None, r"unknown command"),
                             (["status", "extra"], None, r"takes no arguments"),
                             (["status"], "http", r"not a port number"),
                             (["scale", "0"], None, r"scale takes one number")):
        r = chatctl(*args, pidfile=stale, port=port, timeout=30)
        if r.returncode != 2 or not re.search(rf"^chatctl: .*{want}", r.stderr, re.M):
            problems.append(f"chatctl {' '.join(args)} (port {port}): rc {r.returncode}, "
                            f"stderr {r.stderr!r}, want 2 and /{want}/")
    assert not problems, f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)


@timeout(60)
def test_systemd_readiness_notifications():
    """Under systemd (Type=notify) the master says READY=1 once every worker
    is ready, RELOADING=1 then READY=1 again around a HUP reload, and
    STOPPING=1 when told to stop: a datagram socket stands in for systemd."""
    d = tempfile.mkdtemp(dir=harness.artifacts_dir())
    path = os.path.join(d, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got = []

    def drain():
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                return

    def wait_state(word, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            drain()
            if any(word in m.split("\n") for m in got):
                return [m for m in got if word in m.split("\n")][-1]
        raise AssertionError(f"no {word} within {timeout}s; got {got!r}")

    try:
        srv = Chatd(REDIS, workers=2, name="notify", env={"NOTIFY_SOCKET": path}).start()
        try:
            ready = wait_state("READY=1")
            assert f"MAINPID={srv.pid}" in ready.split("\n") and "STATUS=serving" in ready, ready
            got.clear()
            old = srv.worker_pids()
            os.kill(srv.pid, signal.SIGHUP)
            msgs = []
            wait_state("RELOADING=1")
            wait_state("READY=1")
            msgs = list(got)
            first = next(i for i, m in enumerate(msgs) if "RELOADING=1" in m.split("\n"))
            assert any("READY=1" in m.split("\n") for m in msgs[first + 1:]), msgs
            assert "MONOTONIC_USEC=" in msgs[first], msgs
            wait_for(lambda: not set(srv.worker_pids()) & set(old), 10, what="old workers gone")
            got.clear()
        finally:
            srv.stop()
        wait_state("STOPPING=1", 5)
    finally:
        sock.close()
