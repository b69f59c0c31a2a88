#!/usr/bin/env python3
"""Usage:
  qpy_admin.py create <dir> [--group=<group>] [--site-file]
  qpy_admin.py nodes [<file>] [--empty]
  qpy_admin.py users [<file>]
  qpy_admin.py distribute [<file>]
  qpy_admin.py add <node> <setting>...
  qpy_admin.py remove <node>
  qpy_admin.py list
  qpy_admin.py drain <node> [<reason>...]
  qpy_admin.py resume <node>
  qpy_admin.py status
  qpy_admin.py variables
  qpy_admin.py tick [--linger=<seconds>]
  qpy_admin.py start
  qpy_admin.py finish
  qpy_admin.py set [<key> [<value>]]
  qpy_admin.py timer [--install] [--dir=<dir>]
  qpy_admin.py check
  qpy_admin.py doctor [--as=<user>]
  qpy_admin.py report --html=<file>
  qpy_admin.py prune <days>
  qpy_admin.py backup <file>
  qpy_admin.py restore <file>
  qpy_admin.py (-h | --help)

The administrator's side of qpy. It works on the state that users' qpy finds: $QPY_STATE, else
the directory named in qpy.site next to qpy.py, else ~/.qpy (a personal queue).

Commands:
  create <dir>     Make a site: <dir> on the shared filesystem, owned by the group (setgid
                   and sticky, 3770), the queue's DB and locks 0660, the site's settings
                   (site/site.db) 0644: only the administrator, who runs create, changes them.
                   --site-file writes qpy.site next to qpy.py, so every user of this qpy
                   install finds the site with no set-up.
  nodes [<file>]   Load the nodes file (default <state>/nodes), one node per line:
                     <name> <cores> [M]
                     <name> address=<host> cores=<n> memory=<GB> gpus=<n> attributes=a,b
                            pref_multicore=true
                     <name> type=slurm partition=<p> cores=<n> [max_jobs=<n>] [account=<a>]
                            [qos=<q>] [time=<limit>] [extra="<sbatch arguments>"]
                            (a Slurm pool; time=: the limit of jobs without -t)
                   Nodes no longer listed are removed; running jobs are kept and finish.
                   A file that lists no node removes them all only with --empty.
  users [<file>]   Load allowed_users (default <state>/allowed_users): one user name per line.
                   Only they may submit, and the cores are shared among them. An empty file
                   allows everyone with access to the site.
  distribute [<file>]  Load distribution_rules (default <state>/distribution_rules):
                     even [minimum <n>]
                     explicit [minimum <n>]   then lines  <user> <extra>[%]  or
                                              <user> <minimum>+<extra>[%]  ('=' also works)
                   and show each user's share on the current nodes.
  add <node> <setting>...    Add or change one node, settings as in the nodes file.
  remove <node>    Remove a node (its running jobs go on and are accounted until they end).
  list             The nodes, their settings and states.
  drain <node>     Start no new job on the node; running jobs finish. resume undoes it.
  status           Users and nodes, as 'qpy status'.
  variables        The internals: settings, counters, nodes and live jobs (for debugging).
  tick             Harvest ended jobs, probe down nodes, start what can start. Run it from cron
                   or a systemd timer (see the README). --linger=<seconds>: then, while jobs
                   are live, stay that long answering wake-ups within a quarter of a second
                   (cores one user's job freed for another's, which only root's tick starts);
                   the timer's units pass the timer's period less a second.
  start, finish    Allow or stop the start of any job on the site (running jobs go on).
  set [<key> [<value>]]  Show the site settings (or one), or change one (seconds).
  check            Check the site: the DB's integrity, exit records and job files nobody
                   will use, running jobs on nodes that are no longer listed.
  doctor           Check the site end to end and say what to fix: the state directory's
                   group and modes, the DB, each node by ssh in batch mode (the same qpy and
                   Python there, the clock), the last tick. As root, --as=<user> reaches the
                   nodes as that user (root usually cannot).
  report --html=<file>  Write a self-contained HTML page about the site (users, nodes,
                   running and queued jobs, recent failures) for a web server or a browser.
  prune <days>     Remove from the history (qpy history) the jobs that ended more than <days>
                   days ago.
  backup <file>    Copy the DB to <file>, and the site's settings to <file>.site, while
                   qpy is in use (SQLite's online backup).
  restore <file>   Replace the DB (and, from <file>.site, the site's settings) by a backup
                   (checked first); the current DB is kept as qpy.db.before-restore.
  timer            Print the systemd service and timer that run the tick as root every 15 s,
                   and the equivalent /etc/cron.d line. --install writes the two units to
                   --dir (default /etc/systemd/system).
"""
import os
import shlex
import sys
import time

import qpy

SETTINGS = ("launch_timeout", "kill_grace", "heartbeat", "node_timeout", "probe_interval",
            "ssh_timeout")
NODE_COLUMNS = ("name", "kind", "address", "cores", "mem", "gpus", "attributes", "pref_multicore",
                "max_jobs", "options")


