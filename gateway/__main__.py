"""``python -m gateway``: run one gateway (flags override ``MODELGATE_GATEWAY_*``)."""

from __future__ import annotations

import logging
import sys

from gateway.settings import GatewaySettings
from registry import entrypoint, readyfile

log = logging.getLogger("gateway")

DESCRIPTION = (
    "modelgate gateway: route TF-Serving and KServe v2 calls to ready backends listed in ZooKeeper."
)


async def run(settings: GatewaySettings) -> None:
    from gateway.app import GatewayApp

    app = GatewayApp(settings)
    try:
        await app.start()
    except BaseException:
        await app.stop()  # NOTE: what started (HAProxy, Python workers) stops, files removed
        raise
    stop = entrypoint.stop_event()
    if settings.ready_file is not None:
        readyfile.write(settings.ready_file, {"grpc": app.port, "metrics": app.metrics_port})
    await stop.wait()
    log.info("signal received: draining")
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    settings = entrypoint.settings_or_exit(
        GatewaySettings, argv, prog="python -m gateway", description=DESCRIPTION
    )
    return entrypoint.run(run(settings), log)


if __name__ == "__main__":
    sys.exit(main())
