"""Decryption as a layer under an archive: the real `age` or `gpg`, as a process fed by a pipe.

The plaintext only ever flows through pipes (never a file).  The customer's private key reaches the
tool through an inherited pipe (`age -i /dev/fd/N`, `gpg --passphrase-fd N`) or a file the user named,
never through argv.  GnuPG gets a throwaway home (0700) holding only that key, unless the check names
an existing home (`gnupg_home`), and its agent is stopped afterwards.

`verdict()` tells, once the process ended, whether the ciphertext opened:
* `decrypt_failed`: not encrypted to the key we hold (wrong key, or encrypted to someone else);
* `ciphertext_corrupt`: the integrity check failed (a flipped or missing byte, a cut file);
* a `KeyProblem` (could not verify): the configured key itself is missing, unreadable or refused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from reversib.archives.options import DecryptOptions


class KeyProblem(Exception):
    """The configured key cannot be used: reversib could not verify (outcome `error`)."""


@dataclass(frozen=True)
class Verdict:
    kind: str | None  # None (opened), "decrypt_failed" or "ciphertext_corrupt"
    message: str


def _secret(file: str | None, env: str | None, what: str) -> bytes | None:
    if file:
        try:
            return Path(file).read_bytes()
        except OSError as exc:
            raise KeyProblem(f"cannot read the {what} file {file}: {exc.strerror or exc}") from exc
    if env:
        value = os.environ.get(env)
        if value is None:
            raise KeyProblem(f"environment variable {env} (the {what}) is not set")
        return value.encode()
    return None


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe already holding `data` (small: a key or a passphrase) and closed for writing."""
    r, w = os.pipe()
    try:
        if len(data) > 60_000:
            raise KeyProblem("the key is too large to hand over through a pipe")
        os.write(w, data)
    finally:
        os.close(w)
    return r


