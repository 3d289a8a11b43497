"""One Python gateway worker process: ``python -m gateway.python_worker <directory> <index>``.

Started by the control process's :class:`~gateway.workers.WorkerPool` (settings from the
environment): a :class:`~gateway.app.GatewayApp` serving the Python path on its socket in
``<directory>``, until SIGTERM.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.app import GatewayApp
from gateway.settings import GatewaySettings
from gateway.workers import WorkerPaths
from registry import entrypoint

log = logging.getLogger("gateway.python_worker")


async def _serve(paths: WorkerPaths, settings: GatewaySettings) -> None:
    app = GatewayApp(settings, worker=paths)
    stop = entrypoint.stop_event()
    await app.start()
    await stop.wait()
    await app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.python_worker <directory> <index>`` (settings from the
    environment)."""
    directory, index = argv if argv is not None else sys.argv[1:]
    settings = entrypoint.settings_or_exit(
        GatewaySettings, [], prog="python -m gateway.python_worker", description=__doc__ or ""
    )
    paths = WorkerPaths(Path(directory), int(index))
    if settings.plugin_dir is not None:  # NOTE: one cache per process: no two unpack at once
        settings = settings.model_copy(
            update={"plugin_dir": settings.plugin_dir / f"python-{paths.index}"}
        )
    return entrypoint.run(_serve(paths, settings), log)


if __name__ == "__main__":
    sys.exit(main())
