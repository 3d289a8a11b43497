"""Loading and running real plugins: executors, errors, timeouts, isolation, fetching."""

import asyncio
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from registry.processes import alive
from tests.udl.plugins import (
    ASYNC_ECHO,
    BROKEN_LOAD,
    ECHO,
    ERRORS,
    NOTHING,
    PRE_ONLY,
    SEES_REQUEST,
    USES_UTILS,
    packed,
    write_plugin,
)
from udl import InvalidInput, Request, Response
from udl.loader import (
    PluginFailedError,
    PluginLoadError,
    PluginTimeoutError,
    fetch_package,
    load_plugin,
)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


async def _load(tmp_path, pool, folder, config=None):
    data, sha = packed(folder)
    return await load_plugin(data, sha, config or {}, tmp_path / "cache", pool)


@pytest.mark.parametrize(
    ("executor", "source", "cls"),
    [("thread", ECHO, "Echo"), ("async", ASYNC_ECHO, "AsyncEcho"), ("process", ECHO, "Echo")],
)
async def test_each_executor_transforms_a_request(tmp_path, pool, executor, source, cls):
    folder = write_plugin(tmp_path / "src", "echo", "1", "echo_plugin", source, cls, executor)
    plugin = await _load(tmp_path, pool, folder, {"scale": 2})
    request = Request(model="m", tensors={"x": np.array([1, 2])}, request_id="r1")
    out = await plugin.preprocess(request)
    np.testing.assert_array_equal(out.tensors["INPUT0"], [2.0, 4.0])
    assert out.tensors["INPUT0"].dtype == np.float32
    response = await plugin.postprocess(
        Response(model="m", tensors={"OUTPUT0": np.array([3, 4])}), request
    )
    if cls == "Echo":
        assert response.payload == b"3,4"
    await plugin.close()


@pytest.fixture
async def errors_plugin(tmp_path, pool):
    folder = write_plugin(tmp_path / "src", "errs", "1", "errs", ERRORS, "Errors", timeout_s=0.5)
    plugin = await _load(tmp_path, pool, folder)
    yield plugin
    await plugin.close()


def _req(mode):
    return Request(model="m", parameters={"mode": mode}, request_id="req-42")


async def test_invalid_input_keeps_the_plugin_message(errors_plugin):
    with pytest.raises(
        InvalidInput, match=r"pixels must be 8x8 \(plugin errs@1 preprocess, request req-42\)"
    ):
        await errors_plugin.preprocess(_req("invalid"))


async def test_bug_names_plugin_stage_and_request_but_not_the_traceback(errors_plugin):
    with pytest.raises(PluginFailedError) as err:
        await errors_plugin.preprocess(_req("bug"))
    assert str(err.value) == "plugin errs@1 preprocess failed (request req-42)"
    assert "secret-internal-detail" not in str(err.value)
    assert err.value.grpc_code.name == "INTERNAL"


async def test_timeout_is_deadline_exceeded(errors_plugin):
    with pytest.raises(
        PluginTimeoutError, match=r"errs@1 preprocess exceeded its 0.5s timeout"
    ) as err:
        await errors_plugin.preprocess(_req("slow"))
    assert err.value.grpc_code.name == "DEADLINE_EXCEEDED"


async def test_wrong_return_type_is_a_plugin_failure(errors_plugin):
    with pytest.raises(PluginFailedError, match=r"returned dict, expected udl\.Request"):
        await errors_plugin.preprocess(_req("wrong-type"))


async def test_plugin_keeps_serving_after_errors(errors_plugin):
    for mode, error in (("invalid", InvalidInput), ("bug", PluginFailedError)):
        with pytest.raises(error):
            await errors_plugin.preprocess(_req(mode))
    assert (await errors_plugin.preprocess(_req("fine"))).parameters == {"mode": "fine"}


FAILS_ON_IMPORT = """
import udl

raise ImportError("needs the torch extra")

class Broken(udl.Plugin):
    pass
"""


