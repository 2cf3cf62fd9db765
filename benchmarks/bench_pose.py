"""Supervised pose estimation: ``cryopose train/infer`` vs cryoPARES 0.1.9 on the same particles.

Both tools learn poses from the same simulated star file and predict the same held-out star
file, in the same run, on this machine (CPU, one thread each): 2,000 training and 500 test
particles of a C1 protein (PDB 1u6g, Cul1-Cand1-Skp1, about 150 A across) at 64 px, 3 A/px,
SNR 0.1, CTF on, simulated with ``cryopose simulate particles`` (test set with another seed).
Each tool gets the same wall budget (``--max-minutes``) with an output grid of HEALPix order 3,
then predicts the test set from the network alone (no local refinement); cryopose also
predicts it with ``--tta 4``, the network averaged over four quarter turns of each image.

cryopose spends its budget the way its docs recommend for a new protein: it reconstructs a map
from the training particles (their poses are known), pre-trains on fresh particles simulated
from that map and imaged like the data (``PRETRAIN_SHARE`` of the budget), then fine-tunes on
the particles; its network sees the particles Fourier-cropped to 32 px (6 A/px). A second
cryopose network with cryoPARES's 64 px input measures inference speed at equal input size.

cryoPARES runs from its own virtualenv (``benchmarks/peers/cryopares.sh``) with the small CPU
model of the developers' PEERS notes and one data-loading worker (the shared 2-core machine).
Its training has no time limit option, so the budget is Lightning's ``max_time`` given through
the environment (``PL_TRAINER_MAX_TIME``), which ends the fit cleanly and lets cryoPARES save
its model as after a normal run. Its results are cached in ``benchmarks/out/cryopares_*.json``,
keyed by the settings, so rerunning the cryopose side does not retrain it; ``--rerun-peer``
forces a new peer run (no cache means the peer runs in this run).

Measured for each tool:

- training images/s: images of training steps / time of those steps (cryoPARES: its
  per-epoch training progress bar; cryopose: ``train_log.csv`` if it has an images/s column,
  otherwise images seen / command time),
- inference particles/s without start-up: ``400 / (t(500 particles) - t(100 particles))``,
- median / mean angular error on the test set after the budget (cryoPARES: computed here with
  ``cryopose.geometry.distance.angular_error``; cryopose: ``cryopose evaluate-poses --json``).

Ratios (> 1: cryopose wins): inference and training speed cryopose / cryoPARES, accuracy
cryoPARES median error / cryopose median error. The load average is printed next to every
measurement (the machine is shared, so training speeds are noisy).

``--concurrent`` trains both tools at the same time, one core each, for long budgets on a free
2-core machine (the full run: ``--max-minutes 60 --concurrent``).

Example usage:
    python benchmarks/bench_pose.py --max-minutes 10 [--peer-only] [--rerun-peer] [--concurrent]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from harness import ROOT, Row, emit, machine

from cryopose.data.demo_files import demo_dir
from cryopose.geometry.distance import angular_error
from cryopose.geometry.healpix import grid_resolution_deg
from cryopose.io.particles import read_particles, write_particles

DEFAULT_STRUCTURE = demo_dir().parent / "shrec" / "1u6g.pdb.gz"  # bundled with cryopose
BOX, ANGPIX, SNR = 64, 3.0, 0.1
N_TRAIN, N_TEST, N_TEST_SMALL = 2000, 500, 100
GRID_ORDER = 3
NET_SIZE = 32  # cryopose's network input: the 64 px particles Fourier-cropped (6 A/px)
# Of cryopose's training budget, the share spent pre-training on simulated particles. In a
# 60-min run with 0.7, fine-tuning on the 1,800 real particles never beat the validation median
# pre-training had reached, so most of the budget goes to pre-training.
PRETRAIN_SHARE = 0.8
# Both tools compute on one thread (cryoPARES: n_cpus_if_no_cuda=1): on a shared machine more
# threads than free cores spin instead of computing.
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
SYMMETRY = "C1"
BATCH_SIZE = 32
# cryopose's test-time augmentation measured next to the network alone (cryopose infer --tta).
TTA_TURNS = 4
OUT = ROOT / "benchmarks" / "out"

# The small CPU model of the PEERS notes (image2sphere with lmax 6, order-3 output grid) and
# the CPU settings without which cryoPARES starts a crashing CPU DDP or asks for CUDA.
CRYOPARES_CONFIG = [
    "train.use_cuda=False",
    "train.cuda_for_reconstruct=False",
    "train.n_cpus_if_no_cuda=1",
    "models.image2sphere.lmax=6",
    f"models.image2sphere.so3components.so3outputgrid.hp_order={GRID_ORDER}",
    "models.image2sphere.so3components.i2sprojector.sphere_fdim=64",
    "models.image2sphere.so3components.s2conv.f_out=16",
    "models.image2sphere.imageencoder.unet.out_channels_first=4",
    "train.accumulate_grad_batches=1",
    "datamanager.num_augmented_copies_per_batch=1",
]
# Lightning's per-epoch training bar: "Epoch 3: 100%|####| 44/44 [01:52<00:00, 0.39it/s, ...]".
EPOCH_BAR = re.compile(r"Epoch (\d+):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def loadavg() -> str:
    """The 1-minute load average of the machine, e.g. ``"load 1.93"``."""
    return "load " + Path("/proc/loadavg").read_text().split()[0]


def cache_dir() -> Path:
    """Where simulated particles and peer runs are kept between runs (outside the repo)."""
    return Path(os.environ.get("CRYOPOSE_BENCH_DIR", "/tmp/cryopose-bench"))


def peer_venv() -> Path:
    """The cryoPARES virtualenv made by ``benchmarks/peers/cryopares.sh``."""
    peers = Path(os.environ.get("CRYOPOSE_PEERS", Path.home() / ".cache" / "cryopose-peers"))
    return peers / "cryopares"


def peer_bin(name: str) -> str:
    """Absolute path of a cryoPARES command; exits with the install hint when it is missing."""
    path = peer_venv() / "bin" / name
    if not path.exists():
        sys.exit(f"{path} not found: install cryoPARES with bash benchmarks/peers/cryopares.sh")
    return str(path)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    """The star files both tools use (absolute paths)."""

    train: Path
    test: Path
    test_small: Path


def simulate(
    structure: Path,
    folder: Path,
    n: int,
    seed: int,
    angpix: float = ANGPIX,
    box: int = BOX,
    snr: float = SNR,
) -> Path:
    """Simulate ``n`` particles into ``folder`` on first use; return the star file."""
    star = folder / "particles.star"
    if not star.exists():
        cmd = ["cryopose", "simulate", "particles", "--structure", str(structure)]
        cmd += ["--angpix", str(angpix), "--box", str(box), "-n", str(n), "--snr", str(snr)]
        cmd += ["--ctf", "--seed", str(seed), "-o", str(folder)]
        subprocess.run(cmd, check=True, capture_output=True)
    return star.resolve()


def dataset(structure: Path) -> Dataset:
    """Training set (seed 0), held-out test set (seed 1) and its first 100 particles."""
    root = cache_dir() / f"pose_{structure.name.split('.')[0]}_b{BOX}"
    train = simulate(structure, root / "train", N_TRAIN, seed=0)
    test = simulate(structure, root / "test", N_TEST, seed=1)
    small = test.parent / f"particles_first{N_TEST_SMALL}.star"
    if not small.exists():
        table = read_particles(test)
        write_particles(table.subset(list(range(N_TEST_SMALL))), small)
    return Dataset(train, test, small.resolve())


# ----------------------------------------------------------------------------- running


@dataclass
class Run:
    """One finished command: wall time, peak memory of its process tree, timestamped output."""

    seconds: float
    peak_rss_mb: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    returncode: int = 0


def run_logged(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, check: bool = True
) -> Run:
    """Run ``cmd``, stream its output (stdout + stderr) to ``log`` and time every line.

    Progress bars rewrite their line with carriage returns; each rewrite is kept as a line.
    The peak RSS is the largest resident set of any process of the tree (Linux ``wait4``
    reports the maximum over the child and the descendants it waited for). A failed command
    ends the benchmark unless ``check`` is false (the caller then reads ``returncode``).
    """
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        pending = b""
        # read1 returns what is there (a progress bar update) instead of waiting for 64 kB.
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            now = time.perf_counter() - start
            pending += chunk
            *done, pending = re.split(rb"[\r\n]", pending)
            for raw in done:
                text = raw.decode(errors="replace")
                if text.strip():
                    lines.append((now, text))
                    out.write(text + "\n")
        if pending.strip():
            lines.append((time.perf_counter() - start, pending.decode(errors="replace")))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 and check:
        sys.exit(failure(cmd, log, Run(seconds, 0.0, lines, proc.returncode)))
    return Run(seconds, usage.ru_maxrss / 1024.0, lines, proc.returncode)


def failure(cmd: list[str], log: Path, run: Run) -> str:
    """The message of a failed command: its exit code, its last 25 lines and its log."""
    tail = "\n".join(text for _, text in run.lines[-25:])
    return f"command failed ({run.returncode}): {' '.join(cmd)}\n{tail}\nlog: {log}"


def median_mean_error(true_star: Path, pred_star: Path) -> dict[str, float]:
    """Angular errors (degrees, C1) of predicted vs true poses, rows matched by image.

    Images are matched by index and stack file name: tools write the folder part relative
    to wherever they put their star file.
    """
    truth, pred = read_particles(true_star), read_particles(pred_star)

    def key(name: object) -> tuple[int, str]:
        index, path = str(name).split("@", 1)
        return int(index), Path(path).name

    position = {key(name): i for i, name in enumerate(truth.particles["rlnImageName"])}
    index = [position[key(name)] for name in pred.particles["rlnImageName"]]
    err = angular_error(truth.subset(index).rotations(torch.float64), pred.rotations(torch.float64))
    return {
        "n": float(err.numel()),
        "median_deg": float(err.median()),
        "mean_deg": float(err.mean()),
        "within_10_deg": float((err < 10).double().mean()),
    }


# ----------------------------------------------------------------------------- cryoPARES


def peer_settings(data: Dataset, max_minutes: float) -> dict[str, Any]:
    """Everything the cached cryoPARES result depends on."""
    return {
        "peer": "cryopares 0.1.9",
        "train": str(data.train),
        "test": str(data.test),
        "n_train": N_TRAIN,
        "n_test": N_TEST,
        "box": BOX,
        "angpix": ANGPIX,
        "snr": SNR,
        "max_minutes": max_minutes,
        "config": CRYOPARES_CONFIG,
        "batch_size": BATCH_SIZE,
    }


def cache_path(settings: dict[str, Any]) -> Path:
    """``benchmarks/out/cryopares_<hash of settings>.json``."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return OUT / f"cryopares_{key}.json"


