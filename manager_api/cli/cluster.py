"""``modelgate workers ...`` and ``modelgate gateways``: the processes of the fleet."""

from __future__ import annotations

import argparse
from typing import Any

from manager_api.cli.context import Cli, Commands
from manager_api.cli.output import cell

WORKER_COLUMNS = [
    ("worker_id", "WORKER"),
    ("registered", "UP"),
    ("backend", "BACKEND"),
    ("address", "ADDRESS"),
    ("admin", "ADMIN"),
    ("labels", "LABELS"),
    ("cpu", "CPU"),
    ("memory", "MEMORY"),
    ("headroom_pct", "HEADROOM"),
    ("out_of_memory", "OUT OF MEMORY WITH"),
    ("assignments", "ASSIGNMENTS"),
]
GATEWAY_COLUMNS = [
    ("gateway_id", "GATEWAY"),
    ("address", "ADDRESS"),
    ("version", "VERSION"),
    ("serving", "PLUGINS"),
    ("errors", "PLUGIN ERRORS"),
]


def _used(used: float | None, capacity: float | None, unit: str, decimals: int) -> str | None:
    """e.g. ``1.5/4 cores`` or ``700/2048 MiB`` (``-``: not measured)."""
    if used is None:
        return None
    amount = f"{used:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{used:.0f}"
    return f"{amount}/{cell(capacity) if capacity is not None else '?'} {unit}"


def workers_list(cli: Cli, args: argparse.Namespace) -> None:
    workers = cli.api.call("GET", "/v1/workers")
    if cli.out.as_json:
        cli.out.json(workers)
        return
    rows: list[dict[str, Any]] = []
    for w in workers:
        usage = w["usage"] or {}
        headroom = w["headroom"]
        rows.append(
            {
                **w,
                "admin": "draining" if w["draining"] else "cordoned" if w["cordoned"] else "-",
                "cpu": _used(usage.get("cpu"), w["capacity_cpu"], "cores", 2),
                "memory": _used(usage.get("memory_mb"), w["capacity_memory_mb"], "MiB", 0),
                "headroom_pct": None if headroom is None else f"{headroom:.0%}",
                "out_of_memory": sorted(w["ooms"]),
            }
        )
    cli.out.table(rows, WORKER_COLUMNS)


def workers_admin(cli: Cli, args: argparse.Namespace) -> None:
    worker = cli.api.call("POST", f"/v1/workers/{args.worker_id}:{args.action}")
    cli.out.done(f"{args.action}: {args.worker_id}", worker)


def workers_remove(cli: Cli, args: argparse.Namespace) -> None:
    params = {"force": "true"} if args.force else None
    cli.api.call("DELETE", f"/v1/workers/{args.worker_id}", params=params)
    cli.out.done(f"removed worker {args.worker_id}")


def gateways_list(cli: Cli, args: argparse.Namespace) -> None:
    gateways = cli.api.call("GET", "/v1/gateways")
    if cli.out.as_json:
        cli.out.json(gateways)
        return
    rows = []
    for g in gateways:
        plugins = g["plugins"].items()
        errors = "; ".join(f"{model}: {p['error']}" for model, p in plugins if p["error"])
        serving = {model: p["serving"] or "-" for model, p in plugins}
        rows.append({**g, "serving": serving, "errors": errors or None})
    cli.out.table(rows, GATEWAY_COLUMNS)


def add_commands(commands: Commands) -> None:
    wc = commands.area("workers", "workers: list|cordon|uncordon|drain|remove")
    wc.add("list", "list workers", workers_list)
    for action, help_ in (
        ("cordon", "no new replicas on this worker"),
        ("uncordon", "accept replicas again"),
        ("drain", "move its replicas elsewhere"),
    ):
        p = wc.add(action, help_, workers_admin)
        p.add_argument("worker_id")
        p.set_defaults(action=action)
    p = wc.add("remove", "forget a worker", workers_remove)
    p.add_argument("worker_id")
    p.add_argument("--force", action="store_true", help="even while it is registered")

    gw = commands.add("gateways", "gateways: list (with plugins and load errors)", gateways_list)
    gw.add_argument("cmd", nargs="?", choices=["list"], default="list")
