#!/usr/bin/env python3
"""qpy -- a batch queue for a lab's compute nodes, without daemons.

The protocol, which every function below keeps:

 1. All state is one SQLite database, <state>/qpy.db, in journal_mode=PERSIST (a rollback
    journal kept between transactions; never WAL: the state directory may be on NFS) with
    synchronous=FULL, and beside it what only the administrator decides (nodes, allowed
    users, rules, settings), <state>/site/site.db:
    theirs alone, file and directory, checked to be so and attached read-only by every
    connection, changed only by renaming a new copy into place once the transaction that
    wrote both has committed (a copy a crash left is put in place or removed under the lock
    by the administrator's next connection, settle_site_copy). The DB is created only where
    no state exists; its identity (meta state_id, also in <state>/qpy.id) is checked at every
    connect, so a lost or replaced DB is refused instead of silently starting over.
 2. Every transaction runs while holding the file lock <state>/qpy.lock (filelock's
    flock; take_lock) and inside BEGIN IMMEDIATE. The lock is held for milliseconds:
    nobody forks, sshes, signals a remote host or waits for anything while holding it.
    A transaction may be run again (atomically retries): what it does to files (removing
    run and job files) is asked for with after_commit and done once it has committed.
    Reads that must be consistent take the lock too, and a long one goes in pages
    (read_in_pages: rows that no longer change, each page its own transaction): reading
    outside the lock would not spare the writers, whose commit waits in SQLite's busy
    handler for every reader's shared lock.
 3. `qpy sub` inserts a job ('queue') and bumps the submitter's wake-up (users.wanted) in one
    transaction, then forks a detached tick (unless that user's is running) and returns. It
    never waits for a launch. What frees cores for anybody bumps meta.tick_wanted.
 4. One tick decides at a time per user (<state>/users/<user>/tick.lock; root's, which
    starts anybody's jobs as their owners, <state>/tick.lock), taken without blocking, held
    only for the pass's one transaction (take the wake-ups, reconcile, claim): it is released
    before the launches (ssh, sbatch), and the slow questions of a pass (probing down nodes,
    following the pools, asking the nodes of late runners) are asked after them, by one watch
    per user at a time (users/<user>/watch.lock, root's watch.lock): no tick waits on ssh or
    a pool with its lock held. No lock is ever opened through a link. A tick that finds the
    lock held leaves; the holder loops until no wake-up it can act on is
    left, so no request is ever lost and nobody waits for a tick. A user's tick takes
    meta.tick_wanted and its own wake-up, and hands on (bumps users.wanted of) the other users
    whose jobs it found able to start: a wake-up is taken only by a tick that can act on it.
 5. Every status change is one guarded UPDATE of the "Jobs: life cycle" section (the job's
    ID, the attempt its caller saw, the statuses it may leave). A tick claims a job
    ('starting', attempt+1, node reserved), commits, and only then launches its runner. The
    runner confirms under the lock that the job is still 'starting' with *its* attempt,
    creates the started marker with O_EXCL and records 'running' in that same transaction;
    only after the commit does the command run. A claim nobody confirms within
    launch_timeout goes back to 'queue'; a job whose runner died before writing 'go' into
    the marker (just before the command is spawned) is queued again. So a job runs at most
    once, and a crash anywhere leaves it queued, never lost. (In a Slurm pool the launch is
    an sbatch, and Slurm's word replaces the timeout. Through a login node, where no runner
    of qpy's runs, the attempt's Slurm name and a started marker made with O_EXCL on the
    cluster keep the promise: a launch cut short stays claimed until its follow finds it by
    that name or hands it over again, under a lock there.)
 6. The runner owns a running job: the command runs in its own process group; at the end
    the exit record is written to a file (tmp, fsync, rename) *before* the database is
    updated. Every run file (started marker, heartbeat, exit record, Slurm output) is named
    by its job and attempt, and the started marker and exit record carry the state's
    identity: nothing of an earlier attempt or another state is ever taken for a job's. At
    each heartbeat the runner checks that its attempt is still the job's: one that is not
    (its node was taken for lost, the state replaced) stops its command and records nothing
    (in a replaced state it touches no file, not even its heartbeat). The transaction
    that stores the end also claims and confirms the next job that can start on the same
    node for the same user, which the runner then runs itself (no new runner, no launch),
    deciding for that node alone when no other node has a free core (quick_plan); it ticks
    if other jobs could start too.
 7. A tick harvests exit records the database missed, and ends jobs whose runner is gone:
    on this machine by the runner's pid, on other hosts by asking the node over ssh (the
    watch, outside the locks) about runners whose heartbeat is older than node_timeout. A
    node that answers has what the dead runner's job left stopped (its process group, from
    the started marker: SIGTERM, SIGKILL after kill_grace) and the job is `runner lost`;
    only a node that does not answer is down, its jobs `node lost`, and when it comes back
    what those attempts left there is stopped before it is up again. A run file that cannot
    be read is quarantined and the job decided as if it were absent: one job's files never
    stop a tick.
 8. No qpy process outlives its work: the tick exits when nothing is wanted (the timer's,
    `qpy_admin.py tick --linger`, stays until just before the timer's next run while jobs
    are live, answering wake-ups within LINGER_POLL: those handed on to other users, which
    no user's tick may start), the runner when its job has ended. A background process's
    unexpected error is written to <state>/users/<user>/errors.log (qpy check and
    qpy_admin.py doctor point to it).

The code follows the data: paths -> store -> jobs (life cycle, run files) -> model ->
scheduler -> tick -> launcher -> Slurm pools -> runner -> CLI.
"""

import functools
import json
import os
import re
import signal
import sqlite3
import sys
import time

VERSION = "0.1.0"
SCHEMA_VERSION = 10
HERE = os.path.dirname(os.path.abspath(__file__))

class QpyError(Exception):
    """A problem the user can fix: printed as one line on stderr, exit status 1."""


class NodeUsage(Exception):
    """Wrong arguments to one of qpy's own commands (_run, _reap...): one line, status 2."""


def whole_numbers(words):
    """The arguments of one of qpy's own commands, all IDs or counts."""
    if not all(str(word).isdigit() and len(str(word)) < 19 for word in words):
        raise NodeUsage()
    return [int(word) for word in words]


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

SHIPPED_IN = (HERE,  # a checkout
              # pip's data files: <prefix>/share/qpy, qpy.py being in
              # <prefix>/lib/pythonX.Y/site-packages (a venv, /usr/local, ~/.local for --user)
              os.path.normpath(os.path.join(HERE, "..", "..", "..", "share", "qpy")),
              os.path.join(sys.prefix, "share", "qpy"))


def shipped_file(name):
    """A file that comes with qpy (schema.sql, README.md), wherever pip put it
    (SHIPPED_IN). QpyError if it is nowhere: the install is broken."""
    for folder in SHIPPED_IN:
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise QpyError("%s, which comes with qpy, is not in its install (looked in %s): install "
                   "qpy again." % (name, ", ".join(dict.fromkeys(SHIPPED_IN))))


_state_dirs = {}  # ($QPY_STATE, $HOME): the state directory, found once per process


def state_dir():
    """Where the state lives, first match wins:
    $QPY_STATE, then the path in the site file `qpy.site` next to qpy.py, then ~/.qpy.
    Found once per process: every path qpy uses starts here, and a runner changes its
    working directory (a relative $QPY_STATE must keep meaning the same directory)."""
    key = (os.environ.get("QPY_STATE"), os.environ.get("HOME"))
    if key not in _state_dirs:
        _state_dirs[key] = find_state_dir(key[0])
    return _state_dirs[key]


def find_state_dir(explicit):
    if explicit:
        return os.path.abspath(explicit)
    site_file = os.path.join(HERE, "qpy.site")
    if os.path.exists(site_file):
        with open(site_file) as f:
            return f.read().strip()
    return os.path.join(os.path.expanduser("~"), ".qpy")


def admin_command():
    """The administrator's command as this install names it: pip's qpy-admin beside pip's
    qpy, or the checkout's qpy_admin.py (which qpy's messages name)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "qpy-admin" if invoked in ("qpy", "qpy-admin") else "qpy_admin.py"


class AdminNamed:
    """sys.stdout or sys.stderr, with qpy's messages naming the administrator's command as
    the user has it (admin_command): they say qpy_admin.py."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self.stream.write(text.replace("qpy_admin.py", "qpy-admin"))

    def __getattr__(self, name):
        return getattr(self.stream, name)


def name_the_admin_command():
    """At the start of qpy's and qpy-admin's main: messages say what the user would type."""
    if admin_command() == "qpy-admin" and not isinstance(sys.stdout, AdminNamed):
        sys.stdout, sys.stderr = AdminNamed(sys.stdout), AdminNamed(sys.stderr)


def user_name():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def user_dir(user):
    """The per-user directory for job files, markers and exit records (owned by the user)."""
    return os.path.join(state_dir(), "users", user)


def ensure_user_dirs(user):
    connect()  # creates the state directory first, with its own modes
    if not os.path.lexists(user_dir(user)):
        os.makedirs(user_dir(user), mode=0o700, exist_ok=True)
        os.chmod(user_dir(user), 0o700)  # the umask must not open it to the group
    if not own_directory(user_dir(user)):
        raise QpyError("%s is not your directory (a link, or another user's): qpy will not "
                       "use it; the administrator moves it aside." % user_dir(user))
    for sub in ("spool", "scripts", "run"):
        os.makedirs(os.path.join(user_dir(user), sub), mode=0o700, exist_ok=True)


def own_directory(path):
    """A directory of this process's user, not a link to one."""
    import stat
    found = stat_or_none(path)
    return found is not None and stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid()


