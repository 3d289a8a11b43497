"""``modelgate plugins ...``: UDL plugin packages."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from manager_api.cli.context import Cli, CliError, Commands

PLUGIN_COLUMNS = [
    ("name", "NAME"),
    ("version", "VERSION"),
    ("entrypoint", "ENTRYPOINT"),
    ("executor", "EXECUTOR"),
    ("size", "SIZE"),
    ("used_by", "USED BY"),
]


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


def add_commands(commands: Commands) -> None:
    pc = commands.area("plugins", "UDL plugins: push|list|delete")
    pc.add("push", "upload a plugin zip or folder", plugins_push).add_argument("path")
    pc.add("list", "list plugins", plugins_list)
    p = pc.add("delete", "delete a plugin version", plugins_delete)
    p.add_argument("name")
    p.add_argument("version")