class Decryption:
    """One decryption process.  `start()` gives (stdin, stdout); `finish()` drains and waits."""

    def __init__(self, method: str, options: DecryptOptions, *, scratch: str | None = None):
        if method not in ("age", "gpg"):
            raise ValueError(f"unknown encryption {method!r}")
        self.method = method
        self.options = options
        self.scratch = scratch
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = bytearray()
        self._stderr_thread: threading.Thread | None = None
        self._home: str | None = None
        self._fds: list[int] = []
        self._killed = False

    # -- start
    def start(self) -> tuple[IO[bytes], IO[bytes]]:
        """Start the process.  On any failure (a KeyProblem after the GnuPG home was made and the key imported,
        a process that cannot start), the home and its agent are removed before the error propagates."""
        try:
            return self._start()
        except BaseException:
            self.kill()
            self.finish()
            raise

    def _start(self) -> tuple[IO[bytes], IO[bytes]]:
        tool = shutil.which(self.method)
        if tool is None:
            raise KeyProblem(f"the {self.method} command is not installed (needed to decrypt this archive)")
        try:
            argv = self._age_argv(tool) if self.method == "age" else self._gpg_argv(tool)
            # A session of its own: no controlling terminal, so that age or gpg fails instead of prompting on
            # /dev/tty (a passphrase-protected age identity, a pinentry) and hanging the run.
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         pass_fds=self._fds, env=self._env(), close_fds=True, start_new_session=True)
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds = []
        self._stderr_thread = threading.Thread(target=self._collect_stderr, name="reversib-decrypt-stderr",
                                               daemon=True)
        self._stderr_thread.start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def _env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME")}
        keep["LC_ALL"] = "C"  # messages are classified by their English text
        return keep

    def _age_argv(self, tool: str) -> list[str]:
        o = self.options
        if o.identity_file:
            if not Path(o.identity_file).is_file():
                raise KeyProblem(f"the age identity file {o.identity_file} does not exist")
            return [tool, "--decrypt", "-i", o.identity_file]
        key = _secret(None, o.identity_env, "age identity")
        if key is None:
            raise KeyProblem("an age-encrypted archive needs archive.decrypt.identity_file or identity_env")
        fd = _pipe_with(key)
        self._fds.append(fd)
        return [tool, "--decrypt", "-i", f"/dev/fd/{fd}"]

    def _gpg_argv(self, tool: str) -> list[str]:
        o = self.options
        if o.gnupg_home:
            home = o.gnupg_home
            if not Path(home).is_dir():
                raise KeyProblem(f"the GnuPG home {home} does not exist")
        else:
            home = self._home = tempfile.mkdtemp(prefix="reversib-gpg-", dir=self.scratch)
            os.chmod(home, 0o700)
            key = _secret(o.identity_file, o.identity_env, "OpenPGP secret key")
            if key is not None:
                self._import(tool, home, key)
        argv = [tool, "--homedir", home, "--batch", "--no-tty", "--status-fd", "2",
                "--no-auto-key-retrieve", "--no-permission-warning", "--pinentry-mode", "loopback", "--decrypt"]
        passphrase = _secret(o.passphrase_file, o.passphrase_env, "OpenPGP passphrase")
        if passphrase is not None:
            fd = _pipe_with(passphrase.rstrip(b"\r\n") + b"\n")
            self._fds.append(fd)
            argv[-1:-1] = ["--passphrase-fd", str(fd)]
        return argv

    def _import(self, tool: str, home: str, key: bytes) -> None:
        base = [tool, "--homedir", home, "--batch", "--no-tty", "--quiet"]
        subprocess.run([*base, "--import"], input=key, capture_output=True, env=self._env(), timeout=60,
                       check=False, start_new_session=True)
        listed = subprocess.run([*base, "--list-secret-keys", "--with-colons"], capture_output=True,
                                env=self._env(), timeout=60, check=False, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        if not any(line.startswith(b"sec:") for line in listed.stdout.splitlines()):
            raise KeyProblem("the configured OpenPGP key holds no secret key (not an OpenPGP secret key, or a "
                             "public key only: a public key cannot decrypt)")

    def _collect_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self._stderr) < 256 * 1024:
                self._stderr += line

    # -- end
    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._killed = True
            self.proc.kill()

    def finish(self) -> None:
        """Drain the plaintext nobody reads any more, wait for the process, clean the GnuPG home."""
        proc = self.proc
        if proc is not None:
            assert proc.stdout is not None
            try:
                while proc.stdout.read(1 << 20):
                    pass
            except (OSError, ValueError):
                pass
            proc.wait()
            if self._stderr_thread is not None:
                self._stderr_thread.join()
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        if self._home is not None:
            gpgconf = shutil.which("gpgconf")
            if gpgconf:
                try:  # the agent (and any keyboxd/dirmngr) holding the imported key
                    subprocess.run([gpgconf, "--homedir", self._home, "--kill", "all"], capture_output=True,
                                   env=self._env(), timeout=30, check=False, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
                except (OSError, subprocess.SubprocessError):
                    pass
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def verdict(self) -> Verdict:
        """After `finish()`: whether the ciphertext opened.  Raises KeyProblem for a refused key."""
        proc = self.proc
        if proc is None or self._killed:
            return Verdict(None, "not run to its end")
        text = self._stderr.decode("utf-8", "replace")
        if self.method == "age":
            return _age_verdict(proc.returncode, text)
        return _gpg_verdict(proc.returncode, text, passphrase=self._passphrase_source())

    def _passphrase_source(self) -> str | None:
        o = self.options
        if o.passphrase_file:
            return f"archive.decrypt.passphrase_file ({o.passphrase_file})"
        if o.passphrase_env:
            return f"archive.decrypt.passphrase_env ({o.passphrase_env})"
        return None


def _last_error(text: str, prefix: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("[GNUPG:]")]
    msgs = [ln.removeprefix(prefix).strip() for ln in lines if ln.startswith(prefix)] or lines
    return msgs[-1][:500] if msgs else "no message"


def _age_verdict(code: int, text: str) -> Verdict:
    if code == 0:
        return Verdict(None, "decrypted")
    msg = _last_error(text, "age: error:")
    low = msg.lower()
    if "no identity matched" in low:
        return Verdict("decrypt_failed", "not encrypted to the configured age identity (no identity matched any "
                                         "of the recipients)")
    if "identity" in low and "passphrase" in low:
        raise KeyProblem("the configured age identity is protected by a passphrase, which reversib cannot give "
                         "age (it would prompt on a terminal): configure an identity without a passphrase, kept "
                         "secret by the file's permissions or identity_env")
    if ("identity" in low and "reading" in low) or "no secret keys" in low or "identity file" in low:
        raise KeyProblem(f"the configured age identity cannot be used: {msg}")
    if "passphrase" in low:
        return Verdict("decrypt_failed", "encrypted with a passphrase, not to the configured age identity")
    return Verdict("ciphertext_corrupt", f"age: {msg}")


_STATUS = re.compile(r"^\[GNUPG:\] (\S+)(?: (.*))?$", re.MULTILINE)


_GPG_ERR_BAD_PASSPHRASE = 11
_GPG_ERR_CANCELED = 99  # a pinentry that could not ask
_GPG_ERR_NO_PASSPHRASE = 177


def _gpg_verdict(code: int, text: str, passphrase: str | None = None) -> Verdict:
    """What gpg's --status-fd lines (docs/DETAILS in GnuPG) say.  `passphrase` names where the configured
    passphrase came from (None: none configured)."""
    status: dict[str, list[str]] = {}
    for m in _STATUS.finditer(text):
        status.setdefault(m.group(1), []).append(m.group(2) or "")
    if code == 0 and "DECRYPTION_OKAY" in status and "BADMDC" not in status:
        return Verdict(None, "decrypted")
    error_codes: set[int] = set()
    for value in status.get("ERROR", []):
        parts = value.split()
        if len(parts) > 1:
            digits = re.match(r"\d+", parts[1])
            if digits:
                error_codes.add(int(digits.group()) & 0xFFFF)
    considered = sorted({v.split()[0] for v in status.get("KEY_CONSIDERED", []) if v})
    whose = f"the configured OpenPGP key {considered[0]}" if considered else "the OpenPGP message"
    refused = ("BAD_PASSPHRASE" in status or _GPG_ERR_BAD_PASSPHRASE in error_codes or "_BAD_PASSPHRASE" in text)
    asked = ("NEED_PASSPHRASE" in status or "NEED_PASSPHRASE_SYM" in status) and (
        "batchmode" in text or "MISSING_PASSPHRASE" in status or bool(error_codes & {_GPG_ERR_CANCELED,
                                                                                       _GPG_ERR_NO_PASSPHRASE}))
    missing = "MISSING_PASSPHRASE" in status or _GPG_ERR_NO_PASSPHRASE in error_codes or asked
    if passphrase is None and (refused or missing):
        raise KeyProblem(f"{whose} is protected by a passphrase and no passphrase is configured "
                         "(set archive.decrypt.passphrase_file or passphrase_env)")
    if refused or missing:
        raise KeyProblem(f"the passphrase from {passphrase} is wrong: gpg refused it for {whose}")
    if "NO_SECKEY" in status or "no secret key" in text.lower():
        to = sorted({v.split()[0] for v in status.get("ENC_TO", []) if v})
        return Verdict("decrypt_failed", f"encrypted to OpenPGP key(s) {', '.join(to) or '(hidden)'}; the configured "
                                         "secret key is none of them")
    if "BADMDC" in status:
        return Verdict("ciphertext_corrupt", f"gpg: integrity check failed ({_last_error(text, 'gpg:')})")
    if "NODATA" in status:
        return Verdict("ciphertext_corrupt", "gpg: not an OpenPGP message (no valid packets)")
    return Verdict("ciphertext_corrupt", f"gpg: {_last_error(text, 'gpg:')}")