def create_new_file(path, mode):
    """Make `path` anew with exactly this mode, never through a file or a link put there
    (O_EXCL, O_NOFOLLOW): an open descriptor. QpyError if one is put back meanwhile."""
    remove_quietly(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise QpyError("%s was made again while qpy was making it: is somebody racing the "
                       "administrator?" % path)
    os.fchmod(fd, mode)
    return fd


def write_atomically(path, data, mode=0o600):
    """Write, fsync, rename: readers see the old file or the whole new one. The file is made
    anew under a name of its own, never through a link or file put there beforehand (in the
    shared state directory a member could plant one)."""
    tmp = "%s.tmp%d.%s" % (path, os.getpid(), os.urandom(4).hex())
    try:
        fd = create_new_file(tmp, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        remove_quietly(tmp)  # no half-written file left behind (a full disk, say)
        raise


def fsync_directory(path):
    """Make a rename in this directory durable (the renamed file's own data is already)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(*paths):
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


_context = {"step": None, "job": None}  # where this process is: named in its error log


def crash_point(name):
    """A named step of the protocol. Tests make qpy fail there: QPY_CRASH_AT=<name>@<token
    file> (the first process to reach <name> and remove the token dies by SIGKILL, as if the
    machine had stopped there) or QPY_RAISE_AT=<name>@<token file> (it raises, as a bug
    would)."""
    _context["step"] = name
    for variable in ("QPY_CRASH_AT", "QPY_RAISE_AT"):
        point, _, token = os.environ.get(variable, "").partition("@")
        if point == name:
            try:
                os.unlink(token)
            except OSError:
                continue
            if variable == "QPY_CRASH_AT":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("%s: %s" % (variable, name))


# A background process (tick, runner, launcher) has nobody to tell what went wrong: it writes
# it to <state>/users/<user>/errors.log (private to the user; kept to about LOG_LIMIT bytes,
# the older part in errors.log.1), which qpy check mentions once and qpy_admin.py doctor lists.
LOG_LIMIT = 256 * 1024


def log_path(user=None):
    return os.path.join(user_dir(user or user_name()), "errors.log")


def log_event(text):
    """Append one entry to this user's error log, stamped with the time, the process, the
    step and the job it was at. Never raises: the log must not add a failure of its own."""
    try:
        path = log_path()
        if not os.path.lexists(os.path.dirname(path)):  # (never make a state that is gone)
            os.mkdir(os.path.dirname(path), 0o700)
        if not own_directory(os.path.dirname(path)):
            return  # (another's, or a link: nothing is written through it)
        try:
            if os.path.getsize(path) > LOG_LIMIT:
                os.replace(path, path + ".1")
        except OSError:
            pass
        where = "".join(" %s %s" % (key, value) for key, value in _context.items() if value)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, ("%s pid %d%s: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  os.getpid(), where, text)).encode())
        finally:
            os.close(fd)
    except Exception:
        pass


def errors_note(user):
    """One line for qpy check when the user's background processes logged errors since check
    last said so (errors.seen marks when that was); None otherwise."""
    path = log_path(user)
    try:
        logged = os.stat(path).st_mtime
    except OSError:
        return None
    seen = path.replace("errors.log", "errors.seen")
    try:
        if os.stat(seen).st_mtime >= logged:
            return None
    except OSError:
        pass
    try:
        with open(seen, "w"):
            pass
        os.utime(seen, (logged, logged))
    except OSError:
        pass
    return "qpy: qpy's background processes logged errors (the last at %s): read %s" % (
        format_time(int(logged)), path)


def log_exception(what):
    """Log the exception being handled, with its traceback."""
    import traceback
    log_event("%s failed:\n%s" % (what, traceback.format_exc().rstrip()))


# --------------------------------------------------------------------------------------------
# Store: SQLite under a file lock
# --------------------------------------------------------------------------------------------

_db = None  # this process's connection; dropped before every fork (never carried across one)


def lock_timeout():
    """How long to wait for qpy.lock: $QPY_LOCK_TIMEOUT seconds, 120 by default."""
    text = os.environ.get("QPY_LOCK_TIMEOUT", "120")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise QpyError("QPY_LOCK_TIMEOUT must be a number of seconds, not %r." % text)
    return seconds


def connect():
    """The connection to <state>/qpy.db, creating the state directory and the DB on first use
    only: a state that was used (its identity file qpy.id, its users/) and has lost its DB, or
    whose DB is another state's, is refused (never silently started over)."""
    global _db, _db_file
    if _db is not None:
        try:  # a DB put in its place (a restore) is reconnected to; (inode, device)
            if same_file(os.stat(os.path.join(state_dir(), "qpy.db")), _db_file):
                if _site_file is not None and not same_version(
                        stat_or_none(site_path(state_dir())), _site_file):
                    detach_site(_db)  # (the administrator changed it)
                    try:
                        attach_site(_db, state_dir())
                    except QpyError:
                        disconnect()
                        raise
                return _db
        except OSError:
            pass
        disconnect()
    if _db is None:
        state = state_dir()
        path = os.path.join(state, "qpy.db")
        previous = _state_ids.get(state)
        if previous is not None and not os.path.exists(path):  # (we were connected to it)
            raise QpyError("The qpy state %s is gone." % state)
        known = read_identity(state)
        users = os.path.join(state, "users")
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            if known or (os.path.isdir(users) and os.listdir(users)):  # it was used
                raise QpyError(
                    "The qpy state %s has lost its database (qpy.db is %s): restore a backup "
                    "with qpy_admin.py restore <file>, or, to start a new empty queue there on "
                    "purpose, remove %s." % (state, "empty" if os.path.exists(path) else
                                             "missing", os.path.join(state, "qpy.id")
                                             if known else users))
        if not os.path.exists(path):
            if not os.environ.get("QPY_STATE") and os.path.exists(os.path.join(HERE, "qpy.site")):
                raise QpyError("No qpy site in %s (named by %s): ask your administrator."
                               % (state, os.path.join(HERE, "qpy.site")))
            if not os.path.isdir(os.path.dirname(state)):
                raise QpyError("No directory %s for the qpy state %s: check QPY_STATE."
                               % (os.path.dirname(state), state))
            if os.path.exists(state) and not os.path.isdir(state):
                raise QpyError("The qpy state %s is a file, not a directory: check QPY_STATE."
                               % state)
            shipped_file("schema.sql")  # (a broken install makes no state it cannot fill)
            create_personal_state(state)
        _db = open_db(path)
        _db_file = os.stat(path)
        version = _db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            disconnect()
            raise QpyError("The qpy database %s has schema %d; this qpy knows only %d: "
                           "use a newer qpy." % (path, version, SCHEMA_VERSION))
        if version < SCHEMA_VERSION and not is_administrator(state):
            disconnect()
            raise QpyError("The qpy site %s was made by an older qpy: its administrator, %s, "
                           "upgrades it (root's timer tick does, or any qpy_admin.py command "
                           "run by them)." % (state, administrator_name(state)))
        if is_administrator(state):
            if version < SCHEMA_VERSION or site_distrust(state):
                secure_site(state)  # (only then: not at every command)
            if os.path.lexists(site_path(state) + ".new"):
                release = take_lock("qpy.lock", lock_timeout())
                if release is None:
                    disconnect()
                    raise lock_wait_failed("qpy.lock")
                try:
                    settle_site_copy(state)
                finally:
                    release()
        if version < 9 and os.path.lexists(site_path(state)):
            disconnect()  # (only restore takes a site back to a DB's of before schema 9)
            raise QpyError("The qpy database %s says it is of schema %d, older than the site "
                           "beside it: a member may have changed it. Nothing was done; the "
                           "administrator restores a backup (qpy_admin.py restore <file>)."
                           % (path, version))
        if version == 0:  # (a private directory's is personal: this machine is its node)
            initialise_db(personal=not os.stat(state).st_mode & 0o077)
        elif version < SCHEMA_VERSION:
            upgrade_db(path)
        try:
            if _site_file is None:  # (a site made or upgraded just now is attached already)
                attach_site(_db, state)
        except QpyError:
            disconnect()
            raise
        row = _db.execute("SELECT value FROM meta WHERE key = 'state_id'").fetchone()
        if row is None:  # (a DB copied in by hand from before identities: it takes this one's)
            atomically(lambda db: db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('state_id', ?)",
                (known or os.urandom(8).hex(),)))
            row = _db.execute("SELECT value FROM meta WHERE key = 'state_id'").fetchone()
        identity = row[0]
        if known is None:
            write_identity(state, identity)
        elif known != identity or previous not in (None, identity):
            disconnect()
            raise QpyError("The qpy database %s is not this state's (it is state %s's, %s is "
                           "state %s): put the right one back, or qpy_admin.py restore <file>."
                           % (path, identity, state, previous or known))
        _state_ids[state] = identity
    return _db


def same_file(a, b):
    return a is not None and b is not None and (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def same_version(a, b):
    """The same file, unchanged (site.db is attached immutable: even an edit by hand in place,
    not qpy_admin.py's rename, must be noticed)."""
    return same_file(a, b) and (a.st_mtime_ns, a.st_ctime_ns, a.st_size) == \
        (b.st_mtime_ns, b.st_ctime_ns, b.st_size)  # (ctime: a chmod, a chown too)


def stat_or_none(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


_state_ids = {}  # state directory: the identity it had when this process connected to it


def state_id():
    """The identity of this process's state (None until it has connected to it)."""
    return _state_ids.get(state_dir())
_db_file = None  # os.stat of the DB file it is connected to


def read_identity(state):
    """A state's identity: made with its DB (meta state_id) and kept beside it in qpy.id, so
    that a DB that is lost or replaced is noticed, and nothing of one state (an exit record,
    a runner) is ever taken for another's. None for a state never used."""
    try:
        with open(os.path.join(state, "qpy.id")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def state_replaced():
    """Was this process's state removed and another made in its place (qpy.id names
    another)?"""
    return read_identity(state_dir()) not in (None, state_id())


def write_identity(state, identity):
    try:
        write_atomically(os.path.join(state, "qpy.id"), (identity + "\n").encode(), 0o644)
    except (OSError, QpyError):
        pass  # (another member's state: its owner's next command writes it)


def sqlite_uri(path, query=""):
    """The file: URI SQLite opens `path` by (the characters it would read otherwise escaped)."""
    for char, escape in (("%", "%25"), ("?", "%3f"), ("#", "%23")):
        path = path.replace(char, escape)
    return "file:" + path + ("?" + query if query else "")


def open_db(path):
    """Open the DB. SQLite waits for a busy DB (a commit in progress) as long as qpy waits for
    its lock: one time-out, QPY_LOCK_TIMEOUT, for the whole wait."""
    try:
        db = sqlite_connection(path)
        if not keep_journal(db):
            db.close()
            settle_hot_journal(path)
            db = sqlite_connection(path)
            if not keep_journal(db):
                raise QpyError("The journal %s-journal, a crashed transaction's, could not be "
                               "rolled back: the administrator runs qpy_admin.py check." % path)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA trusted_schema=OFF")  # (what members add to the shared DB is theirs)
        db.execute("PRAGMA user_version").fetchone()
        return db
    except sqlite3.OperationalError as e:
        raise QpyError(database_failure(e, path))
    except sqlite3.DatabaseError as e:
        raise damaged_database(e)


def sqlite_connection(path):
    """A connection to the DB `path`, in autocommit (qpy says BEGIN itself), rows by name."""
    db = sqlite3.connect(sqlite_uri(path), uri=True, isolation_level=None,
                         timeout=lock_timeout())
    db.row_factory = sqlite3.Row
    return db


def keep_journal(db):
    """Put the DB in journal_mode=PERSIST, its first statement: the journal is kept between
    transactions and its header zeroed at each commit, instead of created and removed by each
    (one file creation less per commit, and in a sticky site directory nobody has to remove
    another member's file). Still a rollback journal: no shared memory, safe on NFS; the
    attached site keeps DELETE. False if SQLite, reading the DB to run it, rolled back a hot
    journal a crash left but was refused its removal (SQLITE_IOERR_DELETE: in its default
    mode still, it removes a journal it has rolled back, and in a sticky directory only the
    journal's owner and the administrator may): see settle_hot_journal. (Python before 3.11
    does not name SQLite's errors: there the command fails, as before, until the journal's
    owner or root's tick comes by.)"""
    try:
        db.execute("PRAGMA main.journal_mode=PERSIST")
        return True
    except sqlite3.OperationalError as e:
        if getattr(e, "sqlite_errorname", None) != "SQLITE_IOERR_DELETE":
            raise
        return False


def settle_hot_journal(path):
    """Roll back the hot journal of the DB `path` again, now under qpy.lock, and end the
    rollback as TRUNCATE does, by emptying the journal, where its removal is refused. SQLite
    refuses the removal only once the rollback is done and the DB synced; under the lock no
    writer of qpy's can have made a new journal since (readers make none), and the journal
    emptied is checked to be the very file rolled back. (Zeroing its header would not do: a
    journal that named a super-journal keeps the name at its end, and a later crash would
    not be rolled back once that super-journal is gone.) Without this, every member's command
    would roll the journal back and fail again until its owner or the administrator came by."""
    import errno
    release = take_lock("qpy.lock", lock_timeout())
    if release is None:
        raise lock_wait_failed("qpy.lock")
    try:
        before = stat_or_none(path + "-journal")
        db = sqlite_connection(path)
        try:
            if before is None or keep_journal(db):
                return  # (its owner or the administrator rolled it back meanwhile)
        finally:
            db.close()
        fd = os.open(path + "-journal", os.O_RDWR | os.O_NOFOLLOW)
        try:
            if same_file(os.fstat(fd), before):
                os.ftruncate(fd, 0)
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno != errno.ENOENT:  # (gone: its owner removed it, rolled back)
            raise QpyError("The journal %s-journal, a crashed transaction's, could not be "
                           "rolled back (%s): its owner or the administrator runs qpy check."
                           % (path, e.strerror))
    finally:
        release()


# A command that finds the DB damaged leaves this mark beside it: from then on nothing is
# written (a damaged B-tree must not take more writes) until qpy_admin.py check finds the
# DB whole again or qpy_admin.py restore puts a backup in its place.
DAMAGE_MARK = "qpy.damaged"


def damaged_database(error):
    """The error for a damaged DB (SQLite's DatabaseError: 'database disk image is
    malformed', 'file is not a database'), and the mark that stops all writes."""
    state = state_dir()
    mark = os.path.join(state, DAMAGE_MARK)
    if not os.path.exists(mark):
        try:
            write_atomically(mark, ("%s %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), error))
                             .encode())
        except OSError:
            pass
    return QpyError("The qpy database %s is damaged (%s): nothing was changed, and nothing "
                    "will be until it is repaired: run qpy_admin.py check, then restore a "
                    "backup with qpy_admin.py restore <file>." % (os.path.join(state, "qpy.db"),
                                                                  error))


def refuse_writes_if_damaged():
    path = os.path.join(state_dir(), DAMAGE_MARK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError:  # (a link: a member's; it is a mark all the same, but its text is not read)
        found = "a mark that is not a plain file"
    else:
        with os.fdopen(fd) as f:
            found = shown(f.read(512).strip().split("\n")[0], 200)
    raise QpyError("The qpy database %s was found damaged (%s): nothing is changed until "
                   "qpy_admin.py check finds it whole, or qpy_admin.py restore <file> puts a "
                   "backup in its place." % (os.path.join(state_dir(), "qpy.db"), found))


def database_failure(error, path=None):
    """One line for an OperationalError: what failed, and what to do about it."""
    text = str(error)
    if "locked" in text or "busy" in text:
        lock = os.path.join(state_dir(), "qpy.lock")
        return ("The qpy database %s stayed busy for %g s, held by %s (QPY_LOCK_TIMEOUT sets "
                "the wait)." % (path or os.path.join(state_dir(), "qpy.db"), lock_timeout(),
                                lock_holder(lock)))
    return "The qpy database failed: %s%s" % (text, DB_HINTS.get(text, ""))


def disconnect():
    global _db, _db_file, _site_file
    if _db is not None:
        _db.close()
        _db, _db_file, _site_file = None, None, None


# --- The site: what only the administrator decides, in a file only they can change ----------
#
# <state>/site/site.db holds the nodes, the allowed users, the distribution rules and the
# settings (see schema.sql). It and its directory belong to the administrator, the owner of
# the state directory (or root), and nobody else may write either: no member can change it,
# nor plant a file beside it (a journal SQLite would roll into it, a copy to be renamed into
# place). The state directory is sticky, so site/ cannot be renamed away and put back older.
# Every connection checks all that before it attaches the file, read-only and immutable; the
# administrator changes it with atomically(..., site=True), which writes a copy there and
# renames it into place (readers never see a half-changed site).

SITE_DIR = "site"

# What the queries call `nodes`: the administrator's settings of each node and what the
# ticks found of it (node_health). A node the ticks found down is 'down' even if drained.
NODES_VIEW = """CREATE TEMP VIEW IF NOT EXISTS nodes AS
    SELECT s.name, s.kind, s.address, s.cores, s.mem, s.gpus, s.attributes, s.pref_multicore,
           s.position, s.max_jobs, s.options,
           CASE WHEN h.state = 'down' THEN 'down' WHEN s.drained IS NOT NULL THEN 'drained'
                ELSE 'up' END AS state,
           CASE WHEN h.state = 'down' THEN h.reason ELSE s.drained END AS state_reason,
           h.probed_at, h.lost
    FROM site.nodes s LEFT JOIN node_health h ON h.name = s.name"""

_site_file = None  # os.lstat of the site.db attached to this process's connection


def site_path(state):
    return os.path.join(state, SITE_DIR, "site.db")


def is_administrator(state):
    """The site's administrator owns its state directory (in personal mode, its user); root
    is one too."""
    return os.geteuid() in (0, os.stat(state).st_uid)


def administrator_name(state):
    import pwd
    uid = os.stat(state).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def site_distrust(state, file_too=True):
    """Why <state>/site/site.db cannot be trusted; None if it can: only the administrator can
    have made it and its directory, and nobody else can change, replace or roll back either
    (file_too=False: the directory only)."""
    import stat
    directory = os.stat(state)
    if directory.st_mode & 0o022 and not directory.st_mode & stat.S_ISVTX:
        return "members may replace it (the state directory is not sticky: chmod +t %s)" % state
    above = os.path.dirname(os.path.realpath(state))
    while True:  # (whoever may rename the state directory may put one of theirs in its place)
        found = os.stat(above)
        if found.st_uid not in (0, directory.st_uid) or (
                found.st_mode & 0o022 and not found.st_mode & stat.S_ISVTX):
            return ("others than the administrator may replace the state directory: %s above "
                    "it is %s (make it root's or the administrator's, not writable by others)"
                    % (above, "uid %d's" % found.st_uid if found.st_uid not in
                       (0, directory.st_uid) else "writable by others"))
        if above == os.path.dirname(above):
            break
        above = os.path.dirname(above)
    checks = [(os.path.join(state, SITE_DIR), stat.S_ISDIR, "directory")]
    if file_too:
        checks.append((site_path(state), stat.S_ISREG, "file"))
    for path, is_kind, kind in checks:
        found = stat_or_none(path)
        if found is None:
            return "%s is missing" % path
        if not is_kind(found.st_mode):
            return "%s is not a plain %s" % (path, kind)
        if found.st_uid not in (0, directory.st_uid):
            return "%s belongs to uid %d, not to the administrator %s" % (
                path, found.st_uid, administrator_name(state))
        if found.st_mode & 0o022:
            return "others than its owner may write %s (mode %o)" % (
                path, stat.S_IMODE(found.st_mode))
    return None


# The administrator's files in the state directory (made by create_site): in a site that was
# not sticky (before schema 9) a member may have put a link or a file of theirs at one of
# these names, for root to open, chmod or write through.
ROOT_LOCKS = ("qpy.lock", "tick.lock", "watch.lock")  # (a user's are in users/<user>/)
ADMIN_FILES = ROOT_LOCKS + ("qpy.id",)


def secure_site(state):
    """The administrator's connection first mends what it can, before anything reads or
    upgrades the site: the state directory made sticky; whatever a member put where the
    administrator's site/, lock files, identity or own users/ directory belong moved aside
    (kept, named .moved-aside.<time>, for the administrator to look at); site/ made."""
    import pwd
    import stat
    directory = os.stat(state)
    if directory.st_mode & 0o022 and not directory.st_mode & stat.S_ISVTX:
        os.chmod(state, stat.S_IMODE(directory.st_mode) | stat.S_ISVTX)
    admins = (0, directory.st_uid)
    found = stat_or_none(os.path.join(state, "qpy.db"))
    if found is not None and not (stat.S_ISREG(found.st_mode) and found.st_uid in admins):
        raise QpyError("The qpy database %s is not the administrator's file (a link, or a "
                       "member's): nothing was done; put the right one back, or restore a "
                       "backup (qpy_admin.py restore <file>)." % os.path.join(state, "qpy.db"))
    mine = os.path.join(state, "users", pwd.getpwuid(os.geteuid()).pw_name)
    # (path, what it must be, whose, the write bits nobody else may have)
    expected = [(os.path.join(state, SITE_DIR), stat.S_ISDIR, admins, 0o022),
                (mine, stat.S_ISDIR, (os.geteuid(),), 0o077)] + \
        [(os.path.join(state, name), stat.S_ISREG, admins, 0o002) for name in ADMIN_FILES]
    for path, is_kind, owners, forbidden in expected:
        found = stat_or_none(path)
        if found is not None and not (is_kind(found.st_mode) and found.st_uid in owners
                                      and not found.st_mode & forbidden):
            aside = "%s.moved-aside.%d" % (path, time.time_ns())
            os.rename(path, aside)
            log_event("moved %s aside to %s: it was not the administrator's" % (path, aside))
    folder = os.path.join(state, SITE_DIR)
    if not os.path.lexists(folder):
        os.mkdir(folder, 0o755)
        os.chmod(folder, 0o755)
    if directory.st_mode & 0o070:  # (a site: its lock files made now, none can be planted)
        for name in ROOT_LOCKS:
            create_file(os.path.join(state, name), 0o660)


def settle_site_copy(state):
    """Under qpy.lock, before the site is attached or changed: what a site change killed on
    its way left of its copy (site.db.new). Killed between the commit and the rename, the
    copy is committed with the queue's part of the change: it takes site.db's place. Killed
    before the commit, SQLite rolls the copy back when it is read (its journal is hot while
    the transaction's super-journal beside qpy.db is there) to site.db's very bytes (nothing,
    for a new site): it goes."""
    path = site_path(state)
    copy = path + ".new"
    settled = sqlite3.connect(sqlite_uri(copy), uri=True)
    try:
        version = settled.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError:  # (killed while it was copied: never committed, so no site)
        version = 0
    finally:
        settled.close()
    with open(copy, "rb") as f:
        copied = f.read()
    try:
        with open(path, "rb") as f:
            current = f.read()
    except FileNotFoundError:
        current = b""
    if version >= 9 and copied != current:
        os.replace(copy, path)
        fsync_directory(os.path.dirname(path))
        log_event("put the committed copy of a site change killed on its way in place: %s"
                  % path)
    remove_quietly(copy, copy + "-journal")


def attach_site(db, state):
    """Attach <state>/site/site.db as `site`, read-only and immutable (it is only ever
    replaced, never written), once it is found to be the administrator's alone."""
    global _site_file
    path = site_path(state)
    problem = site_distrust(state)
    if problem:
        raise QpyError("The site's settings %s cannot be trusted: %s. Nothing was done: the "
                       "administrator, %s, repairs it (qpy_admin.py doctor says how)."
                       % (path, problem, administrator_name(state)))
    found = os.lstat(path)
    db.execute("ATTACH DATABASE ? AS site", (sqlite_uri(path, "mode=ro&immutable=1"),))
    version = db.execute("PRAGMA site.user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        db.execute("DETACH DATABASE site")
        raise QpyError("The site's settings %s have schema %d; this qpy knows only %d: use a "
                       "newer qpy." % (path, version, SCHEMA_VERSION))
    db.execute(NODES_VIEW)
    _site_file = found


def detach_site(db):
    global _site_file
    if any(row[1] == "site" for row in db.execute("PRAGMA database_list")):
        db.execute("DETACH DATABASE site")
    _site_file = None


def begin_site_change(db):
    """Before a transaction that changes the site: its copy, attached for writing in place
    of site.db. Only the administrator may; a site.db is made anew only for a DB that has
    none yet (a new state, or one of before schema 9)."""
    state = state_dir()
    if not is_administrator(state):
        raise QpyError("Only the site's administrator, %s, can change its settings."
                       % administrator_name(state))
    path = site_path(state)
    problem = site_distrust(state, file_too=os.path.lexists(path))
    if problem:
        raise QpyError("The site's settings %s cannot be trusted: %s." % (path, problem))
    if os.path.lexists(path + ".new"):
        settle_site_copy(state)
    if not os.path.lexists(path) and db.execute("PRAGMA main.user_version").fetchone()[0] >= 9:
        raise QpyError("The site's settings %s are missing: restore them with qpy_admin.py "
                       "restore <file> (a backup and its <file>.site)." % path)
    copy = path + ".new"
    fd = create_new_file(copy, 0o644)
    try:
        if os.path.exists(path):  # (a plain copy is whole: site.db is only ever replaced)
            with open(path, "rb") as source:
                os.write(fd, source.read())
        os.fsync(fd)
    finally:
        os.close(fd)
    detach_site(db)
    try:
        db.execute("ATTACH DATABASE ? AS site", (sqlite_uri(copy),))
    except BaseException:
        remove_quietly(copy)
        if os.path.exists(path):
            attach_site(db, state)
        raise
    return copy


def end_site_change(db, copy, committed):
    """After it: the copy takes site.db's place (committed), or goes; the site is attached
    read-only again."""
    detach_site(db)
    path = site_path(state_dir())
    if committed:
        os.replace(copy, path)
        fsync_directory(os.path.dirname(path))
    else:
        remove_quietly(copy, copy + "-journal")
    if os.path.exists(path):
        attach_site(db, state_dir())


def setting(db, key):
    """One of the site's settings (site.settings), as a number."""
    return float(db.execute("SELECT value FROM site.settings WHERE key = ?",
                            (key,)).fetchone()[0])


def create_file(path, mode, group=None):
    """Create a file with exactly this mode (SQLite and the umask would choose their own)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    os.fchmod(fd, mode)
    if group is not None:
        os.fchown(fd, -1, group)
    os.close(fd)


def create_personal_state(state):
    """The embedded default: ~/.qpy (0700) with a DB file we create ourselves at 0660."""
    os.makedirs(state, mode=0o700, exist_ok=True)
    os.chmod(state, 0o700)
    os.makedirs(os.path.join(state, "users"), mode=0o700, exist_ok=True)
    create_file(os.path.join(state, "qpy.db"), 0o660)


def create_site(state, group):
    """A shared state directory for a lab: group-owned and setgid, so that every file in it
    belongs to the group, and sticky, so that only its owner can remove or replace it (the
    administrator's site.db, 0644); the DB and lock files 0660; users/ sticky too, so each
    user owns (and only they can remove) their own directory. No nodes yet: the admin loads
    them."""
    global _db, _db_file
    import grp
    gid = grp.getgrnam(group).gr_gid if group else os.getgid()
    os.makedirs(state, exist_ok=True)
    os.chown(state, -1, gid)
    os.chmod(state, 0o3770)
    users = os.path.join(state, "users")
    os.makedirs(users, exist_ok=True)
    os.chown(users, -1, gid)
    os.chmod(users, 0o3770)
    for name in ("qpy.db",) + ROOT_LOCKS:
        create_file(os.path.join(state, name), 0o660, gid)
    os.environ["QPY_STATE"] = state
    secure_site(state)
    disconnect()
    _db = open_db(os.path.join(state, "qpy.db"))
    _db_file = os.stat(os.path.join(state, "qpy.db"))
    initialise_db(personal=False)
    write_identity(state, connect().execute("SELECT value FROM meta WHERE key = 'state_id'")
                   .fetchone()[0])


def initialise_db(personal):
    """Load schema.sql into an empty DB and a new site.db, and (personal mode) add this
    machine as 'localhost'."""
    with open(shipped_file("schema.sql")) as f:
        ddl = f.read()

    def create(db):
        if db.execute("PRAGMA user_version").fetchone()[0] == 0:  # lost no race
            for statement in sql_statements(ddl):
                db.execute(statement)
            if personal:
                db.execute("INSERT OR IGNORE INTO site.nodes (name, address, cores, mem) VALUES "
                           "('localhost', 'localhost', ?, ?)",
                           (os.cpu_count() or 1, machine_memory()))
    atomically(create, site=True)


def sql_statements(text):
    """The statements of an SQL script, one by one (so they run inside our transaction)."""
    statement = ""
    for line in text.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


# How to bring a DB of schema N up to N + 1 (schema.sql is always the newest whole).
MIGRATIONS = {
    1: ["CREATE INDEX jobs_by_spec ON jobs (spec)"],
    2: ["ALTER TABLE nodes ADD COLUMN kind TEXT NOT NULL DEFAULT 'host' "
        "CHECK (kind IN ('host', 'slurm'))"]
       + ["ALTER TABLE nodes ADD COLUMN %s" % column for column in (
           "partition TEXT", "max_jobs INTEGER CHECK (max_jobs >= 1)", "account TEXT",
           "qos TEXT", "extra TEXT")]
       + ["ALTER TABLE jobs ADD COLUMN slurm_id TEXT",
          "CREATE INDEX jobs_queued ON jobs (user, position) WHERE status = 'queue'",
          "DROP INDEX jobs_by_spec",
          "CREATE INDEX jobs_live_by_spec ON jobs (spec) "
          "WHERE status IN ('queue', 'starting', 'running')"],
    # the process group is noted in the started marker, once the command runs
    3: ["ALTER TABLE jobs DROP COLUMN pgid",
        "CREATE INDEX jobs_with_dependencies ON jobs (position) "
        "WHERE status = 'queue' AND dependencies IS NOT NULL"],
    # a pool's sbatch may refuse one job while Slurm is up: only that job avoids the pool
    4: ["ALTER TABLE jobs ADD COLUMN refusal TEXT"],
    # each state has an identity (qpy.id); run files are named by attempt
    5: ["INSERT OR IGNORE INTO meta (key, value) VALUES ('state_id', lower(hex(randomblob(8))))"],
    # a wake-up per user: a user's tick takes on only what it can start
    6: ["ALTER TABLE users ADD COLUMN wanted INTEGER NOT NULL DEFAULT 0"],
    # pools behind one seam: a job's ID in its pool, a pool's own settings as JSON, any kind
    7: ["ALTER TABLE jobs RENAME COLUMN slurm_id TO external_id",
        "CREATE TABLE nodes_7 (name TEXT PRIMARY KEY, kind TEXT NOT NULL DEFAULT 'host', "
        "address TEXT NOT NULL, cores INTEGER NOT NULL CHECK (cores >= 0), "
        "mem REAL CHECK (mem >= 0), gpus INTEGER NOT NULL DEFAULT 0 CHECK (gpus >= 0), "
        "attributes TEXT NOT NULL DEFAULT '', pref_multicore INTEGER NOT NULL DEFAULT 0, "
        "state TEXT NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down', 'drained')), "
        "state_reason TEXT, probed_at REAL, position INTEGER NOT NULL DEFAULT 0, "
        "max_jobs INTEGER CHECK (max_jobs >= 1), options TEXT, lost TEXT)",
        "INSERT INTO nodes_7 SELECT name, kind, address, cores, mem, gpus, attributes, "
        "pref_multicore, state, state_reason, probed_at, position, max_jobs, CASE WHEN kind = "
        "'slurm' THEN json_object('account', account, 'extra', extra, 'partition', partition, "
        "'qos', qos) END, NULL FROM nodes",
        "DROP TABLE nodes",
        "ALTER TABLE nodes_7 RENAME TO nodes"],
    # what the administrator decides moves to site.db, which only they can change
    # (a site.db already there, say a restore of a backup of schema 8: the DB's site wins)
    8: ["DROP TABLE IF EXISTS site.settings", "DROP TABLE IF EXISTS site.nodes",
        "DROP TABLE IF EXISTS site.allowed_users",
        "CREATE TABLE site.settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO site.settings SELECT key, value FROM meta WHERE key IN ('dispatch', "
        "'launch_timeout', 'kill_grace', 'heartbeat', 'node_timeout', 'probe_interval', "
        "'ssh_timeout', 'rules')",
        "INSERT OR IGNORE INTO site.settings VALUES ('dispatch', '1'), ('launch_timeout', "
        "'60'), ('kill_grace', '10'), ('heartbeat', '30'), ('node_timeout', '180'), "
        "('probe_interval', '60'), ('ssh_timeout', '10')",
        "DELETE FROM meta WHERE key IN (SELECT key FROM site.settings)",
        "CREATE TABLE site.nodes (name TEXT PRIMARY KEY, kind TEXT NOT NULL DEFAULT 'host', "
        "address TEXT NOT NULL, cores INTEGER NOT NULL CHECK (cores >= 0), "
        "mem REAL CHECK (mem >= 0), gpus INTEGER NOT NULL DEFAULT 0 CHECK (gpus >= 0), "
        "attributes TEXT NOT NULL DEFAULT '', pref_multicore INTEGER NOT NULL DEFAULT 0, "
        "drained TEXT, position INTEGER NOT NULL DEFAULT 0, "
        "max_jobs INTEGER CHECK (max_jobs >= 1), options TEXT)",
        "INSERT INTO site.nodes SELECT name, kind, address, cores, mem, gpus, attributes, "
        "pref_multicore, CASE WHEN state = 'drained' THEN COALESCE(state_reason, 'drained') "
        "END, position, max_jobs, options FROM nodes",
        "CREATE TABLE site.allowed_users (name TEXT PRIMARY KEY)",
        "INSERT INTO site.allowed_users SELECT name FROM allowed_users ORDER BY rowid",
        "PRAGMA site.user_version = 9",
        "CREATE TABLE node_health (name TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT 'up' "
        "CHECK (state IN ('up', 'down')), reason TEXT, probed_at REAL, lost TEXT)",
        "INSERT INTO node_health SELECT name, CASE WHEN state = 'down' THEN 'down' ELSE 'up' "
        "END, CASE WHEN state = 'down' THEN state_reason END, probed_at, lost FROM nodes "
        "WHERE state = 'down' OR lost IS NOT NULL",
        "DROP TABLE nodes",
        "DROP TABLE allowed_users"],
    # a bare qpy wait covers what ended since the last; ended jobs are kept in the history
    9: ["ALTER TABLE jobs ADD COLUMN waited INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN outputs TEXT",
        "CREATE INDEX jobs_held ON jobs (position) WHERE status = 'queue' AND held = 1",
        "UPDATE jobs SET waited = 1 WHERE status IN ('done', 'failed', 'killed', 'undone')",
        "CREATE TABLE history (id INTEGER PRIMARY KEY, user TEXT NOT NULL, name TEXT, "
        "status TEXT NOT NULL, reason TEXT, command TEXT NOT NULL, cwd TEXT NOT NULL, node TEXT, "
        "external_id TEXT, n_cores INTEGER NOT NULL, mem REAL NOT NULL, gpus INTEGER NOT NULL, "
        "gpu_ids TEXT, attributes TEXT NOT NULL, time_limit REAL, dependencies TEXT, "
        "array_of INTEGER, array_index INTEGER, array_limit INTEGER, requeue INTEGER NOT NULL, "
        "attempt INTEGER NOT NULL, queued_at REAL NOT NULL, started_at REAL, "
        "ended_at REAL NOT NULL, exit_code INTEGER, signal INTEGER, max_rss INTEGER, "
        "cpu_time REAL)",
        "INSERT INTO history SELECT id, user, name, status, reason, command, cwd, node, "
        "external_id, n_cores, mem, gpus, gpu_ids, attributes, time_limit, dependencies, "
        "array_of, array_index, array_limit, requeue, attempt, queued_at, started_at, "
        "COALESCE(ended_at, queued_at), exit_code, signal, max_rss, cpu_time FROM jobs "
        "WHERE status IN ('done', 'failed', 'killed', 'undone')",
        "CREATE INDEX history_by_user ON history (user, ended_at)",
        "CREATE INDEX history_by_end ON history (ended_at)"],
}


def upgrade_db(path):
    """Upgrade an older DB in place, in one transaction, keeping every job. Every index of
    schema.sql is made too if it is missing: a DB of a commit between two schema versions may
    lack one that the queries name (the tick would fail at every pass)."""
    with open(shipped_file("schema.sql")) as f:
        indexes = [statement.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1)
                   for statement in sql_statements(f.read()) if "CREATE INDEX" in statement]

    def upgrade(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version < 9 and os.stat(state_dir()).st_mode & 0o077:  # (a site: from where any
            # member could have written them)
            after_commit(log_event, "upgrade: the site's nodes, allowed users, rules and "
                         "settings moved from qpy.db to %s, where only the administrator can "
                         "change them; they were in qpy.db, which any member could write: "
                         "check them (qpy_admin.py list, variables)" % site_path(state_dir()))
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            version += 1
        for statement in indexes:
            db.execute(statement)
        db.execute("PRAGMA user_version = %d" % version)
    try:
        atomically(upgrade, site=True)
    except (sqlite3.DatabaseError, QpyError) as e:
        raise QpyError("Could not upgrade the qpy database %s: %s (it is unchanged)." % (path, e))


def machine_memory():
    """Total memory of this machine in GB (one decimal, rounded down)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(int(line.split()[1]) / 1048576 * 10) / 10
    return 1.0


# How long take_lock retries at its quickest (a transaction holds qpy.lock for a millisecond or
# two), and its longest pause once the lock has been held for a while.
BRIEF_WAIT = 0.02
LONGEST_PAUSE = 0.05


def take_lock(name, timeout):
    """Hold the file lock <state>/<name>, waiting at most `timeout` seconds (0: only if it is
    free now). Returns the function that releases it, or None if the wait ran out.

    This is the lock filelock's FileLock(path, mode=0o660) takes, an exclusive flock(2) on the
    file, and works with it (the tests hold it with FileLock), but taken here directly:
    importing filelock costs more than all the rest of `qpy sub` (20-30 ms), and each of
    FileLock's tries costs some 0.7 ms of CPU (16 waiters spun a core). qpy tries again every
    0.2 ms for BRIEF_WAIT, then after pauses growing to LONGEST_PAUSE: a try costs 5 us."""
    import fcntl
    import stat
    path = os.path.join(state_dir(), name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o660)
    except OSError as e:
        if os.path.islink(path):
            raise QpyError("The lock %s is a link, which qpy never follows: the administrator "
                           "removes it." % path)
        raise QpyError("Cannot open the lock %s: %s" % (path, e.strerror))
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        os.close(fd)
        raise QpyError("The lock %s is not a plain file: the administrator removes it." % path)
    if found.st_uid == os.geteuid():  # (another's was given its mode when it was made)
        os.fchmod(fd, 0o660)  # as FileLock does: the umask must not close it to the group
    start = time.monotonic()
    pause = 0.0002
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lambda: os.close(fd)  # closing the file releases the flock
            except BlockingIOError:
                left = start + timeout - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(pause, left))
                if time.monotonic() - start > BRIEF_WAIT:
                    pause = min(pause * 1.5, LONGEST_PAUSE)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def lock_wait_failed(name):
    path = os.path.join(state_dir(), name)
    return QpyError("Waited %g s for the qpy lock %s, held by %s (QPY_LOCK_TIMEOUT sets the "
                    "wait)." % (lock_timeout(), path, lock_holder(path)))


_after_commit = []  # what the transaction in progress does to files once it has committed


def after_commit(fn, *args):
    """Inside a transaction: do fn(*args) once it has committed, never before and never twice
    (atomically may run its closure again; a rolled-back transaction removed no file)."""
    _after_commit.append((fn, args))


def atomically(fn, write=True, site=False):
    """Run fn(db) in one transaction under qpy.lock; retry when SQLite reports a busy or
    failing filesystem; return what fn returns. The file effects the closure asked for with
    after_commit run after the commit, outside the lock. site=True (the administrator's
    commands): fn may change the site too, which is then a copy of site.db that takes its
    place once the transaction has committed, still under the lock."""
    db = connect()
    delay = 0.05
    for attempt in range(8):
        release = take_lock("qpy.lock", lock_timeout())
        if release is None:
            raise lock_wait_failed("qpy.lock")
        outer = _after_commit[:]  # (a transaction never runs inside another: kept for safety)
        del _after_commit[:]
        site_copy = None
        try:
            if write:
                refuse_writes_if_damaged()
            if site:
                site_copy = begin_site_change(db)
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(db)
                if site_copy is not None:
                    crash_point("site:changing")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if site_copy is not None:  # (committed: whatever fails now, fn is not run again)
                copy, site_copy = site_copy, None
                crash_point("site:committed")
                try:
                    end_site_change(db, copy, committed=True)
                except (OSError, sqlite3.Error) as e:
                    raise QpyError("The queue's part of the change was committed, but then the "
                                   "site's settings failed: %s; see qpy_admin.py doctor." % e)
            effects = _after_commit[:]
            release()
            release = None
            for effect, args in effects:  # (committed: a failing effect must not undo it)
                try:
                    effect(*args)
                except Exception:
                    log_exception("after a commit, %s" % effect.__name__)
            return result
        except sqlite3.OperationalError as e:
            transient = ("locked" in str(e) or "busy" in str(e) or "disk I/O" in str(e))
            if not transient or attempt == 7:
                raise QpyError(database_failure(e))
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:  # a constraint, a misuse: qpy's bug
                raise
            raise damaged_database(e)
        finally:
            _after_commit[:] = outer
            try:
                if site_copy is not None:  # (not committed: the site stays as it was)
                    copy, site_copy = site_copy, None
                    end_site_change(db, copy, committed=False)
            finally:
                if release is not None:
                    release()
        time.sleep(delay)
        delay *= 2


# Rows a long read takes per hold of the lock: some 10 ms of it (25 on a slow day).
READ_PAGE = 1000


def read_in_pages(table, where, params, order):
    """The rows of `table` that match `where` (SQL, with `params`), in the order of the
    columns `order` (unique together: the last is id), READ_PAGE at a time, each page a read
    transaction of its own under qpy.lock that starts after the last row of the page before.
    For rows that no longer change (jobs that ended, the history): a reader then holds the
    lock for a page, never for the whole history, and still sees each row that was there
    throughout exactly once (a page is one snapshot; a row does not move between them)."""
    columns = ", ".join(order)
    first, later = ("SELECT * FROM %s WHERE (%s)%s ORDER BY %s LIMIT %d" % (
        table, where or "1", after, columns, READ_PAGE) for after in (
            "", " AND (%s) > (%s)" % (columns, ", ".join("?" * len(order)))))
    rows, last = [], None
    while True:
        page = atomically(lambda db: db.execute(
            later if last else first, list(params) + (last or [])).fetchall(), write=False)
        rows += page
        if len(page) < READ_PAGE:
            return rows
        last = [page[-1][column] for column in order]


DB_HINTS = {
    "attempt to write a readonly database": " (are you in the site's group? the DB and its "
                                            "directory must be writable by it)",
    "unable to open database file": " (check the state directory's permissions)",
    "database or disk is full": " (free some space: nothing stored was lost, try again then)",
}


def lock_holder(path):
    """Who holds a file lock on this machine, from /proc/locks ('another host' if nobody
    here does: on a shared filesystem the holder may be elsewhere)."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if fields[1] == "->":
                    continue
                if int(fields[5].rsplit(":", 1)[1]) == inode:
                    pid = int(fields[4])
                    with open("/proc/%d/cmdline" % pid, "rb") as g:
                        command = g.read().replace(b"\0", b" ").decode(errors="replace")
                    return "process %d (%s)" % (pid, " ".join(command.split())[:80])
    except (OSError, ValueError, IndexError):
        pass
    return "a process on another host, or one that just ended"


def meta_number(db, key):
    return float(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


def ensure_user(db, user):
    db.execute("INSERT OR IGNORE INTO users (name) VALUES (?)", (user,))
    return db.execute("SELECT * FROM users WHERE name = ?", (user,)).fetchone()


# --------------------------------------------------------------------------------------------
# Jobs: life cycle. The statuses, their groups, and every change of a job's status. Each
# transition is one UPDATE guarded by the job's ID, the attempt its caller saw and the
# statuses it may leave, and says whether it happened: no stale actor (an earlier attempt's
# runner, a late tick) can move a job it no longer owns.
#
#   queue ----claim----> starting ---confirm_start---> running ---finish---> done|failed|killed
#                                  (or start_in_pool)
#     |                   |   |                          |
#     |                   |   +--fail_claim--> failed    |
#     +------undo---------+--> undone                    |
#     ^                   |                              |
#     +--return_to_queue--+------------------------------+  (launch failed or timed out,
#                                                            --requeue, nothing ran yet)
# --------------------------------------------------------------------------------------------

STATUSES = ("queue", "starting", "running", "done", "failed", "killed", "undone")
LIVE = ("queue", "starting", "running")
RESERVING = ("starting", "running")  # they reserve cores, memory and GPUs on their node
FINISHED = ("done", "failed", "killed", "undone")
ENDINGS = ("done", "failed", "killed")  # how a job that ran ends (an exit record's status)
USER_STATUSES = ("queue", "running") + FINISHED  # what users see: 'starting' is 'queue'
# Each status users see, with its colour in `qpy check` unless coloursScheme says otherwise,
# in the order coloursScheme takes them (the manual's: queue running done killed undone,
# then those added since).
STATUS_COLOURS = {"queue": "yellow", "running": "blue", "done": "green", "killed": "red",
                  "undone": "grey", "failed": "magenta"}
# The condition of the partial indexes of live jobs (schema.sql), written out so that SQLite
# uses them (it matches only this literal form): queries of live jobs never walk the history.
LIVE_SQL = "status IN (%s)" % ", ".join("'%s'" % status for status in LIVE)
# (and of the ended ones, which no index holds apart: they are read by the user's index)
FINISHED_SQL = "status IN (%s)" % ", ".join("'%s'" % status for status in FINISHED)


def user_status(job):
    """The status word users see: a job being started ('starting') is still 'queue' to them,
    in check, status, restart and the site report alike."""
    return "queue" if job["status"] == "starting" else job["status"]


def is_live(job):
    return job["status"] in LIVE


def reserves_node(job):
    return job["status"] in RESERVING


def site_counts(db):
    """{user: {"running", "cores", "queued"}}: each user's running jobs and the cores they
    use, and their jobs queued as users see them (claimed ones too, a job waiting in Slurm
    among them). What status, restart and the site report show."""
    return {row[0]: {"running": row[1], "cores": row[2], "queued": row[3]} for row in db.execute(
        "SELECT user, SUM(status = 'running'), SUM(CASE WHEN status = 'running' THEN n_cores "
        "ELSE 0 END), SUM(status != 'running') FROM jobs WHERE " + LIVE_SQL + " GROUP BY user")}


def move(db, job, leaving, status, **columns):
    """The one UPDATE of a job's status: from one of `leaving`, at the attempt the caller saw
    (job["attempt"]), to `status`, setting these columns. Did it happen? A job that ends
    leaves its accounting record in the history, in the same transaction."""
    sets = "".join(", %s = ?" % column for column in columns)
    cursor = db.execute(
        "UPDATE jobs SET status = ?%s WHERE id = ? AND attempt = ? AND status IN (%s)"
        % (sets, ",".join("?" * len(leaving))),
        (status, *columns.values(), job["id"], job["attempt"], *leaving))
    if cursor.rowcount == 1 and status in FINISHED:
        db.execute("INSERT OR REPLACE INTO history (%s) SELECT %s FROM jobs WHERE id = ?"
                   % (HISTORY_SQL, HISTORY_SQL), (job["id"],))
    if cursor.rowcount == 1 and job["status"] == "starting" and status != "running":
        owe_cancel_of_a_hand_over(db, job)
    return cursor.rowcount == 1


def owe_cancel_of_a_hand_over(db, job):
    """A claim on a pool without qpy's runner that ends other than by starting (queued
    again, refused, undone, failed): its hand-over may be on its way there or waiting in
    Slurm, and nothing there would ask the site whether it may run. The pool owes it a
    cancel (its list of lost attempts: stop_leftovers sends it once the pool answers)."""
    kind = db.execute("SELECT kind FROM nodes WHERE name = ?", (job["node"],)).fetchone()
    if kind and kind[0] in POOLS and not POOLS[kind[0]]["runner"]:
        remember_lost_job(db, job)


# What the history keeps of an ended job (schema.sql: history): what `qpy history` and
# `check --json` show of it.
HISTORY_COLUMNS = ("id", "user", "name", "status", "reason", "command", "cwd", "node",
                   "external_id", "n_cores", "mem", "gpus", "gpu_ids", "attributes",
                   "time_limit", "dependencies", "array_of", "array_index", "array_limit",
                   "requeue", "attempt", "queued_at", "started_at", "ended_at", "exit_code",
                   "signal", "max_rss", "cpu_time")
HISTORY_SQL = ", ".join(HISTORY_COLUMNS)


def claim(db, job, node, gpu_ids, now):
    """A tick takes a queued job for a node: a new attempt, its resources reserved."""
    return move(db, job, ("queue",), "starting", node=node, attempt=job["attempt"] + 1,
                claimed_at=now, reason=None, gpu_ids=",".join(map(str, gpu_ids)),
                external_id=None, refusal=None)


def confirm_start(db, job, now, external_id=None):
    """Its runner confirms the claim: the job runs (this runner owns it)."""
    return move(db, job, ("starting",), "running", started_at=now, runner_pid=os.getpid(),
                runner_boot=process_boot(os.getpid()),
                external_id=external_id or job["external_id"], reason=None)


def start_in_pool(db, job, started_at, external_id):
    """A pool without qpy's runner started the job: its follow found the started marker, or
    the pool says it runs (nobody there owns the row: its follow does)."""
    return move(db, job, ("starting",), "running", started_at=started_at, runner_pid=None,
                runner_boot=None, external_id=external_id, reason=None)


def return_to_queue(db, job, reason, refusal=None, leaving=("starting",)):
    """Back to the queue, as if never claimed: its launch failed or timed out (from
    'starting' only: a runner that did confirm owns the job, whatever its launcher said), or,
    from 'running', nothing ran or it asked to be requeued. Its attempt's run files are void
    (removed after the commit)."""
    if not move(db, job, leaving, "queue", node=None, reason=reason, runner_pid=None,
                external_id=None, refusal=refusal, gpu_ids=None, started_at=None):
        return False
    after_commit(as_owner, job["user"], remove_run_files, job)
    request_tick(db)
    return True


def finish(db, job, record, run_files=True):
    """A running job ended, as its exit record says (a qpy kill makes any end but done
    'killed'); its files go after the commit (its run files too, unless run_files is False:
    its runner removes them once the next job runs)."""
    status, reason = record["status"], record.get("reason")
    if job["kill_requested"] and status not in ("done", "killed"):
        status, reason = "killed", "killed by the user"
    if not move(db, job, ("running",), status, exit_code=record.get("exit_code"),
                signal=record.get("signal"), reason=reason, ended_at=record["ended_at"],
                max_rss=record.get("max_rss"), cpu_time=record.get("cpu_time")):
        return False
    if run_files:
        discard_run_files(job)
    return True


def undo(db, job, reason):
    """A queued (or claimed, not yet started) job that will never run: undone."""
    if not move(db, job, ("queue", "starting"), "undone", ended_at=time.time(), reason=reason):
        return False
    discard_run_files(job)
    request_tick(db)
    return True


def fail_claim(db, job, reason):
    """A claimed job that cannot start at all (its files refused, Slurm lost it): failed.
    Its files are left alone: they may not be its owner's (a forged row)."""
    if not move(db, job, ("starting",), "failed", reason=reason, ended_at=time.time()):
        return False
    request_tick(db)
    return True


def discard_run_files(job):
    """After the commit, remove an ended job's run files. Its job file and script copy stay
    until qpy clean removes the job (qpy rerun runs them again): forget_job_files."""
    after_commit(as_owner, job["user"], remove_run_files, job)


def forget_job_files(db, user, specs):
    """Inside qpy clean's transaction, once the rows are gone: after the commit, remove the
    job files (and the script copies they name) that no row of the user names any more: an
    array's jobs share one, which goes with the last of them."""
    kept = {row[0] for row in db.execute("SELECT spec FROM jobs WHERE user = ?", (user,))}
    for spec in sorted(set(specs) - kept):
        after_commit(as_owner, user, remove_job_file, user, spec)


def remove_job_file(user, path):
    """A job file and the script copy it names, each only if it is in the user's own spool
    or scripts folder: the row that named it is the group's to write."""
    if not in_own_folder(user, "spool", path):
        return
    try:
        with open(path) as f:
            copied = json.load(f).get("script_copy")
    except (OSError, ValueError, AttributeError):
        copied = None
    remove_quietly(path, *([copied] if isinstance(copied, str) and
                           in_own_folder(user, "scripts", copied) else []))


def in_own_folder(user, folder, path):
    """Is `path` a file right in users/<user>/<folder>/ (no link on the way)?"""
    base = os.path.join(user_dir(user), folder)
    return os.path.dirname(os.path.normpath(path)) == base and \
        os.path.realpath(path) == os.path.join(os.path.realpath(base), os.path.basename(path))


def as_owner(user, fn, *args):
    """Do fn(*args), a change of files in a user's own directory, as that user: root never
    removes or moves a file there itself (its owner may have put a link on the way, another
    member a path of theirs in the row). Root forks and becomes the user, who must exist; the
    child touches no connection and leaves with os._exit."""
    if os.geteuid() != 0:
        return fn(*args)
    import pwd
    try:
        owner = pwd.getpwnam(user)
    except (KeyError, TypeError):
        return None
    if owner.pw_uid == 0:
        return fn(*args)
    pid = os.fork()
    if pid == 0:
        try:
            become(owner)
            fn(*args)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return None


# --- Run files: what a runner keeps beside a job's row, each file of one attempt ------------
#   <state>/users/<user>/run/<id>.<attempt>.started  created with O_EXCL when the runner
#       confirms: '<attempt>@<state id>', then ' go' when the command is told to run, then
#       its process group; .hb its heartbeat (mtime); .exit the exit record (JSON, written
#       before the row); .batch a pool's own output of the batch script, kept with the job
#       until qpy clean (its messages tell why a pool job failed).
# Nothing left by one attempt is ever read for another. (Before schema 6 they were named
# <id>.<kind>: existing_run_file still finds those of the attempt that made them.)

RUN_KINDS = ("started", "hb", "exit")  # (a pool's ".batch" output is kept until qpy clean)


def run_file(job, kind, attempt=None):
    return os.path.join(user_dir(job["user"]), "run", "%d.%d.%s" % (
        job["id"], job["attempt"] if attempt is None else attempt, kind))


def existing_run_file(job, kind):
    """The path of this job's attempt's run file, also as qpy named it before schema 6 (when
    its started marker says it was made for this attempt); None if there is none."""
    path = run_file(job, kind)
    if os.path.exists(path):
        return path
    run = os.path.join(user_dir(job["user"]), "run")
    legacy = os.path.join(run, "%d.%s" % (job["id"], kind))
    if not os.path.exists(legacy):
        return None
    try:
        with open(os.path.join(run, "%d.started" % job["id"]), "rb") as f:
            made_for = f.read().split()[:1]
    except OSError:
        return None
    return legacy if made_for == [str(job["attempt"]).encode()] else None


def remove_run_files(job):
    remove_quietly(*(run_file(job, kind) for kind in RUN_KINDS))


def remove_batch_outputs(user, job_ids):
    """The pools' outputs of these jobs' attempts (qpy clean)."""
    import glob
    for job_id in job_ids:
        remove_quietly(*glob.glob(os.path.join(user_dir(user), "run", "%d.*.batch" % job_id)))


def stale_run_files(user, live_attempts):
    """The files in a user's run directory of no live job's current attempt (left by a runner
    that died between its commit and their removal, or by an attempt taken back).
    live_attempts: {job id: attempt}."""
    run = os.path.join(user_dir(user), "run")
    stale = []
    for name in sorted(os.listdir(run)) if os.path.isdir(run) else []:
        words = name.split(".")
        if not words[0].isdigit() or words[-1] == "batch":
            continue
        attempt = int(words[1]) if len(words) == 3 and words[1].isdigit() else None
        current = live_attempts.get(int(words[0]))
        if current is None or (attempt is not None and attempt != current):
            stale.append(os.path.join(run, name))
    return stale


def quarantine(job, path, why):
    """A run file that cannot be read is moved aside (users/<user>/quarantine/), by its
    owner, for qpy_admin.py check to report, and the job is decided as if it were absent."""
    as_owner(job["user"], move_to_quarantine, job, path, why)


def move_to_quarantine(job, path, why):
    folder = os.path.join(user_dir(job["user"]), "quarantine")
    try:
        if not os.path.lexists(folder):
            os.mkdir(folder, 0o700)
        if not own_directory(folder) or not in_own_folder(job["user"], "run", path):
            raise OSError("not the user's own folder")
        target = os.path.join(folder, "%s.%d" % (os.path.basename(path), time.time_ns()))
        os.rename(path, target)
    except OSError:
        if in_own_folder(job["user"], "run", path):
            remove_quietly(path)
        target = "(removed)"
    log_event("job %d: %s is unreadable (%s): moved to %s" % (job["id"], path, why, target))


def read_exit_record(job):
    """The exit record of the job's attempt, validated; None if there is none. One that
    cannot be read is quarantined."""
    path = existing_run_file(job, "exit")
    if path is None:
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        why = exit_record_problem(record, job)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        why = str(e)
    if why:
        quarantine(job, path, why)
        return None
    return record


def exit_record_problem(record, job):
    """What is wrong with an exit record read from disk, or None."""
    def number(value, kinds=(int, float)):
        return isinstance(value, kinds) and not isinstance(value, bool)
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("state", state_id()) != state_id():  # (before schema 6 they had no state)
        return "made for state %r, not this one (%s)" % (record["state"], state_id())
    if record.get("attempt") != job["attempt"]:
        return "attempt %r, not %d" % (record.get("attempt"), job["attempt"])
    if record.get("status") not in ENDINGS:
        return "status %r" % record.get("status")
    if not number(record.get("ended_at")):
        return "no end time"
    for key, kinds in (("exit_code", int), ("signal", int), ("max_rss", int),
                       ("cpu_time", (int, float)), ("reason", str)):
        if record.get(key) is not None and not (number(record[key], kinds) if key != "reason"
                                                else isinstance(record[key], str)):
            return "%s %r" % (key, record[key])
    return None


def marker_head(job):
    """The first word of a started marker: the attempt it was made for, and the state's
    identity (a marker of another state says nothing about this one's jobs)."""
    return b"%d@%s" % (job["attempt"], (known_identity() or "").encode())


def known_identity():
    """This process's state's identity, also in a process that has not connected (_reap,
    _leftovers on a node read qpy.id); None when it cannot be read now."""
    return state_id() or read_identity(state_dir())


def marker_words(job):
    """The started marker of the job's attempt: [attempt@state], then b'go' once the runner
    told the command to run, then the command's process group (start_command). None if there
    is none; a marker that says anything else, or was made in another state, is quarantined
    (and counts as absent). (Before the state's identity was in it, its head was the attempt
    alone.)"""
    path = existing_run_file(job, "started")
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            words = f.read().split()
    except OSError:
        return None
    attempt = str(job["attempt"]).encode()
    head = words[0].split(b"@", 1) if words else []
    # (a state whose identity cannot be read now takes any of its attempt's: never a live
    # job's marker moved aside for a file that could not be read)
    identity = known_identity()
    head_ok = head == [attempt] or head[:1] == [attempt] and len(head) == 2 and (
        identity is None or head[1] == identity.encode())
    shapes_ok = (head_ok and words[1:2] in ([], [b"go"])
                 and len(words) <= 3 and all(word.isdigit() for word in words[2:]))
    if not shapes_ok:
        quarantine(job, path, "it reads %r" % b" ".join(words)[:80])
        return None
    return words


def command_started(job):
    """Did the runner give the command its go? (When the marker is absent or unreadable,
    assume it did: a job is never run twice.)"""
    words = marker_words(job)
    return words is None or len(words) > 1


def last_heartbeat(job):
    path = existing_run_file(job, "hb")
    try:
        return os.stat(path).st_mtime if path else job["started_at"] or 0
    except OSError:
        return job["started_at"] or 0


# --------------------------------------------------------------------------------------------
# Model: ID sets, check formats, #QPY directives, attribute expressions, configuration
# --------------------------------------------------------------------------------------------

# Limits on what users type, checked before anything is expanded or stored (README, "Limits").
MAX_ID = 2 ** 63 - 1        # SQLite's largest integer: job IDs, array indices
MAX_RANGES = 1000           # comma-separated items in one list of IDs
MAX_ARRAY = 100000          # jobs in one --array
MAX_DEPENDENCIES = 10000    # jobs named by --after, --afterok and --afternotok together
MAX_ATTR_TOKENS = 500       # words and parentheses of a node attribute expression
MAX_ATTR_DEPTH = 50         # nesting of its parentheses and nots
MAX_NAME = 64               # characters of a node's name
MAX_COUNT = 10 ** 6         # cores, GPUs, max_jobs of a node or a job


def parse_idset(text):
    """'100-120,130' -> [(100, 120), (130, 130)]. Raises ValueError on anything else, also
    on IDs beyond MAX_ID and on more than MAX_RANGES items."""
    ranges = []
    items = text.split(",")
    if len(items) > MAX_RANGES:
        raise ValueError(text[:80])
    for item in items:
        m = re.fullmatch(r"(\d{1,19})(?:-(\d{1,19}))?", item.strip())
        if not m:
            raise ValueError(text[:80])
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo or hi > MAX_ID:
            raise ValueError(text[:80])
        ranges.append((lo, hi))
    return ranges


def idset_size(ranges):
    """How many IDs the ranges name (counted, not expanded; overlaps counted twice)."""
    return sum(hi - lo + 1 for lo, hi in ranges)


def shown(text, limit=80):
    """User input quoted in a message: at most `limit` characters of it."""
    return text if len(text) <= limit else text[:limit] + "..."


def in_idset(job_id, ranges):
    return any(lo <= job_id <= hi for lo, hi in ranges)


DEFAULT_CHECK_FMT = "%j (%s):%c (on %n; wd: %d)\n"


def format_time(t):
    """A time as users read it, to the second (2026-12-01 20:21:46)."""
    from datetime import datetime
    return "None" if t is None else str(datetime.fromtimestamp(int(t)))


def format_span(seconds):
    """A duration to the second, as h:mm:ss (0:00:03); days when it has them."""
    from datetime import timedelta
    return "None" if seconds is None else str(timedelta(seconds=int(seconds)))


def format_memory(kb):
    """A peak memory in KB as users read it: MB, or KB below one (a tiny job's sample)."""
    if kb is None:
        return "None"
    return "%d KB" % kb if kb < 1024 else "%.1f MB" % (kb / 1024)


def run_time(job, now):
    """%R: time in the queue while queued, running time while running, else start to end."""
    status = user_status(job)
    if status == "queue":
        return now - job["queued_at"]
    if status == "running":
        return now - job["started_at"]
    if job["started_at"] is None:
        return None
    return job["ended_at"] - job["started_at"]


def exit_text(job):
    """%x: the exit code, or the signal name for a job ended by a signal, else None."""
    if job["signal"]:
        try:
            return signal.Signals(job["signal"]).name
        except ValueError:
            return "signal %d" % job["signal"]
    return "None" if job["exit_code"] is None else str(job["exit_code"])


# The checkFMT keys: each a function of (job, now, its notes), computed only when the
# pattern asks for it.
FIELDS = {
    "j": lambda job, now, notes: str(job["id"]),
    "s": lambda job, now, notes: user_status(job),
    "c": lambda job, now, notes: job["command"],
    "d": lambda job, now, notes: job["cwd"],
    "n": lambda job, now, notes: str(job["node"]) if user_status(job) != "queue" else "None",
    "N": lambda job, now, notes: str(job["n_cores"]),
    "m": lambda job, now, notes: str(float(job["mem"])),
    "g": lambda job, now, notes: job["gpu_ids"] or "None",
    "J": lambda job, now, notes: job["name"] or "",
    "L": lambda job, now, notes: format_span(job["time_limit"]),
    "M": lambda job, now, notes: format_memory(job["max_rss"]),
    "U": lambda job, now, notes: format_span(job["cpu_time"]),
    "i": lambda job, now, notes: "None" if job["array_index"] is None
    else str(job["array_index"]),
    "a": lambda job, now, notes: job["attributes"],
    "A": lambda job, now, notes: (job["node"] if user_status(job) != "queue" and job["node"]
                                  else "[%s]" % job["attributes"]),
    "R": lambda job, now, notes: format_span(run_time(job, now)),
    "Q": lambda job, now, notes: format_time(job["queued_at"]),
    "S": lambda job, now, notes: format_time(job["started_at"]),
    "E": lambda job, now, notes: format_time(job["ended_at"]),
    "x": lambda job, now, notes: exit_text(job),
    "r": lambda job, now, notes: job["reason"] or "",
    "K": lambda job, now, notes: notes,
    "I": lambda job, now, notes: job["external_id"] or "None",
}


@functools.lru_cache(maxsize=8)
def format_pieces(pattern):
    """A checkFMT pattern cut once into its text and its keys: [(text, field or None)], each
    %<key> read in one pass (so a '%d' inside the command stays); %% is a %, an unknown
    %<char> stays as it is."""
    pieces, text = [], []
    parts = re.split(r"%(.)", pattern, flags=re.S)
    for number, part in enumerate(parts):
        if number % 2 == 0:
            text.append(part)
        elif part in FIELDS:
            pieces.append(("".join(text), FIELDS[part]))
            text = []
        else:
            text.append("%" if part == "%" else "%" + part)
    return pieces + [("".join(text), None)]


def format_job(pattern, job, now, notes=""):
    """One job in a checkFMT pattern."""
    return "".join(text + field(job, now, notes) if field else text
                   for text, field in format_pieces(pattern))


def decode_escapes(text):
    r"""'\n' and '\t' typed in a checkFMT pattern mean newline and tab; '\\' is a backslash."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}.get(m.group(1), m.group(0)),
                  text)


COLOURS = {"grey": 30, "red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35,
           "cyan": 36, "white": 37}
DEFAULT_SCHEME = list(STATUS_COLOURS.values())


def colour(text, name):
    return "\x1b[%dm%s\x1b[0m" % (COLOURS[name], text)


def parse_bool(text):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(text)


# A user's settings: name -> (default, aliases). Values are stored as JSON in `config`.
CONFIG = {
    "checkFMT": (DEFAULT_CHECK_FMT, ("job_fmt_pattern",)),
    "colour": (True, ("use_colour", "color")),
    "coloursScheme": (DEFAULT_SCHEME, ("colorsScheme",)),
    "copyScripts": (False, ("use_script_copy",)),
    "defaultAttr": ("", ()),
    "andAttr": ("", ()),
    "orAttr": ("", ()),
}
CONFIG_ALIASES = {alias: key for key, (_, aliases) in CONFIG.items() for alias in aliases}


def load_config(db, user):
    config = {key: default for key, (default, _) in CONFIG.items()}
    for row in db.execute("SELECT key, value FROM config WHERE user = ?", (user,)):
        if row["key"] in config:
            config[row["key"]] = json.loads(row["value"])
    return config


def parse_config_value(key, values):
    """Validate `qpy config <key> <values...>`: return (stored value, message) or raise QpyError."""
    if values == ["default"]:
        default = CONFIG[key][0]
        if key == "checkFMT":
            return default, ("Check pattern restored to the default value: %s." % repr(default))
        return default, "%s restored to the default value: %s." % (key, default)
    if key == "checkFMT":
        if not values:
            raise QpyError("Give a pattern for checkFMT, e.g. qpy config checkFMT '%j: %s\\n' "
                           "(or 'default').")
        pattern = decode_escapes(" ".join(values))
        return pattern, "Check pattern modified to %s" % repr(pattern)
    if key in ("colour", "copyScripts"):
        try:
            if len(values) != 1:
                raise ValueError
            value = parse_bool(values[0])
        except ValueError:
            raise QpyError("Value for %s must be true or false." % key)
        return value, "%s set to %s" % (key, value)
    if key == "coloursScheme":
        for name in values:
            if name not in COLOURS:
                raise QpyError("Unknown colour: %s (choose from %s)." % (name, " ".join(COLOURS)))
        statuses = list(STATUS_COLOURS)
        if not 5 <= len(values) <= len(statuses):
            raise QpyError("Give five colours for coloursScheme (%s), and optionally more for %s."
                           % (" ".join(statuses[:5]), " ".join(statuses[5:])))
        return values + DEFAULT_SCHEME[len(values):], "Colours scheme changed."
    # defaultAttr, andAttr, orAttr: an attribute expression, or nothing to unset it
    expression = " ".join(values)
    if not expression:
        return "", "%s unset." % key
    parse_attributes(expression)
    return expression, "%s set to %s." % (key, expression)


ATTR_TOKEN = r"\s*(?:(\()|(\))|([^\s()]+))"  # compiled on first use, not at every start


@functools.lru_cache(maxsize=256)  # the scheduler asks again for every job and node: once
def parse_attributes(text):
    """Parse a node attribute expression: labels (or node names) with and, or, not and
    parentheses; precedence not > and > or. Returns a tree of tuples, or None for ''.
    Raises QpyError on a syntax error (never 'matches everything' as in the original)."""
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = re.compile(ATTR_TOKEN).match(text, pos)
        tokens.append(m.group(m.lastindex))
        if len(tokens) > MAX_ATTR_TOKENS:
            raise QpyError("Invalid node attribute expression: longer than %d words and "
                           "parentheses." % MAX_ATTR_TOKENS)
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if not tokens:
        return None
    depth, deepest = 0, 0
    for token in tokens:
        depth += {"(": 1, ")": -1}.get(token, 0)
        deepest = max(deepest, depth + (token == "not"))
    if deepest > MAX_ATTR_DEPTH or tokens.count("not") > MAX_ATTR_DEPTH:
        raise QpyError("Invalid node attribute expression: nested deeper than %d."
                       % MAX_ATTR_DEPTH)
    position = [0]

    def peek():
        return tokens[position[0]] if position[0] < len(tokens) else None

    def take():
        position[0] += 1
        return tokens[position[0] - 1]

    def disjunction():
        left = conjunction()
        while peek() == "or":
            take()
            left = ("or", left, conjunction())
        return left

    def conjunction():
        left = negation()
        while peek() == "and":
            take()
            left = ("and", left, negation())
        return left

    def negation():
        if peek() == "not":
            take()
            return ("not", negation())
        return atom()

    def atom():
        token = peek()
        if token is None:
            raise QpyError("Invalid node attribute expression %r: it ends too early." % text)
        if token == "(":
            take()
            inner = disjunction()
            if peek() != ")":
                raise QpyError("Invalid node attribute expression %r: missing ')'." % text)
            take()
            return inner
        if token in (")", "and", "or", "not"):
            raise QpyError("Invalid node attribute expression %r: unexpected %r." % (text, token))
        return ("label", take())

    tree = disjunction()
    if peek() is not None:
        raise QpyError("Invalid node attribute expression %r: unexpected %r." % (text, peek()))
    return tree


def matches_attributes(tree, labels):
    """Does a node with these labels (its attributes and its name) satisfy the expression?"""
    if tree is None:
        return True
    kind = tree[0]
    if kind == "label":
        return tree[1] in labels
    if kind == "not":
        return not matches_attributes(tree[1], labels)
    if kind == "and":
        return matches_attributes(tree[1], labels) and matches_attributes(tree[2], labels)
    return matches_attributes(tree[1], labels) or matches_attributes(tree[2], labels)


def combine_attributes(job_attr, config):
    """Apply the user's defaultAttr, orAttr and andAttr to a job's expression, as the original."""
    expression = job_attr or config["defaultAttr"]
    if config["orAttr"]:
        expression = "( %s ) or ( %s )" % (config["orAttr"], expression) if expression \
            else config["orAttr"]
    if config["andAttr"]:
        expression = "( %s ) and ( %s )" % (config["andAttr"], expression) if expression \
            else config["andAttr"]
    return expression


DIRECTIVE_KEYS = {
    "n_cores": "cores", "number of cores": "cores",
    "mem": "mem", "memory": "mem", "gpus": "gpus", "time": "time",
    "node_attr": "attributes", "node attributes": "attributes",
    "cpScript": "copy", "cp_script": "copy", "copy script": "copy",
}


def parse_directives(lines):
    """`#QPY key=value; key=value` lines of a script -> {'cores', 'mem', 'attributes', 'copy'}.
    Values are validated here; a bad line raises QpyError naming it."""
    found = {}
    for line in lines:
        if not line.startswith("#QPY "):
            continue
        for pair in line[5:].strip().split(";"):
            if not pair.strip():
                continue
            if pair.count("=") != 1:
                raise QpyError("Invalid syntax for options inside script: %s" % pair.strip())
            key, value = (part.strip() for part in pair.split("="))
            if key not in DIRECTIVE_KEYS:
                raise QpyError("Unknown script option: %s" % key)
            found[DIRECTIVE_KEYS[key]] = check_request_value(DIRECTIVE_KEYS[key], value, key)
    return found


def check_request_value(kind, value, name):
    """Validate one resource request (from a flag or a directive); return it typed."""
    try:
        if kind in ("cores", "gpus"):
            number = int(value)
            if not (1 if kind == "cores" else 0) <= number <= MAX_COUNT:
                raise ValueError
            return number
        if kind == "mem":
            number = float(value)
            if not number >= 0 or number == float("inf"):
                raise ValueError
            return number
        if kind == "copy":
            return parse_bool(value)
        if kind == "time":
            return parse_duration(value)
    except (ValueError, OverflowError):
        raise QpyError("Invalid value for %s: %s." % (name, value[:80]))
    parse_attributes(value)
    return value


def parse_duration(text):
    """A time limit as Slurm writes it: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
    Returns seconds (> 0); raises ValueError."""
    days, dash, rest = text.strip().rpartition("-") if "-" in text else ("0", "", text.strip())
    parts = rest.split(":")
    if not days.isdigit() or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise ValueError(text)
    numbers = [int(p) for p in parts]
    if dash:  # D-HH[:MM[:SS]]
        numbers += [0] * (3 - len(numbers))
        hours, minutes, seconds = numbers
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    elif len(numbers) == 2:
        hours, (minutes, seconds) = 0, numbers
    else:
        hours, minutes, seconds = 0, numbers[0], 0
    total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(text)
    return float(total)


SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "python", "python3", "perl"}


def find_script(argv, cwd):
    """The script a command runs, if any: its first word, or the word after a shell or
    interpreter (`bash job.sh`). Returns (index of the word, absolute path) or None."""
    import shlex
    words = argv
    if len(argv) == 1:
        try:
            words = shlex.split(argv[0])
        except ValueError:
            words = argv[0].split()
    for index, word in enumerate(words[:2]):
        path = os.path.join(cwd, os.path.expanduser(word))
        if os.path.isfile(path):
            return index, word, os.path.abspath(path)
        if index == 0 and os.path.basename(word) not in SHELLS:
            return None
    return None


# the keys of every node; a pool kind adds its own (POOLS[kind]["options"])
NODE_KEYS = {"address", "cores", "memory", "gpus", "attributes", "pref_multicore", "check_dir",
             "type", "max_jobs"}


def parse_nodes_file(text):
    """The nodes file, in either format, one node per line ('#' starts a comment):
      the manual's   <name> <cores> [M]
      the original's <name> address=<host> cores=<n> memory=<GB> gpus=<n> attributes=a,b
                     pref_multicore=true|false
      a Slurm pool   <name> type=slurm partition=<p> cores=<n> [max_jobs=<n>] [account=<a>]
                     [qos=<q>] [time=<limit>] [extra="<more sbatch arguments>"] (and memory,
                     gpus, attributes)
    Returns a list of node dicts; raises QpyError naming the line and the problem."""
    import shlex
    nodes, names = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(line.split("#", 1)[0])
            if not words:
                continue
            node = parse_node_line(words)
        except (ValueError, QpyError) as e:
            raise QpyError("nodes file, line %d: %s" % (number, e))
        if node["name"] in names:
            raise QpyError("nodes file, line %d: node %s is defined twice" % (number, node["name"]))
        names.add(node["name"])
        nodes.append(node)
    return nodes


NODE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a word that -a expressions can name


def count_value(key, value, least=0):
    """A whole number of a nodes file (cores, gpus, max_jobs), bounded."""
    if not value.isdigit() or not least <= int(value) <= MAX_COUNT:
        raise QpyError("%s must be a whole number from %d to %d, not %r"
                       % (key, least, MAX_COUNT, value[:40]))
    return int(value)


def nodes_sharing_an_address(nodes):
    """Warnings for remote hosts listed twice under different names (allowed: one machine
    may be split in two, as this one often is in tests, but it is usually a typing mistake)."""
    seen, warnings = {}, []
    for node in nodes:
        if node["kind"] == "host" and not is_local(node["address"]):
            if node["address"] in seen:
                warnings.append("nodes %s and %s have the same address %s" % (
                    seen[node["address"]], node["name"], node["address"]))
            seen.setdefault(node["address"], node["name"])
    return warnings


def parse_node_line(words):
    name, rest = words[0], words[1:]
    if len(name) > MAX_NAME or not re.fullmatch(NODE_NAME, name) \
            or name in ("and", "or", "not"):
        raise QpyError("a node's name is a word of letters, digits, '.', '_' and '-' (at most "
                       "%d, not and, or, not), not %r" % (MAX_NAME, name[:40]))
    node = {"name": name, "kind": "host", "address": name, "cores": None, "mem": None, "gpus": 0,
            "attributes": "", "pref_multicore": False, "max_jobs": None, "options": None}
    pool_keys = {key: kind for kind, pool in POOLS.items() for key in pool["options"]}
    options, pool_type = {}, None
    if rest and rest[0].isdigit():  # the manual's format
        node["cores"] = count_value("cores", rest[0], least=1)
        for word in rest[1:]:
            if word != "M":
                raise QpyError("expected 'M' after the cores, got %r" % word)
            node["pref_multicore"] = True
        rest = []
    given = set()
    for word in rest:
        key, equals, value = word.partition("=")
        if not equals:
            raise QpyError("expected a pair <key>=<value>, but got %r" % word)
        if key not in NODE_KEYS and key not in pool_keys:
            raise QpyError("unknown key %r (keys: %s)" % (
                key[:40], ", ".join(sorted(NODE_KEYS | set(pool_keys)))))
        if key in given:
            raise QpyError("%s is given twice" % key)
        given.add(key)
        if key == "address":
            node["address"] = value
        elif key in ("cores", "gpus", "max_jobs"):
            node[key] = count_value(key, value, least=0 if key == "gpus" else 1)
        elif key == "memory":
            node["mem"] = float(value)
            if not 0 <= node["mem"] < float("inf"):
                raise QpyError("memory must be a number of GB, not %r" % value)
        elif key == "attributes":
            labels = [label for label in value.split(",") if label]
            bad = [label for label in labels if label in ("and", "or", "not")
                   or not re.fullmatch(r"[^\s(),]+", label)]
            if bad:
                raise QpyError("attribute %r cannot be used in expressions" % bad[0])
            node["attributes"] = ",".join(labels)
        elif key == "pref_multicore":
            node["pref_multicore"] = parse_bool(value)
        elif key == "type":
            if value != "host" and value not in POOL_TYPES:
                raise QpyError("type must be host or %s, not %r" % (" or ".join(POOL_TYPES),
                                                                   value))
            pool_type = None if value == "host" else value
        else:  # a pool's own setting
            options[key] = value
    if pool_type:
        node["kind"] = pool_kind(pool_type, options)
    if node["cores"] is None:
        raise QpyError("node %s has no number of cores (cores=<n>)" % name)
    if not is_host_address(node["address"]):
        raise QpyError("address must be a host name or user@host, not %r" % node["address"])
    pool = POOLS.get(node["kind"])
    if pool:
        if "address" in given:
            raise QpyError("%s pool %s is reached from this machine, not by an address"
                           % (pool["name"], name))
        foreign = sorted(set(options) - set(pool["options"]))
        if foreign:
            raise QpyError("%s is not a setting of %s pools" % (foreign[0], pool["name"]))
        pool["check"](node, options)
        node["address"] = "localhost"
        node["options"] = json.dumps(options, sort_keys=True)
    else:
        only = sorted(set(options) | ({"max_jobs"} & given))
        if only:
            kind = pool_keys.get(only[0])
            raise QpyError("%s is only for %s (type=%s)" % (
                only[0], "%s pools" % POOLS[kind]["name"] if kind else "pools",
                POOLS[kind]["type"] if kind else "|".join(POOL_TYPES)))
        if node["mem"] is None and is_local(node["address"]):
            node["mem"] = machine_memory()
    return node


# --------------------------------------------------------------------------------------------
# Scheduler: a pure function from the state to the jobs to start and where
# --------------------------------------------------------------------------------------------

def node_labels(node):
    return set(filter(None, node["attributes"].split(","))) | {node["name"]}


def node_memory(node):
    """A node's memory in GB; a node whose memory is not known does not limit memory."""
    return float("inf") if node["mem"] is None else node["mem"]


def free_resources(nodes, live_jobs):
    """{node name: {"cores", "mem", "gpus", "jobs"}} left after what running and claimed jobs
    hold ("jobs": how many more a Slurm pool takes; unlimited for hosts)."""
    free = {node["name"]: {"cores": node["cores"], "mem": node_memory(node), "gpus": node["gpus"],
                           "jobs": node["max_jobs"] or float("inf")}
            for node in nodes}
    for job in live_jobs:
        if reserves_node(job) and job["node"] in free:
            reserve(free[job["node"]], job)
    return free


def reserve(free_on_node, job):
    free_on_node["cores"] -= job["n_cores"]
    free_on_node["mem"] -= job["mem"]
    free_on_node["gpus"] -= job["gpus"]
    free_on_node["jobs"] -= 1


def fits(free_on_node, job):
    return (free_on_node["cores"] >= job["n_cores"] and free_on_node["mem"] >= job["mem"] - 1e-9
            and free_on_node["gpus"] >= job["gpus"] and free_on_node["jobs"] >= 1)


def choose_node(job, nodes, free, refusal=None):
    """The node for a job, or None. The lab's own nodes come first: a Slurm pool gets a job
    only when no host can start it now. Single-core jobs go to the node with the most free
    cores, sparing the nodes marked for multicore jobs; multicore jobs take the first node that
    fits, those marked 'M' first. Down and drained nodes are never chosen, nor the pool that
    refused this job lately (refusal)."""
    tree = parse_attributes(job["attributes"])
    candidates = [node for node in nodes
                  if node["state"] == "up" and fits(free[node["name"]], job)
                  and matches_attributes(tree, node_labels(node))
                  and not (refusal and node["name"] == refusal["node"])]
    candidates = [node for node in candidates if node["kind"] not in POOLS] or candidates
    if not candidates:
        return None
    if job["n_cores"] == 1:
        spare = [node for node in candidates if not node["pref_multicore"]] or candidates
        return max(spare, key=lambda node: free[node["name"]]["cores"])  # ties: first in order
    return sorted(candidates, key=lambda node: not node["pref_multicore"])[0]


def why_no_node(job, nodes, refusal=None):
    """The pending reason of a job that fits on no node now. Only the nodes it could ever run
    on count (a lab node too small for it is no reason to wait for resources, when the only
    pool that could run it is down or refused it)."""
    tree = parse_attributes(job["attributes"])
    matching = [node for node in nodes if matches_attributes(tree, node_labels(node))
                and fits({"cores": node["cores"], "mem": node_memory(node), "gpus": node["gpus"],
                          "jobs": 1}, job)]

    def unavailable(node):  # why the job cannot go there at all, or None
        if refusal and node["name"] == refusal["node"]:
            return refused_note(refusal)
        if node["state"] == "up":
            return None
        return "%s %s" % (node["name"], node["state"]) + (
            " (%s)" % node["state_reason"] if node["state"] == "down" and node["state_reason"]
            else "")
    reasons = [unavailable(node) for node in matching]
    if all(reasons):
        return "waiting for a node: %s" % (", ".join(reasons) or "none matches")
    return "waiting for resources"


def refused_note(refusal):
    return "%s refused it (%s)" % (refusal["node"], refusal["why"])


def parse_rules(text):
    """The distribution_rules file: a first line `even` or `explicit`, optionally followed by
    `minimum N`; for `explicit`, then one line per user, `<user> <spec>` or `<user>=<spec>`,
    where spec is E, E%, M+E or M+E% (M: the user's own minimum, E: extra cores, or a
    percentage of the cores left after all minimums). '#' starts a comment.
    Returns {"kind", "minimum", "users": {name: (minimum or None, extra, is_percent)}}."""
    lines = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        raise QpyError("distribution_rules is empty: write 'even' or 'explicit'")
    number, first = lines[0]
    words = first.split()
    if words[0] not in ("even", "explicit"):
        raise QpyError("distribution_rules, line %d: unknown type of distribution %r "
                       "(even or explicit)" % (number, words[0]))
    rules = {"kind": words[0], "minimum": 0, "users": {}}
    if len(words) > 1:
        if len(words) != 3 or words[1] != "minimum" or not words[2].isdigit():
            raise QpyError("distribution_rules, line %d: expected '%s minimum <cores>'"
                           % (number, words[0]))
        rules["minimum"] = int(words[2])
    for number, line in lines[1:]:
        if rules["kind"] == "even":
            raise QpyError("distribution_rules, line %d: 'even' takes no user lines" % number)
        m = re.fullmatch(r"([^\s=]+)\s*(?:=|\s)\s*(?:(\d+)\+)?(\d+)(%?)", line)
        if not m:
            raise QpyError("distribution_rules, line %d: expected '<user> <extra>[%%]' or "
                           "'<user> <minimum>+<extra>[%%]', got %r" % (number, line))
        name, minimum, extra, percent = m.groups()
        if name in rules["users"]:
            raise QpyError("distribution_rules, line %d: user %s given twice" % (number, name))
        if percent and int(extra) > 100:
            raise QpyError("distribution_rules, line %d: %s%% is more than all" % (number, extra))
        rules["users"][name] = (int(minimum) if minimum else None, int(extra), bool(percent))
    return rules


DEFAULT_RULES = {"kind": "even", "minimum": 0, "users": {}}


def compute_shares(rules, users, total):
    """{user: (minimum, extra)} for these users (in this order) on `total` cores, as the
    original qpy: everyone gets the minimum, then `even` splits the rest equally (the remainder
    one by one), and `explicit` gives listed users their extra and unlisted users an equal part
    of what is left. Minimums that do not fit are cut one core at a time, never a hang."""
    listed = rules["users"]
    minimum = {u: (listed[u][0] if u in listed and listed[u][0] is not None else rules["minimum"])
               for u in users}
    while sum(minimum.values()) > total:  # more guaranteed than there is: cut, round-robin
        for u in sorted(users, key=lambda u: -minimum[u]):
            if sum(minimum.values()) > total and minimum[u] > 0:
                minimum[u] -= 1
    left = total - sum(minimum.values())
    extra = dict.fromkeys(users, 0)
    if rules["kind"] == "explicit":
        for u in users:
            if u in listed:
                e, percent = listed[u][1], listed[u][2]
                extra[u] = left * e // 100 if percent else e
        receivers = [u for u in users if u not in listed] or [u for u in users if u in listed]
    else:
        receivers = list(users)
    rest = left - sum(extra.values())
    while rest < 0:  # promised more than there is: take back one by one
        for u in reversed(receivers):
            if rest < 0 and extra[u] > 0:
                extra[u] -= 1
                rest += 1
        if not any(extra[u] for u in receivers):
            break
    if receivers and rest > 0:
        for u in receivers:
            extra[u] += rest // len(receivers)
        for u in receivers[:rest % len(receivers)]:
            extra[u] += 1
    return {u: (minimum[u], extra[u]) for u in users}


def admitted(user, cores, shares, used, queued, free_unreserved):
    """The admission rule of the 2018 qpy, without preemption:
    within the guaranteed minimum, always; within minimum + extra, if the cores are free (and
    not kept as someone's unused minimum); beyond, borrow a part of the extra cores of the
    users with an empty queue, split among the users that also want more."""
    least, extra = shares.get(user, (0, 0))
    mine = used.get(user, 0) + cores
    if mine <= least:
        return True
    if free_unreserved < cores:
        return False
    if mine <= least + extra:
        return True
    others = [v for v in shares if v != user]
    wanting = 1 + sum(1 for v in others if queued.get(v, 0) > 0
                      and used.get(v, 0) >= sum(shares[v]))
    idle = sum(min(sum(shares[v]) - used.get(v, 0), shares[v][1])
               for v in others if queued.get(v, 0) == 0)
    return mine <= least + extra + idle // wanting


def schedule(nodes, live_jobs, blocked_users, shares=None, unmet=None, queue_counts=None,
             refusals=None):
    """Decide which queued jobs start now, and where.

    nodes: rows with name, cores, mem, attributes, pref_multicore, state (in file order);
    live_jobs: queued, starting and running jobs, queued ones in queue order;
    blocked_users: {user: why} for users whose queue is paused or finished;
    shares: {user: (minimum, extra)} from compute_shares, or None for no fair share;
    unmet: {job id: why} for jobs that may not start yet (their dependencies);
    queue_counts: {user: queued jobs that may start}, when live_jobs holds only the front of the
    queue (default: counted in live_jobs);
    refusals: {job id: {"node", "why"}} for jobs a Slurm pool refused lately (not placed there).
    Returns ([(job id, node name)], {job id: why it waits}). A job that does not fit is passed
    over so that smaller jobs behind it can start (backfilling)."""
    unmet = unmet or {}
    used, queued, array_running = {}, {}, {}
    up = {node["name"] for node in nodes if node["state"] == "up"}
    for job in live_jobs:
        if job["status"] == "queue":
            if queue_counts is None and job["user"] not in blocked_users \
                    and job["id"] not in unmet:
                queued[job["user"]] = queued.get(job["user"], 0) + 1
        else:
            if job["node"] in up:  # (shares are of the cores of the nodes that are up)
                used[job["user"]] = used.get(job["user"], 0) + job["n_cores"]
            if job["array_of"] is not None:
                array_running[job["array_of"]] = array_running.get(job["array_of"], 0) + 1
    counts = {"total": shared_cores(nodes), "used": used, "array_running": array_running,
              "queued": queued if queue_counts is None else dict(queue_counts)}
    return schedule_counted(nodes, free_resources(nodes, live_jobs), counts,
                            [job for job in live_jobs if job["status"] == "queue"],
                            blocked_users, shares, unmet, refusals)


def schedule_counted(nodes, free, counts, waiting, blocked_users, shares, unmet, refusals):
    """schedule's decisions, from what it counted of the live jobs: free (free_resources of
    these nodes), counts {"total": cores shared out, "used": {user: cores in use on the nodes
    that are up}, "queued": {user: queued jobs that may start}, "array_running": {first ID of
    an array: its jobs running or claimed}} and the waiting jobs in queue order. The counts
    are changed as jobs are placed. nodes may be fewer than the counts are of: a job is
    placed only on these (the runner's quick pass, quick_plan)."""
    total, used, queued = counts["total"], counts["used"], counts["queued"]
    array_running = counts["array_running"]
    unmet, refusals = unmet or {}, refusals or {}
    placements, pending = [], {}
    # What place_one answered for a job that it did not place holds for every job of the same
    # user and request until the next placement changes the counts (a queue of alike jobs is
    # decided once, not once per job); why no node could take a request holds for the pass.
    declined, no_node = {}, {}
    while True:  # until a pass places nothing: a placement may make another job admissible
        before = len(placements)
        for job in in_fair_order(waiting, shares, used):
            limit = job["array_limit"]
            refusal = refusals.get(job["id"])
            alike = (job["user"], job["n_cores"], job["mem"], job["gpus"], job["attributes"])
            if job["id"] in unmet:
                where, why = None, unmet[job["id"]]
            elif limit and array_running.get(job["array_of"], 0) >= limit:
                where, why = None, "array limit: %d running" % limit
            elif alike in declined and refusal is None:
                where, why = None, declined[alike]
            else:
                try:
                    where, why = place_one(job, nodes, free, total, used, queued,
                                           blocked_users, shares, refusal, no_node)
                except QpyError as e:  # (a job stored before today's limits, a forged row)
                    where, why = None, "its request cannot be used: %s" % e
                if where and job["array_of"] is not None:
                    array_running[job["array_of"]] = array_running.get(job["array_of"], 0) + 1
                if where:
                    declined.clear()
                elif refusal is None:
                    declined[alike] = why
            if where:
                placements.append((job["id"], where))
                pending.pop(job["id"], None)
            else:
                pending[job["id"]] = why
        if len(placements) == before or all(room["cores"] < 1 for room in free.values()):
            return placements, pending  # (a full cluster admits nobody else)
        placed = {job_id for job_id, _ in placements}
        waiting = [job for job in waiting if job["id"] not in placed]


def in_fair_order(waiting, shares, used):
    """The queued jobs in the order a pass considers them: with a fair share, next a job of
    the user furthest below their share at that moment (`used` grows as jobs are placed), in
    their queue order, ties to whoever queued first; without one, queue order."""
    import collections
    import heapq
    if shares is None:
        yield from waiting
        return
    queues = {}  # user: [(place in the queue, job)...], in queue order
    for index, job in enumerate(waiting):
        queues.setdefault(job["user"], collections.deque()).append((index, job))

    def turn(user):  # (a heap's least first: the furthest below their share, then who is first)
        return (used.get(user, 0) - sum(shares.get(user, (0, 0))), queues[user][0][0], user)
    turns = [turn(user) for user in queues]
    heapq.heapify(turns)
    while turns:  # (only the user just served can have changed: their job may have been placed)
        user = heapq.heappop(turns)[2]
        yield queues[user].popleft()[1]
        if queues[user]:
            heapq.heappush(turns, turn(user))


def place_one(job, nodes, free, total, used, queued, blocked_users, shares, refusal,
              no_node=None):
    """Place one queued job if its user's share and the nodes allow it, updating the counts.
    Returns (node name, None), or (None, why it waits). no_node: the pass's answers of
    why_no_node, by request (they do not change while the pass goes on)."""
    user = job["user"]
    if user in blocked_users:
        return None, blocked_users[user]
    no_node = {} if no_node is None else no_node
    request = (job["n_cores"], job["mem"], job["gpus"], job["attributes"],
               refusal and (refusal["node"], refusal["why"]))
    if request not in no_node:
        no_node[request] = why_no_node(job, nodes, refusal)
    why = no_node[request]
    if why.startswith("waiting for a node"):  # (no node that could run it is there to use:
        return None, why                      # that, not the share, is why it waits)
    if shares is not None:
        reserved = sum(max(0, least - used.get(u, 0)) for u, (least, _) in shares.items()
                       if u != user)
        unreserved = total - sum(used.values()) - reserved
        if not admitted(user, job["n_cores"], shares, used, queued, unreserved):
            within = used.get(user, 0) + job["n_cores"] <= sum(shares.get(user, (0, 0)))
            others_wait = any(count > 0 for u, count in queued.items() if u != user)
            return None, ("waiting for its share of the cores" if others_wait and not within
                          else "waiting for free cores")
    node = choose_node(job, nodes, free, refusal)
    if node is None:
        return None, why
    reserve(free[node["name"]], job)
    used[user] = used.get(user, 0) + job["n_cores"]
    queued[user] -= 1
    return node["name"], None


def unsatisfiable_reason(request, nodes):
    """Why no node could ever run this request (cores, memory, GPUs, attributes), or None."""
    tree = parse_attributes(request["attributes"])
    named = [node for node in nodes if matches_attributes(tree, node_labels(node))]
    if not named:
        return "no node has the attributes '%s'" % request["attributes"]
    if not any(node["cores"] >= request["n_cores"] for node in named):
        return "no node has %d cores (the largest has %d)" % (
            request["n_cores"], max(node["cores"] for node in named))
    if not any(node["cores"] >= request["n_cores"] and node_memory(node) >= request["mem"]
               for node in named):
        return "no node with %d cores has %g GB of memory (the largest has %g GB)" % (
            request["n_cores"], request["mem"], max(node_memory(node) for node in named))
    if not any(fits({"cores": n["cores"], "mem": node_memory(n), "gpus": n["gpus"],
                     "jobs": 1}, request)
               for n in named):
        return "no node with %d cores and %g GB has %d GPUs" % (
            request["n_cores"], request["mem"], request["gpus"])
    return None


# --------------------------------------------------------------------------------------------
# Tick: harvest, reconcile, claim, launch
# --------------------------------------------------------------------------------------------

# Whose tick, or whose jobs, a function acts for (its `me`): a user's name, or ROOT's tick,
# which acts for anybody, each job as its owner.
ROOT = None


def request_tick(db, user=None):
    """Inside a transaction: ask for a tick pass. user None: for anybody's jobs (meta
    tick_wanted: cores were freed, a node came back...), which any tick may take on, as it
    hands on what it cannot start itself; a user: for that user's jobs (users.wanted), which
    only their own tick or root's takes on. A running tick, or the next, does it."""
    if user is None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'tick_wanted'")
    else:
        db.execute("UPDATE users SET wanted = wanted + 1 WHERE name = ?", (user,))


def tick_wanted(db, me):
    """Is a pass wanted that the tick of `me` (a user, or ROOT) can do?"""
    if meta_number(db, "tick_wanted"):
        return True
    return db.execute("SELECT 1 FROM users WHERE wanted > 0" + (
        "" if me is ROOT else " AND name = ?"), () if me is ROOT else (me,)).fetchone() \
        is not None


def take_wakeups(db, me):
    """Inside the pass's transaction: the requests this tick answers are answered (what it
    cannot start is handed on by own_placements)."""
    db.execute("UPDATE meta SET value = '0' WHERE key = 'tick_wanted'")
    db.execute("UPDATE users SET wanted = 0 WHERE wanted > 0" + (
        "" if me is ROOT else " AND name = ?"), () if me is ROOT else (me,))


def lock_name(kind, me):
    """One tick ('tick') and one watch ('watch') at a time per user, and root's apart: a
    user's tick slowed by an unreachable node never keeps another user's, or root's, from
    starting their jobs. A user's locks are in their own directory (nobody else can plant
    anything there), root's in the state directory (made by create)."""
    if me is ROOT:
        return "%s.lock" % kind
    ensure_user_dirs(me)
    return os.path.join("users", me, "%s.lock" % kind)


def ticking_user():
    """Whose tick this process runs: ROOT's, or the user's."""
    return ROOT if os.geteuid() == 0 else user_name()


def tick_overdue(db, jobs):
    """Was a tick missed (its requester or runner killed)? Then whoever notices starts one:
    a tick was asked for, a claim is older than launch_timeout, a local runner is gone, or
    jobs wait while a down node is due for its probe (without a site timer, nobody else
    would ever bring that node back)."""
    if tick_wanted(db, ticking_user()):
        return True
    if any(job["status"] == "queue" for job in jobs) and nodes_due_for_probe(db):
        return True
    stale = time.time() - setting(db, "launch_timeout")
    local = {row[0] for row in db.execute("SELECT name, address FROM nodes WHERE kind = 'host'")
             if is_local(row[1])}
    return any(job["status"] == "starting" and job["claimed_at"] < stale
               or job["status"] == "running" and job["node"] in local
               and not process_alive(job["runner_pid"], job["runner_boot"]) for job in jobs)


# A tick that makes pass after pass (wake-ups keep coming) still asks the slow questions.
WATCH_AT_LEAST_EVERY = 5.0  # seconds


def tick(fork_runners=True, watching=True):
    """Run tick passes until nobody wants one that this tick can do; leave at once if this
    user's (or root's) tick is deciding already. A pass decides under the tick lock (one
    short transaction), then, without it, launches what it claimed and asks the slow
    questions (watch): no tick holds its lock while it waits on ssh or a pool, so a wake-up
    that comes meanwhile gets a tick of its own at once. fork_runners: this machine's
    runners may be forks of this process (see launch_all); watching False: no slow
    questions (a lingering tick: the timer's next run asks them)."""
    me = ticking_user()
    watched = time.monotonic()
    while True:
        release = take_lock(lock_name("tick", me), 0)
        if release is None:
            return  # its holder will see the request
        try:
            claims = atomically(lambda db: decide(db, me))
        finally:
            release()
        crash_point("tick:claimed")
        if any(job["kind"] != "host" or not is_local(job["address"]) for job in claims) and \
                atomically(lambda db: tick_wanted(db, me), write=False):
            start_tick(fork_runners)  # (asked for while we decided: not to wait for our ssh)
        launch_all(claims, fork_runners)
        crash_point("tick:launched")
        wanted = atomically(lambda db: tick_wanted(db, me), write=False)
        # the slow questions wait while passes are wanted, but not for ever
        if watching and (not wanted or time.monotonic() - watched > WATCH_AT_LEAST_EVERY):
            watch(me)
            watched = time.monotonic()
            wanted = atomically(lambda db: tick_wanted(db, me), write=False)
        if not wanted:
            return


# How often a lingering tick looks for a wake-up: a read under the lock, some 0.2 ms.
LINGER_POLL = 0.25


def linger(seconds):
    """The timer's tick, made to stay: for up to `seconds` more, while any job is live,
    answer each wake-up within LINGER_POLL seconds. Above all those handed on to other users
    (cores one user's job freed for another's): no user's tick may start them, and without
    this they would wait for the timer's next run. Its passes ask no slow questions (the
    timer's next run does), so that none of them keeps a wake-up waiting. It leaves as
    soon as nothing is live."""
    end = time.monotonic() + seconds
    me = ticking_user()
    while time.monotonic() < end:
        wanted, live = atomically(lambda db: (tick_wanted(db, me), db.execute(
            "SELECT 1 FROM jobs WHERE " + LIVE_SQL + " LIMIT 1").fetchone()), write=False)
        if not (wanted or live):
            return
        if wanted:  # (a pass leaves at once when another tick is deciding: that one answers)
            tick(watching=False)
        time.sleep(min(LINGER_POLL, max(0.0, end - time.monotonic())))


def start_tick(fork_runners=True):
    """After asking for a tick (request_tick): start one in the background, unless this
    user's tick is deciding, which sees the request when it checks for one (it does after
    releasing its lock too, so the request is never lost). fork_runners: as tick's (False
    in a runner: the runners it starts must not be forks of a runner)."""
    release = take_lock(lock_name("tick", ticking_user()), 0)
    if release is None:
        return
    release()
    detach(tick, fork_runners)


def decide(db, me):
    """The transaction of a pass, with what the DB and this machine know: take the wake-ups
    it answers, end what ended (reconcile), claim the jobs that can start (claim_jobs).
    Returns the claims."""
    take_wakeups(db, me)
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_tick', ?)",
               (str(time.time()),))
    db.execute("INSERT INTO meta (key, value) VALUES ('tick_passes', '1') "
               "ON CONFLICT (key) DO UPDATE SET value = value + 1")
    reconcile(db, me)
    return claim_jobs(db, me)


def watch(me):
    """The slow questions, asked outside the tick lock, by one watch of this user (or root)
    at a time (a tick that finds one at work leaves them to it): probe the down nodes, stop
    what given-up attempts left on the nodes that answer again, follow the pools, ask the
    nodes of runners whose heartbeat is late. What they answer is recorded (reconcile); what
    it frees asks for a pass, which the tick then makes."""
    release = take_lock(lock_name("watch", me), 0)
    if release is None:
        return
    try:
        late, lost = atomically(lambda db: (late_runners(db, me), db.execute(
            "SELECT 1 FROM nodes WHERE lost IS NOT NULL AND state = 'up' LIMIT 1").fetchone()),
            write=False)  # (one read for both: this is every pass)
        # (the lab's own nodes first: what a slow pool or login node answers comes after)
        verdicts = ask_nodes([job for job in late if job["kind"] == "host"])
        probe_down_nodes(me)
        if lost:
            stop_leftovers(me)
        followed, unreachable = follow_pools(me)
        # a late pool job is judged by what its pool says; one whose pool did not answer (or
        # whose node was removed) is lost (a pool this machine cannot reach says nothing)
        verdicts.update(((job["id"], job["attempt"]), "unreachable") for job in late
                        if job["kind"] is None or job["kind"] in POOLS
                        and POOLS[job["kind"]]["usable_here"]()
                        and (job["id"], job["attempt"]) not in followed.get(job["node"], {}))
        if not (followed or unreachable or verdicts):
            return

        def record(db):
            for pool, error in unreachable.items():
                mark_down(db, pool, error, time.time())
            return reconcile(db, me, followed, verdicts)
        cancel_in_pools(atomically(record))
    finally:
        release()


def plan(db):
    """Inside a transaction: the reads of a scheduling pass and the pure scheduler's answer,
    for every user's jobs (so the fair share holds), as planned_pass says. None while
    dispatch is off."""
    if not setting(db, "dispatch"):
        return None
    nodes, blocked, shares, unmet = pass_conditions(db)
    running, (queued, read) = running_jobs(db), queue_fronts(db, QUEUE_DEPTH)
    live = running + queued
    placements, pending = schedule(nodes, live, blocked, shares, unmet,
                                   waiting_counts(db, blocked, unmet, QUEUE_DEPTH, read),
                                   refusals_of(live))
    return planned_pass(placements, pending, nodes, running, queued, read, QUEUE_DEPTH)


def planned_pass(placements, pending, nodes, running, queued, read, depth):
    """What plan and quick_plan return: {"placements": [(job id, node)], "pending": {job id:
    why it waits}, "jobs": {job id: row} of the queued jobs looked at, "nodes", "live" (the
    running and queued rows read), "left_out" (jobs further back in a queue were not looked
    at), "kinds": {node: kind}}."""
    return {"placements": placements, "pending": pending, "nodes": nodes,
            "live": running + queued, "jobs": {job["id"]: job for job in queued},
            "left_out": any(count > depth for count in read.values()),
            "kinds": {node["name"]: node["kind"] for node in nodes}}


# How many queued jobs of each user the runner's quick pass looks at (as Slurm's quick
# scheduling at each job end, beside its deeper backfill pass: here a tick's, QUEUE_DEPTH).
QUICK_DEPTH = 5


def quick_plan(db, node_name):
    """The runner's pass at its job's end, when no other node has a free core, so that no job
    can start but on its node: as plan's, for that node alone, from what SQLite counts of the
    running jobs (not every running job read) and the first QUICK_DEPTH queued jobs of each
    user. It writes no pending reasons (a tick's pass does). None where it does not apply
    (dispatch is off, the node is not up, cores are free elsewhere): plan decides then."""
    if not setting(db, "dispatch"):
        return None
    nodes, blocked, shares, unmet = pass_conditions(db)
    here = [node for node in nodes if node["name"] == node_name and node["state"] == "up"]
    in_use = dict(db.execute("SELECT node, SUM(n_cores) FROM jobs WHERE " + LIVE_SQL +
                             " AND status IN ('starting', 'running') GROUP BY node"))
    if not here or any(node["cores"] > in_use.get(node["name"], 0) for node in nodes
                       if node["state"] == "up" and node["name"] != node_name):
        return None
    running = db.execute("SELECT " + RUNNING_COLUMNS + " FROM jobs WHERE " + LIVE_SQL +
                         " AND status IN ('starting', 'running') AND node = ?",
                         (node_name,)).fetchall()
    queued, read = queue_fronts(db, QUICK_DEPTH)
    counts = {"total": shared_cores(nodes),
              "used": dict(db.execute(  # (shares are of the cores of the nodes that are up)
                  "SELECT user, SUM(n_cores) FROM jobs WHERE " + LIVE_SQL + " AND status IN "
                  "('starting', 'running') AND node IN (SELECT name FROM nodes WHERE state = "
                  "'up') GROUP BY user")),
              "array_running": dict(db.execute(
                  "SELECT array_of, COUNT(*) FROM jobs WHERE " + LIVE_SQL + " AND status IN "
                  "('starting', 'running') AND array_of IS NOT NULL GROUP BY array_of")),
              "queued": waiting_counts(db, blocked, unmet, QUICK_DEPTH, read)}
    placements, _ = schedule_counted(here, free_resources(here, running), counts, queued,
                                     blocked, shares, unmet, refusals_of(queued))
    return planned_pass(placements, {}, nodes, running, queued, read, QUICK_DEPTH)


def pass_conditions(db):
    """What a scheduling pass reads besides the jobs, first (it undoes the queued jobs whose
    dependencies can never be met): the nodes, the users whose queue is blocked ({user:
    why}), the shares, and the queued jobs that may not start yet ({job id: why}:
    dependencies, hold)."""
    nodes = db.execute("SELECT * FROM nodes ORDER BY position, name").fetchall()
    blocked = {row["name"]: "queue paused" if row["paused"] else "qpy finish"
               for row in db.execute("SELECT * FROM users WHERE paused OR finished")}
    shares = compute_shares(load_rules(db), share_holders(db), shared_cores(nodes))
    unmet = unmet_dependencies(db)
    unmet.update(held_jobs(db))
    return nodes, blocked, shares, unmet


def refusals_of(jobs):
    """{job id: refusal} of the jobs a pool refused lately: not offered to it again yet."""
    now = time.time()
    refusals = {}
    for job in jobs:
        try:
            refusal = job["refusal"] and json.loads(job["refusal"])
            if refusal and refusal["until"] > now:
                refusals[job["id"]] = refusal
        except (ValueError, TypeError, KeyError):
            pass  # (a refusal that cannot be read is none: the pool is asked again)
    return refusals


def own_placements(db, me, planned):
    """Inside the plan's transaction: note why jobs wait, hand the others' placed jobs on to
    their owners' ticks (a user's tick starts only their own; ROOT's anybody's, as
    their owner), and return the placements `me` may claim."""
    jobs = planned["jobs"]
    for job in planned["live"]:
        why = planned["pending"].get(job["id"])
        if why is not None and job["reason"] != why:
            db.execute("UPDATE jobs SET reason = ? WHERE id = ?", (why, job["id"]))
    # a pool this machine cannot reach (a runner's tick on a lab node) is left to the ticks
    # of machines that can (the timer's, a user's command on the login host)
    placements = [(job_id, node) for job_id, node in planned["placements"]
                  if planned["kinds"][node] not in POOLS
                  or POOLS[planned["kinds"][node]]["usable_here"]()]
    if me is ROOT:
        return placements
    for user in {jobs[job_id]["user"] for job_id, _ in placements} - {me}:
        request_tick(db, user)
    return [(job_id, node) for job_id, node in placements if jobs[job_id]["user"] == me]


def claim_placed(db, planned, placements):
    """The writes of a pass: claim these placements ('starting', attempt + 1, the node and
    its GPUs reserved); return the claims as job rows."""
    pools = {node["name"] for node in planned["nodes"] if node["kind"] in POOLS}
    devices = gpus_in_use(planned["live"])
    now = time.time()
    claims = []
    for job_id, node_name in placements:
        # a host's GPUs are numbered by qpy; a pool's by Slurm (CUDA_VISIBLE_DEVICES)
        ids = [] if node_name in pools else pick_gpus(devices.setdefault(node_name, set()),
                                                      planned["jobs"][job_id]["gpus"])
        if claim(db, planned["jobs"][job_id], node_name, ids, now):
            claims.append(dict(job_row(db, job_id)))
    return claims


def claim_jobs(db, me):
    """Inside a transaction: plan, and claim every placed job that `me` may launch."""
    planned = plan(db)
    if planned is None:
        return []
    claims = claim_placed(db, planned, own_placements(db, me, planned))
    if planned["left_out"] and claims:
        request_tick(db)  # another pass looks at the jobs behind those claimed now
    return claims


def claim_next_job(db, me, node, user):
    """Inside a runner's end-of-job transaction: plan (a quick pass for this node alone when
    the rest of the cluster is full: the lock is held for a millisecond or two, not for a pass
    over every live job), and claim just the next job of this node and user, which the runner
    then runs itself (no new process, no ssh); ask for a tick if other jobs could start too.
    The claim, or None."""
    quick = quick_plan(db, node)
    planned = quick or plan(db)
    if planned is None:
        return None
    own = own_placements(db, me, planned)
    mine = [(job_id, name) for job_id, name in own
            if (name, planned["jobs"][job_id]["user"]) == (node, user)][:1]
    if len(own) > len(mine) or (quick and quick["left_out"] and not mine):
        request_tick(db)  # (others could start; or a tick's deeper look finds one here)
    claims = claim_placed(db, planned, mine)
    return claims[0] if claims else None


DEPENDENCY_MET = {"after": FINISHED, "afterok": ("done",),
                  "afternotok": ("failed", "killed", "undone")}


# How many queued jobs of each user a tick pass looks at (as Slurm's queue depth): a pass costs
# the same with 10 or 100,000 jobs waiting. A job further back waits for those ahead of it.
QUEUE_DEPTH = 50


# What the scheduler reads of a running or claimed job (all of a queued one: it may be claimed)
RUNNING_COLUMNS = "id, user, status, node, n_cores, mem, gpus, gpu_ids, array_of, refusal, reason"


def running_jobs(db):
    """The running and claimed jobs, as the scheduler reads them (through the index of live
    jobs: never the history)."""
    return db.execute("SELECT " + RUNNING_COLUMNS + " FROM jobs WHERE " + LIVE_SQL +
                      " AND status IN ('starting', 'running')").fetchall()


def queue_fronts(db, depth):
    """The first `depth` queued jobs of each user, in queue order (never the rest of a long
    queue); and {user: how many of their queued jobs were read}, one more than `depth` where
    more are queued (so some were left out)."""
    queued, read = [], {}
    for user in queued_users(db):
        # (named: without it SQLite may walk the user's whole history through jobs_by_user)
        front = db.execute("SELECT * FROM jobs INDEXED BY jobs_queued WHERE status = 'queue' "
                           "AND user = ? ORDER BY position, id LIMIT ?",
                           (user, depth + 1)).fetchall()
        if front:
            read[user] = len(front)
        queued += front[:depth]
    return sorted(queued, key=lambda job: (job["position"], job["id"])), read


def queued_users(db):
    """The users with queued jobs (whether or not they have a users row: a row a member
    wrote must be decided, and refused, not left waiting), found by one jump per user along
    the index of queued jobs, not by a walk over the whole queue."""
    return [row[0] for row in db.execute(
        "WITH RECURSIVE queued(user) AS (SELECT MIN(user) FROM jobs INDEXED BY jobs_queued "
        "WHERE status = 'queue' UNION ALL SELECT (SELECT MIN(user) FROM jobs INDEXED BY "
        "jobs_queued WHERE status = 'queue' AND user > queued.user) FROM queued WHERE "
        "queued.user IS NOT NULL) SELECT user FROM queued WHERE user IS NOT NULL")]


def waiting_counts(db, blocked_users, unmet, depth, read):
    """{user: how many of their queued jobs may start}: who wants cores, for the fair share,
    counted up to depth + 1 only. A pass places at most `depth` jobs of a user (it looks at
    no more), so any count above that decides as the true one would: for a user with no
    unmet job it is how many queue_fronts read (`read`); for the others the count goes on
    past their unmet jobs, so it costs what they cost, never the whole queue."""
    unmet_of = {}
    if unmet:
        for (user,) in db.execute("SELECT user FROM jobs WHERE id IN (SELECT value FROM "
                                  "json_each(?))", (json.dumps(list(unmet)),)):
            unmet_of[user] = unmet_of.get(user, 0) + 1
    counts = {}
    for user, found in read.items():
        if user in blocked_users:
            continue
        if unmet_of.get(user):
            (found,) = db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_queued WHERE status "
                "= 'queue' AND user = ? LIMIT ?)", (user, depth + 1 + unmet_of[user])).fetchone()
        if found - unmet_of.get(user, 0) > 0:
            counts[user] = min(found - unmet_of.get(user, 0), depth + 1)
    return counts


def held_jobs(db):
    """{job id: why it waits} of the queued jobs that qpy hold keeps back."""
    return {job_id: "held (qpy release %d)" % job_id for (job_id,) in db.execute(
        "SELECT id FROM jobs WHERE status = 'queue' AND held = 1")}


def unmet_dependencies(db):
    """{job id: why}: queued jobs whose dependencies are not met yet. Those whose
    dependencies can no longer be met become undone with the reason at once (so the pass,
    which reads the queue after this, in the same transaction, no longer sees them)."""
    unmet = {}
    for job in db.execute("SELECT * FROM jobs WHERE status = 'queue' AND dependencies "
                          "IS NOT NULL").fetchall():
        try:
            dependencies = [(kind, int(other)) for kind, other in json.loads(job["dependencies"])
                            if kind in DEPENDENCY_MET]
        except (ValueError, TypeError):
            dependencies = None
        if not dependencies:  # (one garbled row must not stop every tick)
            undo(db, job, "its dependencies cannot be read: %s" % shown(job["dependencies"]))
            continue
        for kind, other in dependencies:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (other,)).fetchone() or \
                db.execute("SELECT status FROM history WHERE id = ?", (other,)).fetchone()
            status = row[0] if row else None  # (None: not even in the history: pruned)
            if status in DEPENDENCY_MET[kind]:
                continue
            if status in FINISHED or (status is None and kind != "after"):
                # its own dependents follow in the next pass (undo asks for one)
                undo(db, job, "dependency never satisfied: job %d %s"
                     % (other, status or "was cleaned"))
                break
            if status is not None:
                unmet[job["id"]] = "waiting for job %d (%s)" % (other, kind)
                break
    return unmet


def gpus_in_use(live_jobs):
    """{node: set of GPU indices held by its running and claimed jobs}."""
    devices = {}
    for job in live_jobs:
        if reserves_node(job) and job["gpu_ids"]:
            devices.setdefault(job["node"], set()).update(map(int, job["gpu_ids"].split(",")))
    return devices


def pick_gpus(taken, count):
    """The lowest `count` GPU indices not in `taken` (which they join)."""
    chosen = []
    index = 0
    while len(chosen) < count:
        if index not in taken:
            chosen.append(index)
            taken.add(index)
        index += 1
    return chosen


def load_rules(db):
    row = db.execute("SELECT value FROM site.settings WHERE key = 'rules'").fetchone()
    return json.loads(row[0]) if row else DEFAULT_RULES


def shared_cores(nodes):
    """The cores shared out among the users: those of the nodes that are up (a down node's
    cores are nobody's until it is back; a drained node's go on being used, then are not)."""
    return sum(node["cores"] for node in nodes if node["state"] == "up")


def share_holders(db):
    """The users the cores are shared among: allowed_users if the site has the list, else
    everyone who has used this state directory."""
    names = [row[0] for row in db.execute("SELECT name FROM site.allowed_users ORDER BY rowid")]
    return names or [row[0] for row in db.execute("SELECT name FROM users ORDER BY rowid")]


def reconcile(db, me=ROOT, followed=None, verdicts=None):
    """Inside a transaction: take back claims nobody confirmed in time, harvest exit records
    the DB missed, and end running jobs whose runner or node is gone. A user's tick looks
    only at that user's jobs (other users' files are closed to it); root's at all.
    With what the watch learnt, only the jobs it has an answer for: followed, what
    follow_pools learnt, {pool: {(job ID, attempt) asked about: state, None if the pool no
    longer knows it}} (a job handed over since is not judged by it); verdicts, what it made of the
    runners whose heartbeat is late, {(job id, attempt): 'alive', 'gone' (its node answered,
    its orphans were stopped) or 'unreachable'}. One job's damaged files never stop the
    others: what fails is logged and that job is left for later; what the watch's answers
    changed asks for a pass (a job that ended frees its cores). Returns the pool jobs
    killed with qpy kill that their pool still runs (qpy kill's cancel failed), which the
    tick cancels again (their rows)."""
    now = time.time()
    cancels = []
    answers_only = followed is not None or verdicts is not None
    followed, verdicts = followed or {}, verdicts or {}
    timeout = setting(db, "launch_timeout")
    node_timeout = setting(db, "node_timeout")
    changed = False
    for job in live_jobs(db, me, RESERVING):
        asked = (job["id"], job["attempt"]) in followed.get(job["node"], {})
        verdict = verdicts.get((job["id"], job["attempt"]))
        if answers_only and verdict is None and not asked:
            continue
        effects = len(_after_commit)
        before = db.total_changes
        db.execute("SAVEPOINT one_job")
        try:
            if job["status"] == "starting":
                # (a job handed to a pool may wait there for hours: its external ID tells;
                # a pool without qpy's runner says itself what became of a launch cut short)
                if job["claimed_at"] < now - timeout and (not job["external_id"]
                                                          or not job["kind"]) \
                        and POOLS.get(job["kind"], {}).get("runner", True):
                    return_to_queue(db, job, "launch timed out")  # (still 'starting')
                elif asked:
                    POOLS[job["kind"]]["fate"](db, job, followed[job["node"]][
                        (job["id"], job["attempt"])])
            elif (record := read_exit_record(job)) is not None:
                finish(db, job, record)
            elif asked:
                pool = POOLS[job["kind"]]
                state = followed[job["node"]][(job["id"], job["attempt"])]
                pool["fate"](db, job, state)
                if job["kill_requested"] and state and pool["running"](state):
                    cancels.append(dict(job))
            elif job["kind"] == "host" and is_local(job["address"]):
                if not process_alive(job["runner_pid"], job["runner_boot"]):
                    # (a job queued again must not run beside what is left of it: at once)
                    after_commit(stop_orphans, job, 0 if job["requeue"] else
                                 setting(db, "kill_grace"))
                    end_lost_job(db, job, "runner lost")
            elif now - last_heartbeat(job) > node_timeout:
                if verdict == "gone":  # its node answered: only the runner is lost
                    end_lost_job(db, job, "runner lost")
                elif verdict == "unreachable":
                    if job["kind"] == "host":  # (one lost job does not make a pool down)
                        mark_down(db, job["node"], "no heartbeat from job %d" % job["id"], now)
                        remember_lost_job(db, job)
                    end_lost_job(db, job, "node lost")
            db.execute("RELEASE one_job")
            changed = changed or db.total_changes != before
        except sqlite3.Error:
            raise  # (the transaction is in doubt: atomically retries or says why)
        except Exception:  # this job's files or row: left as they are, the others go on
            db.execute("ROLLBACK TO one_job")
            db.execute("RELEASE one_job")
            del _after_commit[effects:]
            log_exception("reconciling job %d" % job["id"])
    if answers_only and changed:
        request_tick(db)
    return cancels


def live_jobs(db, me=ROOT, statuses=LIVE):
    """The live jobs (of user `me`; ROOT: everyone's) with these statuses, each joined with
    its node: one row shape, whose kind, address and pool settings are None when the node is
    gone. Read through the index of live jobs, never the history."""
    listed = ",".join("'%s'" % status for status in statuses)
    return db.execute(
        JOB_WITH_NODE + " WHERE j." + LIVE_SQL + " AND j.status IN (%s)" % listed
        + ("" if me is ROOT else " AND +j.user = ?"),  # "+": stay on jobs_live
        () if me is ROOT else (me,)).fetchall()


# A job's row with what the engine needs of its node (None when the node was removed). The
# job's columns are named: a column a member added to the shared jobs table (`kind`,
# `address`...) must not stand in for the node's, which sqlite3.Row would take first.
JOB_COLUMNS = ("id", "user", "status", "command", "cwd", "spec", "n_cores", "mem", "gpus",
               "gpu_ids", "attributes", "position", "node", "external_id", "refusal", "attempt",
               "queued_at", "claimed_at", "started_at", "ended_at", "runner_pid", "runner_boot",
               "kill_requested", "requeue", "name", "time_limit", "dependencies", "array_of",
               "array_index", "array_limit", "exit_code", "signal", "reason", "max_rss",
               "cpu_time", "waited", "held", "outputs")
JOB_WITH_NODE = ("SELECT %s, n.kind, n.address, n.options FROM jobs j LEFT JOIN nodes n ON "
                 "n.name = j.node" % ", ".join("j." + column for column in JOB_COLUMNS))


def job_row(db, job_id):
    return db.execute(JOB_WITH_NODE + " WHERE j.id = ?", (job_id,)).fetchone()


def end_lost_job(db, job, reason, may_requeue=True):
    """A running job whose runner (or node) is gone and left no exit record. If the runner
    never gave the command its go (see command_started), nothing ran: it is queued again, as
    it is when it asked for that (--requeue), was not killed, and the loss was not its own
    doing (may_requeue)."""
    if not job["kill_requested"] and not command_started(job):
        return return_to_queue(db, job, "%s before the start: queued again" % reason,
                               leaving=("running",))
    if job["requeue"] and not job["kill_requested"] and may_requeue:
        return return_to_queue(db, job, "requeued: " + reason, leaving=("running",))
    killed = bool(job["kill_requested"])
    return finish(db, job, {"status": "killed" if killed else "failed",
                            "reason": "killed by the user (%s)" % reason if killed else reason,
                            "ended_at": time.time()})


def remember_lost_job(db, job):
    """An attempt given up with its node, whose processes may still run there (a partition):
    the node's `lost` list, [[job id, attempt, user]...], for once it answers again."""
    row = db.execute("SELECT lost FROM node_health WHERE name = ?", (job["node"],)).fetchone()
    lost = [[job_id, attempt, user] + ([tries, at] if tries else []) for job_id, attempt, user,
            tries, at in leftover_entries(row[0] if row else None)]
    if [job["id"], job["attempt"], job["user"]] in [item[:3] for item in lost]:
        return
    db.execute("INSERT INTO node_health (name, lost) VALUES (?, ?) ON CONFLICT (name) DO "
               "UPDATE SET lost = excluded.lost", (job["node"], json.dumps(
                   lost + [[job["id"], job["attempt"], job["user"]]])))


LEFTOVER_RETRY = 60  # seconds before a leftover that could not be stopped is tried again;
LEFTOVER_RETRY_MOST = 3600  # twice as long after each failure, up to this


def leftover_entries(text):
    """A node's `lost` list (node_health.lost) as [(job id, attempt, user, failed tries, last
    try)]: entries are [id, attempt, user], and [.., tries, at] once a try failed. Any
    member may write node_health: an entry of another shape is left out (and forgotten with
    the next change of the list)."""
    try:
        items = json.loads(text) if text else []
    except ValueError:
        return []
    entries = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, list) or len(item) not in (3, 5):
            continue
        job_id, attempt, user = item[:3]
        tries, at = item[3:] or (0, 0.0)
        if all(isinstance(n, int) and not isinstance(n, bool) for n in (job_id, attempt, tries)) \
                and isinstance(user, str) and isinstance(at, (int, float)):
            entries.append((job_id, attempt, user, tries, at))
    return entries


def leftover_due_at(tries, at):
    """When a leftover that failed `tries` times, last at `at`, is tried again."""
    return at + min(LEFTOVER_RETRY_MOST, LEFTOVER_RETRY * 2 ** min(tries - 1, 12)) if tries else 0


def leftovers_to_stop(db, me, names=None):
    """The lost attempts of the nodes that are up (again), or of these nodes (that answered
    a probe), that this tick can stop there (root's: all; a user's: their own), and the
    cancels owed to pools (cancel_or_owe); those whose last try failed wait a while
    (leftover_due_at). {(node, address, kind, options): {user: [job id, attempt, ...]}}.
    They stay on the nodes' lists until stopped (settle_leftovers): a tick killed meanwhile
    leaves them for the next."""
    found, now = {}, time.time()
    for node in db.execute("SELECT name, address, kind, options, lost, state FROM nodes "
                           "WHERE lost IS NOT NULL").fetchall():
        if node["name"] not in names if names is not None else node["state"] != "up":
            continue
        for job_id, attempt, user, tries, at in leftover_entries(node["lost"]):
            if (me is ROOT or user == me) and leftover_due_at(tries, at) <= now:
                found.setdefault(tuple(node)[:4], {}).setdefault(user, []).extend(
                    (job_id, attempt))
    return found


def settle_leftovers(db, stopped, failed, now):
    """Inside a transaction: these lost attempts, [(node, job id, attempt)], are stopped (or
    nobody can stop them): off their nodes' lists; these could not be: a failed try more,
    at `now`."""
    for name in {name for name, _, _ in stopped + failed}:
        row = db.execute("SELECT lost FROM node_health WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] is None:
            continue
        done = {(job_id, attempt) for node, job_id, attempt in stopped if node == name}
        again = {(job_id, attempt) for node, job_id, attempt in failed if node == name}
        rest = [[job_id, attempt, user] + ([tries + 1, now] if (job_id, attempt) in again
                                           else [tries, at] if tries else [])
                for job_id, attempt, user, tries, at in leftover_entries(row[0])
                if (job_id, attempt) not in done]
        db.execute("UPDATE node_health SET lost = ? WHERE name = ?",
                   (json.dumps(rest) if rest else None, name))


def stop_leftovers(me, names=None):
    """On the nodes that answer again after a partition (those that are up, or these): stop
    what the attempts qpy gave up with them still run there, by ssh as their owners
    (node_leftovers), and send the cancels owed to pools. What could not be done (a node
    that does not answer after all, a cancel the login node did not take) stays listed and
    is tried again later, each time after twice as long (leftover_due_at); the rest is
    forgotten once asked. Every failure is logged."""
    import pwd
    if names == []:
        return
    found = atomically(lambda db: leftovers_to_stop(db, me, names), write=False)
    if not found:
        return
    crash_point("watch:leftovers")
    calls, whose, forgotten, failed = [], [], [], []
    for (name, address, kind, options), leftovers in found.items():
        for user, jobs in leftovers.items():
            attempts = [(name, job_id, attempt) for job_id, attempt in zip(jobs[::2], jobs[1::2])]
            if kind in POOLS:  # (a cancel owed: by the pool's cancel, which names the attempt)
                if not user_exists(user) or user == "root":
                    forgotten += attempts  # (nobody to cancel it as)
                elif POOLS[kind]["cancel"]([{"id": job_id, "attempt": attempt, "user": user,
                                           "node": name, "kind": kind, "options": options,
                                           "external_id": None} for _, job_id, attempt in
                                          attempts]):
                    forgotten += attempts
                else:
                    log_event("could not cancel the attempts %s of %s in pool %s (the owner's "
                              "log says why): tried again later" % (
                                  leftover_names(attempts), user, name))
                    failed += attempts
                continue
            try:
                owner = pwd.getpwnam(user) if os.geteuid() == 0 else None
            except KeyError:
                forgotten += attempts
                continue
            if is_local(address):
                forgotten += attempts  # (this machine's runner is never lost with its node)
                continue
            calls.append((address, qpy_on_node("_leftovers", *jobs), owner))
            whose.append((name, attempts))
    for (name, attempts), (status, _, error) in zip(whose, run_on_nodes(calls)):
        if status != 0:
            log_event("could not stop the leftovers of the attempts %s on %s: %s" % (
                leftover_names(attempts), name, error))
        if status != 255 and status >= 0:  # (it answered: trying again would not help)
            forgotten += attempts
        else:
            failed += attempts
    now = time.time()
    atomically(lambda db: settle_leftovers(db, forgotten, failed, now))


def leftover_names(attempts):
    """[(node, job id, attempt)] as a log names them: '12.1 13.2' (job.attempt)."""
    return " ".join("%d.%d" % (job_id, attempt) for _, job_id, attempt in attempts)


def node_leftovers(*jobs):
    """`qpy _leftovers ID ATTEMPT...`, run on a node as the jobs' owner: stop the process
    groups of this user that carry QPY_JOB_ID=<ID>, QPY_ATTEMPT=<ATTEMPT> and this state's
    QPY_STATE_ID (SIGTERM, SIGKILL after kill_grace): what attempts qpy has given up with this
    node left running (never a later attempt of the same job)."""
    numbers = whole_numbers(jobs)
    if not numbers or len(numbers) % 2:
        raise NodeUsage()
    attempts = set(zip(numbers[::2], numbers[1::2]))
    state = known_identity()
    if state is None:  # (then no process can be told apart: the tick tries again)
        print("qpy: the state's identity (qpy.id) cannot be read here", file=sys.stderr)
        return 1
    grace = atomically(lambda db: setting(db, "kill_grace"), write=False)
    for pgid, job_id in attempt_groups(attempts, state):
        signal_group(pgid, signal.SIGTERM)
        detach(kill_group_later, pgid, job_id, grace)
    return 0


def attempt_groups(attempts, state):
    """{(process group, job id)} of this user's processes that belong to these attempts
    {(job id, attempt)} of this state's jobs (their environment says so)."""
    found = set()
    marker = ("QPY_STATE_ID=%s" % state).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                environ = f.read().split(b"\0")
            if marker not in environ:
                continue
            values = dict(v.split(b"=", 1) for v in environ
                          if v.startswith((b"QPY_JOB_ID=", b"QPY_ATTEMPT=")))
            job = (int(values.get(b"QPY_JOB_ID", -1)), int(values.get(b"QPY_ATTEMPT", -1)))
            if job in attempts:
                found.add((os.getpgid(int(entry)), job[0]))
        except (OSError, ValueError):
            continue
    return found


def late_runners(db, me):
    """The running jobs off this machine (on other hosts, in pools, on removed nodes) whose
    heartbeat is older than node_timeout: is their node gone, or only their runner? (the
    watch asks, outside the lock)."""
    late = time.time() - setting(db, "node_timeout")
    return [dict(job) for job in live_jobs(db, me, ("running",))
            if (job["kind"] != "host" or not is_local(job["address"]))
            and POOLS.get(job["kind"], {}).get("runner", True)  # (else: no heartbeat to miss)
            and last_heartbeat(job) < late]


def ask_nodes(jobs):
    """Ask each node, by ssh as the jobs' owner, about these jobs' runners (node_reap): a
    runner that is gone has what its job left stopped there. Returns {(job id, attempt):
    'alive', 'gone', or 'unreachable' (no answer within ssh_timeout)}; a job whose owner root cannot
    act for gets no verdict (it is left as it is)."""
    batches = {}
    for job in jobs:
        try:
            owner = owner_of(job) if os.geteuid() == 0 else None
        except QpyError as e:
            log_event("job %d: cannot ask its node about it: %s" % (job["id"], e))
            continue
        batches.setdefault((job["address"], owner and owner.pw_uid), (owner, []))[1].append(job)
    if not batches:
        return {}
    grace = atomically(lambda db: setting(db, "kill_grace"), write=False)
    # (a job queued again must not run beside what is left of it: SIGKILL at once)
    calls = [(address, qpy_on_node("_reap", *[value for job in batch for value in (
        job["id"], job["attempt"], job["runner_pid"], job["runner_boot"],
        0 if job["requeue"] else grace)]), owner)
        for (address, _), (owner, batch) in batches.items()]
    verdicts = {}
    for ((address, _), (_, batch)), (status, out, error) in zip(
            batches.items(), run_on_nodes(calls, multiplex=False)):
        # only ssh's own failure (255) or no answer in time means the node is gone; a node
        # that answers something else (a traceback, a chatty .bashrc) gives no verdict
        lines = out.split("\n")
        words = (out.strip().splitlines() or [""])[-1].split()
        if status == 255 or status < 0:
            verdicts.update(((job["id"], job["attempt"]), "unreachable") for job in batch)
        elif status == 0 and len(words) == len(batch) and set(words) <= {"alive", "gone"}:
            verdicts.update(((job["id"], job["attempt"]), word) for job, word in zip(batch, words))
        else:
            log_event("%s did not say what became of jobs %s: %s" % (
                address, " ".join(str(job["id"]) for job in batch), error or lines[-1]))
    return verdicts


def node_reap(*jobs):
    """`qpy _reap ID ATTEMPT PID BOOT GRACE...`, run by ask_nodes on a node as the jobs'
    owner: for each job, print 'alive' if its runner is, else stop what the job left
    (SIGTERM, SIGKILL after GRACE seconds; 0: SIGKILL at once) and print 'gone'."""
    if not jobs or len(jobs) % 5:
        raise NodeUsage()
    words, user = [], user_name()
    for job_id, attempt, pid, boot, grace in zip(*[iter(jobs)] * 5):
        try:
            job = {"id": int(job_id), "attempt": int(attempt), "user": user}
            grace = float(grace)
        except ValueError:
            raise NodeUsage()
        if process_alive(int(pid) if pid.isdigit() else None, boot):
            words.append("alive")
        else:
            stop_orphans(job, grace)
            words.append("gone")
    print(" ".join(words))
    return 0


def process_boot(pid):
    """The start time of a process (field 22 of /proc/<pid>/stat), or None if it is gone or a
    zombie. Stored beside a pid so a reused pid is never mistaken for ours."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rpartition(")")[2].split()
    except (OSError, TypeError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def process_alive(pid, boot):
    return pid is not None and process_boot(pid) == boot


def stop_orphans(job, grace=0):
    """Stop what is left of a job whose runner died: SIGTERM to its process group, SIGKILL
    `grace` seconds later (from a detached process) if any of it is still there. Only a group
    with a process that carries the job's QPY_JOB_ID is touched, so a reused group id never
    hits a stranger. The group is in the started marker; a runner lost in the instant between
    the spawn and noting it leaves it unknown. Returns whether a group was signalled."""
    words = marker_words(job) or []
    if len(words) < 3:
        return False
    pgid = int(words[2])
    if not group_of_job(pgid, job["id"]):
        return False
    signal_group(pgid, signal.SIGTERM if grace else signal.SIGKILL)
    if grace:
        detach(kill_group_later, pgid, job["id"], grace)
    return True


def group_of_job(pgid, job_id):
    """Is there a live process in this group that carries QPY_JOB_ID=<job_id>?"""
    marker = ("QPY_JOB_ID=%d" % job_id).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            with open("/proc/%s/environ" % entry, "rb") as f:
                if marker in f.read().split(b"\0"):
                    return True
        except OSError:
            continue
    return False


def kill_group_later(pgid, job_id, grace):
    _context["job"] = job_id
    time.sleep(grace)
    if group_of_job(pgid, job_id):
        signal_group(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Launcher: start a runner for a claimed job
# --------------------------------------------------------------------------------------------

def detach(fn, *args):
    """Run fn(*args) in a new session, fully detached (double fork, stdio on /dev/null), and
    return at once. The DB connection is dropped first: it must not cross a fork."""
    disconnect()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        fn(*args)
    except SystemExit:
        pass
    except BaseException:  # nobody is there to see it: leave a trace
        log_exception("background %s" % fn.__name__)
    finally:
        os._exit(0)


LOCAL_ADDRESSES = ("localhost", "127.0.0.1")


def is_local(address):
    """Jobs on this machine's own node are started by fork, without ssh."""
    return address in LOCAL_ADDRESSES


HOST_ADDRESS = r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9._:-]*"  # (IPv6 too)


def is_host_address(address):
    """A host name, an IP address or user@host: nothing ssh could read as an option or a
    command. Checked where a node is loaded and again where ssh is run."""
    return bool(address) and re.fullmatch(HOST_ADDRESS, address) is not None


def ssh_command(address, command, timeout, uid, multiplex=True):
    """System ssh in batch mode, multiplexed through a master kept under the user's own
    runtime directory, with a connect time-out. `command` is a list, quoted for the shell.
    Returns the argv and the directory of the master's socket (None: no multiplexing).
    An address that is not a host's (is_host_address) is refused: QpyError."""
    import shlex
    if not is_host_address(address):
        raise QpyError("refused to ssh to %r: not a host name (see qpy_admin.py list)"
                       % shown(address))
    runtime = os.environ.get("XDG_RUNTIME_DIR") if uid == os.getuid() else None
    sockets = os.path.join(runtime or "/tmp", "qpy-ssh-%d" % uid) if multiplex else None
    shared = ["-o", "ControlMaster=auto", "-o", "ControlPath=%s/%%C" % sockets,
              "-o", "ControlPersist=60"] if multiplex else ["-o", "ControlMaster=no"]
    return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % timeout,
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2"] + shared + \
        [address, "--", shlex.join(command)], sockets


def qpy_on_node(*args):
    """The command line that runs this qpy on a node (same Python, same files: the install
    is on the shared filesystem). It imports qpy rather than running qpy.py as a script, so
    that Python uses the compiled byte-code instead of compiling qpy.py at every start."""
    return ["env", "QPY_STATE=" + state_dir(), sys.executable, "-I", "-c",  # (-I: nothing of
            # the working directory, which a forged row's cwd may name, is ever imported)
            "import sys; sys.path.insert(0, %r); import qpy; sys.exit(qpy.main())" % HERE] \
        + [str(arg) for arg in args]


def ssh_timeout():
    """The site's ssh_timeout: how long ssh may take to connect, in seconds."""
    return int(atomically(lambda db: setting(db, "ssh_timeout"), write=False))


def run_on_nodes(calls, multiplex=True):
    """Run [(address, command, owner)] by ssh (directly for this machine), all at once, each as
    its owner (a pwd entry; None: as ourselves); return [(exit status, output, error text)].
    multiplex False: on a connection of its own (for a node that may be gone: a channel of a
    master connection to a dead host waits for the master's keep-alives to give up, longer
    than ssh_timeout)."""
    if not calls:
        return []
    timeout = ssh_timeout()
    commands, refused = [], {}  # {call's index: why it was not run}
    for index, (address, command, owner) in enumerate(calls):
        if is_local(address):  # this machine: the same command, without ssh
            commands.append((command, owner, None))
            continue
        try:
            argv, sockets = ssh_command(address, command, timeout,
                                        owner.pw_uid if owner else os.getuid(), multiplex)
        except QpyError as e:
            refused[index] = (255, "", str(e))
            continue
        commands.append((argv, owner, sockets))
    results = iter(run_all(commands, 2 * timeout + 30))
    return [refused[index] if index in refused else next(results)
            for index in range(len(calls))]


def run_all(commands, timeout):
    """Run [(argv, owner, ssh socket directory or None[, bytes for its standard input])] all
    at once, each as its owner (a pwd entry; None: as ourselves), and wait for them (killing
    any still running after `timeout` seconds). Returns [(exit status, stdout, last line of
    stderr)]. Input and output go through files: a multiplexing master that stays behind
    must not hold a pipe."""
    if not commands:
        return []
    import subprocess
    import tempfile
    started = []
    for argv, owner, sockets, *given in commands:
        found = stat_or_none(sockets) if sockets else None
        if found is not None and (found.st_uid != (owner.pw_uid if owner else os.getuid())
                                  or found.st_mode & 0o077 or os.path.islink(sockets)):
            started.append((OSError("ssh's control directory %s is not the user's alone: "
                                    "remove it" % sockets), None, None))
            continue
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        stdin = subprocess.DEVNULL
        if given:
            stdin = tempfile.TemporaryFile()
            stdin.write(given[0])
            stdin.seek(0)

        def prepare(owner=owner, sockets=sockets):
            if owner:
                become(owner)
            if sockets:
                os.makedirs(sockets, mode=0o700, exist_ok=True)
                if not own_directory(sockets) or os.lstat(sockets).st_mode & 0o077:
                    os._exit(255)  # (made by another meanwhile: ssh must not trust it)
        env = dict(os.environ)
        if owner:
            env.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
        try:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err,
                                    # (in a child of as_owners_at_once: in its group, which
                                    # is stopped as one when its time is up)
                                    start_new_session=not _acting_for_an_owner,
                                    preexec_fn=prepare, env=env,
                                    cwd="/")
        except (OSError, subprocess.SubprocessError) as e:
            proc = e
        if given:
            stdin.close()
        started.append((proc, out, err))
    results = []
    deadline = time.time() + timeout
    for proc, out, err in started:
        if isinstance(proc, Exception):
            results.append((255, "", str(proc)))
            continue
        try:
            status = proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        out.seek(0)
        err.seek(0)
        text = err.read().decode(errors="replace").strip().splitlines()
        results.append((status, out.read().decode(errors="replace"),
                        text[-1] if text else "exit status %d" % status))
        out.close()
        err.close()
    return results


def owner_of(job):
    """For a tick run by root: the job's owner, once the job file is proven theirs. The DB is
    writable by the whole group, so its rows alone are not trusted with whom to run a job as."""
    import pwd
    try:
        owner = pwd.getpwnam(job["user"])
    except KeyError:
        raise QpyError("refused: there is no user %s here" % job["user"])
    check_job_file(job, owner.pw_uid)
    return owner


def check_job_file(job, uid=None):
    """A job runs only from a file in its owner's own spool directory, owned by the owner
    (the runner checks this too, as the owner: a forged row cannot make it run a stranger's
    file)."""
    uid = os.getuid() if uid is None else uid
    spool = os.path.realpath(os.path.join(user_dir(job["user"]), "spool"))
    job_file_path = os.path.realpath(job["spec"])
    if os.path.dirname(job_file_path) != spool:
        raise QpyError("refused: the job file is outside %s" % spool)
    for path in (user_dir(job["user"]), spool, job_file_path):
        try:
            if os.stat(path).st_uid != uid:
                raise QpyError("refused: %s is not owned by %s" % (path, job["user"]))
        except OSError as e:
            raise QpyError("refused: %s" % e)


def user_exists(name):
    import pwd
    try:
        return pwd.getpwnam(name) is not None
    except (KeyError, TypeError):
        return False


_acting_for_an_owner = False  # (a child of as_owners_at_once)


def as_owners_at_once(calls, timeout, failed=None):
    """Do [(user, fn, args)] at once, each in a child process as that user (root's tick
    acts for them all; a user's own process does its own calls in children too, alike), and
    return what each fn returned, through JSON (`failed` for one that raised, did not end
    within `timeout` seconds, or whose user does not exist). The children touch no
    connection; what goes wrong in one is logged."""
    global _acting_for_an_owner
    import pwd
    import select
    children = []
    for user, fn, args in calls:
        try:
            owner = pwd.getpwnam(user)
        except KeyError:
            children.append(None)
            continue
        reading, writing = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reading)
            _acting_for_an_owner = True
            try:
                os.setsid()  # (its ssh and tar go with it when it is stopped)
                if os.geteuid() == 0:
                    become(owner)
                os.write(writing, json.dumps({"result": fn(*args)}).encode())
            except BaseException:
                log_exception("acting as %s" % user)
            finally:
                os._exit(0)
        os.close(writing)
        children.append((pid, reading, bytearray()))
    deadline = time.time() + timeout
    waiting = {child[1]: child for child in children if child}
    while waiting and time.time() < deadline:
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.time()))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                waiting[fd][2].extend(chunk)
            else:
                del waiting[fd]
    results = []
    for child in children:
        if child is None:
            results.append(failed)
            continue
        pid, fd, data = child
        if fd in waiting:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        os.close(fd)
        os.waitpid(pid, 0)
        try:
            results.append(json.loads(bytes(data))["result"])
        except ValueError:
            results.append(failed)
    return results


