"""The institute of tests/institute.py is what the Slurm-over-ssh pool's tests take it for: a
Slurm that lab users reach by real ssh with their lab key, sharing no file with the lab, and
whose faults (a cut link, a full disk) are the ones a test asks for. Skipped without root,
sshd, network namespaces, or Debian's slurm-wlm and munge."""
import os
import shlex

from conftest import wait_for


def sbatch(institute, user, command):
    """A job submitted by `user` over ssh, from their institute home: its Slurm ID."""
    result = institute.ssh(user, "sbatch --parsable --wrap " + shlex.quote(command))
    assert result.returncode == 0 and result.stderr == "", result
    job_id = result.stdout.strip()
    assert job_id.isdigit(), result
    return job_id


def wait_state(institute, job_id, *states, timeout=60):
    wait_for(lambda: (institute.job(job_id) or {}).get("state") in states, timeout,
             "Slurm job %s to be %s" % (job_id, "/".join(states)))
    return institute.job(job_id)


def test_a_job_submitted_over_ssh_runs_at_the_institute_and_its_files_stay_there(
        institute, cluster):
    lab_home = os.path.join(cluster.DIR, "home", cluster.real("alice"))
    marker = "lab-marker-%d" % os.getpid()
    cluster.as_user(cluster.real("alice"), "echo lab > ~/" + marker)
    assert os.path.exists(os.path.join(lab_home, marker))
    # (the same path, another filesystem: her institute home)
    assert institute.home("alice") == lab_home
    job_id = sbatch(institute, "alice", "hostname")
    job = wait_state(institute, job_id, "COMPLETED", "FAILED")
    assert (job["state"], job["user"], job["name"]) == ("COMPLETED", "alice", "wrap")
    output = "slurm-%s.out" % job_id
    assert institute.read("alice", output) == "hpc\n"
    assert institute.ssh("alice", "cat " + output).stdout == "hpc\n"
    assert not os.path.exists(os.path.join(lab_home, output))
    # inside, her home is there (her key is) but not her lab files
    assert institute.read("alice", ".ssh/authorized_keys") is not None
    assert institute.read("alice", marker) is None
    assert marker not in institute.ssh("alice", "ls -a").stdout.split()
    # and bob cannot read hers there (0700 homes)
    assert institute.read("bob", os.path.join(lab_home, output)) is None


def test_the_lab_s_qpy_install_and_cluster_directory_are_not_at_the_institute(
        institute, cluster):
    for path in ("qpy/qpy.py", "venv/bin/python", "ssh_config", "made"):
        assert os.path.exists(os.path.join(cluster.DIR, path)), path
        assert institute.exec_in("root", "test", "-e",
                                 os.path.join(cluster.DIR, path)).returncode == 1, path
    # what is there of the cluster's directory inside: the institute's homes and own files
    listing = institute.exec_in("root", "ls", cluster.DIR)
    assert sorted(listing.stdout.split()) == ["home", "institute"], listing
    assert os.listdir(os.path.join(cluster.DIR, "institute")) == []  # (the lab side's)
    # sbatch found its slurm.conf with no SLURM_CONF: the institute's own, in /etc/slurm
    conf = institute.ssh("alice", "echo ${SLURM_CONF:-none}; scontrol show config")
    assert conf.stdout.startswith("none\n") and "ClusterName             = institute" in \
        conf.stdout, conf


def test_alice_reaches_the_account_whose_name_is_not_her_lab_name(institute, cluster):
    account = institute.account()
    assert account not in cluster.NAMES.values() and len(account) <= 32
    result = institute.ssh("alice", "whoami; pwd", login=account)
    assert result.stdout.split() == [account, institute.home(account)], result
    assert not os.path.exists(institute.home(account))  # (no home of it on the lab side)
    # the key is alice's: bob's does not open it
    assert institute.ssh("bob", "true", login=account).returncode == 255


def test_a_partition_cuts_the_login_node_off_while_slurm_runs_on(institute):
    job_id = sbatch(institute, "alice", "while :; do echo tick >> ticks; sleep 0.2; done")
    wait_state(institute, job_id, "RUNNING")
    count = lambda: (institute.read("alice", "ticks") or "").count("tick")
    wait_for(lambda: count() > 0, 30, "the job's first tick")
    institute.partition()
    cut = institute.ssh("alice", "true", options=("-o", "ConnectTimeout=3"))
    assert cut.returncode == 255 and "timed out" in cut.stderr, cut
    before = count()  # (inside, no network needed: Slurm and its job go on)
    wait_for(lambda: count() >= before + 3, 30, "the job to tick on while partitioned")
    assert institute.job(job_id)["state"] == "RUNNING"
    institute.heal()
    assert institute.ssh("alice", "true", options=("-o", "ConnectTimeout=10")).returncode == 0
    assert institute.job(job_id)["state"] == "RUNNING"
    assert institute.ssh("alice", "scancel " + job_id).returncode == 0
    wait_state(institute, job_id, "CANCELLED")


def test_a_stopped_slurmctld_comes_back_with_the_job_that_ran_on_meanwhile(institute):
    job_id = sbatch(institute, "alice", "while :; do echo tick >> ticks-ctld; sleep 0.2; done")
    wait_state(institute, job_id, "RUNNING")
    count = lambda: (institute.read("alice", "ticks-ctld") or "").count("tick")
    wait_for(lambda: count() > 0, 30, "the job's first tick")
    institute.stop_slurmctld()
    assert not institute.controller_up()
    before = count()
    wait_for(lambda: count() >= before + 3, 30, "the job to tick on without slurmctld")
    institute.start_slurmctld()
    assert institute.job(job_id)["state"] == "RUNNING"  # (from its saved state)
    assert institute.ssh("alice", "scancel " + job_id).returncode == 0
    wait_state(institute, job_id, "CANCELLED")


def test_a_full_disk_refuses_writes_in_the_home_until_freed(institute):
    write = lambda name: institute.ssh("alice", "printf x > " + name)
    assert write("before-full").returncode == 0
    institute.fill_disk()
    full = write("while-full")  # (a new file: a rewritten one would get back its own page)
    assert full.returncode != 0 and "No space left on device" in full.stderr, full
    assert institute.read("alice", "while-full") == ""
    institute.free_disk()
    assert write("after-full").returncode == 0
    assert institute.read("alice", "after-full") == "x"