def store_nodes(nodes, replace_all):
    """Insert or update nodes, keeping the state (down, drained) of those that stay; with
    replace_all, remove the nodes not given."""
    def write(db):
        position = db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM site.nodes").fetchone()[0]
        if replace_all:
            names = [node["name"] for node in nodes]
            for table in ("site.nodes", "node_health"):
                db.execute("DELETE FROM %s WHERE name NOT IN (%s)" % (
                    table, ",".join("?" * len(names))), names)
            position = 0
        for offset, node in enumerate(nodes):
            values = [node[column] for column in NODE_COLUMNS]
            db.execute("INSERT INTO site.nodes (%s, position) VALUES (%s, ?) ON CONFLICT (name) DO "
                       "UPDATE SET %s" % (", ".join(NODE_COLUMNS), ",".join("?" * len(values)),
                                          ", ".join("%s = excluded.%s" % (c, c) for c in
                                                    NODE_COLUMNS[1:] + ("position",))),
                       values + [position + offset])
        qpy.request_tick(db)
    qpy.atomically(write, site=True)


def load_nodes(path, empty_too=False):
    path = path or os.path.join(qpy.state_dir(), "nodes")
    try:
        with open(path) as f:
            text = f.read(1 << 20)
            if f.read(1):
                raise qpy.QpyError("The nodes file %s is larger than 1 MB: is it the right "
                                   "file?" % path)
        nodes = qpy.parse_nodes_file(text)
    except (OSError, UnicodeDecodeError) as e:
        raise qpy.QpyError("Cannot read the nodes file: %s" % e)
    if not nodes and not empty_too:
        raise qpy.QpyError("The nodes file %s lists no node: loading it would remove every "
                           "node. To mean that, add --empty." % path)
    for warning in qpy.nodes_sharing_an_address(nodes):
        sys.stderr.write("qpy_admin.py: warning: %s\n" % warning)
    store_nodes(nodes, replace_all=True)
    print("Nodes loaded: %s." % (", ".join(node["name"] for node in nodes) or "none"))


def read_site_file(path, name):
    path = path or os.path.join(qpy.state_dir(), name)
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise qpy.QpyError("Cannot read %s: %s" % (name, e))


