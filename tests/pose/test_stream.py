"""Streaming: only complete files are read, maps equal a one-shot reconstruction, it resumes."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.io.mrc import read_map
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.pose.reconstruct import reconstruct_particles
from cryopose.pose.stream import StreamConfig, StreamStatus, stream_folder, watch_once
from cryopose.simulate.particles import SimulationConfig, simulate_particles

N = 240


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> ParticleTable:
    volume, angpix = read_map(Path(__file__).parents[1] / "data" / "EMD-3197.map")
    cfg = SimulationConfig(n=N, box=32, angpix=4.0, snr=1.0, ctf=True, seed=3)
    folder = tmp_path_factory.mktemp("sim")
    return read_particles(simulate_particles(volume, angpix, folder, cfg, progress=False))


def _part(table: ParticleTable, rows: slice, stack: Path) -> ParticleTable:
    """Rows of ``table`` with their images copied into their own stack ``stack``."""
    from cryopose.io.mrc import read_images, write_stack

    sub = table.subset(np.arange(N)[rows])
    write_stack(stack, read_images(sub.image_locations()), float(sub.angpix()[0]))
    sub.particles["rlnImageName"] = [f"{i + 1:06d}@{stack.name}" for i in range(len(sub))]
    return sub


def _write_part(table: ParticleTable, rows: slice, folder: Path, name: str) -> None:
    staging = folder.parent / "staging"
    staging.mkdir(exist_ok=True)
    sub = _part(table, rows, staging / f"{name}.mrcs")
    shutil.move(staging / f"{name}.mrcs", folder / f"{name}.mrcs")
    sub.path = folder / f"{name}.star"
    write_particles(sub, folder / f"{name}.star")


def _config(**kw: object) -> StreamConfig:
    base = {"update_every": 100, "poll_seconds": 0.05, "settle_seconds": 0.2, "ctf": True}
    base.update(kw)
    return StreamConfig(**base)  # type: ignore[arg-type]


def test_half_written_stack_is_not_read(simulated: ParticleTable, tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    _write_part(simulated, slice(0, 40), watch, "a")
    stack = watch / "a.mrcs"
    full = stack.read_bytes()
    stack.write_bytes(full[: len(full) // 2])  # the microscope is still writing it
    cfg, status, seen = _config(), StreamStatus(), {}
    assert watch_once(watch, cfg, status, seen) == []
    stack.write_bytes(full)
    assert watch_once(watch, cfg, status, seen) == []  # complete now, but not yet settled
    time.sleep(0.25)
    ready = watch_once(watch, cfg, status, seen)
    assert [p.name for p, _ in ready] == ["a.star"] and len(ready[0][1]) == 40


def test_stream_equals_one_shot_reconstruction_and_resumes(
    simulated: ParticleTable, tmp_path: Path
) -> None:
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    _write_part(simulated, slice(0, 100), watch, "a")
    # First run: one file present, a second arrives while streaming; then idle -> stop.
    writer = threading.Timer(0.3, _write_part, (simulated, slice(100, 160), watch, "b"))
    writer.start()
    status = stream_folder(watch, out, lambda t: t, _config(max_idle_seconds=1.5), echo=None)
    writer.join()
    assert sorted(status.files_done) == ["a.star", "b.star"] and status.n_seen == 160
    # Restart after a new file: only that file is added (no double counting).
    _write_part(simulated, slice(160, N), watch, "c")
    lines: list[str] = []
    status = stream_folder(watch, out, lambda t: t, _config(max_idle_seconds=0.8), lines.append)
    assert lines[0].startswith("resuming: 2 files, 160 particles")
    assert status.n_seen == N and status.n_accepted == N and len(status.files_done) == 3
    assert len(read_particles(out / "particles.star")) == N
    # The streamed half maps are the one-shot gold-standard reconstruction of all particles.
    one_shot = reconstruct_particles(simulated, ctf=True, halves=True, show_progress=False)
    for name, reference in (("half1.mrc", one_shot.half1), ("half2.mrc", one_shot.half2)):
        streamed, _ = read_map(out / name)
        assert reference is not None
        torch.testing.assert_close(streamed, reference, rtol=0, atol=1e-4 * float(reference.std()))
    assert np.isfinite(status.resolution_143) and status.resolution_143 < 20.0
    assert (out / "fsc.png").stat().st_size > 0 and (out / "stream_log.csv").is_file()


def test_pruned_particles_are_left_out(simulated: ParticleTable, tmp_path: Path) -> None:
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    _write_part(simulated, slice(0, 60), watch, "a")
    (watch / "STOP").touch()
    keep_even = lambda t: t.subset(np.arange(0, len(t), 2))  # noqa: E731
    status = stream_folder(watch, out, keep_even, _config(settle_seconds=0.0), echo=None)
    assert status.n_seen == 60 and status.n_accepted == 30
    assert len(read_particles(out / "particles.star")) == 30
