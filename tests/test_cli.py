"""Every example of the manual's user section, end to end through the real CLI, and every kind
of bad input: one line on stderr, non-zero exit, nothing changed."""
import os
import pty
import pwd
import re
import shlex
import stat
import subprocess

import pytest

from conftest import QPY, QPY_ADMIN, group_members, wait_for


def test_first_command_creates_a_private_state(site):
    site.ok("restart")
    assert stat.S_IMODE(os.stat(site.state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(site.state, "qpy.db")).st_mode) == 0o660
    out = site.ok("status")
    assert "localhost" in out and "%5d" % os.cpu_count() in out


def test_manual_basics_sub_check_kill(site):
    """1.1.3: submit, check, check running, status, kill."""
    job = site.submit("sleep", "30")
    site.wait_status(job, "running")
    assert site.ok("check") == "%d (running):sleep 30 (on localhost; wd: %s)\n" % (job, site.work)
    assert site.ok("check", "running").startswith("%d (running)" % job)
    assert "There are 1 out of a total of" in site.ok("status")
    assert site.ok("kill", str(job)) == "1 job will be killed.\n"
    site.wait_status(job, "killed")


def test_manual_sub_examples(site):
    """1.2.3: hostname; -n 3 -m 10 ./script.sh; ls -ltr."""
    with open(os.path.join(site.work, "nodes"), "w") as f:
        f.write("localhost 4\n")  # the manual's example wants 3 cores: say this node has 4
    assert site.run("nodes", os.path.join(site.work, "nodes"), admin=True).returncode == 0
    script = os.path.join(site.work, "script.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho cores=$QPY_N_CORES mem=$QPY_MEM omp=$OMP_NUM_THREADS\n")
    os.chmod(script, 0o755)
    first = site.submit("hostname")
    second = site.submit("-n", "3", "-m", "10", "./script.sh")
    third = site.submit("ls", "-ltr")
    site.wait_idle()
    assert site.read("job_%d.out" % first).strip() == os.uname().nodename
    assert site.read("job_%d.out" % second) == "cores=3 mem=10.0 omp=3\n"
    assert "script.sh" in site.read("job_%d.out" % third)
    assert all(site.status(j) == "done" for j in (first, second, third))
    assert site.read("job_%d.err" % first) == ""


def test_argv_is_kept_and_a_single_argument_goes_to_the_shell(site):
    quoted = site.submit("echo", "a   b")
    shell = site.submit("echo $((6*7)) > answer; echo 'x  y'")
    site.wait_idle()
    assert site.read("job_%d.out" % quoted) == "a   b\n"
    assert site.read("answer") == "42\n"
    assert site.read("job_%d.out" % shell) == "x  y\n"
    assert site.ok("check", str(quoted)) == "%d (done):echo 'a   b' (on localhost; wd: %s)\n" \
        % (quoted, site.work)


def test_environment_and_directory_are_carried(site):
    sub = os.path.join(site.work, "deep")
    os.makedirs(sub)
    job = site.submit("sh", "-c", "echo $MY_VAR $PWD $QPY_JOB_ID $QPY_NODE", cwd=sub,
                      env={"MY_VAR": "carried"})
    site.wait_idle()
    with open(os.path.join(sub, "job_%d.out" % job)) as f:
        assert f.read() == "carried %s %d localhost\n" % (sub, job)


def test_check_filters_are_or_ed(site):
    """1.2.4: statuses, '.', and 100-120 130-135,137 style ranges, OR semantics."""
    other = os.path.join(site.work, "other")
    os.makedirs(other)
    site.ok("ctrlQueue", "pause")
    ids = [site.submit("true") for _ in range(6)]
    there = site.submit("true", cwd=other)
    listed = lambda *args: [int(line.split()[0]) for line in site.ok("check", *args).splitlines()
                            if line[0].isdigit()]
    assert listed() == ids + [there]
    assert listed(".") == ids
    assert listed("%d-%d" % (ids[0], ids[1]), "%d-%d,%d" % (ids[3], ids[3], ids[5])) == \
        [ids[0], ids[1], ids[3], ids[5]]
    assert site.fails("check", "running") == "qpy: Nothing to do: required jobs not found.\n"
    assert site.fails("check", "99999") == "qpy: Nothing to do: required jobs not found.\n"
    assert listed("queue") == ids + [there]
    assert listed("done", other) == [there]
    assert site.ok("check", "queue").endswith("Job submission is paused.\n")


