"""The per-model response cache (``cache: {ttl_s, max_entries}`` on a model record).

An answer is cached under a digest of the exact request bytes with the resolved model, version
and method, so a new version never answers from an older one's entries; a plugin model's
answer (:meth:`gateway.surfaces.base.Core.infer_flow`) under a digest of the decoded request
with the model's plugin ``name@version`` and config, so a plugin change does not either.
Only successful answers are stored (an error raises before :meth:`ResponseCache.put`).
In-process by default: one LRU with a TTL per model, dropped when the model's cache settings
change (:meth:`ResponseCache.sync`, on every routing table). With ``cache_redis_url`` the
entries live in Redis instead, shared by every gateway; when Redis does not answer, calls go
to the backend as if the cache were off (counted in
``modelgate_gateway_cache_unavailable``, logged once per outage).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from cachetools import TTLCache
from redis.exceptions import RedisError
from tritonclient.grpc import service_pb2 as kserve

import udl
from gateway import codec
from gateway.backends.wire import parse
from gateway.metrics import GatewayMetrics
from gateway.plugins import spec_of
from gateway.router import Target
from gateway.table import ModelEntry
from registry.records import ResponseCache as CacheSpec

log = logging.getLogger("gateway.cache")

#: Call metadata key (lower case, as gRPC delivers it) a caller sets to skip the cache.
BYPASS_HEADER = "modelgate-cache"
#: The value of :data:`BYPASS_HEADER` that skips it: the call goes to the backend and its
#: answer is not stored.
BYPASS_VALUE = "bypass"

#: The caller methods whose answers are cached: inference, never metadata or statistics.
CACHED_METHODS = frozenset({"ModelInfer", "Predict", "Classify", "Regress", "MultiInference"})


def bypassed(metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
    """Whether the caller asked to skip the cache."""
    return any(k == BYPASS_HEADER and v == BYPASS_VALUE for k, v in metadata or ())


def cache_key(model: str, version: int, method: str, request: bytes) -> str:
    """The entry of one exact request to one model version by one method."""
    digest = hashlib.sha256(request)
    digest.update(f"\0{model}\0{version}\0{method}".encode())
    return f"modelgate:cache:{model}:{digest.hexdigest()}"


def flow_cache_key(target: Target, request: udl.Request, outputs: Sequence[str]) -> str:
    """The entry of one decoded call (tensors, payload, parameters; not its metadata or id) to
    one model version through its plugin as configured now."""
    name, v = target.model.name, target.version.version
    message = kserve.ModelInferRequest(model_name=name, model_version=str(v))
    codec.add_kserve_inputs(message, sorted(request.tensors.items()))
    message.outputs.extend(kserve.ModelInferRequest.InferRequestedOutputTensor(name=o)
                           for o in outputs)  # fmt: skip
    for key, value in request.parameters.items():
        message.parameters[key].string_param = value
    message.parameters["content_type"].string_param = request.content_type
    plugin, config = spec_of(target.model) or ("", "")
    message.parameters["plugin"].string_param = f"{plugin} {config}"
    body = message.SerializeToString(deterministic=True) + b"\0" + request.payload
    return cache_key(name, v, "flow", body)


def encode_response(response: udl.Response) -> bytes:
    """A flow's answer as a ModelInferResponse (payload, content type and parameters in its
    parameters); raises InvalidArgumentError for a tensor the KServe codec cannot carry."""
    out = kserve.ModelInferResponse(model_name=response.model,
                                    model_version=str(response.version or ""))  # fmt: skip
    codec.add_kserve_outputs(out, list(response.tensors.items()))
    out.parameters["payload"].string_param = base64.b64encode(response.payload).decode()
    out.parameters["content_type"].string_param = response.content_type
    for key, value in response.parameters.items():
        out.parameters[f"parameter.{key}"].string_param = value
    return out.SerializeToString()


def decode_response(data: bytes) -> udl.Response:
    """:func:`encode_response` undone."""
    message = parse(kserve.ModelInferResponse, data, "cached response")
    params = {k: p.string_param for k, p in message.parameters.items()}
    return udl.Response(
        model=message.model_name,
        version=int(message.model_version) if message.model_version else None,
        tensors=dict(codec.kserve_response_outputs(message)),
        payload=base64.b64decode(params["payload"]),
        content_type=params["content_type"],
        parameters={k.removeprefix("parameter."): v for k, v in params.items()
                    if k.startswith("parameter.")},
    )  # fmt: skip


class ResponseCache:
    """Answers of the models that opted in, in process or in a shared Redis."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        redis_url: str | None,
        *,
        redis_password: str | None = None,
        redis_timeout_s: float = 0.5,
    ) -> None:
        self.metrics = metrics
        #: Per model: the settings its LRU was built with, and the LRU.
        self._local: dict[str, tuple[CacheSpec, TTLCache[str, bytes]]] = {}
        self._redis = (
            aioredis.Redis.from_url(
                redis_url,
                password=redis_password,
                socket_timeout=redis_timeout_s,
                socket_connect_timeout=redis_timeout_s,
            )
            if redis_url
            else None
        )
        self._redis_down = False

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def sync(self, models: Mapping[str, ModelEntry], changed: Iterable[str]) -> None:
        """Drop the in-process entries of the ``changed`` models that are gone, or whose
        cache is off or changed (O(changed))."""
        for name in changed:
            held = self._local.get(name)
            if held is None:
                continue
            spec = held[0]
            entry = models.get(name)
            if entry is None or entry.record.cache != spec:
                del self._local[name]

    async def get(self, model: str, spec: CacheSpec, key: str) -> bytes | None:
        """The cached answer, or None (a miss, counted)."""
        if self._redis is None:
            value = self._lru(model, spec).get(key)
        else:
            value = await self._redis_call("get", self._redis.get(key))
        self.metrics.cache_lookups.labels(model, "hit" if value is not None else "miss").inc()
        return value

    async def put(self, model: str, spec: CacheSpec, key: str, value: bytes) -> None:
        if self._redis is None:
            self._lru(model, spec)[key] = value
        else:
            await self._redis_call("set", self._redis.set(key, value, px=int(spec.ttl_s * 1000)))

    def _lru(self, model: str, spec: CacheSpec) -> TTLCache[str, bytes]:
        held = self._local.get(model)
        if held is None or held[0] != spec:
            held = self._local[model] = (spec, TTLCache(spec.max_entries, spec.ttl_s))
        return held[1]

    async def _redis_call(self, op: str, pending: Awaitable[Any]) -> bytes | None:
        try:
            result = await pending
        except (RedisError, OSError) as err:
            self.metrics.cache_unavailable.labels(op).inc()
            if not self._redis_down:
                self._redis_down = True
                log.warning("cache: Redis did not answer (%s); calls skip the cache", err)
            return None
        if self._redis_down:
            self._redis_down = False
            log.info("cache: Redis answers again")
        return result if isinstance(result, bytes) else None
