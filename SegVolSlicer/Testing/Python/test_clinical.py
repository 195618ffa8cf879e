"""Results a clinic can use: DICOM SEG (checked with highdicom and, independently, dcmqi's converter),
statistics per segment (checked against numpy on the raw DICOM files) and the confidence from SegVol's
probabilities (checked with a stand-in network whose probabilities are known)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from dicom_validators import masks_by_dcmqi
from fake_segvol import BandSegVol, ConstantLogitSegVol, FakeSegVol, layout_ct

from SegVolSlicerLib import __version__
from SegVolSlicerLib.clinical import dicom_seg
from SegVolSlicerLib.clinical.confidence import MEAN_TAG, Confidence
from SegVolSlicerLib.engine import EngineHost, SessionOptions, VolumeInput
from SegVolSlicerLib.imageio import read_ct, read_segmentation, read_volume
from SegVolSlicerLib.prompts import Box, Points, Target
from SegVolSlicerLib.terminology import standard_term
from SegVolSlicerLib.testing.synthetic_dicom import write_ct_series

SHAPE_KJI = (12, 20, 24)
TEXTS = ("liver", "left kidney", "spleen")


def phantom_hu() -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE_KJI), indexing="ij")
    hu = np.where(((j - 10) / 9) ** 2 + ((i - 12) / 11) ** 2 <= 1, 40, -1000)
    hu = np.where(((k - 6) / 4) ** 2 + ((j - 8) / 5) ** 2 + ((i - 14) / 6) ** 2 <= 1, 200, hu)
    return (hu + np.random.default_rng(1).integers(-20, 20, hu.shape)).astype(np.int16)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "CT"
    write_ct_series(folder, phantom_hu())
    return folder


def raw_series(folder: Path) -> list[pydicom.Dataset]:
    """The source slices in the order of their position along the slice normal (independently of ITK)."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    row, column = np.asarray(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3)
    normal = np.cross(row, column)
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))


