"""Beyond the original: GPUs, thread counts, and the other Slurm-style features."""
import os
import shlex

from conftest import QPY, wait_for

HOLD = "echo $CUDA_VISIBLE_DEVICES $QPY_GPUS; while [ ! -e stop-$QPY_JOB_ID ]; do sleep 0.1; done"


def nodes(site, text):
    path = os.path.join(site.work, "nodes")
    with open(path, "w") as f:
        f.write(text + "\n")
    site.ok("nodes", path, admin=True)


def test_gpus_are_distinct_devices(site):
    nodes(site, "localhost cores=4 gpus=2")
    jobs = [site.submit("-g", "1", HOLD) for _ in range(3)]
    wait_for(lambda: [site.jobs()[j]["status"] for j in jobs] == ["running", "running", "queue"],
             what="two GPU jobs running")
    wait_for(lambda: all(site.read("job_%d.out" % j) for j in jobs[:2]), what="their output")
    outputs = sorted(site.read("job_%d.out" % j) for j in jobs[:2])
    assert outputs == ["0 0\n", "1 1\n"]
    site.ok("check")
    wait_for(lambda: site.jobs()[jobs[2]]["reason"] == "waiting for resources",
             what="the pending reason")
    assert any(line.split()[-2:] == ["2", "2"] for line in site.ok("status").splitlines()
               if line.startswith("localhost"))
    open(os.path.join(site.work, "stop-%d" % jobs[0]), "w").close()
    site.wait_status(jobs[2], "running")
    wait_for(lambda: site.read("job_%d.out" % jobs[2]), what="its output")
    assert site.read("job_%d.out" % jobs[2]) == site.read("job_%d.out" % jobs[0])  # reused
    assert "no node with 1 cores and 5 GB has 3 GPUs" in site.fails("sub", "-g", "3", "true")
    assert "Invalid value for --gpus: -1." in site.fails("sub", "-g", "-1", "true")
    site.ok("kill", "all")


def test_gpus_from_a_directive_and_thread_counts(site):
    nodes(site, "localhost cores=4 gpus=1")
    with open(os.path.join(site.work, "job.sh"), "w") as f:
        f.write("#!/bin/sh\n#QPY gpus=1; n_cores=3\necho $QPY_GPUS $OMP_NUM_THREADS "
                "$MKL_NUM_THREADS $OPENBLAS_NUM_THREADS\n")
    os.chmod(os.path.join(site.work, "job.sh"), 0o755)
    job = site.submit("./job.sh")
    mine = site.submit("-n", "2", "echo $OMP_NUM_THREADS", env={"OMP_NUM_THREADS": "7"})
    site.wait_idle()
    assert site.read("job_%d.out" % job) == "0 3 3 3\n"
    assert site.read("job_%d.out" % mine) == "7\n"  # the user's own setting wins


def test_dependencies(site):
    nodes(site, "localhost cores=4")
    first = site.submit(HOLD)
    ok = site.submit("--afterok", str(first), "echo ok")
    anyway = site.submit("--after", str(first), "echo anyway")
    notok = site.submit("--afternotok", str(first), "echo notok")
    chained = site.submit("--afterok", str(notok), "echo chained")
    site.wait_status(first, "running")
    site.ok("check")
    wait_for(lambda: site.jobs()[ok]["reason"] == "waiting for job %d (afterok)" % first,
             what="the pending reason")
    assert site.status(ok) == "queue"
    open(os.path.join(site.work, "stop-%d" % first), "w").close()
    site.wait_idle()
    jobs = site.jobs()
    assert [jobs[j]["status"] for j in (first, ok, anyway, notok, chained)] == \
        ["done", "done", "done", "undone", "undone"]
    assert jobs[notok]["reason"] == "dependency never satisfied: job %d done" % first
    assert jobs[chained]["reason"] == "dependency never satisfied: job %d undone" % notok
    assert "does not exist" in site.fails("sub", "--afterok", "999", "true")
    assert "--after needs job IDs" in site.fails("sub", "--after", "x", "true")


def test_arrays_run_at_most_K_at_once(site):
    nodes(site, "localhost cores=4")
    out = site.ok("sub", "--array", "1-5%2", HOLD.replace("echo", "echo $QPY_ARRAY_INDEX"))
    assert out == "Jobs 1-5 received (array 1-5%2).\n"
    wait_for(lambda: sum(j["status"] == "running" for j in site.jobs().values()) == 2,
             what="two array jobs running")
    assert site.jobs()[3]["reason"] == "array limit: 2 running"
    for job_id in range(1, 6):
        site.wait_status(job_id, "running")
        open(os.path.join(site.work, "stop-%d" % job_id), "w").close()
        assert sum(j["status"] == "running" for j in site.jobs().values()) <= 2
    site.wait_idle()
    assert [site.read("job_%d.out" % j).split()[0] for j in range(1, 6)] == \
        ["1", "2", "3", "4", "5"]
    site.ok("config", "checkFMT", r"%j %i\n")
    assert site.ok("check", "2-3") == "2 2\n3 3\n"
    assert site.ok("clean", "1-5") == "5 finished jobs removed.\n"
    assert "--array needs indices" in site.fails("sub", "--array", "1-x", "true")