def load_users(path):
    import pwd
    names = []
    for number, line in enumerate(read_site_file(path, "allowed_users").splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise qpy.QpyError("allowed_users, line %d: no such user %r" % (number, name))
        names.append(name)

    def write(db):
        db.execute("DELETE FROM site.allowed_users")
        for name in dict.fromkeys(names):
            db.execute("INSERT INTO site.allowed_users (name) VALUES (?)", (name,))
        qpy.request_tick(db)
    qpy.atomically(write, site=True)
    print("Allowed users: %s." % (", ".join(names) if names else "everyone in the group"))


def distribute(path):
    import json
    rules = qpy.parse_rules(read_site_file(path, "distribution_rules"))

    def write(db):
        db.execute("INSERT OR REPLACE INTO site.settings (key, value) VALUES ('rules', ?)",
                   (json.dumps(rules),))
        qpy.request_tick(db)
        total = qpy.shared_cores(db.execute("SELECT cores, state FROM nodes").fetchall())
        return qpy.compute_shares(rules, qpy.share_holders(db), total), total
    shares, total = qpy.atomically(write, site=True)
    print("Cores distributed (%d in all, on the nodes that are up):" % total)
    for user, (least, extra) in shares.items():
        print("  %-20s minimum %3d  extra %3d" % (user, least, extra))


def remove_node(name):
    def delete(db):
        if not db.execute("DELETE FROM site.nodes WHERE name = ?", (name,)).rowcount:
            raise qpy.QpyError("No node %s (see qpy_admin.py list)." % name)
        db.execute("DELETE FROM node_health WHERE name = ?", (name,))
    qpy.atomically(delete, site=True)
    print("Node %s removed." % name)


def drain(name, reason):
    """Drain a node (reason None: resume it). A node that is down stays down until it
    answers, but is probed at once."""
    def update(db):
        if not db.execute("UPDATE site.nodes SET drained = ? WHERE name = ?",
                          (reason, name)).rowcount:
            raise qpy.QpyError("No node %s (see qpy_admin.py list)." % name)
        db.execute("UPDATE node_health SET probed_at = NULL WHERE name = ?", (name,))
        qpy.request_tick(db)
    qpy.atomically(update, site=True)
    print("Node %s %s." % (name, "drained: no new jobs start there" if reason else "resumed"))


def list_nodes():
    nodes = qpy.atomically(lambda db: db.execute("SELECT * FROM nodes ORDER BY position, name")
                           .fetchall(), write=False)
    for node in nodes:
        if node["kind"] in qpy.POOLS:
            options = qpy.node_options(node)
            settings = ["type=%s" % node["kind"]] + [
                "%s=%s" % (key, shlex.quote(options[key]))
                for key in qpy.POOLS[node["kind"]]["options"] if options.get(key)]
            if node["max_jobs"]:
                settings.insert(2, "max_jobs=%d" % node["max_jobs"])
            settings.append("cores=%d" % node["cores"])
        else:
            settings = ["address=%s" % node["address"], "cores=%d" % node["cores"]]
        if node["mem"] is not None:
            settings.append("memory=%g" % node["mem"])
        if node["gpus"]:
            settings.append("gpus=%d" % node["gpus"])
        if node["attributes"]:
            settings.append("attributes=%s" % node["attributes"])
        if node["pref_multicore"]:
            settings.append("pref_multicore=true")
        state = node["state"] + (" (%s)" % node["state_reason"] if node["state_reason"] else "")
        print("%-20s %-10s %s" % (node["name"], state, " ".join(settings)))
    if not nodes:
        print("No nodes.")


def variables():
    def read(db):
        return (db.execute("SELECT key, value FROM site.settings UNION ALL "
                           "SELECT key, value FROM meta ORDER BY key").fetchall(),
                db.execute("SELECT * FROM nodes ORDER BY position, name").fetchall(),
                db.execute("SELECT * FROM users ORDER BY name").fetchall(),
                db.execute("SELECT id, user, status, node, n_cores, mem, attempt, runner_pid, "
                           "external_id "
                           "FROM jobs WHERE " + qpy.LIVE_SQL + " "
                           "ORDER BY position, id").fetchall())
    meta, nodes, users, live = qpy.atomically(read, write=False)
    print("state directory  = %s" % qpy.state_dir())
    for row in meta:
        print("%-16s = %s" % (row["key"], row["value"]))
    print("\nNodes:\n------")
    for node in nodes:
        print(node["name"])
        for key in node.keys()[1:]:
            print("  %s = %s" % (key, node[key]))
    print("\nUsers:\n------")
    for user in users:
        print("%s: paused = %d, finished = %d, wanted = %d" % (
            user["name"], user["paused"], user["finished"], user["wanted"]))
    print("\nLive jobs:\n----------")
    for job in live:
        print("%d: user = %s, status = %s, node = %s, n_cores = %d, mem = %g, attempt = %d, "
              "runner = %s, external_id = %s" % tuple(job))


def settings(key, value):
    if key is not None and key not in SETTINGS:
        raise qpy.QpyError("Unknown setting: %s (settings: %s)" % (key, ", ".join(SETTINGS)))
    if value is None:
        shown = SETTINGS if key is None else (key,)
        rows = qpy.atomically(lambda db: db.execute(
            "SELECT key, value FROM site.settings WHERE key IN (%s)" % ",".join(
                "?" * len(shown)),
            shown).fetchall(), write=False)
        for row in rows:
            print("%s = %s" % (row["key"], row["value"]))
        return
    try:
        if not 0 <= float(value) < float("inf"):
            raise ValueError
    except ValueError:
        raise qpy.QpyError("Value for %s must be a number of seconds, not %r." % (key, value))
    qpy.atomically(lambda db: db.execute("UPDATE site.settings SET value = ? WHERE key = ?",
                                         (value, key)), site=True)
    print("%s set to %s." % (key, value))


def dispatch(on):
    def write(db):
        db.execute("UPDATE site.settings SET value = ? WHERE key = 'dispatch'", (str(int(on)),))
        qpy.request_tick(db)
    qpy.atomically(write, site=True)
    print("Jobs start again." if on else "No job starts until 'qpy_admin.py start'; "
          "running jobs go on.")
    if on:
        qpy.tick()


def tick(linger):
    """One tick; with --linger, then wake-ups answered for that many seconds more."""
    seconds = 0.0 if linger is None else number_in(
        linger, 3600, "--linger takes a number of seconds (at most 3600), not %r.")
    start = time.monotonic()  # (the linger ends that long after the tick began: before the next)
    qpy.tick()
    if seconds:
        qpy.linger(seconds - (time.monotonic() - start))


def timer_units():
    """The periodic tick, for systemd and for cron, for this install and this site: each tick
    lingers until just before the next, so that a wake-up waits a quarter of a second, not a
    period."""
    tick = tick_command()
    state = qpy.state_dir()
    service = ("[Unit]\nDescription=qpy tick: harvest ended jobs, start queued ones\n\n"
               "[Service]\nType=oneshot\nEnvironment=QPY_STATE=%s\nExecStart=%s --linger=14\n"
               # the runners a tick forks on this machine outlive it: not stopped with it
               "KillMode=process\n"
               % (state, tick))
    timer = ("[Unit]\nDescription=Run the qpy tick every 15 seconds\n\n"
             "[Timer]\nOnBootSec=30\nOnUnitActiveSec=15\nAccuracySec=1\n\n"
             "[Install]\nWantedBy=timers.target\n")
    cron = "* * * * * root QPY_STATE=%s %s --linger=58\n" % (state, tick)  # (cron mails errors)
    return {"qpy-tick.service": service, "qpy-tick.timer": timer}, cron


def tick_command():
    """How the timer runs the tick: by the qpy-admin of this install (pip's, the path it was
    called by, or beside this Python: it stays right when Python's own paths change), else by
    this checkout's qpy_admin.py with this Python."""
    if os.path.basename(sys.argv[0]) == "qpy-admin":
        return os.path.abspath(sys.argv[0]) + " tick"
    installed = os.path.join(os.path.dirname(sys.executable), "qpy-admin")
    if os.access(installed, os.X_OK):
        return installed + " tick"
    return "%s %s tick" % (sys.executable, os.path.join(qpy.HERE, "qpy_admin.py"))


def timer(install, directory):
    units, cron = timer_units()
    if install:
        directory = directory or "/etc/systemd/system"
        try:
            for name, text in units.items():
                with open(os.path.join(directory, name), "w") as f:
                    f.write(text)
        except OSError as e:
            raise qpy.QpyError("Cannot install the units: %s" % e)
        print("Installed %s in %s. Now: systemctl daemon-reload && systemctl enable --now "
              "qpy-tick.timer" % (" and ".join(units), directory))
        return
    for name, text in units.items():
        print("# %s\n%s" % (name, text))
    print("# or, without systemd, /etc/cron.d/qpy (every minute):\n%s" % cron, end="")


def check_site():
    """Print what is wrong with the site; return the number of problems. A damaged DB is
    checked first, and alone: what to do about it is all that matters then."""
    damage = check_database()
    if damage:
        return damage

    def read(db):
        return (db.execute("PRAGMA integrity_check").fetchall(),
                db.execute("SELECT j.id, j.node FROM jobs j LEFT JOIN nodes n ON n.name = j.node "
                           "WHERE j.status IN ('starting', 'running') AND n.name IS NULL")
                .fetchall(),
                db.execute("SELECT id, user, status, spec, attempt, command FROM jobs")
                .fetchall())
    integrity, homeless, jobs = qpy.atomically(read, write=False)
    problems = []
    if [tuple(row) for row in integrity] != [("ok",)]:
        problems += ["database: %s" % row[0] for row in integrity]
    problems += ["job %d runs on %s, which is no longer a node" % tuple(row) for row in homeless]
    problems += forged_rows([row for row in jobs if qpy.is_live(row)])
    problems += not_qpys_schema()
    live = {row["id"]: row["attempt"] for row in jobs if qpy.is_live(row)}
    specs = {row["spec"] for row in jobs}  # (an ended job's stays until clean: qpy rerun)
    users = os.path.join(qpy.state_dir(), "users")
    for user in sorted(os.listdir(users)) if os.path.isdir(users) else []:
        problems += ["%s: a record of a job that is not running (qpy restart, as %s, removes "
                     "it)" % (path, user) for path in qpy.stale_run_files(user, live)]
        quarantine = os.path.join(users, user, "quarantine")
        for name in sorted(os.listdir(quarantine)) if os.path.isdir(quarantine) else []:
            problems.append("%s/%s: a run file qpy could not read, moved aside (why: %s/"
                            "errors.log); remove it once looked at" % (
                                quarantine, name, os.path.join(users, user)))
        spool = os.path.join(users, user, "spool")
        for name in sorted(os.listdir(spool)) if os.path.isdir(spool) else []:
            if os.path.join(spool, name) not in specs:
                problems.append("%s/%s: a job file of no job in the queue (qpy restart, as "
                                "%s, removes it)" % (spool, name, user))
    for problem in problems:
        print(problem)
    print("%s found." % qpy.plural(len(problems), "problem") if problems else "The site is fine.")
    return len(problems)


def forged_rows(live_jobs):
    """Live jobs whose row does not match their job file (another member changed the row:
    qpy will not run it as it says, but its owner's check would not show why)."""
    import json
    import pwd
    problems = []
    for job in live_jobs:
        try:
            qpy.check_job_file(job, pwd.getpwnam(job["user"]).pw_uid)
        except KeyError:
            problems.append("job %d is of %s, who is no user here: a row changed by hand"
                            % (job["id"], job["user"]))
            continue
        except qpy.QpyError as e:
            problems.append("job %d is %s's, but %s: a row changed by hand (it will not run)"
                            % (job["id"], job["user"], str(e)[len("refused: "):]))
            continue
        try:
            with open(job["spec"]) as f:
                job_file = json.load(f)
        except (OSError, ValueError) as e:
            if os.geteuid() in (0, pwd.getpwnam(job["user"]).pw_uid):
                problems.append("job %d: its job file cannot be read: %s" % (job["id"], e))
            continue
        first, last = job_file.get("ids", (job["id"], job["id"]))
        if not first <= job["id"] <= last:
            problems.append("job %d points at the job file of jobs %d-%d: a row changed by "
                            "hand (it will not run)" % (job["id"], first, last))
        elif job_file.get("command", job["command"]) != job["command"]:
            problems.append("job %d's command in the queue is not its job file's, %r: a row "
                            "changed by hand (the job file's runs)"
                            % (job["id"], qpy.shown(job_file["command"])))
    return problems


def not_qpys_schema():
    """Tables, views, triggers and indexes in the shared DB that qpy did not make, and tables
    whose columns or keys are not schema.sql's (any member can change the schema: a trigger
    could undo what qpy writes, a table made anew without its key take rows twice)."""
    import sqlite3
    with open(qpy.shipped_file("schema.sql")) as f:
        ddl = f.read()
    scratch = sqlite3.connect(":memory:")
    scratch.execute("ATTACH DATABASE ':memory:' AS site")
    for statement in qpy.sql_statements(ddl):
        scratch.execute(statement)
    ours, theirs = schema_of(scratch), qpy.atomically(schema_of, write=False)
    db_path = os.path.join(qpy.state_dir(), "qpy.db")
    problems = []
    for (kind, name), shape in sorted(theirs.items()):
        if name.startswith("sqlite_"):
            continue
        if (kind, name) not in ours:
            problems.append("the shared DB holds a %s %s that is not qpy's (a member made it): "
                            "look at it, then drop it (sqlite3 %s 'DROP %s \"%s\"')"
                            % (kind, name, db_path, kind.upper(), name))
        elif shape != ours[(kind, name)]:
            problems.append("the shared DB's %s %s is not as qpy made it (a member changed it: "
                            "columns or keys %s, qpy's %s): restore a backup"
                            % (kind, name, shape, ours[(kind, name)]))
    return problems


def schema_of(db):
    """{(type, name): its shape} of a DB's main schema: a table's columns and keys (its
    text would differ between a new DB and an upgraded one), an index's table."""
    found = {}
    for kind, name, table in db.execute("SELECT type, name, tbl_name FROM main.sqlite_master"):
        if kind == "table":
            found[(kind, name)] = sorted((row[1], row[5]) for row in db.execute(
                "PRAGMA main.table_info(\"%s\")" % name.replace('"', '""')))
        else:
            found[(kind, name)] = table
    return found


def check_database():
    """SQLite's integrity_check of the DB: print what is wrong and how to recover, and return
    1; or 0 when it is whole (then a damage mark left by an earlier command goes)."""
    mark = os.path.join(qpy.state_dir(), qpy.DAMAGE_MARK)
    try:
        rows = qpy.atomically(lambda db: [row[0] for row in db.execute(
            "PRAGMA integrity_check")], write=False)
    except qpy.QpyError as e:
        rows = [str(e)]
    if rows == ["ok"]:
        if os.path.exists(mark):
            qpy.remove_quietly(mark)
            print("The database is whole after all: qpy takes writes again.")
        return 0
    live = os.path.join(qpy.state_dir(), "qpy.db")
    for row in rows[:20]:
        print("database: %s" % row)
    print("The database %s is damaged. Restore a backup: qpy_admin.py restore <file> (made by "
          "qpy_admin.py backup); without one, save what can be read: sqlite3 %s .recover > "
          "recovered.sql, and look at it before loading it into a new database." % (live, live))
    return 1


def doctor(as_user):
    """Print one line per check, 'ok' or what is wrong and what to do; return the problems."""
    import pwd
    import stat
    import subprocess
    import time
    try:
        owner = pwd.getpwnam(as_user) if as_user else None
    except KeyError:
        raise qpy.QpyError("No user %s on this machine (doctor --as <user>: whom to check the "
                           "nodes as)." % as_user)
    state = qpy.state_dir()
    problems = []

    def report(ok, what, fix=""):
        print("%-8s %s%s" % ("ok" if ok else "PROBLEM", what, "" if ok else ": " + fix))
        if not ok:
            problems.append(what)

    mode = stat.S_IMODE(os.stat(state).st_mode)
    personal = state == os.path.join(os.path.expanduser("~"), ".qpy")
    report(personal or mode & 0o3070 == 0o3070, "state directory %s (mode %o)" % (state, mode),
           "make it group-writable, setgid and sticky: chmod 3770 %s" % state)
    distrust = qpy.site_distrust(state)
    report(distrust is None, "site settings %s belong to the administrator, %s" % (
        qpy.site_path(state), qpy.administrator_name(state)), "%s: as the administrator, put "
        "it right, or move it aside and restore a backup (qpy_admin.py restore <file>)"
        % distrust)
    for name in ("qpy.db", "qpy.lock", "tick.lock", "watch.lock"):
        path = os.path.join(state, name)
        found = qpy.stat_or_none(path)
        if found is not None:
            file_mode = stat.S_IMODE(found.st_mode)
            report(stat.S_ISREG(found.st_mode) and found.st_uid in (0, os.stat(state).st_uid),
                   "%s is the administrator's file" % name, "a link or a member's: move it "
                   "aside (the administrator's next command does)")
            report(file_mode == 0o660, "%s (mode %o)" % (name, file_mode), "chmod 660 " + path)
    integrity = qpy.atomically(lambda db: db.execute("PRAGMA integrity_check").fetchone()[0],
                               write=False)
    report(integrity == "ok", "database integrity", integrity + " (restore a backup)")
    last = qpy.atomically(lambda db: db.execute(
        "SELECT value FROM meta WHERE key = 'last_tick'").fetchone(), write=False)
    age = time.time() - float(last[0]) if last else None
    report(age is not None and age < 300, "last tick %s" % (
        "never" if age is None else "%d s ago" % age),
        "install the periodic tick: qpy_admin.py timer --install")
    users = os.path.join(state, "users")
    for log in sorted(os.path.join(users, name, "errors.log") for name in os.listdir(users)):
        if os.access(log, os.R_OK):  # (root reads every user's, a user only their own)
            at = os.stat(log).st_mtime
            report(at < time.time() - 7 * 86400, "background errors (last %s)"
                   % qpy.format_time(int(at)), "read %s" % log)
    nodes = qpy.atomically(lambda db: db.execute("SELECT * FROM nodes ORDER BY position")
                           .fetchall(), write=False)
    version = "%s %s" % (qpy.VERSION, sys.version.split()[0])
    probe = ["sh", "-c", "%s -c 'import sys; sys.path.insert(0, \"%s\"); import qpy; "
             "print(qpy.VERSION, sys.version.split()[0])' && date +%%s.%%N"
             % (sys.executable, qpy.HERE)]
    for node in nodes:
        if node["kind"] in qpy.POOLS:
            qpy.POOLS[node["kind"]]["doctor"](node, report)
            continue
        if qpy.is_local(node["address"]):
            report(True, "node %s is this machine" % node["name"])
            continue
        try:
            argv, _ = qpy.ssh_command(node["address"], probe, 10,
                                      owner.pw_uid if owner else os.getuid(), multiplex=False)
        except qpy.QpyError as e:
            report(False, "node %s's address" % node["name"], str(e))
            continue
        started = time.time()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL,
                                preexec_fn=(lambda: qpy.become(owner)) if owner else None)
        if result.returncode != 0:
            report(False, "node %s (%s) by ssh" % (node["name"], node["address"]),
                   (result.stderr.strip().splitlines() or ["exit %d" % result.returncode])[-1]
                   + " (set up key-based ssh for the users, BatchMode)")
            continue
        lines = result.stdout.split("\n")
        report(lines[0] == version, "node %s runs qpy and Python %s" % (node["name"], lines[0]),
               "expected %s: install qpy on the shared filesystem" % version)
        skew = float(lines[1]) - (started + time.time()) / 2
        report(abs(skew) < 5, "node %s clock %+.1f s" % (node["name"], skew), "run NTP")
    print("%s." % ("%s found" % qpy.plural(len(problems), "problem") if problems
                   else "Everything looks right"))
    return len(problems)


