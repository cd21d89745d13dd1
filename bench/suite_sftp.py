"""Suite `sftp` of bench/run.py: the SFTP source against a loopback OpenSSH sshd started for the run.

Cases:
* `large`: one 1 GiB file (smoke: 2 MiB).  Anchor: OpenSSH `sftp` get, then `openssl dgst -sha256`
  (sequential, as an operator would).  Also `ssh host cat FILE | openssl dgst` (the anchor of the exec
  streaming target), reversib over the SFTP subsystem, reversib with `exec_stream`, and
  `rclone check --download` with an sftp remote.
* `small`: 5,000 files x 4 KiB (smoke: 200).  Anchor: `sftp get -r` then `sha256sum -c`; reversib
  (default parallelism, and 4 threads / 4 connections); `rclone check --download`.

The sshd listens on 127.0.0.1 on a free port with its own host key, config and authorized key, and is
killed by PID at the end.  Registered into bench/run.py by `install(harness_module)`.  With
REVERSIB_SFTP_BASELINE=/path/to/other/reversib, that executable's rows (`before-*`) are measured too.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SSHD = "/usr/sbin/sshd"
# Another reversib executable (an older checkout) whose rows `before-*` run interleaved with this one's, to
# compare two versions under the same load; its rows take no part in the targets.
BASELINE_ENV = "REVERSIB_SFTP_BASELINE"


@dataclass
class _Server:
    port: int
    user: str
    key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_sshd(d: Path, h: ModuleType) -> _Server:
    d.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True,
                       capture_output=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(f"""ListenAddress 127.0.0.1:{port}
HostKey {d}/host
PidFile {d}/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxStartups 100
MaxSessions 50
LogLevel ERROR
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            raise h.BenchError(f"sshd did not start: {(d / 'sshd.log').read_text()[-400:]}")
        time.sleep(0.05)
    host = " ".join((d / "host.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host}\n")
    return _Server(port, getpass.getuser(), d / "client", d / "known_hosts", proc)


def install(h: ModuleType) -> None:
    """Register the suite into the harness module `h` (bench/run.py, whatever name it runs under)."""
    cases = [h.Case("large", "one 1 GiB file (smoke: 2 MiB) over loopback SFTP; MB/s; anchor: OpenSSH sftp get + "
                             "openssl dgst -sha256"),
             h.Case("small", "5,000 files x 4 KiB (smoke: 200) over loopback SFTP; files/s; anchor: OpenSSH "
                             "sftp get -r + sha256sum -c")]

    @h.register("sftp", "the SFTP source on a loopback OpenSSH sshd vs OpenSSH sftp/ssh (anchor) and rclone "
                        "check --download", cases)
    def suite_sftp(ctx: Any, selected: list[str]) -> Any:
        return _suite(h, ctx, selected)


def _suite(h: ModuleType, ctx: Any, selected: list[str]) -> Any:
    res = h.SuiteResult()
    missing = [t for t in (SSHD, "ssh-keygen", "sftp", "ssh", "openssl") if shutil.which(t) is None]
    if missing:
        res.notes.append(f"sftp suite skipped: not installed: {', '.join(missing)} (apt-get install "
                         "openssh-server openssh-client openssl)")
        return res
    if ctx.tools.reversib is None or ctx.tools.sha256sum is None:
        raise h.BenchError("reversib and sha256sum are needed by the sftp suite")
    rclone = shutil.which("rclone")
    if rclone is None:
        res.notes.append("rclone rows skipped: rclone not installed (apt-get install rclone)")
    server = _start_sshd(ctx.scratch / "sshd", h)
    try:
        specs = {"large": h.DatasetSpec("sftp-large", 1, 2 * h.MiB if ctx.smoke else h.GiB),
                 "small": h.DatasetSpec("sftp-small", 200 if ctx.smoke else 5000, 4 * h.KiB)}
        for case in selected:
            spec = specs[case]
            ds = h.build_dataset(spec, ctx.data_dir / "sftp" / case, ctx.tools.sha256sum)
            res.datasets.append(f"sftp/{case}: {spec.describe()} at {ds.root}, served by sshd on 127.0.0.1:"
                                f"{server.port}")
            h.log(f"sftp/{case}: pre-warmed the page cache in {h.prewarm(ds):.1f} s")
            tools = _tools(h, ctx, ds, server, rclone, case)
            samples = h.measure(ctx, tools)
            unit = "MB/s" if case == "large" else "files/s"
            anchor = "openssh-sftp+openssl" if case == "large" else "openssh-sftp-r+sha256sum"
            res.rows += h.make_rows("sftp", case, tools, samples, anchor, unit, spec.files, spec.total_bytes,
                                    h._commands(tools))
    finally:
        server.stop()
    res.targets = _targets(h, res.rows)
    return res


def _write_checks(ctx: Any, ds: Any, server: _Server, case: str) -> Path:
    folder = ctx.scratch / f"sftp-checks-{case}"
    checks = folder / "checks"
    checks.mkdir(parents=True, exist_ok=True)
    url = f"sftp://{server.user}@127.0.0.1:{server.port}{ds.plain}"
    base = {"private_key_file": str(server.key), "known_hosts": str(server.known_hosts), "use_agent": False}
    variants: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "sftp": (base, {}),
        "sftp-exec": ({**base, "exec_stream": True}, {}),
        "sftp-p4": ({**base, "max_sessions": 4}, {"parallelism": 4}),
    }
    for name, (sftp, fixity) in variants.items():
        doc: dict[str, Any] = {"version": 1, "id": name, "name": name, "source": {"url": url, "sftp": sftp},
                               "manifest": {"path": "SHA256SUMS"}}
        if fixity:
            doc["fixity"] = fixity
        (checks / f"{name}.yaml").write_text(json.dumps(doc))  # JSON is YAML
    cfg = folder / "reversib.yaml"
    cfg.write_text("version: 1\nchecks_dir: checks\n")
    return cfg


