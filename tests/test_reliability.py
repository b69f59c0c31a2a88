"""Faults and bad state: a corrupt or missing state, locks held by stopped or dead processes,
a full disk, Ctrl-C, backups. Each ends in one clear line and no damage."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import (QPY, back_to_schema_8, back_to_schema_9, group_members, job_group,
                      qpy_processes, remove_state, wait_for)


def test_a_corrupt_database_is_one_clear_line(site):
    os.makedirs(site.state)
    with open(os.path.join(site.state, "qpy.db"), "w") as f:
        f.write("this is not a database, but somebody's notes\n" * 100)
    err = site.fails("check")
    assert "file is not a database" in err and "qpy_admin.py restore" in err


def test_a_missing_state_directory_is_named(site):
    err = site.fails("check", env={"QPY_STATE": "/nonexistent/qpy"})
    assert err == "qpy: No directory /nonexistent for the qpy state /nonexistent/qpy: " \
                  "check QPY_STATE.\n"
    assert not os.path.exists("/nonexistent")


def test_a_state_that_is_a_file_is_named(site):
    path = os.path.join(site.home, "notes")
    with open(path, "w") as f:
        f.write("mine\n")
    err = site.fails("sub", "true", env={"QPY_STATE": path})
    assert err == "qpy: The qpy state %s is a file, not a directory: check QPY_STATE.\n" % path
    assert open(path).read() == "mine\n"


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_lock_timeout_is_named(site, value):
    site.ok("check")
    before = site.dump()
    err = site.fails("sub", "true", env={"QPY_LOCK_TIMEOUT": value})
    assert err == "qpy: QPY_LOCK_TIMEOUT must be a number of seconds, not '%s'.\n" % value
    assert site.dump() == before


def test_a_newer_database_is_refused(site):
    site.ok("restart")
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    db.execute("PRAGMA user_version = 99")
    db.close()
    assert "has schema 99; this qpy knows only 10: use a newer qpy." in site.fails("check")


def test_a_schema_7_pool_is_upgraded_to_its_options(site):
    """Schema 7 kept Slurm's settings in columns of their own and the job's Slurm ID in
    slurm_id; 8 keeps a pool's settings as its options and the ID as external_id."""
    site.ok("check")
    back_to_schema_8(site.state)
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:
        db.execute("ALTER TABLE jobs RENAME COLUMN external_id TO slurm_id")
        db.execute("ALTER TABLE nodes DROP COLUMN options")
        for column in ("partition", "account", "qos", "extra"):
            db.execute("ALTER TABLE nodes ADD COLUMN %s TEXT" % column)
        db.execute("INSERT INTO nodes (name, kind, address, cores, partition, account, max_jobs) "
                   "VALUES ('hpc', 'slurm', 'localhost', 8, 'compute', 'lab', 4)")
        db.execute("INSERT INTO jobs (user, command, cwd, spec, n_cores, mem, position, queued_at, "
                   "status, node, slurm_id) VALUES ('x', 'true', '/', '/none', 1, 0, 1, 0, 'done', "
                   "'hpc', '42')")
    db.execute("PRAGMA user_version = 7")
    db.close()
    assert "hpc" in site.ok("list", admin=True)
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 10
    db.execute("ATTACH DATABASE ? AS site", (os.path.join(site.state, "site", "site.db"),))
    kind, options, max_jobs = db.execute("SELECT kind, options, max_jobs FROM site.nodes "
                                         "WHERE name = 'hpc'").fetchone()
    assert (kind, max_jobs) == ("slurm", 4)
    assert {k: v for k, v in json.loads(options).items() if v} == {"partition": "compute",
                                                                  "account": "lab"}
    assert db.execute("SELECT external_id FROM jobs").fetchall() == [("42",)]
    db.close()
    assert "type=slurm partition=compute max_jobs=4 account=lab cores=8" in site.ok(
        "list", admin=True)


