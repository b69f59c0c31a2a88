"""Several users on one site, with real Unix accounts on the emulated cluster: the 2018 qpy's
multi-user test scenarios as assertions, and the security model (README, "Security")."""
import os
import sqlite3
import subprocess

from conftest import back_to_schema_8, wait_for

TEN_CORES = "node1 cores=4 memory=64\nnode2 cores=3 memory=64\nnode3 cores=3 memory=64\n"
# A job that runs until the test lets it end: `touch stop-<ID>` in its directory.
HOLD = "while [ ! -e stop-$QPY_JOB_ID ]; do sleep 0.1; done; id -un"


def multi_site(lab, users=("alice", "bob"), rules="even", nodes=TEN_CORES):
    site = lab(nodes)
    site.admin("users", site.write("users", "\n".join(users) + "\n"))
    site.admin("distribute", site.write("rules", rules + "\n"))
    return site


def release(site, user, job_id):
    open(os.path.join(site.workdir(user), "stop-%d" % job_id), "w").close()


def running(site, user=None):
    return sorted(j["id"] for j in site.jobs().values()
                  if j["status"] == "running" and (user is None or j["user"] == user))


def cores_in_use(site):
    use = {}
    for job in site.jobs().values():
        if job["status"] in ("running", "starting"):
            use[job["user"]] = use.get(job["user"], 0) + job["n_cores"]
    return use


def settle(site, expected):
    """Tick as root (the timer's job) until each user holds the expected cores, every claim
    confirmed by its runner (a claim still 'starting' shows as queued)."""
    wait_for(lambda: site.admin("tick") is not None and cores_in_use(site) == expected
             and not any(job["status"] == "starting" for job in site.jobs().values()),
             what="cores in use to be %s (they are %s)" % (expected, cores_in_use(site)))


def test_alone_a_user_gets_all_then_freed_cores_go_to_the_other(lab):
    """general.sh / long.sh: 10 cores, even: alice alone takes all 10; bob then queues and
    takes every core alice frees until both hold 5."""
    site = multi_site(lab)
    alice = [site.submit("alice", "-m", "1", HOLD) for _ in range(12)]
    settle(site, {"alice": 10})
    bob = [site.submit("bob", "-m", "1", HOLD) for _ in range(6)]
    settle(site, {"alice": 10})
    assert site.jobs()[bob[0]]["reason"] == "waiting for free cores"
    assert site.jobs()[alice[10]]["reason"] == "waiting for its share of the cores"
    for step in range(1, 6):
        release(site, "alice", running(site, "alice")[0])
        settle(site, {"alice": 10 - step, "bob": step})
    last = running(site, "alice")[0]
    release(site, "alice", last)
    site.wait_status(last, "done")  # (alice holds 5 cores before and after)
    settle(site, {"alice": 5, "bob": 5})  # alice's freed core comes back to her
    status = site.ok("alice", "status")
    lines = {line.split()[0]: line.split()[1:3] for line in status.splitlines()[2:4]}
    assert lines == {"alice": ["5", "1"], "bob": ["5", "1"]}
    assert "There are 10 out of a total of 10 cores being used." in status
    for job in running(site, "bob")[:1]:
        release(site, "bob", job)
        assert site.wait_status(job, "done")["user"] == "bob"
        assert site.output("bob", job) == "bob\n"  # ran as bob, started by root's tick
    site.ok("alice", "kill", "all")
    site.ok("bob", "kill", "all")


def test_shares_of_the_manuals_rules(lab):
    site = multi_site(lab, rules="even minimum 2")
    out = site.admin("distribute", site.state + ".rules")
    assert "Cores distributed (10 in all, on the nodes that are up):" in out
    assert "alice                minimum   2  extra   3" in out
    assert "bob                  minimum   2  extra   3" in out
    out = site.admin("distribute", site.write("rules", "explicit minimum 1\nalice=4\nbob 1+50%\n"))
    assert "alice                minimum   1  extra   4" in out
    assert "bob                  minimum   1  extra   4" in out  # 4 = 50% of 8, +0 left over


def test_a_minimum_is_kept_for_its_user(lab):
    """even minimum 2: bob's 2 guaranteed cores are never lent to alice."""
    site = multi_site(lab, rules="even minimum 2")
    [site.submit("alice", "-m", "1", HOLD) for _ in range(12)]
    settle(site, {"alice": 8})
    bob = site.submit("bob", "-m", "1", HOLD)
    settle(site, {"alice": 8, "bob": 1})
    site.ok("alice", "kill", "all")
    release(site, "bob", bob)


