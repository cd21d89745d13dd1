"""Faults found by reviewing reversib as a new user and as an attacker would: each gets the precise finding
or error, and nothing that could not be checked counts as a failure of the provider."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reversib.cli import main
from tests.cli_helpers import verify_json


def _export(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _sums(files: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items()))


def _kinds(doc: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return sorted((f["kind"], f["path"], f["severity"]) for f in doc["runs"][0]["findings"])


FILES = {"a.csv": b"a\n", "b/c.csv": b"c\n"}


def test_a_damaged_digest_is_one_finding_about_that_file_and_could_not_verify(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", FILES)
    (root / "SHA256SUMS").write_text("Z" + _sums(FILES)[1:])  # line 1 (a.csv): a digest that is not hex
    code, doc = verify_json(["--source", str(root)], tmp_path / "h.db")
    assert (code, doc["runs"][0]["outcome"]) == (2, "error")
    assert _kinds(doc) == [("manifest_invalid", "a.csv", "error")]  # not also `unexpected a.csv`


def test_an_unreadable_line_makes_unlisted_files_a_warning_not_a_failure(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", FILES)
    (root / "SHA256SUMS").write_text("garbage\n" + _sums({"b/c.csv": FILES["b/c.csv"]}))
    code, doc = verify_json(["--source", str(root)], tmp_path / "h.db")
    assert (code, doc["runs"][0]["outcome"]) == (2, "error")
    assert _kinds(doc) == [("manifest_invalid", "SHA256SUMS", "error"), ("unexpected", "a.csv", "warning")]
    unexpected = next(f for f in doc["runs"][0]["findings"] if f["kind"] == "unexpected")
    assert "may be listed there" in unexpected["detail"]


def test_a_rejected_json_entry_is_not_also_unexpected(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", FILES)
    entries = [{"path": n, "size": len(d), "digests": {"sha256": hashlib.sha256(d).hexdigest()}}
               for n, d in sorted(FILES.items())]
    entries[0]["sizee"] = 1
    (root / "reversib-manifest.json").write_text(json.dumps({"reversib_manifest": 1, "entries": entries}))
    code, doc = verify_json(["--source", str(root)], tmp_path / "h.db")
    assert (code, _kinds(doc)) == (2, [("manifest_invalid", "a.csv", "error")])


def test_an_external_manifest_does_not_hide_an_export_file_of_its_name(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", {**FILES, "SHA256SUMS": b"rogue\n"})
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "SHA256SUMS").write_text(_sums(FILES))
    code, doc = verify_json(["--source", str(root), "--manifest", str(tmp_path / "ext" / "SHA256SUMS")],
                            tmp_path / "h.db")
    assert (code, _kinds(doc)) == (1, [("unexpected", "SHA256SUMS", "error")])
    # given as EXPORT/../ext/SHA256SUMS: outside the export all the same (not refused as inside it)
    code, doc = verify_json(["--source", str(root), "--manifest", str(root / ".." / "ext" / "SHA256SUMS")],
                            tmp_path / "h.db")
    assert (code, _kinds(doc)) == (1, [("unexpected", "SHA256SUMS", "error")])


def test_a_folder_listed_as_a_file_is_unreadable_not_missing(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", FILES)
    (root / "SHA256SUMS").write_text(_sums(FILES) + f"{'0' * 64}  b\n")
    code, doc = verify_json(["--source", str(root)], tmp_path / "h.db")
    assert code == 1
    found = [f for f in doc["runs"][0]["findings"] if f["path"] == "b"]
    assert [(f["kind"], f["actual"]) for f in found] == [("unreadable", "a directory, not a file")]


def test_a_manifest_link_leaving_the_root_is_named_not_reported_absent(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", FILES)
    (tmp_path / "outside-sums").write_text(_sums(FILES))
    (root / "SHA256SUMS").symlink_to(tmp_path / "outside-sums")
    code, doc = verify_json(["--source", str(root)], tmp_path / "h.db")
    run = doc["runs"][0]
    assert code == 2 and [f["kind"] for f in run["findings"]] == ["manifest_invalid"]
    assert "SHA256SUMS is there but is not read: symlink leaves the export root" in run["findings"][0]["actual"]


@pytest.mark.parametrize("url", ["sftp://bob:Hunter2Secret@127.0.0.1:1/x", "s3://AKIAXX:Hunter2Secret@bucket/x"])
def test_a_password_in_a_source_url_is_refused_and_never_shown(tmp_path: Path, url: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify-now", "--source", url, "--history", f"sqlite:///{tmp_path / 'h.db'}", "--json"]) == 64
    out, err = capsys.readouterr()
    assert "Hunter2Secret" not in out + err and "a password (or secret key)" in err
    assert not (tmp_path / "h.db").exists() or b"Hunter2Secret" not in (tmp_path / "h.db").read_bytes()
    checks = tmp_path / "cfg" / "checks"
    checks.mkdir(parents=True)
    (tmp_path / "cfg" / "reversib.yaml").write_text("version: 1\nchecks_dir: checks\n")
    (checks / "x.yaml").write_text(f"version: 1\nid: x\nname: X\nsource: {{url: '{url}'}}\n")
    assert main(["check-config", "--config", str(tmp_path / "cfg" / "reversib.yaml")]) == 78
    out, err = capsys.readouterr()
    assert "Hunter2Secret" not in out + err and "x.yaml: source.url: a password" in err


def test_check_config_reports_what_the_configuration_refers_to(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REVERSIB_TEST_UNSET", raising=False)
    monkeypatch.delenv("REVERSIB_HISTORY_URL", raising=False)
    cfg = tmp_path / "reversib.yaml"
    (tmp_path / "checks").mkdir()
    cfg.write_text("version: 1\nchecks_dir: checks\ndaemon: {api_token_env: REVERSIB_TEST_UNSET}\n"
                   "evidence: {signing_key_file: nokey}\n")
    for name in ("a", "b"):  # the same display name twice
        (tmp_path / "checks" / f"{name}.yaml").write_text(
            f"version: 1\nid: {name}\nname: Same\nsource: {{url: {tmp_path}}}\n"
            "manifest: {path: SHA256SUMS, signature: {allowed_signers_file: nofile, identity: x@y}}\n")
    assert main(["check-config", "--config", str(cfg), "--json"]) == 78
    doc = json.loads(capsys.readouterr().out)
    assert doc["checks"] == [] and any("name: check name 'Same' already used" in e for e in doc["errors"])
    (tmp_path / "checks" / "b.yaml").unlink()
    assert main(["check-config", "--config", str(cfg), "--json"]) == 78
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert sorted(e.split(": ", 2)[1] for e in errors) == [
        "daemon.api_token_env", "evidence.signing_key_file", "manifest.signature.allowed_signers_file"]
    assert all(e.startswith(str(tmp_path)) for e in errors)


def test_defaults_are_blamed_on_the_daemon_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "reversib.yaml"
    (tmp_path / "checks").mkdir()
    cfg.write_text("version: 1\nchecks_dir: checks\ndefaults: {fixity: {bogus: 1}}\n")
    (tmp_path / "checks" / "a.yaml").write_text(f"version: 1\nid: a\nname: A\nsource: {{url: {tmp_path}}}\n")
    assert main(["check-config", "--config", str(cfg)]) == 78
    assert f"{cfg}: defaults.fixity.bogus: unknown key" in capsys.readouterr().err


def test_bad_command_line_values_are_usage_errors(tmp_path: Path) -> None:
    h = f"sqlite:///{tmp_path / 'h.db'}"
    assert main(["verify-now", "--source", str(tmp_path), "--manifest-format", "foo", "--history", h]) == 64
    with pytest.raises(SystemExit) as exc:
        main(["verify-now", "--source", str(tmp_path), "--parallelism", "0", "--history", h])
    assert exc.value.code == 64


def test_report_on_an_unknown_check_is_a_usage_error(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", FILES)
    (root / "SHA256SUMS").write_text(_sums(FILES))
    code, doc = verify_json(["--source", str(root)], tmp_path / "h.db")
    assert code == 0
    h = f"sqlite:///{tmp_path / 'h.db'}"
    assert main(["report", "--check", "nosuch", "--history", h]) == 64
    assert main(["report", "--check", doc["runs"][0]["check_id"], "--history", h, "--output",
                 str(tmp_path / "r.md")]) == 0  # an ad-hoc check: known by the history
    assert "None" not in (tmp_path / "r.md").read_text()


def test_commands_that_only_read_never_make_an_empty_history(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "nope" / "h.db"
    h = f"sqlite:///{typo}"
    assert main(["history", "x", "--history", h]) == 2
    assert main(["report", "--history", h]) == 2
    assert main(["audit", "verify", "--history", h]) == 2
    assert main(["checks", "--history", h]) == 0  # nothing configured, nothing run: said, nothing made
    assert "no history database at" in capsys.readouterr().err
    assert not typo.exists() and not typo.parent.exists()


def test_a_broken_history_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "g.db"
    garbage.write_bytes(bytes(range(256)) * 400)
    root = _export(tmp_path / "e", FILES)
    (root / "SHA256SUMS").write_text(_sums(FILES))
    assert main(["verify-now", "--source", str(root), "--history", f"sqlite:///{garbage}"]) == 2
    assert main(["verify-now", "--source", str(root), "--history", "sqlite:////etc/passwd/h.db"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "file is not a database" in err and "cannot create its folder" in err


def test_ctrl_c_stops_a_large_file_being_read(tmp_path: Path) -> None:
    """SIGINT, as a terminal's Ctrl-C, stops the read in flight as SIGTERM does, and the run is recorded."""
    import signal
    import sys
    import time

    root = tmp_path / "e"
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        f.truncate(64 << 20)
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  big.bin\n")
    cfg = tmp_path / "reversib.yaml"
    (tmp_path / "checks").mkdir()
    cfg.write_text("version: 1\nchecks_dir: checks\n")
    (tmp_path / "checks" / "big.yaml").write_text(
        f"version: 1\nid: big\nname: big\nsource: {{url: {root}, rate_limit: 1MB}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "reversib", "verify-now", "big", "--config", str(cfg),
                             "--history", f"sqlite:///{tmp_path / 'h.db'}", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5, "Ctrl-C waited for the file being read"
    assert proc.returncode == 2, err
    run = json.loads(out)["runs"][0]
    assert (run["state"], run["outcome"]) == ("interrupted", "error")
    assert run["error"] == "interrupted: signal SIGINT"


def test_a_deeply_nested_json_manifest_is_invalid_not_an_internal_error(tmp_path: Path) -> None:
    root = _export(tmp_path / "e", FILES)
    depth = 200_000
    (root / "reversib-manifest.json").write_text('{"reversib_manifest": 1, "generator": ' + "[" * depth
                                                 + "]" * depth + ', "entries": []}')
    code, doc = verify_json(["--source", str(root)], tmp_path / "h.db")
    run = doc["runs"][0]
    assert (code, [f["kind"] for f in run["findings"]]) == (2, ["manifest_invalid"])
    assert "nested too deeply" in run["findings"][0]["actual"]


def test_a_name_that_is_not_utf8_is_valid_json_and_as_the_history_says(tmp_path: Path) -> None:
    root = tmp_path / "e"
    root.mkdir()
    (root / "SHA256SUMS").write_text(_sums({"a.csv": b"a\n"}))
    (root / "a.csv").write_bytes(b"a\n")
    with open(bytes(root) + b"/lat\xe9.txt", "wb") as f:  # an unlisted file with a Latin-1 name
        f.write(b"L")
    proc = subprocess.run([__import__("sys").executable, "-m", "reversib", "verify-now", "--source", str(root),
                           "--json", "--history", f"sqlite:///{tmp_path / 'h.db'}"], capture_output=True)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout.decode("utf-8"))  # strict UTF-8
    assert [(f["kind"], f["path"]) for f in doc["runs"][0]["findings"]] == [("unexpected", "lat\\xe9.txt")]
    from tests.cli_helpers import run_cli

    code, text = run_cli(["history", doc["runs"][0]["check_id"], "--run", doc["runs"][0]["run_id"], "--json"],
                         tmp_path / "h.db")
    assert "lat\\\\xe9.txt" in text


