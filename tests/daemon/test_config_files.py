"""The shipped Grafana dashboard and compose/Prometheus files only use metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = set(re.findall(r"^\| `(reversib_[a-z_]+)", (ROOT / "docs" / "metrics.md").read_text(), re.M))


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\breversib_[a-z_]+\b", expr))


def test_dashboard_queries_use_documented_metrics() -> None:
    dash = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set().union(*(names_in(e) for e in exprs))
    assert used and used <= DOCUMENTED, used - DOCUMENTED


def test_alert_rules_use_documented_metrics() -> None:
    doc = yaml.safe_load((ROOT / "config" / "alerts.yml").read_text())
    used = set().union(*(names_in(r["expr"]) for g in doc["groups"] for r in g["rules"]))
    assert used and used <= DOCUMENTED, used - DOCUMENTED


def test_compose_scrapes_reversib_as_the_rules_expect() -> None:
    compose = yaml.safe_load((ROOT / "config" / "docker-compose.yml").read_text())
    assert {"reversib", "prometheus", "alertmanager"} <= set(compose["services"])
    prom = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "reversib")
    assert job["static_configs"][0]["targets"] == ["reversib:8637"]
