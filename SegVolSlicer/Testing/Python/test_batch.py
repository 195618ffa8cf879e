"""`segvol batch` and `segvol evaluate --dataset`: outputs equal to the single-case commands, failures recorded,
resume after SIGKILL, Ray Data on loopback."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fake_segvol import FakeSegVol

from SegVolSlicerLib import batch, cli
from SegVolSlicerLib.engine import EngineHost
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.testing.synthetic_ct import SyntheticCT, make_synthetic_ct, write_ct

LIB = Path(batch.__file__).resolve().parents[1]  # the folder holding SegVolSlicerLib (for subprocesses)


@pytest.fixture(scope="module")
def ct():
    return make_synthetic_ct()


def tiny_ct(ct, shift: int) -> SyntheticCT:
    """A small CT (24 x 40 x 48 voxels) cut from the synthetic one; `shift` makes each case different."""
    step = np.diag([4.0, 4.0, 2.0, 1.0])  # i, j, k strides
    volume = np.roll(ct.volume, shift * 8, axis=2)[::2, ::4, ::4]
    labels = np.roll(ct.labels, shift * 8, axis=2)[::2, ::4, ::4]
    return SyntheticCT(np.ascontiguousarray(volume), np.ascontiguousarray(labels), ct.ijk_to_ras @ step)


@pytest.fixture(scope="module")
def scans(ct, tmp_path_factory):
    """Three tiny CTs in a folder (with their label maps in another)."""
    folder = tmp_path_factory.mktemp("scans")
    (folder / "labels").mkdir()
    for n in range(3):
        write_ct(tiny_ct(ct, n), folder / f"case {n}.nii.gz", folder / "labels" / f"case {n}.nii.gz")
    return folder


@pytest.fixture
def fake_model(monkeypatch):
    model = FakeSegVol()
    monkeypatch.setattr(EngineHost, "model", lambda self, reporter=None: model)
    return model


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def voxels_and_header(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}


def assert_same_segmentation(path, reference):
    """Same voxels, geometry and segment fields (name, colour, terminology...) as `segvol segment` wrote."""
    (voxels, header), (expected_voxels, expected_header) = voxels_and_header(path), voxels_and_header(reference)
    np.testing.assert_array_equal(voxels, expected_voxels)
    assert header == expected_header
    written, wanted = sitk.ReadImage(str(path)), sitk.ReadImage(str(reference))
    assert written.GetOrigin() == wanted.GetOrigin() and written.GetDirection() == wanted.GetDirection()


# --- inputs ---

def test_inputs_files_folders_dicom_and_manifest(tmp_path, ct):
    """Guards: a folder read as one case, a DICOM folder split per file, ids clashing or unsafe as file names,
    manifest paths taken relative to the working folder instead of the CSV."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small = tiny_ct(ct, 0)
    write_ct(small, tmp_path / "a" / "x.nii.gz")
    write_ct(small, tmp_path / "a" / "y.nrrd")
    (tmp_path / "a" / ".hidden.nii.gz").write_bytes(b"")
    write_ct(small, tmp_path / "b" / "x.mha")
    dicom = tmp_path / "patient 7"
    dicom.mkdir()
    for n in range(3):
        (dicom / f"IM{n}").write_bytes(b"DICM")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text("image,id\n../b/x.mha,scan/1\n../a/y.nrrd,\n")
    cases = batch.discover_cases([tmp_path / "a", tmp_path / "b" / "x.mha", dicom, tmp_path / "lists" / "m.csv"])
    assert [(c.id, Path(c.image).relative_to(tmp_path).as_posix()) for c in cases] == [
        ("x", "a/x.nii.gz"), ("y", "a/y.nrrd"), ("x-2", "b/x.mha"), ("patient_7", "patient 7")]
    cases = batch.discover_cases([tmp_path / "lists" / "m.csv"])
    assert [(c.id, Path(c.image).name) for c in cases] == [("scan_1", "x.mha"), ("y", "y.nrrd")]
    (tmp_path / "bad.csv").write_text("path\nx.nii.gz\n")
    with pytest.raises(InputError, match="no column image"):
        batch.discover_cases([tmp_path / "bad.csv"])
    (tmp_path / "dup.csv").write_text("image,id\na/x.nii.gz,s\na/y.nrrd,s\n")
    with pytest.raises(InputError, match="unique"):
        batch.discover_cases([tmp_path / "dup.csv"])


# --- batch here, with the stand-in model ---

def test_batch_equals_segment_and_records_a_corrupt_case(scans, tmp_path, fake_model, capsys):
    """Guards: batch outputs differing from `segvol segment` (names, colours, voxels), one bad case stopping the
    others, a rerun recomputing done cases or skipping failed ones."""
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a CT at all")
    out = tmp_path / "out"
    argv = ["batch", scans, corrupt, "--text", "liver", "--text", "spleen", "--output-dir", out]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 1, err  # some case failed
    rows = {row["id"]: row for row in read_rows(out / "results.csv")}
    assert list(rows) == ["case_0", "case_1", "case_2", "corrupt"]
    assert [rows[i]["status"] for i in rows] == ["ok", "ok", "ok", "failed"]
    assert "cannot read image" in rows["corrupt"]["error"] and not (out / "corrupt.seg.nrrd").exists()
    assert "corrupt failed" in err and "3 case(s) done, 1 failed" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["case_0.seg.nrrd", "case_1.seg.nrrd", "case_2.seg.nrrd",
                                                      "results.csv"]  # no temporary file left
    for n in range(3):
        reference = tmp_path / f"segment {n}.seg.nrrd"
        code, _, err = run_cli(["segment", scans / f"case {n}.nii.gz", "--text", "liver", "--text", "spleen",
                                "-o", reference], capsys)
        assert code == 0, err
        assert_same_segmentation(out / f"case_{n}.seg.nrrd", reference)

    # The rerun: the corrupt file was fixed; only it runs.
    write_ct(make_synthetic_ct(), corrupt)
    before = {n: (out / f"case_{n}.seg.nrrd").stat().st_mtime_ns for n in range(3)}
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "3 of 4 case(s) already done" in err and "1 case(s) done, 0 failed, 3 skipped" in stdout
    assert {n: (out / f"case_{n}.seg.nrrd").stat().st_mtime_ns for n in range(3)} == before
    rerun = {row["id"]: row for row in read_rows(out / "results.csv")}
    assert [row["status"] for row in rerun.values()] == ["ok"] * 4
    assert all(rerun[i] == rows[i] for i in ("case_0", "case_1", "case_2"))  # their rows kept as recorded


def test_batch_refuses_bad_arguments(scans, tmp_path, fake_model, capsys):
    for argv, message in [
        (["batch", tmp_path / "missing", "--text", "liver", "--output-dir", tmp_path / "o"], "input not found"),
        (["batch", scans, "--text", " ", "--output-dir", tmp_path / "o"], "at least one --text"),
        (["batch", scans, "--text", "liver", "--output-dir", tmp_path / "o", "--workers", "2"], "--ray"),
        (["batch", scans, "--text", "liver", "--output-dir", scans / "case 0.nii.gz"], "is a file"),
    ]:
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.startswith("segvol: error: ") and message in err and err.count("\n") == 1, err