def _digest_check(expected: str) -> Callable[[Any], str | None]:
    def check(s: Any) -> str | None:
        if s.returncode != 0:
            return f"exit code {s.returncode}"
        if expected not in s.stdout:
            return f"expected sha256 {expected}, got {s.stdout.strip()[-100:]!r}"
        return None

    return check


def _tools(h: ModuleType, ctx: Any, ds: Any, server: _Server, rclone: str | None, case: str) -> list[Any]:
    spec = ds.spec
    reversib = ctx.tools.reversib
    cfg = _write_checks(ctx, ds, server, case)
    ssh_opts = ["-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-i", str(server.key)]
    target = f"{server.user}@127.0.0.1"
    sftp = shlex.join(["sftp", *ssh_opts, "-P", str(server.port), "-b", "-", target])

    baseline = os.environ.get(BASELINE_ENV)

    def rev(check: str) -> Any:
        return h.Tool(f"reversib-{check}", lambda d: [reversib, "verify-now", check, "--config", str(cfg), "--json",
                                                       "--history", h._history_url(d), "--no-progress"],
                      check=h._reversib_check(spec.files, spec.total_bytes, exact=True))

    def before(check: str) -> list[Any]:
        """The same check run by another reversib (BASELINE_ENV), interleaved: before/after in one run."""
        if not baseline:
            return []
        return [h.Tool(f"before-{check}", lambda d: [baseline, "verify-now", check, "--config", str(cfg), "--json",
                                                      "--history", h._history_url(d), "--no-progress"],
                       check=h._reversib_check(spec.files, spec.total_bytes, exact=True))]

    tools: list[Any] = []
    if case == "large":
        rel = spec.rel_path(0)
        remote = ds.plain / rel
        digest = (ds.sums.read_text().split()[0])
        get = f"get {shlex.quote(str(remote))} out.bin"
        tools.append(h.Tool("openssh-sftp+openssl",
                            lambda _: ["sh", "-c", f"echo {shlex.quote(get)} | {sftp} >/dev/null && "
                                                   "openssl dgst -sha256 out.bin && rm -f out.bin"],
                            check=_digest_check(digest)))
        ssh = shlex.join(["ssh", *ssh_opts, "-p", str(server.port), target, f"cat {shlex.quote(str(remote))}"])
        tools.append(h.Tool("openssh-ssh-cat+openssl", lambda _: ["sh", "-c", f"{ssh} | openssl dgst -sha256"],
                            check=_digest_check(digest)))
        tools += [rev("sftp"), rev("sftp-exec"), *before("sftp"), *before("sftp-exec")]
    else:
        get = f"get -r {shlex.quote(str(ds.plain))} out"
        tools.append(h.Tool("openssh-sftp-r+sha256sum",
                            lambda _: ["sh", "-c", f"echo {shlex.quote(get)} | {sftp} >/dev/null && cd out && "
                                                   "sha256sum -c --quiet SHA256SUMS && cd .. && rm -rf out"]))
        tools += [rev("sftp"), rev("sftp-p4"), *before("sftp"), *before("sftp-p4")]
    if rclone is not None:
        env = {"RCLONE_CONFIG_BENCH_TYPE": "sftp", "RCLONE_CONFIG_BENCH_HOST": "127.0.0.1",
               "RCLONE_CONFIG_BENCH_PORT": str(server.port), "RCLONE_CONFIG_BENCH_USER": server.user,
               "RCLONE_CONFIG_BENCH_KEY_FILE": str(server.key),
               "RCLONE_CONFIG_BENCH_KNOWN_HOSTS_FILE": str(server.known_hosts),
               "RCLONE_CONFIG_BENCH_SHELL_TYPE": "none"}
        prefix = ["env", *(f"{k}={v}" for k, v in env.items())]
        tools.append(h.Tool("rclone-check-download",
                            lambda _: [*prefix, rclone, "check", "--download", "-q", str(ds.plain),
                                       f"bench:{ds.plain}"]))
    return tools


