"""A real cluster on one machine, for the tests that need ssh nodes and several Unix users.

Each node is a network namespace (its own IP on a private bridge) holding a new UTS, PID and
mount namespace: its own hostname, its own process table, and an sshd as its PID 1. Killing
that sshd kills the node, like pulling the plug. The filesystem is the machine's, seen by every
node, as a lab's NFS /home would be. The users (alice, bob, carol, and the admin qpyadmin, all
in group qpylab) are real Unix accounts with ssh keys; jobs reach the nodes by real ssh.

Everything is named from the run (tests/runs.py), so that two runs at once, or a real user
called alice, never meet: the directory /tmp/qpy-cluster-<run>, the bridge, namespaces and
veths qpyc<run>..., a free /24 in 10.212-250.x, and the users and group alice_<run>, bob_<run>,
carol_<run>, qpyadmin_<run>, qpylab_<run>. The tests speak of alice, bob, carol, qpyadmin and
qpylab: real() and logical() translate (NAMES, the one mapping).

Everything made is recorded in <DIR>/made as it is made, and `down` undoes exactly that list.
A run whose process died without its `down` is undone by the next run's `up` (or by `clean`);
a run whose owner lives is never touched. Needs root, sshd (openssh-server) and iproute2.

    python tests/cluster.py up [RUN]     build one (kept while the calling shell lives)
    python tests/cluster.py down RUN     remove it
    python tests/cluster.py status       every run of the machine, its owner and nodes
    python tests/cluster.py clean        remove the runs whose owner is dead
"""
import hashlib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import runs

PREFIX = "/tmp/qpy-cluster-"  # + the run: its directory
LOGICAL_USERS = ("alice", "bob", "carol")
NODES = ("node1", "node2", "node3")
SSHD = "/usr/sbin/sshd"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QPY_FILES = ("qpy.py", "qpy_admin.py", "schema.sql", "README.md")


def use(run):
    """Name everything after run `run` (this process's, at import)."""
    global RUN, DIR, NET_PREFIX, BRIDGE, NAMES, GROUP, ADMIN, USERS, NET
    RUN, DIR = run, PREFIX + run
    NET_PREFIX = "qpyc" + run  # bridge, namespaces, veths (an interface name has 15 characters)
    BRIDGE = NET_PREFIX + "br"
    NAMES = {name: "%s_%s" % (name, run) for name in LOGICAL_USERS + ("qpyadmin", "qpylab")}
    GROUP, ADMIN = NAMES["qpylab"], NAMES["qpyadmin"]
    USERS = tuple(NAMES[name] for name in LOGICAL_USERS)
    try:
        with open(os.path.join(DIR, "subnet")) as f:
            NET = f.read().strip()  # (a run already up: `status`, `down` by hand)
    except OSError:
        NET = None  # chosen by up


def real(text):
    """A logical name (alice, bob, carol, qpyadmin, qpylab), or a text naming them, in the run's
    real names."""
    return re.sub(r"\b(%s)\b" % "|".join(NAMES), lambda m: NAMES[m.group(1)], text)


def logical(text):
    """A text with the run's real names in their logical ones. A real name padded in a column
    (followed by two spaces or more) keeps the column's width."""
    back = {name: logical for logical, name in NAMES.items()}

    def name(m):
        pad = m.group(2) + " " * (len(m.group(1)) - len(back[m.group(1)])) \
            if len(m.group(2)) >= 2 else m.group(2)
        return back[m.group(1)] + pad
    return re.sub(r"\b(%s)\b( *)" % "|".join(back), name, text)


def namespace(node):
    return "%s-%s" % (NET_PREFIX, node)


