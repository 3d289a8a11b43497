"""``python -m manager_api``: run the manager (REST API + leader-elected reconcile loop)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from manager_api.app import create_app
from manager_api.auth import TokenStore
from manager_api.settings import ManagerSettings
from registry import Registry, readyfile
from registry.errors import ModelgateError


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m manager_api",
        description="modelgate manager: admin REST API, placement and reconcile loop. "
        "Every option also reads MODELGATE_MANAGER_<NAME>.",
    )
    parser.add_argument("--zk", help="ZooKeeper hosts, host:port[,host:port]")
    parser.add_argument("--root", help="ZooKeeper chroot (default /modelgate)")
    parser.add_argument("--host", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="REST port (default 8080; 0 = any free)")
    parser.add_argument("--blob-dir", type=Path, help="blob store directory")
    parser.add_argument("--tokens-file", type=Path, help="TOML tokens file")
    parser.add_argument("--audit-log", type=Path, help="append the audit log (JSON lines) here")
    parser.add_argument("--public-url", help="base URL workers use to fetch blobs")
    parser.add_argument("--manager-id", help="identifier in the leader election")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key matching --tls-cert")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING ...")
    parser.add_argument("--ready-file", type=Path, help="write pid and port here once serving")
    args = vars(parser.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


class _Server(uvicorn.Server):
    """uvicorn that writes the ready file once its socket is bound (so port 0 works)."""

    def __init__(self, config: uvicorn.Config, ready_file: Path | None) -> None:
        super().__init__(config)
        self.ready_file = ready_file

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.ready_file is not None:
            port = self.servers[0].sockets[0].getsockname()[1]
            readyfile.write(self.ready_file, {"http": port})


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ManagerSettings(**parse_args(argv))
    except ValidationError as err:
        print(f"invalid settings:\n{err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("manager_api")
    if settings.tokens_file is None:
        log.error("no tokens file: set --tokens-file or MODELGATE_MANAGER_TOKENS_FILE")
        return 2
    try:
        tokens = TokenStore.load(settings.tokens_file)
    except ValueError as err:
        log.error("%s", err)
        return 2
    try:
        registry = Registry(
            settings.zk, settings.root, connect_timeout=settings.zk_connect_timeout_s
        ).start()
    except ModelgateError as err:
        log.error("%s", err)
        return 2
    app = create_app(settings, registry, tokens=tokens)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    server = _Server(config, settings.ready_file)
    try:
        server.run()
    finally:
        registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