def test_manual_check_format_example(site):
    """1.2.8: the checkFMT session of the manual, message by message."""
    job = site.submit("sleep", "30")
    site.wait_status(job, "running")
    assert site.ok("config", "checkFMT", r"%j: %s\n") == "Check pattern modified to '%j: %s\\n'\n"
    assert site.ok("check") == "%d: running\n" % job
    pattern = r"%j (%s)\n\tSubmitted from %d\n\tStarted at %S\n-----\n"
    assert site.ok("config", "checkFMT", pattern) == "Check pattern modified to '%s'\n" % pattern
    lines = site.ok("check").split("\n")
    assert lines[0] == "%d (running)" % job
    assert lines[1] == "\tSubmitted from %s" % site.work
    assert lines[2].startswith("\tStarted at 20") and lines[3] == "-----"
    assert site.ok("config", "checkFMT", "default") == \
        "Check pattern restored to the default value: '%j (%s):%c (on %n; wd: %d)\\n'.\n"
    assert site.ok("check").startswith("%d (running):sleep 30 (on localhost" % job)
    site.ok("kill", "all")


def test_exit_codes_and_failures(site):
    site.ok("config", "checkFMT", r"%j %s %x %r\n")
    ok = site.submit("true")
    bad = site.submit("exit 3")
    missing = site.submit("no-such-command-qpy")
    # as words, the command runs without a shell: qpy itself says what is wrong
    missing_words = site.submit("no-such-command-qpy", "x")
    with open(os.path.join(site.work, "notes.txt"), "w") as f:
        f.write("not a program\n")
    not_a_program = site.submit(os.path.join(site.work, "notes.txt"), "x")
    site.wait_idle()
    out = site.ok("check").splitlines()
    assert out[0] == "%d done 0 " % ok
    assert out[1] == "%d failed 3 exit code 3" % bad
    assert out[2] == "%d failed 127 exit code 127" % missing
    assert "no-such-command-qpy" in site.read("job_%d.err" % missing)
    assert out[3] == "%d failed 127 exit code 127" % missing_words
    assert site.read("job_%d.err" % missing_words) == \
        "qpy: cannot run job %d: no-such-command-qpy: command not found\n" % missing_words
    assert out[4] == "%d failed 126 exit code 126" % not_a_program
    assert "Permission denied" in site.read("job_%d.err" % not_a_program)


def test_kill_queue_running_and_all(site):
    """1.2.5: kill 100-105 108, kill queue, kill all."""
    with open(os.path.join(site.work, "nodes"), "w") as f:
        f.write("localhost 2\n")
    site.ok("nodes", os.path.join(site.work, "nodes"), admin=True)
    ids = [site.submit("sleep", "60") for _ in range(2)]
    for j in ids:
        site.wait_status(j, "running")
    site.ok("ctrlQueue", "pause")
    ids += [site.submit("sleep", "60") for _ in range(7)]
    out = site.ok("kill", "%d-%d" % (ids[0], ids[5]), str(ids[8]))
    assert out == "5 jobs removed from the queue.\n2 jobs will be killed.\n"
    for j in ids[:2]:
        site.wait_status(j, "killed")
    assert [site.status(j) for j in ids[2:6] + ids[8:]] == ["undone"] * 5
    assert site.ok("kill", "queue") == "2 jobs removed from the queue.\n"
    site.ok("ctrlQueue", "continue")
    more = [site.submit("sleep", "60") for _ in range(2)]
    for j in more:
        site.wait_status(j, "running")
    assert site.ok("kill", "all") == "2 jobs will be killed.\n"
    site.wait_idle()
    assert [site.status(j) for j in more] == ["killed", "killed"]
    assert site.fails("kill", "all") == "qpy: Nothing to do: required jobs not found.\n"


