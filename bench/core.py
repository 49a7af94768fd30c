"""What every scenario shares: the payload, sizes, result rows, targets, child processes."""

from __future__ import annotations

import collections
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: The message every scenario sends: about 200 bytes as JSON.
PAYLOAD: dict[str, Any] = {"forUser": "alovelace", "body": "x" * 160}
#: The same size as raw bytes, for the peers that store bytes.
BODY = b"x" * 200


@dataclass
class Row:
    """One line of the table: a measured value, maybe a ratio, maybe a target."""

    scenario: str
    name: str
    value: float
    unit: str
    ratio: float | None = None
    ratio_of: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def at_least(row: Row, bound: float, of: str) -> Row:
    """Mark ``row`` against 'ratio ≥ bound'."""
    assert row.ratio is not None
    row.target = f"≥ {bound:g}x {of}"
    row.met = row.ratio >= bound
    return row


def at_most(row: Row, bound: float) -> Row:
    """Mark ``row`` against 'value ≤ bound' (latencies)."""
    row.target = f"≤ {bound:g} {row.unit}"
    row.met = row.value <= bound
    return row


def ratio(row: Row, base: float, of: str) -> Row:
    row.ratio = row.value / base if base else None
    row.ratio_of = of
    return row


@dataclass
class Sizes:
    """How much work each scenario does: the full run or the --quick smoke run."""

    quick: bool

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


class Context:
    """State shared by the scenarios of one run: sizes, a scratch directory, and a
    private PostgreSQL started on first use."""

    def __init__(self, sizes: Sizes, tmp: Path) -> None:
        self.sizes = sizes
        self.tmp = tmp
        self._pg: Any = None
        self._files = 0
        #: Everything measured so far in this run (scenarios may use earlier ones).
        self.results: dict[str, Any] = {"scenarios": {}}

    def path(self, name: str) -> str:
        """A fresh file name in the scratch directory."""
        self._files += 1
        return str(self.tmp / f"{self._files:03d}-{name}")

    def postgres(self) -> Any:
        """The run's PostgreSQL cluster, started when first asked for: the private,
        durable cluster the test suite uses (``tests/postgres.py``)."""
        if self._pg is None:
            from tests.postgres import Cluster

            cluster = Cluster()
            cluster.start()
            self._pg = cluster
        return self._pg

    def pg_version(self) -> str | None:
        if self._pg is None:
            return None
        import psycopg

        with psycopg.connect(self._pg.admin_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def earlier(self, scenario: str, name_start: str) -> float | None:
        """The value of an earlier row of this run, if that scenario ran."""
        for row in self.results["scenarios"].get(scenario, {}).get("rows", []):
            if row["name"].startswith(name_start):
                return float(row["value"])
        return None

    def close(self) -> None:
        if self._pg is not None:
            self._pg.destroy()
            self._pg = None


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def fsync_rate(directory: Path, seconds: float = 0.3) -> float:
    """Appends of 100 bytes + fsync per second in ``directory``: how disturbed the disk
    is right now (this machine does 6-8k/s when quiet), recorded beside each scenario."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        done = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            done += 1
        return done / elapsed
    finally:
        os.close(fd)
        path.unlink()


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 3),
        "max_ms": round(ordered[-1], 3),
    }


def peak_rss_mb(pid: int | None = None) -> float:
    """This process's (or process ``pid``'s) peak resident memory since it started its
    program.

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec,
    so a child of the (larger) benchmark process reported the parent's peak. The
    high-water mark of /proc/<pid>/status belongs to this program's memory alone.
    """
    with open(f"/proc/{'self' if pid is None else pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    assert pid is None, "no VmHWM in /proc"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start this process's peak resident memory afresh from what it holds now (Linux:
    writing 5 to /proc/self/clear_refs), so that the next peak is the next phase's own.
    Elsewhere the peak stays the whole run's."""
    with suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Child:
    """A child Python process (``python -m module args``) whose stdout lines are read
    by a thread: the benchmark's consumers, listeners and servers in other processes."""

    def __init__(self, module: str, *args: str, on_line: Callable[[str], None] | None = None):
        self.module = module
        # A PYTHONPATH of the caller's stays first, so children run the same kvqueue
        # as this process (``PYTHONPATH=<other tree>/src scripts/bench`` compares two).
        path = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._on_line = on_line
        # Read stderr too, so a chatty child never blocks on a full pipe.
        self._errors: collections.deque[str] = collections.deque(maxlen=40)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            if self._on_line is not None and not line.startswith("ready"):
                self._on_line(line)
            else:
                self.lines.put(line)

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._errors.append(line)

    def expect(self, prefix: str, timeout: float = 30) -> str:
        """The next line the callback did not take; it must start with ``prefix``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"{self} said nothing in {timeout} s: {self.stderr()}") from None
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"{self} said {line!r}, not {prefix!r}: {self.stderr()}")
        return line

    def stderr(self) -> str:
        """The child's last lines on stderr."""
        return "".join(self._errors)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def __repr__(self) -> str:
        return f"<child {self.module} pid {self.process.pid}>"


@contextmanager
def children(*made: Child) -> Iterator[list[Child]]:
    """Stop every child on the way out, whatever happened."""
    try:
        yield list(made)
    finally:
        for child in made:
            child.stop()


class Counter:
    """Counts what consumer processes report ("n <count>" lines) and notes when the
    total first reached ``goal``."""

    def __init__(self, goal: int) -> None:
        self.goal = goal
        self.total = 0
        self.reached_at: float | None = None
        self._lock = threading.Lock()
        self.done = threading.Event()

    def line(self, text: str) -> None:
        if not text.startswith("n "):
            return
        with self._lock:
            self.total += int(text[2:])
            if self.total >= self.goal and self.reached_at is None:
                self.reached_at = time.perf_counter()
                self.done.set()
