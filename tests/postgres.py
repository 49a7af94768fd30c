"""A real PostgreSQL for the tests: Debian's server binaries, a private cluster
in a temporary directory, listening on a free port on 127.0.0.1.

PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user and its programs run through ``runuser``. A machine without
the server binaries fails the run: the PostgreSQL conformance tests never skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import psycopg

_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "300",
    "shared_buffers": "128MB",
    # Durable as in production: fsync and synchronous_commit stay on.
    "fsync": "on",
    "synchronous_commit": "on",
}


def _bin_dir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): "
            "run scripts/bootstrap, which installs Debian's postgresql package"
        )
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL server process and its data directory."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = tempfile.mkdtemp(prefix="kvqueue-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8")

    @property
    def admin_url(self) -> str:
        """The maintenance database, as the superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [os.path.join(self.bin, program), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        options = " ".join(f"-c {k}={v}" for k, v in _SETTINGS.items())
        options += f" -p {self.port} -k {self.root}"
        log = os.path.join(self.root, "server.log")
        self._run("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` disconnects clients, ``immediate`` is a crash)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop and start again, dropping every client connection."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def new_schema(self, database_url: str) -> str:
        """A fresh, empty schema in ``database_url``; returns a URL whose search_path is it."""
        name = f"s_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{database_url}?options=-csearch_path%3D{name}"


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A started cluster, destroyed on exit."""
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
