"""Third-party REST model services (``/services/<name>``): POST the payload, map errors.

They take ``Invoke`` payloads only: every tensor API is refused with :class:`RestServiceError`.
"""

from __future__ import annotations

import grpc
import httpx

from gateway import codec
from gateway.backends.base import Backend, Call, TensorCall
from gateway.errors import (
    BackendStatusError,
    ConnectionFailure,
    DeadlineExceededError,
    RestServiceError,
)
from gateway.table import Instance

#: HTTP status -> gRPC code (the usual gRPC-HTTP mapping).
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    if status in HTTP_TO_GRPC:
        return HTTP_TO_GRPC[status]
    if status in (502, 503):
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


class RestBackend(Backend):
    """One shared httpx client; :meth:`post` is one ``Invoke`` attempt against one URL.

    Every tensor API is refused with :class:`RestServiceError`.
    """

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(follow_redirects=False)

    async def post(
        self, url: str, payload: bytes, content_type: str, budget: float
    ) -> tuple[bytes, str]:
        try:
            response = await self.client.post(
                url,
                content=payload,
                headers={"content-type": content_type or "application/octet-stream"},
                timeout=budget,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise ConnectionFailure(url, f"{type(err).__name__}: {err}") from None
        except httpx.TimeoutException:
            raise DeadlineExceededError(
                f"service {url} did not answer within the deadline"
            ) from None
        except httpx.HTTPError as err:
            raise ConnectionFailure(url, f"{type(err).__name__}: {err}") from None
        if response.status_code in (502, 503):
            raise ConnectionFailure(url, f"HTTP {response.status_code}")
        if response.status_code >= 400:
            text = response.text[:300].strip()
            raise BackendStatusError(
                grpc_code(response.status_code),
                f"service {url} answered HTTP {response.status_code}: {text}",
                url,
            )
        return response.content, response.headers.get("content-type", "application/octet-stream")

    async def close(self) -> None:
        await self.client.aclose()

    async def _refuse(self, call: Call, instance: Instance, budget: float) -> bytes:
        raise RestServiceError(call.model)

    tfs_predict = tfs_metadata = tfs_only = _refuse
    kserve_infer = kserve_metadata = kserve_only = _refuse

    async def infer(self, call: TensorCall, instance: Instance, budget: float) -> codec.Named:
        raise RestServiceError(call.model)
