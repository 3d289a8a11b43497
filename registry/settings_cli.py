"""Command-line flags for a role's settings class, built from its fields (one way for all roles).

Every field ``some_name`` becomes ``--some-name`` with the field's docstring and default as
its help; a flag given on the command line overrides ``<ENV_PREFIX>SOME_NAME``, which
overrides the default. Secrets (fields named ``*_token``, ``*_password``, ``*_secret``) get no
flag: a command line is visible to every user of the host (``ps``, ``/proc/<pid>/cmdline``),
so they come from the environment only.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)

SECRET_WORDS = frozenset({"token", "password", "secret"})


def is_secret(name: str) -> bool:
    """Whether field ``name`` holds a secret (its last word is token, password or secret)."""
    return name.rsplit("_", 1)[-1] in SECRET_WORDS


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def build_parser(cls: type[BaseSettings], prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per non-secret field of ``cls`` (all default None)."""
    prefix = cls.model_config.get("env_prefix", "")
    secrets = [name for name in cls.model_fields if is_secret(name)]
    epilog = f"Every flag also reads {prefix}<NAME> from the environment (flags win)."
    if secrets:
        names = ", ".join(prefix + name.upper() for name in secrets)
        epilog += f" Secrets have no flag (argv is visible to every user): set {names}."
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    for name, field in cls.model_fields.items():
        if is_secret(name):
            continue
        if (
            field.default_factory_takes_validated_data
        ):  # computed from other fields: its doc says how
            help_text = (field.description or "").replace("%", "%%")
        else:
            default = field.get_default(call_default_factory=True)
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text = f"{field.description or ''} (default: {shown})".replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            action: Any = argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=name, action=action, default=None, help=help_text)
        elif _is_list(field.annotation):
            parser.add_argument(flag, dest=name, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    return parser


def parse_settings(cls: type[S], argv: Sequence[str] | None, *, prog: str, description: str) -> S:
    """Settings from ``argv`` over the environment (raises pydantic's ``ValidationError``)."""
    args = build_parser(cls, prog, description).parse_args(argv)
    return cls(**{k: v for k, v in vars(args).items() if v is not None})
