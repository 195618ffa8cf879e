"""A synthetic CT written as a DICOM series (pydicom), for DICOM tests and benchmarks.

The series has an oblique orientation (rows and columns rotated about the patient's axes), slices whose
positions run against the slice normal, and files named in no slice order, so that a writer that assumes
axial, ascending or file-name order gets the geometry wrong. Every file is a valid CT (or MR) Image
(dciodvfy: no error, no warning). The same writer makes the series a PACS viewer would flag: slices missing
(`missing`), a gantry tilt (`tilt_degrees`), an MR series, or several series in one folder (call it again with
the same folder, another `series_number` and the same `study`).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np


def oblique_axes(angle_degrees: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(row direction, column direction) in LPS: axial rotated about z, then tilted about the row direction."""
    a = np.radians(angle_degrees)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    column = np.array([-np.sin(a), np.cos(a), 0.0])
    tilt = np.radians(angle_degrees / 2)
    column = np.cos(tilt) * column + np.sin(tilt) * np.array([0.0, 0.0, 1.0])
    column -= row * (row @ column)
    return row, column / np.linalg.norm(column)


def slice_positions(
    slices: int, spacing_k: float = 2.5, origin_lps=(-10.0, 20.0, 40.0), tilt_degrees: float = 0.0
) -> np.ndarray:
    """(K, 3) LPS positions of the slices as write_ct_series places them: slice k at origin - k * spacing_k
    along the slice normal; with a gantry tilt the slices also shift along the column direction (as a tilted
    gantry's slices do), by tan(tilt) per unit of travel."""
    row, column = oblique_axes()
    normal = np.cross(row, column)
    travel = -np.arange(slices)[:, None] * spacing_k
    return np.asarray(origin_lps) + travel * normal + travel * np.tan(np.radians(tilt_degrees)) * column


def write_ct_series(
    folder: str | os.PathLike,
    hu_kji: np.ndarray,
    spacing_ijk=(0.9, 0.8, 2.5),
    origin_lps=(-10.0, 20.0, 40.0),
    seed: int = 0,
    *,
    missing: Collection[int] = (),
    tilt_degrees: float = 0.0,
    modality: str = "CT",
    series_number: int = 3,
    description: str = "Synthetic abdomen",
    study: str | None = None,
) -> list[Path]:
    """Write `hu_kji` (int16 HU, (K, J, I)) as one CT series; returns the files written (shuffled names).

    Slice k lies at slice_positions(...)[k]; the slices whose k is in `missing` are not written (a gapped
    series). Files are named S<series number>_IM<shuffled number>.dcm, so several series fit in one folder;
    `study` (a StudyInstanceUID) puts them in one study."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, column = oblique_axes()
    positions = slice_positions(hu_kji.shape[0], spacing_ijk[2], origin_lps, tilt_degrees)
    series, frame_of_reference = generate_uid(), generate_uid()
    study = study or generate_uid()
    if modality not in ("CT", "MR"):
        raise ValueError(f"write_ct_series writes CT or MR images, not {modality}")
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    order = np.random.default_rng(seed).permutation(hu_kji.shape[0])
    files = []
    for k in range(hu_kji.shape[0]):
        if k in missing:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"S{series_number}_IM{order[k]:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^CT", "SEGVOL-TEST", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "SegVolSlicer tests"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, int(order[k]) + 1
        ds.SeriesDescription = description
        # Type 2 attributes of General Series, Frame of Reference and CT Image: present, empty when unknown;
        # an unpaired body part has no Laterality
        ds.BodyPartExamined, ds.PatientPosition, ds.PositionReferenceIndicator = "ABDOMEN", "HFS", ""
        ds.AcquisitionNumber = 1
        if modality == "CT":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.KVP = "120"
            ds.GantryDetectorTilt = f"{tilt_degrees:g}"
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        else:  # MR Image: a spin echo, its Type 2 timing attributes empty
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
        ds.PixelSpacing = [f"{spacing_ijk[1]:g}", f"{spacing_ijk[0]:g}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{spacing_ijk[2]:g}"
        ds.Rows, ds.Columns = hu_kji.shape[1], hu_kji.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(hu_kji[k], dtype=np.int16).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files
