"""Errors and metadata in the peer server's own words: what a real Triton (2.51) and the
TF-Serving double answer for the same condition comes first in the gateway's message,
then modelgate's hint; an unknown TF-Serving ``signature_name`` is refused as TF-Serving
refuses it; ServerMetadata lists only extensions the gateway serves."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2 as kserve

from protos.tfs.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from tests.gateway.conftest import ADD_ONE, DOUBLE_MODEL

KSERVE = "/inference.GRPCInferenceService/"
TFS = "/tensorflow.serving.PredictionService/"


def status(address: str, method: str, request: object) -> tuple[grpc.StatusCode, str]:
    """The code and message ``address`` answers ``request`` with (OK and "" on success)."""
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(method)(request.SerializeToString(), timeout=20)  # type: ignore[attr-defined]
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def predict(model: str, version: int | None = None, label: str = "", signature: str = ""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature
    name = "x" if model == DOUBLE_MODEL else "INPUT0"
    request.inputs[name].dtype = 1  # DT_FLOAT
    request.inputs[name].tensor_shape.dim.add(size=1)
    request.inputs[name].float_val.append(1.0)
    return request


def test_kserve_unknown_model_and_version_in_tritons_words(routed, triton_a):
    """The same request to the real Triton and to the gateway: Triton's message first."""
    cases = [
        ("ModelInfer", kserve.ModelInferRequest(model_name="nope")),
        ("ModelInfer", kserve.ModelInferRequest(model_name="nope", model_version="3")),
        ("ModelInfer", kserve.ModelInferRequest(model_name=ADD_ONE, model_version="9")),
        ("ModelMetadata", kserve.ModelMetadataRequest(name="nope")),
        ("ModelMetadata", kserve.ModelMetadataRequest(name=ADD_ONE, version="9")),
        ("ModelConfig", kserve.ModelConfigRequest(name=ADD_ONE, version="9")),
    ]
    for method, request in cases:
        triton_code, triton_words = status(triton_a.address, KSERVE + method, request)
        code, message = status(routed.address, KSERVE + method, request)
        assert triton_code == code == grpc.StatusCode.NOT_FOUND, (method, request)
        assert message.startswith(triton_words + " (modelgate: "), (message, triton_words)
    # the hint is modelgate's: what is routable
    _, message = status(routed.address, KSERVE + "ModelInfer", cases[2][1])
    assert message == (
        f"Request for unknown model: '{ADD_ONE}' version 9 is not found "
        f"(modelgate: model '{ADD_ONE}' has no version 9 (versions: 1, 2))"
    )
    # the official client sees the same
    client = triton_grpc.InferenceServerClient(routed.address)
    x = triton_grpc.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(triton_grpc.InferenceServerException) as err:
        client.infer("nope", [x])
    assert err.value.message().startswith("Request for unknown model: 'nope' is not found")
    client.close()


def test_tfserving_unknown_model_version_and_label_in_tfservings_words(routed, tfs_double):
    """The same request to the TF-Serving double and to the gateway: its message first."""
    for model, version in (("nope", None), ("nope", 3), (DOUBLE_MODEL, 9)):
        for method, request in (
            ("Predict", predict(model, version)),
            ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest()),
        ):
            request.model_spec.name = model  # type: ignore[attr-defined]
            if version is not None:
                request.model_spec.version.value = version  # type: ignore[attr-defined]
            double_code, double_words = status(tfs_double.address, TFS + method, request)
            code, message = status(routed.address, TFS + method, request)
            assert double_code == code == grpc.StatusCode.NOT_FOUND, (method, model, version)
            assert message.startswith(double_words + " (modelgate: "), (message, double_words)
    assert status(routed.address, TFS + "Predict", predict("nope", 3)) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(nope, 3) (modelgate: model 'nope' is not "
        "known to the gateway; ListModels or RepositoryIndex lists the routable models)",
    )
    # TF-Serving's words for a label; the code stays NOT_FOUND (TF-Serving: INVALID_ARGUMENT)
    assert status(routed.address, TFS + "Predict", predict(ADD_ONE, label="beta")) == (
        grpc.StatusCode.NOT_FOUND,
        "Unrecognized servable version label: beta (modelgate: model "
        f"'{ADD_ONE}' has no version labelled 'beta' (labels: canary, stable))",
    )


def test_unknown_signature_name_is_refused_in_tfservings_words(routed):
    for model in (DOUBLE_MODEL, ADD_ONE):  # TF-Serving-hosted, and Triton-hosted (translated)
        code, message = status(routed.address, TFS + "Predict", predict(model, signature="nope"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, model
        assert message.startswith('Serving signature key "nope" not found. (modelgate: ')
        assert "has the signatures serving_default" in message
        for signature in ("", "serving_default"):  # the default, named or not, is served
            with grpc.insecure_channel(routed.address) as channel:
                raw = channel.unary_unary(TFS + "Predict")
                answer = raw(predict(model, signature=signature).SerializeToString(), timeout=20)
            response = predict_pb2.PredictResponse.FromString(answer)
            assert response.model_spec.signature_name == "serving_default"


def test_server_metadata_answers_as_a_triton_compatible_server(routed, triton_a):
    gateway = triton_grpc.InferenceServerClient(routed.address).get_server_metadata()
    triton = triton_grpc.InferenceServerClient(triton_a.address).get_server_metadata()
    assert gateway.name == "modelgate" and gateway.version
    # only extensions a real Triton has, and the ones the gateway serves end to end
    assert set(gateway.extensions) <= set(triton.extensions)
    assert {"model_configuration", "statistics", "parameters"} <= set(gateway.extensions)
    assert not {"system_shared_memory", "cuda_shared_memory", "model_repository"} & set(
        gateway.extensions
    )