def become(owner):
    """In a child process about to act for `owner` (a pwd entry): drop root for them."""
    if owner.pw_uid == os.geteuid():
        return
    os.setgroups(os.getgrouplist(owner.pw_name, owner.pw_gid))
    os.setgid(owner.pw_gid)
    os.setuid(owner.pw_uid)
    os.environ.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
    os.environ.pop("XDG_RUNTIME_DIR", None)  # (root's: not where the user's ssh sockets go)


def launch_all(claims, fork_runners=True):
    """Start the runners of claimed jobs, through three channels that each say what became of
    every job (one outcome list, recorded at once): this machine's runners forked directly,
    other hosts' by ssh (one per node and owner, all at once), a pool's jobs handed over by
    its submit (all at once), as their owners when root runs the tick. fork_runners: this
    machine's runners of our own jobs may be forks of this process."""
    owners, outcomes = {}, []
    for job in claims:
        try:
            owners[job["id"]] = owner_of(job) if os.geteuid() == 0 else None
        except QpyError as e:
            outcomes.append((job, "unowned", str(e)))
    ready = [job for job in claims if job["id"] in owners]
    batches = {}  # one ssh per node and owner starts the runners of all their jobs there
    for job in ready:
        if job["kind"] == "host":
            owner = owners[job["id"]]
            batches.setdefault((job["address"], owner and owner.pw_uid), []).append(job)
    # This machine's runners of our own jobs are forked from this process, which has qpy
    # loaded (a new interpreter costs some 30 ms); not from a runner's own tick, though: each
    # runner would carry the stack of the one before it. Elsewhere `qpy _run`, started by
    # ssh on the node (directly here for another owner), forks them.
    forked = {key: jobs for key, jobs in batches.items()
              if fork_runners and is_local(key[0]) and key[1] in (None, os.geteuid())}
    outcomes += fork_runners_here(forked.values())
    outcomes += start_runners_by_ssh([jobs for key, jobs in batches.items()
                                      if key not in forked], owners)
    for kind in POOLS:
        pooled = [job for job in ready if job["kind"] == kind]
        if pooled:
            outcomes += POOLS[kind]["submit"](pooled, owners)
    if any(what != "started" for _, what, _ in outcomes):
        stale = atomically(lambda db: record_launches(db, outcomes))
        if stale and not cancel_or_owe(stale):
            log_event("could not cancel the pool jobs %s, whose claims moved on while they "
                      "were handed over" % " ".join(job["external_id"] for job in stale))


