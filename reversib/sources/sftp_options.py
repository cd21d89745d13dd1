"""Options of an `sftp://` source (`source.sftp` in a check file).  Filled in by the SFTP source issue."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SftpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
