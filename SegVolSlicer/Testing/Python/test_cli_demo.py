"""`segvol demo`: offline message, and a run from a local snapshot folder."""

import numpy as np
import SimpleITK as sitk
from cli_helpers import run_cli
from fake_segvol import FakeSegVol
from huggingface_hub import constants

import SegVolSlicerLib.model
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct, write_ct
from SegVolSlicerLib.weights import DEMO_CT


def test_demo_offline_says_what_to_download(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SEGVOL_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(["demo", "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("segvol: error: ")
    for needed in ("pytorch_model.bin", "config.json", DEMO_CT, str(tmp_path / "home")):
        assert needed in err
    assert not (tmp_path / "out").exists()


def test_demo_from_a_local_snapshot_folder(monkeypatch, tmp_path, capsys):
    snapshot = tmp_path / "BAAI-SegVol"
    snapshot.mkdir()
    (snapshot / "pytorch_model.bin").write_bytes(b"PK\x03\x04")  # looks like a checkpoint; the stand-in model is used
    write_ct(make_synthetic_ct(), snapshot / DEMO_CT)
    monkeypatch.setattr(SegVolSlicerLib.model, "load_segvol", lambda weights, device, precision: FakeSegVol())
    code, out, _ = run_cli(
        [
            "demo",
            "--source",
            str(snapshot),
            "--output-dir",
            str(tmp_path / "out"),
            "--text",
            "liver",
            "--text",
            "spleen",
            "--no-zoom-in",
        ],
        capsys,
    )
    assert code == 0
    assert str(tmp_path / "out" / "demo.seg.nrrd") in out and str(tmp_path / "out" / "demo.png") in out
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "demo.png")))
    assert png.ndim == 3 and png.shape[2] == 3 and png.dtype == np.uint8
    assert (png[..., 0] != png[..., 2]).any()  # coloured overlays on a grey image
    segmentation = sitk.ReadImage(str(tmp_path / "out" / "demo.seg.nrrd"))
    assert (
        segmentation.GetMetaData("Segment0_Name") == "liver" and segmentation.GetMetaData("Segment1_Name") == "spleen"
    )


def test_demo_source_must_be_a_folder(tmp_path, capsys):
    code, _, err = run_cli(["demo", "--source", tmp_path / "nowhere", "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and "is not a folder" in err


def test_demo_source_without_the_ct_is_not_downloaded_into(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "snapshot").mkdir()
    code, _, err = run_cli(["demo", "--source", tmp_path / "snapshot", "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"resolve/main/{DEMO_CT} into" in err
    assert list((tmp_path / "snapshot").iterdir()) == [] and not (tmp_path / "out").exists()
