"""Whether the broker's extra is installed: ``pip install access-jit`` is the CLI alone.

``access-broker`` and ``access demo`` need the broker's server stack; without it they say how to
get it instead of failing with an ImportError deep inside.
"""

from __future__ import annotations

import importlib.util

__all__ = ["BROKER_INSTALL_HINT", "missing_broker_modules"]

# One module of each distribution the broker extra brings that the CLI does not.
_BROKER_MODULES = (
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "argon2",
    "jwt",
    "jinja2",
    "yaml",
)

BROKER_INSTALL_HINT = "install the broker with `pip install 'access-jit[broker]'`"


def missing_broker_modules() -> list[str]:
    """The broker's modules this environment lacks (empty when the broker extra is installed)."""
    return [name for name in _BROKER_MODULES if importlib.util.find_spec(name) is None]
