#!/usr/bin/env python3
"""R replicas verifying one run of a check together (the `scale/replicas` bench case, docs/scale.md).

    replicas.py REVERSIB CONFIG HISTORY_URL CHECK --replicas R --shards N

Starts R `reversib verify-now CHECK --shard i/N --run-id ID` processes at once (one fresh run id) on the
shared history, waits for all, and checks that they all report the same merged run.  Prints
`replicas R run ID files F bytes B outcome O`; exit 1 when a replica failed or they disagree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("reversib")
    p.add_argument("config")
    p.add_argument("history")
    p.add_argument("check")
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    a = p.parse_args()
    run = uuid.uuid4().hex
    procs = [subprocess.Popen([a.reversib, "verify-now", a.check, "--config", a.config, "--history", a.history,
                               "--shard", f"{i}/{a.shards}", "--run-id", run, "--json", "--no-progress", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(a.replicas)]
    docs = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            print(f"a replica exited {proc.returncode}: {err.strip()[-500:]}", file=sys.stderr)
            return 1
        docs.append(json.loads(out)["runs"][0])
    seen = {(d["run_id"], d["files_verified"], d["bytes_verified"], d["outcome"]) for d in docs}
    if len(seen) != 1:
        print(f"the replicas disagree: {seen}", file=sys.stderr)
        return 1
    run_id, files, nbytes, outcome = seen.pop()
    print(f"replicas {a.replicas} run {run_id} files {files} bytes {nbytes} outcome {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
