"""
Checks a built chatd .deb from the outside: what it holds and declares,
then the unpacked binary serving a chat round trip (and its browser client)
from an unpacked root, as an installed chatd would. Usage: check.py DEB
"""
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
from chatclient import ChatClient  # noqa: E402

DEB = sys.argv[1]
ROOT = tempfile.mkdtemp(prefix="chatd-deb-")
results = []


def check(name):
    def deco(fn):
        t0 = time.monotonic()
        try:
            fn()
            results.append(True)
            print(f"PASS {name} ({time.monotonic() - t0:.1f}s)")
        except Exception:       # noqa: BLE001
            results.append(False)
            print(f"FAIL {name}")
            traceback.print_exc()
        return fn
    return deco


def dpkg_deb(*args):
    return subprocess.run(["dpkg-deb", *args, DEB], capture_output=True, text=True, check=True).stdout


@check("contents")
def _contents():
    files = {line.split()[-1].lstrip(".") for line in dpkg_deb("-c").splitlines()}
    for want in ("/usr/sbin/chatd", "/usr/bin/chatctl", "/usr/share/chatd/web/index.html",
                 "/usr/share/man/man8/chatd.8.gz", "/usr/share/man/man8/chatctl.8.gz",
                 "/etc/chatd/chatd.conf", "/etc/logrotate.d/chatd", "/lib/systemd/system/chatd.service",
                 "/usr/share/doc/chatd/copyright"):
        assert want in files, f"{want} not in the package"


@check("metadata: runtime libraries, not started")
def _metadata():
    info = dpkg_deb("-I")
    deps = re.search(r"^ Depends: (.*)$", info, re.M).group(1)
    for lib in ("libuv1", "libhiredis", "libwslay1", "libcjson1", "libmongoc-1.0-0", "libjwt0", "adduser"):
        assert lib in deps, f"{lib} missing from Depends: {deps}"
    ctl = tempfile.mkdtemp(dir=ROOT)
    subprocess.run(["dpkg-deb", "-e", DEB, ctl], check=True)
    postinst = open(os.path.join(ctl, "postinst")).read()
    assert "adduser --system" in postinst
    # dh_installsystemd --no-enable --no-start: nothing starts it, and it is
    # enabled again only on an upgrade of an admin-enabled unit.
    assert "deb-systemd-invoke" not in postinst, postinst
    lines = [line.strip() for line in postinst.splitlines() if line.strip() and not line.strip().startswith("#")]
    for i, line in enumerate(lines):
        if line.startswith("deb-systemd-helper enable"):
            assert "was-enabled" in lines[i - 1], lines[i - 1:i + 1]


@check("unpacked: unit, conffiles, man page covers every option")
def _unpacked():
    subprocess.run(["dpkg", "-x", DEB, ROOT], check=True)
    unit = open(os.path.join(ROOT, "lib/systemd/system/chatd.service")).read()
    for want in ("Type=notify", "ExecStart=/usr/sbin/chatd --config /etc/chatd/chatd.conf",
                 "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE="):
        assert want in unit, want
    assert "@SBINDIR@" not in unit
    helptext = subprocess.run([os.path.join(ROOT, "usr/sbin/chatd"), "--help"], capture_output=True,
                              text=True, check=True).stdout
    man = subprocess.run(["zcat", os.path.join(ROOT, "usr/share/man/man8/chatd.8.gz")], capture_output=True,
                         text=True, check=True).stdout.replace("\\-", "-")
    for opt in re.findall(r"^  (--[a-z-]+)", helptext, re.M):
        assert opt in man, f"chatd(8) does not describe {opt}"
    # The shipped config is one chatd accepts.
    p = subprocess.run([os.path.join(ROOT, "usr/sbin/chatd"), "--config", os.path.join(ROOT, "etc/chatd/chatd.conf"),
                        "--check-config"], capture_output=True, text=True)
    assert p.returncode == 0 and "configuration ok" in p.stdout, (p.stdout, p.stderr)


@check("the unpacked chatd serves a chat round trip and its browser client")
def _round_trip():
    redis = harness.Redis(name="redis-deb").start()
    files = os.path.join(ROOT, "files")
    srv = harness.Chatd(redis, workers=1, name="deb", binary=os.path.join(ROOT, "usr/sbin/chatd"),
                        args=["--files-dir", files])
    try:
        srv.start()

        async def talk():
            a = await ChatClient.open(srv.port, "debalice")
            b = await ChatClient.open(srv.port, "debbob")
            try:
                await a.join("deb-room")
                await b.join("deb-room")
                ack = await a.chat("deb-room", "from the package")
                f = await b.recv_until(lambda f: f.get("type") == "chat")
                assert f["payload"]["content"] == "from the package" and f["payload"]["seq"] == ack["seq"], f
            finally:
                await a.close()
                await b.close()
        asyncio.run(asyncio.wait_for(talk(), 20))
        # The client comes from usr/share/chatd/web next to usr/sbin/chatd.
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/", timeout=5) as r:
            page = r.read().decode()
        assert r.status == 200 and "<html" in page.lower(), page[:200]
        shipped = open(os.path.join(ROOT, "usr/share/chatd/web/index.html")).read()
        assert re.sub(r"\?v=[0-9a-f]+", "", page) == re.sub(r"\?v=[0-9a-f]+", "", shipped)
        req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/files?room=deb-room&user=debalice",
                                     data=b"\0bytes\0", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            meta = json.loads(r.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{meta['url']}?user=debbob", timeout=5) as r:
            assert r.read() == b"\0bytes\0"
    finally:
        srv.stop()
        redis.stop()


harness.cleanup_all()
shutil.rmtree(ROOT, ignore_errors=True)
passed = sum(results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
