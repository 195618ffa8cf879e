"""DICOM SEG segments look and are coded as in the .seg.nrrd and in Slicer: each carries its recommended display
colour (read back by dcmqi), and free text has one coding everywhere (SCT 85756007 "Tissue", in DICOM's
segmentation category and type context groups, Slicer's default entry)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from dicom_validators import dcmqi_read
from fake_segvol import FakeSegVol
from pydicom.sr.codedict import codes

from SegVolSlicerLib import terminology
from SegVolSlicerLib.clinical.dicom_seg import cielab_from_rgb
from SegVolSlicerLib.testing.synthetic_dicom import write_ct_series

SHAPE_KJI = (8, 20, 24)
TEXTS = ("liver", "left kidney", "my odd lesion")  # two in Slicer's anatomy lists, one free text


@pytest.fixture
def series(tmp_path):
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE_KJI), indexing="ij")
    hu = np.where(((j - 10) / 8) ** 2 + ((i - 12) / 10) ** 2 <= 1, 40, -1000)
    hu = np.where(((k - 4) / 3) ** 2 + ((j - 8) / 4) ** 2 + ((i - 14) / 5) ** 2 <= 1, 200, hu)
    hu = (hu + np.random.default_rng(1).integers(-20, 20, hu.shape)).astype(np.int16)
    write_ct_series(tmp_path / "CT", hu)
    return tmp_path / "CT"


def segment_both_ways(series, tmp_path, capsys, stand_in_model, *prompts) -> tuple[sitk.Image, pydicom.Dataset]:
    stand_in_model(FakeSegVol())
    for name in ("r.seg.nrrd", "r.dcm"):
        code, out, err = run_cli(["segment", series, *prompts, "-o", tmp_path / name], capsys)
        assert code == 0, err
    return sitk.ReadImage(str(tmp_path / "r.seg.nrrd")), pydicom.dcmread(tmp_path / "r.dcm")


def seg_nrrd_segments(image: sitk.Image) -> list[dict]:
    segments = []
    while image.HasMetaDataKey(f"Segment{len(segments)}_Name"):
        prefix = f"Segment{len(segments)}_"
        tags = dict(item.split(":", 1) for item in image.GetMetaData(prefix + "Tags").split("|") if ":" in item)
        entry = tags[terminology.TERMINOLOGY_ENTRY_TAG].split("~")
        codes_of = [tuple(part.split("^")[:2]) for part in entry[1:4]]  # (scheme, value) of category, type, modifier
        colour = tuple(round(float(c) * 255) for c in image.GetMetaData(prefix + "Color").split())
        segments.append({"name": image.GetMetaData(prefix + "Name"), "codes": codes_of, "colour": colour})
    return segments


def seg_codes(item) -> list[tuple[str, str]]:
    category = item.SegmentedPropertyCategoryCodeSequence[0]
    type_ = item.SegmentedPropertyTypeCodeSequence[0]
    modifier = getattr(type_, "SegmentedPropertyTypeModifierCodeSequence", None)
    modifier_code = (modifier[0].CodingSchemeDesignator, modifier[0].CodeValue) if modifier else ("", "")
    return [(category.CodingSchemeDesignator, category.CodeValue), (type_.CodingSchemeDesignator, type_.CodeValue)] + [
        modifier_code
    ]


def test_seg_colours_read_by_dcmqi_are_the_seg_nrrd_colours(series, tmp_path, capsys, stand_in_model):
    """Guards: SEG segments without RecommendedDisplayCIELabValue (dcmqi and Slicer's QuantitativeReporting
    then show every segment in one default colour), or with colours other than the .seg.nrrd's (wrong
    CIELab conversion or scaling, segments mixed up)."""
    prompts = [arg for text in TEXTS for arg in ("--text", text)]
    nrrd, _ = segment_both_ways(series, tmp_path, capsys, stand_in_model, *prompts)
    expected = seg_nrrd_segments(nrrd)
    meta = dcmqi_read(tmp_path / "r.dcm", tmp_path / "dcmqi")
    read = [
        (item[0]["SegmentLabel"], tuple(item[0]["recommendedDisplayRGBValue"])) for item in meta["segmentAttributes"]
    ]
    assert read == [(segment["name"], segment["colour"]) for segment in expected]
    assert len({colour for _, colour in read}) == len(TEXTS)  # not one default colour
    liver = terminology.standard_term("liver").color
    assert read[0][1] == tuple(round(c * 255) for c in liver)  # Slicer's own liver colour


def test_codes_are_one_coding_across_seg_and_seg_nrrd(series, tmp_path, capsys, stand_in_model):
    """Guards: free text coded three ways (SCT 91723000 in the SEG, 123037004 for the SEG's other segments,
    Tissue in the .seg.nrrd), a click-only segment coded apart, anatomy codes differing between the files."""
    prompts = [arg for text in TEXTS for arg in ("--text", text)]
    nrrd, seg = segment_both_ways(series, tmp_path, capsys, stand_in_model, *prompts)
    expected = seg_nrrd_segments(nrrd)
    assert [seg_codes(item) for item in seg.SegmentSequence] == [segment["codes"] for segment in expected]
    tissue = ("SCT", "85756007")
    assert expected[2]["codes"] == [tissue, tissue, ("", "")]
    assert expected[0]["codes"][1] == ("SCT", terminology.standard_term("liver").type.value)

    (tmp_path / "clicks").mkdir()
    nrrd, seg = segment_both_ways(
        series, tmp_path / "clicks", capsys, stand_in_model, "--point-ijk", 12, 10, 4, "--name", "blob"
    )
    (segment,) = seg_nrrd_segments(nrrd)
    assert segment["codes"] == seg_codes(seg.SegmentSequence[0]) == [tissue, tissue, ("", "")]


def test_free_text_coding_is_dicoms_and_slicers():
    """Guards: a free-text coding outside DICOM's segmentation category (CID 7150) or type (CID 7151) context
    groups, or other than the entry Slicer gives every new segment (the .seg.nrrd would read back otherwise)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core (the test extra) has Slicer's vtkSegment")
    import vtk

    term = terminology.unspecified_term()
    concept = codes.SCT.Tissue
    assert (term.category.scheme, term.category.value) == (concept.scheme_designator, concept.value)
    assert concept in codes.cid7150 and concept in codes.cid7151
    assert term.type == term.category and not term.modifier.value
    default = vtk.reference("")
    assert slicer.vtkSegment().GetTag(terminology.TERMINOLOGY_ENTRY_TAG, default)
    assert str(default) == term.entry


@pytest.mark.parametrize(
    ("rgb", "lab"),
    [
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
        ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
        ((0, 0, 1.0), (32.30, 79.19, -107.86)),
    ],
)
def test_cielab_of_reference_colours(rgb, lab):
    """Guards: a CIELab conversion with the wrong white point or sRGB curve (published sRGB/D65 values)."""
    np.testing.assert_allclose(cielab_from_rgb(rgb), lab, atol=0.02)
