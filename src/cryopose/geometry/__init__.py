"""Rotations in RELION's convention, point-group symmetry and HEALPix SO(3) grids.

Pure torch functions on tensors: no files, no global state. Rotation matrices are ``(..., 3, 3)``
in RELION's convention (``euler_to_matrix``); they left-multiply column vectors of xyz coordinates.

>>> import torch
>>> from cryopose.geometry import euler_to_matrix, angular_error, symmetry_group
>>> A = euler_to_matrix(torch.tensor([10.0, 50.0, 120.0], dtype=torch.float64))
>>> g = symmetry_group("D7")[3]
>>> round(float(angular_error(A, A @ g, symmetry="D7")), 6)
0.0
"""

from cryopose.geometry.distance import (
    angular_error,
    error_summary,
    geodesic_distance,
    quaternion_distance,
)
from cryopose.geometry.euler import (
    euler_to_matrix,
    euler_to_matrix_rad,
    matrix_to_euler,
    matrix_to_euler_rad,
)
from cryopose.geometry.healpix import (
    grid_neighbours,
    grid_resolution_deg,
    grid_size,
    nearest_grid_index,
    so3_healpix_angles,
    so3_healpix_grid,
    viewing_direction_pixel,
)
from cryopose.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_quaternion,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_euler,
    quaternion_to_matrix,
    random_rotations,
)
from cryopose.geometry.symmetry import symmetry_group, symmetry_order

__all__ = [
    "angular_error",
    "axis_angle_to_matrix",
    "error_summary",
    "euler_to_matrix",
    "euler_to_matrix_rad",
    "euler_to_quaternion",
    "geodesic_distance",
    "grid_neighbours",
    "grid_resolution_deg",
    "grid_size",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_euler_rad",
    "matrix_to_quaternion",
    "nearest_grid_index",
    "quaternion_distance",
    "quaternion_to_euler",
    "quaternion_to_matrix",
    "random_rotations",
    "so3_healpix_angles",
    "so3_healpix_grid",
    "symmetry_group",
    "symmetry_order",
    "viewing_direction_pixel",
]
