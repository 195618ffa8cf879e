"""DICOM series checked the way a PACS viewer checks them, before the model runs (dicom_series): several series
in a folder listed and picked with --series, gaps named (or resampled with --allow-gaps), one orientation, no
gantry tilt, non-CT a warning; and the synthetic series the tests read are valid DICOM (dciodvfy)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cli_helpers import run_cli, segvol_env
from dicom_validators import assert_valid_dicom
from fake_segvol import FakeSegVol

from SegVolSlicerLib.dicom_series import find_series
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.imageio import read_ct
from SegVolSlicerLib.testing.synthetic_dicom import oblique_axes, slice_positions, write_ct_series

SHAPE_KJI = (10, 16, 18)
SPACING_K = 2.5


def phantom_hu() -> np.ndarray:
    """Every slice different (its index in the hundreds), a bright blob for the stand-in model to find."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE_KJI), indexing="ij")
    hu = np.where(((j - 8) / 6) ** 2 + ((i - 9) / 7) ** 2 <= 1, 300, -900) + 10 * k
    return hu.astype(np.int16)


def along_normal(positions) -> np.ndarray:
    row, column = oblique_axes()
    return np.asarray(positions) @ np.cross(row, column)


@pytest.fixture
def no_model(stand_in_model):
    stand_in_model(None)  # the series check comes first


def test_synthetic_series_are_valid_dicom(tmp_path):
    """Guards: tests of DICOM reading and SEG writing that run on input no scanner writes (dciodvfy found 5
    errors per file: KVP, AcquisitionNumber, PositionReferenceIndicator, Laterality, PatientPosition)."""
    hu = phantom_hu()
    files = write_ct_series(tmp_path / "plain", hu)
    files += write_ct_series(tmp_path / "gapped", hu, missing=(3,))
    files += write_ct_series(tmp_path / "tilted", hu, tilt_degrees=12)
    files += write_ct_series(tmp_path / "mr", hu, modality="MR")
    assert_valid_dicom(files)


def test_two_series_in_a_folder_are_listed_and_one_is_picked(tmp_path, capfd, no_model):
    """Guards: a folder of two series read as one of them without a word (the largest one was taken), no way
    to choose, --series ignored."""
    hu = phantom_hu()
    folder = tmp_path / "study"
    soft = write_ct_series(folder, hu, series_number=3, description="soft tissue")
    study = pydicom.dcmread(soft[0]).StudyInstanceUID
    write_ct_series(folder, hu[:6, :, :12] + 50, series_number=4, description="bone kernel", study=study)
    uids = {pydicom.dcmread(f).SeriesDescription: pydicom.dcmread(f).SeriesInstanceUID for f in folder.iterdir()}
    code, out, err = run_cli(["segment", folder, "--text", "liver", "-o", tmp_path / "r.seg.nrrd"], capfd)
    assert code == 2 and "2 DICOM series" in err and "--series" in err
    listed = {line.split()[0]: line for line in err.splitlines() if line.startswith("  ")}
    assert set(listed) == set(uids.values())
    assert "#3  CT  10 slice(s)  soft tissue" in listed[uids["soft tissue"]]
    assert "#4  CT  6 slice(s)  bone kernel" in listed[uids["bone kernel"]]
    assert not (tmp_path / "r.seg.nrrd").exists()

    bone = read_ct(folder, series=uids["bone kernel"])
    assert bone.shape == (6, 16, 12) and bone.dicom.uid == uids["bone kernel"]
    np.testing.assert_array_equal(bone.array, (hu[:6, :, :12] + 50)[::-1])  # ITK's K: ascending along the normal
    with pytest.raises(InputError, match="holds no DICOM series 1.2.3"):
        read_ct(folder, series="1.2.3")
    with pytest.raises(InputError, match="not a folder"):
        read_ct(soft[0], series=uids["soft tissue"])


