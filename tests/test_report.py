"""The status page (qpy_admin.py report --html, and the timer's ticks that write it), looked at
the way its readers see it: rendered by headless Chromium, to the DOM and to screenshots."""
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import time
import zlib

import pytest

from conftest import wait_for


def browser(tmp_path, *args):
    """Chromium, headless, on its own profile: what it prints (the DOM with --dump-dom)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium to render the page (make system-deps installs it as root)")
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-quic", "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                           "--user-data-dir=" + str(tmp_path / "profile")] + list(args),
                          capture_output=True, text=True, timeout=120).stdout


def dom_of(tmp_path, page):
    return browser(tmp_path, "--dump-dom", "file://" + page)


def screenshot(tmp_path, page, name, dark):
    """A 1920 x 1080 screenshot; dark: as a browser set to prefer dark pages shows it."""
    path = str(tmp_path / name)
    browser(tmp_path, "--window-size=1920,1080", "--screenshot=" + path,
            "--blink-settings=preferredColorScheme=%d" % (0 if dark else 1), "file://" + page)
    assert os.path.getsize(path) > 10000, "no screenshot of %s" % page
    return path


def first_pixel(png):
    """The top left pixel of a PNG (RGB or RGBA, 8 bits): its first scanline's first bytes
    are the pixel whatever the row's filter, as nothing is above or left of it."""
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.setdefault(kind, b"")
        chunks[kind] += data[at + 8:at + 8 + length]
        at += 12 + length
    assert chunks[b"IHDR"][8] == 8 and chunks[b"IHDR"][9] in (2, 6)  # 8-bit RGB(A)
    return tuple(zlib.decompress(chunks[b"IDAT"])[1:4])


def series_in(dom, chart):
    """The names of the series drawn in one chart of the page (by its figure's id)."""
    start = dom.index('id="%s"' % chart)
    figure = dom[start:dom.index("</figure>", start)]
    assert "<svg" in figure, "chart %s is not drawn" % chart
    return re.findall(r'<g class="series [^"]*" data-series="([^"]*)"', figure)


def me():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def add_history(site, rows):
    """Jobs of other users that ended over the last weeks. The tests cannot wait days for
    such a history: its rows are inserted straight into the DB (schema.sql: history), as
    `qpy.move` writes them when a job ends, and its users as their first command makes them.
    rows: (user, cores, started, ended: seconds ago)."""
    now = time.time()
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"), timeout=30)
    with db:
        db.executemany("INSERT OR IGNORE INTO users (name) VALUES (?)",
                       [(row[0],) for row in rows])
        first = db.execute("SELECT COALESCE(MAX(id), 0) + 1000 FROM history").fetchone()[0]
        db.executemany(
            "INSERT INTO history (id, user, status, command, cwd, node, n_cores, mem, gpus, "
            "attributes, requeue, attempt, queued_at, started_at, ended_at, exit_code) "
            "VALUES (?, ?, 'done', 'true', '/', 'localhost', ?, 1, 0, '', 0, 1, ?, ?, ?, 0)",
            [(first + n, user, cores, now - started - 600, now - started, now - ended)
             for n, (user, cores, started, ended) in enumerate(rows)])
    db.close()


def nodes_file(site, text):
    path = os.path.join(site.work, "nodes")
    with open(path, "w") as f:
        f.write(text)
    return path


HOUR, DAY = 3600, 86400


