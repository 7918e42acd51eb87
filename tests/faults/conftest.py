"""Fault tests reuse the trigger tests' accounts (tests/runs/conftest.py)."""

from __future__ import annotations

from tests.runs.conftest import alice, bob  # noqa: F401  (fixtures)
