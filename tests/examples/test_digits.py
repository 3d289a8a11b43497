"""The digits example: trained model on the real Triton, plugin decoding images and URLs."""

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from examples.digits import train as train_module
from examples.digits.images import render
from tests.examples.digits_helpers import DIGITS, serve_files
from udl import InvalidInput, Request, Response
from udl.loader import load_plugin
from udl.package import pack


@pytest.fixture(scope="module")
def split():
    return train_module.split()


@pytest.fixture(scope="module")
def digits_model(triton, split):
    x_train, _, y_train, _ = split
    weights = train_module.train(x_train, y_train)
    train_module.write_model(triton.model_repository, weights, name="digits_example")
    client = triton_grpc.InferenceServerClient(triton.address)
    client.load_model("digits_example")
    yield client, weights
    client.unload_model("digits_example")
    client.close()


@pytest.fixture
async def plugin(tmp_path):
    data = pack(DIGITS / "plugin")
    with ThreadPoolExecutor(2) as pool:
        loaded = await load_plugin(
            data, hashlib.sha256(data).hexdigest(), {"url_timeout_s": 3}, tmp_path / "cache", pool
        )
        yield loaded
        await loaded.close()


def test_held_out_accuracy_is_at_least_90_percent(split):
    x_train, x_test, y_train, y_test = split
    weights = train_module.train(x_train, y_train)
    assert train_module.accuracy(weights, x_test, y_test) >= 0.90


async def _classify(plugin, client, request):
    request = await plugin.preprocess(request)
    x = triton_grpc.InferInput("PIXELS", list(request.tensors["PIXELS"].shape), "FP32")
    x.set_data_from_numpy(request.tensors["PIXELS"])
    result = client.infer("digits_example", [x])
    response = Response(
        model="digits_example", tensors={"PROBABILITIES": result.as_numpy("PROBABILITIES")}
    )
    response = await plugin.postprocess(response, request)
    assert response.content_type == "application/json"
    return json.loads(response.payload)


async def test_images_as_bytes_and_as_urls(plugin, digits_model, split, tmp_path):
    client, _ = digits_model
    _, x_test, _, y_test = split
    # One held-out image of each class as PNG bytes, and as a JPEG behind a loopback URL.
    picks = [int(np.flatnonzero(y_test == d)[0]) for d in range(10)]
    folder = tmp_path / "www"
    folder.mkdir()
    for i in picks:
        (folder / f"{i}.jpg").write_bytes(render(x_test[i], "JPEG", scale=8))
    correct_bytes = correct_urls = 0
    with serve_files(folder) as base:
        for i in picks:
            answer = await _classify(
                plugin,
                client,
                Request(
                    model="digits_example", payload=render(x_test[i]), content_type="image/png"
                ),
            )
            assert 0 <= answer["confidence"] <= 1
            correct_bytes += answer["digit"] == y_test[i]
            answer = await _classify(
                plugin,
                client,
                Request(
                    model="digits_example",
                    payload=f"{base}/{i}.jpg".encode(),
                    content_type="text/uri-list",
                ),
            )
            correct_urls += answer["digit"] == y_test[i]
    assert correct_bytes >= 9 and correct_urls >= 9


async def test_whole_held_out_set_through_png(plugin, digits_model, split):
    client, _ = digits_model
    _, x_test, _, y_test = split
    correct = 0
    for pixels, label in zip(x_test, y_test, strict=True):
        answer = await _classify(
            plugin,
            client,
            Request(model="digits_example", payload=render(pixels), content_type="image/png"),
        )
        correct += answer["digit"] == label
    assert correct / len(y_test) >= 0.90


async def test_json_pixels(plugin, digits_model, split):
    client, _ = digits_model
    _, x_test, _, y_test = split
    payload = json.dumps({"pixels": x_test[0].tolist()}).encode()
    answer = await _classify(
        plugin, client, Request(model="d", payload=payload, content_type="application/json")
    )
    assert answer["digit"] == y_test[0]


@pytest.mark.parametrize(
    ("payload", "content_type", "message"),
    [
        (b"\x89PNG\r\n\x1a\nnot really", "image/png", "not a readable image"),
        (b"", "image/png", "empty payload"),
        (b"ftp://example.invalid/x.png", "text/uri-list", "scheme 'ftp' not allowed"),
        (b"file:///etc/passwd", "text/uri-list", "scheme 'file' not allowed"),
        (b'{"pixels": [1, 2, 3]}', "application/json", "expected 64 pixels"),
        (
            b'{"pixels": ' + json.dumps([99] * 64).encode() + b"}",
            "application/json",
            "between 0 and 16",
        ),
        (b"{nope", "application/json", "must be"),
    ],
)
async def test_bad_input_says_why(plugin, payload, content_type, message):
    with pytest.raises(InvalidInput, match=message):
        await plugin.preprocess(Request(model="d", payload=payload, content_type=content_type))


async def test_unreachable_url_is_invalid_input(plugin, tmp_path):
    with serve_files(tmp_path) as base:
        with pytest.raises(InvalidInput, match="HTTP 404"):
            await plugin.preprocess(
                Request(
                    model="d", payload=f"{base}/missing.png".encode(), content_type="text/uri-list"
                )
            )
