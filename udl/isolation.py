"""Import a plugin's entrypoint with its own modules kept private, and see which hooks it has.

A plugin's own top-level modules (``utils.py``, ...) are imported with the plugin's folder
first on ``sys.path`` and then moved out of ``sys.modules`` under a private prefix, so two
plugins (or two versions of one) that both ship ``utils.py`` never see each other's.
NOTE: import your own modules at module level; an ``import utils`` run later, inside a
function, no longer finds the plugin's folder on ``sys.path``.

Used in the gateway (``async`` and ``thread`` plugins) and in each worker process of a
``process`` plugin (:mod:`udl.workers`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
from pathlib import Path

from registry.errors import InvalidArgumentError
from udl.package import PluginManifest
from udl.sdk import Plugin

_IMPORT_LOCK = threading.Lock()

#: The hooks a call runs; one the plugin does not override is skipped.
CALL_HOOKS = ("preprocess", "postprocess")


def import_plugin_class(directory: Path, manifest: PluginManifest, alias: str) -> type[Plugin]:
    """Import the entrypoint class from ``directory`` with its modules kept private."""
    own = {p.stem for p in directory.glob("*.py")} | {
        p.name for p in directory.iterdir() if (p / "__init__.py").exists()
    }

    def is_own(name: str) -> bool:
        return name.split(".")[0] in own

    with _IMPORT_LOCK:
        stashed = {n: sys.modules.pop(n) for n in list(sys.modules) if is_own(n)}
        sys.path.insert(0, str(directory))
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(manifest.module)
        finally:
            sys.path.remove(str(directory))
            for name in [n for n in sys.modules if is_own(n)]:
                sys.modules[f"{alias}.{name}"] = sys.modules.pop(name)
            sys.modules.update(stashed)
    cls = getattr(module, manifest.class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
        raise InvalidArgumentError(
            f"entrypoint {manifest.entrypoint!r} is not a udl.Plugin subclass"
        )
    return cls


def overridden_hooks(cls: type[Plugin]) -> frozenset[str]:
    """The call hooks ``cls`` defines itself (the others pass data through and are skipped)."""
    return frozenset(h for h in CALL_HOOKS if getattr(cls, h) is not getattr(Plugin, h))