def test_kill_stops_the_whole_process_group(site):
    marker = os.path.join(site.work, "children")
    job = site.submit("sh -c 'sleep 300 & sleep 301 & echo $! > %s; wait'" % marker)
    wait_for(lambda: os.path.exists(marker) and open(marker).read().strip(), what="children")
    child = int(open(marker).read())
    pgid = site.group(job)
    site.ok("kill", str(job))
    site.wait_status(job, "killed")
    wait_for(lambda: not group_members(pgid), what="the job's processes to be gone")
    assert child not in group_members(pgid)


def test_clean(site):
    """1.2.6: clean 100-200, clean undone, clean all; never queued or running jobs."""
    done = site.submit("true")
    site.wait_idle()
    site.ok("ctrlQueue", "pause")
    queued = site.submit("true")
    undone = site.submit("true")
    site.ok("kill", str(undone))
    assert site.ok("clean", "undone") == "1 finished job removed.\n"
    assert site.fails("clean", str(queued)) == "qpy: Nothing to do: required jobs not found.\n"
    assert site.ok("clean", "all") == "1 finished job removed.\n"
    assert set(site.jobs()) == {queued}
    site.ok("ctrlQueue", "continue")
    site.wait_idle()
    assert site.ok("clean", "%d-%d" % (done, queued + 100)) == "1 finished job removed.\n"
    assert site.jobs() == {}
    assert site.submit("true") == undone + 1  # IDs are never reused


def test_config_shows_and_sets_every_keyword(site):
    out = site.ok("config")
    assert out.startswith("Check pattern: '%j (%s):%c (on %n; wd: %d)\\n'\n"
                          "Using a copied version of run script: False\n"
                          "Using coloured check: True\nColours:\n  - queue (yellow)\n")
    assert site.ok("config", "colour", "false") == "colour set to False\n"
    assert site.ok("config", "copyScripts", "true") == "copyScripts set to True\n"
    assert site.ok("config", "coloursScheme", "red", "green", "blue", "cyan", "white") == \
        "Colours scheme changed.\n"
    assert site.ok("config", "andAttr", "big") == "andAttr set to big.\n"
    assert site.ok("config", "andAttr") == "andAttr unset.\n"
    assert site.ok("config", "orAttr", "big", "or", "fast") == "orAttr set to big or fast.\n"
    assert site.ok("config", "defaultAttr", "x") == "defaultAttr set to x.\n"
    out = site.ok("config")
    assert "Using coloured check: False" in out and "Colours:" not in out
    assert '"or" node attributes: big or fast' in out and "Default node attributes: x" in out
    assert site.ok("config", "colour", "default") == "colour restored to the default value: True.\n"


def run_in_terminal(site, *args, env=None):
    """Run qpy with its stdout on a pseudo-terminal; return what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(site.work)
        os.execve(QPY[0], QPY + list(args), {**site.env, **(env or {})})
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    return out.decode()


def test_colours_only_on_a_terminal(site):
    job = site.submit("true")
    site.wait_idle()
    assert "\x1b[32m%d (done)" % job in run_in_terminal(site, "check")
    assert "\x1b[" not in site.ok("check")
    site.ok("config", "coloursScheme", "red", "green", "cyan", "white", "grey")
    assert "\x1b[36m%d (done)" % job in run_in_terminal(site, "check")
    site.env["NO_COLOR"] = "1"  # https://no-color.org: the user's word beats the config
    assert "\x1b[" not in run_in_terminal(site, "check")
    del site.env["NO_COLOR"]
    site.ok("config", "colour", "false")
    assert "\x1b[" not in run_in_terminal(site, "check")


def test_ctrlQueue_pause_jump_continue(site):
    """1.2.9 and the original's example: queue 1..6; jump 5 begin; jump 1-2 end; jump 6 3."""
    with open(os.path.join(site.work, "nodes"), "w") as f:
        f.write("localhost 1\n")  # one core: jobs start one by one, in queue order
    site.ok("nodes", os.path.join(site.work, "nodes"), admin=True)
    assert site.ok("ctrlQueue", "pause") == "Job submission paused.\n"
    ids = [site.submit("true") for _ in range(6)]
    queue = lambda: [int(l.split()[0]) for l in site.ok("check", "queue").splitlines()
                     if l[0].isdigit()]
    one, two, three, four, five, six = ids
    assert site.ok("ctrlQueue", "jump", str(five), "begin") == "Queue reordered.\n"
    assert queue() == [five, one, two, three, four, six]
    site.ok("ctrlQueue", "jump", "%d-%d" % (one, two), "end")
    assert queue() == [five, three, four, six, one, two]
    site.ok("ctrlQueue", "jump", str(six), str(three))
    assert queue() == [five, three, six, four, one, two]
    assert site.ok("ctrlQueue", "jump", str(six), str(six)) == \
        "Position is part of list: queue not reordered.\n"
    assert site.ok("ctrlQueue", "jump", "999", "begin") == \
        "List does not have jobs in queue: queue not reordered.\n"
    assert site.ok("ctrlQueue", "jump", str(six), "999") == \
        "Position not found: queue not reordered.\n"
    assert site.ok("ctrlQueue", "continue") == "Job submission continued.\n"
    site.wait_idle()
    started = sorted(site.jobs().values(), key=lambda j: j["started_at"])
    assert [j["id"] for j in started] == [five, three, six, four, one, two]


