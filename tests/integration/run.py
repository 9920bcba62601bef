#!/usr/bin/python3
"""
A tiny test runner for chatd's integration tests.

    /usr/bin/python3 tests/integration/run.py                 # every test_*.py here
    /usr/bin/python3 tests/integration/run.py test_foundation # some modules
    /usr/bin/python3 tests/integration/run.py test_foundation.py::test_welcome
    /usr/bin/python3 tests/integration/run.py -k bad_request  # names containing

Each module's test_* functions run in definition order, sync or async
(async ones under asyncio.run), each under its own timeout (default 60 s,
harness.timeout(s) decorator to change). Optional module fixtures
setup_module() / teardown_module() run once around the module's tests.
After every test the logs of live chatd processes are checked for sanitizer
reports; after every module (and at exit) every server still running is
killed. Prints PASS/FAIL per test and ends with "N passed, N failed";
exits 0 only when nothing failed. A test (or setup_module) that raises
harness.Skip("why") prints "SKIP name: why" and counts as neither; the
closing line then ends with ", N skipped".

Environment: CHATD_BIN (server binary), CHATD_IT_TIMEOUT (default per-test
timeout), CHATD_IT_KEEP=1 (keep the temp dir with logs), CHATD_IT_REDIS=cluster
(modules that use harness.make_redis() run against a Redis Cluster).
"""

import asyncio
import importlib.util
import inspect
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True      # leave no __pycache__ in the tree

import harness  # noqa: E402

DEFAULT_TIMEOUT = float(os.environ.get("CHATD_IT_TIMEOUT", "60"))
FIXTURE_TIMEOUT = 120.0


class TestTimeout(BaseException):
    """Raised in the main thread by SIGALRM. A BaseException so that a
    test's `except Exception` cannot swallow it."""


def _alarm(signum, frame):
    raise TestTimeout("timed out")


def run_with_timeout(fn, seconds):
    """Calls fn() (or runs the coroutine function) with a deadline."""
    signal.signal(signal.SIGALRM, _alarm)
    if inspect.iscoroutinefunction(fn):
        async def guarded():
            return await asyncio.wait_for(fn(), seconds)
        call = lambda: asyncio.run(guarded())  # noqa: E731
        backstop = seconds + 5
    else:
        call = fn
        backstop = seconds
    signal.setitimer(signal.ITIMER_REAL, backstop)
    t0 = time.monotonic()
    try:
        return call()
    except TestTimeout:
        raise TestTimeout(f"timed out after {seconds}s") from None
    except asyncio.TimeoutError:
        # The same class as TimeoutError (and socket.timeout): only the
        # deadline's own is a test timeout; one from inside the test (a
        # Redis command that got no answer, say) keeps its traceback.
        if time.monotonic() - t0 < seconds - 0.5:
            raise
        raise TestTimeout(f"timed out after {seconds}s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def load_module(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def reason_of(exc):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.splitlines()[0] if text else repr(exc)


def out(line=""):
    print(line, flush=True)


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures = []

    def ok(self, name, secs):
        self.passed += 1
        out(f"PASS {name} ({secs:.1f}s)")

    def skip(self, name, exc, secs=None):
        self.skipped += 1
        t = f" ({secs:.1f}s)" if secs is not None else ""
        out(f"SKIP {name}: {str(exc).strip() or 'no reason given'}{t}")

    def summary(self):
        line = f"{self.passed} passed, {self.failed} failed"
        return line + (f", {self.skipped} skipped" if self.skipped else "")

    def fail(self, name, exc, secs=None):
        self.failed += 1
        self.failures.append(name)
        t = f" ({secs:.1f}s)" if secs is not None else ""
        out(f"FAIL {name}: {reason_of(exc)}{t}")
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        out("    " + tb.rstrip().replace("\n", "\n    "))


def parse_args(argv):
    selectors, keyword = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            out(__doc__.strip())
            sys.exit(0)
        if a == "-k":
            i += 1
            keyword = argv[i]
        elif a.startswith("-k="):
            keyword = a[3:]
        else:
            selectors.append(a)
        i += 1
    return selectors, keyword


def plan(selectors):
    """[(module_path, set of test names or None)] in a stable order."""
    if not selectors:
        files = sorted(f for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py"))
        return [(os.path.join(HERE, f), None) for f in files]
    result = {}
    for sel in selectors:
        mod, _, test = sel.partition("::")
        if not mod.endswith(".py"):
            mod += ".py"
        path = mod if os.path.isabs(mod) or os.path.exists(mod) else os.path.join(HERE, mod)
        path = os.path.abspath(path)
        if not os.path.exists(path):
            out(f"no such test module: {sel}")
            sys.exit(2)
        names = result.setdefault(path, set())
        if names is not None:
            if test:
                names.add(test)
            else:
                result[path] = None
    return [(p, (n or None)) for p, n in result.items()]


def run_module(path, only, keyword, results):
    modname = os.path.splitext(os.path.basename(path))[0]
    try:
        mod = load_module(path)
    except BaseException as e:   # noqa: B902
        results.fail(f"{modname} (import)", e)
        return
    tests = [(n, f) for n, f in vars(mod).items()
             if n.startswith("test_") and callable(f)
             and (only is None or n in only)
             and (keyword is None or keyword in n)]
    if not tests:
        return
    setup = getattr(mod, "setup_module", None)
    teardown = getattr(mod, "teardown_module", None)
    setup_error = None
    setup_skip = None
    try:
        if setup:
            t0 = time.monotonic()
            try:
                run_with_timeout(setup, FIXTURE_TIMEOUT)
            except harness.Skip as e:
                setup_skip = e
            except BaseException as e:   # noqa: B902
                if isinstance(e, KeyboardInterrupt):
                    raise
                setup_error = e
                results.fail(f"{modname}.setup_module", e, time.monotonic() - t0)
        for name, fn in tests:
            full = f"{modname}.{name}"
            if setup_skip is not None:
                results.skip(full, setup_skip)
                continue
            if setup_error is not None:
                results.failed += 1
                results.failures.append(full)
                out(f"FAIL {full}: setup_module failed: {reason_of(setup_error)}")
                continue
            secs_limit = getattr(fn, "timeout_seconds", DEFAULT_TIMEOUT)
            t0 = time.monotonic()
            try:
                try:
                    run_with_timeout(fn, secs_limit)
                finally:
                    harness.check_sanitizers()
            except KeyboardInterrupt:
                raise
            except harness.Skip as e:
                results.skip(full, e, time.monotonic() - t0)
            except BaseException as e:   # noqa: B902
                results.fail(full, e, time.monotonic() - t0)
            else:
                results.ok(full, time.monotonic() - t0)
    finally:
        if teardown:
            t0 = time.monotonic()
            try:
                run_with_timeout(teardown, FIXTURE_TIMEOUT)
            except KeyboardInterrupt:
                raise
            except BaseException as e:   # noqa: B902
                results.fail(f"{modname}.teardown_module", e, time.monotonic() - t0)
        try:
            harness.check_sanitizers()
        except AssertionError as e:
            results.fail(f"{modname} (sanitizer check)", e)
        harness.cleanup_all()


def main(argv):
    selectors, keyword = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))
    harness.become_subreaper()
    results = Results()
    try:
        for path, only in plan(selectors):
            run_module(path, only, keyword, results)
    except KeyboardInterrupt:
        out("interrupted")
        results.failed += 1
    finally:
        harness.cleanup_all()
    kept = harness.cleanup_artifacts(keep=results.failed > 0)
    if kept:
        out(f"logs kept in {kept}")
    out(results.summary())
    return 0 if results.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
