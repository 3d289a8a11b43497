"""``python -m manager_api``: run the manager (REST API + leader-elected reconcile loop)."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import uvicorn

from manager_api.app import create_app
from manager_api.auth import TokenStore
from manager_api.settings import ManagerSettings
from registry import Registry, entrypoint, readyfile
from registry.errors import ModelgateError

DESCRIPTION = "modelgate manager: admin REST API, placement and reconcile loop."


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
    settings = entrypoint.settings_or_exit(
        ManagerSettings, argv, prog="python -m manager_api", description=DESCRIPTION
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
        log_config=None,
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