def train_speed(lines: list[tuple[float, str]]) -> tuple[int, int, float]:
    """(epochs begun, training batches, seconds of training steps) from the epoch bars.

    The bar restarts every epoch with the elapsed time of that epoch's training steps only
    (validation has its own bar), so the last update of each epoch gives its batches and time.
    """
    last: dict[int, tuple[int, float]] = {}
    for _, text in lines:
        for m in EPOCH_BAR.finditer(text):
            hours, minutes, secs = int(m.group(4) or 0), int(m.group(5)), int(m.group(6))
            last[int(m.group(1))] = (int(m.group(2)), 3600.0 * hours + 60.0 * minutes + secs)
    batches = sum(n for n, _ in last.values())
    return len(last), batches, sum(t for _, t in last.values())


# Run with the peer's python: its TensorBoard reader dumps every scalar event as JSON.
_DUMP_EVENTS = """
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.wall_time] for e in acc.Scalars(tag)]
                  for tag in acc.Tags()["scalars"]}))
"""


def epoch_speed(events_file: Path) -> tuple[int, float]:
    """(training batches, seconds) from cryoPARES's TensorBoard events.

    An epoch starts when the learning rate is logged (``lr-RAdam``, first step of the epoch)
    and ends when its training metric ``geo_degs_epoch`` is logged, after its validation pass
    (600 images, forward only), which is therefore included in the time.
    """
    python = str(peer_venv() / "bin" / "python")
    proc = subprocess.run(
        [python, "-c", _DUMP_EVENTS, str(events_file)], check=True, capture_output=True
    )
    scalars = json.loads(proc.stdout)
    starts = [wall for _, wall in scalars.get("lr-RAdam", [])]
    ends = scalars.get("geo_degs_epoch", [])
    if not starts or not ends:
        return 0, 0.0
    # The epoch-end event carries the global step of its last batch (0-based); the last epoch
    # may have been cut short by the time limit, so batches, not epochs, count the images.
    return int(ends[-1][0]) + 1, ends[-1][1] - starts[0]