@pytest.mark.parametrize("start", range(1, 10))
def test_an_older_database_is_upgraded_in_place_keeping_every_job(site, start):
    """A DB of each earlier schema, with queued, running and ended jobs: made by taking this
    schema back to what schema 1 was, then bringing it up to `start` with qpy's own
    migrations; the first command upgrades it the rest of the way."""
    import qpy
    ended = site.submit("true")
    site.wait_status(ended, "done")
    site.ok("ctrlQueue", "pause")
    jobs = [site.submit("true") for _ in range(3)]
    running = site.submit("true")
    (back_to_schema_9 if start == 9 else back_to_schema_8)(site.state)
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:  # a job whose runner is gone (its machine rebooted during the upgrade, say)
        db.execute("UPDATE jobs SET status = 'running', node = 'localhost', attempt = 1, "
                   "started_at = 1, runner_pid = 1, runner_boot = 'x' WHERE id = ?", (running,))
    if start < 9:  # what schema 1 was: no index on job files, no Slurm pools
        with db:
            db.execute("DROP INDEX jobs_live_by_spec")
            db.execute("DROP INDEX jobs_queued")
            db.execute("DROP INDEX jobs_with_dependencies")
            for table, column in (("nodes", "kind"), ("nodes", "max_jobs"),
                                  ("nodes", "options"), ("jobs", "external_id"),
                                  ("jobs", "refusal"), ("users", "wanted")):
                db.execute("ALTER TABLE %s DROP COLUMN %s" % (table, column))
            db.execute("ALTER TABLE jobs ADD COLUMN pgid INTEGER")  # (in the marker since 4)
            if start < 6:  # (an identity since 6: migration 5 makes it)
                db.execute("DELETE FROM meta WHERE key = 'state_id'")
            for version in range(1, start):
                for statement in qpy.MIGRATIONS[version]:
                    db.execute(statement)
            if start == 3:  # one commit of schema 3 lacked it: every tick failed (no such index)
                db.execute("DROP INDEX jobs_queued")
    db.execute("PRAGMA user_version = %d" % start)
    db.close()
    if start < 6:
        os.unlink(os.path.join(site.state, "qpy.id"))
    assert sorted(site.jobs()) == [ended] + jobs + [running]
    site.ok("check")
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 10
    db.execute("ATTACH DATABASE ? AS site", (os.path.join(site.state, "site", "site.db"),))
    assert (ended, "done") in db.execute("SELECT id, status FROM history").fetchall()
    identity = db.execute("SELECT value FROM meta WHERE key = 'state_id'").fetchone()[0]
    assert re.fullmatch("[0-9a-f]{16}", identity)
    assert open(os.path.join(site.state, "qpy.id")).read() == identity + "\n"
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_live_by_spec", "jobs_queued", "jobs_with_dependencies"} <= indexes
    assert "jobs_by_spec" not in indexes
    assert db.execute("SELECT kind, max_jobs FROM site.nodes").fetchall() == [("host", None)]
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    assert "pgid" not in columns and {"refusal", "external_id"} <= columns
    assert "wanted" in {row[1] for row in db.execute("PRAGMA table_info(users)")}
    db.close()
    site.ok("ctrlQueue", "continue")
    site.wait_idle()
    assert [site.status(j) for j in jobs] == ["done"] * 3
    assert site.status(ended) == "done"
    assert site.jobs()[running]["status"] == "failed"  # (no exit record, its runner gone)


HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def holder(site):
    p = subprocess.Popen([QPY[0], "-c", HOLD_LOCK, os.path.join(site.state, "qpy.lock")],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_sixteen_waiters_for_a_held_lock_do_not_spin_a_core(site):
    """Waiting for the qpy lock backs off: 16 commands waiting together use under 5 % of a
    core (they polled every 0.5 ms, about 6 % each)."""
    site.ok("restart")
    p = holder(site)
    waiters = [subprocess.Popen(QPY + ["check"], cwd=site.work, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**site.env, "QPY_LOCK_TIMEOUT": "30"}) for _ in range(16)]
    try:
        # (qpy.lock open: past their start, 16 Pythons at once on a slow machine, and waiting)
        wait_for(lambda: all(has_open(w.pid, "qpy.lock") for w in waiters), timeout=120,
                 what="the 16 commands to wait for the lock")
        time.sleep(1)  # (past their first, brief, wait)
        before = sum(cpu_ticks(w.pid) for w in waiters)
        window = 3.0
        time.sleep(window)  # a measurement window: the figure is CPU time, not wall time
        used = sum(cpu_ticks(w.pid) for w in waiters) - before
        assert used / os.sysconf("SC_CLK_TCK") < 0.05 * window, used
    finally:
        p.kill()
        p.wait()
    for w in waiters:
        assert w.wait(timeout=60) == 0, w.stderr.read()


