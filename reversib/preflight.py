"""`check-config --connect`: open every source and manifest once, to test places and credentials."""

from __future__ import annotations

import time

from reversib.config import CheckConfig, Settings
from reversib.manifests import ManifestNotFound, find_manifest, load_manifest
from reversib.manifests.base import ManifestError
from reversib.runner import external_manifest
from reversib.sources import open_source
from reversib.sources.base import Source, SourceError


def connect_one(check: CheckConfig) -> str | None:
    """None when the source lists and the manifest parses; else what went wrong (no secrets).  With
    `generation`, the newest generation folder is the one opened, as a run would."""
    try:
        with open_source(check.source.url, check.source) as root:
            if check.generation is None:
                return _export_problem(check, root)
            from reversib.generation import select

            choice = select(root.child_dirs(), check.generation, check.expect, check.tz, time.time())
            if choice.name is None:
                return f"{check.check_id}: {root.describe()}: no generation folder matching " \
                       f"{check.generation.pattern!r} yet"
            try:
                with root.sub(choice.name) as export:
                    problem = _export_problem(check, export)
            except (SourceError, ManifestNotFound, ManifestError, OSError) as exc:
                problem = f"{check.check_id}: {exc}"
            return None if problem is None else f"{problem} (generation {choice.name})"
    except (SourceError, ManifestNotFound, ManifestError, OSError) as exc:
        return f"{check.check_id}: {exc}"
    except Exception as exc:  # reversib's own failure on one check: the others are still tried and reported
        return f"{check.check_id}: internal error: {type(exc).__name__}: {exc}"


def _export_problem(check: CheckConfig, root: Source) -> str | None:
    next(iter(root.iter_entries()), None)
    m = check.manifest
    if check.archive is not None:
        from reversib.archives.check import preflight

        problem = preflight(check.archive, root, check.tz)
        if problem is not None:
            return f"{check.check_id}: {problem}"
        if m.path is None and m.location is None:
            return None  # the manifest is inside the archive: read only by a run
    if m.path is not None:
        load_manifest(root, m.path, m.format)
    elif m.location is not None:
        inside = root.relative(m.location)
        if inside is not None:
            load_manifest(root, inside, m.format)
        else:
            src, name = external_manifest(m.location, root, check.source)
            with src:
                load_manifest(src, name, m.format)
    else:
        found = find_manifest(root)
        if found is None:
            return f"{check.check_id}: no manifest found at the root of {root.describe()}"
        load_manifest(root, found, m.format)
    return None


def connect_all(settings: Settings) -> list[str]:
    return [p for p in (connect_one(c) for c in settings.checks) if p is not None]
