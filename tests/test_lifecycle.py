"""The job life cycle: one definition of the status groups (matching schema.sql and its
indexes), transitions that no stale actor can make, run files of one attempt each, a tick
that survives one job's damaged files, and a trace of what went wrong in the background."""
import glob
import json
import os
import re
import sqlite3
import signal
import time

import pytest

from conftest import REPO, group_members, qpy_processes, read_db, remove_state, wait_for


def in_process(site, monkeypatch):
    """Use the qpy module on this test's personal state."""
    import qpy
    monkeypatch.setenv("HOME", site.home)
    monkeypatch.delenv("QPY_STATE", raising=False)
    qpy.disconnect()
    return qpy


def test_the_status_groups_are_those_of_the_schema():
    import qpy
    with open(os.path.join(REPO, "schema.sql")) as f:
        schema = f.read()
    check = re.search(r"status\s+TEXT NOT NULL DEFAULT 'queue' CHECK \(status IN\s*\(([^)]*)\)\)",
                      schema)
    assert tuple(re.findall(r"'(\w+)'", check.group(1))) == qpy.STATUSES
    # every partial index of live jobs is written with the very condition qpy queries
    live_indexes = re.findall(r"CREATE INDEX (jobs_live\w*) ON jobs \([^)]*\)\s+WHERE ([^;]*);",
                              schema)
    assert {name for name, _ in live_indexes} == {"jobs_live", "jobs_live_by_spec"}
    assert all(where == qpy.LIVE_SQL for _, where in live_indexes)
    assert set(qpy.LIVE) | set(qpy.FINISHED) == set(qpy.STATUSES)
    assert not set(qpy.LIVE) & set(qpy.FINISHED)
    # every status users see has its colour (coloursScheme's order starts as the manual's)
    assert set(qpy.STATUS_COLOURS) == set(qpy.USER_STATUSES)
    assert list(qpy.STATUS_COLOURS)[:5] == ["queue", "running", "done", "killed", "undone"]


def test_the_named_columns_are_those_of_the_schema():
    """JOB_COLUMNS (the job part of JOB_WITH_NODE) and HISTORY_COLUMNS name every column of
    their tables, as schema.sql makes them and as the migrations bring an old DB to."""
    import sqlite3
    import qpy
    db = sqlite3.connect(":memory:")
    db.execute("ATTACH DATABASE ':memory:' AS site")
    with open(os.path.join(REPO, "schema.sql")) as f:
        for statement in qpy.sql_statements(f.read()):
            db.execute(statement)
    columns = lambda table: tuple(row[1] for row in db.execute("PRAGMA table_info(%s)" % table))
    assert columns("jobs") == qpy.JOB_COLUMNS
    assert columns("history") == qpy.HISTORY_COLUMNS


def test_the_queries_of_live_jobs_use_the_partial_index(site, monkeypatch):
    """Every statement qpy runs with the live-jobs condition is planned on a live index (never
    a walk of the history), traced while the real functions run."""
    site.ok("ctrlQueue", "pause")
    for _ in range(3):
        site.submit("true")
    qpy = in_process(site, monkeypatch)
    statements = []
    try:
        db = qpy.connect()
        db.set_trace_callback(statements.append)
        qpy.atomically(lambda db: qpy.claim_jobs(db, None))
        qpy.atomically(lambda db: qpy.reconcile(db))
        qpy.atomically(lambda db: qpy.user_jobs(db, "nobody", qpy.LIVE), write=False)
        qpy.atomically(qpy.site_counts, write=False)
        db.set_trace_callback(None)
        live = [s for s in statements if qpy.LIVE_SQL in s and s.lstrip().startswith("SELECT")]
        assert len(live) >= 4, statements
        for statement in live:
            params = statement.count("?")
            plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement,
                                                         (0,) * params))
            assert "jobs_live" in plan, (statement, plan)
    finally:
        qpy.disconnect()


