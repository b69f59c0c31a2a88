"""qpy_admin.py on a personal queue and on a site directory made by `create` (no ssh needed:
the nodes here are this machine under other names)."""
import os
import stat

import pytest

from conftest import wait_for


def write(site, name, text):
    path = os.path.join(site.work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def admin_fails(site, *args):
    result = site.run(*args, admin=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("qpy_admin.py: ") and "Traceback" not in result.stderr
    return result.stderr


def test_create_makes_a_group_site(site, tmp_path):
    directory = str(tmp_path / "site")
    out = site.ok("create", directory, admin=True)
    assert "Site created in %s." % directory in out and "QPY_STATE=%s" % directory in out
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o3770  # (sticky: see site/)
    assert stat.S_IMODE(os.stat(os.path.join(directory, "users")).st_mode) == 0o3770
    for name in ("qpy.db", "qpy.lock", "tick.lock"):
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(os.path.join(directory, "site")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(directory, "site", "site.db")).st_mode) == 0o644
    env = {"QPY_STATE": directory}
    assert site.ok("list", admin=True, env=env) == "No nodes.\n"
    assert "no nodes" in site.fails("sub", "true", env=env)
    site.ok("add", "here", "address=localhost", "cores=2", admin=True, env=env)
    job = int(site.ok("sub", "echo on $QPY_NODE", env=env).split()[1])
    wait_for(lambda: os.path.exists(os.path.join(site.work, "job_%d.out" % job))
             and site.read("job_%d.out" % job), what="the job")
    assert site.read("job_%d.out" % job) == "on here\n"
    me = os.path.join(directory, "users", os.listdir(os.path.join(directory, "users"))[0])
    assert stat.S_IMODE(os.stat(me).st_mode) & 0o077 == 0  # a user's files are theirs alone


def test_nodes_file_both_formats_and_reload_keeps_state(site):
    nodes = write(site, "nodes", "# lab\nlocalhost 2\nbig address=localhost cores=4 memory=8 "
                                 "attributes=fast,big pref_multicore=true gpus=1\n")
    assert site.ok("nodes", nodes, admin=True) == "Nodes loaded: localhost, big.\n"
    site.ok("drain", "big", "disk", "swap", admin=True)
    listing = site.ok("list", admin=True).splitlines()
    assert listing[0].split() == ["localhost", "up", "address=localhost", "cores=2",
                                  "memory=%g" % site_memory(site)]
    assert listing[1].split()[:3] == ["big", "drained", "(disk"]
    assert "attributes=fast,big pref_multicore=true" in listing[1] and "gpus=1" in listing[1]
    site.ok("nodes", nodes, admin=True)
    assert "drained" in site.ok("list", admin=True).splitlines()[1]  # reload kept the state
    site.ok("resume", "big", admin=True)
    assert site.ok("list", admin=True).splitlines()[1].split()[1] == "up"
    site.ok("remove", "big", admin=True)
    assert len(site.ok("list", admin=True).splitlines()) == 1


def site_memory(site):
    import qpy
    return qpy.machine_memory()


def test_drained_nodes_take_no_jobs_and_multicore_jobs_prefer_M(site):
    site.ok("nodes", write(site, "nodes", "small address=localhost cores=2\n"
                                          "multi address=localhost cores=4 pref_multicore=true\n"),
            admin=True)
    two = site.submit("-n", "2", "true")
    one = site.submit("true")
    site.wait_idle()
    assert site.jobs()[two]["node"] == "multi" and site.jobs()[one]["node"] == "small"
    site.ok("drain", "small", admin=True)
    more = [site.submit("true") for _ in range(3)]
    site.wait_idle()
    assert {site.jobs()[j]["node"] for j in more} == {"multi"}


def test_finish_and_start_stop_all_dispatch(site):
    assert "No job starts" in site.ok("finish", admin=True)
    job = site.submit("true")
    site.ok("check")
    assert site.status(job) == "queue"
    assert "Jobs start again." in site.ok("start", admin=True)
    site.wait_status(job, "done")


def test_status_and_variables(site):
    site.ok("ctrlQueue", "pause")
    site.submit("true")
    status = site.ok("status", admin=True)
    assert status == site.ok("status")
    assert "queue size" in status and "localhost" in status
    variables = site.ok("variables", admin=True)
    for word in ("tick_wanted", "launch_timeout", "Nodes:", "localhost", "Users:",
                 "paused = 1", "Live jobs:", "status = queue"):
        assert word in variables


def test_settings(site):
    assert "node_timeout = 180" in site.ok("set", admin=True)
    assert site.ok("set", "node_timeout", "30", admin=True) == "node_timeout set to 30.\n"
    assert "node_timeout = 30" in site.ok("set", admin=True)
    assert site.ok("set", "node_timeout", admin=True) == "node_timeout = 30\n"


def test_bad_admin_input(site):
    site.ok("restart")
    before = site.dump()
    assert "line 2: unknown key 'colour'" in admin_fails(
        site, "nodes", write(site, "bad", "a 2\nb cores=2 colour=red\n"))
    assert "line 1: cores must be a whole number" in admin_fails(
        site, "nodes", write(site, "bad2", "a cores=x\n"))
    assert "line 1: address must be a host name or user@host, not '-oProxyCommand=x'" in \
        admin_fails(site, "nodes", write(site, "bad3", "a cores=2 address=-oProxyCommand=x\n"))
    assert "line 2: address must be a host name or user@host, not ''" in admin_fails(
        site, "nodes", write(site, "bad4", "a 2\nb cores=2 address=\n"))
    assert "Cannot read the nodes file" in admin_fails(site, "nodes", "/nonexistent/nodes")
    assert "No node ghost" in admin_fails(site, "drain", "ghost")
    assert "No node ghost" in admin_fails(site, "remove", "ghost")
    assert "Unknown setting: colour" in admin_fails(site, "set", "colour", "1")
    assert "must be a number of seconds" in admin_fails(site, "set", "heartbeat", "-1")
    assert "must be a number of seconds" in admin_fails(site, "set", "heartbeat", "inf")
    assert "Bad node setting" in admin_fails(site, "add", "x", "cores=1", "memory=lots")
    assert "Unknown setting: colour" in admin_fails(site, "set", "colour")
    for wrong in (["frobnicate"], [], ["add"], ["create"], ["set", "heartbeat", "3", "4"],
                  ["tick", "now"], ["report"], ["doctor", "--as"], ["list", "--html=x"]):
        assert "wrong arguments" in admin_fails(site, *wrong), wrong
    assert "No group nosuchgroup" in admin_fails(site, "create", os.path.join(site.work, "s"),
                                                 "--group", "nosuchgroup")
    assert "No user nosuchuser on this machine" in admin_fails(site, "doctor", "--as",
                                                               "nosuchuser")
    assert "Cannot write the backup /nonexistent/b.db" in admin_fails(site, "backup",
                                                                      "/nonexistent/b.db")
    assert "Cannot write the report /nonexistent/r.html: No such file or directory." in \
        admin_fails(site, "report", "--html", "/nonexistent/r.html")
    assert site.dump() == before


@pytest.mark.parametrize("value", ["soon", "-1", "1e9", "nan"])
def test_a_bad_linger_is_one_line(site, value):
    before = site.dump()
    err = admin_fails(site, "tick", "--linger", value)
    assert "--linger takes a number of seconds" in err
    assert site.dump() == before


def test_a_lingering_tick_leaves_at_once_when_nothing_is_live(site):
    site.ok("check")
    assert site.run("tick", "--linger=600", admin=True).returncode == 0  # (not 10 minutes)


def test_timer_units_run_the_tick_for_this_site(site, tmp_path):
    out = site.ok("timer", admin=True)
    assert "[Timer]\nOnBootSec=30\nOnUnitActiveSec=15" in out
    assert "Environment=QPY_STATE=%s" % site.state in out
    import sys  # (the venv's qpy-admin: no path of Python's own, which an upgrade changes)
    admin = os.path.join(os.path.dirname(sys.executable), "qpy-admin")
    assert "ExecStart=%s tick --linger=14\n" % admin in out and "/etc/cron.d/qpy" in out
    assert "%s tick --linger=58\n" % admin in out  # (its errors mailed by cron)
    units = tmp_path / "units"
    units.mkdir()
    out = site.ok("timer", "--install", "--dir", str(units), admin=True)
    assert "systemctl enable --now qpy-tick.timer" in out
    assert sorted(os.listdir(units)) == ["qpy-tick.service", "qpy-tick.timer"]
    assert "Cannot install" in admin_fails(site, "timer", "--install", "--dir", "/nonexistent")


def test_reloading_nodes_keeps_the_running_jobs(site):
    path = write(site, "nodes", "localhost cores=2\n")
    site.ok("nodes", path, admin=True)
    job = site.submit("sleep", "60")
    site.wait_status(job, "running")
    site.ok("nodes", write(site, "nodes", "localhost cores=3\nother address=localhost cores=1\n"),
            admin=True)
    status = site.ok("status")
    assert any(line.split()[:3] == ["localhost", "1", "3"] for line in status.splitlines())
    assert site.status(job) == "running"
    site.ok("kill", str(job))
    site.wait_status(job, "killed")


def test_doctor_on_a_personal_queue(site):
    site.ok("restart")
    out = site.ok("doctor", admin=True)
    assert "ok       database integrity" in out and "node localhost is this machine" in out
    assert out.endswith("Everything looks right.\n")
    os.chmod(os.path.join(site.state, "qpy.lock"), 0o644)
    result = site.run("doctor", admin=True)
    assert result.returncode == 1 and "PROBLEM  qpy.lock (mode 644): chmod 660" in result.stdout


def test_a_site_db_others_could_change_is_not_used(site):
    """site.db must be the administrator's alone: one that others may write is refused by
    every command (one line), and doctor says so, until its mode is right again."""
    site.ok("restart")
    path = os.path.join(site.state, "site", "site.db")
    os.chmod(path, 0o666)
    before = site.dump()
    err = site.fails("sub", "true")
    assert "site's settings %s cannot be trusted: others than its owner may write %s (mode " \
        "666)" % (path, path) in err, err
    assert site.dump() == before
    result = site.run("doctor", admin=True)
    assert result.returncode == 1 and "PROBLEM  site settings %s" % path in result.stdout
    os.chmod(path, 0o644)
    site.wait_status(site.submit("true"), "done")


def test_a_node_address_is_checked_where_ssh_is_run(site, tmp_path):
    """An address that ssh would read as an option, written into site.db behind qpy_admin.py's
    back (its parser refuses it): the tick does not run ssh with it, and says why."""
    import sqlite3
    site.ok("restart")
    marker = tmp_path / "proxied"
    db = sqlite3.connect(os.path.join(site.state, "site", "site.db"))
    with db:
        db.execute("UPDATE nodes SET drained = 'not here'")
        db.execute("INSERT INTO nodes (name, address, cores) VALUES ('evil', ?, 2)",
                   ("-oProxyCommand=touch %s" % marker,))
    db.close()
    job = site.submit("true")
    wait_for(lambda: "refused to ssh to '-oProxyCommand=touch" in (
        site.ok("list", admin=True)), what="the node's state to say why")
    assert site.status(job) == "queue" and not marker.exists()
    assert "evil down (launch failed: refused to ssh to" in site.jobs()[job]["reason"]


def test_qpys_own_commands_import_nothing_from_their_working_directory(site, tmp_path):
    """A forged row's cwd becomes the working directory of qpy's own commands (a Slurm batch
    job's --chdir): a json.py planted there must not be imported by them."""
    import subprocess
    import qpy
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "json.py").write_text("open(%r, 'w').close()\n" % str(tmp_path / "imported"))
    result = subprocess.run(qpy.qpy_on_node("_words", "statuses"), cwd=str(planted),
                            capture_output=True, text=True, env=site.env)
    assert result.returncode == 0 and "queue" in result.stdout, result.stderr
    assert not (tmp_path / "imported").exists()