def masks_by_highdicom(path: Path, folder: Path, fractional: bool = False) -> np.ndarray:
    """(K, J, I, S) frames per source instance, in the slice order of raw_series."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in raw_series(folder)]
    numbers = list(range(1, len(seg.SegmentSequence) + 1))
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=False, skip_overlap_checks=True
    )


def test_dicom_seg_has_the_seg_nrrd_masks_for_highdicom_and_dcmqi(series, tmp_path, stand_in_model, capsys):
    """Guards: frames matched to the wrong slices (file or position order), rows/columns swapped, segments
    mixed up; the SEG's geometry must place each frame where dcmqi (ITK) puts the CT's slice."""
    stand_in_model(FakeSegVol())
    texts = [arg for text in TEXTS for arg in ("--text", text)]
    assert run_cli(["segment", series, *texts, "-o", tmp_path / "r.seg.nrrd"], capsys)[0] == 0
    code, out, err = run_cli(["segment", series, *texts, "-o", tmp_path / "r.dcm"], capsys)
    assert code == 0, err
    volume = read_ct(series)
    expected = read_segmentation(tmp_path / "r.seg.nrrd", volume)
    assert [s.name for s in expected] == ["liver", "left kidney", "spleen"]
    assert all(s.mask.any() for s in expected) and not np.array_equal(expected[0].mask, expected[2].mask)

    # highdicom: frames by source instance; ITK's slice order is the position order along the normal
    frames = masks_by_highdicom(tmp_path / "r.dcm", series)
    np.testing.assert_array_equal(volume.array, raw_hu(series))  # ITK's K is the order of positions too
    for number, segment in enumerate(expected):
        np.testing.assert_array_equal(frames[..., number], segment.mask)

    dcmqi_masks, meta = masks_by_dcmqi(tmp_path / "r.dcm", volume, tmp_path)
    for segment, mask in zip(expected, dcmqi_masks):
        np.testing.assert_array_equal(mask, segment.mask, err_msg=segment.name)
    labels = [attributes[0]["SegmentLabel"] for attributes in meta["segmentAttributes"]]
    assert labels == ["liver", "left kidney", "spleen"]


def raw_hu(folder: Path) -> np.ndarray:
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in raw_series(folder)])


def test_dicom_seg_references_codes_and_algorithm(series, tmp_path, stand_in_model, capsys):
    """Guards: a SEG that does not reference its CT (study, series, frame of reference, instances), loses the
    per-frame positions, the anatomy codes or the algorithm identification (AUTOMATIC for text,
    SEMIAUTOMATIC for clicks)."""
    import highdicom as hd

    stand_in_model(FakeSegVol())
    assert (
        run_cli(["segment", series, "--text", "liver", "--text", "left kidney", "-o", tmp_path / "a.dcm"], capsys)[0]
        == 0
    )
    code, out, err = run_cli(
        ["segment", series, "--text", "spleen", "--point-ijk", 14, 8, 6, "--name", "lesion", "-o", tmp_path / "s.dcm"],
        capsys,
    )
    assert code == 0, err
    source = raw_series(series)
    seg = hd.seg.segread(tmp_path / "a.dcm")
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in source
    }
    positions = {ds.SOPInstanceUID: np.asarray(ds.ImagePositionPatient, dtype=float) for ds in source}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(position, positions[uid], atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float),
        np.asarray(source[0].ImageOrientationPatient, float),
        atol=1e-5,
    )
    assert seg.SeriesNumber == int(source[0].SeriesNumber) + dicom_seg.SERIES_NUMBER_OFFSET
    assert seg.SeriesDescription == "SegVol: liver, left kidney"
    assert seg.SegmentationType == "BINARY"
    kidney = standard_term("left kidney")
    liver_item, kidney_item = seg.SegmentSequence
    assert liver_item.SegmentedPropertyTypeCodeSequence[0].CodeValue == standard_term("liver").type.value
    kidney_type = kidney_item.SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.CodeValue == kidney.type.value
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == kidney.modifier.value
    assert kidney_item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == kidney.category.value
    algorithm = liver_item.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "SegVol" and __version__ in algorithm.AlgorithmVersion
    assert "BAAI/SegVol" in algorithm.AlgorithmParameters
    assert liver_item.SegmentAlgorithmType == "AUTOMATIC"
    lesion = hd.seg.segread(tmp_path / "s.dcm").SegmentSequence[0]
    assert lesion.SegmentLabel == "lesion" and lesion.SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_fractional_seg_round_trips_the_probabilities(series, tmp_path, stand_in_model, capsys):
    """Guards: FRACTIONAL written from anything but the engine's probabilities, or scaled wrongly."""
    model = stand_in_model(FakeSegVol())
    code, out, err = run_cli(
        ["segment", series, "--text", "liver", "--probabilities", "-o", tmp_path / "p.dcm"], capsys
    )
    assert code == 0, err
    volume = read_ct(series)
    host = EngineHost(model=model, session_options=SessionOptions(probabilities=True))
    (result,) = host.segment(VolumeInput("ct", volume.array, volume.ijk_to_ras), [Target("liver", "liver")])
    import highdicom as hd

    seg = hd.seg.segread(tmp_path / "p.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 255
    read = masks_by_highdicom(tmp_path / "p.dcm", series)[..., 0]
    assert np.abs(read - result.probabilities).max() <= 0.5 / 255 + 1e-6
    assert result.probabilities.max() > 0.3 and np.ptp(result.probabilities) > 0.3  # not a trivial map


def test_probability_map_beside_a_non_dicom_output(series, tmp_path, stand_in_model, capsys):
    stand_in_model(ConstantLogitSegVol({"liver": 2.0, "spleen": 0.4}))
    output = tmp_path / "r.seg.nrrd"
    assert (
        run_cli(["segment", series, "--text", "liver", "--text", "spleen", "--probabilities", "-o", output], capsys)[0]
        == 0
    )
    image = sitk.ReadImage(str(tmp_path / "r.probabilities.nrrd"))
    array = sitk.GetArrayFromImage(image)
    assert array.shape == (*SHAPE_KJI, 2) and image.GetMetaData("SegVol_Targets") == "liver|spleen"
    masks = [segment.mask for segment in read_segmentation(output, read_ct(series))]
    np.testing.assert_allclose(array[..., 0][masks[0] > 0], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    np.testing.assert_array_equal(array[..., 1] > 0.5, masks[1] > 0)


@pytest.mark.parametrize("output", ["r.dcm", "p.dcm --probabilities"])
def test_dicom_seg_for_a_non_dicom_input_is_refused(output, series, tmp_path, capsys, stand_in_model):
    """Guards: a SEG that references nothing (or the model running for nothing) for a NIfTI input."""
    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(read_volume(series).reference, str(nifti))
    stand_in_model(None)  # the model must not load for a refused output
    name, *flags = output.split()
    code, out, err = run_cli(["segment", nifti, "--text", "liver", *flags, "-o", tmp_path / name], capsys)
    assert code == 2 and "DICOM series" in err and "not a DICOM folder" in err
    assert err.strip().count("\n") == 0 and not (tmp_path / name).exists()


def independent_statistics(folder: Path, mask: np.ndarray) -> dict:
    """Volume from the DICOM spacing, HU from the raw pixels, centroid and box from the slice positions (LPS)."""
    source = raw_series(folder)
    hu = raw_hu(folder)
    row, column = np.asarray(source[0].ImageOrientationPatient, dtype=float).reshape(2, 3)
    row_spacing, column_spacing = (float(v) for v in source[0].PixelSpacing)
    positions = np.stack([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in source])
    slice_spacing = np.linalg.norm(positions[1] - positions[0])
    k, j, i = np.nonzero(mask)
    points = positions[k] + i[:, None] * column_spacing * row + j[:, None] * row_spacing * column
    values = hu[mask > 0]
    return {
        "voxels": len(k),
        "volume_ml": len(k) * row_spacing * column_spacing * slice_spacing / 1000,
        "hu_mean": values.mean(),
        "hu_sd": values.std(),
        "hu_min": values.min(),
        "hu_median": np.median(values),
        "hu_max": values.max(),
        "bbox_min": points.min(0),
        "bbox_max": points.max(0),
        "centroid": points.mean(0),
    }


@pytest.mark.parametrize("stats_name", ["stats.csv", "stats.json"])
def test_statistics_equal_numpy_on_the_written_files(stats_name, series, tmp_path, stand_in_model, capsys):
    """Guards: volume from the wrong spacing, HU from a rescaled or reordered volume, centroid in RAS or
    IJK when the file says LPS, i/j swapped."""
    stand_in_model(FakeSegVol())
    output, stats = tmp_path / "r.seg.nrrd", tmp_path / stats_name
    code, out, err = run_cli(
        ["segment", series, "--text", "liver", "--text", "spleen", "-o", output, "--stats", stats], capsys
    )
    assert code == 0, err
    if stats.suffix == ".csv":
        with open(stats, newline="") as table:
            rows = list(csv.DictReader(table))
    else:
        rows = json.loads(stats.read_text())
    segments = read_segmentation(output, read_ct(series))
    assert [row["segment"] for row in rows] == [s.name for s in segments]
    for row, segment in zip(rows, segments):
        expected = independent_statistics(series, segment.mask)
        assert row["coordinates"] == "LPS"
        assert int(row["voxels"]) == expected["voxels"] > 0
        for name in ("volume_ml", "hu_mean", "hu_sd", "hu_min", "hu_median", "hu_max"):
            assert float(row[name]) == pytest.approx(expected[name], rel=1e-5, abs=1e-4), name
        for name in ("bbox_min", "bbox_max", "centroid"):
            got = [float(row[f"{name}_{axis}"]) for axis in "xyz"]
            np.testing.assert_allclose(got, expected[name], atol=1e-3, err_msg=name)


def test_confidence_comes_from_the_known_probabilities(series, tmp_path, stand_in_model, capsys):
    """Guards: a confidence from anything but the probabilities the mask thresholds (a stand-in with constant
    logits: sigmoid(2) = 0.8808 for liver, sigmoid(0.4) = 0.5987 for spleen, nothing for aorta)."""
    stand_in_model(ConstantLogitSegVol({"liver": 2.0, "spleen": 0.4}))
    output, stats = tmp_path / "r.seg.nrrd", tmp_path / "stats.json"
    argv = ["segment", series, "--text", "liver", "--text", "spleen", "--text", "aorta", "-o", output, "--stats", stats]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    rows = {row["segment"]: row for row in json.loads(stats.read_text())}
    assert rows["liver"]["mean_probability"] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    assert rows["liver"]["uncertain_share"] == 0.0 and rows["liver"]["low_confidence"] is False
    assert rows["spleen"]["mean_probability"] == pytest.approx(1 / (1 + np.exp(-0.4)), abs=1e-6)
    assert rows["spleen"]["uncertain_share"] == 1.0 and rows["spleen"]["low_confidence"] is True
    assert rows["aorta"]["mean_probability"] is None and rows["aorta"]["voxels"] == 0
    assert "mean probability 0.88, 0% uncertain" in out and "0.60, 100% uncertain (low)" in out
    tags = {s.name: s.fields["Tags"] for s in read_segmentation(output, read_ct(series))}
    assert "SegVol.MeanProbability:0.8808|SegVol.UncertainShare:0.0000|" in tags["liver"]
    assert "TerminologyEntry:" in tags["liver"]


def test_probabilities_are_the_zoom_in_inside_the_roi(ct):
    """Guards: probabilities from the zoom-out pass alone where the zoom-in replaced it (the stand-in's zoom-in
    mask differs from its zoom-out mask here)."""
    volume = VolumeInput("ct", ct.volume, ct.ijk_to_ras)
    options = SessionOptions(probabilities=True)
    (result,) = EngineHost(model=FakeSegVol(), session_options=options).segment(volume, [Target("liver", "liver")])
    assert result.windows > 0 and not np.array_equal(result.mask, result.zoom_out_mask)
    np.testing.assert_array_equal(result.probabilities > 0.5, result.mask > 0)


def test_probabilities_threshold_to_the_official_mask_which_they_leave_alone():
    """Guards: probabilities from other logits than the mask (zoom-out outside the ROI, zoom-in inside), or
    keep_probabilities changing the mask (the official path stays bit-identical)."""
    phantom = layout_ct()
    # No text: the stand-in's logits are -1, +1.5 inside the box (wider than one window), +3 near a click
    targets = [
        Target("pancreas", None, Points(np.array([[100.0, 48, 20]]), np.array([1])), Box((20, 36, 14), (300, 60, 26)))
    ]
    volume = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras)
    plain = EngineHost(model=BandSegVol({})).segment(volume, targets)
    kept = EngineHost(model=BandSegVol({}), session_options=SessionOptions(probabilities=True)).segment(volume, targets)
    assert any(result.windows > 1 for result in kept)
    for a, b in zip(plain, kept):
        assert a.probabilities is None
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(b.probabilities > 0.5, b.mask > 0)
        assert 0 < np.count_nonzero((b.probabilities > 0.02) & (b.probabilities < 0.98))  # not a copy of the mask


def test_confidence_is_the_mean_probability_inside_and_the_uncertain_share():
    probabilities = np.array([0.99, 0.9, 0.7, 0.6, 0.4, 0.2, 0.0], dtype=np.float32)
    confidence = Confidence.of(probabilities, probabilities > 0.5)
    assert confidence.mean_probability == pytest.approx((0.99 + 0.9 + 0.7 + 0.6) / 4)
    assert confidence.uncertain_share == pytest.approx(3 / 5)  # 0.7, 0.6, 0.4 of the five >= 0.25
    assert confidence.low
    assert not Confidence(0.95, 0.1).low and Confidence(0.8, 0.1).low and Confidence(0.95, 0.3).low
    assert Confidence.from_tags(Confidence(0.95, 0.1).tags()) == Confidence(0.95, 0.1)


def test_batch_writes_dicom_seg_and_one_statistics_table(
    series, tmp_path, stand_in_model, synthetic_checkpoint, capsys
):
    """Guards: --output-format ignored, a non-DICOM case stopping the run, stats.csv missing cases."""
    stand_in_model(FakeSegVol())
    nifti = tmp_path / "inputs" / "plain.nii.gz"
    nifti.parent.mkdir()
    sitk.WriteImage(read_volume(series).reference, str(nifti))
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"id,image\nct1,{series}\nplain,{nifti}\n")
    out = tmp_path / "out"
    argv = [
        "batch",
        manifest,
        "--text",
        "liver",
        "--text",
        "spleen",
        "--output-dir",
        out,
        "--output-format",
        "dicom-seg",
        "--checkpoint",  # hashed for the job's fingerprint; the stand-in runs
        synthetic_checkpoint,
    ]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 1  # the NIfTI case failed, the other was done
    with open(out / "results.csv", newline="") as table:
        results = {row["id"]: row for row in csv.DictReader(table)}
    assert results["ct1"]["status"] == "ok" and (out / "ct1.dcm").exists()
    assert results["plain"]["status"] == "failed" and "not a DICOM folder" in results["plain"]["error"]
    with open(out / "stats.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [(row["case"], row["segment"]) for row in rows] == [("ct1", "liver"), ("ct1", "spleen")]
    masks = masks_by_highdicom(out / "ct1.dcm", series)
    assert [int(row["voxels"]) for row in rows] == [int(masks[..., n].sum()) for n in range(2)]
    assert rows[0]["mean_probability"] != ""


def test_batch_output_format_is_part_of_the_job():
    """Guards: a rerun in another format treating the cases as done (the job fingerprint covers its fields)."""
    from SegVolSlicerLib.datasets.jobs import SegmentJob
    from SegVolSlicerLib.engine import ModelChoice

    parts = dict(choice=ModelChoice(), options=SessionOptions(), output_dir="out", texts=("liver",))
    assert SegmentJob(**parts) != SegmentJob(**parts, output_format="dicom-seg")


def test_the_server_returns_statistics_and_confidence_with_the_masks(series):
    """Guards: statistics missing from the server's answer, or differing from the in-process ones (the
    confidence is computed on the server, where the probabilities are)."""
    from fastapi.testclient import TestClient

    from SegVolSlicerLib.client import SegVolClient
    from SegVolSlicerLib.clinical.statistics import results_statistics
    from SegVolSlicerLib.server import create_app

    volume = read_ct(series)
    model = ConstantLogitSegVol({"liver": 2.0, "spleen": 0.4})
    targets = [Target("liver", "liver"), Target("spleen", "spleen")]
    host = EngineHost(model=model, session_options=SessionOptions(probabilities=True))
    local = results_statistics(host.segment(VolumeInput("ct", volume.array, volume.ijk_to_ras), targets), volume)
    app = create_app(EngineHost(model=model, session_options=SessionOptions(probabilities=True)))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        client = SegVolClient("http://127.0.0.1", http=http)
        with client.open_session(volume.array, volume.ijk_to_ras) as session:
            remote = session.segment_many(targets)
    assert [result.statistics for result in remote] == local
    assert remote[1].confidence.low and not remote[0].confidence.low


def test_an_updated_segment_gets_its_new_confidence(series, tmp_path, stand_in_model, capsys):
    """Guards: a segment updated in an existing .seg.nrrd keeping the confidence of the mask it replaced."""
    output = tmp_path / "r.seg.nrrd"
    stand_in_model(ConstantLogitSegVol({"liver": 2.0, "spleen": 2.0}))
    assert run_cli(["segment", series, "--text", "liver", "--text", "spleen", "-o", output], capsys)[0] == 0
    stand_in_model(ConstantLogitSegVol({"liver": 0.4}))
    assert run_cli(["segment", series, "--text", "liver", "-o", output], capsys)[0] == 0
    tags = {s.name: s.fields["Tags"] for s in read_segmentation(output, read_ct(series))}
    assert f"{MEAN_TAG}:0.5987|" in tags["liver"] and "TerminologyEntry:" in tags["liver"]
    assert f"{MEAN_TAG}:0.8808|" in tags["spleen"]
