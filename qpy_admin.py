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
  qpy_admin.py tick [--linger=<seconds>] [--report=<file> [--report-every=<seconds>]]
  qpy_admin.py start
  qpy_admin.py finish
  qpy_admin.py set [<key> [<value>]]
  qpy_admin.py timer [--install] [--dir=<dir>] [--report=<file> [--report-every=<seconds>]]
  qpy_admin.py check
  qpy_admin.py doctor [--as=<user>]
  qpy_admin.py report --html=<file> [--refresh=<seconds>]
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
                   --report=<file>: then write the status page there (as report --html),
                   if it was last written --report-every seconds ago (default 60) or more:
                   the page reloads itself as often.
  start, finish    Allow or stop the start of any job on the site (running jobs go on).
  set [<key> [<value>]]  Show the site settings (or one), or change one (seconds).
  check            Check the site: the DB's integrity, exit records and job files nobody
                   will use, running jobs on nodes that are no longer listed.
  doctor           Check the site end to end and say what to fix: the state directory's
                   group and modes, the DB, each node by ssh in batch mode (the same qpy and
                   Python there, the clock), the last tick. As root, --as=<user> reaches the
                   nodes as that user (root usually cannot).
  report --html=<file>  Write the site's status page, one self-contained HTML file for a
                   web server or a browser: now (nodes' load, users' cores against their
                   share, running and queued jobs, recent failures) and over time (cores in
                   use per user, waits in the queue, core-hours per week). --refresh=<seconds>:
                   the page reloads itself that often.
  prune <days>     Remove from the history (qpy history) the jobs that ended more than <days>
                   days ago.
  backup <file>    Copy the DB to <file>, and the site's settings to <file>.site, while
                   qpy is in use (SQLite's online backup).
  restore <file>   Replace the DB (and, from <file>.site, the site's settings) by a backup
                   (checked first); the current DB is kept as qpy.db.before-restore.
  timer            Print the systemd service and timer that run the tick as root every 15 s,
                   and the equivalent /etc/cron.d line. --install writes the two units to
                   --dir (default /etc/systemd/system). --report=<file>: the tick writes the
                   status page there too, at every tick or every --report-every seconds.
"""
import math
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
        for leftover in leftovers(node):
            print("  " + leftover)
    if not nodes:
        print("No nodes.")


def leftovers(node, failed_only=False):
    """What is still to be stopped on a node, one line per attempt given up with it: its
    processes (a lab node that did not answer) or its Slurm job (a cancel owed to a pool),
    with the tries that failed and when the next is due."""
    lines = []
    for job_id, attempt, user, tries, at in qpy.leftover_entries(node["lost"]):
        if tries or not failed_only:
            lines.append("job %d's attempt %d (%s) is still to %s%s" % (
                job_id, attempt, user, "be cancelled in Slurm" if node["kind"] in qpy.POOLS
                else "stop there", "" if not tries else ": %s failed (%s's errors.log says "
                "why), the next at %s" % ("1 try" if tries == 1 else "%d tries" % tries, user,
                                         time.strftime("%H:%M:%S", time.localtime(
                                             qpy.leftover_due_at(tries, at))))))
    return lines


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


def tick(linger, report_path=None, report_every=None):
    """One tick; then the status page, if asked for and due; with --linger, then wake-ups
    answered for that many seconds more. A page that cannot be written is said at the end:
    the linger goes on without it."""
    seconds = 0.0 if linger is None else number_in(
        linger, 3600, "--linger takes a number of seconds (at most 3600), not %r.")
    every = page_interval(report_path, report_every, REPORT_EVERY)
    start = time.monotonic()  # (the linger ends that long after the tick began: before the next)
    qpy.tick()
    failure = None
    if report_path is not None and status_page_due(report_path, every):
        try:
            write_status_page(report_path, every)
            note_status_page(report_path, every)
        except qpy.QpyError as e:
            failure = e
    if seconds:
        qpy.linger(seconds - (time.monotonic() - start))
    if failure is not None:
        raise failure


REPORT_EVERY = 60  # seconds: how often a tick told --report writes the page, by default
# A tick this much early still writes the page when due: the timer's accuracy (1 s), and the
# last page's time to be written, must not make it skip a period.
REPORT_SLACK = 5


def page_interval(report_path, report_every, default):
    """The seconds between two pages that --report-every asks for (`default` without it)."""
    if report_every is None:
        return default
    if report_path is None:
        raise qpy.QpyError("--report-every is how often the page of --report=<file> is "
                           "written: give --report too.")
    return whole_number(report_every, 1, 86400, "--report-every takes a whole number of "
                        "seconds from 1 to 86400, not %r.")


def status_page_due(path, every):
    """Is the page that the timer's ticks write at `path` due: none there yet, or `every`
    seconds old?"""
    last = last_status_page()
    return (last is None or last["file"] != path or not os.path.exists(path)
            or time.time() - last["at"] >= every - REPORT_SLACK)


def last_status_page():
    """{file, at, every} of the status page the timer's ticks last wrote, or None (meta's
    'status_page'; doctor reports it)."""
    import json
    row = qpy.atomically(lambda db: db.execute(
        "SELECT value FROM meta WHERE key = 'status_page'").fetchone(), write=False)
    if row is None:
        return None
    try:
        page = json.loads(row[0])
        return {"file": str(page["file"]), "at": float(page["at"]), "every": int(page["every"])}
    except (ValueError, TypeError, KeyError):  # (a member's row: as if none, until the next)
        return None


def note_status_page(path, every):
    import json
    qpy.atomically(lambda db: db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('status_page', ?)",
        (json.dumps({"file": path, "at": time.time(), "every": every}),)))


def timer_units(page=None):
    """The periodic tick, for systemd and for cron, for this install and this site: each tick
    lingers until just before the next, so that a wake-up waits a quarter of a second, not a
    period. page: (file, seconds or None): each tick writes the status page there too, every
    that many seconds (at most once a tick: every tick without them)."""
    tick = tick_command()
    state = qpy.state_dir()
    service = ("[Unit]\nDescription=qpy tick: harvest ended jobs, start queued ones\n\n"
               "[Service]\nType=oneshot\nEnvironment=QPY_STATE=%s\nExecStart=%s --linger=14%s\n"
               # the runners a tick forks on this machine outlive it: not stopped with it
               "KillMode=process\n"
               % (state, tick, page_options(page, 15)))
    timer = ("[Unit]\nDescription=Run the qpy tick every 15 seconds\n\n"
             "[Timer]\nOnBootSec=30\nOnUnitActiveSec=15\nAccuracySec=1\n\n"
             "[Install]\nWantedBy=timers.target\n")
    cron = "* * * * * root QPY_STATE=%s %s --linger=58%s\n" % (  # (cron mails errors)
        state, tick, page_options(page, 60))
    return {"qpy-tick.service": service, "qpy-tick.timer": timer}, cron


def page_options(page, period):
    """The tick's options that write the status page, for a timer of this period (s)."""
    if page is None:
        return ""
    path, every = page
    return " --report=%s --report-every=%d" % (path, max(every or period, period))


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


def timer(install, directory, report_path, report_every):
    every = page_interval(report_path, report_every, None)
    units, cron = timer_units(None if report_path is None else
                              (page_path(report_path), every))
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


def page_path(path):
    """The status page's file as the units name it: absolute (the tick runs in /), of
    characters that the units and the cron line take as they are, in a directory."""
    import re
    path = os.path.abspath(path)
    if not re.fullmatch(r"[A-Za-z0-9/._+,:@=~-]+", path):
        raise qpy.QpyError("--report takes a file name of letters, digits and /._+,:@=~- "
                           "(the units and the cron line take it as it is), not %r."
                           % qpy.shown(path))
    if not os.path.isdir(os.path.dirname(path)) or os.path.isdir(path):
        raise qpy.QpyError("--report=%s: %s." % (qpy.shown(path), "a directory, not a file" if
                           os.path.isdir(path) else "no directory %s to write the page in"
                           % qpy.shown(os.path.dirname(path))))
    return path


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
                .fetchall(),
                db.execute("SELECT name, kind, lost FROM nodes WHERE lost IS NOT NULL")
                .fetchall())
    integrity, homeless, jobs, owing = qpy.atomically(read, write=False)
    problems = []
    if [tuple(row) for row in integrity] != [("ok",)]:
        problems += ["database: %s" % row[0] for row in integrity]
    problems += ["job %d runs on %s, which is no longer a node" % tuple(row) for row in homeless]
    problems += forged_rows([row for row in jobs if qpy.is_live(row)])
    problems += ["node %s: %s" % (node["name"], line) for node in owing
                 for line in leftovers(node, failed_only=True)]
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
            continue
        try:
            command = qpy.job_file_for(job_file, job["id"]).get("command", job["command"])
        except (KeyError, IndexError, TypeError, AttributeError):
            command = job["command"]  # (what the runner would refuse is reported above)
        if command != job["command"]:
            problems.append("job %d's command in the queue is not its job file's, %r: a row "
                            "changed by hand (the job file's runs)"
                            % (job["id"], qpy.shown(command)))
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
    doctor_status_page(report)
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
            qpy.POOLS[node["kind"]]["doctor"](node, report, owner)
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


