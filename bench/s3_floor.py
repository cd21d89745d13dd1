#!/usr/bin/env python3
"""The network floor of the `s3` bench suite's large case: the least a tool built on reversib's libraries takes.

    s3_floor.py --bucket B --key K --digest HEX [--import boto3,pydantic,sqlalchemy] [--no-hash]
                                                  (endpoint and keys from boto3's environment)

Imports the named modules (as reversib must: boto3 for S3, pydantic for its configuration and SQLAlchemy for
its history), then downloads one object with a plain boto3 GetObject, read in 1 MiB chunks by one thread while
another hashes them with SHA-256 (transfer and hashing overlapped, as well as two threads can) -- no
configuration, listing, manifest or history.  `--no-hash`: the download alone.  Prints `files 1 bytes B
problems K`; exit 1 when the digest differs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import queue
import sys
import threading


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bucket", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--digest", required=True, help="the expected SHA-256 (hex)")
    p.add_argument("--import", dest="modules", default="boto3", help="modules imported first, comma-separated")
    p.add_argument("--no-hash", action="store_true", help="download only")
    args = p.parse_args()
    for name in filter(None, args.modules.split(",")):
        importlib.import_module(name)
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}))
    body = client.get_object(Bucket=args.bucket, Key=args.key)["Body"]
    chunks: queue.Queue[bytes | None] = queue.Queue(8)

    def reader() -> None:
        try:
            while chunk := body.read(1 << 20):
                chunks.put(chunk)
        finally:
            chunks.put(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    h = hashlib.sha256()
    nbytes = 0
    while (chunk := chunks.get()) is not None:
        if not args.no_hash:
            h.update(chunk)
        nbytes += len(chunk)
    thread.join()
    problems = 0 if args.no_hash or h.hexdigest() == args.digest else 1
    print(f"files 1 bytes {nbytes} problems {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
