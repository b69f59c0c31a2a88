"""Slurm pools: qpy hands jobs to a real Slurm (tests/slurm.py starts a private one) and
follows them. Skipped without root or Debian's slurm-wlm and munge; `make test` installs them.

The site's timer (qpy_admin.py tick every few seconds) is played by a thread: a runner inside
Slurm does not tick (Slurm's machines may not reach the lab's nodes)."""
import os
import signal
import sqlite3
import sys
import threading
import time

import pytest

import slurm as slurm_cluster
from conftest import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import qpy  # noqa: E402  (the pure parts, tested in-process)

POOL = "hpc type=slurm partition=compute cores=8 max_jobs=%d attributes=big"


@pytest.fixture(scope="module")
def slurm():
    why = slurm_cluster.why_unavailable()
    if why:
        pytest.skip("Slurm pool tests: " + why)
    info = slurm_cluster.up()
    yield info
    slurm_cluster.down()


class Ticker:
    """The site's periodic tick, as root, every `every` seconds, until stopped."""

    def __init__(self, site, every=0.5):
        self.site, self.every = site, every
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stopping.wait(self.every):
            self.site.run("tick", admin=True)

    def stop(self):
        self.stopping.set()
        self.thread.join()


@pytest.fixture
def pool(site, slurm):
    """A personal site (run by root, as the tests are) whose only open node is a Slurm pool."""
    site.env["SLURM_CONF"] = slurm["conf"]

    def make(max_jobs=20):
        site.ok("check")  # creates the state with its 'localhost' node
        site.ok("drain", "localhost", admin=True)
        site.ok("add", *(POOL % max_jobs).split(), admin=True)
        site.ok("config", "checkFMT", r"%j %s %I %n %r\n")
        return site
    yield make
    for job in site.jobs().values():  # nothing left in Slurm for the next test
        if job["external_id"]:
            slurm_cluster.slurm("scancel", job["external_id"], check=False)


def squeue(*args):
    return slurm_cluster.slurm("squeue", "--noheader", *args).stdout


def slurm_state(external_id):
    return squeue("--states=all", "--format=%T", "--jobs=" + external_id).strip()


def test_a_job_runs_through_slurm_and_ends_as_on_any_node(pool):
    site = pool()
    first = site.submit("-m", "0.2", "hostname")
    failing = site.submit("-m", "0.2", "exit 3")
    job = site.wait_status(first, "done")
    assert job["node"] == "hpc" and job["external_id"].isdigit()
    assert site.read("job_%d.out" % first).strip() == os.uname().nodename
    wait_for(lambda: slurm_state(job["external_id"]) == "COMPLETED", 30, "Slurm to end it")
    failed = site.wait_status(failing, "failed")
    assert failed["exit_code"] == 3 and failed["reason"] == "exit code 3"
    # for Slurm, qpy's runner did its work: the job's verdict is qpy's
    wait_for(lambda: slurm_state(failed["external_id"]) == "COMPLETED", 30, "Slurm to end it")
    # check shows the Slurm job ID (%I); --json has it too
    assert "%d done %s hpc \n" % (first, job["external_id"]) in site.ok("check")
    assert '"external_id": "%s"' % job["external_id"] in site.ok("check", "--json")
    # the runner's accounting is there as on any node, and its files are gone but Slurm's
    # output of the batch script, kept with the job until qpy clean (it tells why a job failed)
    assert job["cpu_time"] is not None and job["started_at"] and job["ended_at"]
    run = os.path.join(site.state, "users", "root", "run")
    assert sorted(os.listdir(run)) == sorted(["%d.1.batch" % first, "%d.1.batch" % failing])
    site.ok("clean", str(failing))
    assert os.listdir(run) == ["%d.1.batch" % first]


def test_a_tick_killed_after_its_sbatch_loses_nothing(pool, tmp_path):
    site = pool()
    token = tmp_path / "token"
    token.write_text("")
    # the tick that `sub` starts hands the job to Slurm and dies before it stores the Slurm ID
    job_id = site.submit("-m", "0.2", "echo $QPY_JOB_ID >> ran",
                         env={"QPY_CRASH_AT": "tick:sbatched@%s" % token})
    job = site.wait_status(job_id, "done")
    assert not token.exists()  # (the tick did die there)
    assert job["external_id"].isdigit()  # the runner had it from Slurm
    assert site.read("ran").split() == [str(job_id)]
    wait_for(lambda: slurm_state(job["external_id"]) == "COMPLETED", 30, "Slurm to end it")