def test_killing_scenario(lab):
    """killing.sh: kill 1; 11 more on 10 cores; kill 3-5 7,9; job 12 then starts."""
    site = multi_site(lab, users=("alice",))
    first = site.submit("alice", "sleep", "30")
    site.wait_status(first, "running")
    assert site.ok("alice", "kill", str(first)) == "1 job will be killed.\n"
    site.wait_status(first, "killed")
    ids = [site.submit("alice", "-m", "1", "sleep", "60") for _ in range(11)]
    assert ids == list(range(2, 13))
    wait_for(lambda: len(running(site)) == 10, what="10 running")
    assert site.jobs()[12]["status"] == "queue"
    assert site.ok("alice", "kill", "3-5", "7,9") == "5 jobs will be killed.\n"
    for job in (3, 4, 5, 7, 9):
        site.wait_status(job, "killed")
    site.wait_status(12, "running")
    site.ok("alice", "kill", "all")


def test_backfill_scenario(lab):
    """advanceQ.sh: a job that cannot start yet does not hold back smaller ones behind it."""
    site = multi_site(lab, users=("alice",))
    small = [site.submit("alice", "-m", "1", "sleep", "60") for _ in range(2)]
    wait_for(lambda: len(running(site)) == 2, what="2 running")
    big = site.submit("alice", "-n", "4", "-m", "1", "sleep", "60")
    behind = [site.submit("alice", "-m", "1", "sleep", "60") for _ in range(6)]
    wait_for(lambda: len(running(site)) == 8, what="the small jobs behind the big one")
    assert site.jobs()[big]["status"] == "queue"
    assert site.jobs()[big]["reason"] == "waiting for free cores"
    assert all(site.jobs()[j]["status"] == "running" for j in small + behind)
    site.ok("alice", "kill", "all")


def test_basic_nodes_scenario(lab):
    """basicnodes.sh: single-core jobs go to the node with most free cores, alternating."""
    site = multi_site(lab, users=("alice",), nodes="node1 cores=10 memory=64\n"
                                                   "node2 cores=10 memory=64\n")
    site.ok("alice", "config", "checkFMT", r"%j %n\n")
    jobs = []
    for _ in range(5):
        jobs.append(site.submit("alice", "-m", "1", "sleep", "60"))
        site.wait_status(jobs[-1], "running")
    assert [site.jobs()[j]["node"] for j in jobs] == ["node1", "node2", "node1", "node2", "node1"]
    assert site.ok("alice", "check").split() == \
        [w for j in jobs for w in (str(j), site.jobs()[j]["node"])]
    status = site.ok("alice", "status")
    assert any(line.split()[:3] == ["node1", "3", "10"] for line in status.splitlines())
    assert any(line.split()[:3] == ["node2", "2", "10"] for line in status.splitlines())
    site.ok("alice", "kill", "all")


def test_users_cannot_touch_each_others_jobs(lab):
    site = multi_site(lab, users=("alice", "bob"))
    job = site.submit("alice", "sleep", "60")
    site.wait_status(job, "running")
    done = site.submit("alice", "true")
    site.wait_status(done, "done")
    for args, verb in ((("kill", str(job)), "kill"), (("clean", str(done)), "clean")):
        result = site.run("bob", *args)
        assert result.returncode == 1
        assert result.stderr == "qpy: Job %s is not yours: you can only %s your own jobs.\n" \
            % (args[1], verb)
    site.ok("bob", "ctrlQueue", "pause")
    result = site.run("bob", "ctrlQueue", "jump", str(job), "begin")
    assert "is not yours" in result.stderr and result.returncode == 1
    assert site.ok("bob", "check") == "Job submission is paused.\n"  # alice's are not shown
    assert "You have no job" in site.run("bob", "notes", str(job)).stderr
    assert site.jobs()[job]["status"] == "running" and site.jobs()[done]["status"] == "done"
    site.ok("bob", "ctrlQueue", "continue")
    # the operating system agrees: bob cannot read alice's job files
    spool = os.path.join(site.state, "users", site.real("alice"))
    result = site.run("bob", "sub", "cat %s/spool/*" % spool)
    peek = int(result.stdout.split()[1])
    site.wait_status(peek, "failed")
    assert "Permission denied" in site.output("bob", peek, "err")
    assert oct(os.stat(spool).st_mode)[-3:] == "700" and os.stat(spool).st_uid != 0
    site.ok("alice", "kill", "all")


