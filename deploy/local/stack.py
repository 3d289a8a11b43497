"""The one-machine modelgate stack behind ``make up`` (and reused by ``make demo`` and tests).

Started, in order: ZooKeeper (Debian's package, as a plain Java process), the manager
(REST API with a generated tokens file), two worker agents each launching and supervising
its own ``tritonserver`` (from the nvidia-pytriton wheel), and one gateway. Every role runs
as ``python -m <role>`` with :mod:`deploy.local.runner` (a process group of its own, its
output in ``<run-dir>/logs/<process>.log``); ``start()`` returns once each process has
written its ready file and is ready (gateway ``grpc.health.v1`` SERVING, manager
``/healthz`` 200, workers registered in ZooKeeper).

State lives under the run dir (default ``.run/`` in the repository): a lock held while the
stack runs (a second stack on the same dir is refused), ``pids`` (every process group
started, so a crashed run's leftovers are killed by the next start; see
:mod:`deploy.local.leftovers`), ``stack.json`` (the endpoints and tokens, mode 0600) and one
directory per process, wiped at every start.

Run it with ``.venv/bin/python deploy/local/stack.py`` (``--help`` lists the ports), or use
it from Python::

    with LocalStack(run_dir=tmp, gateway_port=0, ...) as stack:
        grpc.insecure_channel(stack.gateway_address)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import psutil

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: `python deploy/local/stack.py`
    sys.path.insert(0, str(REPO))

from deploy.local import leftovers  # noqa: E402
from deploy.local.leftovers import ENV_MARKER, MARKER, RunDirLock, stack_pids  # noqa: E402
from deploy.local.runner import Process, ProcessFailed, stop_all  # noqa: E402
from deploy.local.zookeeper import LocalZooKeeper  # noqa: E402
from registry import layout  # noqa: E402

log = logging.getLogger("deploy.local")

DEFAULT_RUN_DIR = REPO / ".run"
#: The role each ``python -m`` module is (the keys of ``LocalStack.settings_env``).
_ROLE_OF_MODULE = {"manager_api": "manager", "gateway": "gateway", "worker_agent": "worker"}
# Sub-directories and files of the run dir this stack owns (wiped at start); anything else
# under .run/ (e.g. other tools' files) is left alone.
_OWNED = ("logs", "zookeeper", "manager", "gateway", "workers", "pids", "stack.json")


class StackError(RuntimeError):
    """The stack could not start (the message says which process and why)."""


@dataclass
class WorkerEndpoint:
    """One worker agent and the Triton it launched."""

    name: str
    worker_id: str
    triton_port: int
    status_port: int
    model_root: Path
    log: Path
    pid: int = 0
    triton_address: str = ""
    status_url: str = ""


@dataclass
class LocalStack:
    """ZooKeeper + manager + N workers (each with its Triton) + gateway on one machine.

    Ports of 0 are picked by the process and read back (ZooKeeper cannot bind 0: a free
    random port is used instead). ``start()`` raises :class:`StackError` (with the failing
    process's log tail) and stops whatever it started.
    """

    run_dir: Path = DEFAULT_RUN_DIR
    host: str = "127.0.0.1"
    zk_port: int | None = 2181
    """ZooKeeper client port; None or 0: a random free one. A busy 2181 falls back to random."""
    gateway_port: int = 8500
    gateway_metrics_port: int = 8502
    manager_port: int = 8080
    triton_ports: tuple[int, ...] = (8001, 8011)
    worker_status_ports: tuple[int, ...] = (9200, 9201)
    zk_root: str = layout.DEFAULT_ROOT
    python: str = sys.executable
    ready_timeout: float = 120.0
    stop_grace: float = 20.0
    drain_seconds: float = 1.0
    log_level: str = "INFO"
    settings_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Extra settings per role ("manager", "gateway", "worker") as ``MODELGATE_*`` variables,
    e.g. short autoscaling periods for a benchmark."""

    # Filled in by start().
    zk_hosts: str = ""
    gateway_address: str = ""
    gateway_metrics_url: str = ""
    manager_url: str = ""
    admin_token: str = ""
    internal_token: str = ""
    tokens_file: Path = Path()
    log_dir: Path = Path()
    workers: list[WorkerEndpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        self.log_dir = self.run_dir / "logs"
        if len(self.triton_ports) != len(self.worker_status_ports):
            raise ValueError("give as many triton ports as worker status ports")
        self._procs: list[Process] = []
        self._zk: LocalZooKeeper | None = None
        self._lock = RunDirLock(self.run_dir)
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Start every process and wait until each one is ready."""
        try:
            self._prepare()
            self._start_zookeeper()
            self._write_tokens()
            self._wait_manager(self._spawn_manager())  # the others get its URL
            gateway = self._spawn_gateway()
            worker_procs = [self._spawn_worker(i) for i in range(len(self.triton_ports))]
            self._wait_gateway(gateway)
            self._wait_workers(worker_procs)
            self._write_state()
        except ProcessFailed as err:
            self.stop()
            raise StackError(str(err)) from None
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process started (SIGTERM to each group, SIGKILL after the grace)."""
        if self._stopping or not self._lock.held:
            return  # never started, or refused (the dir belongs to another stack)
        self._stopping = True
        try:
            # Roles first (workers still need ZooKeeper to deregister), ZooKeeper last.
            stop_all(self._procs, self.stop_grace)
            self._procs.clear()
            if self._zk is not None:
                self._zk.stop()
                self._zk = None
            # Anything still carrying our marker (e.g. a Triton stub that left its group).
            leftovers.kill(stack_pids(self.run_dir))
            for name in ("pids", "stack.json"):  # the logs stay, for a post-mortem
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / name).unlink()
        finally:
            self._lock.release()
            self._stopping = False

    @property
    def pids(self) -> dict[str, int]:
        """Process id of every running role process (group leaders), by process name."""
        out = {p.name: p.pid for p in self._procs if p.running}
        if self._zk is not None and self._zk.proc is not None:
            out["zookeeper"] = self._zk.proc.pid
        return out

    def dead(self) -> list[str]:
        """Names of the processes that exited since start (for a supervisor loop)."""
        names = [p.name for p in self._procs if not p.running]
        if self._zk is not None and not self._zk.running:
            names.append("zookeeper")
        return names

    def triton_pid(self, index: int) -> int | None:
        """Pid of the tritonserver launched by worker ``index`` (to kill it in a demo)."""
        try:
            children = psutil.Process(self.workers[index].pid).children()
        except psutil.Error:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.name() == "tritonserver":
                    return child.pid
        return None

    # ------------------------------------------------------------------ steps

    def _prepare(self) -> None:
        owner = self._lock.acquire()
        if owner is not None:
            raise StackError(
                f"another local stack is running from {self.run_dir} (pid {owner}); "
                "stop it first (Ctrl-C in its terminal, or kill that pid)"
            )
        self.workers = []
        leftovers.kill_leftovers(self.run_dir)
        for name in _OWNED:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.log_dir.mkdir(parents=True)
        busy = []
        wanted = {
            "gateway": self.gateway_port,
            "gateway metrics": self.gateway_metrics_port,
            "manager": self.manager_port,
        }
        for i, (tp, sp) in enumerate(zip(self.triton_ports, self.worker_status_ports, strict=True)):
            wanted[f"worker-{i + 1} triton"] = tp
            wanted[f"worker-{i + 1} status"] = sp
        for what, port in wanted.items():
            if port and not _port_free(self.host, port):
                busy.append(f"{what} port {port}")
        if busy:
            raise StackError(
                "ports in use: " + ", ".join(busy) + " (another stack or service?); choose "
                "others with the --*-port options (0 picks a free one)"
            )

    def _start_zookeeper(self) -> None:
        port = self.zk_port or None
        if port is not None and not _port_free("127.0.0.1", port):
            log.warning("port %d is busy: ZooKeeper gets a random free port", port)
            port = None
        # NOTE: a session of its own, so a Ctrl-C in the terminal does not kill ZooKeeper
        # before the workers have deregistered (their drain needs it); it is stopped last.
        zk = LocalZooKeeper(self.run_dir / "zookeeper", port=port, new_session=True)
        self._zk = zk
        try:
            zk.start(timeout=self.ready_timeout)
        except RuntimeError as err:  # not installed (says how to install), or did not start
            raise StackError(f"ZooKeeper: {err}") from None
        assert zk.proc is not None
        leftovers.record(self.run_dir, "zookeeper", zk.proc.pid)
        # The log LocalZooKeeper writes, linked where the other logs are.
        with contextlib.suppress(OSError):
            (self.log_dir / "zookeeper.log").symlink_to(zk.log_path)
        self.zk_hosts = zk.hosts

    def _write_tokens(self) -> None:
        self.admin_token = "mg-admin-" + secrets.token_urlsafe(24)
        self.internal_token = "mg-internal-" + secrets.token_urlsafe(24)
        manager_dir = self.run_dir / "manager"
        manager_dir.mkdir(parents=True, exist_ok=True)
        self.tokens_file = manager_dir / "tokens.toml"
        fd = os.open(self.tokens_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                "# Generated by deploy/local/stack.py for this run only.\n"
                f'[[tokens]]\nname = "local-admin"\nrole = "admin"\ntoken = "{self.admin_token}"\n'
                f'\n[[tokens]]\nname = "local-internal"\nrole = "internal"\n'
                f'token = "{self.internal_token}"\n'
            )

    def _spawn(
        self, name: str, module: str, args: list[str], secrets_env: dict[str, str] | None = None
    ) -> Process:
        env = dict(os.environ)
        # Flags are explicit; don't let a MODELGATE_* variable of the caller's shell change
        # what the stack runs.
        for key in [k for k in env if k.startswith("MODELGATE_")]:
            del env[key]
        env.update(self.settings_env.get(_ROLE_OF_MODULE[module], {}))
        env.update(secrets_env or {})  # tokens: in the environment, not in `ps` output
        env[ENV_MARKER] = str(self.run_dir)
        cmd = [self.python, "-X", f"{MARKER}={self.run_dir}", "-m", module, *args]
        proc = Process(name, cmd, log=self.log_dir / f"{name}.log", env=env, cwd=REPO)
        self._procs.append(proc.start())
        leftovers.record(self.run_dir, name, proc.pid)
        return proc

    def _spawn_manager(self) -> Process:
        manager_dir = self.run_dir / "manager"
        args = [
            "--zk", self.zk_hosts,
            "--root", self.zk_root,
            "--host", self.host,
            "--port", str(self.manager_port),
            "--blob-dir", str(manager_dir / "blobs"),
            "--tokens-file", str(self.tokens_file),
            "--audit-log", str(manager_dir / "audit.log"),
            "--manager-id", "local-manager",
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.manager_port:
            args += ["--public-url", f"http://{self.host}:{self.manager_port}"]
        return self._spawn("manager", "manager_api", args)

    def _spawn_gateway(self) -> Process:
        args = [
            "--zk", self.zk_hosts,
            "--root", self.zk_root,
            "--host", self.host,
            "--port", str(self.gateway_port),
            "--metrics-port", str(self.gateway_metrics_port),
            "--gateway-id", "local-gateway",
            "--grace-s", "2",
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.gateway_port:
            args += ["--advertise-address", f"{self.host}:{self.gateway_port}"]
        # Plugin packages come from the manager's blob store with the internal token.
        env = {
            "MODELGATE_GATEWAY_BLOB_TOKEN": self.internal_token,
            "MODELGATE_GATEWAY_PLUGIN_DIR": str(self.run_dir / "gateway" / "plugins"),
            # HAProxy (the data plane) keeps its files in the run dir, so they name it too
            "MODELGATE_GATEWAY_HAPROXY_DIR": str(self.run_dir / "gateway" / "haproxy"),
        }
        return self._spawn("gateway", "gateway", args, env)

    def _spawn_worker(self, index: int) -> Process:
        name = f"worker-{index + 1}"
        base = self.run_dir / "workers" / name
        model_root = base / "models"
        model_root.mkdir(parents=True)
        args = [
            "--zk", self.zk_hosts,
            "--root", self.zk_root,
            "--worker-id", f"local-{index + 1}",
            "--backend", "triton",
            "--launch-triton",
            "--triton-grpc-port", str(self.triton_ports[index]),
            "--launch-host", self.host,
            "--model-root", str(model_root),
            "--work-dir", str(base / "work"),
            "--advertise-host", self.host,
            "--labels", f"stack=local,slot={index + 1}",
            "--status-host", self.host,
            "--status-port", str(self.worker_status_ports[index]),
            "--manager-url", self.manager_url,
            "--drain-s", str(self.drain_seconds),
            "--log-level", self.log_level,
        ]  # fmt: skip
        # The Triton this agent launches logs into its work dir: linked beside the others.
        (self.log_dir / f"triton-{index + 1}.log").symlink_to(base / "work" / "tritonserver.log")
        secret = {"MODELGATE_WORKER_BLOB_TOKEN": self.internal_token}
        proc = self._spawn(name, "worker_agent", args, secret)
        self.workers.append(
            WorkerEndpoint(
                name=name,
                worker_id=f"local-{index + 1}",
                triton_port=self.triton_ports[index],
                status_port=self.worker_status_ports[index],
                model_root=model_root,
                log=proc.log,
                pid=proc.pid,
            )
        )
        return proc

    # ------------------------------------------------------------------ readiness

    def _wait_manager(self, proc: Process) -> None:
        import httpx

        proc.wait_ready(self.ready_timeout)
        self.manager_url = f"http://{self.host}:{proc.port('http')}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.manager_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        proc.wait_for(healthy, "healthy (/healthz 200)", self.ready_timeout)

    def _wait_gateway(self, proc: Process) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        proc.wait_ready(self.ready_timeout)
        self.gateway_address = f"{self.host}:{proc.port('grpc')}"
        self.gateway_metrics_url = f"http://{self.host}:{proc.port('metrics')}/metrics"

        def serving() -> bool:
            with grpc.insecure_channel(self.gateway_address) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=2
                    )
                except grpc.RpcError:
                    return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        proc.wait_for(serving, "SERVING (grpc.health.v1)", self.ready_timeout)

    def _wait_workers(self, procs: list[Process]) -> None:
        from registry import Registry
        from registry.records import Worker

        for proc, worker in zip(procs, self.workers, strict=True):
            ready = proc.wait_ready(self.ready_timeout)
            worker.worker_id, worker.status_port = ready["worker_id"], proc.port("status")
            worker.status_url = f"http://{self.host}:{worker.status_port}"
        with Registry(self.zk_hosts, self.zk_root, connect_timeout=10) as registry:
            for proc, worker in zip(procs, self.workers, strict=True):

                def registered(worker_id: str = worker.worker_id) -> bool:
                    return worker_id in registry.children(layout.WORKERS)

                proc.wait_for(registered, "registered in ZooKeeper", self.ready_timeout)
                record = registry.read(layout.worker(worker.worker_id), Worker)
                if record is not None:
                    worker.triton_address = record.address
                    worker.triton_port = int(record.address.rsplit(":", 1)[1])

    def _write_state(self) -> None:
        state = {
            "zookeeper": self.zk_hosts,
            "zk_root": self.zk_root,
            "gateway": self.gateway_address,
            "gateway_metrics": self.gateway_metrics_url,
            "manager": self.manager_url,
            "admin_token": self.admin_token,
            "internal_token": self.internal_token,
            "tokens_file": str(self.tokens_file),
            "logs": str(self.log_dir),
            "workers": [
                {k: str(v) if isinstance(v, Path) else v for k, v in asdict(w).items()}
                for w in self.workers
            ],
            "pids": self.pids,
        }
        path = self.run_dir / "stack.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)

    def summary(self) -> str:
        """What ``make up`` prints once everything is ready."""
        workers = "\n".join(
            f"  {w.name:<9} id {w.worker_id:<8} triton {w.triton_address or w.triton_port}  "
            f"status {w.status_url}/healthz  models {w.model_root}"
            for w in self.workers
        )
        return f"""
modelgate local stack is up (run dir {self.run_dir})

  gateway   gRPC {self.gateway_address}  (TF-Serving, KServe v2, modelgate.v1, health)
            metrics {self.gateway_metrics_url}
  manager   {self.manager_url}  (OpenAPI: {self.manager_url}/docs)
  zookeeper {self.zk_hosts}  root {self.zk_root}
{workers}
  logs      {self.log_dir}/<process>.log  (zookeeper, manager, gateway, worker-N, triton-N)
  state     {self.run_dir}/stack.json  (endpoints and tokens)

  admin token: {self.admin_token}

Try, in another terminal (the admin CLI reads these variables):
  export MODELGATE_MANAGER_URL={self.manager_url} MODELGATE_TOKEN={self.admin_token} \\
         MODELGATE_GATEWAY={self.gateway_address}
  .venv/bin/modelgate workers list
  .venv/bin/modelgate gateways list
  .venv/bin/modelgate models list
  curl -s -H "Authorization: Bearer $MODELGATE_TOKEN" $MODELGATE_MANAGER_URL/v1/workers
  curl -s {self.gateway_metrics_url} | grep ^modelgate_
  tail -f {self.log_dir}/gateway.log
  make demo    # the digits model end to end (runs its own stack: stop this one first)

Ctrl-C stops everything.
"""


# ---------------------------------------------------------------------- helpers


def _port_free(host: str, port: int) -> bool:
    """True unless something listens on ``port``.

    NOTE: SO_REUSEADDR as the servers themselves bind: connections of a previous run in
    TIME_WAIT do not make the port busy, a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------- make up


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy/local/stack.py",
        description="Run modelgate on this machine: ZooKeeper, the manager, two worker "
        "agents each with its own Triton, and a gateway, until Ctrl-C or SIGTERM. "
        "A port of 0 is picked by the process.",
    )
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="state and logs")
    parser.add_argument("--host", default="127.0.0.1", help="address every role binds to")
    parser.add_argument("--zk-port", type=_port, default=2181, help="ZooKeeper (busy: random)")
    parser.add_argument("--gateway-port", type=_port, default=8500)
    parser.add_argument("--gateway-metrics-port", type=_port, default=8502)
    parser.add_argument("--manager-port", type=_port, default=8080)
    parser.add_argument(
        "--triton-ports", type=_port, nargs="+", default=[8001, 8011], help="one per worker"
    )
    parser.add_argument(
        "--worker-status-ports", type=_port, nargs="+", default=[9200, 9201], help="one per worker"
    )
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--log-level", default="INFO", help="of every role")
    return parser.parse_args(argv)


class _Interrupted(BaseException):
    """A stop signal; a BaseException like KeyboardInterrupt, so no ``except Exception``
    swallows it."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("deploy.local").setLevel(logging.INFO)  # and its modules' loggers
    # This process's own short ZooKeeper session (the readiness check) is not news.
    logging.getLogger("registry.zk").setLevel(logging.ERROR)
    stack = LocalStack(
        run_dir=args.run_dir,
        host=args.host,
        zk_port=args.zk_port,
        gateway_port=args.gateway_port,
        gateway_metrics_port=args.gateway_metrics_port,
        manager_port=args.manager_port,
        triton_ports=tuple(args.triton_ports),
        worker_status_ports=tuple(args.worker_status_ports),
        ready_timeout=args.ready_timeout,
        log_level=args.log_level,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            stop.set()
            raise _Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    code = 0
    try:
        print(f"starting the local stack in {stack.run_dir} (logs: {stack.log_dir})", flush=True)
        stack.start()
        print(stack.summary(), flush=True)
        reported: set[str] = set()
        while not stop.wait(1.0):
            for name in set(stack.dead()) - reported:
                reported.add(name)
                print(f"WARNING: {name} exited; see {stack.log_dir}/{name}.log", flush=True)
    except _Interrupted as why:
        print(f"\n{why}: stopping the local stack ...", flush=True)
    except StackError as err:
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # Signals during the stop are ignored: it always runs to the end (SIGKILL at worst).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
        left = stack_pids(stack.run_dir)
        if left:
            print(f"ERROR: processes left running: {left}", file=sys.stderr, flush=True)
            code = 1
        else:
            print("local stack stopped; nothing left running", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
