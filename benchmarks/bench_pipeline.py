"""The pose pipeline for related experiments vs cryoPARES 0.1.9 and RELION auto-refine.

One data set, one run, this machine: a C1-processed protein (PDB 3h84, Get3, about 110 A
across, a homodimer that is processed as C1 as in the developers' PEERS notes) at 64 px,
2 A/px, SNR 0.1, CTF and shifts on, simulated with ``cryopose simulate particles``: a
"previous experiment" of ``N_TRAIN`` particles with known poses (seed 0) to train on, and a
"new experiment" of ``N_TEST`` particles (seed 1) to process. Three measurements:

1. **Full pipeline particles/s** on the new experiment (network inference + pruning + local
   refinement + half-map reconstruction, start-up included): cryopose as the one command a
   user types (``cryopose pipeline --junk-fraction``; also timed as the four commands
   ``cryopose infer``, ``prune``, ``refine``, ``reconstruct --halves``) vs
   ``cryopares_infer`` with its local refinement and reconstruction. Each tool uses a small
   model trained on the previous experiment beforehand; training is not part of this row.
   cryoPARES trains for ``peer_minutes`` only (speed only: its network's speed does not
   depend on how well it learned). ``--peer-architecture default`` measures cryoPARES with
   its own default network instead (123 M parameters, a 10 GB checkpoint; the architecture
   a user gets without overrides): it trains for ``peer_minutes`` too, its scripted-model
   export is killed for lack of memory (see ``bench_pose.cryopares_train``), and it refines
   against the same map of the previous experiment as cryopose (it has no reconstruction of
   its own). Its row sits next to the small model's.
2. **Wall time to the same resolution** as RELION 3.1 auto-refine on the new experiment
   (``relion_refine_mpi`` from a 40 A low-pass of the true map, the command of the PEERS
   notes, 3 MPI ranks, one thread each). cryopose: the same pipeline run (network poses,
   pruning, local refinement against the map reconstructed from the previous experiment, half
   maps). Both tools' final poses are judged by :func:`truth_scores` (one reconstruction code,
   map-vs-truth FSC 0.5 as the criterion, half-map FSC 0.143 and PCC reported); cryopose's
   time is given without and with its training. RELION's result is cached in
   ``~/.cache/cryopose-bench/relion_<key>`` keyed by the data parameters and the command.
3. **Streaming throughput**: :func:`cryopose.pose.stream.stream_folder` with the same
   pipeline follows a folder into which a writer thread drops the new experiment in files of
   ``stream_file`` particles while it runs; particles/min from the first file written to the
   last one processed vs the ~4,700 particles/min a high-end microscope produces.

``--quick`` shrinks everything (300 / 100 particles, 0.3 min training, no peers) for a smoke
run (about a minute on an idle machine); its rows are printed, never written.

``--no-relion`` skips RELION's 80-minute run and leaves its rows in BENCHMARKS.md as they are.

Example usage: python benchmarks/bench_pipeline.py --write [--quick] [--relion-only] [--peer-only]
[--no-relion]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_pose import (
    CRYOPARES_CONFIG,
    NET_SIZE,
    ONE_THREAD,
    Dataset,
    cryopares_infer,
    cryopares_train,
    loadavg,
    median_mean_error,
    run_logged,
    simulate,
    train_cryopose,
)
from harness import Row, emit, machine

from cryopose.data.demo_files import demo_dir
from cryopose.evaluation.fsc import fsc, pcc, resolution_at
from cryopose.geometry.distance import angular_error
from cryopose.imaging.filters import lowpass
from cryopose.io.mrc import read_images, read_map, write_map, write_stack
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.pose.pipeline import PipelineConfig, PosePipeline
from cryopose.pose.reconstruct import reconstruct_particles
from cryopose.pose.stream import StreamConfig, stream_folder

STRUCTURE = demo_dir().parent / "shrec" / "3h84.pdb.gz"  # bundled with cryopose
BOX, ANGPIX, SNR = 64, 2.0, 0.1
N_TRAIN, N_TEST = 2000, 1000
REFERENCE_LOWPASS = 40.0  # Angstrom, RELION's initial reference
PARTICLE_DIAMETER = 110  # Angstrom, RELION's mask
MICROSCOPE_PER_MIN = 4700.0  # particles/min of a high-end instrument (issue 7)
JUNK_FRACTION = 0.05  # pruned per run (the data have no junk: this measures the cost)
INLIER_DEG = 10.0  # relative rotations this close to their mode define RELION's frame rotation
RELION_NP = 3  # MPI ranks: one leader and two workers, one per half set

# The command of the PEERS notes; --i, --ref and --o are added per run.
RELION_ARGS = [
    "--auto_refine", "--split_random_halves", "--firstiter_cc", "--ini_high", "30",
    "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "2", "--ctf",
    "--particle_diameter", str(PARTICLE_DIAMETER), "--flatten_solvent", "--zero_mask",
    "--oversampling", "1", "--healpix_order", "2", "--auto_local_healpix_order", "4",
    "--offset_range", "5", "--offset_step", "2", "--sym", "C1", "--low_resol_join_halves", "40",
    "--norm", "--scale", "--j", "1",
]  # fmt: skip


def cache_root() -> Path:
    """Where the data and RELION's results are kept between runs (outside the repository)."""
    default = Path.home() / ".cache" / "cryopose-bench"
    return Path(os.environ.get("CRYOPOSE_BENCH_CACHE", default))


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sizes:
    """Particle counts and budgets of one run (full or ``--quick``)."""

    n_train: int
    n_test: int
    train_minutes: float
    peer_minutes: float
    stream_file: int

    @property
    def label(self) -> str:
        """Folder suffix that keeps quick and full data apart."""
        return f"n{self.n_train}_{self.n_test}"


