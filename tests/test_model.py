"""Unit tests of the pure parts: ID sets, check formats, directives, attributes, nodes files,
and the scheduler (a pure function of the state)."""
import pytest
from hypothesis import given, strategies as st

import qpy
from conftest import sched_job as job, sched_node as node


# ---- ID sets -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, ranges", [
    ("7", [(7, 7)]),
    ("100-120", [(100, 120)]),
    ("130-135,137", [(130, 135), (137, 137)]),
    ("1-3,6-10", [(1, 3), (6, 10)]),
])
def test_idsets(text, ranges):
    assert qpy.parse_idset(text) == ranges


@pytest.mark.parametrize("text", ["3-", "1-2-3", "-3", "a", "", "1,,2", "5-3", "1.5"])
def test_bad_idsets(text):
    with pytest.raises(ValueError):
        qpy.parse_idset(text)


@given(st.text(max_size=20))
def test_idset_parser_never_crashes(text):
    try:
        ranges = qpy.parse_idset(text)
    except ValueError:
        return
    assert all(lo <= hi for lo, hi in ranges)


# ---- check formats -------------------------------------------------------------------------

JOB = {"id": 100, "status": "running", "command": "bash my_script.sh", "cwd": "/home/users/",
       "node": "comp1", "n_cores": 2, "mem": 5.0, "attributes": "big and fast",
       "queued_at": 1000.0, "started_at": 1010.0, "ended_at": None, "exit_code": None,
       "signal": None, "reason": None, "gpu_ids": None, "name": None, "array_index": None,
       "time_limit": None, "max_rss": None, "cpu_time": None, "external_id": None}


def test_default_format_is_the_manuals():
    assert qpy.format_job(qpy.DEFAULT_CHECK_FMT, JOB, 1100.0) == \
        "100 (running):bash my_script.sh (on comp1; wd: /home/users/)\n"


def test_every_key():
    out = qpy.format_job("%j|%s|%c|%d|%n|%N|%m|%a|%A|%R|%x|%%", JOB, 1100.0)
    assert out == "100|running|bash my_script.sh|/home/users/|comp1|2|5.0|big and fast|comp1|" \
                  "0:01:30|None|%"
    assert qpy.format_job("%g", dict(JOB, gpu_ids="0,1"), 0) == "0,1"
    queued = dict(JOB, status="starting", node="comp1")
    assert qpy.format_job("%s %n %A", queued, 1100.0) == "queue None [big and fast]"


def test_times_and_exit_codes():
    ended = dict(JOB, status="failed", ended_at=1070.5, exit_code=3)
    assert qpy.format_job("%R %x", ended, 5000.0) == "0:01:00 3"  # (to the second)
    signalled = dict(ended, exit_code=None, signal=9)
    assert qpy.format_job("%x", signalled, 0) == "SIGKILL"
    assert qpy.format_job("%E", dict(JOB), 0) == "None"
    assert qpy.format_job("%Q", JOB, 0).startswith("1970-01-01")


def test_keys_inside_the_command_are_not_replaced():
    job = dict(JOB, command="date +%d")
    assert qpy.format_job("%c", job, 0) == "date +%d"


def test_escapes():
    assert qpy.decode_escapes(r"%j\t%s\n") == "%j\t%s\n"
    assert qpy.decode_escapes(r"a\\n") == "a\\n"


@given(st.text(max_size=30))
def test_format_never_crashes(pattern):
    assert isinstance(qpy.format_job(pattern, JOB, 0.0), str)


# ---- #QPY directives -----------------------------------------------------------------------

def test_directives():
    lines = ["#!/bin/bash", "#QPY n_cores=4; mem = 10", "#QPY node_attr=bigmem and infiband",
             "#QPY cpScript true", "echo #QPY not at the start"]
    # 'cpScript true' has no '=': the original's error
    with pytest.raises(qpy.QpyError, match="Invalid syntax"):
        qpy.parse_directives(lines)
    lines[3] = "#QPY cpScript=true"
    assert qpy.parse_directives(lines) == {"cores": 4, "mem": 10.0,
                                           "attributes": "bigmem and infiband", "copy": True}