def test_a_stale_runner_cannot_end_a_newer_attempt(site, monkeypatch):
    """The runner of attempt 1 (its node came back after the job was requeued and started
    again) stores its end: the job's attempt 2 goes on running, untouched."""
    site.ok("ctrlQueue", "pause")
    job_id = site.submit("true")
    qpy = in_process(site, monkeypatch)
    try:
        qpy.atomically(lambda db: db.execute(
            "UPDATE jobs SET status = 'running', node = 'localhost', attempt = 2, "
            "started_at = ? WHERE id = ?", (time.time(), job_id)))
        old = dict(site.jobs()[job_id], attempt=1, kind="host")
        record = {"attempt": 1, "status": "done", "exit_code": 0, "ended_at": time.time()}
        qpy.atomically(lambda db: qpy.store_and_continue(db, old, record))
        assert site.jobs()[job_id]["status"] == "running"
        assert site.jobs()[job_id]["attempt"] == 2
    finally:
        qpy.disconnect()


def test_every_transition_is_guarded_by_status_and_attempt(site, monkeypatch):
    """Each transition moves a job only from the status and attempt its caller saw."""
    site.ok("ctrlQueue", "pause")
    job_id = site.submit("true")
    qpy = in_process(site, monkeypatch)
    try:
        seen = dict(site.jobs()[job_id])
        qpy.atomically(lambda db: db.execute("UPDATE jobs SET attempt = 3 WHERE id = ?",
                                             (job_id,)))
        for move in (lambda db: qpy.undo(db, seen, "x"),
                     lambda db: qpy.claim(db, seen, "localhost", [], time.time()),
                     lambda db: qpy.fail_claim(db, seen, "x"),
                     lambda db: qpy.return_to_queue(db, seen, "x")):
            assert qpy.atomically(move) is False
        assert site.jobs()[job_id]["status"] == "queue"
    finally:
        qpy.disconnect()


def run_files(site, job_id):
    user = site.jobs()[job_id]["user"]
    return sorted(os.path.basename(p) for p in
                  glob.glob(os.path.join(site.state, "users", user, "run", "%d.*" % job_id)))


def test_run_files_belong_to_one_attempt(site):
    site.ok("set", "heartbeat", "0.2", admin=True)
    job = site.submit("sleep", "30")
    site.wait_status(job, "running")
    wait_for(lambda: "%d.1.hb" % job in run_files(site, job), what="the first heartbeat")
    assert "%d.1.started" % job in run_files(site, job)
    assert not any(name.count(".") == 1 for name in run_files(site, job)), run_files(site, job)
    site.ok("kill", str(job))
    site.wait_status(job, "killed")
    wait_for(lambda: not run_files(site, job), what="its run files to go")


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"attempt": 1}', "no json at all",
                                     '{"attempt": 1, "status": "bogus", "ended_at": 0}'])
def test_a_damaged_exit_record_is_quarantined_and_the_queue_goes_on(site, content):
    site.ok("nodes", write_nodes(site, "localhost 2"), admin=True)
    first = site.submit("sleep", "300")
    record = site.wait_status(first, "running")
    user = record["user"]
    path = os.path.join(site.state, "users", user, "run", "%d.1.exit" % first)
    with open(path, "w") as f:
        f.write(content)
    os.kill(record["runner_pid"], signal.SIGKILL)  # nobody left to overwrite it
    wait_for(lambda: record["runner_pid"] not in qpy_processes(site.home), what="its death")
    second = site.submit("true")
    site.wait_status(second, "done")
    assert wait_checked(site, first, "failed")["reason"].startswith("runner lost")
    assert not os.path.exists(path)
    quarantined = glob.glob(os.path.join(site.state, "users", user, "quarantine", "*"))
    assert [open(p).read() for p in quarantined] == [content]
    out = site.run("check", admin=True).stdout
    assert "quarantine" in out and os.path.basename(quarantined[0]) in out


