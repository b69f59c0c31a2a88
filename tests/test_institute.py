"""An institute's Slurm reached through its login node, sharing no filesystem with the lab
(issue 22): the pool `type=slurm login=hpc`. The institute (tests/institute.py) is a private
Slurm behind its own sshd, in namespaces of its own: its homes are not the lab's, and it has
no qpy. Real users, real keys, real ssh, real sbatch; the site's timer is played by root's
ticks in the tests' loops."""
import os
import subprocess
import time

from conftest import wait_for

POOL = "hpc type=slurm login=hpc partition=compute cores=%d max_jobs=%d\n"
LAB_NODE = "node1 cores=2 memory=16\n"


def pool_site(lab, max_jobs=4, lab_node=False, cores=4):
    site = lab((LAB_NODE if lab_node else "") + POOL % (cores, max_jobs))
    site.admin("set", "launch_timeout", "8")
    return site


def settle(site, job_id, *statuses, timeout=120):
    """Root's ticks (the timer) until the job is in one of these statuses."""
    def reached():
        site.admin("tick")
        return site.jobs().get(job_id, {}).get("status") in statuses
    try:
        wait_for(reached, timeout, "job %d to be %s" % (job_id, "/".join(statuses)))
    except AssertionError:
        job = site.jobs().get(job_id, {})
        raise AssertionError("job %d is %s, not %s: %s" % (
            job_id, job.get("status"), "/".join(statuses), job.get("reason")))
    return site.jobs()[job_id]


def slurm_jobs_of(site, institute, job_id):
    """The institute's Slurm jobs of a qpy job of this site (by the name qpy gives them:
    qpy-<the site's identity>-<job ID>-<attempt>)."""
    with open(os.path.join(site.state, "qpy.id")) as f:
        prefix = "qpy-%s-%d-" % (f.read().strip()[:8], job_id)
    return [job for job in institute.jobs() if job["name"].startswith(prefix)]


def test_a_job_runs_at_the_institute_and_its_output_comes_back(lab, institute):
    site = pool_site(lab)
    done = site.submit("alice", "-m", "0.2", "hostname; echo to-err >&2")
    failed = site.submit("alice", "-m", "0.2", "exit 3")
    job = settle(site, done, "done")
    assert site.output("alice", done) == "hpc\n"  # (copied back from the institute)
    assert site.output("alice", done, "err") == "to-err\n"
    assert job["node"] == "hpc" and job["external_id"].isdigit()
    ended = settle(site, failed, "failed")
    assert ended["exit_code"] == 3 and "exit code 3" in ended["reason"]
    [slurm_job] = slurm_jobs_of(site, institute, done)
    assert slurm_job["user"] == "alice" and slurm_job["id"] == job["external_id"]
    # it ran in the mirror of its directory, under ~/qpy there; the lab's files are not there
    mirror = os.path.join("qpy", os.path.basename(site.workdir("alice")))
    assert institute.read("alice", os.path.join(mirror, "job_%d.out" % done)) == "hpc\n"
    check = site.ok("alice", "check")
    assert "done" in check and "failed" in check


def test_kill_a_job_waiting_in_slurm_and_one_running_there(lab, institute):
    site = pool_site(lab, cores=8)  # (more than the institute's 4: the second waits in Slurm)
    running = site.submit("alice", "-n", "4", "-m", "0.2", "sleep 300")
    waiting = site.submit("alice", "-n", "4", "-m", "0.2", "sleep 300")  # (no room left)
    settle(site, running, "running")
    wait_for(lambda: site.admin("tick") is not None and [j["state"] for j in slurm_jobs_of(
        site, institute, waiting)] == ["PENDING"], 60, "the second job to wait in Slurm")
    out = site.ok("alice", "kill", str(running), str(waiting))
    assert "1 job removed from the queue" in out and "1 job will be killed" in out
    assert settle(site, running, "killed")["status"] == "killed"
    assert site.jobs()[waiting]["status"] == "undone"
    wait_for(lambda: all(job["state"] == "CANCELLED" for job in
                         slurm_jobs_of(site, institute, running)
                         + slurm_jobs_of(site, institute, waiting)),
             60, "both cancelled in Slurm")


