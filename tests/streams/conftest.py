"""Fixtures for stream tests: see harness.py."""

from tests.streams.harness import fast_feeds, other_process, service  # noqa: F401