def test_a_busy_database_waits_as_long_as_the_lock_timeout_says_and_names_it(site):
    """A commit in progress (SQLite's own lock, outside qpy.lock: the connection's first
    query) is waited for QPY_LOCK_TIMEOUT, not SQLite's 30 s, and is not called damage."""
    site.ok("restart")
    code = ("import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([QPY[0], "-c", code, os.path.join(site.state, "qpy.db")],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    try:
        result = site.run("check", env={"QPY_LOCK_TIMEOUT": "1"})  # (run's time-out: 120 s)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "stayed busy for 1 s" in result.stderr and "QPY_LOCK_TIMEOUT" in result.stderr
        assert "damaged" not in result.stderr and "Move it away" not in result.stderr
    finally:
        p.kill()
        p.wait()


def test_a_stopped_lock_holder_makes_others_wait_then_say_who(site):
    site.ok("restart")
    p = holder(site)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        err = site.fails("check", env={"QPY_LOCK_TIMEOUT": "0.5"})
        assert "Waited 0.5 s for the qpy lock" in err and "process %d" % p.pid in err
    finally:
        p.kill()
        p.wait()
    site.ok("check")  # a dead holder blocks nobody


def test_a_full_disk_refuses_new_jobs_and_loses_no_exit_status(site, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    disk = str(tmp_path / "disk")
    os.makedirs(disk)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk], check=True)
    try:
        env = {"QPY_STATE": os.path.join(disk, "state")}
        first = int(site.ok("sub", "true", env=env).split()[1])
        wait_for(lambda: "(done)" in site.ok("check", env=env), what="the first job")
        job = int(site.ok("sub", "echo started; sleep 1", env=env).split()[1])
        wait_for(lambda: os.path.exists(os.path.join(site.work, "job_%d.out" % job))
                 and site.read("job_%d.out" % job), what="the job to start")
        pgid = job_group(os.path.join(disk, "state"), os.listdir(
            os.path.join(disk, "state", "users"))[0], job)
        filler = os.path.join(disk, "filler")
        subprocess.run(["dd", "if=/dev/zero", "of=" + filler, "bs=4k"], capture_output=True)
        err = site.fails("sub", "true", env=env)
        # (SQLite's page writes, or the job file's, find the disk full first)
        assert ("database or disk is full" in err or err.startswith("qpy: The disk is full")) \
            and "free some space" in err
        with open(os.path.join(site.work, "job.sh"), "w") as f:
            f.write("#!/bin/sh\n# a script longer than the disk has room for\n" + "#" * 65536)
        os.chmod(os.path.join(site.work, "job.sh"), 0o755)
        err = site.fails("sub", "-c", "./job.sh", env=env)  # its copy: the disk is full
        assert err.startswith("qpy: The disk is full") and "nothing stored was lost" in err
        rows = sqlite3.connect(os.path.join(disk, "state", "qpy.db"))
        wait_for(lambda: not group_members(pgid), what="the command to end")
        user = os.listdir(os.path.join(disk, "state", "users"))[0]
        heartbeat = os.path.join(disk, "state", "users", user, "run", "%d.1.hb" % job)
        # the job is shorter than a heartbeat: the file appears when the runner retries
        wait_for(lambda: os.path.exists(heartbeat), what="the runner to retry its exit record")
        assert rows.execute("SELECT status FROM jobs WHERE id = ?", (job,)).fetchone()[0] == \
            "running"
        os.unlink(filler)
        wait_for(lambda: rows.execute("SELECT status FROM jobs WHERE id = ?",
                                      (job,)).fetchone()[0] == "done", what="the retried record")
        assert rows.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert rows.execute("SELECT status FROM jobs WHERE id = ?", (first,)).fetchone()[0] == \
            "done"
        rows.close()
        last = int(site.ok("sub", "true", env=env).split()[1])
        # (its runner must not outlive the disk: it would retry its exit record for ever)
        wait_for(lambda: "(done)" in site.ok("check", str(last), env=env), what="the last job")
    finally:
        subprocess.run(["umount", "-l", disk])


