"""modelgate's error hierarchy, shared by every role.

Each error carries the gRPC status code and the HTTP status it maps to. The gateway's
interceptor and the manager's exception handler translate these, in one place each;
anything that is not a :class:`ModelgateError` becomes INTERNAL / 500 with a generic message.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class ModelgateError(Exception):
    """Root of modelgate's errors. ``str(err)`` is a message a caller can act on."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"


class InvalidArgumentError(ModelgateError):
    """The request is malformed; the message says what is wrong."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422
    title = "Invalid argument"


class NotFoundError(ModelgateError):
    """A named thing (model, version, path, ...) does not exist."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    title = "Not found"


class ConflictError(ModelgateError):
    """The thing exists already, or changed since it was read (compare-and-set failed)."""

    grpc_code = grpc.StatusCode.ABORTED
    http_status = 409
    title = "Conflict"


class FailedPreconditionError(ModelgateError):
    """The operation is not allowed in the current state."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    title = "Failed precondition"


class UnavailableError(ModelgateError):
    """A dependency (backend, ZooKeeper) cannot be reached right now; retrying may help."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    title = "Unavailable"


class DeadlineExceededError(ModelgateError):
    """The time allowed ran out (the caller's deadline, or a stage timeout)."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    title = "Deadline exceeded"


class ResourceExhaustedError(ModelgateError):
    """A message or upload is over a configured limit (the message names it)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    title = "Resource exhausted"


class UnimplementedError(ModelgateError):
    """This operation is not offered here (the message says where to go instead)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501
    title = "Unimplemented"


class ZooKeeperUnavailableError(UnavailableError):
    """ZooKeeper could not be reached; the message names the hosts and the timeout."""


class InvalidRecordError(InvalidArgumentError):
    """A record failed validation; the message names the ZooKeeper path."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"invalid record at {path}: {detail}")
        self.path = path
        self.detail = detail