def doctor_status_page(report):
    """doctor's line on the status page of the timer's ticks: when it was last written."""
    page = last_status_page()
    if page is None:
        report(True, "status page: not written by the timer (qpy_admin.py timer "
               "--report=<file>)")
        return
    age = qpy.format_span(max(time.time() - page["at"], 0))
    exists = os.path.isfile(page["file"])
    report(exists and time.time() - page["at"] <= 2 * page["every"] + 60,
           "status page %s %s %s ago (every %d s)" % (
               page["file"], "written" if exists else "gone, last written", age, page["every"]),
           "the timer's ticks are not writing it: see the last tick above, and their errors "
           "(journalctl -u qpy-tick.service, or cron's mail)")


# ---- The status page (report): what runs now, who used what, at a glance ---------------------
# One self-contained HTML file (inline CSS and SVG, no script, no outside resource: the screens
# and nodes may be offline), written atomically for any web server to serve as it is. Its
# pictures of the history are aggregated in SQL, by user and time bucket: Python handles the
# groups, never the jobs, so each picture costs about one pass over the history of its window,
# read a day at a time (no transaction of the page holds the lock for long).

PAGE_ROWS = {"running": 25, "queued": 15, "failed": 10}  # rows each table shows; the rest counted
PAGE_USERS = 7            # the most active users, each in a colour of their own; then others
FAILURES_SINCE = 7 * 86400
COMMAND_SHOWN = 60        # characters of a command in the tables (all of it on hover)
REASON_SHOWN = 40         # characters of why a node is down, beside its state (all on hover)
NAME_SHOWN = 24           # characters of a job's name


def report(path, refresh):
    """The report command: the page written to `path`, reloading itself every `refresh` s."""
    seconds = 0 if refresh is None else whole_number(
        refresh, 1, 86400, "--refresh takes a whole number of seconds from 1 to 86400, not %r.")
    write_status_page(path, seconds)
    print("Report written to %s." % path)