def report(path):
    """A read-only status page: one HTML file, no scripts, no outside resources."""
    import html
    import time

    def read(db):
        live = sorted(qpy.live_jobs(db), key=lambda job: (job["position"], job["id"]))
        failed = db.execute("SELECT * FROM jobs WHERE status = 'failed' AND ended_at > ? "
                            "ORDER BY ended_at DESC LIMIT 50",
                            (time.time() - 7 * 86400,)).fetchall()
        return qpy.site_report(db), live, failed
    site, live, failed = qpy.atomically(read, write=False)

    def table(title, headers, rows):
        cells = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % html.escape(str(c)) for c in row)
                        for row in rows) or '<tr><td colspan="%d">none</td></tr>' % len(headers)
        return "<h2>%s</h2><table><tr>%s</tr>%s</table>" % (
            title, "".join("<th>%s</th>" % h for h in headers), cells)

    now = time.time()
    running = [job for job in live if qpy.user_status(job) == "running"]
    queued = [job for job in live if qpy.user_status(job) == "queue"]
    page = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>qpy: %s</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"
            % html.escape(qpy.state_dir()),
            "<h1>qpy site %s</h1><p>%d of %d cores in use, %d jobs running, %d queued; "
            "written %s.</p>" % (html.escape(qpy.state_dir()), site["cores_used"], site["cores"],
                                  len(running), len(queued), qpy.format_time(now)),
            table("Users", ["user", "cores in use", "queued"],
                  [(u["user"], u["cores"], u["queued"]) for u in site["users"]]),
            table("Nodes", ["node", "state", "cores used", "cores", "memory used (GB)",
                            "memory (GB)", "GPUs used", "GPUs"],
                  [(n["name"] + qpy.pool_note(n),
                    n["state"] + (" (%s)" % n["state_reason"] if n["state_reason"] else ""),
                    n["cores_used"], n["cores"]) + qpy.memory_cells(n)
                   + (n["gpus_used"], n["gpus"]) for n in site["nodes"]]),
            table("Running", ["job", "user", "node", "cores", "running for"],
                  [(j["id"], j["user"], j["node"], j["n_cores"],
                    qpy.format_span(qpy.run_time(j, now))) for j in running]),
            table("Queued", ["job", "user", "cores", "waiting for", "why"],
                  [(j["id"], j["user"], j["n_cores"], qpy.format_span(qpy.run_time(j, now)),
                    j["reason"] or "") for j in queued]),
            table("Recent failures (7 days)", ["job", "user", "node", "ended", "reason"],
                  [(j["id"], j["user"], j["node"], qpy.format_time(j["ended_at"]),
                    j["reason"] or "") for j in failed]),
            "</body></html>\n"]
    try:
        qpy.write_atomically(path, "".join(page).encode())
        os.chmod(path, 0o644)
    except OSError as e:
        raise qpy.QpyError("Cannot write the report %s: %s." % (path, e.strerror))
    print("Report written to %s." % path)


