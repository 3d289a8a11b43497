"""LoadTracker: the per-model figures it derives from real gateway metrics, and GET /load."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from gateway.metrics import GatewayMetrics
from manager_api.load import parse_counters, quantile, samples_of
from manager_api.ui.routes import charts
from registry import layout
from registry.records import Gateway
from tests.gateway.conftest import ADD_ONE
from tests.manager_api.conftest import auth
from tests.manager_api.ui.conftest import IDLE, Console
from tests.servers.zk import wait_for


def scrape(metrics: GatewayMetrics, at: float):
    return parse_counters(generate_latest(metrics.registry).decode(), at)


def test_samples_from_two_scrapes_of_gateway_metrics() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    before = scrape(metrics, at=100.0)
    for _ in range(8):
        metrics.requests.labels("m", "1", "kserve", "OK").inc()
        metrics.latency.labels("total", "m", "kserve").observe(0.003)  # bucket (0.002, 0.005]
    for _ in range(2):
        metrics.requests.labels("m", "1", "tfserving", "UNAVAILABLE").inc()
        metrics.latency.labels("total", "m", "tfserving").observe(0.3)  # bucket (0.2, 0.5]
    metrics.latency.labels("backend", "m", "kserve").observe(9.0)  # another stage: not counted
    after = scrape(metrics, at=102.0)

    sample = samples_of([(after, before)], at=1.0)["m"]

    assert sample.calls_per_s == 5.0  # 10 calls in 2 s, both surfaces
    assert sample.error_rate == 0.2
    # rank 5 of 10 lies in (0.002, 0.005] holding ranks 1-8: 0.002 + 0.003 * 5/8
    assert sample.p50_s == 0.002 + 0.003 * 5 / 8
    # rank 9.9 lies in (0.2, 0.5] holding ranks 9-10
    assert sample.p99_s == 0.2 + 0.3 * (9.9 - 8) / 2


def test_calls_in_flight_by_littles_law_and_the_cold_start_mean() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    cold_start = metrics.cold_start
    metrics.latency.labels("total", "m", "kserve").observe(5.0)  # before: not in the interval
    cold_start.labels("m").observe(9.0)
    before = scrape(metrics, at=10.0)
    for surface, seconds in (("kserve", 1.5), ("kserve", 2.5), ("tfserving", 4.0)):
        metrics.requests.labels("m", "1", surface, "OK").inc()
        metrics.latency.labels("total", "m", surface).observe(seconds)
    metrics.latency.labels("backend", "m", "kserve").observe(100.0)  # another stage
    for seconds in (2.0, 3.0):
        cold_start.labels("m").observe(seconds)
    metrics.requests.labels("warm", "1", "kserve", "OK").inc()
    after = scrape(metrics, at=14.0)

    samples = samples_of([(after, before)], at=1.0)

    assert samples["m"].in_flight == 2.0  # 8 s of calls in 4 s: two in flight on average
    assert samples["m"].cold_start_s == 2.5
    assert samples["warm"].in_flight == 0.0 and samples["warm"].cold_start_s is None


def test_a_counter_that_went_down_is_a_restarted_gateway() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    for _ in range(50):
        metrics.requests.labels("m", "1", "kserve", "OK").inc()
    old = scrape(metrics, at=0.0)
    restarted = GatewayMetrics(CollectorRegistry())
    for _ in range(4):
        restarted.requests.labels("m", "1", "kserve", "OK").inc()
    new = scrape(restarted, at=2.0)

    assert samples_of([(new, old)], at=0.0)["m"].calls_per_s == 2.0


def test_quantile_of_an_empty_histogram_and_of_the_inf_bucket() -> None:
    assert quantile(0.5, {}) is None
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1


def test_load_of_real_calls_through_a_gateway(console: Console) -> None:
    (gateway_id,) = console.registry.children(layout.GATEWAYS)
    record, _ = console.registry.get(layout.gateway(gateway_id), Gateway)
    assert record.metrics_address is not None
    assert record.metrics_address.endswith(f":{console.gateway.port('metrics')}")

    def newest() -> dict:
        return console.admin.get(f"/v1/models/{ADD_ONE}/load").raise_for_status().json()

    assert all(console.call() for _ in range(5))
    busy = wait_for(
        lambda: [s for s in newest()["samples"] if s["calls_per_s"] > 0],
        what="a load sample with calls",
    )
    assert all(s["error_rate"] == 0 for s in busy)
    assert all(0 < s["p50_s"] <= s["p99_s"] for s in busy)
    assert all(s["in_flight"] > 0 for s in busy)
    assert newest()["last_call"] >= busy[-1]["time"]

    assert not console.call(version="7")  # no such version: an error the gateway answers
    wait_for(
        lambda: any(s["error_rate"] > 0 for s in newest()["samples"]), what="a sample with errors"
    )

    # the model's status carries its latest sample; a model without calls has none
    status = console.admin.get(f"/v1/models/{ADD_ONE}/status").raise_for_status().json()
    assert status["load"] == newest()["samples"][-1] or status["load"]["time"] > busy[0]["time"]
    idle_status = console.admin.get(f"/v1/models/{IDLE}/status").raise_for_status().json()
    assert idle_status["load"] is None

    every = httpx.get(f"{console.url}/v1/load", headers=auth("viewer")).raise_for_status().json()
    assert ADD_ONE in {entry["model"] for entry in every}
    idle = httpx.get(f"{console.url}/v1/models/{IDLE}/load", headers=auth("viewer"))
    assert idle.status_code == 200 and idle.json() == {
        "model": IDLE,
        "samples": [],
        "last_call": None,
    }
    missing = httpx.get(f"{console.url}/v1/models/nope/load", headers=auth("viewer"))
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    refused = httpx.get(f"{console.url}/v1/load")
    assert refused.status_code == 401


def test_load_routes_are_in_openapi(console: Console) -> None:
    paths = console.admin.get("/openapi.json").raise_for_status().json()["paths"]
    assert "/v1/models/{name}/load" in paths and "/v1/load" in paths
    assert not any(p.startswith("/ui") for p in paths)


def test_an_unreachable_gateway_is_named_and_the_others_still_count(console: Console) -> None:
    gone = Gateway(
        gateway_id="gw-gone", address="127.0.0.1:1", metrics_address="127.0.0.1:1", version="t"
    )
    console.registry.put(layout.gateway("gw-gone"), gone)

    def fleet_row() -> str | None:
        html = console.admin.get("/ui/fragments/fleet").raise_for_status().text
        row = html[html.index('id="gateway-gw-gone"') :].split("</tr>")[0]
        return row if "127.0.0.1:1: " in row else None

    assert 'class="error"' in wait_for(fleet_row, what="the scrape error in the fleet page")
    assert console.call()
    wait_for(
        lambda: (
            console.call()
            and any(
                s["calls_per_s"] > 0
                for s in console.admin.get(f"/v1/models/{ADD_ONE}/load").json()["samples"]
            )
        ),
        what="samples from the reachable gateway",
    )


def test_cache_hit_rate_and_shadow_agreement_from_gateway_metrics() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.cache_lookups.labels("c", "miss").inc()
    before = scrape(metrics, at=0.0)
    for outcome, n in (("hit", 3), ("miss", 1), ("bypass", 5)):
        for _ in range(n):
            metrics.cache_lookups.labels("c", outcome).inc()
    for outcome, n in (("agree", 9), ("disagree", 1)):
        for _ in range(n):
            metrics.shadow_agreement.labels("s", "2", outcome).inc()
    metrics.requests.labels("plain", "1", "kserve", "OK").inc()
    after = scrape(metrics, at=1.0)

    samples = samples_of([(after, before)], at=1.0)

    assert samples["c"].cache_hit_rate == 0.75  # a bypass is not a lookup; the first miss is old
    assert samples["s"].shadow_agreement == 0.9
    assert samples["plain"].cache_hit_rate is None
    assert samples["plain"].shadow_agreement is None
    figures = charts(list(samples.values()), 10)
    assert "cache hits" not in charts([samples["plain"]], 10)
    assert charts([samples["c"]], 10)["cache hits"][1] == "75.0%"
    assert charts([samples["s"]], 10)["shadow agreement"][1] == "90.0%"
    assert figures  # every model has the four load charts