# What a launch channel says of each job, (job, outcome, detail), for record_launches:
#   started      its runner was started (it confirms the claim itself)
#   submitted    a pool took it (detail: the pool's ID for it); its runner starts there
#   unreachable  the node or pool did not take it (detail: the error): back to the queue, and
#                the node is down until a probe finds it again
#   refused      a pool that answers refused this job (detail: its words): back to the
#                queue, offered to that pool again after probe_interval
#   unowned      its files are not its owner's (detail: why): it fails
#   cut off      the connection to a pool without qpy's runner dropped while the launch ran
#                (detail: ssh's words): the claim stays, its follow finds out where it is


def fork_runners_here(batches):
    outcomes = []
    for jobs in batches:
        try:
            node_run(*run_arguments(jobs))
            outcomes += [(job, "started", None) for job in jobs]
        except OSError as e:
            outcomes += [(job, "unreachable", "cannot fork a runner: %s" % e) for job in jobs]
    return outcomes


def start_runners_by_ssh(batches, owners):
    calls = [(jobs[0]["address"], qpy_on_node("_run", *run_arguments(jobs)),
              owners[jobs[0]["id"]]) for jobs in batches]
    return [(job, "started", None) if status == 0 else (job, "unreachable", error)
            for jobs, (status, _, error) in zip(batches, run_on_nodes(calls)) for job in jobs]


