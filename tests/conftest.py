"""Shared helpers: every test gets its own HOME (so its own ~/.qpy) and drives the real CLI."""
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The `qpy` command as the Makefile installs it: import the module, run main.
QPY = [sys.executable, "-c", "import sys; sys.path.insert(0, %r); import qpy; sys.exit(qpy.main())"
       % REPO]
QPY_ADMIN = [sys.executable, "-c", "import sys; sys.path.insert(0, %r); import qpy_admin; "
             "sys.exit(qpy_admin.main())" % REPO]


def sched_node(name, cores, mem=100.0, attributes="", pref_multicore=False, state="up", gpus=0,
               kind="host", max_jobs=None):
    """A node row as the scheduler sees it."""
    return {"name": name, "cores": cores, "mem": mem, "attributes": attributes,
            "pref_multicore": pref_multicore, "state": state, "gpus": gpus, "kind": kind,
            "max_jobs": max_jobs, "state_reason": None}


def sched_job(job_id, cores=1, mem=1.0, attributes="", user="alice", status="queue", on=None,
              gpus=0, array_of=None, array_limit=None):
    """A job row as the scheduler sees it."""
    return {"id": job_id, "n_cores": cores, "mem": mem, "attributes": attributes, "user": user,
            "status": status, "node": on, "gpus": gpus, "array_of": array_of,
            "array_limit": array_limit}


def wait_for(condition, timeout=60, what="condition"):
    """Poll until condition() is true; tests never assert on wall-clock time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def remove_state(path):
    """rm -rf of a state directory whose runners still beat: one may write its heartbeat
    between rmtree's listing of a folder and its removal, so remove until it is gone."""
    import shutil
    wait_for(lambda: shutil.rmtree(path, ignore_errors=True) or not os.path.exists(path),
             what="%s to be removed" % path)


def read_db(state, query, params=()):
    """Rows of a query on a state directory's DB, opened read-only beside qpy's own use."""
    path = os.path.join(state, "qpy.db")
    if not os.path.exists(path):
        return []
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        site = os.path.join(state, "site", "site.db")
        if os.path.exists(site):  # (its nodes as qpy sees them: qpy.NODES_VIEW)
            import qpy
            db.execute("ATTACH DATABASE ? AS site", ("file:%s?mode=ro" % site,))
            db.execute(qpy.NODES_VIEW)
        return [dict(row) for row in db.execute(query, params)]
    except sqlite3.DatabaseError:  # a test that broke it on purpose
        return []
    finally:
        db.close()


def back_to_schema_9(state):
    """Take a state of schema 10 back to 9: no history, no waited or held flags."""
    db = sqlite3.connect(os.path.join(state, "qpy.db"))
    with db:
        db.execute("DROP TABLE history")
        db.execute("DROP INDEX jobs_held")
        # (SQLite 3.40's DROP COLUMN fails on this commented table, "incomplete input": the
        # comments go first, which changes nothing else)
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
        db.execute("PRAGMA writable_schema = ON")
        db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'jobs'",
                   (re.sub(r"--[^\n]*", "", sql),))
        db.execute("PRAGMA writable_schema = OFF")
    db.close()
    db = sqlite3.connect(os.path.join(state, "qpy.db"))
    with db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for column in ("waited", "held", "outputs"):
            if column in columns:  # (all of them since schema 10)
                db.execute("ALTER TABLE jobs DROP COLUMN %s" % column)
    db.execute("PRAGMA user_version = 9")
    db.close()