FULL = Sizes(N_TRAIN, N_TEST, train_minutes=25.0, peer_minutes=4.0, stream_file=100)
QUICK = Sizes(300, 100, train_minutes=0.3, peer_minutes=0.0, stream_file=25)


@dataclass(frozen=True)
class Data:
    """Absolute paths of the simulated data and maps."""

    train: Path
    test: Path
    truth: Path  # the map the particles were projected from
    reference: Path  # truth low-passed to REFERENCE_LOWPASS: RELION's initial model

    def params(self) -> dict[str, Any]:
        """The parameters that define the new experiment (the RELION cache key)."""
        table = json.loads((self.test.parent / "simulation.json").read_text())
        return {
            "structure": STRUCTURE.name,
            "box": BOX,
            "angpix": ANGPIX,
            "snr": SNR,
            "reference_lowpass": REFERENCE_LOWPASS,
            "simulation": table,
        }


def make_data(sizes: Sizes) -> Data:
    """Simulate (first use only) the previous and the new experiment and RELION's reference."""
    root = cache_root() / f"pipeline_{STRUCTURE.name.split('.')[0]}_b{BOX}_{sizes.label}"
    train = simulate(STRUCTURE, root / "train", sizes.n_train, 0, ANGPIX, BOX, SNR)
    test = simulate(STRUCTURE, root / "test", sizes.n_test, 1, ANGPIX, BOX, SNR)
    truth = test.parent / "ground_truth.mrc"
    reference = root / f"reference_lp{REFERENCE_LOWPASS:g}.mrc"
    if not reference.exists():
        volume, angpix = read_map(truth)
        write_map(reference, lowpass(volume, angpix, REFERENCE_LOWPASS, ndim=3), angpix)
    return Data(train, test, truth.resolve(), reference.resolve())


# ----------------------------------------------------------------------------- maps


def half_map_scores(half1: Path, half2: Path, truth: Path) -> dict[str, float]:
    """Half-map FSC 0.143 / 0.5 resolutions (unmasked) and PCC of their mean with the truth."""
    h1, angpix = read_map(half1)
    h2, _ = read_map(half2)
    true, _ = read_map(truth)
    curve = fsc(h1, h2)
    box = h1.shape[-1]
    return {
        "fsc_0143_angst": resolution_at(curve, box, angpix, 0.143),
        "fsc_05_angst": resolution_at(curve, box, angpix, 0.5),
        "pcc_truth": pcc((h1 + h2) / 2, true),
    }


