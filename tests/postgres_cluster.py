"""A real PostgreSQL cluster for tests: its own data folder and port, removed afterwards.

Used by the tunnel tests (asyncpg through every tunnel stack) and the
``--isolate`` tests (psql and psycopg, C clients, confined).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from transfer_targets import free_port

from netshim.testing import require_peer

__all__ = ["postgres_cluster"]


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if not found:
        require_peer("initdb")  # fails under NETSHIM_REQUIRE_PEERS=1, else skips
        return Path(shutil.which("initdb") or "initdb").parent
    return Path(found[0]).parent


def _as_postgres() -> list[str]:
    """The prefix that runs a command as a user PostgreSQL accepts (it refuses root)."""
    if os.geteuid() != 0:
        return []
    return [require_peer("runuser"), "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_cluster() -> Iterator[int]:
    """A PostgreSQL cluster of its own on a free loopback port (trust auth, user postgres)."""
    bindir = _postgres_bin()
    prefix = _as_postgres()
    # Not under pytest's temporary folder: its parents are private to root.
    root = Path(tempfile.mkdtemp(prefix="netshim-pg-"))
    if prefix:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = free_port()
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        # A port of our own on loopback and the unix socket in our folder:
        # a system cluster on 5432, if the package started one, is no matter.
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
        # The server's output goes to a log file: a pipe would stay open in
        # the server after pg_ctl exits, and reading it would never end.
        log = root / "postgres.log"
        start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w"]
        subprocess.run(
            [*prefix, *start, "start"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        yield port
    finally:
        if data.exists():
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
