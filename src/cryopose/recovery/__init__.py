"""Ab initio orientation recovery from pairwise orientation distances, and its evaluation.

:func:`recover_orientations` finds unit quaternions whose geodesic distances match
estimated distances on a sparse pair graph (or, :func:`recover_orientations_online`, on pairs
whose distances a callable such as a Siamese network supplies); :func:`align_o4` and
:func:`e_or` measure the result against the truth after the best global O(4) transform, and
:func:`align_so3` expresses the alignment as a rotation (and mirror) of the map frame.

:func:`train_distance_network` trains the Siamese distance estimator
(:class:`cryopose.models.siamese.SiameseDistance`) on projection pairs simulated from a map;
:func:`recover_star` recovers the orientations of a star file's particles with it, and
:func:`polish_orientations` refines them by projection matching against their own
reconstruction (after :func:`resolve_frame`), and :func:`evaluate_recovery` scores them
against the truth (E_OR, map-frame error, FSC).
"""

from cryopose.recovery.align import align_o4, align_so3, e_or
from cryopose.recovery.polish import (
    FrameResult,
    PolishResult,
    PolishSettings,
    polish_orientations,
    resolve_frame,
)
from cryopose.recovery.recover import (
    DistanceFn,
    RecoveryResult,
    recover_orientations,
    recover_orientations_online,
    sample_pairs,
)
from cryopose.recovery.run import (
    EvaluationResult,
    RunResult,
    RunSettings,
    embed_particles,
    evaluate_recovery,
    features_distance_fn,
    prepare_images,
    recover_star,
)
from cryopose.recovery.spectral import (
    nearest_pairs,
    recover_from_near_pairs,
    spectral_orientations,
)
from cryopose.recovery.train import (
    DistanceModel,
    TrainConfig,
    TrainResult,
    all_pairs_targets,
    calibrate,
    load_distance_model,
    prepare_volume,
    sample_rotation_pairs,
    spearman,
    train_distance_network,
)

__all__ = [
    "DistanceFn",
    "DistanceModel",
    "EvaluationResult",
    "FrameResult",
    "PolishResult",
    "PolishSettings",
    "RecoveryResult",
    "RunResult",
    "RunSettings",
    "TrainConfig",
    "TrainResult",
    "align_o4",
    "align_so3",
    "all_pairs_targets",
    "calibrate",
    "e_or",
    "embed_particles",
    "evaluate_recovery",
    "features_distance_fn",
    "load_distance_model",
    "nearest_pairs",
    "polish_orientations",
    "prepare_images",
    "prepare_volume",
    "recover_from_near_pairs",
    "recover_orientations",
    "recover_orientations_online",
    "recover_star",
    "resolve_frame",
    "sample_pairs",
    "sample_rotation_pairs",
    "spearman",
    "spectral_orientations",
    "train_distance_network",
]
