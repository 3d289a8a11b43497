"""``python -m gateway``: run one gateway (flags override ``MODELGATE_GATEWAY_*``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from gateway.settings import GatewaySettings
from registry import logs, readyfile
from registry.errors import ModelgateError
from registry.settings_cli import parse_settings

log = logging.getLogger("gateway")

DESCRIPTION = (
    "modelgate gateway: route TF-Serving and KServe v2 calls to ready backends listed in ZooKeeper."
)


async def run(settings: GatewaySettings) -> None:
    from gateway.app import GatewayApp

    app = GatewayApp(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.ready_file is not None:
        readyfile.write(settings.ready_file, {"grpc": app.port, "metrics": app.metrics_port})
    await stop.wait()
    log.info("signal received: draining")
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(
            GatewaySettings, argv, prog="python -m gateway", description=DESCRIPTION
        )
    except ValidationError as err:
        print(f"invalid settings:\n{err}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        asyncio.run(run(settings))
    except ModelgateError as err:  # e.g. ZooKeeper unreachable at start-up
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
