"""``modelgate services ...`` and ``modelgate groups ...``."""

from __future__ import annotations

import argparse

from manager_api.cli.context import Cli, Commands

SERVICE_COLUMNS = [
    ("name", "NAME"),
    ("group", "GROUP"),
    ("timeout_s", "TIMEOUT"),
    ("health_path", "HEALTH PATH"),
    ("urls", "URLS"),
]
GROUP_COLUMNS = [("name", "NAME"), ("description", "DESCRIPTION")]


def services_list(cli: Cli, args: argparse.Namespace) -> None:
    cli.out.show(cli.api.call("GET", "/v1/services"), SERVICE_COLUMNS)


def services_create(cli: Cli, args: argparse.Namespace) -> None:
    body = {"name": args.name, "urls": args.url, "group": args.group}
    if args.service_timeout is not None:
        body["timeout_s"] = args.service_timeout
    if args.health_path is not None:
        body["health_path"] = args.health_path
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


def add_commands(commands: Commands) -> None:
    sc = commands.area("services", "third-party REST services: list|create|delete")
    sc.add("list", "list services", services_list)
    p = sc.add("create", "register a service", services_create)
    p.add_argument("name")
    p.add_argument("--url", action="append", required=True, help="http(s) URL (repeat)")
    p.add_argument("--service-timeout", type=float, help="seconds per call")
    p.add_argument(
        "--health-path",
        help="path probed with GET on each URL's origin, up on 2xx (default: GET /, up "
        "unless 502/503/504)",
    )
    p.add_argument("--group", default="default")
    sc.add("delete", "delete a service", services_delete).add_argument("name")

    gc = commands.area("groups", "business groups: list|create|delete")
    gc.add("list", "list groups", groups_list)
    p = gc.add("create", "create a group", groups_create)
    p.add_argument("name")
    p.add_argument("--description")
    gc.add("delete", "delete a group", groups_delete).add_argument("name")