@pytest.mark.parametrize("line, message", [
    ("#QPY colour=blue", "Unknown script option: colour"),
    ("#QPY n_cores=x", "Invalid value for n_cores: x."),
    ("#QPY n_cores=0", "Invalid value for n_cores: 0."),
    ("#QPY mem=-1", "Invalid value for mem: -1."),
    ("#QPY node_attr=(big", "missing ')'"),
    ("#QPY a=b=c", "Invalid syntax for options inside script: a=b=c"),
])
def test_bad_directives(line, message):
    with pytest.raises(qpy.QpyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        qpy.parse_directives([line])


@given(st.lists(st.text(max_size=30).map(lambda t: "#QPY " + t), max_size=3))
def test_directive_parser_never_crashes(lines):
    try:
        qpy.parse_directives(lines)
    except qpy.QpyError:
        pass


# ---- attribute expressions -----------------------------------------------------------------

@pytest.mark.parametrize("expression, labels, expected", [
    ("", set(), True),
    ("big", {"big", "node1"}, True),
    ("big", {"infiband", "node2"}, False),
    ("(big)and(infiband)", {"big", "infiband"}, True),
    ("(big)and(infiband)", {"big"}, False),
    ("not((big)or(infiband))", {"node4"}, True),
    ("not((big)or(infiband))", {"infiband"}, False),
    ("node3", {"big", "node3"}, True),
    ("a or b and c", {"a"}, True),          # and binds tighter than or
    ("not a and b", {"b"}, True),
    ("( big ) or ( infiband )", {"infiband"}, True),
])
def test_attribute_expressions(expression, labels, expected):
    assert qpy.matches_attributes(qpy.parse_attributes(expression), labels) is expected


@pytest.mark.parametrize("expression", ["big and", "(big", "big)", "and", "big fast", "not",
                                        "big & fast", "()"])
def test_attribute_syntax_errors_are_rejected(expression):
    with pytest.raises(qpy.QpyError):
        qpy.parse_attributes(expression)


@given(st.text(max_size=30))
def test_attribute_parser_never_crashes(text):
    try:
        tree = qpy.parse_attributes(text)
    except qpy.QpyError:
        return
    qpy.matches_attributes(tree, {"big"})


def test_config_attributes_combine_as_the_original():
    config = {"defaultAttr": "", "orAttr": "big", "andAttr": ""}
    assert qpy.combine_attributes("infiband", config) == "( big ) or ( infiband )"
    assert qpy.combine_attributes("", config) == "big"
    config = {"defaultAttr": "fast", "orAttr": "", "andAttr": "big"}
    assert qpy.combine_attributes("", config) == "( big ) and ( fast )"


# ---- config values -------------------------------------------------------------------------

def test_config_values():
    assert qpy.parse_config_value("colour", ["TRUE"])[0] is True
    assert qpy.parse_config_value("checkFMT", [r"%j: %s\n"]) == ("%j: %s\n",
                                                                 r"Check pattern modified to '%j: %s\n'")
    value, message = qpy.parse_config_value("checkFMT", ["default"])
    assert value == qpy.DEFAULT_CHECK_FMT
    assert message == r"Check pattern restored to the default value: '%j (%s):%c (on %n; wd: %d)\n'."
    for key, values in [("colour", ["maybe"]), ("colour", []), ("coloursScheme", ["red"]),
                        ("coloursScheme", ["pink"] * 5), ("checkFMT", []), ("andAttr", ["(x"])]:
        with pytest.raises(qpy.QpyError):
            qpy.parse_config_value(key, values)


# ---- nodes files ---------------------------------------------------------------------------

def test_both_nodes_file_formats():
    nodes = qpy.parse_nodes_file("""
        # the manual's format
        node1 10
        node2 16 M
        node3 address=10.0.0.3 cores=6 memory=32 gpus=2 attributes=big,infiband pref_multicore=true
    """)
    assert [(n["name"], n["cores"], n["pref_multicore"]) for n in nodes] == \
        [("node1", 10, False), ("node2", 16, True), ("node3", 6, True)]
    assert nodes[2]["address"] == "10.0.0.3" and nodes[2]["mem"] == 32.0
    assert nodes[2]["attributes"] == "big,infiband" and nodes[2]["gpus"] == 2
    assert nodes[0]["mem"] is None  # not known until probed: memory is not limited there


@pytest.mark.parametrize("text, message", [
    ("node1 cores=x memory=1", "line 1: cores must be a whole number"),
    ("node1 cores=2 memory=1 colour=red", "unknown key 'colour'"),
    ("node1 cores=2 memory=1 bogus", "expected a pair"),
    ("node1 4 X", "expected 'M'"),
    ("node1 memory=2", "no number of cores"),
    ("a 1\na 2", "line 2: node a is defined twice"),
    ("a 1 \nb cores=1 memory=1 attributes=and", "cannot be used"),
])
def test_bad_nodes_files(text, message):
    with pytest.raises(qpy.QpyError, match=message):
        qpy.parse_nodes_file(text)


# ---- scheduler -----------------------------------------------------------------------------

def place(nodes, live, blocked=None, shares=None):
    return qpy.schedule(nodes, live, blocked or {}, shares)[0]


def test_single_core_jobs_spread_to_the_node_with_most_free_cores():
    nodes = [node("node1", 10), node("node2", 10)]
    placed = place(nodes, [job(i) for i in range(1, 6)])
    assert [n for _, n in placed] == ["node1", "node2", "node1", "node2", "node1"]


def test_multicore_jobs_prefer_M_nodes_and_single_core_jobs_avoid_them():
    nodes = [node("plain", 4), node("multi", 8, pref_multicore=True)]
    assert place(nodes, [job(1, cores=4)]) == [(1, "multi")]
    assert place(nodes, [job(1)]) == [(1, "plain")]
    full = [job(9, cores=4, status="running", on="plain")]
    assert place(nodes, full + [job(1)]) == [(1, "multi")]


def test_down_and_drained_nodes_are_never_chosen():
    nodes = [node("down", 10, state="down"), node("drained", 10, state="drained"), node("up", 1)]
    assert place(nodes, [job(1), job(2)]) == [(1, "up")]


def test_backfill_and_memory():
    nodes = [node("n", 4, mem=10.0)]
    queue = [job(1, mem=120.0), job(2, mem=6.0), job(3, mem=6.0), job(4, mem=4.0)]
    assert place(nodes, queue) == [(2, "n"), (4, "n")]


def test_attributes_select_nodes():
    nodes = [node("node1", 6, attributes="big"), node("node2", 6, attributes="infiband"),
             node("node3", 6, attributes="big,infiband"), node("node4", 6)]
    placed = dict(place(nodes, [job(1, attributes="(big)and(infiband)"),
                                job(2, attributes="not((big)or(infiband))"),
                                job(3, attributes="node2")]))
    assert placed == {1: "node3", 2: "node4", 3: "node2"}


def test_paused_users_and_running_jobs_hold_their_place():
    nodes = [node("n", 2)]
    live = [job(1, status="running", on="n"), job(2, user="bob"), job(3), job(4)]
    assert place(nodes, live, {"bob": "queue paused"}) == [(3, "n")]


@given(st.lists(st.tuples(st.integers(1, 4), st.floats(0, 20)), max_size=30),
       st.lists(st.tuples(st.integers(1, 8), st.floats(1, 40), st.booleans()), min_size=1,
                max_size=4))
def test_scheduler_never_overcommits(requests, node_specs):
    nodes = [node("n%d" % i, c, m, pref_multicore=p) for i, (c, m, p) in enumerate(node_specs)]
    queue = [job(i, cores=c, mem=m) for i, (c, m) in enumerate(requests)]
    placed = place(nodes, queue)
    by_id = {j["id"]: j for j in queue}
    for n in nodes:
        mine = [by_id[i] for i, name in placed if name == n["name"]]
        assert sum(j["n_cores"] for j in mine) <= n["cores"]
        assert sum(j["mem"] for j in mine) <= n["mem"] + 1e-6
    assert len({i for i, _ in placed}) == len(placed)


def test_gpus_are_counted_per_node():
    nodes = [node("cpu", 8), node("gpu", 8, gpus=2)]
    live = [job(1, gpus=1), job(2, gpus=2), job(3, gpus=1), job(4)]
    assert place(nodes, live) == [(1, "gpu"), (3, "gpu"), (4, "cpu")]
    taken = {0}
    assert qpy.pick_gpus(taken, 2) == [1, 2] and taken == {0, 1, 2}


def request(cores=1, mem=1.0, attributes="", gpus=0):
    return {"n_cores": cores, "mem": mem, "attributes": attributes, "gpus": gpus}


def test_unsatisfiable_requests_are_explained():
    nodes = [node("a", 2, mem=8.0, attributes="big", gpus=1)]
    assert "3 cores" in qpy.unsatisfiable_reason(request(cores=3), nodes)
    assert "GB" in qpy.unsatisfiable_reason(request(mem=9), nodes)
    assert "attributes" in qpy.unsatisfiable_reason(request(attributes="gpu"), nodes)
    assert "2 GPUs" in qpy.unsatisfiable_reason(request(gpus=2), nodes)
    assert qpy.unsatisfiable_reason(request(cores=2, mem=8, attributes="a", gpus=1), nodes) is None


@given(st.text(max_size=80))
def test_nodes_file_parser_never_crashes(text):
    try:
        nodes = qpy.parse_nodes_file(text)
    except qpy.QpyError as e:
        assert "\n" not in str(e)
        return
    assert all(node["cores"] >= 0 for node in nodes)


@given(st.sampled_from(sorted(qpy.CONFIG)), st.lists(st.text(max_size=12), max_size=6))
def test_config_values_never_crash(key, values):
    try:
        qpy.parse_config_value(key, values)
    except qpy.QpyError:
        pass


@given(st.text(max_size=20))
def test_time_limits_and_arrays_never_crash(text):
    try:
        assert qpy.parse_duration(text) > 0
    except ValueError:
        pass
    try:
        qpy.parse_array(text)
    except qpy.QpyError:
        pass