@pytest.mark.parametrize("executor", ["thread", "async", "process"])
@pytest.mark.parametrize(
    ("source", "message"),
    [
        (BROKEN_LOAD, "RuntimeError: model file missing"),
        (FAILS_ON_IMPORT, "ImportError: needs the torch extra"),
    ],
    ids=["load-raises", "import-raises"],
)
async def test_failing_load_reports_the_plugins_own_error_for_every_executor(
    tmp_path, pool, executor, source, message
):
    folder = write_plugin(tmp_path / "src", "broken", "1", "broken", source, "Broken", executor)
    with pytest.raises(PluginLoadError) as err:
        await _load(tmp_path, pool, folder)
    assert str(err.value) == f"plugin broken@1 failed to load: {message}"


async def test_two_plugins_shipping_utils_py_are_isolated(tmp_path, pool):
    plugins = []
    for who in ("alpha", "beta"):
        folder = write_plugin(
            tmp_path / "src",
            who,
            "1",
            "main",
            USES_UTILS,
            "UsesUtils",
            extra={"utils.py": f"WHO = {who!r}\n"},
        )
        plugins.append(await _load(tmp_path, pool, folder))
    answers = [
        (await p.postprocess(Response(model="m"), Request(model="m"))).payload for p in plugins
    ]
    assert answers == [b"alpha", b"beta"]
    assert "utils" not in sys.modules and "main" not in sys.modules


def test_fetch_verifies_sha256_and_caches(tmp_path):
    package = tmp_path / "p.zip"
    package.write_bytes(b"payload")
    import hashlib

    sha = hashlib.sha256(b"payload").hexdigest()
    assert fetch_package(f"file://{package}", sha, tmp_path / "cache") == b"payload"
    package.unlink()  # now only the cache has it
    assert fetch_package(f"file://{package}", sha, tmp_path / "cache") == b"payload"
    with pytest.raises(PluginLoadError, match="expected " + "0" * 64):
        fetch_package(f"file://{tmp_path / 'cache' / (sha + '.zip')}", "0" * 64, tmp_path / "c2")


# -- hooks a plugin does not override are skipped --------------------------------------------


@pytest.mark.parametrize("executor", ["thread", "async", "process"])
async def test_hooks_not_overridden_are_skipped_for_every_executor(tmp_path, pool, executor):
    pre = await _load(
        tmp_path,
        pool,
        write_plugin(tmp_path / "a", "pre", "1", "pre", PRE_ONLY, "PreOnly", executor),
    )
    nothing = await _load(
        tmp_path, pool, write_plugin(tmp_path / "b", "no", "1", "no", NOTHING, "Nothing", executor)
    )
    try:
        assert pre.hooks == {"preprocess"} and nothing.hooks == frozenset()
        request, response = Request(model="m", request_id="r1"), Response(model="m")
        # NOTE: a skipped hook hands back the very object it got (nothing crossed a thread
        # or process boundary); a hook that ran in a worker process returns a copy.
        assert await pre.postprocess(response, request) is response
        assert await nothing.preprocess(request) is request
        out = await pre.preprocess(request)
        np.testing.assert_array_equal(out.tensors["INPUT0"], [1.0, 1.0])
    finally:
        await pre.close()
        await nothing.close()


# -- the process executor: worker processes ------------------------------------------------------


async def _process_errors(tmp_path, pool, workers):
    folder = write_plugin(
        tmp_path / "src", "errs", "1", "errs", ERRORS, "Errors", "process", timeout_s=1.0
    )
    data, sha = packed(folder)
    return await load_plugin(data, sha, {}, tmp_path / "cache", pool, process_workers=workers)


async def _pid(plugin, request_id="ok"):
    out = await plugin.preprocess(Request(model="m", parameters={}, request_id=request_id))
    return int(out.parameters["pid"])


async def test_a_crashed_worker_fails_its_call_and_is_replaced(tmp_path, pool, caplog):
    plugin = await _process_errors(tmp_path, pool, 1)
    try:
        first = await _pid(plugin)
        with pytest.raises(PluginFailedError) as err:
            await plugin.preprocess(_req("crash"))
        assert str(err.value) == "plugin errs@1 preprocess failed (request req-42)"
        assert f"plugin errs@1: worker process {first} " in caplog.text
        assert "starting another" in caplog.text
        second = await _pid(plugin)  # waits for the new worker to load the plugin
        assert second != first and not alive(first)
    finally:
        await plugin.close()
    assert not alive(second)


