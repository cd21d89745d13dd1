"""Builders for the S3 tests: an export written locally (manifests by the real tools), then uploaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KEY_ID = "AKIATESTREVERSIB0001"
SECRET = "reversib-test-secret-Zq8vX3"


def isolate_aws(monkeypatch: Any, tmp_path: Path) -> None:
    """No AWS_* variable of the caller's, no ~/.aws files, no instance metadata look-ups."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def upload_tree(s3: Any, bucket: str, prefix: str, root: Path, **put: Any) -> list[str]:
    """Upload every file below `root` to `bucket` under `prefix` ("" or "x/"); return the keys."""
    keys = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            key = prefix + p.relative_to(root).as_posix()
            s3.put_object(Bucket=bucket, Key=key, Body=p.read_bytes(), **put)
            keys.append(key)
    return keys


def s3_source(endpoint: Any, url: str, **more: Any) -> Any:
    """An S3Source of `url` on the test endpoint, with s3_options(**more)."""
    from reversib.sources.s3 import S3Source
    from reversib.sources.s3_options import S3Options

    return S3Source(url, S3Options.model_validate(s3_options(endpoint.url, **more)))


def upload_export(tmp: Path, s3: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> Path:
    """`files` written to tmp/export with a SHA256SUMS by the real sha256sum, uploaded under `prefix`."""
    from tests.helpers import make_export, run_tool

    root = make_export(tmp / "export", files)
    run_tool(["sha256sum"], root, "SHA256SUMS")
    upload_tree(s3, bucket, prefix, root)
    return root


def s3_options(endpoint_url: str, **more: Any) -> dict[str, Any]:
    """A `source.s3` block with explicit keys (the secret by environment variable) and fast retries."""
    return {"endpoint_url": endpoint_url, "addressing_style": "path", "access_key_id": KEY_ID,
            "secret_access_key_env": "AWS_SECRET_ACCESS_KEY", "max_attempts": 3, **more}


def write_check(tmp: Path, name: str, body: dict[str, Any]) -> Path:
    """A config folder with one check; returns the config file."""
    cdir = tmp / "checks"
    cdir.mkdir(exist_ok=True)
    (cdir / f"{name}.yaml").write_text(yaml.safe_dump({"version": 1, "name": name, **body}, allow_unicode=True))
    cfg = tmp / "config" / "reversib.yaml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(yaml.safe_dump({"version": 1, "history": {"url": "sqlite:///../var/h.db"},
                                   "checks_dir": "../checks"}))
    return cfg
