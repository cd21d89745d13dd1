"""Real services the tests use (PostgreSQL, ...): skip on a laptop without them, fail in CI.

CI (`CI=true`) must start every service its tests need, so a missing one there is a failure,
never a silent skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_service(name: str, reason: str) -> NoReturn:
    """Stop the test: `pytest.skip` locally, `pytest.fail` under CI=true.

    The message is `f"{name} {reason}"`, e.g. `require_service("PostgreSQL", "not reachable at
    127.0.0.1:5432: connection refused")`.
    """
    message = f"{name} {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the service must be running)", pytrace=False)
    pytest.skip(message)
