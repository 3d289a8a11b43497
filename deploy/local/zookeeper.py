"""Run a standalone ZooKeeper from Debian's ``zookeeper`` package, for development and tests.

Started as a plain Java process (not ``zkServer.sh``, which writes to /var/log), bound to
loopback, with its data and log in a directory of the caller's. ZooKeeper cannot bind
port 0, so when no port is given a random one below the kernel's ephemeral range is tried
and another is picked if the bind fails; the process itself holds the port, so no other
process can take it between choosing and binding.
"""

from __future__ import annotations

import logging
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from registry.processes import terminate

log = logging.getLogger("deploy.local.zookeeper")

CLASSPATH = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"
INSTALL_HINT = "apt-get update && apt-get install -y zookeeper  (or run `make setup` as root)"


class ZooKeeperNotInstalledError(RuntimeError):
    pass


def four_letter(host: str, port: int, command: str, timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command (``srvr``, ``ruok``, ...) and return the answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode())
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class LocalZooKeeper:
    """One standalone ZooKeeper server on 127.0.0.1."""

    def __init__(
        self, workdir: Path, port: int | None = None, heap_mb: int = 256, new_session: bool = False
    ) -> None:
        """``new_session``: run Java in a session of its own, so a Ctrl-C in the caller's
        terminal does not reach it (a supervisor then stops it last, after its clients)."""
        self.workdir = Path(workdir)
        self.port = port
        self.heap_mb = heap_mb
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "zookeeper.log"

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart, on the same port) and wait until it answers ``srvr``."""
        java = shutil.which("java")
        if java is None or not all(Path(p).exists() for p in CLASSPATH.split(":")):
            raise ZooKeeperNotInstalledError(
                f"ZooKeeper is not installed (need java and {CLASSPATH}); install it with: "
                f"{INSTALL_HINT}"
            )
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 10):
            port = self.port if fixed else random.randint(20000, 32000)
            assert port is not None
            if self._try_start(java, port, timeout):
                self.port = port
                return
        raise RuntimeError(f"ZooKeeper did not start; log:\n{self.log_tail()}")

    def _try_start(self, java: str, port: int, timeout: float) -> bool:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "zoo.cfg"
        cfg.write_text(
            "tickTime=500\n"
            "initLimit=10\nsyncLimit=5\n"
            "minSessionTimeout=1000\n"
            f"dataDir={data}\n"
            f"clientPort={port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr\n"
            "maxClientCnxns=0\n"
        )
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                java,
                f"-Xmx{self.heap_mb}m",
                "-cp",
                CLASSPATH,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(cfg),
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # e.g. port in use: try another
            try:
                if "Mode:" in four_letter("127.0.0.1", port, "srvr"):
                    log.info("ZooKeeper ready on 127.0.0.1:%d (pid %d)", port, self.proc.pid)
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer within {timeout:g}s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (its data is kept, so :meth:`start` restarts it with its state)."""
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no ZooKeeper log)"