def frame_rotation(truth: ParticleTable, poses: ParticleTable) -> torch.Tensor:
    """``(3, 3)`` rotation Q with ``A_true ~ A_pred @ Q``: a global rotation of the map frame.

    A refinement from a low-pass reference may converge to a rotated copy of the true map;
    its poses are then ``A_true @ Q^T``. The particle here is a pseudo-symmetric dimer, so a
    share of the poses is the symmetry mate ``A_true @ Q^T @ G`` instead: Q is the chordal
    mean of the relative rotations ``A_pred^T A_true`` within ``INLIER_DEG`` of their mode
    (the relative rotation with the most others that close). Applied to a mate, Q gives
    ``A_true @ G_true``, an equally valid pose of the true map.
    """
    rel = poses.rotations(torch.float64).transpose(-1, -2) @ truth.rotations(torch.float64)
    flat = rel.reshape(len(rel), 9)
    close = math.cos(math.radians(INLIER_DEG))
    # cos(angle between R_i and R_j) = (trace(R_i^T R_j) - 1) / 2
    counts = (((flat @ flat.T - 1.0) / 2.0) >= close).sum(1)
    mode = int(counts.argmax())
    inliers = ((flat @ flat[mode] - 1.0) / 2.0) >= close
    u, _, vh = torch.linalg.svd(rel[inliers].sum(0))
    d = torch.sign(torch.linalg.det(u @ vh))
    q: torch.Tensor = u @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=u.dtype)) @ vh
    return q


def image_key(name: object) -> tuple[int, str]:
    """``(index, stack file name)`` of an ``rlnImageName`` (tools rewrite the folder part)."""
    index, path = str(name).split("@", 1)
    return int(index), Path(path).name


def truth_scores(star: Path, data: Data, remove_frame_rotation: bool) -> dict[str, Any]:
    """Map quality of the poses in ``star``, judged against the truth with one reconstruction.

    Half maps (``rlnRandomSubset``) and the full map are reconstructed with
    :func:`cryopose.pose.reconstruct.reconstruct_particles` from the poses of ``star`` (the
    same code for every tool), then: half-map FSC 0.143, map-vs-truth FSC 0.5 (the
    resolution the poses really support: half maps agree on a rotationally averaged blob
    even with random poses, the truth does not) and PCC with the truth, and the median pose
    error. ``remove_frame_rotation`` first rotates all poses by :func:`frame_rotation`.
    """
    truth = read_particles(data.test)
    table = read_particles(star, data.test.parent)
    position = {image_key(name): i for i, name in enumerate(truth.particles["rlnImageName"])}
    matched = truth.subset([position[image_key(n)] for n in table.particles["rlnImageName"]])
    rotation_deg = 0.0
    if remove_frame_rotation:
        q = frame_rotation(matched, table)
        rotation_deg = float(angular_error(torch.eye(3, dtype=q.dtype)[None], q[None])[0])
        table.set_rotations((table.rotations(torch.float64) @ q).float())
    err = angular_error(matched.rotations(torch.float64), table.rotations(torch.float64))
    result = reconstruct_particles(table, ctf=True, halves=True, show_progress=False)
    true, _ = read_map(data.truth)
    assert result.fsc is not None
    box = result.full.shape[-1]
    return {
        "half_fsc_0143_angst": resolution_at(result.fsc, box, result.angpix, 0.143),
        "truth_fsc_05_angst": resolution_at(fsc(result.full, true), box, result.angpix, 0.5),
        "pcc_truth": pcc(result.full, true),
        # C1 errors: the symmetry mate of a pose counts as ~180 deg off.
        "median_error_c1_deg": float(err.median()),
        "frame_rotation_deg": rotation_deg,
        "n": len(table),
    }


# ----------------------------------------------------------------------------- RELION