def test_a_damaged_started_marker_of_a_lost_runner_does_not_wedge_the_queue(site):
    site.ok("nodes", write_nodes(site, "localhost 2"), admin=True)
    first = site.submit("sleep", "300")
    record = site.wait_status(first, "running")
    pgid = site.group(first)
    os.kill(record["runner_pid"], signal.SIGKILL)
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: not group_members(pgid), what="the job's processes to die")
    with open(os.path.join(site.state, "users", record["user"], "run",
                           "%d.1.started" % first), "w") as f:
        f.write("1 go notapgid")
    wait_for(lambda: record["runner_pid"] not in qpy_processes(site.home), what="its death")
    second = site.submit("true")
    site.wait_status(second, "done")
    assert wait_checked(site, first, "failed")["reason"].startswith("runner lost")


def test_a_started_marker_of_another_state_neither_blocks_nor_runs_a_job(site):
    """A marker that names another state (copied in with its files) says nothing about this
    state's job of the same ID and attempt: it is quarantined, and the job runs once."""
    site.ok("ctrlQueue", "pause")
    job = site.submit("true")
    user = site.jobs()[job]["user"]
    path = os.path.join(site.state, "users", user, "run", "%d.1.started" % job)
    with open(path, "w") as f:
        f.write("1@0123456789abcdef go 99999")
    site.ok("ctrlQueue", "continue")
    site.wait_status(job, "done")
    quarantined = glob.glob(os.path.join(site.state, "users", user, "quarantine", "*"))
    assert [open(p).read() for p in quarantined] == ["1@0123456789abcdef go 99999"]
    words = open(path).read().split() if os.path.exists(path) else []
    assert words[:1] != ["1@0123456789abcdef"]


def test_a_marker_is_not_moved_aside_where_the_states_identity_cannot_be_read(site,
                                                                            monkeypatch):
    """_reap on a node does not connect to the DB: if qpy.id cannot be read there at that
    moment, a live job's marker must still be taken for its own (its process group is what
    stops its orphans), not quarantined."""
    job_id = site.submit("sleep", "30")
    row = site.wait_status(job_id, "running")
    site.group(job_id)  # (its marker names its process group)
    identity = os.path.join(site.state, "qpy.id")
    os.rename(identity, identity + ".away")
    try:
        qpy = in_process(site, monkeypatch)
        words = qpy.marker_words(dict(row))
        assert words is not None and len(words) == 3
        assert not glob.glob(os.path.join(site.state, "users", row["user"], "quarantine", "*"))
    finally:
        os.rename(identity + ".away", identity)
        qpy.disconnect()
    site.ok("kill", str(job_id))


def wait_checked(site, job, status):
    """Until the job has this status, with `qpy check` (which starts the tick that notices a
    runner gone) between looks."""
    wait_for(lambda: site.run("check").returncode == 0 and site.status(job) == status,
             what="job %d to be %s" % (job, status))
    return site.jobs()[job]


def test_an_exception_in_a_background_tick_is_logged_where_doctor_points(site):
    site.ok("set", "launch_timeout", "1", admin=True)
    token = os.path.join(site.work, "raise-token")
    open(token, "w").close()
    job = site.submit("true", env={"QPY_RAISE_AT": "tick:claimed@" + token})
    wait_for(lambda: not os.path.exists(token), what="the tick to raise")
    log = os.path.join(site.state, "users", site.jobs()[job]["user"], "errors.log")
    wait_for(lambda: os.path.exists(log) and "Traceback" in open(log).read(), what="the log")
    text = open(log).read()
    assert "QPY_RAISE_AT: tick:claimed" in text and "tick" in text
    doctor = site.run("doctor", admin=True).stdout
    assert log in doctor
    check = site.run("check")
    assert check.returncode == 0 and log in check.stderr and check.stderr.count("\n") == 1
    assert site.run("check").stderr == ""  # said once, not at every check
    # its claim, never launched, is taken back after launch_timeout: a later check sees that
    # a tick is overdue, and that tick runs the job
    wait_for(lambda: site.run("check").returncode == 0 and site.status(job) == "done",
             what="the job to run after all")


