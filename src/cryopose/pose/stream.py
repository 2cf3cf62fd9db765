"""Streaming: follow a folder where a microscope pipeline drops particle star files and stacks.

Every poll, new star files in the watch folder are checked for completeness: the star file
and every stack it names must keep the same size and modification time for ``settle_seconds``,
the star must parse, and every stack must hold exactly the bytes its MRC header promises. A
half-written file is simply retried at the next poll, never read. A complete file goes through
``process`` (inference, pruning, local refinement: see :class:`cryopose.pose.pipeline`) and its
accepted particles are back-projected into the two half-set accumulators; every
``update_every`` particles the half maps, the full map and their FSC are written.

Nothing is lost or counted twice on a restart: after each file, one atomic write of
``OUT/stream_state.pt`` records the accumulators together with the list of files done, and the
accepted particles of each file are kept in ``OUT/processed/<name>.star`` (absolute image paths),
from which ``OUT/particles.star`` is rebuilt.

Outputs in ``OUT``: ``particles.star``, ``half1.mrc``, ``half2.mrc``, ``map.mrc``, ``fsc.json``
(curve, resolutions at 0.143 and 0.5, counts, particles/min), ``fsc.png`` and ``stream_log.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.imaging.reconstruct import FourierReconstructor
from cryopose.io.mrc import read_map_header, write_map
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.pose.reconstruct import half_set_labels, insert_particles, table_box

__all__ = ["StreamConfig", "StreamStatus", "merge_tables", "stream_folder", "watch_once"]

STATE_NAME = "stream_state.pt"
log = logging.getLogger(__name__)

Processor = Callable[[ParticleTable], ParticleTable]


@dataclass(frozen=True)
class StreamConfig:
    """How :func:`stream_folder` follows a folder.

    Attributes
    ----------
    symmetry
        Point group of the reconstruction.
    pattern
        Glob of the star files to pick up in the watch folder.
    update_every
        Particles between two map + FSC updates.
    poll_seconds
        Pause between two looks at the folder.
    settle_seconds
        A file must be unchanged (size and modification time) this long before it is read.
    max_idle_seconds
        Stop after this long without a new complete file; ``None``: run until interrupted
        (or until ``stop_file`` appears).
    stop_file
        Name of a file in the watch folder whose appearance ends the stream (e.g. ``STOP``).
    ctf
        CTF-weighted reconstruction.
    device
        Torch device of the accumulators.
    """

    symmetry: str = "C1"
    pattern: str = "*.star"
    update_every: int = 1000
    poll_seconds: float = 2.0
    settle_seconds: float = 2.0
    max_idle_seconds: float | None = None
    stop_file: str = "STOP"
    ctf: bool = True
    device: str = "cpu"


@dataclass
class StreamStatus:
    """What the stream has done so far (also the resumable state, with the accumulators).

    Attributes
    ----------
    files_done
        Star file name -> ``[size, mtime_ns]`` when it was processed.
    n_seen, n_accepted
        Particles read and particles kept after pruning.
    seconds_busy
        Time spent processing (not waiting), for the particles/min figure.
    resolution_143, resolution_05
        Last half-map FSC resolutions in Angstrom (``nan`` before the first update).
    """

    files_done: dict[str, list[int]] = field(default_factory=dict)
    n_seen: int = 0
    n_accepted: int = 0
    seconds_busy: float = 0.0
    resolution_143: float = float("nan")
    resolution_05: float = float("nan")
    n_at_last_update: int = 0

    @property
    def particles_per_minute(self) -> float:
        """Particles processed per minute of busy time."""
        return 60.0 * self.n_seen / self.seconds_busy if self.seconds_busy > 0 else 0.0


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _complete_table(star: Path) -> ParticleTable | None:
    """Return the particles if the star and every stack it names are complete, else None."""
    try:
        table = read_particles(star)
        last: dict[Path, int] = {}
        for path, index in table.image_locations():
            last[path] = max(index, last.get(path, -1))
        for stack, index in last.items():
            # read_map_header raises on a stack shorter than its header says.
            if index >= int(read_map_header(stack).stored_shape[0]):
                return None
    except (InputError, OSError, ValueError) as err:
        log.debug("not ready: %s (%s)", star, err)
        return None
    return table


def _stacks_signature(table: ParticleTable) -> list[tuple[str, int, int]]:
    stacks = sorted({str(path) for path, _ in table.image_locations()})
    return [(s, *_signature(Path(s))) for s in stacks]


def watch_once(
    watch_dir: Path,
    config: StreamConfig,
    status: StreamStatus,
    seen: dict[str, tuple[float, Any]],
) -> list[tuple[Path, ParticleTable]]:
    """Complete, not yet processed star files of ``watch_dir``, oldest first.

    ``seen`` maps a file name to (first time its current signature was seen, signature); a
    file is returned only when its signature (star + stacks) has been stable for
    ``config.settle_seconds``.
    """
    now = time.monotonic()
    ready: list[tuple[Path, ParticleTable]] = []
    stars = sorted(watch_dir.glob(config.pattern), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for star in stars:
        if star.name in status.files_done:
            continue
        table = _complete_table(star)
        if table is None:
            seen.pop(star.name, None)
            continue
        signature = (_signature(star), _stacks_signature(table))
        first, previous = seen.get(star.name, (now, None))
        if previous != signature:
            seen[star.name] = (now, signature)
            if config.settle_seconds > 0:
                continue
        elif now - first < config.settle_seconds:
            continue
        ready.append((star, table))
    return ready


def merge_tables(tables: list[ParticleTable]) -> ParticleTable:
    """Concatenate particle tables (optics groups of the first table; columns unioned)."""
    if not tables:
        raise InputError(None, "no particle tables to merge")
    first = tables[0]
    particles = pd.concat([t.particles for t in tables], ignore_index=True, sort=False)
    blocks = dict(first.blocks)
    blocks[first.particles_block] = particles
    return ParticleTable(particles, first.optics, blocks, first.particles_block, first.path)


def _with_absolute_images(table: ParticleTable) -> ParticleTable:
    names = [f"{index + 1:06d}@{path.resolve()}" for path, index in table.image_locations()]
    particles = table.particles.copy()
    particles["rlnImageName"] = names
    blocks = dict(table.blocks)
    blocks[table.particles_block] = particles
    return ParticleTable(particles, table.optics, blocks, table.particles_block, table.path)


class _Maps:
    """The two half-set accumulators and their output."""

    def __init__(self, box: int, angpix: float, config: StreamConfig) -> None:
        self.recs = {
            k: FourierReconstructor(box, angpix, 2.0, config.symmetry, config.device)
            for k in (1, 2)
        }

    def state(self) -> dict[str, Any]:
        return {f"half{k}": rec.state_dict() for k, rec in self.recs.items()}

    def load(self, state: dict[str, Any]) -> None:
        for k, rec in self.recs.items():
            rec.load_state_dict(state[f"half{k}"])

    def write(self, out: Path, status: StreamStatus) -> None:
        from cryopose.evaluation.fsc import fsc, plot_fsc, resolution_at, shell_frequencies

        if min(rec.n_inserted for rec in self.recs.values()) == 0:
            return
        h1, h2 = (self.recs[k].finalize("relion") for k in (1, 2))
        total = FourierReconstructor(
            self.recs[1].box, self.recs[1].angpix, 2.0, self.recs[1].symmetry, self.recs[1].device
        )
        for rec in self.recs.values():
            total.merge(rec)
        full = total.finalize("relion")
        angpix = self.recs[1].angpix
        for name, vol in (("half1.mrc", h1), ("half2.mrc", h2), ("map.mrc", full)):
            write_map(out / name, vol.cpu(), angpix)
        curve = fsc(h1, h2)
        box = self.recs[1].box
        status.resolution_143 = resolution_at(curve, box, angpix, 0.143)
        status.resolution_05 = resolution_at(curve, box, angpix, 0.5)
        report = {
            "n_particles_seen": status.n_seen,
            "n_particles_accepted": status.n_accepted,
            "n_half": [self.recs[1].n_inserted, self.recs[2].n_inserted],
            "resolution_0143_angst": status.resolution_143,
            "resolution_05_angst": status.resolution_05,
            "particles_per_minute": status.particles_per_minute,
            "fsc": [float(v) for v in curve],
            "angpix": angpix,
        }
        with atomic_path(out / "fsc.json") as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
        freq = shell_frequencies(box, angpix)
        title = f"{status.n_accepted} particles"
        plot_fsc({"half maps": (freq, curve)}, out / "fsc.png", title=title)


def _save_state(out: Path, status: StreamStatus, maps: _Maps | None) -> None:
    state: dict[str, Any] = {
        "files_done": {k: list(v) for k, v in status.files_done.items()},
        "n_seen": status.n_seen,
        "n_accepted": status.n_accepted,
        "seconds_busy": status.seconds_busy,
        "n_at_last_update": status.n_at_last_update,
        "maps": None if maps is None else maps.state(),
    }
    with atomic_path(out / STATE_NAME) as tmp:
        torch.save(state, tmp)


def _load_state(out: Path, config: StreamConfig) -> tuple[StreamStatus, _Maps | None]:
    path = out / STATE_NAME
    if not path.is_file():
        return StreamStatus(), None
    state = torch.load(path, weights_only=True)
    status = StreamStatus(
        files_done={k: [int(x) for x in v] for k, v in state["files_done"].items()},
        n_seen=int(state["n_seen"]),
        n_accepted=int(state["n_accepted"]),
        seconds_busy=float(state["seconds_busy"]),
        n_at_last_update=int(state["n_at_last_update"]),
    )
    maps = None
    if state["maps"] is not None:
        half = state["maps"]["half1"]
        maps = _Maps(int(half["box"]), float(half["angpix"]), config)
        maps.load(state["maps"])
    return status, maps


def _rebuild_particles(out: Path, status: StreamStatus) -> None:
    tables = [
        read_particles(out / "processed" / name)
        for name in status.files_done
        if (out / "processed" / name).is_file()
    ]
    tables = [t for t in tables if len(t)]
    if tables:
        write_particles(merge_tables(tables), out / "particles.star")


def _log_row(out: Path, status: StreamStatus, star: str, n_in: int, n_kept: int) -> None:
    path = out / "stream_log.csv"
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(
                [
                    "time",
                    "file",
                    "particles",
                    "accepted",
                    "total_accepted",
                    "particles_per_min",
                    "resolution_0143_angst",
                ]
            )
        writer.writerow(
            [
                time.strftime("%Y-%m-%dT%H:%M:%S"),
                star,
                n_in,
                n_kept,
                status.n_accepted,
                f"{status.particles_per_minute:.1f}",
                f"{status.resolution_143:.2f}",
            ]
        )


def stream_folder(
    watch_dir: str | Path,
    out_dir: str | Path,
    process: Processor,
    config: StreamConfig | None = None,
    echo: Callable[[str], None] | None = print,
) -> StreamStatus:
    """Follow ``watch_dir`` and keep half maps, map and FSC in ``out_dir`` up to date.

    Parameters
    ----------
    watch_dir
        Folder the acquisition pipeline writes star files and stacks into.
    out_dir
        Output folder (created); holds the resumable state.
    process
        Particles of one complete star file -> the accepted particles with poses (e.g.
        :class:`cryopose.pose.pipeline.PosePipeline`); may return an empty table.
    config
        Stream settings.
    echo
        Where one line per processed file goes (``None``: silent).

    Returns
    -------
    StreamStatus
        Counts, timing and the last resolution, when the stream stops (idle time reached or
        stop file found).
    """
    cfg = config if config is not None else StreamConfig()
    watch, out = Path(watch_dir), Path(out_dir)
    if not watch.is_dir():
        raise InputError(watch, "expected a folder to watch")
    (out / "processed").mkdir(parents=True, exist_ok=True)
    status, maps = _load_state(out, cfg)
    if status.files_done and echo is not None:
        echo(f"resuming: {len(status.files_done)} files, {status.n_accepted} particles already in")
    seen: dict[str, tuple[float, Any]] = {}
    last_new = time.monotonic()
    while True:
        ready = watch_once(watch, cfg, status, seen)
        for star, table in ready:
            start = time.perf_counter()
            accepted = process(table)
            if maps is None and len(accepted):
                maps = _Maps(table_box(accepted), float(accepted.angpix()[0]), cfg)
            if maps is not None and len(accepted):
                insert_particles(
                    accepted,
                    maps.recs,
                    ctf=cfg.ctf,
                    subsets=half_set_labels(accepted),
                    device=cfg.device,
                )
            status.n_seen += len(table)
            status.n_accepted += len(accepted)
            status.seconds_busy += time.perf_counter() - start
            write_particles(
                _with_absolute_images(accepted) if len(accepted) else accepted,
                out / "processed" / star.name,
            )
            status.files_done[star.name] = list(_signature(star))
            if maps is not None and status.n_accepted - status.n_at_last_update >= cfg.update_every:
                maps.write(out, status)
                status.n_at_last_update = status.n_accepted
            _save_state(out, status, maps)  # the commit point: the file now counts as done
            _log_row(out, status, star.name, len(table), len(accepted))
            if echo is not None:
                echo(
                    f"{star.name}: {len(accepted)}/{len(table)} particles kept; "
                    f"{status.n_accepted} in the map; {status.particles_per_minute:.0f} "
                    f"particles/min; FSC 0.143 {status.resolution_143:.1f} A"
                )
            last_new = time.monotonic()
        if ready:
            _rebuild_particles(out, status)
        stop = (watch / cfg.stop_file).exists()
        idle = time.monotonic() - last_new
        if stop or (cfg.max_idle_seconds is not None and idle >= cfg.max_idle_seconds):
            break
        time.sleep(cfg.poll_seconds)
    if maps is not None and status.n_accepted > status.n_at_last_update:
        maps.write(out, status)
        status.n_at_last_update = status.n_accepted
        _save_state(out, status, maps)
    return status
