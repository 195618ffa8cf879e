"""Slicer bridge on real MRML (slicer-core): volumes, point and ROI prompts, masks written as segments.

The checks live in SegVolSlicerLib.slicer.checks so that SegVolSlicerTest runs the same ones inside Slicer.
"""

import pytest
from slicer_core_env import slicer_scene  # noqa: F401  (fixture)

from SegVolSlicerLib.slicer import checks


@pytest.mark.parametrize("check", checks.BRIDGE_CHECKS + checks.ENGINE_CHECKS, ids=lambda check: check.__name__)
def test_bridge(check, slicer_scene, tmp_path):  # noqa: F811
    if check is checks.check_seg_nrrd_roundtrip:
        check(str(tmp_path))
    else:
        check()
