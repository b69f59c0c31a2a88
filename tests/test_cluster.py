"""qpy on compute nodes over ssh: the emulated cluster of tests/cluster.py (network namespaces,
one sshd per node, real users). Skipped where root, sshd or namespaces are missing."""
import os

import pytest

from conftest import wait_for


def ps_on(cluster, node, user):
    """The commands `user` runs on `node` (its own PID namespace)."""
    result = cluster.node_exec(node, user, "ps", "-o", "args=", "-u", user)
    return [line.strip() for line in result.stdout.splitlines()]


def test_a_job_runs_on_a_node_and_says_so(lab):
    site = lab()
    job = site.submit("alice", "sh", "-c", "hostname; echo $QPY_NODE; id -un")
    site.wait_status(job, "done")
    host, node, user = site.output("alice", job).split()
    assert host == node == site.jobs()[job]["node"]
    assert user == "alice"
    assert site.ok("alice", "check", str(job)).startswith("%d (done):" % job)


def test_six_cores_six_jobs_spread_and_a_seventh_waits(lab):
    site = lab()
    jobs = [site.submit("alice", "sleep", "60") for _ in range(7)]
    wait_for(lambda: sum(j["status"] == "running" for j in site.jobs().values()) == 6,
             what="six running jobs")
    running = [j for j in site.jobs().values() if j["status"] == "running"]
    assert sorted(j["node"] for j in running) == ["node1", "node1", "node2", "node2",
                                                  "node3", "node3"]
    assert [j["status"] for j in site.jobs().values() if j["id"] not in
            {r["id"] for r in running}] == ["queue"]
    status = site.ok("alice", "status")
    for node in ("node1", "node2", "node3"):
        assert any(line.split()[:3] == [node, "2", "2"] for line in status.splitlines())
    assert "There are 6 out of a total of 6 cores being used." in status
    for node in ("node1", "node2", "node3"):
        assert sum("sleep 60" in args for args in ps_on(site.cluster, node, "alice")) == 2
    site.ok("alice", "kill", "all")
    for job in jobs:
        site.wait_status(job, "killed", "undone")
    for node in ("node1", "node2", "node3"):  # killed over ssh: really gone
        wait_for(lambda: not any("sleep 60" in a for a in ps_on(site.cluster, node, "alice")),
                 what="the jobs on %s to be gone" % node)


def test_attribute_expressions_choose_the_nodes(lab):
    """The original's nodesattr scenarios: node1 [big], node2 [infiband], node3 [big,infiband]."""
    site = lab("node1 cores=2 memory=4 attributes=big\nnode2 cores=2 memory=4 attributes=infiband\n"
               "node3 cores=2 memory=4 attributes=big,infiband\n")
    cases = {"big": {"node1", "node3"}, "(big)and(infiband)": {"node3"},
             "infiband and not big": {"node2"}, "node2 or node1": {"node1", "node2"}}
    placed = {}
    for expression in cases:
        ids = [site.submit("alice", "-m", "0.1", "-a", expression, "true") for _ in range(4)]
        for job in ids:
            site.wait_status(job, "done")
        placed[expression] = {site.jobs()[job]["node"] for job in ids}
    for expression, nodes in cases.items():
        assert placed[expression] <= nodes, expression
    refused = site.run("alice", "sub", "-a", "not((big)or(infiband))", "true")
    assert refused.returncode == 1
    assert "no node has the attributes" in refused.stderr


def test_directives_pick_the_node_over_ssh(lab):
    """nodesattr3: a script's #QPY node_attr lands it on node3, which it prints."""
    site = lab("node1 cores=2 memory=4 attributes=bigmem\nnode2 cores=2 memory=4 attributes=infiband\n"
               "node3 cores=2 memory=4 attributes=bigmem,infiband\n")
    script = os.path.join(site.workdir("alice"), "job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n#QPY node_attr=bigmem and infiband\n#QPY mem=0.1\necho $QPY_NODE\n")
    os.chmod(script, 0o755)
    job = site.submit("alice", "./job.sh")
    site.wait_status(job, "done")
    assert site.output("alice", job) == "node3\n"


