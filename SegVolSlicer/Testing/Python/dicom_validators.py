"""Independent readers of the DICOM the tests write: dicom3tools' `dciodvfy` (the IOD checker of the DICOM
standard's editor) finds every error and warning of a file, and the suite runs it on each SEG and synthetic CT
image the tests write (conftest's `dicom_files_are_valid`); dcmqi (`segimage2itkimage`, what 3D Slicer's
QuantitativeReporting reads SEG with) gives each segment's mask, codes and colour.

Locally `dciodvfy` may be absent (Debian/Ubuntu: `apt-get install dicom3tools`): the checks then skip, saying
so. CI installs it and sets SEGVOL_REQUIRE_DCIODVFY=1, where its absence fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
# The images of testing/synthetic_dicom.py (its Manufacturer), not those another writer (e.g. ITK's) makes.
SYNTHETIC_IMAGES = {"1.2.840.10008.5.1.4.1.1.2": "CT Image", "1.2.840.10008.5.1.4.1.1.4": "MR Image"}
SYNTHETIC_MANUFACTURER = "SegVolSlicer tests"


def dciodvfy() -> str:
    """The dciodvfy program, or a skip (a failure where CI requires it)."""
    found = shutil.which("dciodvfy")
    if found is None:
        reason = "dciodvfy (dicom3tools) is not installed: `apt-get install dicom3tools` to validate DICOM files"
        if os.environ.get("SEGVOL_REQUIRE_DCIODVFY") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def dciodvfy_findings(path: str | os.PathLike) -> list[str]:
    """dciodvfy's errors and warnings about one file (it prints the IOD's name and its findings on stderr)."""
    run = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]


def assert_valid_dicom(paths: Iterable[str | os.PathLike]) -> None:
    """Every file passes dciodvfy with no error and no warning."""
    findings = {str(path): dciodvfy_findings(path) for path in paths}
    assert findings, "no DICOM file to validate"
    bad = {path: lines for path, lines in findings.items() if lines}
    assert not bad, "dciodvfy found:\n" + "\n".join(f"{path}:\n  " + "\n  ".join(lines) for path, lines in bad.items())


def written_dicom(folder: Path) -> list[Path]:
    """The SEG files and the synthetic CT and MR images under `folder` (by their SOP class and manufacturer,
    whatever their names)."""
    import pydicom

    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        with open(path, "rb") as file:
            if file.read(132)[128:] != b"DICM":
                continue
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Manufacturer"])
        sop_class = str(getattr(dataset, "SOPClassUID", ""))
        synthetic = sop_class in SYNTHETIC_IMAGES and getattr(dataset, "Manufacturer", "") == SYNTHETIC_MANUFACTURER
        if sop_class == SEGMENTATION or synthetic:
            found.append(path)
    return found


def dcmqi_converter() -> str:
    found = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    assert Path(found).exists(), "dcmqi's segimage2itkimage is needed (pip install dcmqi, in the test extra)"
    return found


def dcmqi_read(path: Path, out: Path) -> dict:
    """dcmqi's conversion of the SEG into `out` (one NRRD per segment); returns its meta.json (the segments'
    labels, codes and recommendedDisplayRGBValue)."""
    out.mkdir()
    subprocess.run(
        [dcmqi_converter(), "--inputDICOM", str(path), "--outputDirectory", str(out), "--outputType", "nrrd"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return json.loads((out / "meta.json").read_text())


def masks_by_dcmqi(path: Path, volume, tmp_path: Path) -> tuple[list[np.ndarray], dict]:
    """dcmqi's reading of the SEG, each segment placed on the CT's grid by its own geometry."""
    out = tmp_path / "dcmqi"
    meta = dcmqi_read(path, out)
    masks = []
    reference = volume.reference
    for number in range(1, len(meta["segmentAttributes"]) + 1):
        image = sitk.ReadImage(str(out / f"{number}.nrrd"))
        np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
        start = np.asarray(reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
        assert np.allclose(start, np.rint(start), atol=1e-3), start
        i0, j0, k0 = np.rint(start).astype(int)
        array = sitk.GetArrayFromImage(image)
        mask = np.zeros(volume.shape, dtype=np.uint8)
        mask[k0 : k0 + array.shape[0], j0 : j0 + array.shape[1], i0 : i0 + array.shape[2]] = array > 0
        masks.append(mask)
    return masks, meta
