"""Generate the Python modules under ``protos/``.

Run by the wheel build (``build_backend.py``: into the build directory, so every wheel and
every install from the sdist carries them) and by ``make generate`` (``python -m
protos.generate``: into the source tree, for editable installs). Never committed. This is the
only place that needs ``grpcio-tools`` and ``tensorflow-serving-api``: the installed package
imports neither. Two outputs:

1. ``protos/modelgate/v1/gateway_pb2*.py`` from ``protos/modelgate/v1/gateway.proto``.
2. ``protos/tfs/...``: light TF-Serving stubs. ``tensorflow-serving-api`` ships generated
   modules that import ``tensorflow.core.framework.*``, which initialises all of TensorFlow
   (~4 s, ~550 MB). This step imports them once, at build time, dumps their file
   descriptors into a FileDescriptorSet, renames every file under ``protos/tfs/`` (the proto
   *packages*, and so the wire names such as ``tensorflow.serving.PredictionService``, stay
   the same) and runs ``grpc_tools.protoc --descriptor_set_in`` on it. The result imports
   in a fraction of a second and never touches TensorFlow.

The original, un-renamed descriptor set is kept at ``protos/descriptors/tfserving.pb`` for
clients in other languages (Java, Node) that generate their own stubs.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

REPO = Path(__file__).resolve().parent.parent
GATEWAY_PROTO = REPO / "protos" / "modelgate" / "v1" / "gateway.proto"
TFS_PREFIX = "protos/tfs/"
TFS_MODULES = [
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.regression_pb2",
    "tensorflow_serving.apis.inference_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
]


def _protoc(*args: str) -> None:
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
    argv = ["grpc_tools.protoc", f"-I{include}", *args]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(argv)}")


def _collect(files: list[FileDescriptor]) -> list[descriptor_pb2.FileDescriptorProto]:
    """Return the files and their transitive dependencies, dependencies first."""
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            visit(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        ordered.append(proto)

    for fd in files:
        visit(fd)
    return ordered


def _renamed(name: str) -> str:
    return name if name.startswith("google/protobuf/") else TFS_PREFIX + name


def generate_gateway(out: Path) -> None:
    _protoc(
        f"-I{REPO}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(GATEWAY_PROTO),
    )


def generate_tfserving(out: Path) -> None:
    # Importing these initialises TensorFlow; that is the price paid once, here.
    files = [importlib.import_module(m).DESCRIPTOR for m in TFS_MODULES]
    originals = _collect(files)

    descriptors = out / "protos" / "descriptors"
    descriptors.mkdir(parents=True, exist_ok=True)
    original_set = descriptor_pb2.FileDescriptorSet(file=originals)
    (descriptors / "tfserving.pb").write_bytes(original_set.SerializeToString())

    renamed_set = descriptor_pb2.FileDescriptorSet()
    to_generate = []
    for proto in originals:
        copy = renamed_set.file.add()
        copy.CopyFrom(proto)
        copy.name = _renamed(proto.name)
        del copy.dependency[:]
        copy.dependency.extend(_renamed(d) for d in proto.dependency)
        if copy.name.startswith(TFS_PREFIX):
            to_generate.append(copy.name)
    with tempfile.TemporaryDirectory() as scratch:
        renamed_path = Path(scratch) / "tfserving-renamed.pb"
        renamed_path.write_bytes(renamed_set.SerializeToString())
        _protoc(
            f"--descriptor_set_in={renamed_path}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *to_generate,
        )


def generate(out: Path) -> None:
    """Write the generated modules and descriptor sets under ``out`` (``out/protos/...``)."""
    out.mkdir(parents=True, exist_ok=True)
    generate_gateway(out)
    generate_tfserving(out)


def main() -> None:
    generate(REPO)
    print(f"generated protos/modelgate and protos/tfs ({sys.executable})")


if __name__ == "__main__":
    main()
