"""Bearer-token auth: a tokens file maps each token to a name, a role and (operators) groups.

Roles:

- ``admin``: everything;
- ``operator``: reads, and state changes for models and services of its ``groups``;
- ``viewer``: reads;
- ``internal``: worker agents and gateways, may only read blobs.

Tokens are compared in constant time; the file may hold ``token_sha256`` instead of the
clear token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from manager_api.errors import ForbiddenError, UnauthorizedError
from registry.records import Name

log = logging.getLogger("manager_api.auth")
audit_log = logging.getLogger("manager_api.audit")

Role = Literal["admin", "operator", "viewer", "internal"]
_RANK = {"internal": 0, "viewer": 1, "operator": 2, "admin": 3}


class TokenEntry(BaseModel):
    """One ``[[tokens]]`` table of the tokens file."""

    name: str = Field(min_length=1)
    role: Role
    token: str | None = Field(default=None, min_length=8)
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    groups: list[Name] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_secret(self) -> TokenEntry:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of 'token' or 'token_sha256'")
        return self

    def digest(self) -> str:
        if self.token_sha256 is not None:
            return self.token_sha256
        assert self.token is not None
        return hashlib.sha256(self.token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    name: str
    role: Role
    groups: frozenset[str] = frozenset()

    def at_least(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]

    def may_change_group(self, group: str) -> bool:
        return self.role == "admin" or (self.role == "operator" and group in self.groups)


class TokenStore:
    """Tokens loaded from the tokens file, looked up by the SHA-256 of the presented token."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._by_digest: dict[str, Principal] = {}
        for entry in entries:
            self._by_digest[entry.digest()] = Principal(
                entry.name, entry.role, frozenset(entry.groups)
            )

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        """Parse the TOML tokens file; ValueError naming the file and the problem."""
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"cannot read tokens file {path}: {err}") from None
        try:
            entries = [TokenEntry.model_validate(t) for t in raw.get("tokens", [])]
        except ValidationError as err:
            raise ValueError(f"invalid tokens file {path}: {err}") from None
        if not entries:
            raise ValueError(f"tokens file {path} defines no [[tokens]]")
        return cls(entries)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise UnauthorizedError(
                "missing bearer token: send 'Authorization: Bearer <token>' "
                "(CLI: set MODELGATE_TOKEN)"
            )
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise UnauthorizedError("unknown bearer token; check the manager's tokens file")


def require_role(principal: Principal, role: Role, action: str) -> None:
    """ForbiddenError unless ``principal`` has ``role`` or better."""
    if principal.role == "internal" or not principal.at_least(role):
        raise ForbiddenError(
            f"{action} needs role {role}; token '{principal.name}' is {principal.role}"
        )


def require_group(principal: Principal, group: str, action: str) -> None:
    """ForbiddenError unless ``principal`` may change things of ``group``."""
    if not principal.may_change_group(group):
        if principal.role == "operator":
            raise ForbiddenError(
                f"{action}: operator '{principal.name}' may only change groups "
                f"{sorted(principal.groups)}, not '{group}'"
            )
        raise ForbiddenError(
            f"{action} needs role operator (of group '{group}') or admin; "
            f"token '{principal.name}' is {principal.role}"
        )


@dataclass
class AuditLog:
    """Who changed what, when: one JSON line per state change (file and/or logger)."""

    path: Path | None = None
    keep: int = 1000
    _recent: deque[dict[str, Any]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, who: str, role: str, action: str, target: str, status: int) -> None:
        entry = {
            "time": time.time(),
            "who": who,
            "role": role,
            "action": action,
            "target": target,
            "status": status,
        }
        line = json.dumps(entry, sort_keys=True)
        audit_log.info("%s", line)
        with self._lock:
            self._recent.append(entry)
            while len(self._recent) > self.keep:
                self._recent.popleft()
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(line + "\n")

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._recent)
