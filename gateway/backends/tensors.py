"""Tensors in, tensors out: one inference call on a Triton (KServe v2) or TF-Serving instance.

Used where the gateway holds decoded tensors (``Invoke``, and plugin models on any surface);
plain KServe/TF-Serving calls to models without a plugin are forwarded as bytes instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from tritonclient.grpc import service_pb2 as kserve

from gateway import codec
from gateway.backends import tfserving, triton
from gateway.backends.channels import ChannelPool, Metadata
from gateway.backends.wire import parse
from gateway.errors import FailedPreconditionError
from gateway.table import Instance
from protos.tfs.tensorflow_serving.apis import predict_pb2


async def infer(
    pool: ChannelPool,
    instance: Instance,
    model: str,
    version: int,
    inputs: codec.Named,
    *,
    request_id: str,
    budget: float,
    metadata: Metadata | None = None,
    outputs: Sequence[str] = (),
) -> codec.Named:
    """Run ``inputs`` through ``model``/``version`` on ``instance``; return its outputs.

    ``outputs`` restricts (and orders) the outputs returned; empty means all of them.
    """
    if instance.protocol == "tfserving":
        preq = predict_pb2.PredictRequest()
        preq.model_spec.name = model
        preq.model_spec.version.value = version
        for name, arr in inputs:
            preq.inputs[name].CopyFrom(codec.array_to_tf(name, arr))
        preq.output_filter.extend(outputs)
        data = await pool.call(
            instance.address, tfserving.PREDICT, preq.SerializeToString(), budget, metadata
        )
        presp = parse(predict_pb2.PredictResponse, data, "PredictResponse from the backend")
        arrays = {k: codec.tf_to_array(k, t) for k, t in presp.outputs.items()}
        return codec.select(model, arrays, list(outputs))
    if instance.protocol == "kserve":
        kreq = kserve.ModelInferRequest(model_name=model, model_version=str(version), id=request_id)
        codec.add_kserve_inputs(kreq, inputs)
        for name in outputs:
            kreq.outputs.add(name=name)
        data = await pool.call(
            instance.address, triton.MODEL_INFER, kreq.SerializeToString(), budget, metadata
        )
        return codec.kserve_response_outputs(
            parse(kserve.ModelInferResponse, data, "ModelInferResponse from the backend")
        )
    raise FailedPreconditionError(
        f"model {model!r} is a third-party REST service: call it with Invoke"
    )