def back_to_schema_8(state):
    """Take a state of schema 10 back to schema 8, whose one file held the site too: its
    nodes (with what the ticks found of them) and allowed_users as tables, its settings in
    meta."""
    import qpy
    back_to_schema_9(state)
    nodes_8 = [statement for statement in qpy.MIGRATIONS[7] if "CREATE TABLE" in statement][0]
    db = sqlite3.connect(os.path.join(state, "qpy.db"))
    db.execute("ATTACH DATABASE ? AS site", (os.path.join(state, "site", "site.db"),))
    with db:
        db.execute(nodes_8.replace("nodes_7", "nodes"))
        db.execute("INSERT INTO nodes SELECT s.name, kind, address, cores, mem, gpus, attributes, "
                   "pref_multicore, CASE WHEN h.state = 'down' THEN 'down' WHEN drained IS NOT "
                   "NULL THEN 'drained' ELSE 'up' END, CASE WHEN h.state = 'down' THEN h.reason "
                   "ELSE drained END, probed_at, position, max_jobs, options, lost "
                   "FROM site.nodes s LEFT JOIN node_health h ON h.name = s.name")
        db.execute("CREATE TABLE allowed_users (name TEXT PRIMARY KEY)")
        db.execute("INSERT INTO allowed_users SELECT name FROM site.allowed_users")
        db.execute("INSERT INTO meta SELECT key, value FROM site.settings")
        db.execute("DROP TABLE node_health")
    db.execute("DETACH DATABASE site")
    db.execute("PRAGMA user_version = 8")
    db.close()
    os.unlink(os.path.join(state, "site", "site.db"))
    os.rmdir(os.path.join(state, "site"))


def read_jobs(state):
    """Every job row, straight from the database: {id: row}."""
    return {row["id"]: row for row in read_db(state, "SELECT * FROM jobs")}


def job_group(state, user, job_id):
    """The process group of a running job: the last word of its started marker, once the
    runner has noted it there ('<attempt>@<state> go <group>' in <id>.<attempt>.started; see
    qpy.start_command)."""
    def noted():
        import glob
        markers = glob.glob(os.path.join(state, "users", user, "run", "%d.*.started" % job_id))
        try:
            with open(max(markers, key=os.path.getmtime)) as f:
                words = f.read().split()
        except (OSError, ValueError):
            return None
        return int(words[2]) if len(words) == 3 else None
    return wait_for(noted, what="job %d's process group in its started marker" % job_id)


