"""Rotations in RELION's convention, point-group symmetry and HEALPix SO(3) grids.

Pure torch functions on tensors: no files, no global state.
"""

from cryopose.geometry.euler import (
    euler_to_matrix,
    euler_to_matrix_rad,
    matrix_to_euler,
    matrix_to_euler_rad,
)

__all__ = [
    "euler_to_matrix",
    "euler_to_matrix_rad",
    "matrix_to_euler",
    "matrix_to_euler_rad",
]