def veth(node):
    return "%sv%d" % (NET_PREFIX, int(node[4:]))


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def why_unavailable():
    """None if a cluster can be built here, else the reason (the tests then skip)."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists(SSHD):
        return "needs sshd (apt-get install openssh-server)"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "needs iproute2 and util-linux"
    probe = NET_PREFIX + "-probe"
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return "cannot create network namespaces: " + made.stderr.strip()
    sh("ip", "netns", "del", probe, check=False)
    return None


def node_ip(name):
    return "%s.%d" % (NET, 10 + int(name[4:]))


def made(kind, what):
    with open(os.path.join(DIR, "made"), "a") as f:
        f.write("%s %s\n" % (kind, what))


def up(owner=None):
    """Build the run's cluster, belonging to process `owner` (this one by default); return the
    environment a test needs to use it. The leftovers of dead runs go first."""
    with runs.locked():  # (one run at a time chooses its subnet and makes its names)
        for leftover in runs.leftovers(PREFIX):
            undo(leftover)
        if runs.owner(DIR) == os.getpid():
            undo(DIR)  # (this process's earlier cluster)
        elif os.path.exists(DIR):
            raise RuntimeError("cluster: run %s is in use by process %s" % (RUN, runs.owner(DIR)))
        runs.claim(DIR, owner or os.getpid())
        try:
            build()
        except BaseException:
            down()
            raise
    return {"run": RUN, "dir": DIR, "nodes": NODES, "users": USERS, "admin": ADMIN,
            "group": GROUP, "subnet": NET + ".0/24"}


def build():
    taken = [name for name in NAMES.values() if exists(name)]
    if taken:
        raise RuntimeError("cluster: run %s's names are taken already: %s (another run? "
                           "QPY_CLUSTER_RUN)" % (RUN, ", ".join(taken)))
    open(os.path.join(DIR, "made"), "w").close()
    # Mounts made later under DIR (a full-disk tmpfs, say) must show in every node too.
    sh("mount", "--bind", DIR, DIR)
    sh("mount", "--make-shared", DIR)
    made("mount", DIR)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    make_users()
    make_network()
    write_ssh_client_config()
    for name in NODES:
        start_node(name)
    install_qpy()


def exists(name):
    return sh("getent", "passwd", name, check=False).returncode == 0 \
        or sh("getent", "group", name, check=False).returncode == 0


def free_subnet():
    """The first /24 of 10.212-250.x, from a place drawn from the run, that no address or route
    of the machine reaches into."""
    used = []
    for command in (("ip", "-4", "-o", "addr", "show"), ("ip", "-4", "route", "show", "table",
                                                         "all")):
        for word in sh(*command).stdout.split():
            if "." in word:
                try:
                    used.append(ipaddress.ip_network(word, strict=False))
                except ValueError:
                    pass
    candidates = ["10.%d.%d" % (a, b) for a in range(212, 251) for b in range(256)]
    start = int(hashlib.sha1(RUN.encode()).hexdigest(), 16) % len(candidates)
    for net in candidates[start:] + candidates[:start]:
        subnet = ipaddress.ip_network(net + ".0/24")
        if not any(subnet.overlaps(other) for other in used):
            return net
    raise RuntimeError("cluster: no free /24 in 10.212.0.0-10.250.255.0")


def make_users():
    sh("groupadd", GROUP)
    made("group", GROUP)
    os.makedirs(os.path.join(DIR, "home"), mode=0o755)
    for user in (ADMIN,) + USERS:
        home = os.path.join(DIR, "home", user)
        sh("useradd", "-m", "-d", home, "-s", "/bin/bash", "-G", GROUP, user)
        made("user", user)
        sockets = "/tmp/qpy-ssh-%d" % pwd.getpwnam(user).pw_uid  # (where qpy's ssh masters
        if not os.path.lexists(sockets):                       # will be: see qpy.ssh_command)
            made("sockets", sockets)
        # One key pair serves every node: the home is shared, as on a real cluster.
        as_user(user, "umask 077; mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f "
                "~/.ssh/id_ed25519 && cp ~/.ssh/id_ed25519.pub ~/.ssh/authorized_keys && "
                "echo 'Include %s/ssh_config' > ~/.ssh/config" % DIR)


def as_user(user, command):
    return sh("runuser", "-u", user, "--", "sh", "-c", command)


def make_network():
    global NET
    NET = free_subnet()
    with open(os.path.join(DIR, "subnet"), "w") as f:
        f.write(NET + "\n")
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    made("link", BRIDGE)
    sh("ip", "addr", "add", NET + ".1/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    # Nothing addressed to the cluster may ever leave by the default route.
    sh("ip", "route", "add", "unreachable", NET + ".0/24", "metric", "4242")
    made("route", NET + ".0/24")
    with open(os.path.join(DIR, "hosts"), "w") as f:
        f.write("127.0.0.1 localhost\n%s.1 login\n" % NET)
        f.writelines("%s %s\n" % (node_ip(name), name) for name in NODES)
    known = []
    for name in NODES:
        space, link = namespace(name), veth(name)
        sh("ip", "netns", "add", space)
        made("netns", space)
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", space)
        made("link", link)
        sh("ip", "link", "set", link, "master", BRIDGE, "up")
        sh("ip", "-n", space, "addr", "add", node_ip(name) + "/24", "dev", "eth0")
        sh("ip", "-n", space, "link", "set", "lo", "up")
        sh("ip", "-n", space, "link", "set", "eth0", "up")
        home = os.path.join(DIR, "nodes", name)
        os.makedirs(home)
        key = os.path.join(home, "host_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        with open(key + ".pub") as f:
            known.append("%s,%s %s\n" % (name, node_ip(name), " ".join(f.read().split()[:2])))
        with open(os.path.join(home, "sshd_config"), "w") as f:
            f.write(SSHD_CONFIG % {"address": node_ip(name), "key": key})
        with open(os.path.join(home, "init.sh"), "w") as f:
            f.write("hostname %s\nmount --bind %s/hosts /etc/hosts\nexec %s -D -f %s -E %s\n"
                    % (name, DIR, SSHD, os.path.join(home, "sshd_config"),
                       os.path.join(home, "sshd.log")))
    with open(os.path.join(DIR, "known_hosts"), "w") as f:
        f.writelines(known)


SSHD_CONFIG = """ListenAddress %(address)s:22
HostKey %(key)s
PidFile none
UsePAM yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
MaxStartups 200
MaxSessions 200
PrintMotd no
"""


def write_ssh_client_config():
    lines = ["Host %s\n  HostName %s\n" % (name, node_ip(name)) for name in NODES]
    lines.append("Host node* %s.*\n  GlobalKnownHostsFile %s/known_hosts\n"
                 "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
                 "  KexAlgorithms curve25519-sha256\n  LogLevel ERROR\n" % (NET, DIR))
    with open(os.path.join(DIR, "ssh_config"), "w") as f:
        f.writelines(lines)
    for name in ("ssh_config", "known_hosts", "hosts"):
        os.chmod(os.path.join(DIR, name), 0o644)


def start_node(name):
    """Boot a node: sshd as PID 1 of new UTS, PID and mount namespaces, in its netns."""
    home = os.path.join(DIR, "nodes", name)
    log = open(os.path.join(home, "init.log"), "a")
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace(name), "unshare", "--uts", "--pid", "--mount", "--fork",
         "--kill-child", "--mount-proc", "--propagation", "slave", "sh",
         os.path.join(home, "init.sh")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    with open(os.path.join(home, "pid"), "w") as f:
        f.write(str(process.pid))
    wait_until(lambda: port_open(node_ip(name), 22), "sshd of %s" % name)


def port_open(address, port):
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError("cluster: timed out waiting for " + what)


def install_qpy():
    """qpy and a venv from the system Python, where every test user can read them (the
    checkout and root's Python may not be readable by them)."""
    target = os.path.join(DIR, "qpy")
    os.makedirs(target)
    for name in QPY_FILES:
        shutil.copy(os.path.join(REPO, name), target)
    venv = os.path.join(DIR, "venv")
    sh("/usr/bin/python3", "-m", "venv", "--without-pip", venv)
    site = sh(os.path.join(venv, "bin", "python"), "-c",
              "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    import docopt
    import filelock
    for module in (filelock, docopt):  # pure-Python packages: a copy is an install
        source = os.path.dirname(module.__file__) if module.__file__.endswith("__init__.py") \
            else module.__file__
        copy = shutil.copytree if os.path.isdir(source) else shutil.copy
        copy(source, os.path.join(site, os.path.basename(source)))
    # byte-code made once by root: the users cannot write there, and qpy starts faster with it
    sh(os.path.join(venv, "bin", "python"), "-m", "compileall", "-q", target, site)
    sh("chmod", "-R", "a+rX", target, venv)


def pids_in_namespace(space):
    result = sh("ip", "netns", "pids", space, check=False)
    return [int(pid) for pid in result.stdout.split()]


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def crash(name):
    """Power off: cut the link, then kill every process of the node."""
    partition(name)
    stop(name)


def stop(name, space=None):
    """Kill every process of node `name` (of the network namespace `space`)."""
    for _ in range(50):
        pids = pids_in_namespace(space or namespace(name))
        if not pids:
            return
        kill_pids(pids)
        time.sleep(0.05)


def boot(name):
    heal(name)
    start_node(name)


def partition(name):
    sh("ip", "link", "set", veth(name), "down")


def heal(name):
    sh("ip", "link", "set", veth(name), "up")


def node_exec(name, user, *command):
    """Run a command inside a node's namespaces (without ssh), as a user. The user, and any
    word of the command that is a logical name, are taken in the run's real names."""
    with open(os.path.join(DIR, "nodes", name, "pid")) as f:
        unshare = int(f.read())
    with open("/proc/%d/task/%d/children" % (unshare, unshare)) as f:
        init = int(f.read().split()[0])
    return sh("nsenter", "--target", str(init), "--net", "--uts", "--mount", "--pid", "--",
              "runuser", "-u", real(user), "--", *map(real_word, command), check=False)


def real_word(word):
    return NAMES.get(word, word)


def user_pids(user):
    result = sh("ps", "-o", "pid=,stat=", "-u", user, check=False)
    return [int(line.split()[0]) for line in result.stdout.splitlines()
            if not line.split()[1].startswith("Z")]


def down():
    """Undo this run's cluster; safe to run at any time."""
    undo(DIR)


def undo(directory):
    """Undo everything recorded in <directory>/made, newest first, and remove the directory."""
    record = os.path.join(directory, "made")
    entries = []
    if os.path.exists(record):
        with open(record) as f:
            entries = [line.split(None, 1) for line in f.read().splitlines() if line.strip()]
    for kind, what in entries:
        if kind == "netns":
            stop(None, what)
    users = [what for kind, what in entries if kind == "user"]
    for _ in range(20):
        pids = [pid for user in users for pid in user_pids(user)]
        if not pids:
            break
        kill_pids(pids)
        time.sleep(0.1)
    for line in sorted(open("/proc/self/mountinfo").read().splitlines(), reverse=True):
        point = line.split()[4]
        if point.startswith(directory + "/"):
            sh("umount", "-l", point, check=False)
    for kind, what in reversed(entries):
        if kind == "netns":
            sh("ip", "netns", "del", what, check=False)
        elif kind == "link":
            sh("ip", "link", "del", what, check=False)
        elif kind == "route":
            sh("ip", "route", "del", "unreachable", what, "metric", "4242", check=False)
        elif kind == "sockets":  # (before its user: the uid is still the user's)
            owners = {entry.pw_uid for entry in pwd.getpwall() if entry.pw_name in users}
            if os.path.isdir(what) and not os.path.islink(what) \
                    and os.lstat(what).st_uid in owners:
                shutil.rmtree(what, ignore_errors=True)
        elif kind == "user":
            if sh("userdel", what, check=False).returncode != 0:
                time.sleep(0.5)
                sh("userdel", "-f", what, check=False)
        elif kind == "group":
            sh("groupdel", what, check=False)
        elif kind == "mount":
            sh("umount", "-l", what, check=False)
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
    elif command == "status":
        for run, path in runs.runs_of(PREFIX).items():
            use(run)
            print(run, path, "owner alive" if runs.owner_alive(path) else "owner dead",
                  " ".join("%s %s" % (node, "up" if NET and port_open(node_ip(node), 22)
                                      else "down") for node in NODES))
    elif command == "clean":
        with runs.locked():
            for leftover in runs.leftovers(PREFIX):
                undo(leftover)
                print("removed", leftover)
    else:
        sys.exit(__doc__)