def number_in(text, most, refusal):
    """A number typed, from 0 to `most`; else QpyError(refusal naming what was typed)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        raise qpy.QpyError(refusal % qpy.shown(text))
    return value


def prune(days):
    """The history without the jobs that ended more than `days` days ago."""
    age = number_in(days, 100000, "prune takes a number of days (at most 100000), not %r.")
    state = qpy.state_dir()
    if not qpy.is_administrator(state):
        raise qpy.QpyError("Only the site's administrator, %s, prunes the history."
                           % qpy.administrator_name(state))
    removed = qpy.atomically(lambda db: db.execute(
        "DELETE FROM history WHERE ended_at < ?", (time.time() - age * 86400,)).rowcount)
    print("%s removed from the history." % qpy.plural(removed, "job"))


def backup(target):
    """The queue to <file>, the site's settings to <file>.site, in one read transaction."""
    import sqlite3
    targets = (target, target + ".site")
    for made, path in enumerate(targets):  # (made anew: never written through a link)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            qpy.remove_quietly(*targets[:made])
            raise qpy.QpyError("%s exists: give a new file name." % path)
        except OSError as e:
            qpy.remove_quietly(*targets[:made])
            raise qpy.QpyError("Cannot write the backup %s: %s." % (path, e.strerror))
    try:
        outs = [sqlite3.connect(path) for path in targets]
    except sqlite3.Error as e:
        raise qpy.QpyError("Cannot write the backup %s: %s." % (target, e))

    def copy(db):
        for out, name in zip(outs, ("main", "site")):
            with out:
                db.backup(out, name=name)
    try:
        qpy.atomically(copy, write=False)
    except (sqlite3.Error, qpy.QpyError) as e:
        qpy.remove_quietly(*targets)  # no partial backup left to be mistaken for one
        raise qpy.QpyError("Backup failed: %s" % e)
    finally:
        for out in outs:
            out.close()
    print("Backed up %s to %s and %s to %s." % (os.path.join(qpy.state_dir(), "qpy.db"), target,
                                                qpy.site_path(qpy.state_dir()),
                                                targets[1]))


