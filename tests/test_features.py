"""Beyond the original: GPUs, thread counts, and the other Slurm-style features."""
import os

from conftest import wait_for

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
    outputs = sorted(site.read("job_%d.out" % j) for j in jobs[:2])
    assert outputs == ["0 0\n", "1 1\n"]
    assert site.jobs()[jobs[2]]["reason"] == "waiting for resources"
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
