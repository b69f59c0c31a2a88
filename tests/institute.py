"""The institute: a private Slurm cluster that the lab reaches only by ssh to its login node.

The lab of tests/cluster.py shares one filesystem between its nodes. The institute shares
none with the lab, as a university's HPC centre would not: what a lab user has there arrives
over ssh, and what a job writes there stays there until fetched over ssh. It serves the tests
of a qpy pool whose Slurm is behind an ssh hop.

It is one more host on the run's bridge, `hpc` at <NET>.20: a network namespace holding new
UTS, PID and mount namespaces (as cluster.start_node makes a node), whose init script builds
the institute's own filesystem and starts Slurm, then becomes its sshd (PID 1: killing the
namespace's processes kills the institute, and its disks with it). Inside its mount namespace,
which is a slave (nothing mounted inside shows outside), before anything runs:

  * a tmpfs (64 MB) on <DIR>/institute, an empty directory the lab made for it, becomes the
    institute's /tmp. So the whole of the lab's /tmp is out of sight there: the cluster's
    directory <DIR> (the lab's homes, its qpy install <DIR>/qpy and <DIR>/venv, its sites),
    the lab users' ssh master sockets, pytest's directories. The institute needs no qpy.
  * In it, <DIR>/institute (the same path, now a directory of that tmpfs) is the institute's
    private system directory: slurm.conf, munge's key (made there, at boot, so no lab file
    ever holds it), socket and seed, Slurm's state and spool, every log, sshd's config and key.
  * <DIR>/home, at the very path of the lab's homes (the path /etc/passwd gives the users),
    is a second tmpfs (64 MB, its own so that fill_disk() fills the homes and not Slurm's
    state): the institute's homes. alice, bob and carol (their real names) have one, holding
    /etc/skel and a .ssh/authorized_keys with their lab public key, copied at boot (0700
    directories, 0600 key: what sshd's StrictModes wants). So does one institute-only
    account, ahpc_<run> (account()), a real Unix user made here whose authorized_keys holds
    alice's lab key: alice reaches it by `ssh ahpc_<run>@hpc`, as a user whose name at the
    institute is not their lab name. (It is in /etc/passwd, the machine's, so the lab knows
    the name too; it has no home on the lab side.)
  * /etc/slurm is bound to <DIR>/institute/etc-slurm, so that sbatch, squeue and the rest
    find slurm.conf with no SLURM_CONF, over ssh or not; /etc/hosts to the institute's own
    (localhost, hpc). The machine's /etc is not touched.

Slurm there: munged (its own key and socket), slurmctld and slurmd started by the init script
in the background, as root, on Slurm's usual ports (the namespace is the institute's own).
ClusterName=institute, one partition `compute` (Default=YES) of one node `hpc`
(NodeAddr=127.0.0.1) that says it has 4 CPUs and 90% of the machine's memory whatever the
machine has (SlurmdParameters=config_overrides), 1 GB per CPU unless asked (DefMemPerCPU), no
oversubscription: a full node makes jobs wait, as at an institute. MinJobAge=3600 keeps ended
jobs in squeue --states=all for an hour. There is no accounting storage: sacct does not work;
read ended jobs from squeue. Jobs run as their user, in their institute home (sbatch's cwd).

The lab side gets `hpc` in <DIR>/hosts, a `Host hpc` in <DIR>/ssh_config (the node's known
hosts rules) and hpc's host key in <DIR>/known_hosts: a lab user just types `ssh hpc`.
Everything made is recorded in <DIR>/made (the namespace, the veth, the user), so
cluster.undo (cluster.down, or the next run's removal of a dead run's leftovers) removes the
institute with the cluster; its filesystems vanish with its processes. Named from the run:
namespace <NET_PREFIX>-hpc, veth <NET_PREFIX>vh, user ahpc_<run>; two runs never meet.

The tests see it through the `institute` fixture (tests/conftest.py), which builds it once on
the session's cluster and puts it back after each test (reset). As a script, for a cluster
made by `python tests/cluster.py up RUN`:

    python tests/institute.py up RUN       build it (cluster.py down RUN removes it)
    python tests/institute.py exec RUN USER COMMAND...
"""
import os
import shlex
import shutil
import subprocess
import sys
import time

import cluster
import slurm