def test_a_kill_that_cannot_reach_the_login_node_is_sent_once_it_answers(lab, institute):
    site = pool_site(lab, cores=8)
    running = site.submit("alice", "-n", "4", "-m", "0.2", "sleep 300")
    waiting = site.submit("alice", "-n", "4", "-m", "0.2", "echo must-not-run > ran-killed")
    settle(site, running, "running")
    wait_for(lambda: site.admin("tick") is not None and [j["state"] for j in slurm_jobs_of(
        site, institute, waiting)] == ["PENDING"], 60, "the second job to wait in Slurm")
    institute.partition()
    try:
        assert "1 job removed" in site.ok("alice", "kill", str(waiting))
        assert site.jobs()[waiting]["status"] == "undone"
        [held] = slurm_jobs_of(site, institute, waiting)
        assert held["state"] == "PENDING"  # (the cancel could not reach it)
    finally:
        institute.heal()
    wait_for(lambda: site.admin("tick") is not None and [j["state"] for j in slurm_jobs_of(
        site, institute, waiting)] == ["CANCELLED"], 60, "the owed cancel to reach Slurm")
    site.ok("alice", "kill", str(running))
    settle(site, running, "killed")


def test_a_tick_killed_between_sbatch_and_its_commit_runs_the_job_once(lab, institute,
                                                                      tmp_path):
    site = pool_site(lab)
    token = os.path.join(site.workdir("alice"), "token")
    subprocess.run(["runuser", "-u", site.real("alice"), "--", "touch", token], check=True)
    # alice's own tick (started by her sub) submits it to Slurm and dies before its commit
    job_id = site.submit("alice", "-m", "0.2", "echo $QPY_JOB_ID >> ran; sleep 2",
                         env={"QPY_CRASH_AT": "tick:sbatched@%s" % token})
    wait_for(lambda: not os.path.exists(token), 60, "the tick to die after its sbatch")
    assert site.jobs()[job_id]["external_id"] is None
    job = settle(site, job_id, "done")
    mirror = os.path.join("qpy", os.path.basename(site.workdir("alice")))
    assert institute.read("alice", os.path.join(mirror, "ran")).split() == [str(job_id)]
    assert [j["id"] for j in slurm_jobs_of(site, institute, job_id)] == [job["external_id"]]


def test_a_second_copy_of_an_attempt_does_not_run(lab, institute):
    site = pool_site(lab)
    job_id = site.submit("alice", "-m", "0.2", "echo ran >> ran-twice")
    settle(site, job_id, "done")
    with open(os.path.join(site.state, "qpy.id")) as f:
        script = "qpy/.qpy/%s/job_%d.1.sh" % (f.read().strip(), job_id)
    again = institute.exec_in("alice", "sh", script)
    assert "started already: it does not run twice" in again.stderr
    mirror = os.path.join("qpy", os.path.basename(site.workdir("alice")))
    assert institute.read("alice", os.path.join(mirror, "ran-twice")) == "ran\n"


def test_the_login_node_cut_off_while_jobs_run_then_healed(lab, institute):
    site = pool_site(lab)
    job_id = site.submit("alice", "-m", "0.2", "sleep 6; echo survived")
    settle(site, job_id, "running")
    institute.partition()
    try:
        cut = time.time()  # (longer than node_timeout: a pool job is no runner to miss)
        wait_for(lambda: site.admin("tick") is not None and time.time() > cut + 4, 60,
                 "ticks for longer than node_timeout")
        assert site.jobs()[job_id]["status"] == "running"
        wait_for(lambda: site.admin("tick") is not None and site.node_state("hpc") == "down",
                 60, "the pool to be down")
    finally:
        institute.heal()
    job = settle(site, job_id, "done")
    assert site.output("alice", job_id) == "survived\n"
    assert [j["id"] for j in slurm_jobs_of(site, institute, job_id)] == [job["external_id"]]


def test_an_unreachable_login_node_sends_the_job_to_a_lab_node(lab, institute):
    site = pool_site(lab, lab_node=True)
    site.admin("drain", "node1", "busy")
    institute.partition()
    try:
        job_id = site.submit("alice", "-m", "0.2", "hostname")
        wait_for(lambda: site.admin("tick") is not None and site.node_state("hpc") == "down"
                 and site.jobs()[job_id]["status"] == "queue", 90,
                 "the pool to be down, the job back in the queue")
        site.admin("resume", "node1")
        assert settle(site, job_id, "done")["node"] == "node1"
        assert site.output("alice", job_id) == "node1\n"
    finally:
        institute.heal()
    assert slurm_jobs_of(site, institute, job_id) == []


