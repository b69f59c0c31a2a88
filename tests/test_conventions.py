"""What Slurm and pueue users reach for: qpy history (sacct) of what ended, cleaned or not; a
bare qpy wait that counts the jobs that ended before it began; hold and release (scontrol);
check -l (squeue -l)."""
import json
import os
import sqlite3
import time

import pytest


def test_a_bare_wait_counts_a_job_that_failed_before_it_began(site):
    """`qpy sub false && qpy wait && ./plot.sh` must not run plot.sh: the job has failed by
    the time wait looks. A job a wait reported is not covered by the next bare wait."""
    failed = site.submit("false")
    site.wait_status(failed, "failed")
    result = site.run("wait")
    assert (result.returncode, result.stdout) == (1, "1 job ended: 1 failed.\n"), result
    assert site.ok("wait") == "0 jobs ended.\n"
    done = site.submit("true")
    site.wait_status(done, "done")
    assert site.ok("wait") == "1 job ended: 1 done.\n"


def test_history_keeps_the_jobs_that_clean_removes(site):
    other = os.path.join(site.work, "other")
    os.makedirs(other)
    done = site.submit("-N", "warmup", "true")
    failed = site.submit("exit 3", cwd=other)
    for job, status in ((done, "done"), (failed, "failed")):
        site.wait_status(job, status)
    site.ok("ctrlQueue", "pause")
    undone = site.submit("true")
    site.ok("kill", str(undone))
    site.ok("clean", "all")
    assert site.ok("check") == "Job submission is paused.\n"
    lines = site.ok("history").splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "EXIT", "NODE", "CORES", "START",
                                "ELAPSED", "MEMORY", "CPU", "COMMAND"]
    assert [line.split()[:4] for line in lines[1:]] == [
        [str(done), "warmup", "done", "0"], [str(failed), "-", "failed", "3"],
        [str(undone), "-", "undone", "-"]]
    ids = lambda *args: [record["id"] for record in json.loads(site.ok("history", "--json",
                                                                       *args))]
    assert ids("failed") == [failed]
    assert ids("failed", "undone") == [failed, undone]  # (any filter matches, as in check)
    assert ids(other) == [failed]
    assert ids("--name=warm*") == [done]
    assert ids("--since=1h") == [done, failed, undone]
    assert ids("%d-%d" % (done, failed)) == [done, failed]
    assert ids("--since", time.strftime("%Y-%m-%d"), "done") == [done]
    (record,) = json.loads(site.ok("history", "--json", str(failed)))
    assert (record["status"], record["exit_code"], record["directory"]) == ("failed", 3, other)
    assert site.fails("history", "--until=2000-01-01") == "qpy: No job in the history matches.\n"


@pytest.mark.parametrize("args, says", [
    (["--since=yesterday"], "A time for --since or --until is a date (2026-11-30)"),
    (["--until", "2026-13-45"], "not '2026-13-45'"),
    (["running"], "Range with wrong format or invalid status: running"),
    (["--name"], "--name requires argument"),
])
def test_bad_history_options_are_one_line(site, args, says):
    site.ok("restart")
    assert says in site.fails("history", *args)


def test_a_dependency_on_a_cleaned_job_is_judged_by_its_history(site):
    first = site.submit("true")
    site.wait_status(first, "done")
    site.ok("clean", "all")
    after = site.submit("--afterok", str(first), "true")
    assert site.wait_status(after, "done")


def test_prune_removes_what_ended_long_ago(site):
    old, new = site.submit("true"), site.submit("true")
    for job in (old, new):
        site.wait_status(job, "done")
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:
        db.execute("UPDATE history SET ended_at = ended_at - 40 * 86400 WHERE id = ?", (old,))
    db.close()
    assert site.ok("prune", "30", admin=True) == "1 job removed from the history.\n"
    assert [r["id"] for r in json.loads(site.ok("history", "--json"))] == [new]
    result = site.run("prune", "soon", admin=True)
    assert (result.returncode, result.stderr) == (
        1, "qpy_admin.py: prune takes a number of days (at most 100000), not 'soon'.\n")


