"""The engine against the official zoom-out-zoom-in where synthetic weights cannot reach: a stand-in network.

Goldens: SegVolSlicer/Testing/Data/goldens/standin_goldens.npz (tools/make_goldens.py --only standin runs the
official `zoom_in_zoom_out` with fake_segvol.BandSegVol on the layout phantom). The stand-in's logits are a
pure function of the window image and the prompts, so every array must match exactly: ROIs inside the crop,
widened and clamped at its border; one window and 2 x 2 windows; windows whose zoom-out prediction or click
map is empty (sentinel box, ignore click); an empty zoom-out (no zoom-in).
"""

from pathlib import Path

import numpy as np
import pytest
from fake_segvol import BandSegVol, layout_ct
from test_inference_parity import MODES, assert_zoom_in_plan, unpack

from SegVolSlicerLib.evaluation import PromptMode, label_prompts
from SegVolSlicerLib.inference import SegVolSession

GOLDENS = Path(__file__).resolve().parents[1] / "Data" / "goldens" / "standin_goldens.npz"


class RecordingModel(BandSegVol):
    def __init__(self, bands):
        super().__init__(bands)
        self.calls = []

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None, upsample=True):
        self.calls.append({"boxes": boxes, "points": points})
        return super().decode(image_embedding, text_embedding, boxes, points, upsample)


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDENS) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def session(goldens):
    ct = layout_ct()
    bands = dict(zip(goldens["bands_names"].tolist(), goldens["bands_values"].tolist()))
    return SegVolSession(RecordingModel(bands), ct.volume, ct.ijk_to_ras), ct


def golden_runs():
    with np.load(GOLDENS) as data:
        return sorted({tuple(key.split(".")[1:3]) for key in data.files if key.endswith(".roi")})


def test_goldens_reach_every_branch(goldens):
    rois = {run: goldens[f"layout.{run[0]}.{run[1]}.roi"] for run in golden_runs()}
    cropped = goldens["layout.pre.cropped_shape"]
    windows = {run: len(goldens[f"layout.{run[0]}.{run[1]}.windows_start"]) for run in rois if rois[run][0] >= 0}
    assert len(rois) == 20 and {1, 2, 4} <= set(windows.values())
    assert any((roi[3:] == cropped).any() for roi in rois.values())  # ROI clamped to the size (not size - 1)
    assert any(roi[0] == -1 for roi in rois.values())  # empty zoom-out
    assert any((goldens[f"layout.{o}.{m}.windows_box"] == -1).all(axis=1).any() for o, m in windows)  # sentinel


@pytest.mark.parametrize("organ, mode", golden_runs())
def test_matches_official(organ, mode, goldens, session):
    session, ct = session
    key = f"layout.{organ}.{mode}."
    value = {name: label for label, name in ct.label_names.items()}[organ]
    assert session.prepared.crop_start == tuple(goldens["layout.pre.crop_start"])
    generator = session.new_generator()
    prompts = label_prompts(
        (ct.labels == value).astype(np.uint8),
        organ,
        PromptMode.parse(MODES[mode]),
        session.prepared,
        session.space,
        generator,
    )
    session.model.calls = []
    result = session.segment_model_prompts(organ, prompts, generator=generator)

    if key + "zoom_out_box" in goldens:
        np.testing.assert_array_equal(prompts.box, goldens[key + "zoom_out_box"][0])
    if key + "zoom_out_points" in goldens:
        np.testing.assert_array_equal(prompts.points[0], goldens[key + "zoom_out_points"][0])
    shape = goldens["layout.pre.input_shape"]
    np.testing.assert_array_equal(result.zoom_out_mask, unpack(goldens[key + "zoom_out_mask_bits"], shape))
    roi = goldens[key + "roi"]
    if roi[0] == -1:
        assert result.roi is None and len(session.model.calls) == 1
    else:
        assert_zoom_in_plan(result, session.model.calls[1:], goldens, key, goldens["layout.pre.cropped_shape"])
    np.testing.assert_array_equal(result.mask, unpack(goldens[key + "mask_bits"], shape))


def test_segvol_evaluate_matches_official(goldens, tmp_path, stand_in_model, capsys):
    """`segvol evaluate --prompt text+box` end to end (files in, files out) against the official masks."""
    from SegVolSlicerLib import cli
    from SegVolSlicerLib.imageio import read_volume
    from SegVolSlicerLib.testing.synthetic_ct import write_ct

    ct = layout_ct()
    write_ct(ct, tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    bands = dict(zip(goldens["bands_names"].tolist(), goldens["bands_values"].tolist()))
    stand_in_model(BandSegVol(bands))
    classes = [f"{name}={value}" for value, name in ct.label_names.items()]
    code = cli.main(
        [
            "evaluate",
            "--image",
            str(tmp_path / "ct.nii.gz"),
            "--label",
            str(tmp_path / "labels.nii.gz"),
            *[a for c in classes for a in ("--class", c)],
            "--output-dir",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    shape = goldens["layout.pre.input_shape"]
    for name in ct.label_names.values():
        mask = read_volume(tmp_path / "eval" / f"{name}.nii.gz").array
        np.testing.assert_array_equal(mask, unpack(goldens[f"layout.{name}.text_box.mask_bits"], shape))
    metrics = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    dice = {row.split(",")[0]: float(row.split(",")[3]) for row in metrics[1:]}
    assert dice == pytest.approx(
        {name: float(goldens[f"layout.{name}.text_box.dice_official"]) for name in ct.label_names.values()}, abs=1e-6
    )