def test_pause_survives_restart_and_finish_stops_dispatch(site):
    site.ok("ctrlQueue", "pause")
    job = site.submit("true")
    assert "paused" in site.ok("restart")
    assert site.status(job) == "queue"
    site.ok("ctrlQueue", "continue")
    site.wait_status(job, "done")
    site.ok("finish")
    second = site.submit("true")
    site.ok("check")
    assert site.status(second) == "queue"
    assert re.fullmatch(r"qpy is ready: [01] running, [01] queued.\n", site.ok("restart"))
    site.wait_status(second, "done")


def test_directives_and_precedence(site):
    with open(os.path.join(site.work, "nodes"), "w") as f:
        f.write("localhost cores=4 attributes=bigmem,infiband\n")
    site.ok("nodes", os.path.join(site.work, "nodes"), admin=True)
    with open(os.path.join(site.work, "job.sh"), "w") as f:
        f.write("#!/bin/sh\n#QPY n_cores=2; mem = 0.5\n#QPY node_attr=bigmem and infiband\n"
                "echo $QPY_N_CORES $QPY_MEM\n")
    os.chmod(os.path.join(site.work, "job.sh"), 0o755)
    a = site.submit("./job.sh")
    b = site.submit("-n", "3", "bash", "job.sh")
    site.wait_idle()
    assert site.read("job_%d.out" % a) == "2 0.5\n"
    assert site.read("job_%d.out" % b) == "3 0.5\n"
    assert site.jobs()[a]["attributes"] == "bigmem and infiband"


def test_copy_script(site):
    path = os.path.join(site.work, "job.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nsleep 1\necho original\n")
    os.chmod(path, 0o755)
    site.ok("ctrlQueue", "pause")
    copied = site.submit("-c", "./job.sh")
    plain = site.submit("./job.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho edited\n")
    site.ok("ctrlQueue", "continue")
    site.wait_idle()
    assert site.read("job_%d.out" % copied) == "original\n"
    assert site.read("job_%d.out" % plain) == "edited\n"
    me = pwd.getpwuid(os.getuid()).pw_name
    scripts = os.path.join(site.state, "users", me, "scripts")
    assert len(os.listdir(scripts)) == 1  # (kept for qpy rerun until clean)
    site.ok("clean", "all")
    assert os.listdir(scripts) == []


def test_notes(site):
    job = site.submit("true")
    assert site.ok("notes") == "You have no notes.\n"
    assert site.ok("notes", str(job), "first", "try") == "Note stored.\n"
    assert "first try" in site.ok("notes", str(job))
    assert site.ok("notes") == "You have notes for the following jobs:\n%d\n" % job
    site.ok("config", "checkFMT", r"%j%K\n")
    assert "first try" in site.ok("check")
    site.wait_idle()
    site.ok("clean", "all")
    assert site.ok("notes") == "You have no notes.\n"


def test_tutorial(site):
    out = site.ok("tutorial")
    assert out.startswith("## For users") and "### ctrlQueue" in out
    assert site.ok("tutorial", "ctrlQueue").startswith("### ctrlQueue")
    site.fails("tutorial", "no-such-words-anywhere")


