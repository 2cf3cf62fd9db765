"""Progress reporting for long work: a rich bar in a terminal, sparse log lines otherwise.

>>> with progress("reconstructing", total=3, enabled=False) as advance:
...     for _ in range(3):
...         advance(1)
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

__all__ = ["progress"]


@contextlib.contextmanager
def progress(
    description: str, total: int | None, enabled: bool = True, unit: str = "items"
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` that reports progress of ``total`` units of work.

    In a terminal this draws a rich progress bar with rate and time left. When stderr is not a
    terminal (CI, log files, pipes) it prints a line at most every 10 % of the work or every
    30 seconds, so logs stay readable. With ``enabled=False`` it prints nothing.
    """
    if not enabled:
        yield lambda n: None
        return
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.speed:.1f} " + unit + "/s" if total else ""),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
        return

    start = time.perf_counter()
    state = {"done": 0, "last_time": start, "last_done": 0}
    step = max(1, (total or 0) // 10)

    def advance(n: int) -> None:
        state["done"] += n
        now = time.perf_counter()
        if state["done"] - state["last_done"] >= step or now - state["last_time"] >= 30:
            rate = state["done"] / max(now - start, 1e-9)
            of = f"/{total}" if total else ""
            print(
                f"{description}: {state['done']}{of} {unit} ({rate:.1f} {unit}/s)",
                file=sys.stderr,
                flush=True,
            )
            state["last_time"], state["last_done"] = now, state["done"]

    yield advance
    elapsed = time.perf_counter() - start
    print(f"{description}: done, {state['done']} {unit} in {elapsed:.1f} s", file=sys.stderr)