NAME = "hpc"  # its hostname, its node's name in Slurm, its name in the lab's ssh config
HOST_NUMBER = 20  # <NET>.20
CLUSTER_NAME = "institute"
PARTITION = "compute"
CPUS = 4  # what its node says it has (the machine may have fewer: config_overrides)
DISK_MB = 64  # each of its two tmpfs: /tmp (its system files) and the homes
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
_init = None  # the Popen of its init (kept, so that it is not collected while it runs)


# ---- names, all from the cluster's run ----------------------------------------------------

def account():
    """The institute-only account's (real) name: alice's key logs in to it."""
    return "ahpc_" + cluster.RUN


def address():
    """What a lab user gives ssh to reach the institute's login node."""
    return NAME


def ip():
    return "%s.%d" % (cluster.NET, HOST_NUMBER)


def namespace():
    return "%s-%s" % (cluster.NET_PREFIX, NAME)


def veth():
    return cluster.NET_PREFIX + "vh"  # (14 characters at most: an interface name has 15)


def staging():
    """The lab-side directory (root's only) of what the institute copies at boot: its init
    script, sshd's config and key, slurm.conf, hosts; and its init's log."""
    return os.path.join(cluster.DIR, "nodes", NAME)


def private():
    """The institute's private system directory, as seen inside (outside, the same path is the
    empty mount point of its /tmp)."""
    return os.path.join(cluster.DIR, "institute")


def home(user):
    """A user's institute home, as seen inside: the path of their lab home, another
    filesystem. Read it with exec_in(), read() or ssh(), never open() from the lab."""
    return os.path.join(cluster.DIR, "home", real_user(user))


def real_user(user):
    return cluster.real_word(user)  # (alice -> alice_<run>; root, the account: as they are)


def why_unavailable():
    """None if an institute can be built here, else the reason (the tests then skip)."""
    reason = cluster.why_unavailable()
    if reason:
        return reason
    for program in DAEMONS:
        if not os.path.exists(program):
            return "needs %s (apt-get install slurm-wlm munge)" % program
    if not os.path.isdir("/etc/slurm"):  # (the mount point of its own, inside)
        return "needs the directory /etc/slurm (Debian's slurm-client makes it)"
    if shutil.which("nsenter") is None:
        return "needs nsenter (util-linux)"
    return None


# ---- building and booting ------------------------------------------------------------------

def up():
    """Build the institute on the run's cluster (which must be up) if it is not there yet,
    boot it if it is not running (a reboot loses its disks: homes, Slurm's jobs), and wait
    until its sshd answers and its node is idle in Slurm. Returns what a test may need."""
    if not os.path.exists(os.path.join(cluster.DIR, "made")) or cluster.NET is None:
        raise RuntimeError("institute: the cluster of run %s is not up" % cluster.RUN)
    if not os.path.exists(os.path.join(staging(), "built")):
        if cluster.exists(account()):  # (not ours: never removed by the down below)
            raise RuntimeError("institute: the user %s exists already (another run?)"
                               % account())
        try:
            build()
        except BaseException:
            down()
            raise
    if init_pid() is None:
        boot()
    wait_ready()
    return {"address": NAME, "ip": ip(), "account": account(), "partition": PARTITION,
            "cpus": CPUS, "memory_mb": memory_mb(), "cluster": CLUSTER_NAME}


def build():
    """What the lab side holds of the institute: its user, its network, its boot files."""
    if not os.path.isdir(os.path.join(cluster.DIR, "qpy")):
        raise RuntimeError("institute: the lab's qpy install is not there yet")
    os.makedirs(staging(), mode=0o700)
    os.chmod(staging(), 0o700)  # (its host key; nothing of it is a lab user's business)
    os.makedirs(private(), mode=0o755, exist_ok=True)  # (empty for ever on the lab side:
    # inside, the mount point of its /tmp)
    make_account()
    make_network()
    write_boot_files()
    tell_the_lab()
    open(os.path.join(staging(), "built"), "w").close()


def make_account():
    # No home on the lab side (-M): its home is made inside at each boot.
    cluster.sh("useradd", "-M", "-d", home(account()), "-s", "/bin/bash", account())
    cluster.made("user", account())


