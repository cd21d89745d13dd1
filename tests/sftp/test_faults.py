"""Network faults through a TCP proxy in front of the real sshd, and exports still being written.

A cut connection is resumed from the last byte handed to the verifier on a new connection; a
stalled server ends the run with `error` within the configured timeouts (pytest timeouts make a
hang fail instead of blocking the suite); an export still being written is `deferred` (exit 3).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reversib.sources.base import SourceError
from reversib.sources.sftp import SftpSource
from reversib.sources.sftp_options import SftpOptions
from tests.cli_helpers import findings_of
from tests.helpers import make_export, run_tool

from .conftest import Sshd, run_sftp_check
from .proxy import FaultProxy

pytestmark = [pytest.mark.service]

BIG = 24 * 1024 * 1024


@pytest.fixture
def via_proxy(sshd: Sshd, proxy: FaultProxy, tmp_path: Path) -> dict[str, Any]:
    kh = tmp_path / "known_hosts_proxy"
    kh.write_text(sshd.known_hosts_line(proxy.port) + "\n")
    return sshd.options(known_hosts=str(kh))


@pytest.fixture
def big_export(tmp_path: Path) -> Path:
    root = make_export(tmp_path / "export", {"big.bin": os.urandom(BIG), "small.txt": b"small\n"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    return root


@pytest.mark.timeout(60)
def test_cut_mid_file_resumes_into_one_continuous_stream(sshd: Sshd, proxy: FaultProxy, via_proxy: dict[str, Any],
                                                         big_export: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    proxy.fault.mode, proxy.fault.after, proxy.fault.only_connection = "cut", 9 * 1024 * 1024, 1
    src = SftpSource(sshd.url(big_export, proxy.port), SftpOptions(**via_proxy))
    with caplog.at_level(logging.WARNING, "reversib.sftp"), src, src.open_range("big.bin") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    assert got == hashlib.sha256((big_export / "big.bin").read_bytes()).hexdigest()
    assert proxy.faults_applied == 1 and proxy.connections == 2
    assert any("resuming on a new connection" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
def test_cut_mid_file_run_passes(sshd: Sshd, proxy: FaultProxy, via_proxy: dict[str, Any], big_export: Path,
                                 tmp_path: Path) -> None:
    proxy.fault.mode, proxy.fault.after, proxy.fault.only_connection = "cut", 9 * 1024 * 1024, 1
    code, doc = run_sftp_check(tmp_path, sshd.url(big_export, proxy.port), via_proxy,
                               manifest={"path": "SHA256SUMS"}, fixity={"parallelism": 1})
    assert (code, doc["outcome"], findings_of(doc)) == (0, "passed", []), doc
    assert proxy.faults_applied == 1 and proxy.connections >= 2


@pytest.mark.timeout(60)
def test_cut_on_every_connection_is_an_error_not_a_pass(sshd: Sshd, proxy: FaultProxy, via_proxy: dict[str, Any],
                                                        big_export: Path, tmp_path: Path) -> None:
    proxy.fault.mode, proxy.fault.after = "cut", 4 * 1024 * 1024
    code, doc = run_sftp_check(tmp_path, sshd.url(big_export, proxy.port), {**via_proxy, "retries": 2},
                               manifest={"path": "SHA256SUMS"}, fixity={"parallelism": 1})
    assert (code, doc["outcome"]) == (2, "error"), doc
    assert "after 2 resumptions" in doc["runs"][0]["error"]


@pytest.mark.timeout(60)
def test_stalled_server_mid_file_ends_in_error_within_the_timeout(sshd: Sshd, proxy: FaultProxy,
                                                                   via_proxy: dict[str, Any], big_export: Path,
                                                                   tmp_path: Path) -> None:
    proxy.fault.mode, proxy.fault.after = "stall", 6 * 1024 * 1024
    opts = {**via_proxy, "idle_timeout": "2s", "connect_timeout": "3s", "retries": 1}
    t0 = time.monotonic()
    code, doc = run_sftp_check(tmp_path, sshd.url(big_export, proxy.port), opts, manifest={"path": "SHA256SUMS"},
                               fixity={"parallelism": 1})
    elapsed = time.monotonic() - t0
    assert (code, doc["outcome"]) == (2, "error"), doc
    assert "big.bin" in doc["runs"][0]["error"] and "timed out" in doc["runs"][0]["error"]
    assert elapsed < 2 * (2 + 3) + 5, elapsed  # (retries + 1) x (idle + connect) and some slack


@pytest.mark.timeout(60)
def test_server_that_never_answers_ends_in_error_within_connect_timeout(sshd: Sshd, proxy: FaultProxy,
                                                                         via_proxy: dict[str, Any],
                                                                         big_export: Path, tmp_path: Path) -> None:
    proxy.fault.mode, proxy.fault.after = "stall", 0
    t0 = time.monotonic()
    code, doc = run_sftp_check(tmp_path, sshd.url(big_export, proxy.port), {**via_proxy, "connect_timeout": "2s"},
                               manifest={"path": "SHA256SUMS"})
    elapsed = time.monotonic() - t0
    assert (code, doc["outcome"]) == (2, "error"), doc
    assert elapsed < 10, elapsed


@pytest.mark.timeout(150)  # three stalls, each bounded below by the watchdog (asserted per stall)
def test_stall_after_the_handshake_is_bounded_by_the_watchdog(sshd: Sshd, proxy: FaultProxy,
                                                              via_proxy: dict[str, Any], big_export: Path) -> None:
    """The server answers the key exchange, then nothing (auth / subsystem start would wait forever)."""
    for after in (1200, 3000, 4000):
        proxy.fault.mode, proxy.fault.after = "stall", after
        opts = {**via_proxy, "connect_timeout": "2s", "idle_timeout": "2s", "retries": 1}
        src = SftpSource(sshd.url(big_export, proxy.port), SftpOptions(**opts))
        t0 = time.monotonic()
        with src, pytest.raises(SourceError):  # wherever the stall falls: handshake, auth, listing or read
            list(src.iter_entries())
            with src.open_range("big.bin") as f:
                f.read()
        assert time.monotonic() - t0 < 2 * (2 + 2 + 2) + 3, after


@pytest.mark.timeout(60)
def test_file_timeout_ends_a_slow_file(sshd: Sshd, proxy: FaultProxy, via_proxy: dict[str, Any],
                                       big_export: Path, tmp_path: Path) -> None:
    proxy.fault.mode, proxy.fault.after, proxy.fault.rate = "throttle", 200_000, 2_000_000
    t0 = time.monotonic()
    code, doc = run_sftp_check(tmp_path, sshd.url(big_export, proxy.port), {**via_proxy, "file_timeout": "2s"},
                               manifest={"path": "SHA256SUMS"}, fixity={"parallelism": 1})
    assert (code, doc["outcome"]) == (2, "error"), doc
    assert "file_timeout" in doc["runs"][0]["error"]
    assert time.monotonic() - t0 < 15


# -- an export still being written ---------------------------------------------------------------

@pytest.mark.timeout(60)
def test_missing_completion_marker_defers(sshd: Sshd, big_export: Path, tmp_path: Path) -> None:
    code, doc = run_sftp_check(tmp_path, sshd.url(big_export), sshd.options(), manifest={"path": "SHA256SUMS"},
                               completion={"marker": ".done"})
    assert (code, doc["outcome"]) == (3, "deferred")
    (big_export / ".done").write_text("")
    code, doc = run_sftp_check(tmp_path, sshd.url(big_export), sshd.options(), manifest={"path": "SHA256SUMS"},
                               completion={"marker": ".done"})
    assert (code, doc["outcome"]) == (0, "passed"), doc


@pytest.mark.timeout(60)
def test_export_still_being_written_defers_with_stable_for(sshd: Sshd, tmp_path: Path) -> None:
    root = make_export(tmp_path / "export", {"a.txt": b"a\n"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    stop = threading.Event()

    def writer() -> None:  # the provider is still uploading part-2
        with open(root / "part-2.bin", "ab") as f:
            while not stop.is_set():
                f.write(os.urandom(4096))
                f.flush()
                time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    try:
        code, doc = run_sftp_check(tmp_path, sshd.url(root), sshd.options(), manifest={"path": "SHA256SUMS"},
                                   completion={"stable_for": "1s"})
    finally:
        stop.set()
        t.join()
    assert (code, doc["outcome"]) == (3, "deferred"), doc
    finding = doc["runs"][0]["findings"][0]
    assert finding["kind"] == "incomplete_delivery" and "stable_for" in finding["actual"]
    (root / "part-2.bin").unlink()
    code, doc = run_sftp_check(tmp_path, sshd.url(root), sshd.options(), manifest={"path": "SHA256SUMS"},
                               completion={"stable_for": "500ms"})
    assert (code, doc["outcome"]) == (0, "passed"), doc


@pytest.mark.timeout(60)
def test_cut_mid_exec_stream_resumes_with_tail(sshd: Sshd, proxy: FaultProxy, via_proxy: dict[str, Any],
                                               big_export: Path, caplog: pytest.LogCaptureFixture) -> None:
    proxy.fault.mode, proxy.fault.after, proxy.fault.only_connection = "cut", 9 * 1024 * 1024, 1
    src = SftpSource(sshd.url(big_export, proxy.port), SftpOptions(**via_proxy, exec_stream=True))
    with caplog.at_level(logging.WARNING, "reversib.sftp"), src:
        list(src.iter_entries())  # listed: big enough to be streamed with `cat`
        with src.open_range("big.bin") as f:
            got = hashlib.sha256(f.read()).hexdigest()
    assert got == hashlib.sha256((big_export / "big.bin").read_bytes()).hexdigest()
    assert proxy.faults_applied == 1 and proxy.connections == 2
    assert any("resuming on a new connection" in r.getMessage() for r in caplog.records)