def test_max_jobs_holds_at_the_institute(lab, institute):
    site = pool_site(lab, max_jobs=1)
    jobs = [site.submit("alice", "-m", "0.2", "sleep 1") for _ in range(3)]
    seen = []

    def all_done():
        site.admin("tick")
        seen.append(len([job for job in jobs for j in slurm_jobs_of(site, institute, job)
                         if j["state"] in ("PENDING", "RUNNING")]))
        assert seen[-1] <= 1, seen
        return all(site.jobs()[job]["status"] == "done" for job in jobs)
    wait_for(all_done, 180, "the three jobs to be done, one at a time")
    assert max(seen) == 1


def test_a_full_disk_at_the_institute_makes_the_job_wait_with_the_reason(lab, institute):
    site = pool_site(lab)
    site.admin("set", "probe_interval", "2")
    institute.fill_disk()
    try:
        job_id = site.submit("alice", "-m", "0.2", "echo fits")
        wait_for(lambda: site.admin("tick") is not None and "cannot write in" in (
            site.jobs()[job_id]["reason"] or ""), 60, "the refusal with the reason")
        assert site.jobs()[job_id]["status"] == "queue"
    finally:
        institute.free_disk()
    settle(site, job_id, "done")
    assert site.output("alice", job_id) == "fits\n"


def test_a_users_own_ssh_config_names_their_account_there(lab, institute):
    site = pool_site(lab)
    config = os.path.join(site.home("alice"), ".ssh", "config")
    with open(config) as f:
        before = f.read()
    try:
        with open(config, "w") as f:
            f.write("Host hpc\n  User %s\n" % institute.account() + before)
        job_id = site.submit("alice", "-m", "0.2", "id -un")
        settle(site, job_id, "done")
        assert site.output("alice", job_id) == institute.account() + "\n"
    finally:
        with open(config, "w") as f:
            f.write(before)


def test_pool_lines_with_a_login_are_checked(site):
    site.ok("check")
    path = os.path.join(site.home, "nodes")
    for line, problem in (
            ("hpc type=slurm login=-oProxyCommand=x partition=p cores=4", "login must be"),
            ("hpc type=slurm login=hpc partition=p cores=4 copy_limit=lots", "copy_limit"),
            ("node1 cores=4 login=hpc", "login is only for Slurm pools (type=slurm)"),
            ("hpc type=slurm login=hpc partition=p cores=4 remote_dir=/scratch/qpy",
             "put %u (the user's name there) in it")):
        with open(path, "w") as f:
            f.write(line + "\n")
        result = site.run("nodes", path, admin=True)
        assert result.returncode == 1 and problem in result.stderr, (line, result.stderr)
    with open(path, "w") as f:
        f.write("localhost cores=2\nhpc type=slurm login=hpc partition=p cores=4\n")
    site.ok("nodes", path, admin=True)
    listed = site.ok("list", admin=True)
    assert "login=hpc" in listed, listed


def test_stage_in_and_stage_out_carry_the_files_over(lab, institute):
    site = pool_site(lab)
    workdir = site.workdir("alice")
    subprocess.run(["runuser", "-u", site.real("alice"), "--", "sh", "-c",
                    "mkdir -p inputs && echo 42 > inputs/n.txt"], cwd=workdir, check=True)
    job_id = site.submit("alice", "-m", "0.2", "--stage-in", "inputs", "--stage-out",
                         "result-*", "--stage-out", "none-*",
                         "cat inputs/n.txt > result-1.txt; echo 7 > result-2.txt")
    job = settle(site, job_id, "done")
    for name, text in (("result-1.txt", "42\n"), ("result-2.txt", "7\n")):
        with open(os.path.join(workdir, name)) as f:
            assert f.read() == text
        assert os.stat(os.path.join(workdir, name)).st_uid == os.stat(workdir).st_uid
    assert "none-*" in (job["reason"] or "")  # (what matched nothing is named)


def test_output_above_the_copy_limit_stays_at_the_institute(lab, institute):
    site = lab("hpc type=slurm login=hpc partition=compute cores=4 copy_limit=0.001\n")
    job_id = site.submit("alice", "-m", "0.2", "head -c 5000 /dev/zero")
    job = settle(site, job_id, "done")
    assert "above the copy limit" in job["reason"] and "hpc" in job["reason"]
    assert site.output("alice", job_id) == ""


def test_doctor_checks_the_login_node_as_a_user(lab, institute):
    site = pool_site(lab)
    site.admin("add", "ghost", "type=slurm", "login=hpc", "partition=nosuch", "cores=4")
    out = site.admin_run("doctor", "--as", "alice").stdout
    assert "ok       Slurm pool hpc through hpc, as alice\n" in out, out
    assert "PROBLEM  Slurm pool ghost through hpc, as alice: partition nosuch is not up" in out
    assert "not checked here" in site.admin_run("doctor").stdout