def make_network():
    space, link = namespace(), veth()
    cluster.sh("ip", "netns", "add", space)
    cluster.made("netns", space)
    cluster.sh("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", space)
    cluster.made("link", link)
    cluster.sh("ip", "link", "set", link, "master", cluster.BRIDGE, "up")
    cluster.sh("ip", "-n", space, "addr", "add", ip() + "/24", "dev", "eth0")
    cluster.sh("ip", "-n", space, "link", "set", "lo", "up")
    cluster.sh("ip", "-n", space, "link", "set", "eth0", "up")


def memory_mb():
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) // 1024 * 9 // 10  # (a bit under the machine's)


def write_boot_files():
    key = os.path.join(staging(), "host_key")
    cluster.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
    with open(os.path.join(staging(), "sshd_config"), "w") as f:
        f.write(cluster.SSHD_CONFIG % {"address": ip(),
                                        "key": os.path.join(private(), "ssh", "host_key")})
    with open(os.path.join(staging(), "hosts"), "w") as f:
        f.write("127.0.0.1 localhost\n%s %s\n" % (ip(), NAME))
    write_slurm_conf(os.path.join(staging(), "slurm.conf"))
    with open(os.path.join(staging(), "init.sh"), "w") as f:
        f.write(init_script())


def write_slurm_conf(path):
    """slurm.conf: the settings of the tests' private Slurms (slurm.COMMON_SETTINGS), with
    the institute's node; 1 GB per CPU unless a job asks (else one job takes the node)."""
    slurm.write_settings(path, private(), """
        ClusterName={cluster}
        SlurmctldHost={name}(127.0.0.1)
        SlurmctldPidFile={dir}/slurmctld.pid
        SlurmdPidFile={dir}/slurmd.pid
        DefMemPerCPU=1024
        SlurmdParameters=config_overrides
        NodeName={name} NodeAddr=127.0.0.1 CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={memory} State=UNKNOWN
        PartitionName={partition} Nodes={name} Default=YES MaxTime=INFINITE State=UP
    """.format(cluster=CLUSTER_NAME, name=NAME, dir=private(), cpus=CPUS, memory=memory_mb(),
               partition=PARTITION))


def accounts():
    """(user, whose lab key logs in) of every institute home."""
    return [(user, user) for user in cluster.USERS] + [(account(), cluster.NAMES["alice"])]


def init_script():
    """The institute's boot, run as PID 1 of its namespaces: its filesystem, then Slurm, then
    sshd in its place."""
    if not cluster.DIR.startswith("/tmp/"):
        raise RuntimeError("institute: the cluster's directory must be under /tmp")
    inner = cluster.DIR[len("/tmp/"):]  # (the cluster's directory in the new /tmp)
    q = shlex.quote
    lines = [
        "set -eux  # (its log, init.log, says how far it went)",
        "hostname " + NAME,
        "# Its /tmp-to-be, on the empty directory the lab made for it: where it is mounted",
        "# now, the lab's files are still in sight, to copy what the institute takes of them.",
        "mount -t tmpfs -o size=%dm,mode=1777 qpy-institute %s" % (DISK_MB, q(private())),
        "new=%s/%s" % (q(private()), q(inner)),
        "mkdir -p \"$new/institute\" \"$new/home\"",
        "chmod 755 \"$new\"",
        "p=\"$new/institute\"",
        "mkdir -p \"$p/etc-slurm\" \"$p/ssh\" \"$p/munge\" \"$p/state\" \"$p/spool\" \"$p/log\"",
        "chmod 711 \"$p/munge\"",
        "cp %s/sshd_config %s/host_key \"$p/ssh/\"" % (q(staging()), q(staging())),
        "cp %s/slurm.conf \"$p/etc-slurm/\"" % q(staging()),
        "cp %s/hosts \"$p/hosts\"" % q(staging()),
        "(umask 077; head -c 128 /dev/urandom > \"$p/munge/munge.key\")"
        "  # (its own: no lab credential passes)",
        "# The homes: a filesystem of their own, so that a full home is not a full Slurm.",
        "mount -t tmpfs -o size=%dm,mode=755 qpy-institute-homes \"$new/home\"" % DISK_MB,
    ]
    for user, key_of in accounts():
        h = "\"$new/home/%s\"" % user
        lines += [
            "mkdir -m 700 %s && cp -rT /etc/skel %s && mkdir -m 700 %s/.ssh" % (h, h, h),
            "install -m 600 %s %s/.ssh/authorized_keys"
            % (q(os.path.join(cluster.DIR, "home", key_of, ".ssh", "id_ed25519.pub")), h),
            "chown -R %s: %s" % (user, h),
        ]
    lines += [
        "# From here on the lab's /tmp, and with it the cluster's directory, is out of sight:",
        "# the private directory and the homes are back at their paths in the new /tmp.",
        "mount --rbind %s /tmp" % q(private()),
        "mount --bind %s/etc-slurm /etc/slurm" % q(private()),
        "mount --bind %s/hosts /etc/hosts" % q(private()),
        "cd %s" % q(private()),
        "p=%s" % q(private()),
        "/usr/sbin/munged -F --force --socket=\"$p/munge/munge.sock\" "
        "--key-file=\"$p/munge/munge.key\" --log-file=\"$p/log/munged.log\" "
        "--pid-file=\"$p/munge/munged.pid\" --seed-file=\"$p/munge/munged.seed\" "
        "</dev/null >>\"$p/log/munged.out\" 2>&1 &",
        "i=0",
        "until [ -S \"$p/munge/munge.sock\" ]; do",
        "  i=$((i + 1)); [ $i -lt 400 ] || { echo 'institute: munged did not start' >&2; exit 1; }",
        "  sleep 0.05",
        "done",
        "chmod 777 \"$p/munge/munge.sock\"  # every user's sbatch authenticates through it",
        slurmctld_command(),
        "/usr/sbin/slurmd -D </dev/null >>\"$p/log/slurmd.out\" 2>&1 &",
        "exec %s -D -f \"$p/ssh/sshd_config\" -E \"$p/log/sshd.log\"" % cluster.SSHD,
    ]
    return "\n".join(lines) + "\n"


