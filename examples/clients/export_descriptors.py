"""Export one FileDescriptorSet with the three services the example clients call.

Run with the repo's virtualenv (after ``make setup``)::

    .venv/bin/python examples/clients/export_descriptors.py examples/clients/build/services.pb

No third-party ``.proto`` file is committed to this repository; the descriptors come from
the packages that already ship them:

- KServe v2 ``inference.GRPCInferenceService``: ``tritonclient.grpc.service_pb2``;
- TF-Serving ``tensorflow.serving.PredictionService``: ``protos/descriptors/tfserving.pb``
  (the original, un-renamed set written by ``python -m protos.generate``);
- ``modelgate.v1.Gateway``: ``protos/modelgate/v1/gateway.proto`` (its generated module).

Only the transitive closure of the three service files is written, dependencies first, so
``protoc --descriptor_set_in`` (Java) and ``@grpc/proto-loader`` (Node) can use it as is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

REPO = Path(__file__).resolve().parents[2]
TFSERVING_SET = REPO / "protos" / "descriptors" / "tfserving.pb"

#: The service files the clients need; everything they import comes along.
SERVICE_FILES = (
    "grpc_service.proto",
    "tensorflow_serving/apis/prediction_service.proto",
    # NOTE: generated with ``-I.`` from the repo root, hence the "protos/" prefix.
    "protos/modelgate/v1/gateway.proto",
)


def _from_module(fd: FileDescriptor, out: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
    if fd.name in out:
        return
    for dep in fd.dependencies:
        _from_module(dep, out)
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    out[fd.name] = proto


def _closure(
    names: tuple[str, ...], files: dict[str, descriptor_pb2.FileDescriptorProto]
) -> list[descriptor_pb2.FileDescriptorProto]:
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            raise SystemExit(f"descriptor for {name!r} not found")
        for dep in files[name].dependency:
            visit(dep)
        ordered.append(files[name])

    for name in names:
        visit(name)
    return ordered


def collect() -> descriptor_pb2.FileDescriptorSet:
    if not TFSERVING_SET.exists():
        raise SystemExit(
            f"{TFSERVING_SET} is missing: run `make generate` (python -m protos.generate)"
        )
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    tfs = descriptor_pb2.FileDescriptorSet.FromString(TFSERVING_SET.read_bytes())
    for proto in tfs.file:
        files.setdefault(proto.name, proto)

    from tritonclient.grpc import service_pb2

    from protos.modelgate.v1 import gateway_pb2

    _from_module(service_pb2.DESCRIPTOR, files)
    _from_module(gateway_pb2.DESCRIPTOR, files)
    return descriptor_pb2.FileDescriptorSet(file=_closure(SERVICE_FILES, files))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the FileDescriptorSet")
    parser.add_argument(
        "--list", action="store_true", help="print the file names that need code generation"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    fds = collect()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(fds.SerializeToString())
    if args.list:
        for proto in fds.file:
            if not proto.name.startswith("google/protobuf/"):
                print(proto.name)


if __name__ == "__main__":
    main()
