"""The gateway's errors (subclasses of :mod:`registry.errors`) and their one mapping to gRPC.

:func:`status_of` is the only place that turns an exception into a gRPC status; the
surface wrapper in :mod:`gateway.surfaces.base` calls it for every handler.
"""

from __future__ import annotations

import logging

import grpc

from registry.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelgateError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)

log = logging.getLogger("gateway.errors")

__all__ = [
    "BackendStatusError",
    "ConnectionFailure",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "ModelgateError",
    "NotFoundError",
    "ResourceExhaustedError",
    "RestServiceError",
    "UnavailableError",
    "UnimplementedError",
    "status_of",
]


class ModelNotFoundError(NotFoundError):
    """No model (or version, or label) of that name is known to the gateway."""


class ModelUnavailableError(UnavailableError):
    """The model is known but has no ready instance (or every attempt failed)."""


class ConnectionFailure(UnavailableError):
    """An attempt failed before the backend answered (refused, reset, unreachable).

    The only failure the router retries on another instance.
    """

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(f"backend {address} unreachable: {detail}")
        self.address = address


class RestServiceError(FailedPreconditionError):
    """A tensor API (KServe, TF-Serving) was called on a third-party REST service."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is a third-party REST service: call it with Invoke")


class BackendStatusError(ModelgateError):
    """A backend answered with an application error: its code and message pass through."""

    def __init__(self, code: grpc.StatusCode, message: str, address: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.address = address


def status_of(err: BaseException, *, where: str = "") -> tuple[grpc.StatusCode, str]:
    """The gRPC status a caller sees for ``err``. Unknown errors are logged with traceback."""
    if isinstance(err, BackendStatusError):
        return err.code, str(err)
    if isinstance(err, ModelgateError):
        return type(err).grpc_code, str(err)
    log.error("internal error in %s", where or "a gateway call", exc_info=err)
    return grpc.StatusCode.INTERNAL, "internal error in the gateway (logged)"