def write_status_page(path, refresh):
    """The page, from the DB as it is now, in place of the old one at once (a web server serves
    the old page or the whole new one, never half), readable by all. refresh 0: no reload."""
    now = time.time()
    page = status_page(site_now(now), site_over_time(now), now, refresh)
    try:
        qpy.write_atomically(path, page.encode(), mode=0o644)
    except OSError as e:
        raise qpy.QpyError("Cannot write the report %s: %s." % (path, e.strerror))


def escape(text):
    """Text from the DB as HTML text or an attribute's value: nothing in a job's name or
    command, a user's or a node's name is ever read as HTML."""
    import html
    return html.escape(str(text))


def whole_number(text, least, most, refusal):
    """A whole number typed, from `least` to `most`; else QpyError(refusal naming the text)."""
    if not (text.isascii() and text.isdigit() and least <= int(text) <= most):
        raise qpy.QpyError(refusal % qpy.shown(text))
    return int(text)


# -- what the page shows, read from the DB

def site_now(now):
    """The page's "Now", in one read transaction: users and nodes as `qpy status` has them,
    each user's share, the jobs (as many as the tables show), what ended in the last day."""
    def read(db):
        site = qpy.site_report(db)
        nodes = db.execute("SELECT cores, state FROM nodes").fetchall()
        site["shares"] = qpy.compute_shares(qpy.load_rules(db), qpy.share_holders(db),
                                            qpy.shared_cores(nodes))
        site["running"] = db.execute(  # (all of them: there are at most as many as cores)
            "SELECT id, user, name, command, node, n_cores, gpus, started_at FROM jobs WHERE "
            + qpy.LIVE_SQL + " AND status = 'running' ORDER BY started_at, id").fetchall()
        site["queued"] = db.execute(
            "SELECT id, user, name, n_cores, gpus, queued_at, reason FROM jobs WHERE "
            + qpy.LIVE_SQL + " AND status != 'running' ORDER BY position, id LIMIT ?",
            (PAGE_ROWS["queued"],)).fetchall()
        site["failed"] = db.execute(
            "SELECT id, user, name, node, ended_at, exit_code, signal, reason FROM history "
            "WHERE ended_at > ? AND status = 'failed' ORDER BY ended_at DESC LIMIT ?",
            (now - FAILURES_SINCE, PAGE_ROWS["failed"])).fetchall()
        site["ended"], site["failures"] = db.execute(
            "SELECT COUNT(*), TOTAL(status = 'failed') FROM history WHERE ended_at > ?",
            (now - 86400,)).fetchone()
        site["dispatch"] = qpy.setting(db, "dispatch")
        return site
    return qpy.atomically(read, write=False)


def chart_windows(now):
    """Each picture's buckets: (start, width in seconds, how many). The last bucket ends now
    (its average is of the part gone by); days and weeks begin at local midnight."""
    from datetime import date, datetime, timedelta
    today = date.fromtimestamp(now)
    midnight = lambda day: datetime.combine(day, datetime.min.time()).timestamp()
    quarter = now - now % 900
    days_start = midnight(today - timedelta(days=29))
    weeks_start = midnight(today - timedelta(days=today.weekday() + 7 * 11))
    starts = {"cores-24h": (quarter - 95 * 900, 900), "cores-30d": (days_start, 6 * 3600),
              "waits-30d": (days_start, 86400), "core-hours-weeks": (weeks_start, 7 * 86400)}
    return {name: (start, width, bucket_count(start, width, now))
            for name, (start, width) in starts.items()}


