"""Exceptions raised by :mod:`modelgate_client`, one per gRPC status a caller acts on.

Every exception carries the gRPC :attr:`~GatewayError.code` and the gateway's message
(which names the model, version or limit involved). Catch :class:`GatewayError` for all of
them, or a subclass for one case::

    try:
        client.invoke("add_one", {"INPUT0": x})
    except NotFoundError:        # unknown model, version or label: fix the call
        ...
    except UnavailableError:     # no ready instance (after the client's own retries)
        ...
"""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """A call to the gateway failed; :attr:`code` is the gRPC status code."""

    #: The status this class stands for (the base class covers every other code).
    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, *, attempts: int = 1
    ) -> None:
        self.code = code or self.default_code
        self.message = message
        #: How many times the call was tried (more than 1 after UNAVAILABLE retries).
        self.attempts = attempts
        super().__init__(f"{self.code.name}: {message}")

    @property
    def retryable(self) -> bool:
        """True for UNAVAILABLE: the same call may succeed later or on another instance."""
        return self.code is grpc.StatusCode.UNAVAILABLE


class NotFoundError(GatewayError):
    """NOT_FOUND: the model, version or version label is unknown to the gateway."""

    default_code = grpc.StatusCode.NOT_FOUND


class UnavailableError(GatewayError):
    """UNAVAILABLE: the gateway, or every instance of the model, is not reachable now."""

    default_code = grpc.StatusCode.UNAVAILABLE


class InvalidArgumentError(GatewayError):
    """INVALID_ARGUMENT: the request does not parse or a tensor is not acceptable."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhaustedError(GatewayError):
    """RESOURCE_EXHAUSTED: a message is over the gateway's (or the client's) size limit."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(GatewayError):
    """DEADLINE_EXCEEDED: no answer within the call's deadline (never retried)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPreconditionError(GatewayError):
    """FAILED_PRECONDITION: the call is not allowed in the current state."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class UnimplementedError(GatewayError):
    """UNIMPLEMENTED: e.g. a payload type that needs a plugin the model does not have."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    cls.default_code: cls
    for cls in (
        NotFoundError,
        UnavailableError,
        InvalidArgumentError,
        ResourceExhaustedError,
        DeadlineExceededError,
        FailedPreconditionError,
        UnimplementedError,
    )
}


def error_for(code: grpc.StatusCode, message: str, attempts: int = 1) -> GatewayError:
    """The exception for ``code`` (:class:`GatewayError` itself for unlisted codes)."""
    return _BY_CODE.get(code, GatewayError)(message, code, attempts=attempts)


def from_rpc_error(err: grpc.RpcError, attempts: int = 1) -> GatewayError:
    """Translate a ``grpc.RpcError`` (sync or aio) into a :class:`GatewayError`."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for(code, details or str(err), attempts)
