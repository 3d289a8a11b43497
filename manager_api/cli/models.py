"""``modelgate models ...`` and ``modelgate versions ...``."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager_api.cli.context import Cli, CliError, Commands, pairs
from manager_api.cli.output import cell

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
    ("load", "LOAD"),
    ("plugin", "PLUGIN"),
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
GATEWAY_PLUGIN_COLUMNS = [
    ("gateway_id", "GATEWAY"),
    ("serving", "PLUGIN SERVING"),
    ("error", "PLUGIN LOAD ERROR"),
]
#: Options of ``models create/update/deploy`` that go into the body as they are.
MODEL_FIELDS = (
    "backend",
    "replicas",
    "group",
    "plugin",
    "policy",
    "sticky_header",
    "memory_mb",
    "description",
)


def _model_body(args: argparse.Namespace, creating: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name} if creating else {}
    for attr in MODEL_FIELDS:
        value = getattr(args, attr, None)
        if value is not None:
            body[attr] = value
    if getattr(args, "plugin_config", None):
        try:
            body["plugin_config"] = json.loads(args.plugin_config)
        except json.JSONDecodeError as err:
            raise CliError(f"--plugin-config is not JSON: {err}", 2) from None
    if getattr(args, "constraint", None):
        body["constraints"] = pairs(args.constraint, "--constraint")
    if creating and getattr(args, "offline", False):
        body["state"] = "offline"
    return body


#: ``--option`` -> field of the model's ``autoscale`` and ``limits`` settings.
AUTOSCALE_OPTIONS = (
    "min_replicas",
    "max_replicas",
    "target_in_flight",
    "target_calls_per_s",
    "idle_seconds",
)
LIMIT_OPTIONS = ("max_concurrency", "rate_limit", "burst")
#: Autoscaling targets: setting one drops the other.
TARGETS = ("target_in_flight", "target_calls_per_s")


Stored = Callable[[str], dict[str, Any] | None]


def _stored(cli: Cli, name: str | None) -> Stored:
    """``stored(key)``: the model ``name``'s current setting ``key``, read once when first
    asked (None when creating: there is none)."""
    current: dict[str, Any] | None = None

    def stored(key: str) -> dict[str, Any] | None:
        nonlocal current
        if name is None:
            return None
        if current is None:
            current = cli.api.call("GET", f"/v1/models/{name}")
        return current.get(key)

    return stored


def _setting(
    args: argparse.Namespace,
    body: dict[str, Any],
    field: str,
    options: tuple[str, ...],
    stored: Stored,
) -> None:
    """Add ``field`` (``autoscale`` or ``limits``) from ``options`` to ``body``, merged into
    the stored setting (``--max-replicas`` alone keeps the target), or null for ``--no-...``."""
    given = {o: getattr(args, o) for o in options if getattr(args, o) is not None}
    off = f"--no-{field}"
    if getattr(args, f"no_{field}") and given:
        flags = "/".join("--" + o.replace("_", "-") for o in given)
        raise CliError(f"{off} turns {field} off: drop {flags}", 2)
    if getattr(args, f"no_{field}"):
        body[field] = None
    elif given:
        setting = dict(stored(field) or {})
        if any(t in given for t in TARGETS):
            for target in TARGETS:
                setting.pop(target, None)
        body[field] = setting | given


def _scaling_and_limits(args: argparse.Namespace, body: dict[str, Any], stored: Stored) -> None:
    """Add ``--min-replicas`` ... / ``--max-concurrency`` ... / ``--pinned`` to ``body``,
    merged into the model's current settings."""
    _setting(args, body, "autoscale", AUTOSCALE_OPTIONS, stored)
    _setting(args, body, "limits", LIMIT_OPTIONS, stored)
    if args.pinned is not None:
        body["pinned"] = args.pinned


def _cache_and_shadow(args: argparse.Namespace, body: dict[str, Any], stored: Stored) -> None:
    """Add ``--cache-*`` / ``--shadow*`` to ``body``, merged into the model's current
    settings: ``--cache-max-entries`` alone keeps the TTL."""

    cache_options = args.cache_ttl is not None or args.cache_max_entries is not None
    if args.no_cache and cache_options:
        raise CliError("--no-cache turns the cache off: drop --cache-ttl/--cache-max-entries", 2)
    if args.no_cache:
        body["cache"] = None
    elif cache_options:
        cache = dict(stored("cache") or {})
        if args.cache_ttl is None and not cache:
            raise CliError("the model has no cache: set --cache-ttl SECONDS too", 2)
        if args.cache_ttl is not None:
            cache["ttl_s"] = args.cache_ttl
        if args.cache_max_entries is not None:
            cache["max_entries"] = args.cache_max_entries
        body["cache"] = cache

    shadow_options = args.shadow is not None or args.shadow_tolerance is not None
    if args.no_shadow and shadow_options:
        raise CliError("--no-shadow turns shadow traffic off: drop --shadow/--shadow-tolerance", 2)
    if args.no_shadow:
        body["shadow"] = None
    elif shadow_options:
        shadow = dict(stored("shadow") or {})
        if args.shadow is None and not shadow:
            raise CliError("the model has no shadow: set --shadow TARGET:PERCENT too", 2)
        if args.shadow is not None:
            target, sep, percent = args.shadow.rpartition(":")
            if not sep or not target:
                raise CliError(f"--shadow {args.shadow!r}: use TARGET:PERCENT, e.g. 2:10", 2)
            shadow.update(target=target, percent=percent)
        if args.shadow_tolerance is not None:
            shadow["tolerance"] = pairs(args.shadow_tolerance.split(","), "--shadow-tolerance")
        body["shadow"] = shadow


