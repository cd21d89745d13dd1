"""Configured checks through the real CLI: expectations, generations, deferral, config errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reversib import cli
from reversib.cli import main

from .cli_helpers import findings_of, run_cli, verify_json
from .helpers import make_export, run_tool

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


def write_config(tmp: Path, checks: dict[str, dict]) -> Path:
    cdir = tmp / "checks"
    cdir.mkdir(exist_ok=True)
    for name, body in checks.items():
        (cdir / f"{name}.yaml").write_text(yaml.safe_dump({"version": 1, "name": name, **body}))
    cfg = tmp / "config" / "reversib.yaml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(yaml.safe_dump({"version": 1, "history": {"url": "sqlite:///../var/h.db"},
                                   "checks_dir": "../checks"}))
    return cfg


def dated_export(base: Path, days: list[str], files: dict[str, bytes] | None = None) -> Path:
    for d in days:
        root = make_export(base / d, files or {"a.csv": b"1,2\n", "b/c.txt": b"hello\n"})
        run_tool(["sha256sum"], root, "SHA256SUMS")
    return base


def run_checks(cfg: Path, *names: str) -> tuple[int, dict]:
    code, doc = verify_json(["--config", str(cfg), *(names or ["--all"])], cfg.parent.parent / "var" / "h.db")
    return code, doc


def test_sample_passes_through_the_console_script() -> None:
    """The README's `make run` command line, on the bundled sample, through the installed entry point."""
    exe = Path(sys.executable).with_name("reversib")
    proc = subprocess.run([str(exe), "verify-now", "--all", "--config", "config/reversib.yaml", "--history",
                           "sqlite:///:memory:"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASSED   ACME daily export [2026-11-28]: 4 of 4 files")


def test_a_closed_stdout_ends_quietly_and_the_run_is_recorded(tmp_path: Path) -> None:
    """`reversib verify-now --json | head -c 1`: the reader leaves before reversib writes.  Exit 141 (as a
    command stopped by SIGPIPE), no traceback, the run recorded all the same."""
    from reversib.history import History

    exe = Path(sys.executable).with_name("reversib")
    db = tmp_path / "h.db"
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        proc = subprocess.run([str(exe), "verify-now", "--all", "--config", "config/reversib.yaml", "--json",
                               "--history", f"sqlite:///{db}"], cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    with History.open(f"sqlite:///{db}") as history:
        runs = [r for c in history.check_ids() for r in history.runs(c)]
    assert [(r.state, r.outcome) for r in runs] == [("finished", "passed")]


_GC_PROBE = """
import gc, json, sys
from reversib import cli

def probe(args):
    import reversib.history as h  # already loaded, for the commands that open the history
    tracked = any(o is h.runs_t for o in gc.get_objects())  # frozen objects are not listed
    print(json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count(), "tables_tracked": tracked,
                      "threshold": gc.get_threshold()[0]}))
    return 0

cli.COMMANDS[sys.argv[1]] = probe
sys.argv = ["reversib", *sys.argv[1:]]
cli.run()
"""


@pytest.mark.parametrize("command", ["verify-now", "check-config"])
def test_the_collector_is_off_while_start_up_loads_and_on_for_the_work(command: str, tmp_path: Path) -> None:
    """`run()` turns the cyclic GC off for the start-up; the command finds it back on, with what start-up
    made frozen -- for a command that opens the history, SQLAlchemy's tables included."""
    proc = subprocess.run([sys.executable, "-c", _GC_PROBE, command, "--history", f"sqlite:///{tmp_path}/h.db"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["enabled"] is True and seen["frozen"] > 10_000 and seen["threshold"] == cli._GC_THRESHOLD0
    if command == "verify-now":
        assert seen["tables_tracked"] is False


def test_main_leaves_a_callers_collector_as_it_was(tmp_path: Path) -> None:
    """Only the console script holds the collector: a program calling `main()` keeps its own setting."""
    import gc

    threshold = gc.get_threshold()
    gc.disable()
    try:
        code, _ = run_cli(["checks"], tmp_path / "h.db")
        assert code == 0 and not gc.isenabled() and gc.get_threshold() == threshold
    finally:
        gc.enable()


def test_generation_newest_and_keep(tmp_path: Path) -> None:
    dated_export(tmp_path / "exp", ["2026-11-26", "2026-11-27", "not-a-date"])
    cfg = write_config(tmp_path, {"gen": {"source": {"url": "../exp"}, "generation": {"pattern": "%Y-%m-%d", "keep": 3},
                                          "manifest": {"path": "SHA256SUMS"}}})
    code, doc = run_checks(cfg)
    assert doc["runs"][0]["generation"] == "2026-11-27"
    assert findings_of(doc) == [("generation_missing", None)] and code == 1


def test_deadline_makes_todays_generation_due(tmp_path: Path) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - DAY))
    dated_export(tmp_path / "exp", [yesterday])
    body = {"source": {"url": "../exp"}, "generation": {"pattern": "%Y-%m-%d"}, "manifest": {"path": "SHA256SUMS"},
            "expect": {"deadline": "00:00"}}
    cfg = write_config(tmp_path, {"due": body})
    code, doc = run_checks(cfg)
    assert findings_of(doc) == [("generation_missing", today)] and code == 1
    dated_export(tmp_path / "exp", [today])
    code, doc = run_checks(cfg)
    assert (code, findings_of(doc)) == (0, [])


def test_deferred_until_marker_then_verified(tmp_path: Path) -> None:
    root = make_export(tmp_path / "exp", {"a": b"1"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    cfg = write_config(tmp_path, {"marker": {"source": {"url": "../exp"}, "completion": {"marker": ".done"}}})
    code, doc = run_checks(cfg)
    assert (code, doc["outcome"], findings_of(doc)) == (3, "deferred", [("incomplete_delivery", None)])
    (root / ".done").write_text("")
    code, doc = run_checks(cfg)
    assert (code, doc["outcome"], findings_of(doc)) == (0, "passed", [])


def test_stale_and_too_small(tmp_path: Path) -> None:
    root = make_export(tmp_path / "exp", {"a": b"1", "b": b"22"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    old = time.time() - 3 * DAY
    for p in root.iterdir():
        os.utime(p, (old, old))
    cfg = write_config(tmp_path, {
        "fresh": {"source": {"url": "../exp"}, "expect": {"max_age": "26h"}},
        "big": {"source": {"url": "../exp"}, "expect": {"min_files": 3, "min_bytes": "1kB"}},
        "ok": {"source": {"url": "../exp"}, "expect": {"max_age": "4d", "min_files": 2, "min_bytes": 3}},
    })
    code, doc = run_checks(cfg, "fresh")
    assert findings_of(doc) == [("stale", None)] and code == 1
    code, doc = run_checks(cfg, "big")
    assert findings_of(doc) == [("too_small", None), ("too_small", None)] and code == 1
    code, doc = run_checks(cfg, "ok")
    assert code == 0


def test_manifest_missing_fails_and_source_missing_errors(tmp_path: Path) -> None:
    make_export(tmp_path / "exp", {"a": b"1"})
    cfg = write_config(tmp_path, {
        "nomanifest": {"source": {"url": "../exp"}, "manifest": {"path": "SHA256SUMS"}},
        "nosource": {"source": {"url": "../does-not-exist"}},
    })
    code, doc = run_checks(cfg, "nomanifest")
    assert findings_of(doc) == [("manifest_missing", "SHA256SUMS")] and code == 1
    code, doc = run_checks(cfg, "nosource")
    assert (code, doc["outcome"], findings_of(doc)) == (2, "error", [("source_error", None)])
    assert "does-not-exist" in doc["runs"][0]["error"]
    code, doc = run_checks(cfg)  # both: failed wins over error
    assert code == 1 and doc["outcome"] == "failed"


def test_require_tier(tmp_path: Path) -> None:
    root = make_export(tmp_path / "exp", {"a": b"1"})
    create = __import__("reversib.manifests.create", fromlist=["create_manifest"]).create_manifest
    create(root, "json", None, ("sha256",))
    cfg = write_config(tmp_path, {"t": {"source": {"url": "../exp"},
                                        "fixity": {"enabled": False, "require_tier": "downloaded"}}})
    code, doc = run_checks(cfg)
    assert (code, findings_of(doc)) == (2, [("tier_insufficient", "a")])


@pytest.mark.parametrize("content,what", [
    (b"", "empty"),
    (b"not a checksum line\n", "garbage"),
    (b"0" * (10 << 20) + b"  a\n", "10 MB line"),
    (b"\xff\xfe" + b"0" * 62 + b"  \xff\n", "invalid UTF-8"),
])
def test_malformed_manifest_is_could_not_verify(tmp_path: Path, content: bytes, what: str) -> None:
    root = make_export(tmp_path / "exp", {"a": b"1"})
    (tmp_path / "SUMS").write_bytes(content)
    code, doc = verify_json(["--source", str(root), "--manifest", str(tmp_path / "SUMS"),
                             "--manifest-format", "sha256sum"], tmp_path / "h.db")
    kinds = {k for k, _ in findings_of(doc)}
    assert "manifest_invalid" in kinds, (what, doc)
    assert (code, doc["outcome"]) == (2, "error") or ((code, doc["outcome"]) == (1, "failed") and "missing" in kinds)


def test_config_errors_all_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, {
        "one": {"source": {"url": "x", "colour": "red"}, "schedule": {"cron": "61 * * * *"}},
        "two": {"source": {"url": "x"}, "expect": {"max_age": "soon"}, "timezone": "Mars/Olympus"},
    })
    (tmp_path / "checks" / "three.yaml").write_text("version: 1\nname: [unclosed\n")
    code = main(["check-config", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 78
    for expected in ["one.yaml: source.colour: unknown key", "one.yaml: schedule.cron: invalid cron expression",
                     "two.yaml: expect.max_age: not a duration", "two.yaml: timezone: unknown time zone",
                     "three.yaml: line 3, column 1: invalid YAML"]:
        assert expected in err, err


def test_history_password_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "reversib.yaml"
    cfg.write_text("version: 1\nhistory:\n  url: postgresql://u:hunter2@127.0.0.1:1/db\n")
    assert main(["check-config", "--config", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert "hunter2" not in err and "url_env" in err
    cfg.write_text("version: 1\nhistory:\n  url_env: TEST_REVERSIB_URL\n")
    os.environ["TEST_REVERSIB_URL"] = "postgresql+psycopg://u:hunter2@127.0.0.1:1/db"
    try:
        code = main(["checks", "--config", str(cfg)])
    finally:
        del os.environ["TEST_REVERSIB_URL"]
    captured = capsys.readouterr()
    assert code == 2 and "hunter2" not in captured.err + captured.out and "127.0.0.1" in captured.err


@pytest.mark.parametrize("args", [["verify-now"], ["verify-now", "--bogus"], ["verify-now", "nope", "--source", "x"],
                                  ["history"], ["manifest", "create", "/nonexistent", "--format", "json"], []])
def test_usage_errors_exit_64(tmp_path: Path, args: list[str]) -> None:
    cfg = write_config(tmp_path, {})
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([*args, *(["--config", str(cfg)] if args else [])]))
    assert exc.value.code == 64


def test_checks_and_history_commands(tmp_path: Path) -> None:
    dated_export(tmp_path / "exp", ["2026-11-27"])
    cfg = write_config(tmp_path, {"h": {"id": "hist", "source": {"url": "../exp"},
                                        "generation": {"pattern": "%Y-%m-%d"}}})
    db = tmp_path / "var" / "h.db"
    code, text = run_cli(["checks", "--config", str(cfg), "--json"], db)
    assert json.loads(text)["checks"][0]["last_run"] is None
    run_checks(cfg)
    (tmp_path / "exp" / "2026-11-27" / "a.csv").write_text("changed")
    code, doc = run_checks(cfg)
    assert code == 1
    code, text = run_cli(["checks", "--config", str(cfg), "--json"], db)
    last = json.loads(text)["checks"][0]["last_run"]
    assert last["outcome"] == "failed" and last["check_id"] == "hist"
    code, text = run_cli(["history", "hist", "--config", str(cfg), "--json"], db)
    runs = json.loads(text)["runs"]
    assert [r["outcome"] for r in runs] == ["failed", "passed"]
    code, text = run_cli(["history", "hist", "--config", str(cfg), "--run", runs[0]["id"], "--json"], db)
    assert [(f["kind"], f["path"]) for f in json.loads(text)["findings"]] == [("size_mismatch", "a.csv")] or \
        [(f["kind"], f["path"]) for f in json.loads(text)["findings"]] == [("digest_mismatch", "a.csv")]
    code, text = run_cli(["history", "hist", "--config", str(cfg)], db)
    assert code == 0 and "failed" in text and "passed" in text


def test_manifest_create_then_verify(tmp_path: Path) -> None:
    root = make_export(tmp_path / "exp")
    for fmt in ("sha256sum", "json"):
        code, text = run_cli(["manifest", "create", str(root), "--format", fmt], tmp_path / "h.db")
        assert code == 0
        code, doc = verify_json(["--source", str(root), "--manifest", text.strip()], tmp_path / "h.db")
        # the other format's manifest file is in the export and not listed: one unexpected at most
        assert code in (0, 1) and all(k == "unexpected" for k, _ in findings_of(doc))


def test_check_config_connect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_export(tmp_path / "exp", {"a": b"1"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    (tmp_path / "outside.sums").write_bytes((root / "SHA256SUMS").read_bytes())
    cfg = write_config(tmp_path, {
        "inside": {"source": {"url": "../exp"}, "manifest": {"path": "SHA256SUMS"}},
        "outside": {"source": {"url": "../exp"}, "manifest": {"location": "../outside.sums"}},
        "found": {"source": {"url": "../exp"}},
    })
    assert main(["check-config", "--config", str(cfg), "--connect"]) == 0
    (tmp_path / "outside.sums").write_text("garbage\n")
    cfg2 = write_config(tmp_path, {"gone": {"source": {"url": "../nowhere"}}})
    capsys.readouterr()
    assert main(["check-config", "--config", str(cfg2), "--connect"]) == 2
    out = capsys.readouterr().out
    assert "outside: not a checksum file" in out and "gone: export root does not exist" in out


def test_source_option_files_are_relative_to_the_check_file(tmp_path: Path) -> None:
    from reversib.config import load_settings

    cfg = write_config(tmp_path, {"remote": {"source": {"url": "s3://bucket/exports", "s3": {
        "secret_access_key_file": "secrets/s3.key", "ca_bundle": "../ca.pem", "access_key_id": "AKIAEXAMPLE"}}}})
    check = load_settings(cfg).checks[0]
    assert check.source.s3 is not None
    assert check.source.s3.secret_access_key_file == str(tmp_path / "checks" / "secrets" / "s3.key")
    assert check.source.s3.ca_bundle == str(tmp_path / "ca.pem")
    assert check.source.url == "s3://bucket/exports"