def remove_state_under_a_job(site, tmp_path, heartbeat, node_timeout):
    """Run `sleep 3` on a personal state in tmp_path, remove that state while it runs, wait
    for the job's end; return its runner's PID."""
    state = str(tmp_path / "state")
    env = {"QPY_STATE": state}
    site.ok("check", env=env)
    site.ok("set", "heartbeat", str(heartbeat), admin=True, env=env)
    site.ok("set", "node_timeout", str(node_timeout), admin=True, env=env)
    job = int(site.ok("sub", "sleep 3; echo finished", env=env).split()[1])

    def runner():
        db = sqlite3.connect(os.path.join(state, "qpy.db"))
        try:
            return db.execute("SELECT runner_pid FROM jobs WHERE id = ? AND status = 'running'",
                              (job,)).fetchone()
        finally:
            db.close()
    pid = wait_for(runner, what="the job to run")[0]
    job_group(state, os.listdir(os.path.join(state, "users"))[0], job)  # its command runs
    remove_state(state)  # the site is gone: the runner's heartbeat and exit record fail
    wait_for(lambda: site.read("job_%d.out" % job) == "finished\n", what="the job to end")
    return pid


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_runner_whose_state_was_removed_gives_up_after_node_timeout(site, tmp_path):
    pid = remove_state_under_a_job(site, tmp_path, heartbeat=30, node_timeout=1)
    wait_for(lambda: not alive(pid), 60, "the runner to give up")  # (not retry for ever)


def test_a_failed_heartbeat_does_not_take_the_runner_from_its_job(site, tmp_path):
    pid = remove_state_under_a_job(site, tmp_path, heartbeat=1, node_timeout=600)
    try:
        assert alive(pid)  # its beats failed, it saw its job end and retries the exit record
    finally:
        os.kill(pid, signal.SIGKILL)


def test_ctrl_c_leaves_no_half_done_state(site):
    site.ok("ctrlQueue", "pause")
    job = site.submit("true")
    p = subprocess.Popen(QPY + ["wait", str(job)], cwd=site.work, env=site.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # (in its waiting loop: it has the database open; a Ctrl-C while Python still imports
    # qpy is Python's own)
    wait_for(lambda: catches_sigint(p.pid) and has_open(p.pid, "qpy.db"),
             what="qpy to take over Ctrl-C")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err == "qpy: interrupted.\n"
    for _ in range(20):  # interrupted submissions: each is all there or not at all
        p = subprocess.Popen(QPY + ["sub", "true"], cwd=site.work, env=site.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.03)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
    for record in site.jobs().values():
        assert os.path.exists(record["spec"])
    site.ok("ctrlQueue", "continue")
    site.wait_idle()
    assert all(record["status"] == "done" for record in site.jobs().values())


def test_backup_check_and_restore(site, tmp_path):
    done = site.submit("true")
    site.wait_idle()
    wait_for(lambda: not qpy_processes(site.home), what="the runner to leave")
    backup = str(tmp_path / "backup.db")
    assert "Backed up" in site.ok("backup", backup, admin=True)
    site.ok("clean", "all")
    assert site.jobs() == {}
    assert site.ok("check", admin=True) == "The site is fine.\n"
    assert "Restored" in site.ok("restore", backup, admin=True)
    assert list(site.jobs()) == [done]
    assert "is not a qpy database" in site.run("restore", "/etc/passwd", admin=True).stderr
    assert "exists" in site.run("backup", backup, admin=True).stderr
    spool = os.path.join(site.state, "users", os.listdir(os.path.join(site.state, "users"))[0],
                         "spool")
    open(os.path.join(spool, "stray.job"), "w").close()
    result = site.run("check", admin=True)
    assert result.returncode == 1 and "stray.job: a job file of no job in the queue" in result.stdout


def has_open(pid, name):
    try:
        return any(os.readlink("/proc/%d/fd/%s" % (pid, fd)).endswith(name)
                   for fd in os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return False


def catches_sigint(pid):
    """Has the process installed its own SIGINT handler (bit 2 of SigCgt)?"""
    with open("/proc/%d/status" % pid) as f:
        caught = [line for line in f if line.startswith("SigCgt:")][0].split()[1]
    return int(caught, 16) & (1 << (signal.SIGINT - 1))


def test_a_local_node_down_after_a_killed_launch_comes_back_without_a_timer(site):
    """A launcher SIGKILLed mid-launch marks its node down (the chaos test in test_soak.py
    does this at random); here that state is written into the real DB directly, to make it
    certain. With no site timer, `qpy check` must start the tick that probes the node once
    its probe is due, so the waiting job runs instead of waiting for ever."""
    site.ok("restart")
    site.ok("set", "probe_interval", "2", admin=True)
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:
        db.execute("INSERT INTO node_health (name, state, reason, probed_at) VALUES "
                   "('localhost', 'down', ?, ?)", ("launch failed: exit status -9", time.time()))
    db.close()
    job = site.submit("true")

    def ran():
        site.ok("check")
        return site.status(job) == "done"
    wait_for(ran, timeout=120, what="the job to run once its node is probed")