def test_help(site):
    assert "Usage: qpy sub [options] [--stage-in PATH]... [--stage-out GLOB]... <command>..." \
        in site.ok("sub", "--help")
    assert site.ok("help", "kill") == site.ok("kill", "--help")
    out = site.run()
    assert out.returncode == 1 and out.stdout.startswith("Usage: qpy <option> [<arguments>].")


BAD_INPUT = [
    (["sub", "-n", "x", "ls"], "qpy: Job rejected due to its options: Invalid value for --cores: x."),
    (["sub", "-x", "ls"], "unknown or repeated option -x"),
    (["sub", "--bogus", "ls"], "unknown or repeated option --bogus"),
    (["sub"], "give the command to run"),
    (["sub", ""], "give the command to run"),
    (["sub", "-n"], "-n requires argument"),
    (["sub", "-n", "0", "ls"], "Invalid value for --cores: 0."),
    (["sub", "-m", "-1", "ls"], "Invalid value"),
    (["sub", "-m", "nan", "ls"], "Invalid value"),
    (["sub", "-n", "999", "ls"], "qpy: Job rejected: no node has 999 cores"),
    (["sub", "-m", "100000", "ls"], "GB of memory"),
    (["sub", "-a", "big and", "ls"], "Invalid node attribute expression"),
    (["sub", "-a", "gpu", "ls"], "no node has the attributes 'gpu'"),
    (["sub", "-c", "-o", "ls"], "give only one of -c and -o"),
    (["check", "3-"], "qpy: Unknown pattern for checking jobs: 3-"),
    (["check", "1-2-3"], "qpy: Unknown pattern for checking jobs: 1-2-3"),
    (["check", "--bogus"], "unknown or repeated option --bogus"),
    (["kill", "999"], "qpy: Nothing to do: required jobs not found."),
    (["kill"], "wrong arguments"),
    (["kill", "done"], "Range with wrong format or invalid status: done"),
    (["clean", "queue"], "Range with wrong format or invalid status: queue"),
    (["clean", "999"], "Nothing to do"),
    (["config", "colour", "maybe"], "qpy: Value for colour must be true or false."),
    (["config", "coloursScheme", "red"], "Give five colours"),
    (["config", "coloursScheme", "pink", "red", "red", "red", "red"], "Unknown colour: pink"),
    (["config", "checkFMT"], "Give a pattern for checkFMT"),
    (["config", "nokey", "1"], "qpy: Unknown key: nokey"),
    (["ctrlQueue"], "Give the queue control type"),
    (["ctrlQueue", "sideways"], "wrong arguments"),
    (["ctrlQueue", "jump", "x", "begin"], "Range with wrong format: x"),
    (["notes", "abc"], "Give a job ID for notes"),
    (["notes", "999"], "You have no job 999."),
    (["frobnicate"], "qpy: Unknown command: frobnicate."),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a) or "empty" for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line_and_changes_nothing(site, args, message):
    site.ok("ctrlQueue", "pause")
    job = site.submit("true")
    wait_for(lambda: site.jobs()[job]["reason"] == "queue paused", what="the tick to settle")
    before = site.dump()
    err = site.fails(*args)
    assert message in err
    assert site.dump() == before
    assert site.status(job) == "queue"


