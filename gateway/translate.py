"""Protocol translation: TF-Serving Predict <-> KServe v2 ModelInfer (tensors both ways), and
model metadata (TF SignatureDef <-> KServe tensor metadata)."""

from __future__ import annotations

from tritonclient.grpc import service_pb2 as kserve

from gateway import codec
from gateway.backends.wire import parse
from protos.tfs.tensorflow.core.protobuf import meta_graph_pb2
from protos.tfs.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2


def infer_to_predict(request: bytes, name: str, version: int) -> tuple[bytes, list[str], str]:
    """ModelInferRequest bytes -> (PredictRequest bytes, requested outputs, request id)."""
    req = parse(kserve.ModelInferRequest, request, "ModelInferRequest")
    out = predict_pb2.PredictRequest()
    out.model_spec.name = name
    out.model_spec.version.value = version
    for tensor_name, arr in codec.kserve_request_inputs(req):
        out.inputs[tensor_name].CopyFrom(codec.array_to_tf(tensor_name, arr))
    requested = [o.name for o in req.outputs]
    out.output_filter.extend(requested)
    return out.SerializeToString(), requested, req.id


def predict_response_to_infer(
    response: bytes, name: str, version: int, requested: list[str], request_id: str
) -> bytes:
    resp = parse(predict_pb2.PredictResponse, response, "PredictResponse from the backend")
    out = kserve.ModelInferResponse(model_name=name, model_version=str(version), id=request_id)
    outputs = {k: codec.tf_to_array(k, t) for k, t in resp.outputs.items()}
    codec.add_kserve_outputs(out, codec.select(name, outputs, requested))
    return out.SerializeToString()


def predict_to_infer(request: bytes, name: str, version: int) -> tuple[bytes, str]:
    """PredictRequest bytes -> (ModelInferRequest bytes, signature name)."""
    req = parse(predict_pb2.PredictRequest, request, "PredictRequest")
    out = kserve.ModelInferRequest(model_name=name, model_version=str(version))
    codec.add_kserve_inputs(
        out, [(k, codec.tf_to_array(k, v)) for k, v in sorted(req.inputs.items())]
    )
    for output in req.output_filter:
        out.outputs.add(name=output)
    return out.SerializeToString(), req.model_spec.signature_name


def infer_response_to_predict(response: bytes, name: str, version: int, signature: str) -> bytes:
    resp = parse(kserve.ModelInferResponse, response, "ModelInferResponse from the backend")
    out = predict_pb2.PredictResponse()
    out.model_spec.name = name
    out.model_spec.version.value = version
    out.model_spec.signature_name = signature or "serving_default"
    for tensor_name, arr in codec.kserve_response_outputs(resp):
        out.outputs[tensor_name].CopyFrom(codec.array_to_tf(tensor_name, arr))
    return out.SerializeToString()


# -- metadata ------------------------------------------------------------------------------


def metadata_request_to_tf(name: str, version: int) -> bytes:
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = name
    req.model_spec.version.value = version
    return req.SerializeToString()


def tf_metadata_to_kserve(response: bytes, name: str, version: int) -> bytes:
    """GetModelMetadataResponse (serving_default signature) -> ModelMetadataResponse."""
    resp = parse(get_model_metadata_pb2.GetModelMetadataResponse, response, "metadata")
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    packed = resp.metadata.get("signature_def")
    if packed is not None and packed.Is(sigmap.DESCRIPTOR):
        sigmap = parse(get_model_metadata_pb2.SignatureDefMap, packed.value, "signature_def")
    out = kserve.ModelMetadataResponse(
        name=name, versions=[str(version)], platform="tensorflow_savedmodel"
    )
    sigs = sigmap.signature_def
    sig = sigs.get("serving_default") or (sigs[sorted(sigs)[0]] if sigs else None)
    if sig is not None:
        for key, info in sorted(sig.inputs.items()):
            out.inputs.add(
                name=key, datatype=codec.kserve_datatype_of_tf(info.dtype), shape=_dims(info)
            )
        for key, info in sorted(sig.outputs.items()):
            out.outputs.add(
                name=key, datatype=codec.kserve_datatype_of_tf(info.dtype), shape=_dims(info)
            )
    return out.SerializeToString()


def _dims(info: meta_graph_pb2.TensorInfo) -> list[int]:
    if not info.HasField("tensor_shape") or info.tensor_shape.unknown_rank:
        return [-1]
    return [d.size for d in info.tensor_shape.dim]


def kserve_metadata_to_tf(response: bytes, name: str, version: int) -> bytes:
    """ModelMetadataResponse -> GetModelMetadataResponse with one serving_default signature."""
    resp = parse(kserve.ModelMetadataResponse, response, "metadata")
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for tensors, target in ((resp.inputs, sig.inputs), (resp.outputs, sig.outputs)):
        for t in tensors:
            info = target[t.name]
            info.name = t.name
            info.dtype = codec.tf_dtype_of_kserve(t.datatype)
            for d in t.shape:
                info.tensor_shape.dim.add(size=d)
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    sigmap.signature_def["serving_default"].CopyFrom(sig)
    out = get_model_metadata_pb2.GetModelMetadataResponse()
    out.model_spec.name = name
    out.model_spec.version.value = version
    out.metadata["signature_def"].Pack(sigmap)
    return out.SerializeToString()
