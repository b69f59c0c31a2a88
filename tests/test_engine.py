"""The engine under stress: concurrent submitters, processes killed at every step of submit,
claim, launch and completion, and no qpy process left behind."""
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import time

import pytest


from conftest import QPY, group_members, qpy_processes, read_jobs, wait_for

# Each job appends its ID to this log: a line twice means a job ran twice.
APPEND_ID = "echo $QPY_JOB_ID >> %s"


def ran(site):
    path = os.path.join(site.work, "ran.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line) for line in f.read().split()]


def submit_logged(site, env=None):
    return site.submit(APPEND_ID % os.path.join(site.work, "ran.log"), env=env)


def crash_env(site, point):
    """QPY_CRASH_AT for one process: the first to reach <point> dies by SIGKILL there."""
    token = os.path.join(site.work, "crash-token-" + point.replace(":", "-"))
    open(token, "w").close()
    return {"QPY_CRASH_AT": "%s@%s" % (point, token)}, token


def test_sub_returns_before_any_launch(site):
    """sub only queues: with a tick already holding tick.lock, it still returns at once."""
    from filelock import FileLock
    site.ok("restart")
    with FileLock(os.path.join(site.state, "tick.lock")):
        job = site.submit("true")
        assert site.status(job) == "queue"
    site.ok("check")  # a tick was wanted and nobody ran it: check starts one
    site.wait_status(job, "done")


def test_concurrent_submitters_lose_nothing_and_run_everything_once(site):
    site.ok("restart")
    log = os.path.join(site.work, "ran.log")
    script = "for i in $(seq 25); do %s sub %s || exit 1; done" % (
        shlex.join(QPY), shlex.quote(APPEND_ID % log))
    submitters = [subprocess.Popen(["sh", "-c", script], cwd=site.work, env=site.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(4)]
    received = []
    for p in submitters:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and err == "", err
        received += [int(line.split()[1]) for line in out.splitlines()]
    assert len(received) == len(set(received)) == 100
    site.wait_idle(timeout=300)
    jobs = site.jobs()
    assert sorted(jobs) == sorted(received)
    assert all(job["status"] == "done" for job in jobs.values())
    assert sorted(ran(site)) == sorted(received)  # every job exactly once
    wait_for(lambda: not qpy_processes(site.home), what="no qpy process left")


def test_no_qpy_process_outlives_an_empty_queue(site):
    ids = [site.submit("sleep", "0.2") for _ in range(5)]
    site.wait_idle()
    wait_for(lambda: not qpy_processes(site.home), what="no qpy process left")
    assert all(site.status(j) == "done" for j in ids)


# ---- crash points --------------------------------------------------------------------------

def test_crash_in_sub_before_its_commit_stores_nothing(site):
    env, _ = crash_env(site, "sub:spooled")
    result = site.run("sub", "true", env=env)
    assert result.returncode == -signal.SIGKILL and result.stdout == ""
    assert site.jobs() == {}
    spool = os.path.join(site.state, "users", os.listdir(os.path.join(site.state, "users"))[0],
                         "spool")
    assert len(os.listdir(spool)) == 1  # the job file of the unfinished submission
    site.ok("restart")
    assert os.listdir(spool) == []
    assert site.submit("true") == 1


def test_crash_in_sub_after_its_commit_keeps_the_job(site):
    env, _ = crash_env(site, "sub:committed")
    result = site.run("sub", APPEND_ID % os.path.join(site.work, "ran.log"), env=env)
    assert result.returncode == -signal.SIGKILL
    (job,) = site.jobs()
    assert site.status(job) == "queue"
    site.ok("check")  # notices the tick nobody ran
    site.wait_status(job, "done")
    assert ran(site) == [job]


def test_crash_of_the_tick_between_claim_and_launch(site):
    env, _ = crash_env(site, "tick:claimed")
    job = submit_logged(site, env=env)
    wait_for(lambda: site.jobs()[job]["status"] == "starting"
             and not qpy_processes(site.home), what="the crashed claim")
    site.ok("check")  # within launch_timeout: the claim is left alone
    assert site.status(job) == "starting"
    age_claims(site, 3600)  # now it is overdue
    site.ok("check")
    site.wait_status(job, "done")
    assert ran(site) == [job]
    assert site.jobs()[job]["attempt"] == 2


def test_crash_of_the_tick_after_launch(site):
    env, _ = crash_env(site, "tick:launched")
    job = submit_logged(site, env=env)
    site.wait_status(job, "done")
    assert ran(site) == [job]
    assert site.jobs()[job]["attempt"] == 1


def test_late_runner_of_a_retaken_claim_never_runs_the_job(site, monkeypatch):
    """A claim taken back (launch timed out) and claimed again: the first runner, if it ever
    starts, finds another attempt and leaves. Driven in-process, step by step."""
    import qpy
    site.ok("set", "launch_timeout", "0", admin=True)
    site.ok("ctrlQueue", "pause")
    job = submit_logged(site)
    monkeypatch.setenv("HOME", site.home)
    monkeypatch.delenv("QPY_STATE", raising=False)
    qpy.disconnect()
    try:
        qpy.atomically(lambda db: db.execute(
            "UPDATE jobs SET status = 'starting', node = 'localhost', attempt = 1, "
            "claimed_at = 0 WHERE id = ?", (job,)))
        qpy.atomically(qpy.reconcile)           # the claim times out: back to the queue
        assert site.status(job) == "queue"
        qpy.runner(job, 1)                      # the late runner of attempt 1
        assert site.status(job) == "queue" and ran(site) == []
    finally:
        qpy.disconnect()
    site.ok("ctrlQueue", "continue")
    site.wait_status(job, "done")
    assert ran(site) == [job]


def test_crash_of_the_runner_before_the_command_starts(site):
    """Confirmed, but the command never got its go: nothing ran, so it is queued again."""
    env, _ = crash_env(site, "runner:confirmed")
    job = submit_logged(site, env=env)
    wait_for(lambda: site.jobs()[job]["attempt"] == 1 and not qpy_processes(site.home),
             what="the runner to die")
    site.ok("check")
    record = site.wait_status(job, "done")
    assert record["attempt"] == 2 and ran(site) == [job]  # run once, by the second runner


def test_crash_of_the_runner_after_the_exit_record(site):
    env, _ = crash_env(site, "runner:recorded")
    job = site.submit("sh", "-c", "%s; exit 7" % (APPEND_ID % os.path.join(site.work, "ran.log")),
                      env=env)
    wait_for(lambda: os.path.exists(os.path.join(site.work, "ran.log"))
             and not qpy_processes(site.home), what="the runner to die")
    assert site.status(job) == "running"
    site.ok("check")
    record = site.wait_status(job, "failed")
    assert record["exit_code"] == 7 and ran(site) == [job]


def test_crash_of_the_runner_after_storing_the_end(site):
    site.ok("nodes", write_nodes(site, "localhost 1"), admin=True)
    env, _ = crash_env(site, "runner:stored")
    first = submit_logged(site, env=env)
    second = submit_logged(site)
    site.wait_status(first, "done")
    wait_for(lambda: not qpy_processes(site.home), what="the runner to die")
    site.ok("check")
    site.wait_status(second, "done")
    assert sorted(ran(site)) == [first, second]


def test_a_runner_killed_while_its_job_runs(site):
    job = site.submit("sleep", "300")
    record = site.wait_status(job, "running")
    pgid = site.group(job)
    with open("/proc/%d/comm" % record["runner_pid"]) as f:
        assert f.read() == "qpy-runner\n"  # as top and ps -o comm show it
    os.kill(record["runner_pid"], signal.SIGKILL)
    wait_for(lambda: record["runner_pid"] not in qpy_processes(site.home), what="runner death")
    assert group_members(pgid)  # the command outlived its runner...
    site.ok("check")
    record = site.wait_status(job, "failed")
    assert record["reason"] == "runner lost"
    wait_for(lambda: not group_members(pgid), what="the orphaned job to be stopped")  # ...not long


def test_a_late_kill_of_the_job_before_does_not_stop_the_next_one(site):
    """A runner runs job after job: a SIGTERM meant for a job that ended meanwhile (qpy kill
    racing the job's end) does not stop the job the runner runs now; a kill of that job does."""
    site.ok("nodes", write_nodes(site, "localhost 1"), admin=True)
    site.ok("ctrlQueue", "pause")
    first = site.submit("true")
    # looks for its file only twice a second: a wrong stop would come long before
    second = site.submit("while [ ! -e go-on ]; do sleep 0.5; done")
    third = site.submit("sleep", "300")
    site.ok("ctrlQueue", "continue")
    record = site.wait_status(second, "running")
    assert record["runner_pid"] == site.jobs()[first]["runner_pid"]  # the same runner
    os.kill(record["runner_pid"], signal.SIGTERM)  # as a late 'qpy kill <first>' would
    open(os.path.join(site.work, "go-on"), "w").close()
    assert site.wait_status(second, "done", "failed", "killed")["status"] == "done"
    assert site.wait_status(third, "running")["runner_pid"] == record["runner_pid"]
    assert site.ok("kill", str(third)) == "1 job will be killed.\n"
    assert site.wait_status(third, "killed")["reason"] == "killed by the user"


def test_kill_of_a_job_whose_runner_died(site):
    job = site.submit("sleep", "300")
    record = site.wait_status(job, "running")
    pgid = site.group(job)
    os.kill(record["runner_pid"], signal.SIGSTOP)  # the runner cannot act; then it dies
    os.kill(record["runner_pid"], signal.SIGKILL)
    wait_for(lambda: record["runner_pid"] not in qpy_processes(site.home), what="runner death")
    assert site.ok("kill", str(job)) == "1 job will be killed.\n"
    assert site.wait_status(job, "killed")["status"] == "killed"
    wait_for(lambda: not group_members(pgid), what="the job to be stopped")


def test_random_kills_of_submitters_never_lose_or_repeat_a_job(site):
    """SIGKILL `qpy sub` (and the tick it forks) at random moments; then recover."""
    rng = random.Random(1)
    log = os.path.join(site.work, "ran.log")
    acknowledged = []
    for _ in range(30):
        p = subprocess.Popen(QPY + ["sub", APPEND_ID % log], cwd=site.work, env=site.env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(rng.uniform(0, 0.08))
        p.kill()
        out = p.communicate()[0]
        if out.startswith("Job "):
            acknowledged.append(int(out.split()[1]))
    site.ok("restart")
    site.wait_idle(timeout=120)
    jobs = site.jobs()
    assert set(acknowledged) <= set(jobs)  # an acknowledged job is never lost
    assert all(job["status"] in ("done", "failed") for job in jobs.values())
    runs = ran(site)
    assert len(runs) == len(set(runs))      # nothing ran twice
    assert {j for j, job in jobs.items() if job["status"] == "done"} == set(runs)


def write_nodes(site, text):
    path = os.path.join(site.work, "nodes")
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def age_claims(site, seconds):
    """Make every claim older, as if the clock had moved on (instead of sleeping)."""
    import sqlite3
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:
        db.execute("UPDATE jobs SET claimed_at = claimed_at - ? WHERE status = 'starting'",
                   (seconds,))
    db.close()


def test_a_runner_goes_on_with_the_next_job_of_its_node(site):
    """Short jobs do not pay for a new process each: the runner whose job ends runs the next
    job claimed for its node and user itself."""
    path = os.path.join(site.work, "nodes")
    with open(path, "w") as f:
        f.write("localhost 1\n")
    site.ok("nodes", path, admin=True)
    site.ok("ctrlQueue", "pause")
    ids = [site.submit("true") for _ in range(8)]
    site.ok("ctrlQueue", "continue")
    site.wait_idle()
    runners = {site.jobs()[j]["runner_pid"] for j in ids}
    assert all(site.status(j) == "done" for j in ids)
    assert len(runners) < len(ids)
    wait_for(lambda: not qpy_processes(site.home), what="no qpy process left")


def test_a_users_tick_does_not_loop_on_jobs_only_root_may_start(tmp_path, monkeypatch):
    """Bob's queue is longer than a pass looks at, and his jobs could start, but alice's tick
    may not start them: her pass must not ask for pass after pass (it once did, for ever)."""
    import qpy
    monkeypatch.setenv("QPY_STATE", str(tmp_path / "state"))
    qpy.disconnect()
    try:
        def fill(db):
            db.execute("UPDATE meta SET value = '0' WHERE key = 'tick_wanted'")
            db.execute("INSERT INTO users (name) VALUES ('bob')")
            for position in range(1, qpy.QUEUE_DEPTH + 11):
                db.execute("INSERT INTO jobs (user, command, cwd, spec, n_cores, mem, position, "
                           "queued_at) VALUES ('bob', 'true', '/', '/none', 1, 0, ?, 0)",
                           (position,))
        qpy.atomically(fill)
        claims = qpy.atomically(lambda db: qpy.claim_jobs(db, "alice"))
        assert claims == []
        assert qpy.atomically(lambda db: qpy.meta_number(db, "tick_wanted"), write=False) == 0
        # ...but hands the wake-up on to bob (his own tick, or root's, takes it on)
        assert qpy.atomically(lambda db: qpy.tick_wanted(db, "bob"), write=False)
        assert not qpy.atomically(lambda db: qpy.tick_wanted(db, "alice"), write=False)
        # root's pass claims bob's jobs, and asks for one more pass for those behind them
        claims = qpy.atomically(lambda db: qpy.claim_jobs(db, None))
        assert claims and qpy.atomically(lambda db: qpy.meta_number(db, "tick_wanted"),
                                         write=False) == 1
    finally:
        qpy.disconnect()


def test_confirm_after_a_rolled_back_try_but_never_over_a_started_job(site, monkeypatch):
    """A runner's transaction that made the started marker and then failed is tried again:
    the marker of that very claim (its attempt, no 'go') is reused; a marker with 'go' means
    the command was told to run: refused."""
    import qpy
    site.ok("ctrlQueue", "pause")
    first, second = site.submit("true"), site.submit("true")
    monkeypatch.setenv("HOME", site.home)
    monkeypatch.delenv("QPY_STATE", raising=False)
    qpy.disconnect()
    try:
        user = site.jobs()[first]["user"]
        for job_id, content in ((first, "1"), (second, "1 go")):
            qpy.atomically(lambda db: db.execute(
                "UPDATE jobs SET status = 'starting', node = 'localhost', attempt = 1, "
                "claimed_at = ? WHERE id = ?", (time.time(), job_id)))
            with open(qpy.run_file({"user": user, "id": job_id, "attempt": 1}, "started"),
                      "w") as f:
                f.write(content)
            qpy.atomically(lambda db: qpy.confirm(db, job_id, 1))
        assert site.status(first) == "running"
        assert site.jobs()[second]["status"] == "failed"
        assert site.jobs()[second]["reason"] == "started marker exists: refused to run it twice"
    finally:
        qpy.disconnect()


def test_runners_are_forks_of_a_qpy_command_but_not_of_a_runner(site):
    """A tick run by a qpy command forks this machine's runners (qpy is loaded already); a
    tick run by a runner starts them as new processes (`qpy _run`), so that no runner carries
    the stack of the runner before it."""
    site.ok("nodes", write_nodes(site, "localhost 2"), admin=True)
    first = site.submit("-n", "2", "while [ ! -e go-on ]; do sleep 0.1; done")
    runner = site.wait_status(first, "running")["runner_pid"]
    second, third = site.submit("sleep", "300"), site.submit("sleep", "300")
    with open("/proc/%d/cmdline" % runner, "rb") as f:
        assert b"sub" in f.read().split(b"\0")  # forked from qpy sub's tick
    open(os.path.join(site.work, "go-on"), "w").close()
    # the first job's runner takes the second itself, and ticks for the third
    assert site.wait_status(second, "running")["runner_pid"] == runner
    other = site.wait_status(third, "running")["runner_pid"]
    with open("/proc/%d/cmdline" % other, "rb") as f:
        assert b"_run" in f.read().split(b"\0")
    site.ok("kill", "all")


def test_a_relative_qpy_state_keeps_its_meaning_in_runners(site):
    """Runners change their working directory to start commands: a relative $QPY_STATE is
    found once, where the command that started them ran."""
    env = {"QPY_STATE": "relative-state"}
    first = int(site.ok("sub", "true", env=env).split()[1])
    second = int(site.ok("sub", "true", env=env).split()[1])
    wait_for(lambda: site.ok("check", env=env).count("(done)") == 2, what="both jobs done")
    assert {first, second} == set(read_jobs(os.path.join(site.work, "relative-state")))
    assert not os.path.exists("/relative-state")


@pytest.mark.parametrize("point", ["site:changing", "site:committed"])
def test_the_first_command_killed_while_it_makes_the_queue_leaves_one_to_use(site, point):
    """The first command makes the queue and the site together (qpy.db and a copy of
    site.db that takes site.db's place once both have committed): killed before the commit
    or before the rename, the next command finds a queue it can use, never a "changed by a
    member" refusal (seen once in CI, in the random kills above)."""
    env, token = crash_env(site, point)
    assert site.run("check", env=env).returncode == -signal.SIGKILL
    assert not os.path.exists(token)
    job = site.submit("true")
    assert site.wait_status(job, "done")["node"] == "localhost"
    assert "localhost" in site.ok("status")


@pytest.mark.parametrize("point, kept", [("site:changing", False), ("site:committed", True)])
def test_a_site_change_killed_before_it_is_in_place_is_whole_or_not_at_all(site, point, kept):
    """The administrator's change killed between the commit and site.db's rename is kept
    (the queue's part of it is committed too); killed before the commit, it is not; either
    way the next change goes through."""
    site.ok("restart")
    env, token = crash_env(site, point)
    assert site.run("set", "heartbeat", "7", admin=True, env=env).returncode == -signal.SIGKILL
    assert not os.path.exists(token)
    assert site.ok("set", "heartbeat", admin=True) == "heartbeat = %s\n" % (
        "7" if kept else "30")
    assert site.ok("set", "node_timeout", "99", admin=True) == "node_timeout set to 99.\n"
    assert site.ok("set", "heartbeat", admin=True) == "heartbeat = %s\n" % ("7" if kept else "30")
    job = site.submit("true")
    site.wait_status(job, "done")


JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")  # a journal's header: SQLite rolls it back


def test_a_transaction_killed_after_it_wrote_into_the_db_is_rolled_back(site):
    """The journal is kept between transactions (journal_mode=PERSIST), and still a rollback
    journal: a submission of 30,000 jobs killed before its commit has already written pages
    into qpy.db (SQLite spills what its cache cannot hold); the next command rolls them back
    to the queue as it was; the next commit leaves the journal in place, its header zeroed."""
    first = site.submit("true")
    site.wait_status(first, "done")
    path = os.path.join(site.state, "qpy.db")
    with open(path, "rb") as f:
        before = f.read()
    env, token = crash_env(site, "sub:spooled")
    assert site.run("sub", "--array", "1-30000", "true", env=env).returncode == -signal.SIGKILL
    assert not os.path.exists(token)
    with open(path, "rb") as f:
        assert f.read() != before  # (the transaction's pages are in the file already)
    with open(path + "-journal", "rb") as f:
        assert f.read(8) == JOURNAL_MAGIC  # hot: what the pages were is in it
    assert "(done)" in site.ok("check")
    assert list(site.jobs()) == [first]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    second = site.submit("true")
    assert second == first + 1 and site.wait_status(second, "done")
    with open(path + "-journal", "rb") as f:
        assert f.read(8) == bytes(8)  # kept, and not hot


def test_random_kills_of_the_administrators_changes_leave_a_site_that_works(site):
    """SIGKILL `qpy_admin.py set` at random moments: each change is there whole or not at
    all, and the site goes on (the next change, a job)."""
    from conftest import QPY_ADMIN
    rng = random.Random(2)
    site.ok("restart")
    tried = set()
    for value in range(40, 70):
        p = subprocess.Popen(QPY_ADMIN + ["set", "heartbeat", str(value)], cwd=site.work,
                             env=site.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 0.1))
        p.kill()
        p.wait()
        tried.add(value)
    value = int(site.ok("set", "heartbeat", admin=True).split()[-1])
    assert value == 30 or value in tried
    assert not os.path.exists(os.path.join(site.state, "site", "site.db.new"))
    assert site.ok("set", "heartbeat", "31", admin=True) == "heartbeat set to 31.\n"
    job = site.submit("true")
    site.wait_status(job, "done")


def test_the_runners_quick_pass_places_as_a_whole_pass_does(tmp_path, monkeypatch):
    """When no other node has a free core, the runner's quick pass for its node (quick_plan:
    SQLite's sums of the running jobs, the first QUICK_DEPTH queued jobs of each user) places
    what a tick's pass over the whole site (plan) places, in the same order: random states,
    queues no deeper than the quick pass looks."""
    import qpy
    monkeypatch.setenv("QPY_STATE", str(tmp_path / "state"))
    qpy.disconnect()
    rng = random.Random(3)
    users = ("alice", "bob", "carol")
    placed = 0
    try:
        qpy.atomically(lambda db: db.executemany("INSERT OR IGNORE INTO users (name) VALUES (?)",
                                                 [(user,) for user in users]))
        for trial in range(60):
            cores = [rng.randint(1, 6) for _ in range(3)]

            def site_of(db):
                db.execute("DELETE FROM site.nodes")
                for index, count in enumerate(cores):
                    db.execute("INSERT INTO site.nodes (name, address, cores, mem, attributes, "
                               "position) VALUES (?, ?, ?, 16, ?, ?)",
                               ("n%d" % index, "10.254.0.%d" % (index + 1), count,
                                rng.choice(["", "big"]), index))
                rules = rng.choice([None, '{"kind": "even", "minimum": 1, "users": {}}'])
                db.execute("DELETE FROM site.settings WHERE key = 'rules'")
                if rules:
                    db.execute("INSERT INTO site.settings VALUES ('rules', ?)", (rules,))
            qpy.atomically(site_of, site=True)

            def jobs_of(db):
                db.execute("DELETE FROM jobs")
                db.execute("UPDATE users SET paused = ?", (0,))
                if rng.random() < 0.2:
                    db.execute("UPDATE users SET paused = 1 WHERE name = ?", (rng.choice(users),))
                for index, count in enumerate(cores):  # n0 keeps some free; n1, n2 are full
                    busy = rng.randint(0, count - 1) if index == 0 else count
                    for _ in range(busy):
                        db.execute("INSERT INTO jobs (user, status, command, cwd, spec, n_cores, "
                                   "mem, position, queued_at, node, attempt) VALUES (?, "
                                   "'running', 'true', '/', '/none', 1, 1, 0, 0, ?, 1)",
                                   (rng.choice(users), "n%d" % index))
                for user in users:
                    for _ in range(rng.randint(0, qpy.QUICK_DEPTH)):
                        db.execute("INSERT INTO jobs (user, command, cwd, spec, n_cores, mem, "
                                   "attributes, held, position, queued_at) VALUES (?, 'true', "
                                   "'/', '/none', ?, ?, ?, ?, 0, 0)",
                                   (user, rng.choice([1, 1, 2]), rng.choice([1, 4, 20]),
                                    rng.choice(["", "", "big"]), int(rng.random() < 0.1)))
                db.execute("UPDATE jobs SET position = id")
            qpy.atomically(jobs_of)
            quick = qpy.atomically(lambda db: qpy.quick_plan(db, "n0"), write=False)
            whole = qpy.atomically(qpy.plan, write=False)
            assert quick is not None
            assert quick["placements"] == whole["placements"], trial
            placed += bool(whole["placements"])
        assert placed >= 20  # (most states place something: the comparison means something)
        # cores free elsewhere: the quick pass does not apply
        qpy.atomically(lambda db: db.execute("DELETE FROM jobs WHERE node = 'n1'"))
        assert qpy.atomically(lambda db: qpy.quick_plan(db, "n0"), write=False) is None
    finally:
        qpy.disconnect()


def test_a_site_copy_killed_while_it_was_written_is_removed_not_taken_for_damage(site):
    """A copy of site.db cut short (the administrator's change killed while copying, before
    anything was committed) is no site and no damage: it goes (seen in the random kills)."""
    site.ok("restart")
    with open(os.path.join(site.state, "site", "site.db.new"), "wb") as f:
        f.write(b"SQLite format 3\x00" + b"\x07" * 100)
    assert site.ok("set", "heartbeat", admin=True) == "heartbeat = 30\n"
    assert not os.path.exists(os.path.join(site.state, "site", "site.db.new"))
    assert site.ok("set", "heartbeat", "9", admin=True) == "heartbeat set to 9.\n"
