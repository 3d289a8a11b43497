"""Record validation and serialisation (no ZooKeeper needed)."""

import pytest

from registry import InvalidRecordError, layout
from registry.errors import InvalidArgumentError
from registry.records import Model, ModelVersion, Route, Service


def test_round_trip_through_bytes():
    model = Model(name="resnet", backend="triton", replicas=3, traffic={"1": 80, "2": 20})
    assert Model.from_bytes("/models/resnet", model.to_bytes("/models/resnet")) == model


def test_invalid_data_names_the_path():
    with pytest.raises(InvalidRecordError, match=r"/models/x.*replicas"):
        Model.from_bytes("/models/x", b'{"name": "x", "backend": "triton", "replicas": -1}')


def test_not_json_names_the_path():
    with pytest.raises(InvalidRecordError, match=r"invalid record at /routes/m/1/w"):
        Route.from_bytes("/routes/m/1/w", b"not json")


def test_mutated_record_is_refused_before_write():
    version = ModelVersion(version=1, artifact_uri="file:///m.tar.gz")
    object.__setattr__(version, "version", 0)  # bypass assignment validation
    with pytest.raises(InvalidRecordError, match=r"/models/m/versions/1.*version"):
        version.to_bytes("/models/m/versions/1")


def test_service_urls_must_be_http():
    with pytest.raises(ValueError, match="urls"):
        Service(name="ocr", urls=["ftp://host/x"])


@pytest.mark.parametrize("bad", ["", "UPPER", "-lead", "a/b", "x" * 64, "sp ace"])
def test_layout_rejects_bad_names(bad):
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        layout.model(bad)


def test_layout_paths():
    assert layout.route("m", 2, "host:9000") == "/routes/m/2/host:9000"
    assert layout.assignment("w1", "m", 3) == "/assignments/w1/m@3"
    assert layout.parse_assignment_key("my.model@12") == ("my.model", 12)
    with pytest.raises(InvalidArgumentError):
        layout.parse_assignment_key("m@x")
    with pytest.raises(InvalidArgumentError, match="version"):
        layout.version("m", 0)
