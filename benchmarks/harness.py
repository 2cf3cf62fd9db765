"""Shared helpers for benchmark scripts.

Each benchmark is one script that measures cryopose and a peer (RELION, cryoPARES, CESPED or a
plain baseline) in the same run, on the same data, and prints one Markdown row for BENCHMARKS.md::

    | area | benchmark | cryopose | peer | ratio | command |

With ``--write`` the row replaces the row of the same benchmark in BENCHMARKS.md (or is appended).
The ratio is always "how many times better cryopose is" (peer time / cryopose time, or the
accuracy ratio the script states), so > 1 means cryopose wins.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = "| area | benchmark | cryopose | peer | ratio | command |\n|---|---|---|---|---|---|\n"


@dataclass
class Row:
    """One result line of BENCHMARKS.md."""

    area: str
    name: str
    cryopose: str
    peer: str
    ratio: float | None
    command: str
    by_command: bool = False
    """Replace only the row of the same name *and* command (a run with other budgets adds a
    row instead of overwriting the one it would otherwise share a name with)."""

    def markdown(self) -> str:
        """The row as Markdown."""
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}x"
        return (
            f"| {self.area} | {self.name} | {self.cryopose} | {self.peer} | {ratio} "
            f"| `{self.command}` |"
        )


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time in seconds of ``repeats`` calls (the least noisy estimate on a shared box)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def median_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time in seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_args(description: str) -> argparse.Namespace:
    """Common flags: ``--write`` to update BENCHMARKS.md, ``--quick`` for a smoke run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    return parser.parse_args()


def emit(row: Row, write: bool) -> None:
    """Print the row; with ``write`` put it into BENCHMARKS.md (replacing the same benchmark)."""
    line = row.markdown()
    print(line)
    if not write:
        return
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    if HEADER not in text:
        text = text.rstrip("\n") + ("\n\n" if text else "") + HEADER
    key = f"| {row.area} | {row.name} |"
    lines = text.splitlines()
    for i, old in enumerate(lines):
        same_command = old.endswith(f"| `{row.command}` |")
        if old.startswith(key) and (same_command or not row.by_command):
            lines[i] = line
            break
    else:
        lines.append(line)
    tmp = BENCHMARKS_MD.with_suffix(".md.part")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, BENCHMARKS_MD)


def machine() -> str:
    """One line describing where the numbers were measured."""
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
