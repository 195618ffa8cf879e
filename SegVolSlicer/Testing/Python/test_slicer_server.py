"""Slicer on a SegVol server: the panel's "Run on: a SegVol server" runs the same workflow through the
torch-free client (the server here: a real uvicorn on 127.0.0.1), installs only the client's packages, and keeps
the address and key in the application settings, never in the scene."""

import numpy as np
import pytest
import slicer
from fake_segvol import FakeSegVol
from slicer_app_standins import emit
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_widget import panel  # noqa: F401  (fixture)

from SegVolSlicerLib.client import RemoteEngine
from SegVolSlicerLib.engine import EngineHost
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.server import ServerSettings, create_app, serve_in_thread
from SegVolSlicerLib.slicer import dependencies
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct


@pytest.fixture(scope="module")
def server_url():
    with serve_in_thread(create_app(EngineHost(model=FakeSegVol()), ServerSettings(api_key="k3y"))) as url:
        yield url


def segment_masks(segmentation_node, volume_node):
    return [
        slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
        for segment_id in segmentation_node.GetSegmentation().GetSegmentIDs()
    ]


def test_the_logic_on_a_server_writes_what_it_writes_here(slicer_module, slicer_scene, server_url):  # noqa: F811
    ct = make_synthetic_ct()
    volume = slicer.util.addVolumeFromArray(ct.volume, ct.ijk_to_ras, "synthetic CT")
    results = []
    for on_server in (False, True):
        logic = slicer_module.SegVolSlicerLogic()
        if on_server:
            logic.useServer(server_url, "k3y")
            assert isinstance(logic.engine, RemoteEngine)
        else:
            logic.useModel(FakeSegVol())
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic.process(volume, segmentation, names="liver, spleen", zoomIn=True)
        results.append(segment_masks(segmentation, volume))
    here, there = results
    assert len(here) == len(there) == 2 and any(mask.any() for mask in here)
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a, b)


def test_a_server_address_is_required(slicer_module):  # noqa: F811
    logic = slicer_module.SegVolSlicerLogic()
    with pytest.raises(InputError, match="no SegVol server address"):
        logic.useServer("  ", None)
    assert isinstance(logic.engine, EngineHost)  # still usable here


def test_the_panel_runs_on_the_server_with_the_clients_packages_only(panel, server_url, monkeypatch):  # noqa: F811
    widget, parameters, dialogs = panel
    ensured = []
    monkeypatch.setattr(dependencies, "check", lambda *args, **kwargs: ensured.append((args, kwargs)))
    widget.ui.runOnComboBox.currentIndex = 1
    emit(widget.ui.runOnComboBox, "currentIndexChanged(int)", 1)
    widget.ui.serverUrlEdit.text, widget.ui.serverKeyEdit.text = server_url, "k3y"
    emit(widget.ui.serverUrlEdit, "editingFinished()")
    emit(widget.ui.serverKeyEdit, "editingFinished()")
    assert not widget.ui.deviceComboBox.enabled and widget.ui.serverUrlEdit.enabled
    widget.runSegmentation(interactive=True)
    ((args, kwargs),) = ensured
    assert args[0].endswith("requirements-client.txt") and kwargs == {"needs_torch": False}
    assert isinstance(widget.logic.engine, RemoteEngine) and dialogs == []
    assert widget.ui.statusLabel.text.startswith("Done: SegVol 1")
    assert parameters.outputSegmentation.GetSegmentation().GetNumberOfSegments() == 1
    # The address lives in the application's settings, the key only in this session (unless remembered); the
    # scene's parameter node holds neither.
    import qt

    settings = qt.QSettings()
    assert (settings.value("SegVolSlicer/ServerURL"), settings.value("SegVolSlicer/ServerAPIKey")) == (server_url, None)
    stored = slicer.mrmlScene.GetNodesByClass("vtkMRMLScriptedModuleNode")
    for index in range(stored.GetNumberOfItems()):
        node = stored.GetItemAsObject(index)
        assert all(
            "k3y" not in str(node.GetParameter(name)) and server_url not in str(node.GetParameter(name))
            for name in node.GetParameterNames()
        )
    widget.ui.runOnComboBox.currentIndex = 0  # back to this computer: the local model again
    emit(widget.ui.runOnComboBox, "currentIndexChanged(int)", 0)
    assert settings.value("SegVolSlicer/RunOn") == "local" and widget.ui.deviceComboBox.enabled