def relion_key(data: Data) -> str:
    """Hash of the data parameters and the command: RELION's cache folder name."""
    blob = json.dumps({"data": data.params(), "args": RELION_ARGS, "np": RELION_NP}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def relion_model_resolution(model_star: Path) -> float:
    """``_rlnCurrentResolution`` of a ``run_model.star`` (RELION's own gold-standard value)."""
    for line in model_star.read_text().splitlines():
        if line.startswith("_rlnCurrentResolution"):
            return float(line.split()[1])
    sys.exit(f"{model_star}: no _rlnCurrentResolution")


def _alive(pid_file: Path) -> bool:
    """Whether the process whose id ``pid_file`` holds is still running."""
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def relion_autorefine(data: Data, rerun: bool = False) -> dict[str, Any]:
    """RELION auto-refine of the new experiment, or its cached result for the same data."""
    folder = cache_root() / f"relion_{relion_key(data)}"
    result_file = folder / "result.json"
    owner = folder / "running.pid"
    if not rerun and not result_file.exists() and _alive(owner):
        # Started earlier (``--relion-only &``): wait for it instead of starting over.
        print(f"RELION: waiting for the run in {folder} ({loadavg()})", file=sys.stderr)
        while _alive(owner) and not result_file.exists():
            time.sleep(20)
    if result_file.exists() and not rerun:
        cached: dict[str, Any] = json.loads(result_file.read_text())
        print(f"RELION: cached result {result_file} from {cached['date']}", file=sys.stderr)
        return cached
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    owner.write_text(f"{os.getpid()}\n")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(RELION_NP)]
    cmd += ["relion_refine_mpi", "--o", str(folder / "run"), "--i", str(data.test)]
    cmd += ["--ref", str(data.reference), *RELION_ARGS]
    print(f"RELION: auto-refine in {folder} ({loadavg()})", file=sys.stderr)
    load_before = loadavg()
    start = time.perf_counter()
    # Image names in the star file are relative to its folder.
    with (folder / "relion.log").open("w") as log:
        subprocess.run(cmd, check=True, cwd=data.test.parent, stdout=log, stderr=log)
    seconds = time.perf_counter() - start
    scores = half_map_scores(
        folder / "run_half1_class001_unfil.mrc", folder / "run_half2_class001_unfil.mrc", data.truth
    )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "params": data.params(),
        "command": " ".join(cmd),
        "seconds": seconds,
        "relion_resolution_angst": relion_model_resolution(folder / "run_model.star"),
        **scores,
        "error": median_mean_error(data.test, folder / "run_data.star"),
        "load": f"{load_before} -> {loadavg()}",
    }
    tmp = result_file.with_suffix(".json.part")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, result_file)
    return result


def relion_so_far(data: Data) -> dict[str, Any] | None:
    """A RELION run that has not finished: elapsed time and its last completed iteration.

    The elapsed time counts from RELION's first output (iteration 0), a little after its
    start, so a ratio against it is a lower bound. ``None`` when no iteration is written.
    """
    folder = cache_root() / f"relion_{relion_key(data)}"
    first = folder / "run_it000_optimiser.star"
    done = sorted(folder.glob("run_it[0-9][0-9][0-9]_data.star"))
    if not first.exists() or not done:
        return None
    last = done[-1]
    iteration = int(last.name[6:9])
    model = last.with_name(last.name.replace("_data.star", "_half1_model.star"))
    return {
        "partial": True,
        "iteration": iteration,
        "seconds": time.time() - first.stat().st_mtime,
        "relion_resolution_angst": relion_model_resolution(model),
        "quality": truth_scores(last, data, remove_frame_rotation=True),
    }


# ----------------------------------------------------------------------------- cryopose


