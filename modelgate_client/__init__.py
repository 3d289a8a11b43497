"""modelgate_client: a thin, typed client of modelgate's own ``modelgate.v1.Gateway`` API.

::

    import numpy as np
    from modelgate_client import GatewayClient

    with GatewayClient("gateway:8500", timeout=5.0) as client:
        result = client.invoke("add_one", {"INPUT0": np.array([1, 2, 3], np.float32)})
        print(result.version, result.outputs["OUTPUT0"])   # 1 [2. 3. 4.]
        for model in client.list_models():
            print(model.name, model.ready_instances)

Existing TF-Serving and KServe v2 (``tritonclient.grpc``) clients need no wrapper: point
them at the gateway's address. See docs/clients.md.
"""

from modelgate_client.client import (
    NO_RETRY,
    AsyncGatewayClient,
    GatewayClient,
    InvokeResult,
    ModelInfo,
    RetryPolicy,
    VersionInfo,
)
from modelgate_client.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    GatewayError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)
from modelgate_client.tensors import DATATYPES, decode_outputs, encode_inputs

__all__ = [
    "DATATYPES",
    "NO_RETRY",
    "AsyncGatewayClient",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "GatewayClient",
    "GatewayError",
    "InvalidArgumentError",
    "InvokeResult",
    "ModelInfo",
    "NotFoundError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "UnavailableError",
    "UnimplementedError",
    "VersionInfo",
    "decode_outputs",
    "encode_inputs",
]
