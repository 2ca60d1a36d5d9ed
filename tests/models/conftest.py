"""Shared fixtures for the model tests: tiny configurations and a one-thread torch."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def every_test_on_one_thread(one_torch_thread):
    """Tiny models run fastest on one thread (tests/conftest.py's fixture, for every test here)."""
