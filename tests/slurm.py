"""A private single-node Slurm on this machine, for the tests of qpy's Slurm pools.

Debian's slurm-wlm and munge, run as root with every file under DIR (a munge daemon with its
own socket and key, slurmctld and slurmd on their own ports): nothing in /etc is read or
changed. Clients find it through SLURM_CONF=DIR/slurm.conf. Jobs run as the user who submitted
them. Needs root and the packages (`make test` installs them as root).

It is named from the run (tests/runs.py), so that two runs at once each have their own: the
directory /tmp/qpy-slurm-<run> (state, spool, logs, munge), the cluster name qpys<run>, and two
ports that no other run holds and nothing listens on. A run whose process died without its
`down` is removed by the next run's `up` (or by `clean`).

    python tests/slurm.py up [RUN] | down RUN | clean
"""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import runs

PREFIX = "/tmp/qpy-slurm-"  # + the run: its directory
PARTITION = "compute"
DAEMONS = ("munged", "slurmctld", "slurmd")
TAKEN_PORTS = {16917, 16918}  # (those of tests/slurm.py before runs had names)


def use(run):
    global RUN, DIR, CONF, CLUSTER
    RUN, DIR = run, PREFIX + run
    CONF = os.path.join(DIR, "slurm.conf")
    CLUSTER = "qpys" + run


def why_unavailable():
    """None if a Slurm can be started here, else the reason (the tests then skip)."""
    if os.geteuid() != 0:
        return "needs root"
    for program in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged"):
        if not os.path.exists(program):
            return "needs %s (apt-get install slurm-wlm munge)" % program
    return None


def env():
    """The environment in which Slurm's commands reach this Slurm."""
    return dict(os.environ, SLURM_CONF=CONF)


def slurm(*args, check=True, timeout=60):
    return subprocess.run(args, env=env(), capture_output=True, text=True, check=check,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def free_ports():
    """Two ports in a row, from a place drawn from the run, that no other run's Slurm has and
    nothing listens on (take the lock first)."""
    taken = set(TAKEN_PORTS)
    for path in runs.runs_of(PREFIX).values():
        try:
            with open(os.path.join(path, "ports")) as f:
                taken.update(int(port) for port in f.read().split())
        except (OSError, ValueError):
            pass
    candidates = list(range(17000, 32000, 2))
    start = int(hashlib.sha1(RUN.encode()).hexdigest(), 16) % len(candidates)
    for port in candidates[start:] + candidates[:start]:
        if not {port, port + 1} & taken and bindable(port) and bindable(port + 1):
            return port, port + 1
    raise RuntimeError("Slurm: no free ports in 17000-31999")


def bindable(port):
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


# What every private Slurm of the tests runs with (this one, and tests/institute.py's): root's
# daemons, munge with its own socket, no cgroups, no accounting, a scheduler that does not
# wait, ended jobs kept an hour in squeue. {dir} holds its state, spool and logs.
COMMON_SETTINGS = """
    AuthType=auth/munge
    CredType=cred/munge
    AuthInfo=socket={dir}/munge/munge.sock
    SlurmUser=root
    SlurmdUser=root
    StateSaveLocation={dir}/state
    SlurmdSpoolDir={dir}/spool
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
"""


def write_settings(path, directory, own):
    """slurm.conf at `path`: the common settings for `directory`, then `own` lines."""
    text = COMMON_SETTINGS.format(dir=directory) + own
    with open(path, "w") as f:
        f.write("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")


def write_conf(cpus, memory_mb, ports):
    host = socket.gethostname().split(".")[0]
    write_settings(CONF, DIR, """
        ClusterName={cluster}
        SlurmctldHost={host}(127.0.0.1)
        SlurmctldPort={ports[0]}
        SlurmdPort={ports[1]}
        SlurmctldPidFile={dir}/slurmctld.pidfile
        SlurmdPidFile={dir}/slurmd.pidfile
        NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
        PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:20
    """.format(cluster=CLUSTER, host=host, ports=ports, dir=DIR, cpus=cpus, memory=memory_mb,
               partition=PARTITION))


def start_daemon(name, argv):
    log = open(os.path.join(DIR, "log", name + ".out"), "a")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, env=env(), cwd=DIR)
    with open(os.path.join(DIR, name + ".pid"), "w") as f:
        f.write(str(proc.pid))


def stop_daemon(name, directory=None):
    """Stop a daemon of this run (of the run in `directory`), if its PID is still its."""
    directory = directory or DIR
    path = os.path.join(directory, name + ".pid")
    try:
        with open(path) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return
    os.remove(path)
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return  # (our child, ended)
    except ChildProcessError:  # not our child (a dead run's): is that PID still the daemon's?
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if (directory + "/").encode() not in f.read():
                    return
        except OSError:
            return
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


def up(owner=None):
    """Start the run's Slurm, belonging to process `owner` (this one by default). The leftovers
    of dead runs go first."""
    with runs.locked():  # (one run at a time chooses its ports, and holds them once it returns)
        for leftover in runs.leftovers(PREFIX):
            remove(leftover)
        if runs.owner(DIR) == os.getpid():
            down()  # (this process's earlier Slurm)
        elif os.path.exists(DIR):
            raise RuntimeError("Slurm: run %s is in use by process %s" % (RUN, runs.owner(DIR)))
        runs.claim(DIR, owner or os.getpid())
        try:
            return start()
        except BaseException:
            down()
            raise


def start():
    ports = free_ports()
    with open(os.path.join(DIR, "ports"), "w") as f:
        f.write("%d %d\n" % ports)
    for sub in ("munge", "state", "spool", "log"):
        os.makedirs(os.path.join(DIR, sub))
    os.chmod(os.path.join(DIR, "munge"), 0o711)
    key = os.open(os.path.join(DIR, "munge", "munge.key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                  0o600)
    os.write(key, os.urandom(128))  # (this Slurm's own: nobody else's credentials pass)
    os.close(key)
    with open("/proc/meminfo") as f:
        memory_mb = int(f.readline().split()[1]) // 1024 // 2
    write_conf(os.cpu_count() or 1, memory_mb, ports)
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
    return {"run": RUN, "conf": CONF, "partition": PARTITION, "cpus": os.cpu_count() or 1,
            "memory_mb": memory_mb, "ports": ports}


def down():
    remove(DIR)


def remove(directory):
    """Stop a run's daemons and remove its directory."""
    for name in reversed(DAEMONS):
        stop_daemon(name, directory)
    shutil.rmtree(directory, ignore_errors=True)


use(runs.current())

if __name__ == "__main__":
    command, run = (sys.argv[1:] + ["", ""])[:2]
    if run:
        use(run)
    if command == "up":
        print(up(owner=os.getppid()))  # (kept while the shell that asked lives)
    elif command == "down" and run:
        down()
    elif command == "clean":
        with runs.locked():
            for leftover in runs.leftovers(PREFIX):
                remove(leftover)
                print("removed", leftover)
    else:
        sys.exit(__doc__)
