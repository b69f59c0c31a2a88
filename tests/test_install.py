"""The lab's shared install: `make install PREFIX=... SITE=...` and `make uninstall`."""
import os
import stat
import subprocess

from conftest import REPO, wait_for


def test_make_install_gives_every_user_qpy_and_the_site(tmp_path):
    prefix, site_dir = str(tmp_path / "opt"), str(tmp_path / "site")
    home = str(tmp_path / "home")
    os.makedirs(home)
    env = {"PATH": "/usr/bin:/bin", "HOME": home}
    subprocess.run(["make", "-s", "-C", REPO, "install", "PREFIX=" + prefix, "SITE=" + site_dir],
                   check=True, capture_output=True, env=env)
    qpy, admin = os.path.join(prefix, "bin", "qpy"), os.path.join(prefix, "bin", "qpy-admin")
    for path in (qpy, admin, os.path.join(prefix, "share", "qpy", "bash_completion.sh")):
        assert os.stat(path).st_mode & stat.S_IROTH
    assert not os.path.exists(os.path.join(REPO, "qpy.site"))
    result = subprocess.run([qpy, "check"], env=env, capture_output=True, text=True)
    assert result.stderr.startswith("qpy: No qpy site in %s" % site_dir)  # found via qpy.site
    out = subprocess.run([admin, "create", site_dir], env=env, capture_output=True, text=True)
    assert "Site created" in out.stdout, out.stderr
    # what the user typed is what the messages name
    assert "qpy-admin nodes <file>" in out.stdout and "qpy_admin.py" not in out.stdout
    assert "qpy_admin.py" not in subprocess.run([admin, "--help"], env=env, capture_output=True,
                                                text=True).stdout
    wrong = subprocess.run([admin, "nodes", "a", "b"], env=env, capture_output=True, text=True)
    assert wrong.stderr == "qpy-admin: wrong arguments. Try 'qpy-admin --help'.\n"
    assert "ExecStart=%s tick --linger=14" % admin in subprocess.run(
        [admin, "timer"], env=env, capture_output=True, text=True).stdout
    subprocess.run([admin, "add", "here", "address=localhost", "cores=1"], env=env, check=True,
                   capture_output=True)
    out = subprocess.run([qpy, "sub", "echo installed"], cwd=home, env=env, capture_output=True,
                         text=True)
    assert out.stdout == "Job 1 received.\n", out.stderr
    wait_for(lambda: os.path.exists(os.path.join(home, "job_1.out"))
             and open(os.path.join(home, "job_1.out")).read() == "installed\n", what="the job")
    assert "## For users" in subprocess.run([qpy, "tutorial"], env=env, capture_output=True,
                                            text=True).stdout
    kill = subprocess.run([os.path.join(prefix, "bin", "qpy-kill"), "999"], env=env,
                          capture_output=True, text=True)  # (qpy kill, for Snakemake)
    assert kill.stderr == "qpy: Nothing to do: required jobs not found.\n"
    subprocess.run(["make", "-s", "-C", REPO, "uninstall", "PREFIX=" + prefix], check=True,
                   capture_output=True, env=env)
    assert not os.path.exists(prefix)


def test_a_prefix_install_finds_its_schema_as_pip_install_user_lays_it_out(tmp_path):
    """pip install --user puts qpy.py in ~/.local/lib/pythonX.Y/site-packages and schema.sql
    in ~/.local/share/qpy: a --prefix install has that very layout. Without schema.sql the
    first command says so, and leaves no state behind."""
    import glob
    import sys
    prefix, home = str(tmp_path / "local"), str(tmp_path / "home")
    os.makedirs(home)
    # (--ignore-installed: else pip takes the venv's own qpy away for the prefix's)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                             "--ignore-installed", "--disable-pip-version-check", "--prefix",
                             prefix, REPO],
                            capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    (packages,) = glob.glob(os.path.join(prefix, "lib", "python*", "site-packages"))
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "PYTHONPATH": packages}
    qpy = [sys.executable, os.path.join(prefix, "bin", "qpy")]
    out = subprocess.run(qpy + ["sub", "echo installed"], cwd=home, env=env,
                         capture_output=True, text=True)
    assert out.stdout == "Job 1 received.\n", out.stderr
    wait_for(lambda: os.path.exists(os.path.join(home, "job_1.out"))
             and open(os.path.join(home, "job_1.out")).read() == "installed\n", what="the job")
    os.unlink(os.path.join(prefix, "share", "qpy", "schema.sql"))
    env["HOME"] = str(tmp_path)
    out = subprocess.run(qpy + ["check"], cwd=home, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith(
        "qpy: schema.sql, which comes with qpy, is not in its install"), out.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), ".qpy"))


def test_the_package_builds_and_passes_twine_check(tmp_path):
    """What PyPI would take: an sdist and a wheel named by qpy.VERSION (the one place the
    version is written), the license inside, metadata twine finds complete."""
    import sys
    import zipfile
    import qpy
    dist = str(tmp_path / "dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", dist, REPO],
                            capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    names = sorted(os.listdir(dist))
    assert names == ["qpy_queue-%s-py3-none-any.whl" % qpy.VERSION,
                     "qpy_queue-%s.tar.gz" % qpy.VERSION], names
    with zipfile.ZipFile(os.path.join(dist, names[0])) as wheel:
        inside = wheel.namelist()
        metadata = wheel.read("qpy_queue-%s.dist-info/METADATA" % qpy.VERSION).decode()
    assert {"qpy.py", "qpy_admin.py", "qpy_queue-%s.data/data/share/qpy/schema.sql"
            % qpy.VERSION, "qpy_queue-%s.dist-info/licenses/LICENSE" % qpy.VERSION} <= set(inside)
    assert "License-Expression: GPL-3.0-or-later" in metadata and "Classifier: " in metadata
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict"] +
                           [os.path.join(dist, name) for name in names],
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count("PASSED") == 2, check.stdout
