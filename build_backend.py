"""modelgate's PEP 517 build backend: setuptools, plus the generated protobuf modules.

The modules under ``protos/`` are generated, never committed (see ``protos/generate.py``).
A wheel build writes them into its build directory, so every wheel, ``pip install .`` from
a clean checkout and every install from the sdist carry them. ``tensorflow-serving-api``
and ``grpcio-tools`` are needed for that step alone: they are requirements of the wheel
build, never of the installed package. An sdist carries only the sources, and an editable
install uses the modules ``make generate`` writes into the source tree, so neither needs
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)
from setuptools.command.build_py import build_py

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

STUB_BUILD_REQUIREMENTS = ["tensorflow-serving-api>=2.14", "grpcio-tools>=1.62"]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*build_meta.get_requires_for_build_wheel(config_settings), *STUB_BUILD_REQUIREMENTS]


class BuildPyWithStubs(build_py):
    """``build_py`` that also generates the protobuf modules into the build directory."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        # NOTE: imported here: the repository root is on sys.path only inside the build
        # hooks (backend-path), and protos.generate needs the wheel's build requirements.
        from protos.generate import generate

        generate(Path(self.build_lib))