def test_the_page_shows_now_and_over_time(site, tmp_path):
    site.ok("nodes", nodes_file(site, "localhost cores=2\ngpu1 address=localhost cores=4 "
                                      "memory=8 gpus=1\nold address=localhost cores=2\n"),
            admin=True)
    site.ok("drain", "old", "disk", "replaced", admin=True)
    failed = site.submit("-N", "oops", "-a", "localhost", "exit 3")
    site.wait_status(failed, "failed")
    running = site.submit("-N", "<script>alert(1)</script>", "-a", "localhost",
                          "sleep 600 # <img src=x onerror=alert(2)>")
    site.wait_status(running, "running")
    site.ok("ctrlQueue", "pause")
    waiting = site.submit("-N", "later", "true")
    wait_for(lambda: site.jobs()[waiting]["reason"] == "queue paused", what="its reason")
    add_history(site, [("alice", 4, 3 * HOUR, 2 * HOUR), ("alice", 8, 10 * DAY, 9 * DAY),
                       ("alice", 2, 40 * DAY, 39 * DAY), ("bob", 2, 5 * HOUR, HOUR),
                       ("bob", 1, 20 * DAY, 19 * DAY)])
    page = str(tmp_path / "status.html")
    assert site.ok("report", "--html=" + page, "--refresh=30", admin=True) == \
        "Report written to %s.\n" % page
    text = open(page).read()
    assert "<meta http-equiv='refresh' content='30'>" in text
    # self-contained: no script, nothing fetched from elsewhere (no URL but in the job's text)
    assert "<script" not in text and "<link" not in text and "url(" not in text
    assert not re.search(r"(src|href)=", text.replace("src=x onerror", ""))

    dom = dom_of(tmp_path, page)
    # nothing of a job's name or command became HTML: they are text, where they belong
    assert "<script" not in dom and "<img" not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "sleep 600 # &lt;img src=x onerror=alert(2)&gt;" in dom
    for name in ("localhost", "gpu1", "old"):
        assert '<td class="name">%s</td>' % name in dom
    assert '<span class="state drained">drained</span>' in dom and "disk replaced" in dom
    for user in (me(), "alice", "bob"):
        assert re.search(r'<td class="name"><i class="swatch u\d"></i>%s</td>' % user, dom)
    assert "exit code 3" in dom and ">oops<" in dom  # the failure, with its reason
    assert "queue paused" in dom and ">later<" in dom  # the queued job, and why it waits
    assert "No history yet" not in dom
    # the charts: a series per user who used cores in each window, two for the waits
    assert dom.count('<svg class="chart"') == 4
    everyone = sorted([me(), "alice", "bob"])
    for chart in ("cores-24h", "cores-30d", "core-hours-weeks"):
        assert sorted(series_in(dom, chart)) == everyone, chart
    assert series_in(dom, "waits-30d") == ["90th percentile", "median"]

    light = screenshot(tmp_path, page, "light.png", dark=False)
    dark = screenshot(tmp_path, page, "dark.png", dark=True)
    assert sum(first_pixel(light)) > 600 and sum(first_pixel(dark)) < 150  # the background


