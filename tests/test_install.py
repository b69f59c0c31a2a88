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
    subprocess.run([admin, "add", "here", "address=localhost", "cores=1"], env=env, check=True,
                   capture_output=True)
    out = subprocess.run([qpy, "sub", "echo installed"], cwd=home, env=env, capture_output=True,
                         text=True)
    assert out.stdout == "Job 1 received.\n", out.stderr
    wait_for(lambda: os.path.exists(os.path.join(home, "job_1.out"))
             and open(os.path.join(home, "job_1.out")).read() == "installed\n", what="the job")
    assert "## For users" in subprocess.run([qpy, "tutorial"], env=env, capture_output=True,
                                            text=True).stdout
    subprocess.run(["make", "-s", "-C", REPO, "uninstall", "PREFIX=" + prefix], check=True,
                   capture_output=True, env=env)
    assert not os.path.exists(prefix)