def test_check_long_is_a_table_as_squeue_l(site):
    failed = site.submit("-N", "broken", "exit 4")
    site.wait_status(failed, "failed")
    site.ok("ctrlQueue", "pause")
    queued = site.submit("true")
    lines = site.ok("check", "-l").splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "NODE", "ELAPSED", "EXIT", "REASON"]
    assert lines[1].split() == [str(failed), "broken", "failed", "localhost", "0:00:00", "4",
                                "exit", "code", "4"]
    assert lines[2].split()[:4] == [str(queued), "-", "queue", "-"]
    assert site.ok("check", "--long", "failed").splitlines()[1:] == lines[1:2]
    assert site.fails("check", "-l", "--json").startswith("qpy: ")


def test_hold_keeps_a_queued_job_back_until_release(site):
    site.ok("ctrlQueue", "pause")
    first, second = site.submit("true"), site.submit("true")
    assert site.ok("hold", str(first)) == "1 job held.\n"
    assert site.fails("hold", str(first)) == "qpy: Nothing to do: required jobs not found.\n"
    site.ok("ctrlQueue", "continue")
    site.wait_status(second, "done")
    assert site.status(first) == "queue"
    assert site.jobs()[first]["reason"] == "held (qpy release %d)" % first
    assert site.ok("release", "all") == "1 job released.\n"
    site.wait_status(first, "done")
    assert site.fails("release", "all") == "qpy: Nothing to do: required jobs not found.\n"
    assert "Range with wrong format or invalid status: running" in site.fails("hold", "running")


def test_output_error_and_chdir_as_sbatch_has_them(site):
    there = os.path.join(site.work, "there")
    os.makedirs(there)
    job = site.submit("-N", "sim", "--chdir", "there", "--output", "logs-%x.%j.txt",
                      "--error", "%j.errors", "echo out; echo err >&2; pwd")
    site.wait_status(job, "done")
    with open(os.path.join(there, "logs-sim.%d.txt" % job)) as f:
        assert f.read() == "out\n%s\n" % there
    with open(os.path.join(there, "%d.errors" % job)) as f:
        assert f.read() == "err\n"
    assert not os.path.exists(os.path.join(site.work, "job_%d.out" % job))
    result = site.run("tail", "-e", str(job))  # (it finds them where they are)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n%s\n" % there, "err\n")
    array = site.ok("sub", "--parsable", "--array", "1-2", "--output", "a%A_%a.out",
                    "echo $QPY_ARRAY_INDEX").strip()
    first = int(array.split("-")[0])
    for index, job_id in ((1, first), (2, first + 1)):
        site.wait_status(job_id, "done")
        assert site.read("a%d_%d.out" % (first, index)) == "%d\n" % index


@pytest.mark.parametrize("args, says", [
    (["--output", "x%q.out", "true"], "--output 'x%q.out': a path, with %j %a %A %x %u or %%"),
    (["--error", "", "true"], "--error '': a path"),
    (["--chdir", "no/such/dir", "true"], "--chdir no/such/dir is not a directory."),
    (["-o", "out.txt", "./run.sh"], "-o is the manual's --originalScript, so 'out.txt' was "
                                    "taken for the command; Slurm's output file is "
                                    "--output=out.txt here."),
])
def test_bad_output_options_are_refused_with_what_to_type(site, args, says):
    site.ok("restart")
    before = site.dump()
    assert says in site.fails("sub", *args)
    assert site.dump() == before