def restore(source):
    import sqlite3
    import stat
    backup_db, version = checked_backup(source, "jobs", "a qpy database", 1)
    state = qpy.state_dir()
    if not qpy.is_administrator(state):
        raise qpy.QpyError("Only the site's administrator, %s, can restore it."
                           % qpy.administrator_name(state))
    site_backup = backup_site(source)
    live = os.path.join(state, "qpy.db")
    # (file by file under the lock, not through a connection: the DB in place may be damaged,
    # lost or another state's; processes that have it open reconnect to the new file)
    release = qpy.take_lock("qpy.lock", qpy.lock_timeout())
    if release is None:
        raise qpy.QpyError("Waited %g s for the qpy lock, held by %s." % (
            qpy.lock_timeout(), qpy.lock_holder(os.path.join(state, "qpy.lock"))))
    try:
        qpy.secure_site(state)  # (site/ is the administrator's before anything goes there)
        if site_backup is not None:  # (a backup of schema 8 has them in its DB instead)
            site_restoring = qpy.site_path(state) + ".restoring"
            os.close(qpy.create_new_file(site_restoring, 0o644))
            copy = sqlite3.connect(site_restoring)
            site_backup.backup(copy)
            copy.close()
        restoring = live + ".restoring"
        os.close(qpy.create_new_file(restoring, 0o660))
        copy = sqlite3.connect(restoring)
        backup_db.backup(copy)
        # IDs are never reused: above the highest the state's files show, if the backup is older
        highest = highest_job_id_in_files(state)
        if copy.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone():
            copy.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'jobs'",
                         (highest,))
        else:
            copy.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)",
                         (highest,))
        identity = copy.execute("SELECT value FROM meta WHERE key = 'state_id'").fetchone()
        if identity is None and qpy.read_identity(state):  # a backup older than identities
            copy.execute("INSERT INTO meta (key, value) VALUES ('state_id', ?)",
                         (qpy.read_identity(state),))
        copy.commit()
        copy.close()
        if os.path.exists(live):
            mode = os.stat(live)
            os.chmod(restoring, stat.S_IMODE(mode.st_mode))
            try:
                os.chown(restoring, -1, mode.st_gid)
            except OSError:
                pass
            os.replace(live, live + ".before-restore")
            if os.path.exists(live + "-journal"):  # (a hot journal is the old file's)
                os.replace(live + "-journal", live + ".before-restore-journal")
        site = qpy.site_path(state)
        if (site_backup is not None or version < 9) and os.path.exists(site):
            os.replace(site, site + ".before-restore")  # (schema 8's: its upgrade makes it anew)
        if site_backup is not None:
            os.replace(site_restoring, site)
        os.replace(restoring, live)
        if identity:  # restored on purpose: this state is the backup's now
            qpy.write_identity(state, identity[0])
        qpy.remove_quietly(os.path.join(state, qpy.DAMAGE_MARK))
    finally:
        release()
    print("Restored %s from %s (the previous DB is %s.before-restore)%s." % (
        live, source, live, "; the site's settings are kept (no %s.site)" % source
        if site_backup is None and version >= 9 else "; the site's settings from the backup "
        "(the previous ones are %s.before-restore)" % qpy.site_path(state)))


