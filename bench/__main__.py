"""Run the benchmark scenarios and print one table: absolute rates and, above all,
ratios measured in the same run, with each target and whether it is met.

    scripts/bench [--quick] [--only S1,S7] [--json out.json]

Everything also goes to JSON (default: bench/results/<time>.json). Not part of the
test suite; the peers come from pyproject's ``bench`` group (scripts/bench installs it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.core import ROOT, Context, Row, Sizes, fsync_rate

SCENARIOS = {
    "S1": ("s1_pipeline", "embedded pipeline vs the raw sqlite3 cycle"),
    "S2": ("s2_producers", "one awaited producer vs 64 concurrent"),
    "S3": ("s3_kv_queue", "KV queue end to end vs Deno"),
    "S4": ("s4_latency", "latency, idle queue"),
    "S5": ("s5_server", "server over HTTP vs the HTTP ceiling"),
    "S6": ("s6_postgres", "PostgreSQL vs SKIP LOCKED, pgmq, procrastinate"),
    "S7": ("s7_peers", "SQLite peers: huey, persist-queue, litequeue"),
    "S8": ("s8_scale", "a large backlog and delayed messages"),
}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", help="comma-separated scenarios, e.g. S1,S7")
    parser.add_argument("--json", type=Path, help="where to write the JSON results")
    args = parser.parse_args()
    chosen = [s.strip().upper() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.chosen = chosen
    return args


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "MB":
        return f"{value:,.0f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def table(rows: list[Row], title: str) -> Table:
    out = Table(title=title, title_justify="left", show_lines=False)
    for column, justify in (
        ("", "left"),
        ("measurement", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("ratio", "right"),
        ("target", "left"),
        ("met", "center"),
    ):
        out.add_column(column, justify=justify)  # type: ignore[arg-type]
    previous = ""
    for row in rows:
        ratio = f"{row.ratio:.3g}x {row.ratio_of}" if row.ratio is not None else ""
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row.met]
        out.add_row(
            row.scenario if row.scenario != previous else "",
            row.name + (f" [dim]({row.note})[/]" if row.note else ""),
            _fmt(row.value, row.unit),
            row.unit,
            ratio,
            row.target,
            met,
            end_section=False,
        )
        previous = row.scenario
    return out


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def main() -> None:
    args = _args()
    # Piped to a file or CI, rich would wrap at 80 columns; the table needs more.
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": _machine(),
        "scenarios": {},
    }
    rows: list[Row] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kvqueue-bench-") as tmp:
        ctx = Context(Sizes(args.quick), Path(tmp))
        ctx.results = results
        try:
            for name in args.chosen:
                module, what = SCENARIOS[name]
                console.print(f"[bold]{name}[/] {what} …", highlight=False)
                load = os.getloadavg()[0]
                fsyncs = fsync_rate(ctx.tmp)
                began = time.perf_counter()
                try:
                    made: list[Row] = importlib.import_module(f"bench.{module}").run(ctx)
                except Exception:
                    console.print(f"[red]{name} failed[/]\n{traceback.format_exc()}")
                    failed.append(name)
                    results["scenarios"][name] = {"error": traceback.format_exc()}
                    continue
                seconds = time.perf_counter() - began
                rows += made
                results["scenarios"][name] = {
                    "seconds": round(seconds, 1),
                    "load_average_1m": [load, os.getloadavg()[0]],
                    "fsync_per_s_before": round(fsyncs),
                    "rows": [row.as_json() for row in made],
                }
                title = f"{name} ({seconds:.0f} s; load {load:.1f}, {fsyncs:,.0f} fsync/s before)"
                console.print(table(made, title))
                if pg := ctx.pg_version():
                    results["machine"]["postgresql"] = pg
        finally:
            ctx.close()
    results["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    when = started.strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick" if args.quick else "full"
    console.print()
    console.print(
        table(rows, f"kvqueue benchmarks, {mode} run, {when}, {results['seconds']:.0f} s")
    )
    met = [r for r in rows if r.met is not None]
    console.print(
        f"targets met: {sum(1 for r in met if r.met)} of {len(met)}"
        + (f"; failed scenarios: {', '.join(failed)}" if failed else "")
    )
    out = args.json or ROOT / "bench" / "results" / f"{started:%Y%m%d-%H%M%S}-{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    console.print(f"JSON: {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
