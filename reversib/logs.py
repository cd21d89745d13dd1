"""Logging set-up: text for people on a terminal, one JSON object per line for the daemon.

Third-party loggers that are chatty or leak request details (botocore logs the access key id at
DEBUG) are capped at WARNING whatever reversib's own level.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

QUIET = ("boto3", "botocore", "s3transfer", "urllib3", "paramiko", "apscheduler", "alembic", "sqlalchemy",
         "bagit")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


def configure(level: int = logging.INFO, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The per-run summary is for the daemon's JSON logs; on the CLI the printed verdict says it.
    logging.getLogger("reversib.runner").setLevel(level if fmt == "json" else max(level, logging.WARNING))
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    # paramiko logs a failed handshake at ERROR with its traceback; reversib reports the failure itself
    # (source_error naming the server): the traceback only with --verbose.
    logging.getLogger("paramiko.transport").setLevel(level if level <= logging.DEBUG else logging.CRITICAL)
