"""HAProxy's base configuration: written once per start, never edited while it runs.

Everything that changes with the routing table lives in what this file pre-declares and the
Runtime API changes: the route map (``<fast-path key> -> <policy>,<instances>``,
read by route.lua, which picks the instance backend of each call), the limit maps
(``<model> -> <max_concurrency>`` and ``<model> -> <rate_limit>``) and the instance
backends: one per backend instance (a model server's address, shared by all the models it
serves), each with one server, all in maintenance at start. HAProxy 2.6 cannot add a backend
at run time, so instance backends are declared up front as slots.

A limited model's fast-path calls are tracked in one stick table keyed by model name: its
reference count is the model's calls in flight (``table_trackers``) and its
``http_req_rate(1s)`` the calls admitted over the last second. A call over a limit is
answered by HAProxy itself, a trailers-only gRPC RESOURCE_EXHAUSTED with the Python path's
message and retry pushback (gateway/limits.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.limits import CONCURRENCY_PUSHBACK_MS, PUSHBACK, over_concurrency, over_rate

LUA = Path(__file__).with_name("route.lua")

#: Backend receiving every call the fast path does not take: the Python gateway.
PYTHON_BACKEND = "python"

#: Environment variable naming the route map, for route.lua (set in the global section).
ROUTE_MAP_ENV = "MODELGATE_ROUTE_MAP"

#: First word of every access-log line (only fast-path calls are logged).
LOG_TAG = "modelgate-fastpath"
#: HAProxy ring buffer holding the log lines.
LOG_RING = "modelgate_log"
#: Backend holding the stick table of the limited models' fast-path calls.
LIMITS_TABLE = "modelgate_limits"

#: The Python path's words for bytes that do not parse (gateway/surfaces/base.py), with the
#: backend's own message after them.
UNPARSABLE_MESSAGE = (
    '"%[var(txn.method)]Request does not parse as protobuf (the backend: %[res.hdr(grpc-message)])"'
)

#: gRPC methods the fast path serves, by kind (see route.lua).
METHODS = {
    "ki": ("/inference.GRPCInferenceService/ModelInfer",),
    "km": (
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ModelConfig",
        "/inference.GRPCInferenceService/ModelReady",
        "/inference.GRPCInferenceService/ModelStatistics",
    ),
    "ti": (
        "/tensorflow.serving.PredictionService/Predict",
        "/tensorflow.serving.PredictionService/Classify",
        "/tensorflow.serving.PredictionService/Regress",
    ),
    "tm": ("/tensorflow.serving.PredictionService/GetModelMetadata",),
}


#: How a call over a limit is answered: a trailers-only gRPC RESOURCE_EXHAUSTED (no body;
#: its content-type is set by an http-after-response rule, as a reply without one drops it).
_REFUSE = f"http-request return status 200 hdr grpc-status 8 hdr {PUSHBACK}"
_CONCURRENCY_MESSAGE = over_concurrency(
    "%[var(txn.model)]", "%[var(txn.in_flight)]", "%[var(txn.max_calls)]"
)
_RATE_MESSAGE = over_rate("%[var(txn.model)]", "%[var(txn.max_rate)]")
#: ceil(1000 / rate_limit): the milliseconds a call's share of the one-second window lasts.
_RATE_PUSHBACK = "%[int(999),add(txn.max_rate),div(txn.max_rate)]"


def instance_backend(index: int) -> str:
    """The backend of instance slot ``index`` (its one server is ``s``)."""
    return f"i_{index}"


def worker_server(index: int) -> str:
    """The python backend's server of Python worker ``index`` (gateway/workers.py)."""
    return f"python_{index}"


