"""The `reversib` command: parse arguments, call the library, print, exit with a documented code."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from reversib import __version__
from reversib.model import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_PASSED,
    EXIT_USAGE,
    Outcome,
    RunResult,
    combine_outcomes,
    report_document,
)

EXIT_CODES_HELP = """\
exit codes:
  0   passed: every check verified, no error-severity finding
  1   failed: at least one error-severity finding (missing, corrupt, stale...)
  2   could not verify: source unreachable, manifest malformed, run interrupted
  3   deferred: the export is still being delivered
  64  usage error (bad arguments)
  78  configuration error (invalid config/ or checks/ file)
  141 stdout closed by its reader (`| head`) before the output was written; runs are recorded as usual
with several checks, the code is that of the highest-priority outcome: failed, error, deferred, passed.
"""

log = logging.getLogger("reversib")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# Every command's --help ends with the exit codes.
_WITH_EXIT_CODES: dict[str, Any] = {"epilog": EXIT_CODES_HELP, "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="daemon configuration (default: $REVERSIB_CONFIG, else ./config/reversib.yaml)")
    common.add_argument("--history", metavar="URL",
                        help="history database URL without password (default: from the config; "
                             "$REVERSIB_HISTORY_URL may hold one with a password)")
    common.add_argument("-v", "--verbose", action="store_true", help="show info findings and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")

    parser = _Parser(prog="reversib", description="Verify a provider's data exports against their manifests.",
                     **_WITH_EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"reversib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("verify-now", parents=[common], help="run checks now and print the verdict", **_WITH_EXIT_CODES)
    p.add_argument("checks", nargs="*", metavar="CHECK", help="check ids or names from checks/")
    p.add_argument("--all", action="store_true", help="run every configured check")
    p.add_argument("--source", metavar="URL", help="ad-hoc check: the export (path or URL)")
    p.add_argument("--manifest", metavar="LOCATION",
                   help="ad-hoc check: the manifest (default: found at the export root; a bag's root for BagIt)")
    p.add_argument("--manifest-format", metavar="FORMAT", default="auto", help="manifest format (default: auto)")
    p.add_argument("--parallelism", type=_positive, metavar="N", help="files verified at once (ad-hoc checks)")
    p.add_argument("--json", action="store_true", help="print one JSON document (schemas/report.schema.json)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.add_argument("--shard", metavar="K/N", help="run shard K of N of one check (K from 0; `/N`: K from "
                   "JOB_COMPLETION_INDEX), meeting the other shards under --run-id (docs/scale.md)")
    p.add_argument("--run-id", metavar="ID", help="with --shard: the run the shards meet under (32 hex digits, "
                   "or any text such as a Job's uid, from which the id is derived; one per run)")
    p.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                   help="with --shard: a shard whose process stopped renewing for this long is taken over (60)")
    p.add_argument("--restore", choices=["due", "now", "never"], default="due",
                   help="database dumps' restore level (docs/dumps.md): when restore.every says so (due, the "
                        "default), now whatever restore.every says, or never (structural level only)")

    p = sub.add_parser("check-config", parents=[common], help="validate config/ and checks/ (exit 0 or 78)",
        **_WITH_EXIT_CODES)
    p.add_argument("--connect", action="store_true", help="also open each source and manifest")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("checks", parents=[common], help="list configured checks with their last outcome",
        **_WITH_EXIT_CODES)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("history", parents=[common], help="show the recorded runs of one check; "
                                                         "`history prune --older-than AGE` prunes old runs",
                                                             **_WITH_EXIT_CODES)
    p.add_argument("check", metavar="CHECK", help="check id or name (ad-hoc checks: the id printed by --json), "
                                                  "or `prune`")
    p.add_argument("--older-than", metavar="AGE", help="prune: remove the runs finished more than AGE ago (400d), "
                                                       "a signed checkpoint replacing them in each chain")
    p.add_argument("--dry-run", action="store_true", help="prune: only say what would be removed")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="newest N runs (default 20)")
    p.add_argument("--run", metavar="RUN_ID", help="show one run with its findings")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("run", parents=[common], help="the daemon: run checks on schedule, serve /metrics and the API",
        **_WITH_EXIT_CODES)
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="where to serve HTTP (default: daemon.listen, 127.0.0.1:8637)")

    p = sub.add_parser("audit", help="evidence: verify the tamper-evident history", **_WITH_EXIT_CODES)
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", parser_class=_Parser)
    a = asub.add_parser("verify", parents=[common], help="walk every chain of runs; exit 1 naming the first "
                                                          "record altered, removed or inserted", **_WITH_EXIT_CODES)
    a.add_argument("--against", metavar="HEADS", help="also check the database against the signed chain heads: "
                                                      "a heads file, or s3://bucket/prefix (heads_s3)")
    a.add_argument("--public-key", metavar="FILE",
                   help="Ed25519 public key checking the signatures (default: from evidence.signing_key_file)")
    a.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("report", parents=[common], help="reversibility indicators over a period (html, json, md)",
        **_WITH_EXIT_CODES)
    p.add_argument("--check", action="append", metavar="NAME", help="only this check (repeatable; default: all)")
    p.add_argument("--since", default="90d", metavar="PERIOD",
                   help="start of the period: a duration back from --until (90d) or a date (2026-01-01)")
    p.add_argument("--until", metavar="DATE", help="end of the period: a date or ISO time, UTC (default: now)")
    p.add_argument("--format", choices=["html", "json", "md"], default="md", help="output format (default md)")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE (default: stdout)")
    p.add_argument("--verify", metavar="FILE", help="verify a signed JSON report instead (exit 0 valid, 1 not)")
    p.add_argument("--public-key", metavar="FILE",
                   help="Ed25519 public key for --verify (default: from evidence.signing_key_file)")

    p = sub.add_parser("manifest", help="manifest tools", **_WITH_EXIT_CODES)
    msub = p.add_subparsers(dest="manifest_command", metavar="SUBCOMMAND", parser_class=_Parser)
    c = msub.add_parser("create", parents=[common], help="write a manifest for a folder", **_WITH_EXIT_CODES)
    c.add_argument("path", metavar="PATH", help="the folder (the export root)")
    c.add_argument("--format", required=True, choices=["sha256sum", "bagit", "json"], help="manifest format")
    c.add_argument("--output", metavar="FILE", help="where to write it (default: inside PATH)")
    c.add_argument("--algorithm", action="append", metavar="ALG",
                   help="digest algorithm (repeatable; default sha256)")
    c.add_argument("--force", action="store_true", help="replace an existing manifest file (refused otherwise)")
    return parser


def _setup_logging(args: argparse.Namespace, fmt: str = "text") -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    from reversib.logs import configure

    configure(level, fmt)


def _settings(args: argparse.Namespace) -> Any:
    from reversib.config import discover_config, load_settings

    return load_settings(discover_config(args.config))


def _history(args: argparse.Namespace, settings: Any, *, create: bool = True) -> Any:
    """The history (`create=False`, for commands that only read: a SQLite file that is not there is an
    error, never a new empty history that would look like "no run ever")."""
    from reversib.history import History

    history = History.open(settings.history_url(args.history), create=create)
    if settings.daemon.evidence.anchored:  # signed chain heads after each run (docs/evidence.md)
        try:
            from reversib.evidence.anchor import attach

            attach(history, settings.daemon.evidence)
        except BaseException:
            history.close()
            raise
    reaped = history.reap_dead_runs()
    for run_id in reaped:
        log.warning("run %s was left running by a process that ended: recorded as interrupted", run_id)
    return history


def cmd_verify_now(args: argparse.Namespace) -> int:
    from reversib.config import ConfigError, adhoc_check
    from reversib.history import NotRecorded
    from reversib.output import TerminalProgress, render_result, render_summary
    from reversib.runner import run_check
    from reversib.sources.base import CancelToken

    settings = _settings(args)
    if args.source:
        if args.checks or args.all:
            raise UsageError("--source cannot be combined with check names or --all")
        try:
            checks = [adhoc_check(args.source, args.manifest, args.manifest_format, parallelism=args.parallelism)]
        except ConfigError as exc:  # the command line's values: a usage error
            raise UsageError("; ".join(e.removeprefix("(command line): ") for e in exc.errors)) from None
    else:
        if args.manifest or args.manifest_format != "auto":
            raise UsageError("--manifest and --manifest-format need --source")
        if args.all:
            checks = list(settings.checks)
            if not checks:
                raise UsageError(f"no checks configured (config: {settings.path or 'none found'})")
        elif args.checks:
            checks = []
            for name in args.checks:
                found = settings.find(name)
                if found is None:
                    known = ", ".join(c.check_id for c in settings.checks) or "none"
                    raise UsageError(f"unknown check {name!r} (configured: {known})")
                checks.append(found)
        else:
            raise UsageError("name one or more checks, or use --all, or --source URL for an ad-hoc check")
    if args.restore != "due":
        from reversib.dumps import with_restore_level

        checks = [with_restore_level(c, args.restore) for c in checks]
    shard: tuple[int, int] | None = None
    if args.shard is not None:
        from reversib.shards import ShardError, parse_shard, run_id_for

        if len(checks) != 1:
            raise UsageError("--shard runs one check: name exactly one (or one --source)")
        try:
            shard = parse_shard(args.shard)
            if args.run_id is None and shard[1] > 1:
                raise ShardError("--shard K/N with N > 1 needs --run-id: the shards of a run meet under it")
            sharded_run_id = run_id_for(args.run_id) if args.run_id is not None else None
        except ShardError as exc:
            raise UsageError(str(exc)) from None
        if not 1 <= args.lease <= 86400:
            raise UsageError("--lease takes 1 to 86400 seconds")
    elif args.run_id is not None:
        raise UsageError("--run-id needs --shard")
    history = _history(args, settings)
    cancel = CancelToken()

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and cancel.cancelled:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the reads in flight
        cancel.cancel(f"signal {signal.Signals(signum).name}")  # every read stops, even inside a large file

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    results: list[RunResult] = []
    unrecorded: list[str] = []
    show_progress = not args.no_progress and not args.quiet and TerminalProgress.wanted()
    try:
        for check in checks:
            progress = TerminalProgress() if show_progress else None
            if shard is not None:
                import uuid

                from reversib.shards import ShardError, run_sharded

                try:
                    result = run_sharded(check, history, shard=shard, run_id=sharded_run_id or uuid.uuid4().hex,
                                         cancel=cancel, lease=args.lease,
                                         notice=lambda text: print(f"reversib: warning: {text}", file=sys.stderr))
                except ShardError as exc:
                    raise UsageError(str(exc)) from None
            else:
                try:
                    result = run_check(check, history, cancel=cancel, progress=progress)
                except NotRecorded as exc:  # the verdict is shown all the same, and the failure said
                    results.append(exc.result)
                    unrecorded.append(f"{exc.result.check_id}: {exc}")
                    if not args.json:
                        render_result(exc.result, sys.stdout, verbose=args.verbose)
                    continue
            results.append(result)
            if not args.json:
                render_result(result, sys.stdout, verbose=args.verbose)
                sys.stdout.flush()
            if cancel.cancelled:
                break
    except KeyboardInterrupt:
        log.error("interrupted: the run is recorded as interrupted")
        return EXIT_ERROR
    finally:
        history.close()
    if args.json:
        json.dump(_storable(report_document(results)), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        render_summary(results, sys.stdout)
    for problem in unrecorded:
        print(f"reversib: history database: {problem}", file=sys.stderr)
    if cancel.cancelled or unrecorded:
        return EXIT_ERROR
    return combine_outcomes([r.outcome for r in results]).exit_code


def _storable(value: Any) -> Any:
    """A document's text as the history stores it: a name that is not UTF-8 (kept byte-exact while
    verifying) is written `\\xNN`, so that the output is valid UTF-8 JSON and says what `history` says."""
    from reversib.history import storable

    if isinstance(value, str):
        return value if value.isascii() else storable(value)
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def cmd_check_config(args: argparse.Namespace) -> int:
    from reversib.config import ConfigError, discover_config

    try:
        settings = _settings(args)
        unresolved = settings.unresolved()
        if unresolved:
            raise ConfigError(unresolved)
    except ConfigError as exc:
        if not args.json:
            raise
        path = discover_config(args.config)
        print(json.dumps({"config": str(path) if path else None, "checks": [], "errors": exc.errors}, indent=2))
        return EXIT_CONFIG
    problems: list[str] = []
    if args.connect:
        from reversib.preflight import connect_all

        problems = connect_all(settings)
    doc = {"config": str(settings.path) if settings.path else None, "checks": [c.check_id for c in settings.checks],
           "errors": problems}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"configuration OK: {settings.path or '(built-in defaults)'}, {len(settings.checks)} checks")
        for c in settings.checks:
            print(f"  {c.check_id}: {settings.check_files[c.check_id]}")
        for p in problems:
            print(f"  cannot connect: {p}")
    return EXIT_ERROR if problems else EXIT_PASSED


def cmd_checks(args: argparse.Namespace) -> int:
    from reversib.history import HistoryMissing

    settings = _settings(args)
    try:
        history = _history(args, settings, create=False)
    except HistoryMissing as exc:  # nothing run yet: every check is "never run" (and no file is made)
        log.warning("%s", exc)
        latest = {}
    else:
        try:
            latest = {row.check_id: row for row in history.latest_runs()}
        finally:
            history.close()
    rows = []
    for c in settings.checks:
        row = latest.get(c.check_id)
        rows.append({"check": c.check_id, "name": c.name, "labels": c.labels,
                     "schedule": c.schedule.model_dump(exclude_none=True) if c.schedule else None,
                     "last_run": row.to_dict() if row is not None else None})
    if args.json:
        print(json.dumps({"schema": 1, "checks": rows}, indent=2, ensure_ascii=False))
        return EXIT_PASSED
    if not rows:
        print(f"no checks configured (config: {settings.path or 'none found'})")
    for r in rows:
        last = r["last_run"]
        state = "never run" if last is None else (
            f"{last['outcome'] or last['state']} at {last['finished_at'] or last['started_at']}")
        print(f"{r['check']:<30} {state}")
    return EXIT_PASSED


def cmd_history(args: argparse.Namespace) -> int:
    from reversib.output import printable

    settings = _settings(args)
    found = settings.find(args.check)
    if args.older_than is not None or args.dry_run or (args.check == "prune" and found is None):
        return _history_prune(args, settings)
    check_id = found.check_id if found else args.check
    history = _history(args, settings, create=False)
    try:
        if args.run:
            run = history.get_run(args.run)
            if run is None:
                raise UsageError(f"no run {args.run!r}")
            findings = [f.to_dict() for f in history.findings(args.run)]
            if args.json:
                print(json.dumps({"schema": 1, "run": run.to_dict(), "findings": findings}, indent=2,
                                 ensure_ascii=False))
            else:
                d = run.to_dict()
                for k in ("id", "check_id", "state", "outcome", "trigger", "started_at", "finished_at",
                          "files_verified", "bytes_verified", "generation", "error"):
                    print(f"{k:<16} {d.get(k)}")
                for f in findings:
                    print(f"  {f['severity']:<7} {f['kind']:<18} {printable(f['path'])}  "
                          f"expected {printable(f['expected'])}, actual {printable(f['actual'])}")
            return EXIT_PASSED
        runs = history.runs(check_id, limit=args.limit)
    finally:
        history.close()
    if not runs and found is None:
        raise UsageError(f"unknown check {args.check!r} and no runs recorded under that id")
    if args.json:
        print(json.dumps({"schema": 1, "check": check_id, "runs": [r.to_dict() for r in runs]}, indent=2,
                         ensure_ascii=False))
        return EXIT_PASSED
    for r in runs:
        d = r.to_dict()
        verdict = d["outcome"] or d["state"]
        if d["state"] not in ("finished", verdict):  # running, interrupted: said, with why
            verdict = f"{verdict} ({d['state']})"
        why = f"  {printable(d['error'])[:100]}" if d["error"] else ""
        print(f"{d['started_at']}  {verdict:<19} {d['trigger']:<8} "
              f"files {d['files_verified']:<7} findings {sum((d['counts'] or {}).values()):<5} {d['id']}{why}")
    return EXIT_PASSED


def _history_prune(args: argparse.Namespace, settings: Any) -> int:
    if args.check != "prune" or args.older_than is None:
        raise UsageError("usage: reversib history prune --older-than AGE [--dry-run]")
    from reversib.evidence.anchor import SignatureError, load_private_key
    from reversib.evidence.prune import PruneError, prune
    from reversib.units import parse_duration

    try:
        age = parse_duration(args.older_than)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    if not settings.daemon.evidence.signing_key_file:
        raise UsageError("pruning needs evidence.signing_key_file: the checkpoint replacing old runs is signed")
    try:
        key = load_private_key(settings.daemon.evidence.signing_key_file)
    except SignatureError as exc:
        raise UsageError(str(exc)) from None
    import datetime as dt

    from reversib.history import History

    with History.open(settings.history_url(args.history), create=False) as history:
        try:
            pruned = prune(history, key, history._now() - dt.timedelta(seconds=age), dry_run=args.dry_run)
        except PruneError as exc:
            print(f"reversib: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        print(json.dumps({"schema": 1, "dry_run": args.dry_run, "pruned": [p.to_dict() for p in pruned]}, indent=2))
    for p in pruned if not args.json else ():
        print(f"{p.check_id}: {'would prune' if args.dry_run else 'pruned'} {p.runs} runs (links 1..{p.through_seq}, "
              f"finished up to {p.through.isoformat() if p.through else '?'}), replaced by a signed checkpoint")
    if not pruned and not args.json:
        print(f"nothing finished more than {args.older_than} ago")
    return EXIT_PASSED


def cmd_manifest(args: argparse.Namespace) -> int:
    if args.manifest_command != "create":
        raise UsageError("usage: reversib manifest create PATH --format sha256sum|bagit|json")
    from reversib.manifests.create import create_manifest

    root = Path(args.path)
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    try:
        out = create_manifest(root, args.format, Path(args.output) if args.output else None,
                              tuple(args.algorithm or ["sha256"]), replace=args.force)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(out)
    return EXIT_PASSED


def cmd_run(args: argparse.Namespace) -> int:
    from reversib.config import LogConfig
    from reversib.daemon import DaemonError, serve
    from reversib.logs import configure

    settings = _settings(args)
    log_cfg: LogConfig = settings.daemon.log
    fmt = log_cfg.format if "format" in log_cfg.model_fields_set else "json"  # the daemon logs JSON by default
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else \
        getattr(logging, log_cfg.level.upper())
    configure(level, fmt)
    if args.listen is not None:
        from reversib.config import check_listen

        try:
            check_listen(args.listen)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        return serve(settings, listen=args.listen, history_url=args.history)
    except DaemonError as exc:
        print(f"reversib: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _public_key(args: argparse.Namespace, settings: Any) -> Any:
    from reversib.evidence.anchor import SignatureError, load_public_key

    path = args.public_key or settings.daemon.evidence.signing_key_file
    if not path:
        raise UsageError("no key to check signatures with: give --public-key or set evidence.signing_key_file")
    try:
        return load_public_key(path)
    except SignatureError as exc:
        raise UsageError(str(exc)) from None


def cmd_audit(args: argparse.Namespace) -> int:
    if args.audit_command != "verify":
        raise UsageError("usage: reversib audit verify [--against HEADS]")
    from reversib.evidence.anchor import SignatureError, load_anchored
    from reversib.evidence.anchor_s3 import AnchorError
    from reversib.evidence.audit import verify_chains
    from reversib.history import History

    settings = _settings(args)
    # the key verifies the anchored heads and the checkpoints of pruned chains
    key = _public_key(args, settings) if args.against or args.public_key or \
        settings.daemon.evidence.signing_key_file else None
    against = None
    if args.against:
        try:
            against = load_anchored(args.against, key or _public_key(args, settings), settings.daemon.evidence)
        except SignatureError as exc:
            print(f"reversib: the chain heads {args.against} cannot be trusted: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except AnchorError as exc:
            print(f"reversib: could not read the chain heads: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except OSError as exc:
            raise UsageError(f"cannot read {args.against}: {exc.strerror}") from None
    with History.open(settings.history_url(args.history), create=False) as history:
        report = verify_chains(history, against, key)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for p in report.first_problems():
            print(f"{p.check_id}: {p.kind}: {p.message}")
        for line in report.could_not_verify:
            print(f"could not verify: {line}")
        extra = len(report.problems) - len(report.first_problems())
        verdict = ("OK" if report.ok else "COULD NOT VERIFY" if not report.problems
                   else f"TAMPERED ({len(report.problems)} problems, {extra} after the first ones)")
        print(f"{verdict}: {len(report.checks)} chains, {report.links} links"
              + (f", {report.checkpoints} starting at a signed checkpoint" if report.checkpoints else "")
              + (f", {report.anchored} heads checked against {args.against}" if args.against else ""))
    return EXIT_PASSED if report.ok else EXIT_FAILED if report.problems else EXIT_ERROR


def _when(text: str, option: str) -> Any:
    import datetime as dt

    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: expected a date (2026-01-01) or ISO time, got {text!r}") from None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def cmd_report(args: argparse.Namespace) -> int:
    import datetime as dt

    settings = _settings(args)
    if args.verify:
        from reversib.evidence.anchor import SignatureError, verify_file

        key = _public_key(args, settings)
        try:
            verify_file(args.verify, key)
        except SignatureError as exc:
            print(f"reversib: {args.verify}: NOT VALID: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:
            raise UsageError(f"cannot read {args.verify}: {exc.strerror}") from None
        print(f"{args.verify}: valid signature")
        return EXIT_PASSED
    from reversib.evidence import report as rep
    from reversib.history import History
    from reversib.units import parse_duration

    until = _when(args.until, "--until") if args.until else dt.datetime.now(dt.timezone.utc)
    try:
        since = until - dt.timedelta(seconds=parse_duration(args.since))
    except ValueError:
        try:
            since = _when(args.since, "--since")
        except UsageError:
            raise UsageError(f"--since: expected a duration back from --until (90d), a date (2026-01-01) or "
                             f"an ISO time, got {args.since!r}") from None
    if since >= until:
        raise UsageError("--since must be before --until")
    with History.open(settings.history_url(args.history), create=False) as history:
        ids = None
        if args.check:
            ids = []
            recorded = {row.check_id for row in history.latest_runs()}  # ad-hoc checks too
            for name in args.check:
                found = settings.find(name)
                if found is None and name not in recorded:
                    known = ", ".join(c.check_id for c in settings.checks) or "none"
                    raise UsageError(f"unknown check {name!r}: neither configured ({known}) nor in the history")
                ids.append(found.check_id if found else name)
        doc = rep.build_report(history, settings.checks, since=since, until=until, check_ids=ids)
    if args.format == "json":
        from reversib.evidence.anchor import load_private_key, render, sign_document

        key_file = settings.daemon.evidence.signing_key_file
        if key_file:
            doc = sign_document(doc, load_private_key(key_file))
        text = render(doc).decode("utf-8")
    elif args.format == "md":
        text = rep.render_markdown(doc)
    else:
        text = rep.render_html(doc)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_PASSED


# Start-up allocates a few hundred thousand long-lived objects (pydantic's validators, SQLAlchemy's
# tables and constructs).  Python's cyclic collector would traverse them again and again while they are
# made, and once more at exit: about a third of a verify-now's start-up on the bench machine
# (docs/development.md, "Start-up").  So `run()` turns the collector off while the command's modules load,
# `_settle_gc()` moves what start-up made out of the collector's reach (gc.freeze) and turns it back on
# before any work whose size depends on the data, and `run()` freezes again on the way out.  The work
# itself allocates a few objects per entry and frees almost none through the collector (a 200,000-file
# verify-now: 1,565 collections took 1.5 s and freed 20 objects), so the young generation is collected
# every 50,000 allocations instead of Python's 700: 0.16 s there, and cyclic garbage still goes.
# Only `run()` does this: a program that calls `main()` keeps its own collector settings.
_OPENS_HISTORY = frozenset({"verify-now", "run", "checks", "history", "audit", "report"})
_GC_THRESHOLD0 = 50_000
_gc_held = False  # set by run() while it keeps the collector off


def _settle_gc() -> None:
    global _gc_held
    if _gc_held:
        _gc_held = False
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(_GC_THRESHOLD0, gen1, gen2)
        gc.enable()


COMMANDS = {"audit": cmd_audit, "report": cmd_report,
            "verify-now": cmd_verify_now, "run": cmd_run, "check-config": cmd_check_config, "checks": cmd_checks,
            "history": cmd_history, "manifest": cmd_manifest}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if not hasattr(args, "verbose"):
        args.verbose = args.quiet = False
        args.config = args.history = None
    _setup_logging(args)
    from reversib.config import ConfigError

    if args.command in _OPENS_HISTORY:
        import reversib.history  # noqa: F401  (loaded before the collector is settled: see _settle_gc)
    _settle_gc()
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"reversib: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print("reversib: configuration error:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        from reversib.history import HistoryError

        if isinstance(exc, HistoryError):
            print(f"reversib: history database: {exc}", file=sys.stderr)
            return EXIT_ERROR
        raise


def run() -> None:  # console-script entry point
    global _gc_held
    if gc.isenabled():
        gc.disable()  # until _settle_gc(): see there
        _gc_held = True
    try:
        code = main()
        sys.stdout.flush()
        # No collection at exit: cyclic garbage is not finalized then, so nothing may rely on a __del__
        # at shutdown (files, databases, temporary folders and child processes are closed explicitly).
        gc.freeze()
    except BrokenPipeError:
        # The reader of our output went away (`reversib ... | head`): the run is recorded all the same;
        # exit as a command stopped by SIGPIPE does, without a traceback (Python's documented recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(code)


__all__ = ["EXIT_FAILED", "Outcome", "build_parser", "main"]
