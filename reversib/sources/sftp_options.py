"""Options of an `sftp://` source (`source.sftp` in a check file).

Secrets follow the project rule: `X_env` names an environment variable, `X_file` a file; the value
is read when the source connects and never appears in a message.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from reversib.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]

DEFAULT_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


class SftpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int | None = Field(None, ge=1, le=65535, description="TCP port (default: the URL's, else 22)")
    username: str | None = Field(None, min_length=1, description="login name (default: the URL's, else the "
                                                                  "local user)")
    private_key_file: str | None = Field(None, description="private key (ed25519, ECDSA or RSA, OpenSSH or PEM "
                                                           "format)")
    passphrase_env: str | None = Field(None, description="environment variable holding the key's passphrase")
    passphrase_file: str | None = Field(None, description="file holding the key's passphrase")
    password_env: str | None = Field(None, description="environment variable holding the password")
    password_file: str | None = Field(None, description="file holding the password")
    use_agent: bool = Field(True, description="try the keys of a running ssh-agent (SSH_AUTH_SOCK)")
    known_hosts: str = Field("~/.ssh/known_hosts", description="known_hosts file the host key is verified "
                                                               "against")
    trust_on_first_use: bool = Field(False, description="accept an unknown host key once, append it to "
                                                        "known_hosts and pin it")
    connect_timeout: Duration = Field(15.0, gt=0, description="TCP connect, SSH handshake and authentication")
    idle_timeout: Duration = Field(60.0, gt=0, description="longest wait for any answer from the server")
    file_timeout: Duration | None = Field(None, gt=0, description="longest time one file may take (none: no "
                                                                  "limit)")
    keepalive: Duration = Field(30.0, ge=0, description="SSH keepalive interval (0: off)")
    max_sessions: int = Field(4, ge=1, le=32, description="SSH connections opened at most (one SFTP session "
                                                          "each)")
    retries: int = Field(2, ge=0, le=10, description="resumptions of one file after a cut connection")
    remote_hash: bool = Field(False, description="allow `sha256sum`-style commands on the server "
                                                 "(tier remote_digest)")
    exec_stream: bool = Field(False, description="allow reading files with `cat` over an exec channel")
    ciphers: list[str] = Field(default_factory=lambda: list(DEFAULT_CIPHERS),
                               description="preferred ciphers, first wins; the others paramiko knows follow")

    @model_validator(mode="after")
    def _one_each(self) -> SftpOptions:
        for name in ("passphrase", "password"):
            if getattr(self, f"{name}_env") is not None and getattr(self, f"{name}_file") is not None:
                raise ValueError(f"give only one of {name}_env, {name}_file")
        return self
