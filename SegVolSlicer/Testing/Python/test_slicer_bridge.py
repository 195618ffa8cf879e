"""Slicer bridge on real MRML (slicer-core): volumes, point and ROI prompts, masks written as segments.

The checks live in SegVolSlicerLib.slicer_testing so that SegVolSlicerTest runs the same ones inside Slicer.
"""

import pytest
from slicer_core_env import slicer_scene  # noqa: F401  (fixture)

from SegVolSlicerLib import slicer_testing


@pytest.mark.parametrize(
    "check", slicer_testing.BRIDGE_CHECKS + slicer_testing.ENGINE_CHECKS, ids=lambda check: check.__name__
)
def test_bridge(check, slicer_scene, tmp_path):  # noqa: F811
    if check is slicer_testing.check_seg_nrrd_roundtrip:
        check(str(tmp_path))
    else:
        check()