def record_launches(db, outcomes):
    """Inside a transaction: what the launch channels said (the outcomes above). Returns the
    pool jobs (their rows, with the pool's ID) handed over for a claim that has moved on
    meanwhile (timed out or killed while the launch was slow): they are cancelled there."""
    now = time.time()
    stale = []  # the pool jobs whose claim moved on during the launch
    for job, what, detail in outcomes:
        if what == "submitted":  # (the runner may have confirmed already)
            if not db.execute("UPDATE jobs SET external_id = ? WHERE id = ? AND attempt = ? "
                              "AND status NOT IN ('queue', 'undone')",
                              (detail, job["id"], job["attempt"])).rowcount:
                stale.append(dict(job, external_id=detail))  # (timed out or killed meanwhile)
            db.execute("UPDATE jobs SET reason = ? WHERE id = ? AND attempt = ? AND status = "
                       "'starting'", ("waiting in " + POOLS[job["kind"]]["name"], job["id"],
                                      job["attempt"]))
        elif what == "unreachable":
            mark_down(db, job["node"], "launch failed: " + detail, now)
            return_to_queue(db, job, "launch failed on %s: %s" % (job["node"], detail))
        elif what == "refused":  # (not the pool's fault: it is offered the job again later)
            refusal = {"node": job["node"], "why": detail,
                       "until": now + setting(db, "probe_interval")}
            return_to_queue(db, job, refused_note(refusal), json.dumps(refusal))
        elif what == "unowned":
            fail_claim(db, job, detail)
        elif what == "cut off":  # (and no more hand-overs to it until a probe finds it)
            mark_down(db, job["node"], "hand-over cut off: " + detail, now)
            db.execute("UPDATE jobs SET reason = ? WHERE id = ? AND attempt = ? AND status = "
                       "'starting'", ("hand-over to %s cut off (%s): asked again once it "
                                      "answers" % (job["node"], detail), job["id"],
                                      job["attempt"]))
        if what in ("unreachable", "refused"):
            request_tick(db)  # (it may start elsewhere)
    return stale


def run_arguments(jobs):
    """What `qpy _run` (node_run) takes: ID ATTEMPT for each job."""
    return [value for job in jobs for value in (job["id"], job["attempt"])]


def mark_down(db, node, reason, now):
    """No job starts on a node that is down; probe_down_nodes tries it again later."""
    db.execute("INSERT INTO node_health (name, state, reason, probed_at) VALUES (?, 'down', ?, ?) "
               "ON CONFLICT (name) DO UPDATE SET state = 'down', reason = excluded.reason, "
               "probed_at = excluded.probed_at WHERE state = 'up'", (node, reason, now))


def nodes_due_for_probe(db):
    """The down nodes whose last probe is older than probe_interval."""
    return db.execute("SELECT name, kind, address, options FROM nodes "
                      "WHERE state = 'down' AND (probed_at IS NULL OR probed_at < ?)",
                      (time.time() - setting(db, "probe_interval"),)).fetchall()


def probe_down_nodes(me):
    """Probe each down node whose last probe is old enough (ssh for a host, its kind's probe
    for a pool); those that answer are up again, once what given-up attempts left running
    there has been stopped (stop_leftovers: before any job can be placed there)."""
    nodes = atomically(nodes_due_for_probe, write=False)
    if not nodes:
        return
    # {node: what is wrong, or None: it answered}; a node not in it was not probed
    answers = {node["name"]: None for node in nodes
               if node["kind"] == "host" and is_local(node["address"])}
    for kind, pool in POOLS.items():
        pools = [node for node in nodes if node["kind"] == kind]
        if pools and pool["usable_here"]():
            answers.update(pool["probe"](pools))
    hosts = [node for node in nodes if node["kind"] == "host" and not is_local(node["address"])]
    prober = None
    if hosts and os.geteuid() == 0:  # root need not reach the nodes: as a user who needs them
        import pwd
        # (a user with jobs waiting, else any of the site's users: a healed node is probed
        # whatever the queue)
        users = atomically(lambda db: [row[0] for row in db.execute(
            "SELECT user FROM jobs WHERE " + LIVE_SQL + " AND status = 'queue' LIMIT 1")]
            + share_holders(db), write=False)
        for name in users:
            try:
                prober = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if prober is None:
            hosts = []
    results = run_on_nodes([(node["address"], ["true"], prober) for node in hosts])
    answers.update((node["name"], error if status else None)
                   for node, (status, _, error) in zip(hosts, results))
    stop_leftovers(me, [name for name, error in answers.items() if error is None])

    pools = {node["name"] for node in nodes if node["kind"] in POOLS}

    def record(db):
        now = time.time()
        for name, error in answers.items():
            if error is None:  # (a host: up once nothing given up with it runs there; a
                # pool's owed cancels do not keep its new jobs out)
                if db.execute("UPDATE node_health SET state = 'up', reason = NULL, "
                              "probed_at = ? WHERE name = ? AND state = 'down' AND (lost IS "
                              "NULL OR ?)", (now, name, name in pools)).rowcount:
                    request_tick(db)
                else:
                    db.execute("UPDATE node_health SET probed_at = ?, reason = ? WHERE name "
                               "= ? AND state = 'down'", (now, "it answers again: what its lost "
                                                          "jobs left there is to be stopped "
                                                          "first (root's tick)", name))
            else:
                db.execute("UPDATE node_health SET probed_at = ?, reason = ? WHERE name = ?",
                           (now, "probe failed: " + error, name))
    atomically(record)


# --------------------------------------------------------------------------------------------
# Pools: batch systems that qpy hands jobs to, each one node of the nodes file (type=<type>).
# The tick hands a placed job over as its owner; the batch job runs qpy's runner (so the
# started marker, exit record and accounting are as on any node), or, where the pool does
# not see the site's files, qpy's own batch script, whose files the follow fetches; each
# tick follows all of a pool's jobs with one call. qpy never schedules inside a pool. A kind
# is one entry of POOLS:
#   name                what users see ("Slurm")
#   type, selected_by   the type= that declares it, and the setting that picks this kind of
#                       that type (None: the kind without one)
#   options             its settings in the nodes file, beside every node's
#   check(node, opts)   validate them (raise QpyError)
#   submit(jobs, owners) -> the launch outcomes (see record_launches): (job, 'submitted', its
#                       external ID), (job, 'refused', why) by a pool that answers, or (job,
#                       'unreachable', error) when the pool did not answer
#   follow({pool: [jobs]}) -> ({pool: {(job ID, attempt): state, None if the pool does not
#                       know the job}}, {pool: why it did not answer}); a job it could not
#                       ask about (its owner's connection failed) is left out
#   fate(db, job, state)  a job without an exit record, and what follow said (None: unknown)
#   running(state)      the pool still runs it (a lost qpy kill is sent again)
#   cancel([jobs])      did the pool take the cancel
#   probe([pools])      {pool: None if it answers, else what is wrong}
#   environment(job)    {name: value} the runner passes on to the job from the pool's own
#   id_variable         where the runner finds its job's external ID
#   takes_next_job      False: a runner there runs its one job (the pool allocated only it)
#   runner              False: no qpy runner there (no heartbeat, no confirm): fate starts
#                       and ends its jobs, and finds the hand-overs that were cut short
#   sigterm_means_kill  a SIGTERM to the runner is the pool's (a cancel, a limit), not a stray
#   limit_warning       why a job ends that gets the pool's SIGTERM within warning_window
#                       seconds of a SIGUSR1 (the pool warns its runner that its own time
#                       limit is near), or None
#   usable_here()       can this machine reach the pool (its commands are here)? A tick
#                       elsewhere (a runner's, on a lab node) leaves its jobs to others
#   doctor(pool, report, owner)  qpy_admin.py doctor's checks (as `owner`, a pwd entry, for
#                       what a user's own account must be able to do; None: as itself)
# The engine calls only these: a new kind is its functions and one more entry.
# --------------------------------------------------------------------------------------------

def node_options(row):
    """A pool node's own settings (the nodes file's pool keys), from its row or claim."""
    return json.loads(row["options"]) if row["options"] else {}


def follow_pools(me):
    """One follow per pool kind for all its qpy jobs handed over (outside the lock: a pool
    may be slow), and, in a pool without qpy's runner, the claims whose hand-over was cut
    short (older than launch_timeout, without the pool's ID). Returns ({pool: {(job ID,
    attempt) of each job asked about: its state, None if the pool does not know it}} for the
    pools that answered, {pool: error}). A user's tick follows only that user's jobs."""
    def read(db):
        cut_short = time.time() - setting(db, "launch_timeout")
        pooled = db.execute(JOB_WITH_NODE + " WHERE j." + LIVE_SQL + " AND j.status != 'queue' "
                            "AND n.kind != 'host'" + ("" if me is ROOT else " AND +j.user = ?"),
                            () if me is ROOT else (me,)).fetchall()
        return [dict(job) for job in pooled if job["kind"] in POOLS and (
            job["external_id"] is not None or not POOLS[job["kind"]]["runner"]
            and job["claimed_at"] < cut_short)]
    jobs = {}  # kind: {pool: [jobs]}
    for job in atomically(read, write=False):
        if POOLS[job["kind"]]["usable_here"]():  # (else: another machine's tick follows it)
            jobs.setdefault(job["kind"], {}).setdefault(job["node"], []).append(job)
    states, errors = {}, {}
    for kind, pools in jobs.items():
        answered, failed = POOLS[kind]["follow"](pools)
        states.update(answered)
        errors.update(failed)
    return states, errors


def cancel_or_owe(jobs):
    """Cancel these pool jobs (their rows, of jobs that are not to run). Where a pool without
    qpy's runner did not take it, the cancel is owed: kept on the pool's list of lost
    attempts and sent again once it answers (stop_leftovers), since nothing there would ask
    the site whether the job may still run."""
    if cancel_in_pools(jobs):
        return True
    owed = [job for job in jobs if not POOLS[job["kind"]]["runner"]]
    if owed:
        def keep(db):
            for job in owed:
                remember_lost_job(db, job)
        atomically(keep)
    return False


def cancel_in_pools(jobs):
    """Cancel these pool jobs (their rows), one call per kind; did every pool take it?"""
    by_kind = {}
    for job in jobs:
        by_kind.setdefault(job["kind"], []).append(job)
    return all([POOLS[kind]["cancel"](kind_jobs) for kind, kind_jobs in by_kind.items()])


# --- Slurm: sbatch, squeue, scancel and sinfo on this machine --------------------------------

SLURM_TIMEOUT = 60  # seconds; sbatch and squeue retry for a while when slurmctld is down
# Slurm's end states, and what a job that ended so without an exit record becomes.
SLURM_ENDINGS = {
    "TIMEOUT": "time limit in Slurm", "CANCELLED": "cancelled in Slurm",
    "NODE_FAIL": "node failure in Slurm", "PREEMPTED": "preempted in Slurm",
    "OUT_OF_MEMORY": "out of memory in Slurm", "BOOT_FAIL": "node boot failure in Slurm",
    "DEADLINE": "deadline passed in Slurm", "COMPLETED": "ended in Slurm without an exit record",
    "FAILED": "failed in Slurm without an exit record", "REVOKED": "revoked by Slurm",
    "SPECIAL_EXIT": "special exit in Slurm"}
SLURM_REQUEUABLE = ("NODE_FAIL", "PREEMPTED", "BOOT_FAIL")  # not the job's fault: --requeue
SLURM_RUNNING = ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT")


@functools.lru_cache(maxsize=None)
def slurm_usable_here():
    import shutil
    return all(shutil.which(command) for command in ("sbatch", "squeue", "scancel", "sinfo"))


def slurm_check(node, options):
    import shlex
    if not options.get("partition"):
        raise QpyError("Slurm pool %s needs its partition (partition=<name>)" % node["name"])
    shlex.split(options.get("extra") or "")  # unbalanced quotes are refused here, not at sbatch
    if options.get("time"):
        try:
            parse_duration(options["time"])
        except ValueError:
            raise QpyError("Slurm pool %s: time=%s is not a time limit as Slurm writes it "
                           "(minutes, hours:minutes:seconds or days-hours)"
                           % (node["name"], options["time"]))


# How long before Slurm's own time limit its SIGUSR1 warns the runner (Slurm may send it up to
# a minute early): the SIGTERM that follows is that limit, not a cancel (limit_warning).
SLURM_LIMIT_WARNING = 120


def sbatch_command(job):
    """The sbatch call that hands a claimed job to its pool: its cores, memory, GPUs and time
    limit as Slurm requests (Slurm's limit a little later than qpy's own, so that the runner
    ends the job and records it; without one, the pool's time= or the partition's default),
    the runner as the batch script, warned by SIGUSR1 before Slurm's own limit."""
    import math
    import shlex
    options = node_options(job)
    argv = ["sbatch", "--parsable", "--job-name=qpy_%d" % job["id"],
            "--partition=" + options["partition"], "--ntasks=1",
            # (the row's cwd, which any member can write, shows as the job's WorkDir: the
            # batch runs nothing from there, python -I, and the runner takes the job's
            # directory from its job file)
            "--cpus-per-task=%d" % job["n_cores"], "--chdir=" + job["cwd"],
            "--output=" + run_file(job, "batch")]
    if job["mem"] > 0:
        argv.append("--mem=%dM" % math.ceil(job["mem"] * 1024))
    if job["gpus"]:
        argv.append("--gres=gpu:%d" % job["gpus"])
    if job["time_limit"]:
        argv.append("--time=%d" % (math.ceil(job["time_limit"] / 60) + 2))  # minutes
    elif options.get("time"):
        argv.append("--time=" + options["time"])
    argv.append("--signal=B:USR1@%d" % SLURM_LIMIT_WARNING)
    if options.get("account"):
        argv.append("--account=" + options["account"])
    if options.get("qos"):
        argv.append("--qos=" + options["qos"])
    argv += shlex.split(options.get("extra") or "")
    # (the warning is ignored until the runner is there to take it: never its death)
    return argv + ["--wrap", "trap '' USR1; exec " + shlex.join(qpy_on_node(
        "_slurm", job["id"], job["attempt"]))]


def sbatch_all(jobs, owners):
    """Hand claimed jobs to their pools (sbatch as their owners, all at once). Returns the
    launch outcomes: (job, 'submitted', Slurm ID), (job, 'refused', Slurm's words) while the
    partition is up, (job, 'unreachable', error) when Slurm did not answer (sinfo tells the
    last two apart)."""
    outcomes, failures = [], []
    commands = [(sbatch_command(job), owners[job["id"]], None) for job in jobs]
    for job, (status, out, error) in zip(jobs, run_all(commands, SLURM_TIMEOUT)):
        slurm_id = out.strip().split(";")[0]  # --parsable: <id> or <id>;<cluster>
        if status == 0 and slurm_id.isdigit():
            outcomes.append((job, "submitted", slurm_id))
        else:
            failures.append((job, error if status else "sbatch said %r" % out.strip()))
    crash_point("tick:sbatched")
    if failures:
        pools = {job["node"]: {"name": job["node"], "options": job["options"]}
                 for job, _ in failures}
        answers = sinfo_pools(list(pools.values()))
        outcomes += [(job, "refused" if answers[job["node"]] is None else "unreachable",
                      error) for job, error in failures]
    return outcomes


def scancel(jobs):
    """scancel these jobs in Slurm (one call for all); did Slurm take it?"""
    slurm_ids = [job["external_id"] for job in jobs if job["external_id"]]
    return not slurm_ids or run_all([(["scancel"] + slurm_ids, None, None)],
                                    SLURM_TIMEOUT)[0][0] == 0


def sinfo_pools(pools):
    """Ask Slurm about each pool's partition (sinfo, all at once): {pool: None if it is up,
    else what is wrong}."""
    partitions = [node_options(pool)["partition"] for pool in pools]
    results = run_all([(["sinfo", "--noheader", "--partition=" + partition, "--format=%a"],
                        None, None) for partition in partitions], SLURM_TIMEOUT)
    return {pool["name"]: error if status else None if out.split() == ["up"] else
            "partition %s is %s" % (partition, " ".join(out.split()) or "missing")
            for pool, partition, (status, out, error) in zip(pools, partitions, results)}


def squeue_pools(jobs):
    """One squeue per pool for these jobs ({pool: [jobs]}): ({pool: {(job ID, attempt):
    (state, Slurm's reason)}}, {pool: error})."""
    pools = sorted(jobs)
    commands = [(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r",
                  "--jobs=" + ",".join(job["external_id"] for job in jobs[pool])], None, None)
                for pool in pools]
    states, errors = {}, {}
    for pool, (status, out, error) in zip(pools, run_all(commands, SLURM_TIMEOUT)):
        if status == 0 or "Invalid job id" in error:  # only unknown IDs: all of them vanished
            known = {fields[0]: (fields[1], fields[2]) for fields in
                     (line.split("|") for line in out.splitlines()) if len(fields) == 3}
            states[pool] = {(job["id"], job["attempt"]): known.get(job["external_id"])
                            for job in jobs[pool]}
        else:
            errors[pool] = "squeue failed: " + error
    return states, errors


def slurm_fate(db, job, slurm_state):
    """Inside the tick's transaction: a pool job that has no exit record, and what squeue says
    of it (None: Slurm no longer knows it). A job Slurm still holds waits; one that ended in
    Slurm without qpy's record ends (or is queued again, for --requeue and a fault of Slurm's)."""
    state, why = slurm_state or ("VANISHED", None)
    if state in SLURM_RUNNING:
        return
    if state in SLURM_ENDINGS or state == "VANISHED":
        reason = SLURM_ENDINGS.get(state, "vanished from Slurm")
        if job["status"] == "starting":
            reason = "Slurm job %s ended before qpy's runner started it: %s" % (
                job["external_id"], state)
        if job["requeue"] and not job["kill_requested"] and (
                state in SLURM_REQUEUABLE or job["status"] == "starting"):
            return_to_queue(db, job, "requeued: " + reason, leaving=(job["status"],))
        elif job["status"] == "starting":
            if fail_claim(db, job, reason):
                discard_run_files(job)
        else:
            end_lost_job(db, job, reason, may_requeue=state in SLURM_REQUEUABLE)
    elif job["status"] == "starting":
        waiting = "waiting in Slurm" + ("" if why in (None, "None") else " (%s)" % why)
        if job["reason"] != waiting:
            db.execute("UPDATE jobs SET reason = ? WHERE id = ?", (waiting, job["id"]))


