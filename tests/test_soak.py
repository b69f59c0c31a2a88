"""Nothing lost under load and faults: a soak of 5,000 jobs from 8 concurrent submitters of two
users on three ssh nodes with random kills and cleans, and chaos (SIGKILL to random qpy
processes during a workload) followed by recovery. The invariants are checked on the DB and on
the jobs' own logs (each job appends its ID: a line twice would be a job run twice)."""
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time

from conftest import QPY, job_processes, qpy_processes, wait_for

SOAK_JOBS = int(os.environ.get("QPY_SOAK_JOBS", "5000"))
FINAL = ("done", "failed", "killed", "undone")


def check_invariants(rows, logs):
    """rows: every job; logs: the IDs the jobs wrote, in all logs together."""
    assert all(row["status"] in FINAL for row in rows), \
        [r["id"] for r in rows if r["status"] not in FINAL][:10]
    assert len(logs) == len(set(logs)), "a job ran twice"
    by_id = {row["id"]: row for row in rows}
    done = {job_id for job_id, row in by_id.items() if row["status"] == "done"}
    assert done <= set(logs), "a job is done but never ran"
    assert not {i for i in logs if i in by_id and by_id[i]["status"] == "undone"}, \
        "an undone job ran"


def test_soak_two_users_eight_submitters_three_nodes(lab):
    site = lab()
    site.admin("users", site.write("users", "alice\nbob\n"))
    site.admin("set", "heartbeat", "5")
    site.admin("set", "node_timeout", "120")
    per_submitter = SOAK_JOBS // 8
    errors = []

    def submitter(user, seed):
        chooser = random.Random(seed)
        log = os.path.join(site.workdir(user), "ran-%d.log" % seed)
        mine = []
        left = per_submitter
        while left:
            count = min(left, chooser.randint(1, 40))
            left -= count
            result = site.run(user, "sub", "--array", "1-%d" % count,
                              "echo $QPY_JOB_ID >> %s" % log)
            if result.returncode:
                errors.append(result.stderr)
                return
            first, _, last = result.stdout.split()[1].partition("-")
            first, last = int(first), int(last or first)
            mine += list(range(first, last + 1))
            if chooser.random() < 0.2 and mine:
                site.run(user, "kill", str(chooser.choice(mine)))
            if chooser.random() < 0.1:
                site.run(user, "clean", "done")

    threads = [threading.Thread(target=submitter, args=(("alice", "bob")[i % 2], i))
               for i in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        site.admin("tick")  # the periodic root tick, sped up
        time.sleep(0.5)
    assert not errors, errors[:3]

    def settled():
        site.admin("tick")
        return not any(r["status"] not in FINAL for r in site.jobs().values())
    wait_for(settled, timeout=900, what="all jobs to end")
    rows = list(site.jobs().values())
    logs = []
    for user in ("alice", "bob"):
        for name in os.listdir(site.workdir(user)):
            if name.startswith("ran-"):
                with open(os.path.join(site.workdir(user), name)) as f:
                    logs += [int(x) for x in f.read().split()]
    check_invariants(rows, logs)
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    total = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()[0]
    db.close()
    assert total == 8 * per_submitter  # every submission got its IDs, none reused
    assert len(set(logs)) + sum(r["status"] in ("undone", "killed") for r in rows) >= \
        sum(r["status"] == "done" for r in rows)


def test_chaos_sigkill_to_commands_ticks_and_runners(site):
    """SIGKILL random qpy processes (submitters, ticks, runners) during a workload; then
    `qpy restart` and the ticks recover: every job ended exactly once or is reported."""
    path = os.path.join(site.work, "nodes")
    with open(path, "w") as f:
        f.write("localhost 4\n")
    site.ok("nodes", path, admin=True)
    site.ok("set", "launch_timeout", "3", admin=True)
    log = os.path.join(site.work, "ran.log")
    stop = threading.Event()
    rng = random.Random(11)
    killed = []

    def chaos():
        while not stop.is_set():
            victims = qpy_processes(site.home)
            if victims:
                victim = rng.choice(victims)
                try:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
                except OSError:
                    pass
            time.sleep(rng.uniform(0.02, 0.2))

    monkey = threading.Thread(target=chaos)
    monkey.start()
    try:
        for _ in range(60):
            subprocess.run(QPY + ["sub", "echo $QPY_JOB_ID >> %s; sleep 0.1" % log],
                           cwd=site.work, env=site.env, capture_output=True)
    finally:
        stop.set()
        monkey.join()
    assert killed
    site.ok("restart")

    def settled():
        site.run("check")  # each check starts a tick if one was lost
        return not any(r["status"] in ("queue", "starting", "running")
                       for r in site.jobs().values())
    try:
        wait_for(settled, timeout=300, what="recovery")
    except AssertionError:
        stuck = [r for r in site.jobs().values() if r["status"] not in FINAL]
        raise AssertionError("not recovered: %s\n%s" % (stuck, site.run("check").stdout))
    with open(log) as f:
        logs = [int(x) for x in f.read().split()]
    rows = list(site.jobs().values())
    check_invariants(rows, logs)
    for row in rows:
        if row["status"] == "failed":
            # (a job's own process is a qpy process from its spawn to its exec: the monkey
            # may SIGKILL it then, and its runner records just that)
            assert row["reason"] in ("runner lost", "launch timed out", "killed by SIGKILL") \
                or row["reason"].startswith(("job file", "refused")), row["reason"]
    wait_for(lambda: not qpy_processes(site.home), what="no qpy process left")
    wait_for(lambda: not job_processes(site.home), what="no job process left unaccounted")

