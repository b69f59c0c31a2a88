"""The Snakemake profile of contrib/snakemake with real Snakemake (make test installs it in
.venv-workflows): a workflow runs as qpy jobs with nothing written by the user."""
import os
import shlex
import signal
import subprocess

import pytest

from conftest import QPY, REPO, read_jobs, wait_for

SNAKEMAKE = os.path.join(REPO, ".venv-workflows", "bin", "snakemake")
PROFILE = os.path.join(REPO, "contrib", "snakemake")

WORKFLOW = '''
rule all:
    input: "gathered.txt"

rule part:
    output: "part_{i}.txt"
    threads: 1
    shell: "echo {wildcards.i} > {output}"

rule gather:
    input: expand("part_{i}.txt", i=range(3))
    output: "gathered.txt"
    shell: "cat {input} > {output}"

rule broken:
    output: "never.txt"
    shell: "echo trying; exit 3"

rule long:
    output: "long.txt"
    shell: "sleep 300; touch {output}"
'''


@pytest.fixture
def workflow(site):
    if not os.access(SNAKEMAKE, os.X_OK):
        pytest.skip("needs Snakemake: make workflows (make test does it)")
    with open(os.path.join(site.work, "Snakefile"), "w") as f:
        f.write(WORKFLOW)
    bindir = os.path.join(site.home, "bin")  # `qpy` as the profile calls it
    os.makedirs(bindir)
    for name, command in (("qpy", QPY), ("qpy-kill", QPY + ["kill"])):
        with open(os.path.join(bindir, name), "w") as f:
            f.write("#!/bin/sh\nexec %s \"$@\"\n" % shlex.join(command))
        os.chmod(os.path.join(bindir, name), 0o755)
    env = dict(site.env, PATH=bindir + ":" + os.environ["PATH"])

    def snakemake(*targets, **kw):
        return subprocess.Popen([SNAKEMAKE, "--profile", PROFILE, "-j", "4"] + list(targets),
                                cwd=site.work, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kw)
    return snakemake


def test_a_fan_out_and_gather_runs_as_qpy_jobs(site, workflow):
    run = workflow()
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert site.read("gathered.txt") == "0\n1\n2\n"
    jobs = read_jobs(site.state)
    assert sorted(job["name"] for job in jobs.values()) == ["smk-gather"] + ["smk-part"] * 3
    assert all(job["status"] == "done" for job in jobs.values())


def test_a_failing_rule_is_reported_failed(site, workflow):
    run = workflow("never.txt")
    out, _ = run.communicate(timeout=300)
    assert run.returncode != 0 and "Error in rule broken" in out, out
    (job,) = read_jobs(site.state).values()  # (the job is Snakemake running the rule: its
    assert (job["name"], job["status"]) == ("smk-broken", "failed")  # exit status is 1)
    assert job["exit_code"] != 0


def test_an_interrupted_run_kills_its_qpy_jobs(site, workflow):
    run = workflow("long.txt", start_new_session=True)
    wait_for(lambda: any(job["status"] == "running" for job in read_jobs(site.state).values()),
             timeout=120, what="the long rule's job to run")
    run.send_signal(signal.SIGINT)  # (Ctrl-C: Snakemake cancels its jobs with qpy kill)
    out, _ = run.communicate(timeout=120)
    assert run.returncode != 0, out
    (job_id,) = read_jobs(site.state)
    site.wait_status(job_id, "killed")
