#!/usr/bin/env python3
"""The plain sequential boto3 baseline of the `s3` bench suite: download and hash each object of a SHA256SUMS.

    s3_loop.py --bucket B --prefix P/ --manifest SHA256SUMS     (endpoint and keys from boto3's environment)

Prints `files N bytes B problems K`; exit 1 when an object is missing or its digest differs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import boto3
from botocore.config import Config


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--manifest", required=True, help="a local SHA256SUMS (paths relative to the prefix)")
    args = p.parse_args()
    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}))
    files = nbytes = problems = 0
    buf = bytearray(1 << 20)
    with open(args.manifest, encoding="utf-8") as f:
        for line in f:
            digest, _, name = line.rstrip("\n").partition("  ")
            body = client.get_object(Bucket=args.bucket, Key=args.prefix + name)["Body"]
            h = hashlib.sha256()
            while chunk := body.read(len(buf)):
                h.update(chunk)
                nbytes += len(chunk)
            files += 1
            if h.hexdigest() != digest:
                problems += 1
                print(f"MISMATCH {name}", file=sys.stderr)
    print(f"files {files} bytes {nbytes} problems {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