def test_a_dicom_seg_references_the_series_picked(tmp_path, capsys, stand_in_model):
    """Guards: the SEG of `--series B` referencing the folder's other (larger) series, or failing after the
    model ran because the folder has several."""
    import highdicom as hd

    stand_in_model(FakeSegVol())
    folder = tmp_path / "study"
    write_ct_series(folder, phantom_hu(), series_number=3)
    bone = write_ct_series(folder, phantom_hu()[:6], series_number=4)
    uid = pydicom.dcmread(bone[0]).SeriesInstanceUID
    argv = ["segment", folder, "--series", uid, "--text", "liver", "-o", tmp_path / "r.dcm"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    referenced = hd.seg.segread(tmp_path / "r.dcm").ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        pydicom.dcmread(f).SOPInstanceUID for f in bone
    }


def test_batch_takes_each_series_of_a_folder_as_a_case(tmp_path, capsys, stand_in_model, synthetic_checkpoint):
    """Guards: batch reading a folder of two series as one case (the larger series), or as two cases of the
    same series."""
    stand_in_model(FakeSegVol())
    folder = tmp_path / "study"
    write_ct_series(folder, phantom_hu(), series_number=3)
    write_ct_series(folder, phantom_hu()[:6], series_number=4)
    out = tmp_path / "out"
    argv = ["batch", folder, "--text", "liver", "--output-dir", out, "--checkpoint", synthetic_checkpoint]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    with open(out / "results.csv", newline="") as table:
        rows = {row["id"]: row for row in csv.DictReader(table)}
    assert set(rows) == {"study-3", "study-4"} and all(row["status"] == "ok" for row in rows.values())
    from SegVolSlicerLib.imageio import read_segmentation

    for case, slices in (("study-3", 10), ("study-4", 6)):
        volume = read_ct(folder, series=find_series(folder)[0 if slices == 10 else 1].uid)
        assert volume.shape[0] == slices
        (segment,) = read_segmentation(out / f"{case}.seg.nrrd", volume)
        assert segment.mask.any()


def test_a_gapped_series_is_refused_with_the_missing_positions(tmp_path, capfd, no_model):
    """Guards: a series with missing slices accepted on ITK's regularised grid (masks and statistics 1-2 mm off
    the DICOM positions), with ITK's raw multi-line WARNING as the only sign."""
    folder = tmp_path / "CT"
    write_ct_series(folder, phantom_hu(), missing=(3, 4, 7))
    expected = along_normal(slice_positions(SHAPE_KJI[0], SPACING_K)[[7, 4, 3]])  # ascending along the normal
    code, out, err = run_cli(["segment", folder, "--text", "liver", "-o", tmp_path / "r.seg.nrrd"], capfd)
    assert code == 2 and "3 slice(s) are missing at " in err and "--allow-gaps" in err
    assert ", ".join(f"{p:.2f}" for p in expected) in err
    assert "WARNING" not in err and err.strip().count("\n") == 0  # one line, no ITK message
    assert not (tmp_path / "r.seg.nrrd").exists()


def test_allow_gaps_resamples_onto_the_slices_positions_with_a_warning(tmp_path, capfd, stand_in_model):
    """Guards: --allow-gaps stretching the acquired slices over the gap (each acquired slice must stay at its
    DICOM position), filling the gap with anything but its neighbours, or saying nothing; its DICOM SEG must
    reference each acquired instance at its position."""
    import highdicom as hd

    hu = phantom_hu()
    folder = tmp_path / "CT"
    files = write_ct_series(folder, hu, missing=(4,))
    volume = read_ct(folder, allow_gaps=True)
    assert volume.shape == SHAPE_KJI and len(volume.warnings) == 1 and "interpolated" in volume.warnings[0]
    for file in files:
        dataset = pydicom.dcmread(file)
        index = volume.reference.TransformPhysicalPointToContinuousIndex(
            [float(v) for v in dataset.ImagePositionPatient]
        )
        np.testing.assert_allclose(index, np.rint(index), atol=1e-3)
        np.testing.assert_array_equal(volume.array[int(round(index[2]))], dataset.pixel_array)
    k = SHAPE_KJI[0] - 1 - 4  # the missing slice, in ITK's ascending order
    np.testing.assert_array_equal(volume.array[k], np.rint((hu[3].astype(float) + hu[5]) / 2))

    stand_in_model(FakeSegVol())
    argv = ["segment", folder, "--allow-gaps", "--text", "liver", "-o", tmp_path / "r.dcm"]
    code, out, err = run_cli(argv, capfd)
    assert code == 0, err
    assert "warning: DICOM series" in err and "resampled" in err and "WARNING" not in err
    seg = hd.seg.segread(tmp_path / "r.dcm")
    positions = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).ImagePositionPatient for f in files}
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) <= len(files)
    for frame in frames:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float),
            np.asarray(positions[uid], float),
            atol=1e-4,
        )


