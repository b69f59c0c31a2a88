"""make bench: qpy's performance figures, each beside a baseline measured in the same run on the
same machine, printed as a table and written to bench/results/<time>.json. Benchmarks print;
they assert nothing.

Figures (issue 10): B1 `qpy sub true` latency against `python3 -c 'import sqlite3'`; B2a
dispatch of 1,000 queued `true` against task-spooler; B3 overhead per short job; B4 `qpy check`
of 10,000 finished jobs; B5 `check running` and an idle tick with a long history; B7 10,000
jobs in one submission; B8 peak memory of `qpy sub` and of a runner.
"""
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
QPY = [PYTHON, "-c", "import sys; sys.path.insert(0, %r); import qpy; sys.exit(qpy.main())" % REPO]
ADMIN = [PYTHON, "-c", "import sys; sys.path.insert(0, %r); import qpy_admin; "
         "sys.exit(qpy_admin.main())" % REPO]


class Sandbox:
    """A fresh personal qpy in a temporary HOME."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="qpy-bench-")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QPY_")}
        self.env["HOME"] = self.root
        self.state = os.path.join(self.root, ".qpy")

    def run(self, *args, admin=False):
        return subprocess.run((ADMIN if admin else QPY) + list(args), cwd=self.root,
                              env=self.env, capture_output=True, text=True, check=True).stdout

    def db(self):
        return sqlite3.connect(os.path.join(self.state, "qpy.db"), timeout=60)

    def live(self):
        """How many jobs are not finished, read as qpy's readers do: under qpy.lock (a reader
        without it would hold up qpy's writers in SQLite's busy handler)."""
        from filelock import FileLock
        db = self.db()
        try:
            with FileLock(os.path.join(self.state, "qpy.lock")):
                return db.execute("SELECT COUNT(*) FROM jobs WHERE status IN "
                                  "('queue', 'starting', 'running')").fetchone()[0]
        finally:
            db.close()

    def wait_idle(self, timeout=600):
        deadline = time.time() + timeout
        while self.live() and time.time() < deadline:
            time.sleep(0.05)

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


def median_seconds(command, runs, env=None, cwd=None):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def b1():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        qpy_sub = median_seconds(QPY + ["sub", "true"], 40, box.env, box.root)
        python = median_seconds([PYTHON, "-c", "import sqlite3"], 40)
        return row("B1 qpy sub true, median", qpy_sub * 1000, python * 1000, "ms",
                   "python -c 'import sqlite3'", 1.5)
    finally:
        box.close()


def b2a():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        box.run("sub", "--array", "1-1000", "true")
        start = time.perf_counter()
        box.run("ctrlQueue", "continue")
        box.wait_idle()
        qpy_rate = 1000 / (time.perf_counter() - start)
    finally:
        box.close()
    tsp_rate = None
    if shutil.which("tsp"):
        socket = tempfile.mktemp(prefix="qpy-bench-tsp-")
        env = dict(os.environ, TS_SOCKET=socket, TS_MAXFINISHED="2000", TS_SLOTS="2")
        start = time.perf_counter()
        for _ in range(1000):
            subprocess.run(["tsp", "-n", "true"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(["tsp", "-w"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["tsp", "-K"], env=env, stdout=subprocess.DEVNULL)
        tsp_rate = 1000 / (time.perf_counter() - start)
    return row("B2a dispatch of 1,000 queued jobs", qpy_rate, tsp_rate, "jobs/s",
               "task-spooler end to end", 0.5, higher_is_better=True)


def b3():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        box.run("sub", "--array", "1-200", "sleep 0.05")
        start = time.perf_counter()
        box.run("ctrlQueue", "continue")
        box.wait_idle()
        wall = time.perf_counter() - start
    finally:
        box.close()
    slots = os.cpu_count() or 1
    overhead = (wall - 200 * 0.05 / slots) / 200 * slots
    return row("B3 overhead per 0.05 s job and slot", overhead * 1000, None, "ms", "-", None,
               absolute=8)


def fill_history(box, finished, queued):
    """Jobs inserted straight into the DB: the setup of a benchmark, not what is measured."""
    db = box.db()
    now = time.time()
    with db:
        db.executemany(
            "INSERT INTO jobs (user, status, command, cwd, spec, n_cores, mem, position, "
            "queued_at, started_at, ended_at, node, exit_code) VALUES (?, ?, 'true', ?, 'x', 1, "
            "1, 0, ?, ?, ?, 'localhost', ?)",
            [(os.environ.get("USER") or _user(), "done" if i < finished else "queue", box.root,
              now, now if i < finished else None, now if i < finished else None,
              0 if i < finished else None) for i in range(finished + queued)])
        db.execute("UPDATE jobs SET position = id")
    db.close()


def _user():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def b4():
    box = Sandbox()
    try:
        box.run("restart")
        fill_history(box, 10000, 0)
        qpy_check = median_seconds(QPY + ["check"], 5, box.env, box.root)
        python = median_seconds([PYTHON, "-c", "import sqlite3"], 10)
        return row("B4 qpy check, 10,000 finished jobs", qpy_check * 1000, python * 1000, "ms",
                   "python -c 'import sqlite3'", None, absolute=120)
    finally:
        box.close()


def b5(b1_ms):
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        fill_history(box, 100000, 10000)
        check = median_seconds(QPY + ["check", "running"], 5, box.env, box.root)
        tick = median_seconds(ADMIN + ["tick"], 5, box.env, box.root)
        return [row("B5 check running, 100k history", check * 1000, b1_ms, "ms", "B1", 1.3),
                row("B5 idle tick, 100k history, 10k queued", tick * 1000, b1_ms, "ms", "B1",
                    1.3)]
    finally:
        box.close()


def b7():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        start = time.perf_counter()
        box.run("sub", "--array", "1-10000", "true")
        return row("B7 10,000 jobs in one submission", time.perf_counter() - start, None, "s",
                   "-", None, absolute=2)
    finally:
        box.close()


def b8():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        p = subprocess.Popen(QPY + ["sub", "true"], cwd=box.root, env=box.env,
                             stdout=subprocess.DEVNULL)
        _, _, usage = os.wait4(p.pid, 0)
        sub_mb = usage.ru_maxrss / 1024
        box.run("ctrlQueue", "continue")
        box.run("sub", "sleep 3")
        db = box.db()
        runner = None
        deadline = time.time() + 30
        while runner is None and time.time() < deadline:
            runner = db.execute("SELECT runner_pid FROM jobs WHERE status = 'running'").fetchone()
            time.sleep(0.05)
        db.close()
        runner_mb = None
        if runner:
            with open("/proc/%d/status" % runner[0]) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        runner_mb = int(line.split()[1]) / 1024
        box.wait_idle()
        return [row("B8 peak memory of qpy sub", sub_mb, None, "MB", "-", None, absolute=30),
                row("B8 memory of one runner (RSS)", runner_mb, None, "MB", "-", None,
                    absolute=15)]
    finally:
        box.close()


def row(figure, value, baseline, unit, baseline_name, target_ratio, higher_is_better=False,
        absolute=None):
    """One line of the table: the figure, its baseline, the ratio, and whether the target
    (a ratio to the baseline, or an absolute bound) is met."""
    ratio = value / baseline if value is not None and baseline else None
    if target_ratio is not None and ratio is not None:
        met = ratio >= target_ratio if higher_is_better else ratio <= target_ratio
        target = ("≥ %.1f ×" if higher_is_better else "≤ %.1f ×") % target_ratio
    elif absolute is not None and value is not None:
        met = value <= absolute
        target = "≤ %g %s" % (absolute, unit)
    else:
        met, target = None, "-"
    return {"figure": figure, "qpy": value, "baseline": baseline, "unit": unit,
            "baseline_name": baseline_name, "ratio": ratio, "target": target, "met": met}


def compile_qpy():
    """Fresh byte-code first: qpy must not be measured compiling itself (a Python that writes
    no byte-code, PYTHONDONTWRITEBYTECODE, would do so at every start after an edit)."""
    import py_compile
    for name in ("qpy.py", "qpy_admin.py"):
        py_compile.compile(os.path.join(REPO, name), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)


def main():
    compile_qpy()
    rows = []
    first = b1()
    rows.append(first)
    for bench in (b2a, b3, b4, lambda: b5(first["qpy"]), b7, b8):
        result = bench()
        rows += result if isinstance(result, list) else [result]
    number = lambda v: "-" if v is None else ("%.3g" % v)
    print("%-42s %9s %9s %-7s %7s  %-10s %s" % ("figure", "qpy", "baseline", "unit", "ratio",
                                                 "target", "met"))
    for r in rows:
        print("%-42s %9s %9s %-7s %7s  %-10s %s" % (
            r["figure"], number(r["qpy"]), number(r["baseline"]), r["unit"], number(r["ratio"]),
            r["target"], {True: "yes", False: "NO", None: "-"}[r["met"]]))
    results = os.path.join(REPO, "bench", "results")
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, time.strftime("%Y%m%d-%H%M%S.json"))
    with open(path, "w") as f:
        json.dump({"machine": os.uname().nodename, "cpus": os.cpu_count(),
                   "python": sys.version.split()[0], "rows": rows}, f, indent=1)
    print("written to", os.path.relpath(path, REPO))


if __name__ == "__main__":
    main()