def cryopares_train(
    data: Dataset,
    work: Path,
    max_minutes: float,
    box: int = BOX,
    angpix: float = ANGPIX,
    config: list[str] | None = None,
) -> dict[str, Any]:
    """Train for ``max_minutes``; return speed, memory, checkpoint size.

    ``box`` and ``angpix`` are the network's input (the particles' own sampling); ``config``
    the ``--config`` overrides (default :data:`CRYOPARES_CONFIG`, the small CPU model).
    cryoPARES ends its training by loading the best checkpoint again and exporting it with
    ``torch.jit.script``; with its default architecture (a 10 GB checkpoint) that step is
    killed for lack of memory on this 24 GB machine. Such a run is kept (``script_export``
    says so): its checkpoint is complete, and ``cryopares_infer`` loads the checkpoint when
    the scripted model is missing. It then has no reconstruction of its training set, so
    its inference needs ``reference_map``.
    """
    save_dir = work / "train"
    shutil.rmtree(save_dir, ignore_errors=True)
    cmd = [peer_bin("cryopares_train"), "--symmetry", SYMMETRY]
    cmd += ["--particles_star_fname", str(data.train), "--particles_dir", str(data.train.parent)]
    cmd += ["--train_save_dir", str(save_dir), "--image_size_px_for_nnet", str(box)]
    cmd += ["--sampling_rate_angs_for_nnet", str(angpix), "--NOT_split_halves"]
    cmd += ["--batch_size", str(BATCH_SIZE), "--num_dataworkers", "1", "--n_epochs", "100"]
    cmd += ["--config", *(CRYOPARES_CONFIG if config is None else config)]
    total = int(max_minutes * 60)
    env = dict(
        ONE_THREAD,
        PL_TRAINER_MAX_TIME=f"00:{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}",
    )
    load_before = loadavg()
    run = run_logged(cmd, work / "train.log", env, check=False)
    script_export = "done"
    if run.returncode != 0:
        said = [text for _, text in run.lines]
        saving = [i for i, text in enumerate(said) if "Trained finished. Saving model" in text]
        best_ckpt = sorted(save_dir.glob("version_*/allParticles/checkpoints/best.ckpt"))
        if not saving or not best_ckpt or any("Traceback" in t for t in said[saving[-1] :]):
            sys.exit(failure(cmd, work / "train.log", run))
        # The wrapper reports its training subprocess's own exit code (-9: SIGKILL).
        codes = re.findall(r"Exit code: (-?\d+)", "\n".join(said[saving[-1] :]))
        code = codes[-1] if codes else str(run.returncode)
        script_export = f"killed (exit {code})"
        print(f"cryoPARES: {script_export}; inference loads the checkpoint", file=sys.stderr)
    # Lightning's model summary: "Total params: 123 M" (bold in ANSI codes).
    plain = (re.sub(r"\x1b\[[0-9;]*m", "", text) for _, text in run.lines)
    params = [m.group(1) for t in plain if (m := re.search(r"Total params: *([\d.]+ ?\w?)", t))]
    epochs, batches, step_seconds = train_speed(run.lines)
    fit = [t for t, text in run.lines if "Training starts" in text or "Trained finished" in text]
    version = sorted(save_dir.glob("version_*"))[-1]
    ckpt_dir = version / "allParticles" / "checkpoints"
    best = (ckpt_dir / "best.ckpt").resolve()
    script = ckpt_dir / "best_script.pt"
    split = sorted((version / "allParticles" / "data_splits" / "train").glob("*.star"))
    n_train = sum(len(read_particles(star)) for star in split)
    events = sorted((version / "allParticles").glob("events.out.tfevents.*"))
    done_batches, epoch_seconds = epoch_speed(events[-1])
    return {
        "checkpoint_dir": str(version),
        "epochs": epochs,
        "train_batches": batches,
        "train_step_seconds": step_seconds,
        # Training steps alone when the progress bars reached the log, else whole epochs.
        "images_per_s": batches * BATCH_SIZE / step_seconds
        if step_seconds
        else done_batches * BATCH_SIZE / epoch_seconds,
        "batches_with_validation": done_batches,
        "epoch_seconds": epoch_seconds,
        "images_per_s_with_validation": done_batches * BATCH_SIZE / epoch_seconds
        if epoch_seconds
        else None,
        "fit_seconds": fit[-1] - fit[0] if len(fit) == 2 else None,
        "command_seconds": run.seconds,
        "peak_rss_mb": run.peak_rss_mb,
        "checkpoint_mb": best.stat().st_size / 1e6,
        "script_model_mb": script.stat().st_size / 1e6 if script.exists() else None,
        "train_particles": n_train,
        "total_params": params[-1] if params else None,
        "script_export": script_export,
        "load": f"{load_before} -> {loadavg()}",
    }