def test_the_request_becomes_slurm_options(pool):
    site = pool()
    site.ok("ctrlQueue", "pause")
    job_id = site.submit("-n", "2", "-m", "0.5", "-t", "10:00", "-N", "asked", "sleep 30")
    site.ok("ctrlQueue", "continue")
    job = site.wait_status(job_id, "running")
    shown = slurm_cluster.slurm("scontrol", "show", "job", job["external_id"]).stdout
    assert "NumCPUs=2" in shown and "MinMemoryNode=512M" in shown
    assert "TimeLimit=00:12:00" in shown  # qpy's limit, and 2 minutes for qpy to end it first
    assert "JobName=qpy_%d" % job_id in shown and "WorkDir=%s" % site.work in shown
    assert "\nhpc (Slurm: 1 of 20 jobs)          2     8" in site.ok("status")
    site.ok("kill", str(job_id))
    site.wait_status(job_id, "killed")


def test_environment_inside_slurm(pool):
    site = pool()
    job_id = site.submit("-m", "0.2", "echo $QPY_JOB_ID $QPY_NODE $QPY_N_CORES $SLURM_JOB_ID")
    job = site.wait_status(job_id, "done")
    assert site.read("job_%d.out" % job_id).split() == [str(job_id), "hpc", "1", job["external_id"]]


def test_a_time_limit_ends_the_job_failed_inside_slurm(pool):
    site = pool()
    job_id = site.submit("-m", "0.2", "-t", "0:02", "sleep 300")
    job = site.wait_status(job_id, "failed", timeout=90)
    assert job["reason"] == "time limit"
    wait_for(lambda: slurm_state(job["external_id"]) == "COMPLETED", 30, "Slurm to see it end")


def test_slurms_own_time_limit_is_named_as_a_time_limit_not_a_cancel(pool):
    """No -t: the pool's time= (one minute) is Slurm's limit; Slurm warns the runner with
    SIGUSR1 before its SIGTERM, so the job ends 'time limit in Slurm', not 'terminated by
    SIGTERM' as an administrator's scancel does."""
    site = pool()
    site.ok("add", *(POOL % 20).split(), "time=1", admin=True)
    job_id = site.submit("-m", "0.2", "sleep 600")
    job = site.wait_status(job_id, "failed", timeout=240)
    assert job["reason"] == "time limit in Slurm"


def test_kill_cancels_the_job_in_slurm(pool):
    site = pool()
    running = site.submit("-m", "0.2", "sleep 300")
    job = site.wait_status(running, "running")
    assert job["external_id"] in squeue("--format=%i")
    assert site.ok("kill", str(running)) == "1 job will be killed.\n"
    job = site.wait_status(running, "killed")
    assert job["reason"] == "killed by the user"
    wait_for(lambda: job["external_id"] not in squeue("--format=%i"), 30, "squeue to drop it")


def test_a_kill_while_slurmctld_is_down_reaches_the_job_once_it_is_back(pool, slurm):
    site = pool()
    job_id = site.submit("-m", "0.2", "sleep 300")
    site.wait_status(job_id, "running")
    slurm_cluster.stop_controller()  # the job goes on on its node; scancel cannot reach Slurm
    try:
        assert site.ok("kill", str(job_id)) == "1 job will be killed.\n"
        assert site.jobs()[job_id]["status"] == "running"
    finally:
        slurm_cluster.start_controller()
    ticker = Ticker(site)  # the site's timer sends the kill again
    try:
        job = site.wait_status(job_id, "killed", timeout=120)
    finally:
        ticker.stop()
    assert job["reason"] == "killed by the user"


