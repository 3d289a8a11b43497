"""Partial messages: only the routing fields of each request, for a fast parse.

Each class below has the field numbers of the real message for the fields the gateway
routes on and nothing else; parsing skips every other field (the tensors). They live in a
private descriptor pool so they never clash with the real messages (or reflection).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

_OPT = F.LABEL_OPTIONAL
_REP = F.LABEL_REPEATED


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="modelgate_partial.proto", package="modelgate.partial", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    message("Int64Value", ("value", 1, F.TYPE_INT64, _OPT, ""))
    # tensorflow.serving.ModelSpec
    message(
        "ModelSpec",
        ("name", 1, F.TYPE_STRING, _OPT, ""),
        ("version", 2, F.TYPE_MESSAGE, _OPT, ".modelgate.partial.Int64Value"),
        ("signature_name", 3, F.TYPE_STRING, _OPT, ""),
        ("version_label", 4, F.TYPE_STRING, _OPT, ""),
    )
    # PredictRequest, ClassificationRequest, RegressionRequest, GetModelMetadataRequest
    message("TfsRequest", ("model_spec", 1, F.TYPE_MESSAGE, _OPT, ".modelgate.partial.ModelSpec"))
    # MultiInferenceRequest: repeated InferenceTask{model_spec = 1}
    message("TfsMultiRequest", ("tasks", 1, F.TYPE_MESSAGE, _REP, ".modelgate.partial.TfsRequest"))
    # ModelInferRequest and ModelReady/Metadata/Config/StatisticsRequest: name 1, version 2
    message(
        "KServeRequest",
        ("model_name", 1, F.TYPE_STRING, _OPT, ""),
        ("model_version", 2, F.TYPE_STRING, _OPT, ""),
    )
    return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def _cls(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"modelgate.partial.{name}"))


TfsRequest = _cls("TfsRequest")
TfsMultiRequest = _cls("TfsMultiRequest")
KServeRequest = _cls("KServeRequest")
