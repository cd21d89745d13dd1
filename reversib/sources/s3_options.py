"""Options of an `s3://` source (`source.s3` in a check file).  Filled in by the S3 source issue."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