def test_a_user_not_allowed_gets_a_clear_error(lab):
    site = multi_site(lab, users=("alice", "bob"))
    result = site.run("carol", "sub", "hostname")
    assert result.returncode == 1
    assert result.stderr == ("qpy: Job rejected: user carol is not allowed to use this qpy site "
                             "(the administrator adds users to allowed_users).\n")
    assert site.jobs() == {}


def test_root_tick_refuses_a_job_whose_files_are_not_its_owners(lab):
    """The DB is writable by the group: alice re-labels her queued job as bob's. Root's tick
    checks the job file's owner and refuses to run it as bob."""
    site = multi_site(lab, users=("alice", "bob"))
    site.ok("alice", "ctrlQueue", "pause")
    job = site.submit("alice", "id -un > whoami")
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:
        db.execute("UPDATE jobs SET user = ? WHERE id = ?", (site.real("bob"), job))
    db.close()
    site.admin("tick")
    record = site.wait_status(job, "failed", tick=True)
    assert record["reason"].startswith("refused: ")
    assert not os.path.exists(os.path.join(site.workdir("alice"), "whoami"))


FORGE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=PERSIST")  # (as qpy's own connections: see FORGE_SITE)
with db:
    for spec in sys.argv[2:]:
        db.execute("INSERT INTO jobs (user, command, cwd, spec, n_cores, mem, position, "
                   "queued_at) VALUES ('alice', 'forged', '/tmp', ?, 1, 0.1, 0, ?)",
                   (spec, time.time()))
    db.execute("UPDATE jobs SET position = id")
"""


def test_rows_forged_by_bob_never_run_anything_as_alice(lab):
    """bob writes rows 'owned' by alice into the shared DB, pointing at alice's real job file
    and at a file of his own. Neither runs, whoever ticks: root, alice or bob."""
    site = multi_site(lab, users=("alice", "bob"))
    site.ok("alice", "ctrlQueue", "pause")
    real = site.submit("alice", "echo alice-ran >> %s/ran" % site.workdir("alice"))
    alice_file = site.jobs()[real]["spec"]
    bob_file = os.path.join(site.workdir("bob"), "evil.job")
    with open(bob_file, "w") as f:
        f.write('{"argv": ["sh", "-c", "touch %s/pwned"], "cwd": "/tmp", "env": {}, '
                '"ids": [1, 99]}' % site.workdir("bob"))
    os.chmod(bob_file, 0o644)
    result = subprocess.run(["runuser", "-u", site.real("bob"), "--", site.python, "-c",
                             site.real(FORGE),
                             os.path.join(site.state, "qpy.db"), alice_file, bob_file],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    forged = [j for j in site.jobs() if j != real]
    site.ok("alice", "ctrlQueue", "continue")
    site.admin("tick")
    site.tick("alice")
    site.tick("bob")
    for job in forged:
        record = site.wait_status(job, "failed", tick=True)
        assert record["reason"].startswith("refused: "), record["reason"]
    site.wait_status(real, "done")
    assert not os.path.exists(os.path.join(site.workdir("bob"), "pwned"))
    with open(os.path.join(site.workdir("alice"), "ran")) as f:
        assert f.read() == "alice-ran\n"  # her own job, once


def test_a_job_runs_with_its_owners_uid_and_groups_on_the_node(lab):
    site = multi_site(lab, users=("alice",))
    job = site.submit("alice", "id -un; id -Gn; sleep 30")
    site.wait_status(job, "running")
    node = site.jobs()[job]["node"]
    wait_for(lambda: site.output("alice", job).count("\n") >= 2, what="the job's output")
    name, groups = site.output("alice", job).splitlines()[:2]
    assert name == "alice" and "qpylab" in groups.split()
    result = site.cluster.node_exec(node, "root", "ps", "-o", "user:32=,args=", "-C", "sleep")
    assert ["alice", "sleep", "30"] in [line.split() for line in site.logical(result.stdout)
                                        .splitlines()]
    site.ok("alice", "kill", str(job))


def test_someone_outside_the_group_gets_one_clear_line(lab):
    site = multi_site(lab, users=("alice",))
    result = subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i", "HOME=/tmp",
                             "QPY_STATE=" + site.state, site.python, site.qpy, "check"],
                            cwd="/tmp", capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("qpy: ") and "Traceback" not in result.stderr
    assert "Permission denied" in result.stderr or "group" in result.stderr


# ---- What the administrator decides: only they can change it (README, "Security") ----------

# bob, a member of the site's group, tries every way he has to change the site: its tables in
# the shared qpy.db (where sites kept them before site.db), tables of the same names made there
# to shadow site.db's, site.db itself in place, site.db replaced or removed and put back
# changed, and files planted beside it for the administrator's next change to pick up (a hot
# journal SQLite would roll into the copy, the copy itself, a link in its place).
# argv: the state directory, then the SQL of the change ({p}: the tables' schema). Prints the
# ways whose change was written.
FORGE_SITE = r"""
import os, shutil, sqlite3, sys
state, statements = sys.argv[1], sys.argv[2:]
queue = os.path.join(state, "qpy.db")
folder = os.path.join(state, "site")
site = os.path.join(folder, "site.db")


