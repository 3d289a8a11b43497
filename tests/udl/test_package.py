"""plugin.toml and package validation."""

import io
import zipfile

import pytest

from registry.errors import InvalidArgumentError
from tests.udl.plugins import ECHO, packed, write_plugin
from udl.package import inspect_package, pack, parse_manifest, unpack


def _zip(entries: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in entries.items():
            archive.writestr(name, text)
    return buffer.getvalue()


GOOD_TOML = 'name = "p"\nversion = "1"\nentrypoint = "m:P"\n'


def test_manifest_defaults_and_stage_timeouts():
    manifest = parse_manifest(GOOD_TOML + "timeout_s = 3\n[timeouts]\nload = 30\n")
    assert manifest.executor == "thread"
    assert manifest.timeout("load") == 30
    assert manifest.timeout("preprocess") == 3
    assert (manifest.module, manifest.class_name) == ("m", "P")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "not valid TOML"),
        ('name = "p"\nversion = "1"\n', "entrypoint: Field required"),
        (GOOD_TOML + 'executor = "gpu"\n', "executor"),
        ('name = "P Q"\nversion = "1"\nentrypoint = "m:P"\n', "name"),
        (GOOD_TOML + "surprise = 1\n", "surprise"),
    ],
)
def test_bad_manifest_says_what_is_wrong(text, message):
    with pytest.raises(InvalidArgumentError, match=message):
        parse_manifest(text)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a zip file"),
        (_zip({"m.py": ""}), "no plugin.toml"),
        (_zip({"plugin.toml": GOOD_TOML}), r"no m\.py or m/__init__\.py"),
        (_zip({"plugin.toml": GOOD_TOML, "m.py": "", "../evil.py": ""}), "escapes"),
        (_zip({"plugin.toml": GOOD_TOML, "m.py": "", "/abs.py": ""}), "escapes"),
        (_zip({"plugin.toml": GOOD_TOML, "m.py": "", "C:/evil.py": ""}), "drive letter"),
        (_zip({"plugin.toml": GOOD_TOML, "m.py": "", "sub\\evil.py": ""}), "backslash"),
    ],
)
def test_bad_packages_are_refused(data, message):
    with pytest.raises(InvalidArgumentError, match=message):
        inspect_package(data)


def test_size_limit():
    data = _zip({"plugin.toml": GOOD_TOML, "m.py": "x" * 5000})
    with pytest.raises(InvalidArgumentError, match="limit of 1000 bytes"):
        inspect_package(data, max_bytes=1000)


def test_pack_and_unpack_round_trip(tmp_path):
    folder = write_plugin(tmp_path, "echo", "1.0", "echo_plugin", ECHO, "Echo")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    data, _ = packed(folder)
    assert pack(folder) == data  # deterministic
    manifest = unpack(data, tmp_path / "out")
    assert manifest.entrypoint == "echo_plugin:Echo"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["echo_plugin.py", "plugin.toml"]
