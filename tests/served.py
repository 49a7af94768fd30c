"""A real `kvqueue serve` process for tests: started on a free port of 127.0.0.1,
its tokens created in its database file, stopped by SIGTERM or killed."""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import kvqueue

_START_SECONDS = 20


@dataclass
class Served:
    """A running server and the database file behind it."""

    db_path: Path | str
    process: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        """The base URL the Cloudflare SDK takes."""
        return f"{self.url}/client/v4"

    def token(
        self,
        account: str | None = None,
        scope: str = "admin",
        queues: Iterable[str] | None = None,
    ) -> tuple[str, str]:
        """A new token (for a new account unless one is named): ``(account, token)``."""
        account = account or f"acc{secrets.token_hex(6)}"
        with kvqueue.open(str(self.db_path)) as db:
            _, secret = db.tokens.create(account, scope, queues=queues)  # type: ignore[arg-type]
        return account, secret

    def sdk(self, token: str) -> object:
        """The official Cloudflare SDK pointed at this server, without client retries."""
        from cloudflare import Cloudflare

        return Cloudflare(api_token=token, base_url=self.api, max_retries=0)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._drain()
        return code

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._drain()

    def _drain(self) -> None:
        if self.process.stdout is not None:
            self.output.extend(self.process.stdout.read().splitlines())
            self.process.stdout.close()


def start_server(db_path: Path | str, *, port: int = 0, log_level: str = "warning") -> Served:
    """Start `kvqueue serve` on ``db_path`` and wait until it accepts connections."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvqueue.cli",
            "serve",
            "--db",
            str(db_path),
            "--port",
            str(port),
            "--log-level",
            log_level,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + _START_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("kvqueue serving "):
                url = line.split()[2]
                return Served(db_path, process, url, lines)
    process.kill()
    process.wait()
    raise AssertionError("kvqueue serve did not start:\n" + "\n".join(lines))
