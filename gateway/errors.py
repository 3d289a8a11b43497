"""The gateway's errors (subclasses of :mod:`registry.errors`) and their one mapping to gRPC.

:func:`status_of` is the only place that turns an exception into a gRPC status; the
surface wrapper in :mod:`gateway.surfaces.base` calls it for every handler. Every value a
caller sent goes into a message through :func:`shown`, and every message leaves through
:func:`status_of`, which bounds it too: gRPC carries the message in the trailers, and a
client refuses trailers over a few KB (RESOURCE_EXHAUSTED instead of the real error).
"""

from __future__ import annotations

import logging

import grpc

from modelgate_client.tensors import capped
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
    "MESSAGE_BYTES",
    "BackendStatusError",
    "ConnectionFailure",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "ModelgateError",
    "NotFoundError",
    "NotFoundWords",
    "ResourceExhaustedError",
    "RestServiceError",
    "UnavailableError",
    "UnimplementedError",
    "capped",
    "source_of",
    "status_of",
]

#: Most UTF-8 bytes of one caller-supplied value shown in an error message.
#: Most UTF-8 bytes of a whole error message (gRPC percent-encodes non-ASCII bytes in the
#: trailers, so this is at most ~3 KB on the wire, under every client's limit).
MESSAGE_BYTES = 1024


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


class NotFoundWords:
    """How a surface words "no such model, version or label": modelgate's own words.

    The KServe and TF-Serving surfaces subclass it to answer in their peer server's words
    first (clients match on those), followed by these as modelgate's hint.
    """

    def model(self, name: str, version: int | None) -> ModelNotFoundError:
        return ModelNotFoundError(self.model_hint(name))

    def version(self, name: str, version: int, known: str) -> ModelNotFoundError:
        return ModelNotFoundError(self.version_hint(name, version, known))

    def label(self, name: str, label: str, known: str) -> ModelNotFoundError:
        return ModelNotFoundError(self.label_hint(name, label, known))

    @staticmethod
    def peer(words: str, hint: str) -> str:
        """A peer server's own ``words``, then modelgate's ``hint``."""
        return f"{words} (modelgate: {hint})"

    @staticmethod
    def model_hint(name: str) -> str:
        return (
            f"model {capped(name)!r} is not known to the gateway; ListModels or RepositoryIndex "
            "lists the routable models"
        )

    @staticmethod
    def version_hint(name: str, version: int, known: str) -> str:
        return f"model {capped(name)!r} has no version {version} (versions: {known})"

    @staticmethod
    def label_hint(name: str, label: str, known: str) -> str:
        return f"model {capped(name)!r} has no version labelled {capped(label)!r} (labels: {known})"


def status_of(err: BaseException, *, where: str = "") -> tuple[grpc.StatusCode, str]:
    """The gRPC status a caller sees for ``err``. Unknown errors are logged with traceback."""
    if isinstance(err, BackendStatusError):
        return err.code, capped(str(err), MESSAGE_BYTES)
    if isinstance(err, ModelgateError):
        return type(err).grpc_code, capped(str(err), MESSAGE_BYTES)
    log.error("internal error in %s", where or "a gateway call", exc_info=err)
    return grpc.StatusCode.INTERNAL, "internal error in the gateway (logged)"


def source_of(err: BaseException) -> str:
    """Who decided the answer to a failed call: ``backend`` when its code and message are a
    backend's own answer passed through, else ``gateway`` (for the metrics)."""
    return "backend" if isinstance(err, BackendStatusError) else "gateway"