def cache_summary(cache: dict[str, Any] | None) -> str | None:
    """e.g. ``ttl 60s, at most 1000 entries``."""
    if cache is None:
        return None
    return f"ttl {cell(cache['ttl_s'])}s, at most {cache['max_entries']} entries"


def shadow_summary(shadow: dict[str, Any] | None) -> str | None:
    """e.g. ``10% to version 2, exact`` or ``5% to model b, within absolute=0.01,relative=0``."""
    if shadow is None:
        return None
    target = shadow["target"]
    to = f"version {target}" if isinstance(target, int) else f"model {target}"
    tolerance = shadow["tolerance"]
    exact = not (tolerance["absolute"] or tolerance["relative"])
    return f"{cell(shadow['percent'])}% to {to}, " + (
        "exact" if exact else f"within {cell({k: cell(v) for k, v in tolerance.items()})}"
    )


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


def plugin_summary(wanted: str | None, serving: dict[str, dict[str, Any]]) -> str | None:
    """The plugin wanted and, where gateways serve something else, what and why, e.g.
    ``digits@1.0.2 (serving 1.0.1 on 2/2 gateways: load failed)``."""
    apart = Counter(
        (status["serving"], bool(status["error"]))
        for status in serving.values()
        if status["serving"] != wanted or status["error"]
    )
    if not apart:
        return wanted
    name = wanted.partition("@")[0] if wanted else None
    parts = []
    for (actual, failed), count in sorted(apart.items(), key=lambda i: (i[0][0] or "", i[0][1])):
        if actual is None:
            what = "not serving"
        else:
            actual_name, _, actual_version = actual.partition("@")
            what = f"serving {actual_version if actual_name == name else actual}"
        why = "load failed" if failed else "loading" if wanted else "being removed"
        parts.append(f"{what} on {count}/{len(serving)} gateways: {why}")
    return f"{wanted or '-'} ({'; '.join(parts)})"


def _summarised(record: dict[str, Any]) -> dict[str, Any]:
    """A model or its status for a table: the plugin summarised (per gateway: its own table)."""
    shown = {key: value for key, value in record.items() if key != "plugin_serving"}
    shown["plugin"] = plugin_summary(record["plugin"], record["plugin_serving"])
    if "cache" in record:  # models (a status has no cache or shadow)
        shown["cache"] = cache_summary(record["cache"])
        shown["shadow"] = shadow_summary(record["shadow"])
        shown["limits"] = limits_summary(record["limits"])
    if "scale" in record:  # statuses
        shown["scale"] = scale_summary(record["scale"])
        shown["load"] = load_summary(record["load"])
        if record.get("last_call") is not None:
            shown["last_call"] = time.strftime("%H:%M:%S UTC", time.gmtime(record["last_call"]))
        if record.get("cold_start_s") is not None:
            shown["cold_start_s"] = f"{record['cold_start_s']:.2f}s"
    shown["autoscale"] = autoscale_summary(record["autoscale"])
    return shown


def autoscale_summary(autoscale: dict[str, Any] | None) -> str | None:
    """e.g. ``1-3 replicas, 4 in flight per replica, to zero after 300s idle``."""
    if autoscale is None:
        return None
    parts = [f"{autoscale['min_replicas']}-{autoscale['max_replicas']} replicas"]
    if autoscale["target_in_flight"] is not None:
        parts.append(f"{cell(autoscale['target_in_flight'])} in flight per replica")
    if autoscale["target_calls_per_s"] is not None:
        parts.append(f"{cell(autoscale['target_calls_per_s'])} calls/s per replica")
    if autoscale["min_replicas"] == 0:
        parts.append(f"to zero after {cell(autoscale['idle_seconds'])}s idle")
    return ", ".join(parts)


