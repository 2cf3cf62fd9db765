"""Ab initio orientation recovery from pairwise orientation distances, and its evaluation.

:func:`recover_orientations` finds unit quaternions whose geodesic distances match
estimated distances on a sparse pair graph (or, :func:`recover_orientations_online`, on pairs
whose distances a callable such as a Siamese network supplies); :func:`align_o4` and
:func:`e_or` measure the result against the truth after the best global O(4) transform, and
:func:`align_so3` expresses the alignment as a rotation (and mirror) of the map frame.
"""

from cryopose.recovery.align import align_o4, align_so3, e_or
from cryopose.recovery.recover import (
    DistanceFn,
    RecoveryResult,
    recover_orientations,
    recover_orientations_online,
    sample_pairs,
)

__all__ = [
    "DistanceFn",
    "RecoveryResult",
    "align_o4",
    "align_so3",
    "e_or",
    "recover_orientations",
    "recover_orientations_online",
    "sample_pairs",
]