def train_model(data: Data, sizes: Sizes, work: Path) -> dict[str, Any]:
    """Train cryopose on the previous experiment (map + pre-training + fine-tuning).

    Writes ``WORK/model`` and ``WORK/train_map.mrc`` (the previous experiment's map, used as
    the reference of the local refinement). Skipped when a model of the same run exists.
    """
    done = work / "train.json"
    if done.exists() and (work / "model" / "config.json").exists():
        cached: dict[str, Any] = json.loads(done.read_text())
        return cached
    result = train_cryopose(data.train, work, sizes.train_minutes, net_size=NET_SIZE)
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def cryopose_pipeline(data: Data, work: Path, junk_fraction: float) -> dict[str, Any]:
    """``cryopose pipeline`` on the new data, then the same as four commands.

    The one command (network poses, pruning, refinement, half maps, in one process) is the
    measurement; the four commands a user could type instead (``infer``, ``prune``,
    ``refine``, ``reconstruct --halves``) are timed too, to show what process start-ups and
    intermediate files cost. Everything on one thread, start-up included.
    """
    model, reference, out = work / "model", work / "train_map.mrc", work / "pipeline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load_before = loadavg()
    one = out / "one_command"
    cmd = ["cryopose", "pipeline", str(data.test), "--model", str(model), "--reference"]
    cmd += [str(reference), "-o", str(one), "--junk-fraction", f"{junk_fraction:g}"]
    cmd += ["--threads", "1"]
    total = run_logged(cmd, out / "pipeline.log", ONE_THREAD).seconds
    stages = json.loads((one / "pipeline.json").read_text())
    pred, kept, refined = out / "predicted.star", out / "pruned.star", out / "refined.star"
    steps = {
        "infer": ["infer", str(data.test), "--model", str(model), "-o", str(pred)],
        "prune": ["prune", str(pred), "-o", str(kept), "--junk-fraction", f"{junk_fraction:g}"],
        "refine": ["refine", str(kept), "--reference", str(reference), "-o", str(refined)],
        "reconstruct": ["reconstruct", str(refined), "-o", str(out / "map.mrc"), "--ctf"],
    }
    steps["reconstruct"].append("--halves")
    # Image names stay relative to the new experiment's folder (RELION's convention).
    for name in ("refine", "reconstruct"):
        steps[name] += ["--particles-dir", str(data.test.parent)]
    seconds = {
        name: run_logged(["cryopose", *cmd], out / f"{name}.log", ONE_THREAD).seconds
        for name, cmd in steps.items()
    }
    n_test = len(read_particles(data.test))
    result_star = one / "particles.star"
    work_s = stages["inference_s"] + stages["refinement_s"] + stages["reconstruction_s"]
    return {
        "total_seconds": total,
        "particles_per_s": n_test / total,
        "stage_seconds": {
            "inference": stages["inference_s"],
            "refinement": stages["refinement_s"],
            "reconstruction": stages["reconstruction_s"],
            "start-up and I/O": total - work_s,
        },
        "four_commands_seconds": seconds,
        "four_commands_particles_per_s": n_test / sum(seconds.values()),
        "n_input": n_test,
        "n_kept": len(read_particles(result_star)),
        "cli_fsc_0143_angst": stages["resolution_fsc_0.143"],
        **truth_scores(result_star, data, remove_frame_rotation=False),
        "error_network": median_mean_error(data.test, pred),
        "error_refined": median_mean_error(data.test, result_star),
        "load": f"{load_before} -> {loadavg()}",
    }


# ----------------------------------------------------------------------------- streaming


class _Timed:
    """A stream processor that remembers when it last finished a file."""

    def __init__(self, pipeline: PosePipeline) -> None:
        self.pipeline = pipeline
        self.last_done = 0.0

    def __call__(self, table: ParticleTable) -> ParticleTable:
        kept = self.pipeline(table)
        self.last_done = time.perf_counter()
        return kept


def _write_files(table: ParticleTable, folder: Path, per_file: int, started: list[float]) -> None:
    """Drop ``table`` into ``folder`` as stacks + star files of ``per_file`` particles.

    Each stack is written before its star file (as acquisition software does); the time of
    the first star file goes to ``started``.
    """
    for k, first in enumerate(range(0, len(table), per_file)):
        chunk = table.subset(list(range(first, min(first + per_file, len(table)))))
        images = read_images(chunk.image_locations())
        name = f"batch_{k:04d}"
        write_stack(folder / f"{name}.mrcs", images, float(chunk.angpix()[0]))
        particles = chunk.particles.copy()
        particles["rlnImageName"] = [f"{i + 1:06d}@{name}.mrcs" for i in range(len(chunk))]
        blocks = dict(chunk.blocks)
        blocks[chunk.particles_block] = particles
        write_particles(
            ParticleTable(particles, chunk.optics, blocks, chunk.particles_block, chunk.path),
            folder / f"{name}.star",
        )
        if not started:
            started.append(time.perf_counter())