def _targets(h: ModuleType, rows: list[Any]) -> list[Any]:
    targets: list[Any] = []

    def add(name: str, case: str, tool: str, text: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        targets.append(h.Target(f"{case}/{name}", "sftp", case, tool, text, status, detail))
        row = h.find_row(rows, case, tool)
        if row is not None:
            row.targets.append(f"{name}:{status}")

    def vs(name: str, case: str, tool: str, anchor: str, factor: float, text: str) -> None:
        if not any(r.case == case for r in rows):
            return
        a, b = h.find_row(rows, case, tool), h.find_row(rows, case, anchor)
        if a is None or b is None:
            add(name, case, tool, text, None, "row missing")
            return
        speed = b.wall_s / a.wall_s
        add(name, case, tool, text, speed >= factor,
            f"{tool} {a.wall_s:.3f} s vs {anchor} {b.wall_s:.3f} s = {speed:.2f}x its throughput "
            f"(need >= {factor:.2f}x)")

    vs("vs-openssh", "large", "reversib-sftp", "openssh-sftp+openssl", 0.8,
       "SFTP subsystem >= 0.8x OpenSSH sftp get + openssl")
    vs("vs-ssh-cat", "large", "reversib-sftp-exec", "openssh-ssh-cat+openssl", 0.9,
       "exec streaming >= 0.9x ssh cat | openssl")
    small = [r for r in rows if r.case == "small" and r.tool.startswith("reversib")]
    best = min(small, key=lambda r: r.wall_s).tool if small else "reversib-sftp"
    vs("vs-openssh", "small", best, "openssh-sftp-r+sha256sum", 1.0,
       "small files at least as fast as sftp get -r + sha256sum -c (the faster reversib row)")
    vs("vs-rclone", "small", best, "rclone-check-download", 1.0,
       "small files at least as fast as rclone check --download (the faster reversib row)")
    for r in rows:
        if r.suite == "sftp" and r.tool.startswith("reversib"):
            add("rss", r.case, r.tool, f"{r.tool} peak RSS < 200 MB", r.peak_rss_mb < 200, f"{r.peak_rss_mb:.1f} MB")
    return targets