class Site:
    """One personal qpy: a HOME, a working directory, and ways to look inside."""

    def __init__(self, root):
        self.home = os.path.join(root, "home")
        self.work = os.path.join(root, "work")
        os.makedirs(self.home)
        os.makedirs(self.work)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QPY_")}
        self.env.update(HOME=self.home, PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("NO_COLOR", None)

    @property
    def state(self):
        return os.path.join(self.home, ".qpy")

    def group(self, job_id):
        """The process group of a running job of ours."""
        import pwd
        return job_group(self.state, pwd.getpwuid(os.getuid()).pw_name, job_id)

    def run(self, *args, cwd=None, env=None, admin=False, input=None):
        return subprocess.run((QPY_ADMIN if admin else QPY) + list(args), cwd=cwd or self.work,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              input=input, timeout=120)

    def ok(self, *args, **kw):
        result = self.run(*args, **kw)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert result.stderr == "", result.stderr
        return result.stdout

    def fails(self, *args, **kw):
        """A refused command: one line on stderr, non-zero exit, no traceback."""
        result = self.run(*args, **kw)
        assert result.returncode != 0, (args, result.stdout)
        assert result.stderr.startswith("qpy"), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr

    def submit(self, *args, **kw):
        out = self.ok("sub", *args, **kw)
        assert out.startswith("Job ") and out.endswith(" received.\n"), out
        return int(out.split()[1])

    def jobs(self):
        return read_jobs(self.state)

    def status(self, job_id):
        return self.jobs()[job_id]["status"]

    def wait_status(self, job_id, *statuses, timeout=60):
        wait_for(lambda: self.jobs().get(job_id, {}).get("status") in statuses, timeout,
                 "job %d to be %s" % (job_id, "/".join(statuses)))
        return self.jobs()[job_id]

    def wait_idle(self, timeout=90):
        """Until no job is queued, starting or running."""
        wait_for(lambda: not any(job["status"] in ("queue", "starting", "running")
                                 for job in self.jobs().values()), timeout, "an empty queue")

    def read(self, name):
        """A file of the working directory ('' until it exists: jobs write as they run)."""
        path = os.path.join(self.work, name)
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            return f.read()

    def dump(self):
        """Everything stored but the tick counter (ticks come and go), to prove that a refused
        command changed nothing."""
        path = os.path.join(self.state, "qpy.db")
        if not os.path.exists(path):
            return None
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
        try:
            return [line for line in db.iterdump() if not line.startswith('INSERT INTO "meta"')]
        finally:
            db.close()


@pytest.fixture
def site(tmp_path):
    s = Site(str(tmp_path))
    yield s
    # leave no job of this test running
    for pid in job_processes(s.home):
        try:
            os.killpg(os.getpgid(pid), 9)
        except OSError:
            pass


def processes_of(home):
    """(pid, cmdline, environment) of the live processes started with this HOME."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read()
            with open("/proc/%s/environ" % entry, "rb") as f:
                environ = f.read().split(b"\0")
            with open("/proc/%s/stat" % entry) as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and ("HOME=%s" % home).encode() in environ:
            yield int(entry), cmdline, environ


def qpy_processes(home):
    """PIDs of live qpy processes (CLI, tick, runner) belonging to the test with this HOME."""
    return [pid for pid, cmdline, _ in processes_of(home)
            if b"import qpy" in cmdline or b"qpy.py" in cmdline]


def job_processes(home):
    """PIDs of live processes of jobs (they carry QPY_JOB_ID) of the test with this HOME."""
    return [pid for pid, _, environ in processes_of(home)
            if any(var.startswith(b"QPY_JOB_ID=") for var in environ)]


def group_members(pgid):
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


# ---- the emulated cluster (tests/cluster.py) ------------------------------------------------

@pytest.fixture(scope="session")
def cluster():
    import cluster as lab_cluster
    reason = lab_cluster.why_unavailable()
    if reason:
        pytest.skip("cluster tests " + reason)
    lab_cluster.up()
    yield lab_cluster
    lab_cluster.down()


class Lab:
    """A qpy site on the emulated cluster: created by root, used by real users over ssh.

    The tests name the users alice, bob and carol (and the group qpylab), the cluster's run
    names them alice_<run>...: the Lab takes a user in its logical name, runs as the real one,
    and gives back what it read (output, the jobs' user) in logical names again (cluster.real
    and cluster.logical, the one mapping). Paths are the real ones."""

    def __init__(self, cluster, name, nodes_file):
        self.cluster = cluster
        self.state = os.path.join(cluster.DIR, "sites", name)
        self.python = os.path.join(cluster.DIR, "venv", "bin", "python")
        self.qpy = os.path.join(cluster.DIR, "qpy", "qpy.py")
        self.admin_tool = os.path.join(cluster.DIR, "qpy", "qpy_admin.py")
        os.makedirs(os.path.dirname(self.state), exist_ok=True)
        self.admin("create", self.state, "--group", "qpylab")
        path = os.path.join(cluster.DIR, "sites", name + ".nodes")
        with open(path, "w") as f:
            f.write(nodes_file)
        self.admin("nodes", path)
        for key, value in (("heartbeat", "0.3"), ("node_timeout", "3"), ("probe_interval", "0.5"),
                           ("ssh_timeout", "2"), ("kill_grace", "2")):
            self.admin("set", key, value)

    def real(self, text):
        """A user's real name (or a text's: a script, a file of users or rules)."""
        return self.cluster.real(text)

    def logical(self, text):
        return self.cluster.logical(text)

    def words(self, args):
        """Arguments, those that are a logical name in the real name."""
        return [self.cluster.NAMES.get(arg, arg) for arg in args]

    def mapped(self, result):
        result.stdout, result.stderr = self.logical(result.stdout), self.logical(result.stderr)
        return result

    def write(self, name, text):
        """The file <state>.<name> beside the site (its users, its rules), in real names."""
        with open(self.state + "." + name, "w") as f:
            f.write(self.real(text))
        return self.state + "." + name

    def home(self, user):
        return os.path.join(self.cluster.DIR, "home", self.real(user))

    def workdir(self, user):
        path = os.path.join(self.home(user), os.path.basename(self.state))
        if not os.path.isdir(path):
            subprocess.run(["runuser", "-u", self.real(user), "--", "mkdir", "-p", path],
                           check=True)
        return path

    def env(self, user):
        return {"HOME": self.home(user), "USER": self.real(user), "LOGNAME": self.real(user),
                "PATH": "/usr/bin:/bin", "QPY_STATE": self.state, "LANG": "C.UTF-8"}

    def run(self, user, *args, tool=None, env=None):
        command = ["runuser", "-u", self.real(user), "--", "env", "-i"] + \
            ["%s=%s" % item for item in {**self.env(user), **(env or {})}.items()] + \
            [self.python, tool or self.qpy] + self.words(args)
        return self.mapped(subprocess.run(command, cwd=self.workdir(user), capture_output=True,
                                          text=True, timeout=120))

    def ok(self, user, *args, **kw):
        result = self.run(user, *args, **kw)
        assert result.returncode == 0 and result.stderr == "", (args, result.stdout, result.stderr)
        return result.stdout

    def submit(self, user, *args, **kw):
        out = self.ok(user, "sub", *args, **kw)
        return int(out.split()[1])

    def tick(self, user="alice"):
        self.ok(user, "tick", tool=self.admin_tool)

    def admin_run(self, *args, env=None):
        """qpy_admin.py as root, whatever its exit status."""
        return self.mapped(subprocess.run([self.python, self.admin_tool] + self.words(args),
                                          env={"PATH": "/usr/bin:/bin", "QPY_STATE": self.state,
                                               **(env or {})},
                                          capture_output=True, text=True, timeout=120))

    def admin(self, *args, env=None):
        result = self.admin_run(*args, env=env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def jobs(self):
        return {job_id: dict(job, user=self.logical(job["user"] or ""))
                for job_id, job in read_jobs(self.state).items()}

    def node_state(self, name):
        return read_db(self.state, "SELECT state FROM nodes WHERE name = ?", (name,))[0]["state"]

    def wait_status(self, job_id, *statuses, timeout=60, tick=False):
        def reached():
            if tick:
                self.tick()
            return self.jobs().get(job_id, {}).get("status") in statuses
        wait_for(reached, timeout, "job %d to be %s" % (job_id, "/".join(statuses)))
        return self.jobs()[job_id]

    def output(self, user, job_id, kind="out"):
        """A job's output file ('' until it exists), in logical names."""
        path = os.path.join(self.workdir(user), "job_%d.%s" % (job_id, kind))
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            return self.logical(f.read())

    def stop_all(self):
        for job in self.jobs().values():
            if job["status"] in ("queue", "starting", "running"):
                self.run(job["user"], "kill", str(job["id"]))