def test_a_tilted_series_is_refused(tmp_path, capfd, no_model):
    """Guards: a gantry-tilted series read as a sheared volume without a word."""
    write_ct_series(tmp_path / "CT", phantom_hu(), tilt_degrees=15)
    code, out, err = run_cli(["segment", tmp_path / "CT", "--text", "liver", "-o", tmp_path / "r.seg.nrrd"], capfd)
    assert code == 2 and "gantry tilt of 15.0 degrees" in err and err.strip().count("\n") == 0


def test_mixed_orientations_and_duplicate_slices_are_refused(tmp_path):
    """Guards: a localizer stacked into the volume, two acquisitions at the same positions read as one."""
    files = write_ct_series(tmp_path / "mixed", phantom_hu())
    localizer = pydicom.dcmread(files[0])
    localizer.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    localizer.save_as(files[0])
    with pytest.raises(InputError, match="2 orientations"):
        read_ct(tmp_path / "mixed")
    files = write_ct_series(tmp_path / "twice", phantom_hu())
    copy = pydicom.dcmread(files[0])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    copy.save_as(tmp_path / "twice" / "copy.dcm")
    with pytest.raises(InputError, match="at the same position"):
        read_ct(tmp_path / "twice")


def test_a_series_that_is_not_ct_is_a_warning(tmp_path, capsys, stand_in_model):
    """Guards: an MR series segmented with no word that SegVol is a CT model."""
    stand_in_model(FakeSegVol())
    write_ct_series(tmp_path / "MR", phantom_hu(), modality="MR")
    code, out, err = run_cli(["segment", tmp_path / "MR", "--text", "liver", "-o", tmp_path / "r.seg.nrrd"], capsys)
    assert code == 0 and "is MR, not CT" in err


def test_the_series_check_needs_no_model_stack(tmp_path):
    """Guards: the DICOM checks importing torch or the model (seconds) before saying a series is bad, or
    needing pydicom (not in the Quick start's install: SimpleITK reads DICOM)."""
    write_ct_series(tmp_path / "CT", phantom_hu(), missing=(5,))
    script = (
        "import sys\nfrom SegVolSlicerLib.errors import InputError\nfrom SegVolSlicerLib.imageio import read_ct\n"
        f"try:\n    read_ct({str(tmp_path / 'CT')!r})\nexcept InputError as error:\n    print(error)\n"
        "print('torch' in sys.modules or 'pydicom' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=segvol_env(), timeout=120, check=True
    )
    assert "missing" in run.stdout and run.stdout.strip().endswith("False"), run.stdout + run.stderr


def test_a_single_series_folder_reads_as_before(tmp_path):
    """Guards: the checks rejecting a plain series or changing its volume (ITK's reading, file order ignored)."""
    hu = phantom_hu()
    write_ct_series(tmp_path / "CT", hu)
    shutil.copy(Path(__file__), tmp_path / "CT" / "notes.txt")  # a stray non-DICOM file is no series
    volume = read_ct(tmp_path / "CT")
    assert volume.warnings == () and volume.dicom is not None
    np.testing.assert_array_equal(volume.array, hu[::-1])
    np.testing.assert_allclose(volume.reference.GetSpacing(), (0.9, 0.8, SPACING_K), atol=1e-5)
