"""In the Slicer twin (.ci/slicer-twin: a venv holding exactly the Python packages one Slicer release bundles):
the panel's first-use installer runs for real, as the panel runs it (the Segment and Export DICOM SEG buttons,
the same check, the same pip arguments and constraints, pip from PyPI, torch from light-the-torch's stand-in),
leaves every package that was there at its version, and each feature then works: a run through a loopback
`segvol serve` with only the client's packages, a run of the local model with synthetic weights (bit for bit
the server's answer), Export DICOM SEG of a synthetic series read back (or, on Slicer 5.10, the message saying
what to use instead), and the module's self-test with and without the packages.

The tests run in file order and build on each other (the installs are the subject). Outside the twin they are
skipped: they install packages. Needs SEGVOL_SERVER_PYTHON, a Python with the project's [server] extra, for the
server and to write what the twin cannot before torch is installed (the synthetic weights and CT series).
"""

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer_core_env
import vtk
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from slicer_app_standins import emit
from slicer_core_env import slicer_module  # noqa: F401  (fixture)
from test_slicer_stock_panel import Dialogs, open_panel

from SegVolSlicerLib.slicer import dependencies
from SegVolSlicerLib.testing.processes import stop_process

RELEASE = os.environ.get("SEGVOL_SLICER_TWIN")
pytestmark = pytest.mark.skipif(not RELEASE, reason="installs packages: runs in the Slicer twin (.ci/slicer-twin)")
MODULE_DIR = Path(__file__).resolve().parents[2]
TEST_RUNNER = {"pytest", "pluggy", "iniconfig", "pygments"}  # in the twin besides Slicer's packages
SERVER_START_S = 300  # the server loads the synthetic weights on a shared 2-core machine
RESULTS = {}


def installed() -> dict[str, str]:
    """The twin's distributions; not the project's own metadata beside the module (the egg-info an editable
    install of this checkout leaves in the folder Slicer loads the module from: no package of the twin's)."""
    importlib.invalidate_caches()
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions()
        if Path(d.locate_file("")).resolve() != MODULE_DIR
    }


def requirement_names(path) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for line in dependencies.requirement_lines(path)}


@pytest.fixture(scope="module")
def before():
    """Every distribution of the twin before any install (what Slicer bundles, slicer-core, the test runner)."""
    return installed()


def assert_unchanged(before):
    now = installed()
    changed = {name: (version, now.get(name)) for name, version in before.items() if now.get(name) != version}
    assert not changed, f"the install changed packages that were there: {changed}"


@pytest.fixture(scope="module")
def scene():
    yield slicer_core_env.setup()
    slicer_core_env.teardown()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Synthetic SegVol weights and a synthetic CT series, written by SEGVOL_SERVER_PYTHON (needs torch)."""
    folder = tmp_path_factory.mktemp("made")
    code = (
        "import sys; from pathlib import Path\n"
        "from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct\n"
        "from SegVolSlicerLib.testing.synthetic_dicom import write_ct_series\n"
        "from SegVolSlicerLib.testing.synthetic_weights import save_checkpoint, synthetic_state_dict\n"
        "out = Path(sys.argv[1])\n"
        "save_checkpoint(synthetic_state_dict(), out / 'SegVol_v1.pth', 'pth')\n"
        "write_ct_series(out / 'CT', make_synthetic_ct().volume)\n"
    )
    done = subprocess.run(
        [os.environ["SEGVOL_SERVER_PYTHON"], "-c", code, str(folder)],
        env={**os.environ, "PYTHONPATH": str(MODULE_DIR)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return types.SimpleNamespace(checkpoint=folder / "SegVol_v1.pth", series=folder / "CT")


@pytest.fixture(scope="module")
def ct(made, scene):
    """The series as a volume node loaded from Slicer's DICOM database (its instance UIDs), read with SimpleITK."""
    import pydicom

    from SegVolSlicerLib.imageio import read_volume

    volume = read_volume(made.series)
    node = slicer.util.addVolumeFromArray(volume.array.astype(np.int16), ijkToRAS=volume.ijk_to_ras, name="CT")
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: str(f) for f in sorted(made.series.iterdir())}
    node.SetAttribute("DICOM.instanceUIDs", " ".join(by_uid))
    return types.SimpleNamespace(node=node, by_uid=by_uid)


