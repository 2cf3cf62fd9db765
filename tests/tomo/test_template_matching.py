"""Template matching: FLCF vs brute force, filters, symmetry, planted and simulated particles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from cryopose.evaluation.shrec import SHREC_CLASS_MASS_KDA, evaluate_picks, load_truth
from cryopose.geometry.healpix import grid_resolution_deg, so3_healpix_grid
from cryopose.geometry.rotations import random_rotations
from cryopose.geometry.symmetry import symmetry_group
from cryopose.imaging.ctf import wavelength_angstrom
from cryopose.imaging.masks import spherical_mask
from cryopose.io.mrc import read_map
from cryopose.simulate.tomogram import rotate_density, simulate_tomogram
from cryopose.tomo.peaks import filter_picks
from cryopose.tomo.template_matching import (
    MatchConfig,
    angular_step_deg,
    asymmetric_unit,
    flcf,
    grid_order_for_step,
    match_class,
    match_tomogram,
    prepare_tomogram,
)
from cryopose.tomo.templates import (
    CtfParams,
    ctf_first_zero,
    load_templates,
    missing_wedge,
    rotate_volumes,
    symmetry_frame,
)

FloatArray = npt.NDArray[np.float64]


def _brute_force_flcf(tomo: FloatArray, template: FloatArray, mask: FloatArray) -> FloatArray:
    """Mask-weighted Pearson correlation at every voxel, neighbourhoods wrapping around."""
    b = template.shape[0]
    u = np.arange(b) - b // 2
    out = np.zeros(tomo.shape)
    w = mask / mask.sum()
    t = template - (w * template).sum()
    for z, y, x in np.ndindex(*tomo.shape):
        iz = (z + u) % tomo.shape[0]
        iy = (y + u) % tomo.shape[1]
        ix = (x + u) % tomo.shape[2]
        patch = tomo[np.ix_(iz, iy, ix)]
        f = patch - (w * patch).sum()
        den = math.sqrt((w * t * t).sum() * (w * f * f).sum())
        out[z, y, x] = (w * t * f).sum() / den
    return out


def test_flcf_equals_brute_force_local_correlation() -> None:
    gen = torch.Generator().manual_seed(0)
    tomo = torch.randn((7, 9, 8), generator=gen, dtype=torch.float64)
    templates = torch.randn((2, 6, 6, 6), generator=gen, dtype=torch.float64)
    mask = spherical_mask(6, 1.5, soft_edge_px=1.5, dtype=torch.float64)
    scores = flcf(tomo.float(), templates.float(), mask.float())
    assert scores.shape == (2, 7, 9, 8)
    for i in range(2):
        ref = _brute_force_flcf(tomo.numpy(), templates[i].numpy(), mask.numpy())
        np.testing.assert_allclose(scores[i].numpy(), ref, atol=2e-5)


def test_flcf_on_a_tomogram_thinner_than_the_template() -> None:
    """Thin axes are zero-padded to the box: equal to brute force on the padded volume."""
    gen = torch.Generator().manual_seed(1)
    tomo = torch.randn((4, 10, 9), generator=gen, dtype=torch.float64)
    template = torch.randn((1, 6, 6, 6), generator=gen, dtype=torch.float64)
    mask = spherical_mask(6, 2.0, soft_edge_px=1.0, dtype=torch.float64)
    scores = flcf(tomo.float(), template.float(), mask.float())
    padded = np.zeros((6, 10, 9))
    padded[:4] = tomo.numpy()
    ref = _brute_force_flcf(padded, template[0].numpy(), mask.numpy())[:4]
    np.testing.assert_allclose(scores[0].numpy(), ref, atol=2e-5)


def test_flcf_is_one_where_the_template_sits() -> None:
    gen = torch.Generator().manual_seed(2)
    template = torch.randn((8, 8, 8), generator=gen)
    tomo = torch.zeros((20, 20, 20))
    tomo[6:14, 3:11, 9:17] = template  # centre (B // 2 = 4) at z 10, y 7, x 13
    scores = flcf(tomo, template[None], spherical_mask(8, 3.0))[0]
    assert float(scores[10, 7, 13]) == pytest.approx(1.0, abs=1e-5)
    assert tuple(int(i) for i in np.unravel_index(int(scores.argmax()), scores.shape)) == (
        10,
        7,
        13,
    )


def test_ctf_first_zero_is_analytic() -> None:
    """First zero of RELION's CTF: chi(k) = pi - asin(Q0).

    With chi = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4, a quadratic in k^2.
    """
    ctf = CtfParams()
    lam = float(wavelength_angstrom(ctf.voltage_kv))
    dz, cs = ctf.defocus_um * 1e4, ctf.cs_mm * 1e7
    target = math.pi - math.asin(ctf.amplitude_contrast)
    a, b, c = -0.5 * math.pi * cs * lam**3, math.pi * lam * dz, -target  # in k^2
    k2 = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    k2 = min(k2, (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), key=lambda v: abs(v))
    assert ctf_first_zero(10.0, ctf) == pytest.approx(math.sqrt(k2), rel=1e-4)
    assert 1.0 / ctf_first_zero(10.0, ctf) == pytest.approx(24.6, abs=0.1)
    # Beyond Nyquist: Nyquist itself.
    assert ctf_first_zero(30.0, ctf) == pytest.approx(1.0 / 60.0)


def test_missing_wedge_keeps_two_thirds() -> None:
    """+-60 degrees about y measures the directions within 60 degrees of the kx axis."""
    w = missing_wedge((64, 64, 64), 60.0)
    kz = torch.fft.fftfreq(64, dtype=torch.float64)[:, None, None].expand(64, 64, 33)
    kx = torch.fft.rfftfreq(64, dtype=torch.float64)[None, None, :].expand(64, 64, 33)
    # Reference by angle (not by the tangent the implementation uses); DC is measured.
    angle = torch.rad2deg(torch.atan2(kz.abs(), kx))
    ref = (angle <= 60.0 + 1e-9) | ((kz == 0) & (kx == 0))
    torch.testing.assert_close(w, ref.to(torch.float32))
    # About 2/3 of an annulus of the half-plane: 120 of 180 degrees.
    ring = (kz**2 + kx**2 <= 0.45**2) & (kz**2 + kx**2 > 0.1**2) & (kx > 0)
    assert float(w[ring].mean()) == pytest.approx(2.0 / 3.0, abs=0.02)


def test_angular_step_and_grid_order() -> None:
    # resolution 24.6 A (first CTF zero) over a 14.2 nm particle: 0.173 rad = 9.9 degrees.
    assert angular_step_deg(7.1, 10.0) == pytest.approx(math.degrees(24.615 / 142.0), rel=1e-3)
    assert grid_order_for_step(9.9) == 3  # covering radii 56.3, 31.3, 16.4, 8.36 degrees
    assert grid_order_for_step(60.0) == 0
    assert grid_order_for_step(0.1) == 5


@pytest.mark.parametrize(("order", "symmetry"), [(1, "C6"), (1, "D7"), (2, "D4"), (2, "C2")])
def test_asymmetric_unit_covers_so3_modulo_symmetry(order: int, symmetry: str) -> None:
    grid = so3_healpix_grid(order, dtype=torch.float64)
    kept = asymmetric_unit(grid, symmetry)
    group = symmetry_group(symmetry)
    assert len(kept) == pytest.approx(len(grid) / len(group), rel=0.2)
    # Every rotation lies within the full grid's covering radius of a kept pose times g.
    rots = random_rotations(1500, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    poses = (kept[:, None] @ group[None]).reshape(-1, 3, 3)
    cos = (torch.einsum("nij,mij->nm", rots, poses).max(1).values - 1.0) / 2.0
    worst = math.degrees(math.acos(float(cos.clamp(-1, 1).min())))
    assert worst <= grid_resolution_deg(order)


@pytest.fixture(scope="module")
def templates() -> dict[str, object]:
    return {t.name: t for t in load_templates(["1bxn", "3j9i", "4cr2", "1qvr"])}


def test_symmetry_frames_of_symmetric_classes(templates: dict[str, object]) -> None:
    from cryopose.tomo.templates import Template

    for name, sym in (("1bxn", "D4"), ("3j9i", "D7")):
        t = templates[name]
        assert isinstance(t, Template)
        assert t.symmetry == sym
        rotated = rotate_volumes(t.density, symmetry_group(sym)[1:].float())
        corr = torch.stack(
            [
                torch.corrcoef(torch.stack([t.density.reshape(-1), r.reshape(-1)]))[0, 1]
                for r in rotated
            ]
        )
        assert float(corr.min()) > 0.97
        # The frame is found again after an arbitrary turn of the density.
        turn = random_rotations(1, generator=torch.Generator().manual_seed(4))[0]
        _, score = symmetry_frame(rotate_density(t.density, turn), sym)
        assert score > 0.95
    t = templates["1qvr"]
    assert isinstance(t, Template)
    assert t.symmetry == "C1"


def test_templates_of_deposited_units(templates: dict[str, object]) -> None:
    """Templates follow the simulation's ``assembly``: 1bxn's asymmetric unit is half of the
    D4 Rubisco complex, so it has half the potential and no D4 symmetry (C1 template)."""
    from cryopose.tomo.templates import Template

    half = load_templates(["1bxn"], assembly="deposited")[0]
    full = templates["1bxn"]
    assert isinstance(full, Template)
    assert half.symmetry == "C1"
    ratio = float(half.density.sum() / full.density.sum())
    assert 0.45 < ratio < 0.55, ratio


def _geodesic_deg(a: torch.Tensor, b: torch.Tensor, symmetry: str) -> float:
    group = symmetry_group(symmetry)
    cos = ((torch.einsum("ij,gij->g", a, b @ group) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return math.degrees(math.acos(float(cos.max())))


@pytest.mark.parametrize("name", ["3j9i", "1qvr"])
def test_planted_particle_position_and_orientation(templates: dict[str, object], name: str) -> None:
    """A class density pasted at a known pose into noise is found at that pose."""
    from cryopose.simulate.tomogram import find_structures, load_class_density
    from cryopose.tomo.templates import Template

    t = templates[name]
    assert isinstance(t, Template)
    gen = torch.Generator().manual_seed(5)
    truth = random_rotations(1, generator=gen, dtype=torch.float64)[0]
    dens = load_class_density(find_structures(None, [name])[name], name).density
    rotated = rotate_density(dens, truth.float())
    b = rotated.shape[-1]
    tomo = 0.5 * torch.randn((40, 56, 60), generator=gen)
    centre = (20, 27, 31)  # z y x
    sl = tuple(slice(c - b // 2, c - b // 2 + b) for c in centre)
    tomo[sl] += rotated
    config = MatchConfig(n_candidates=3)
    prepared = prepare_tomogram(tomo, 10.0, config)
    match = match_class(prepared, t, config)
    cand = match.candidates
    assert cand.coords[0].tolist() == [float(centre[2]), float(centre[1]), float(centre[0])]
    error = _geodesic_deg(cand.rotations[0], truth, t.symmetry)
    assert error < match.angular_step_deg
    assert match.n_coarse_rotations < match.n_exhaustive_rotations / 10


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_tomogram(
        tmp_path_factory.mktemp("tm") / "t",
        size=80,
        thickness=44,
        seed=21,
        snr=0.5,
        classes=["4cr2", "3j9i", "1bxn"],
        n_particles=18,
        progress=False,
        n_fiducials=0,
        n_vesicles=0,
    )


def test_finds_large_proteins_in_a_simulated_tomogram(
    simulated: Path, templates: dict[str, object]
) -> None:
    tomo, angpix = read_map(simulated / "reconstruction.mrc")
    # 1bxn is in the sample as a distractor; the two large classes are searched.
    use = [templates[n] for n in ("4cr2", "3j9i")]
    config = MatchConfig(n_candidates=12, n_starts=2, n_null=50)
    result = match_tomogram(tomo, use, config)  # type: ignore[arg-type]
    picks = filter_picks(result.candidates, threshold=5.0)
    truth = load_truth(simulated)
    large = [c for c in ("4cr2", "3j9i") if SHREC_CLASS_MASS_KDA[c] > 600]
    res = evaluate_picks(picks, truth, classes=large)
    assert res.recall >= 0.8
    assert angpix == 10.0