def test_the_error_log_is_bounded(site, monkeypatch):
    qpy = in_process(site, monkeypatch)
    try:
        site.ok("restart")
        for n in range(400):
            try:
                raise RuntimeError("number %d " % n + "x" * 2000)
            except RuntimeError:
                qpy.log_exception("test")
        logs = glob.glob(os.path.join(site.state, "users", "*", "errors.log*"))
        assert 1 <= len(logs) <= 2
        assert all(os.path.getsize(p) <= qpy.LOG_LIMIT + 10000 for p in logs)
        assert "number 399" in open(sorted(logs)[0]).read()
    finally:
        qpy.disconnect()


def write_nodes(site, text):
    path = os.path.join(site.home, "nodes")
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


@pytest.mark.parametrize("damage", ["empty", "removed"])
def test_a_used_state_that_lost_its_database_is_refused_not_started_over(site, damage):
    first = site.submit("true")
    site.wait_idle()
    path = os.path.join(site.state, "qpy.db")
    if damage == "empty":
        open(path, "w").close()
    else:
        os.unlink(path)
    for command in (("check",), ("sub", "true"), ("status",)):
        err = site.fails(*command)
        assert "has lost its database" in err and "qpy_admin.py restore" in err, err
    assert not os.path.exists(path) or os.path.getsize(path) == 0  # nothing was made there
    assert first == 1


def test_a_database_of_another_state_is_refused(site, tmp_path):
    site.submit("true")
    site.wait_idle()
    other = str(tmp_path / "other")
    site.ok("check", env={"QPY_STATE": other})
    os.replace(os.path.join(other, "qpy.db"), os.path.join(site.state, "qpy.db"))
    err = site.fails("check")
    assert "is not this state's" in err


def test_a_runner_of_a_removed_state_records_nothing_in_the_new_one(site, tmp_path):
    """The state is removed while a job runs and a new one is made in its place: the old
    runner stops its job and writes nothing there (the new state's job 1 is not ended by it)."""
    state = str(tmp_path / "state")
    env = {"QPY_STATE": state}
    site.ok("check", env=env)
    site.ok("set", "heartbeat", "0.2", admin=True, env=env)
    old = int(site.ok("sub", "sleep 2; echo old >> %s/ran" % site.work, env=env).split()[1])

    def running(job):
        rows = read_db(state, "SELECT runner_pid FROM jobs WHERE id = ? AND status = 'running'",
                       (job,))
        return rows and rows[0]["runner_pid"]
    runner = wait_for(lambda: running(old), what="the old job to run")
    remove_state(state)
    site.ok("check", env=env)  # a new, empty queue there, on purpose (nothing was left)
    site.ok("ctrlQueue", "pause", env=env)
    new = int(site.ok("sub", "sleep 30", env=env).split()[1])
    assert new == old  # (the removed state's IDs cannot be known)
    site.ok("ctrlQueue", "continue", env=env)
    wait_for(lambda: running(new), what="the new job to run")
    wait_for(lambda: not os.path.exists("/proc/%d" % runner), timeout=30,
             what="the old runner to leave")
    assert not os.path.exists(os.path.join(site.work, "ran"))  # its job was stopped
    site.ok("tick", admin=True, env=env)  # (it would harvest what the old runner wrote)
    assert read_db(state, "SELECT status FROM jobs WHERE id = ?", (new,))[0]["status"] == \
        "running"
    site.ok("kill", str(new), env=env)


def test_a_runner_of_a_removed_state_does_not_touch_a_heartbeat_in_the_new_one(site,
                                                                              tmp_path):
    """The old runner's next beat finds the new state's identity before it writes anything:
    no heartbeat file of its job appears in the new state's run directory."""
    state = str(tmp_path / "state")
    env = {"QPY_STATE": state}
    site.ok("check", env=env)
    site.ok("set", "heartbeat", "0.3", admin=True, env=env)
    old = int(site.ok("sub", "sleep 60", env=env).split()[1])
    rows = wait_for(lambda: read_db(state, "SELECT runner_pid, user FROM jobs WHERE id = ? AND "
                                           "status = 'running'", (old,)),
                    what="the old job to run")
    remove_state(state)
    site.ok("check", env=env)
    site.ok("ctrlQueue", "pause", env=env)
    site.ok("sub", "true", env=env)  # (makes the user's run directory there)
    run = os.path.join(state, "users", rows[0]["user"], "run")
    assert os.path.isdir(run)
    wait_for(lambda: not os.path.exists("/proc/%d" % rows[0]["runner_pid"]), timeout=30,
             what="the old runner to leave")
    assert os.listdir(run) == []