def test_the_pictures_count_what_ran_in_each_bucket(site, monkeypatch):
    """The charts' figures, aggregated in SQL by (user, first bucket, last bucket) and by
    slices of the history, against the same figures computed job by job: core-seconds in
    each bucket (jobs within a bucket, across several, begun before the window), and the
    waits' median and 90th percentile to within 5%."""
    import math
    import qpy
    import qpy_admin
    site.ok("restart")
    rows = [("alice", 2, 30 * DAY, 29 * DAY), ("alice", 4, 2 * DAY + 5, DAY - 7),
            ("bob", 1, 3 * HOUR, 3 * HOUR - 60), ("bob", 8, 40 * DAY, 2 * HOUR),
            ("carol", 3, 26 * HOUR, 90)]
    rows += [("carol", 1, (n + 1) * 731, n * 731) for n in range(100)]
    add_history(site, rows)
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:  # (waits of 7 s to 7,000 s, for the percentiles)
        db.executemany("UPDATE history SET queued_at = started_at - ? WHERE id = ?",
                       [(7 * 1.07 ** n, first) for n, (first,) in enumerate(db.execute(
                           "SELECT id FROM history ORDER BY id").fetchall())])
        spans = db.execute("SELECT user, n_cores, started_at, ended_at, queued_at "
                           "FROM history").fetchall()
    db.close()
    monkeypatch.setenv("HOME", site.home)
    monkeypatch.delenv("QPY_STATE", raising=False)
    now = max(ended for _, _, _, ended, _ in spans) + 30
    try:
        for name, (start, width, count) in qpy_admin.chart_windows(now).items():
            if name == "waits-30d":
                waits = {}
                for _, _, started, _, queued in spans:
                    if started >= start:
                        waits.setdefault(int((started - start) // width), []).append(
                            started - queued)
                found = qpy_admin.queue_waits((start, width, count), now)
                assert sorted(found) == sorted(waits)
                for day, values in waits.items():
                    values.sort()
                    assert found[day][0] == len(values)
                    for fraction, figure in ((0.5, found[day][1]), (0.9, found[day][2])):
                        exact = values[math.ceil(fraction * len(values)) - 1]
                        assert abs(figure - exact) <= 0.05 * exact + 1, (day, fraction)
                continue
            expected = {}
            for user, cores, started, ended, _ in spans:
                buckets = expected.setdefault(user, [0.0] * count)
                for k in range(count):
                    low, high = start + k * width, min(start + (k + 1) * width, now)
                    buckets[k] += cores * max(0.0, min(ended, high) - max(started, low))
            found = qpy_admin.core_seconds((start, width, count), now)
            for user, buckets in expected.items():
                assert found.get(user, [0.0] * count) == pytest.approx(buckets, abs=1e-3), \
                    (name, user)
    finally:
        qpy.disconnect()


def test_with_no_history_the_page_says_so(site, tmp_path):
    site.ok("restart")
    page = str(tmp_path / "status.html")
    site.ok("report", "--html=" + page, admin=True)
    text = open(page).read()
    assert "http-equiv='refresh'" not in text  # (written by hand: nothing to reload)
    dom = dom_of(tmp_path, page)
    assert "No history yet" in dom and "<svg" not in dom
    assert "No job is running." in dom and "No job is waiting." in dom


def test_a_slurm_pool_and_a_node_down(site, tmp_path):
    site.ok("restart")
    site.ok("add", "hpc", "type=slurm", "partition=p", "cores=8", "max_jobs=4", admin=True)
    reason = "launch failed: ssh: connect to host gpu9 port 22: Connection timed out"
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"))
    with db:  # (as a tick that could not reach it marks it)
        db.execute("INSERT INTO node_health (name, state, reason) VALUES ('localhost', "
                   "'down', ?)", (reason,))
    db.close()
    page = str(tmp_path / "status.html")
    site.ok("report", "--html=" + page, admin=True)
    text = open(page).read()
    assert "<td class='name'>hpc (Slurm: 0 of 4 jobs)</td>" in text  # as `qpy status` says
    assert "<td class='muted'>not limited</td>" in text  # (a pool's memory is not known)
    # a down node's reason is short beside its state, whole on hover
    assert "<span class='state down'>down</span> <span class='reason' title='%s'>launch " \
        "failed: ssh: connect to host gpu…</span>" % reason in text


def test_the_timer_writes_the_page_and_doctor_says_when(site, tmp_path):
    site.ok("restart")
    page = str(tmp_path / "status.html")
    out = site.ok("timer", "--report=" + page, admin=True)
    service = re.search(r"ExecStart=.* tick (--linger.*)\n", out).group(1)
    assert service == "--linger=14 --report=%s --report-every=15" % page  # every tick
    assert " tick --linger=58 --report=%s --report-every=60\n" % page in out  # cron's minute
    out = site.ok("timer", "--report=" + page, "--report-every=120", admin=True)
    assert "--report-every=120\n" in out and out.count("--report-every=120") == 2
    units = tmp_path / "units"
    units.mkdir()
    site.ok("timer", "--install", "--dir", str(units), "--report=" + page, admin=True)
    assert "--report=%s --report-every=15\n" % page in (units / "qpy-tick.service").read_text()

    assert "ok       status page: not written by the timer" in site.ok("doctor", admin=True)
    # the tick as the service runs it (by this checkout's qpy_admin.py, not the install's)
    site.ok("tick", *service.split(), admin=True)
    assert "http-equiv='refresh' content='15'" in open(page).read()
    assert re.search(r"ok +status page %s written 0:00:\d\d ago \(every 15 s\)" % page,
                     site.ok("doctor", admin=True))
    with open(page, "w") as f:
        f.write("the page before")
    site.ok("tick", "--report=" + page, "--report-every=86400", admin=True)
    assert open(page).read() == "the page before"  # not due yet: left as it is
    note_written(site, time.time() - 2 * 86400)
    site.ok("tick", "--report=" + page, "--report-every=86400", admin=True)
    assert "<!DOCTYPE html>" in open(page).read()  # due: written again

    note_written(site, time.time() - 3600)
    os.unlink(page)
    result = site.run("doctor", admin=True)
    assert result.returncode == 1
    assert re.search(r"PROBLEM +status page %s gone, last written 1:00:\d\d ago \(every 86400 "
                     r"s\): the timer's ticks are not writing it" % page, result.stdout)
    site.ok("tick", "--report=" + page, "--report-every=86400", admin=True)
    assert os.path.exists(page)  # (a page gone is written again at once)
    note_written(site, time.time() - 3 * 86400)
    assert "PROBLEM  status page %s written 3 days" % page in site.run("doctor",
                                                                       admin=True).stdout


def note_written(site, at):
    """Make the timer's last page older than it is (the tests do not wait for it to age)."""
    import json
    db = sqlite3.connect(os.path.join(site.state, "qpy.db"), timeout=30)
    with db:
        row = db.execute("SELECT value FROM meta WHERE key = 'status_page'").fetchone()
        db.execute("UPDATE meta SET value = ? WHERE key = 'status_page'",
                   (json.dumps({**json.loads(row[0]), "at": at}),))
    db.close()


def admin_fails(site, *args):
    result = site.run(*args, admin=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("qpy_admin.py: ") and "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize("args, refusal", [
    (["report", "--html=PAGE", "--refresh=soon"], "--refresh takes a whole number of seconds "
     "from 1 to 86400, not 'soon'."),
    (["report", "--html=PAGE", "--refresh=0"], "--refresh takes a whole number"),
    (["report", "--html=PAGE", "--refresh=1.5"], "--refresh takes a whole number"),
    (["report", "--html=/nonexistent/page.html"], "Cannot write the report "
     "/nonexistent/page.html: No such file or directory."),
    (["timer", "--report=/tmp/a page.html"], "--report takes a file name of letters, digits "
     "and /._+,:@=~- (the units and the cron line take it as it is), not '/tmp/a page.html'."),
    (["timer", "--report=/tmp/50%.html"], "--report takes a file name of letters"),
    (["timer", "--report=/nonexistent/page.html"], "--report=/nonexistent/page.html: no "
     "directory /nonexistent to write the page in."),
    (["timer", "--report=/tmp"], "--report=/tmp: a directory, not a file."),
    (["timer", "--report=PAGE", "--report-every=-5"], "--report-every takes a whole number of "
     "seconds from 1 to 86400, not '-5'."),
    (["timer", "--report-every=60"], "--report-every is how often the page of --report=<file> "
     "is written: give --report too."),
    (["tick", "--report=PAGE", "--report-every=never"], "--report-every takes a whole number"),
    (["tick", "--report-every=60"], "give --report too"),
    (["tick", "--report=/nonexistent/page.html"], "Cannot write the report "
     "/nonexistent/page.html: No such file or directory."),
])
def test_bad_report_options_are_one_line(site, tmp_path, args, refusal):
    site.ok("restart")
    page = str(tmp_path / "page.html")
    before = site.dump()
    assert refusal in admin_fails(site, *[arg.replace("PAGE", page) for arg in args])
    assert not os.path.exists(page)
    if args[0] != "tick":  # (a tick does its work before it writes the page)
        assert site.dump() == before


@pytest.mark.parametrize("args", [["report", "--refresh=5"], ["report", "--html"],
                                  ["timer", "--report"], ["tick", "--report"]])
def test_report_options_without_their_values(site, args):
    assert "wrong arguments" in admin_fails(site, *args)