def test_kill_of_a_job_waiting_in_slurm_cancels_it_there(pool):
    site = pool()
    site.ok("add", *(POOL % 20).split(), "extra=--begin=now+1hour", admin=True)  # held in Slurm
    job_id = site.submit("-m", "0.2", "true")
    wait_for(lambda: site.jobs()[job_id]["external_id"], 30, "the sbatch")
    job = site.jobs()[job_id]
    assert job["status"] == "starting"
    site.run("tick", admin=True)
    assert site.jobs()[job_id]["reason"].startswith("waiting in Slurm (")
    assert "%d queue %s None waiting in Slurm" % (job_id, job["external_id"]) in site.ok("check")
    assert site.ok("kill", str(job_id)) == "1 job removed from the queue.\n"
    assert site.status(job_id) == "undone"
    wait_for(lambda: slurm_state(job["external_id"]) == "CANCELLED", 30, "scancel")


def test_an_administrators_scancel_fails_the_job_with_the_reason(pool):
    site = pool()
    job_id = site.submit("-m", "0.2", "sleep 300")
    job = site.wait_status(job_id, "running")
    slurm_cluster.slurm("scancel", job["external_id"])  # not the user's qpy kill
    job = site.wait_status(job_id, "failed")
    assert job["reason"] == "terminated by SIGTERM"


def test_a_runner_lost_inside_slurm_is_failed_from_squeue(pool):
    site = pool()
    job_id = site.submit("-m", "0.2", "sleep 300")
    job = site.wait_status(job_id, "running")
    pgid = site.group(job_id)
    os.kill(job["runner_pid"], signal.SIGKILL)  # no exit record: only Slurm knows it ended
    os.killpg(pgid, signal.SIGKILL)
    ticker = Ticker(site)
    try:
        job = site.wait_status(job_id, "failed", timeout=90)
    finally:
        ticker.stop()
    assert job["reason"] in ("failed in Slurm without an exit record",
                             "cancelled in Slurm"), job["reason"]


def test_a_pool_that_does_not_answer_does_not_delay_the_labs_own_node(pool, slurm):
    """With slurmctld gone, each Slurm call takes seconds to fail: a job for the lab's own
    node is claimed before the pool's follow-up has failed (the pool is still up then), not
    after it (asked in the same pass, the pool went down in the same transaction)."""
    site = pool()
    site.ok("resume", "localhost", admin=True)
    in_slurm = site.submit("-a", "hpc", "-m", "0.2", "sleep 300")
    site.wait_status(in_slurm, "running")
    slurm_cluster.stop_controller()
    try:
        lab_job = site.submit("-a", "localhost", "sleep", "1")
        site.wait_status(lab_job, "starting", "running", "done", timeout=60)
        assert node_states(site)["hpc"] == "up"
        wait_for(lambda: node_states(site)["hpc"] == "down", 120, "the pool's follow to fail")
    finally:
        slurm_cluster.start_controller()
    site.wait_status(lab_job, "done")
    site.ok("kill", str(in_slurm))


def test_slurmctld_down_jobs_wait_with_the_reason_then_run_once(pool, slurm):
    site = pool()
    site.ok("set", "probe_interval", "1", admin=True)
    slurm_cluster.stop_controller()
    try:
        jobs = [site.submit("-m", "0.2", "echo $QPY_JOB_ID >> ran") for _ in range(3)]
        wait_for(lambda: all(site.jobs()[j]["status"] == "queue" and site.jobs()[j]["reason"]
                             for j in jobs), 120, "the failed sbatch to be recorded")
        reasons = {site.jobs()[j]["reason"] for j in jobs}
        assert all("hpc" in reason for reason in reasons), reasons
        assert any("Unable to contact slurm controller" in reason for reason in reasons), reasons
        state = site.ok("status")
        assert "down" in state, state
    finally:
        slurm_cluster.start_controller()
    ticker = Ticker(site)
    try:
        for job_id in jobs:
            site.wait_status(job_id, "done", timeout=180)
    finally:
        ticker.stop()
    assert sorted(site.read("ran").split()) == sorted(str(j) for j in jobs)  # each ran once
    assert all(site.jobs()[j]["attempt"] >= 1 for j in jobs)