def backup_site(source):
    """The site's settings that a backup holds beside it (<file>.site), checked; None if
    there are none."""
    path = source + ".site"
    if not os.path.exists(path):
        return None
    return checked_backup(path, "nodes", "the site's settings of a qpy backup", 9)[0]


def checked_backup(path, table, what, oldest):
    """A backup file opened read-only, and its schema, once SQLite finds it whole, with the
    table it must have, of a schema this qpy can restore (QpyError otherwise)."""
    import sqlite3
    try:
        db = sqlite3.connect(qpy.sqlite_uri(path, "mode=ro"), uri=True)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        db.execute("SELECT COUNT(*) FROM %s" % table).fetchone()
    except sqlite3.Error as e:
        raise qpy.QpyError("%s is not %s: %s" % (path, what, e))
    if ok != "ok" or not oldest <= version <= qpy.SCHEMA_VERSION:
        raise qpy.QpyError("%s cannot be restored: integrity %s, schema %d" % (path, ok, version))
    return db, version


def highest_job_id_in_files(state):
    """The highest job ID that the state's files name (job files, run files), as far as this
    user may read them: 0 if none."""
    import json
    highest = 0
    users = os.path.join(state, "users")
    for user in os.listdir(users) if os.path.isdir(users) else []:
        for folder in ("run", "quarantine", "spool"):
            path = os.path.join(users, user, folder)
            try:
                names = os.listdir(path)
            except OSError:
                continue
            for name in names:
                if folder != "spool":
                    first = name.split(".")[0]
                    highest = max(highest, int(first) if first.isdigit() else 0)
                    continue
                try:
                    with open(os.path.join(path, name)) as f:
                        ids = json.load(f)["ids"]
                    highest = max(highest, int(ids[1]))
                except (OSError, ValueError, KeyError, TypeError, IndexError):
                    continue
    return highest


