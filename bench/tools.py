"""Triton's C++ load generator, ``perf_analyzer``, extracted from the tritonclient 2.41.0 wheel
into ``.tools/perf_analyzer`` (never installed: the venv keeps its own tritonclient)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from worker_agent.tritonserver import find_triton

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "perf_analyzer"
WHEEL = "tritonclient==2.41.0"
MEMBER = "tritonclient-2.41.0.data/data/bin/perf_analyzer"
#: Libraries perf_analyzer links against, as nvidia-pytriton ships them (name -> glob).
LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


def perf_analyzer() -> tuple[Path, dict[str, str]]:
    """The binary and the environment to run it with (extracted on first use)."""
    binary = TOOLS / "bin" / "perf_analyzer"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
                check=True,
            )
            (wheel,) = Path(tmp).glob("tritonclient-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                binary.write_bytes(archive.read(MEMBER))
        binary.chmod(0o755)
    lib = TOOLS / "lib"
    lib.mkdir(exist_ok=True)
    libs = find_triton().libs
    for name, pattern in LIBS.items():
        link = lib / name
        if not link.exists():
            (found,) = libs.glob(pattern)
            link.symlink_to(found)
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib))
    return binary, env