def stream_throughput(
    data: Data, work: Path, sizes: Sizes, junk_fraction: float, threads: int = 1
) -> dict[str, Any]:
    """Follow a folder that a writer thread fills with the new experiment while the stream runs.

    Particles/min: particles processed / (last file processed - first file written); the
    stream's own busy-time figure is reported too. ``threads``: torch CPU threads meanwhile
    (a stream next to a microscope has the machine to itself).
    """
    watch, out = work / "stream_in", work / "stream_out"
    for folder in (watch, out):
        shutil.rmtree(folder, ignore_errors=True)
    watch.mkdir(parents=True)
    table = read_particles(data.test)
    pipeline = PosePipeline(
        work / "model", work / "train_map.mrc", PipelineConfig(junk_fraction=junk_fraction)
    )
    timed = _Timed(pipeline)
    started: list[float] = []
    writer = threading.Thread(target=_write_files, args=(table, watch, sizes.stream_file, started))
    config = StreamConfig(
        update_every=len(table) // 2, poll_seconds=0.2, settle_seconds=0.5, max_idle_seconds=8.0
    )
    load_before = loadavg()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        writer.start()
        status = stream_folder(watch, out, timed, config, echo=None)
        writer.join()
    finally:
        torch.set_num_threads(before)
    wall = timed.last_done - started[0]
    return {
        "n_seen": status.n_seen,
        "n_accepted": status.n_accepted,
        "files": len(status.files_done),
        "wall_seconds": wall,
        "particles_per_min": 60.0 * status.n_seen / wall,
        "busy_particles_per_min": status.particles_per_minute,
        "fsc_0143_angst": status.resolution_143,
        "threads": threads,
        "load": f"{load_before} -> {loadavg()}",
    }


# ----------------------------------------------------------------------------- cryoPARES


#: ``--peer-architecture``: cryoPARES's ``--config`` overrides. "small" is bench_pose's CPU
#: model (the size of cryopose's network); "default" keeps cryoPARES's own architecture.
PEER_CONFIGS: dict[str, list[str]] = {
    "small": CRYOPARES_CONFIG,
    "default": [c for c in CRYOPARES_CONFIG if not c.startswith("models.")],
}


