"""Fixtures of the tunnel tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def broker_db_url() -> str | None:
    """The database ``test_protocol.setup`` serves its broker on (None: a fresh SQLite file);
    a test module overrides it to use another."""
    return None
