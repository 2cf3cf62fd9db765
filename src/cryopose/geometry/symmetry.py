"""Point-group symmetry (Cn, Dn, T, O, I) in RELION 3.1's axis conventions.

The poses equivalent to a pose ``A`` are ``A @ g`` for ``g`` in the group (right
multiplication). This is exactly what ``relion_particle_symmetry_expand`` writes: measured
in ``tests/geometry/test_symmetry.py`` for C4, D2, D7, T, O and I1-I4, where RELION's
expanded poses equal ``{A @ g}`` to 1e-6 rad and differ from ``{g @ A}``.

Each group is built from two generating rotations by closure, with the axes RELION uses:

======  ==========================================================================
name    generators (rotation axes)
======  ==========================================================================
Cn      n-fold about z
Dn      n-fold about z, 2-fold about x
T       3-fold about z, 2-fold in the yz plane at acos(1/sqrt 3) from z (y > 0)
O       4-fold about z, 3-fold about (1, 1, 1)
I1      icosahedron with 5-folds through the cyclic permutations of (0, +-1, +-phi)
I2, I   icosahedron with 5-folds through the cyclic permutations of (+-1, 0, +-phi)
        (Crowther's standard orientation, 2-folds on x, y and z; RELION's default I)
I3      5-fold about z, 2-fold about (-1, 0, phi)
I4      5-fold about z, 2-fold about (1, 0, phi)
======  ==========================================================================

with phi = (1 + sqrt 5) / 2. Names are case-insensitive. Groups with mirrors (CnV, CnH, Sn,
...) have no proper-rotation meaning for poses and are rejected.

>>> symmetry_group("d7").shape
torch.Size([14, 3, 3])
>>> symmetry_order("I")
60
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import torch

from cryopose.errors import InputError
from cryopose.geometry.rotations import axis_angle_to_matrix

__all__ = ["symmetry_group", "symmetry_order"]

_PHI = (1 + math.sqrt(5)) / 2
_NAME = re.compile(r"^(?:([CD])([1-9][0-9]*)|(T)|(O)|(I)([1-4])?)$")
# Elements closer than this (max abs entry difference) are the same rotation.
_DEDUP_TOL = 1e-8


def _bad_name(name: str) -> InputError:
    return InputError(
        None,
        f"unknown symmetry '{name}'; expected C<n>, D<n>, T, O or I",
        where="argument symmetry",
    )


def _parse(name: str) -> tuple[str, int]:
    """Parse a name into (family, n): ('C', n), ('D', n), ('T', 0), ('O', 0) or ('I', variant)."""
    if not isinstance(name, str):
        raise _bad_name(str(name))
    match = _NAME.match(name.strip().upper())
    if match is None:
        raise _bad_name(name)
    cyclic, n, tetra, octa, ico, variant = match.groups()
    if cyclic is not None:
        return cyclic, int(n)
    if tetra is not None:
        return "T", 0
    if octa is not None:
        return "O", 0
    assert ico is not None
    return "I", int(variant) if variant is not None else 2


def _turn(axis: tuple[float, float, float], fold: int) -> torch.Tensor:
    """(3, 3) float64 rotation by 2 pi / fold about ``axis`` (need not be unit length)."""
    a = torch.tensor(axis, dtype=torch.float64)
    return axis_angle_to_matrix(a / torch.linalg.vector_norm(a) * (2 * math.pi / fold))


def _generators(family: str, n: int) -> list[torch.Tensor]:
    """Return generating rotations of the group, in RELION's axis conventions."""
    if family == "C":
        return [_turn((0, 0, 1), n)]
    if family == "D":
        return [_turn((0, 0, 1), n), _turn((1, 0, 0), 2)]
    if family == "T":
        # A 3-fold and a 2-fold of the tetrahedron are acos(1/sqrt 3) = 54.74 deg apart.
        return [_turn((0, 0, 1), 3), _turn((0, math.sqrt(2), 1), 2)]
    if family == "O":
        return [_turn((0, 0, 1), 4), _turn((1, 1, 1), 3)]
    # A 5-fold plus any 2-fold not perpendicular to it generates the icosahedral group.
    icosahedral = {
        # vertices (0, +-1, +-phi) ...: 5-fold through (phi, 0, -1), 2-fold (edge midpoint) z
        1: [_turn((_PHI, 0, -1), 5), _turn((0, 0, 1), 2)],
        # vertices (+-1, 0, +-phi) ...: 5-fold through (1, 0, phi), 2-fold z
        2: [_turn((1, 0, _PHI), 5), _turn((0, 0, 1), 2)],
        3: [_turn((0, 0, 1), 5), _turn((-1, 0, _PHI), 2)],
        4: [_turn((0, 0, 1), 5), _turn((1, 0, _PHI), 2)],
    }
    return icosahedral[n]


def _closure(generators: list[torch.Tensor]) -> torch.Tensor:
    """All products of the generators, identity first, duplicates merged by tolerance."""
    elements = torch.eye(3, dtype=torch.float64)[None]
    frontier = elements
    while frontier.shape[0] > 0:
        products = torch.cat([frontier @ g for g in generators])
        known = _max_abs_diff(products, elements).amin(dim=1) <= _DEDUP_TOL
        products = products[~known]
        # Among the new products keep only the first of each set of duplicates.
        same = _max_abs_diff(products, products) <= _DEDUP_TOL
        first = ~torch.tril(same, diagonal=-1).any(dim=1)
        frontier = products[first]
        elements = torch.cat([elements, frontier])
    return elements


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, Q) largest absolute entry difference between (P, 3, 3) and (Q, 3, 3) matrices."""
    return (a[:, None] - b[None]).abs().amax(dim=(-2, -1))


@lru_cache(maxsize=64)
def _group(family: str, n: int) -> torch.Tensor:
    return _closure(_generators(family, n))


def symmetry_group(name: str) -> torch.Tensor:
    """Rotation matrices of a point group in RELION's conventions.

    Parameters
    ----------
    name
        ``C<n>``, ``D<n>`` (n >= 1), ``T``, ``O``, ``I`` (= ``I2``, RELION's default) or
        ``I1`` ... ``I4``; case-insensitive.

    Returns
    -------
    torch.Tensor
        ``(|G|, 3, 3)`` float64 rotation matrices, identity first. The poses equivalent to
        ``A`` are ``A @ G[k]``.

    Raises
    ------
    InputError
        For any other name.

    Examples
    --------
    >>> G = symmetry_group("C4")
    >>> G.shape, bool(torch.allclose(G[1] @ G[1] @ G[1] @ G[1], torch.eye(3, dtype=G.dtype)))
    (torch.Size([4, 3, 3]), True)
    """
    family, n = _parse(name)
    return _group(family, n).clone()


def symmetry_order(name: str) -> int:
    """Return the number of rotations in a point group, without building it.

    Parameters
    ----------
    name
        As for :func:`symmetry_group`.

    Returns
    -------
    int
        ``n`` for Cn, ``2n`` for Dn, 12 for T, 24 for O, 60 for I.
    """
    family, n = _parse(name)
    return {"C": n, "D": 2 * n, "T": 12, "O": 24, "I": 60}[family]