def test_rerun_submits_ended_jobs_again_as_they_were(site):
    """pueue restart / Slurm requeue: the same command, directory, environment and requests
    as a new job; the original stays as it ended."""
    there = os.path.join(site.work, "there")
    os.makedirs(there)
    failed = site.submit("-n", "2", "-N", "sim", "--chdir", "there", "--output", "%x.%j.out",
                         "echo $GREETING $QPY_ARRAY_INDEX; exit 4",
                         env={"GREETING": "hello"})
    site.wait_status(failed, "failed")
    out = site.ok("rerun", str(failed), env={"GREETING": "changed"})
    assert out.startswith("Job ") and out.endswith(" received: a rerun of job %d.\n" % failed)
    again = int(out.split()[1])
    job = site.wait_status(again, "failed")
    assert (job["command"], job["cwd"], job["n_cores"], job["name"], job["exit_code"]) == (
        "echo $GREETING $QPY_ARRAY_INDEX; exit 4", there, 2, "sim", 4)
    with open(os.path.join(there, "sim.%d.out" % again)) as f:
        assert f.read() == "hello\n"
    assert site.status(failed) == "failed"
    array = site.ok("sub", "--parsable", "--array", "3-4", "echo $QPY_ARRAY_INDEX").strip()
    first = int(array.split("-")[0])
    site.wait_status(first + 1, "done")
    reruns = site.ok("rerun", "--parsable", str(first + 1), str(first)).split()
    assert len(reruns) == 2
    for job_id, index in zip(map(int, reruns), (3, 4)):  # (in the order of their IDs)
        site.wait_status(job_id, "done")
        assert site.read("job_%d.out" % job_id) == "%d\n" % index


def test_rerun_keeps_the_job_file_until_clean_and_runs_a_script_as_it_was(site):
    script = os.path.join(site.work, "run.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho first version\n")
    os.chmod(script, 0o755)
    job = site.submit("-c", "./run.sh")  # (a copy of the script runs)
    site.wait_status(job, "done")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho second version\n")
    again = int(site.ok("rerun", "--parsable", str(job)))
    site.wait_status(again, "done")
    assert site.read("job_%d.out" % again) == "first version\n"
    user = os.listdir(os.path.join(site.state, "users"))[0]
    spool = os.path.join(site.state, "users", user, "spool")
    scripts = os.path.join(site.state, "users", user, "scripts")
    assert len(os.listdir(spool)) == 2 and len(os.listdir(scripts)) == 2
    assert site.ok("clean", str(job)) == "1 finished job removed.\n"
    assert len(os.listdir(spool)) == 1 and len(os.listdir(scripts)) == 1
    third = int(site.ok("rerun", "--parsable", str(again)))  # (its own copy, still there)
    site.wait_status(third, "done")
    assert site.read("job_%d.out" % third) == "first version\n"
    site.ok("clean", "all")
    assert os.listdir(spool) == [] and os.listdir(scripts) == []
    assert "The site is fine." in site.ok("check", admin=True)


def test_rerun_refuses_what_it_cannot_run_again(site):
    site.ok("ctrlQueue", "pause")
    queued = site.submit("true")
    assert site.fails("rerun", str(queued)) == (
        "qpy: Job %d has not ended: qpy rerun runs ended jobs again (qpy kill %d first to "
        "stop it).\n" % (queued, queued))
    site.ok("ctrlQueue", "continue")
    site.wait_status(queued, "done")
    site.ok("clean", str(queued))
    assert site.fails("rerun", str(queued)) == (
        "qpy: You have no ended job %d in the queue (a cleaned job's command is not kept: qpy "
        "history %d shows what it was).\n" % (queued, queued))
    assert "Range with wrong format or invalid status: running" in site.fails("rerun", "running")
    assert site.fails("rerun") .startswith("qpy: ")
    before = site.dump()
    assert site.fails("rerun", "all") == "qpy: Nothing to do: required jobs not found.\n"
    assert site.dump() == before


