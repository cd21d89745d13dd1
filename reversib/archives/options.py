"""Options of an archive export (`archive:` in a check file, docs/archives.md).

Secrets follow the project rule: the private key and its passphrase are given as `*_file` (a path)
or `*_env` (the name of an environment variable); their values are read when the run starts, handed
to `age`/`gpg` through inherited pipes (never argv, never a file of ours), and never appear in a message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from reversib.units import parse_size

Size = Annotated[int, BeforeValidator(parse_size)]

ARCHIVE_FORMATS = ("auto", "tar", "tar.gz", "tar.zst", "tar.xz", "tar.bz2", "zip")
Encryption = Literal["auto", "none", "age", "gpg"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecryptOptions(_Strict):
    method: Encryption = Field("auto", description="age, gpg, none, or auto (recognized from the file's header)")
    identity_file: str | None = Field(None, description="the customer's private key: an age identity file, or an "
                                                        "OpenPGP secret key (armored or binary) for gpg")
    identity_env: str | None = Field(None, description="environment variable holding that private key")
    passphrase_file: str | None = Field(None, description="file holding the OpenPGP key's passphrase (gpg)")
    passphrase_env: str | None = Field(None, description="environment variable holding the OpenPGP key's "
                                                         "passphrase (gpg)")
    gnupg_home: str | None = Field(None, description="an existing GnuPG home holding the secret key, instead of "
                                                     "identity_*; used read-only")

    @model_validator(mode="after")
    def _one_key(self) -> DecryptOptions:
        given = [k for k in ("identity_file", "identity_env", "gnupg_home") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one of identity_file, identity_env, gnupg_home (got {', '.join(given)})")
        if self.gnupg_home and self.method == "age":
            raise ValueError("gnupg_home is for method gpg")
        if (self.passphrase_file or self.passphrase_env) and self.method == "age":
            raise ValueError("passphrase_* is for gpg keys (an age identity file is not passphrase-protected)")
        if self.passphrase_file and self.passphrase_env:
            raise ValueError("give passphrase_file or passphrase_env, not both")
        return self

    @property
    def has_key(self) -> bool:
        return bool(self.identity_file or self.identity_env or self.gnupg_home)


class ArchiveLimits(_Strict):
    max_total_size: Size = Field(1 << 40, gt=0, description="most bytes all members may expand to (1 TiB)")
    max_ratio: float = Field(1000.0, gt=1, description="most expanded bytes per byte of the archive file, "
                                                       "checked once 64 MiB have expanded")
    max_members: int = Field(10_000_000, gt=0, description="most members an archive may hold")


class ArchiveConfig(_Strict):
    path: str = Field(min_length=1, description="the archive file, relative to the export root: a name, a glob "
                                                "(the last match in name order is taken), or a strftime template "
                                                "such as acme-%Y-%m-%d.tar.zst.age (today's, in the check's "
                                                "timezone)")
    format: str = Field("auto", description="one of " + ", ".join(ARCHIVE_FORMATS) + " (auto: from the content)")
    decrypt: DecryptOptions = Field(default_factory=lambda: DecryptOptions(),
                                    description="how to open an encrypted archive")
    manifest: str = Field("auto", description="the manifest inside the archive (a member path), or auto: "
                                              "reversib-manifest.json, manifest.json, SHA256SUMS... at its root")
    manifest_format: str = Field("auto", description="format of the inner manifest (as manifest.format)")
    algorithms: list[str] = Field(default_factory=lambda: ["sha256"], min_length=1,
                                  description="digests computed while the archive is read, before its manifest "
                                              "is known; another algorithm the manifest needs costs a second read")
    limits: ArchiveLimits = Field(default_factory=lambda: ArchiveLimits(), description="decompression-bomb limits")

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ARCHIVE_FORMATS:
            raise ValueError(f"unknown archive format {value!r} (one of {', '.join(ARCHIVE_FORMATS)})")
        return value

    @field_validator("manifest_format")
    @classmethod
    def _manifest_format(cls, value: str) -> str:
        from reversib.manifests import check_format

        return check_format(value)

    @model_validator(mode="after")
    def _valid(self) -> ArchiveConfig:
        from reversib import digests

        unknown = [a for a in self.algorithms if not digests.is_known(a)]
        if unknown:
            raise ValueError(f"algorithms: unknown digest algorithm(s) {', '.join(unknown)}")
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError("path: must be relative to the export root, without '..'")
        if self.manifest != "auto" and (self.manifest.startswith("/") or ".." in self.manifest.split("/")):
            raise ValueError("manifest: must be a member path inside the archive, without '..'")
        return self
