"""``python -m gateway``: run one gateway (flags override ``MODELGATE_GATEWAY_*``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from pydantic import ValidationError

from gateway import logs
from gateway.settings import GatewaySettings
from registry.errors import ModelgateError

log = logging.getLogger("gateway")

FLAGS = (
    "zk", "root", "host", "port", "metrics_port", "max_message_bytes", "default_timeout",
    "max_attempts", "eject_after", "eject_seconds", "grace_seconds", "tls_cert", "tls_key",
    "tls_client_ca", "gateway_id", "advertise_address", "zk_connect_timeout", "plugin_dir",
    "blob_token", "plugin_threads", "plugin_processes", "log_level",
    "dataplane", "haproxy_bin", "internal_port", "haproxy_dir",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="modelgate gateway: route TF-Serving and KServe v2 calls to ready "
        "backends listed in ZooKeeper. Every flag also reads MODELGATE_GATEWAY_<NAME>.",
    )
    fields = GatewaySettings.model_fields
    for name in FLAGS:
        field = fields[name]
        kind = field.annotation if field.annotation in (int, float) else str
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,  # type: ignore[arg-type]
            default=None,
            help=f"{field.description} (default: {field.default})",
        )
    parser.add_argument(
        "--log-json",
        dest="log_json",
        action="store_true",
        default=None,
        help=GatewaySettings.model_fields["log_json"].description,
    )
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


async def run(settings: GatewaySettings) -> None:
    from gateway.app import GatewayApp

    app = GatewayApp(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"GATEWAY LISTENING {app.port} METRICS {app.metrics_port}", flush=True)
    await stop.wait()
    log.info("signal received: draining")
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = GatewaySettings(**parse_args(argv))
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