def limits_summary(limits: dict[str, Any] | None) -> str | None:
    """e.g. ``8 in flight, 100 calls/s (burst 20)``."""
    if limits is None:
        return None
    parts = []
    if limits["max_concurrency"] is not None:
        parts.append(f"{limits['max_concurrency']} in flight")
    if limits["rate_limit"] is not None:
        burst = f" (burst {limits['burst']})" if limits["burst"] is not None else ""
        parts.append(f"{cell(limits['rate_limit'])} calls/s{burst}")
    return ", ".join(parts) or "-"


def scale_summary(scale: dict[str, Any] | None) -> str | None:
    """The leader's choice, e.g. ``3 replicas since 12:00:05 UTC: 9.5 in flight > 4 x 2``."""
    if scale is None:
        return None
    since = time.strftime("%H:%M:%S UTC", time.gmtime(scale["changed"]))
    return f"{scale['replicas']} replicas since {since}: {scale['reason']}"


#: Load sample fields shown by name after calls/s and p99 (any other the gateways report
#: is shown too, under its own name).
LOAD_HIDDEN = ("time", "calls_per_s", "p50_s", "p99_s")


def load_summary(load: dict[str, Any] | None) -> str | None:
    """The latest load sample, e.g. ``12.5 calls/s, p99 35 ms, error_rate 0``."""
    if load is None:
        return None
    parts = [f"{load['calls_per_s']:.3g} calls/s"]
    if load["p99_s"] is not None:
        parts.append(f"p99 {load['p99_s'] * 1000:.3g} ms")
    parts += [
        f"{key} {cell(value)}"
        for key, value in load.items()
        if key not in LOAD_HIDDEN and value is not None
    ]
    return ", ".join(parts)


def _plugin_per_gateway(cli: Cli, record: dict[str, Any]) -> None:
    rows = [{"gateway_id": gid, **status} for gid, status in record["plugin_serving"].items()]
    if rows:
        cli.out.write("")
        cli.out.table(rows, GATEWAY_PLUGIN_COLUMNS)


def _show_model(cli: Cli, model: dict[str, Any]) -> None:
    """A model as details, its plugin summarised (with ``--json``: as the server sent it)."""
    cli.out.show(model if cli.out.as_json else _summarised(model))


# -- models --------------------------------------------------------------------------------


def models_list(cli: Cli, args: argparse.Namespace) -> None:
    params = {"group": args.filter_group} if args.filter_group else None
    models = cli.api.call("GET", "/v1/models", params=params)
    if cli.out.as_json:
        cli.out.json(models)
    else:
        rows = [
            {**_summarised(m), "versions": [v["version"] for v in m.get("versions", [])]}
            for m in models
        ]
        cli.out.table(rows, MODEL_COLUMNS)


def models_get(cli: Cli, args: argparse.Namespace) -> None:
    model = cli.api.call("GET", f"/v1/models/{args.name}")
    _show_model(cli, model)
    if not cli.out.as_json:
        cli.out.write("")
        cli.out.table(model["versions"], VERSION_COLUMNS)
        _plugin_per_gateway(cli, model)


def models_create(cli: Cli, args: argparse.Namespace) -> None:
    body = _model_body(args, creating=True)
    stored = _stored(cli, None)
    _cache_and_shadow(args, body, stored)
    _scaling_and_limits(args, body, stored)
    _show_model(cli, cli.api.call("POST", "/v1/models", json=body))


def models_update(cli: Cli, args: argparse.Namespace) -> None:
    body = _model_body(args, creating=False)
    if args.clear_plugin:
        body["clear_plugin"] = True
    if args.clear_constraints:
        body["constraints"] = {}
    stored = _stored(cli, args.name)
    _cache_and_shadow(args, body, stored)
    _scaling_and_limits(args, body, stored)
    if not body:
        raise CliError("nothing to update: pass at least one option", 2)
    _show_model(cli, cli.api.call("PATCH", f"/v1/models/{args.name}", json=body))


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
        statuses = cli.api.call("GET", "/v1/status")
        cli.out.show(
            statuses if cli.out.as_json else [_summarised(s) for s in statuses], STATUS_COLUMNS
        )
        return
    status = cli.api.call("GET", f"/v1/models/{args.name}/status")
    if cli.out.as_json:
        cli.out.json(status)
        return
    cli.out.details(_summarised(status))
    cli.out.write("")
    cli.out.table(status["versions"], VERSION_STATUS_COLUMNS)
    instances = [{**i, "version": v["version"]} for v in status["versions"] for i in v["instances"]]
    if instances:
        cli.out.write("")
        cli.out.table(instances, INSTANCE_COLUMNS)
    _plugin_per_gateway(cli, status)


def models_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.api.call("DELETE", f"/v1/models/{args.name}")
    cli.out.done(f"deleted model {args.name}")


