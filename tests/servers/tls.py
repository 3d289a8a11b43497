"""A throwaway self-signed certificate for TLS tests (made with the openssl command)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed(folder: Path) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``localhost`` into ``folder``; return them."""
    if shutil.which("openssl") is None:
        raise AssertionError("TLS tests need the openssl command: apt-get install -y openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
