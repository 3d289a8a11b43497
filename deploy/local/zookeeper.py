"""Run ZooKeeper from Debian's ``zookeeper`` package, for development, tests and benchmarks:
one standalone server (:class:`LocalZooKeeper`) or an ensemble of them on loopback
(:class:`LocalEnsemble`).

Each server is a plain Java process (not ``zkServer.sh``, which writes to /var/log), bound to
loopback, with its data and log in a directory of the caller's. ZooKeeper cannot bind
port 0, so when no port is given a random one below the kernel's ephemeral range is tried
and another is picked if the bind fails; the process itself holds the port, so no other
process can take it between choosing and binding. An ensemble's members must know each
other's ports before any starts, so an ensemble that fails to come up is started again on
other ports.
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


#: ZooKeeper's ``tickTime`` here: short, so that a dead server or leader is noticed in ~1 s.
TICK_MS = 500


#: Where free client and quorum ports are looked for: below the kernel's ephemeral range.
PORTS = range(20000, 32000)


def _java() -> str:
    java = shutil.which("java")
    if java is None or not all(Path(p).exists() for p in CLASSPATH.split(":")):
        raise ZooKeeperNotInstalledError(
            f"ZooKeeper is not installed (need java and {CLASSPATH}); install it with: "
            f"{INSTALL_HINT}"
        )
    return java


class LocalZooKeeper:
    """One ZooKeeper server on 127.0.0.1: standalone, or a member of a :class:`LocalEnsemble`
    (``myid`` and ``quorum``, the ensemble's ``server.N=...`` lines)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        heap_mb: int = 256,
        new_session: bool = False,
        *,
        myid: int | None = None,
        quorum: tuple[str, ...] = (),
    ) -> None:
        """``new_session``: run Java in a session of its own, so a Ctrl-C in the caller's
        terminal does not reach it (a supervisor then stops it last, after its clients)."""
        self.workdir = Path(workdir)
        self.port = port
        self.heap_mb = heap_mb
        self.new_session = new_session
        self.myid = myid
        self.quorum = quorum
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "zookeeper.log"

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart, on the same port) and wait until it answers ``srvr``."""
        java = _java()
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 10):
            port = self.port if fixed else random.choice(PORTS)
            assert port is not None
            self.launch(java, port)
            if self.wait_serving(timeout):
                self.port = port
                return
        raise RuntimeError(f"ZooKeeper did not start; log:\n{self.log_tail()}")

    def launch(self, java: str, port: int) -> None:
        """Write the configuration for ``port`` and start the Java process; do not wait."""
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        if self.myid is not None:
            (data / "myid").write_text(f"{self.myid}\n")
        cfg = self.workdir / "zoo.cfg"
        cfg.write_text(
            f"tickTime={TICK_MS}\n"
            "initLimit=10\nsyncLimit=5\n"
            "minSessionTimeout=1000\n"
            f"dataDir={data}\n"
            f"clientPort={port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr\n"
            "maxClientCnxns=0\n" + "".join(f"{line}\n" for line in self.quorum)
        )
        self.port = port
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
            start_new_session=self.new_session,
        )
        logf.close()

    def wait_serving(self, timeout: float) -> bool:
        """Wait until the server serves clients (``srvr`` names its mode: standalone, leader
        or follower). False if the process exited (e.g. its port was taken); raises if it
        is still running but not serving after ``timeout``."""
        assert self.proc is not None and self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.mode() is not None:
                log.info("ZooKeeper ready on %s (pid %d)", self.hosts, self.proc.pid)
                return True
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer within {timeout:g}s; log:\n{self.log_tail()}")

    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower`` while serving; None otherwise."""
        assert self.port is not None
        try:
            answer = four_letter("127.0.0.1", self.port, "srvr")
        except OSError:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.removeprefix("Mode:").strip()
        return None

    def stop(self) -> None:
        """Stop the server (its data is kept, so :meth:`start` restarts it with its state)."""
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (its data is kept, like :meth:`stop`)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no ZooKeeper log)"


class LocalEnsemble:
    """``size`` ZooKeeper servers on 127.0.0.1 forming one quorum, each in ``workdir/zk<N>``.

    :attr:`hosts` is the connection string naming every member, as clients of a real
    ensemble are configured. :meth:`leader` finds the elected leader (to kill it, say, and
    to wait for the next one);
    a stopped or killed member restarts with :meth:`LocalZooKeeper.start` on its ports.
    """

    def __init__(self, workdir: Path, size: int = 3, heap_mb: int = 256) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"an ensemble needs an odd number of servers, at least 3 (got {size})")
        self.workdir = Path(workdir)
        self.size = size
        self.heap_mb = heap_mb
        self.members: list[LocalZooKeeper] = []

    @property
    def hosts(self) -> str:
        return ",".join(m.hosts for m in self.members)

    def start(self, timeout: float = 60.0) -> None:
        """Start every member on fresh ports and wait until each serves (a leader has been
        elected and the others follow it)."""
        java = _java()
        for _attempt in range(5):
            ports = random.sample(PORTS, 3 * self.size)
            quorum = tuple(
                f"server.{i + 1}=127.0.0.1:{ports[3 * i + 1]}:{ports[3 * i + 2]}"
                for i in range(self.size)
            )
            self.members = [
                LocalZooKeeper(
                    self.workdir / f"zk{i + 1}", heap_mb=self.heap_mb, myid=i + 1, quorum=quorum
                )
                for i in range(self.size)
            ]
            for i, member in enumerate(self.members):
                member.launch(java, ports[3 * i])
            if all(m.wait_serving(timeout) for m in self.members):
                log.info("ZooKeeper ensemble ready: %s", self.hosts)
                return
            self.stop()
        raise RuntimeError(f"the ZooKeeper ensemble did not start; log:\n{self.log_tail()}")

    def leader(self) -> LocalZooKeeper | None:
        """The member that is leader now; None while none is (an election is under way)."""
        return next((m for m in self.members if m.running and m.mode() == "leader"), None)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(
            f"--- {m.workdir.name} ---\n{m.log_tail(lines // self.size)}" for m in self.members
        )
