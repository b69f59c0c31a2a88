"""dask-jobqueue on qpy: QpyCluster, a dask cluster whose workers are qpy jobs.

    import sys; sys.path.insert(0, "<qpy>/contrib/dask")
    from qpy_dask import QpyCluster
    from dask.distributed import Client

    cluster = QpyCluster(cores=2, memory="4GB", walltime="01:00:00")
    cluster.scale(jobs=4)          # four qpy jobs, one dask worker each
    client = Client(cluster)       # ... client.map(...), client.gather(...)
    cluster.close()                # qpy kill of every worker's job

Each worker is one `qpy sub --parsable -c -N dask-worker bash <script>` (bash: the script
dask-jobqueue writes is not executable; -c: it removes the script once submitted, and qpy
runs the copy it took then), its cores, memory (in GB, as dask counts them: 4GB is 4 here)
and walltime asked for by the script's #QPY lines; a worker's job is stopped with `qpy
kill`. Settings as for dask-jobqueue's other kinds, under `jobqueue: qpy:`
in dask's configuration: the keys of its slurm section but queue, account, job-cpu and
job-mem, which qpy has no use for.
"""
import os
import shlex

import dask
import dask_jobqueue
import yaml
from dask_jobqueue.core import Job, JobQueueCluster, cluster_parameters, job_parameters

# qpy's defaults: those dask-jobqueue ships for Slurm (not the user's own settings of it)
with open(os.path.join(os.path.dirname(dask_jobqueue.__file__), "jobqueue.yaml")) as f:
    dask.config.update_defaults({"jobqueue": {"qpy": {
        key: value for key, value in yaml.safe_load(f)["jobqueue"]["slurm"].items()
        if key not in ("queue", "account", "job-cpu", "job-mem")}}})


class QpyJob(Job):
    submit_command = "qpy sub --parsable -c -N %s bash"
    cancel_command = "qpy kill"
    config_name = "qpy"

    def __init__(self, scheduler=None, name=None, walltime=None, config_name=None, **kwargs):
        super().__init__(scheduler=scheduler, name=name, config_name=config_name, **kwargs)
        if walltime is None:
            walltime = dask.config.get("jobqueue.%s.walltime" % self.config_name)
        requests = ["n_cores=%d" % self.worker_cores,
                    "mem=%g" % (self.worker_memory / 1e9)]
        if walltime:
            requests.append("time=%s" % walltime)
        requests = [request for request in requests
                    if not any(skip in request for skip in self.job_directives_skip)]
        extra = self.job_extra_directives
        if isinstance(extra, dict):  # (as dask-jobqueue allows: {key: value}, a #QPY key=value)
            extra = ["#QPY %s=%s" % item for item in extra.items()]
        self.job_header = "\n".join((["#QPY " + "; ".join(requests)] if requests else []) +
                                    list(extra))
        self.submit_command = QpyJob.submit_command % shlex.quote(self.job_name)


class QpyCluster(JobQueueCluster):
    __doc__ = """A dask cluster of workers that are qpy jobs.

    Parameters
    ----------
    {job}
    {cluster}
    walltime : str
        The workers' time limit (qpy's -t: HH:MM:SS...), 30 minutes by default.
    """.format(job=job_parameters, cluster=cluster_parameters)
    job_cls = QpyJob