def slurm_environment(job):
    """Slurm's own word on the allocation, and its GPUs."""
    env = {name: os.environ[name] for name in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST",
                                               "SLURMD_NODENAME", "CUDA_VISIBLE_DEVICES")
           if name in os.environ}
    if job["gpus"] and "CUDA_VISIBLE_DEVICES" in os.environ:
        env["QPY_GPUS"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def slurm_doctor(pool, report, owner=None):
    """doctor's checks of a Slurm pool: Slurm's commands are here, slurmctld answers, the
    partition exists and is up."""
    import shutil
    missing = [name for name in ("sbatch", "squeue", "scancel", "sinfo") if not shutil.which(name)]
    if missing:
        report(False, "Slurm pool %s: Slurm's commands" % pool["name"],
               "%s not found (install the Slurm client, e.g. slurm-client)" % ", ".join(missing))
        return
    problem = sinfo_pools([pool])[pool["name"]]
    report(problem is None, "Slurm pool %s (partition %s)" % (
        pool["name"], node_options(pool)["partition"]),
        "%s (sinfo -s lists the partitions; is slurmctld running, SLURM_CONF right?)" % problem)


SLURM = {
    "name": "Slurm", "options": ("partition", "account", "qos", "time", "extra"),
    "check": slurm_check,
    "submit": sbatch_all, "follow": squeue_pools, "fate": slurm_fate,
    "running": lambda state: state[0] == "RUNNING", "cancel": scancel, "probe": sinfo_pools,
    "environment": slurm_environment, "id_variable": "SLURM_JOB_ID", "takes_next_job": False,
    "runner": True, "type": "slurm", "selected_by": None,
    "sigterm_means_kill": True, "limit_warning": "time limit in Slurm",
    "warning_window": SLURM_LIMIT_WARNING + 90,  # (Slurm may warn a minute early)
    "usable_here": slurm_usable_here, "doctor": slurm_doctor,
}


# --- Slurm through its login node: sbatch, squeue, scancel there by ssh, no shared files --------
# An institute's cluster sees neither the site nor qpy: everything goes over ssh to its login
# node, as the job's owner, with their own key and account there (~/.ssh/config may name
# another user), one multiplexed connection per user and login node, one ssh per owner and
# pool for each launch and each follow (their scripts on ssh's standard input). Paths on
# the cluster are relative to the user's home there unless remote_dir is absolute:
#   <remote_dir>/<the job's directory, relative to the owner's home here>   where the job
#       runs, and its job_<ID>.out and .err (copied back at the end)
#   <remote_dir>/.qpy/<state id>/job_<ID>.<attempt>.sh    qpy's batch script (plain sh)
#       job_<ID>.attempt   the latest attempt handed over: an older one's script never runs
#       job_<ID>.lock      held (flock) while a launch looks for the job and submits it
#       job_<ID>.<attempt>.started   made with O_EXCL (set -C) by the one copy that runs,
#                          holding Slurm's ID and the start time; .exit the exit record
#       job_<ID>.<attempt>.batch     Slurm's output of the batch script itself
# The job's Slurm name, qpy-<state>-<ID>-<attempt>, makes a launch idempotent: a launch cut
# short (the connection dropped, the tick killed between sbatch and its commit) is found
# by its name, under the lock, before anything is submitted again.

REMOTE_COPY_LIMIT = 100  # MB of job_<ID>.out, .err and stage-out files copied back at most
REMOTE_FOLLOW_BUDGET = 600  # seconds one follow (its copies back included) may take


def remote_word(path):
    """A path on the cluster as a shell word: relative ones are in the home there; %u is the
    user's name there (in an absolute remote_dir, which is every user's)."""
    import shlex
    word = '"$(id -un)"'.join(shlex.quote(piece) for piece in path.split("%u"))
    return word if path.startswith("/") else '"$HOME"/' + word


def remote_places(job, options, cwd):
    """(the job's directory, qpy's control directory) on the cluster, as relative or absolute
    paths: the job's directory mirrors where it was submitted, under remote_dir."""
    import pwd
    base = options.get("remote_dir") or "qpy"
    base = base[2:] if base.startswith("~/") else base
    try:
        home = pwd.getpwnam(job["user"]).pw_dir
    except KeyError:
        home = "/"
    inside = os.path.relpath(cwd, home)
    if inside.startswith(".."):
        inside = cwd.lstrip("/")
    return (os.path.normpath(os.path.join(base, inside)),
            os.path.join(base, ".qpy", state_id() or "unknown"))


def remote_name(job):
    return "qpy-%s-%d-%d" % ((state_id() or "x")[:8], job["id"], job["attempt"])


def remote_batch_script(job, job_file, workdir, control):
    """qpy's batch script for one attempt of a job: it runs nothing if a later attempt was
    handed over, the attempt was cancelled, or it started already; else the command in its
    directory, and writes
    the exit record: '<state>@<attempt> <exit status> <start> <end> <children's user and
    system CPU time, as `times` says>'. It needs only a POSIX shell and coreutils."""
    import shlex
    argv = job_file["argv"] if len(job_file["argv"]) > 1 else \
        ["/bin/sh", "-c", job_file["argv"][0]]
    exports = {"QPY_JOB_ID": job["id"], "QPY_NODE": job["node"], "QPY_ATTEMPT": job["attempt"],
               "QPY_N_CORES": job["n_cores"], "QPY_MEM": float(job["mem"]),
               "QPY_STATE_ID": state_id() or ""}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        exports[name] = job["n_cores"]
    if job["array_index"] is not None:
        exports["QPY_ARRAY_INDEX"] = job["array_index"]
    mine = "%s/job_%d.%d" % (control, job["id"], job["attempt"])
    return "\n".join([
        "#!/bin/sh",
        "# qpy's batch script for job %d, attempt %d, of the qpy state %s: handed over through"
        % (job["id"], job["attempt"], state_id()),
        "# the login node; it needs nothing of qpy here.",
        "mine=%s" % remote_word(mine),
        "# under the job's lock, as a launch or a cancel looks and writes (one at a time)",
        'exec 9>> %s/job_%d.lock && flock 9 || { echo "qpy: cannot take the lock of job %d '
        '(flock)" >&2; exit 1; }' % (remote_word(control), job["id"], job["id"]),
        'if [ "$(cat %s/job_%d.attempt 2>/dev/null)" != %d ]; then' % (
            remote_word(control), job["id"], job["attempt"]),
        '  echo "qpy: a later attempt of job %d was handed over: this one does not run" >&2'
        % job["id"],
        "  exit 0",
        "fi",
        "# the started marker, made with O_EXCL (noclobber): one copy of an attempt runs, never",
        "# two (in a subshell: a redirection that fails ends the shell it is made in)",
        'if ! (set -C; : > "$mine.started") 2>/dev/null; then',
        '  if [ -e "$mine.started" ]; then',
        '    echo "qpy: attempt %d of job %d started already: it does not run twice" >&2'
        % (job["attempt"], job["id"]),
        "    exit 0",
        "  fi",
        '  echo "qpy: cannot create $mine.started: job %d does not run" >&2; exit 1'
        % job["id"],
        "fi",
        "started=$(date +%s)",
        'echo "${SLURM_JOB_ID:-} $started" > "$mine.started" || exit 1',
        "exec 9>&-",
        "export " + " ".join("%s=%s" % (name, shlex.quote(str(value)))
                             for name, value in exports.items()),
        "status=1",
        "if cd %s; then" % remote_word(workdir),
        "  trap 'kill -TERM $child 2>/dev/null' TERM  # (Slurm's cancel, its time limit)",
        "  %s < /dev/null > job_%d.out 2> job_%d.err &" % (shlex.join(argv), job["id"],
                                                          job["id"]),
        "  child=$!",
        '  while :; do wait "$child"; status=$?; kill -0 "$child" 2>/dev/null || break; done',
        "fi",
        "set -- $(times)",
        "printf '%%s %%s %%s %%s %%s %%s\\n' '%s@%d' \"$status\" \"$started\" \"$(date +%%s)\" "
        "\"$3\" \"$4\" > \"$mine.exit.new\" && mv -f \"$mine.exit.new\" \"$mine.exit\""
        % (state_id(), job["attempt"]),
        ""])


def remote_sbatch_options(job, options):
    """sbatch's options for a job, as for a local pool, without qpy's runner: Slurm's own
    time limit is the job's (no runner stops it earlier), and Slurm never requeues it (a
    requeue is qpy's, by a new attempt)."""
    import math
    import shlex
    argv = ["--parsable", "--no-requeue", "--partition=" + options["partition"],
            "--ntasks=1", "--cpus-per-task=%d" % job["n_cores"]]
    if job["mem"] > 0:
        argv.append("--mem=%dM" % math.ceil(job["mem"] * 1024))
    if job["gpus"]:
        argv.append("--gres=gpu:%d" % job["gpus"])
    if job["time_limit"]:
        argv.append("--time=%d" % math.ceil(job["time_limit"] / 60))  # minutes
    elif options.get("time"):
        argv.append("--time=" + options["time"])
    for key in ("account", "qos"):
        if options.get(key):
            argv.append("--%s=%s" % (key, options[key]))
    return argv + shlex.split(options.get("extra") or "")


# The launch of one job, in the script a launch sends: under the job's lock, a job of its
# name already in Slurm (or its marker) is the launch that was cut short; else the script
# and the attempt are written and sbatch runs. It prints "ok <job> <Slurm ID>" or
# "no <job> <why>".
REMOTE_LAUNCH = r"""
qpy_lock() {  # control job: the job's lock (flock: it must be there)
  mkdir -p "$1" && chmod 700 "$1" || return 1
  command -v flock > /dev/null || { echo "flock is missing on the login node"; return 1; }
  exec 9>> "$1/job_$2.lock" && flock -w 120 9
}
qpy_launch() {  # mode job attempt name control workdir script sbatch-options...
  mode=$1 job=$2 attempt=$3 name=$4 control=$5 workdir=$6 script=$7
  shift 7
  qpy_lock "$control" "$job" || return 1
  found=$(squeue --all --noheader --states=all --user="$(id -un)" --name="$name" \
          --format=%i) || return 1
  if [ -n "$found" ]; then echo "$found" | head -n 1; return 0; fi
  if [ -s "$control/job_$job.$attempt.started" ]; then
    cut -d ' ' -f 1 "$control/job_$job.$attempt.started"; return 0
  fi
  if [ "$mode" = find ]; then echo none; return 0; fi
  mkdir -p "$workdir" || return 1
  last=$(cat "$control/job_$job.attempt" 2>/dev/null) || last=0
  if [ "$last" -gt "$attempt" ]; then
    echo "a later attempt ($last) was handed over already"; return 1
  fi
  printf '%s\n' "$attempt" > "$control/job_$job.attempt.new" &&
    mv -f "$control/job_$job.attempt.new" "$control/job_$job.attempt" &&
    printf '%s' "$script" > "$control/job_$job.$attempt.sh" || {
      echo "cannot write in $control (df: $(df -P "$control" | tail -n 1))"; return 1; }
  said=$(sbatch --job-name="$name" --chdir="$workdir" \
         --output="$control/job_$job.$attempt.batch" "$@" "$control/job_$job.$attempt.sh" 2>&1)
  status=$?
  id=$(printf '%s\n' "$said" | grep -E '^[0-9]+(;|$)' | tail -n 1)
  if [ "$status" -ne 0 ] || [ -z "$id" ]; then
    # (Slurm may have queued it all the same: this attempt never runs, whatever it says)
    printf '%s\n' $((attempt + 1)) > "$control/job_$job.attempt.new" &&
      mv -f "$control/job_$job.attempt.new" "$control/job_$job.attempt"
    printf '%s\n' "$said"; return 1
  fi
  echo "$id"
}
qpy_one() {
  job=$2
  if answer=$(qpy_launch "$@" 2>&1); then
    echo "ok $job $(printf '%s\n' "$answer" | tail -n 1 | cut -d ';' -f 1)"
  else
    echo "no $job $(printf '%s' "$answer" | tr '\n' ' ')"
  fi
}
"""


def remote_launch_script(jobs, options, mode="launch"):
    """The script of one launch (for jobs of one owner and pool, each with its job file), or
    with mode 'find', of the look for them that comes first when a launch was cut short
    (found: 'ok <job> <ID>'; not there: 'ok <job> none')."""
    import shlex
    lines = [REMOTE_LAUNCH]
    for job, job_file in jobs:
        workdir, control = remote_places(job, options, job_file["cwd"])
        lines.append("qpy_one %s %d %d %s %s %s %s %s" % (
            mode, job["id"], job["attempt"], remote_name(job), remote_word(control),
            remote_word(workdir),
            shlex.quote(remote_batch_script(job, job_file, workdir, control)),
            shlex.join(remote_sbatch_options(job, options))))
    return "\n".join(lines) + "\n"


def remote_ssh(login, sockets_uid, timeout, multiplex=True):
    """ssh to a pool's login node (ssh_command's checks and multiplexing), running `sh -s`:
    the script comes on standard input."""
    return ssh_command(login, ["sh", "-s"], int(timeout), sockets_uid, multiplex)


def through_master_only(argv):
    """An ssh command that uses the master connection if there is one, but never becomes
    one itself: a master left behind would hold the pipes this ssh writes into."""
    return [word.replace("ControlMaster=auto", "ControlMaster=no") for word in argv]


def run_script_there(login, script, timeout, connect, multiplex=True):
    """Run a shell script on a login node, as this process's user, connecting within
    `connect` seconds (the site's ssh_timeout): (exit status, output, last line of errors).
    multiplex False: on a connection of its own (a master connection to a login node gone
    since waits for its keep-alives to give up)."""
    argv, sockets = remote_ssh(login, os.getuid(), connect, multiplex)
    return run_all([(argv, None, sockets, script.encode())], timeout)[0]


def remote_hand_over(jobs, options, connect, cut_short=False):
    """As the jobs' owner (all of one pool): send them to Slurm; [(job ID, outcome, detail)]
    as record_launches takes them. A connection that cannot be made is 'unreachable' (nothing
    was sent; a key the login node refuses is the job's 'refused'); one that drops while the
    launch runs leaves its jobs 'cut off': where they are is asked again (follow) once the
    login node answers. cut_short: the claims of such launches, looked for first (under each
    job's lock there); only those not there are staged in and handed over."""
    login = options["login"]
    # (its own connection: whether it answers now, before anything is sent)
    status, _, error = run_script_there(login, "true\n", SLURM_TIMEOUT, connect, False)
    if status != 0:
        refused = "Permission denied" in error  # (this user's account, not the pool)
        return [(job["id"], "cut off" if cut_short else "refused" if refused else
                 "unreachable", "%s: %s" % (login, error)) for job in jobs]
    ready, outcomes = [], []
    for job in jobs:
        try:
            ready.append((job, read_job_file(job)))
        except QpyError as e:
            outcomes.append((job["id"], "unowned", str(e)))
    if cut_short and ready:
        found = remote_launch_outcomes(ready, options, connect, "find")
        outcomes += [outcome for outcome in found if outcome[1:] != ("submitted", "none")]
        if any(what == "refused" for _, what, _ in found):  # (the look failed: later again)
            outcomes = [(job_id, "cut off" if what == "refused" else what, detail)
                        for job_id, what, detail in outcomes]
        absent = {job_id for job_id, what, detail in found if (what, detail) == ("submitted",
                                                                               "none")}
        ready = [(job, job_file) for job, job_file in ready if job["id"] in absent]
    handing = []
    for job, job_file in ready:
        problem = stage_in(job, job_file, options, connect)
        if problem:  # (a claim cut short is not given up on a stage-in's word)
            outcomes.append((job["id"], "cut off" if cut_short else "refused", problem))
        else:
            handing.append((job, job_file))
    return outcomes + (remote_launch_outcomes(handing, options, connect) if handing else [])


def remote_launch_outcomes(ready, options, connect, mode="launch"):
    """Run one launch (or find) script for these (job, job file): the outcome of each."""
    login = options["login"]
    status, out, error = run_script_there(login, remote_launch_script(ready, options, mode),
                                          SLURM_TIMEOUT * 2, connect)
    said = {}
    for line in out.splitlines():
        words = line.split(" ", 2)
        if len(words) == 3 and words[1].isdigit():
            said[int(words[1])] = words
    outcomes = []
    for job, _ in ready:
        words = said.get(job["id"])
        answer = words[2].strip() if words else None
        if words and words[0] == "ok" and (answer.isdigit() or answer == "none"):
            outcomes.append((job["id"], "submitted", answer))
        elif words:
            outcomes.append((job["id"], "refused", "%s said: %s" % (login, answer)))
        else:
            outcomes.append((job["id"], "cut off", "%s: %s" % (login, error)))
    return outcomes


def glob_word(pattern):
    """A --stage-out glob as a word for the shell there: its wildcards stay, nothing else of
    it is read by the shell."""
    return re.sub(r"([^\w*?\[\]./-])", r"\\\1", pattern)


def piped_through_ssh(local, remote, login, connect, local_input=False):
    """Run `local | ssh login remote` (local_input) or `ssh login remote | local`, as this
    process's user; None, or what went wrong."""
    import subprocess
    import tempfile
    ssh = through_master_only(ssh_command(login, ["sh", "-c", remote], connect, os.getuid())[0])
    first, second = (local, ssh) if local_input else (ssh, local)
    with tempfile.TemporaryFile() as errors:  # (a file: a pipe read at the end may fill up)
        try:
            feeding = subprocess.Popen(first, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=errors, cwd="/")
            try:
                taking = subprocess.run(second, stdin=feeding.stdout, stdout=subprocess.DEVNULL,
                                        stderr=errors, timeout=600, cwd="/")
            finally:
                feeding.stdout.close()
                try:
                    fed = feeding.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    feeding.kill()
                    fed = feeding.wait()
        except (OSError, subprocess.SubprocessError) as e:
            return str(e)
        errors.seek(0)
        said = errors.read().decode(errors="replace").strip()
    if fed == 0 and taking.returncode == 0:
        return None
    return shown("; ".join(said.splitlines()) or "exit status %d" % (fed or taking.returncode),
                 300)


def stage_in(job, job_file, options, connect):
    """Copy a job's --stage-in files into its directory on the cluster (tar over ssh);
    None, or what went wrong."""
    if not job_file.get("stage_in"):
        return None
    import shlex
    workdir, control = remote_places(job, options, job_file["cwd"])
    mine = "%s/job_%d.%d" % (remote_word(control), job["id"], job["attempt"])
    # (under the job's lock, as a launch or a find; never over the files of a copy that is
    # there already: it may run)
    there = "squeue --all --noheader --states=all --user=\"$(id -un)\" --name=%s " \
            "--format=%%i | grep -q . || [ -e %s.started ]" % (remote_name(job), mine)
    problem = piped_through_ssh(
        ["tar", "cf", "-", "-C", job_file["cwd"], "--"] + job_file["stage_in"],
        "mkdir -p -- %s %s && exec flock -w 120 %s/job_%d.lock sh -c %s" % (
            remote_word(control), remote_word(workdir), remote_word(control), job["id"],
            shlex.quote("if %s; then exec cat > /dev/null; fi; exec tar xf - -C %s"
                        % (there, remote_word(workdir)))),
        options["login"], connect, local_input=True)
    return problem and "stage-in to %s failed: %s" % (options["login"], problem)


def stage_out(job, job_file, options, workdir, connect):
    """Copy back what a job's --stage-out globs match on the cluster into its directory
    here; None, or what went wrong."""
    globs = job_file.get("stage_out")
    if not globs:
        return None
    problem = piped_through_ssh(
        ["tar", "xf", "-", "--no-same-owner", "-C", job_file["cwd"]],
        "cd %s && exec tar cf - -- %s" % (remote_word(workdir), " ".join(map(glob_word, globs))),
        options["login"], connect)
    return problem and "stage-out not all copied back (%s): %s:%s" % (
        problem, options["login"], workdir)


def remote_sbatch_all(jobs, owners):
    """submit: one launch per owner and pool, all at once, each as its owner, within
    launch_timeout (stage-in included): a launch still at work then is stopped (its ssh and
    tar with it) and left to the follow, which looks for it after launch_timeout, never
    beside it."""
    groups = {}
    for job in jobs:
        groups.setdefault((job["user"], job["node"]), []).append(dict(job))
    connect = ssh_timeout()
    budget = atomically(lambda db: setting(db, "launch_timeout"), write=False)
    calls = [(user, remote_hand_over, (group, node_options(group[0]), connect))
             for (user, _), group in groups.items()]
    by_id = {job["id"]: job for job in jobs}
    outcomes = []
    for group, said in zip(groups.values(), as_owners_at_once(calls, budget)):
        if said is None:
            said = [(job["id"], "cut off", "the launch as %s did not end" % job["user"])
                    for job in group]
        outcomes += [(by_id[job_id], what, detail) for job_id, what, detail in said]
    crash_point("tick:sbatched")
    return outcomes


def remote_follow_script(jobs, options):  # jobs: [(job, its job file)]
    """The script of one follow (jobs of one owner and pool): what Slurm says of their names,
    and each attempt's started marker, exit record and the size of its output, as lines
    'Q <name> <Slurm ID> <state> <reason>', 'S <job> <marker>', 'X <job> <exit record>',
    'O <job> <bytes>'."""
    names = ",".join(remote_name(job) for job, _ in jobs)
    lines = ["squeue --all --noheader --states=all --user=\"$(id -un)\" --name=%s "
             "--format='Q %%j %%i %%T %%r' || exit 3" % names]
    for job, job_file in jobs:
        workdir, control = remote_places(job, options, job_file["cwd"])
        mine = "%s/job_%d.%d" % (remote_word(control), job["id"], job["attempt"])
        lines.append('m=$(cat %s.started 2>/dev/null) && echo "S %d $m"' % (mine, job["id"]))
        lines.append('x=$(cat %s.exit 2>/dev/null) && echo "X %d $x" && echo "O %d $(cd %s && '
                     'du -cb -- job_%d.out job_%d.err %s 2>/dev/null | tail -n 1 | cut -f 1)"'
                     % (mine, job["id"], job["id"], remote_word(workdir), job["id"], job["id"],
                        " ".join(map(glob_word, job_file.get("stage_out") or []))))
    return "\n".join(lines + ["exit 0"]) + "\n"


def remote_sacct(names, options, connect, since):
    """What Slurm's accounting says of these job names, claimed since `since`: {name: {Slurm
    ID: [state, None]}}; nothing where sacct does not work (no accounting there)."""
    status, out, _ = run_script_there(options["login"], "sacct -X --noheader --parsable2 "
                                      "--starttime=%s --name=%s --format=JobName,JobID,State "
                                      "2>/dev/null; exit 0\n" % (time.strftime(
                                          "%Y-%m-%dT%H:%M:%S", time.localtime(since - 86400)),
                                          ",".join(names)), SLURM_TIMEOUT, connect)
    found = {}
    for line in out.splitlines() if status == 0 else []:
        fields = line.split("|")
        if len(fields) == 3 and fields[0] in names and fields[1].isdigit() and fields[2]:
            found.setdefault(fields[0], {})[fields[1]] = [fields[2].split()[0], None]
    return found


def remote_exit_record(line, job):
    """The exit record from the batch script's line; None if it is not one of this attempt.
    An exit status above 128 is a signal's, as the shell reports it."""
    words = line.split()
    if len(words) != 6 or words[0] != "%s@%d" % (state_id(), job["attempt"]) \
            or not all(word.isdigit() for word in words[1:4]):
        return None

    def seconds(text):  # `times`: 0m0.004s, or 1h2m3.5s
        found = re.fullmatch(r"(?:(\d+)h)?(\d+)m([\d.]+)s", text)
        return 3600 * int(found[1] or 0) + 60 * int(found[2]) + float(found[3]) if found \
            else None
    status, started, ended = int(words[1]), int(words[2]), int(words[3])
    cpu = [seconds(word) for word in words[4:]]
    record = {"state": state_id(), "attempt": job["attempt"], "ended_at": float(ended),
              "started_at": float(started), "max_rss": None,
              "cpu_time": None if None in cpu else round(sum(cpu), 3),
              "exit_code": None, "signal": None, "reason": None}
    if 128 < status <= 128 + 64:
        record["signal"] = status - 128
        record["reason"] = "killed by %s" % signal_name(record["signal"])
    else:
        record["exit_code"] = status
        record["reason"] = "exit code %d" % status if status else None
    record["status"] = "done" if status == 0 else "failed"
    return record


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


def copy_back(job, job_file, options, workdir, connect):
    """Copy job_<ID>.out and .err from the cluster to where the job's output goes here (as
    its owner, in a file renamed into place). None, or what went wrong (the files stay on
    the cluster)."""
    import subprocess
    import tempfile
    login = options["login"]
    argv = through_master_only(remote_ssh(login, os.getuid(), connect)[0])
    for kind in ("out", "err"):
        target = output_path(job, kind, job_file.get("outputs"), job_file["cwd"])
        partial = None
        try:
            fd, partial = tempfile.mkstemp(prefix=".qpy-copy-", dir=os.path.dirname(target))
            with os.fdopen(fd, "wb") as f:
                done = subprocess.run(argv, input=b"cat %s/job_%d.%s\n" % (
                    remote_word(workdir).encode(), job["id"], kind.encode()), stdout=f,
                    stderr=subprocess.PIPE, timeout=600)
            if done.returncode != 0:
                raise OSError(done.stderr.decode(errors="replace").strip() or
                              "ssh exit status %d" % done.returncode)
            os.replace(partial, target)
        except (OSError, subprocess.SubprocessError) as e:
            if partial:
                remove_quietly(partial)
            return "not copied back (%s): %s:%s/job_%d.%s" % (e, login, workdir, job["id"], kind)
    return None


def remote_follow(jobs, options, connect):
    """As the jobs' owner (all of one pool): what became of them. The claims whose launch was
    cut short are handed over again (idempotent: found by their name if they got there);
    then one ssh asks about all; the output of those that ended is copied back. Returns
    ({job ID: state}, None) or (None, what went wrong)."""
    limit = float(options.get("copy_limit") or REMOTE_COPY_LIMIT) * 1e6
    states, asked = {}, []
    cut_short = [job for job in jobs if job["external_id"] is None]
    if cut_short:
        for job_id, what, detail in remote_hand_over(cut_short, options, connect, True):
            if what == "unreachable":
                return None, detail
            if what in ("submitted", "refused"):  # (cut off again, or unowned: left out)
                states[job_id] = {"slurm_id": detail} if what == "submitted" else \
                    {"refused": detail}
    left_out = {job["id"] for job in cut_short} - {int(job_id) for job_id in states}
    for job in jobs:
        if job["id"] in left_out:
            continue
        try:
            job_file = read_job_file(job)
        except QpyError:
            continue  # (root's tick fails the claim; a running one is judged without it)
        asked.append((job, job_file))
    status, out, error = run_script_there(options["login"], remote_follow_script(asked, options),
                                          SLURM_TIMEOUT, connect)
    if status != 0:
        return None, "%s: %s" % (options["login"], error)
    said = {"Q": {}, "S": {}, "X": {}, "O": {}}
    for line in out.splitlines():
        words = line.split(" ", 2)
        if len(words) == 3 and words[0] == "Q":  # (a name's Slurm jobs: {ID: [state, why]})
            fields = words[2].split(" ", 2)
            said["Q"].setdefault(words[1], {})[fields[0]] = (fields[1:] + [None, None])[:2]
        elif len(words) == 3 and words[0] in said:
            said[words[0]][words[1]] = words[2]
    forgotten = [remote_name(job) for job, _ in asked if remote_name(job) not in said["Q"]
                 and str(job["id"]) not in said["X"]]
    if forgotten:  # (squeue keeps ended jobs for MinJobAge only: Slurm's accounting then)
        said["Q"].update(remote_sacct(forgotten, options, connect, min(
            job["claimed_at"] for job, _ in asked)))
    for job, job_file in asked:
        state = states.setdefault(job["id"], {})
        marker = said["S"].get(str(job["id"]), "").split()
        slurm_id = marker[0] if marker and marker[0].isdigit() else \
            state.get("slurm_id") or job["external_id"]
        if marker and len(marker) == 2 and marker[1].isdigit():
            state["started"] = float(marker[1])
        # (two copies of an attempt share its name: the one that runs wrote its marker)
        queued = said["Q"].get(remote_name(job), {})
        if slurm_id in queued or (queued and not slurm_id):
            slurm_id = slurm_id or next(iter(queued))
            state["slurm"] = (queued[slurm_id] + [None])[:2]
        state["slurm_id"] = slurm_id
        line = said["X"].get(str(job["id"]))
        if line is not None:
            state["record"] = remote_exit_record(line, job)
            workdir, _ = remote_places(job, options, job_file["cwd"])
            size = said["O"].get(str(job["id"]), "0").strip()
            if size.isdigit() and int(size) > limit:
                state["note"] = "output above the copy limit (%g MB), left on %s: %s" % (
                    limit / 1e6, options["login"], workdir)
            else:
                state["note"] = copy_back(job, job_file, options, workdir, connect) or \
                    stage_out(job, job_file, options, workdir, connect)
        if not state.get("slurm") and not marker and line is None and "refused" not in state:
            states[job["id"]] = None  # (Slurm forgot it, and nothing of it ran)
    return {job_id: state for job_id, state in states.items()}, None


def remote_squeue_pools(jobs):
    """follow: one remote_follow per owner and pool, all at once, each as its owner (root's
    tick acts only for the owners of real job files, never as root: rows are anybody's; a
    claim cut short whose files are not its owner's fails)."""
    groups, unowned = {}, {}
    for job in jobs_of(jobs):
        if os.geteuid() == 0:
            try:
                if owner_of(job).pw_uid == 0:
                    continue
            except QpyError as e:  # (a running one is left out: never judged on a row alone)
                if job["status"] == "starting" and job["external_id"] is None:
                    unowned.setdefault(job["node"], {})[(job["id"], job["attempt"])] = {
                        "unowned": str(e)}
                continue
        groups.setdefault((job["user"], job["node"]), []).append(job)
    connect = ssh_timeout()
    calls = [(user, remote_follow, (group, node_options(group[0]), connect))
             for (user, _), group in groups.items()]
    states, errors = {}, {}
    for (user, pool), group, answer in zip(groups, groups.values(),
                                           as_owners_at_once(calls, REMOTE_FOLLOW_BUDGET)):
        found, error = answer or (None, "the follow as %s did not end" % user)
        if found is None:
            errors.setdefault(pool, error)
            continue
        states.setdefault(pool, {}).update(((job["id"], job["attempt"]), found[str(job["id"])])
                                           for job in group if str(job["id"]) in found)
    for pool, claims in unowned.items():
        states.setdefault(pool, {}).update(claims)
    return states, {pool: error for pool, error in errors.items() if pool not in states}


def jobs_of(pools):
    return [job for jobs in pools.values() for job in jobs]


def remote_fate(db, job, state):
    """Inside the tick's transaction: what a follow found of a job handed over (or cut short).
    The job starts when its marker says so or Slurm runs it; it ends from its exit record,
    Slurm's verdict named (a time limit, a node failure); without one, as in a local pool."""
    state = state or {}
    slurm_id = state.get("slurm_id") or job["external_id"]
    if slurm_id and slurm_id != job["external_id"]:  # (found by its name: adopted)
        db.execute("UPDATE jobs SET external_id = ? WHERE id = ? AND attempt = ?",
                   (slurm_id, job["id"], job["attempt"]))
        job = dict(job, external_id=slurm_id)
    record, slurm_state = state.get("record"), state.get("slurm")
    if state.get("unowned") and job["status"] == "starting":
        fail_claim(db, job, state["unowned"])
        return
    if state.get("refused") and job["status"] == "starting":
        refusal = {"node": job["node"], "why": state["refused"],
                   "until": time.time() + setting(db, "probe_interval")}
        return_to_queue(db, job, refused_note(refusal), json.dumps(refusal))
        return
    if job["status"] == "starting" and (record or state.get("started") or slurm_state and
                                        slurm_state[0] in SLURM_RUNNING):
        if not start_in_pool(db, job, (record or {}).get("started_at") or
                             state.get("started") or time.time(), slurm_id):
            return
        job = dict(job, status="running")
    if record:
        if slurm_state and slurm_state[0] in SLURM_ENDINGS and slurm_state[0] not in (
                "COMPLETED", "FAILED", "CANCELLED") and record["status"] != "done":
            record = dict(record, status="failed", reason=SLURM_ENDINGS[slurm_state[0]])
        if state.get("note"):
            record = dict(record, reason="; ".join(filter(None, [record["reason"],
                                                                 state["note"]])))
        finish(db, job, record)
    else:  # (started, but neither Slurm nor its accounting knows it now: it vanished)
        slurm_fate(db, job, tuple(slurm_state) if slurm_state else None)


REMOTE_CANCEL = r"""
qpy_cancel() {  # job attempt name control: under the job's lock, no launch of this attempt
  qpy_lock "$4" "$1" || { scancel --user="$(id -un)" --name="$3"; return 1; }
  moved=0  # (from now on no launch submits it, and none of its scripts runs it)
  last=$(cat "$4/job_$1.attempt" 2>/dev/null) || last=0
  if [ "$last" -le "$2" ]; then
    printf '%s\n' $(($2 + 1)) > "$4/job_$1.attempt.new" &&
      mv -f "$4/job_$1.attempt.new" "$4/job_$1.attempt" || moved=1
  fi
  scancel --user="$(id -un)" --name="$3" && return $moved  # (not moved: sent again later)
}
"""


def remote_scancel(jobs):
    """cancel: for each job's attempt, under its lock on the cluster, mark it cancelled (the
    attempt file moves past it: a launch still on its way submits nothing, a batch script
    not yet started runs nothing) and scancel it by name, over each owner's connection; did
    every pool take it?"""
    groups = {}
    for job in jobs:
        groups.setdefault((job["user"], job["node"]), []).append(job)

    def cancel(group, options, connect):
        lines = [REMOTE_LAUNCH, REMOTE_CANCEL]
        for job in group:
            _, control = remote_places(job, options, "/")
            lines.append("qpy_cancel %d %d %s %s || exit 1" % (
                job["id"], job["attempt"], remote_name(job), remote_word(control)))
        status, _, error = run_script_there(options["login"], "\n".join(lines) + "\n",
                                            SLURM_TIMEOUT, connect)
        if status != 0:
            log_event("could not cancel jobs %s in pool %s: %s" % (
                " ".join(str(job["id"]) for job in group), group[0]["node"], error))
        return status == 0
    connect = ssh_timeout()
    calls = [(user, cancel, (group, node_options(group[0]), connect))
             for (user, _), group in groups.items()]
    return all(as_owners_at_once(calls, SLURM_TIMEOUT * 2, failed=False))


def remote_sinfo_pools(pools):
    """probe: each pool's partition, asked as up to three users with jobs there or waiting
    (root has no account there; one user's account may be broken): {pool: None if it is up
    for one of them, else what is wrong}."""
    def read(db):
        return [row[0] for row in db.execute(
            "SELECT DISTINCT user FROM jobs WHERE " + LIVE_SQL + " AND (+node IN (%s) OR "
            "status = 'queue') LIMIT 12" % ",".join("?" * len(pools)),
            [pool["name"] for pool in pools])] + share_holders(db)
    users = atomically(read, write=False) if os.geteuid() == 0 else [user_name()]

    import shlex

    def ask(pool, connect):
        options = node_options(pool)
        status, out, error = run_script_there(
            options["login"], "sinfo --noheader --partition=%s --format=%%a\n"
            % shlex.quote(options["partition"]), SLURM_TIMEOUT, connect)
        return error if status else None if out.split() == ["up"] else \
            "partition %s is %s" % (options["partition"], " ".join(out.split()) or "missing")
    probers = list(dict.fromkeys(user for user in users if user_exists(user)))[:3]
    if not probers:
        return {pool["name"]: "no user to ask it as" for pool in pools}
    connect = ssh_timeout()
    calls = [(prober, ask, (dict(pool), connect)) for pool in pools for prober in probers]
    answers = iter(as_owners_at_once(calls, SLURM_TIMEOUT * 2, failed="the probe did not end"))
    said = {pool["name"]: [next(answers) for _ in probers] for pool in pools}
    return {name: None if None in tried else tried[0] for name, tried in said.items()}


def remote_slurm_check(node, options):
    slurm_check(node, options)
    if not is_host_address(options.get("login") or ""):
        raise QpyError("Slurm pool %s: login must be a host name or user@host, not %r"
                       % (node["name"], shown(options.get("login") or "")))
    remote_dir = options.get("remote_dir") or ""
    if re.search(r"[\0\n]", remote_dir) or ".." in remote_dir.split("/"):
        raise QpyError("Slurm pool %s: remote_dir must be a path" % node["name"])
    if remote_dir.startswith("/") and "%u" not in remote_dir:
        raise QpyError("Slurm pool %s: an absolute remote_dir is every user's: put %%u (the "
                       "user's name there) in it, e.g. remote_dir=/scratch/%%u/qpy"
                       % node["name"])
    try:
        if not 0 <= float(options.get("copy_limit") or 0) < float("inf"):
            raise ValueError
    except ValueError:
        raise QpyError("Slurm pool %s: copy_limit must be a number of MB, not %r"
                       % (node["name"], shown(options["copy_limit"])))


def remote_slurm_doctor(pool, report, owner=None):
    """doctor's checks, as the user it checks for (doctor --as <user>; root has no account
    there): the login node answers, Slurm's commands and flock are there, remote_dir can be
    written, the partition is up."""
    import shlex
    options = node_options(pool)
    title = "Slurm pool %s through %s" % (pool["name"], options["login"])
    user = owner.pw_name if owner else None if os.geteuid() == 0 else user_name()
    if user is None:
        report(True, title + ": not checked here (root has no account there: doctor --as "
               "<user> checks it as them)")
        return

    def check(connect):
        _, control = remote_places({"user": user}, options, os.path.expanduser("~"))
        status, out, error = run_script_there(options["login"], "\n".join([
            "for c in sbatch squeue scancel sinfo flock; do command -v $c > /dev/null || "
            "echo \"$c missing\"; done",
            "mkdir -p %s && [ -w %s ] || echo 'cannot write in %s'" % (
                remote_word(control), remote_word(control), control),
            "sinfo --noheader --partition=%s --format=%%a | grep -qx up || echo %s" % (
                shlex.quote(options["partition"]),
                shlex.quote("partition %s is not up" % options["partition"]))]) + "\n",
            SLURM_TIMEOUT, connect)
        return error if status else "; ".join(out.split("\n")).strip("; ")
    [problems] = as_owners_at_once([(user, check, (ssh_timeout(),))], SLURM_TIMEOUT * 2,
                                   failed="the check as %s did not end" % user)
    report(not problems, "%s, as %s" % (title, user), problems)


SLURM_LOGIN = {
    "name": "Slurm", "type": "slurm", "selected_by": "login",
    "options": ("login", "remote_dir", "copy_limit") + SLURM["options"],
    "check": remote_slurm_check,
    "submit": remote_sbatch_all, "follow": remote_squeue_pools, "fate": remote_fate,
    "running": lambda state: bool(state and state.get("slurm")) and state["slurm"][0] in
    SLURM_RUNNING, "cancel": remote_scancel, "probe": remote_sinfo_pools,
    "environment": lambda job: {}, "id_variable": None, "takes_next_job": False,
    "runner": False, "sigterm_means_kill": True, "limit_warning": None, "warning_window": 0,
    "usable_here": lambda: True, "doctor": remote_slurm_doctor,
}


POOLS = {"slurm": SLURM, "slurm_login": SLURM_LOGIN}  # the kinds of pool
POOL_TYPES = sorted({pool["type"] for pool in POOLS.values()})  # what type= may say


def pool_kind(pool_type, options):
    """The kind of pool of type=<pool_type> with these settings: one that a setting of them
    selects (login=: Slurm through its login node), else the plain one."""
    kinds = [kind for kind, pool in POOLS.items() if pool["type"] == pool_type]
    return next((kind for kind in kinds if POOLS[kind]["selected_by"] in options), kinds[0])


# --------------------------------------------------------------------------------------------
# Runner: runs on the node, as the job's owner, for the whole life of one job
# --------------------------------------------------------------------------------------------

def job_environment(job_file, job, node):
    """The submitter's environment, plus what qpy tells the job. Thread counts follow the
    job's cores unless the user chose them. QPY_SET_VARS names what qpy set, so that a qpy sub
    inside the job does not pass it on to the next job."""
    env = dict(job_file["env"])
    env.update(QPY_JOB_ID=str(job["id"]), QPY_NODE=node, QPY_N_CORES=str(job["n_cores"]),
               QPY_MEM=str(float(job["mem"])), QPY_STATE_ID=state_id() or "",
               QPY_ATTEMPT=str(job["attempt"]))
    chosen = []
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if name not in env:
            env[name] = str(job["n_cores"])
            chosen.append(name)
    if job["kind"] in POOLS:  # the pool's own word on the allocation, and its GPUs
        given = POOLS[job["kind"]]["environment"](job)
        env.update(given)
        chosen += [name for name in given if not name.startswith("QPY_")]
    elif job["gpus"]:
        env.update(CUDA_VISIBLE_DEVICES=job["gpu_ids"], QPY_GPUS=job["gpu_ids"])
        chosen.append("CUDA_VISIBLE_DEVICES")
    if job["array_index"] is not None:
        env["QPY_ARRAY_INDEX"] = str(job["array_index"])
    env["QPY_SET_VARS"] = ",".join(chosen)
    return env


def start_command(job, job_file):
    """Start the job's command: 'go' into its started marker first (from then on the job
    counts as started), then the command in its own session and process group, in its
    directory, with its environment, output to job_<ID>.out and .err there; its process
    group is added to the marker, for a tick that finds the runner gone (stop_orphans).
    Returns (pid, None), or (None, exit status) when it cannot start: 127, or 126 when not
    permitted, as a shell says, with the reason in job_<ID>.err."""
    argv = job_file["argv"] if len(job_file["argv"]) > 1 else \
        ["/bin/sh", "-c", job_file["argv"][0]]
    env = job_environment(job_file, job, job["node"])
    # (from the job file, the owner's: a row changed by a member must not aim them elsewhere)
    out, err = (output_path(job, kind, job_file.get("outputs"), job_file["cwd"])
                for kind in ("out", "err"))
    marker = os.open(run_file(job, "started"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(marker, b" go")
        try:
            pid = spawn(argv, env, job_file["cwd"], out, err)
        except OSError as e:
            try:
                with open(err, "a") as stderr:
                    stderr.write("qpy: cannot run job %d: %s: %s\n"
                                 % (job["id"], e.filename or argv[0], e.strerror))
            except OSError:
                pass
            return None, 126 if isinstance(e, PermissionError) else 127
        os.write(marker, b" %d" % pid)
        return pid, None
    finally:
        os.close(marker)


def spawn(argv, env, cwd, out, err):
    """posix_spawn (vfork and exec: forking the runner would copy its pages, job after job)
    in a new session, with the signals a job expects at their defaults, looking the program up
    in the job's own PATH as execvp does. The child takes the runner's working directory, so
    the runner steps into the job's for the spawn (it is single-threaded) and leaves it."""
    program = argv[0]
    if os.sep not in program:
        program = next((path for path in (os.path.join(folder, argv[0])
                                          for folder in os.get_exec_path(env))
                        if os.access(path, os.X_OK) and not os.path.isdir(path)), None)
        if program is None:
            raise FileNotFoundError(2, "command not found", argv[0])
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666),
               (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)]
    os.chdir(cwd)
    try:
        return os.posix_spawn(program, argv, env, file_actions=actions, setsid=True,
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGHUP,
                                         signal.SIGINT, signal.SIGTERM, signal.SIGCHLD,
                                         signal.SIGUSR1))
    finally:
        os.chdir("/")


def confirm(db, job_id, attempt):
    """Inside a transaction: make our claim of a job (still 'starting' with our attempt)
    'running'. Its job file must be its owner's and name it; the started marker is created
    with O_EXCL (a job never starts twice); the runner is recorded. Returns (job, its job
    file's content, settings), or None: the claim is not ours any more, or the job was
    refused (then it is failed with the reason)."""
    job = job_row(db, job_id)
    if job is None or job["status"] != "starting" or job["attempt"] != attempt:
        return None
    marker = run_file(job, "started")
    refusal = None
    try:
        job_file = read_job_file(job)
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # ours only if made for this very claim by a transaction that was rolled back
            # (its attempt, no 'go'): a claim is committed before anyone runs it; one of
            # another state, or unreadable, is quarantined by marker_words: made anew
            words = marker_words(job)
            if words is None and not os.path.exists(marker):
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            elif words is None or len(words) > 1:
                refusal = "started marker exists: refused to run it twice"
            else:
                fd = os.open(marker, os.O_WRONLY | os.O_TRUNC)
    except QpyError as e:
        refusal = str(e)
    except OSError as e:
        refusal = "cannot create its started marker: %s" % e
    if refusal:
        fail_claim(db, job, refusal)
        return None
    os.write(fd, marker_head(job))
    os.close(fd)
    now = time.time()
    # in a pool, the job's ID there from the pool itself: the tick that submitted it may have
    # died before it could store it
    external_id = os.environ.get(POOLS[job["kind"]]["id_variable"]) if job["kind"] in POOLS \
        else None
    confirm_start(db, job, now, external_id)
    settings = {key: setting(db, key) for key in ("kill_grace", "heartbeat", "node_timeout")}
    return dict(job, status="running", started_at=now,
                external_id=external_id or job["external_id"], runner_pid=os.getpid()), \
        job_file, settings


# The job file's format: 2 names the job IDs it is for ("ids"); 1, before that, did not; 3
# may hold one command for each of its jobs ("commands": qpy sub --file) instead of "argv".
JOB_FILE_VERSION = 3


def job_file_for(job_file, job_id):
    """What a job file says for one of the jobs it is for (of a file of commands, that job's
    line as its argv and command)."""
    if "commands" not in job_file:
        return job_file
    number = job_id - job_file["ids"][0]
    if number < 0:
        raise IndexError(number)
    view = dict(job_file, argv=[job_file["commands"][number]],
                command=job_file["commands"][number])
    del view["commands"]
    return view


def read_job_file(job):
    """A job's file (argv, directory, environment), checked: in its owner's spool directory,
    owned by them, and naming this job (a file of version 1, written before job files named
    their jobs, is taken on the first two checks, as it was then). Raises QpyError."""
    check_job_file(job)
    try:
        with open(job["spec"]) as f:
            job_file = json.load(f)
        version = job_file.get("version", 2 if "ids" in job_file else 1)
        if version > JOB_FILE_VERSION:
            raise QpyError("job file %s is of version %s, written by a newer qpy"
                           % (job["spec"], version))
        first, last = job_file["ids"] if version >= 2 else (job["id"], job["id"])
        if not first <= job["id"] <= last:
            raise QpyError("refused: the job file %s is not for job %d"
                           % (job["spec"], job["id"]))
        job_file = job_file_for(job_file, job["id"])
        job_file["argv"], job_file["cwd"], job_file["env"]  # (what every version has)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise QpyError("job file unreadable: %s" % e)
    return job_file


def store_and_continue(db, job, record):
    """Inside a transaction: record how a job ended and, if another job of the same node and
    user can start now, claim it and confirm it at once (one transaction for both: short jobs
    do not pay for a new process, a launch or another commit). A runner in a pool takes no
    next job unless its kind says so (the pool allocated this one only). Returns (what confirm returns, or None;
    whether a tick is wanted for other jobs). A runner whose attempt is not the job's any more
    records nothing, and takes no next job."""
    row = job_row(db, job["id"])
    if row is None or not finish(db, dict(row, attempt=job["attempt"]), record,
                                 run_files=False):
        return None, False
    if job["kind"] in POOLS and not POOLS[job["kind"]]["takes_next_job"]:
        request_tick(db)  # (the site's timer hands the next job to the pool)
        return None, False
    me = ticking_user()
    claimed = claim_next_job(db, me, job["node"], job["user"])
    started = confirm(db, claimed["id"], claimed["attempt"]) if claimed else None
    return started, tick_wanted(db, me)


def runner(job_id, attempt):
    """A runner's life, on the node, as the job's owner: confirm the job the tick claimed for
    it, run it, record how it ended; then, while another job of this node and user can start,
    run that one too. Not in a Slurm pool, whose machines may not reach the lab's nodes: the
    runner there does not tick either (the site's timer does)."""
    try:  # its name in top and `ps -o comm` (forked from a qpy command, it has its argv)
        with open("/proc/self/comm", "w") as f:
            f.write("qpy-runner")
    except OSError:
        pass
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    stop = {"asked": False, "warned": None}  # (warned: when the pool said its limit is near)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
    signal.signal(signal.SIGUSR1, lambda *_: stop.update(warned=time.time()))
    try:
        try:
            started = atomically(lambda db: confirm(db, job_id, attempt))
        except QpyError:
            started = None
        ended = None  # the job before, whose run files are removed once this one runs
        while started:
            job, job_file, settings = started
            crash_point("runner:confirmed")
            pid, status = start_command(job, job_file)
            if ended:
                remove_run_files(ended)
            # (a command that could not start ends as a shell's exit status, as a wait status)
            record = supervise(job, pid, stop, wake_r, settings) if pid else \
                exit_record(job, status << 8, None, 0.0)
            if record is None:  # its attempt is not the job's any more: nothing to record
                log_event("job %d: attempt %d was superseded while it ran (its node taken for "
                          "lost?): its command was stopped, its end is not recorded"
                          % (job["id"], job["attempt"]))
                remove_run_files(job)
                break
            heartbeat = run_file(job, "hb")
            patience = settings["node_timeout"]
            keep_trying(lambda: write_atomically(run_file(job, "exit"),
                                                 json.dumps(record).encode()), heartbeat, patience)
            crash_point("runner:recorded")
            started, wanted = keep_trying(lambda: atomically(
                lambda db: store_and_continue(db, job, record)), heartbeat, patience)
            crash_point("runner:stored")
            ended = job
            if wanted:
                tick(fork_runners=False)  # others' jobs, other nodes: the tick launches them
        if ended:
            remove_run_files(ended)
    except StateGone:
        pass  # nowhere to record the job any more, and nobody left to read it
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)


