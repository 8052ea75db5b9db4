"""Tests that need a program from outside the Python environment (coturn, PgBouncer, nginx, Redis, checkov).

On a developer's machine a missing program skips those tests with the command that installs it; under CI
(`CI=true`, set by `.ci/run`, which installs every one of them) it fails them, so CI can never pass by not
running them.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(present: object, message: str) -> None:
    """Skip (fail under CI) unless `present`; `message` names what is missing and how to install it."""
    if present:
        return
    if IN_CI:
        pytest.fail(f"{message}; CI installs it (.ci/run) and must run these tests")
    pytest.skip(message)