def test_sub_file_queues_one_job_for_each_line_in_one_go(site):
    """qpy sub --file: each line a job for the shell (blank and # lines skipped, a CRLF line
    as its text), in the order of the lines, all with the same options; - reads standard
    input; check, rerun and the runner each take the job's own line."""
    with open(os.path.join(site.work, "cmds.txt"), "wb") as f:
        f.write(b"echo one\n\n# a comment\n  # another\necho two; echo 2b\r\n"
                b"for i in 1 2; do echo $i; done > loop.txt\n")
    out = site.ok("sub", "-n", "2", "-N", "batch", "--output", "%x.%j.out", "--file",
                  "cmds.txt")
    assert out.startswith("Jobs ") and out.endswith(" received.\n")
    first, last = map(int, out.split()[1].split("-"))
    assert last == first + 2
    for job_id in range(first, last + 1):
        site.wait_status(job_id, "done")
    jobs = site.jobs()
    assert [jobs[job_id]["command"] for job_id in range(first, last + 1)] == [
        "echo one", "echo two; echo 2b", "for i in 1 2; do echo $i; done > loop.txt"]
    assert {(jobs[j]["n_cores"], jobs[j]["name"], jobs[j]["array_index"])
            for j in range(first, last + 1)} == {(2, "batch", None)}
    assert site.read("batch.%d.out" % first) == "one\n"
    assert site.read("batch.%d.out" % (first + 1)) == "two\n2b\n"
    assert site.read("loop.txt") == "1\n2\n"
    assert "%d (done):echo two; echo 2b" % (first + 1) in site.ok("check", str(first + 1))
    again = int(site.ok("rerun", "--parsable", str(first + 1)))
    site.wait_status(again, "done")
    assert site.read("batch.%d.out" % again) == "two\n2b\n"
    result = site.run("sub", "--parsable", "--wait", "--file", "-",
                      input="echo a\nexit 3\necho c\n")
    assert result.returncode == 3 and result.stderr == ""
    ids = result.stdout.strip()
    assert ids == "%d-%d" % (again + 1, again + 3)
    assert site.read("job_%d.out" % (again + 3)) == "c\n"
    assert site.ok("clean", "all").startswith("7 finished jobs removed")
    spool = os.path.join(site.state, "users", os.listdir(os.path.join(site.state, "users"))[0],
                         "spool")
    assert os.listdir(spool) == []


def test_a_long_file_of_commands_is_kept_in_parts_each_job_runs_its_own_line(site):
    """2,001 lines: three job files of at most qpy.COMMANDS_PER_JOB_FILE (1,000) commands, so
    that a runner reads its part only; the last job runs the last line."""
    site.ok("ctrlQueue", "pause")
    lines = ["echo line %d" % number for number in range(2001)]
    out = site.ok("sub", "--parsable", "--file", "-", input="\n".join(lines) + "\n")
    first, last = map(int, out.split("-"))
    assert last - first == 2000
    spool = os.path.join(site.state, "users", os.listdir(os.path.join(site.state, "users"))[0],
                         "spool")
    parts = []
    for name in os.listdir(spool):
        with open(os.path.join(spool, name)) as f:
            job_file = json.load(f)
        parts.append((job_file["ids"], len(job_file["commands"]), job_file["commands"][-1]))
    assert sorted(parts) == [([first, first + 999], 1000, "echo line 999"),
                             ([first + 1000, first + 1999], 1000, "echo line 1999"),
                             ([last, last], 1, "echo line 2000")]
    shown = site.ok("check", "--format", "%j %c\n", str(first + 1500), str(last))
    assert shown == "%d echo line 1500\n%d echo line 2000\nJob submission is paused.\n" % (
        first + 1500, last)
    site.ok("kill", "%d-%d" % (first, last - 1))
    site.ok("ctrlQueue", "continue")
    site.wait_status(last, "done")
    assert site.read("job_%d.out" % last) == "line 2000\n"