async def test_a_hung_worker_times_out_is_replaced_and_other_workers_keep_serving(tmp_path, pool):
    plugin = await _process_errors(tmp_path, pool, 2)
    try:
        slow = asyncio.ensure_future(plugin.preprocess(_req("slow")))
        # the busy worker is skipped: every call meanwhile goes to the other one
        others = {await _pid(plugin) for _ in range(5)}
        with pytest.raises(PluginTimeoutError, match=r"errs@1 preprocess exceeded its 1s timeout"):
            await slow
        assert len(others) == 1
        (other,) = others
        pids = {await _pid(plugin) for _ in range(6)}
        assert other in pids and alive(other)
    finally:
        await plugin.close()


async def test_calls_queued_behind_a_hung_call_fail_with_plugin_and_stage(tmp_path, pool):
    plugin = await _process_errors(tmp_path, pool, 1)
    try:
        slow = asyncio.ensure_future(plugin.preprocess(_req("slow")))
        queued = asyncio.ensure_future(plugin.preprocess(Request(model="m", request_id="req-43")))
        with pytest.raises(PluginTimeoutError):
            await slow
        # NOTE: its own timeout may fire in the same loop turn as the hung call's
        with pytest.raises((PluginFailedError, PluginTimeoutError)) as err:
            await queued
        assert str(err.value).startswith("plugin errs@1 preprocess ")
        assert str(err.value).endswith("(request req-43)")
        assert await _pid(plugin) > 0  # a new worker serves
    finally:
        await plugin.close()


async def test_process_postprocess_gets_the_request_without_its_tensors(tmp_path, pool):
    folder = write_plugin(
        tmp_path / "src", "sees", "1", "sees", SEES_REQUEST, "SeesRequest", "process"
    )
    plugin = await _load(tmp_path, pool, folder)
    try:
        request = Request(
            model="m", tensors={"INPUT0": np.ones(3, np.float32)}, payload=b"png",
            parameters={"k": "v"}, request_id="r9",
        )  # fmt: skip
        out = await plugin.postprocess(
            Response(model="m", tensors={"OUTPUT0": np.arange(3, dtype=np.float32)}), request
        )
        assert json.loads(out.payload) == {
            "tensors": [], "payload": "png", "parameters": {"k": "v"}, "request_id": "r9"
        }  # fmt: skip
        np.testing.assert_array_equal(out.tensors["OUTPUT0"], [0.0, 1.0, 2.0])
        assert sorted(request.tensors) == ["INPUT0"]  # the caller's request is untouched
    finally:
        await plugin.close()


async def test_close_stops_every_worker_process(tmp_path, pool):
    plugin = await _process_errors(tmp_path, pool, 2)
    pids = {await _pid(plugin) for _ in range(4)}
    await plugin.close()
    assert pids and not any(alive(p) for p in pids)


HANGS = """
import asyncio
import time
import udl

class Hangs(udl.Plugin):
    async def preprocess(self, request):
        await asyncio.sleep(3600)

    def postprocess(self, response, request):
        time.sleep(2)
        return response
"""


async def test_hung_coroutine_and_thread_hooks_time_out_with_plugin_and_stage(tmp_path, pool):
    folder = write_plugin(tmp_path / "src", "hangs", "1", "hangs", HANGS, "Hangs", timeout_s=0.3)
    plugin = await _load(tmp_path, pool, folder)
    try:
        with pytest.raises(
            PluginTimeoutError, match=r"^plugin hangs@1 preprocess exceeded its 0.3s timeout"
        ):
            await plugin.preprocess(Request(model="m", request_id="r1"))
        with pytest.raises(
            PluginTimeoutError, match=r"^plugin hangs@1 postprocess exceeded its 0.3s timeout"
        ):
            await plugin.postprocess(Response(model="m"), Request(model="m", request_id="r2"))
    finally:
        await plugin.close()


EXITS_ON_LOAD = """
import os
import udl

class Exits(udl.Plugin):
    def load(self, config):
        os._exit(5)
"""


async def test_a_process_plugin_whose_load_kills_its_worker_fails_to_load(tmp_path, pool):
    folder = write_plugin(
        tmp_path / "src", "exits", "1", "exits", EXITS_ON_LOAD, "Exits", "process"
    )
    with pytest.raises(PluginLoadError) as err:
        await _load(tmp_path, pool, folder)
    assert str(err.value).startswith("plugin exits@1 failed to load: its worker process ")
