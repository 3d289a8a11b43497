"""The console's pages: one shell page, and HTML fragments htmx loads with the bearer token.

The shell (``GET /ui``) holds no data and needs no token: its login form keeps the token in
the browser's sessionStorage, and ``static/console.js`` sends it as ``Authorization: Bearer``
on every request htmx makes. Each fragment calls the REST endpoint it shows (same roles,
same answers); actions are htmx requests to the REST API itself, so the audit log records
them as it records the CLI's.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from manager_api.context import Caller, Ctx, Tracker
from manager_api.errors import ForbiddenError
from manager_api.load import LoadSample
from manager_api.routes import cluster, models, system
from registry.version import version

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["clock"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
router = APIRouter(prefix="/ui", include_in_schema=False)

#: Audit entries the console shows, newest first.
AUDIT_SHOWN = 25
#: Size of one sparkline, in pixels.
SPARK_WIDTH, SPARK_HEIGHT = 120, 24


def sparkline(values: list[float | None], slots: int) -> str:
    """The ``points`` of an SVG polyline of ``values`` (None: no data), the newest at the
    right edge and one of ``slots`` steps apart, scaled to the largest value."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    top = max(known) or 1.0
    step = SPARK_WIDTH / max(slots - 1, 1)
    right = len(values) - 1
    return " ".join(
        f"{SPARK_WIDTH - (right - i) * step:.1f},"
        f"{SPARK_HEIGHT - 1 - (v / top) * (SPARK_HEIGHT - 2):.1f}"
        for i, v in enumerate(values)
        if v is not None
    )


def charts(samples: list[LoadSample], slots: int) -> dict[str, tuple[str, str]]:
    """Per chart title: its polyline points and the newest value, formatted."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f} ms"

    def line(values: list[float | None]) -> str:
        return sparkline(values, slots)

    def share(values: list[float | None]) -> str:
        latest = next((v for v in reversed(values) if v is not None), None)
        return "-" if latest is None else f"{latest:.1%}"

    last = samples[-1] if samples else None
    figures = {
        "calls/s": (
            line([s.calls_per_s for s in samples]),
            f"{last.calls_per_s:.1f}" if last else "-",
        ),
        "errors": (
            line([s.error_rate for s in samples]),
            f"{last.error_rate:.1%}" if last else "-",
        ),
        "p50": (line([s.p50_s for s in samples]), ms(last.p50_s if last else None)),
        "p99": (line([s.p99_s for s in samples]), ms(last.p99_s if last else None)),
    }
    # NOTE: only models with a cache or shadow traffic (and calls) have these figures
    for title, values in (
        ("cache hits", [s.cache_hit_rate for s in samples]),
        ("shadow agreement", [s.shadow_agreement for s in samples]),
    ):
        if any(v is not None for v in values):
            figures[title] = (line(values), share(values))
    return figures


@router.get("", response_class=HTMLResponse)
def shell(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "console.html", {"version": version()})


@router.get("/fragments/whoami", response_class=HTMLResponse)
def whoami(request: Request, caller: Caller) -> HTMLResponse:
    return templates.TemplateResponse(request, "whoami.html", {"caller": caller})


@router.get("/fragments/fleet", response_class=HTMLResponse)
def fleet(request: Request, m: Ctx, caller: Caller, tracker: Tracker) -> HTMLResponse:
    context = {
        "caller": caller,
        "workers": cluster.list_workers(m, caller),
        "gateways": cluster.list_gateways(m, caller),
        "scrape_errors": tracker.scrape_errors,
        "now": time.time(),
    }
    return templates.TemplateResponse(request, "fleet.html", context)


@router.get("/fragments/models", response_class=HTMLResponse)
def model_list(request: Request, m: Ctx, caller: Caller, tracker: Tracker) -> HTMLResponse:
    load = tracker.models()
    context = {
        "caller": caller,
        "statuses": models.read_all_status(m, caller, tracker),
        "charts": {name: charts(entry.samples, tracker.keep) for name, entry in load.items()},
        "no_load": charts([], tracker.keep),
        "window_s": round(tracker.keep * tracker.interval_s),
        "spark": (SPARK_WIDTH, SPARK_HEIGHT),
    }
    return templates.TemplateResponse(request, "models.html", context)


@router.get("/fragments/audit", response_class=HTMLResponse)
def audit(request: Request, m: Ctx, caller: Caller) -> HTMLResponse:
    try:
        entries = system.read_audit(m, caller)
    except ForbiddenError as err:
        return templates.TemplateResponse(request, "audit.html", {"refused": str(err)})
    shown = list(reversed(entries[-AUDIT_SHOWN:]))
    return templates.TemplateResponse(request, "audit.html", {"entries": shown})


def mount(app: FastAPI) -> None:
    """Serve the console under ``/ui`` of ``app`` (pages, then the static files)."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
