"""What the commands print: tables for people, JSON for scripts, progress on stderr.

Every command prints through one :class:`Output`, so ``--json`` means the same
everywhere: one JSON document (or one JSON object per line for streams) on
stdout, nothing else there.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kvqueue.model import KvU64


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: bytes as base64, KvU64 as an int, times as ISO 8601."""
    if isinstance(value, KvU64):
        return value.value
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def shown(value: Any) -> str:
    """``value`` in one table cell: strings as they are, the rest as JSON."""
    value = plain(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class Output:
    """Where a command's results go."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self._out = Console(soft_wrap=True, highlight=False)
        if not self._out.is_terminal:
            # Piped or redirected: never cut a cell short to fit 80 columns.
            self._out = Console(soft_wrap=True, highlight=False, width=100_000)
        # soft_wrap: a message is one line however long (a log reader, not rich, wraps it).
        self._err = Console(stderr=True, highlight=False, soft_wrap=True)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Rows under named columns; with ``--json``, a list of objects."""
        if self.as_json:
            self.json([dict(zip(columns, map(plain, row), strict=True)) for row in rows])
            return
        table = Table(*columns, box=None, pad_edge=False, header_style="bold")
        for row in rows:
            table.add_row(*(shown(cell) for cell in row))
        self._out.print(table)

    def record(self, fields: dict[str, Any]) -> None:
        """One thing's fields, a line each; with ``--json``, one object."""
        if self.as_json:
            self.json(fields)
            return
        width = max((len(name) for name in fields), default=0)
        for name, value in fields.items():
            self._out.print(f"{name.ljust(width)}  {shown(value)}", markup=False)

    def json(self, value: Any) -> None:
        """A JSON document on stdout (one line)."""
        sys.stdout.write(json.dumps(plain(value), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def value(self, value: Any) -> None:
        """A bare value: JSON, so it can be read back."""
        self.json(value)

    def done(self, message: str) -> None:
        """What a command did, for people (stderr, so stdout stays data)."""
        self._err.print(f"kvqueue: {message}", markup=False)

    @contextmanager
    def progress(self, what: str, total: int | None) -> Iterator[Any]:
        """A progress bar on stderr when it is a terminal; yields ``advance(n)``."""
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._err,
            transient=True,
            disable=not self._err.is_terminal,
        )
        with bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)

    @contextmanager
    def working(self, what: str) -> Iterator[None]:
        """A spinner and the time taken so far on stderr, when it is a terminal, while one
        long step that has no count to advance runs."""
        spinner = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self._err,
            transient=True,
            disable=not self._err.is_terminal,
        )
        with spinner:
            spinner.add_task(what, total=None)
            yield