class StateGone(Exception):
    """The state directory has been gone for longer than node_timeout (the site was removed),
    or another state took its place."""


def keep_trying(action, heartbeat, patience):
    """Retry what records a job's end until it works (a full disk, a lost lock...): an exit
    status is never dropped. The heartbeat goes on meanwhile, so the job is not declared lost.
    Only a state directory gone for more than `patience` seconds (node_timeout: by then the
    job would count as lost anyway) ends the retries, with StateGone: no runner lingers for
    ever after its site was removed."""
    delay = 0.5
    gone_since = None
    while True:
        if state_replaced():
            raise StateGone()  # another state took its place: nothing of ours goes there
        try:
            return action()
        except (OSError, QpyError):
            if os.path.isdir(state_dir()):
                gone_since = None
            else:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > patience:
                    raise StateGone()
            if state_replaced():
                raise StateGone()  # (not even a heartbeat goes into another state)
            try:
                open(heartbeat, "a").close()
                os.utime(heartbeat)
            except OSError:
                pass
            time.sleep(delay)
            delay = min(delay * 2, 30)


def supervise(job, pid, stop, wake, settings):
    """Wait for the command, touching the heartbeat file; stop it (SIGTERM to its group, then
    SIGKILL after kill_grace) when the user kills it or its time limit passes; return the
    exit record. At each beat the runner also makes sure its attempt is still the job's: one
    that is not (the job was requeued or ended while this node was out of reach) stops its
    command and returns None, so that nothing of it is recorded."""
    import select
    grace, beat = settings["kill_grace"], settings["heartbeat"]
    heartbeat = run_file(job, "hb")
    poller = select.poll()
    poller.register(wake, select.POLLIN)
    time_up = time.time() + job["time_limit"] if job["time_limit"] else None
    floor = memory_peak(os.getpid()) or 0  # what the spawn left in the command's count
    peak = 0
    stopping = None  # why the job is being stopped, once it is
    hard_kill_at = None
    next_beat = time.time() + beat  # until then the start time stands for it (last_heartbeat)
    while True:
        now = time.time()
        if now >= next_beat:
            if not state_replaced():  # (then the files there are another state's: hands off)
                try:
                    with open(heartbeat, "w"):
                        pass
                except OSError:
                    pass  # (a filesystem hiccup must not take the runner away from its job)
            next_beat = now + beat
            if stopping is None:
                stopping = runner_displaced(job)
        if stop["asked"]:
            stop["asked"] = False
            pool = POOLS.get(job["kind"], {})
            warned = stop["warned"] is not None and \
                now - stop["warned"] < pool.get("warning_window", 0)
            if stopping is None and warned and pool.get("limit_warning"):
                stopping = pool["limit_warning"]  # (finish says 'killed' for a qpy kill)
            elif stopping is None and (pool.get("sigterm_means_kill") or kill_requested(job)):
                stopping = "terminated by SIGTERM"
        if stopping is None and time_up and now >= time_up:
            stopping = "time limit"
        if stopping is not None and hard_kill_at is None:
            signal_group(pid, signal.SIGTERM)
            hard_kill_at = now + grace
        if hard_kill_at is not None and now >= hard_kill_at:
            signal_group(pid, signal.SIGKILL)
        peak = max(peak, memory_peak(pid) or 0)
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        deadline = min(t for t in (next_beat, hard_kill_at, time_up, now + 1) if t is not None)
        if poller.poll(max(0.0, deadline - time.time()) * 1000 + 1):
            os.read(wake, 512)
    signal_group(pid, signal.SIGKILL)  # what the command left behind in its group
    # ru_maxrss counts the runner's own pages, which the spawn borrowed until the exec; below
    # that, trust the samples
    rss = usage.ru_maxrss if usage.ru_maxrss > floor * 1.1 else (peak or None)
    if stopping == "state replaced":
        raise StateGone()  # (its files there are another state's now: touch nothing)
    if stopping == "superseded":
        return None
    return exit_record(job, status, rss, usage.ru_utime + usage.ru_stime, stopping)


def exit_record(job, status, rss, cpu_time, stopping=None):
    """How a job ended: from its command's wait status, peak memory (KB) and CPU time, and
    why qpy stopped it, if it did."""
    record = {"state": state_id(), "attempt": job["attempt"], "ended_at": time.time(),
              "max_rss": rss,
              "cpu_time": cpu_time, "exit_code": None, "signal": None, "reason": None}
    if os.WIFSIGNALED(status):
        record["signal"] = os.WTERMSIG(status)
        record["reason"] = "killed by %s" % signal.Signals(record["signal"]).name
    else:
        record["exit_code"] = os.WEXITSTATUS(status)
        if record["exit_code"]:
            record["reason"] = "exit code %d" % record["exit_code"]
    if stopping:
        record["status"] = "failed"
        record["reason"] = stopping
    else:
        record["status"] = "done" if record["exit_code"] == 0 else "failed"
    return record


def kill_requested(job):
    """Was this job killed with qpy kill? A runner that runs job after job may get the SIGTERM
    meant for the job before (it ended meanwhile): only its own kill stops the job it runs
    now. (In a pool a runner runs one job, and the pool's SIGTERM is for it.)"""
    try:
        return bool(atomically(lambda db: db.execute(
            "SELECT kill_requested FROM jobs WHERE id = ?", (job["id"],)).fetchone()[0],
            write=False))
    except QpyError:
        return True  # the database cannot say: do as asked


def runner_displaced(job):
    """Is the runner's attempt no longer the job's running one? 'state replaced' when its state
    was removed and another made in its place (qpy.id names another), 'superseded' when the
    job's row has moved on (requeued or ended while this node was out of reach), else None.
    A state that cannot be read now says nothing."""
    if state_replaced():
        return "state replaced"
    try:
        row = atomically(lambda db: db.execute("SELECT status, attempt FROM jobs WHERE id = ?",
                                               (job["id"],)).fetchone(), write=False)
    except (QpyError, OSError, sqlite3.Error):
        return None
    if row is None or row["status"] != "running" or row["attempt"] != job["attempt"]:
        return "superseded"
    return None


def memory_peak(pid):
    """The peak resident memory (VmHWM, KB) of a process, or None if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# User commands
# --------------------------------------------------------------------------------------------

def cmd_sub(args):
    """Usage: qpy sub [options] [--stage-in PATH]... [--stage-out GLOB]... <command>...
       qpy sub [options] [--stage-in PATH]... [--stage-out GLOB]... --file PATH

Submit <command> (with its arguments) to your queue. It runs in this directory, with this
environment; its output goes to job_<ID>.out and job_<ID>.err here. Options go before the
command: everything after the command is the command's.

With --file, submit one job for each line of PATH (- for standard input), run by the shell
as a one-word command is; blank lines and lines starting with # are skipped. All take the
same options, and are queued in one transaction: many jobs at once are far quicker so than
a loop of qpy sub.