def test_connect_reads_the_manifest_of_the_newest_generation(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "samples", tmp_path / "samples")
    shutil.copytree(repo / "checks", tmp_path / "checks")
    shutil.copytree(repo / "config", tmp_path / "config")
    cfg = str(tmp_path / "config" / "reversib.yaml")
    assert main(["check-config", "--config", cfg, "--connect"]) == 0
    newest = sorted((tmp_path / "samples" / "acme-exports").iterdir())[-1]
    (newest / "SHA256SUMS").write_text("garbage\n")
    capsys.readouterr()
    assert main(["check-config", "--config", cfg, "--connect"]) == 2
    out = capsys.readouterr().out
    assert f"(generation {newest.name})" in out and "cannot connect" in out


def test_a_verdict_that_cannot_be_recorded_is_still_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The finishing write fails (a database locked past its timeout): the verdict is printed, the failure
    said, exit 2 -- and the next start records the run interrupted, never passed."""
    from reversib.history import History, HistoryError

    root = _export(tmp_path / "e", FILES)
    (root / "SHA256SUMS").write_text(_sums(FILES))

    def locked(self: History, *args: object, **kwargs: object) -> str:
        raise HistoryError("history database sqlite:///h.db: database is locked")

    monkeypatch.setattr(History, "finish_run", locked)
    h = f"sqlite:///{tmp_path / 'h.db'}"
    assert main(["verify-now", "--source", str(root), "--json", "--history", h]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["runs"][0]["outcome"] == "passed"
    assert "the verdict could not be recorded: history database sqlite:///h.db: database is locked" in err
    monkeypatch.undo()
    with History.open(h) as history:
        assert history.reap_dead_runs() == []  # this process is alive: its run is still its own
        (row,) = history.latest_runs()
        assert row.state == "running"


def test_an_invalid_daemon_file_does_not_hide_the_check_files_errors(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "reversib.yaml"
    (tmp_path / "checks").mkdir()
    cfg.write_text("version: 1\nchecks_dir: checks\ndaemon: {shutdown_timeout: 5m}\n")
    (tmp_path / "checks" / "a.yaml").write_text(f"version: 1\nid: a\nname: A\nsource: {{url: {tmp_path}}}\nbogus: 1\n")
    assert main(["check-config", "--config", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert f"{cfg}: daemon.shutdown_timeout: Input should be less than or equal to 60 seconds (got 300 seconds)" in err
    assert f"{tmp_path / 'checks' / 'a.yaml'}: bogus: unknown key" in err


def test_history_lists_why_a_run_did_not_finish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reversib.history import History

    h = f"sqlite:///{tmp_path / 'h.db'}"
    with History.open(h) as history:
        run_id = history.start_run(check_id="c", check_name="c", trigger="cli")
        history.mark_interrupted(run_id, "interrupted: signal SIGTERM")
    assert main(["history", "c", "--history", h]) == 0
    line = capsys.readouterr().out.strip()
    assert "error (interrupted)" in line and line.endswith("interrupted: signal SIGTERM")


def test_a_generation_dated_in_the_future_never_hides_the_newest_real_one(tmp_path: Path) -> None:
    import datetime as dt
    import shutil
    from zoneinfo import ZoneInfo

    repo = Path(__file__).resolve().parent.parent
    for d in ("samples", "checks", "config"):
        shutil.copytree(repo / d, tmp_path / d)
    exports = tmp_path / "samples" / "acme-exports"
    newest = sorted(p.name for p in exports.iterdir())[-1]
    future = (dt.datetime.now(ZoneInfo("Europe/Paris")).date() + dt.timedelta(days=2)).isoformat()
    (exports / future).mkdir()  # empty: verifying it would fail with manifest_missing
    code, doc = verify_json(["acme-daily", "--config", str(tmp_path / "config" / "reversib.yaml")],
                            tmp_path / "h.db")
    run = doc["runs"][0]
    assert (code, run["generation"]) == (0, newest)
    assert [(f["kind"], f["path"], f["severity"]) for f in run["findings"]] == [
        ("generation_future", future, "warning")]


@pytest.mark.parametrize(("url", "secret"), [
    ("sftp://exports:hunter2/Secret@sftp.example.com/outgoing", True), ("s3://AKIA:wJalr/K7MD@bkt/exp", True),
    ("sftp://u:123@h/x", True), ("sftp://user@host:22/p", False), ("sftp://host:22/dir/a@b", False),
    ("s3://bucket/path:with@x", False), ("/local/a:b@c", False)])
def test_secrets_in_urls_are_found_even_with_a_slash(url: str, secret: bool) -> None:
    from reversib.urls import has_password

    assert has_password(url) is secret


def test_manifest_path_must_stay_inside_the_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "reversib.yaml"
    (tmp_path / "checks").mkdir()
    cfg.write_text("version: 1\nchecks_dir: checks\n")
    (tmp_path / "checks" / "a.yaml").write_text(
        f"version: 1\nid: a\nname: A\nsource: {{url: {tmp_path}}}\nmanifest: {{path: ../x}}\n")
    assert main(["check-config", "--config", str(cfg)]) == 78
    assert "manifest.path: manifest.path is inside the export" in capsys.readouterr().err


def test_an_error_text_cannot_forge_output_lines() -> None:
    import io

    from reversib.model import Outcome, RunResult
    from reversib.output import render_result

    r = RunResult(check_id="c", check_name="c", run_id="r", outcome=Outcome.ERROR, started_at=0.0,
                  error="InternalError: line1\nPASSED   adhoc everything fine")
    out = io.StringIO()
    render_result(r, out)
    assert "\nPASSED" not in out.getvalue()