def change(db, prefix):
    before = db.total_changes
    for statement in statements:
        try:
            db.execute(statement.replace("{p}", prefix))
        except sqlite3.Error:
            pass
    return db.total_changes > before


def in_the_queue():
    db = sqlite3.connect(queue)
    # (the site's own mode: a journal another member keeps there is not bob's to remove,
    # which journal_mode=DELETE would at the commit)
    db.execute("PRAGMA main.journal_mode=PERSIST")
    with db:
        if os.path.exists(site):
            db.execute("ATTACH DATABASE ? AS s", (site,))
            for table in ("nodes", "allowed_users", "settings"):
                db.execute("CREATE TABLE IF NOT EXISTS main.%s AS SELECT * FROM s.%s"
                           % (table, table))
            db.execute("INSERT OR IGNORE INTO main.meta SELECT * FROM s.settings")
        return change(db, "main.")


def in_place():
    db = sqlite3.connect("file:%s?mode=rw" % site, uri=True)
    with db:
        return change(db, "main.")


def changed_copy(where):
    copy = os.path.join(where, "forged.%d" % os.getpid())
    shutil.copy(site, copy)
    db = sqlite3.connect(copy)
    with db:
        change(db, "main.")
    db.close()
    return copy


def replaced():
    os.replace(changed_copy(state), site)
    return True


def removed_and_put_back():
    copy = changed_copy(state)
    os.unlink(site)
    os.replace(copy, site)
    return True


def planted_beside():
    for name in ("site.db.new", "site.db.new-journal", "site.db-journal"):
        open(os.path.join(folder, name), "w").close()
    return True


def linked_beside():
    os.symlink(changed_copy(state), os.path.join(folder, "site.db.new"))
    return True


def folder_replaced():
    os.rename(folder, folder + ".old")
    os.mkdir(folder)
    shutil.copy(changed_copy(state), site)
    return True


worked = []
for way in (in_the_queue, in_place, replaced, removed_and_put_back, planted_beside,
            linked_beside, folder_replaced):
    try:
        if way():
            worked.append(way.__name__)
    except (OSError, sqlite3.Error):
        pass
print(" ".join(worked))
"""

FORGERIES = {
    "allowed_users": ["INSERT INTO {p}allowed_users (name) VALUES ('carol')"],
    "address": ["UPDATE {p}nodes SET address = 'node2' WHERE name = 'node1'",
                # (and a column of the jobs table that would stand in for the node's)
                "ALTER TABLE {p}jobs ADD COLUMN address TEXT",
                "UPDATE {p}jobs SET address = 'node2'"],
    "nodes": ["UPDATE {p}nodes SET cores = 50",
              "UPDATE {p}nodes SET state = 'up', state_reason = NULL",  # (before site.db)
              "UPDATE {p}nodes SET drained = NULL"],
    "rules": ["INSERT OR REPLACE INTO {p}%s (key, value) VALUES ('rules', '%s')" % (
        table, '{"kind": "explicit", "minimum": 0, "users": {"bob": [6, 0, false]}}')
        for table in ("meta", "settings")],
    "settings": ["UPDATE {p}%s SET value = '999' WHERE key = 'kill_grace'" % table
                 for table in ("meta", "settings")],
    "switch": ["UPDATE {p}%s SET value = '1' WHERE key = 'dispatch'" % table
               for table in ("meta", "settings")],
}


def forge(site, kind):
    result = subprocess.run(["runuser", "-u", site.real("bob"), "--", site.python, "-c",
                             FORGE_SITE, site.state] + [site.real(statement) for statement in
                                                        FORGERIES[kind]],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def settled_use(site, tick_times=3):
    """Cores in use once root's ticks have nothing more to start."""
    for _ in range(tick_times):
        site.admin("tick")
        wait_for(lambda: not any(job["status"] == "starting" for job in site.jobs().values()),
                 what="every claim confirmed")
    return cores_in_use(site)