def test_a_job_slurm_refuses_waits_alone_and_the_pool_stays_up(pool):
    site = pool()
    site.ok("set", "probe_interval", "1", admin=True)
    refused = site.submit("-m", "100000", "hostname")  # more memory than Slurm's node has
    wait_for(lambda: "refused it" in (site.jobs()[refused]["reason"] or ""), 60, "the refusal")
    job = site.jobs()[refused]
    assert job["status"] == "queue" and job["node"] is None and job["external_id"] is None
    # (the lab's node is too small for it: no reason of its own to wait)
    assert job["reason"].startswith("waiting for a node: hpc refused it (") \
        or job["reason"].startswith("hpc refused it ("), job["reason"]
    assert "Requested node configuration is not available" in job["reason"]
    assert node_states(site)["hpc"] == "up"  # neither down nor drained
    other = site.submit("-m", "0.2", "hostname")  # the pool still takes the others
    site.wait_status(other, "done")
    attempt = job["attempt"]
    ticker = Ticker(site)  # after probe_interval, sbatch is asked again (and refuses again)
    try:
        wait_for(lambda: site.jobs()[refused]["attempt"] > attempt, 60, "another sbatch")
    finally:
        ticker.stop()
    assert site.jobs()[refused]["status"] == "queue"
    assert node_states(site)["hpc"] == "up"
    assert site.ok("kill", str(refused)) == "1 job removed from the queue.\n"
    assert site.status(refused) == "undone"


def node_states(site):
    """{node: its state}, as qpy_admin.py list shows them."""
    return dict(line.split()[:2] for line in site.ok("list", admin=True).splitlines())


def test_doctor_checks_the_pools(pool):
    site = pool()
    site.ok("add", "ghost", "type=slurm", "partition=nosuch", "cores=4", admin=True)
    out = site.run("doctor", admin=True).stdout
    assert "ok       Slurm pool hpc (partition compute)\n" in out, out
    assert "PROBLEM  Slurm pool ghost (partition nosuch): partition nosuch is missing (" in out


def test_200_jobs_through_a_pool_of_20(pool):
    site = pool(max_jobs=20)
    site.ok("ctrlQueue", "pause")
    site.ok("sub", "-m", "0.1", "--array", "1-200", "echo $QPY_ARRAY_INDEX >> ran")
    bin_dir = os.path.join(site.home, "bin")  # count the squeue calls (the real squeue runs)
    os.makedirs(bin_dir)
    log = os.path.join(site.home, "squeue.log")
    with open(os.path.join(bin_dir, "squeue"), "w") as f:
        f.write('#!/bin/sh\necho "$@" >> %s\nexec /usr/bin/squeue "$@"\n' % log)
    os.chmod(os.path.join(bin_dir, "squeue"), 0o755)
    site.env["PATH"] = bin_dir + ":" + site.env["PATH"]
    passes_before = meta(site, "tick_passes")
    site.ok("ctrlQueue", "continue")
    most, stop = [0, 0], threading.Event()

    def watch():  # what Slurm holds, and what qpy says it handed over, never above 20
        while not stop.is_set():
            in_slurm = len(squeue("--name=" + ",".join("qpy_%d" % i for i in range(1, 201)),
                                  "--format=%i").split())
            in_pool = sum(1 for job in site.jobs().values() if job["status"] in
                          ("starting", "running"))
            most[0], most[1] = max(most[0], in_slurm), max(most[1], in_pool)
            time.sleep(0.2)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ticker = Ticker(site, every=0.3)
    try:
        site.wait_idle(timeout=600)
    finally:
        ticker.stop()
        stop.set()
        watcher.join()
    jobs = site.jobs()
    assert [job["status"] for job in jobs.values()] == ["done"] * 200, [
        (job["id"], job["status"], job["reason"]) for job in jobs.values()
        if job["status"] != "done"]
    assert sorted(map(int, site.read("ran").split())) == list(range(1, 201))
    assert 0 < most[0] <= 20 and 0 < most[1] <= 20, most
    assert len({job["external_id"] for job in jobs.values()}) == 200
    calls = open(log).read().splitlines()
    passes = meta(site, "tick_passes") - passes_before
    assert len(calls) <= passes, (len(calls), passes)  # one squeue per pass at most
    assert max(len(call.split("--jobs=")[1].split(",")) for call in calls) > 1  # all at once


def meta(site, key):
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0  # (no tick ran yet)
    finally:
        db.close()


