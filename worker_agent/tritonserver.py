"""Launch the CPU-only ``tritonserver`` that ships inside the ``nvidia-pytriton`` wheel.

The wheel carries the binary (``pytriton/tritonserver/bin/tritonserver``), its shared
libraries (``nvidia_pytriton.libs``) and the Python backend. The Python backend's stub for
this interpreter is copied into a backend directory of our own, and this interpreter's
``bin`` is put first on PATH so the stub finds the same numpy.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from registry.processes import ServerProcess, listening_ports

log = logging.getLogger("worker_agent.tritonserver")


class TritonNotInstalledError(RuntimeError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_triton() -> TritonInstall:
    """Locate tritonserver in the installed nvidia-pytriton wheel, or raise a clear error."""
    site = Path(sysconfig.get_paths()["purelib"])
    base = site / "pytriton" / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=base / "bin" / "tritonserver",
        libs=site / "nvidia_pytriton.libs",
        python_backend=base / "backends" / "python",
        stub=base / "python_backend_stubs" / pyver / "triton_python_backend_stub",
    )
    missing = [
        str(p)
        for p in (install.binary, install.libs, install.python_backend, install.stub)
        if not p.exists()
    ]
    if missing:
        raise TritonNotInstalledError(
            f"tritonserver not found ({', '.join(missing)} missing); install it with "
            "`pip install nvidia-pytriton==0.7.0` (part of `pip install -e .[dev]`)"
        )
    return install


def prepare_backends(dest: Path, install: TritonInstall) -> Path:
    """Create a backend directory holding the Python backend and this interpreter's stub."""
    python_dir = dest / "python"
    if not (python_dir / "triton_python_backend_stub").exists():
        shutil.copytree(install.python_backend, python_dir, dirs_exist_ok=True)
        shutil.copy2(install.stub, python_dir / "triton_python_backend_stub")
    return dest


class TritonServer:
    """One tritonserver process in explicit model-control mode, gRPC only.

    ``grpc_port=0`` lets the server pick a free port; it is read back from /proc.
    """

    def __init__(
        self,
        model_repository: Path,
        workdir: Path,
        *,
        grpc_port: int = 0,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_repository = Path(model_repository)
        self.workdir = Path(workdir)
        self.requested_port = grpc_port
        self.host = host
        self.extra_args = extra_args
        self.port: int | None = None
        self.log_path = self.workdir / "tritonserver.log"
        self.process: ServerProcess | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        """How the server ended (negative: the signal that killed it); None while it runs."""
        proc = self.process.proc if self.process else None
        return proc.poll() if proc else None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until its gRPC port answers ServerReady."""
        install = find_triton()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_repository.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.workdir / "backends", install)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        cmd = [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            "--allow-http=false",
            "--allow-metrics=false",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.requested_port}",
            "--exit-timeout-secs=5",
            *self.extra_args,
        ]
        # NOTE: the owner is the work dir: a restarted agent (same work dir) stops what a
        # SIGKILLed one left (a Triton without parent-death signal, Python-backend stubs).
        self.process = ServerProcess(
            cmd,
            owner=str(self.workdir.resolve()),
            log_path=self.log_path,
            env=env,
            cwd=self.workdir,
        )
        self.process.start()
        self._wait_ready(timeout)
        log.info("tritonserver ready at %s (pid %s)", self.address, self.pid)

    def _wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as triton_grpc  # heavy import, only when launching

        assert self.process is not None and self.process.proc is not None
        proc = self.process.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {proc.returncode}; log:\n{self.log_tail()}"
                )
            ports = listening_ports(proc.pid)
            if ports:
                self.port = self.requested_port or ports[0]
                try:
                    client = triton_grpc.InferenceServerClient(self.address)
                    if client.is_server_ready(client_timeout=2):
                        client.close()
                        return
                    client.close()
                except Exception:  # not up yet
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tritonserver not ready within {timeout:g}s; log:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server and everything it started (its Python-backend stubs)."""
        if self.process is not None:
            self.process.stop(grace)

    def kill(self) -> None:
        """SIGKILL the server alone, as the OOM killer does (for failure tests)."""
        if self.process is not None:
            self.process.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no tritonserver log)"
