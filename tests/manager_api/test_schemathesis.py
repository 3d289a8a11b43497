"""Property-based checks of the OpenAPI schema: generated requests never get a 5xx.

Bounded: a handful of examples per operation and generation mode, with the admin token so
requests get past auth and reach validation and the handlers (against a real ZooKeeper).
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.manager_api.conftest import auth

MAX_EXAMPLES = 12


@pytest.mark.timeout(240)
def test_no_server_errors(client: TestClient, sim_workers):
    sim_workers("w1")
    client.post(
        "/v1/models", json={"name": "m", "backend": "triton", "group": "ads"}, headers=auth("admin")
    )
    client.post("/v1/models/m/versions", json={"artifact_uri": "file:///m"}, headers=auth("admin"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    failures: list[str] = []
    seen: set[int] = set()
    calls = 0

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += exercise(operation.as_strategy(generation_mode=mode), failures, seen)
    assert calls > len(operations)
    assert not failures, "\n".join(failures)
    # the generated requests reached the handlers, not only the validators
    assert {200, 404, 422} <= seen, seen


def exercise(strategy: st.SearchStrategy, failures: list[str], seen: set[int]) -> int:
    """Run up to MAX_EXAMPLES generated cases; record any 5xx; return the number of calls."""
    calls = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        nonlocal calls
        response = case.call(headers=auth("admin"))
        calls += 1
        seen.add(response.status_code)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:300]}\n  {case.as_curl_command()}"
            )

    try:
        check()
    except Unsatisfiable:  # nothing to negate (e.g. no parameters): nothing to test
        pass
    return calls