@dataclass(frozen=True)
class Layout:
    """Where HAProxy's files live and how many instance slots it pre-declares."""

    run_dir: Path
    #: Instance backends: the backend instances (model servers) the fast path reaches at
    #: once, whatever the number of models they serve.
    slots: int = 1024

    @property
    def config(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def route_map(self) -> Path:
        return self.run_dir / "routes.map"

    @property
    def concurrency_map(self) -> Path:
        """``<model> -> <max_concurrency>`` of the limited models on the fast path."""
        return self.run_dir / "max_concurrency.map"

    @property
    def rate_map(self) -> Path:
        """``<model> -> <rate_limit>`` (calls over the last second) of the same models."""
        return self.run_dir / "rate_limit.map"

    @property
    def tls_pem(self) -> Path:
        return self.run_dir / "public.pem"


@dataclass(frozen=True)
class Listener:
    """The public port, as a listening socket the gateway opened and HAProxy inherits."""

    fd: int
    #: Combined certificate chain + key (PEM) when the port serves TLS.
    tls_pem: Path | None = None
    #: CA bundle that client certificates must be signed by (mTLS).
    client_ca: Path | None = None


def render(
    layout: Layout,
    listener: Listener,
    python_port: int,
    workers: Sequence[Path] = (),
    *,
    max_message_bytes: int,
    threads: int = 1,
) -> str:
    """The complete configuration text (``workers``: the Unix sockets of the Python workers
    beside the gateway on ``python_port``)."""
    bind = f"bind fd@{listener.fd}"
    if listener.tls_pem is not None:
        bind += f" ssl crt {listener.tls_pem} alpn h2"
        if listener.client_ca is not None:
            bind += f" ca-file {listener.client_ca} verify required"
    else:
        bind += " proto h2"
    acls = "\n".join(f"    acl {kind} path {' '.join(paths)}" for kind, paths in METHODS.items())
    keys = "\n".join(
        f"    http-request set-var(txn.backend) lua.modelgate_route({kind},{max_message_bytes}) "
        f"if {kind}"
        for kind in METHODS
    )
    python = f"127.0.0.1:{python_port}"
    out = [
        f"""\
# Written by the modelgate gateway at start; instance slots and the maps are changed at run
# time through the Runtime API ({layout.admin_socket}).
global
    stats socket {layout.admin_socket} mode 600 level admin
    # NOTE: the gateway follows the log ring on one long-lived connection (show events -w)
    stats timeout 1d
    nbthread {threads}
    setenv {ROUTE_MAP_ENV} {layout.route_map}
    lua-load {LUA}
    # NOTE: the fast path needs the whole gRPC message in the buffer (route.lua); larger
    # requests go to the Python gateway, which streams them.
    tune.bufsize 65536
    log ring@{LOG_RING} local0

# One line per fast-path call (and server state changes), read by the gateway in batches.
ring {LOG_RING}
    format raw
    maxlen 512
    size 4194304

defaults
    mode http
    log global
    timeout connect 1s
    timeout http-request 30s
    # NOTE: callers' deadlines bound calls (grpc-timeout reaches the backend unchanged)
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    retries 2
    retry-on conn-failure empty-response
    option redispatch 1

frontend public
    {bind}
    log-format "{LOG_TAG} %[var(txn.key)] %ST %[var(txn.grpc_status)] \
%[date(0,us),sub(txn.start)] %rc %[var(txn.limited)]"
{acls}
    # NOTE: only unary calls the fast path may take wait for their body (streams must not)
    http-request wait-for-body time 30s if {" || ".join(METHODS)}
{keys}
    http-request set-log-level silent unless {{ var(txn.backend) -m found }}
    http-request set-var(txn.start) date(0,us)
    http-request set-var(txn.method) path,field(3,/) if {{ var(txn.backend) -m found }}
    acl fast var(txn.backend) -m found
    # per-model limits (the limit maps hold the limited models on the fast path only)
    http-request set-var(txn.model) var(txn.key),field(2,:),field(1,/) if fast
    http-request set-var(txn.max_calls) var(txn.model),map_str_int({layout.concurrency_map}) \
        if fast
    http-request set-var(txn.max_rate) var(txn.model),map_str_int({layout.rate_map}) if fast
    acl calls_limited var(txn.max_calls) -m found
    acl rate_limited var(txn.max_rate) -m found
    # NOTE: table_trackers counts its own look-up of an entry that exists: 0 (no entry) or
    # the calls in flight + 1
    http-request set-var(txn.trackers) var(txn.model),table_trackers({LIMITS_TABLE}) \
        if calls_limited
    acl over_calls var(txn.trackers),sub(txn.max_calls) gt 0
    acl over_rate var(txn.model),table_http_req_rate({LIMITS_TABLE}),sub(txn.max_rate) ge 0
    http-request set-var(txn.limited) str(concurrency) if calls_limited over_calls
    http-request set-var(txn.in_flight) var(txn.trackers),sub(1) if calls_limited over_calls
    http-request set-var(txn.limited) str(rate) if !{{ var(txn.limited) -m found }} \
        rate_limited over_rate
    http-request set-var(txn.grpc_status) int(8) if {{ var(txn.limited) -m found }}
    {_REFUSE} {CONCURRENCY_PUSHBACK_MS} hdr grpc-message "{_CONCURRENCY_MESSAGE}" \
        if {{ var(txn.limited) -m str concurrency }}
    {_REFUSE} "{_RATE_PUSHBACK}" hdr grpc-message "{_RATE_MESSAGE}" \
        if {{ var(txn.limited) -m str rate }}
    http-after-response set-header content-type application/grpc \
        if {{ var(txn.limited) -m found }}
    # NOTE: an admitted call holds its entry (one more tracker) until its answer is sent
    http-request track-sc0 var(txn.model) table {LIMITS_TABLE} if calls_limited || rate_limited
    # NOTE: bytes the backend cannot parse are the caller's error, INVALID_ARGUMENT as on the
    # Python path (surfaces/base.py); the backend answers them INTERNAL, trailers-only (Triton
    # "Unable to parse request", a Python gRPC server "Exception deserializing request!").
    acl unparsable res.hdr(grpc-status) -m str 13
    acl unparsable_words res.hdr(grpc-message) -m sub "Unable to parse request"
    acl unparsable_words res.hdr(grpc-message) -m sub "Exception deserializing request"
    http-response set-header grpc-message {UNPARSABLE_MESSAGE} if fast unparsable unparsable_words
    http-response set-header grpc-status 3 if fast unparsable unparsable_words
    # the status the caller gets (trailers-only answers), for the log line the metrics read
    http-response set-var(txn.grpc_status) res.hdr(grpc-status) if fast
    use_backend %[var(txn.backend)] if {{ var(txn.backend) -m found }}
    default_backend {PYTHON_BACKEND}

backend {LIMITS_TABLE}
    # NOTE: entries are kept while calls track them; a model idle for a minute is forgotten
    stick-table type string len 64 size 100k expire 60s store http_req_rate(1s)

backend {PYTHON_BACKEND}
    # NOTE: per call (each HTTP/2 stream), to the Python process with the fewest calls
    balance leastconn
    server gateway {python} proto h2
"""
    ]
    for index, path in enumerate(workers, start=1):
        # NOTE: the gateway takes a worker out (and back) through the Runtime API as it exits
        # (and serves again); the check covers a restarted HAProxy
        server = f"server {worker_server(index)} unix@{path} proto h2"
        out.append(f"    {server} check inter 500 fall 2 rise 1\n")
    for index in range(layout.slots):
        out.append(
            f"""
backend {instance_backend(index)}
    # NOTE: "first": every call to the instance while it is up. A retry (the instance died
    # with the call in flight, or refused it) is redispatched away from the server that
    # failed, so to the Python gateway, which retries the version's other instances; so is
    # every call while the instance is down. A backup server would not do: HAProxy uses one
    # only once every other server is down, and retries of calls in flight when the instance
    # dies come before its health check does, so they failed (RST_STREAM REFUSED_STREAM).
    balance first
    http-request del-header authorization
    # NOTE: one failed connection marks the instance down at once; checks bring it back
    server s 127.0.0.1:1 disabled proto h2 check inter 500 fall 2 rise 1 \
        observe layer4 error-limit 1 on-error mark-down
    server gateway {python} no-check proto h2
"""
        )
    return "".join(out)
