"""The ready file: how a modelgate process tells whoever started it that it serves, and where.

Every role (and the TF-Serving test double) takes ``--ready-file PATH`` and, once serving,
writes ``{"pid": ..., <role fields>, "ports": {<name>: <bound port>}}`` there. The file
is written to a temporary name and renamed, so a reader sees all of it or nothing; a
supervisor compares ``pid`` with the process it started to ignore a previous run's file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write(path: Path, ports: Mapping[str, int], **fields: Any) -> None:
    """Atomically write this process's pid, ``fields`` and bound ``ports`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **fields, "ports": dict(ports)}))
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any] | None:
    """The content of the ready file at ``path``, or None while there is none."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    content: dict[str, Any] = json.loads(text)
    return content