def test_a_member_cannot_allow_themselves(lab):
    site = multi_site(lab, users=("alice", "bob"), nodes="node1 cores=2\nnode2 cores=2\n")
    ways = forge(site, "allowed_users")
    assert ways == ["in_the_queue"], ways  # (the shared DB takes it: it changes nothing)
    result = site.run("carol", "sub", "hostname")
    assert result.returncode == 1 and "user carol is not allowed" in result.stderr
    site.admin("tick")
    assert site.jobs() == {}
    site.admin("users", site.write("users", "alice\nbob\ncarol\n"))
    site.wait_status(site.submit("carol", "hostname"), "done", tick=True)


def test_a_member_cannot_change_a_nodes_address(lab):
    site = multi_site(lab, users=("alice", "bob"),
                      nodes="node1 cores=2 attributes=one\nnode2 cores=2 attributes=two\n")
    site.admin("finish")
    job = site.submit("alice", "-a", "one", "hostname")
    assert forge(site, "address") == ["in_the_queue"]
    site.admin("start")
    site.wait_status(job, "done", tick=True)
    assert site.output("alice", job) == "node1\n"  # (the forged address would run it on node2)
    site.admin("add", "node1", "address=node2", "cores=2", "attributes=one")
    job = site.submit("alice", "-a", "one", "hostname")
    site.wait_status(job, "done", tick=True)
    assert site.output("alice", job) == "node2\n"


def test_a_member_cannot_add_cores_or_resume_a_drained_node(lab):
    site = multi_site(lab, users=("alice", "bob"))  # (ten cores: 4 + 3 + 3)
    site.admin("drain", "node3", "maintenance")
    assert forge(site, "nodes") == ["in_the_queue"]
    jobs = [site.submit("bob", "-m", "1", HOLD) for _ in range(12)]
    assert settled_use(site) == {"bob": 7}
    assert {site.jobs()[job]["node"] for job in running(site)} == {"node1", "node2"}
    site.admin("resume", "node3")
    assert settled_use(site) == {"bob": 10}
    for job in jobs:
        release(site, "bob", job)


def test_a_member_cannot_change_the_distribution_rules(lab):
    site = multi_site(lab, users=("alice", "bob"), nodes="node1 cores=3\nnode2 cores=3\n")
    site.admin("finish")  # (both queues full before anything starts: the shares decide)
    jobs = {user: [site.submit(user, "-m", "1", HOLD) for _ in range(6)]
            for user in ("alice", "bob")}
    assert forge(site, "rules") == ["in_the_queue"]
    site.admin("start")
    assert settled_use(site) == {"alice": 3, "bob": 3}  # even, as the administrator set
    for user, held in jobs.items():
        for job in held:
            release(site, user, job)
    assert "bob" in site.admin("distribute", site.write("rules", "explicit\nbob 6+0\nalice 0+0\n"))
    assert '"bob": [6, 0, false]' in site.admin("variables")


def test_a_member_cannot_change_the_settings(lab):
    site = multi_site(lab, users=("alice", "bob"), nodes="node1 cores=2\n")
    assert forge(site, "settings") == ["in_the_queue"]
    for user in ("root", "alice", "bob"):
        out = site.admin("set", "kill_grace") if user == "root" else site.ok(
            user, "set", "kill_grace", tool=site.admin_tool)
        assert out == "kill_grace = 2\n", (user, out)
    refused = site.run("bob", "set", "kill_grace", "1", tool=site.admin_tool)
    assert (refused.returncode, refused.stderr) == (1, "qpy_admin.py: Only the site's "
                                                    "administrator, root, can change its "
                                                    "settings.\n")
    site.admin("set", "kill_grace", "3")
    assert site.admin("set", "kill_grace") == "kill_grace = 3\n"


def test_a_member_cannot_turn_the_site_back_on(lab):
    site = multi_site(lab, users=("alice", "bob"), nodes="node1 cores=2\n")
    site.admin("finish")
    assert forge(site, "switch") == ["in_the_queue"]
    job = site.submit("alice", "hostname")
    for _ in range(3):
        site.admin("tick")
        site.tick("alice")
    assert site.jobs()[job]["status"] == "queue"
    site.admin("start")
    site.wait_status(job, "done", tick=True)