@pytest.fixture(scope="module")
def server_url(made):
    """`segvol serve` on 127.0.0.1 with the synthetic weights, in SEGVOL_SERVER_PYTHON; stopped by its PID."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    command = [os.environ["SEGVOL_SERVER_PYTHON"], "-m", "SegVolSlicerLib.cli", "serve", "--port", str(port)]
    command += ["--checkpoint", str(made.checkpoint), "--device", "cpu"]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(MODULE_DIR)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, "segvol serve ended"
            assert time.monotonic() < deadline, "segvol serve did not start"
            try:
                with urllib.request.urlopen(f"{url}/info", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        stop_process(server)


def segment_mask(parameters):
    segmentation = parameters.outputSegmentation
    (segment_id,) = segmentation.GetSegmentation().GetSegmentIDs()
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, parameters.inputVolume)


def panel_on(slicer_module, ct, server_url=None):  # noqa: F811
    widget = open_panel(slicer_module)
    parameters = widget._parameterNode
    parameters.inputVolume, parameters.outputSegmentation = ct.node, None
    parameters.targetNames, parameters.zoomIn, parameters.device = "liver", False, "cpu"
    index = 1 if server_url else 0
    widget.ui.runOnComboBox.currentIndex = index
    emit(widget.ui.runOnComboBox, "currentIndexChanged(int)", index)
    if server_url:
        widget.ui.serverUrlEdit.text = server_url
        emit(widget.ui.serverUrlEdit, "editingFinished()")
    return widget, parameters


def close(widget):
    widget.exit()
    widget.cleanup()


def test_the_twin_holds_what_slicer_bundles_and_nothing_of_segvols(before):
    """Guards the twin itself: a package Slicer lacks (or a requirement preinstalled) would hide the mistakes."""
    bundled = {
        canonicalize_name(Requirement(line).name): str(Requirement(line).specifier).removeprefix("==")
        for line in dependencies.requirement_lines(os.environ["SEGVOL_SLICER_BUNDLED"])
    }
    assert {name: before.get(name) for name in bundled} == bundled
    extra = set(before) - set(bundled) - {"slicer-core", "vtk"} - TEST_RUNNER
    assert not extra, f"not in Slicer {RELEASE}: {sorted(extra)}"
    wanted = set().union(*(requirement_names(p) for p in (MODULE_DIR / "Resources").glob("requirements*.txt")))
    assert wanted - set(bundled) and not (wanted - set(bundled)) & set(before)
    assert "torch" not in before and importlib.util.find_spec("PyTorchUtils") is not None  # the stand-in


def test_the_self_test_passes_before_any_install(slicer_module, scene, caplog):  # noqa: F811
    with caplog.at_level(logging.INFO):
        slicer_module.SegVolSlicerTest().runTest()
    assert "SegVol's Python packages are not installed: engine checks skipped" in caplog.text


def test_the_server_client_installs_and_runs_through_a_loopback_segvol_serve(
    slicer_module,  # noqa: F811
    ct,
    server_url,
    before,
    monkeypatch,
):
    """A laptop user: Run on a SegVol server, Segment, OK: httpx and blosc2 only, no torch, then the run."""
    dialogs = Dialogs(monkeypatch, answers=[True])
    widget, parameters = panel_on(slicer_module, ct, server_url)
    widget.onApplyButton()
    ((kind, listed),) = dialogs.of_kind("confirm", "errorDisplay", "infoDisplay")
    assert kind == "confirm" and "httpx" in listed and "blosc2" in listed and "torch" not in listed
    assert widget.ui.statusLabel.text.startswith("Done: liver"), widget.ui.statusLabel.text
    assert not dependencies.unsatisfied(
        dependencies.requirement_lines(MODULE_DIR / "Resources" / "requirements-client.txt")
    )
    assert_unchanged(before)
    assert importlib.util.find_spec("torch") is None
    RESULTS["server"] = segment_mask(parameters)
    assert RESULTS["server"].any()
    close(widget)


def test_the_local_model_installs_torch_and_segments_as_the_server_did(slicer_module, ct, made, before, monkeypatch):  # noqa: F811
    """Run on this computer with the synthetic weights, Segment, OK: torch (light-the-torch), monai and the rest,
    then the same result as through the server, bit for bit."""
    dialogs = Dialogs(monkeypatch, answers=[True])
    widget, parameters = panel_on(slicer_module, ct)
    widget.ui.weightsPathLineEdit.currentPath = str(made.checkpoint)
    widget.onApplyButton()
    ((kind, listed),) = dialogs.of_kind("confirm", "errorDisplay", "infoDisplay")
    assert kind == "confirm" and "torch>=2.2" in listed and "monai" in listed
    assert widget.ui.statusLabel.text.startswith("Done: liver"), widget.ui.statusLabel.text
    assert_unchanged(before)
    assert importlib.metadata.version("torch").startswith("2.13.0")
    np.testing.assert_array_equal(segment_mask(parameters), RESULTS["server"])
    RESULTS["segmentation"] = parameters.outputSegmentation
    close(widget)


def test_export_dicom_seg_installs_nothing_and_reads_back(slicer_module, ct, before, tmp_path, monkeypatch):  # noqa: F811
    """5.12 bundles highdicom and pydicom 3: nothing to install, the SEG reads back. 5.10 (pydicom 2.4.4): no
    highdicom fits, the panel says what to use instead and installs nothing."""
    dialogs = Dialogs(monkeypatch)
    monkeypatch.setattr(slicer, "dicomDatabase", types.SimpleNamespace(fileForInstance=ct.by_uid.get), raising=False)
    widget, parameters = panel_on(slicer_module, ct)
    parameters.outputSegmentation = RESULTS["segmentation"]
    widget.results.dicomSegPathEdit.currentPath = str(tmp_path / "seg.dcm")
    emit(widget.results.exportDicomSegButton, "clicked(bool)", False)
    assert_unchanged(before)
    if RELEASE == "5.10":
        ((kind, message),) = dialogs.of_kind("confirm", "errorDisplay", "infoDisplay")
        assert kind == "errorDisplay" and message.startswith("Export DICOM SEG needs Slicer 5.12")
        assert "this Slicer has pydicom 2.4.4" in message and widget.ui.statusLabel.text == message
        assert importlib.util.find_spec("highdicom") is None and not (tmp_path / "seg.dcm").exists()
    else:
        assert dialogs.of_kind("confirm", "errorDisplay", "infoDisplay") == []
        assert widget.ui.statusLabel.text.startswith("Wrote "), widget.ui.statusLabel.text
        import highdicom

        seg = highdicom.seg.segread(tmp_path / "seg.dcm")
        uids = list(ct.by_uid)
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]
        expected = segment_mask(parameters)
        assert expected.any()
        for uid, frame in zip(uids, frames):
            np.testing.assert_array_equal(frame, expected[slice_index(ct.node, ct.by_uid[uid])], err_msg=uid)
    close(widget)


def slice_index(volume_node, path) -> int:
    """The volume's K of the slice a DICOM file holds (its first voxel's position, LPS in the file)."""
    import pydicom

    ras = np.array(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, float) * [-1, -1, 1]
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk = np.linalg.solve(slicer.util.arrayFromVTKMatrix(matrix), [*ras, 1.0])[:3]
    assert np.allclose(ijk[:2], 0, atol=1e-3), ijk
    return int(round(ijk[2]))


def test_the_self_test_passes_with_the_packages(slicer_module, scene, caplog):  # noqa: F811
    with caplog.at_level(logging.INFO):
        slicer_module.SegVolSlicerTest().runTest()
    assert "Test passed" in caplog.text and "engine checks skipped" not in caplog.text
    assert "torch" in sys.modules
