"""make bench: qpy's performance figures, each beside a baseline measured in the same run on the
same machine, printed as a table and written to bench/results/<time>.json. Benchmarks print;
they assert nothing.

Figures (issue 10): B1 `qpy sub true` latency against `python3 -c 'import sqlite3'`; B2a
dispatch of 1,000 queued `true` against task-spooler; B2b 1,000 separate submissions to the last
done against 1,000 x B1; B3 overhead per short job; B4 `qpy check` of 10,000 finished jobs; B5
`check running` and an idle tick with a long history; B6 60 jobs on the emulated ssh cluster
(as root); B7 10,000 jobs in one submission; B8 peak memory of `qpy sub` and of a runner.
B9 (issue 16) the latency bounds on the emulated cluster with real users, each beside its bound:
a job for an idle node starts within 1 s of `qpy sub` (alone, beside another user's tick stuck
on ssh, with a node unreachable); a freed core goes to a queued job of the same or another user
within 1 s; a crashed node's job is reported within node_timeout + ssh_timeout + one tick period; a healed
node takes a job within probe_interval + one tick period.
Issue 21 (the lab's scale): B9b the CPU that 16 commands waiting for qpy.lock use together,
per second of waiting; B10b a scheduling pass with the cluster full at the lab point (30 nodes
x 32 cores, 20 users, 100k queued; built by lab_box) against 100 queued, and its growth;
B10a the rate of job ends on 2 local slots with that site full, against an empty site; B4b
`qpy check` of a user with 100k ended jobs and the longest either it or `qpy history` holds the
lock; B11 16 concurrent submitters against the best of 1 to 8; B3b 16 local slots against 2;
B13 `qpy sub --file` of 10,000 lines beside a shell loop of 1,000 `qpy sub`.
`bench.py b13 b4b` runs only the figures named (and B1).
Issue 20: B12 the status page with 100k jobs in the history, and its longest hold of the lock.
"""
import json
import os
import shlex
import shutil
import signal
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


def median_seconds(command, runs, env=None, cwd=None, exit_statuses=(0,)):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        status = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=None if 0 in exit_statuses else subprocess.DEVNULL
                                ).returncode
        times.append(time.perf_counter() - start)
        assert status in exit_statuses, (command, status)
    return statistics.median(times)


def b1():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        qpy_sub = median_seconds(QPY + ["sub", "true"], 40, box.env, box.root)
        python = median_seconds([PYTHON, "-c", "import sqlite3"], 40)
        return row("B1 qpy sub true, median", qpy_sub * 1000, python * 1000, "ms",
                   "python -c 'import sqlite3'", 2.0)
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
               "task-spooler end to end", 0.7, higher_is_better=True)


def b2b(b1_ms, jobs=1000):
    """1,000 separate `qpy sub true` calls, to the last one done: dispatch should hide behind
    submission (target: at most 1.2 x 1,000 x B1)."""
    box = Sandbox()
    try:
        box.run("restart")
        start = time.perf_counter()
        for _ in range(jobs):
            subprocess.run(QPY + ["sub", "true"], cwd=box.root, env=box.env,
                           stdout=subprocess.DEVNULL, check=True)
        box.wait_idle()
        wall = time.perf_counter() - start
    finally:
        box.close()
    return row("B2b 1,000 qpy sub true, to the last done", wall, jobs * b1_ms / 1000, "s",
               "1,000 x B1", 1.2)