def cryopares_infer(
    star: Path,
    checkpoint_dir: str,
    results: Path,
    skip: tuple[str, ...] = ("--skip_localrefinement", "--skip_reconstruction"),
    reference_map: Path | None = None,
) -> tuple[Run, Path]:
    """Prediction of ``star``; return the run and the predicted star file.

    ``skip``: the stages left out (default: network only; ``()`` runs cryoPARES's whole
    pipeline: network, local refinement and reconstruction). ``reference_map``: the map of
    the local refinement (default: the model's reconstruction of its training set).
    """
    shutil.rmtree(results, ignore_errors=True)
    cmd = [peer_bin("cryopares_infer"), "--particles_star_fname", str(star)]
    cmd += ["--particles_dir", str(star.parent), "--checkpoint_dir", checkpoint_dir]
    cmd += ["--results_dir", str(results), "--data_halfset", "allParticles"]
    cmd += ["--model_halfset", "allParticles", "--NOT_use_cuda", "--n_cpus_if_no_cuda", "1"]
    cmd += ["--num_dataworkers", "1", "--batch_size", str(BATCH_SIZE)]
    cmd += list(skip)
    if reference_map is not None:
        cmd += ["--reference_map", str(reference_map)]
    run = run_logged(cmd, results.with_suffix(".log"))
    stars = sorted(results.glob("*.star"))
    if len(stars) != 1:
        sys.exit(f"expected one predicted star file in {results}, found {stars}")
    return run, stars[0]