def test_a_site_of_the_former_layout_keeps_what_the_administrator_set(lab):
    """A site of schema 8 kept its nodes, users, rules and settings in the shared qpy.db, in
    a directory that was not sticky. Its members are told to wait for the administrator;
    root's timer tick upgrades it, and everything the administrator set is as it was."""
    import stat
    site = multi_site(lab, users=("alice", "bob"), rules="even minimum 1")
    site.admin("drain", "node3", "maintenance")
    site.admin("set", "kill_grace", "3")
    before = [site.admin(*command) for command in (["list"], ["set"])]
    rules = [line for line in site.admin("variables").splitlines() if line.startswith("rules")]
    back_to_schema_8(site.state)
    os.chmod(site.state, 0o2770)
    result = site.run("alice", "check")
    assert result.returncode == 1 and "was made by an older qpy: its administrator, root, " \
        "upgrades it" in result.stderr, result.stderr
    site.admin("tick")
    assert [site.admin(*command) for command in (["list"], ["set"])] == before
    assert rules and rules[0] in site.admin("variables").splitlines()
    assert "user carol is not allowed" in site.run("carol", "sub", "true").stderr
    assert stat.S_IMODE(os.stat(site.state).st_mode) == 0o3770
    found = os.stat(os.path.join(site.state, "site", "site.db"))
    assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (0, 0o644)
    site.wait_status(site.submit("alice", "hostname"), "done", tick=True)