def b6():
    """60 one-core jobs on the emulated 3-node cluster (tests/cluster.py: network namespaces,
    an sshd per node, real users): from `qpy sub` to all 60 running, and the cost per launch
    against one multiplexed ssh round trip. Needs root; skipped elsewhere."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import cluster
    why = cluster.why_unavailable()
    if why:
        print("B6 skipped: the cluster %s" % why)
        return [row("B6 60 jobs on 3 ssh nodes, sub to running", None, None, "s", "-", None,
                    absolute=3)]
    cluster.up()
    try:
        python = os.path.join(cluster.DIR, "venv", "bin", "python")
        tool = os.path.join(cluster.DIR, "qpy", "qpy_admin.py")
        state = os.path.join(cluster.DIR, "sites", "bench")
        env = {"PATH": "/usr/bin:/bin", "QPY_STATE": state}
        admin = lambda *a: subprocess.run([python, tool] + list(a), env=env, check=True,
                                          stdout=subprocess.DEVNULL)
        os.makedirs(os.path.dirname(state), exist_ok=True)
        admin("create", state, "--group", cluster.GROUP)
        nodes = os.path.join(cluster.DIR, "sites", "bench.nodes")
        with open(nodes, "w") as f:
            f.write("".join("%s cores=20 memory=64\n" % name for name in cluster.NODES))
        admin("nodes", nodes)
        alice = cluster.real("alice")  # (the run's alice: tests/cluster.py names its users)
        home = os.path.join(cluster.DIR, "home", alice)
        as_alice = ["runuser", "-u", alice, "--", "env", "-i", "HOME=" + home, "USER=" + alice,
                    "PATH=/usr/bin:/bin", "QPY_STATE=" + state]
        # the baseline: one ssh round trip through a master connection, as qpy makes them
        sys.path.insert(0, REPO)
        import qpy
        import pwd
        ssh, sockets = qpy.ssh_command("node1", ["true"], 10, pwd.getpwnam(alice).pw_uid)
        subprocess.run(as_alice + ["sh", "-c", "mkdir -p -m 700 %s" % sockets], check=True)
        round_trip = median_seconds(as_alice + ssh, 10, cwd=home)
        start = time.perf_counter()
        subprocess.run(as_alice + [python, os.path.join(cluster.DIR, "qpy", "qpy.py"), "sub",
                                   "-m", "0.1", "--array", "1-60", "sleep 60"], cwd=home,
                       check=True, stdout=subprocess.DEVNULL)
        db = sqlite3.connect(os.path.join(state, "qpy.db"), timeout=60)
        deadline = time.time() + 120
        while time.time() < deadline and db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0] < 60:
            time.sleep(0.02)
        wall = time.perf_counter() - start
        db.close()
        subprocess.run(as_alice + [python, os.path.join(cluster.DIR, "qpy", "qpy.py"), "kill",
                                   "all"], cwd=home, stdout=subprocess.DEVNULL)
        return [row("B6 60 jobs on 3 ssh nodes, sub to running", wall, None, "s", "-", None,
                    absolute=3),
                row("B6 cost per launch", wall / 60 * 1000, round_trip * 1000, "ms",
                    "multiplexed ssh round trip", 3)]
    finally:
        cluster.down()


def b3():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        # the command as words, run without a shell: as `tsp sleep 0.05` runs it
        box.run("sub", "--array", "1-200", "sleep", "0.05")
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


def longest_hold(box, script):
    """The longest transaction of qpy code `script` (run in one process in the sandbox, with
    qpy and qpy_admin imported): what a `qpy sub` may have to wait for the lock meanwhile."""
    return float(subprocess.run([PYTHON, "-c", (
        "import sys, time; sys.path.insert(0, %r); import qpy, qpy_admin\n"
        "longest, atomically = [0.0], qpy.atomically\n"
        "def timed(*args, **kw):\n"
        "    start = time.perf_counter(); result = atomically(*args, **kw)\n"
        "    longest[0] = max(longest[0], time.perf_counter() - start); return result\n"
        "qpy.atomically = timed\n"
        "import io, contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    %s\n"
        "print(longest[0])") % (REPO, script)], env=box.env, cwd=box.root, capture_output=True,
        text=True, check=True).stdout)


def b4b(jobs=100000):
    """Issue 21: readers and a long history. `qpy check` of a user with 100k ended jobs, and
    the longest it holds the lock (read in pages: what any other command may wait for),
    against `qpy history` of the same (100k rows in the history table), and its hold."""
    box = Sandbox()
    try:
        box.run("restart")
        fill_history(box, jobs, 0)
        db = box.db()
        with db:
            db.execute("INSERT INTO history (id, user, status, command, cwd, node, n_cores, "
                       "mem, gpus, attributes, requeue, attempt, queued_at, started_at, "
                       "ended_at, exit_code) SELECT id, user, status, command, cwd, node, "
                       "n_cores, mem, 0, '', 0, 1, queued_at, started_at, ended_at + id, 0 "
                       "FROM jobs")
        db.close()
        check = median_seconds(QPY + ["check"], 3, box.env, box.root)
        check_hold = longest_hold(box, "qpy.main(['check'])")
        history_hold = longest_hold(box, "qpy.main(['history'])")
        return [row("B4b qpy check, a user's 100k ended jobs", check, None, "s", "-", None,
                    absolute=1),
                row("B4b ... its longest hold of the lock", check_hold * 1000, None, "ms", "-",
                    None, absolute=50),
                row("B4b qpy history, 100k: longest hold", history_hold * 1000, None, "ms",
                    "-", None, absolute=50)]
    finally:
        box.close()


def b5(b1_ms):
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        fill_history(box, 100000, 10000)
        check = median_seconds(QPY + ["check", "running"], 5, box.env, box.root,
                               exit_statuses=(1,))  # (none running: nothing matches)
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


def b13(lines=10000, loop=1000):
    """Many commands at once: `qpy sub --file` of 10,000 lines (one transaction), beside a
    shell loop of 1,000 `qpy sub`, the queue paused for both (the submission alone)."""
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        path = os.path.join(box.root, "cmds.txt")
        with open(path, "w") as f:
            f.writelines("echo line %d\n" % number for number in range(lines))
        start = time.perf_counter()
        box.run("sub", "--file", path)
        at_once = time.perf_counter() - start
        script = "for i in $(seq %d); do %s sub echo line $i >/dev/null || exit 1; done" % (
            loop, shlex.join(QPY))
        start = time.perf_counter()
        subprocess.run(["sh", "-c", script], cwd=box.root, env=box.env, check=True)
        one_by_one = time.perf_counter() - start
        return row("B13 qpy sub --file, 10,000 lines", at_once, one_by_one * lines / loop, "s",
                   "a loop's 1,000 qpy sub, x10", None, absolute=2)
    finally:
        box.close()


def b8():
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        # measured by a small parent: a child's peak counts what it held when forked, and
        # this process has grown by now
        measure = ("import os, sys; pid = os.fork()\n"
                   "if pid == 0: os.execv(sys.argv[1], sys.argv[1:])\n"
                   "print(os.wait4(pid, 0)[2].ru_maxrss)")
        out = subprocess.run([PYTHON, "-c", measure] + QPY + ["sub", "true"], cwd=box.root,
                             env=box.env, capture_output=True, text=True, check=True).stdout
        sub_mb = int(out.split()[-1]) / 1024
        box.run("ctrlQueue", "continue")
        box.run("sub", "sleep 3")
        runner_mb = None
        deadline = time.time() + 30
        while runner_mb is None and time.time() < deadline:
            db = box.db()
            runner = db.execute("SELECT runner_pid FROM jobs WHERE status = 'running' "
                                "AND command = 'sleep 3'").fetchone()
            db.close()
            try:
                with open("/proc/%d/status" % runner[0]) as f:
                    runner_mb = int([line for line in f if line.startswith("VmRSS:")][0]
                                    .split()[1]) / 1024
            except (TypeError, OSError, IndexError):
                time.sleep(0.05)
        box.wait_idle()
        return [row("B8 peak memory of qpy sub", sub_mb, None, "MB", "-", None, absolute=30),
                row("B8 memory of one runner (RSS)", runner_mb, None, "MB", "-", None,
                    absolute=15)]
    finally:
        box.close()


class LabSite:
    """A site on the emulated cluster for B9, used as the tests' Lab is: created by root,
    jobs submitted by real users (tests/cluster.py must be up)."""

    def __init__(self, cluster, name, nodes_file, settings):
        self.cluster = cluster
        self.python = os.path.join(cluster.DIR, "venv", "bin", "python")
        self.qpy = os.path.join(cluster.DIR, "qpy", "qpy.py")
        self.tool = os.path.join(cluster.DIR, "qpy", "qpy_admin.py")
        self.state = os.path.join(cluster.DIR, "sites", name)
        shutil.rmtree(self.state, ignore_errors=True)
        os.makedirs(os.path.dirname(self.state), exist_ok=True)
        self.admin("create", self.state, "--group", cluster.GROUP)
        nodes = self.state + ".nodes"
        with open(nodes, "w") as f:
            f.write(nodes_file)
        self.admin("nodes", nodes)
        for key, value in settings.items():
            self.admin("set", key, str(value))

    def admin(self, *args):
        subprocess.run([self.python, self.tool] + list(args), check=True,
                       env={"PATH": "/usr/bin:/bin", "QPY_STATE": self.state},
                       stdout=subprocess.DEVNULL)

    def timer(self, period):
        """Root's timer tick, as the units run it: every `period` s, lingering till the next."""
        return subprocess.Popen(["sh", "-c", "while :; do %s %s tick --linger=%g; sleep 1; done"
                                 % (self.python, self.tool, period - 1)],
                                env={"PATH": "/usr/bin:/bin", "QPY_STATE": self.state},
                                stdout=subprocess.DEVNULL, start_new_session=True)

    def user(self, user, *args):
        user = self.cluster.real(user)  # (the run's alice or bob: tests/cluster.py names them)
        home = os.path.join(self.cluster.DIR, "home", user)
        return subprocess.run(["runuser", "-u", user, "--", "env", "-i", "HOME=" + home,
                               "USER=" + user, "PATH=/usr/bin:/bin", "QPY_STATE=" + self.state,
                               self.python, self.qpy] + list(args), cwd=home, check=True,
                              capture_output=True, text=True).stdout

    def submit(self, user, *args):
        return int(self.user(user, "sub", *args).split()[1])

    def job(self, job_id):
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.state, "qpy.db"), uri=True,
                             timeout=60)
        db.row_factory = sqlite3.Row
        try:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return dict(row) if row else {}
        finally:
            db.close()

    def node(self, name):
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.state, "qpy.db"), uri=True,
                             timeout=60)
        try:
            row = db.execute("SELECT state FROM node_health WHERE name = ?", (name,)).fetchone()
            return row[0] if row else "up"
        finally:
            db.close()

    def until(self, condition, timeout=120, what="a condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return time.time()
            time.sleep(0.01)
        raise RuntimeError("B9: timed out waiting for %s" % what)

    def start_latency(self, user, *args):
        """Seconds from calling `qpy sub` to the job's runner having confirmed it."""
        start = time.time()
        job_id = self.submit(user, *args)
        return self.until(lambda: self.job(job_id).get("status") in ("running", "done")) - start


def b9(trials=7):
    """The latency bounds of the site-faults issue, on the emulated 3-node cluster with real
    users (as root; skipped elsewhere): each a median of `trials`, beside its bound."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import cluster
    names = ["B9 sub to start, idle node", "B9 ... beside a tick stuck on ssh",
             "B9 ... with a node unreachable", "B9 freed core to same user's job",
             "B9 freed core to another user's job", "B9 crashed node's job reported",
             "B9 healed node takes a job"]
    why = cluster.why_unavailable()
    if why:
        print("B9 skipped: the cluster %s" % why)
        return [row(name, None, None, "s", "-", None) for name in names]
    cluster.up()
    period, node_timeout, probe_interval = 5, 4, 2
    settings = {"heartbeat": 1, "node_timeout": node_timeout, "probe_interval": probe_interval,
                "ssh_timeout": 10, "launch_timeout": 120, "kill_grace": 2}
    nodes = "".join("%s cores=4 memory=16\n" % name for name in cluster.NODES)
    rows = []
    try:
        site = LabSite(cluster, "bench-b9", nodes, settings)
        site.user("alice", "check")
        idle = [site.start_latency("alice", "-a", "node1", "sleep 60") for _ in range(trials)]
        site.user("alice", "kill", "all")
        stuck = []
        cluster.partition("node2")
        try:
            for _ in range(trials):
                site.admin("resume", "node2")
                waiting = site.submit("bob", "-a", "node2", "true")
                site.until(lambda: site.job(waiting)["status"] == "starting",
                           what="job %d to be starting: %s" % (waiting, site.job(waiting)))
                stuck.append(site.start_latency("alice", "-a", "node1", "sleep 60"))
                site.user("alice", "kill", "all")
                site.user("bob", "kill", "all")  # (its claim held one of node2's cores)
            site.until(lambda: site.node("node2") == "down", 60)
            site.admin("drain", "node3")
            unreachable = [site.start_latency("alice", "-a", "node1", "sleep 60")
                           for _ in range(trials)]
            site.user("alice", "kill", "all")
        finally:
            cluster.heal("node2")
        rows += [row(names[0], statistics.median(idle), 1.0, "s", "bound", 1),
                 row(names[1], statistics.median(stuck), 1.0, "s", "bound", 1),
                 row(names[2], statistics.median(unreachable), 1.0, "s", "bound", 1)]

        one_core = LabSite(cluster, "bench-b9-reuse", "node1 cores=1 memory=16\n", settings)
        timer = one_core.timer(period)
        try:
            same, other = [], []
            for owners, gaps in ((("alice", "alice"), same), (("alice", "bob"), other)):
                for _ in range(trials):
                    first = one_core.submit(owners[0], "sleep 1")
                    second = one_core.submit(owners[1], "true")
                    one_core.until(lambda: one_core.job(second)["status"] == "done", 60)
                    gaps.append(one_core.job(second)["started_at"]
                                - one_core.job(first)["ended_at"])
        finally:
            os.killpg(timer.pid, signal.SIGTERM)
            timer.wait()
        rows += [row(names[3], statistics.median(same), 1.0, "s", "bound", 1),
                 row(names[4], statistics.median(other), 1.0, "s", "bound", 1)]

        timer = site.timer(period)
        try:
            site.admin("resume", "node3")
            job_id = site.submit("alice", "-a", "node3", "sleep 300")
            site.until(lambda: site.job(job_id)["status"] == "running")
            crashed = time.time()
            cluster.crash("node3")
            try:
                reported = site.until(lambda: site.job(job_id)["status"] == "failed") - crashed
                site.until(lambda: site.node("node3") == "down")
            finally:
                cluster.boot("node3")
            booted = time.time()
            job_id = site.submit("alice", "-a", "node3", "true")
            back = site.until(lambda: site.job(job_id)["status"] in ("running", "done")) - booted
        finally:
            os.killpg(timer.pid, signal.SIGTERM)
            timer.wait()
        rows += [row(names[5], reported, node_timeout + settings["ssh_timeout"] + period, "s",
                     "node_timeout + ssh_timeout + period", 1),
                 row(names[6], back, probe_interval + period, "s",
                     "probe_interval + tick period", 1)]
    finally:
        cluster.down()
    return rows


def lab_box(nodes, cores, users, queued, local_slots=0):
    """A personal qpy shaped like a lab's site (issue 21): `nodes` nodes of `cores` cores,
    every core busy with a running job of one of `users` users, `queued` jobs queued among
    them. Nodes are loaded by qpy_admin.py; jobs and users are inserted straight into the DB
    (the setup, not what is measured). The nodes' addresses are never contacted: only the
    scheduling pass is measured, in-process, nothing is launched. local_slots: this machine
    is a node too, with that many cores, for real jobs; the others' jobs ask for the
    attribute 'lab' that it lacks."""
    box = Sandbox()
    box.run("restart")
    path = os.path.join(box.root, "nodes")
    with open(path, "w") as f:
        if local_slots:
            f.write("localhost cores=%d memory=16\n" % local_slots)
        f.writelines("node%d address=10.255.%d.%d cores=%d memory=256 attributes=lab\n"
                     % (n, n // 250, n % 250 + 1, cores) for n in range(1, nodes + 1))
    box.run("nodes", path, admin=True)
    names = ["user%02d" % u for u in range(users)]
    now = time.time()
    db = box.db()
    with db:
        db.executemany("INSERT OR IGNORE INTO users (name) VALUES (?)", [(u,) for u in names])
        db.executemany(
            "INSERT INTO jobs (user, status, command, cwd, spec, n_cores, mem, position, "
            "queued_at, claimed_at, started_at, node, attempt) VALUES (?, 'running', 'true', "
            "'/tmp', 'x', 1, 1, 0, ?, ?, ?, ?, 1)",
            [(names[k % users], now, now, now, "node%d" % (k // cores + 1))
             for k in range(nodes * cores)])
        db.executemany("INSERT INTO jobs (user, command, cwd, spec, n_cores, mem, position, "
                       "queued_at, attributes) VALUES (?, 'true', '/tmp', 'x', 1, 1, 0, ?, 'lab')",
                       [(names[k % users], now) for k in range(queued)])
        db.execute("UPDATE jobs SET position = id")
    db.close()
    return box


PASS_TIMER = """
import os, statistics, sys, time
sys.path.insert(0, %r)
import qpy
qpy.connect()
times = []
for _ in range(%d):
    start = time.perf_counter()
    qpy.atomically(qpy.plan, write=False)  # (the lock is held for the whole transaction)
    times.append(time.perf_counter() - start)
print(statistics.median(times) * 1000)
"""


def pass_ms(box, runs=9):
    """The median time a scheduling pass holds the lock (plan in its transaction)."""
    out = subprocess.run([PYTHON, "-c", PASS_TIMER % (REPO, runs)], env=box.env, cwd=box.root,
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def b10a(jobs=300):
    """A job's end at the lab's scale: 2 slots of this machine run `true` jobs while the
    lab-shaped site (29 nodes x 32 cores busy, 20 users, 10,000 queued) is full, against the
    same on a site of this machine alone: each end stores the job and starts the next in one
    transaction (the runner's quick pass, for its node alone)."""
    rates = []
    for box in (lab_box(29, 32, 20, 10000, local_slots=2), lab_box(0, 0, 1, 0, local_slots=2)):
        try:
            box.run("ctrlQueue", "pause")
            box.run("sub", "--array", "1-%d" % jobs, "-m", "0.1", "true")
            start = time.perf_counter()
            box.run("ctrlQueue", "continue")
            deadline = time.time() + 600
            db = box.db()
            while time.time() < deadline and db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'done' AND node = 'localhost'"
            ).fetchone()[0] < jobs:
                time.sleep(0.05)
            db.close()
            rates.append(jobs / (time.perf_counter() - start))
        finally:
            box.close()
    return row("B10a job ends/s, 2 slots, lab-shaped site", rates[0], rates[1], "jobs/s",
               "same, empty site", 0.8, higher_is_better=True)


def b10b():
    """The scheduling pass with the cluster full: at the lab point (30 nodes x 32 cores, 20
    users, 100k queued) against the same pass with 100 queued; and its growth in nodes and
    users (at 10k queued), printed."""
    figures = {}
    for shape in ((30, 32, 20, 100), (30, 32, 20, 100000), (1, 32, 20, 10000),
                  (30, 32, 20, 10000), (30, 32, 1, 10000)):
        box = lab_box(*shape)
        try:
            figures[shape] = pass_ms(box)
        finally:
            box.close()
    for shape, ms in figures.items():
        print("  B10b pass, %d nodes x %d cores, %d users, %d queued: %.1f ms" % (shape + (ms,)))
    return row("B10b full pass, lab point, 100k queued", figures[(30, 32, 20, 100000)],
               figures[(30, 32, 20, 100)], "ms", "same, 100 queued", None, absolute=10)


def cpu_seconds(processes):
    """The CPU time (user + system) these live processes have used so far."""
    total = 0
    for p in processes:
        try:
            with open("/proc/%d/stat" % p.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def waiting_for(processes, lock, opens_it, timeout=60):
    """Until each process is past its start and waits: has the lock file open (a sleeper:
    one second)."""
    if not opens_it:
        time.sleep(1.0)
        return
    deadline = time.time() + timeout
    lock = os.path.realpath(lock)

    def has_open(pid):
        try:
            return any(os.readlink("/proc/%d/fd/%s" % (pid, fd)) == lock
                       for fd in os.listdir("/proc/%d/fd" % pid))
        except OSError:
            return False
    while time.time() < deadline and not all(has_open(p.pid) for p in processes):
        time.sleep(0.05)
    time.sleep(0.2)  # (in its pauses by now, not its first quick tries)


def b9b(waiters=16, held=2.0):
    """Waiting costs nothing (issue 21): the CPU that 16 `qpy check` use together per second
    while qpy.lock is held by another process, counted from /proc over the hold only (their
    start is not waiting), against 16 processes that only sleep."""
    import fcntl
    box = Sandbox()
    try:
        box.run("restart")
        fd = os.open(os.path.join(box.state, "qpy.lock"), os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        figures = []
        for command in (QPY + ["check"], [PYTHON, "-c", "import time; time.sleep(%g)"
                                          % (held + 3)]):
            processes = [subprocess.Popen(command, cwd=box.root, env=box.env,
                                          stdout=subprocess.DEVNULL) for _ in range(waiters)]
            waiting_for(processes, os.path.join(box.state, "qpy.lock"), command[:len(QPY)] == QPY)
            before = cpu_seconds(processes)
            time.sleep(held)
            figures.append((cpu_seconds(processes) - before) / held * 1000)
            if command[:len(QPY)] == QPY:
                os.close(fd)  # (the checks go on and end)
            for p in processes:
                p.wait()
        return row("B9b CPU of 16 commands waiting for the lock", figures[0], figures[1],
                   "ms/s", "16 sleeping processes", None, absolute=50)
    finally:
        box.close()


SUBMITTER = """
import subprocess, sys, time
times = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, check=True)
    times.append(time.perf_counter() - start)
print(" ".join(map(str, times)))
"""


def b11(total=192):
    """Many submitters at once (issue 21): `total` `qpy sub true` split among 1, 2, 4, 8 and
    16 concurrent submitters (the queue paused: submission alone); the aggregate rate of 16
    against the best of the others, and each one's 99th percentile of latency, printed."""
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        rates = {}
        for submitters in (1, 2, 4, 8, 16):
            start = time.perf_counter()
            loops = [subprocess.Popen([PYTHON, "-c", SUBMITTER, str(total // submitters)] + QPY +
                                      ["sub", "true"], cwd=box.root, env=box.env,
                                      stdout=subprocess.PIPE, text=True)
                     for _ in range(submitters)]
            latencies = sorted(float(t) for p in loops for t in p.communicate()[0].split())
            rates[submitters] = total / (time.perf_counter() - start)
            print("  B11 %2d submitters: %.1f subs/s, p99 %.0f ms" % (
                submitters, rates[submitters], latencies[int(0.99 * (len(latencies) - 1))] * 1000))
        best = max(rates[n] for n in (1, 2, 4, 8))
        return row("B11 16 concurrent submitters", rates[16], best, "subs/s",
                   "best of 1, 2, 4, 8", 0.8, higher_is_better=True)
    finally:
        box.close()


def slots_rate(slots, jobs):
    """Job ends per second of `jobs` `true` jobs on this machine as a node of `slots` cores."""
    box = Sandbox()
    try:
        box.run("restart")
        path = os.path.join(box.root, "nodes")
        with open(path, "w") as f:
            f.write("localhost cores=%d memory=16\n" % slots)
        box.run("nodes", path, admin=True)
        box.run("ctrlQueue", "pause")
        box.run("sub", "--array", "1-%d" % jobs, "-m", "0.1", "true")
        start = time.perf_counter()
        box.run("ctrlQueue", "continue")
        box.wait_idle()
        return jobs / (time.perf_counter() - start)
    finally:
        box.close()


def b3b(jobs=400):
    """16 slots on this machine (issue 21): the rate at which they end `true` jobs against 2
    slots (each end stores the job and starts the next in one transaction)."""
    return row("B3b job ends/s, 16 slots", slots_rate(16, jobs), slots_rate(2, jobs), "jobs/s",
               "2 slots", 0.8, higher_is_better=True)


def b12_status_page(jobs=100000):
    """Issue 20: `qpy_admin.py report --html` with 100k jobs in the history, against one
    GROUP BY of that history by a bare Python with the same interpreter (so: how many passes
    over it the page costs); and the longest the page holds the lock (what a `qpy sub` may
    wait for it), against the transaction of `qpy status`. The history is inserted straight
    into the sandbox's qpy.db, as qpy.move writes it (in the order jobs end): 20 users, 1 to
    16 cores, waits and runs of minutes to hours, all ended in the last 30 days, so that every
    row is in the charts' windows; 10 jobs run and 100 wait (rows too: no tick runs)."""
    import random
    box = Sandbox()
    try:
        box.run("restart")
        box.run("ctrlQueue", "pause")
        random.seed(20)
        now = time.time()
        ends = sorted(now - random.random() * 30 * 86400 for _ in range(jobs))
        rows = []
        for number, end in enumerate(ends, 1):
            run, wait = random.expovariate(1 / 1800), random.expovariate(1 / 600)
            rows.append((number, "user%d" % random.randrange(20), random.choice((1, 2, 4, 16)),
                         end - run - wait, end - run, end))
        db = box.db()
        with db:
            db.executemany(
                "INSERT INTO history (id, user, status, command, cwd, node, n_cores, mem, gpus, "
                "attributes, requeue, attempt, queued_at, started_at, ended_at, exit_code) "
                "VALUES (?, ?, 'done', 'true', '/', 'localhost', ?, 1, 0, '', 0, 1, ?, ?, ?, 0)",
                rows)
            db.executemany(
                "INSERT INTO jobs (id, user, status, command, cwd, spec, n_cores, mem, position, "
                "node, queued_at, started_at, reason) VALUES (?, ?, ?, 'sleep 600', '/', 'x', 1, "
                "1, ?, ?, ?, ?, ?)",
                [(jobs + n, "user%d" % (n % 20), "running" if n < 10 else "queue", n,
                  "localhost" if n < 10 else None, now - 900, now - 600 if n < 10 else None,
                  None if n < 10 else "queue paused") for n in range(110)])
        db.close()
        page = os.path.join(box.root, "status.html")
        report = median_seconds(ADMIN + ["report", "--html=" + page], 5, box.env, box.root)
        one_pass = median_seconds([PYTHON, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]"
                                   ").execute('SELECT user, SUM(n_cores * (ended_at - started_at)"
                                   ") FROM history GROUP BY user').fetchall()",
                                   os.path.join(box.state, "qpy.db")], 5)
        # the longest transaction of the page, and that of `qpy status`, in one process
        holds = subprocess.run([PYTHON, "-c", (
            "import sys, time; sys.path.insert(0, %r); import qpy, qpy_admin\n"
            "longest, atomically = [0.0], qpy.atomically\n"
            "def timed(*args, **kw):\n"
            "    start = time.perf_counter(); result = atomically(*args, **kw)\n"
            "    longest[0] = max(longest[0], time.perf_counter() - start); return result\n"
            "qpy.atomically = timed; qpy_admin.write_status_page(sys.argv[1], 0)\n"
            "page, longest[0] = longest[0], 0.0\n"
            "qpy.atomically(qpy.site_report, write=False); print(page, longest[0])"
            ) % REPO, page], env=box.env, cwd=box.root, capture_output=True, text=True,
            check=True).stdout.split()
        return [row("B12 status page, 100k jobs in history", report * 1000, one_pass * 1000,
                    "ms", "one GROUP BY of the history", 5),
                row("B12 ... its longest hold of the lock", float(holds[0]) * 1000,
                    float(holds[1]) * 1000, "ms", "qpy status's transaction", None,
                    absolute=50)]
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


def main(names=()):
    """All figures, or those named (bench.py b13 b10a: b2b and b5 need b1, which runs)."""
    compile_qpy()
    rows = []
    first = b1()
    rows.append(first)
    benches = {"b2a": b2a, "b2b": lambda: b2b(first["qpy"]), "b3": b3, "b3b": b3b, "b4": b4, "b4b": b4b,
               "b5": lambda: b5(first["qpy"]), "b6": b6, "b7": b7, "b13": b13, "b8": b8,
               "b9": b9, "b9b": b9b, "b11": b11, "b10a": b10a, "b10b": b10b, "b12": b12_status_page}
    for name in names:
        if name not in benches and name != "b1":
            sys.exit("bench.py: no figure %s (figures: b1 %s)" % (name, " ".join(benches)))
    for name, bench in benches.items():
        if not names or name in names:
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
    main(sys.argv[1:])
