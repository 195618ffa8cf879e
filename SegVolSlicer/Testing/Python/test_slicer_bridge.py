"""Slicer bridge on real MRML (slicer-core): volumes, point and ROI prompts, masks written as segments.

The checks live in SegVolSlicerLib.slicer.checks so that SegVolSlicerTest runs the same ones inside Slicer; what
reads inference/ (a face must not) stays here.
"""

import numpy as np
import pytest
import slicer
from slicer_core_env import slicer_scene  # noqa: F401  (fixture)

from SegVolSlicerLib.geometry import ijk_to_ras_points
from SegVolSlicerLib.inference.model_space import ModelSpace
from SegVolSlicerLib.inference.preprocess import prepare_volume
from SegVolSlicerLib.prompts import Box
from SegVolSlicerLib.slicer import bridge, checks


@pytest.mark.parametrize("check", checks.BRIDGE_CHECKS, ids=lambda check: check.__name__)
def test_bridge(check, slicer_scene, tmp_path):  # noqa: F811
    if check is checks.check_seg_nrrd_roundtrip:
        check(str(tmp_path))
    else:
        check()


@pytest.mark.parametrize("label", list(checks.geometries()))
def test_markups_reach_the_zoom_out_grid_and_map_back(label, slicer_scene):  # noqa: F811
    """Guards: clicks or ROI corners read from MRML landing outside the body crop or the 32x256x256 zoom-out
    grid, or not mapping back to the voxels they were placed on (an axis or flip mix-up between Slicer's
    geometry and the model space)."""
    ijk_to_ras = checks.geometries()[label]
    voxels, matrix = bridge.read_volume(checks.make_volume(ijk_to_ras, label))
    space = ModelSpace(prepare_volume(voxels, matrix))
    ijk = np.array([[12.0, 10.0, 6.0], [8.0, 12.5, 5.0]])  # inside the body crop
    clicks = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    for ras in ijk_to_ras_points(ijk_to_ras, ijk):
        clicks.AddControlPoint(*[float(v) for v in ras])
    points = bridge.read_points([clicks], matrix)
    assert np.all(space.contains_crop(space.ijk_to_crop(points.ijk)))
    zoom_out = space.ijk_to_zoom_out(points.ijk)
    assert np.all(zoom_out > -0.5) and np.all(zoom_out < np.array([32, 256, 256]) - 0.5), zoom_out
    np.testing.assert_allclose(space.zoom_out_to_ijk(zoom_out), ijk, atol=1e-6)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    box = Box((2, 3, 1), (17, 12, 9))
    checks.set_roi_to_box(roi, box, ijk_to_ras)
    corners = space.ijk_to_crop(bridge.read_box(roi, matrix).corners_ijk())
    np.testing.assert_allclose(space.crop_to_ijk(corners), box.corners_ijk())
