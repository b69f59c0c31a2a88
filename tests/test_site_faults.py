"""Site faults on the emulated cluster (tests/cluster.py: ssh nodes, real users): a job runs
once across a crash and a reboot, a dead runner is not a dead node, and a job's processes die
with it. Skipped where root, sshd or namespaces are missing."""
import glob
import os
import subprocess

from conftest import wait_for


def processes_on(site, node, user, what):
    """The PIDs of the user's processes on the node whose `ps` line (pid, comm, args) says
    `what` (a predicate)."""
    result = site.cluster.node_exec(node, user, "ps", "-o", "pid=,comm=,args=", "-u", user)
    return [line.split()[0] for line in result.stdout.splitlines() if what(line)]


def a_sleeping_job_on_node1(site):
    """Alice's `sleep 300` running on node1 (the other nodes drained): (its ID, its runner's
    PIDs there, a function listing alice's processes on node1 that match a predicate)."""
    site.admin("drain", "node2")
    site.admin("drain", "node3")
    job = site.submit("alice", "sleep", "300")
    assert site.wait_status(job, "running")["node"] == "node1"

    def on_node1(what):
        return processes_on(site, "node1", "alice", what)
    runner = wait_for(lambda: on_node1(lambda line: "qpy-runner" in line), what="the runner")
    wait_for(lambda: on_node1(lambda line: "sleep 300" in line), what="the command")
    return job, runner, on_node1


def runs_log(site, name="runs"):
    path = os.path.join(site.workdir("alice"), name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f.read().splitlines()]


def test_a_requeue_job_across_a_crash_and_reboot_runs_once_more_never_beside_itself(lab):
    """The first run's heartbeat must not judge the second run: with beats slower than the
    time the crashed node takes to be declared lost, a job that inherits a stale heartbeat is
    declared lost at once, and its healthy node with it."""
    site = lab()
    for key, value in (("heartbeat", "2"), ("node_timeout", "4")):
        site.admin("set", key, value)
    site.admin("drain", "node2")
    site.admin("drain", "node3")
    log = os.path.join(site.workdir("alice"), "runs")
    job = site.submit("alice", "--requeue", "sh", "-c",
                      "echo start $(hostname) >> %s; sleep 8; echo end $(hostname) >> %s"
                      % (log, log))
    assert site.wait_status(job, "running")["node"] == "node1"
    wait_for(lambda: runs_log(site), what="the first run to begin")
    run = os.path.join(site.state, "users", site.real("alice"), "run")
    wait_for(lambda: glob.glob(os.path.join(run, "%d.*hb" % job)), what="its first heartbeat")
    site.admin("resume", "node2")
    site.admin("resume", "node3")
    site.cluster.crash("node1")
    try:
        record = site.wait_status(job, "done", tick=True, timeout=90)
    finally:
        site.cluster.boot("node1")
    second = record["node"]
    assert record["attempt"] == 2
    assert runs_log(site) == [["start", "node1"], ["start", second], ["end", second]]
    assert site.node_state(second) == "up"  # the healthy node was not declared lost


def test_a_runner_killed_on_a_healthy_node_is_runner_lost_and_its_job_is_stopped(lab):
    site = lab()
    job, runner, on_node1 = a_sleeping_job_on_node1(site)
    site.cluster.node_exec("node1", "alice", "kill", "-9", *runner)
    record = site.wait_status(job, "failed", tick=True, timeout=60)
    assert record["reason"] == "runner lost"
    assert site.node_state("node1") == "up"
    wait_for(lambda: not on_node1(lambda line: "sleep 300" in line), timeout=30,
             what="the orphaned job to be stopped on node1")
    after = site.submit("alice", "hostname")  # the node takes jobs still
    assert site.wait_status(after, "done", tick=True)["node"] == "node1"


def test_a_tick_stuck_on_a_partitioned_node_does_not_keep_another_users_job_waiting(lab):
    """Alice's tick waits for ssh to a partitioned node; Bob's job for an idle node starts
    at once, by his own tick (there is no timer here: nothing else would start it)."""
    site = lab()
    site.admin("drain", "node3")
    site.cluster.partition("node2")
    try:
        stuck = site.submit("alice", "-a", "node2", "true")
        mine = site.submit("bob", "-a", "node1", "sleep", "1")
        assert site.wait_status(mine, "running", "done", timeout=30)["node"] == "node1"
    finally:
        site.cluster.heal("node2")
    site.wait_status(stuck, "done", tick=True)


