"""The Siamese distance network: its invariances, and that it learns distances."""

from __future__ import annotations

import math

import torch

from cryopose.data.demo_files import demo_file
from cryopose.geometry import geodesic_distance
from cryopose.io.mrc import read_map
from cryopose.models.siamese import (
    SiameseConfig,
    SiameseDistance,
    feature_distance,
    standardise,
)
from cryopose.recovery.train import (
    TrainConfig,
    _PairSimulator,
    prepare_volume,
    sample_rotation_pairs,
    spearman,
)


def _net(seed: int = 0) -> SiameseDistance:
    torch.manual_seed(seed)
    return SiameseDistance(SiameseConfig(widths=(4, 8, 8), features=8, groups=4))


def test_distance_is_symmetric_zero_on_the_diagonal_and_in_range() -> None:
    net = _net().eval()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 1, 32, 32, generator=g), torch.randn(6, 1, 32, 32, generator=g)
    with torch.no_grad():
        d_ab, d_ba, d_aa = net(a, b), net(b, a), net(a, a)
    torch.testing.assert_close(d_ab, d_ba)
    torch.testing.assert_close(d_aa, torch.zeros(6), atol=1e-5, rtol=0)
    assert bool((d_ab >= 0).all() and (d_ab <= math.pi).all())
    # Weight sharing: the distance is that of the two branches' features.
    fa, fb = net.embed(a), net.embed(b)
    cos = (fa * fb).sum(-1) / (fa.norm(dim=-1) * fb.norm(dim=-1))
    torch.testing.assert_close(d_ab, math.pi * (1 - cos) / 2, atol=1e-5, rtol=0)


def test_feature_distance_spans_zero_to_pi() -> None:
    f = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(feature_distance(f, f), torch.tensor([0.0]))
    torch.testing.assert_close(feature_distance(f, -f), torch.tensor([math.pi]))
    torch.testing.assert_close(
        feature_distance(f, torch.tensor([[-2.0, 1.0]])), torch.tensor([math.pi / 2])
    )


def test_features_are_invariant_to_shifts_on_the_pooling_grid_and_to_size() -> None:
    net = _net().eval()
    g = torch.Generator().manual_seed(2)
    img = torch.zeros(1, 1, 96, 96)
    img[..., 40:56, 40:56] = torch.randn(16, 16, generator=g)
    # Two 2x poolings: a shift by a multiple of 4 pixels moves every feature map by whole
    # pixels, and the content stays further from the border than the receptive field.
    shifted = torch.roll(img, shifts=(8, -4), dims=(-2, -1))
    with torch.no_grad():
        f0, f1 = net.embed(standardise(img)), net.embed(standardise(shifted))
        # A larger box of background around the same content: same features up to the
        # background's share of the global average.
        big = torch.zeros(1, 1, 128, 128)
        big[..., 16:112, 16:112] = img
        f2 = net.embed(standardise(big))
    torch.testing.assert_close(f0, f1, atol=1e-5, rtol=1e-4)
    assert f2.shape == f0.shape
    assert float(feature_distance(f0, f2)) < 0.5


def test_standardise() -> None:
    x = 3.0 + 2.0 * torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(3))
    y = standardise(x)
    torch.testing.assert_close(y.mean(dim=(-2, -1)), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.std(dim=(-2, -1), correction=0), torch.ones(4))


def test_a_tiny_network_learns_a_monotone_distance_on_a_few_hundred_pairs() -> None:
    volume, angpix = read_map(demo_file("5j0n_simulated.mrc.gz"))
    vol, apix = prepare_volume(volume, angpix, 32, 2 * angpix)
    sim = _PairSimulator(vol, apix, TrainConfig(box=32, seed=0))
    gen = torch.Generator().manual_seed(0)
    images, target = sim.batch(256, gen)
    # The targets are the true geodesic distances of the pairs (checked independently).
    R1, R2, t = sample_rotation_pairs(256, torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, geodesic_distance(R1, R2), atol=1e-9, rtol=0)
    torch.manual_seed(0)
    net = SiameseDistance(SiameseConfig(widths=(8, 16, 32), features=16))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    a, b = images[:256], images[256:]
    losses = []
    for _ in range(25):
        k = torch.randint(0, 256, (64,), generator=gen)
        loss = torch.mean((net(a[k], b[k]) - target[k]) ** 2)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        rho = spearman(net(a, b), target)
    assert rho > 0.5
    # Better than the constant prediction pi / 2 (MSE pi^2 / 12 for uniform targets).
    assert sum(losses[-5:]) / 5 < math.pi**2 / 12


def test_spearman_matches_a_brute_force_rank_correlation() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, generator=g)
    y = x**3 + 0.5 * torch.randn(50, generator=g)
    rx = torch.tensor([float((x < v).sum()) for v in x], dtype=torch.float64)
    ry = torch.tensor([float((y < v).sum()) for v in y], dtype=torch.float64)
    expected = float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])
    assert abs(spearman(x, y) - expected) < 1e-12
    assert abs(spearman(x, torch.exp(x)) - 1.0) < 1e-12