def cryopares_pipeline(
    data: Data,
    sizes: Sizes,
    rerun: bool,
    remeasure: bool = False,
    architecture: str = "small",
    reference: Path | None = None,
) -> dict[str, Any]:
    """Short cryoPARES training on the previous experiment, then its full inference pipeline.

    ``cryopares_infer`` with its defaults: network, local refinement (+-4 deg at 2 deg, the
    default grid, smaller than cryopose's +-6 deg coarse + +-2 deg fine passes) and the
    reconstruction. Cached like bench_pose's peer runs (``--rerun-peer`` to redo;
    ``remeasure`` times the inference of the cached model again, e.g. at another load).
    ``architecture`` picks :data:`PEER_CONFIGS`; ``reference`` is the map of its local
    refinement (default: its own reconstruction of the previous experiment).
    """
    config = PEER_CONFIGS[architecture]
    settings: dict[str, Any] = {
        "bench": "pipeline",
        "data": data.params(),
        "train": str(data.train),
        "peer_minutes": sizes.peer_minutes,
        "config": config,
    }
    if reference is not None:
        settings["reference"] = str(reference)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    work = cache_root() / f"cryopares_pipeline_{key}"
    result_file = work / "result.json"
    train: dict[str, Any] | None = None
    if result_file.exists() and not rerun:
        cached: dict[str, Any] = json.loads(result_file.read_text())
        print(f"cryoPARES: cached result {result_file} from {cached['date']}", file=sys.stderr)
        if not remeasure:
            return cached
        train = cached["train"]  # the same trained model, timed again at today's load
    work.mkdir(parents=True, exist_ok=True)
    if train is None:
        print(f"cryoPARES: training for {sizes.peer_minutes} min ({loadavg()})", file=sys.stderr)
        pose_data = Dataset(data.train, data.test, data.test)
        train = cryopares_train(
            pose_data, work, sizes.peer_minutes, box=BOX, angpix=ANGPIX, config=config
        )
    load_before = loadavg()
    run, pred = cryopares_infer(
        data.test, train["checkpoint_dir"], work / "pipeline", skip=(), reference_map=reference
    )
    n_test = len(read_particles(data.test))
    result = {
        "settings": settings,
        "architecture": architecture,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "train": train,
        "seconds": run.seconds,
        "particles_per_s": n_test / run.seconds,
        "peak_rss_mb": run.peak_rss_mb,
        "error": median_mean_error(data.test, pred),
        "load": f"{load_before} -> {loadavg()}",
    }
    tmp = result_file.with_suffix(".json.part")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, result_file)
    return result


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="small smoke run, no peers")
    parser.add_argument("--relion-only", action="store_true", help="run (or load) RELION only")
    parser.add_argument(
        "--relion-so-far",
        action="store_true",
        help="do not wait for a running RELION: use its last iteration (ratio: lower bound)",
    )
    parser.add_argument("--rerun-relion", action="store_true", help="ignore RELION's cache")
    parser.add_argument(
        "--no-relion",
        action="store_true",
        help="skip RELION (its rows in BENCHMARKS.md are left as they are)",
    )
    parser.add_argument("--peer-only", action="store_true", help="run (or load) cryoPARES only")
    parser.add_argument(
        "--remeasure-peer", action="store_true", help="time cryoPARES's cached model again"
    )
    parser.add_argument("--rerun-peer", action="store_true", help="ignore cryoPARES's cache")
    parser.add_argument(
        "--peer-architecture",
        choices=sorted(PEER_CONFIGS),
        default="small",
        help="cryoPARES's network: the small CPU model or its own default (123 M parameters)",
    )
    parser.add_argument("--retrain", action="store_true", help="retrain the cryopose model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = QUICK if args.quick else FULL
    data = make_data(sizes)
    if args.relion_only:
        print(json.dumps(relion_autorefine(data, args.rerun_relion), indent=2))
        return
    work = cache_root() / f"cryopose_pipeline_{sizes.label}_{sizes.train_minutes:g}min"
    if args.retrain:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    # The default architecture has no map of its own: it gets cryopose's (trained first).
    default_peer = args.peer_architecture == "default"
    peer_reference = work / "train_map.mrc" if default_peer else None

    def peer_run() -> dict[str, Any]:
        return cryopares_pipeline(
            data, sizes, args.rerun_peer, args.remeasure_peer, args.peer_architecture,
            peer_reference,
        )  # fmt: skip

    if args.peer_only and not default_peer:
        print(json.dumps(peer_run(), indent=2))
        return
    train = train_model(data, sizes, work)
    if args.peer_only:
        print(json.dumps(peer_run(), indent=2))
        return
    print(f"cryopose train: {json.dumps(train)}", file=sys.stderr)
    ours = cryopose_pipeline(data, work, JUNK_FRACTION)
    print(f"cryopose pipeline: {json.dumps(ours)}", file=sys.stderr)
    streams = [stream_throughput(data, work, sizes, JUNK_FRACTION, threads) for threads in (1, 2)]
    for stream in streams:
        print(f"cryopose stream: {json.dumps(stream)}", file=sys.stderr)
    peer = None if args.quick else peer_run()
    if peer is not None:
        print(f"cryoPARES pipeline: {json.dumps(peer)}", file=sys.stderr)
    relion: dict[str, Any] | None = None
    if args.relion_so_far:
        relion = relion_so_far(data)
    elif not args.quick and not args.no_relion:
        relion = relion_autorefine(data, args.rerun_relion)
        run_data = cache_root() / f"relion_{relion_key(data)}" / "run_data.star"
        relion["quality"] = truth_scores(run_data, data, remove_frame_rotation=True)
    if relion is not None:
        print(f"RELION auto-refine: {json.dumps(relion)}", file=sys.stderr)
    write = args.write and not args.quick
    for row in rows(sizes, train, ours, streams, peer, relion):
        if args.no_relion and "RELION" in row.name:
            print(f"(not written: --no-relion) {row.markdown()}", file=sys.stderr)
            continue
        emit(row, write)
    print(machine(), file=sys.stderr)


def quality(scores: dict[str, Any]) -> str:
    """Map quality of :func:`truth_scores` in a few words."""
    return (
        f"FSC 0.5 vs truth {scores['truth_fsc_05_angst']:.1f} A, half-map FSC 0.143 "
        f"{scores['half_fsc_0143_angst']:.1f} A, PCC {scores['pcc_truth']:.3f}"
    )


def rows(
    sizes: Sizes,
    train: dict[str, Any],
    ours: dict[str, Any],
    streams: list[dict[str, Any]],
    peer: dict[str, Any] | None,
    relion: dict[str, Any] | None,
) -> list[Row]:
    """The BENCHMARKS.md rows of one run."""
    command = "python benchmarks/bench_pipeline.py" + (" --quick" if sizes is QUICK else "")
    data = f"{sizes.n_test:,} particles, {BOX} px, {ANGPIX:g} A/px, SNR {SNR:g}"
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in ours["stage_seconds"].items())
    mine = ours["particles_per_s"]
    theirs = None if peer is None else peer["particles_per_s"]
    what = (
        f"full pipeline particles/s (network + pruning + local refinement + half-map "
        f"reconstruction, start-up included), {data}"
    )
    peer_text = "n/a" if theirs is None else f"cryoPARES {theirs:.2f} particles/s"
    peer_command = command
    if peer is not None and peer.get("architecture", "small") == "default":
        peer_command += " --no-relion --peer-architecture default"
        what += (
            f"; cryoPARES with its default architecture, trained {sizes.peer_minutes:g} min "
            "beforehand (speed only), refining against cryopose's map of the previous "
            "experiment"
        )
        ptrain = peer["train"]
        peer_text += (
            f" (default network, {ptrain.get('total_params') or '?'} parameters, checkpoint "
            f"{ptrain['checkpoint_mb'] / 1e3:.1f} GB, peak memory "
            f"{peer['peak_rss_mb'] / 1e3:.1f} GB; export of its scripted model after "
            f"training: {ptrain.get('script_export', 'done')})"
        )
    else:
        what += (
            f"; small models trained beforehand (cryoPARES {sizes.peer_minutes:g} min, speed only)"
        )
    out = [
        Row(
            "pose pipeline",
            what,
            f"{mine:.1f} particles/s as one `cryopose pipeline` command ({stages}); as 4 "
            f"commands (infer, prune, refine, reconstruct) "
            f"{ours['four_commands_particles_per_s']:.1f} particles/s",
            peer_text,
            None if theirs is None else mine / theirs,
            peer_command,
        )
    ]
    res = quality(ours)
    t_pipe, t_train = ours["total_seconds"], train["command_seconds"]
    peer_cell, ratio_pipe, ratio_all, verdict = "n/a", None, None, ""
    if relion is not None:
        q = relion["quality"]
        state = (
            f"NOT converged after {relion['seconds'] / 60:.0f} min (iteration "
            f"{relion['iteration']}; ratios are lower bounds)"
            if relion.get("partial")
            else f"{relion['seconds'] / 60:.1f} min"
        )
        peer_cell = (
            f"RELION auto-refine {state}, {quality(q)}, frame rotation "
            f"{q['frame_rotation_deg']:.1f} deg removed (its own FSC 0.143 "
            f"{relion['relion_resolution_angst']:.1f} A)"
        )
        ratio_pipe = relion["seconds"] / t_pipe
        ratio_all = relion["seconds"] / (t_pipe + t_train)
        if ours["truth_fsc_05_angst"] > q["truth_fsc_05_angst"] + 1e-6:
            # Not the same map quality: the times are reported, a speed ratio would mislead.
            verdict = "; NOT the same resolution: worse than RELION"
            ratio_pipe = ratio_all = None
    name = f"wall time to RELION's map-vs-truth FSC 0.5 resolution, {data}, C1"
    out.append(
        Row(
            "pose pipeline",
            f"{name}, model trained beforehand on {sizes.n_train:,} particles of a previous "
            "experiment (training not counted)",
            f"{t_pipe:.0f} s, {res}{verdict}",
            peer_cell,
            ratio_pipe,
            command,
        )
    )
    out.append(
        Row(
            "pose pipeline",
            f"{name}, training included (map of the previous experiment + pre-training + "
            f"fine-tuning, {sizes.train_minutes:g} min budget)",
            f"{(t_pipe + t_train) / 60:.1f} min ({t_train / 60:.1f} min training + {t_pipe:.0f} s "
            f"pipeline), {res}{verdict}",
            peer_cell,
            ratio_all,
            command,
        )
    )
    for stream in streams:
        threads = stream["threads"]
        out.append(
            Row(
                "pose pipeline",
                f"streaming particles/min, files of {sizes.stream_file} particles written while "
                f"`stream_folder` runs (inference + pruning + refinement + half maps), {data}, "
                f"{threads} thread{'s' if threads > 1 else ''}",
                f"{stream['particles_per_min']:,.0f} particles/min (busy time "
                f"{stream['busy_particles_per_min']:,.0f})",
                f"microscope {MICROSCOPE_PER_MIN:,.0f} particles/min",
                stream["particles_per_min"] / MICROSCOPE_PER_MIN,
                command,
            )
        )
    return out


if __name__ == "__main__":
    main()