def test_a_user_the_login_node_refuses_does_not_take_the_pool_down(lab, institute):
    site = pool_site(lab)
    keys = os.path.join(institute.home("bob"), ".ssh", "authorized_keys")
    institute.exec_in("bob", "mv", keys, keys + ".away")
    try:
        refused = site.submit("bob", "-m", "0.2", "hostname")
        wait_for(lambda: site.admin("tick") is not None and "Permission denied" in (
            site.jobs()[refused]["reason"] or ""), 60, "bob's job refused with ssh's words")
        assert site.node_state("hpc") == "up"
        ran = site.submit("alice", "-m", "0.2", "hostname")
        settle(site, ran, "done")
        assert site.jobs()[refused]["status"] == "queue"
    finally:
        institute.exec_in("bob", "mv", keys + ".away", keys)
    settle(site, refused, "done")


def odd_sbatch(institute, then):
    """sbatch made otherwise at the institute (a script bound over it, in its mount namespace
    only, made anew each time: one a test left running is never rewritten): the real one,
    then `then`."""
    script = "/tmp/odd-sbatch-%d" % time.time_ns()
    made = institute.exec_in("root", "sh", "-c", """[ -e /tmp/real-sbatch ] ||
cp /usr/bin/sbatch /tmp/real-sbatch
printf '#!/bin/sh\\n/tmp/real-sbatch "$@"; status=$?; %%s\\n' '%s' > %s &&
chmod 755 %s && mount --bind %s /usr/bin/sbatch""" % (then, script, script, script))
    assert made.returncode == 0, made.stderr


def test_the_connection_dropped_mid_launch_runs_the_job_once(lab, institute):
    """sbatch has submitted, then the link goes before the launch could say so (an sbatch
    made slow at the institute: the real one, then a sleep)."""
    site = pool_site(lab)
    site.admin("set", "launch_timeout", "20")  # (the link cut ends the launch, not its time)
    odd_sbatch(institute, "sleep 30; exit $status")
    try:
        job_id = site.submit("alice", "-m", "0.2", "echo $QPY_JOB_ID >> ran-once")
        wait_for(lambda: slurm_jobs_of(site, institute, job_id), 60, "Slurm to have the job")
        institute.partition()
        wait_for(lambda: "cut off" in (site.jobs()[job_id]["reason"] or ""), 90,
                 "the launch to be cut off")
        assert site.jobs()[job_id]["external_id"] is None
    finally:
        institute.heal()
        institute.exec_in("root", "umount", "/usr/bin/sbatch")
    job = settle(site, job_id, "done")
    mirror = os.path.join("qpy", os.path.basename(site.workdir("alice")))
    assert institute.read("alice", os.path.join(mirror, "ran-once")).split() == [str(job_id)]
    assert [j["id"] for j in slurm_jobs_of(site, institute, job_id)] == [job["external_id"]]


def test_an_sbatch_that_fails_after_queueing_the_job_never_runs_that_attempt(lab, institute):
    """Slurm may queue a job and still have sbatch fail (a reply lost): the refused attempt is
    moved past on the cluster, so its copy in Slurm runs nothing; the next attempt runs."""
    site = pool_site(lab)
    site.admin("set", "probe_interval", "2")
    odd_sbatch(institute, "echo sbatch: error: Socket timed out >&2; exit 1")
    try:
        job_id = site.submit("alice", "-m", "0.2", "echo $QPY_ATTEMPT >> attempts")
        wait_for(lambda: site.admin("tick") is not None and "Socket timed out" in (
            site.jobs()[job_id]["reason"] or ""), 60, "the launch refused with sbatch's words")
        [orphan] = slurm_jobs_of(site, institute, job_id)
        wait_for(lambda: institute.job(orphan["id"])["state"] in ("COMPLETED", "CANCELLED"),
                 60, "the orphan to end in Slurm (or be cancelled there)")
    finally:
        institute.exec_in("root", "umount", "/usr/bin/sbatch")
    job = settle(site, job_id, "done")
    mirror = os.path.join("qpy", os.path.basename(site.workdir("alice")))
    assert institute.read("alice", os.path.join(mirror, "attempts")).split() == [
        str(job["attempt"])]
    assert job["attempt"] > 1