def cryopares_side(data: Dataset, max_minutes: float, rerun: bool) -> dict[str, Any]:
    """Train, infer and evaluate cryoPARES, or load the cached result of the same settings."""
    settings = peer_settings(data, max_minutes)
    cached = cache_path(settings)
    if cached.exists() and not rerun:
        result: dict[str, Any] = json.loads(cached.read_text())
        print(f"cryoPARES: cached result {cached.name} from {result['date']}", file=sys.stderr)
        return result
    work = cache_dir() / cached.stem
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print(f"cryoPARES: training for {max_minutes} min ({loadavg()})", file=sys.stderr)
    train = cryopares_train(data, work, max_minutes)
    load_before = loadavg()
    small, _ = cryopares_infer(data.test_small, train["checkpoint_dir"], work / "infer_small")
    full, pred = cryopares_infer(data.test, train["checkpoint_dir"], work / "infer_full")
    infer = {
        "seconds_small": small.seconds,
        "seconds_full": full.seconds,
        "particles_per_s": (N_TEST - N_TEST_SMALL) / (full.seconds - small.seconds),
        "peak_rss_mb": max(small.peak_rss_mb, full.peak_rss_mb),
        "load": f"{load_before} -> {loadavg()}",
    }
    result = {
        "settings": settings,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "train": train,
        "infer": infer,
        "error": median_mean_error(data.test, pred),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".json.part")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, cached)
    return result


# ----------------------------------------------------------------------------- cryopose


def cryopose_help(command: str) -> str | None:
    """``cryopose COMMAND --help`` text, or ``None`` when the command does not exist."""
    proc = subprocess.run(["cryopose", command, "--help"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def require_cryopose_commands() -> str:
    """The help of ``cryopose train``; exit with a clear message if a needed command is missing."""
    helps = {name: cryopose_help(name) for name in ("train", "infer", "evaluate-poses")}
    missing = [name for name, text in helps.items() if text is None]
    if missing:
        sys.exit(
            "bench_pose: `cryopose " + "`, `cryopose ".join(missing) + "` not available in this "
            "checkout; the cryopose side cannot run. Use --peer-only to measure cryoPARES alone."
        )
    return helps["train"] or ""


def train_log_speed(model_dir: Path) -> float | None:
    """Mean images/s over the epochs of ``MODEL_DIR/train_log.csv``, if it logs one."""
    log = model_dir / "train_log.csv"
    if not log.exists():
        return None
    with log.open() as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0] if rows else {}) if re.search(r"images?.*(per|/|_)_?s", c)]
    if not columns:
        return None
    values = [float(row[columns[0]]) for row in rows if row[columns[0]] not in ("", None)]
    return sum(values) / len(values) if values else None


