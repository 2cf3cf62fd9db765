"""Oracle matched-filter z-scores: noise gives none, a planted particle a strong one, and the
score grows linearly with the particle's amplitude at low SNR (the matched filter's detection
index d' = A sqrt(E) / sigma); end to end through ``cryopose tomo detectability``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cryopose.cli.tomo  # noqa: F401  (registers the command until main does)
from cryopose.cli.main import main
from cryopose.simulate.tomogram import simulate_tomogram
from cryopose.tomo.detectability import (
    ParticleDetectability,
    detectability_summary,
    oracle_zscores,
)

SHAPE = (40, 64, 64)
CENTRE_XYZ = (30, 34, 20)


def _particle() -> tuple[torch.Tensor, torch.Tensor]:
    """An elongated blob (grandmodel, ice level 4.5 V) and its occupancy label 1."""
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in SHAPE), indexing="ij")
    cx, cy, cz = CENTRE_XYZ
    r2 = ((x - cx) / 5.0) ** 2 + ((y - cy) / 3.0) ** 2 + ((z - cz) / 3.5) ** 2
    blob = 3.0 * torch.exp(-r2)
    occupancy = (blob > 0.3).to(torch.int64)
    return 4.5 + blob * occupancy, occupancy


def _zscore(amplitude: float, seed: int = 0) -> float:
    grandmodel, occupancy = _particle()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    tomogram = noise + amplitude * (grandmodel - 4.5)
    (result,) = oracle_zscores(
        tomogram, grandmodel, occupancy, ["1bxn"], torch.tensor([CENTRE_XYZ]), 10.0, crop=64
    )
    assert result.index == 1 and result.class_id == "1bxn"
    return result.zscore


def test_noise_alone_is_not_detectable_and_a_strong_particle_is() -> None:
    assert _zscore(0.0) < 3.5
    assert _zscore(3.0) > 8.0


def test_zscore_grows_linearly_with_the_particle_amplitude() -> None:
    # In the noise-limited regime the matched filter's z is the noise's score plus a term
    # proportional to the amplitude: equal steps of amplitude (same noise) add equal steps.
    z0, z1, z2 = (_zscore(a, seed=1) for a in (0.0, 0.1, 0.2))
    assert z1 - z0 > 1.0
    assert z2 - z1 == pytest.approx(z1 - z0, rel=0.2)


def test_summary_groups_by_class_and_size() -> None:
    particles = [
        ParticleDetectability(1, "3qm1", 2.0),  # small
        ParticleDetectability(2, "3qm1", 5.0),
        ParticleDetectability(3, "4cr2", 9.0),  # large
    ]
    summary = detectability_summary(particles, threshold=4.0)
    assert summary["3qm1"] == {"n": 2.0, "median_z": 3.5, "fraction_detectable": 0.5}
    assert summary["small"]["fraction_detectable"] == 0.5
    assert summary["large"] == {"n": 1.0, "median_z": 9.0, "fraction_detectable": 1.0}
    assert summary["all"]["n"] == 3.0 and "medium" not in summary


def test_cli_scores_a_simulated_tomogram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = simulate_tomogram(
        tmp_path / "t", size=64, thickness=40, seed=3, snr=0.5, classes=["4cr2", "3qm1"],
        n_particles=8, progress=False, n_fiducials=1, n_vesicles=0,
    )  # fmt: skip
    code = main(["tomo", "detectability", str(folder), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads(out)
    classes = {p["class"] for p in payload["particles"]}
    assert classes <= {"4cr2", "3qm1"} and "4cr2" in classes  # the fiducial is not scored
    # The 26S proteasome (1.3 MDa) stands far out of SNR-0.5 noise; 3qm1 (31 kDa) much less.
    assert payload["summary"]["4cr2"]["median_z"] > 6.0
    if "3qm1" in payload["summary"]:
        assert payload["summary"]["3qm1"]["median_z"] < payload["summary"]["4cr2"]["median_z"]
    code = main(["tomo", "detectability", str(folder)])
    out, _ = capsys.readouterr()
    assert code == 0 and "median z" in out and "4cr2" in out
