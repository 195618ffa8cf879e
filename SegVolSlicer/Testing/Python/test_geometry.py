"""IJK <-> RAS <-> LPS mapping and the model axis order (axial raw order kept, other orders permuted)."""

import numpy as np
import pytest

from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.geometry import (
    ModelAxes,
    as_matrix,
    ijk_to_ras_points,
    lps_to_ras_points,
    ras_to_ijk_points,
    ras_to_lps_points,
)
from SegVolSlicerLib.testing.synthetic_ct import SHAPE_KJI, synthetic_ijk_to_ras


def permuted_geometry(volume, ijk_to_ras, array_order):
    """The same physical image stored with its (K,J,I) array axes reordered: array_order[n] = old array axis."""
    new_volume = np.ascontiguousarray(volume.transpose(array_order))
    new_matrix = ijk_to_ras.copy()
    for new_axis, old_axis in enumerate(array_order):  # array axis a <-> IJK column 2 - a
        new_matrix[:3, 2 - new_axis] = ijk_to_ras[:3, 2 - old_axis]
    return new_volume, new_matrix


def test_ijk_ras_round_trip_on_oblique_lps_volume():
    matrix = synthetic_ijk_to_ras()
    ijk = np.array([[0, 0, 0], [191, 159, 47], [10.5, 20.25, 3.75]])
    ras = ijk_to_ras_points(matrix, ijk)
    np.testing.assert_allclose(ras[0], matrix[:3, 3])
    np.testing.assert_allclose(ras_to_ijk_points(matrix, ras), ijk, atol=1e-9)
    # i runs toward the patient's left: RAS x decreases along i (LPS-like storage).
    assert ras[1][0] < ras[0][0]


def test_lps_ras_flip_x_and_y_only():
    lps = np.array([[-10.0, -20.0, 30.0]])
    np.testing.assert_array_equal(lps_to_ras_points(lps), [[10.0, 20.0, 30.0]])
    np.testing.assert_array_equal(ras_to_lps_points(lps_to_ras_points(lps)), lps)


def test_axially_stored_volume_keeps_raw_order():
    assert ModelAxes.from_ijk_to_ras(synthetic_ijk_to_ras()).is_identity
    assert ModelAxes.from_ijk_to_ras(np.diag([-0.7, -0.7, 5.0, 1.0])).order == (0, 1, 2)


@pytest.mark.parametrize("array_order", [(1, 0, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1), (0, 2, 1)])
def test_permuted_storage_is_brought_back_to_axial_order(array_order):
    volume = np.arange(np.prod(SHAPE_KJI)).reshape(SHAPE_KJI)
    stored, matrix = permuted_geometry(volume, synthetic_ijk_to_ras(), array_order)
    axes = ModelAxes.from_ijk_to_ras(matrix)
    np.testing.assert_array_equal(axes.to_model(stored), volume)  # same voxels, same order, no flip
    np.testing.assert_array_equal(axes.from_model(axes.to_model(stored)), stored)
    assert axes.shape_to_model(stored.shape) == SHAPE_KJI


def test_sagittal_storage_example():
    # A sagittal series: i along A-P, j along S-I (downwards), k along L-R.
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]) * 0.9
    axes = ModelAxes.from_ijk_to_ras(matrix)
    # Array axes (K, J, I) = (L-R, S-I, A-P) -> model (S-I, A-P, L-R) = array axes (1, 2, 0).
    assert axes.order == (1, 2, 0)
    ijk = np.array([[3.0, 7.0, 11.0]])  # i, j, k
    dhw = axes.ijk_to_model(ijk)
    np.testing.assert_array_equal(dhw, [[7.0, 3.0, 11.0]])  # (j, i, k): S-I, A-P, L-R
    np.testing.assert_array_equal(axes.model_to_ijk(dhw), ijk)


def test_ijk_to_model_matches_array_indexing():
    _, matrix = permuted_geometry(np.zeros(SHAPE_KJI), synthetic_ijk_to_ras(), (2, 0, 1))
    axes = ModelAxes.from_ijk_to_ras(matrix)
    stored = np.random.default_rng(0).random((192, 48, 160))
    model = axes.to_model(stored)
    for i, j, k in [(3, 40, 100), (150, 2, 7)]:
        d, h, w = axes.ijk_to_model([i, j, k]).astype(int)
        assert model[d, h, w] == stored[k, j, i]


@pytest.mark.parametrize("matrix", [np.eye(3), np.zeros((4, 4)), np.full((4, 4), np.nan)])
def test_bad_matrices_are_user_errors(matrix):
    with pytest.raises(InputError):
        as_matrix(matrix)
