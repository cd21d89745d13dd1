"""A real S3 endpoint for the S3 tests: moto's server in its own process on 127.0.0.1, behind the fault
layer of `tests/s3/endpoint.py`; boto3 (in the tests and in reversib) talks HTTP to it.

The server is started once per session and killed by its PID at the end.  Each test gets a fresh
bucket, no faults and an environment with test credentials and no AWS configuration files.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.s3.helpers import KEY_ID, SECRET, isolate_aws
from tests.services import require_service

ROOT = Path(__file__).resolve().parents[2]


class Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def faults(self, **conf: Any) -> None:
        self._call("/_faults/config", conf)

    def reset(self) -> None:
        self._call("/_faults/reset", {})

    def requests(self) -> list[tuple[str, str, str | None]]:
        return [tuple(r) for r in self._call("/_faults/requests")]  # type: ignore[misc]


def start_endpoint(tmp: Path, latency: float = 0.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m tests.s3.endpoint`; return the process and its URL (raises RuntimeError)."""
    port_file = tmp / "moto-port"
    log = open(tmp / "moto.log", "wb")  # noqa: SIM115 - kept open for the process' lifetime
    proc = subprocess.Popen([sys.executable, "-m", "tests.s3.endpoint", "--port-file", str(port_file),
                             "--latency", str(latency)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail = (tmp / "moto.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"did not start (exit {proc.returncode}): {tail}")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}"


@contextlib.contextmanager
def running_endpoint(tmp: Path) -> Iterator[Endpoint]:
    """A moto endpoint process for the duration of the block (skips, or fails under CI, when it cannot start)."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        require_service("moto S3 server", f"cannot be imported: {exc}")
    try:
        proc, url = start_endpoint(tmp)
    except RuntimeError as exc:
        require_service("moto S3 server", str(exc))
    try:
        yield Endpoint(url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials, no ~/.aws files, no instance metadata lookups, no endpoint unless a test sets it."""
    isolate_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def endpoint(s3_endpoint: Endpoint) -> Iterator[Endpoint]:
    s3_endpoint.reset()
    yield s3_endpoint
    s3_endpoint.reset()


@pytest.fixture
def s3(endpoint: Endpoint) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET,
                        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}))


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"rvb-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name
