"""Builders for the daemon tests: a configuration folder, a daemon process, polling with deadlines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.helpers import make_export, run_tool

REPO = Path(__file__).resolve().parents[2]
REVERSIB = str(Path(sys.executable).with_name("reversib"))
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(what: str, fn: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05) -> T:
    """Call `fn` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def small_export(root: Path, files: dict[str, bytes] | None = None) -> Path:
    make_export(root, files or {"a.txt": b"alpha\n", "b/c.csv": b"id,name\n1,x\n"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    return root


def write_config(folder: Path, checks: dict[str, dict[str, Any]], daemon: dict[str, Any] | None = None,
                 history: str = "sqlite:///history.db") -> Path:
    """`folder/reversib.yaml` + `folder/checks/<id>.yaml` (each check dict gets version/id/name)."""
    cdir = folder / "checks"
    if cdir.exists():
        shutil.rmtree(cdir)
    cdir.mkdir(parents=True)
    for check_id, body in checks.items():
        doc = {"version": 1, "id": check_id, "name": check_id, **body}
        (cdir / f"{check_id}.yaml").write_text(yaml.safe_dump(doc))
    cfg = folder / "reversib.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "history": {"url": history}, "checks_dir": "checks",
                                   "log": {"level": "info"}, "daemon": daemon or {}}))
    return cfg


class DaemonProcess:
    """`reversib run` as a real process; stderr (JSON logs) goes to a file."""

    def __init__(self, cfg: Path, port: int, *, argv: list[str] | None = None, env: dict[str, str] | None = None,
                 preexec: list[str] | None = None) -> None:
        self.port = port
        self.log_path = cfg.parent / f"daemon-{port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = argv or [REVERSIB, "run", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"]
        self.proc = subprocess.Popen([*(preexec or []), *cmd], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env or os.environ.copy(), cwd=cfg.parent)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str) -> Any:
        code, body = self.get(path)
        assert code == 200, (code, body)
        return json.loads(body)

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"reversib run exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return self.get("/-/ready")[0] == 200
            except OSError:
                return False
        poll("the daemon to be ready", ready, timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