@pytest.mark.parametrize("content, args, says", [
    (b"true\n", ["--file", "cmds.txt", "echo", "x"],
     "Job rejected due to its options: give either a command or one --file PATH."),
    (b"true\n", ["--array", "1-3", "--file", "cmds.txt"],
     "--array does not go with --file (each line is a command for the shell)."),
    (b"true\n", ["-c", "--file", "cmds.txt"], "--copyScript does not go with --file"),
    (b"true\n", ["--file", "no-such.txt"], "cannot read no-such.txt: No such file or directory."),
    (b"true\n", ["--file", "."], "cannot read .: Is a directory."),
    (b"true\n\xff\xfe\n", ["--file", "cmds.txt"], "line 2 of cmds.txt is not UTF-8 text."),
    (b"true\nec\0ho\n", ["--file", "cmds.txt"], "line 2 of cmds.txt holds a NUL byte."),
    (b"true\necho " + b"x" * 131067 + b"\n", ["--file", "cmds.txt"],
     "line 2 of cmds.txt is longer than the 131071 bytes a command may have."),
    (b"\n# only this\n   \n", ["--file", "cmds.txt"],
     "cmds.txt holds no command (only blank and # lines)."),
    (b"true\n" * 100001, ["--file", "cmds.txt"],
     "cmds.txt holds 100001 commands, more than 100000 at once; split it."),
    (b"true\n", ["--file", "cmds.txt", "-t", "soon"], "Job rejected due to its options:"),
])
def test_bad_sub_files_are_refused_and_change_nothing(site, content, args, says):
    site.wait_status(site.submit("true"), "done")
    site.wait_idle()
    with open(os.path.join(site.work, "cmds.txt"), "wb") as f:
        f.write(content)
    before = site.dump()
    error = site.fails("sub", *args)
    assert says in error and error.count("\n") == 1, error
    assert site.dump() == before


def test_check_and_history_read_a_long_history_in_pages_and_show_each_job_once(site):
    """More ended jobs than a page (qpy.READ_PAGE, 1,000): check shows each once, in queue
    order, live and ended together, ties in position broken by the ID across the pages'
    seams; history shows each once in the order they ended. (The rows go straight into the
    DB: running 5,000 jobs would take a minute.)"""
    site.ok("ctrlQueue", "pause")
    queued = site.submit("true")
    user = site.jobs()[queued]["user"]
    path = os.path.join(site.state, "qpy.db")
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO jobs (id, user, status, command, cwd, spec, n_cores, mem, position, "
            "queued_at, started_at, ended_at, node, exit_code) VALUES (?, ?, 'done', ?, ?, "
            "'x', 1, 1, ?, 1, 2, 3, 'localhost', 0)",
            [(1000 + n, user, "echo %d" % n, site.work, n // 3) for n in range(5000)])
        db.executemany(
            "INSERT INTO history (id, user, status, command, cwd, n_cores, mem, gpus, "
            "attributes, requeue, attempt, queued_at, ended_at) VALUES (?, ?, 'done', ?, ?, "
            "1, 1, 0, '', 0, 1, 1, ?)",
            [(1000 + n, user, "echo %d" % n, site.work, 10 + n // 4) for n in range(5000)])
    shown = [int(line.split()[0]) for line in site.ok("check", "--format", "%j\\n").split()
             if line.strip().isdigit()]
    position = {job: (job - 1000) // 3 for job in range(1000, 6000)}
    position[queued] = queued  # (a job's position is its ID when it is submitted)
    expected = sorted(position, key=lambda job: (position[job], job))
    assert shown == expected
    listed = [int(line.split()[0]) for line in site.ok("history").splitlines()[1:]]
    assert listed == list(range(1000, 6000))


def test_a_changed_command_of_a_file_job_is_reported_by_the_administrators_check(site):
    """qpy_admin.py check compares each live row's command with its own line of the job
    file (a file of commands holds one per job)."""
    site.ok("ctrlQueue", "pause")
    first, last = map(int, site.ok("sub", "--parsable", "--file", "-",
                                   input="echo a\necho b\n").split("-"))
    with sqlite3.connect(os.path.join(site.state, "qpy.db")) as db:
        db.execute("PRAGMA journal_mode=PERSIST")
        db.execute("UPDATE jobs SET command = 'echo forged' WHERE id = ?", (last,))
    result = site.run("check", admin=True)
    assert "job %d's command in the queue is not its job file's, 'echo b'" % last \
        in result.stdout + result.stderr
    assert "job %d's" % first not in result.stdout + result.stderr