def test_a_crashed_node_fails_its_job_and_comes_back(lab):
    site = lab()
    only_node1(site)
    job = site.submit("alice", "sleep", "300")
    assert site.wait_status(job, "running")["node"] == "node1"
    all_nodes(site)
    site.cluster.crash("node1")
    try:
        record = site.wait_status(job, "failed", tick=True)
        assert record["reason"] == "node lost"
        assert site.node_state("node1") == "down"
        queued = [site.submit("alice", "hostname") for _ in range(3)]
        for other in queued:
            assert site.wait_status(other, "done")["node"] in ("node2", "node3")
    finally:
        site.cluster.boot("node1")
    wait_for(lambda: site.tick() or site.node_state("node1") == "up", what="node1 to be up")
    only_node1(site)
    again = site.submit("alice", "hostname")
    assert site.wait_status(again, "done")["node"] == "node1"


def test_a_launch_to_a_dead_node_goes_elsewhere(lab):
    site = lab()
    site.cluster.crash("node1")
    try:
        jobs = [site.submit("alice", "sleep", "2") for _ in range(6)]
        for job in jobs:
            assert site.wait_status(job, "done", tick=True)["node"] in ("node2", "node3")
        assert site.node_state("node1") == "down"
        assert "(down)" in site.ok("alice", "status")
    finally:
        site.cluster.boot("node1")


def test_a_partitioned_node_keeps_its_job_and_never_runs_it_twice(lab):
    site = lab()
    only_node1(site)
    log = os.path.join(site.workdir("alice"), "ran.log")
    job = site.submit("alice", "echo $QPY_JOB_ID >> %s; sleep 3" % log)
    site.wait_status(job, "running")
    site.cluster.partition("node1")
    try:
        site.tick()
    finally:
        site.cluster.heal("node1")
    site.wait_status(job, "done", tick=True)
    with open(log) as f:
        assert f.read().split() == [str(job)]


@pytest.mark.parametrize("point", ["tick:claimed", "tick:launched"])
def test_a_tick_killed_around_the_launch_runs_each_job_once(lab, point):
    site = lab()
    site.admin("set", "launch_timeout", "2")
    log = os.path.join(site.workdir("alice"), "ran.log")
    token = os.path.join(site.workdir("alice"), "crash-token")
    open(token, "w").close()
    os.chmod(token, 0o666)
    jobs = [site.submit("alice", "echo $QPY_JOB_ID >> %s" % log,
                        env={"QPY_CRASH_AT": "%s@%s" % (point, token)}) for _ in range(3)]
    assert not os.path.exists(token)  # one tick died there
    for job in jobs:
        site.wait_status(job, "done", tick=True)
    with open(log) as f:
        assert sorted(f.read().split()) == sorted(str(j) for j in jobs)


def test_a_drained_node_finishes_its_jobs_and_gets_no_new_ones(lab):
    site = lab()
    first = [site.submit("alice", "sleep", "2") for _ in range(6)]
    wait_for(lambda: all(site.jobs()[j]["status"] == "running" for j in first), what="6 running")
    on_node2 = [j for j in first if site.jobs()[j]["node"] == "node2"]
    site.admin("drain", "node2")
    assert "node2 (drained)" in site.ok("alice", "status")
    later = [site.submit("alice", "sleep", "1") for _ in range(4)]
    for job in on_node2:
        assert site.wait_status(job, "done")["node"] == "node2"
    for job in later:
        assert site.wait_status(job, "done")["node"] != "node2"


def test_kill_of_a_job_on_an_unreachable_node_completes_when_it_is_lost(lab):
    site = lab()
    only_node1(site)
    job = site.submit("alice", "sleep", "300")
    site.wait_status(job, "running")
    site.cluster.crash("node1")
    try:
        assert site.ok("alice", "kill", str(job)) == "1 job will be killed.\n"
        record = site.wait_status(job, "killed", tick=True)
        assert "node lost" in record["reason"]
    finally:
        site.cluster.boot("node1")


def test_a_requeue_job_starts_again_elsewhere_when_its_node_is_lost(lab):
    site = lab()
    only_node1(site)
    job = site.submit("alice", "--requeue", "sh", "-c", "hostname >> runs; sleep 5")
    assert site.wait_status(job, "running")["node"] == "node1"
    all_nodes(site)
    site.cluster.crash("node1")
    try:
        record = site.wait_status(job, "done", tick=True)
        assert record["node"] in ("node2", "node3") and record["attempt"] == 2
    finally:
        site.cluster.boot("node1")
    with open(os.path.join(site.workdir("alice"), "runs")) as f:
        assert f.read().split() == ["node1", record["node"]]