def test_a_user_job_is_handed_to_slurm_as_its_owner(lab, slurm):
    site = lab("hpc type=slurm partition=compute cores=4 max_jobs=4\n")
    site.admin("finish")  # nothing starts until root's tick
    job_id = site.submit("alice", "-m", "0.2", "id -un")
    env = {"SLURM_CONF": slurm["conf"]}
    site.admin("start", env=env)  # root's tick hands it to Slurm, as alice
    job = site.wait_status(job_id, "done", timeout=90)
    assert site.output("alice", job_id).strip() == "alice"
    owner = squeue("--states=all", "--format=%u", "--jobs=" + job["external_id"]).strip()
    assert site.logical(owner) == "alice"
    assert "alice" in site.ok("alice", "check", env=env)


# --- without Slurm: the nodes file and what squeue's states mean -----------------------------

@pytest.mark.parametrize("line, problem", [
    ("hpc type=slurm cores=4", "needs its partition"),
    ("hpc type=slurm partition=p cores=4 max_jobs=0", "max_jobs must be a whole number"),
    ("hpc type=slurm partition=p cores=4 address=login", "not by an address"),
    ("hpc type=pbs cores=4", "type must be host or slurm"),
    ("node1 cores=4 partition=p", "partition is only for Slurm pools"),
    ("hpc type=slurm partition=p cores=4 extra='--exclusive", "No closing quotation"),
])
def test_bad_pool_lines_are_refused(site, line, problem):
    site.ok("check")
    before = site.dump()
    path = os.path.join(site.home, "nodes")
    with open(path, "w") as f:
        f.write("localhost 2\n" + line + "\n")
    error = site.fails("nodes", path, admin=True)
    assert "line 2" in error and problem in error, error
    assert site.dump() == before


def test_a_pool_line_is_read_and_listed(site):
    site.ok("check")
    site.ok("add", "hpc", "type=slurm", "partition=compute", "cores=64", "max_jobs=50",
            "account=lab", "qos=short", "extra=--constraint=avx2 --exclusive", admin=True)
    listed = site.ok("list", admin=True)
    assert ("type=slurm partition=compute max_jobs=50 account=lab qos=short "
            "extra='--constraint=avx2 --exclusive' cores=64") in listed
    node = qpy.parse_node_line(["hpc", "type=slurm", "partition=compute", "cores=64",
                                "qos=short", "extra=--constraint=avx2 --exclusive"])
    job = {"id": 7, "user": "alice", "n_cores": 4, "mem": 2.5, "gpus": 1, "time_limit": 90.0,
           "cwd": "/home/alice/w", "attempt": 1, "options": node["options"]}
    argv = qpy.sbatch_command(job)
    assert argv[:2] == ["sbatch", "--parsable"]
    for option in ("--partition=compute", "--cpus-per-task=4", "--mem=2560M", "--gres=gpu:1",
                   "--time=4", "--qos=short", "--constraint=avx2", "--exclusive",
                   "--chdir=/home/alice/w", "--job-name=qpy_7", "--signal=B:USR1@120"):
        assert option in argv, (option, argv)
    assert " -I -c " in argv[-1]  # (nothing imported from that directory, which a row names)
    assert argv[-2] == "--wrap" and argv[-1].startswith("trap '' USR1; exec env QPY_STATE=")
    assert argv[-1].endswith("_slurm 7 1")
    # a job without a time limit gets the pool's time=, when it has one
    timed = qpy.parse_node_line(["hpc", "type=slurm", "partition=compute", "cores=8",
                                 "time=2-00"])
    assert "--time=2-00" in qpy.sbatch_command(dict(job, time_limit=None,
                                                    options=timed["options"]))
    assert not any(option.startswith("--time") for option in qpy.sbatch_command(
        dict(job, time_limit=None)))
    assert "--time=4" in qpy.sbatch_command(dict(job, options=timed["options"]))
    err = site.fails("add", "hpc2", "type=slurm", "partition=compute", "cores=8", "time=soon",
                     admin=True)
    assert "time=soon is not a time limit" in err