def damage_pages(path, first_page=2):
    """Random bytes over every page of an SQLite file from first_page on (page 1 holds the
    header and the schema: the file still opens)."""
    import random
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(16)
        page = int.from_bytes(f.read(2), "big")
        rng = random.Random(7)
        for offset in range((first_page - 1) * page, size, page):
            f.seek(offset)
            f.write(bytes(rng.randrange(256) for _ in range(page)))


def test_a_damaged_database_is_one_line_everywhere_and_takes_no_more_writes(site):
    site.ok("ctrlQueue", "pause")
    for _ in range(30):
        site.submit("-N", "x" * 200, "true")
    path = os.path.join(site.state, "qpy.db")
    damage_pages(path)
    with open(path, "rb") as f:
        damaged = f.read()
    for command in (("check",), ("clean", "all"), ("restart",), ("kill", "all"),
                    ("sub", "true"), ("status",), ("check", "--json")):
        err = site.fails(*command)
        assert "is damaged" in err or "was found damaged" in err, (command, err)
        assert "qpy_admin.py restore" in err, err
    result = site.run("check", admin=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "restore" in result.stdout + result.stderr
    with open(path, "rb") as f:
        assert f.read() == damaged  # nothing wrote into it


def test_restore_brings_a_damaged_state_back_and_never_reuses_an_id(site, tmp_path):
    site.ok("ctrlQueue", "pause")
    first = site.submit("true")
    site.ok("set", "kill_grace", "4", admin=True)
    backup = str(tmp_path / "backup.db")
    site.ok("backup", backup, admin=True)
    assert os.path.exists(backup + ".site")  # (the site's settings, beside it)
    site.ok("set", "kill_grace", "7", admin=True)
    later = site.submit("true")  # after the backup: its job file names it
    damage_pages(os.path.join(site.state, "qpy.db"))
    assert "damaged" in site.fails("check")
    assert "Restored" in site.ok("restore", backup, admin=True)
    assert sorted(site.jobs()) == [first]
    assert site.ok("set", "kill_grace", admin=True) == "kill_grace = 4\n"
    again = site.submit("true")
    assert again > later  # (job_<ID>.out of the lost job is never overwritten)
    site.ok("ctrlQueue", "continue")
    site.wait_status(again, "done")


def test_a_job_file_of_an_older_qpy_still_runs_after_the_upgrade(site):
    """Job files written before they named their job IDs (version 1) are read as they were
    then; one of a newer qpy is refused with the reason."""
    site.ok("ctrlQueue", "pause")
    old, new = site.submit("echo old"), site.submit("echo new")
    for job_id, change in ((old, lambda spec: spec.pop("ids") and spec.pop("version")),
                           (new, lambda spec: spec.update(version=99))):
        path = site.jobs()[job_id]["spec"]
        with open(path) as f:
            spec = json.load(f)
        change(spec)
        with open(path, "w") as f:
            json.dump(spec, f)
    site.ok("ctrlQueue", "continue")
    assert site.wait_status(old, "done") and site.read("job_%d.out" % old) == "old\n"
    record = site.wait_status(new, "failed")
    assert "version 99, written by a newer qpy" in record["reason"]


def test_a_backup_older_than_state_identities_is_restored_into_this_state(site, tmp_path):
    site.ok("ctrlQueue", "pause")
    job = site.submit("true")
    backup = str(tmp_path / "old.db")
    site.ok("backup", backup, admin=True)
    old = sqlite3.connect(backup)
    with old:  # without an identity, as a backup made before schema 6 (its upgrade from
        old.execute("DELETE FROM meta WHERE key = 'state_id'")  # 5 is tested apart)
    old.close()
    assert "Restored" in site.ok("restore", backup, admin=True)
    assert "%d (queue)" % job in site.ok("check")  # upgraded, and this state's


@pytest.mark.parametrize("column, value, says", [
    ("dependencies", "not json", "its dependencies cannot be read"),
    ("refusal", "{broken", None),
    ("attributes", "(" * 100 + "x" + ")" * 100, "its request cannot be used"),
])
def test_one_garbled_row_does_not_stop_the_queue(site, column, value, says):
    """A row written into the shared DB by hand, or stored before today's limits: that job
    is refused or waits with the reason, the others start."""
    site.ok("ctrlQueue", "pause")
    bad, good = site.submit("true"), site.submit("true")
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:
        db.execute("UPDATE jobs SET %s = ? WHERE id = ?" % column, (value, bad))
    db.close()
    site.ok("ctrlQueue", "continue")
    site.wait_status(good, "done")
    if says:
        wait_for(lambda: says in (site.jobs()[bad]["reason"] or ""), what="the reason")
    else:
        site.wait_status(bad, "done")


def test_run_files_of_a_qpy_before_schema_6_are_still_read_for_their_attempt(site):
    """A job running across the upgrade: its runner (the old qpy's) named its files <id>.started
    and <id>.exit. The tick takes its end; a legacy file of another attempt is ignored."""
    site.ok("ctrlQueue", "pause")
    job, other = site.submit("true"), site.submit("true")
    boot = open("/proc/%d/stat" % os.getpid()).read().rpartition(")")[2].split()[19]
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:  # their runner alive (this test process): only an exit record ends them
        db.execute("UPDATE jobs SET status = 'running', node = 'localhost', attempt = 1, "
                   "started_at = 1, runner_pid = ?, runner_boot = ? WHERE id IN (?, ?)",
                   (os.getpid(), boot, job, other))
    db.close()
    run = os.path.join(site.state, "users", site.jobs()[job]["user"], "run")
    for job_id, attempt in ((job, 1), (other, 2)):
        with open(os.path.join(run, "%d.started" % job_id), "w") as f:
            f.write("%d go 1" % attempt)
        with open(os.path.join(run, "%d.exit" % job_id), "w") as f:
            json.dump({"attempt": attempt, "status": "done", "exit_code": 0,
                       "ended_at": time.time()}, f)
    site.ok("tick", admin=True)
    assert site.status(job) == "done"
    assert site.status(other) == "running"  # (its legacy files are another attempt's)


def test_a_claim_that_leaves_a_pool_without_runner_unstarted_owes_it_a_cancel(site, monkeypatch):
    """Through a login node nothing asks the site whether a job handed over may still run:
    a claim there that is queued again, undone or failed (not started) leaves its attempt on
    the pool's list, to be cancelled there once it answers; a claim elsewhere does not."""
    site.ok("check")
    site.ok("add", "hpc", "type=slurm", "login=hpc", "partition=p", "cores=4", admin=True)
    site.ok("ctrlQueue", "pause")
    jobs = [site.submit("true") for _ in range(4)]
    qpy = in_process(site, monkeypatch)
    try:
        def claimed(job_id, node):
            qpy.atomically(lambda db: db.execute(
                "UPDATE jobs SET status = 'starting', node = ?, attempt = attempt + 1, "
                "claimed_at = ? WHERE id = ?", (node, time.time(), job_id)))
            return qpy.atomically(lambda db: qpy.job_row(db, job_id), write=False)
        for job_id, leave in zip(jobs, (lambda db, job: qpy.return_to_queue(db, job, "x"),
                                        lambda db, job: qpy.undo(db, job, "x"),
                                        lambda db, job: qpy.fail_claim(db, job, "x"))):
            job = claimed(job_id, "hpc")
            assert qpy.atomically(lambda db: leave(db, job))
        started = claimed(jobs[3], "hpc")
        assert qpy.atomically(lambda db: qpy.start_in_pool(db, started, time.time(), "7"))
        local = claimed(qpy.atomically(lambda db: db.execute(
            "SELECT id FROM jobs WHERE status = 'queue'").fetchone()[0], write=False),
            "localhost")
        assert qpy.atomically(lambda db: qpy.return_to_queue(db, local, "x"))
        lost = qpy.atomically(lambda db: dict(db.execute(
            "SELECT name, lost FROM node_health WHERE lost IS NOT NULL").fetchall()), write=False)
        user = site.jobs()[jobs[0]]["user"]
        assert json.loads(lost.pop("hpc")) == [[job_id, 1, user] for job_id in jobs[:3]]
        assert lost == {}  # (not the started one, nor the claim of a host)
    finally:
        qpy.disconnect()


def test_leftovers_a_node_does_not_take_are_shown_and_tried_again_later(site, monkeypatch):
    """What a given-up attempt left on a node that cannot be reached (here: a name that does
    not resolve, real ssh) is not tried again at every watch: each failure doubles the wait
    before the next try; qpy_admin.py list, check and status --json show it, the log says
    why. (The same list holds the cancels owed to a pool through a login node.)"""
    site.ok("check")
    site.ok("add", "node9", "address=node9.invalid", "cores=4", admin=True)
    site.ok("ctrlQueue", "pause")
    job_id = site.submit("true")
    qpy = in_process(site, monkeypatch)
    user = site.jobs()[job_id]["user"]
    try:
        qpy.atomically(lambda db: db.execute(
            "UPDATE jobs SET status = 'running', node = 'node9', attempt = 1, started_at = ? "
            "WHERE id = ?", (time.time(), job_id)))
        job = qpy.atomically(lambda db: qpy.job_row(db, job_id), write=False)
        qpy.atomically(lambda db: qpy.remember_lost_job(db, job))

        def owed():
            return json.loads(qpy.atomically(lambda db: db.execute(
                "SELECT lost FROM node_health WHERE name = 'node9'").fetchone()[0],
                write=False))
        assert owed() == [[job_id, 1, user]]
        qpy.stop_leftovers(user)
        [[owed_id, attempt, owner, tries, at]] = owed()
        assert (owed_id, attempt, owner, tries) == (job_id, 1, user, 1)
        qpy.stop_leftovers(user)  # (too soon: not tried)
        assert owed() == [[job_id, 1, user, 1, at]]
        qpy.atomically(lambda db: db.execute(  # (as if the wait had passed)
            "UPDATE node_health SET lost = ? WHERE name = 'node9'",
            (json.dumps([[job_id, 1, user, 1, at - qpy.LEFTOVER_RETRY]]),)))
        qpy.stop_leftovers(user)
        [[_, _, _, tries, again]] = owed()
        assert tries == 2 and again > at - qpy.LEFTOVER_RETRY
        assert qpy.leftover_due_at(2, again) == again + 2 * qpy.LEFTOVER_RETRY
        log = qpy.log_path(user)
    finally:
        qpy.disconnect()
    with open(log) as f:
        assert "could not stop the leftovers of the attempts %d.1 on node9: " % job_id in f.read()
    listed = site.ok("list", admin=True)
    assert ("job %d's attempt 1 (%s) is still to stop there: 2 tries failed"
            % (job_id, user)) in listed
    checked = site.run("check", admin=True)
    assert checked.returncode != 0 and "node node9: job %d's attempt 1" % job_id in checked.stdout
    nodes = {node["name"]: node for node in json.loads(site.ok("status", "--json"))["nodes"]}
    assert nodes["node9"]["leftovers"] == 1 and nodes["localhost"]["leftovers"] == 0


@pytest.mark.parametrize("forged", ['"no list"', '[[1, 1]]', '[["1", 1, "x"]]',
                                    '[[1, 1, "x", "2", 0]]', 'not json'])
def test_a_forged_list_of_leftovers_is_read_as_empty(site, monkeypatch, forged):
    """Any member may write node_health: an entry of another shape is skipped, not a crash
    of every watch."""
    site.ok("check")
    qpy = in_process(site, monkeypatch)
    try:
        assert qpy.leftover_entries(forged) == []
        assert qpy.leftover_entries('[[1, 2, "x"], %s]' % forged.strip("[]")
                                    if forged.startswith("[[") else '[[1, 2, "x"]]') \
            == [(1, 2, "x", 0, 0.0)]
    finally:
        qpy.disconnect()