def test_a_state_whose_parent_others_may_write_is_not_trusted(site, tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(str(parent), 0o777)  # (anybody could rename the state and put theirs there)
    err = site.fails("sub", "true", env={"QPY_STATE": str(parent / "state")})
    assert "others than the administrator may replace the state directory: %s" % parent in err
    os.chmod(str(parent), 0o1777)  # sticky, as /tmp: nobody renames what is not theirs
    site.ok("check", env={"QPY_STATE": str(parent / "state")})


def test_a_damage_mark_that_is_a_link_is_not_read(site, tmp_path):
    site.ok("restart")
    secret = tmp_path / "secret"
    secret.write_text("SECRET-LINE\n")
    os.symlink(str(secret), os.path.join(site.state, "qpy.damaged"))
    err = site.fails("sub", "true")
    assert "a mark that is not a plain file" in err and "SECRET" not in err


def test_backup_never_writes_through_a_link(site, tmp_path):
    site.ok("restart")
    target = tmp_path / "made-through-the-link"
    os.symlink(str(target), str(tmp_path / "b.db.site"))  # (dangling: os.path.exists is False)
    assert "b.db.site exists: give a new file name." in admin_fails(
        site, "backup", str(tmp_path / "b.db"))
    assert not target.exists() and not (tmp_path / "b.db").exists()