def slurmctld_command():
    """The shell line that starts slurmctld in the background (at boot, and again after
    stop_slurmctld: it takes back the jobs from its saved state)."""
    p = shlex.quote(private())
    return "setsid /usr/sbin/slurmctld -D -i </dev/null >>%s/log/slurmctld.out 2>&1 &" % p


def tell_the_lab():
    """`ssh hpc` for every lab user: its name and address, its host key, the node's rules."""
    with open(os.path.join(cluster.DIR, "hosts"), "a") as f:  # (the same file, the nodes'
        f.write("%s %s\n" % (ip(), NAME))                     # /etc/hosts: no new inode)
    with open(os.path.join(staging(), "host_key.pub")) as f:
        key = " ".join(f.read().split()[:2])
    with open(os.path.join(cluster.DIR, "known_hosts"), "a") as f:
        f.write("%s,%s %s\n" % (NAME, ip(), key))
    # (a Host block matches the name typed, not its HostName: node*'s rules are not hpc's)
    with open(os.path.join(cluster.DIR, "ssh_config"), "a") as f:
        f.write("Host %s\n  HostName %s\n  GlobalKnownHostsFile %s/known_hosts\n"
                "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
                "  KexAlgorithms curve25519-sha256\n  LogLevel ERROR\n"
                % (NAME, ip(), cluster.DIR))