Options:
  -n N, --cores N       Number of cores [#QPY n_cores; default 1].
  -m M, --mem M         Memory in GB [#QPY mem; default 5, at most a node's memory].
  -g N, --gpus N        Number of GPUs, distinct devices of one node [#QPY gpus; default 0].
  -a EXPR, --node_attr EXPR
                        Node attributes, e.g. 'big and (fast or gpu)' [#QPY node_attr].
  -t TIME, --time TIME  Time limit: MM, MM:SS, HH:MM:SS, D-HH or D-HH:MM:SS [#QPY time];
                        then the job is stopped and failed with reason 'time limit'.
  -N NAME, --name NAME  A name for the job, shown by the checkFMT key %J.
  --after IDS           Start after these jobs have ended, however they ended.
  --afterok IDS         Start after these jobs are done; if one is not, never (undone).
  --afternotok IDS      Start after these jobs have ended without being done.
  --array RANGE         One job per index (1-100 or 1-9,20, and %K for at most K running at
                        once: 1-100%5); each gets QPY_ARRAY_INDEX.
  -D DIR, --chdir DIR   Run in DIR (and write the output there), not in this directory.
  --output PATH         Standard output to PATH, not job_<ID>.out (relative to the job's
                        directory; %j its ID, %a its array index, %A its array's first ID,
                        %x its name, %u your user name, %% a %), as sbatch's.
  --error PATH          Standard error to PATH likewise, not job_<ID>.err.
  -c, --copyScript      Run a copy of the script, so it can be edited meanwhile.
  -o, --originalScript  Run the script itself (overrides copyScripts true).
  --requeue             If the job's node is lost, queue the job again (instead of failed):
                        only for jobs that may safely start again from scratch.
  --stage-in PATH       For a pool that sees none of the lab's files (Slurm through its
                        login node): copy PATH, a file or directory of the job's directory,
                        into the job's directory there first. Give it once per path.
  --stage-out GLOB      Likewise: at the end, copy back what GLOB matches there (relative to
                        the job's directory), with the job's output. Elsewhere both do
                        nothing: the files are shared.
  --parsable            Print only the job's ID (an array's first-last), for scripts:
                        JOB=$(qpy sub --parsable ./simulate.sh).
  --wait                Wait until the job (every job of an array) has ended, and exit with
                        its status, as sbatch --wait: 0 if done, else its exit code (the
                        highest of an array's), 128+N if a signal N ended it, 1 otherwise.
  --file PATH           One job for each line of PATH (- : standard input), see above.
  -h, --help            Show this help.

Examples:
  qpy sub hostname
  qpy sub -n 3 -m 10 ./script.sh
  qpy sub 'for i in 1 2 3; do echo $i; done > f'   (one argument: run by the shell)
  qpy sub --array 1-100%10 -t 30 ./analyse.sh      (100 jobs, 10 at a time, 30 minutes each)
  qpy sub --afterok 12 ./plot.sh
  qpy sub --wait ./simulate.sh && ./analyse.sh
  qpy sub -n 2 --file commands.txt                  (one job for each line)
"""
    import shlex
    if args["--help"]:
        sys.stdout.write(cmd_sub.__doc__)
        return
    argv = args["<command>"]
    if argv and argv[0] == "--":
        argv = argv[1:]
    commands = None
    if args["--file"] is not None:
        for option in ("--array", "--copyScript", "--originalScript"):
            if args[option]:
                raise QpyError("Job rejected due to its options: %s does not go with --file "
                               "(each line is a command for the shell)." % option)
        commands = command_lines(args["--file"])
        argv = [commands[0]]
    if not argv or not argv[0].strip():
        raise QpyError("Job rejected: give the command to run, e.g. qpy sub hostname")
    cwd = job_directory(args["--chdir"])
    outputs = output_patterns(args)
    script = find_script(argv, cwd) if commands is None else None
    if args["--originalScript"] and not script and looks_like_an_output_file(argv, cwd):
        raise QpyError("Job rejected: -o is the manual's --originalScript, so %r was taken "
                       "for the command; Slurm's output file is --output=%s here."
                       % (shown(argv[0].split()[0]), shown(argv[0].split()[0])))
    request = submission_request(args, script)
    staged = staged_files(args, cwd)
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    user = user_name()
    ensure_user_dirs(user)
    token = "%d-%d" % (time.time_ns(), os.getpid())
    # the script is copied before the transaction (which may run twice, and holds the lock)
    copy, run_argv = None, list(argv)
    if script and (request["copy"] if "copy" in request else atomically(
            lambda db: load_config(db, user)["copyScripts"], write=False)):
        copy = copy_script(user, token, script[2])
        run_argv = substitute_script(argv, script, copy)

    def insert(db):
        owner, config, nodes = admit_submitter(db, user)
        job = {"n_cores": request.get("cores", 1), "gpus": request.get("gpus", 0),
               "mem": request.get("mem", min(5.0, max(node_memory(node) for node in nodes))),
               "attributes": combine_attributes(request.get("attributes", ""), config)}
        why = unsatisfiable_reason(job, nodes)
        if why:
            raise QpyError("Job rejected: %s." % why)
        for kind, job_id in request["dependencies"]:
            if not db.execute("SELECT 1 FROM jobs WHERE id = ? UNION ALL SELECT 1 FROM "
                              "history WHERE id = ?", (job_id, job_id)).fetchone():
                raise QpyError("Job rejected: --%s names job %d, which does not exist."
                               % (kind, job_id))
        indices, limit = request["array"]
        job.update(command=command, cwd=cwd, requeue=int(args["--requeue"]),
                   name=args["--name"], time_limit=request.get("time"), array_limit=limit,
                   dependencies=json.dumps(request["dependencies"])
                   if request["dependencies"] else None,
                   outputs=json.dumps(outputs) if outputs else None)
        job_file = {"cwd": cwd, "env": submitted_environment(), "outputs": outputs}
        job_file.update(staged)
        if commands:
            indices = [None] * len(commands)
        else:
            job_file.update(argv=run_argv, script_copy=copy, command=command)
        ids, startable = enqueue(db, owner, job, indices, token, job_file, commands)
        crash_point("sub:spooled")
        return ids, startable

    try:
        ids, startable = atomically(insert)
    except BaseException:
        if copy:
            remove_quietly(copy)  # (a refused job leaves no copy behind)
        raise
    crash_point("sub:committed")
    array = " (array %s)" % args["--array"] if args["--array"] else ""
    if args["--parsable"]:
        print(ids[0] if len(ids) == 1 else "%d-%d" % (ids[0], ids[-1]))
    elif len(ids) == 1:
        print("Job %d received%s." % (ids[0], array))
    else:
        print("Jobs %d-%d received%s." % (ids[0], ids[-1], array))
    sys.stdout.flush()  # (before a --wait: a script reads the ID at once)
    if startable:
        start_tick()
    if args["--wait"]:
        return exit_status_of(wait_until_ended(ids).values())
    return 0


MAX_COMMANDS_FILE = 64 << 20  # bytes read from a --file at most
MAX_COMMAND_LINE = 131071     # bytes of one line: the most Linux passes on as one argument


def command_lines(path):
    """The commands of `qpy sub --file PATH`: its lines but blank and # lines; at most
    MAX_ARRAY of them, from at most MAX_COMMANDS_FILE bytes. QpyError names a bad one."""
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_COMMANDS_FILE + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_COMMANDS_FILE + 1)
    except OSError as e:
        raise QpyError("Job rejected: cannot read %s: %s." % (name, e.strerror or e))
    if len(data) > MAX_COMMANDS_FILE:
        raise QpyError("Job rejected: %s is longer than %d MB; split it." % (
            name, MAX_COMMANDS_FILE >> 20))
    commands = []
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        try:
            text = line.decode()
        except UnicodeDecodeError:
            raise QpyError("Job rejected: line %d of %s is not UTF-8 text." % (number, name))
        if "\0" in text:
            raise QpyError("Job rejected: line %d of %s holds a NUL byte." % (number, name))
        if len(line) > MAX_COMMAND_LINE:
            raise QpyError("Job rejected: line %d of %s is longer than the %d bytes a "
                           "command may have." % (number, name, MAX_COMMAND_LINE))
        if text.strip() and not text.lstrip().startswith("#"):
            commands.append(text)
    if not commands:
        raise QpyError("Job rejected: %s holds no command (only blank and # lines)." % name)
    if len(commands) > MAX_ARRAY:
        raise QpyError("Job rejected: %s holds %d commands, more than %d at once; split it."
                       % (name, len(commands), MAX_ARRAY))
    return commands


def admit_submitter(db, user):
    """Inside a submission's transaction: the submitter's users row, their config and the
    site's nodes, once they may submit here."""
    allowed = [row[0] for row in db.execute("SELECT name FROM site.allowed_users")]
    if allowed and user not in allowed:
        raise QpyError("Job rejected: user %s is not allowed to use this qpy site (the "
                       "administrator adds users to allowed_users)." % user)
    owner = ensure_user(db, user)
    nodes = db.execute("SELECT * FROM nodes").fetchall()
    if not nodes:
        raise QpyError("Job rejected: this qpy site has no nodes; ask the administrator.")
    return owner, load_config(db, user), nodes


# A file of commands (qpy sub --file) is written as job files of this many jobs each: a
# runner reads its own job's file, not all of a submission's lines.
COMMANDS_PER_JOB_FILE = 1000


def enqueue(db, owner, job, indices, token, job_file, commands=None):
    """Inside a submission's transaction: queue the job (a dict of its jobs columns) once for
    each array index (None: no array), or once for each of `commands` (qpy sub --file: the
    job's command that one), at the end of the queue, write its job file
    users/<user>/spool/<token>.job (of commands, <token>-<N>.job for each of their parts),
    which names the IDs it is for, and ask for a tick if it can start. Returns (IDs, whether
    it can start)."""
    user = owner["name"]
    rows = [(None, command) for command in commands] if commands else \
        [(index, job["command"]) for index in indices]
    per_file = COMMANDS_PER_JOB_FILE if commands else len(rows)
    paths = [os.path.join(user_dir(user), "spool", token + (
        "-%d" % part if commands else "") + ".job") for part in range(0, len(rows), per_file)]
    columns = sorted(set(job) - {"command"})
    insert = "INSERT INTO jobs (user, spec, array_index, position, queued_at, command, %s) " \
        "VALUES (?, ?, ?, 0, ?, ?, %s)" % (", ".join(columns), ", ".join("?" * len(columns)))
    values = [job[column] for column in columns]
    now = time.time()
    ids = [db.execute(insert, [user, paths[number // per_file], index, now, command] +
                      values).lastrowid for number, (index, command) in enumerate(rows)]
    db.execute("UPDATE jobs SET position = id, array_of = CASE WHEN array_index IS NULL "
               "THEN NULL ELSE ? END WHERE id BETWEEN ? AND ?", (ids[0], ids[0], ids[-1]))
    startable = not (owner["paused"] or owner["finished"]) and setting(db, "dispatch")
    if startable:
        request_tick(db, user)
    elif owner["paused"] or owner["finished"]:  # no tick: ctrlQueue continue asks for one
        db.execute("UPDATE jobs SET reason = ? WHERE id BETWEEN ? AND ?", (
            "queue paused" if owner["paused"] else "qpy finish", ids[0], ids[-1]))
    # The job file names the IDs it is for: a row forged into the shared DB that points at
    # it (or at anybody else's file) is refused by the runner.
    for part, path in enumerate(paths):
        start = part * per_file
        part_ids = ids[start:start + per_file]
        content = dict(job_file, version=2, ids=[part_ids[0], part_ids[-1]])
        if commands:  # (version 3 only where it is needed: a qpy before it refuses the file)
            content.update(version=3, commands=commands[start:start + per_file])
        write_atomically(path, json.dumps(content).encode())
    return ids, startable


def exit_status_of(ended):
    """One exit status for jobs that have ended (rows, or {'status': 'cleaned'}), as sbatch
    --wait gives: 0 if all are done; else the highest exit code, 128+N for a signal N, 1 for
    an end without either (killed before it ran, undone, a lost runner, cleaned)."""
    codes = [0 if job["status"] == "done" else job.get("exit_code") or (
        128 + job["signal"] if job.get("signal") else 1) for job in ended]
    return min(max(codes, default=0), 255)


def submission_request(args, script):
    """What a submission asks for, from its options and its script's #QPY lines (options win),
    validated: a mistake raises QpyError naming it."""
    if args["--copyScript"] and args["--originalScript"]:
        raise QpyError("Job rejected due to its options: give only one of -c and -o.")
    flags = {}
    for kind, option in (("cores", "--cores"), ("mem", "--mem"), ("gpus", "--gpus"),
                         ("attributes", "--node_attr"), ("time", "--time")):
        if args[option] is not None:
            try:
                flags[kind] = check_request_value(kind, args[option], option)
            except QpyError as e:
                raise QpyError("Job rejected due to its options: %s" % e)
    if args["--copyScript"] or args["--originalScript"]:
        flags["copy"] = bool(args["--copyScript"])
    directives = {}
    if script:
        try:
            with open(script[2], errors="replace") as f:
                directives = parse_directives(f)
        except OSError:
            pass
        except QpyError as e:
            raise QpyError("Job rejected: %s (in %s)" % (e, script[1]))
    request = {**directives, **flags}
    request["dependencies"] = []
    for kind in ("after", "afterok", "afternotok"):
        if args["--" + kind]:
            try:
                ranges = parse_idset(args["--" + kind])
            except ValueError:
                raise QpyError("Job rejected due to its options: --%s needs job IDs, not %r."
                               % (kind, args["--" + kind][:80]))
            if len(request["dependencies"]) + idset_size(ranges) > MAX_DEPENDENCIES:
                raise QpyError("Job rejected due to its options: a job depends on at most %d "
                               "jobs." % MAX_DEPENDENCIES)
            request["dependencies"] += [[kind, job_id] for lo, hi in ranges
                                        for job_id in range(lo, hi + 1)]
    request["array"] = parse_array(args["--array"]) if args["--array"] else ([None], None)
    return request


MAX_STAGED = 100  # paths and globs of one job's --stage-in and --stage-out


def staged_files(args, cwd):
    """{"stage_in": [paths], "stage_out": [globs]} of --stage-in and --stage-out (those
    given), checked: relative to the job's directory and inside it, the paths there."""
    staged = {}
    for key, option in (("stage_in", "--stage-in"), ("stage_out", "--stage-out")):
        given = args.get(option) or []
        if len(given) > MAX_STAGED:
            raise QpyError("Job rejected due to its options: at most %d of %s."
                           % (MAX_STAGED, option))
        for path in given:
            parts = path.split("/")
            if not path or len(path) > 1024 or path.startswith("/") or ".." in parts \
                    or re.search(r"[\0\n]", path):
                raise QpyError("Job rejected due to its options: %s %r: a path inside the "
                               "job's directory, relative to it." % (option, shown(path)))
            if key == "stage_in" and not os.path.lexists(os.path.join(cwd, path)):
                raise QpyError("Job rejected due to its options: %s %s: no such file in %s."
                               % (option, shown(path), shown(cwd)))
        if given:
            staged[key] = list(given)
    return staged


def job_directory(chdir):
    """Where a job runs: --chdir (relative to this directory), else this directory."""
    if chdir is None:
        return working_directory()
    path = os.path.normpath(os.path.join(working_directory(), chdir))
    if not os.path.isdir(path):
        raise QpyError("Job rejected due to its options: --chdir %s is not a directory."
                       % shown(chdir))
    return path


OUTPUT_KEYS = {"j": "id", "a": "array_index", "A": "array_of", "x": "name", "u": "user"}


def output_patterns(args):
    """{'out': pattern, 'err': pattern} of --output and --error (those given), checked."""
    patterns = {}
    for kind, option in (("out", "--output"), ("err", "--error")):
        pattern = args[option]
        if pattern is None:
            continue
        if not pattern or len(pattern) > 1024 or "\0" in pattern or \
                re.search(r"%[^%" + "".join(OUTPUT_KEYS) + "]|%$", pattern.replace("%%", "")):
            raise QpyError("Job rejected due to its options: %s %r: a path, with %%j %%a %%A "
                           "%%x %%u or %%%% for the job's ID, array index, array, name, user "
                           "or a %%." % (option, shown(pattern)))
        patterns[kind] = pattern
    return patterns


def output_path(job, kind, patterns, cwd):
    """Where a job's standard output ('out') or error ('err') goes: its --output or --error
    pattern, else job_<ID>.out or .err; relative to its directory."""
    pattern = (patterns or {}).get(kind) or "job_%j." + kind
    def value(match):
        if match.group(1) == "%":
            return "%"
        found = job[OUTPUT_KEYS[match.group(1)]] if OUTPUT_KEYS[match.group(1)] in job.keys() \
            else None
        return str(found if found is not None else job["id"] if match.group(1) == "A" else "")
    return os.path.join(cwd, re.sub(r"%([%" + "".join(OUTPUT_KEYS) + "])", value, pattern))


def looks_like_an_output_file(argv, cwd):
    """Slurm's -o out.txt typed here: the first word names no command or file, and has the
    look of an output file."""
    import shutil
    first = argv[0].split()[0] if argv[0].split() else ""
    return bool(re.search(r"\.(out|err|txt|log)$|%j", first)) and not shutil.which(first) \
        and not os.path.exists(os.path.join(cwd, first))


def parse_array(text):
    """'1-100%5' -> ([1, ..., 100], 5): the indices, and how many may run at once."""
    indices, _, limit = text.partition("%")
    try:
        ranges = parse_idset(indices)
        if limit and (not limit.isdigit() or int(limit) < 1):
            raise ValueError
    except ValueError:
        raise QpyError("Job rejected due to its options: --array needs indices like 1-100 or "
                       "1-100%%5, not %r." % text)
    if idset_size(ranges) > MAX_ARRAY or (limit and len(limit) > 9):
        raise QpyError("Job rejected due to its options: an array has at most %d jobs."
                       % MAX_ARRAY)
    values = sorted({i for lo, hi in ranges for i in range(lo, hi + 1)})
    return values, int(limit) if limit else None


def submitted_environment():
    """The environment a job inherits: the submitter's, without what qpy set for the job that
    submits it (when qpy sub runs inside a job): its QPY_ variables and thread counts."""
    env = dict(os.environ)
    for name in env.get("QPY_SET_VARS", "").split(","):
        env.pop(name, None)
    for name in [name for name in env if name.startswith("QPY_")]:
        if name != "QPY_STATE":
            del env[name]
    return env


def copy_script(user, token, path):
    import shutil
    copy = os.path.join(user_dir(user), "scripts", token + "." + os.path.basename(path))
    shutil.copy2(path, copy)
    return copy


def substitute_script(argv, script, copy):
    """The command with the script's word replaced by its copy."""
    import shlex
    index, word, _ = script
    if len(argv) > 1:
        return argv[:index] + [copy] + argv[index + 1:]
    return [argv[0].replace(word, shlex.quote(copy), 1)]


def working_directory():
    """The directory the command was run in (which a user may have removed meanwhile)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise QpyError("This directory no longer exists: cd to one that does.")


def selection(words, allowed_statuses, command):
    """Split check/kill/clean arguments into statuses, directories and ID ranges."""
    statuses, dirs, ranges = set(), set(), []
    for word in words:
        if word in allowed_statuses:
            statuses.add(word)
        elif os.path.isdir(word):
            dirs.add(os.path.normpath(os.path.join(working_directory(), word)))
        else:
            try:
                ranges += parse_idset(word)
            except ValueError:
                if command == "check":
                    raise QpyError("Unknown pattern for checking jobs: %s" % shown(word))
                raise QpyError("Range with wrong format or invalid status: %s (use job IDs like "
                               "100-105,108, %s, or a directory)" % (
                                   shown(word), ", ".join(allowed_statuses)))
    return statuses, dirs, ranges


def nothing_to_do(db, user, ranges, verb):
    """The error for a selection that matched none of the user's jobs: name another user's job
    if that is what was asked for, so nobody wonders why it was not touched."""
    for lo, hi in ranges:
        row = db.execute("SELECT id FROM jobs WHERE id BETWEEN ? AND ? AND user != ? LIMIT 1",
                         (lo, hi, user)).fetchone()
        if row:
            return QpyError("Job %d is not yours: you can only %s your own jobs." % (row[0], verb))
    return QpyError("Nothing to do: required jobs not found.")


def selected(job, statuses, dirs, ranges):
    """OR semantics: a job is selected when it matches any status, directory or ID."""
    return ("all" in statuses or user_status(job) in statuses or job["cwd"] in dirs
            or in_idset(job["id"], ranges))


def user_jobs(db, user, statuses=None):
    """A user's jobs in queue order: all of them, or those with these (DB) statuses. For the
    live ones the '+' keeps SQLite on the index of live jobs, not on the user's history."""
    if statuses is None:
        return db.execute("SELECT * FROM jobs WHERE user = ? ORDER BY position, id",
                          (user,)).fetchall()
    listed = ",".join("'%s'" % status for status in statuses)
    if set(statuses) <= set(LIVE):
        return db.execute("SELECT * FROM jobs WHERE " + LIVE_SQL + " AND status IN (%s) AND "
                          "+user = ? ORDER BY position, id" % listed, (user,)).fetchall()
    return db.execute("SELECT * FROM jobs WHERE status IN (%s) AND user = ? ORDER BY position, id"
                      % listed, (user,)).fetchall()


def cmd_check(args):
    """Usage: qpy check [--json | --long | --format=<pattern>] [<filter>...]

List your jobs: all of them, or those matching any filter (a status, a directory, job IDs or
ranges such as 100-120 130-135,137). The layout is the checkFMT pattern (qpy config), or
the one of --format for this command only (as squeue -o); a table with -l (--long), as
squeue -l: ID, name, status, node, elapsed time, exit and reason; a JSON list with every
field of each job with --json (see the README). Filters that match none of your jobs: exit
status 1, as for kill and clean.

Statuses: queue running done failed killed undone.

Options:
  -l, --long            A table, as squeue -l.
  --format=<pattern>    A checkFMT pattern for this command, e.g. '%j %s\\n'.
  --json                JSON, every field.

Examples:
  qpy check running
  qpy check .
  qpy check 100-120 130-135,137
  qpy check --json failed
"""
    statuses, dirs, ranges = selection(args["<filter>"], USER_STATUSES, "check")
    user = user_name()
    live_only = statuses and statuses <= {"queue", "running"} and not dirs and not ranges
    # (users see a claimed job, 'starting', as queued)
    wanted = [db_status for status in statuses or () for db_status in
              {"queue": ("queue", "starting"), "running": ("running",)}.get(status, ())]

    def read(db):  # (the jobs that ended, most of a long history, in pages after it)
        jobs = user_jobs(db, user, wanted if live_only else LIVE)
        config = load_config(db, user)
        paused = db.execute("SELECT paused FROM users WHERE name = ?", (user,)).fetchone()
        notes = {}
        if "%K" in config["checkFMT"] or args["--json"]:
            for row in db.execute("SELECT n.* FROM notes n JOIN jobs j ON j.id = n.job_id "
                                  "WHERE j.user = ? ORDER BY added_at", (user,)):
                notes[row["job_id"]] = notes.get(row["job_id"], "") + "\n" + row["text"]
        return jobs, config, bool(paused and paused["paused"]), notes, tick_overdue(db, jobs)

    jobs, config, paused, notes, overdue = atomically(read, write=False)
    if not live_only:  # (a job that ended since the read above: as it ended)
        ended = {job["id"]: job for job in read_in_pages(
            "jobs", "user = ? AND " + FINISHED_SQL, [user], ("position", "id"))}
        jobs = sorted([job for job in jobs if job["id"] not in ended] + list(ended.values()),
                      key=lambda job: (job["position"], job["id"]))
    if args["--format"] is not None:
        config = dict(config, checkFMT=decode_escapes(args["--format"]))
    if overdue:
        start_tick()
    note = errors_note(user)
    if note:
        sys.stderr.write(note + "\n")
    if args["<filter>"]:
        jobs = [job for job in jobs if selected(job, statuses, dirs, ranges)]
        if not jobs:  # (as kill and clean, and grep: a selection that matches nothing)
            raise atomically(lambda db: nothing_to_do(db, user, ranges, "check"), write=False)
    jobs = with_commands_of_job_files(jobs, user)
    if args["--json"]:
        print(json.dumps([job_record(job, notes.get(job["id"], "")) for job in jobs], indent=1))
        return
    if args["--long"]:
        sys.stdout.write(long_layout(jobs, time.time()))
        return
    coloured = (config["colour"] and sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    scheme = dict(STATUS_COLOURS, **dict(zip(STATUS_COLOURS, config["coloursScheme"])))
    now = time.time()
    out = []
    for job in jobs:
        text = format_job(config["checkFMT"], job, now, notes.get(job["id"], ""))
        out.append(colour(text, scheme[user_status(job)]) if coloured else text)
    if paused:
        out.append("Job submission is paused.\n")
    sys.stdout.write("".join(out))


def long_layout(jobs, now):
    """`check -l`: one line per job, in columns, as squeue -l."""
    lines = ["%6s %-12s %-7s %-12s %9s %-7s %s\n" % ("ID", "NAME", "STATUS", "NODE", "ELAPSED",
                                                     "EXIT", "REASON")]
    for job in jobs:
        status = user_status(job)
        lines.append("%6d %-12s %-7s %-12s %9s %-7s %s\n" % (
            job["id"], shown(job["name"] or "-", 12), status,
            shown(job["node"] or "-", 12) if status != "queue" else "-",
            format_span(run_time(job, now)) if run_time(job, now) is not None else "-",
            exit_text(job) if exit_text(job) != "None" else "-", job["reason"] or ""))
    return "".join(lines)


def with_commands_of_job_files(jobs, user):
    """The jobs, each live one with the command its job file holds, which is what runs: the
    row is the whole group's to write, the job file in the owner's spool theirs alone (so
    a command changed in the row by another member shows as what it is not). One read per
    job file: an array's jobs share theirs."""
    files = {}  # job file: what it holds (None: unreadable)
    shown = []
    for job in jobs:
        if is_live(job) and in_own_folder(user, "spool", job["spec"]):
            if job["spec"] not in files:
                try:
                    with open(job["spec"]) as f:
                        files[job["spec"]] = json.load(f)
                except (OSError, ValueError):
                    files[job["spec"]] = None
            try:
                command = job_file_for(files[job["spec"]], job["id"]).get("command")
            except (KeyError, IndexError, TypeError, AttributeError):
                command = None  # (none there: an older file, or not one of qpy's)
            if command is not None and command != job["command"]:
                job = dict(job, command=command)
        shown.append(job)
    return shown


def cmd_history(args):
    """Usage: qpy history [--json] [--since=<when>] [--until=<when>] [--name=<pattern>]
                    [--user=<user> | --all] [<filter>...]

List your jobs that ended, cleaned or not (as Slurm's sacct), in the order they ended: ID,
name, status, exit, node, cores, start, elapsed time, memory peak, CPU time and command.
Filters as for check (any one matches): done, failed, killed, undone, a directory, job IDs
or ranges. --since and --until take a date (2026-11-30), a date and time (2026-11-30 14:00)
or a time ago (30m, 12h, 7d): the job's end counts. --name: its name (qpy sub -N), with * and
? as in the shell. The site's administrator may give --user or --all. With --json, a JSON
list of the jobs, as check --json gives them. Nothing matched: exit status 1.

Examples:
  qpy history --since 7d failed
  qpy history --json --since 2026-11-01 --until 2026-12-01
"""
    statuses, dirs, ranges = selection(args["<filter>"], FINISHED, "history")
    since, until = parse_when(args["--since"]), parse_when(args["--until"])
    user = args["--user"] or user_name()
    if (args["--all"] or user != user_name()) and not is_administrator(state_dir()):
        raise QpyError("Only the site's administrator, %s, sees other users' history (leave "
                       "out --user and --all)." % administrator_name(state_dir()))
    where, params = [], []
    if not args["--all"]:
        where.append("user = ?")
        params.append(user)
    for clause, value in (("ended_at >= ?", since), ("ended_at < ?", until),
                          ("name GLOB ?", args["--name"])):
        if value is not None:
            where.append(clause)
            params.append(value)
    any_of = ["status = ?"] * len(statuses) + ["cwd = ?"] * len(dirs) + \
        ["id BETWEEN ? AND ?"] * len(ranges)
    if any_of:
        where.append("(%s)" % " OR ".join(any_of))
        params += sorted(statuses) + sorted(dirs) + [end for pair in ranges for end in pair]
    jobs = read_in_pages("history", " AND ".join(where), params, ("ended_at", "id"))
    if not jobs and (where != ["user = ?"]):
        raise QpyError("No job in the history matches.")
    if args["--json"]:
        print(json.dumps([job_record(job) for job in jobs], indent=1))
        return
    lines = ["%6s %-12s %-7s %-7s %-12s %5s %-19s %9s %9s %9s  %s" % (
        "ID", "NAME", "STATUS", "EXIT", "NODE", "CORES", "START", "ELAPSED", "MEMORY", "CPU",
        "COMMAND")]
    for job in jobs:
        lines.append("%6d %-12s %-7s %-7s %-12s %5d %-19s %9s %9s %9s  %s" % (
            job["id"], shown(job["name"] or "-", 12), job["status"],
            exit_text(job) if exit_text(job) != "None" else "-", shown(job["node"] or "-", 12),
            job["n_cores"], format_time(job["started_at"]) if job["started_at"] else "-",
            format_span(run_time(job, None)) if job["started_at"] else "-",
            format_memory(job["max_rss"]) if job["max_rss"] else "-",
            format_span(job["cpu_time"]) if job["cpu_time"] is not None else "-",
            shown(job["command"], 60)))
    print("\n".join(lines))


def parse_when(text):
    """A point in time for --since and --until (None: not given): a date, a date and time,
    or a time ago (30m, 12h, 7d, 2w)."""
    if text is None:
        return None
    from datetime import datetime
    ago = re.fullmatch(r"(\d{1,7})([smhdw])", text.strip())
    if ago:
        return time.time() - int(ago.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400,
                                                  "w": 604800}[ago.group(2)]
    for layout in ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M",
                   "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text.strip(), layout).timestamp()
        except ValueError:
            continue
    raise QpyError("A time for --since or --until is a date (2026-11-30), a date and time "
                   "(2026-11-30 14:00) or a time ago (30m, 12h, 7d), not %r." % shown(text))


def job_record(job, notes=""):
    """One job for `check --json`: a stable schema (times in Unix seconds, null when unset)."""
    return {
        "id": job["id"], "name": job["name"], "user": job["user"], "status": user_status(job),
        "reason": job["reason"], "command": job["command"], "directory": job["cwd"],
        "node": job["node"] if user_status(job) != "queue" else None,
        "cores": job["n_cores"], "memory_gb": job["mem"], "gpus": job["gpus"],
        "gpu_ids": [int(i) for i in job["gpu_ids"].split(",")] if job["gpu_ids"] else [],
        "attributes": job["attributes"], "time_limit_s": job["time_limit"],
        "dependencies": json.loads(job["dependencies"]) if job["dependencies"] else [],
        "array_of": job["array_of"], "array_index": job["array_index"],
        "array_limit": job["array_limit"], "requeue": bool(job["requeue"]),
        "queued_at": job["queued_at"], "started_at": job["started_at"],
        "ended_at": job["ended_at"], "exit_code": job["exit_code"], "signal": job["signal"],
        "max_rss_kb": job["max_rss"], "cpu_time_s": job["cpu_time"], "attempts": job["attempt"],
        "external_id": job["external_id"],
        "notes": notes.strip("\n"),
    }


def cmd_hold(args):
    """Usage: qpy hold <jobs>...

Keep queued jobs from starting until qpy release, as Slurm's scontrol hold does: job IDs or
ranges, a directory, or all (your queued jobs). A job that runs already goes on. The manual's
ctrlQueue pause holds the whole queue.

Example:
  qpy hold 12-14
"""
    hold_or_release(args["<jobs>"], True)


def cmd_release(args):
    """Usage: qpy release <jobs>...

Let jobs that qpy hold kept back start again: job IDs or ranges, a directory, or all.

Example:
  qpy release all
"""
    hold_or_release(args["<jobs>"], False)


def hold_or_release(words, hold):
    statuses, dirs, ranges = selection(words, ("all",), "hold" if hold else "release")
    user = user_name()

    def mark(db):
        ids = [job["id"] for job in user_jobs(db, user, ("queue",))
               if selected(job, statuses, dirs, ranges) and job["held"] != hold]
        if not ids:
            raise nothing_to_do(db, user, ranges, "hold" if hold else "release")
        db.execute("UPDATE jobs SET held = ?, reason = ? WHERE status = 'queue' AND id IN "
                   "(SELECT value FROM json_each(?))",
                   (int(hold), None, json.dumps(ids)))
        if not hold:
            request_tick(db, user)
        return len(ids)
    count = atomically(mark)
    print("%s %s." % (plural(count, "job"), "held" if hold else "released"))
    if not hold:
        start_tick()


def cmd_rerun(args):
    """Usage: qpy rerun [--parsable] <jobs>...

Submit ended jobs again, each as a new job at the end of your queue with the command,
directory, environment and requests it had (cores, memory, GPUs, node attributes, time
limit, name, output paths, --requeue), as pueue restart does: job IDs or ranges, a status
(done, failed, killed, undone), a directory, or all. The jobs a job waited for (--after...)
are not waited for again. The originals stay as they ended. A job can be run again until qpy
clean removes it (its job file, which holds its command, is kept until then).

Options:
  --parsable  Print only the new jobs' IDs, one per line.

Examples:
  qpy rerun 12
  qpy rerun failed
"""
    import shlex
    statuses, dirs, ranges = selection(args["<jobs>"], FINISHED + ("all",), "rerun")
    user = user_name()
    ensure_user_dirs(user)

    def ended_jobs(db):
        jobs = [job for job in user_jobs(db, user, FINISHED)
                if selected(job, statuses, dirs, ranges)]
        if not jobs:
            raise not_to_rerun(db, user, ranges)
        return sorted(jobs, key=lambda job: job["id"])
    jobs = atomically(ended_jobs, write=False)
    # Each job's own file, never its row, says what it ran (the row is the group's to write),
    # read and its script copied again before the transaction, as sub does.
    runs, copies = [], []
    try:
        for number, job in enumerate(jobs):
            try:
                job_file = read_job_file(job)
            except QpyError as e:
                raise QpyError("Job %d cannot be run again: %s (it ended before qpy kept "
                               "the command of ended jobs?)." % (job["id"], e))
            token = "%d-%d-%d" % (time.time_ns(), os.getpid(), number)
            argv, old_copy = list(job_file["argv"]), job_file.get("script_copy")
            if old_copy:
                copies.append(copy_script(user, token, old_copy))
                argv = [word.replace(old_copy, copies[-1]) for word in argv]
            runs.append((job, token, dict(job_file, argv=argv, script_copy=old_copy and
                                          copies[-1])))

        def insert(db):
            owner, _, nodes = admit_submitter(db, user)
            received = []
            for job, token, job_file in runs:
                again = {column: job[column] for column in (
                    "n_cores", "mem", "gpus", "attributes", "requeue", "name", "time_limit",
                    "array_limit")}
                why = unsatisfiable_reason(again, nodes)
                if why:
                    raise QpyError("Job %d cannot be run again: %s." % (job["id"], why))
                outputs = job_file.get("outputs")
                again.update(command=job_file.get("command") or shlex.join(job_file["argv"]),
                             cwd=job_file["cwd"], array_limit=None,
                             outputs=json.dumps(outputs) if outputs else None)
                ids, startable = enqueue(db, owner, again, [job["array_index"]], token,
                                         job_file)
                received.append((ids[0], job["id"]))
            return received, startable
        received, startable = atomically(insert)
    except BaseException:
        remove_quietly(*copies)
        raise
    for new, old in received:
        print(new if args["--parsable"] else "Job %d received: a rerun of job %d." % (new, old))
    if startable:
        start_tick()


def not_to_rerun(db, user, ranges):
    """The error for a rerun that selected no ended job: say why for a job named alone."""
    for lo, hi in ranges:
        if lo != hi:
            continue
        row = db.execute("SELECT status FROM jobs WHERE id = ? AND user = ?",
                         (lo, user)).fetchone()
        if row is not None:
            return QpyError("Job %d has not ended: qpy rerun runs ended jobs again (qpy kill "
                            "%d first to stop it)." % (lo, lo))
        if db.execute("SELECT 1 FROM history WHERE id = ? AND user = ?", (lo, user)).fetchone():
            return QpyError("You have no ended job %d in the queue (a cleaned job's command is "
                            "not kept: qpy history %d shows what it was)." % (lo, lo))
    return nothing_to_do(db, user, ranges, "rerun")


def cmd_wait(args):
    """Usage: qpy wait [<jobs>...]

Wait until these jobs (IDs or ranges) have ended. Without IDs: all your queued and running
jobs, and those that ended since a wait last reported them (so a job that failed before the
wait began counts too). The exit status is 0 if they all ended done, 1 if any failed, was
killed or undone. Works from a job script too (a job never waits for itself).

Example:
  qpy sub ./simulate.sh && qpy wait && ./analyse.sh
"""
    ranges = ids_of(args["<jobs>"])
    user = user_name()
    me = os.environ.get("QPY_JOB_ID")

    def chosen(db):
        if not ranges:
            rows = db.execute("SELECT id FROM jobs WHERE user = ? AND (waited = 0 OR "
                              + LIVE_SQL + ") ORDER BY position, id", (user,)).fetchall()
        else:
            rows = [row for lo, hi in ranges for row in db.execute(
                "SELECT id FROM jobs WHERE id BETWEEN ? AND ? AND user = ?", (lo, hi, user))]
            if not rows:
                raise nothing_to_do(db, user, ranges, "wait for")
        return [row[0] for row in rows if str(row[0]) != me]

    ended = wait_until_ended(atomically(chosen, write=False))
    atomically(lambda db: db.execute(  # (reported: the next bare wait does not cover them)
        "UPDATE jobs SET waited = 1 WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(ended)),)))
    counts = {}
    for job in ended.values():
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    print("%s ended%s." % (plural(len(ended), "job"), ": " + ", ".join(
        "%d %s" % (n, s) for s, n in sorted(counts.items())) if counts else ""))
    return 0 if all(job["status"] == "done" for job in ended.values()) else 1


def wait_until_ended(ids):
    """Wait, reading the DB less and less often (up to every 2 s), until these jobs have
    ended; {id: its row as a dict}: from the history for a job cleaned meanwhile, or
    {'status': 'cleaned'} for one that is not there either (pruned)."""
    def rows(db):
        found = {}
        for table in ("history", "jobs"):  # (the live row wins)
            found.update((row["id"], dict(row)) for row in db.execute(
                "SELECT id, status, exit_code, signal FROM %s WHERE id IN (SELECT value FROM "
                "json_each(?))" % table, (json.dumps(ids),)))
        return {job_id: found.get(job_id, {"status": "cleaned"}) for job_id in ids}
    delay = 0.1
    while True:
        ended = atomically(rows, write=False)
        if all(job["status"] in FINISHED + ("cleaned",) for job in ended.values()):
            return ended
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def ids_of(words):
    """Job IDs and ranges given to a command, as ranges."""
    ranges = []
    for word in words:
        try:
            ranges += parse_idset(word)
        except ValueError:
            raise QpyError("Range with wrong format: %s (use job IDs like 100-105,108)"
                           % shown(word))
    return ranges


def cmd_tail(args):
    """Usage: qpy tail [-e] <job>

Print the job's standard output as it grows (like tail -f), from the start and until the job
ends, waiting for a queued job to start; -e: its standard error too (on stderr). The exit
status is then 0 if it is done, 1 otherwise.

Options:
  -e, --stderr  Follow job_<ID>.err as well.
"""
    if not args["<job>"].isdigit():
        raise QpyError("Give a job ID to tail, not %r." % args["<job>"])
    job_id, user = int(args["<job>"]), user_name()

    def read(db):
        job = db.execute("SELECT id, status, cwd, outputs, array_index, array_of, name, user "
                         "FROM jobs WHERE id = ? AND user = ?", (job_id, user)).fetchone()
        if job is None:
            raise nothing_to_do(db, user, [(job_id, job_id)], "tail")
        return job
    job = atomically(read, write=False)
    followed = {"out": sys.stdout} if not args["--stderr"] else {"out": sys.stdout,
                                                                  "err": sys.stderr}
    try:  # (the row's: it only says which of the user's own files to read)
        patterns = json.loads(job["outputs"]) if job["outputs"] else None
    except ValueError:
        patterns = None
    offsets = dict.fromkeys(followed, 0)
    while True:
        ended = job["status"] in FINISHED
        for kind, stream in followed.items():
            try:
                with open(output_path(job, kind, patterns, job["cwd"]), "rb") as f:
                    f.seek(offsets[kind])
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                stream.buffer.write(chunk)
                stream.flush()
                offsets[kind] += len(chunk)
        if ended:
            return 0 if job["status"] == "done" else 1
        time.sleep(0.2)
        job = atomically(read, write=False)


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def cmd_kill(args):
    """Usage: qpy kill <jobs>...

Kill jobs: queued ones become undone (they never run), running ones are stopped (SIGTERM to
their process group, SIGKILL after the grace time) and become killed. <jobs> are job IDs or
ranges, a status (queue, running), a directory, or all. There is no confirmation.

Examples:
  qpy kill 100-105 108
  qpy kill queue
  qpy kill all
"""
    statuses, dirs, ranges = selection(args["<jobs>"], ("queue", "running", "all"), "kill")
    user = user_name()

    def mark(db):
        removed, to_signal = 0, []
        for job in user_jobs(db, user, LIVE):
            if not selected(job, statuses, dirs, ranges):
                continue
            if job["status"] == "running":
                db.execute("UPDATE jobs SET kill_requested = 1 WHERE id = ?", (job["id"],))
                to_signal.append(dict(job))
            else:
                undo(db, job, "killed while queued")
                removed += 1
                if job["status"] == "starting":  # (in a pool already: cancelled there too)
                    to_signal.append(dict(job))
        if not removed and not to_signal:
            raise nothing_to_do(db, user, ranges, "kill")
        return removed, to_signal

    removed, to_signal = atomically(mark)
    if removed:
        print("%s removed from the queue." % plural(removed, "job"))
    running = [job for job in to_signal if job["status"] == "running"]
    if running:
        print("%s will be killed." % plural(len(running), "job"))
    sys.stdout.flush()
    signal_jobs(to_signal)


def signal_jobs(jobs):
    """Ask the runners of these jobs to stop them: directly here, by ssh on other nodes, by
    the pool's cancel in a pool (the runner gets the pool's SIGTERM). A job whose runner is
    gone, or whose node cannot be reached, is ended by the tick (its kill request is
    recorded); a cancel the pool did not take is sent again by a later tick."""
    nodes = {node["name"]: node for node in atomically(
        lambda db: db.execute("SELECT name, kind, address, options FROM nodes").fetchall(),
        write=False)}
    pooled = [job for job in jobs if job["node"] in nodes and nodes[job["node"]]["kind"] in POOLS
              and (job["external_id"] or not POOLS[nodes[job["node"]]["kind"]]["runner"])]
    hosts = [job for job in jobs if job not in pooled and job["status"] == "running"]

    def address(job):  # (a job's node may have been removed meanwhile)
        return nodes[job["node"]]["address"] if job["node"] in nodes else job["node"]
    local = [job for job in hosts if is_local(address(job))]
    remote = [job for job in hosts if job not in local]
    lost = [job for job in local if not signal_runner(job)]
    results = run_on_nodes([(address(job), qpy_on_node("_signal", job["id"]), None)
                            for job in remote])
    cancelled = cancel_or_owe([dict(job, kind=nodes[job["node"]]["kind"],
                                    options=nodes[job["node"]]["options"]) for job in pooled])
    if lost or any(result[0] != 0 for result in results):
        tick()
    elif not cancelled:  # the pool did not answer (nor will the tick's follow now): no waiting
        atomically(request_tick)
        start_tick()


def is_a_runner(pid):
    """Is process `pid` a qpy runner (named so by runner()), not any other process of the
    user, which a row changed by another member could name?"""
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip() == "qpy-runner"
    except OSError:
        return False


def signal_runner(job):
    """On the job's node: SIGTERM its runner, which stops the job and records it. If the runner
    is gone, stop what is left of the job; return False then."""
    if process_alive(job["runner_pid"], job["runner_boot"]) and is_a_runner(job["runner_pid"]):
        os.kill(job["runner_pid"], signal.SIGTERM)
        return True
    stop_orphans(job)
    return False


def cmd_clean(args):
    """Usage: qpy clean <jobs>...

Remove finished jobs (done, failed, killed, undone) from the list; queued and running jobs are
never touched, nor are output files. <jobs> are job IDs or ranges, a status, a directory, or
all.

Examples:
  qpy clean 100-200
  qpy clean undone
  qpy clean all
"""
    statuses, dirs, ranges = selection(args["<jobs>"], FINISHED + ("all",), "clean")
    user = user_name()

    def remove(db):
        jobs = [job for job in user_jobs(db, user, FINISHED)
                if selected(job, statuses, dirs, ranges)]
        if not jobs:
            raise nothing_to_do(db, user, ranges, "clean")
        ids = [job["id"] for job in jobs]
        for job_id in ids:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM notes WHERE job_id = ?", (job_id,))
        forget_job_files(db, user, [job["spec"] for job in jobs])
        after_commit(remove_batch_outputs, user, ids)
        return len(ids)

    count = atomically(remove)
    print("%s removed." % plural(count, "finished job"))


def cmd_status(args):
    """Usage: qpy status [--json]

Show the users (cores in use, queued jobs) and the nodes (cores, memory and GPUs in use and in
all; down or drained), as the original qpy did. With --json, the same as a JSON object.
"""
    report = atomically(site_report, write=False)
    if args.get("--json"):
        print(json.dumps(report, indent=1))
        return
    line, double = "-" * 88 + "\n", "=" * 88 + "\n"
    out = ["user                          using cores        queue size\n", line]
    for user in report["users"]:
        out.append("%-32s %-5d%s%-5d\n" % (user["user"], user["cores"], " " * 13, user["queued"]))
    if not report["users"]:
        out.append("No users.\n")
    out += [double,
            "                                   cores           memory (GB)          GPUs\n",
            "node                            used  total      used    total     used  total\n",
            line]
    for node in report["nodes"]:
        notes = pool_note(node) + (" (%s)" % node["state"] if node["state"] != "up" else "")
        attributes = " [%s]" % ",".join(node["attributes"]) if node["attributes"] else ""
        label = node["name"] + (attributes if len(node["name"] + attributes + notes) <= 30
                                else "") + notes  # its attributes if the column has room
        out.append("%-30s %5d %5d   %7s  %7s    %5d  %5d\n" % (
            (label, node["cores_used"], node["cores"]) + memory_cells(node)
            + (node["gpus_used"], node["gpus"])))
    if not report["nodes"]:
        out.append("No nodes.\n")
    out.append(double)
    out.append("There are %d out of a total of %d cores being used.\n"
               % (report["cores_used"], report["cores"]))
    out += core_bars(report["nodes"], sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    sys.stdout.write("".join(out))


BAR_WIDTH = 40
STATE_COLOURS = {"up": "green", "drained": "yellow", "down": "red"}


def core_bars(nodes, coloured):
    """The picture of `qpy status` (and of the status page): a bar of used cores per node,
    '#' used and '.' free, coloured by the node's state on a terminal."""
    if not nodes:
        return []
    width = max(len(node["name"]) for node in nodes)
    lines = ["\nCores in use:\n"]
    for node in nodes:
        used = min(BAR_WIDTH, round(BAR_WIDTH * node["cores_used"] / node["cores"])
                   if node["cores"] else 0)
        if node["cores_used"] and not used:
            used = 1  # (a core in use always shows)
        bar = "#" * used
        if coloured:
            bar = colour(bar, STATE_COLOURS.get(node["state"], "white"))
        state = "" if node["state"] == "up" else "  " + node["state"]
        lines.append("  %-*s [%s%s] %d/%d%s\n" % (width, node["name"], bar, "." * (BAR_WIDTH - used),
                                                 node["cores_used"], node["cores"], state))
    return lines


def pool_note(node):
    """What `status` says of a pool (a node of site_report): its jobs and max_jobs."""
    if node["kind"] not in POOLS:
        return ""
    return " (%s: %d%s jobs)" % (POOLS[node["kind"]]["name"], node["jobs"], " of %d"
                                 % node["max_jobs"] if node["max_jobs"] else "")


def memory_cells(node):
    """A node's memory in use and in all (of site_report), as shown: '-' and '?' if unknown."""
    if node["memory_gb"] is None:
        return "-", "?"
    return "%.1f" % node["memory_used_gb"], "%.1f" % node["memory_gb"]


def site_report(db):
    """The users and nodes of `qpy status`, as plain data (the --json schema): a user's cores
    are those of their running jobs, a node's used resources those its running and claimed
    jobs hold."""
    counts = site_counts(db)
    nodes = db.execute("SELECT * FROM nodes ORDER BY position, name").fetchall()
    live = live_jobs(db, None, RESERVING)
    none = {"cores": 0, "queued": 0}
    users = [{"user": name, "cores": counts.get(name, none)["cores"],
              "queued": counts.get(name, none)["queued"]}
             for name in dict.fromkeys(share_holders(db) + sorted(counts))]
    free = free_resources(nodes, live)
    holding = {}  # node: how many jobs run or start there
    for job in live:
        holding[job["node"]] = holding.get(job["node"], 0) + 1
    rows = []
    for node in nodes:
        left = free[node["name"]]
        rows.append({
            "name": node["name"], "kind": node["kind"], "address": node["address"],
            "state": node["state"],
            "state_reason": node["state_reason"],
            "attributes": [a for a in node["attributes"].split(",") if a],
            "cores": node["cores"], "cores_used": node["cores"] - left["cores"],
            "memory_gb": node["mem"],
            "memory_used_gb": None if node["mem"] is None else node["mem"] - left["mem"],
            "gpus": node["gpus"], "gpus_used": node["gpus"] - left["gpus"],
            "max_jobs": node["max_jobs"],  # (a Slurm pool: its qpy jobs, at most max_jobs)
            "jobs": holding.get(node["name"], 0),
            # (attempts given up with it whose processes, or Slurm job, are still to stop)
            "leftovers": len(leftover_entries(node["lost"]))})
    return {"users": users, "nodes": rows, "cores": sum(n["cores"] for n in rows),
            "cores_used": sum(n["cores_used"] for n in rows)}


def cmd_config(args):
    """Usage: qpy config [<key> [<value>...]]

Without arguments, show your settings. With a key, change it; 'default' restores its default.

Keys:
  checkFMT '<pattern>'     layout of check; keys %j %s %c %d %n %N %R %Q %S %E, and
                           %a %m %A %x (exit code) %r (reason) %K (notes) %I (the job's
                           ID in its pool, Slurm's); \\n \\t allowed
  colour true|false        colour the output of check (only on a terminal)
  coloursScheme <queue> <running> <done> <killed> <undone> [<failed>]
                           from grey red green yellow blue magenta cyan white
  copyScripts true|false   run copies of submitted scripts
  defaultAttr [<expr>]     node attributes for jobs submitted without -a
  orAttr [<expr>]          every job may also run where <expr> holds
  andAttr [<expr>]         every job must also run where <expr> holds

Examples:
  qpy config checkFMT '%j: %s\\n'
  qpy config checkFMT default
  qpy config colour false
"""
    user = user_name()
    key = args["<key>"]
    if key is None:
        return show_config(user)
    key = CONFIG_ALIASES.get(key, key)
    if key not in CONFIG:
        raise QpyError("Unknown key: %s (keys: %s)" % (key, ", ".join(CONFIG)))
    value, message = parse_config_value(key, args["<value>"])

    def store(db):
        ensure_user(db, user)
        db.execute("INSERT OR REPLACE INTO config (user, key, value) VALUES (?, ?, ?)",
                   (user, key, json.dumps(value)))
    atomically(store)
    print(message)


def show_config(user):
    def read(db):
        return load_config(db, user), ensure_user(db, user)
    config, row = atomically(read)
    out = ["Check pattern: %s\n" % repr(config["checkFMT"]),
           "Using a copied version of run script: %s\n" % config["copyScripts"],
           "Using coloured check: %s\n" % config["colour"]]
    for key, label in (("defaultAttr", "Default node attributes"),
                       ("andAttr", '"and" node attributes'), ("orAttr", '"or" node attributes')):
        if config[key]:
            out.append("%s: %s\n" % (label, config[key]))
    if config["colour"]:
        out.append("Colours:\n")
        tty = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        for status, name in zip(STATUS_COLOURS, config["coloursScheme"]):
            word = colour(status, name) if tty else status
            out.append("  - %s (%s)\n" % (word, name))
    if row["paused"]:
        out.append("Job submission is paused\n")
    if row["finished"]:
        out.append("qpy is finished for you: queued jobs wait for 'qpy restart'\n")
    sys.stdout.write("".join(out))


def cmd_ctrlQueue(args):
    """Usage: qpy ctrlQueue pause
       qpy ctrlQueue continue
       qpy ctrlQueue jump <jobs>...

Control your queue. pause stops the start of your queued jobs (running ones go on) until
continue. jump <jobs>... <target> moves queued jobs (IDs or ranges) right after the job
<target>, or to the 'begin' or the 'end' of the queue; the queue must be paused first.

Example:
  qpy ctrlQueue pause
  qpy ctrlQueue jump 12-14 begin
  qpy ctrlQueue continue
"""
    user = user_name()
    if args["pause"] or args["continue"]:
        pause = bool(args["pause"])

        def set_pause(db):
            ensure_user(db, user)
            db.execute("UPDATE users SET paused = ? WHERE name = ?", (int(pause), user))
            request_tick(db, user)
        atomically(set_pause)
        print("Job submission paused." if pause else "Job submission continued.")
        if not pause:
            start_tick()
        return
    if len(args["<jobs>"]) < 2:
        raise QpyError("Give the jobs to change position and the target: "
                       "qpy ctrlQueue jump <jobs>... <target|begin|end>")
    *job_words, target = args["<jobs>"]
    ranges = ids_of(job_words)
    if target not in ("begin", "end") and not target.isdigit():
        raise QpyError("Invalid jump position: %s (a job ID, begin or end)" % target)

    def jump(db):
        row = ensure_user(db, user)
        if not row["paused"]:
            raise QpyError("Pause the queue before trying to control it: qpy ctrlQueue pause")
        queue = [job for job in user_jobs(db, user, LIVE) if job["status"] == "queue"]
        order = [job["id"] for job in queue]
        moving = [job_id for job_id in order if in_idset(job_id, ranges)]
        if not moving:
            error = nothing_to_do(db, user, ranges, "move")
            if "not yours" in str(error):
                raise error
            return "List does not have jobs in queue: queue not reordered."
        if len(moving) == len(order):
            return "Queue is completely contained in list: queue not reordered."
        rest = [job_id for job_id in order if job_id not in moving]
        if target == "begin":
            new_order = moving + rest
        elif target == "end":
            new_order = rest + moving
        elif int(target) in moving:
            return "Position is part of list: queue not reordered."
        elif int(target) not in rest:
            return "Position not found: queue not reordered."
        else:
            at = rest.index(int(target)) + 1
            new_order = rest[:at] + moving + rest[at:]
        positions = sorted(job["position"] for job in queue)
        for job_id, position in zip(new_order, positions):
            db.execute("UPDATE jobs SET position = ? WHERE id = ?", (position, job_id))
        return "Queue reordered."
    print(atomically(jump))


def cmd_notes(args):
    """Usage: qpy notes [<job> [<text>...]]

Without arguments, list the jobs that have notes; with a job ID, show its notes; with a text,
add it as a note to the job. Notes are shown by the checkFMT key %K and removed by clean.
"""
    user = user_name()
    job_word, words = args["<job>"], args["<text>"]
    if job_word is None:
        ids = atomically(lambda db: [row[0] for row in db.execute(
            "SELECT DISTINCT n.job_id FROM notes n JOIN jobs j ON j.id = n.job_id "
            "WHERE j.user = ? ORDER BY n.job_id", (user,))], write=False)
        print("You have notes for the following jobs:\n%s" % " ".join(map(str, ids))
              if ids else "You have no notes.")
        return
    if not job_word.isdigit():
        raise QpyError("Give a job ID for notes, not %r." % job_word)
    job_id = int(job_word)

    def note(db):
        if not db.execute("SELECT 1 FROM jobs WHERE id = ? AND user = ?", (job_id, user)).fetchone():
            raise QpyError("You have no job %d." % job_id)
        if words:
            db.execute("INSERT INTO notes (job_id, added_at, text) VALUES (?, ?, ?)",
                       (job_id, time.time(), "----- Note added at %s:\n%s\n"
                        % (format_time(time.time()), " ".join(words))))
            return "Note stored."
        texts = [row[0] for row in db.execute(
            "SELECT text FROM notes WHERE job_id = ? ORDER BY added_at", (job_id,))]
        return "\n".join(texts) if texts else "No notes for %d" % job_id
    print(atomically(note, write=bool(words)))


def cmd_restart(args):
    """Usage: qpy restart

Make qpy ready for you: create your directories, let your queued jobs start again after
'qpy finish', harvest the ends of jobs that were missed, and start what can start. Running
jobs are not affected.
"""
    user = user_name()
    ensure_user_dirs(user)

    def resume(db):
        ensure_user(db, user)
        db.execute("UPDATE users SET finished = 0 WHERE name = ?", (user,))
        request_tick(db, user)
        # job files of submissions that died before their commit
        live = {row[0] for row in db.execute("SELECT spec FROM jobs WHERE user = ?", (user,))}
        spool = os.path.join(user_dir(user), "spool")
        orphans = [os.path.join(spool, name) for name in os.listdir(spool)]
        after_commit(remove_quietly, *(path for path in orphans if path not in live))
        # run files of ended jobs, if a runner died between its commit and their removal
        stale = stale_run_files(user, {job["id"]: job["attempt"]
                                       for job in user_jobs(db, user, LIVE)})
        after_commit(remove_quietly, *stale)
    atomically(resume)
    tick()

    def summary(db):
        return site_counts(db).get(user, {"running": 0, "queued": 0}), \
            ensure_user(db, user)["paused"]
    counts, paused = atomically(summary)
    print("qpy is ready: %d running, %d queued%s." % (counts["running"], counts["queued"],
        " (paused: qpy ctrlQueue continue)" if paused else ""))


def cmd_finish(args):
    """Usage: qpy finish

Stop starting your queued jobs until 'qpy restart'. Running jobs go on to their end.
"""
    user = user_name()

    def stop(db):
        ensure_user(db, user)
        db.execute("UPDATE users SET finished = 1 WHERE name = ?", (user,))
        return site_counts(db).get(user, {"running": 0})["running"]
    running = atomically(stop)
    print("qpy finished: queued jobs wait for 'qpy restart'; %s go on."
          % plural(running, "running job"))


def cmd_tutorial(args):
    """Usage: qpy tutorial [<pattern>...]

Show the users' guide (the README's section for users), in $PAGER on a terminal, starting at
the first match of <pattern> if one is given.
"""
    try:
        with open(shipped_file("README.md")) as f:
            readme = f.read()
    except OSError:
        raise QpyError("Error when loading the tutorial: README.md is missing next to qpy.py.")
    start = readme.find("\n## For users")
    end = readme.find("\n## ", start + 1)
    text = readme[start + 1:end if end > 0 else None] if start >= 0 else readme
    pattern = " ".join(args["<pattern>"])
    if pattern:
        at = text.find("### " + pattern)
        at = at if at >= 0 else text.find(pattern)
        if at < 0:
            raise QpyError("Pattern not found in the tutorial: %s" % pattern)
        text = text[text.rfind("\n", 0, at) + 1:]
    if not sys.stdout.isatty():
        sys.stdout.write(text)
        return
    import subprocess
    pager = os.environ.get("PAGER") or "less"
    subprocess.run(pager, shell=True, input=text.encode())


COMMANDS = {
    "sub": (cmd_sub, "Submits a job. Arguments: the job command"),
    "check": (cmd_check, "Checks the jobs. Arguments: the desired job status"),
    "kill": (cmd_kill, "Kills jobs. Argument: the jobs id"),
    "finish": (cmd_finish, "Stops starting your queued jobs. No arguments"),
    "config": (cmd_config, "Shows the current configuration. No arguments"),
    "clean": (cmd_clean, "Removes finished jobs from the list. Arguments: the jobs id"),
    "tutorial": (cmd_tutorial, "Opens the qpy tutorial. Arguments: optional: a pattern"),
    "status": (cmd_status, "Shows current status. No arguments"),
    "restart": (cmd_restart, "Restarts qpy for you. No arguments"),
    "ctrlQueue": (cmd_ctrlQueue, "Fine control over the queue. Arguments: see tutorial"),
    "notes": (cmd_notes, "Adds and reads notes. Arguments: ID and the note"),
    "wait": (cmd_wait, "Waits until jobs end. Arguments: optional: the jobs id"),
    "tail": (cmd_tail, "Follows the output of a job. Arguments: the job id"),
    "history": (cmd_history, "Lists the jobs that ended, cleaned or not. Arguments: filters"),
    "hold": (cmd_hold, "Keeps queued jobs from starting. Arguments: the jobs id"),
    "release": (cmd_release, "Lets held jobs start. Arguments: the jobs id"),
    "rerun": (cmd_rerun, "Submits ended jobs again. Arguments: the jobs id"),
}


def node_run(*ids_and_attempts):
    """`qpy.py _run ID ATTEMPT [ID ATTEMPT...]`, started by a tick (by ssh on other nodes):
    detach a runner for each job, return."""
    numbers = whole_numbers(ids_and_attempts)
    if not numbers or len(numbers) % 2:
        raise NodeUsage()
    for job_id, attempt in zip(numbers[::2], numbers[1::2]):
        detach(runner, job_id, attempt)
    return 0


def node_slurm(job_id, attempt):
    """`qpy.py _slurm ID ATTEMPT`: the batch script of a job handed to a Slurm pool. The runner
    stays in the foreground: Slurm's job lasts as long as qpy's. What goes wrong is logged, as
    for a detached runner (and goes to the pool's output of the batch script)."""
    job_id, attempt = whole_numbers([job_id, attempt])
    try:
        runner(job_id, attempt)
    except Exception:
        log_exception("runner in a pool")
        raise
    return 0


def node_signal(job_id):
    """`qpy.py _signal ID`, started by qpy kill over ssh on the job's node."""
    job_id, = whole_numbers([job_id])
    job = atomically(lambda db: db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
                     .fetchone(), write=False)
    return 0 if job is not None and signal_runner(job) else 3


def completion_ids(which="all"):
    """`qpy _ids [live|finished|all]`: the user's job IDs for TAB completion (one read, no
    tick, no lock wait worth the name)."""
    statuses = {"live": LIVE, "finished": FINISHED}.get(which)
    user = user_name()
    rows = atomically(lambda db: user_jobs(db, user, statuses), write=False)
    print(" ".join(str(row["id"]) for row in rows))
    return 0


def completion_words(which):
    """`qpy _words commands|statuses|config|node-keys`: the words TAB completion offers, from
    where qpy defines them (bash_completion.sh keeps no copy)."""
    words = {"commands": list(COMMANDS), "statuses": list(USER_STATUSES), "config": list(CONFIG),
             "node-keys": ["%s=" % key for key in sorted(NODE_KEYS - {"type"})]
             + ["type=host"] + ["type=%s" % pool_type for pool_type in POOL_TYPES]
             + ["%s=" % key for pool in POOLS.values() for key in pool["options"]]}.get(which)
    if words is None:
        raise NodeUsage()
    print(" ".join(words))
    return 0


# Commands qpy runs for itself (not for users): on nodes, and for TAB completion.
NODE_COMMANDS = {"_run": node_run, "_slurm": node_slurm, "_signal": node_signal,
                 "_reap": node_reap, "_leftovers": node_leftovers, "_ids": completion_ids,
                 "_words": completion_words}


def usage_text():
    width = max(len(name) for name in COMMANDS) + 2
    lines = ["Usage: qpy <option> [<arguments>].", "Options:"]
    lines += ["  %-*s%s" % (width, name + ":", text) for name, (_, text) in COMMANDS.items()]
    lines.append("Try 'qpy help <option>' (or 'qpy <option> --help') for details.")
    return "\n".join(lines) + "\n"


def parse_args(name, argv):
    """docopt on one command's docstring. A mistake is one line on stderr, never the usage dump."""
    import docopt
    doc = COMMANDS[name][0].__doc__
    try:
        # The docstrings say 'qpy <cmd>' for the reader; docopt wants one program word.
        args = docopt.docopt(doc.replace("qpy " + name, "qpy"), argv, default_help=False,
                             options_first=(name == "sub"))
    except docopt.DocoptExit as e:
        first_line = str(e).split("\n")[0]
        # docopt-ng names an unmatched option only inside its warning text
        option = re.search(r"Option\((?:'(-[^']*)'|None, '(--[^']*)')", first_line)
        if option and name == "sub" and option.group(2) == "--file":
            problem = "give either a command or one --file PATH"
        elif option:
            problem = "unknown or repeated option %s" % (option.group(1) or option.group(2))
        elif "requires argument" in first_line or "is not a unique prefix" in first_line:
            problem = first_line
        elif name == "sub" and not argv:
            problem = "give the command to run, e.g. qpy sub hostname"
        elif name == "ctrlQueue" and not argv:
            problem = "Give the queue control type: pause, continue or jump"
        else:
            problem = "wrong arguments"
        prefix = "Job rejected due to its options: " if name == "sub" else ""
        raise QpyError("%s%s. Try 'qpy %s --help'." % (prefix, problem, name))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name_the_admin_command()
    if not argv:
        sys.stdout.write(usage_text())
        return 1
    name, rest = argv[0], argv[1:]
    if name in ("help", "-h", "--help"):
        if rest and rest[0] in COMMANDS:
            sys.stdout.write(COMMANDS[rest[0]][0].__doc__)
        else:
            sys.stdout.write(usage_text())
        return 0
    if name in NODE_COMMANDS:
        command = NODE_COMMANDS[name]
        try:
            code = command.__code__  # (its arguments counted first: a TypeError inside is a bug)
            if len(rest) < code.co_argcount - len(command.__defaults__ or ()) or (
                    len(rest) > code.co_argcount and not code.co_flags & 0x04):
                raise NodeUsage()
            return command(*rest)
        except NodeUsage:
            sys.stderr.write("qpy: %s is qpy's own command (%s), not for users.\n"
                             % (name, command.__doc__.split("`")[1]))
            return 2
    if name == "--version":
        print("qpy", VERSION)
        return 0
    if name not in COMMANDS:
        sys.stderr.write("qpy: Unknown command: %s. Commands: %s (try 'qpy help').\n"
                         % (name, " ".join(COMMANDS)))
        return 1
    if rest[:1] in (["-h"], ["--help"]):
        sys.stdout.write(COMMANDS[name][0].__doc__)
        return 0
    try:
        status = COMMANDS[name][0](parse_args(name, rest))
    except QpyError as e:
        sys.stderr.write("qpy: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("qpy: interrupted.\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        sys.stderr.write("qpy: %s\n" % filesystem_failure(e))
        return 1
    except sqlite3.DatabaseError as e:  # (outside a transaction: while connecting)
        sys.stderr.write("qpy: %s\n" % (database_failure(e) if isinstance(
            e, sqlite3.OperationalError) else damaged_database(e)))
        return 1
    return status or 0


def kill_main():
    """`qpy-kill <jobs>...`: qpy kill under a program name of its own, for tools that take one
    program to cancel jobs with (Snakemake's cluster-generic cancel-cmd, as scancel)."""
    return main(["kill"] + sys.argv[1:])


def filesystem_failure(error):
    """One line for an OSError of the filesystem: a full disk says so."""
    import errno
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "The disk is full (%s): free some space; nothing stored was lost." % (
            error.filename or state_dir())
    return "%s (is the qpy state %s yours, or your group's?)" % (error, state_dir())


if __name__ == "__main__":
    sys.exit(main())