@pytest.fixture
def lab(cluster, request):
    """A fresh site on the cluster: 3 nodes of 2 cores, fast heartbeats for the tests."""
    created = []

    def make(nodes_file="node1 cores=2 memory=16\nnode2 cores=2 memory=16\nnode3 cores=2 memory=16\n"):
        name = re.sub(r"\W", "_", request.node.name)[:40]
        unique = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
        site = Lab(cluster, "%s-%s-%d" % (name, unique, len(created)), nodes_file)
        created.append(site)
        return site
    yield make
    for site in created:
        site.stop_all()


# ---- the institute (tests/institute.py) ----------------------------------------------------

@pytest.fixture
def institute(cluster):
    """The institute: a private Slurm cluster behind its own login node `hpc`, sharing no
    filesystem with the lab (tests/institute.py). Built on the session's cluster by the first
    test that asks and kept for the session (the cluster's down removes it); after each test,
    put back as the test may have left it (institute.reset: link up, homes not full, slurmctld
    running, no job running or waiting in Slurm). Files in its homes, and ended jobs in
    squeue, stay from test to test."""
    import institute as hpc
    reason = hpc.why_unavailable()
    if reason:
        pytest.skip("institute tests " + reason)
    hpc.up()
    yield hpc
    hpc.reset()
