"""ModelAxes on oblique volumes (geometry.py): the permutation whose axes align best wins even when it wins by
little, a tie keeps the raw order, and the checks of a matrix say what is wrong with it."""

import numpy as np
import pytest

from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.geometry import ModelAxes, as_matrix, ijk_to_ras_points, transform_points


def in_plane_rotation(degrees: float, spacing=(0.7, 0.7, 2.5)) -> np.ndarray:
    """IJK-to-RAS of an axial volume whose i and j axes are turned by `degrees` about S."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrix = np.eye(4)
    matrix[:3, 0] = np.array([c, s, 0.0]) * spacing[0]  # i
    matrix[:3, 1] = np.array([-s, c, 0.0]) * spacing[1]  # j
    matrix[:3, 2] = np.array([0.0, 0.0, 1.0]) * spacing[2]  # k
    return matrix


def test_a_tie_keeps_the_raw_order():
    """Guards ties replacing the raw order (`>=`, or a tolerance of the wrong sign): at 45 degrees i and j
    align with R and A alike, and the official pipeline's raw order stays."""
    assert ModelAxes.from_ijk_to_ras(in_plane_rotation(45.0)).order == (0, 1, 2)


def test_a_permutation_that_aligns_better_by_less_than_one_wins():
    """Guards a margin so large that only a whole axis swap beats the raw order: at 60 degrees i lies nearer
    A and j nearer R (|cos| 0.87 against 0.5), a better alignment by 0.73 in all."""
    assert ModelAxes.from_ijk_to_ras(in_plane_rotation(60.0)).order == (0, 2, 1)
    assert ModelAxes.from_ijk_to_ras(in_plane_rotation(30.0)).order == (0, 1, 2)


def test_one_point_keeps_its_shape():
    """Guards the transform returning (1, 3) for one 3-vector (callers index its components)."""
    point = transform_points(np.eye(4), [1.0, 2.0, 3.0])
    assert point.shape == (3,)
    assert ijk_to_ras_points(in_plane_rotation(0.0), np.zeros((2, 3))).shape == (2, 3)


@pytest.mark.parametrize(
    "matrix, message",
    [(np.eye(3), "must be a finite 4x4 matrix, got shape (3, 3)"), (np.diag([1.0, 0, 1, 1]), "is singular")],
)
def test_a_bad_matrix_says_what_is_wrong(matrix, message):
    with pytest.raises(InputError, match="the IJK-to-RAS matrix ") as caught:
        as_matrix(matrix)
    assert message in str(caught.value)
