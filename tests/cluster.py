"""A real cluster on one machine, for the tests that need ssh nodes and several Unix users.

Each node is a network namespace (its own IP on a private bridge) holding a new UTS, PID and
mount namespace: its own hostname, its own process table, and an sshd as its PID 1. Killing
that sshd kills the node, like pulling the plug. The filesystem is the machine's, seen by every
node, as a lab's NFS /home would be. The users (alice, bob, carol, and the admin qpyadmin, all
in group qpylab) are real Unix accounts with ssh keys; jobs reach the nodes by real ssh.

Everything made is recorded in <DIR>/made as it is made, and `down` undoes exactly that list,
so a crashed run is cleaned up by the next one. Needs root, sshd (openssh-server) and iproute2.

    python tests/cluster.py up | down | status
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

DIR = "/tmp/qpy-cluster"
NET = "10.211.0"
BRIDGE = "qpytbr0"
GROUP = "qpylab"
ADMIN = "qpyadmin"
USERS = ("alice", "bob", "carol")
NODES = ("node1", "node2", "node3")
SSHD = "/usr/sbin/sshd"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QPY_FILES = ("qpy.py", "qpy_admin.py", "schema.sql", "README.md")


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
    probe = sh("ip", "netns", "add", "qpyt-probe", check=False)
    if probe.returncode != 0:
        return "cannot create network namespaces: " + probe.stderr.strip()
    sh("ip", "netns", "del", "qpyt-probe", check=False)
    return None


def node_ip(name):
    return "%s.%d" % (NET, 10 + int(name[4:]))


def made(kind, what):
    with open(os.path.join(DIR, "made"), "a") as f:
        f.write("%s %s\n" % (kind, what))


def up():
    """Build the cluster; return the environment a test needs to use it."""
    down()
    os.makedirs(DIR, mode=0o755)
    os.chmod(DIR, 0o755)
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
    return {"dir": DIR, "nodes": NODES, "users": USERS, "admin": ADMIN, "group": GROUP}


def make_users():
    sh("groupadd", GROUP)
    made("group", GROUP)
    os.makedirs(os.path.join(DIR, "home"), mode=0o755)
    for user in (ADMIN,) + USERS:
        home = os.path.join(DIR, "home", user)
        sh("useradd", "-m", "-d", home, "-s", "/bin/bash", "-G", GROUP, user)
        made("user", user)
        # One key pair serves every node: the home is shared, as on a real cluster.
        as_user(user, "umask 077; mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f "
                "~/.ssh/id_ed25519 && cp ~/.ssh/id_ed25519.pub ~/.ssh/authorized_keys && "
                "echo 'Include %s/ssh_config' > ~/.ssh/config" % DIR)


def as_user(user, command):
    return sh("runuser", "-u", user, "--", "sh", "-c", command)


def make_network():
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
    for index, name in enumerate(NODES, 1):
        namespace, veth = "qpyt-" + name, "qpytv%d" % index
        sh("ip", "netns", "add", namespace)
        made("netns", namespace)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        made("link", veth)
        sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        sh("ip", "-n", namespace, "addr", "add", node_ip(name) + "/24", "dev", "eth0")
        sh("ip", "-n", namespace, "link", "set", "lo", "up")
        sh("ip", "-n", namespace, "link", "set", "eth0", "up")
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
        ["ip", "netns", "exec", "qpyt-" + name, "unshare", "--uts", "--pid", "--mount", "--fork",
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


def pids_in_namespace(name):
    result = sh("ip", "netns", "pids", "qpyt-" + name, check=False)
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


def stop(name):
    for _ in range(50):
        pids = pids_in_namespace(name)
        if not pids:
            return
        kill_pids(pids)
        time.sleep(0.05)


def boot(name):
    heal(name)
    start_node(name)


def partition(name):
    sh("ip", "link", "set", "qpytv%d" % int(name[4:]), "down")


def heal(name):
    sh("ip", "link", "set", "qpytv%d" % int(name[4:]), "up")


def node_exec(name, user, *command):
    """Run a command inside a node's namespaces (without ssh), as a user."""
    with open(os.path.join(DIR, "nodes", name, "pid")) as f:
        unshare = int(f.read())
    with open("/proc/%d/task/%d/children" % (unshare, unshare)) as f:
        init = int(f.read().split()[0])
    return sh("nsenter", "--target", str(init), "--net", "--uts", "--mount", "--pid", "--",
              "runuser", "-u", user, "--", *command, check=False)


def user_pids(user):
    result = sh("ps", "-o", "pid=,stat=", "-u", user, check=False)
    return [int(line.split()[0]) for line in result.stdout.splitlines()
            if not line.split()[1].startswith("Z")]


def down():
    """Undo everything recorded in <DIR>/made, newest first; safe to run at any time."""
    record = os.path.join(DIR, "made")
    if not os.path.exists(record):
        return
    with open(record) as f:
        entries = [line.split(None, 1) for line in f.read().splitlines() if line.strip()]
    for kind, what in entries:
        if kind == "netns":
            stop(what[len("qpyt-"):])
    for _ in range(20):
        pids = [pid for kind, what in entries if kind == "user" for pid in user_pids(what)]
        if not pids:
            break
        kill_pids(pids)
        time.sleep(0.1)
    for line in sorted(open("/proc/self/mountinfo").read().splitlines(), reverse=True):
        point = line.split()[4]
        if point.startswith(DIR + "/"):
            sh("umount", "-l", point, check=False)
    for kind, what in reversed(entries):
        if kind == "netns":
            sh("ip", "netns", "del", what, check=False)
        elif kind == "link":
            sh("ip", "link", "del", what, check=False)
        elif kind == "route":
            sh("ip", "route", "del", "unreachable", what, "metric", "4242", check=False)
        elif kind == "user":
            if sh("userdel", what, check=False).returncode != 0:
                time.sleep(0.5)
                sh("userdel", "-f", what, check=False)
        elif kind == "group":
            sh("groupdel", what, check=False)
        elif kind == "mount":
            sh("umount", "-l", what, check=False)
    shutil.rmtree(DIR, ignore_errors=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "up":
        print(up())
    elif command == "down":
        down()
    elif command == "status":
        for node in NODES:
            print(node, "up" if port_open(node_ip(node), 22) else "down")
    else:
        sys.exit(__doc__)