def create(directory, group, site_file):
    directory = os.path.abspath(directory)
    try:
        qpy.create_site(directory, group)
    except KeyError:
        raise qpy.QpyError("No group %s (create it first: groupadd %s)." % (group, group))
    except OSError as e:
        raise qpy.QpyError("Cannot create the site: %s" % e)
    print("Site created in %s." % directory)
    if site_file:
        with open(os.path.join(qpy.HERE, "qpy.site"), "w") as f:
            f.write(directory + "\n")
        print("Users of %s find it through %s." % (qpy.HERE, os.path.join(qpy.HERE, "qpy.site")))
    else:
        print("Users find it with: export QPY_STATE=%s" % directory)
    print("Next: write the nodes file and run: qpy_admin.py nodes <file>")


USAGE_LINES = __doc__.split("\n\n")[0].splitlines()[1:]
COMMAND_WORDS = {line.split()[1] for line in USAGE_LINES} - {"(-h"}


def parse_args(argv):
    """docopt on the usage lines of argv's command only (docopt's cost grows with the usage,
    and the site's timer runs `tick` every few seconds); the other commands' words are
    False. Raises docopt.DocoptExit."""
    import docopt
    lines = [line for line in USAGE_LINES if argv and line.split()[1] == argv[0]]
    args = docopt.docopt("Usage:\n" + "\n".join(lines or USAGE_LINES) + "\n", argv,
                         default_help=False)
    return {**dict.fromkeys(COMMAND_WORDS, False), **args}


def add_node(args):
    try:
        node = qpy.parse_node_line([args["<node>"]] + args["<setting>"])
    except ValueError as e:
        raise qpy.QpyError("Bad node setting: %s" % e)
    store_nodes([node], replace_all=False)
    print("Node %s added." % node["name"])


# Each command and what it does with its parsed arguments; what it returns is the exit status.
COMMANDS = {
    "create": lambda a: create(a["<dir>"], a["--group"], a["--site-file"]),
    "nodes": lambda a: load_nodes(a["<file>"], a["--empty"]),
    "users": lambda a: load_users(a["<file>"]),
    "distribute": lambda a: distribute(a["<file>"]),
    "add": add_node,
    "remove": lambda a: remove_node(a["<node>"]),
    "list": lambda a: list_nodes(),
    "drain": lambda a: drain(a["<node>"], " ".join(a["<reason>"]) or "drained"),
    "resume": lambda a: drain(a["<node>"], None),
    "status": lambda a: qpy.cmd_status({}),
    "variables": lambda a: variables(),
    "tick": lambda a: tick(a["--linger"]),
    "start": lambda a: dispatch(True),
    "finish": lambda a: dispatch(False),
    "set": lambda a: settings(a["<key>"], a["<value>"]),
    "timer": lambda a: timer(a["--install"], a["--dir"]),
    "check": lambda a: 1 if check_site() else 0,
    "doctor": lambda a: 1 if doctor(a["--as"]) else 0,
    "report": lambda a: report(a["--html"]),
    "prune": lambda a: prune(a["<days>"]),
    "backup": lambda a: backup(a["<file>"]),
    "restore": lambda a: restore(a["<file>"]),
}


def main(argv=None):
    import docopt
    argv = sys.argv[1:] if argv is None else argv
    qpy.name_the_admin_command()
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(__doc__)
        return 0
    if argv[:1] == ["_words"] and argv[1:] in (["commands"], ["settings"]):  # TAB completion
        print(" ".join(COMMANDS if argv[1] == "commands" else SETTINGS))
        return 0
    try:
        args = parse_args(argv)
    except docopt.DocoptExit:
        sys.stderr.write("qpy_admin.py: wrong arguments. Try 'qpy_admin.py --help'.\n")
        return 1
    try:
        return COMMANDS[argv[0]](args) or 0
    except qpy.QpyError as e:
        sys.stderr.write("qpy_admin.py: %s\n" % e)
        return 1
    except OSError as e:
        sys.stderr.write("qpy_admin.py: %s\n" % qpy.filesystem_failure(e))
        return 1
    except qpy.sqlite3.DatabaseError as e:
        sys.stderr.write("qpy_admin.py: %s\n" % (qpy.database_failure(e) if isinstance(
            e, qpy.sqlite3.OperationalError) else qpy.damaged_database(e)))
        return 1


if __name__ == "__main__":
    sys.exit(main())
