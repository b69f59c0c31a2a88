"""contrib/dask with real dask-jobqueue (installed by `make test` into .venv-workflows): a
dask cluster whose workers are qpy jobs computes, and its close kills them."""
import os
import subprocess

import pytest

from conftest import read_jobs
from test_cli import commands_on_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(REPO, ".venv-workflows", "bin", "python")

CLIENT = """
import sys
sys.path.insert(0, %r)
from qpy_dask import QpyCluster
from dask.distributed import Client

cluster = QpyCluster(cores=1, memory="1GB", processes=1, walltime="00:10:00",
                     death_timeout=60)
print(cluster.job_script(), file=sys.stderr)
cluster.scale(jobs=2)
client = Client(cluster)
client.wait_for_workers(2, timeout=180)
print(sum(client.gather(client.map(lambda x: x * x, range(10)))))
print(len(client.scheduler_info()["workers"]))
client.close()
cluster.close()
"""


def test_a_dask_cluster_runs_its_workers_as_qpy_jobs(site, tmp_path):
    if not os.access(PYTHON, os.X_OK) or subprocess.run(
            [PYTHON, "-c", "import dask_jobqueue"], capture_output=True).returncode:
        pytest.skip("needs dask-jobqueue: make workflows (make test does it)")
    env = dict(site.env, PATH=commands_on_path(tmp_path))
    result = subprocess.run([PYTHON, "-c", CLIENT % os.path.join(REPO, "contrib", "dask")],
                            cwd=site.work, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    assert result.stdout.split() == ["285", "2"]
    assert "#QPY n_cores=1; mem=1; time=00:10:00" in result.stderr
    jobs = read_jobs(site.state)
    assert len(jobs) == 2
    for job in jobs.values():
        assert (job["name"], job["n_cores"], job["mem"], job["time_limit"]) == (
            "dask-worker", 1, 1.0, 600)
    site.wait_idle()  # (close killed both workers' jobs)
    assert {site.status(job_id) for job_id in jobs} == {"killed"}
    for job_id in jobs:
        assert "Starting Worker" in site.read("job_%d.err" % job_id) or \
            "Start worker" in site.read("job_%d.err" % job_id)
