"""Extreme and hostile input: every number, range, nesting and length is bounded before it
is expanded or stored, and refused with one line (no traceback, no hang, no memory blow-up,
nothing changed)."""
import os

import pytest

DEEP = "(" * 100 + "a" + ")" * 100
DEEPER = "(" * 2000 + "a" + ")" * 2000
HUGE = "9" * 21


@pytest.mark.parametrize("args, says", [
    (("sub", "-a", DEEP, "true"), "nested deeper"),
    (("sub", "-a", " and ".join(["x"] * 2000), "true"), "longer than"),
    (("sub", "-a", "not " * 200 + "x", "true"), "nested deeper"),
    (("sub", "-a", DEEPER, "true"), "longer than"),
    (("sub", "--after", HUGE, "true"), "--after needs job IDs"),
    (("sub", "--afterok", "1-50000000", "true"), "depends on at most"),
    (("sub", "--array", "99999999999999999999", "true"), "--array needs indices"),
    (("sub", "--array", "1-999999999999", "true"), "at most 100000 jobs"),
    (("sub", "--array", "1-10%" + HUGE, "true"), "at most 100000 jobs"),
    (("sub", "-n", HUGE, "true"), "Invalid value for --cores"),
    (("sub", "-g", HUGE, "true"), "Invalid value for --gpus"),
    (("sub", "-m", "1e400", "true"), "Invalid value for --mem"),
    (("kill", HUGE), "Range with wrong format"),
    (("clean", "1-" + HUGE), "Range with wrong format"),
    (("check", ",".join(["1"] * 5000)), "Unknown pattern"),
    (("config", "defaultAttr", DEEP), "nested deeper"),
    (("_run", "x", "y"), "qpy's own command"),
    (("_run", "1"), "qpy's own command"),
    (("_signal", "x"), "qpy's own command"),
    (("_signal",), "qpy's own command"),
    (("_slurm",), "qpy's own command"),
])
def test_extreme_input_is_refused_with_one_line_and_changes_nothing(site, args, says):
    site.ok("ctrlQueue", "pause")
    site.submit("true")
    before = site.dump()
    err = site.fails(*args)
    assert says in err, err
    assert len(err) < 600
    assert site.dump() == before


def test_a_deeply_nested_directive_is_refused(site):
    with open(os.path.join(site.work, "job.sh"), "w") as f:
        f.write("#!/bin/sh\n#QPY node_attr=%s\ntrue\n" % DEEP)
    os.chmod(os.path.join(site.work, "job.sh"), 0o755)
    assert "nested deeper" in site.fails("sub", "./job.sh")


def nodes_file(site, text):
    path = os.path.join(site.home, "nodes")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.mark.parametrize("line, says", [
    ("n1 0\n", "cores must be a whole number from 1"),
    ("n1 cores=0\n", "cores must be a whole number from 1"),
    ("n1 cores=%s\n" % HUGE, "cores must be a whole number"),
    ("n1 %s\n" % HUGE, "cores must be a whole number"),
    ("and cores=2\n", "a node's name is a word"),
    ("not 2\n", "a node's name is a word"),
    ("(x cores=2\n", "a node's name is a word"),
    ("%s cores=2\n" % ("n" * 100000), "a node's name is a word"),
    ("n1 cores=2 cores=3\n", "cores is given twice"),
    ("n1 cores=2 gpus=%s\n" % HUGE, "gpus must be a whole number"),
])
def test_a_bad_nodes_file_is_refused_with_its_line_number(site, line, says):
    site.ok("check")
    before = site.dump()
    err = site.fails("nodes", nodes_file(site, "ok1 2\n" + line), admin=True)
    assert "line 2" in err and says in err, err
    assert len(err) < 600
    assert site.dump() == before


def test_an_empty_nodes_file_removes_the_nodes_only_when_asked(site):
    site.ok("check")
    before = site.dump()
    path = nodes_file(site, "# nothing yet\n")
    assert "--empty" in site.fails("nodes", path, admin=True)
    assert site.dump() == before
    site.ok("nodes", path, "--empty", admin=True)
    assert "No nodes." in site.ok("status")


def test_two_nodes_with_one_address_are_a_warning(site):
    site.ok("check")
    result = site.run("nodes", nodes_file(site, "a address=10.1.1.1 cores=2\n"
                                                 "b address=10.1.1.1 cores=2\n"), admin=True)
    assert result.returncode == 0
    assert result.stderr == "qpy_admin.py: warning: nodes a and b have the same address " \
                            "10.1.1.1\n"


def test_admin_add_with_a_huge_number_is_one_line(site):
    site.ok("check")
    err = site.fails("add", "n1", "cores=" + HUGE, admin=True)
    assert "cores must be a whole number" in err
