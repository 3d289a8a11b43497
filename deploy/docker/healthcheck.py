"""Container health check for the modelgate image: probe whichever role this container runs.

The role is found in the command lines under /proc (``python -m gateway|worker_agent|
manager_api``); its port comes from its ``--flag`` or ``MODELGATE_*`` variable, else the
default. Exit 0 when healthy, 1 otherwise (Docker's HEALTHCHECK contract).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

ROLES = {
    # role: (env prefix, flag, setting, default port, probe)
    "gateway": ("MODELGATE_GATEWAY_", "--port", "PORT", 8500, "grpc"),
    "worker_agent": ("MODELGATE_WORKER_", "--status-port", "STATUS_PORT", 9200, "http"),
    "manager_api": ("MODELGATE_MANAGER_", "--port", "PORT", 8080, "http"),
}


def find_role() -> tuple[str, list[str], dict[str, str]] | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            raw_env = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "-m" in argv:
            module = argv[argv.index("-m") + 1] if argv.index("-m") + 1 < len(argv) else ""
            if module in ROLES:
                env = dict(e.split("=", 1) for e in raw_env if "=" in e)
                return module, argv, env
    return None


def port_of(role: str, argv: list[str], env: dict[str, str]) -> int:
    prefix, flag, setting, default, _ = ROLES[role]
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith(flag + "="):
            return int(arg.split("=", 1)[1])
    return int(env.get(prefix + setting, default))


def probe(role: str, port: int, host: str = "127.0.0.1") -> tuple[bool, str]:
    """Ask the role listening on ``port`` whether it is healthy: (healthy, what it said)."""
    try:
        if ROLES[role][4] == "grpc":
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            with grpc.insecure_channel(f"{host}:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=3
                )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return reply.status == health_pb2.HealthCheckResponse.SERVING, status
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=3) as r:
            return r.status == 200, f"HTTP {r.status}"
    except Exception as err:  # any failure to answer is "unhealthy"
        return False, str(err)


def main() -> int:
    found = find_role()
    if found is None:
        print("no modelgate role (python -m gateway|worker_agent|manager_api) is running")
        return 1
    role, argv, env = found
    port = port_of(role, argv, env)
    ok, said = probe(role, port)
    print(f"{role} on port {port}: {'healthy' if ok else 'NOT healthy'} ({said})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
