"""What a surface asks of a backend instance, whatever protocol the caller speaks.

One :class:`Backend` per route protocol (:mod:`gateway.backends.triton`,
:mod:`gateway.backends.tfserving`, :mod:`gateway.backends.rest`), chosen per instance by
:class:`gateway.backends.kinds.Backends`. Each answers every caller API: natively (the
caller's bytes forwarded, version pinned), translated into its own protocol, or refused with
an error that says what to call instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from gateway import codec
from gateway.backends.channels import Metadata
from gateway.table import Instance

T = TypeVar("T")


@dataclass
class Call:
    """One caller request to forward, shared by every attempt of the router (failover)."""

    model: str
    #: The version the router chose.
    version: int
    #: The caller's method name (``Predict``, ``ModelConfig``, ...).
    method: str
    #: The caller's message as received.
    request: bytes
    #: ``request`` with :attr:`version` pinned: what a backend of the caller's protocol gets.
    forward: bytes
    metadata: Metadata | None
    _translations: dict[Any, Any] = field(default_factory=dict, repr=False)

    def translated(self, translation: Callable[[bytes, str, int], T]) -> T:
        """``translation(request, model, version)``, computed once for all attempts."""
        if translation not in self._translations:
            self._translations[translation] = translation(self.request, self.model, self.version)
        return cast(T, self._translations[translation])


@dataclass(frozen=True)
class TensorCall:
    """One call on decoded tensors (``Invoke``, plugin models), shared by every attempt."""

    model: str
    version: int
    inputs: codec.Named
    request_id: str
    metadata: Metadata | None
    #: Restricts (and orders) the outputs returned; empty means all of them.
    outputs: Sequence[str] = ()


class Backend(ABC):
    """How the gateway calls one instance of one protocol. Every method is one attempt."""

    # -- tensorflow.serving.PredictionService ---------------------------------------------

    @abstractmethod
    async def tfs_predict(self, call: Call, instance: Instance, budget: float) -> bytes:
        """PredictRequest -> PredictResponse."""

    @abstractmethod
    async def tfs_metadata(self, call: Call, instance: Instance, budget: float) -> bytes:
        """GetModelMetadataRequest -> GetModelMetadataResponse."""

    @abstractmethod
    async def tfs_only(self, call: Call, instance: Instance, budget: float) -> bytes:
        """The methods only TF-Serving has (Classify, Regress, MultiInference)."""

    # -- inference.GRPCInferenceService (KServe v2) ---------------------------------------

    @abstractmethod
    async def kserve_infer(self, call: Call, instance: Instance, budget: float) -> bytes:
        """ModelInferRequest -> ModelInferResponse."""

    @abstractmethod
    async def kserve_metadata(self, call: Call, instance: Instance, budget: float) -> bytes:
        """ModelMetadataRequest -> ModelMetadataResponse."""

    @abstractmethod
    async def kserve_only(self, call: Call, instance: Instance, budget: float) -> bytes:
        """The methods only KServe backends have (ModelConfig, ModelStatistics)."""

    # -- decoded tensors (Invoke, and plugin models on any surface) -----------------------

    @abstractmethod
    async def infer(self, call: TensorCall, instance: Instance, budget: float) -> codec.Named:
        """Run ``call.inputs`` through the model version; return its outputs."""


#: The backend method that serves one caller API, e.g. ``lambda backend: backend.tfs_predict``.
Api = Callable[[Backend], Callable[[Call, Instance, float], Awaitable[bytes]]]