def boot():
    """Start the institute's init in its namespaces (the netns made by build)."""
    global _init
    log = open(os.path.join(staging(), "init.log"), "a")
    _init = subprocess.Popen(
        # (nsenter, not `ip netns exec`: that one mounts a sysfs of the namespace's own on /sys,
        # and slurmd needs the machine's cgroup mounts under it)
        ["nsenter", "--net=/run/netns/" + namespace(), "--", "unshare", "--uts", "--pid",
         "--mount", "--fork", "--kill-child", "--mount-proc", "--propagation", "slave", "sh",
         os.path.join(staging(), "init.sh")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        env={"PATH": PATH, "LANG": "C.UTF-8"})  # (nothing of the tests' environment)
    log.close()
    with open(os.path.join(staging(), "pid"), "w") as f:
        f.write(str(_init.pid))


def init_pid():
    """The machine's PID of the institute's PID 1, None if it is not running."""
    try:
        with open(os.path.join(staging(), "pid")) as f:
            unshare = int(f.read())
        with open("/proc/%d/task/%d/children" % (unshare, unshare)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_ready(timeout=60):
    """Until its sshd answers (from the lab) and its node is idle in Slurm; else raise with
    the tails of its logs."""
    deadline = time.time() + timeout
    why = "not up (sshd answering, node idle) after %ds" % timeout
    while time.time() < deadline:
        if init_pid() is not None and cluster.port_open(ip(), 22) and node_state() == "idle":
            return
        if _init is not None and _init.poll() is not None:
            why = "its init ended (exit status %d)" % _init.returncode
            break
        time.sleep(0.1)
    raise RuntimeError("institute: %s\n%s" % (why, logs()))


def node_state():
    result = exec_in("root", "sinfo", "--noheader", "--format=%t", timeout=20)
    return result.stdout.strip() if result.returncode == 0 else None


def logs(tail=800):
    """The ends of its init's log and, while it runs, of every log inside."""
    parts = []
    try:
        with open(os.path.join(staging(), "init.log")) as f:
            parts.append("== init.log\n" + f.read()[-tail:])
    except OSError:
        pass
    if init_pid() is not None:
        listing = exec_in("root", "sh", "-c", "cd %s/log && for f in *; do echo \"== $f\"; "
                          "tail -c %d \"$f\"; done" % (shlex.quote(private()), tail), timeout=20)
        parts.append(listing.stdout + listing.stderr)
    return "\n".join(parts)


def down():
    """Remove the institute alone (the cluster stays): its processes (its filesystems go with
    them), its network, its user, its lines in the lab's files stay (harmless). cluster.undo
    does as much, from <DIR>/made, for a run that ends."""
    cluster.stop(None, namespace())
    cluster.sh("ip", "netns", "del", namespace(), check=False)
    cluster.sh("ip", "link", "del", veth(), check=False)
    for _ in range(20):
        pids = cluster.user_pids(account())
        if not pids:
            break
        cluster.kill_pids(pids)
        time.sleep(0.1)
    if cluster.sh("getent", "passwd", account(), check=False).returncode == 0:
        cluster.sh("userdel", account(), check=False)
    shutil.rmtree(staging(), ignore_errors=True)
    shutil.rmtree(private(), ignore_errors=True)


# ---- what the tests do with it -------------------------------------------------------------

def exec_in(user, *command, input=None, timeout=60):
    """Run a command inside the institute's namespaces (no ssh, no network: it works while
    partitioned), as `user` (root, or one with an institute home), in their institute home
    (root: in /), with a clean environment. The user, and any word of the command that is a
    logical name (alice...), are taken in the run's real names. Returns the CompletedProcess
    (text), whatever its exit status."""
    init = init_pid()
    if init is None:
        raise RuntimeError("institute: not running")
    name = real_user(user)
    where, as_user = ("/", []) if name == "root" else (home(name), ["runuser", "-u", name, "--"])
    env = ["env", "-i", "PATH=" + PATH, "LANG=C.UTF-8", "USER=" + name, "LOGNAME=" + name,
           "HOME=" + ("/root" if name == "root" else where)]
    # (into its home once inside: nsenter's --wd takes the directory of the lab's side, as
    # the working directory it keeps when it enters the mount namespace)
    return subprocess.run(
        ["nsenter", "--target", str(init), "--net", "--uts", "--mount", "--pid", "--"]
        + as_user + env + ["sh", "-c", 'cd "$0" && exec "$@"', where]
        + [cluster.real_word(word) for word in command],
        input=input, capture_output=True, text=True, timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL)


def read(user, name):
    """A file of the institute (a path, or a name in the user's institute home) as the user
    reads it; None if they cannot (no such file)."""
    result = exec_in(user, "cat", os.path.join(home(user), name))
    return result.stdout if result.returncode == 0 else None


def ssh(user, command, login=None, options=(), timeout=60):
    """`ssh hpc COMMAND` run on the lab side by lab user `user` (a logical name), with their
    lab key and ssh config, BatchMode; as `login`@hpc if given (account(), say). Returns the
    CompletedProcess (text), whatever its exit status."""
    target = NAME if login is None else "%s@%s" % (real_user(login), NAME)
    return subprocess.run(
        ["runuser", "-u", real_user(user), "--", "ssh", "-o", "BatchMode=yes"] + list(options)
        + [target, command], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, cwd="/")


def jobs():
    """What the institute's Slurm holds, ended jobs too (for MinJobAge): a list of
    {"id": "12", "name", "user" (logical: alice...), "state": "RUNNING"...}, from squeue as
    root inside. Raises if squeue fails (slurmctld stopped)."""
    result = exec_in("root", "squeue", "--noheader", "--states=all",
                     "--format=%i\t%u\t%T\t%j", timeout=60)
    if result.returncode != 0:
        raise RuntimeError("institute: squeue failed: " + result.stderr.strip())
    found = []
    for line in result.stdout.splitlines():
        job_id, user, state, name = (line.split("\t", 3) + [""])[:4]
        found.append({"id": job_id.strip(), "name": name, "user": cluster.logical(user.strip()),
                      "state": state.strip()})
    return found


def job(job_id):
    """One job of jobs() (by its Slurm ID), None if Slurm has none so."""
    return next((j for j in jobs() if j["id"] == str(job_id)), None)


def partition():
    """Cut the login node off the lab: ssh to hpc times out; inside, Slurm and its jobs go on
    (they talk over the institute's loopback)."""
    cluster.sh("ip", "link", "set", veth(), "down")


def heal():
    cluster.sh("ip", "link", "set", veth(), "up")


def filler():
    return os.path.join(cluster.DIR, "home", ".full")  # (root's, in the homes' filesystem)


def fill_disk():
    """Fill the homes' filesystem: no user can write a byte more there (ENOSPC) until
    free_disk(). Slurm's own files are on the other one and go on."""
    exec_in("root", "dd", "if=/dev/zero", "of=" + filler(), "bs=1M")  # (ends in ENOSPC)
    free = exec_in("root", "stat", "--file-system", "--format=%a",
                   os.path.join(cluster.DIR, "home")).stdout.strip()
    if free != "0":
        raise RuntimeError("institute: the homes are not full (%s blocks free)" % free)


def free_disk():
    exec_in("root", "rm", "-f", filler())


def controller_up():
    return "is UP" in exec_in("root", "scontrol", "ping", timeout=30).stdout


def stop_slurmctld():
    """Stop slurmctld (SIGTERM: it saves its state, as a service stop does). slurmd and the
    running jobs go on; sbatch, squeue and jobs() fail until start_slurmctld()."""
    pidfile = os.path.join(private(), "slurmctld.pid")
    pid = exec_in("root", "cat", pidfile).stdout.strip()
    if not pid.isdigit():
        return
    exec_in("root", "kill", pid)
    # (its parent, the institute's sshd, reaps it: gone is no /proc entry, or a zombie's)
    cluster.wait_until(lambda: exec_in("root", "sh", "-c", "grep -q '^State:.*Z' "
                                       "/proc/%s/status 2>/dev/null || ! test -e /proc/%s"
                                       % (pid, pid)).returncode == 0,
                       "slurmctld to stop", timeout=30)
    exec_in("root", "rm", "-f", pidfile)


def start_slurmctld():
    """Start slurmctld again (it recovers its jobs from its saved state); wait until it
    answers."""
    exec_in("root", "sh", "-c", slurmctld_command())
    cluster.wait_until(controller_up, "slurmctld to answer", timeout=60)


def reset():
    """Put the institute back as a test may have left it: its link up, its homes not full,
    slurmctld running, its node back in service, no job of Slurm's running or waiting (ended
    ones stay in squeue, and the files in the homes stay)."""
    heal()
    free_disk()
    if not controller_up():
        start_slurmctld()
    if node_state() not in ("idle", "mix", "alloc"):  # (drained, down: by a test)
        exec_in("root", "scontrol", "update", "NodeName=" + NAME, "State=RESUME")
    live = [j["id"] for j in jobs() if j["state"] in
            ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
             "RESIZING", "SIGNALING", "STAGE_OUT")]
    if live:
        exec_in("root", "scancel", *live)
        cluster.wait_until(lambda: node_state() == "idle", "the node idle again", timeout=60)


if __name__ == "__main__":
    command, run = (sys.argv[1:] + ["", ""])[:2]
    if not run:
        sys.exit(__doc__)
    cluster.use(run)
    if command == "up":
        print(up())
    elif command == "exec" and len(sys.argv) > 4:
        result = exec_in(sys.argv[3], *sys.argv[4:])
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        sys.exit(result.returncode)
    else:
        sys.exit(__doc__)
