"""A test run's identity, from which the emulated cluster (tests/cluster.py) and the private
Slurm (tests/slurm.py) name all they make, so that runs at the same time on one machine never
meet each other, nor the machine's own users.

A run is a short name: $QPY_CLUSTER_RUN if set (1 to 6 lowercase letters or digits), else 4
random hex digits that no /tmp/qpy-*-<run> directory and no user or group *_<run> has yet.
A run keeps what it makes in /tmp/qpy-<kind>-<run>, whose file `owner` names the process it
belongs to (its PID, that process's start time and the boot, so that a reused PID is not
taken for it). A directory whose owner is dead is a crashed run's leftover: the next run
removes it; one whose owner lives is never touched. Choices that must not collide (a subnet,
ports) and the removal of leftovers are made under one lock, /tmp/qpy-runs.lock.
"""
import contextlib
import fcntl
import glob
import grp
import os
import pwd
import re
import secrets

NAME = re.compile(r"[a-z0-9]{1,6}\Z")
LOCK = "/tmp/qpy-runs.lock"
_current = None


def current():
    """This process's run (the same for its cluster and its Slurm)."""
    global _current
    if _current is None:
        run = os.environ.get("QPY_CLUSTER_RUN") or fresh()
        if not NAME.match(run):
            raise ValueError("QPY_CLUSTER_RUN must be 1 to 6 lowercase letters or digits, not %r"
                             % run)
        _current = run
    return _current


def fresh():
    while True:
        run = secrets.token_hex(2)
        if not taken(run):
            return run


def taken(run):
    """Whether anything of the machine is named as run `run` would name its own."""
    suffix = "_" + run
    return bool(glob.glob("/tmp/qpy-*-" + run)) \
        or any(entry.pw_name.endswith(suffix) for entry in pwd.getpwall()) \
        or any(entry.gr_name.endswith(suffix) for entry in grp.getgrall())


def process_start(pid):
    """When process pid started (clock ticks since boot), None if there is no such process
    (or only its zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rpartition(")")[2].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def boot():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def claim(directory, owner):
    """Make a run's directory, belonging to the live process `owner` (a PID)."""
    os.mkdir(directory, 0o755)
    os.chmod(directory, 0o755)
    with open(os.path.join(directory, "owner"), "w") as f:
        f.write("%d %s %s\n" % (owner, process_start(owner), boot()))


def owner(directory):
    """The PID of the live process a run's directory belongs to, else None."""
    try:
        with open(os.path.join(directory, "owner")) as f:
            pid, start, booted = f.read().split()
    except (OSError, ValueError):
        return None  # (claim writes it under the lock: none means its run died making it)
    return int(pid) if booted == boot() and process_start(int(pid)) == start else None


def owner_alive(directory):
    return owner(directory) is not None


def runs_of(prefix):
    """{run: its directory} of every run that has a directory prefix<run>."""
    return {path[len(prefix):]: path for path in sorted(glob.glob(prefix + "*"))
            if NAME.match(path[len(prefix):]) and os.path.isdir(path)
            and not os.path.islink(path)}


def leftovers(prefix):
    """The directories prefix<run> of runs whose owner is dead (take the lock first)."""
    return [path for path in runs_of(prefix).values() if not owner_alive(path)]


@contextlib.contextmanager
def locked():
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
