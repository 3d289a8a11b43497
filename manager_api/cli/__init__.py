"""``modelgate``: the admin CLI over the manager's REST API (and ``infer`` via the gateway).

Configuration: ``--manager URL`` / ``MODELGATE_MANAGER_URL`` (default http://127.0.0.1:8080),
the bearer token from ``MODELGATE_TOKEN`` (never a flag: argv is visible to every user of
the machine), ``--gateway`` / ``MODELGATE_GATEWAY`` for ``infer``. Readable tables by
default, ``--json`` for scripts. On an error the server's message is printed and the exit
status is 1 (2 when the manager or gateway cannot be reached or usage is wrong).

One module per area (``models``, ``plugins``, ``cluster``, ``catalog``, ``infer``); each
command is one function ``(Cli, argparse.Namespace) -> None`` that its module binds to a
sub-parser in ``add_commands``.
"""

from __future__ import annotations

import argparse
import os
import sys

from manager_api.cli import catalog, cluster, infer, models, plugins
from manager_api.cli.context import Cli, CliError, Command, Commands
from manager_api.cli.output import Output

DEFAULT_MANAGER = "http://127.0.0.1:8080"


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
    commands = Commands(
        parser.add_subparsers(dest="area", required=True, metavar="COMMAND"), common
    )
    for area in (models, plugins, cluster, catalog, infer):
        area.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli = Cli(
        manager=getattr(args, "manager", None)
        or os.environ.get("MODELGATE_MANAGER_URL", DEFAULT_MANAGER),
        token=os.environ.get("MODELGATE_TOKEN"),
        timeout=getattr(args, "timeout", None) or 60.0,
        out=Output(sys.stdout, sys.stderr, as_json=getattr(args, "json", False)),
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
