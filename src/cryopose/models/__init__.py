"""Neural networks: encoders, Image2Sphere head, Siamese distance network, 3D U-Net.

>>> import torch
>>> from cryopose.models import Image2Sphere, Image2SphereConfig, rotation_labels
>>> net = Image2Sphere(Image2SphereConfig(image_size=32, encoder_width=4, lmax=2,
...                                       output_order=1))
>>> pred = net.predict(torch.randn(3, 1, 32, 32), top_k=4)
>>> pred.rotation.shape, pred.top_k_indices.shape
(torch.Size([3, 3, 3]), torch.Size([3, 4]))
"""

from cryopose.models.encoders import (
    EncoderKind,
    ResNetEncoder,
    RotationAveragedEncoder,
    UNetEncoder,
    build_encoder,
)
from cryopose.models.image2sphere import (
    Image2Sphere,
    Image2SphereConfig,
    PosePrediction,
    poses_from_logits,
)
from cryopose.models.labels import label_cross_entropy, rotation_label_indices, rotation_labels
from cryopose.models.model_dir import (
    PoseModelSpec,
    load_pose_model,
    read_pose_model_spec,
    save_pose_model,
    save_weights,
    weights_name,
)
from cryopose.models.so3 import (
    SO3Grid,
    flat_wigner,
    hemisphere_points,
    s2_healpix_points,
    s2_size,
    so3_local_rotations,
    so3_size,
    spherical_harmonics,
    wigner_d,
)

__all__ = [
    "EncoderKind",
    "Image2Sphere",
    "Image2SphereConfig",
    "PoseModelSpec",
    "PosePrediction",
    "ResNetEncoder",
    "RotationAveragedEncoder",
    "SO3Grid",
    "UNetEncoder",
    "build_encoder",
    "flat_wigner",
    "hemisphere_points",
    "label_cross_entropy",
    "load_pose_model",
    "poses_from_logits",
    "read_pose_model_spec",
    "rotation_label_indices",
    "rotation_labels",
    "s2_healpix_points",
    "s2_size",
    "save_pose_model",
    "save_weights",
    "so3_local_rotations",
    "so3_size",
    "spherical_harmonics",
    "weights_name",
    "wigner_d",
]