def bucket_count(start, width, now):
    """How many buckets from `start` to now: the one now is in counts (ceil), and a day or
    a week that a change to summer time made an hour longer too."""
    return max(1, -int((start - now) // width))


def site_over_time(now):
    """The page's "Over time" from the history (and the jobs running now): None if the
    history is empty."""
    if not qpy.atomically(lambda db: db.execute("SELECT 1 FROM history LIMIT 1").fetchone(),
                          write=False):
        return None
    pictures = {}
    for name, window in chart_windows(now).items():
        held = queue_waits(window, now) if name == "waits-30d" else core_seconds(window, now)
        pictures[name] = (window, held)
    return pictures


HISTORY_SLICE = 86400  # seconds of the history (by when its jobs ended) read in one transaction


def history_by_slices(query, params, start, now):
    """The rows of `query` on the jobs that ended in each slice of HISTORY_SLICE seconds from
    `start` to now (:lo, :hi; the last slice, whose :hi is :end, with the jobs running now
    too), each slice a read transaction of its own: writers wait for a slice at most, never
    for the whole history."""
    rows = []
    low = start
    while low < now:
        high = min(low + HISTORY_SLICE, now)
        rows += qpy.atomically(lambda db: db.execute(
            query, {**params, "lo": low, "hi": high, "end": now}).fetchall(), write=False)
        low = high
    return rows


# The jobs that held cores in the window (:start to :end): those that ended in the slice
# (the history: kept after clean) and, in the last slice, those running now, each with its
# start and end clipped to the window.
SPANS_SQL = (
    "SELECT user, n_cores, MAX(started_at, :start) AS s, MIN(ended_at, :end) AS e "
    "FROM history WHERE ended_at > :lo AND ended_at <= :hi AND started_at < :end UNION ALL "
    "SELECT user, n_cores, MAX(started_at, :start), :end FROM jobs "
    "WHERE " + qpy.LIVE_SQL + " AND status = 'running' AND :hi >= :end")

# Those jobs grouped by user and by the buckets they began and ended in (most jobs begin and
# end in one bucket; a long one spans several): the cores, and the cores times the clipped
# start and end, summed, for core_seconds to spread over the buckets.
SPANS_BY_BUCKET_SQL = (
    "SELECT user, first, last, SUM(n_cores), SUM(n_cores * s), SUM(n_cores * e) FROM ("
    "SELECT user, n_cores, s, e, CAST((s - :start) / :width AS INTEGER) AS first, "
    "MIN(CAST((e - :start) / :width AS INTEGER), :count - 1) AS last "
    "FROM (" + SPANS_SQL + ") WHERE e > s) GROUP BY user, first, last")


def core_seconds(window, now):
    """{user: [core-seconds in each bucket of the window]}: what each (user, first bucket,
    last bucket) group of jobs held, the parts run in its first and last buckets and a whole
    bucket in each between."""
    start, width, count = window
    held = {}
    for user, first, last, cores, cores_from, cores_to in history_by_slices(
            SPANS_BY_BUCKET_SQL, {"start": start, "width": width, "count": count}, start, now):
        buckets = held.setdefault(user, [0.0] * count)
        if first == last:
            buckets[first] += cores_to - cores_from
            continue
        buckets[first] += cores * (start + (first + 1) * width) - cores_from
        buckets[last] += cores_to - cores * (start + last * width)
        for between in range(first + 1, last):
            buckets[between] += cores * width
    return held


# How long the jobs that started in the window waited in the queue, by the day they started
# (those of the slice, and in the last slice those running now): how many waited how long, in
# whole seconds rounded down to two significant digits (the number of digits, and the first
# two), a histogram of at most some 900 bins a day whatever the number of jobs.
QUEUE_WAITS_SQL = (
    "SELECT day, length(wait), CAST(substr(wait, 1, 2) AS INTEGER), COUNT(*) FROM ("
    "SELECT CAST((started_at - :start) / :width AS INTEGER) AS day, "
    "CAST(MAX(started_at - queued_at, 0) AS INTEGER) AS wait FROM history "
    "WHERE ended_at > :lo AND ended_at <= :hi AND started_at >= :start UNION ALL "
    "SELECT CAST((started_at - :start) / :width AS INTEGER), "
    "CAST(MAX(started_at - queued_at, 0) AS INTEGER) FROM jobs "
    "WHERE " + qpy.LIVE_SQL + " AND status = 'running' AND started_at >= :start "
    "AND :hi >= :end) WHERE day < :count GROUP BY 1, 2, 3")


def queue_waits(window, now):
    """{day: (jobs started, median wait, 90th percentile)} of the window's days, the waits
    to within 5% (the middle of their two-digit histogram's bin)."""
    start, width, count = window
    days = {}  # day: {wait's bin: jobs}
    for day, digits, leading, jobs in history_by_slices(
            QUEUE_WAITS_SQL, {"start": start, "width": width, "count": count}, start, now):
        size = 10 ** max(digits - 2, 0)  # (below 100 s, a bin is one second: exact)
        middle = leading * size + (size - 1) / 2
        days.setdefault(day, {})
        days[day][middle] = days[day].get(middle, 0) + jobs
    return {day: (sum(bins.values()), nearest_rank(bins, 0.5), nearest_rank(bins, 0.9))
            for day, bins in days.items()}


def nearest_rank(bins, fraction):
    """The value at the ceil(fraction * n)th of the n values that {value: how many} counts."""
    rank = math.ceil(fraction * sum(bins.values()))
    seen = 0
    for value in sorted(bins):
        seen += bins[value]
        if seen >= rank:
            return value


# -- the page

def status_page(site, pictures, now, refresh):
    colours = user_colours(site, pictures)
    title = "qpy: %s" % escape(qpy.state_dir())
    return "".join([
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<meta http-equiv='refresh' content='%d'>" % refresh if refresh else "",
        "<title>%s</title><style>%s</style></head><body>" % (title, PAGE_CSS),
        page_header(site, now, refresh),
        "<h2>Now</h2><div class='now'><div class='column wide'>",
        card("Nodes", nodes_table(site["nodes"]), "nodes"),
        card("Running", running_table(site["running"], now), "running"),
        "</div><div class='column'>",
        card("Users", users_table(site, colours), "users"),
        card("Queued", queued_table(site, now), "queued"),
        card("Recent failures (7 days)", failures_table(site["failed"], now), "failures"),
        "</div></div><h2>Over time</h2>",
        over_time(pictures, colours, site["cores"], now),
        "</body></html>\n"])


def page_header(site, now, refresh):
    running, queued = len(site["running"]), sum(user["queued"] for user in site["users"])
    states = [node["state"] for node in site["nodes"]]
    tiles = [("cores in use", "%d<small> / %d</small>" % (site["cores_used"], site["cores"])),
             ("jobs running", "%d" % running), ("jobs queued", "%d" % queued),
             ("nodes up", "%d<small> / %d</small>" % (states.count("up"), len(states))),
             ("ended in 24 h", "%d<small>, %d failed</small>" % (site["ended"],
                                                                site["failures"]))]
    notes = [("written %s" % qpy.format_time(now))]
    if refresh:
        notes.append("reloads every %d s" % refresh)
    return "".join(
        ["<header><h1>qpy <span class='muted'>%s</span></h1><p class='muted'>%s</p></header>"
         % (escape(qpy.state_dir()), " · ".join(notes)),
         "" if site["dispatch"] else "<p class='banner'>No job starts on this site now "
         "(qpy_admin.py finish); running jobs go on.</p>",
         "<div class='tiles'>"]
        + ["<div class='tile'><b>%s</b>%s</div>" % (value, label) for label, value in tiles]
        + ["</div>"])


def card(title, body, name):
    return "<section class='card' id='%s'><h3>%s</h3>%s</section>" % (name, title, body)


NUMBER_COLUMNS = ("job", "cores", "queued", "running for", "waiting for", "exit")


def table(headers, rows, empty, more=0, numbers=NUMBER_COLUMNS):
    """An HTML table of cells already escaped; `empty` said when it has no rows, and how many
    more there are than shown. The headers of `numbers` are right-aligned, as their cells."""
    if not rows:
        return "<p class='muted'>%s</p>" % empty
    head = "".join("<th%s>%s</th>" % (" class='number'" if header in numbers else "", header)
                   for header in headers)
    body = "".join("<tr>%s</tr>" % "".join(cells) for cells in rows)
    tail = "<p class='muted'>and %d more</p>" % more if more > 0 else ""
    return "<table><tr>%s</tr>%s</table>%s" % (head, body, tail)


def cell(text, css="", hover=None):
    """A table cell of text from the DB, with the whole text on hover when shown shortened."""
    return "<td%s%s>%s</td>" % (" class='%s'" % css if css else "",
                                " title='%s'" % escape(hover) if hover else "", escape(text))


def shortened(text, most):
    """One line of at most `most` characters (the whole text, or its start and an ellipsis)."""
    line = " ".join(str(text).split())
    return line if len(line) <= most else line[:most - 1] + "…"


def meter(used, total, text, css=""):
    """A load bar: `used` of `total` filled, and the figures beside it."""
    share = 0 if not total else min(100.0, 100.0 * used / total)
    return ("<td><div class='meter %s'><div class='bar'><span style='width:%.1f%%'></span></div>"
            "<span class='figure'>%s</span></div></td>" % (css, share, text))


def nodes_table(nodes):
    rows = []
    for node in nodes:
        reason = "; ".join(filter(None, [node["state_reason"], node["leftovers"] and "%s still "
                                         "to stop (qpy_admin.py list)" % qpy.plural(
                                             node["leftovers"], "given-up attempt")]))
        state = "<td class='condition'><span class='state %s'>%s</span> %s</td>" % (
            node["state"], node["state"], "<span class='reason' title='%s'>%s</span>" % (
                escape(reason), escape(shortened(reason, REASON_SHOWN)))
            if reason else "")
        used, total = qpy.memory_cells(node)
        memory = (meter(node["memory_used_gb"], node["memory_gb"], "%s / %s GB" % (used, total),
                        node["state"]) if node["memory_gb"] is not None
                  else "<td class='muted'>not limited</td>")
        gpus = (meter(node["gpus_used"], node["gpus"], "%d / %d" % (
            node["gpus_used"], node["gpus"]), node["state"]) if node["gpus"]
            else "<td class='muted'>none</td>")
        rows.append([cell(node["name"] + qpy.pool_note(node), "name"), state,
                     meter(node["cores_used"], node["cores"], "%d / %d" % (
                         node["cores_used"], node["cores"]), node["state"]), memory, gpus])
    return table(["node", "state", "cores", "memory", "GPUs"], rows, "No nodes.", numbers=())


def users_table(site, colours):
    rows = []
    for user in site["users"]:
        least, extra = site["shares"].get(user["user"], (0, 0))
        share = least + extra
        scale = max(share, user["cores"], 1)
        marks = "".join("<i class='mark' style='left:%.1f%%' title='%s'></i>" % (
            100.0 * cores / scale, what) for cores, what in (
            (least, "minimum %d" % least), (share, "minimum + extra %d" % share)) if cores)
        over = " over" if user["cores"] > share else ""
        bar = ("<td><div class='meter%s'><div class='bar'><span style='width:%.1f%%'></span>%s"
               "</div><span class='figure'>%d <small>of %d+%d</small></span></div></td>"
               % (over, 100.0 * user["cores"] / scale, marks, user["cores"], least, extra))
        rows.append(["<td class='name'><i class='swatch %s'></i>%s</td>" % (
            colours.get(user["user"], "others"), escape(user["user"])), bar,
            cell(user["queued"], "number")])
    return table(["user", "cores in use <small>of minimum+extra</small>", "queued"], rows,
                 "No users yet.")


def name_cell(job):
    name = job["name"] or ""
    return cell(shortened(name, NAME_SHOWN), "name", hover=name if len(name) > NAME_SHOWN
                else None)


def running_table(jobs, now):
    rows = [[cell(job["id"], "number"), cell(job["user"]), name_cell(job),
             cell(shortened(job["command"], COMMAND_SHOWN), "command",
                  hover=job["command"] if len(job["command"]) > COMMAND_SHOWN else None),
             cell(job["node"]), cell(job["n_cores"], "number"),
             cell(qpy.format_span(now - job["started_at"]), "number")]
            for job in jobs[:PAGE_ROWS["running"]]]
    return table(["job", "user", "name", "command", "node", "cores", "running for"], rows,
                 "No job is running.", len(jobs) - PAGE_ROWS["running"])


def queued_table(site, now):
    queued = sum(user["queued"] for user in site["users"])
    rows = [[cell(job["id"], "number"), cell(job["user"]), name_cell(job),
             cell(job["n_cores"], "number"), cell(qpy.format_span(now - job["queued_at"]),
                                                  "number"), cell(job["reason"] or "")]
            for job in site["queued"]]
    return table(["job", "user", "name", "cores", "waiting for", "why"], rows,
                 "No job is waiting.", queued - len(rows))


def failures_table(jobs, now):
    rows = [[cell(job["id"], "number"), cell(job["user"]), name_cell(job),
             cell(job["node"] or ""), cell(moment(job["ended_at"], now)),
             cell(qpy.exit_text(job), "number"), cell(job["reason"] or "")] for job in jobs]
    return table(["job", "user", "name", "node", "ended", "exit", "reason"], rows,
                 "No job failed in the last 7 days.")


def moment(at, now):
    """A time to the second, without its date when it is today's."""
    shown = qpy.format_time(at)
    return shown.split()[1] if shown.split()[0] == qpy.format_time(now).split()[0] else shown


def user_colours(site, pictures):
    """{user: CSS class}: u0, u1... for the users who used the most core-hours over the
    charts' windows (then those using cores now); nobody else has one ("other users")."""
    used = {}
    for name, (_, values) in (pictures or {}).items():
        if name.startswith("core"):
            for user, buckets in values.items():
                used[user] = used.get(user, 0) + sum(buckets)
    for user in site["users"]:
        used.setdefault(user["user"], 0)
        used[user["user"]] += user["cores"]
    ranked = sorted(used, key=lambda user: (-used[user], user))
    return {user: "u%d" % number for number, user in enumerate(ranked[:PAGE_USERS])}


# -- the pictures (inline SVG, coloured by the page's CSS: light and dark alike)

SVG_SIZE = (960, 300)
PLOT = {"left": 72, "right": 950, "top": 14, "bottom": 262}  # the area inside the axes


def over_time(pictures, colours, site_cores, now):
    if pictures is None:
        return ("<p class='card empty'>No history yet: the pictures of who used what appear "
                "once jobs have ended (qpy history lists them).</p>")
    return "<div class='charts'>%s</div>" % "".join([
        usage_figure("cores-24h", "Cores in use, last 24 hours", "15-minute averages",
                     pictures["cores-24h"], colours, site_cores, now),
        usage_figure("cores-30d", "Cores in use, last 30 days", "6-hour averages",
                     pictures["cores-30d"], colours, site_cores, now),
        waits_figure(pictures["waits-30d"], now),
        usage_figure("core-hours-weeks", "Core-hours per week, last 12 weeks", "",
                     pictures["core-hours-weeks"], colours, None, now)])


def figure(name, title, note, svg, legend):
    return ("<figure class='card' id='%s'><figcaption>%s <small class='muted'>%s</small>"
            "</figcaption>%s%s</figure>" % (name, title, note, svg, legend))


def usage_figure(name, title, note, picture, colours, site_cores, now):
    """Cores in use per user (site_cores: the averages, stacked areas, against the site's
    cores), or core-hours per user (site_cores None: stacked bars)."""
    (start, width, count), held = picture
    series = user_series(held, colours)
    if not series:
        return figure(name, title, note, "<p class='muted empty'>No job ran in this time.</p>", "")
    elapsed = [min(width, now - (start + k * width)) for k in range(count)]
    if site_cores is None:
        values = [(user, css, [seconds / 3600 for seconds in buckets])
                  for user, css, buckets in series]
    else:
        values = [(user, css, [seconds / max(elapsed[k], 1) for k, seconds in enumerate(buckets)])
                  for user, css, buckets in series]
    tops = [sum(v[k] for _, _, v in values) for k in range(count)]
    y = axis(max(tops + [(site_cores or 0) * 1.1]))  # (room above the site's line for its label)
    body = (stacked_bars(values, count, y) if site_cores is None
            else stacked_areas(values, count, y) + capacity_line(site_cores, y))
    svg = chart_svg(name, y, count, time_labels(name, start, width, count), body)
    return figure(name, title, note, svg, legend([(user, css) for user, css, _ in series]))


def user_series(held, colours):
    """[(user, CSS class, buckets)]: the users with a colour, largest first (drawn at the
    bottom), and "other users" for all the rest; none that held nothing."""
    own = sorted((user for user in held if user in colours and any(held[user])),
                 key=lambda user: colours[user])
    rest = [held[user] for user in held if user not in colours and any(held[user])]
    series = [(user, colours[user], held[user]) for user in own]
    if rest:
        series.append(("other users", "others", [sum(values) for values in zip(*rest)]))
    return series


def axis(highest):
    """The y axis for values up to `highest`: (top, step), a round step, 3 to 6 of them."""
    highest = max(highest, 1e-9)
    power = 10 ** math.floor(math.log10(highest / 4))
    step = next(power * m for m in (1, 2, 2.5, 5, 10) if highest / (power * m) <= 5)
    return math.ceil(highest / step - 1e-9) * step, step


def y_of(value, y):
    return PLOT["bottom"] - (PLOT["bottom"] - PLOT["top"]) * value / y[0]


def x_of(bucket, count):
    return PLOT["left"] + (PLOT["right"] - PLOT["left"]) * bucket / count


def stacked_areas(values, count, y):
    """Each series' area between the sum of those below it and that sum plus its own values,
    bucket by bucket (a step per bucket: each value is its bucket's average)."""
    below = [0.0] * count
    groups = []
    for user, css, own in values:
        above = [b + v for b, v in zip(below, own)]
        outline = [(x_of(k + side, count), y_of(above[k], y)) for k in range(count)
                   for side in (0, 1)]
        outline += [(x_of(k + side, count), y_of(below[k], y)) for k in reversed(range(count))
                    for side in (1, 0)]
        groups.append(series_group(user, css, "<path d='M%s Z'/>" % " L".join(
            "%.1f,%.1f" % point for point in outline)))
        below = above
    return "".join(groups)


def stacked_bars(values, count, y):
    below = [0.0] * count
    groups = []
    gap = (PLOT["right"] - PLOT["left"]) / count * 0.15
    for user, css, own in values:
        bars = "".join("<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f'/>" % (
            x_of(k, count) + gap, y_of(below[k] + v, y), x_of(1, count) - PLOT["left"] - 2 * gap,
            y_of(below[k], y) - y_of(below[k] + v, y)) for k, v in enumerate(own) if v > 0)
        groups.append(series_group(user, css, bars))
        below = [b + v for b, v in zip(below, own)]
    return "".join(groups)


def series_group(name, css, shapes):
    return "<g class='series %s' data-series='%s'><title>%s</title>%s</g>" % (
        css, escape(name), escape(name), shapes)


def capacity_line(cores, y):
    return ("<line class='capacity' x1='%d' x2='%d' y1='%.1f' y2='%.1f'/><text class='limit' "
            "x='%d' y='%.1f' text-anchor='end'>%d cores</text>" % (
                PLOT["left"], PLOT["right"], y_of(cores, y), y_of(cores, y), PLOT["right"] - 4,
                y_of(cores, y) - 6, cores)) if cores else ""


def waits_figure(picture, now):
    """The median and the 90th percentile of each day's waits, as two bars in each day."""
    (start, width, count), days = picture
    title = "Time in the queue per day, last 30 days"
    if not days:
        return figure("waits-30d", title, "", "<p class='muted empty'>No job started in this "
                      "time.</p>", "")
    unit, name = duration_unit(max(p90 for _, _, p90 in days.values()))
    note = "%s, of the jobs that started that day" % name
    y = axis(max(p90 for _, _, p90 in days.values()) / unit)
    slot = x_of(1, count) - PLOT["left"]
    shapes = {"p90": [], "p50": []}
    for day, (jobs, median, p90) in sorted(days.items()):
        for css, value, inset in (("p90", p90, 0.12), ("p50", median, 0.3)):
            shapes[css].append("<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f'><title>%s: "
                               "%s of %d jobs</title></rect>" % (
                                   x_of(day, count) + slot * inset, y_of(value / unit, y),
                                   slot * (1 - 2 * inset), y_of(0, y) - y_of(value / unit, y),
                                   "90th percentile" if css == "p90" else "median",
                                   qpy.format_span(value), jobs))
    body = (series_group("90th percentile", "p90", "".join(shapes["p90"]))
            + series_group("median", "p50", "".join(shapes["p50"])))
    svg = chart_svg("waits-30d", y, count, time_labels("waits-30d", start, width, count), body)
    return figure("waits-30d", title, note, svg, legend([("median", "p50"),
                                                         ("90th percentile", "p90")]))


def duration_unit(seconds):
    """The unit the wait chart counts in: (seconds per unit, its name)."""
    return (3600, "hours") if seconds >= 7200 else (60, "minutes") if seconds >= 120 else \
        (1, "seconds")


def time_labels(name, start, width, count):
    """[(bucket, text)]: where the x axis is labelled, and how: hours, days or weeks."""
    from datetime import datetime
    at = lambda k: datetime.fromtimestamp(start + k * width + 1)
    if name == "cores-24h":
        return [(k, at(k).strftime("%H:%M")) for k in range(count) if at(k).hour % 3 == 0
                and at(k).minute == 0]
    day = lambda moment: "%d %s" % (moment.day, moment.strftime("%b"))
    if name == "cores-30d":
        return [(k, day(at(k))) for k in range(0, count, 4 * 5)]
    if name == "waits-30d":
        return [(k + 0.5, day(at(k))) for k in range(0, count, 5)]
    return [(k + 0.5, day(at(k))) for k in range(count)]


def chart_svg(name, y, count, x_labels, body):
    """An SVG picture: the grid with the y axis's values, the x labels (at bucket positions),
    then the series."""
    top, step = y
    grid = "".join(
        "<line class='grid' x1='%d' x2='%d' y1='%.1f' y2='%.1f'/><text x='%d' y='%.1f' "
        "text-anchor='end'>%g</text>" % (PLOT["left"], PLOT["right"], y_of(value, y),
                                         y_of(value, y), PLOT["left"] - 10, y_of(value, y) + 6,
                                         value)
        for value in (number * step for number in range(int(round(top / step)) + 1)))
    labels = "".join("<text x='%.1f' y='%d' text-anchor='middle'>%s</text>" % (
        x_of(k, count), PLOT["bottom"] + 28, text) for k, text in x_labels)
    return ("<svg class='chart' viewBox='0 0 %d %d' role='img' aria-label='%s'>%s%s%s"
            "<line class='axis' x1='%d' x2='%d' y1='%d' y2='%d'/></svg>" % (
                SVG_SIZE + (name, grid, labels, body, PLOT["left"], PLOT["right"],
                            PLOT["bottom"], PLOT["bottom"])))


def legend(entries):
    return "<ul class='legend'>%s</ul>" % "".join(
        "<li><i class='swatch %s'></i>%s</li>" % (css, escape(name))
        for name, css in entries)

# Light and dark (the screen's or browser's preference), sized to be read across a room on a
# 1920 x 1080 screen; the system's own fonts. Users' colours and the states' are variables
# that the tables and the SVG pictures share.
PAGE_CSS = """
:root{color-scheme:light dark;--bg:#eef1f5;--card:#fff;--text:#16191d;--muted:#5b6470;
--line:#d5dae1;--track:#dfe4ea;--fill:#2f6fd0;--over:#c2410c;--up:#1a8a4a;--drained:#b07800;
--down:#cf3030;--u0:#2f6fd0;--u1:#e07b00;--u2:#17926a;--u3:#c2428f;--u4:#7357d6;--u5:#8f6a00;
--u6:#0a93a8;--others:#9aa1ab;--p50:#2f6fd0;--p90:#a9c4ef}
@media (prefers-color-scheme:dark){:root{--bg:#0d1014;--card:#181c22;--text:#e9edf1;
--muted:#9aa4b0;--line:#2b313a;--track:#2b323b;--fill:#5b9cff;--over:#fb923c;--up:#3ccf7a;
--drained:#f0b429;--down:#ff6b6b;--u0:#5b9cff;--u1:#ffa94d;--u2:#38d39f;--u3:#f27ac8;
--u4:#a08cff;--u5:#e9c46a;--u6:#4dd4e6;--others:#6e7682;--p50:#5b9cff;--p90:#34507a}}
html{font-size:clamp(14px,1.05vw,24px)}
body{margin:0;padding:.8rem 1.4rem 2rem;background:var(--bg);color:var(--text);
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif;
line-height:1.3}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:0 1.5rem}
h1{font-size:1.7rem;margin:0}h1 .muted{font-weight:400;font-size:1.1rem}
h2{font-size:1.35rem;margin:1rem 0 .5rem}
h3,figcaption{font-size:1.05rem;font-weight:600;margin:0 0 .4rem}
header p{margin:.2rem 0}.muted,small{color:var(--muted)}small{font-size:.8em}
.tiles{display:flex;flex-wrap:wrap;gap:.8rem;margin:.6rem 0}
.tile{background:var(--card);border-radius:.5rem;padding:.4rem 1.1rem;color:var(--muted)}
.tile b{display:block;font-size:2.2rem;line-height:1.1;color:var(--text);
font-variant-numeric:tabular-nums}
.tile b small{font-size:1.1rem}
.banner{background:var(--drained);color:#000;padding:.4rem 1rem;border-radius:.4rem;
font-weight:600}
.now{display:flex;flex-wrap:wrap;gap:.8rem;align-items:flex-start}
.column{flex:5 1 32rem;display:flex;flex-direction:column;gap:.8rem;min-width:0}
.column.wide{flex:7 1 40rem}
.card{background:var(--card);border-radius:.6rem;padding:.7rem 1rem;margin:0;min-width:0;
overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;font-weight:600;font-size:.8rem;color:var(--muted);white-space:nowrap}
th.number{text-align:right}
td,th{padding:.2rem .45rem;border-bottom:1px solid var(--line);vertical-align:middle}
td.number{text-align:right;white-space:nowrap}td.name{white-space:nowrap}
#nodes td.name,#users td.name{font-weight:600}td.condition{min-width:8rem}
td.command{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85em;
overflow-wrap:anywhere}
.state{display:inline-block;min-width:4.2em;text-align:center;border-radius:1em;
padding:0 .5em;font-weight:600;color:#fff}
.state.up{background:var(--up)}.state.drained{background:var(--drained);color:#000}
.state.down{background:var(--down)}.reason{color:var(--muted);font-size:.85em}
.meter{display:flex;align-items:center;gap:.5rem}
.bar{position:relative;flex:1 0 3rem;height:.9rem;background:var(--track);border-radius:.45rem;
overflow:hidden}
.bar span{position:absolute;left:0;top:0;bottom:0;background:var(--fill)}
.meter.drained .bar span{background:var(--drained)}.meter.down .bar span{background:var(--down)}
.meter.over .bar span{background:var(--over)}
.bar .mark{position:absolute;top:0;bottom:0;width:2px;margin-left:-1px;background:var(--text);
opacity:.55}
.figure{white-space:nowrap;font-variant-numeric:tabular-nums;min-width:5.5em;text-align:right}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:.2em;margin-right:.4em;
vertical-align:baseline}
.u0{fill:var(--u0);background:var(--u0)}.u1{fill:var(--u1);background:var(--u1)}
.u2{fill:var(--u2);background:var(--u2)}.u3{fill:var(--u3);background:var(--u3)}
.u4{fill:var(--u4);background:var(--u4)}.u5{fill:var(--u5);background:var(--u5)}
.u6{fill:var(--u6);background:var(--u6)}.others{fill:var(--others);background:var(--others)}
.p50{fill:var(--p50);background:var(--p50)}.p90{fill:var(--p90);background:var(--p90)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(36rem,1fr));gap:.8rem}
svg.chart{display:block;width:100%;height:auto;font-size:17px;fill:var(--muted)}
svg .grid{stroke:var(--line);stroke-width:1}svg .axis{stroke:var(--muted);stroke-width:1.5}
svg .capacity{stroke:var(--text);stroke-dasharray:6 5;stroke-width:1.5}
svg .limit{fill:var(--text)}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:.2rem 1.2rem;margin:.3rem 0 0;
padding:0}
.empty{padding:1rem 0}
"""


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
    "tick": lambda a: tick(a["--linger"], a["--report"], a["--report-every"]),
    "start": lambda a: dispatch(True),
    "finish": lambda a: dispatch(False),
    "set": lambda a: settings(a["<key>"], a["<value>"]),
    "timer": lambda a: timer(a["--install"], a["--dir"], a["--report"], a["--report-every"]),
    "check": lambda a: 1 if check_site() else 0,
    "doctor": lambda a: 1 if doctor(a["--as"]) else 0,
    "report": lambda a: report(a["--html"], a["--refresh"]),
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
