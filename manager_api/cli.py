"""``modelgate``: the admin CLI over the manager's REST API (and ``infer`` via the gateway).

Configuration: ``--manager URL`` / ``MODELGATE_MANAGER_URL`` (default http://127.0.0.1:8080),
``--token`` / ``MODELGATE_TOKEN``, ``--gateway`` / ``MODELGATE_GATEWAY`` for ``infer``.
Readable tables by default, ``--json`` for scripts. On an error the server's message is
printed and the exit status is 1 (2 when the manager cannot be reached or usage is wrong).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

DEFAULT_MANAGER = "http://127.0.0.1:8080"
DEFAULT_GATEWAY = "127.0.0.1:8500"


class CliError(Exception):
    """Printed as ``error: <message>``; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], out: IO[str]) -> None:
    """Print ``rows`` as an aligned table; ``columns`` are (key, header)."""
    if not rows:
        out.write("(none)\n")
        return
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def details(obj: dict[str, Any], out: IO[str]) -> None:
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            continue
        out.write(f"{key.ljust(width)}  {_cell(value)}\n")


class Progress:
    """A file wrapper that draws an upload progress bar on stderr while it is read."""

    def __init__(self, path: Path, stream: IO[str]) -> None:
        self.path = path
        self.file = path.open("rb")
        self.total = path.stat().st_size
        self.done = 0
        self.stream = stream
        self._last = -1

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(size)
        self.done += len(chunk)
        self._draw()
        return chunk

    def _draw(self) -> None:
        pct = 100 if not self.total else int(self.done * 100 / self.total)
        if pct == self._last:
            return
        self._last = pct
        filled = pct * 30 // 100
        bar = "#" * filled + "." * (30 - filled)
        mib = f"{self.done / 1048576:.1f}/{self.total / 1048576:.1f} MiB"
        end = "\n" if self.done >= self.total else ""
        self.stream.write(f"\ruploading {self.path.name} [{bar}] {pct:3d}% {mib}{end}")
        self.stream.flush()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


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
            raise CliError(message)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


