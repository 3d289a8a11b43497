"""``modelgate``: the admin CLI over the manager's REST API (and ``infer`` via the gateway).

Configuration: ``--manager URL`` / ``MODELGATE_MANAGER_URL`` (default http://127.0.0.1:8080),
the bearer token from ``MODELGATE_TOKEN`` (never a flag: argv is visible to every user of
the machine), ``--gateway`` / ``MODELGATE_GATEWAY`` for ``infer``. Readable tables by
default, ``--json`` for scripts. On an error the server's message is printed and the exit
status is 1 (2 when the manager or gateway cannot be reached or usage is wrong).

Every command is one function ``(Cli, argparse.Namespace) -> None``, bound to its
sub-parser with ``set_defaults(command=...)``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import httpx
from rich.console import Console, RenderableType
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import grpc

DEFAULT_MANAGER = "http://127.0.0.1:8080"
DEFAULT_GATEWAY = "127.0.0.1:8500"
#: Console width when stdout is not a terminal: never wrap or cut a cell that a script reads.
UNWRAPPED_WIDTH = 10_000


class CliError(Exception):
    """Printed as ``error: <message>``; ``code`` is the exit status, ``status`` the HTTP
    status of the manager's answer when there was one."""

    def __init__(self, message: str, code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


# -- output --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _console(stream: IO[str]) -> Console:
    # NOTE: markup, emoji and highlighting off: cells are the server's data, printed as is.
    return Console(
        file=stream,
        width=None if stream.isatty() else UNWRAPPED_WIDTH,
        markup=False,
        emoji=False,
        highlight=False,
    )


Columns = Sequence[tuple[str, str]]


class Output:
    """Where a command prints: JSON and messages to stdout as plain text, tables through
    rich, the upload progress bar on stderr."""

    def __init__(self, stdout: IO[str], stderr: IO[str], as_json: bool) -> None:
        self.stdout = stdout
        self.as_json = as_json
        self.console = _console(stdout)
        self.err_console = _console(stderr)

    def write(self, text: str) -> None:
        self.stdout.write(text + ("" if text.endswith("\n") else "\n"))

    def json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")

    def _render(self, renderable: RenderableType) -> None:
        with self.console.capture() as captured:
            self.console.print(renderable)
        # NOTE: rich pads every cell to its column's width; trailing blanks help nobody.
        self.stdout.write("".join(f"{line.rstrip()}\n" for line in captured.get().splitlines()))

    def table(self, rows: Sequence[dict[str, Any]], columns: Columns) -> None:
        """``rows`` as an aligned table; ``columns`` are (key, header)."""
        if not rows:
            self.stdout.write("(none)\n")
            return
        grid = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0))
        for _, header in columns:
            grid.add_column(header)
        for row in rows:
            grid.add_row(*(Text(_cell(row.get(key))) for key, _ in columns))
        self._render(grid)

    def details(self, obj: dict[str, Any]) -> None:
        """``key  value`` lines (nested lists of records are left to a table)."""
        grid = Table.grid(padding=(0, 2, 0, 0))
        grid.add_column()
        grid.add_column()
        for key, value in obj.items():
            if not (isinstance(value, list) and value and isinstance(value[0], dict)):
                grid.add_row(Text(key), Text(_cell(value)))
        self._render(grid)

    def show(self, result: Any, columns: Columns | None = None) -> None:
        if self.as_json:
            self.json(result)
        elif isinstance(result, list) and columns is not None:
            self.table(result, columns)
        elif isinstance(result, dict):
            self.details(result)
        elif result is None:
            self.write("ok")

    def done(self, message: str, result: Any = None) -> None:
        """``message`` for people; with ``--json`` the result (or ``{"ok": true, ...}``)."""
        if not self.as_json:
            self.write(message)
        elif result is not None:
            self.json(result)
        else:
            self.stdout.write(json.dumps({"ok": True, "message": message}) + "\n")

    def progress(self) -> Progress:
        """An upload progress bar on stderr (drawn once, at the end, when not a terminal)."""
        return Progress(
            TextColumn("uploading {task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            console=self.err_console,
        )


# -- HTTP ----------------------------------------------------------------------------------


class Api:
    """A thin client of the manager's REST API that raises CliError with the server's detail."""

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise CliError(f"cannot reach the manager at {self.base_url}: {err}", 2) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                message = f"{body.get('title', 'error')} ({response.status_code}): {body['detail']}"
            except (ValueError, KeyError, TypeError, AttributeError):
                message = f"HTTP {response.status_code}: {response.text[:500]}"
            raise CliError(message, status=response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


@dataclass
class Cli:
    """What every command gets: the parsed options, the manager's API and the output."""

    manager: str
    token: str | None
    timeout: float
    out: Output

    @cached_property
    def api(self) -> Api:
        return Api(self.manager, self.token, self.timeout)

    def upload(self, path: str, name: str, file: BinaryIO, size: int, data: dict[str, Any]) -> Any:
        """POST ``file`` as multipart ``file`` field to ``path``, with a progress bar."""
        with self.out.progress() as progress:
            reader = progress.wrap_file(file, total=size, description=name)
            return self.api.call("POST", path, files={"file": (name, reader)}, data=data)

    def upload_file(self, path: str, file: Path, data: dict[str, Any]) -> Any:
        with file.open("rb") as stream:
            return self.upload(path, file.name, stream, file.stat().st_size, data)


Command = Callable[[Cli, argparse.Namespace], None]


# -- shared by commands --------------------------------------------------------------------

MODEL_COLUMNS = [
    ("name", "NAME"),
    ("backend", "BACKEND"),
    ("group", "GROUP"),
    ("state", "STATE"),
    ("replicas", "REPLICAS"),
    ("versions", "VERSIONS"),
    ("traffic", "TRAFFIC"),
    ("plugin", "PLUGIN"),
]
VERSION_COLUMNS = [
    ("version", "VERSION"),
    ("labels", "LABELS"),
    ("artifact_uri", "ARTIFACT"),
    ("sha256", "SHA256"),
]
STATUS_COLUMNS = [
    ("name", "MODEL"),
    ("state", "STATE"),
    ("ready", "READY"),
    ("desired", "DESIRED"),
    ("message", "MESSAGE"),
]
VERSION_STATUS_COLUMNS = [
    ("version", "VERSION"),
    ("labels", "LABELS"),
    ("weight", "WEIGHT"),
    ("ready", "READY"),
    ("assigned", "ASSIGNED"),
    ("desired", "DESIRED"),
    ("message", "MESSAGE"),
]
INSTANCE_COLUMNS = [
    ("version", "VERSION"),
    ("worker_id", "WORKER"),
    ("ready", "READY"),
    ("state", "STATE"),
    ("error", "ERROR"),
]
WORKER_COLUMNS = [
    ("worker_id", "WORKER"),
    ("registered", "UP"),
    ("backend", "BACKEND"),
    ("address", "ADDRESS"),
    ("admin", "ADMIN"),
    ("labels", "LABELS"),
    ("assignments", "ASSIGNMENTS"),
]
PLUGIN_COLUMNS = [
    ("name", "NAME"),
    ("version", "VERSION"),
    ("entrypoint", "ENTRYPOINT"),
    ("executor", "EXECUTOR"),
    ("size", "SIZE"),
    ("used_by", "USED BY"),
]
SERVICE_COLUMNS = [("name", "NAME"), ("group", "GROUP"), ("timeout_s", "TIMEOUT"), ("urls", "URLS")]
GROUP_COLUMNS = [("name", "NAME"), ("description", "DESCRIPTION")]
GATEWAY_COLUMNS = [
    ("gateway_id", "GATEWAY"),
    ("address", "ADDRESS"),
    ("version", "VERSION"),
    ("serving", "PLUGINS"),
    ("errors", "PLUGIN ERRORS"),
]


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{what} {item!r}: use key=value", 2)
        out[key] = value
    return out


def _model_body(args: argparse.Namespace, creating: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if creating:
        body["name"] = args.name
    for attr in (
        "backend",
        "replicas",
        "group",
        "plugin",
        "policy",
        "sticky_header",
        "memory_mb",
        "description",
    ):
        value = getattr(args, attr, None)
        if value is not None:
            body[attr] = value
    if getattr(args, "plugin_config", None):
        try:
            body["plugin_config"] = json.loads(args.plugin_config)
        except json.JSONDecodeError as err:
            raise CliError(f"--plugin-config is not JSON: {err}", 2) from None
    if getattr(args, "constraint", None):
        body["constraints"] = _pairs(args.constraint, "--constraint")
    if creating and getattr(args, "offline", False):
        body["state"] = "offline"
    return body


def _archive(args: argparse.Namespace) -> Path | None:
    """The ``--file`` to upload (checked before anything is sent), or None for ``--uri``."""
    if not args.file:
        return None
    file = Path(args.file)
    if not file.is_file():
        raise CliError(f"{file} is not a file", 2)
    return file


def _add_version(cli: Cli, args: argparse.Namespace, archive: Path | None) -> Any:
    labels = args.label or []
    if archive is not None:
        data: dict[str, Any] = {"labels": ",".join(labels)}
        if args.version:
            data["version"] = str(args.version)
        return cli.upload_file(f"/v1/models/{args.name}/versions:upload", archive, data)
    body: dict[str, Any] = {"artifact_uri": args.uri, "labels": labels}
    if args.version:
        body["version"] = args.version
    if args.sha256:
        body["sha256"] = args.sha256
    return cli.api.call("POST", f"/v1/models/{args.name}/versions", json=body)


# -- models --------------------------------------------------------------------------------


def models_list(cli: Cli, args: argparse.Namespace) -> None:
    params = {"group": args.filter_group} if args.filter_group else None
    models = cli.api.call("GET", "/v1/models", params=params)
    if cli.out.as_json:
        cli.out.json(models)
    else:
        rows = [{**m, "versions": [v["version"] for v in m.get("versions", [])]} for m in models]
        cli.out.table(rows, MODEL_COLUMNS)


def models_get(cli: Cli, args: argparse.Namespace) -> None:
    model = cli.api.call("GET", f"/v1/models/{args.name}")
    cli.out.show(model)
    if not cli.out.as_json:
        cli.out.write("")
        cli.out.table(model["versions"], VERSION_COLUMNS)


def models_create(cli: Cli, args: argparse.Namespace) -> None:
    cli.out.show(cli.api.call("POST", "/v1/models", json=_model_body(args, creating=True)))


def models_update(cli: Cli, args: argparse.Namespace) -> None:
    body = _model_body(args, creating=False)
    if args.clear_plugin:
        body["clear_plugin"] = True
    if args.clear_constraints:
        body["constraints"] = {}
    if not body:
        raise CliError("nothing to update: pass at least one option", 2)
    cli.out.show(cli.api.call("PATCH", f"/v1/models/{args.name}", json=body))


def models_deploy(cli: Cli, args: argparse.Namespace) -> None:
    archive = _archive(args)
    # NOTE: look the model up before uploading anything; only a 404 means "missing" (a 401
    # or an unreachable manager is reported as it is, never answered by creating the model).
    try:
        cli.api.call("GET", f"/v1/models/{args.name}")
    except CliError as err:
        if err.status != 404:
            raise
        if not args.backend:
            raise CliError(
                f"{err} (nothing was sent; --backend triton|tfserving creates it)"
            ) from None
        cli.api.call("POST", "/v1/models", json=_model_body(args, creating=True))
    version = _add_version(cli, args, archive)
    cli.out.done(f"deployed {args.name} version {version['version']}", version)


def models_set_state(cli: Cli, args: argparse.Namespace) -> None:
    model = cli.api.call("POST", f"/v1/models/{args.name}:{args.state}")
    cli.out.done(f"{args.name} is {model['state']}", model)


def models_status(cli: Cli, args: argparse.Namespace) -> None:
    if not args.name:
        cli.out.show(cli.api.call("GET", "/v1/status"), STATUS_COLUMNS)
        return
    status = cli.api.call("GET", f"/v1/models/{args.name}/status")
    if cli.out.as_json:
        cli.out.json(status)
        return
    cli.out.details(status)
    cli.out.write("")
    cli.out.table(status["versions"], VERSION_STATUS_COLUMNS)
    instances = [{**i, "version": v["version"]} for v in status["versions"] for i in v["instances"]]
    if instances:
        cli.out.write("")
        cli.out.table(instances, INSTANCE_COLUMNS)


def models_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.api.call("DELETE", f"/v1/models/{args.name}")
    cli.out.done(f"deleted model {args.name}")


def models_traffic(cli: Cli, args: argparse.Namespace) -> None:
    if args.clear:
        weights: dict[str, int] = {}
    elif args.weights:
        try:
            weights = {k: int(v) for k, v in _pairs(args.weights, "weight").items()}
        except ValueError:
            raise CliError("weights are VERSION=PERCENT, e.g. 1=90 2=10", 2) from None
    else:
        traffic = cli.api.call("GET", f"/v1/models/{args.name}")["traffic"]
        if cli.out.as_json:
            cli.out.json(traffic)
        else:
            cli.out.details(traffic or {"(newest)": 100})
        return
    model = cli.api.call("PUT", f"/v1/models/{args.name}/traffic", json={"weights": weights})
    cli.out.done(f"traffic of {args.name}: {_cell(model['traffic'])}", model)


# -- versions ------------------------------------------------------------------------------


def versions_list(cli: Cli, args: argparse.Namespace) -> None:
    cli.out.show(cli.api.call("GET", f"/v1/models/{args.name}/versions"), VERSION_COLUMNS)


def versions_create(cli: Cli, args: argparse.Namespace) -> None:
    archive = _archive(args)
    if archive is not None:  # a missing model fails before the upload, not after it
        cli.api.call("GET", f"/v1/models/{args.name}")
    cli.out.show(_add_version(cli, args, archive))


def versions_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.api.call("DELETE", f"/v1/models/{args.name}/versions/{args.version}")
    cli.out.done(f"deleted {args.name} version {args.version}")


def versions_label(cli: Cli, args: argparse.Namespace) -> None:
    path = f"/v1/models/{args.name}/versions/{args.version}/labels"
    cli.out.show(cli.api.call("PUT", path, json={"labels": args.labels}))


# -- plugins -------------------------------------------------------------------------------


def plugins_push(cli: Cli, args: argparse.Namespace) -> None:
    path = Path(args.path)
    if path.is_dir():
        from udl.package import pack

        try:
            data = pack(path)
        except Exception as exc:  # the packer's message says what is wrong
            raise CliError(str(exc), 2) from None
        plugin = cli.upload("/v1/plugins", f"{path.name}.zip", io.BytesIO(data), len(data), {})
    elif path.is_file():
        plugin = cli.upload_file("/v1/plugins", path, {})
    else:
        raise CliError(f"{path} is not a file", 2)
    cli.out.done(
        f"pushed plugin {plugin['name']}@{plugin['version']} (sha256 {plugin['sha256']})", plugin
    )


def plugins_list(cli: Cli, args: argparse.Namespace) -> None:
    cli.out.show(cli.api.call("GET", "/v1/plugins"), PLUGIN_COLUMNS)


def plugins_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.api.call("DELETE", f"/v1/plugins/{args.name}/{args.version}")
    cli.out.done(f"deleted plugin {args.name}@{args.version}")


# -- workers -------------------------------------------------------------------------------


def workers_list(cli: Cli, args: argparse.Namespace) -> None:
    workers = cli.api.call("GET", "/v1/workers")
    for w in workers:
        w["admin"] = "draining" if w["draining"] else "cordoned" if w["cordoned"] else "-"
    cli.out.show(workers, WORKER_COLUMNS)


def workers_admin(cli: Cli, args: argparse.Namespace) -> None:
    worker = cli.api.call("POST", f"/v1/workers/{args.worker_id}:{args.action}")
    cli.out.done(f"{args.action}: {args.worker_id}", worker)


def workers_remove(cli: Cli, args: argparse.Namespace) -> None:
    params = {"force": "true"} if args.force else None
    cli.api.call("DELETE", f"/v1/workers/{args.worker_id}", params=params)
    cli.out.done(f"removed worker {args.worker_id}")


# -- services, groups, gateways ------------------------------------------------------------


def services_list(cli: Cli, args: argparse.Namespace) -> None:
    cli.out.show(cli.api.call("GET", "/v1/services"), SERVICE_COLUMNS)


def services_create(cli: Cli, args: argparse.Namespace) -> None:
    body = {"name": args.name, "urls": args.url, "group": args.group}
    if args.service_timeout is not None:
        body["timeout_s"] = args.service_timeout
    cli.out.show(cli.api.call("POST", "/v1/services", json=body))


def services_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.api.call("DELETE", f"/v1/services/{args.name}")
    cli.out.done(f"deleted service {args.name}")


def groups_list(cli: Cli, args: argparse.Namespace) -> None:
    cli.out.show(cli.api.call("GET", "/v1/groups"), GROUP_COLUMNS)


def groups_create(cli: Cli, args: argparse.Namespace) -> None:
    body = {"name": args.name, "description": args.description or ""}
    cli.out.show(cli.api.call("POST", "/v1/groups", json=body))


def groups_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.api.call("DELETE", f"/v1/groups/{args.name}")
    cli.out.done(f"deleted group {args.name}")


def gateways_list(cli: Cli, args: argparse.Namespace) -> None:
    gateways = cli.api.call("GET", "/v1/gateways")
    if cli.out.as_json:
        cli.out.json(gateways)
        return
    rows = [
        {
            **g,
            "serving": {model: p["serving"] or "-" for model, p in g["plugins"].items()},
            "errors": "; ".join(f"{m}: {p['error']}" for m, p in g["plugins"].items() if p["error"])
            or None,
        }
        for g in gateways
    ]
    cli.out.table(rows, GATEWAY_COLUMNS)


# -- infer ---------------------------------------------------------------------------------


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {what} {path}: {err.strerror}", 2) from None


def _payload(args: argparse.Namespace) -> bytes:
    if args.data is not None:
        return str(args.data).encode()
    if args.file == "-":
        return sys.stdin.buffer.read()
    if args.file:
        return _read_file(args.file, "--file")
    raise CliError("give the payload with --data TEXT or --file PATH (- for stdin)", 2)


def _gateway_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials for the gateway channel from the --tls* file paths, or None (plain)."""
    import grpc  # NOTE: imported here (as in infer): only infer pays for grpc and numpy

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
                parameters=_pairs(args.param, "--param"),
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


# -- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--manager",
        default=argparse.SUPPRESS,
        help=f"manager URL (env MODELGATE_MANAGER_URL, default {DEFAULT_MANAGER}); "
        "the token comes from the env MODELGATE_TOKEN",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output for scripts"
    )
    common.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (60)"
    )

    parser = argparse.ArgumentParser(
        prog="modelgate",
        parents=[common],
        description="Admin CLI of modelgate (over the manager's REST API).",
    )
    areas = parser.add_subparsers(dest="area", required=True, metavar="COMMAND")

    def sub(parent: Any, name: str, help_: str, command: Command) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, parents=[common])
        p.set_defaults(command=command)
        return p

    def actions(name: str, help_: str) -> Any:
        area: argparse.ArgumentParser = areas.add_parser(name, help=help_, parents=[common])
        return area.add_subparsers(dest="cmd", required=True, metavar="ACTION")

    def model_options(p: argparse.ArgumentParser, creating: bool) -> None:
        p.add_argument("--backend", choices=["triton", "tfserving"], required=False)
        p.add_argument("--replicas", type=int)
        p.add_argument("--group")
        p.add_argument("--plugin", help="name@version")
        p.add_argument("--plugin-config", help="JSON object")
        p.add_argument("--policy", choices=["round_robin", "least_request", "sticky"])
        p.add_argument("--sticky-header")
        p.add_argument("--constraint", action="append", help="worker label key=value (repeat)")
        p.add_argument("--memory-mb", type=int)
        p.add_argument("--description")
        if creating:
            p.add_argument("--offline", action="store_true", help="create it offline")

    def version_source(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--uri", help="artifact URI (file://, s3://, http(s)://, ...)")
        src.add_argument("--file", help="model archive to upload (.tar.gz/.zip)")
        p.add_argument("--version", type=int, help="version number (default: newest + 1)")
        p.add_argument("--label", action="append", help="e.g. stable, canary (repeat)")
        p.add_argument("--sha256", help="expected sha256 of the artifact at --uri")

    mc = actions("models", "models: list|get|create|update|deploy|online|offline|...")
    sub(mc, "list", "list models", models_list).add_argument("--group", dest="filter_group")
    sub(mc, "get", "show a model", models_get).add_argument("name")
    p = sub(mc, "create", "create a model", models_create)
    p.add_argument("name")
    model_options(p, creating=True)
    p = sub(mc, "update", "change a model", models_update)
    p.add_argument("name")
    model_options(p, creating=False)
    p.add_argument("--clear-plugin", action="store_true")
    p.add_argument("--clear-constraints", action="store_true", help="place on any worker")
    p = sub(
        mc,
        "deploy",
        "add a version (uploading an archive); --backend creates the model",
        models_deploy,
    )
    p.add_argument("name")
    version_source(p)
    model_options(p, creating=True)
    for state, help_ in (("online", "place replicas again"), ("offline", "remove every replica")):
        p = sub(mc, state, help_, models_set_state)
        p.add_argument("name")
        p.set_defaults(state=state)
    sub(mc, "status", "desired vs ready replicas", models_status).add_argument("name", nargs="?")
    sub(mc, "delete", "delete a model and its versions", models_delete).add_argument("name")
    p = sub(mc, "traffic", "show or set traffic weights: traffic NAME 1=90 2=10", models_traffic)
    p.add_argument("name")
    p.add_argument("weights", nargs="*", help="VERSION=PERCENT")
    p.add_argument("--clear", action="store_true", help="all traffic to the newest version")

    vc = actions("versions", "model versions: list|create|delete|label")
    sub(vc, "list", "list versions of a model", versions_list).add_argument("name")
    p = sub(vc, "create", "add a version from --uri or --file", versions_create)
    p.add_argument("name")
    version_source(p)
    p = sub(vc, "delete", "delete a version", versions_delete)
    p.add_argument("name")
    p.add_argument("version", type=int)
    p = sub(
        vc, "label", "set the labels of a version: label NAME VERSION stable ...", versions_label
    )
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("labels", nargs="*")

    pc = actions("plugins", "UDL plugins: push|list|delete")
    sub(pc, "push", "upload a plugin zip or folder", plugins_push).add_argument("path")
    sub(pc, "list", "list plugins", plugins_list)
    p = sub(pc, "delete", "delete a plugin version", plugins_delete)
    p.add_argument("name")
    p.add_argument("version")

    wc = actions("workers", "workers: list|cordon|uncordon|drain|remove")
    sub(wc, "list", "list workers", workers_list)
    for action, help_ in (
        ("cordon", "no new replicas on this worker"),
        ("uncordon", "accept replicas again"),
        ("drain", "move its replicas elsewhere"),
    ):
        p = sub(wc, action, help_, workers_admin)
        p.add_argument("worker_id")
        p.set_defaults(action=action)
    p = sub(wc, "remove", "forget a worker", workers_remove)
    p.add_argument("worker_id")
    p.add_argument("--force", action="store_true", help="even while it is registered")

    sc = actions("services", "third-party REST services: list|create|delete")
    sub(sc, "list", "list services", services_list)
    p = sub(sc, "create", "register a service", services_create)
    p.add_argument("name")
    p.add_argument("--url", action="append", required=True, help="http(s) URL (repeat)")
    p.add_argument("--service-timeout", type=float, help="seconds per call")
    p.add_argument("--group", default="default")
    sub(sc, "delete", "delete a service", services_delete).add_argument("name")

    gc = actions("groups", "business groups: list|create|delete")
    sub(gc, "list", "list groups", groups_list)
    p = sub(gc, "create", "create a group", groups_create)
    p.add_argument("name")
    p.add_argument("--description")
    sub(gc, "delete", "delete a group", groups_delete).add_argument("name")

    gw = sub(
        areas, "gateways", "gateways: list (with their plugins and load errors)", gateways_list
    )
    gw.add_argument("cmd", nargs="?", choices=["list"], default="list")

    p = sub(areas, "infer", "one call through the gateway (modelgate.v1.Gateway/Invoke)", infer)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(sys.stdout, sys.stderr, as_json=getattr(args, "json", False))
    cli = Cli(
        manager=getattr(args, "manager", None)
        or os.environ.get("MODELGATE_MANAGER_URL", DEFAULT_MANAGER),
        token=os.environ.get("MODELGATE_TOKEN"),
        timeout=getattr(args, "timeout", None) or 60.0,
        out=out,
    )
    command: Command = args.command
    try:
        command(cli, args)
    except CliError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
