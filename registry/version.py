"""modelgate's one version string, read from the installed distribution's metadata."""

from __future__ import annotations

from functools import cache
from importlib.metadata import version as _distribution_version


@cache
def version() -> str:
    """The installed ``modelgate`` version (pyproject.toml's ``version``)."""
    return _distribution_version("modelgate")