def train_cryopose(
    train_star: Path,
    work: Path,
    max_minutes: float,
    net_size: int = NET_SIZE,
    half_sets: bool = False,
    lr_schedule: str = "plateau",
) -> dict[str, Any]:
    """Map from the training particles, then pre-training on it and fine-tuning, in the budget.

    The budget covers everything cryopose does with the training particles: reconstructing
    a map from them (their poses are known, ``WORK/train_map.mrc``) and training the network
    of ``WORK/model`` (``half_sets``: two gold-standard half models, else one on all) that
    first pre-trains on fresh particles simulated from that map (``PRETRAIN_SHARE`` of the
    budget) and then fine-tunes on the particles themselves. Returns speed and timings.
    """
    require_cryopose_commands()
    model = work / "model"
    shutil.rmtree(model, ignore_errors=True)
    load_before = loadavg()
    reference = work / "train_map.mrc"
    recon = run_logged(
        ["cryopose", "reconstruct", str(train_star), "-o", str(reference), "--ctf"],
        work / "reconstruct.log",
        ONE_THREAD,
    )
    left = max_minutes - recon.seconds / 60.0
    pretrain, finetune = PRETRAIN_SHARE * left, (1.0 - PRETRAIN_SHARE) * left
    cmd = ["cryopose", "train", str(train_star), "-o", str(model), "--symmetry", SYMMETRY]
    cmd += ["--image-size", str(net_size), "--output-order", str(GRID_ORDER), "--device", "cpu"]
    cmd += ["--activation-order", "1", "--half-sets" if half_sets else "--no-half-sets"]
    cmd += ["--threads", "1", "--pretrain-map", str(reference)]
    cmd += ["--pretrain-minutes", f"{pretrain:.3f}"]
    cmd += ["--pretrain-epochs", "1000", "--max-minutes", f"{finetune:.3f}"]
    # No early stopping: the whole budget is used and the best validation epoch kept (with
    # patience 15 a 60-min run stopped after 39 min, while the learning rate was still falling).
    cmd += ["--patience", "0", "--lr-schedule", lr_schedule]
    train_run = run_logged(cmd, work / "train.log", ONE_THREAD)
    config = json.loads((model / "config.json").read_text())
    speed = train_log_speed(model)
    if speed is None:
        sys.exit(f"{model / 'train_log.csv'} has no images/s column")
    return {
        "images_per_s": speed,
        "command_seconds": train_run.seconds + recon.seconds,
        "reconstruct_seconds": recon.seconds,
        "peak_rss_mb": train_run.peak_rss_mb,
        "grid_order": config["network"]["output_order"],
        "pretrain_snr": config["extra"].get("pretrain_snr"),
        "load": f"{load_before} -> {loadavg()}",
    }


def cryopose_side(
    data: Dataset,
    max_minutes: float,
    work: Path,
    net_size: int = NET_SIZE,
    lr_schedule: str = "plateau",
) -> dict[str, Any]:
    """Train (:func:`train_cryopose`), infer and evaluate cryopose with the same data and grid.

    The test set is predicted twice: by the network alone and with ``--tta 4`` (the network
    averaged over four quarter turns of each image, :mod:`cryopose.models.tta`).
    """
    train = train_cryopose(
        data.train, work, max_minutes, net_size=net_size, lr_schedule=lr_schedule
    )
    result: dict[str, Any] = {"train": train}
    for turns in (1, TTA_TURNS):
        tag = "" if turns == 1 else f"_tta{turns}"
        result[f"infer{tag}"], result[f"error{tag}"] = infer_and_evaluate(data, work, turns)
    result["infer_64"] = infer_speed_64(data, work)
    return result


