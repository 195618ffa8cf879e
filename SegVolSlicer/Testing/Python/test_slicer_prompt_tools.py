"""Strokes as the panel places them (SegVolSlicerLib/slicer/prompt_tools.py, bridge.read_stroke).

What it guards: a second stroke continuing the first (one curve through both, a straight line of extra clicks
joining them); an auto-update run after each placed stroke point instead of once the stroke is finished; the
point under the mouse while placing (a preview point) taken as part of the stroke.
"""

import numpy as np
import slicer
from slicer_app_standins import emit
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_widget import panel, shortcut  # noqa: F401  (panel: fixture)

from SegVolSlicerLib.slicer import bridge, checks

IJK_TO_RAS = checks.oblique_lps_ijk_to_ras()


def place(widget, key, stroke, points_ijk):
    """The user presses `key`, clicks `points_ijk` (each point is placed, then defined) and ends placing."""
    emit(shortcut(widget, key), "activated()")
    place_widget = widget.ui.positiveStrokePlaceWidget
    assert place_widget.placeModeEnabled
    for ras in checks.ijk_to_ras_points(IJK_TO_RAS, points_ijk):
        stroke.AddControlPoint(*[float(v) for v in ras])
        stroke.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent)
    emit(shortcut(widget, key), "activated()")  # placing ends
    assert not place_widget.placeModeEnabled


def stroke_clicks(nodes):
    points = bridge.read_points(nodes, IJK_TO_RAS)
    return sorted(map(tuple, np.round(points.ijk, 6)))


def test_a_second_stroke_is_a_curve_of_its_own(panel):  # noqa: F811
    widget, parameters, dialogs = panel
    stroke = parameters.positiveStroke
    first, second = [[2.0, 3.0, 2.0], [8.0, 3.0, 2.0]], [[2.0, 15.0, 9.0], [8.0, 15.0, 9.0]]
    place(widget, "Shift+P", stroke, first)
    place(widget, "Shift+P", stroke, second)
    read = stroke_clicks([stroke, *bridge.finished_strokes(slicer.mrmlScene)])
    alone = [bridge.create_prompt_node(slicer.mrmlScene, bridge.POSITIVE_STROKE_ROLE) for _ in "ab"]
    for node, points_ijk in zip(alone, (first, second)):
        for ras in checks.ijk_to_ras_points(IJK_TO_RAS, points_ijk):
            node.AddControlPoint(*[float(v) for v in ras])
    assert read == stroke_clicks(alone), "the second stroke was joined to the first"
    widget.onClearPrompts()
    assert bridge.finished_strokes(slicer.mrmlScene) == [] and stroke.GetNumberOfControlPoints() == 0


def test_auto_update_runs_a_stroke_once_it_is_finished(panel):  # noqa: F811
    widget, parameters, dialogs = panel
    parameters.autoUpdate = True
    timer = widget.prompts.auto_timer
    emit(shortcut(widget, "Shift+P"), "activated()")
    stroke = parameters.positiveStroke
    for ras in checks.ijk_to_ras_points(IJK_TO_RAS, [[2.0, 3.0, 2.0], [8.0, 3.0, 2.0], [8.0, 9.0, 2.0]]):
        stroke.AddControlPoint(*[float(v) for v in ras])
        stroke.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent)
        stroke.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
        assert not timer.active, "a run would start while the stroke is being drawn"
    emit(shortcut(widget, "Shift+P"), "activated()")  # the stroke is finished
    assert timer.active


def test_the_point_under_the_mouse_is_not_part_of_the_stroke(slicer_scene):  # noqa: F811
    placing = bridge.create_prompt_node(slicer.mrmlScene, bridge.POSITIVE_STROKE_ROLE)
    placed = bridge.create_prompt_node(slicer.mrmlScene, bridge.POSITIVE_STROKE_ROLE)
    for ras in checks.ijk_to_ras_points(IJK_TO_RAS, [[2.0, 3.0, 2.0], [8.0, 3.0, 2.0]]):
        placing.AddControlPoint(*[float(v) for v in ras])
        placed.AddControlPoint(*[float(v) for v in ras])
    mouse = checks.ijk_to_ras_points(IJK_TO_RAS, [[8.0, 15.0, 9.0]])[0]
    placing.AddControlPoint(*[float(v) for v in mouse])
    placing.SetNthControlPointPosition(2, *[float(v) for v in mouse], placing.PositionPreview)
    assert stroke_clicks([placing]) == stroke_clicks([placed])