@pytest.mark.parametrize("args", [["sub", "hostname"], ["check", "."], ["kill", "."]])
def test_a_removed_working_directory_is_named(site, args):
    site.ok("check")
    before = site.dump()
    gone = os.path.join(site.work, "gone")
    os.mkdir(gone)
    proc = subprocess.Popen(["sh", "-c", "rmdir %s && exec \"$@\"" % gone, "sh"] + QPY + args,
                            cwd=gone, env=site.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err == "qpy: This directory no longer exists: cd to one that does.\n"
    assert site.dump() == before


def test_bad_directive_is_refused_with_the_file_named(site):
    with open(os.path.join(site.work, "bad.sh"), "w") as f:
        f.write("#QPY n_cores=two\n")
    err = site.fails("sub", "sh", "bad.sh")
    assert err == "qpy: Job rejected: Invalid value for n_cores: two. (in bad.sh)\n"
    assert site.jobs() == {}


def test_ctrlQueue_jump_without_pause_goes_to_stderr_with_the_fix(site):
    with open(os.path.join(site.work, "nodes"), "w") as f:
        f.write("localhost 1\n")
    site.ok("nodes", os.path.join(site.work, "nodes"), admin=True)
    site.wait_status(site.submit("sleep", "60"), "running")
    jobs = [site.submit("sleep", "60") for _ in range(3)]
    wait_for(lambda: all(site.jobs()[j]["reason"] for j in jobs), what="the ticks to settle")
    before = site.dump()
    err = site.fails("ctrlQueue", "jump", str(jobs[-1]), "begin")
    assert err == ("qpy: Pause the queue before trying to control it: qpy ctrlQueue pause\n")
    assert site.dump() == before
    site.ok("kill", "all")


def commands_on_path(folder):
    """A PATH with this checkout's qpy and qpy-admin first (completion asks them for words)."""
    bindir = os.path.join(str(folder), "bin")
    os.makedirs(bindir, exist_ok=True)
    for name, command in (("qpy", QPY), ("qpy-admin", QPY_ADMIN)):
        with open(os.path.join(bindir, name), "w") as f:
            f.write("#!/bin/sh\nexec %s \"$@\"\n" % shlex.join(command))
        os.chmod(os.path.join(bindir, name), 0o755)
    return bindir + ":" + os.environ["PATH"]


def test_completion_script_offers_commands_and_help(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bash_completion.sh")
    probe = ('source %s; COMP_WORDS=(qpy %s); COMP_CWORD=%d; _qpy; printf "%%s\\n" "${COMPREPLY[@]}"')
    env = dict(os.environ, PATH=commands_on_path(tmp_path))
    run = lambda words, cword: subprocess.run(
        ["bash", "-c", probe % (script, words, cword)], capture_output=True, text=True,
        env=env).stdout
    assert sorted(run("c", 1).split()) == ["check", "clean", "config", "ctrlQueue"]
    assert run("check r", 2).split() == ["running"]
    assert run("config colour ''", 3).split() == ["true", "false", "default"]
    assert run("ctrlQueue ''", 2).split() == ["pause", "continue", "jump"]
    assert run("kill '?' ''", 3).startswith("Kill the required jobs")
    assert "--afterok" in run("sub -n 2 --a", 4).split()
    assert run("sub -n ''", 3).split() == []       # a value: nothing to offer
    assert "bash_completion.sh" in run("sub ls bash_comp", 3).split()  # the command's files
    assert run("sub --output o.txt --fi", 4).split() == ["--file"]  # (still an option)
    assert run("sub --file bash_comp", 3).split() == ["bash_completion.sh"]
    assert "tests" in run("sub -D tes", 3).split() and "--file" in run("sub '?' ''", 3)
    assert run("w", 1).split() == ["wait"]
    assert "complete -F _qpy qpy" in subprocess.run(
        ["bash", "-c", "source %s; complete -p qpy" % script], capture_output=True,
        text=True).stdout


def test_completion_loads_in_zsh(tmp_path):
    """zsh runs bash completions through bashcompinit, with sh's arrays (compgen -F): the
    same functions must work there. zsh filters the words itself."""
    import shutil
    if shutil.which("zsh") is None:
        pytest.skip("needs zsh (make system-deps installs it)")
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bash_completion.sh")
    probe = ("autoload -U +X compinit && compinit -u -D; autoload -U +X bashcompinit && "
             "bashcompinit; source %s; complete -p | grep -c _qpy; "
             "f() { emulate -L sh; COMP_WORDS=(\"$@\"); COMP_CWORD=$(( $# - 1 )); _qpy; "
             "printf '%%s\\n' \"${COMPREPLY[@]}\"; }; f @ARGS@" % script)
    env = dict(os.environ, PATH=commands_on_path(tmp_path), HOME=str(tmp_path))
    run = lambda words: subprocess.run(["zsh", "-f", "-c", probe.replace("@ARGS@", words)],
                                       env=env, capture_output=True, text=True)
    result = run("qpy c")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.split()
    assert lines[0] == "3" and {"check", "clean", "history"} <= set(lines[1:]), lines
    assert "running" in run("qpy check r").stdout.split()
    assert run("qpy status --json ''").stdout.split() == ["3"]  # (--json given: nothing)
    assert "Submit a job" in run("qpy sub '?' ''").stdout


def test_completion_offers_the_users_own_job_ids(site):
    site.ok("ctrlQueue", "pause")
    queued = site.submit("true")
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bash_completion.sh")
    probe = 'source %s; COMP_WORDS=(qpy %s); COMP_CWORD=2; _qpy; printf "%%s\\n" "${COMPREPLY[@]}"'
    env = dict(site.env, PATH=commands_on_path(site.work))
    run = lambda words: subprocess.run(["bash", "-c", probe % (script, words)], env=env,
                                       capture_output=True, text=True).stdout.split()
    assert str(queued) in run("kill ''")
    assert str(queued) not in run("clean ''")  # not finished
    assert "--parsable" in run("rerun ''") and str(queued) not in run("rerun ''")
    assert str(queued) in run("check ''")
    at = lambda words, cword: subprocess.run(
        ["bash", "-c", probe.replace("COMP_CWORD=2", "COMP_CWORD=%d" % cword)
         % (script, words)],
        env=env, capture_output=True, text=True).stdout.split()
    assert at("ctrlQueue jump ''", 3) == [str(queued)]
    assert at("ctrlQueue jump %d ''" % queued, 4) == ["begin", "end", str(queued)]
    assert at("status ''", 2) == ["--json"] and at("status --json ''", 3) == []
    assert "--since" in at("history --json ''", 3) and "--json" not in at("history --json ''", 3)
    admin = subprocess.run(["bash", "-c", "source %s; COMP_WORDS=(qpy-admin dr); COMP_CWORD=1; "
                            "_qpy_admin; echo ${COMPREPLY[@]}" % script], capture_output=True,
                           text=True, env=env).stdout.split()
    assert admin == ["drain"]
    hint = subprocess.run(["bash", "-c", "source %s; COMP_WORDS=(qpy-admin drain '?'); "
                           "COMP_CWORD=2; _qpy_admin; printf '%%s\\n' \"${COMPREPLY[@]}\""
                           % script], env=env, capture_output=True, text=True).stdout
    assert hint.startswith("drain <node> Start no new job on the node"), hint
    node_words = subprocess.run(["bash", "-c", "source %s; COMP_WORDS=(qpy-admin drain l); "
                                 "COMP_CWORD=2; _qpy_admin; echo ${COMPREPLY[@]}" % script],
                                env=env, capture_output=True, text=True).stdout.split()
    assert node_words == ["localhost"]  # the nodes qpy-admin list shows
    keys = subprocess.run(["bash", "-c", "source %s; COMP_WORDS=(qpy-admin add hpc type=s); "
                           "COMP_CWORD=3; _qpy_admin; echo ${COMPREPLY[@]}" % script],
                          capture_output=True, text=True, env=env).stdout.split()
    assert keys == ["type=slurm"]
    settings = subprocess.run(["bash", "-c", "source %s; COMP_WORDS=(qpy-admin set node_); "
                               "COMP_CWORD=2; _qpy_admin; echo ${COMPREPLY[@]}" % script],
                              capture_output=True, text=True, env=env).stdout.split()
    assert settings == ["node_timeout"]


def test_status_draws_a_bar_of_used_cores_per_node_coloured_only_on_a_terminal(site):
    cores = os.cpu_count()
    job = site.submit("sleep 30")
    site.wait_status(job, "running")
    bar = [line for line in site.ok("status").splitlines() if line.startswith("  localhost ")]
    filled = max(1, round(40 * 1 / cores))
    assert bar == ["  localhost [%s%s] 1/%d" % ("#" * filled, "." * (40 - filled), cores)], bar
    assert "\x1b[32m#" in run_in_terminal(site, "status")  # (up: green)
    assert "\x1b[" not in run_in_terminal(site, "status", env={"NO_COLOR": "1"})
    site.ok("kill", str(job))