def test_the_lab_nodes_come_before_the_pool():
    from conftest import sched_job, sched_node
    nodes = [sched_node("hpc", 8, kind="slurm", max_jobs=2), sched_node("n1", 2)]
    jobs = [sched_job(i) for i in range(1, 6)]
    placements, pending = qpy.schedule(nodes, jobs, {})
    assert placements == [(1, "n1"), (2, "n1"), (3, "hpc"), (4, "hpc")]  # max_jobs=2
    assert pending == {5: "waiting for resources"}
    big = [sched_job(1, cores=4)]  # only the pool has 4 cores
    assert qpy.schedule(nodes, big, {})[0] == [(1, "hpc")]
    targeted = [sched_job(1, attributes="hpc")]  # a node's name is one of its labels
    assert qpy.schedule(nodes, targeted, {})[0] == [(1, "hpc")]


def test_a_job_the_pool_refused_goes_elsewhere_or_waits_with_slurms_words():
    from conftest import sched_job, sched_node
    nodes = [sched_node("hpc", 8, kind="slurm", max_jobs=4), sched_node("n1", 1)]
    refusals = {1: {"node": "hpc", "why": "sbatch: error: Invalid qos"}}
    jobs = [sched_job(1, on=None), sched_job(2)]
    # job 1 takes the lab node, and job 2, which the pool did not refuse, goes to the pool
    assert qpy.schedule(nodes, jobs, {}, refusals=refusals) == ([(1, "n1"), (2, "hpc")], {})
    busy = [sched_job(9, status="running", on="n1")] + jobs
    assert qpy.schedule(nodes, busy, {}, refusals=refusals) == (
        [(2, "hpc")], {1: "waiting for resources"})
    nodes[1]["state"] = "drained"
    assert qpy.schedule(nodes, jobs, {}, refusals=refusals) == ([(2, "hpc")], {
        1: "waiting for a node: hpc refused it (sbatch: error: Invalid qos), n1 drained"})


def test_a_job_only_the_pool_can_run_says_why_the_pool_does_not():
    """-n 2 with a 1-core lab node: the lab node is no reason to wait 'for resources'."""
    from conftest import sched_job, sched_node
    nodes = [dict(sched_node("hpc", 8, kind="slurm"), state="down",
                  state_reason="squeue failed: Unable to contact slurm controller"),
             sched_node("n1", 1)]
    assert qpy.schedule(nodes, [sched_job(1, cores=2)], {}) == ([], {
        1: "waiting for a node: hpc down (squeue failed: Unable to contact slurm controller)"})
    refusals = {1: {"node": "hpc", "why": "sbatch: error: Invalid qos"}}
    nodes[0]["state"] = "up"
    assert qpy.schedule(nodes, [sched_job(1, cores=2)], {}, refusals=refusals) == ([], {
        1: "waiting for a node: hpc refused it (sbatch: error: Invalid qos)"})


@pytest.mark.parametrize("state, starting, status, reason", [
    ("TIMEOUT", False, "failed", "time limit in Slurm"),
    ("NODE_FAIL", False, "failed", "node failure in Slurm"),
    ("CANCELLED", False, "failed", "cancelled in Slurm"),
    ("OUT_OF_MEMORY", False, "failed", "out of memory in Slurm"),
    (None, False, "failed", "vanished from Slurm"),
    ("COMPLETED", True, "failed", "Slurm job 42 ended before qpy's runner started it: COMPLETED"),
    ("PENDING", True, "starting", "waiting in Slurm (Priority)"),
    ("RUNNING", False, "running", None),
])
def test_what_slurm_says_of_a_job_without_an_exit_record(tmp_path, monkeypatch, state, starting,
                                                         status, reason):
    monkeypatch.setenv("QPY_STATE", str(tmp_path / "state"))
    qpy.disconnect()
    try:
        qpy.atomically(lambda db: db.execute(
            "INSERT INTO jobs (user, status, command, cwd, spec, n_cores, mem, position, "
            "queued_at, node, attempt, external_id) VALUES ('alice', ?, 'x', '/', '/none', 1, 0, 1, "
            "0, 'hpc', 1, '42')", ("starting" if starting else "running",)))

        def follow(db):
            job = db.execute("SELECT * FROM jobs").fetchone()
            qpy.slurm_fate(db, job, (state, "Priority") if state else None)
            return dict(db.execute("SELECT status, reason FROM jobs").fetchone())
        assert qpy.atomically(follow) == {"status": status, "reason": reason}
    finally:
        qpy.disconnect()