def only_node1(site):
    """Drain the other nodes, so that the next job lands on node1."""
    site.admin("drain", "node2")
    site.admin("drain", "node3")


def all_nodes(site):
    site.admin("resume", "node2")
    site.admin("resume", "node3")


def test_the_slurm_style_features_work_over_ssh(lab):
    """GPUs, time limits, dependencies, arrays, names, wait, tail and JSON on ssh nodes."""
    import json
    site = lab("node1 cores=2 memory=16 gpus=2\nnode2 cores=2 memory=16\n")
    gpu = site.submit("alice", "-g", "2", "-N", "trainer", "echo $QPY_NODE $CUDA_VISIBLE_DEVICES")
    limited = site.submit("alice", "-t", "0:01", "sleep 60")
    array = site.ok("alice", "sub", "--array", "1-4%1", "--afterok", str(gpu),
                    "echo $QPY_ARRAY_INDEX on $QPY_NODE")
    first, last = map(int, array.split()[1].split("-"))
    follow = site.submit("alice", "for i in 1 2; do echo tick $i; sleep 0.5; done")
    tail = site.run("alice", "tail", str(follow))
    assert tail.returncode == 0 and tail.stdout == "tick 1\ntick 2\n"
    waited = site.run("alice", "wait", "%d-%d" % (gpu, last))
    assert waited.returncode == 1 and "1 failed" in waited.stdout, waited  # the time limit
    assert site.output("alice", gpu) == "node1 0,1\n"
    assert site.jobs()[limited]["reason"] == "time limit"
    for index, job in enumerate(range(first, last + 1), 1):
        assert site.output("alice", job).split()[0] == str(index)
    starts = sorted((site.jobs()[j]["started_at"], site.jobs()[j]["ended_at"])
                    for j in range(first, last + 1))
    assert all(a[1] <= b[0] for a, b in zip(starts, starts[1:]))  # %1: one at a time
    records = {r["id"]: r for r in json.loads(site.ok("alice", "check", "--json"))}
    assert records[gpu]["name"] == "trainer" and records[gpu]["gpu_ids"] == [0, 1]


def test_doctor_checks_the_site_end_to_end(lab):
    site = lab()
    site.tick()
    out = site.admin("doctor", "--as", "alice")
    for node in ("node1", "node2", "node3"):
        assert "ok       node %s runs qpy and Python" % node in out
        assert "ok       node %s clock" % node in out
    assert out.endswith("Everything looks right.\n"), out
    site.cluster.crash("node2")
    try:
        result = site.admin_run("doctor", "--as", "alice")
        assert result.returncode == 1
        assert "PROBLEM  node node2 (node2) by ssh" in result.stdout
        assert "1 problem found." in result.stdout
    finally:
        site.cluster.boot("node2")


def test_a_run_whose_process_died_is_a_leftover_and_a_live_ones_is_not(tmp_path):
    """tests/runs.py: which runs' directories the next run's up removes (no root needed)."""
    import subprocess
    import runs
    prefix = str(tmp_path / "run-")
    live = subprocess.Popen(["sleep", "300"])
    try:
        runs.claim(prefix + "a1", live.pid)
        runs.claim(prefix + "b2", os.getpid())
        os.mkdir(prefix + "c3")  # (died before it wrote its owner)
        os.mkdir(prefix + "d4")  # (its PID is another process's now)
        with open(os.path.join(prefix + "d4", "owner"), "w") as f:
            f.write("%d 1 %s\n" % (os.getpid(), runs.boot()))
        os.mkdir(prefix + "not-a-run")
        assert sorted(runs.runs_of(prefix)) == ["a1", "b2", "c3", "d4"]
        assert runs.leftovers(prefix) == [prefix + "c3", prefix + "d4"]
        assert runs.owner(prefix + "a1") == live.pid
        live.kill()  # (its zombie, not waited for yet, is as dead)
        wait_for(lambda: runs.leftovers(prefix) == [prefix + "a1", prefix + "c3", prefix + "d4"],
                 what="a1 to be a leftover")
    finally:
        live.kill()
        live.wait()
