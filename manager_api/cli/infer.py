"""``modelgate infer``: one ``modelgate.v1.Gateway/Invoke`` call through the gateway, with
``modelgate_client`` (plain or TLS, the certificates from files)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manager_api.cli.context import Cli, CliError, Commands, pairs

if TYPE_CHECKING:
    import grpc

DEFAULT_GATEWAY = "127.0.0.1:8500"


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {what} {path}: {err.strerror}", 2) from None


def _payload(args: argparse.Namespace) -> bytes:
    if args.data is not None:
        return args.data.encode()
    if args.file == "-":
        return sys.stdin.buffer.read()
    if args.file:
        return _read_file(args.file, "--file")
    raise CliError("give the payload with --data TEXT or --file PATH (- for stdin)", 2)


def _gateway_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials for the gateway channel from the --tls* file paths, or None (plain)."""
    import grpc  # NOTE: imported here: only infer pays for grpc and numpy

    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("give both --tls-cert and --tls-key (a client certificate), or neither", 2)
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(args.tls_ca, "--tls-ca") if args.tls_ca else None,
        private_key=_read_file(args.tls_key, "--tls-key") if args.tls_key else None,
        certificate_chain=_read_file(args.tls_cert, "--tls-cert") if args.tls_cert else None,
    )


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def infer(cli: Cli, args: argparse.Namespace) -> None:
    """One ``modelgate.v1.Gateway/Invoke`` call through the gateway; print the answer."""
    import grpc

    from modelgate_client import GatewayClient, GatewayError

    payload = _payload(args)
    credentials = _gateway_credentials(args)
    with GatewayClient(args.gateway, credentials=credentials, timeout=cli.timeout) as client:
        try:
            reply = client.invoke_raw(
                args.model,
                payload,
                args.content_type,
                version=args.version,
                label=args.label,
                parameters=pairs(args.param, "--param"),
            )
        except GatewayError as err:
            exit_code = 2 if err.code is grpc.StatusCode.UNAVAILABLE else 1
            raise CliError(str(err), exit_code) from None
    try:
        text: str | None = reply.payload.decode()
    except UnicodeDecodeError:
        text = None
    if not cli.out.as_json:
        cli.out.write(text if text is not None else base64.b64encode(reply.payload).decode())
        return
    result: dict[str, Any] = {
        "model": reply.model,
        "version": reply.version,
        "content_type": reply.content_type,
        "request_id": reply.request_id,
    }
    if text is None:
        result["payload_base64"] = base64.b64encode(reply.payload).decode()
    else:
        result["payload"] = text
        if _is_json(reply.content_type):
            try:
                result["payload"] = json.loads(text)
            except ValueError:
                pass  # declared JSON but is not: the text as it came
    cli.out.json(result)


def add_commands(commands: Commands) -> None:
    p = commands.add("infer", "one call through the gateway (modelgate.v1.Gateway/Invoke)", infer)
    p.add_argument("model")
    p.add_argument("--gateway", default=os.environ.get("MODELGATE_GATEWAY", DEFAULT_GATEWAY))
    p.add_argument("--version", help="explicit version")
    p.add_argument("--label", help="version label, e.g. canary")
    p.add_argument("--data", help="payload text")
    p.add_argument("--file", help="payload file (- for stdin)")
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--param", action="append", help="plugin parameter key=value (repeat)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's CA bundle")
    p.add_argument("--tls-ca", metavar="PATH", help="PEM CA bundle that signed the gateway (TLS)")
    p.add_argument("--tls-cert", metavar="PATH", help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", metavar="PATH", help="PEM private key of --tls-cert")
