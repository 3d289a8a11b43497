"""The one error mapping, bounded messages, parse failures behind the partial parse, the
errors metric by source, and the log context."""

from __future__ import annotations

import asyncio
import logging

import grpc
from tritonclient.grpc import service_pb2 as kserve

from gateway.backends.rest import grpc_code
from gateway.backends.wire import length_delimited
from gateway.errors import (
    MESSAGE_BYTES,
    BackendStatusError,
    ModelNotFoundError,
    capped,
    status_of,
)
from protos.modelgate.v1 import gateway_pb2
from protos.tfs.tensorflow_serving.apis import predict_pb2
from registry import logs
from registry.errors import ZooKeeperUnavailableError
from tests.gateway.conftest import ADD_ONE, DOUBLE_MODEL, raw_status
from tests.servers.zk import wait_for

KSERVE = "/inference.GRPCInferenceService/"
TFS = "/tensorflow.serving.PredictionService/"


def test_status_of_maps_modelgate_errors_and_hides_unknown_ones(caplog):
    assert status_of(ModelNotFoundError("model 'x' is not known")) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'x' is not known",
    )
    assert status_of(ZooKeeperUnavailableError("zk down"))[0] == grpc.StatusCode.UNAVAILABLE
    err = BackendStatusError(grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'WRONG'", "h:1")
    assert status_of(err) == (grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'WRONG'")
    with caplog.at_level(logging.ERROR, logger="gateway.errors"):
        try:
            raise KeyError("secret internals")
        except KeyError as exc:
            code, message = status_of(exc, where="kserve m")
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message
    assert "kserve m" in caplog.text and "KeyError" in caplog.text  # traceback logged


def test_http_statuses_map_to_grpc_codes():
    assert grpc_code(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(429) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(503) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(418) == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_code(500) == grpc.StatusCode.INTERNAL


def test_log_context_is_per_call():
    formatter = logs.ContextFormatter("%(message)s")
    record = logging.LogRecord("gateway.router", logging.INFO, __file__, 1, "hello", None, None)

    async def both() -> list[str]:
        both_set = asyncio.Barrier(2)  # each call formats only after the other set its context

        async def call(model: str) -> str:
            logs.set_call(model, "3", "rid-1")
            await asyncio.wait_for(both_set.wait(), 10)
            return formatter.format(record)

        return await asyncio.gather(asyncio.create_task(call("a")), asyncio.create_task(call("b")))

    assert asyncio.run(both()) == [
        "hello [model=a version=3 request_id=rid-1]",
        "hello [model=b version=3 request_id=rid-1]",
    ]
    assert formatter.format(record) == "hello"  # nothing leaks outside a call
    assert '"model": "a"' not in logs.JsonFormatter().format(record)


def test_shown_bounds_a_value_and_keeps_it_valid_utf8():
    assert capped("add_one") == "add_one"
    long = "é" * 100  # 200 UTF-8 bytes
    cut = capped(long, limit=51)
    assert len(cut.encode()) <= 51 and cut.endswith("\u2026") and cut.startswith("é" * 24)
    assert capped(b"\xffab") == "\ufffdab" and capped("a\ud800b") == "a?b"
    code, message = status_of(ModelNotFoundError("x" * 100_000))
    assert code == grpc.StatusCode.NOT_FOUND and len(message.encode()) <= MESSAGE_BYTES


def wait_errors(gateway, labels: str, count: int) -> None:
    """Wait until ``modelgate_gateway_errors_total`` for "model version surface code source"
    is ``count`` (a call is counted just after its answer is sent)."""
    names = ("model", "version", "surface", "code", "source")
    sample = dict(zip(names, labels.split(), strict=True))
    wait_for(
        lambda: gateway.metric("modelgate_gateway_errors_total", sample) == count,
        what=f"{count} errors {labels}",
    )


def test_passthrough_bytes_that_do_not_parse_are_invalid_argument(routed):
    """The routing fields parse, the rest does not: the backend's INTERNAL ("Unable to parse
    request") becomes the caller's INVALID_ARGUMENT; the backend's own errors keep theirs."""
    valid = kserve.ModelInferRequest(model_name=ADD_ONE).SerializeToString()
    broken = valid + length_delimited(5, b"\xff\xff\xff")  # an `inputs` entry that is garbage
    code, message = raw_status(routed.address, KSERVE + "ModelInfer", broken)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("ModelInferRequest does not parse as protobuf")
    # TF-Serving passthrough (the double): the same rule
    request = predict_pb2.PredictRequest()
    request.model_spec.name = DOUBLE_MODEL
    code, message = raw_status(
        routed.address, TFS + "Predict", request.SerializeToString() + length_delimited(2, b"\xff")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("PredictRequest does not parse as protobuf")
    wait_errors(routed, f"{ADD_ONE} 2 kserve INVALID_ARGUMENT gateway", 1)
    wait_errors(routed, f"{DOUBLE_MODEL} 1 tfserving INVALID_ARGUMENT gateway", 1)
    # a backend's own answer is counted as the backend's
    wrong = kserve.ModelInferRequest(model_name=ADD_ONE)
    wrong.inputs.add(name="WRONG", datatype="FP32", shape=[1]).contents.fp32_contents.append(1)
    code, message = raw_status(routed.address, KSERVE + "ModelInfer", wrong.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "WRONG" in message
    wait_errors(routed, f"{ADD_ONE} 2 kserve INVALID_ARGUMENT backend", 1)
    wait_errors(routed, f"{ADD_ONE} 2 kserve INVALID_ARGUMENT gateway", 1)
    assert routed.metric(
        "modelgate_gateway_requests_total",
        {"model": ADD_ONE, "version": "2", "surface": "kserve", "code": "INVALID_ARGUMENT"},
    ) == 2  # fmt: skip


def test_echoed_values_are_bounded(routed):
    """A 100 KB name, label, version or tensor name comes back as a short message with the
    real code, not as RESOURCE_EXHAUSTED for oversized trailers."""
    huge = "n" * 100_000
    tfs = predict_pb2.PredictRequest()
    tfs.model_spec.name = huge
    labelled = predict_pb2.PredictRequest()
    labelled.model_spec.name = ADD_ONE
    labelled.model_spec.version_label = huge
    wrong_input = kserve.ModelInferRequest(model_name=ADD_ONE)
    # NOTE: Triton echoes the input name; over 16 KB its answer exceeds the gateway's own
    # channel's trailer limit, so a 5 KB name shows the bound on a backend's message
    wrong_input.inputs.add(
        name="i" * 5000, datatype="FP32", shape=[1]
    ).contents.fp32_contents.append(1)
    translated = kserve.ModelInferRequest(model_name=DOUBLE_MODEL)
    translated.inputs.add(name=huge, datatype="FP128", shape=[1]).contents.fp32_contents.append(1)
    cases = [
        (KSERVE + "ModelInfer", kserve.ModelInferRequest(model_name=huge), "NOT_FOUND"),
        (KSERVE + "ModelInfer",
         kserve.ModelInferRequest(model_name=ADD_ONE, model_version=huge), "NOT_FOUND"),
        (KSERVE + "ModelInfer",
         kserve.ModelInferRequest(model_name=ADD_ONE, model_version="9" * 5000),
         "INVALID_ARGUMENT"),
        (KSERVE + "ModelInfer", wrong_input, "INVALID_ARGUMENT"),  # Triton's own message
        (KSERVE + "ModelInfer", translated, "INVALID_ARGUMENT"),  # the codec's message
        (TFS + "Predict", tfs, "NOT_FOUND"),
        (TFS + "Predict", labelled, "NOT_FOUND"),
        ("/modelgate.v1.Gateway/Invoke", gateway_pb2.InvokeRequest(model=huge), "NOT_FOUND"),
        ("/modelgate.v1.Gateway/Invoke",
         gateway_pb2.InvokeRequest(model=ADD_ONE, version=huge), "INVALID_ARGUMENT"),
    ]  # fmt: skip
    for method, request, expected in cases:
        code, message = raw_status(routed.address, method, request.SerializeToString())
        assert code.name == expected, (method, code, message[:200])
        assert len(message.encode()) <= MESSAGE_BYTES, method
        assert "\u2026" in message, message  # the value was cut, visibly
