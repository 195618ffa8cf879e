"""`segvol evaluate`'s files of one case are written all or none: a failure while writing them (a full disk, a
permission) must not leave the masks written before it, or a metrics.csv that names masks that are not there."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from SegVolSlicerLib import evaluation
from SegVolSlicerLib.errors import InputError


def class_result(name):
    return SimpleNamespace(name=name, mask=np.ones((2, 2, 2), np.uint8), row=lambda: {"class": name, "dice": 1.0})


def test_a_mask_that_cannot_be_written_leaves_no_file_of_the_case(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "evaluate_classes", lambda *a, **k: [class_result("liver"), class_result("spleen")])
    written = []

    def write_mask(path, mask, reference):
        if written:
            raise OSError(28, "No space left on device", str(path))
        Path(path).write_bytes(b"mask")
        written.append(path)

    monkeypatch.setattr(evaluation, "write_mask", write_mask)
    with pytest.raises(InputError, match="No space left"):
        evaluation.evaluate_case(None, None, None, None, [("liver", 1), ("spleen", 2)], "box", tmp_path / "eval")
    assert written, "the first mask was written before the failure"
    assert list((tmp_path / "eval").iterdir()) == [], "a failed case left files behind"


def test_a_case_written_whole_has_its_masks_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "evaluate_classes", lambda *a, **k: [class_result("left kidney")])
    monkeypatch.setattr(evaluation, "write_mask", lambda path, mask, reference: Path(path).write_bytes(b"mask"))
    evaluation.evaluate_case(None, None, None, None, [("left kidney", 1)], "box", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["left kidney.nii.gz", "metrics.csv"]
    assert (tmp_path / "metrics.csv").read_text(encoding="utf-8").splitlines()[1] == "left kidney,1.000000"