# -- commands ------------------------------------------------------------------------------

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
GATEWAY_COLUMNS = [("gateway_id", "GATEWAY"), ("address", "ADDRESS"), ("version", "VERSION")]


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
    for attr, key in (
        ("backend", "backend"),
        ("replicas", "replicas"),
        ("group", "group"),
        ("plugin", "plugin"),
        ("policy", "policy"),
        ("sticky_header", "sticky_header"),
        ("memory_mb", "memory_mb"),
        ("description", "description"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            body[key] = value
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


def _model_row(m: dict[str, Any]) -> dict[str, Any]:
    return {**m, "versions": [v["version"] for v in m.get("versions", [])]}


def _upload(api: Api, path: str, file: Path, data: dict[str, Any], err: IO[str]) -> Any:
    if not file.is_file():
        raise CliError(f"{file} is not a file", 2)
    progress = Progress(file, err)
    try:
        return api.call("POST", path, files={"file": (file.name, progress)}, data=data)
    finally:
        progress.close()


def _version_from(api: Api, args: argparse.Namespace, err: IO[str]) -> Any:
    labels = args.label or []
    if args.file:
        data: dict[str, Any] = {"labels": ",".join(labels)}
        if args.version:
            data["version"] = str(args.version)
        return _upload(api, f"/v1/models/{args.name}/versions:upload", Path(args.file), data, err)
    body: dict[str, Any] = {"artifact_uri": args.uri, "labels": labels}
    if args.version:
        body["version"] = args.version
    if args.sha256:
        body["sha256"] = args.sha256
    return api.call("POST", f"/v1/models/{args.name}/versions", json=body)


def run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    api = Api(args.manager, args.token, args.timeout)
    as_json: bool = args.json

    def show(result: Any, columns: Sequence[tuple[str, str]] | None = None) -> None:
        if as_json:
            out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        elif isinstance(result, list) and columns is not None:
            table(result, columns, out)
        elif isinstance(result, dict):
            details(result, out)
        elif result is None:
            out.write("ok\n")

    def done(message: str) -> None:
        if as_json:
            out.write(json.dumps({"ok": True, "message": message}) + "\n")
        else:
            out.write(message + "\n")

    area, cmd = args.area, getattr(args, "cmd", None)
    if area == "models":
        if cmd == "list":
            params = {"group": args.filter_group} if args.filter_group else None
            models = api.call("GET", "/v1/models", params=params)
            show(models if as_json else [_model_row(m) for m in models], MODEL_COLUMNS)
        elif cmd == "get":
            model = api.call("GET", f"/v1/models/{args.name}")
            show(model)
            if not as_json:
                out.write("\n")
                table(model["versions"], VERSION_COLUMNS, out)
        elif cmd == "create":
            show(api.call("POST", "/v1/models", json=_model_body(args, creating=True)))
        elif cmd == "update":
            body = _model_body(args, creating=False)
            if args.clear_plugin:
                body["clear_plugin"] = True
            if args.clear_constraints:
                body["constraints"] = {}
            if not body:
                raise CliError("nothing to update: pass at least one option", 2)
            show(api.call("PATCH", f"/v1/models/{args.name}", json=body))
        elif cmd == "deploy":
            if args.backend:
                try:
                    api.call("GET", f"/v1/models/{args.name}")
                except CliError:
                    api.call("POST", "/v1/models", json=_model_body(args, creating=True))
            version = _version_from(api, args, err)
            if as_json:
                show(version)
            else:
                out.write(f"deployed {args.name} version {version['version']}\n")
        elif cmd in ("online", "offline"):
            model = api.call("POST", f"/v1/models/{args.name}:{cmd}")
            show(model) if as_json else done(f"{args.name} is {model['state']}")
        elif cmd == "status":
            if args.name:
                status = api.call("GET", f"/v1/models/{args.name}/status")
                if as_json:
                    show(status)
                else:
                    details(status, out)
                    out.write("\n")
                    table(
                        status["versions"],
                        [
                            ("version", "VERSION"),
                            ("labels", "LABELS"),
                            ("weight", "WEIGHT"),
                            ("ready", "READY"),
                            ("assigned", "ASSIGNED"),
                            ("desired", "DESIRED"),
                            ("message", "MESSAGE"),
                        ],
                        out,
                    )
                    instances = [
                        {**i, "version": v["version"]}
                        for v in status["versions"]
                        for i in v["instances"]
                    ]
                    if instances:
                        out.write("\n")
                        table(
                            instances,
                            [
                                ("version", "VERSION"),
                                ("worker_id", "WORKER"),
                                ("ready", "READY"),
                                ("state", "STATE"),
                                ("error", "ERROR"),
                            ],
                            out,
                        )
            else:
                show(api.call("GET", "/v1/status"), STATUS_COLUMNS)
        elif cmd == "delete":
            api.call("DELETE", f"/v1/models/{args.name}")
            done(f"deleted model {args.name}")
        elif cmd == "traffic":
            if args.clear:
                weights: dict[str, int] = {}
            elif args.weights:
                try:
                    weights = {k: int(v) for k, v in _pairs(args.weights, "weight").items()}
                except ValueError:
                    raise CliError("weights are VERSION=PERCENT, e.g. 1=90 2=10", 2) from None
            else:
                model = api.call("GET", f"/v1/models/{args.name}")
                show(model["traffic"]) if as_json else details(
                    model["traffic"] or {"(newest)": 100}, out
                )
                return 0
            model = api.call("PUT", f"/v1/models/{args.name}/traffic", json={"weights": weights})
            show(model) if as_json else done(f"traffic of {args.name}: {_cell(model['traffic'])}")
    elif area == "versions":
        if cmd == "list":
            show(api.call("GET", f"/v1/models/{args.name}/versions"), VERSION_COLUMNS)
        elif cmd == "create":
            show(_version_from(api, args, err))
        elif cmd == "delete":
            api.call("DELETE", f"/v1/models/{args.name}/versions/{args.version}")
            done(f"deleted {args.name} version {args.version}")
        elif cmd == "label":
            show(
                api.call(
                    "PUT",
                    f"/v1/models/{args.name}/versions/{args.version}/labels",
                    json={"labels": args.labels},
                )
            )
    elif area == "plugins":
        if cmd == "push":
            path = Path(args.path)
            if path.is_dir():
                from udl.package import pack

                try:
                    data = pack(path)
                except Exception as exc:  # the packer's message says what is wrong
                    raise CliError(str(exc), 2) from None
                staged = Path(os.environ.get("TMPDIR", "/tmp")) / f"modelgate-{os.getpid()}.zip"
                staged.write_bytes(data)
                try:
                    plugin = _upload(api, "/v1/plugins", staged, {}, err)
                finally:
                    staged.unlink(missing_ok=True)
            else:
                plugin = _upload(api, "/v1/plugins", path, {}, err)
            show(plugin) if as_json else done(
                f"pushed plugin {plugin['name']}@{plugin['version']} (sha256 {plugin['sha256']})"
            )
        elif cmd == "list":
            show(api.call("GET", "/v1/plugins"), PLUGIN_COLUMNS)
        elif cmd == "delete":
            api.call("DELETE", f"/v1/plugins/{args.name}/{args.version}")
            done(f"deleted plugin {args.name}@{args.version}")
    elif area == "workers":
        if cmd == "list":
            workers = api.call("GET", "/v1/workers")
            for w in workers:
                w["admin"] = "draining" if w["draining"] else "cordoned" if w["cordoned"] else "-"
            show(workers, WORKER_COLUMNS)
        elif cmd in ("cordon", "uncordon", "drain"):
            worker = api.call("POST", f"/v1/workers/{args.worker_id}:{cmd}")
            show(worker) if as_json else done(f"{cmd}: {args.worker_id}")
        elif cmd == "remove":
            params = {"force": "true"} if args.force else None
            api.call("DELETE", f"/v1/workers/{args.worker_id}", params=params)
            done(f"removed worker {args.worker_id}")
    elif area == "services":
        if cmd == "list":
            show(api.call("GET", "/v1/services"), SERVICE_COLUMNS)
        elif cmd == "create":
            body = {"name": args.name, "urls": args.url, "group": args.group}
            if args.service_timeout is not None:
                body["timeout_s"] = args.service_timeout
            show(api.call("POST", "/v1/services", json=body))
        elif cmd == "delete":
            api.call("DELETE", f"/v1/services/{args.name}")
            done(f"deleted service {args.name}")
    elif area == "groups":
        if cmd == "list":
            show(api.call("GET", "/v1/groups"), GROUP_COLUMNS)
        elif cmd == "create":
            body = {"name": args.name, "description": args.description or ""}
            show(api.call("POST", "/v1/groups", json=body))
        elif cmd == "delete":
            api.call("DELETE", f"/v1/groups/{args.name}")
            done(f"deleted group {args.name}")
    elif area == "gateways":
        show(api.call("GET", "/v1/gateways"), GATEWAY_COLUMNS)
    elif area == "infer":
        return infer(args, out)
    return 0


def infer(args: argparse.Namespace, out: IO[str]) -> int:
    """One ``modelgate.v1.Gateway/Invoke`` call through the gateway; print the answer."""
    import grpc

    from protos.modelgate.v1 import gateway_pb2, gateway_pb2_grpc

    if args.data is not None:
        payload = args.data.encode()
    elif args.file == "-":
        payload = sys.stdin.buffer.read()
    elif args.file:
        payload = Path(args.file).read_bytes()
    else:
        raise CliError("give the payload with --data TEXT or --file PATH (- for stdin)", 2)
    request = gateway_pb2.InvokeRequest(
        model=args.model,
        version=args.version or "",
        version_label=args.label or "",
        payload=payload,
        content_type=args.content_type,
        parameters=_pairs(args.param, "--param"),
    )
    with grpc.insecure_channel(args.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        try:
            reply = stub.Invoke(request, timeout=args.timeout)
        except grpc.RpcError as rpc:
            code = rpc.code() if hasattr(rpc, "code") else None
            details_ = rpc.details() if hasattr(rpc, "details") else str(rpc)
            name = code.name if code is not None else "ERROR"
            exit_code = 2 if code == grpc.StatusCode.UNAVAILABLE else 1
            raise CliError(f"{name}: {details_}", exit_code) from None
    try:
        text: str | None = reply.payload.decode()
    except UnicodeDecodeError:
        text = None
    if args.json:
        result = {
            "model": reply.model,
            "version": reply.version,
            "content_type": reply.content_type,
            "request_id": reply.request_id,
        }
        if text is not None:
            result["payload"] = text
        else:
            result["payload_base64"] = base64.b64encode(reply.payload).decode()
        out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    elif text is not None:
        out.write(text + ("" if text.endswith("\n") else "\n"))
    else:
        out.write(base64.b64encode(reply.payload).decode() + "\n")
    return 0


# -- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--manager",
        default=argparse.SUPPRESS,
        help=f"manager URL (env MODELGATE_MANAGER_URL, default {DEFAULT_MANAGER})",
    )
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="bearer token (env MODELGATE_TOKEN)"
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
    groups = parser.add_subparsers(dest="area", required=True, metavar="COMMAND")

    def sub(
        parent: Any,
        name: str,
        help_: str,
        fn: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, parents=[common])
        if fn:
            fn(p)
        return p

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

    models = sub(groups, "models", "models: list|get|create|update|deploy|online|offline|...")
    mc = models.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    p = sub(mc, "list", "list models")
    p.add_argument("--group", dest="filter_group")
    sub(mc, "get", "show a model").add_argument("name")
    p = sub(mc, "create", "create a model")
    p.add_argument("name")
    model_options(p, creating=True)
    p = sub(mc, "update", "change a model")
    p.add_argument("name")
    model_options(p, creating=False)
    p.add_argument("--clear-plugin", action="store_true")
    p.add_argument("--clear-constraints", action="store_true", help="place on any worker")
    p = sub(mc, "deploy", "add a version (uploading an archive); --backend creates the model")
    p.add_argument("name")
    version_source(p)
    model_options(p, creating=True)
    sub(mc, "online", "place replicas again").add_argument("name")
    sub(mc, "offline", "remove every replica").add_argument("name")
    sub(mc, "status", "desired vs ready replicas").add_argument("name", nargs="?")
    sub(mc, "delete", "delete a model and its versions").add_argument("name")
    p = sub(mc, "traffic", "show or set traffic weights: traffic NAME 1=90 2=10")
    p.add_argument("name")
    p.add_argument("weights", nargs="*", help="VERSION=PERCENT")
    p.add_argument("--clear", action="store_true", help="all traffic to the newest version")

    versions = sub(groups, "versions", "model versions: list|create|delete|label")
    vc = versions.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    sub(vc, "list", "list versions of a model").add_argument("name")
    p = sub(vc, "create", "add a version from --uri or --file")
    p.add_argument("name")
    version_source(p)
    p = sub(vc, "delete", "delete a version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p = sub(vc, "label", "set the labels of a version: label NAME VERSION stable ...")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("labels", nargs="*")

    plugins = sub(groups, "plugins", "UDL plugins: push|list|delete")
    pc = plugins.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    sub(pc, "push", "upload a plugin zip or folder").add_argument("path")
    sub(pc, "list", "list plugins")
    p = sub(pc, "delete", "delete a plugin version")
    p.add_argument("name")
    p.add_argument("version")

    workers = sub(groups, "workers", "workers: list|cordon|uncordon|drain|remove")
    wc = workers.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    sub(wc, "list", "list workers")
    for action, help_ in (
        ("cordon", "no new replicas on this worker"),
        ("uncordon", "accept replicas again"),
        ("drain", "move its replicas elsewhere"),
    ):
        sub(wc, action, help_).add_argument("worker_id")
    p = sub(wc, "remove", "forget a worker")
    p.add_argument("worker_id")
    p.add_argument("--force", action="store_true", help="even while it is registered")

    services = sub(groups, "services", "third-party REST services: list|create|delete")
    sc = services.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    sub(sc, "list", "list services")
    p = sub(sc, "create", "register a service")
    p.add_argument("name")
    p.add_argument("--url", action="append", required=True, help="http(s) URL (repeat)")
    p.add_argument("--service-timeout", type=float, help="seconds per call")
    p.add_argument("--group", default="default")
    sub(sc, "delete", "delete a service").add_argument("name")

    grp = sub(groups, "groups", "business groups: list|create|delete")
    gc = grp.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    sub(gc, "list", "list groups")
    p = sub(gc, "create", "create a group")
    p.add_argument("name")
    p.add_argument("--description")
    sub(gc, "delete", "delete a group").add_argument("name")

    gw = sub(groups, "gateways", "gateways: list")
    gw.add_argument("cmd", nargs="?", choices=["list"], default="list")

    p = sub(groups, "infer", "one call through the gateway (modelgate.v1.Gateway/Invoke)")
    p.add_argument("model")
    p.add_argument("--gateway", default=os.environ.get("MODELGATE_GATEWAY", DEFAULT_GATEWAY))
    p.add_argument("--version", help="explicit version")
    p.add_argument("--label", help="version label, e.g. canary")
    p.add_argument("--data", help="payload text")
    p.add_argument("--file", help="payload file (- for stdin)")
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--param", action="append", help="plugin parameter key=value (repeat)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.manager = getattr(args, "manager", None) or os.environ.get(
        "MODELGATE_MANAGER_URL", DEFAULT_MANAGER
    )
    args.token = getattr(args, "token", None) or os.environ.get("MODELGATE_TOKEN")
    args.json = getattr(args, "json", False)
    args.timeout = getattr(args, "timeout", None) or 60.0
    try:
        return run(args, sys.stdout, sys.stderr)
    except CliError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
