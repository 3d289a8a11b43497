"""Bounded, seeded fuzzing of the gRPC surfaces: mutated valid requests sent as raw bytes
through a real gateway (real Triton, the TF-Serving double) are answered OK or with a
caller-side code, never INTERNAL or UNKNOWN, and the gateway answers correctly afterwards."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kserve

from protos.modelgate.v1 import gateway_pb2
from protos.tfs.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from tests.gateway.conftest import ADD_ONE, DOUBLE_MODEL

SEED = 13
#: Mutations per valid request (8 requests; 6,000 calls, ~6 s on an idle 2-core machine).
MUTATIONS = 750
#: Calls in flight at once.
BATCH = 48
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
KSERVE = "/inference.GRPCInferenceService/"
TFS = "/tensorflow.serving.PredictionService/"
INVOKE = "/modelgate.v1.Gateway/Invoke"


def model_infer(model: str, name: str, raw: bool) -> bytes:
    request = kserve.ModelInferRequest(model_name=model, id="fuzz")
    tensor = request.inputs.add(name=name, datatype="FP32", shape=[4])
    values = np.arange(4, dtype=np.float32)
    if raw:
        request.raw_input_contents.append(values.tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.tolist())
    request.outputs.add(name="OUTPUT0" if model == ADD_ONE else "y")
    return request.SerializeToString()


def predict(model: str, name: str) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    tensor = request.inputs[name]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add(size=4)
    tensor.tensor_content = np.arange(4, dtype=np.float32).tobytes()
    return request.SerializeToString()


def metadata(model: str) -> bytes:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    request.model_spec.version.value = 1
    return request.SerializeToString()


def invoke(model: str, name: str) -> bytes:
    tensor = {"name": name, "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    return gateway_pb2.InvokeRequest(
        model=model,
        version="1",
        payload=json.dumps({"inputs": [tensor]}).encode(),
        content_type="application/json",
    ).SerializeToString()


VALID: list[tuple[str, bytes]] = [
    (KSERVE + "ModelInfer", model_infer(ADD_ONE, "INPUT0", raw=True)),  # passthrough
    (KSERVE + "ModelInfer", model_infer(DOUBLE_MODEL, "x", raw=False)),  # translated
    (TFS + "Predict", predict(DOUBLE_MODEL, "x")),  # passthrough
    (TFS + "Predict", predict(ADD_ONE, "INPUT0")),  # translated
    (TFS + "GetModelMetadata", metadata(DOUBLE_MODEL)),
    (TFS + "GetModelMetadata", metadata(ADD_ONE)),
    (INVOKE, invoke(ADD_ONE, "INPUT0")),
    (INVOKE, invoke(DOUBLE_MODEL, "x")),
]


def _flip(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _special(rng: random.Random, data: bytearray) -> None:
    data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))


def _truncate(rng: random.Random, data: bytearray) -> None:
    del data[rng.randrange(len(data)) :]


def _insert(rng: random.Random, data: bytearray) -> None:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.randbytes(rng.randint(1, 8))


def _duplicate(rng: random.Random, data: bytearray) -> None:
    start = rng.randrange(len(data))
    data[start:start] = data[start : start + rng.randint(1, 16)]


MUTATORS: tuple[Callable[[random.Random, bytearray], None], ...] = (
    _flip, _special, _truncate, _insert, _duplicate,
)  # fmt: skip


def mutated(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if out:
            rng.choice(MUTATORS)(rng, out)
    return bytes(out)


def test_mutated_requests_get_caller_side_codes_and_the_gateway_survives(routed):
    rng = random.Random(SEED)
    calls = [(method, mutated(rng, data)) for method, data in VALID for _ in range(MUTATIONS)]
    rng.shuffle(calls)
    codes: dict[grpc.StatusCode, int] = {}
    bad: list[str] = []
    with grpc.insecure_channel(routed.address) as channel:
        stubs = {method: channel.unary_unary(method) for method, _ in VALID}
        for start in range(0, len(calls), BATCH):
            batch = calls[start : start + BATCH]
            futures = [(m, p, stubs[m].future(p, timeout=30)) for m, p in batch]
            for method, payload, future in futures:
                try:
                    future.result()
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as err:
                    code, details = err.code(), err.details() or ""
                codes[code] = codes.get(code, 0) + 1
                if code not in ALLOWED:
                    bad.append(f"{method} {code.name} {details[:200]!r} {payload.hex()[:160]}")
        assert not bad, f"{len(bad)} of {len(calls)} answered outside {ALLOWED}:\n" + "\n".join(
            bad[:20]
        )
        # mutations reached past the parse: some calls still succeeded, and some failed
        assert codes.get(grpc.StatusCode.OK, 0) > 0 and len(codes) > 1, codes

        # alive and still correct
        answer = stubs[KSERVE + "ModelInfer"](VALID[0][1], timeout=20)
        response = kserve.ModelInferResponse.FromString(answer)
        out = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
        assert out.tolist() == [10.0, 11.0, 12.0, 13.0]  # version 2 adds 10
        answer = stubs[TFS + "Predict"](VALID[2][1], timeout=20)
        y = predict_pb2.PredictResponse.FromString(answer).outputs["y"]
        assert np.frombuffer(y.tensor_content, dtype=np.float32).tolist() == [0.0, 2.0, 4.0, 6.0]