def test_a_tick_waiting_on_ssh_does_not_keep_the_same_users_next_job_waiting(lab):
    """Alice's tick launches to a partitioned node (it waits up to ssh_timeout): her next job,
    for an idle node, starts meanwhile, by a tick of its own (the first holds no lock while it
    waits on ssh)."""
    site = lab()
    site.admin("set", "ssh_timeout", "40")
    site.admin("set", "launch_timeout", "300")
    site.admin("drain", "node3")
    site.cluster.partition("node2")
    try:
        stuck = site.submit("alice", "-a", "node2", "true")
        site.wait_status(stuck, "starting")
        mine = site.submit("alice", "-a", "node1", "sleep", "1")
        assert site.wait_status(mine, "running", "done", timeout=30)["node"] == "node1"
        assert site.jobs()[stuck]["status"] == "starting"  # (that launch is still waiting)
    finally:
        site.cluster.heal("node2")
    site.wait_status(stuck, "done", tick=True, timeout=120)


def test_a_core_freed_by_one_users_job_goes_to_anothers_by_the_lingering_timer_tick(lab):
    """One core: Bob's job waits behind Alice's. When hers ends, her runner can only hand the
    wake-up on (no user may start another's job): root's timer tick, lingering, starts Bob's
    job then, not at its next run."""
    import subprocess
    site = lab("node1 cores=1 memory=16\n")
    first = site.submit("alice", "sleep", "2")
    site.wait_status(first, "running")
    second = site.submit("bob", "true")
    timer = subprocess.Popen([site.python, site.admin_tool, "tick", "--linger=60"],
                             env={"PATH": "/usr/bin:/bin", "QPY_STATE": site.state},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        site.wait_status(second, "done", timeout=40)
        assert timer.poll() is None or timer.returncode == 0  # (it leaves once nothing is live)
        wait_for(lambda: timer.poll() is not None, timeout=30, what="the timer's tick to leave")
        assert timer.returncode == 0 and timer.stderr.read() == ""
    finally:
        timer.kill()
        timer.wait()


def test_a_healed_node_is_probed_by_roots_tick_with_an_empty_queue(lab):
    site = lab()
    site.cluster.partition("node2")
    try:
        job = site.submit("alice", "-a", "node2", "true")
        wait_for(lambda: site.node_state("node2") == "down", what="node2 to be marked down")
        site.ok("alice", "kill", str(job))
    finally:
        site.cluster.heal("node2")
    site.admin("tick")  # root's, as the timer runs it; nothing is queued
    wait_for(lambda: site.admin("tick") is not None and site.node_state("node2") == "up",
             timeout=30, what="root's tick to bring node2 back")


def test_what_a_lost_job_left_on_a_partitioned_node_is_stopped_when_it_answers(lab):
    """The runner dies and the node is cut off: the job is given up with the node ('node
    lost'), but its command runs on there. Once the node answers again, the tick that brings
    it back stops that command."""
    site = lab()
    job, runner, on_node1 = a_sleeping_job_on_node1(site)
    site.cluster.partition("node1")
    try:
        site.cluster.node_exec("node1", "alice", "kill", "-9", *runner)
        record = site.wait_status(job, "failed", tick=True, timeout=60)
        assert record["reason"] == "node lost"
        assert on_node1(lambda line: "sleep 300" in line)  # cut off: nobody could stop it
    finally:
        site.cluster.heal("node1")
    # the first tick to find it answering dies before it stops them: the next one does
    token = os.path.join(site.workdir("alice"), "crash-token")
    subprocess.run(["runuser", "-u", site.real("alice"), "--", "touch", token], check=True)
    wait_for(lambda: site.run("alice", "tick", tool=site.admin_tool, env={
        "QPY_CRASH_AT": "watch:leftovers@" + token}) and not os.path.exists(token),
        timeout=60, what="a tick to die on its way to stop the leftovers")
    assert on_node1(lambda line: "sleep 300" in line)
    wait_for(lambda: site.tick() is None and not on_node1(lambda line: "sleep 300" in line),
             timeout=60, what="the leftover command to be stopped once node1 answers")
    assert site.node_state("node1") == "up"
