"""End to end with a real Prometheus server scraping the daemon on 127.0.0.1: the sample check passes,
the export is corrupted, and after the next scheduled run ExportCheckFailing fires in /api/v1/alerts."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import flip_byte
from tests.services import require_service

from .helpers import REPO, DaemonProcess, free_port, poll, write_config


def shorter_rules(src: Path, dst: Path) -> None:
    """The shipped rules with every `for:` shortened to 1s (same expressions, same names)."""
    doc = yaml.safe_load(src.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    dst.write_text(yaml.safe_dump(doc))


def prom_get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def alerts(base: str) -> list[dict[str, Any]]:
    return list(prom_get(base, "/api/v1/alerts")["data"]["alerts"])


def test_export_check_failing_fires_in_prometheus(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        require_service("Prometheus", "server is not installed (Debian package prometheus)")
    export = tmp_path / "acme-exports"
    shutil.copytree(REPO / "samples" / "acme-exports", export)
    check = yaml.safe_load((REPO / "checks" / "acme-daily.yaml").read_text())
    check.pop("version"), check.pop("id"), check.pop("name")
    check["source"]["url"] = str(export)
    check["schedule"] = {"every": "2s"}
    cfg = write_config(tmp_path, {"acme-daily": check})
    port, prom_port = free_port(), free_port()
    rules = tmp_path / "alerts.yml"
    shorter_rules(REPO / "config" / "alerts.yml", rules)
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "reversib", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))
    daemon = DaemonProcess(cfg, port)
    prom_log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    prom = subprocess.Popen([binary, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=prom_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        daemon.wait_ready()

        def prom_ready() -> bool:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        poll("Prometheus to be ready", prom_ready, 30)

        def passed_in_prometheus() -> bool:
            got = prom_get(base, "/api/v1/query", query='reversib_check_outcome{check="acme-daily",outcome="passed"}')
            return any(r["value"][1] == "1" for r in got["data"]["result"])

        poll("Prometheus to scrape a passed run", passed_in_prometheus, 30, every=0.25)
        assert not [a for a in alerts(base) if a["labels"]["alertname"] == "ExportCheckFailing"]
        flip_byte(export / "2026-11-28" / "crm" / "customers.csv")

        def failing() -> list[dict[str, Any]]:
            return [a for a in alerts(base)
                    if a["labels"]["alertname"] == "ExportCheckFailing" and a["state"] == "firing"]

        fired = poll("ExportCheckFailing to fire", failing, 45, every=0.5)
        assert fired[0]["labels"]["check"] == "acme-daily" and fired[0]["labels"]["customer"] == "acme"
        runs = [r for r in daemon.get_json("/api/v1/checks/acme-daily/runs?limit=500")["runs"] if r["outcome"]]
        assert runs[0]["outcome"] == "failed" and runs[-1]["outcome"] == "passed"
    finally:
        prom.terminate()
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
        prom_log.close()
        assert daemon.stop() == 0
