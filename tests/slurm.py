"""A private single-node Slurm on this machine, for the tests of qpy's Slurm pools.

Debian's slurm-wlm and munge, run as root with every file under DIR (a munge daemon with its
own socket, slurmctld and slurmd on their own ports): nothing in /etc is read or changed except
the munge key, which is copied. Clients find it through SLURM_CONF=DIR/slurm.conf. Jobs run as
the user who submitted them. Needs root and the packages (`make test` installs them as root).

    python tests/slurm.py up | down
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

DIR = "/tmp/qpy-slurm"
CONF = os.path.join(DIR, "slurm.conf")
PARTITION = "compute"
DAEMONS = ("munged", "slurmctld", "slurmd")


def why_unavailable():
    """None if a Slurm can be started here, else the reason (the tests then skip)."""
    if os.geteuid() != 0:
        return "needs root"
    for program in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged"):
        if not os.path.exists(program):
            return "needs %s (apt-get install slurm-wlm munge)" % program
    if not os.path.exists("/etc/munge/munge.key"):
        return "needs the munge key /etc/munge/munge.key"
    return None


def env():
    """The environment in which Slurm's commands reach this Slurm."""
    return dict(os.environ, SLURM_CONF=CONF)


def slurm(*args, check=True, timeout=60):
    return subprocess.run(args, env=env(), capture_output=True, text=True, check=check,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def write_conf(cpus, memory_mb):
    host = socket.gethostname().split(".")[0]
    settings = """
        ClusterName=qpytest
        SlurmctldHost={host}(127.0.0.1)
        SlurmctldPort=16917
        SlurmdPort=16918
        AuthType=auth/munge
        CredType=cred/munge
        AuthInfo=socket={dir}/munge/munge.sock
        SlurmUser=root
        SlurmdUser=root
        StateSaveLocation={dir}/state
        SlurmdSpoolDir={dir}/spool
        SlurmctldPidFile={dir}/slurmctld.pidfile
        SlurmdPidFile={dir}/slurmd.pidfile
        SlurmctldLogFile={dir}/log/slurmctld.log
        SlurmdLogFile={dir}/log/slurmd.log
        MailProg=/bin/true
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        SwitchType=switch/none
        MpiDefault=none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core_Memory
        SchedulerType=sched/backfill
        SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
        MinJobAge=3600
        ReturnToService=2
        InactiveLimit=0
        KillWait=5
        NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
        PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:20
    """.format(host=host, dir=DIR, cpus=cpus, memory=memory_mb, partition=PARTITION)
    with open(CONF, "w") as f:
        f.write("\n".join(line.strip() for line in settings.strip().splitlines()) + "\n")


def start_daemon(name, argv):
    log = open(os.path.join(DIR, "log", name + ".out"), "a")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, env=env(), cwd=DIR)
    with open(os.path.join(DIR, name + ".pid"), "w") as f:
        f.write(str(proc.pid))


def stop_daemon(name):
    path = os.path.join(DIR, name + ".pid")
    try:
        with open(path) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return
    os.remove(path)
    for sig, tries in ((signal.SIGTERM, 100), (signal.SIGKILL, 50)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(tries):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:  # not our child: poll its existence instead
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.1)


def wait(condition, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    logs = os.path.join(DIR, "log")
    tails = "".join(open(os.path.join(logs, name)).read()[-600:] for name in sorted(os.listdir(logs)))
    raise RuntimeError("Slurm: %s did not happen\n%s" % (what, tails))


def start_controller():
    start_daemon("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", CONF])
    wait(lambda: "UP" in slurm("scontrol", "ping", check=False).stdout, "slurmctld up")


def stop_controller():
    stop_daemon("slurmctld")


def node_idle():
    states = slurm("sinfo", "-h", "-o", "%t", check=False).stdout.split()
    return states and all(state in ("idle", "mix", "alloc") for state in states)


def up():
    down()
    for sub in ("munge", "state", "spool", "log"):
        os.makedirs(os.path.join(DIR, sub))
    os.chmod(DIR, 0o755)
    os.chmod(os.path.join(DIR, "munge"), 0o711)
    shutil.copy("/etc/munge/munge.key", os.path.join(DIR, "munge", "munge.key"))
    os.chmod(os.path.join(DIR, "munge", "munge.key"), 0o600)
    with open("/proc/meminfo") as f:
        memory_mb = int(f.readline().split()[1]) // 1024 // 2
    write_conf(os.cpu_count() or 1, memory_mb)
    socket_path = os.path.join(DIR, "munge", "munge.sock")
    start_daemon("munged", ["/usr/sbin/munged", "-F", "--force", "--socket=" + socket_path,
                            "--key-file=%s/munge/munge.key" % DIR,
                            "--log-file=%s/log/munged.log" % DIR,
                            "--pid-file=%s/munge/munged.pidfile" % DIR,
                            "--seed-file=%s/munge/munged.seed" % DIR])
    wait(lambda: os.path.exists(socket_path), "munged up")
    os.chmod(socket_path, 0o777)  # every user's sbatch authenticates through it
    start_controller()
    start_daemon("slurmd", ["/usr/sbin/slurmd", "-D", "-f", CONF])
    wait(node_idle, "the node idle")
    return {"conf": CONF, "partition": PARTITION, "cpus": os.cpu_count() or 1,
            "memory_mb": memory_mb}


def down():
    for name in reversed(DAEMONS):
        stop_daemon(name)
    shutil.rmtree(DIR, ignore_errors=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "up":
        print(up())
    elif command == "down":
        down()
    else:
        sys.exit("usage: python tests/slurm.py up | down")