def models_traffic(cli: Cli, args: argparse.Namespace) -> None:
    if args.clear:
        weights: dict[str, int] = {}
    elif args.weights:
        try:
            weights = {k: int(v) for k, v in pairs(args.weights, "weight").items()}
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
    cli.out.done(f"traffic of {args.name}: {cell(model['traffic'])}", model)


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


# -- arguments -----------------------------------------------------------------------------


def _model_options(p: argparse.ArgumentParser, creating: bool) -> None:
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


def _cache_and_shadow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-ttl", type=float, metavar="SECONDS", help="cache answers this long")
    p.add_argument("--cache-max-entries", type=int, metavar="N", help="answers per gateway")
    p.add_argument("--no-cache", action="store_true", help="turn the response cache off")
    p.add_argument(
        "--shadow",
        metavar="TARGET:PERCENT",
        help="copy PERCENT%% of calls to TARGET (a version number or another model)",
    )
    p.add_argument(
        "--shadow-tolerance",
        metavar="absolute=A,relative=R",
        help="numeric agreement tolerance of the shadow (default: exact match)",
    )
    p.add_argument("--no-shadow", action="store_true", help="turn shadow traffic off")


def _scaling_and_limits_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-replicas", type=int, metavar="N", help="autoscale: at least N (0 ok)")
    p.add_argument("--max-replicas", type=int, metavar="N", help="autoscale: at most N")
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--target-in-flight", type=float, metavar="X", help="autoscale: calls in flight per replica"
    )
    target.add_argument(
        "--target-calls-per-s", type=float, metavar="X", help="autoscale: calls/s per replica"
    )
    p.add_argument(
        "--idle-seconds", type=float, metavar="S", help="with --min-replicas 0: idle time to zero"
    )
    p.add_argument("--no-autoscale", action="store_true", help="fixed --replicas again")
    p.add_argument("--max-concurrency", type=int, metavar="N", help="calls in flight per gateway")
    p.add_argument("--rate-limit", type=float, metavar="R", help="calls/s per gateway")
    p.add_argument("--burst", type=int, metavar="N", help="calls admitted at once (rate limit)")
    p.add_argument("--no-limits", action="store_true", help="turn the limits off")
    p.add_argument(
        "--pinned",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never evicted to make room for other models",
    )


def _version_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--uri", help="artifact URI (file://, s3://, http(s)://, ...)")
    src.add_argument("--file", help="model archive to upload (.tar.gz/.zip)")
    p.add_argument("--version", type=int, help="version number (default: newest + 1)")
    p.add_argument("--label", action="append", help="e.g. stable, canary (repeat)")
    p.add_argument("--sha256", help="expected sha256 of the artifact at --uri")


def add_commands(commands: Commands) -> None:
    mc = commands.area("models", "models: list|get|create|update|deploy|online|offline|...")
    mc.add("list", "list models", models_list).add_argument("--group", dest="filter_group")
    mc.add("get", "show a model", models_get).add_argument("name")
    p = mc.add("create", "create a model", models_create)
    p.add_argument("name")
    _model_options(p, creating=True)
    _cache_and_shadow_options(p)
    _scaling_and_limits_options(p)
    p = mc.add("update", "change a model", models_update)
    p.add_argument("name")
    _model_options(p, creating=False)
    _cache_and_shadow_options(p)
    _scaling_and_limits_options(p)
    p.add_argument("--clear-plugin", action="store_true")
    p.add_argument("--clear-constraints", action="store_true", help="place on any worker")
    p = mc.add(
        "deploy", "add a version (uploading an archive); --backend creates the model", models_deploy
    )
    p.add_argument("name")
    _version_source(p)
    _model_options(p, creating=True)
    for state, help_ in (("online", "place replicas again"), ("offline", "remove every replica")):
        p = mc.add(state, help_, models_set_state)
        p.add_argument("name")
        p.set_defaults(state=state)
    mc.add(
        "status", "desired vs ready replicas, replicas wanted and why, load", models_status
    ).add_argument("name", nargs="?")
    mc.add("delete", "delete a model and its versions", models_delete).add_argument("name")
    p = mc.add("traffic", "show or set traffic weights: traffic NAME 1=90 2=10", models_traffic)
    p.add_argument("name")
    p.add_argument("weights", nargs="*", help="VERSION=PERCENT")
    p.add_argument("--clear", action="store_true", help="all traffic to the newest version")

    vc = commands.area("versions", "model versions: list|create|delete|label")
    vc.add("list", "list versions of a model", versions_list).add_argument("name")
    p = vc.add("create", "add a version from --uri or --file", versions_create)
    p.add_argument("name")
    _version_source(p)
    p = vc.add("delete", "delete a version", versions_delete)
    p.add_argument("name")
    p.add_argument("version", type=int)
    p = vc.add(
        "label", "set the labels of a version: label NAME VERSION stable ...", versions_label
    )
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("labels", nargs="*")