def test_time_limit(site):
    site.ok("set", "kill_grace", "1", admin=True)
    job = site.submit("-t", "0:01", "trap '' TERM; sleep 60")  # ignores TERM: KILL follows
    record = site.wait_status(job, "failed")
    assert record["reason"] == "time limit" and record["signal"] == 9
    site.ok("config", "checkFMT", r"%L\n")
    assert site.ok("check") == "0:00:01\n"
    for bad in ("0", "x", "1:2:3:4", "-5"):
        assert "Invalid value for --time" in site.fails("sub", "-t", bad, "true")
    with open(os.path.join(site.work, "job.sh"), "w") as f:
        f.write("#!/bin/sh\n#QPY time=1-00:00:00\ntrue\n")
    os.chmod(os.path.join(site.work, "job.sh"), 0o755)
    limited = site.submit("./job.sh")
    assert site.jobs()[limited]["time_limit"] == 86400


def test_names_wait_and_tail(site):
    job = site.submit("-N", "warmup", "echo one; sleep 0.5; echo two")
    bad = site.submit("exit 4")
    assert site.run("wait", str(job), str(bad)).returncode == 1
    result = site.run("wait", str(job))
    assert result.returncode == 0 and result.stdout == "1 job ended: 1 done.\n"
    site.ok("config", "checkFMT", r"%j %J\n")
    assert site.ok("check", str(job)) == "%d warmup\n" % job
    follow = site.submit("for i in 1 2 3; do echo line $i; sleep 0.3; done")
    result = site.run("tail", str(follow))
    assert result.returncode == 0 and result.stdout == "line 1\nline 2\nline 3\n"
    assert site.run("tail", str(bad)).returncode == 1
    assert "Nothing to do" in site.fails("wait", "999")
    assert "Give a job ID to tail" in site.fails("tail", "x")


def test_wait_from_a_job_and_sub_inside_a_job_inherit_nothing_unexpected(site):
    nodes(site, "localhost cores=4 gpus=1")
    inner = shlex.join(QPY)
    script = ("%s sub -N inner 'env | grep -E \"^(QPY_|OMP_NUM|CUDA)\" | sort' && %s wait"
              % (inner, inner))
    outer = site.submit("-n", "3", "-g", "1", script)
    site.wait_idle()
    assert site.status(outer) == "done"
    inner_job = max(site.jobs())
    lines = site.read("job_%d.out" % inner_job).split()
    assert "OMP_NUM_THREADS=1" in lines and "QPY_N_CORES=1" in lines
    assert not any(line.startswith("CUDA_VISIBLE_DEVICES") for line in lines)
    assert "QPY_JOB_ID=%d" % inner_job in lines


def test_json_output(site):
    import json
    job = site.submit("-N", "j", "true")
    site.wait_idle()
    (record,) = json.loads(site.ok("check", "--json"))
    assert record["id"] == job and record["status"] == "done" and record["name"] == "j"
    assert record["exit_code"] == 0 and record["node"] == "localhost"
    assert set(record) >= {"cores", "memory_gb", "gpus", "queued_at", "started_at", "ended_at",
                           "max_rss_kb", "cpu_time_s", "reason", "dependencies", "array_index"}
    status = json.loads(site.ok("status", "--json"))
    assert status["nodes"][0]["name"] == "localhost" and status["cores_used"] == 0


def test_sub_parsable_and_wait_as_sbatch_has_them(site):
    """--parsable prints the ID alone (an array's first-last); --wait waits and exits with the
    job's status: 0 if done, its exit code, 128+N for a signal N, the highest of an array."""
    job = int(site.ok("sub", "--parsable", "true"))
    first, last = map(int, site.ok("sub", "--parsable", "--array", "1-3", "true").split("-"))
    assert last == first + 2 and first == job + 1
    waited = site.run("sub", "--parsable", "--wait", "exit 3")
    assert waited.returncode == 3 and waited.stdout == "%d\n" % (last + 1), waited
    assert site.status(last + 1) == "failed"
    assert site.run("sub", "--wait", "true").returncode == 0
    assert site.run("sub", "--wait", "kill -9 $$").returncode == 128 + 9
    highest = site.run("sub", "--wait", "--array", "1-3", "exit $QPY_ARRAY_INDEX")
    assert highest.returncode == 3 and highest.stdout.startswith("Jobs "), highest
    # a script chains on it: the ID goes to wait, kill, --afterok
    chained = site.run("sub", "--parsable", "--afterok", str(last + 1), "true")
    assert site.run("wait", chained.stdout.strip()).returncode == 1  # (undone: 3 was failed)
    assert "--parsable" in site.ok("sub", "--help")