def test_rows_changed_by_a_member_show_for_what_they_are(lab):
    """bob rewrites alice's queued job's command in the shared DB, takes another of her jobs
    as his, and adds a trigger. What runs is what her job files say; her check shows that,
    and root's qpy_admin.py check names each change."""
    site = multi_site(lab, users=("alice", "bob"))
    site.ok("alice", "ctrlQueue", "pause")
    first = site.submit("alice", "echo first")
    second = site.submit("alice", "echo second")
    script = ("import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\ndb.execute('PRAGMA journal_mode=PERSIST')\nwith db:\n"
              "    db.execute(\"UPDATE jobs SET command = 'echo changed' WHERE id = %d\")\n"
              "    db.execute(\"UPDATE jobs SET user = 'bob' WHERE id = %d\")\n"
              "    db.execute('CREATE TRIGGER undo AFTER UPDATE ON jobs BEGIN SELECT 1; END')\n"
              % (first, second))
    result = subprocess.run(["runuser", "-u", site.real("bob"), "--", site.python, "-c",
                             site.real(script),
                             os.path.join(site.state, "qpy.db")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = site.ok("alice", "check")
    assert "%d (queue):echo first" % first in out and "echo changed" not in out, out
    result = site.admin_run("check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "job %d's command in the queue is not its job file's, 'echo first'" % first \
        in result.stdout, result.stdout
    assert "job %d is bob's, but the job file is outside" % second in result.stdout
    assert "a trigger undo that is not qpy's" in result.stdout
    site.ok("alice", "ctrlQueue", "continue")
    site.wait_status(first, "done", tick=True)
    assert site.output("alice", first) == "first\n"


def test_a_rerun_runs_what_the_owners_job_file_says_not_the_row(lab):
    """bob rewrites the command and directory of alice's ended job in the shared DB: her
    qpy rerun runs her own command, in her own directory, as her."""
    site = multi_site(lab, users=("alice", "bob"))
    job = site.submit("alice", "echo mine; id -un")
    site.wait_status(job, "done", tick=True)
    script = ("import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\ndb.execute('PRAGMA journal_mode=PERSIST')\nwith db:\n"
              "    db.execute(\"UPDATE jobs SET command = 'touch /tmp/pwned-by-bob', cwd = '/tmp'"
              " WHERE id = %d\")\n" % job)
    result = subprocess.run(["runuser", "-u", site.real("bob"), "--", site.python, "-c", script,
                             os.path.join(site.state, "qpy.db")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    again = int(site.ok("alice", "rerun", "--parsable", str(job)))
    record = site.wait_status(again, "done", tick=True)
    assert (record["command"], record["cwd"]) == ("echo mine; id -un", site.workdir("alice"))
    assert site.output("alice", again) == "mine\nalice\n"
    assert not os.path.exists("/tmp/pwned-by-bob")


def test_what_a_member_planted_in_a_former_site_is_moved_aside_not_followed(lab):
    """Before schema 9 the state directory was not sticky: bob could have put links and
    files of his where root's tick goes next (its lock, its users/ directory, site/). The
    upgrade moves them aside and follows none; a root-only file stays as it was."""
    import stat
    site = multi_site(lab, users=("alice", "bob"))
    site.admin("set", "kill_grace", "3")
    back_to_schema_8(site.state)
    os.chmod(site.state, 0o2770)
    secret_dir = os.path.join(os.path.dirname(site.state), "root-only-" + os.path.basename(
        site.state))
    os.makedirs(secret_dir, mode=0o700)
    secret = os.path.join(secret_dir, "secret")
    with open(secret, "w") as f:
        f.write("root's\n")
    os.chmod(secret, 0o640)
    bobs = os.path.join(site.workdir("bob"), "bobs-site")
    plant = ("import os, sys\nstate, secret, bobs = sys.argv[1:]\n"
             "os.remove(os.path.join(state, 'watch.lock')) if os.path.lexists("
             "os.path.join(state, 'watch.lock')) else None\n"
             "os.symlink(secret, os.path.join(state, 'watch.lock'))\n"
             "os.mkdir(bobs)\nos.symlink(bobs, os.path.join(state, 'site'))\n"
             "os.mkdir(os.path.join(state, 'users', 'root'))\n"
             "os.symlink(secret, os.path.join(state, 'users', 'root', 'errors.log'))\n")
    result = subprocess.run(["runuser", "-u", site.real("bob"), "--", site.python, "-c", plant,
                             site.state, secret, bobs], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    site.admin("tick")  # (root's timer tick: it upgrades)
    assert os.listdir(bobs) == []  # nothing of root's went into bob's directory
    with open(secret) as f:
        assert f.read() == "root's\n"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o640
    folder = os.lstat(os.path.join(site.state, "site"))
    assert stat.S_ISDIR(folder.st_mode) and folder.st_uid == 0
    assert os.lstat(os.path.join(site.state, "users", "root")).st_uid == 0
    aside = [name for name in os.listdir(site.state) if ".moved-aside." in name]
    assert sorted(name.split(".moved-aside.")[0] for name in aside) == ["site", "watch.lock"]
    assert site.admin("set", "kill_grace") == "kill_grace = 3\n"
    site.wait_status(site.submit("alice", "hostname"), "done", tick=True)


def test_a_queue_made_to_look_older_than_its_site_is_refused(lab):
    """bob sets qpy.db's schema back to 8 and writes the site's tables of schema 8 there, with
    his own node and settings, for root's tick to 'upgrade' into site.db. It refuses."""
    site = multi_site(lab, users=("alice", "bob"), nodes="node1 cores=2\n")
    site.admin("set", "kill_grace", "3")

    script = ("import re, sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\ndb.execute('PRAGMA journal_mode=PERSIST')\nwith db:\n"
              # (schema 10 taken back to 8, as back_to_schema_8 does it, but as bob)
              "    db.execute('DROP TABLE history')\n    db.execute('DROP INDEX jobs_held')\n"
              "    db.execute('DROP TABLE node_health')\n"
              "    sql = db.execute(\"SELECT sql FROM sqlite_master WHERE name = 'jobs'\")"
              ".fetchone()[0]\n    db.execute('PRAGMA writable_schema = ON')\n"
              "    db.execute(\"UPDATE sqlite_master SET sql = ? WHERE name = 'jobs'\", "
              "(re.sub('--[^\\\\n]*', '', sql),))\n"
              "db.close()\ndb = sqlite3.connect(sys.argv[1])\ndb.execute('PRAGMA journal_mode=PERSIST')\nwith db:\n"
              "    for column in ('waited', 'held', 'outputs'):\n"
              "        if column in [row[1] for row in db.execute('PRAGMA table_info(jobs)')]:\n"
              "            db.execute('ALTER TABLE jobs DROP COLUMN %s' % column)\n"
              "    db.execute(\"CREATE TABLE nodes (name TEXT, kind TEXT, address TEXT, cores "
              "INTEGER, mem REAL, gpus INTEGER, attributes TEXT, pref_multicore INTEGER, state "
              "TEXT, state_reason TEXT, probed_at REAL, position INTEGER, max_jobs INTEGER, "
              "options TEXT, lost TEXT)\")\n"
              "    db.execute(\"INSERT INTO nodes VALUES ('evil', 'host', 'bob@evil', 64, NULL, 0, "
              "'', 0, 'up', NULL, NULL, 0, NULL, NULL, NULL)\")\n"
              "    db.execute('CREATE TABLE allowed_users (name TEXT)')\n"
              "    db.execute(\"INSERT INTO meta VALUES ('kill_grace', '99999')\")\n"
              "db.execute('PRAGMA user_version = 8')\n")
    result = subprocess.run(["runuser", "-u", site.real("bob"), "--", site.python, "-c", script,
                             os.path.join(site.state, "qpy.db")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    refused = subprocess.run([site.python, site.admin_tool, "tick"], capture_output=True,
                             text=True, env={"PATH": "/usr/bin:/bin", "QPY_STATE": site.state})
    assert refused.returncode == 1 and "older than the site beside it" in refused.stderr
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(site.state, "site", "site.db"),
                         uri=True)
    assert db.execute("SELECT value FROM settings WHERE key = 'kill_grace'").fetchone() == ("3",)
    assert db.execute("SELECT name FROM nodes").fetchall() == [("node1",)]
    db.close()


def test_root_removes_and_moves_no_file_a_forged_row_names(lab):
    """bob forges a running job of alice's whose job file is a root-only file and a file of
    alice's, and makes his own quarantine folder a link to a root-only directory with a bad
    exit record to go there. Root's tick ends the jobs; every one of those files stays."""
    site = multi_site(lab, users=("alice", "bob"), nodes="node1 cores=2\n")
    keep = os.path.join(os.path.dirname(site.state), "root-only-" + os.path.basename(site.state))
    os.makedirs(keep, mode=0o700)
    precious, thesis = os.path.join(keep, "precious"), os.path.join(site.workdir("alice"),
                                                                     "thesis.tex")
    for path in (precious, thesis):
        with open(path, "w") as f:
            f.write("keep me\n")
    site.ok("alice", "ctrlQueue", "pause")
    bobs = site.submit("bob", "true")
    site.ok("bob", "ctrlQueue", "pause")
    forge = ("import os, sqlite3, sys, time\nstate, precious, thesis, keep, job = sys.argv[1:]\n"
             "db = sqlite3.connect(os.path.join(state, 'qpy.db'))\ndb.execute('PRAGMA journal_mode=PERSIST')\nwith db:\n"
             "    for spec in (precious, thesis):\n"
             "        db.execute(\"INSERT INTO jobs (user, status, command, cwd, spec, n_cores, "
             "mem, position, queued_at, node, attempt, started_at, runner_pid, runner_boot) "
             "VALUES ('alice', 'running', 'x', '/tmp', ?, 1, 0.1, 0, 0, 'node1', 1, 1, 1, 'x')\""
             ", (spec,))\n"
             "    db.execute(\"UPDATE jobs SET status = 'running', node = 'node1', attempt = 1, "
             "started_at = 1, runner_pid = 1, runner_boot = 'x' WHERE id = ?\", (int(job),))\n"
             "run = os.path.join(state, 'users', 'bob', 'run')\n"
             "open(os.path.join(run, '%s.1.exit' % job), 'w').write('garbage')\n"
             "os.symlink(keep, os.path.join(state, 'users', 'bob', 'quarantine'))\n")
    result = subprocess.run(["runuser", "-u", site.real("bob"), "--", site.python, "-c",
                             site.real(forge), site.state, precious, thesis, keep, str(bobs)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for _ in range(3):
        site.admin("tick")
    for path in (precious, thesis):
        with open(path) as f:
            assert f.read() == "keep me\n", path
    assert os.listdir(keep) == ["precious"]  # (bob's bad record did not land there)


def test_a_members_transaction_killed_midway_is_rolled_back_by_any_other_member(lab):
    """The state directory is sticky: only a file's owner (and the administrator) may remove
    it. A member's command killed inside its transaction leaves a hot journal; SQLite rolls it
    back at the next member's first read and then wants it removed, which the sticky directory
    refuses: every other member's command failed with 'disk I/O error' until its owner or
    root's tick came by. Now the other member ends the rollback by emptying the journal,
    under the lock; the journal has the DB's group and mode whoever made it."""
    site = multi_site(lab)
    first = site.submit("alice", "true")
    site.wait_status(first, "done", tick=True)
    path = os.path.join(site.state, "qpy.db")
    token = os.path.join(site.workdir("alice"), "crash-token")
    subprocess.run(["runuser", "-u", site.real("alice"), "--", "touch", token], check=True)
    killed = site.run("alice", "sub", "--array", "1-30000", "true",
                      env={"QPY_CRASH_AT": "sub:spooled@" + token})
    assert killed.returncode == 128 + 9 and not os.path.exists(token), killed.stderr
    with open(path + "-journal", "rb") as f:
        assert f.read(8) == bytes.fromhex("d9d505f920a163d7")  # hot
    assert site.ok("bob", "check") == ""  # (bob may neither remove nor rename her journal)
    assert site.ok("alice", "check").count("(done)") == 1
    assert list(site.jobs()) == [first]
    second = site.submit("bob", "true")
    site.wait_status(second, "done", tick=True)
    db, journal = os.stat(path), os.stat(path + "-journal")
    assert (journal.st_gid, journal.st_mode) == (db.st_gid, db.st_mode)
    with open(path + "-journal", "rb") as f:
        assert f.read(8) == bytes(8)