def infer_and_evaluate(
    data: Dataset, work: Path, turns: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inference speed and test-set errors of ``WORK/model`` with ``cryopose infer --tta``."""
    model = work / "model"
    tag = "" if turns == 1 else f"_tta{turns}"
    load_before = loadavg()
    times = {}
    for label, star in (("small", data.test_small), ("full", data.test)):
        out = work / f"pred{tag}_{label}.star"
        cmd = ["cryopose", "infer", str(star), "--model", str(model), "-o", str(out)]
        cmd += ["--tta", str(turns)]
        run = run_logged(cmd, work / f"infer{tag}_{label}.log", ONE_THREAD)
        times[label] = run.seconds
    infer = {
        "particles_per_s": (N_TEST - N_TEST_SMALL) / (times["full"] - times["small"]),
        "seconds_small": times["small"],
        "seconds_full": times["full"],
        "load": f"{load_before} -> {loadavg()}",
    }
    pred = work / f"pred{tag}_full.star"
    proc = subprocess.run(
        ["cryopose", "evaluate-poses", str(data.test), str(pred), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return infer, json.loads(proc.stdout)


def infer_speed_64(data: Dataset, work: Path) -> dict[str, Any]:
    """Inference particles/s of a network fed 64 px images, as cryoPARES's (speed only).

    The accuracy model above sees the particles Fourier-cropped to 32 px; this one, trained
    for a couple of batches only (the speed of a network does not depend on its weights),
    has cryoPARES's input size, grid order and lmax, with cryopose's default layers.
    """
    model = work / "model_64"
    shutil.rmtree(model, ignore_errors=True)
    cmd = ["cryopose", "train", str(data.train), "-o", str(model), "--image-size", str(BOX)]
    cmd += ["--output-order", str(GRID_ORDER), "--no-half-sets", "--max-epochs", "1"]
    cmd += ["--epoch-size", "64", "--device", "cpu", "--threads", "1"]
    run_logged(cmd, work / "train_64.log", ONE_THREAD)
    times = {}
    for label, star in (("small", data.test_small), ("full", data.test)):
        out = work / f"pred64_{label}.star"
        run = run_logged(
            ["cryopose", "infer", str(star), "--model", str(model), "-o", str(out)],
            work / f"infer64_{label}.log",
            ONE_THREAD,
        )
        times[label] = run.seconds
    return {"particles_per_s": (N_TEST - N_TEST_SMALL) / (times["full"] - times["small"])}


# ----------------------------------------------------------------------------- main


def print_peer(peer: dict[str, Any]) -> None:
    """The cryoPARES measurements, one line each, on stderr."""
    t, i, e = peer["train"], peer["infer"], peer["error"]
    print(
        f"cryoPARES train: {t['images_per_s']:.1f} images/s (training+validation "
        f"{t['epoch_seconds']:.0f} s, command {t['command_seconds']:.0f} s), "
        f"peak RSS {t['peak_rss_mb']:.0f} MB, checkpoint {t['checkpoint_mb']:.0f} MB [{t['load']}]",
        file=sys.stderr,
    )
    print(
        f"cryoPARES infer: {i['particles_per_s']:.1f} particles/s ({N_TEST} in "
        f"{i['seconds_full']:.1f} s, {N_TEST_SMALL} in {i['seconds_small']:.1f} s), "
        f"peak RSS {i['peak_rss_mb']:.0f} MB [{i['load']}]",
        file=sys.stderr,
    )
    print(
        f"cryoPARES error: median {e['median_deg']:.1f} deg, mean {e['mean_deg']:.1f} deg, "
        f"{100 * e['within_10_deg']:.0f}% within 10 deg",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="training wall budget")
    parser.add_argument("--rerun-peer", action="store_true", help="ignore the cryoPARES cache")
    parser.add_argument("--peer-only", action="store_true", help="measure cryoPARES only")
    parser.add_argument("--structure", type=Path, default=DEFAULT_STRUCTURE, help="C1 model")
    parser.add_argument(
        "--net-size", type=int, default=NET_SIZE, help="cryopose's network input size (px)"
    )
    parser.add_argument(
        "--lr-schedule",
        choices=("plateau", "cosine"),
        default="plateau",
        help="cryopose's learning-rate schedule (cryopose train --lr-schedule)",
    )
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="train both tools at the same time, one core each (halves the wall time of a "
        "long budget on a 2-core machine; needs the cores free)",
    )
    args = parser.parse_args()
    if not args.peer_only:
        require_cryopose_commands()  # fail before the peer's long training, not after
    data = dataset(args.structure.resolve())
    size_tag = "" if args.net_size == NET_SIZE else f"_net{args.net_size}"
    size_tag += "" if args.lr_schedule == "plateau" else f"_{args.lr_schedule}"
    work = cache_dir() / f"cryopose_pose_{args.max_minutes:g}min{size_tag}"
    work.mkdir(parents=True, exist_ok=True)
    if args.concurrent and not args.peer_only:
        # Each tool computes on one thread, so on 2 free cores neither waits for the other;
        # the subprocesses release the GIL, so Python threads are enough to drive both.
        with ThreadPoolExecutor(max_workers=2) as pool:
            peer_job = pool.submit(cryopares_side, data, args.max_minutes, args.rerun_peer)
            ours_job = pool.submit(
                cryopose_side, data, args.max_minutes, work, args.net_size, args.lr_schedule
            )
            peer, ours = peer_job.result(), ours_job.result()
        print_peer(peer)
    else:
        peer = cryopares_side(data, args.max_minutes, args.rerun_peer)
        print_peer(peer)
        if args.peer_only:
            return
        ours = cryopose_side(data, args.max_minutes, work, args.net_size, args.lr_schedule)
    print(f"cryopose: {json.dumps(ours)}", file=sys.stderr)
    command = f"python benchmarks/bench_pose.py --max-minutes {args.max_minutes:g}"
    if args.net_size != NET_SIZE:
        command += f" --net-size {args.net_size}"
    if args.lr_schedule != "plateau":
        command += f" --lr-schedule {args.lr_schedule}"
    if args.concurrent:
        command += " --concurrent"
    n = f"{N_TRAIN:,} train / {N_TEST} test particles, {BOX} px, order {GRID_ORDER}"
    pi, ti = peer["infer"]["particles_per_s"], ours["infer"]["particles_per_s"]
    emit(
        Row(
            "pose estimation",
            f"network inference speed, cryopose input {args.net_size} px, {n}",
            f"{ti:.0f} particles/s",
            f"cryoPARES {pi:.0f} particles/s",
            ti / pi,
            command,
        ),
        args.write,
    )
    ti64 = ours["infer_64"]["particles_per_s"]
    emit(
        Row(
            "pose estimation",
            f"network inference speed, 64 px network input (cryoPARES's), {n}",
            f"{ti64:.0f} particles/s",
            f"cryoPARES {pi:.0f} particles/s",
            ti64 / pi,
            command,
        ),
        args.write,
    )
    pt, tt = peer["train"]["images_per_s"], ours["train"]["images_per_s"]
    emit(
        Row(
            "pose estimation",
            f"training speed (pre-training + fine-tuning), cryopose input {args.net_size} px, {n}",
            f"{tt:.0f} images/s",
            f"cryoPARES {pt:.0f} images/s",
            tt / pt,
            command,
        ),
        args.write,
    )
    pe, te = peer["error"]["median_deg"], ours["error"]["median_deg"]
    pixel_deg = math.degrees(math.sqrt(4 * math.pi / (12 * 4**GRID_ORDER)))
    emit(
        Row(
            "pose estimation",
            f"median error after {args.max_minutes:g} min "
            f"(cryopose: map + pre-training + fine-tuning, input {args.net_size} px), {n}",
            f"{te:.1f} deg ({100 * ours['error']['within_10_deg']:.0f}% within 10 deg; order "
            f"{GRID_ORDER} grid: HEALPix pixel {pixel_deg:.1f} deg, covering radius "
            f"{grid_resolution_deg(GRID_ORDER):.1f} deg)",
            f"cryoPARES {pe:.1f} deg",
            pe / te,
            command,
        ),
        args.write,
    )
    tta_infer, tta_error = ours[f"infer_tta{TTA_TURNS}"], ours[f"error_tta{TTA_TURNS}"]
    emit(
        Row(
            "pose estimation",
            f"median error after {args.max_minutes:g} min, `cryopose infer --tta {TTA_TURNS}` "
            f"(network averaged over {TTA_TURNS} quarter turns of each image; same model as "
            f"the row above), {n}",
            f"{tta_error['median_deg']:.1f} deg ({tta_error['median_deg']:.2f}; mean "
            f"{tta_error['mean_deg']:.1f} deg against {ours['error']['mean_deg']:.1f} without; "
            f"{100 * tta_error['within_10_deg']:.0f}% within 10 deg; inference "
            f"{tta_infer['particles_per_s']:.0f} particles/s, "
            f"{tta_infer['particles_per_s'] / pi:.2f}x cryoPARES's)",
            f"cryoPARES {pe:.1f} deg",
            pe / tta_error["median_deg"],
            command,
        ),
        args.write,
    )
    print(machine(), file=sys.stderr)


if __name__ == "__main__":
    main()
